"""Quantization-aware training (yolojax/model/quant.py): the fake-quantized JAX forward rounds where and how the
exported INT8 graph does (checked against ONNX Runtime), gradients pass, and `yolojax distill --qat` then
`yolojax export --int8` carry the trained ranges into the graph."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from export.images import load_images
from export.int8 import decoded_outputs, quantize_int8
from export.onnx_emit import body_node_names, export_onnx, read_metadata
from export.testing import random_variables
from yolojax import Detector, tiny_spec
from yolojax.model import quant as Q

IMGSZ = 64


@pytest.fixture(scope="module")
def model():
    spec = tiny_spec(4, names=("a", "b", "c", "d"))
    return spec, random_variables(spec, seed=1)


@pytest.fixture(scope="module")
def images(data_dir):
    return load_images(data_dir / "coco128" / "images" / "train", IMGSZ, n=16, seed=0)


def test_sites_are_the_emitters_tensors(model):
    spec, _ = model
    names = {t for ts in body_node_names(spec).values() for t in ts} | {Q.INPUT}
    sites = Q.quant_sites(spec)
    assert set(sites) <= names
    # every Conv+BN unit contributes conv output, Sigmoid and SiLU; a float unit only its SiLU (read by int8 ops)
    assert {"model_0/Conv", "model_0/Sigmoid", "model_0/SiLU", "model_2/m_0/Add", "model_2/Concat"} <= set(sites)
    floated = Q.quant_sites(spec, ["model_0"])
    assert "model_0/Conv" not in floated and "model_0/SiLU" in floated and Q.INPUT not in floated
    with pytest.raises(ValueError, match="not a Conv"):
        Q.quant_sites(spec, ["model_22/cv2_0_2"])


def test_fake_quant_rules():
    # ORT's uint8 asymmetric rule: range widened to hold 0, zero point round(-lo/scale)
    scale, zp = Q.qparams(jnp.float32(0.2), jnp.float32(2.0))
    assert float(scale) == pytest.approx(2.0 / 255) and float(zp) == 0
    x = jnp.linspace(-1.0, 3.0, 101)
    y = Q.fake_quant_act(x, -0.5, 2.0)
    s, z = Q.qparams(-0.5, 2.0)
    assert np.allclose(np.asarray(y), np.clip(np.round(np.asarray(x) / s) + z, 0, 255) * s - z * s, atol=1e-6)
    g = jax.grad(lambda v: Q.fake_quant_act(v, -0.5, 2.0).sum())(x)
    lo, hi = -float(z) * float(s), (255 - float(z)) * float(s)
    xn = np.asarray(x)
    away = (np.abs(xn - lo) > 1e-3) & (np.abs(xn - hi) > 1e-3)  # at the very edge either gradient is right
    assert np.array_equal(np.asarray(g)[away], ((xn > lo) & (xn < hi)).astype(np.float32)[away])
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 8))
    for bits, qmax in ((False, 127), (True, 64)):
        wq = np.asarray(Q.fake_quant_weight(w, bits))
        step = np.abs(np.asarray(w)).max((0, 1, 2)) / qmax
        k = wq / step
        assert np.allclose(k, np.round(k), atol=1e-3) and np.abs(k).max() <= qmax + 1e-3
        assert np.abs(wq - np.asarray(w)).max() <= step.max() / 2 + 1e-7
    assert np.allclose(np.asarray(jax.grad(lambda v: Q.fake_quant_weight(v).sum())(w)), 1.0)


@pytest.mark.parametrize("floats", [(), ("model_0", "model_4/m_0/cv1")])
def test_jax_fake_quant_is_the_onnx_runtime_int8_graph(model, images, tmp_path, floats):
    """With the QAT ranges written into it, the INT8 graph ONNX Runtime runs computes what the fake-quantized JAX
    forward computes. 7-bit weights (reduce_range): on x86 CPUs without VNNI ORT's 8-bit uint8 x int8 kernels
    saturate int16 pair sums and run a different graph than their Q/DQ nodes say (see quant.py); with 7 bits the
    fused kernels equal the Q/DQ reference on every x86. Measured here (tiny random model, 16 coco images): score
    MAE JAX-QAT vs ORT INT8 2.4e-7 (model_0 float: 2.0e-8), float vs ORT INT8 9.8e-4. With the convs summed in
    float instead of in integers (QLinearConv's int32) it was 3.7e-4: last-bit differences flip single roundings and
    the flips spread. A wrong scale, zero point, site or range anywhere gives errors of the rounding's size."""
    spec, v = model
    f32 = export_onnx(Detector(spec, v), tmp_path / "f32.onnx", imgsz=IMGSZ)
    ranges = Q.calibrate_ranges(spec, v, [images[:8], images[8:]], float_convs=floats)
    vq = Q.with_ranges(v, ranges)
    rep = quantize_int8(f32, tmp_path / "qat.onnx", None, calib_data=images, ranges=ranges, reduce_range=True,
                        keep_float=list(floats))
    assert rep["qat_ranges"] and rep["kept_float"] == list(floats)
    assert read_metadata(onnx.load(rep["path"]))["calib_method"] == "qat"
    got = decoded_outputs(onnx.load(rep["path"]), images)
    pq, _, _ = Q.forward(spec, vq, images, float_convs=floats, reduce_range=True)
    pf, _, _ = Q.forward(spec, vq, images, float_convs=floats, quantize=False)
    ort_s = got["scores"].transpose(0, 2, 1)
    qat_err = np.abs(np.asarray(pq["scores"]) - ort_s).mean()
    float_err = np.abs(np.asarray(pf["scores"]) - ort_s).mean()
    assert qat_err < 0.01 * float_err, (qat_err, float_err)
    box_err = np.abs(np.asarray(pq["boxes"]) - got["boxes"].transpose(0, 2, 1)).mean()
    box_float = np.abs(np.asarray(pf["boxes"]) - got["boxes"].transpose(0, 2, 1)).mean()
    assert box_err < 0.01 * box_float, (box_err, box_float)
    # the folded float forward is the float model
    from yolojax.model import YOLOv8
    ref, _ = YOLOv8(spec).apply(v, jnp.asarray(images))
    assert np.abs(np.asarray(pf["scores"]) - np.asarray(ref["scores"])).max() < 1e-5


def test_qat_ranges_must_cover_the_graph(model, images, tmp_path):
    spec, v = model
    f32 = export_onnx(Detector(spec, v), tmp_path / "f32.onnx", imgsz=IMGSZ)
    ranges = Q.calibrate_ranges(spec, v, [images[:8]], float_convs=("model_0",))
    with pytest.raises(ValueError, match="do not cover"):  # trained with model_0 float, exported all-INT8
        quantize_int8(f32, tmp_path / "q.onnx", None, calib_data=images, ranges=ranges)
    with pytest.raises(ValueError, match="cpu target"):
        quantize_int8(f32, tmp_path / "q.onnx", None, calib_data=images, ranges=ranges, target="tensorrt")


def test_qat_model_trains_ranges_and_keeps_bn_frozen(model, images):
    spec, v = model
    qm = Q.QATModel(spec)
    vq = Q.with_ranges(v, Q.calibrate_ranges(spec, v, [images[:8]]))
    (preds, _), upd = qm.apply(vq, jnp.asarray(images[8:]), train=True, mutable=["batch_stats"])
    new = upd["batch_stats"]
    jax.tree.map(np.testing.assert_array_equal, new["model_0"], vq["batch_stats"]["model_0"])  # BN frozen
    r0, r1 = vq["batch_stats"][Q.QUANT_KEY]["model_3/SiLU"], new[Q.QUANT_KEY]["model_3/SiLU"]
    assert float(r1["hi"]) != float(r0["hi"])  # moved towards this batch's max
    grads = jax.grad(lambda p: qm.apply({"params": p, "batch_stats": vq["batch_stats"]},
                                        jnp.asarray(images[:2]))[0]["scores"].sum())(vq["params"])
    flat = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in flat)
    assert np.abs(np.asarray(grads["model_0"]["conv"]["kernel"])).sum() > 0  # STE: the first conv learns
    variables, meta = qm.split({"params": vq["params"], "batch_stats": new})
    assert Q.QUANT_KEY not in variables["batch_stats"] and len(meta["ranges"]) == len(Q.quant_sites(spec))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return Path(make_synthetic(tmp_path_factory.mktemp("synth"), images=10, imgsz=64, seed=5, progress=False))


def test_distill_qat_then_export_int8_uses_the_trained_ranges(tmp_path, synth, capsys):
    from yolojax.checkpoint import load_model
    from yolojax.cli import main
    from yolojax.data import load_dataset
    from yolojax.model import init_variables
    names = load_dataset(synth, "train").names
    spec = tiny_spec(len(names)).replace(names=tuple(names))
    Detector(spec, init_variables(spec, 3)).save(tmp_path / "teacher")
    common = ["--teacher", str(tmp_path / "teacher"), "--data", str(synth), "--imgsz", "64", "--batch", "4",
              "--nbs", "4", "--workers", "0", "--no-progress", "--no-mosaic", "--epochs", "1"]
    out = tmp_path / "qat"
    assert main(["distill", *common, "--student", str(tmp_path / "teacher"), "--method", "cwd", "--qat",
                 "--qat-float", "model_0", "-o", str(out)]) == 0
    _, variables, meta = load_model(out / "last")
    assert meta["qat"]["float_convs"] == ["model_0"] and not meta["qat"]["reduce_range"]
    assert set(meta["qat"]["ranges"]) == set(Q.quant_sites(spec, ["model_0"]))
    assert Q.QUANT_KEY not in variables["batch_stats"]
    assert json.loads((out / "distill.json").read_text())["qat"]["float_convs"] == ["model_0"]
    capsys.readouterr()
    onnx_out = tmp_path / "q.onnx"
    assert main(["export", str(out / "last"), "--int8", "--calib-data", str(synth), "--imgsz", "64",
                 "-o", str(onnx_out)]) == 0
    assert "trained activation ranges" in capsys.readouterr().out
    md = read_metadata(onnx.load(str(onnx_out)))
    assert md["calib_method"] == "qat" and md["int8_float_convs"] == "model_0"
    # exporting it with other float convs than it was trained with is refused
    assert main(["export", str(out / "last"), "--int8", "--calib-data", str(synth), "--imgsz", "64",
                 "--int8-keep-float", "auto", "-o", str(tmp_path / "x.onnx")]) == 2
