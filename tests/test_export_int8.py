"""INT8 ONNX (export/int8.py): graph checks, what ONNX Runtime runs, kept-float head, closeness to FP32 on real
images, calibration errors, and `yolojax val` / `yolojax benchmark` on .onnx files."""
import json

import numpy as np
import onnx
import pytest

from export.check import TRT_OPS, ort_session, unsupported_ops
from export.images import CalibrationDataError, load_images
from export.int8 import BODY_OPS, float_tail_nodes, quantize_int8
from export.onnx_emit import export_onnx, read_metadata
from export.testing import random_variables
from yolojax import Detector, tiny_spec
from yolojax.cli import main

IMGSZ = 64
HEAD_CONVS = [f"model_22/cv{b}_{lvl}_2/Conv" for b in (2, 3) for lvl in range(3)]
# INT8 vs FP32 on real (letterboxed coco128) images, tiny model with random O(1) weights (so every layer carries
# signal). uint8 minmax steps are 1/255 of each tensor's calibrated range (~0.4%); over ~20 chained layers the
# rounding noise adds up roughly in quadrature. Seen here (seeds 1, 2; 64 and 96 px): score MAE 4.5e-4..5e-4,
# max 3.4e-3 (scores span 0..1, std 0.21); box MAE 0.05 px, max 1.9e-3 of the box scale. Bounds are ~4x that,
# and still ~50x below the spread of the scores: a wrong scale, zero point or layout anywhere gives errors of
# the order of the signal itself.
SCORE_MAE, SCORE_MAX, BOX_MAE_PX, BOX_MAX_REL = 2e-3, 1.5e-2, 0.25, 8e-3


@pytest.fixture(scope="module")
def det():
    spec = tiny_spec(4, names=("a", "b", "c", "d"))
    return Detector(spec, random_variables(spec, seed=1))


@pytest.fixture(scope="module")
def coco(data_dir):
    return data_dir / "coco128" / "images" / "train"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def f32(det, work):
    return export_onnx(det, work / "f32.onnx", imgsz=IMGSZ, dynamic=True)


@pytest.fixture(scope="module")
def check_x(coco):
    # images 5.. of a seeded subset: not the calibration subset's first images
    return load_images(coco, IMGSZ, n=6, seed=5)


@pytest.fixture(scope="module")
def cpu_q(det, f32, work, coco, check_x):
    rep = quantize_int8(f32, work / "cpu.onnx", det, calib_data=coco, calib_images=16, check_images=check_x)
    return rep, onnx.load(rep["path"])


def _producers(m):
    return {o: n for n in m.graph.node for o in n.output}


def _inits(m):
    return {t.name: t for t in m.graph.initializer}


def consumers_dq(m, qnode):
    """Output name of the DequantizeLinear fed by QuantizeLinear `qnode`."""
    return next(n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == qnode.output[0])


def _zero_point_types(m, op="QuantizeLinear"):
    inits = _inits(m)
    return {inits[n.input[2]].data_type for n in m.graph.node if n.op_type == op and n.input[2] in inits}


# -- the default (cpu) graph ----------------------------------------------------------------------------------
def test_cpu_graph_checker_ops_and_layout(cpu_q, f32):
    rep, q = cpu_q
    assert rep["passed"] and rep["checker"] and rep["target"] == "cpu" and rep["calib_images"] == 16
    onnx.checker.check_model(rep["path"], full_check=True)  # independently of the report
    ops = {n.op_type for n in q.graph.node}
    assert ops <= TRT_OPS and unsupported_ops(q) == [] and rep["unsupported_ops"] == []
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # activations uint8 (asymmetric), weights int8 per-channel symmetric (zero points 0, one scale per channel)
    assert _zero_point_types(q) == {onnx.TensorProto.UINT8}
    inits = _inits(q)
    wdq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
           and len(inits[n.input[0]].dims) == 4]
    assert len(wdq) == rep["quantized_convs"] == 57
    for n in wdq:
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT8
        assert not onnx.numpy_helper.to_array(inits[n.input[2]]).any()
        assert inits[n.input[1]].dims[0] == inits[n.input[0]].dims[0] > 1
    # every op of the body reads dequantized (int8-carried) inputs, so ORT can keep the body in 8 bits
    prod, tail = _producers(q), set(float_tail_nodes(q))
    body = [n for n in q.graph.node if n.op_type in BODY_OPS and n.name not in tail]
    assert len(body) > 150
    for n in body:
        src = prod.get(n.input[0])
        assert src is not None and src.op_type == "DequantizeLinear", n.name
    meta = read_metadata(q)
    assert meta["int8"] == "True" and meta["int8_target"] == "cpu" and meta["int8_activations"] == "uint8"
    assert meta["calib_method"] == "minmax" and json.loads(meta["spec"]) == json.loads(read_metadata(f32)["spec"])
    assert not rep["tensorrt_ready"] and rep["size_mb"] < rep["float_size_mb"]


def test_cpu_graph_runs_int8_kernels_in_onnxruntime(cpu_q):
    """What makes it fast: ORT fuses every quantized conv, SiLU, residual add and concat into integer kernels
    (the first INT8 export ran as float convs wrapped in Q/DQ and was slower than FP32)."""
    rep, _ = cpu_q
    ops = rep["ort_ops"]
    assert rep["ort_int8_convs"] == rep["quantized_convs"] == 57
    assert ops["com.microsoft::QLinearSigmoid"] == ops["com.microsoft::QLinearMul"] == 57
    assert ops["com.microsoft::QLinearAdd"] > 0 and ops["com.microsoft::QLinearConcat"] > 0
    float_convs = ops.get("Conv", 0) + ops.get("com.microsoft.nchwc::Conv", 0)
    assert float_convs == 6  # only the kept-float head convs
    assert ops.get("QuantizeLinear", 0) == 1  # one quantization: the input image


def test_kept_float_head_is_float(cpu_q):
    rep, q = cpu_q
    prod, inits = _producers(q), _inits(q)
    consumers = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = {n.name: n for n in q.graph.node if n.op_type == "Conv"}
    for name in HEAD_CONVS:
        n = convs[name]
        assert n.input[1] in inits and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT  # float weights
        assert n.input[2] in inits and inits[n.input[2]].data_type == onnx.TensorProto.FLOAT
        assert all(c.op_type != "QuantizeLinear" for c in consumers[n.output[0]])  # output not re-quantized
    # DFL, decode and the score sigmoid see float tensors only: no Q/DQ anywhere after the head convs (a dynamic
    # graph's anchor grid reads the feature maps' Shape only, never their values)
    for n in q.graph.node:
        if n.name.startswith(("model_22/dfl/", "model_22/decode/", "model_22/scores")) and n.op_type != "Shape":
            assert all(prod[i].op_type not in ("QuantizeLinear", "DequantizeLinear") for i in n.input if i in prod)
    assert rep["float_convs"] == 6
    # keep_head_float=False quantizes the head convs; DFL/decode stay float
    tail = float_tail_nodes(q, keep_head_float=False)
    assert "model_22/dfl/Softmax" in tail and not set(HEAD_CONVS) & set(tail)


def test_quantized_head_option(f32, work, coco):
    rep = quantize_int8(f32, work / "head.onnx", calib_data=coco, calib_images=8, keep_head_float=False)
    q = onnx.load(rep["path"])
    assert rep["float_convs"] == 0 and rep["quantized_convs"] == rep["ort_int8_convs"] == 63
    prod = _producers(q)
    for n in q.graph.node:
        if n.name.startswith(("model_22/dfl/", "model_22/decode/", "model_22/scores")) and n.op_type != "Shape":
            assert all(prod[i].op_type not in ("QuantizeLinear", "DequantizeLinear") for i in n.input if i in prod)
    assert rep["passed"] and rep["vs_float"]["score_mae"] <= SCORE_MAE


def test_cpu_int8_close_to_fp32_on_real_images(cpu_q, f32, check_x, det):
    rep, _ = cpu_q
    v = rep["vs_float"]
    assert v["score_mae"] <= SCORE_MAE and v["score_max_abs"] <= SCORE_MAX
    assert v["box_mae_px"] <= BOX_MAE_PX and v["box_max_rel"] <= BOX_MAX_REL
    assert v["score_mae"] > 1e-5  # really quantized, not a float graph
    # the report's numbers are what ORT gives on these images (recomputed here), batch > 1 through a dynamic axis
    x = np.ascontiguousarray(check_x.transpose(0, 3, 1, 2))
    yf = ort_session(f32).run(None, {"images": x})[0]
    yq = ort_session(rep["path"]).run(None, {"images": x})[0]
    assert yq.shape == yf.shape == (6, 4 + 4, 84)
    np.testing.assert_allclose(np.abs(yq[:, 4:] - yf[:, 4:]).mean(), v["score_mae"], rtol=1e-4)
    # and against JAX: INT8-vs-JAX error is the INT8-vs-float error (float32 ONNX == JAX to 2e-4)
    assert rep["vs_jax"]["score_mae"] == pytest.approx(v["score_mae"], abs=2e-5)
    assert rep["float_vs_jax"]["score_max_abs"] < 2e-4


# -- the tensorrt target and the QOperator format ------------------------------------------------------------
def test_tensorrt_target_symmetric_int8_on_convs(det, f32, work, coco, check_x):
    rep = quantize_int8(f32, work / "trt.onnx", det, calib_data=coco, calib_images=8, target="tensorrt",
                        check_images=check_x)
    q = onnx.load(rep["path"])
    assert rep["passed"] and rep["tensorrt_ready"] and not unsupported_ops(q)
    # TensorRT reads zero points of 0 only: every Q/DQ is int8 with a zero zero point
    inits = _inits(q)
    assert _zero_point_types(q) == {onnx.TensorProto.INT8}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not onnx.numpy_helper.to_array(inits[n.input[2]]).any()
    # Q/DQ on conv inputs only: every quantized activation feeds a conv, and no conv output is quantized
    # (TensorRT fuses Conv+SiLU itself and requantizes at the next conv's input)
    prod = _producers(q)
    consumers = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    qs = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    f = onnx.load(str(f32))
    conv_inputs = {n.input[0] for n in f.graph.node if n.op_type == "Conv" and n.name not in HEAD_CONVS}
    assert len(qs) == len(conv_inputs)  # one Q/DQ per distinct conv input (P3 feeds three convs, ...)
    for n in qs:
        assert n.input[0] == "images" or prod[n.input[0]].op_type != "Conv", n.name
        assert "Conv" in consumers[consumers_dq(q, n)]
    assert rep["quantized_convs"] == 57 and rep["float_convs"] == 6
    v = rep["vs_float"]
    assert v["score_mae"] <= SCORE_MAE and v["box_max_rel"] <= BOX_MAX_REL


def test_qoperator_format_matches_qdq(det, f32, work, coco, cpu_q, check_x):
    rep = quantize_int8(f32, work / "qop.onnx", det, calib_data=coco, calib_images=16, quant_format="qoperator",
                        check_images=check_x)
    q = onnx.load(rep["path"])
    ops = {n.op_type for n in q.graph.node}
    assert "QLinearConv" in ops and "Conv" in ops and rep["quantized_convs"] == 57 and rep["float_convs"] == 6
    assert rep["passed"] and rep["unsupported_ops"] and not rep["tensorrt_ready"]  # ORT's own ops
    # same calibration, same integer kernels: the same numbers as the QDQ graph up to requantization rounding
    x = np.ascontiguousarray(check_x.transpose(0, 3, 1, 2))
    a = ort_session(rep["path"]).run(None, {"images": x})[0]
    b = ort_session(cpu_q[0]["path"]).run(None, {"images": x})[0]
    assert np.abs(a[:, 4:] - b[:, 4:]).mean() < 0.2 * cpu_q[0]["vs_float"]["score_mae"]
    with pytest.raises(ValueError, match="Q/DQ graphs only"):
        quantize_int8(f32, work / "x.onnx", calib_data=coco, target="tensorrt", quant_format="qoperator")


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_calibration_data_is_a_clear_error(f32, work, coco, det):
    empty = work / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match=f"{empty}: no images found"):
        quantize_int8(f32, work / "x.onnx", calib_data=empty)
    with pytest.raises(CalibrationDataError, match="no such file or directory"):
        quantize_int8(f32, work / "x.onnx", calib_data=work / "missing")
    broken = work / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "b.png").write_bytes(b"")
    with pytest.raises(CalibrationDataError, match=r"none of 2 image\(s\) could be read"):
        quantize_int8(f32, work / "x.onnx", calib_data=broken)
    yaml = work / "d.yaml"
    yaml.write_text("names: [a]\n")
    with pytest.raises(CalibrationDataError, match="neither `val` nor `train`"):
        quantize_int8(f32, work / "x.onnx", calib_data=yaml)
    with pytest.raises(CalibrationDataError, match=r"must be \[N>0,64,64,3\]"):
        quantize_int8(f32, work / "x.onnx", calib_data=np.zeros((0, 64, 64, 3), np.float32))
    with pytest.raises(CalibrationDataError, match=r"must be \[N>0,64,64,3\]"):
        quantize_int8(f32, work / "x.onnx", calib_data=np.zeros((2, 32, 32, 3), np.float32))
    assert not (work / "x.onnx").exists() and not list(work.glob(".x.onnx*"))
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8(f32, work / "x.onnx", calib_data=coco, method="kl")
    with pytest.raises(ValueError, match="INT8 target"):
        quantize_int8(f32, work / "x.onnx", calib_data=coco, target="gpu")
    half = export_onnx(det, work / "half.onnx", imgsz=IMGSZ, half=True)
    with pytest.raises(ValueError, match="not a --half one"):
        quantize_int8(half, work / "x.onnx", calib_data=coco)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        quantize_int8(work / "nope.onnx", work / "x.onnx", calib_data=coco)


def test_calibration_from_a_dataset_yaml_with_relative_paths(f32, work, coco, monkeypatch):
    """A dataset YAML without `path` resolves its splits against its own folder, whatever the cwd."""
    import shutil
    root = work / "ds"
    (root / "images" / "val").mkdir(parents=True)
    for p in sorted(coco.iterdir())[:3]:
        shutil.copy(p, root / "images" / "val" / p.name)
    (root / "data.yaml").write_text("val: images/val\nnames: [a]\n")
    monkeypatch.chdir(work)
    rep = quantize_int8(f32, work / "y.onnx", calib_data="ds/data.yaml")
    assert rep["calib_images"] == 3 and rep["passed"]


# -- CLI: export, val, benchmark ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synth") / "d", images=10, imgsz=IMGSZ, seed=0, progress=False)


def test_cli_export_int8(det, work, coco, capsys):
    ckpt = det.save(work / "ckpt")
    out = work / "cli.onnx"
    rc = main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "--calib-data", str(coco), "--calib-images",
               "8", "--calib-method", "entropy", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists() and (work / "cli_fp32.onnx").exists()
    assert "INT8 QDQ for cpu, entropy calibration on 8 images" in text and "57 of them as QLinearConv" in text
    assert "INT8 speed on this CPU" in text  # what to expect, by the CPU's instruction set
    rc = main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "--int8-target", "tensorrt", "--calib-data",
               str(coco), "--calib-images", "4", "-o", str(work / "cli_trt.onnx")])
    assert rc == 0 and read_metadata(work / "cli_trt.onnx")["int8_target"] == "tensorrt"
    assert main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "-o", str(out)]) == 2
    assert "--calib-data" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "--int8-target", "tensorrt", "--int8-format",
                 "qoperator", "--calib-data", str(coco), "-o", str(work / "never.onnx")]) == 2
    assert "Q/DQ graphs only" in capsys.readouterr().err and not (work / "never.onnx").exists()
    # yolojax benchmark takes the .onnx files as they are and says which is INT8
    capsys.readouterr()
    assert main(["benchmark", str(work / "cli_fp32.onnx"), str(out), "--imgsz", str(IMGSZ), "--runs", "3",
                 "--warmup", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r.get("int8") for r in res["results"]] == [None, "cpu/qdq"]
    assert res["results"][1]["size_mb"] < res["results"][0]["size_mb"] and len(res["ratio_p50"]) == 2


def _val(args, capsys, tmp_path, tag):
    dets = tmp_path / f"{tag}.json"
    assert main(["val", *args, "--imgsz", str(IMGSZ), "--batch", "4", "--workers", "1", "--json",
                 "--save-json", str(dets)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1]), json.loads(dets.read_text())


def test_yolojax_val_on_onnx(work, tiny_data, coco, capsys, tmp_path):
    """`yolojax val MODEL.onnx` runs the graph in ONNX Runtime with the same NMS and metrics: a float32 export
    gives the JAX checkpoint's detections; the INT8 graph's detections stay close to them."""
    spec = tiny_spec(10)  # the synthetic set's 10 classes
    det = Detector(spec, random_variables(spec, seed=1))
    ckpt = det.save(work / "ckpt_val")
    fixed = export_onnx(det, work / "fixed_b1.onnx", imgsz=IMGSZ)  # batch 1: run over --batch 4 in slices
    q = quantize_int8(fixed, work / "val_int8.onnx", calib_data=coco, calib_images=8)["path"]
    # the fixed-size graphs validate in imgsz squares (no rect batches): so does the checkpoint here
    m_jax, d_jax = _val([str(ckpt), "--data", str(tiny_data), "--no-rect"], capsys, tmp_path, "jax")
    m_f32, d_f32 = _val([str(fixed), "--data", str(tiny_data)], capsys, tmp_path, "f32")
    m_q, d_q = _val([q, "--data", str(tiny_data)], capsys, tmp_path, "q")
    assert m_jax["images"] == m_f32["images"] == m_q["images"] == 2
    assert len(d_jax) > 100  # conf 0.001 on random weights: plenty of detections to compare

    def table(d):
        return {(x["image_id"], x["category_id"], round(x["score"], 3)): x["bbox"] for x in d}

    tj, tf = table(d_jax), table(d_f32)
    assert abs(len(d_f32) - len(d_jax)) <= 0.01 * len(d_jax)
    common = tj.keys() & tf.keys()
    assert len(common) >= 0.95 * len(tj)
    assert max(np.abs(np.subtract(tj[k], tf[k])).max() for k in common) < 1e-2
    for k in ("map50", "map50_95", "precision", "recall"):
        assert m_f32[k] == pytest.approx(m_jax[k], abs=2e-3)
    # INT8 through the same path: as many detections, and per image the same descending score curve (seen:
    # mean difference 5e-3 over the top 100, the 8-bit noise of the scores after NMS re-ranking)
    assert abs(len(d_q) - len(d_f32)) <= 0.1 * len(d_f32)
    for img in {x["image_id"] for x in d_f32}:
        sf, sq = (np.sort([x["score"] for x in d if x["image_id"] == img])[::-1][:100] for d in (d_f32, d_q))
        assert len(sf) == len(sq) == 100 and np.abs(sf - sq).mean() < 0.02


def test_val_onnx_errors(det, work, tiny_data):
    from yolojax.report import onnx_detector
    nms = export_onnx(det, work / "nms.onnx", imgsz=IMGSZ, nms="ort")
    with pytest.raises(ValueError, match="NMS inside the graph"):
        onnx_detector(nms)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        onnx_detector(work / "missing.onnx")
    d, predict = onnx_detector(export_onnx(det, work / "b1.onnx", imgsz=IMGSZ))
    assert d.meta["imgsz"] == IMGSZ and d.spec == det.spec
    with pytest.raises(ValueError, match="takes 64x64 images"):
        predict(None, np.zeros((1, 96, 96, 3), np.uint8))


def test_onnx_predict_obb_matches_jax(tmp_path):
    """The ONNX validation path of an OBB graph (angle row after the scores) gives the JAX predict's rotated
    detections."""
    import jax
    from yolojax.model.spec import yolov8_spec
    from yolojax.report import onnx_predict
    from yolojax.train.step import make_predict
    spec = yolov8_spec("tiny", 3, task="obb")
    det = Detector(spec, random_variables(spec, seed=2))
    path = export_onnx(det, tmp_path / "obb.onnx", imgsz=IMGSZ, dynamic=True)
    x = (np.random.default_rng(0).random((2, IMGSZ, IMGSZ, 3)) * 255).astype(np.uint8)
    got = jax.device_get(onnx_predict(path, spec, conf=0.25)(None, x))
    ref = jax.device_get(jax.jit(make_predict(spec, conf=0.25))(det.variables, x))
    assert got["boxes"].shape == ref["boxes"].shape == (2, 300, 5)
    np.testing.assert_array_equal(got["valid"], ref["valid"])
    v = ref["valid"]
    assert v.sum() > 10
    np.testing.assert_array_equal(got["classes"][v], ref["classes"][v])
    np.testing.assert_allclose(got["scores"][v], ref["scores"][v], atol=1e-4)
    np.testing.assert_allclose(got["boxes"][v], ref["boxes"][v], atol=2e-3)


# -- keeping sensitive convs float ----------------------------------------------------------------------------
def _float_convs(m):
    """Paths of the body convs whose weight is a float initializer (not dequantized int8)."""
    prod = _producers(m)
    return {n.name[:-len("/Conv")] for n in m.graph.node if n.op_type == "Conv"
            and not (n.input[1] in prod and prod[n.input[1]].op_type == "DequantizeLinear")}


def test_int8_expectation_follows_the_instruction_set():
    from export.benchmark import int8_expectation
    assert "~2.5x" in int8_expectation("AVX512-VNNI, AVX512, AVX2")
    assert "~1.3x" in int8_expectation("AVX512, AVX2 (no VNNI)") and "~1.3x" in int8_expectation("AVX2 (no VNNI)")
    assert "unknown" in int8_expectation("")


def test_detection_damage_measures_what_detection_sees():
    from export.int8 import detection_damage
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(10, 50, (2, 2, 30)), rng.uniform(4, 12, (2, 2, 30))], 1)
    scores = rng.uniform(0, 0.3, (2, 3, 30))
    ref = {"boxes": boxes, "scores": scores}
    assert detection_damage(ref, ref) == 0.0
    small = {"boxes": boxes + 0.1, "scores": scores + 0.001}
    big = {"boxes": boxes + 2.0, "scores": scores + 0.05}
    assert 0 < detection_damage(small, ref) < detection_damage(big, ref)
    # errors where neither model detects anything (scores < 0.05) do not count
    quiet = {"boxes": boxes, "scores": np.where(scores.max(1, keepdims=True) < 0.05, scores + 0.04, scores)}
    assert detection_damage(quiet, ref) == 0.0


def test_keep_float_names_and_auto_scan(det, f32, work, coco, check_x, capsys):
    from export.int8 import conv_units
    units = conv_units(det.spec)
    assert list(units)[0] == "model_0" and units["model_0"] == ["model_0/Conv", "model_0/Sigmoid", "model_0/SiLU"]
    tail = {c[:-len("/Conv")] for c in HEAD_CONVS}
    rep = quantize_int8(f32, work / "kf.onnx", det, calib_data=coco, calib_images=8, check_images=check_x,
                        keep_float="model_0,model_3")
    m = onnx.load(rep["path"])
    assert _float_convs(m) == tail | {"model_0", "model_3"} and rep["kept_float"] == ["model_0", "model_3"]
    assert read_metadata(m)["int8_float_convs"] == "model_0,model_3" and rep["passed"]
    with pytest.raises(ValueError, match="'model_99' is not a quantized conv of this model"):
        quantize_int8(f32, work / "never.onnx", det, calib_data=coco, calib_images=8, keep_float=["model_99"])
    # auto: every body conv scanned once with the same calibrated ranges; the chosen ones float in the graph
    rep = quantize_int8(f32, work / "auto.onnx", det, calib_data=coco, calib_images=8, check_images=check_x,
                        keep_float="auto", scan_images=4)
    sc = rep["scan"]
    assert set(sc["per_conv"]) == set(units) - tail and sc["images"] == 4
    assert set(sc["chosen"]) <= set(units) and len(sc["chosen"]) <= 4 and rep["kept_float"] == sc["chosen"]
    assert sc["damage_chosen"] <= sc["damage_int8"] and _float_convs(onnx.load(rep["path"])) == tail | set(sc["chosen"])
    for s in sc["steps"]:  # a conv joins only if it takes >= 5% of the all-INT8 damage off with those chosen
        assert s["kept"] == (s["conv"] in sc["chosen"])
    # the CLI: names, and the one-line error for a wrong one
    ckpt = det.save(work / "kf_ckpt")
    rc = main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "--calib-data", str(coco), "--calib-images",
               "4", "--int8-keep-float", "model_0", "-o", str(work / "kf_cli.onnx")])
    assert rc == 0 and "1 body conv(s) kept float (model_0)" in capsys.readouterr().out
    rc = main(["export", str(ckpt), "--imgsz", str(IMGSZ), "--int8", "--calib-data", str(coco), "--calib-images",
               "4", "--int8-keep-float", "model_0,nope", "-o", str(work / "kf_bad.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "'nope' is not a quantized conv of this model" in err[-1]
