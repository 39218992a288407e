"""Honest failures: one error path for the CLI (one line, exit 2 for bad input, 1 for a failed run, --verbose
for the traceback), impossible arguments refused up front, nothing silently scored or skipped, exploding runs
stopped before their weights are saved, Ctrl-C a clean stop that --resume continues."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import yolojax
from yolojax.cli import main
from yolojax.model import tiny_spec
from yolojax.train.checkpoints import resume_info
from yolojax.train.trainer import DivergenceGuard
from tests.conftest import REPO, committed_steps

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return Path(make_synthetic(tmp_path_factory.mktemp("synth"), images=20, imgsz=64, seed=3, progress=False))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synth):
    from yolojax.data import load_dataset
    d = tmp_path_factory.mktemp("ck") / "tiny"
    names = load_dataset(synth, "train").names
    yolojax.Detector.create(tiny_spec(len(names), names=tuple(names)), seed=0).save(d, imgsz=64)
    return d


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _one_line_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 7. one error path -------------------------------------------------------------------------------------

def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    rc, err = _run(capsys, "info", tmp_path / "missing.pt")
    assert rc == 2 and "missing.pt" in _one_line_error(err)


def test_verbose_shows_the_traceback(tmp_path, capsys):
    rc, err = _run(capsys, "info", tmp_path / "missing.pt", "--verbose")
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    rc, err = _run(capsys, "--verbose", "info", tmp_path / "missing.pt")
    assert rc == 2 and "Traceback" in err


# -- 6. impossible arguments and inputs --------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [(("--epochs", "0"), "--epochs must be at least 1"),
                                        (("--batch", "0"), "--batch must be at least 1"),
                                        (("--imgsz", "0"), "--imgsz must be at least 32"),
                                        (("--imgsz", "100"), "--imgsz must be a multiple of 32"),
                                        (("--lr0", "-1"), "--lr0 must be in"),
                                        (("--val-every", "0"), "--val-every must be at least 1")])
def test_train_refuses_impossible_arguments(tmp_path, capsys, synth, args, says):
    rc, err = _run(capsys, "train", "--data", synth, "--model", "tiny", "-o", tmp_path / "run", *args)
    assert rc == 2 and says in _one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_declared_val_folder_that_does_not_exist(tmp_path, capsys, synth):
    cfg = yaml.safe_load(synth.read_text())
    cfg["path"] = str(synth.parent)
    cfg["val"] = "images/nowhere"
    bad = tmp_path / "data.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    rc, err = _run(capsys, "train", "--data", bad, "--model", "tiny", "-o", tmp_path / "run", "--imgsz", "64")
    assert rc == 2 and "nowhere does not exist" in _one_line_error(err)
    assert "validating on the training images" not in err


def test_train_refuses_to_start_over_a_previous_run(tmp_path, capsys, synth):
    (tmp_path / "run" / "last").mkdir(parents=True)
    rc, err = _run(capsys, "train", "--data", synth, "--model", "tiny", "-o", tmp_path / "run", "--imgsz", "64")
    assert rc == 2 and "holds a previous run" in _one_line_error(err) and "--resume" in err
    rc, err = _run(capsys, "train", "--resume", "-o", tmp_path / "nothing")
    assert rc == 2 and "nothing to resume" in _one_line_error(err)


def test_predict_refuses_missing_and_non_images(tmp_path, capsys, ckpt):
    rc, err = _run(capsys, "predict", ckpt, tmp_path / "nope.jpg", "--save-dir", tmp_path / "out")
    assert rc == 2 and "no such file" in _one_line_error(err)
    (tmp_path / "notes.txt").write_text("hello")
    rc, err = _run(capsys, "predict", ckpt, tmp_path / "notes.txt", "--save-dir", tmp_path / "out")
    assert rc == 2 and "not an image" in _one_line_error(err)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    rc, err = _run(capsys, "predict", ckpt, tmp_path / "broken.jpg", "--save-dir", tmp_path / "out")
    assert rc == 2 and "unreadable" in _one_line_error(err)
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_predict_never_draws_over_its_inputs(tmp_path, capsys, ckpt):
    img = np.full((64, 64, 3), 127, np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    before = (tmp_path / "a.jpg").read_bytes()
    rc, err = _run(capsys, "predict", ckpt, tmp_path, "--save-dir", tmp_path, "--imgsz", "64")
    assert rc == 2 and "would overwrite the input image" in _one_line_error(err)
    assert (tmp_path / "a.jpg").read_bytes() == before


def test_val_without_labels_has_nothing_to_score(tmp_path, capsys, ckpt):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "images" / split / f"{i}.jpg"), np.zeros((64, 64, 3), np.uint8))
            (tmp_path / "labels" / split / f"{i}.txt").write_text("")
    (tmp_path / "data.yaml").write_text(json.dumps({"path": str(tmp_path), "train": "images/train",
                                                    "val": "images/val", "names": ["a", "b", "c"]}))
    rc, err = _run(capsys, "val", ckpt, "--data", tmp_path / "data.yaml", "--imgsz", "64", "--batch", "2")
    assert rc == 2 and "nothing to score" in _one_line_error(err)
    rc, err = _run(capsys, "val", ckpt, "--data", tmp_path / "data.yaml", "--batch", "0")
    assert rc == 2 and "--batch must be at least 1" in _one_line_error(err)


# -- 5. divergence -----------------------------------------------------------------------------------------

def test_guard_sees_an_exploding_loss_but_not_noise():
    rng = np.random.default_rng(0)
    g = DivergenceGuard({"w": np.ones(10)})
    for i in range(300):  # a falling, noisy loss with an odd spike (an all-background batch)
        loss = 100 * np.exp(-i / 50) * rng.uniform(0.5, 1.5) + (5000 if i == 200 else 0)
        assert g.loss(float(loss)) is None, i
    for i in range(100):  # down to ~0 (overfitting) and back to its start: still no explosion
        assert g.loss(1e-6 if i < 50 else 100.0) is None
    g = DivergenceGuard({"w": np.ones(10)})
    assert g.loss(100.0) is None
    assert "loss exploded" in (g.loss(7.6e12) or "")


def test_guard_sees_exploding_weights():
    g = DivergenceGuard({"w": np.ones(100)})  # norm 10
    assert g.weights({"w": np.full(100, 30.0)}) is None
    assert "weights exploded" in g.weights({"w": np.full(100, 2e25)})
    assert "weights exploded" in g.weights({"w": np.full(100, np.nan)})


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "yolojax.cli", "train", "--data", str(data), "--model", "tiny", "-o", str(out),
            "--imgsz", "64", "--batch", "4", "--nbs", "4", "--workers", "1", "--no-progress", "--val-every", "100",
            *extra]


@pytest.mark.slow
def test_huge_lr_stops_before_saving_exploded_weights_and_auto_honours_lr0(tmp_path, synth):
    run = tmp_path / "run"
    r = subprocess.run(_train_cmd(synth, run, "--epochs", "3", "--lr0", "1e6", "--save-every-steps", "1"),
                       capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "--optimizer auto chose adamw" in r.stderr and "given --lr0 1000000.0" in r.stderr
    line = _one_line_error(r.stderr)
    assert "diverged" in line or "non-finite" in line
    assert json.loads((run / "args.json").read_text())["config"]["lr0"] == 1e6
    if (run / "last").exists():  # whatever was saved is sane: weights near their start, not 1e25
        det = yolojax.load(run / "last")
        fresh = yolojax.Detector.create(det.spec, seed=0)
        assert DivergenceGuard(fresh.variables["params"]).weights(det.variables["params"]) is None
        assert "last good checkpoint" in line
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


# -- 6. Ctrl-C, then --resume ------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes_consistently(tmp_path, synth):
    run = tmp_path / "run"
    # long enough for the signal to land mid-run even when the poller is starved (6 epochs raced it under load,
    # with the compile cache warm): the signal goes as soon as the first checkpoint exists
    args = ("--epochs", "30", "--save-every-steps", "2", "--val-every", "5")
    p = subprocess.Popen(_train_cmd(synth, run, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, cwd=REPO)
    deadline = time.time() + 600
    while time.time() < deadline and not committed_steps(run):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=600)  # a stop lands after the step or compilation under way: slow under load
    assert p.returncode == 130, err[-3000:]
    assert "stopped; resume with --resume" in err and "Traceback" not in err
    # no --data: an interrupted run finds its dataset in last/ (args.json records it only at the end)
    r = subprocess.run([sys.executable, "-m", "yolojax.cli", "train", "--resume", "-o", str(run), "--no-progress"],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "16 train / 4 val images" in r.stderr
    info = resume_info(run)
    best = yolojax.load(run / "best")
    assert info["epoch"] == 30 and best.meta["best_fitness"] == info["best_fitness"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv,msg", [
    (("compress", "--batch", "0"), "--batch must be at least 1"),
    (("compress", "--imgsz", "100"), "--imgsz must be a multiple of 32"),
    (("compress", "--epochs-sparse", "-1"), "--epochs-sparse must be >= 0"),
    (("distill", "--teacher", "t", "--student", "s", "--batch", "0"), "--batch must be at least 1"),
])
def test_compress_and_distill_refuse_impossible_values(capsys, tmp_path, argv, msg):
    code, err = _run(capsys, *argv, "-o", str(tmp_path / "out"))
    assert code == 2 and msg in err and "Traceback" not in err


# -- issue 16: a wrong file, backend or size is one line with what to do --------------------------------------

@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, ckpt):
    from export.onnx_emit import export_onnx
    return export_onnx(yolojax.load(ckpt), tmp_path_factory.mktemp("onnx") / "tiny.onnx", imgsz=64)


def test_missing_ultralytics_weights_say_where_to_get_them(tmp_path, capsys):
    rc, err = _run(capsys, "convert", tmp_path / "yolov8n.pt", tmp_path / "ck")
    line = _one_line_error(err)
    assert rc == 2 and "yolov8n.pt: no such file" in line and "github.com/ultralytics/assets/releases" in line
    assert not (tmp_path / "ck").exists()
    with pytest.raises(FileNotFoundError, match="ultralytics/assets/releases") as e:
        yolojax.from_ultralytics(tmp_path / "yolov8n.pt")
    assert isinstance(e.value, yolojax.errors.UserError) and str(e.value).startswith(str(tmp_path / "yolov8n.pt"))


@pytest.mark.parametrize("argv, says", [
    (("benchmark", "{onnx}", "--backend", "jax"), "runs on --backend onnxruntime"),
    (("benchmark", "{ckpt}", "--backend", "tensorrt"), "the tensorrt backend takes an .engine/.plan or an .onnx"),
    (("predict", "{onnx}", "{img}"), "an exported .onnx graph has no JAX weights"),
    (("export", "{onnx}", "-o", "{tmp}/x.onnx"), "already an ONNX graph"),
    (("export", "{ckpt}", "--imgsz", "100", "-o", "{tmp}/x.onnx"), "--imgsz must be a multiple of 32"),
    (("benchmark", "{onnx}", "--imgsz", "128"), "takes 64x64 images (its fixed input shape), not --imgsz 128"),
])
def test_wrong_backend_file_or_size_is_one_line(tmp_path, capsys, ckpt, onnx_file, argv, says):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    subs = {"onnx": onnx_file, "ckpt": ckpt, "img": tmp_path / "a.jpg", "tmp": tmp_path}
    rc, err = _run(capsys, *(a.format(**subs) for a in argv))
    assert rc == 2 and says in _one_line_error(err), err
    assert not (tmp_path / "x.onnx").exists()
