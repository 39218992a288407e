"""ONNX export: ONNX Runtime vs JAX for every variant, pruned specs, fp16, NMS in the graph, Ultralytics weights."""
import ast
import functools

import numpy as np
import onnx
import pytest
from tests.conftest import REFERENCE

from export.check import TRT_OPS, check_onnx, compare_detections, ort_session, reference_outputs, unsupported_ops
from export.images import load_images
from export.onnx_emit import emit_onnx, export_onnx, read_metadata, spec_from_onnx
from export.testing import random_variables
from pruning.testing import random_prune
from yolojax import Detector, from_ultralytics, tiny_spec, yolov8_spec
from yolojax.model.counting import count_flops

IMGSZ = 64
# Every JAX forward runs on batch 3 at IMGSZ (one XLA compilation per spec); batch 1 reuses its first image.


@functools.lru_cache(maxsize=None)
def random_detector(variant: str, nc: int = 80, task: str = "detect", seed: int = 0) -> Detector:
    """Random weights with O(1) activations (fresh init predicts almost the same box everywhere)."""
    spec = tiny_spec(nc, task=task) if variant == "tiny" else yolov8_spec(variant, nc, task=task)
    return Detector(spec, random_variables(spec, seed))


def images(n, size=IMGSZ, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def assert_parity(model, det, batch_sizes=(3, 1), x=None):
    """Parity at the images' size. Other sizes of a dynamic graph (each a JAX compilation) are left to the
    tests that are about them (`sizes=[]`)."""
    x = images(max(batch_sizes)) if x is None else x
    ref = reference_outputs(det, x)
    for b in batch_sizes:
        rep = check_onnx(model, det, images=x[:b], reference={k: v[:b] for k, v in ref.items()}, sizes=[])
        assert rep["passed"], rep["errors"]
        assert rep["parity"]["batch"] == b
        boxes = rep["parity"]["groups"]["boxes"]
        # non-trivial outputs (a constant output would make parity meaningless) and float32-tight agreement
        assert boxes["scale"] > x.shape[1] / 2 and boxes["max_rel"] <= 1e-5
        assert rep["parity"]["groups"]["scores"]["max_abs"] <= 2e-4
    return rep


VARIANTS = ["n", "s", "m", pytest.param("l", marks=pytest.mark.slow), pytest.param("x", marks=pytest.mark.slow)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_parity_dynamic_and_fixed_batch(variant):
    det = random_detector(variant)
    dyn = emit_onnx(det.spec, det.variables, imgsz=IMGSZ, dynamic=True)
    assert dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    rep = assert_parity(dyn, det, [3, 1])
    assert not rep["unsupported_ops"] and set(rep["ops"]) <= TRT_OPS
    assert "Einsum" not in rep["ops"] and {"Resize", "Softmax", "ReduceSum", "MaxPool"} <= set(rep["ops"])
    fixed = emit_onnx(det.spec, det.variables, imgsz=IMGSZ, batch=3)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert_parity(fixed, det, [3])


@pytest.mark.parametrize("task", ["detect", "obb"])
def test_tiny_parity_rectangular(task):
    det = random_detector("tiny", 4, task)
    a = 8 * 12 + 4 * 6 + 2 * 3
    fixed = emit_onnx(det.spec, det.variables, imgsz=(64, 96), batch=3)
    out = fixed.graph.output[0].type.tensor_type.shape.dim
    assert [out[1].dim_value, out[2].dim_value] == [4 + 4 + (task == "obb"), a]
    x = np.random.default_rng(1).random((3, 64, 96, 3), dtype=np.float32)
    assert_parity(fixed, det, (3,), x)
    # dynamic: batch, height, width and the anchor count symbolic, as Ultralytics' dynamic export
    model = emit_onnx(det.spec, det.variables, imgsz=(64, 96), dynamic=True)
    dims = lambda vi: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(model.graph.output[0]) == ["batch", 4 + 4 + (task == "obb"), "anchors"]
    rep = assert_parity(model, det, (3, 1), x)
    if task == "obb":
        assert rep["parity"]["groups"]["angle"]["max_abs"] <= 2e-4 and rep["parity"]["groups"]["angle"]["size"] == a
    # one graph, other sizes and another batch: checked against JAX at each
    sized = check_onnx(model, det, images=x[:1], sizes=[(96, 32)])
    assert sized["passed"], sized["errors"]
    assert [(r["size"], r["batch"]) for r in sized["parity_sizes"]] == [([96, 32], 2)]
    assert all(r["groups"]["boxes"]["max_rel"] <= 1e-5 and r["groups"]["boxes"]["scale"] > 16
               for r in sized["parity_sizes"])


@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_pruned_uneven_spec_parity(keep):
    base = random_detector("n")
    spec, variables = random_prune(base.spec, base.variables, keep=keep, seed=int(keep * 100))
    splits = dict(spec.splits)
    assert any(a != b for a, b in splits.values()), "the helper should make uneven C2f splits"
    assert spec.width("model_4/cv2") != base.spec.width("model_4/cv2")
    ratio = count_flops(spec, 640) / count_flops(base.spec, 640)
    assert ratio < (0.5 if keep == 0.5 else 0.2)
    det = Detector(spec, variables)
    model = emit_onnx(spec, variables, imgsz=IMGSZ, dynamic=True)
    assert_parity(model, det, [3, 1])
    assert spec_from_onnx(model) == spec


def test_check_fails_on_wrong_weights_and_foreign_ops():
    det = random_detector("tiny", 4)
    model = emit_onnx(det.spec, det.variables, imgsz=IMGSZ)
    bad = {"params": {**det.variables["params"]}, "batch_stats": det.variables["batch_stats"]}
    m15 = dict(bad["params"]["model_15"])
    m15["cv2"] = {"conv": m15["cv2"]["conv"], "bn": {**m15["cv2"]["bn"], "bias": m15["cv2"]["bn"]["bias"] + 0.1}}
    bad["params"]["model_15"] = m15
    rep = check_onnx(model, Detector(det.spec, bad), images=images(1))
    assert not rep["passed"] and not rep["parity"]["passed"] and "ONNX Runtime vs JAX" in rep["errors"][0]

    foreign = onnx.ModelProto()
    foreign.CopyFrom(model)
    node = onnx.helper.make_node("Einsum", ["output0"], ["einsum_out"], equation="bca->bac")
    foreign.graph.node.append(node)
    assert unsupported_ops(foreign) == ["Einsum"]
    rep = check_onnx(foreign)
    assert not rep["passed"] and rep["parity"] is None and "Einsum" in rep["errors"][0]


def test_half_graph():
    det = random_detector("n")
    model = emit_onnx(det.spec, det.variables, imgsz=IMGSZ, dynamic=True, half=True)
    conv_w = [t for t in model.graph.initializer if t.name.endswith((".weight", ".bias"))]
    assert conv_w and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_w)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = images(3)
    ref = reference_outputs(det, x)
    rep = check_onnx(model, det, images=x, reference=ref)
    assert rep["passed"], rep["errors"]
    boxes = rep["parity"]["groups"]["boxes"]
    assert 1e-6 < boxes["max_rel"] <= 1e-3  # really computed in float16, and close
    assert rep["parity"]["groups"]["scores"]["max_abs"] <= 2e-3
    assert not check_onnx(model, det, images=x, reference=ref, atol=2e-4, rtol=1e-5)["parity"]["passed"]


@pytest.fixture(scope="module")
def coco_images(data_dir):
    return load_images(data_dir / "coco128" / "images", 160, n=3)


def test_nms_ort_matches_reference_nms(coco_images):
    from yolojax.eval.nms import non_max_suppression
    det = random_detector("tiny", 4, seed=3)
    conf, iou = 0.5, 0.5
    model = emit_onnx(det.spec, det.variables, imgsz=160, dynamic=True, nms="ort", conf=conf, iou=iou, max_det=100)
    assert {o.name for o in model.graph.output} == {"output0", "num_dets"}
    rep = check_onnx(model, det, images=coco_images)
    assert rep["passed"], rep["errors"]
    assert rep["nms"]["matched"] == rep["nms"]["reference"] == rep["nms"]["onnx"] > 20

    dets, num = ort_session(model.SerializeToString()).run(None, {"images": coco_images.transpose(0, 3, 1, 2)})
    assert dets.shape == (3, 100, 6) and num.shape == (3,)
    p = det(coco_images)
    ref = {k: np.asarray(v) for k, v in non_max_suppression(p["boxes"], p["scores"], conf=conf, iou=iou,
                                                             max_det=100).items()}
    assert list(num) == list(ref["valid"].sum(1))
    r = compare_detections(dets, num, ref, box_tol=1e-3, score_tol=1e-5)
    assert r["matched"] == r["reference"] == int(num.sum())
    for b in range(3):
        n = int(num[b])
        assert np.all(np.diff(dets[b, :n, 4]) <= 0) and np.all(dets[b, n:] == 0)  # sorted, zero padded
        np.testing.assert_allclose(dets[b, :n, :4], ref["boxes"][b, :n], atol=1e-3)
        np.testing.assert_array_equal(dets[b, :n, 5], ref["classes"][b, :n])
    # nothing above the threshold: empty, zero-padded output rather than an error
    none = emit_onnx(det.spec, det.variables, imgsz=160, nms="ort", conf=0.99999, max_det=10, batch=3)
    d0, n0 = ort_session(none.SerializeToString()).run(None, {"images": coco_images.transpose(0, 3, 1, 2)})
    assert d0.shape == (3, 10, 6) and not d0.any() and list(n0) == [0, 0, 0]


def test_nms_trt_plugin_graph():
    det = random_detector("tiny", 4)
    model = emit_onnx(det.spec, det.variables, imgsz=IMGSZ, dynamic=True, nms="trt", conf=0.3, iou=0.6, max_det=50)
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "TRT" and attrs["box_coding"] == 1 and attrs["max_output_boxes"] == 50
    assert attrs["score_threshold"] == pytest.approx(0.3) and attrs["iou_threshold"] == pytest.approx(0.6)
    assert attrs["plugin_version"] == b"1" and attrs["background_class"] == -1
    outs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outs == {"num_dets": ["batch", 1], "det_boxes": ["batch", 50, 4], "det_scores": ["batch", 50],
                    "det_classes": ["batch", 50]}
    rep = check_onnx(model, det, images=images(3))  # checker, allowlist (plugin), pre-NMS parity
    assert rep["passed"], rep["errors"]
    assert "TRT::EfficientNMS_TRT" in rep["ops"] and rep["nms"] is None
    with pytest.raises(ValueError, match="obb"):
        emit_onnx(random_detector("tiny", 3, "obb").spec, random_detector("tiny", 3, "obb").variables, nms="trt")


def test_ultralytics_reference_weights(tmp_path):
    io = np.load(REFERENCE / "yolov8n_nc80_io.npz")
    x = io["input"]  # [1,3,320,320]
    # npz: the exact float32 weights -> tight agreement with Ultralytics' float64 output
    det = from_ultralytics(REFERENCE / "yolov8n_nc80_state.npz")
    path = export_onnx(det, tmp_path / "ref.onnx", imgsz=320)
    y = ort_session(path).run(None, {"images": x})[0]
    ref = io["y_f64"]
    box_scale = np.abs(ref[:, :4]).max()
    assert np.abs(y[:, :4] - ref[:, :4]).max() / box_scale <= 1e-4
    assert np.abs(y[:, 4:] - ref[:, 4:]).max() <= 1e-4
    rep = check_onnx(path, det, images=x.transpose(0, 2, 3, 1))
    assert rep["passed"], rep["errors"]
    # .pt: float16 weights (Ultralytics' checkpoint format) -> within float16-weight tolerance of `y`
    det16 = from_ultralytics(REFERENCE / "yolov8n_nc80_random.pt")
    y16 = ort_session(emit_onnx(det16.spec, det16.variables, imgsz=320).SerializeToString()).run(None, {"images": x})[0]
    d = np.abs(y16 - io["y"])
    assert d[:, :4].max() / box_scale <= 5e-3 and d[:, 4:].max() <= 2e-2
    assert d[:, :4].max() / box_scale > 1e-5  # the float16 rounding is really there


def test_metadata(tmp_path):
    spec = tiny_spec(3, names=("car", "bus", "van"))
    det = Detector(spec, random_variables(spec))
    path = export_onnx(det, tmp_path / "m.onnx", imgsz=(64, 96), dynamic=True, metadata={"source": "unit"})
    meta = read_metadata(path)
    assert ast.literal_eval(meta["names"]) == {0: "car", 1: "bus", 2: "van"}
    assert meta["stride"] == "32" and meta["strides"] == "[8, 16, 32]" and meta["imgsz"] == "[64, 96]"
    assert meta["task"] == "detect" and meta["dynamic"] == "True" and meta["source"] == "unit"
    assert "cx, cy, w, h" in meta["output_layout"]
    assert spec_from_onnx(path) == spec
    model = onnx.load(str(path))
    assert model.producer_name == "yolojax" and model.opset_import[0].version == 17


def test_opsets_and_bad_arguments():
    det = random_detector("tiny", 4)
    for opset in (13, 21):
        m = emit_onnx(det.spec, det.variables, imgsz=IMGSZ, opset=opset, batch=3)
        assert check_onnx(m, det, images=images(3))["passed"]
    with pytest.raises(ValueError, match="multiples of 32"):
        emit_onnx(det.spec, det.variables, imgsz=100)
    with pytest.raises(ValueError, match="opset 11"):
        emit_onnx(det.spec, det.variables, opset=11)
    with pytest.raises(ValueError, match="nms"):
        emit_onnx(det.spec, det.variables, nms="fast")
    # variables that do not fit the spec: the error names the layer
    wider = det.spec.replace(widths={**det.spec.width_map, "model_0": det.spec.width("model_0") + 8})
    with pytest.raises(ValueError, match="model_0"):
        emit_onnx(wider, det.variables, imgsz=IMGSZ)


def test_pruning_package_output_parity():
    """What `pruning.prune` produces (folded constants of removed channels included) exports exactly too."""
    import pruning
    base = random_detector("n")
    spec, variables = pruning.prune(base.spec, base.variables, pruning.GlobalRatio(ratio=0.6, round_to=1))
    assert spec.widths != base.spec.widths
    model = emit_onnx(spec, variables, imgsz=IMGSZ, dynamic=True)
    assert_parity(model, Detector(spec, variables), [3, 1])
