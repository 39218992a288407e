"""INT8 ONNX: ONNX Runtime static quantization (QDQ or QOperator), calibrated on letterboxed dataset images.

Two targets, because the runtimes disagree on what an INT8 graph must look like:

* `cpu` (default; ONNX Runtime on x86/ARM CPUs): uint8 asymmetric activations, int8 symmetric per-channel
  weights (U8S8), and Q/DQ on every op of the body (Conv, Sigmoid, Mul, Add, Concat, Split, MaxPool, Resize).
  ONNX Runtime then runs the body as QLinearConv -> QLinearSigmoid -> QLinearMul (SiLU) with QLinearAdd and
  QLinearConcat, and MaxPool / Resize / Split directly on uint8: tensors stay 8-bit from the first conv to the
  head. Measured on this 2-core AMD EPYC (AVX512-VNNI), yolov8n 640: ~0.4x the float32 latency
  (benchmarks/results/int8.md).
* `tensorrt`: int8 symmetric activations and weights (zero point 0, the only kind TensorRT's explicit
  quantization reads), Q/DQ on the inputs of convolutions only (TensorRT's recommended placement: it fuses
  Conv+SiLU itself and requantizes at the next conv's input).
  ONNX Runtime's x86 CPU provider does not fuse int8-activation QDQ (its S8S8 kernels are slower than U8S8),
  so there this graph runs as float convs wrapped in fake quantization: slower than float32 (~1.3x here).

Why the first INT8 export was slow (conv-only Q/DQ, int8 activations): neither condition for ONNX Runtime's
QDQ fusion held. With int8 activations no DQ->Conv->Q unit is fused on x86; with conv-only Q/DQ the conv
output goes to a float Sigmoid/Mul, so even uint8 gives QLinearConv followed by DQ -> float SiLU -> Q at every
layer (~0.5x). Only uint8 activations *and* every body op quantized keep the tensors in 8 bits end to end.

The head's last 1x1 convs (box distribution, class logits, angle) stay float by default, and DFL, decode,
sigmoid and NMS always do: their outputs feed a softmax and pixel coordinates (8 bits over 640 px are 2.5 px
steps), and they cost little.
"""
from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from yolojax.model.graph import lower

from .check import _with_outputs, ort_session, reference_outputs, unsupported_ops
from .images import CalibrationDataError, load_images
from .onnx_emit import body_node_names, decoded_tensors, read_metadata, spec_from_onnx

METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("cpu", "tensorrt")
QUANT_FORMATS = ("qdq", "qoperator")
# Every op type of the emitted body (see onnx_emit.py): with all of them quantized, ORT's CPU provider keeps
# the tensors uint8 from the first conv to the head.
BODY_OPS = ("Conv", "Sigmoid", "Mul", "Add", "Concat", "Split", "MaxPool", "Resize")
TARGET_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"activation": "uint8", "symmetric_activations": False, "op_types": BODY_OPS, "no_output_q": ()},
    # TensorRT's Q/DQ placement guide: quantize the inputs of weighted ops, not their outputs, so the conv's
    # output stays high precision for the SiLU it fuses (the next conv's input Q requantizes it).
    "tensorrt": {"activation": "int8", "symmetric_activations": True, "op_types": ("Conv",),
                 "no_output_q": ("Conv",)},
}
# Chunk of calibration batches per collection pass for histogram calibrators, which hold every activation
# of every image of a pass in memory (yolov8n 640: ~0.2 GB per image).
_HIST_CHUNK = 8


def float_tail_nodes(model: onnx.ModelProto, keep_head_float: bool = True, spec=None) -> list[str]:
    """Names of the nodes left in float: everything the emitter writes under the Detect layer's name that is
    not a node of the spec's graph (reshapes, DFL, decode, score sigmoid, angle, the branch concats), NMS and
    the output concat; with keep_head_float also the head's final plain convs (graph roles box/cls/angle).
    `spec`: the model's spec (default: the one in its metadata)."""
    spec = spec if spec is not None else spec_from_onnx(model)
    graph = lower(spec)
    body = {name for names in body_node_names(spec).values() for name in names}
    head_convs = {f"{n.path}/Conv" for n in graph.head_outputs}
    prefix = f"{graph.head_name}/"
    return [n.name for n in model.graph.node
            if (n.name.startswith(prefix) and n.name not in body) or n.name.startswith(("nms/", "output0"))
            or (keep_head_float and n.name in head_convs)]


class _Reader:
    """CalibrationDataReader over images [N,h,w,3] in [0,1], fed as NCHW batches of `batch`.

    `__len__`/`set_range` let ORT collect in chunks (`CalibStridedMinMax`)."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self.name, self.batch = name, batch
        self.data = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        self.n = len(self.data) // batch
        self.pos, self.end = 0, self.n

    def __len__(self) -> int:
        return self.n

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pos, self.end = start_index, min(end_index, self.n)

    def get_next(self) -> dict | None:
        if self.pos >= self.end:
            return None
        x = self.data[self.pos * self.batch:(self.pos + 1) * self.batch]
        self.pos += 1
        return {self.name: x}

    def rewind(self) -> None:
        self.pos, self.end = 0, self.n


def _chunk(n: int, most: int = _HIST_CHUNK) -> int:
    """Largest divisor of n that is <= most (ORT's strided collection needs n % chunk == 0)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def quantize_int8(float_onnx: str | Path, out: str | Path, detector=None, *,
                  calib_data: str | Path | np.ndarray, calib_images: int = 256, method: str = "minmax",
                  target: str = "cpu", quant_format: str = "qdq", keep_head_float: bool = True,
                  op_types: Sequence[str] | None = None, activations: str | None = None,
                  per_channel: bool = True, reduce_range: bool = False, keep_float: str | Sequence[str] = "none",
                  scan_images: int = 32, check_images: np.ndarray | None = None, seed: int = 0,
                  ranges: dict | None = None, log=None) -> dict:
    """Quantize an exported float32 ONNX graph to INT8 and check it.

    calib_data: image dir / .txt list / dataset YAML (its `val`, else `train`; letterboxed to the graph's
    size) or an array [N,h,w,3] in [0,1]. target: 'cpu' (uint8 activations, every body op: fast in ONNX
    Runtime) or 'tensorrt' (symmetric int8, Q/DQ on convs only); see the module docstring. quant_format:
    'qdq' (QuantizeLinear/DequantizeLinear around float ops; ORT fuses them) or 'qoperator' (QLinearConv etc.
    written out; cpu target only). op_types: override the target's quantized op types. keep_head_float: leave
    the head's final 1x1 convs float (DFL/decode/NMS are always float). activations: override the target's
    activation type, 'uint8' (asymmetric) or 'int8' (symmetric), for experiments. reduce_range: 7-bit weights, for
    x86 CPUs without VNNI where U8S8 products can saturate. keep_float: body convs (with their SiLU) left in float:
    'none', 'auto' (the per-layer sensitivity scan: `sensitivity_scan`, on `scan_images` calibration images),
    or conv paths ('model_2/cv1', as `conv_units` names them). log: a callable for the scan's progress.
    ranges: activation ranges {tensor: (lo, hi)} from quantization-aware training (`yolojax.model.quant`, a QAT
    checkpoint's meta['qat']['ranges']): used as they are instead of calibrating (calib_data then only supplies
    the check images), so the INT8 graph rounds exactly where and how the QAT model did; cpu target, minmax.

    Returns {'path', 'calib_images', 'method', 'target', 'format', 'activation_type', 'op_types',
    'quantized_convs', 'float_convs', 'qdq_nodes', 'size_mb', 'float_size_mb', 'checker', 'unsupported_ops',
    'tensorrt_ready' (symmetric int8 Q/DQ that TensorRT parses: the tensorrt target),
    'ort_ops' (op counts of the graph ONNX Runtime runs after its optimizations), 'ort_int8_convs',
    'vs_float': {'box_mae_px', 'box_max_rel', 'score_mae', 'score_max_abs'}, 'vs_jax' and 'float_vs_jax' (same
    keys, with a detector), 'kept_float' (the body convs left float), 'scan' (with keep_float='auto'), 'passed',
    'summary'}.
    """
    # heavy (start-up of every `yolojax` command that imports export): only quantizing needs them
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process


    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if target not in TARGETS:
        raise ValueError(f"INT8 target must be one of {TARGETS}, got {target!r}")
    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {QUANT_FORMATS}, got {quant_format!r}")
    if target == "tensorrt" and quant_format != "qdq":
        raise ValueError("TensorRT reads Q/DQ graphs only: use quant_format='qdq' with target='tensorrt'")
    preset = dict(TARGET_PRESETS[target])
    if activations is not None:
        if activations not in ("uint8", "int8"):
            raise ValueError(f"activations must be 'uint8' or 'int8', got {activations!r}")
        preset.update(activation=activations, symmetric_activations=activations == "int8")
    ops = tuple(op_types) if op_types is not None else preset["op_types"]
    float_onnx, out = Path(float_onnx), Path(out)
    if not float_onnx.is_file():
        raise FileNotFoundError(f"{float_onnx}: no such ONNX file")
    proto = onnx.load(str(float_onnx))
    meta = read_metadata(proto)
    if meta.get("half") == "True":
        raise ValueError(f"{float_onnx}: quantize a float32 export, not a --half one")
    if meta.get("int8") == "True":
        raise ValueError(f"{float_onnx}: already quantized; quantize the float32 export")
    inp = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    h, w = dims[2], dims[3]
    if h <= 0 or w <= 0:  # symbolic height/width (export --dynamic): calibrate at the nominal size
        h, w = (int(v) for v in json.loads(meta.get("imgsz", "[640, 640]")))
    if isinstance(calib_data, np.ndarray):
        imgs = calib_data
        if imgs.ndim != 4 or imgs.shape[1:] != (h, w, 3) or len(imgs) == 0:
            raise CalibrationDataError(f"calibration array must be [N>0,{h},{w},3], got {imgs.shape}")
    else:
        # absolute: a dataset YAML without `path` resolves its splits against its own folder
        # with QAT ranges the images only serve the closeness check
        imgs = load_images(Path(calib_data).absolute(), (h, w), calib_images if ranges is None else
                           min(calib_images, 8), seed=seed)
    batch = dims[0] if dims[0] > 0 else 1
    if len(imgs) < batch:
        raise CalibrationDataError(f"{calib_data}: {len(imgs)} calibration image(s), the graph's batch is {batch}")

    act_type = QuantType.QUInt8 if preset["activation"] == "uint8" else QuantType.QInt8
    reader = _Reader(inp.name, imgs, batch)
    extra = {"ActivationSymmetric": preset["symmetric_activations"], "WeightSymmetric": True,
             "CalibMovingAverage": method == "minmax", "CalibTensorRangeSymmetric": False,
             "OpTypesToExcludeOutputQuantization": list(preset["no_output_q"])}
    if method != "minmax":
        extra["CalibStridedMinMax"] = _chunk(len(reader))  # bounds the calibrator's memory (see _HIST_CHUNK)
    spec = spec_from_onnx(proto)
    units = conv_units(spec)
    if isinstance(keep_float, str) and keep_float not in ("none", "auto"):
        keep_float = [k for k in keep_float.split(",") if k]
    if not isinstance(keep_float, str):
        unknown = [k for k in keep_float if k not in units]
        if unknown:
            raise ValueError(f"keep_float: {unknown[0]!r} is not a quantized conv of this model (e.g. "
                             f"{', '.join(list(units)[:3])}; 'auto' finds them)")
    scan = None
    if ranges is not None:
        if target != "cpu" or method != "minmax" or not keep_head_float or activations not in (None, "uint8"):
            raise ValueError("QAT ranges are for the cpu target's uint8 graph (minmax, head tail float): the model "
                             "was trained to that rounding")
        if keep_float == "auto":
            raise ValueError("keep_float='auto' re-chooses float convs; a QAT model keeps the ones it was trained with")
    with tempfile.TemporaryDirectory(prefix="yolojax-int8-") as work:
        pre = Path(work) / "pre.onnx"
        # the symbolic shape pass is skipped: shapes are static apart from the batch (and it needs sympy)
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        exclude = float_tail_nodes(onnx.load(str(pre)), keep_head_float)
        calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        cache = Path(work) / "ranges.json"  # calibrated once: every variant of the scan reuses the ranges
        covered = write_range_cache(cache, ranges, onnx.load(str(pre))) if ranges is not None else None

        def quantize(dst: Path, floats: Sequence[str] = ()) -> Path:
            reader.rewind()
            quantize_static(str(pre), str(dst), reader,
                            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=act_type,
                            weight_type=QuantType.QInt8, calibrate_method=calib,
                            nodes_to_exclude=exclude + [n for u in floats for n in units[u]],
                            op_types_to_quantize=list(ops), extra_options=extra, calibration_cache_path=str(cache))
            return dst

        if keep_float == "auto":
            xs = imgs[:max(batch, scan_images - scan_images % batch)]
            scan = sensitivity_scan(quantize, proto, xs, [u for u in units if not set(units[u]) & set(exclude)],
                                    Path(work), batch=batch, log=log)
            keep_float = scan["chosen"]
        elif keep_float == "none":
            keep_float = []
        quantize(tmp_out, keep_float)
    q = onnx.load(str(tmp_out))
    if covered is not None:
        stray = sorted({n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"} - covered)
        if stray:
            raise ValueError(f"QAT ranges do not cover {len(stray)} tensor(s) the INT8 graph quantizes (e.g. "
                             f"{stray[0]}): was the model trained with other float convs?")
    onnx.helper.set_model_props(q, {**meta, "int8": "True", "int8_target": target, "int8_format": quant_format,
                                    "int8_activations": preset["activation"], "int8_ops": ",".join(ops),
                                    "calib_method": "qat" if ranges is not None else method,
                                    "calib_images": "0" if ranges is not None else str(len(imgs)),
                                    "int8_float_convs": ",".join(keep_float)})
    onnx.save_model(q, str(tmp_out))
    tmp_out.replace(out)

    report: dict[str, Any] = {"path": str(out), "calib_images": int(len(imgs)), "method": method, "target": target,
                              "format": quant_format, "activation_type": preset["activation"], "op_types": list(ops),
                              "kept_float": list(keep_float), "qat_ranges": ranges is not None}
    if scan is not None:
        report["scan"] = scan
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
    report["ort_ops"] = ort_optimized_ops(out)
    report["ort_int8_convs"] = report["ort_ops"].get("com.microsoft::QLinearConv", 0) + report["ort_ops"].get(
        "QLinearConv", 0)

    x = check_images if check_images is not None else imgs[:max(batch, 4)]
    x = x[:len(x) - len(x) % batch]  # a fixed-batch graph runs the images in slices of its batch
    if len(x) == 0:
        raise CalibrationDataError(f"need at least {batch} check image(s) for this fixed-batch graph")

    got_f, got_q = decoded_outputs(proto, x, batch), decoded_outputs(q, x, batch)
    report["vs_float"] = _errors(got_q, got_f)
    if detector is not None:
        ref = reference_outputs(detector, x)
        report["vs_jax"] = _errors(got_q, {"boxes": ref["boxes"], "scores": ref["scores"]})
        report["float_vs_jax"] = _errors(got_f, {"boxes": ref["boxes"], "scores": ref["scores"]})
    finite = bool(np.isfinite(got_q["boxes"]).all() and np.isfinite(got_q["scores"]).all())
    # QOperator graphs are ONNX Runtime's own (QLinear* ops): the TensorRT allowlist does not apply to them.
    # TensorRT also needs zero points of 0 (symmetric int8): only the tensorrt target's graph parses there.
    report["tensorrt_ready"] = bool(target == "tensorrt" and not report["unsupported_ops"])
    report["passed"] = bool(report["checker"] and finite and report["quantized_convs"] > 0
                            and (quant_format == "qoperator" or not report["unsupported_ops"]))
    v = report["vs_float"]
    floats = (f", {len(keep_float)} body conv(s) kept float ({', '.join(keep_float)})" if keep_float else "")
    fused = (f"ONNX Runtime runs {report['ort_int8_convs']} of them as QLinearConv"
             if report["ort_int8_convs"] or target == "cpu" else
             "ONNX Runtime's CPU provider runs them as float convs with fake quantization (for TensorRT)")
    report["summary"] = (
        f"INT8 {quant_format.upper()} ({target}: {preset['activation']} activations, int8 weights): "
        f"{report['quantized_convs']} convs int8, {report['float_convs']} float "
        f"({'head tail kept float' if keep_head_float else 'head convs quantized, decode float'}{floats}), {fused}; "
        f"{report['size_mb']} MB (float {report['float_size_mb']} MB); onnx.checker "
        f"{'ok' if report['checker'] else 'FAILED'}, TensorRT ops "
        f"{'ok' if not report['unsupported_ops'] else report['unsupported_ops']}"
        f"{'' if report['tensorrt_ready'] else ' (uint8/QLinear graph: for ONNX Runtime, not TensorRT)'}; "
        f"vs float32 on {len(x)} images: box MAE {v['box_mae_px']:.3g} px (max rel to scale {v['box_max_rel']:.3g}), "
        f"score MAE {v['score_mae']:.3g} (max {v['score_max_abs']:.3g})")
    return report


def write_range_cache(path: Path, ranges: dict, model: onnx.ModelProto) -> set[str]:
    """ONNX Runtime's calibration cache (what `quantize_static(calibration_cache_path=)` loads instead of
    calibrating) holding the given ranges {tensor: (lo, hi) or {'lo', 'hi'}}. Tensors that take their input's
    quantization in ONNX Runtime (Split parts, MaxPool, Resize) get their input's range; every other tensor of
    the graph gets an empty range (0, 0). Returns the tensors with a real range."""
    rs = {k: tuple(float(x) for x in ((v["lo"], v["hi"]) if isinstance(v, dict) else v)) for k, v in ranges.items()}
    produced = {o: n for n in model.graph.node for o in n.output}
    out, covered = {}, set()
    for t in [model.graph.input[0].name] + [o for n in model.graph.node for o in n.output]:
        r, cur = rs.get(t), t
        while r is None and cur in produced and produced[cur].op_type in ("Split", "MaxPool", "Resize"):
            cur = produced[cur].input[0]
            r = rs.get(cur)
        out[t] = r if r is not None else (0.0, 0.0)  # not rounded by the QAT model: must stay float
        if r is not None:  # (a dead layer's range is (0, 0) too: ORT and QAT both give it scale 1)
            covered.add(t)

    def arr(v):
        return {"data": [v], "dtype": "float32", "CLS": "numpy.array"}
    data = {t: {"lowest": arr(lo), "highest": arr(hi), "CLS": "TensorData"} for t, (lo, hi) in out.items()}
    path.write_text(json.dumps({"CLS": "TensorsData", "data": data, "smooth_quant": False,
                                "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"}}))
    return covered


def conv_units(spec) -> dict[str, list[str]]:
    """The units a sensitivity scan can leave in float: every conv of the body with its SiLU,
    {conv path ('model_2/cv1'): [its ONNX node names]}, in execution order."""
    units = {}
    for names in body_node_names(spec).values():
        if names[0].endswith("/Conv"):
            units[names[0][:-len("/Conv")]] = names
    return units


def decoded_outputs(model: onnx.ModelProto, x: np.ndarray, batch: int = 1) -> dict[str, np.ndarray]:
    """The decoded boxes [N,4,A] (xywh px) and scores [N,nc,A] an emitted graph computes for images x [N,h,w,3]
    (before NMS when the graph has one), run in ONNX Runtime in slices of `batch`."""
    meta = read_metadata(model)
    name = model.graph.input[0].name
    xi = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    if meta.get("nms", "none") != "none":
        dec = decoded_tensors(spec_from_onnx(model))
        names = [dec["boxes"], dec["scores"]]
        sess = ort_session(_with_outputs(model, names).SerializeToString())
    else:
        names = ["output0"]
        sess = ort_session(model.SerializeToString())
    outs = [np.concatenate(o) for o in zip(*(sess.run(names, {name: xi[i:i + batch]})
                                             for i in range(0, len(xi), batch)))]
    if len(outs) == 2:
        return {"boxes": outs[0], "scores": outs[1]}
    nc = json.loads(meta["spec"])["nc"] if "spec" in meta else outs[0].shape[1] - 4
    return {"boxes": outs[0][:, :4], "scores": outs[0][:, 4:4 + nc]}


def detection_damage(got: dict, ref: dict, conf: float = 0.05) -> float:
    """How far quantized outputs are from the float ones where it matters for detection: over the anchors where
    either model scores some class >= conf, the mean largest class-score error plus the mean (1 - IoU) of the
    boxes. 0 = identical; a label-free stand-in for the mAP lost (the scan's measure)."""
    sf, sq = ref["scores"].astype(np.float64), got["scores"].astype(np.float64)
    rel = (sf.max(1) >= conf) | (sq.max(1) >= conf)  # [N,A]
    if not rel.any():
        return float(np.abs(sq - sf).max(1).mean())
    ds = np.abs(sq - sf).max(1)[rel].mean()
    bf, bq = ref["boxes"].astype(np.float64), got["boxes"].astype(np.float64)

    def corners(b):
        return b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = corners(bf), corners(bq)
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * \
        np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    iou = inter / np.maximum(union, 1e-9)
    return float(ds + (1.0 - iou)[rel].mean())


def sensitivity_scan(quantize, float_model: onnx.ModelProto, images: np.ndarray, units: Sequence[str], work: Path,
                     *, batch: int = 1, max_float: int = 4, min_gain: float = 0.05, log=None) -> dict:
    """Which body convs to keep in float: each conv is left float alone (everything else quantized, the same
    calibrated ranges) and the detection damage against the float model (`detection_damage`, on `images`)
    measured; then, most helpful first, a conv joins the float set when it takes at least `min_gain` of the
    all-INT8 damage off *together with those already chosen*, at most `max_float` of them (each float conv in
    a uint8 graph costs a dequantize/requantize and a float conv).

    quantize(dst, floats) -> dst writes the INT8 graph with `floats` in float. Returns {'images', 'damage_int8'
    (all quantized), 'per_conv': {path: damage with it float}, 'chosen', 'damage_chosen', 'steps', 'seconds'}."""
    import time
    t0 = time.perf_counter()
    ref = decoded_outputs(float_model, images, batch)

    def damage(floats) -> float:
        dst = quantize(work / "scan.onnx", floats)
        return detection_damage(decoded_outputs(onnx.load(str(dst)), images, batch), ref)

    base = damage([])
    per = {}
    for i, u in enumerate(units):
        per[u] = damage([u])
        if log and (i + 1) % 10 == 0:
            log(f"int8 sensitivity scan: {i + 1}/{len(units)} convs ({time.perf_counter() - t0:.0f} s)")
    order = sorted(units, key=lambda u: per[u])
    chosen, cur, steps = [], base, []
    for u in order:
        if base - per[u] < min_gain * base or len(chosen) >= max_float:
            break
        d = damage(chosen + [u])
        steps.append({"conv": u, "alone": round(per[u], 5), "with_chosen": round(d, 5), "kept": cur - d >= min_gain * base})
        if cur - d >= min_gain * base:
            chosen.append(u)
            cur = d
    res = {"images": int(len(images)), "damage_int8": round(base, 5),
           "per_conv": {u: round(per[u], 5) for u in units}, "chosen": chosen, "damage_chosen": round(cur, 5),
           "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    if log:
        log(f"int8 sensitivity scan: damage {base:.4f} all INT8 -> {cur:.4f} with {chosen or 'no conv'} float "
            f"({res['seconds']:.0f} s)")
    return res


def ort_optimized_ops(path: str | Path) -> dict[str, int]:
    """Op counts ('domain::Op' outside the default domain) of the graph ONNX Runtime's CPU provider actually
    runs after its graph optimizations (ORT_ENABLE_ALL): shows whether Q/DQ units were fused into QLinear ops."""
    import onnxruntime as ort  # heavy: see quantize_int8
    with tempfile.TemporaryDirectory(prefix="yolojax-ortopt-") as work:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(work) / "opt.onnx")
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath)
    c = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in m.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _conv_counts(q: onnx.ModelProto) -> dict:
    """Convs with int8 weights (a DequantizeLinear weight input, or QLinearConv) and the float ones."""
    produced = {o: n for n in q.graph.node for o in n.output}
    quant = flt = 0
    for n in q.graph.node:
        if n.op_type == "QLinearConv":
            quant += 1
        elif n.op_type == "Conv":
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


__all__: Sequence[str] = ("quantize_int8", "float_tail_nodes", "calibration_reader", "ort_optimized_ops",
                          "sensitivity_scan", "detection_damage", "conv_units", "decoded_outputs",
                          "METHODS", "TARGETS", "QUANT_FORMATS", "BODY_OPS")
