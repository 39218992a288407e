"""Export backends and tools: TensorRT (missing-library message), TensorFlow SavedModel, benchmark, CLI.
(INT8: tests/test_export_int8.py.)"""
import json

import numpy as np
import onnx
import pytest

from export.check import reference_outputs
from export.images import CalibrationDataError, image_files, letterbox, load_images
from export.onnx_emit import export_onnx, read_metadata
from export.testing import random_variables
from pruning.testing import uniform_prune
from yolojax import Detector, tiny_spec
from yolojax.cli import main

IMGSZ = 64


@pytest.fixture(scope="module")
def det():
    spec = tiny_spec(4, names=("a", "b", "c", "d"))
    return Detector(spec, random_variables(spec, seed=1))


@pytest.fixture(scope="module")
def ckpt(det, tmp_path_factory):
    return det.save(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def coco(data_dir):
    return data_dir / "coco128" / "images" / "train"


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, IMGSZ, IMGSZ, 3), dtype=np.float32)


# -- TensorRT ---------------------------------------------------------------------------------------------
def test_tensorrt_missing_gives_install_instructions(tmp_path, det, capsys, ckpt):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the missing-library path cannot be exercised")
    except ImportError:
        pass
    from export.tensorrt import TensorRTUnavailable, build_engine
    path = export_onnx(det, tmp_path / "m.onnx", imgsz=IMGSZ)
    with pytest.raises(TensorRTUnavailable, match=r"pip install tensorrt.*NVIDIA") as e:
        build_engine(path, tmp_path / "m.engine", half=True)
    assert isinstance(e.value, ImportError)
    # the CLI still writes and checks the ONNX graph, then fails cleanly with the same message
    rc = main(["export", str(ckpt), "--format", "engine", "--imgsz", str(IMGSZ), "-o", str(tmp_path / "c.engine")])
    captured = capsys.readouterr()
    assert rc == 2 and "pip install tensorrt" in captured.err and "all checks passed" in captured.out
    assert (tmp_path / "c.onnx").exists() and not (tmp_path / "c.engine").exists()


# -- TensorFlow SavedModel ----------------------------------------------------------------------------------
def test_savedmodel_matches_jax(tmp_path, det):
    import tensorflow as tf  # the [tf] extra: `make test` installs it
    from export.savedmodel import export_savedmodel
    import jax
    out = export_savedmodel(det, tmp_path / "sm", imgsz=IMGSZ, dynamic=True)
    loaded = tf.saved_model.load(str(out))
    fn = loaded.signatures["serving_default"]
    assert fn.structured_input_signature[1]["images"].shape.as_list() == [None, IMGSZ, IMGSZ, 3]
    # parameters are variables of the SavedModel, not constants inside the program
    n_vars = sum(int(np.prod(v.shape)) for v in loaded.variables_list)
    assert n_vars == sum(int(np.size(v)) for v in jax.tree.leaves(det.variables))
    assert len(loaded.variables_list) == len(jax.tree.leaves(det.variables))
    x = images(3)
    ref = reference_outputs(det, x)
    for b in (3, 1):  # polymorphic batch
        y = fn(images=tf.constant(x[:b]))["output0"].numpy()
        assert y.shape == (b, 4 + det.spec.nc, ref["boxes"].shape[-1])
        scale = np.abs(ref["boxes"]).max()
        assert np.abs(y[:, :4] - ref["boxes"][:b]).max() / scale <= 1e-5
        assert np.abs(y[:, 4:] - ref["scores"][:b]).max() <= 2e-4
    assert json.loads((out / "yolojax_meta.json").read_text())["task"] == "detect"


# -- images ---------------------------------------------------------------------------------------------------
def test_letterbox_and_image_sources(tmp_path, coco):
    img = np.full((100, 200, 3), 7, np.uint8)
    lb = letterbox(img, (64, 64))
    assert lb.shape == (64, 64, 3) and (lb[:16] == 114).all() and (lb[16:48] == 7).all() and (lb[48:] == 114).all()
    x = load_images(coco, 64, n=5)
    assert x.shape == (5, 64, 64, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in image_files(coco)[:3]))
    assert len(image_files(tmp_path / "list.txt")) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="no images found"):
        load_images(tmp_path / "empty", 64)
    with pytest.raises(CalibrationDataError, match="no such file"):
        load_images(tmp_path / "missing", 64)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationDataError, match="none of 1 image"):
        load_images(bad, 64)
    (bad / "b.jpg").write_bytes((coco / sorted(p.name for p in coco.iterdir())[0]).read_bytes())
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert load_images(bad, 64).shape == (1, 64, 64, 3)


# -- benchmark ------------------------------------------------------------------------------------------------
def test_benchmark_api_interleaved(tmp_path, det, ckpt):
    from export.benchmark import benchmark
    spec, variables = uniform_prune(det.spec, det.variables, 0.5, multiple=8)
    pruned = Detector(spec, variables)
    onnx_path = export_onnx(det, tmp_path / "m.onnx", imgsz=IMGSZ)
    res = benchmark([str(onnx_path), pruned], backend="onnxruntime", imgsz=IMGSZ, runs=6, warmup=1,
                    names=["full", "pruned"], progress=False)
    assert {"backend", "p50_ms", "p90_ms", "fps", "machine", "results", "ratio_p50"} <= res.keys()
    full, small = res["results"]
    assert full["runs"] == small["runs"] == 6 and 0 < full["p50_ms"] <= full["p90_ms"] <= full["p99_ms"]
    assert res["ratio_p50"][0] == 1.0 and res["ratio_p50"][1] == pytest.approx(small["p50_ms"] / full["p50_ms"], rel=1e-2)
    assert small["gflops"] < full["gflops"] and full["fps"] == pytest.approx(1e3 / full["p50_ms"], rel=1e-2)
    assert res["machine"]["cores"] >= 1 and res["machine"]["onnxruntime"] and res["machine"]["jax"]
    jres = benchmark([str(ckpt)], backend="jax", imgsz=IMGSZ, runs=3, warmup=1, progress=False)
    assert jres["backend"] == "jax" and jres["p50_ms"] > 0 and "ratio_p50" not in jres
    with pytest.raises(ValueError, match="onnxruntime"):
        benchmark([str(onnx_path)], backend="jax", imgsz=IMGSZ, runs=1)
    with pytest.raises(ValueError, match="takes 64x64 images"):
        benchmark([str(onnx_path)], imgsz=128, runs=1)


def test_cli_export_and_benchmark(tmp_path, ckpt, capsys, coco):
    out = tmp_path / "m.onnx"
    rc = main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--dynamic", "--nms", "ort", "--conf", "0.3",
               "--check-images", str(coco), "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists() and "all checks passed" in text and "NMS vs yolojax.eval.nms: ok" in text
    meta = read_metadata(out)
    assert meta["nms"] == "ort" and meta["conf"] == "0.3" and meta["dynamic"] == "True"
    assert main(["benchmark", str(out), str(ckpt), "--imgsz", str(IMGSZ), "--runs", "3", "--warmup", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["backend"] == "onnxruntime" and {"p50_ms", "p90_ms", "fps"} <= res.keys() and len(res["results"]) == 2
    assert main(["benchmark", str(ckpt), "--backend", "jax", "--imgsz", str(IMGSZ), "--runs", "2"]) == 0
    assert "p50 ms" in capsys.readouterr().out
