"""Checks run on every exported ONNX graph (and callable on any yolojax export).

1. `onnx.checker.check_model(full_check=True)`;
2. strict shape inference, whose output shapes must agree with the declared ones;
3. every op type in `TRT_OPS` (TensorRT-supported ONNX ops; plugin nodes in domain `TRT` by name);
4. ONNX Runtime output vs `Detector(images)`: an element passes when |onnx - jax| <= atol, or when
   |onnx - jax| / scale <= rtol with `scale` the largest |value| of its output group over the batch (box rows:
   the pixel coordinate range, about the image size; scores: 1; angle: pi). Pixel coordinates near 640 carry
   float32 rounding of ~6e-5 per operation, so a plain elementwise relative error would be meaningless for
   boxes near the origin and too strict an absolute error for the ones far from it. Defaults: atol 2e-4,
   rtol 1e-5 (float32); atol 2e-2, rtol 5e-3 (half: seen 2e-4 and 1.3e-4 on O(1) random weights, 1.7e-2
   and 3.7e-3 on the Ultralytics reference weights, whose logits reach the hundreds).
   With NMS inside the graph the decoded tensors feeding the NMS are compared as above, and for nms='ort'
   the detections are compared with `yolojax.eval.nms` (numpy reference) on the JAX outputs.
   A graph with symbolic height and width (`export --dynamic`) is checked at its nominal size (metadata
   `imgsz`) and at further sizes (`sizes`; default one non-square size and another batch), since a wrong
   shape computation in the graph shows only at a size it was not traced for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from yolojax.eval.nms import non_max_suppression_numpy

from .onnx_emit import decoded_tensors, read_metadata, spec_from_onnx

# ONNX ops TensorRT 10's parser supports (onnx-tensorrt docs/operators.md), restricted to those a detector
# export may reasonably contain. Einsum is left out on purpose (slow or unsupported on older TensorRT).
TRT_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "CumSum", "DepthToSpace",
    "DequantizeLinear", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather",
    "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul",
    "Max", "MaxPool", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "Not", "Or", "PRelu", "Pad",
    "Pow", "QuantizeLinear", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "Relu", "Reshape", "Resize", "Round", "ScatterElements", "ScatterND", "Shape", "Sigmoid",
    "Sign", "Sin", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum",
    "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where", "Xor",
})
TRT_PLUGINS = frozenset({"EfficientNMS_TRT", "BatchedNMSDynamic_TRT", "EfficientNMS_ONNX_TRT"})

TOLERANCES = {False: (2e-4, 1e-5), True: (2e-2, 5e-3)}  # half -> (atol, rtol)


class ExportCheckError(RuntimeError):
    """An exported graph failed a check; the message lists every failure."""


def ort_session(model: str | Path | bytes, threads: int | None = None, providers: Sequence[str] | None = None):
    """An ONNX Runtime session that does not spin its worker threads after a run (they would steal the cores
    from whatever runs next, see /work/shared/tools/README.md); intra-op threads = cores by default."""
    import onnxruntime as ort  # heavy: loaded on the first session, not with the exporter
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = str(model) if isinstance(model, (str, Path)) else model
    return ort.InferenceSession(src, so, providers=list(providers or ["CPUExecutionProvider"]))


def op_types(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Sorted (domain, op_type) pairs of every node (subgraphs included)."""
    found: set[tuple[str, str]] = set()

    def walk(graph):
        for n in graph.node:
            found.add((n.domain or "", n.op_type))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(model.graph)
    return sorted(found)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types outside TRT_OPS (default domain) / TRT_PLUGINS (other domains)."""
    bad = []
    for domain, op in op_types(model):
        ok = op in TRT_OPS if domain in ("", "ai.onnx") else op in TRT_PLUGINS
        if not ok:
            bad.append(f"{domain}::{op}" if domain else op)
    return bad


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _shape_inference(model: onnx.ModelProto) -> tuple[bool, str]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # onnx raises several InferenceError types
        return False, f"shape inference failed: {e}"
    declared = {o.name: _dims(o) for o in model.graph.output}
    for o in inferred.graph.output:
        got, want = _dims(o), declared[o.name]
        if len(got) != len(want) or any(isinstance(w, int) and w and g != w for g, w in zip(got, want)):
            return False, f"output {o.name}: inferred shape {got} != declared {want}"
    return True, ""


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Copy of `model` whose outputs are the tensors `names` (nodes from plugin domains removed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [n for n in m.graph.node if (n.domain or "") in ("", "ai.onnx")]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return m


def reference_outputs(detector, images: np.ndarray) -> dict[str, np.ndarray]:
    """JAX outputs laid out like the graph: boxes [B,4,A], scores [B,nc,A] (+ angle [B,1,A])."""
    p = detector(images)
    out = {"boxes": np.asarray(p["boxes"]).transpose(0, 2, 1), "scores": np.asarray(p["scores"]).transpose(0, 2, 1)}
    if "angle" in p:
        out["angle"] = np.asarray(p["angle"]).transpose(0, 2, 1)
    return out


def compare(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], atol: float, rtol: float) -> dict:
    """Scale-relative comparison per output group (see module docstring)."""
    res: dict[str, Any] = {"atol": atol, "rtol": rtol, "groups": {}}
    ok = True
    for k, r in ref.items():
        g = got[k]
        if g.shape != r.shape:
            res["groups"][k] = {"error": f"shape {g.shape} != {r.shape}"}
            ok = False
            continue
        scale = max(float(np.abs(r).max(initial=0.0)), 1.0)
        d = np.abs(g.astype(np.float64) - r.astype(np.float64))
        bad = (d > atol) & (d / scale > rtol)
        grp = {"max_abs": float(d.max(initial=0.0)), "max_rel": float(d.max(initial=0.0) / scale),
               "scale": scale, "n_bad": int(bad.sum()), "size": int(d.size)}
        ok &= grp["n_bad"] == 0 and bool(np.isfinite(g).all())
        res["groups"][k] = grp
    res["max_abs"] = max((g.get("max_abs", np.inf) for g in res["groups"].values()), default=0.0)
    res["max_rel"] = max((g.get("max_rel", np.inf) for g in res["groups"].values()), default=0.0)
    res["passed"] = bool(ok)
    return res


def compare_detections(dets: np.ndarray, num: np.ndarray, ref: Mapping[str, np.ndarray], *, box_tol: float,
                       score_tol: float) -> dict:
    """Graph NMS rows [B,max_det,6] vs the reference NMS dict (boxes/scores/classes/valid, padded).

    Each reference detection must find an unclaimed graph detection of the same class within the tolerances
    (order-free, so exact score ties may come out in either order)."""
    total = matched = n_graph = 0
    for b in range(dets.shape[0]):
        v = ref["valid"][b]
        rb, rs, rc = ref["boxes"][b][v], ref["scores"][b][v], ref["classes"][b][v]
        n = int(num[b])
        gb, gs, gc = dets[b, :n, :4], dets[b, :n, 4], dets[b, :n, 5].astype(np.int64)
        total, n_graph = total + len(rs), n_graph + n
        free = np.ones(n, bool)
        for box, score, cls in zip(rb, rs, rc):
            cand = free & (gc == cls) & (np.abs(gs - score) <= score_tol) & (np.abs(gb - box).max(-1, initial=0) <= box_tol)
            if cand.any():
                free[np.argmax(cand)] = False
                matched += 1
    return {"reference": total, "onnx": n_graph, "matched": matched}


def default_check_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Extra (h, w) a dynamic-size graph is checked at: half the height (a multiple of 32, non-square)."""
    return [(max(32, h // 2 // 32 * 32), w)]


def _run_graph(proto: onnx.ModelProto, x: np.ndarray, nc: int, nms: str, angle: bool) -> dict[str, np.ndarray]:
    """The decoded boxes/scores(/angle) of a graph in ONNX Runtime for NCHW input x."""
    name = proto.graph.input[0].name
    if nms == "none":
        out0 = ort_session(proto.SerializeToString()).run(["output0"], {name: x})[0]
        got = {"boxes": out0[:, :4], "scores": out0[:, 4:4 + nc]}
        if angle:
            got["angle"] = out0[:, 4 + nc:]
        return got
    dec = decoded_tensors(spec_from_onnx(proto))
    names = [dec["boxes"], dec["scores"]] + ([dec["angle"]] if angle else [])
    sess = ort_session(_with_outputs(proto, names).SerializeToString())
    return dict(zip(["boxes", "scores", "angle"], sess.run(names, {name: x})))


def check_onnx(model: str | Path | onnx.ModelProto, detector=None, *, images: np.ndarray | None = None,
               batch: int | None = None, atol: float | None = None, rtol: float | None = None, seed: int = 0,
               reference: Mapping[str, np.ndarray] | None = None, raise_on_fail: bool = False,
               sizes: Sequence[tuple[int, int]] | None = None) -> dict:
    """Run every check on an exported graph. `detector`: the yolojax.Detector it came from (parity is skipped,
    and reported so, without one). `images` [B,H,W,3] float in [0,1] (default: seeded uniform noise, B = the
    graph's batch, or `batch` (default 2) when dynamic; H, W the graph's, or its nominal `imgsz` when they are
    symbolic). `reference`: precomputed `reference_outputs(detector, images)` (saves a JAX compilation per
    batch size). `sizes`: for a graph with symbolic height and width, further (h, w) checked on noise with
    another batch size (default `default_check_sizes`; [] to skip).

    Returns {'passed', 'checker', 'shape_inference', 'ops', 'unsupported_ops', 'parity', 'nms', 'errors'};
    parity: {'max_abs', 'max_rel', 'atol', 'rtol', 'passed', 'groups', 'batch', 'size'} or None; with symbolic
    sizes also 'parity_sizes': the same dict for each extra size.
    """
    path = None if isinstance(model, onnx.ModelProto) else Path(model)
    proto = model if path is None else onnx.load(str(path))
    meta = read_metadata(proto)
    errors: list[str] = []
    report: dict[str, Any] = {"file": str(path) if path else None}

    try:
        onnx.checker.check_model(str(path) if path else proto, full_check=True)
        report["checker"] = True
    except Exception as e:
        report["checker"] = False
        errors.append(f"onnx.checker: {e}")
    ok, msg = _shape_inference(proto)
    report["shape_inference"] = ok
    if not ok:
        errors.append(msg)
    report["ops"] = [f"{d}::{o}" if d else o for d, o in op_types(proto)]
    report["unsupported_ops"] = unsupported_ops(proto)
    if report["unsupported_ops"]:
        errors.append(f"ops outside the TensorRT allowlist: {report['unsupported_ops']}")

    half = meta.get("half") == "True"
    nms = meta.get("nms", "none")
    atol = TOLERANCES[half][0] if atol is None else atol
    rtol = TOLERANCES[half][1] if rtol is None else rtol
    report["parity"] = report["nms"] = None
    if detector is None:
        report["parity_skipped"] = "no Detector given"
    else:
        inp = proto.graph.input[0]
        dims = _dims(inp)
        fixed_b = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        fixed_hw = all(isinstance(d, int) and d > 0 for d in dims[2:4])
        if fixed_hw:
            h, w = int(dims[2]), int(dims[3])
        elif images is not None:
            h, w = np.shape(images)[1:3]
        else:
            h, w = (int(v) for v in json.loads(meta.get("imgsz", "[640, 640]")))
        if images is None:
            n = fixed_b or batch or 2
            images = np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        if images.shape[1:] != (h, w, 3):
            raise ValueError(f"check images must be [B,{h},{w},3] for this graph, got {images.shape}")
        if fixed_b and images.shape[0] != fixed_b:
            raise ValueError(f"graph has a fixed batch {fixed_b}; got {images.shape[0]} check images")
        ref = dict(reference) if reference is not None else reference_outputs(detector, images)
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        got = _run_graph(proto, x, detector.spec.nc, nms, "angle" in ref)
        report["parity"] = compare(got, ref, atol, rtol)
        report["parity"]["batch"] = int(images.shape[0])
        report["parity"]["size"] = [int(h), int(w)]
        if not report["parity"]["passed"]:
            errors.append(f"ONNX Runtime vs JAX: {_fmt_groups(report['parity'])}")
        if not fixed_hw:
            report["parity_sizes"] = []
            rng = np.random.default_rng(seed + 1)
            for k, (sh, sw) in enumerate(default_check_sizes(h, w) if sizes is None else sizes):
                nb = fixed_b or (1 if images.shape[0] > 1 else 2)
                xs = rng.random((nb, int(sh), int(sw), 3), dtype=np.float32)
                r = compare(_run_graph(proto, np.ascontiguousarray(xs.transpose(0, 3, 1, 2)), detector.spec.nc, nms,
                                       "angle" in ref), reference_outputs(detector, xs), atol, rtol)
                r.update(batch=nb, size=[int(sh), int(sw)])
                report["parity_sizes"].append(r)
                if not r["passed"]:
                    errors.append(f"ONNX Runtime vs JAX at {sh}x{sw}: {_fmt_groups(r)}")
        if nms == "ort":
            conf, iou, max_det = float(meta["conf"]), float(meta["iou"]), int(meta["max_det"])
            dets, num = ort_session(proto.SerializeToString()).run(["output0", "num_dets"], {inp.name: x})
            rn = non_max_suppression_numpy(ref["boxes"].transpose(0, 2, 1), ref["scores"].transpose(0, 2, 1),
                                           conf=conf, iou=iou, max_det=max_det, multi_label=True,
                                           max_candidates=10 ** 9)
            box_tol = max(atol, rtol * report["parity"]["groups"]["boxes"]["scale"]) * 4
            r = compare_detections(dets, num, rn, box_tol=box_tol, score_tol=max(atol, rtol) * 4)
            # float16 moves scores across conf/iou thresholds now and then; float32 must agree exactly.
            need = 1.0 if not half else 0.95
            r["passed"] = r["matched"] >= need * max(r["reference"], r["onnx"])
            report["nms"] = r
            if not r["passed"]:
                errors.append(f"NMS: {r['matched']} of {r['reference']} reference detections matched "
                              f"({r['onnx']} from the graph)")
    report["errors"] = errors
    report["passed"] = not errors
    if raise_on_fail and errors:
        raise ExportCheckError(f"{path or 'model'} failed its checks:\n  " + "\n  ".join(errors))
    return report


def _fmt_groups(parity: Mapping) -> str:
    return ", ".join(f"{k} max abs {g['max_abs']:.3g} (rel to scale {g['scale']:.4g}: {g['max_rel']:.3g})"
                     + (f", {g['n_bad']} over tolerance" if g["n_bad"] else "")
                     for k, g in parity["groups"].items() if "max_abs" in g)


def format_report(report: Mapping) -> str:
    """Human-readable summary of `check_onnx`'s report."""
    yes = lambda b: "ok" if b else "FAILED"  # noqa: E731
    lines = [f"onnx.checker (full): {yes(report['checker'])}",
             f"shape inference: {yes(report['shape_inference'])}",
             f"ops ({len(report['ops'])}): {' '.join(report['ops'])}",
             f"TensorRT op allowlist: {yes(not report['unsupported_ops'])}"
             + (f" (unsupported: {report['unsupported_ops']})" if report["unsupported_ops"] else "")]
    p = report.get("parity")
    if p:
        for q in [p] + list(report.get("parity_sizes") or []):
            size = f", {q['size'][0]}x{q['size'][1]}" if "size" in q else ""
            lines.append(f"ONNX Runtime vs JAX (batch {q['batch']}{size}, atol {q['atol']:g} or rtol {q['rtol']:g} "
                         f"of scale): {yes(q['passed'])}: {_fmt_groups(q)}")
    else:
        lines.append(f"ONNX Runtime vs JAX: skipped ({report.get('parity_skipped', 'n/a')})")
    if report.get("nms"):
        r = report["nms"]
        lines.append(f"NMS vs yolojax.eval.nms: {yes(r['passed'])}: {r['matched']}/{r['reference']} matched, "
                     f"graph gave {r['onnx']}")
    lines.append("all checks passed" if report["passed"] else "CHECKS FAILED:\n  " + "\n  ".join(report["errors"]))
    return "\n".join(lines)
