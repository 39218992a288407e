"""`yolojax compress` end to end on tiny configurations (detection on the P2 architecture, OBB on YOLOv8): every
artifact exists and the report is consistent."""
import json
import subprocess
import sys

import numpy as np
import pytest

import yolojax
from tests.conftest import REPO


@pytest.mark.slow
def test_compress_end_to_end(tmp_path):
    from yolojax.data.synth import make_synthetic
    data = make_synthetic(tmp_path / "synth", images=20, imgsz=64, seed=5, progress=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "yolojax.cli", "compress", "--data", str(data), "--model", "tiny-p2",
           "-o", str(run), "--imgsz", "64", "--batch", "4", "--nbs", "4", "--workers", "2", "--epochs-teacher", "1",
           "--epochs-sparse", "1", "--epochs-finetune", "1", "--bench-runs", "2", "--qat", "1",
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    for rel in ("teacher/best/spec.json", "sparse/last/spec.json", "sparse/gamma_hist.png", "pruned/spec.json",
                "pruned/channels.png", "finetune/best/spec.json", "export/model.onnx", "export/check.json",
                "report.md", "report.json", "plots/predictions.png", "plots/pr_baseline.png"):
        assert (run / rel).exists(), rel
    for stage in ("teacher", "sparse", "pruned", "finetune", "export"):
        assert (run / stage / "DONE.json").exists(), stage
    report = json.loads((run / "report.json").read_text())
    for stage in ("baseline", "sparse", "pruned", "finetuned", "onnx"):
        row = report[stage]
        for key in ("params", "gflops", "map50", "map50_95", "ort_ms"):
            assert key in row and np.isfinite(row[key]), (stage, key)
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert report["pruned"]["gflops"] < report["baseline"]["gflops"]
    assert report["finetuned"]["params"] == report["pruned"]["params"] == report["onnx"]["params"]
    # the ONNX model is evaluated through ONNX Runtime with the same NMS and metrics: same mAP as JAX
    assert report["onnx"]["map50"] == pytest.approx(report["finetuned"]["map50"], abs=0.02)
    assert json.loads((run / "export" / "check.json").read_text())["passed"]
    pruned = yolojax.load(run / "pruned")
    x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    assert np.isfinite(np.asarray(pruned(x)["boxes"])).all()
    assert "| pruned + fine-tuned (KD) |" in (run / "report.md").read_text()
    # the report says whether each stage did its job, with the sparse stage's share of ~0 gammas
    assert 0.0 <= report["sparse"]["gamma_below_1e-2"] <= 1.0 and "gamma_below_1e-2" in report["baseline"]
    checks = report["meta"]["checks"]
    assert [c["stage"] for c in checks] == ["teacher", "sparse", "pruned", "finetuned"]
    assert checks[0]["ok"] is None and "cannot be judged" in checks[0]["text"]  # a 1-epoch teacher
    assert "Did each stage do its job?" in (run / "report.md").read_text()
    near_zero = json.loads((run / "pruned" / "prune_report.json").read_text())["near_zero"]
    assert near_zero["removed"] <= near_zero["channels"] and near_zero["removed"] <= near_zero["removed_total"]
    # rerunning skips every finished stage and rewrites the same table
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stderr.count("done, skipped") == 5
    # --qat: a quantization-aware stage, the INT8 graph with its trained ranges, scored and timed in the report
    assert (run / "qat" / "DONE.json").exists() and "qat" in yolojax.load(run / "qat" / "last").meta
    int8 = json.loads((run / "export" / "int8.json").read_text())
    assert int8["qat_ranges"] and int8["passed"]
    for key in ("map50", "map50_95", "ort_ms"):
        assert np.isfinite(report["int8"][key]), key
    assert report["int8"]["params"] == report["finetuned"]["params"]
    assert "| QAT, INT8 ONNX (ORT) |" in (run / "report.md").read_text()


@pytest.mark.slow
def test_compress_obb_end_to_end(tmp_path):
    """`--task obb`: the oriented synthetic set, an -obb model, rotated metrics, the angle row in ONNX."""
    run = tmp_path / "obb"
    cmd = [sys.executable, "-m", "yolojax.cli", "compress", "--task", "obb", "--model", "tiny", "-o", str(run),
           "--imgsz", "64", "--batch", "4", "--nbs", "4", "--workers", "2", "--epochs-teacher", "1",
           "--epochs-sparse", "1", "--epochs-finetune", "1", "--bench-runs", "2", "--synth-images", "20",
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads((run / "report.json").read_text())
    assert report["finetuned"]["gflops"] < report["baseline"]["gflops"]
    assert json.loads((run / "export" / "check.json").read_text())["passed"]
    student = yolojax.load(run / "finetune")
    assert student.spec.task == "obb" and student.spec.width_map.keys() >= {"model_22/cv4_0_0"}
    assert (run / "plots" / "predictions.png").exists()


def test_convergence_reads_the_trend_not_the_noise():
    """The teacher check: a plateau with +-0.5-point validation noise is converged, a run still rising 3 points
    over its last 20% is not (the demo's 45- and 60-epoch teachers gave these shapes)."""
    from yolojax.pipeline import convergence
    plateau = [{"epoch": i + 1, "val/map50": 0.86 + (0.005 if i % 3 == 0 else -0.004)} for i in range(60)]
    c = convergence(plateau)
    assert c["window"] == 12 and c["converged"] and abs(c["trend"]) < 0.01 and c["spread"] > 0.008
    rising = [{"epoch": i + 1, "val/map50": 0.6 + 0.003 * i} for i in range(45)]
    c = convergence(rising)
    assert not c["converged"] and c["trend"] == pytest.approx(0.024, abs=1e-6)
    assert convergence([{"epoch": 1, "val/map50": 0.1}]) is None and convergence(None) is None
