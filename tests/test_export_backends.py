"""Export backends and tools: TensorRT (missing-library message), TensorFlow SavedModel, INT8 QDQ, benchmark, CLI."""
import json

import numpy as np
import onnx
import pytest

from export.check import ort_session, reference_outputs
from export.images import CalibrationDataError, image_files, letterbox, load_images
from export.onnx_emit import export_onnx, read_metadata
from export.testing import random_variables, uniform_prune
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
    tf = pytest.importorskip("tensorflow", reason="optional extra [tf] (tensorflow-cpu) not installed")
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


# -- INT8 ---------------------------------------------------------------------------------------------------
def test_int8_qdq(tmp_path, det, coco):
    from export.int8 import float_tail_nodes, quantize_int8
    f32 = export_onnx(det, tmp_path / "f32.onnx", imgsz=IMGSZ, dynamic=True)
    x = load_images(coco, IMGSZ, n=4, seed=5)
    rep = quantize_int8(f32, tmp_path / "int8.onnx", det, calib_data=coco, calib_images=16, method="minmax",
                        check_images=x)
    assert rep["passed"] and rep["checker"] and not rep["unsupported_ops"] and rep["calib_images"] == 16
    q = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # head final convs (3 levels x box/class) and DFL/decode stay float; every other conv is int8
    n_convs = sum(n.op_type == "Conv" for n in onnx.load(str(f32)).graph.node)
    assert rep["float_convs"] == 6 and rep["quantized_convs"] == n_convs - 6
    tail = set(float_tail_nodes(onnx.load(str(f32))))
    assert {"model_22/cv2_0_2/Conv", "model_22/cv3_2_2/Conv", "model_22/dfl/Softmax"} <= tail
    # per-channel symmetric int8 weights
    inits = {t.name: t for t in q.graph.initializer}
    wq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
          and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 4]
    assert wq and all(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1 for n in wq[:5])
    assert read_metadata(q)["int8"] == "True" and read_metadata(q)["calib_method"] == "minmax"
    # close to float on real images (random O(1) weights: 8-bit noise only), far from bit-exact
    v = rep["vs_float"]
    assert v["score_mae"] < 0.02 and v["box_max_rel"] < 0.05 and v["score_mae"] > 1e-6
    assert rep["vs_jax"]["score_mae"] == pytest.approx(v["score_mae"], abs=1e-5)
    assert rep["size_mb"] < rep["float_size_mb"]
    y = ort_session(tmp_path / "int8.onnx").run(None, {"images": x[:3].transpose(0, 3, 1, 2)})[0]
    assert y.shape == (3, 8, 84)  # dynamic batch survives quantization
    with pytest.raises(CalibrationDataError, match="no images found"):
        (tmp_path / "none").mkdir()
        quantize_int8(f32, tmp_path / "x.onnx", calib_data=tmp_path / "none")
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8(f32, tmp_path / "x.onnx", calib_data=coco, method="kl")


def test_cli_int8(tmp_path, ckpt, coco, capsys):
    out = tmp_path / "q.onnx"
    rc = main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "--calib-data", str(coco), "--calib-images",
               "8", "--calib-method", "entropy", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists() and "INT8 QDQ" in text and "entropy calibration on 8 images" in text
    assert main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "-o", str(out)]) == 2
    assert "--calib-data" in capsys.readouterr().err


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
