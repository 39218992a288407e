"""INT8 ONNX: ONNX Runtime static quantization in QDQ form (what TensorRT's explicit-precision mode reads).

Recipe (ONNX Runtime's recommendations for TensorRT-bound models): pre-process (`quant_pre_process`: ONNX
shape inference and graph optimization; the symbolic shape pass is skipped, the graph's shapes are static
apart from the batch), then `quantize_static` with QuantizeLinear/DequantizeLinear pairs, int8 symmetric
activations and per-channel int8 symmetric weights, calibrated (minmax, entropy or percentile) on letterboxed
dataset images. The head's last 1x1 convs (box distribution, class logits, angle) and everything after them
(DFL, decode, sigmoid, NMS) stay in float by default: they are tiny and their outputs feed a softmax and
pixel coordinates, where 8 bits cost the most accuracy.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

METHODS = ("minmax", "entropy", "percentile")
# Head final convs and post-processing; emitter names are `model_22/cv{2,3,4}_{lvl}_2/Conv`, `model_22/dfl/...`.
_FLOAT_TAIL = re.compile(r"^(model_22/(cv\d_\d+_2/|dfl/|decode/|scores|angle/|dist/|logit/|cv\d_\d+/)|nms/|output0)")


def float_tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes left in float: head final convs, their reshapes, DFL, decode, NMS."""
    return [n.name for n in model.graph.node if _FLOAT_TAIL.match(n.name)]


class _Reader:
    """CalibrationDataReader over images [N,h,w,3] in [0,1], fed as NCHW batches of `batch`."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self.name, self.batch = name, batch
        self.data = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        self.pos = 0

    def get_next(self) -> dict | None:
        if self.pos + self.batch > len(self.data):
            return None
        x = self.data[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {self.name: x}

    def rewind(self) -> None:
        self.pos = 0


def quantize_int8(float_onnx: str | Path, out: str | Path, detector=None, *,
                  calib_data: str | Path | np.ndarray, calib_images: int = 256, method: str = "minmax",
                  keep_head_float: bool = True, check_images: np.ndarray | None = None,
                  per_channel: bool = True, op_types: Sequence[str] | None = ("Conv",), seed: int = 0) -> dict:
    """Quantize an exported float32 ONNX graph to INT8 QDQ and check it.

    calib_data: image dir / .txt list / dataset YAML (letterboxed to the graph's size) or an array
    [N,h,w,3] in [0,1]. op_types: ops that get Q/DQ; the default (convolutions only: their inputs and weights)
    is TensorRT's recommended placement and keeps Conv+SiLU fusable; None quantizes every op ORT can.
    Returns {'path', 'calib_images', 'method', 'quantized_convs', 'float_convs',
    'qdq_nodes', 'size_mb', 'float_size_mb', 'checker', 'unsupported_ops', 'vs_float': {'box_mae_px',
    'box_max_rel', 'score_mae', 'score_max_abs'}, 'vs_jax' (same keys, with a detector), 'passed', 'summary'}.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .check import ort_session, reference_outputs, unsupported_ops
    from .images import CalibrationDataError, load_images
    from .onnx_emit import read_metadata

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    float_onnx, out = Path(float_onnx), Path(out)
    proto = onnx.load(str(float_onnx))
    meta = read_metadata(proto)
    if meta.get("half") == "True":
        raise ValueError(f"{float_onnx}: quantize a float32 export, not a --half one")
    inp = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    h, w = dims[2], dims[3]
    if isinstance(calib_data, np.ndarray):
        imgs = calib_data
        if imgs.ndim != 4 or imgs.shape[1:] != (h, w, 3) or len(imgs) == 0:
            raise CalibrationDataError(f"calibration array must be [N>0,{h},{w},3], got {imgs.shape}")
    else:
        imgs = load_images(calib_data, (h, w), calib_images, seed=seed)
    batch = dims[0] if dims[0] > 0 else 1
    if len(imgs) < batch:
        raise CalibrationDataError(f"{calib_data}: {len(imgs)} calibration image(s), the graph's batch is {batch}")

    with tempfile.TemporaryDirectory(prefix="yolojax-int8-") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        pre_proto = onnx.load(str(pre))
        exclude = float_tail_nodes(pre_proto) if keep_head_float else []
        calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        quantize_static(str(pre), str(tmp_out), _Reader(inp.name, imgs, batch), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calib, nodes_to_exclude=exclude,
                        op_types_to_quantize=list(op_types) if op_types else None,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "CalibMovingAverage": method == "minmax",
                                       "CalibTensorRangeSymmetric": False})
    q = onnx.load(str(tmp_out))
    onnx.helper.set_model_props(q, {**meta, "int8": "True", "calib_method": method, "calib_images": str(len(imgs))})
    onnx.save_model(q, str(tmp_out))
    tmp_out.replace(out)

    report: dict[str, Any] = {"path": str(out), "calib_images": int(len(imgs)), "method": method}
    try:
        onnx.checker.check_model(str(out), full_check=True)
        report["checker"] = True
    except Exception as e:
        report["checker"] = False
        report["checker_error"] = str(e)
    report["unsupported_ops"] = unsupported_ops(q)
    report.update(_conv_counts(q))
    report["size_mb"] = round(out.stat().st_size / 1e6, 3)
    report["float_size_mb"] = round(float_onnx.stat().st_size / 1e6, 3)

    x = check_images if check_images is not None else imgs[: max(batch, min(4, len(imgs)))]
    if dims[0] > 0:
        x = x[:batch]
    xi = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    nc = json.loads(meta["spec"])["nc"] if "spec" in meta else None
    if meta.get("nms", "none") != "none":
        from .check import _with_outputs
        from .onnx_emit import BOXES_TENSOR, SCORES_TENSOR
        names = [BOXES_TENSOR, SCORES_TENSOR]
        fq = [ort_session(_with_outputs(m, names).SerializeToString()).run(names, {inp.name: xi})
              for m in (proto, q)]
        got_f, got_q = ({"boxes": b, "scores": s} for b, s in fq)
    else:
        yf = ort_session(str(float_onnx)).run(["output0"], {inp.name: xi})[0]
        yq = ort_session(str(out)).run(["output0"], {inp.name: xi})[0]
        got_f = {"boxes": yf[:, :4], "scores": yf[:, 4:4 + nc] if nc else yf[:, 4:]}
        got_q = {"boxes": yq[:, :4], "scores": yq[:, 4:4 + nc] if nc else yq[:, 4:]}
    report["vs_float"] = _errors(got_q, got_f)
    if detector is not None:
        ref = reference_outputs(detector, x)
        report["vs_jax"] = _errors(got_q, {"boxes": ref["boxes"], "scores": ref["scores"]})
        report["float_vs_jax"] = _errors(got_f, {"boxes": ref["boxes"], "scores": ref["scores"]})
    finite = bool(np.isfinite(got_q["boxes"]).all() and np.isfinite(got_q["scores"]).all())
    report["passed"] = bool(report["checker"] and not report["unsupported_ops"] and finite
                            and report["quantized_convs"] > 0)
    v = report["vs_float"]
    report["summary"] = (
        f"INT8 QDQ: {report['quantized_convs']} convs int8, {report['float_convs']} float "
        f"({'head tail kept float' if keep_head_float else 'all quantized'}), {report['qdq_nodes']} Q/DQ nodes, "
        f"{report['size_mb']} MB (float {report['float_size_mb']} MB); onnx.checker "
        f"{'ok' if report['checker'] else 'FAILED'}, TensorRT ops {'ok' if not report['unsupported_ops'] else report['unsupported_ops']}; "
        f"vs float32 on {len(x)} images: box MAE {v['box_mae_px']:.3g} px (max rel to scale {v['box_max_rel']:.3g}), "
        f"score MAE {v['score_mae']:.3g} (max {v['score_max_abs']:.3g})")
    return report


def _conv_counts(q: onnx.ModelProto) -> dict:
    """Convs fed by a DequantizeLinear weight are int8; the rest are float."""
    produced = {o: n for n in q.graph.node for o in n.output}
    quant = flt = 0
    for n in q.graph.node:
        if n.op_type == "Conv":
            src = produced.get(n.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                quant += 1
            else:
                flt += 1
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q.graph.node)
    return {"quantized_convs": quant, "float_convs": flt, "qdq_nodes": qdq}


def _errors(got: dict, ref: dict) -> dict:
    db = np.abs(got["boxes"].astype(np.float64) - ref["boxes"])
    ds = np.abs(got["scores"].astype(np.float64) - ref["scores"])
    scale = max(float(np.abs(ref["boxes"]).max()), 1.0)
    return {"box_mae_px": float(db.mean()), "box_max_rel": float(db.max() / scale), "score_mae": float(ds.mean()),
            "score_max_abs": float(ds.max())}


def calibration_reader(name: str, images: np.ndarray, batch: int = 1) -> Any:
    """The CalibrationDataReader used by `quantize_int8`, for custom quantization flows."""
    return _Reader(name, images, batch)


__all__: Sequence[str] = ("quantize_int8", "float_tail_nodes", "calibration_reader", "METHODS")
