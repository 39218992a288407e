"""ONNX graph emitted from the Spec: a fold over its lowered graph (`yolojax.model.graph`), one ONNX op per node.

jax2tf -> tf2onnx no longer works on current JAX (see DESIGN.md §5), so the graph is written directly from the
same Spec and variables the Flax model reads, folding over the same nodes `YOLOv8.__call__` folds over, and
ONNX nodes are named after them (`model_2/m_0/cv1/Conv`, `model_2/Split`). A pruned spec (any widths, uneven
C2f splits) or another architecture (YOLOv8-P2: four levels, strides 4-32) is just another spec.

Graph contract (see docs/export.md):
  input  `images`  float32 [B, 3, H, W] (NCHW, RGB, values in [0, 1]). dynamic: B, H, W symbolic (`batch`,
         `height`, `width`; H and W multiples of 32), as Ultralytics' dynamic export: the anchor grid is then
         computed in the graph from the feature-map shapes, and A is symbolic (`anchors`).
  output `output0` float32 [B, 4 + nc, A] (detect) or [B, 4 + nc + 1, A] (obb): rows cx, cy, w, h in input
         pixels, then the nc sigmoid class scores, then (obb) the angle in radians; A = sum of (H/s)(W/s)
         over the strides (8, 16, 32; 4-32 for P2), finest level first, row-major -- the layout of
         Ultralytics' ONNX export.
  nms='ort' (ONNX NonMaxSuppression, runs in ONNX Runtime / TensorRT >= 8.5):
         `output0` float32 [B, max_det, 6] rows (x1, y1, x2, y2, score, class), sorted by score, zero padded,
         and `num_dets` int64 [B]: class-aware multi-label NMS like Ultralytics' predict.
  nms='trt' (TensorRT EfficientNMS_TRT plugin, domain `TRT`; not runnable in ONNX Runtime):
         `num_dets` int32 [B, 1], `det_boxes` float32 [B, max_det, 4] (x1, y1, x2, y2), `det_scores` float32
         [B, max_det], `det_classes` int32 [B, max_det].
  half:  weights and every convolution in float16; float32 I/O (a Cast after the input) and DFL, decode and
         sigmoid in float32 (pixel coordinates need more than float16's 11 bits of mantissa).
BatchNorm is folded into the conv weights and bias (in float64, then rounded once); SiLU is Sigmoid*Mul,
pads are explicit, the x2 upsample is Resize nearest, DFL is Softmax + Mul + ReduceSum (no Einsum).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from yolojax.model.modules import BN_EPS
from yolojax.model.graph import Add, Concat, Conv, Input, MaxPool, Part, Split, Upsample, lower
from yolojax.model.spec import Spec

DEFAULT_OPSET = 17  # TensorRT 8.6+ parses it; ONNX Runtime runs up to the newest
MIN_OPSET = 13  # Split/ReduceSum/Softmax semantics used here
OUTPUT_LAYOUT = ("output0 [B, 4+nc(+1 angle for obb), A]: cx, cy, w, h (input pixels), nc sigmoid scores"
                 "(, angle radians); anchors P3 first, row-major")
NMS_KINDS = ("ort", "trt")


def decoded_tensors(spec: Spec) -> dict[str, str]:
    """Names of the decoded tensors that feed `output0` (or the NMS): boxes, scores (and angle for obb)."""
    d = lower(spec).head_name
    out = {"boxes": f"{d}/decode/boxes", "scores": f"{d}/scores"}
    if spec.task == "obb":
        out["angle"] = f"{d}/angle/Mul"
    return out


def body_node_names(spec: Spec) -> dict[str, list[str]]:
    """ONNX node names the emitter gives each graph node: {graph node name: [ONNX node names]} (Part nodes
    have none: they are outputs of their Split). Everything else in an emitted model is decode or NMS."""
    out: dict[str, list[str]] = {}
    for n in lower(spec).nodes:
        if isinstance(n, Conv):
            out[n.name] = [f"{n.path}/Conv"] + ([f"{n.path}/Sigmoid", f"{n.path}/SiLU"] if n.bn else [])
        elif not isinstance(n, (Input, Part)):
            out[n.name] = [n.name]
    return out


def _max_opset() -> int:
    # 21: the newest opset both ONNX Runtime >= 1.20 and TensorRT 10 parse.
    return min(21, onnx.defs.onnx_opset_version())


class Graph:
    """Accumulates nodes and initializers; every name is unique and readable (the module path)."""

    def __init__(self, opset: int, half: bool = False):
        self.opset = opset
        self.half = half
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    def const(self, array, dtype=np.int64) -> str:
        """A small shared constant (shapes, axes, scalars), deduplicated by value."""
        a = np.asarray(array, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{len(self._consts)}", a)
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1, domain: str | None = None,
           outputs: Sequence[str] | None = None, **attrs) -> Any:
        name = self.unique(name)
        outs = list(outputs) if outputs is not None else [name if n_out == 1 else f"{name}:{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    @property
    def wdtype(self):
        return np.float16 if self.half else np.float32


def _sub(tree: Mapping, path: str) -> Mapping:
    for part in path.split("/"):
        try:
            tree = tree[part]
        except KeyError:
            raise KeyError(f"variables have no {path!r} (missing {part!r}): they do not fit the spec") from None
    return tree


class Emitter:
    """Emits the network of one (spec, variables) into a Graph. Each `emit_*` mirrors a Flax module."""

    def __init__(self, g: Graph, spec: Spec, variables: Mapping):
        self.g, self.spec = g, spec
        self.params = variables["params"]
        self.stats = variables.get("batch_stats", {})
        self.ch: dict[str, int] = {}  # channels of every emitted tensor, to catch spec/variable mismatch

    # -- Conv: conv (BN folded in) + SiLU --------------------------------------------------------------
    def conv_weights(self, path: str, cin: int, cout: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        p, s = _sub(self.params, path), _sub(self.stats, path)
        w = np.asarray(p["conv"]["kernel"], np.float64)  # HWIO
        if w.shape != (k, k, cin, cout):
            raise ValueError(f"{path}: kernel shape {w.shape} but the spec graph needs {(k, k, cin, cout)}")
        inv = np.asarray(p["bn"]["scale"], np.float64) / np.sqrt(np.asarray(s["bn"]["var"], np.float64) + BN_EPS)
        bias = np.asarray(p["bn"]["bias"], np.float64) - np.asarray(s["bn"]["mean"], np.float64) * inv
        return w.transpose(3, 2, 0, 1) * inv[:, None, None, None], bias

    def conv_node(self, x: str, path: str, w: np.ndarray, b: np.ndarray, k: int, stride: int) -> str:
        g, p = self.g, k // 2
        wn = g.init(f"{path}.weight", w.astype(g.wdtype))
        bn = g.init(f"{path}.bias", b.astype(g.wdtype))
        return g.op("Conv", [x, wn, bn], f"{path}/Conv", kernel_shape=[k, k], strides=[stride, stride],
                    pads=[p, p, p, p], dilations=[1, 1], group=1)

    def emit_conv(self, x: str, n: Conv) -> str:
        if not n.bn:  # plain conv with bias (Detect's final 1x1s): no BN to fold, no activation
            p = _sub(self.params, n.path)
            w = np.asarray(p["kernel"], np.float64)
            if w.shape != (n.k, n.k, self.ch[x], n.channels):
                raise ValueError(f"{n.path}: kernel shape {w.shape} but the spec graph needs "
                                 f"{(n.k, n.k, self.ch[x], n.channels)}")
            out = self.conv_node(x, n.path, w.transpose(3, 2, 0, 1), np.asarray(p["bias"], np.float64), n.k, n.s)
        else:
            w, b = self.conv_weights(n.path, self.ch[x], n.channels, n.k)
            y = self.conv_node(x, n.path, w, b, n.k, n.s)
            sig = self.g.op("Sigmoid", [y], f"{n.path}/Sigmoid")
            out = self.g.op("Mul", [y, sig], f"{n.path}/SiLU")
        self.ch[out] = n.channels
        return out

    # -- the body: one op per graph node ----------------------------------------------------------------
    def emit_body(self, x: str) -> list:
        """Every node of the spec's graph; returns each node's value (a tensor name; a Split's: a list)."""
        g = self.g
        vals: list = []
        for n in lower(self.spec).nodes:
            ins = [vals[i] for i in n.inputs]
            if isinstance(n, Input):
                v = x
            elif isinstance(n, Conv):
                v = self.emit_conv(ins[0], n)
            elif isinstance(n, Split):
                v = g.op("Split", [ins[0], g.const(list(n.sizes))], n.name, n_out=len(n.sizes), axis=1)
                for name, c in zip(v, n.sizes):
                    self.ch[name] = c
            elif isinstance(n, Part):
                v = ins[0][n.index]
            elif isinstance(n, Concat):
                v = g.op("Concat", ins, n.name, axis=1)
            elif isinstance(n, Add):
                if len({self.ch[i] for i in ins}) != 1:
                    raise ValueError(f"{n.name}: residual needs equal widths, got {[self.ch[i] for i in ins]}")
                v = g.op("Add", ins, n.name)
            elif isinstance(n, MaxPool):
                v = g.op("MaxPool", ins, n.name, kernel_shape=[n.k, n.k], strides=[1, 1], pads=[n.k // 2] * 4)
            elif isinstance(n, Upsample):
                # asymmetric + floor at an integer scale is exactly jnp.repeat on H and W.
                v = g.op("Resize", [ins[0], "", g.const([1, 1, n.factor, n.factor], np.float32)], n.name,
                         mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            else:  # pragma: no cover
                raise TypeError(f"ONNX emitter: no rule for {type(n).__name__} ({n.name})")
            if not isinstance(v, list) and not isinstance(n, Conv):
                self.ch[v] = n.channels
            vals.append(v)
        return vals

    # -- Detect -----------------------------------------------------------------------------------------
    def emit_detect(self, vals: Sequence, imgsz: tuple[int, int] | None) -> dict[str, str]:
        """-> {'boxes': [B,4,A] cx,cy,w,h px, 'scores': [B,nc,A] (+ 'angle': [B,1,A])}, all float32.

        imgsz None: H and W are symbolic; anchor counts are -1 in reshapes and the anchor grid and strides
        are computed from each level's feature-map shape in the graph (`emit_anchor_grid`)."""
        g, spec, graph = self.g, self.spec, lower(self.spec)
        d, rm = graph.head_name, spec.reg_max
        obb = spec.task == "obb"
        key = {"box": "dist", "cls": "logit", "angle": "angle"}
        branches: dict[str, list[str]] = {"dist": [], "logit": [], "angle": []}
        shapes = []
        for lv in graph.levels:
            if imgsz is not None:
                h, w = imgsz[0] // lv.stride, imgsz[1] // lv.stride
                shapes.append((h, w))
            for role, nid in lv.outputs:
                n = graph.nodes[nid]
                branch = n.path.rsplit("_", 1)[0]  # model_22/cv2_0: the branch the final conv ends
                hw = h * w if imgsz is not None else -1
                y = g.op("Reshape", [vals[nid], g.const([0, n.channels, hw])], f"{branch}/Reshape")
                if g.half:
                    y = g.op("Cast", [y], f"{branch}/Cast", to=TensorProto.FLOAT)
                branches[key[role]].append(y)
        cat = {k: g.op("Concat", v, f"{d}/{k}/Concat", axis=2) for k, v in branches.items() if v}
        if imgsz is not None:
            a = sum(h * w for h, w in shapes)
            anchors, strides = anchor_grid(shapes, graph.strides)  # [2,A] grid units, [A]
            anc = g.init(f"{d}/anchors", anchors[None])  # [1,2,A]
            stride = g.init(f"{d}/strides", strides.reshape(1, 1, a))
        else:
            a = -1
            anc, stride = self.emit_anchor_grid([vals[lv.feature] for lv in graph.levels], graph.strides, d)
        # DFL: softmax over the bins, expectation with arange(reg_max).
        dist = g.op("Reshape", [cat["dist"], g.const([0, 4, rm, a])], f"{d}/dfl/Reshape")
        prob = g.op("Softmax", [dist], f"{d}/dfl/Softmax", axis=2)
        bins = g.init(f"{d}/dfl.bins", np.arange(rm, dtype=np.float32).reshape(rm, 1))
        ltrb = g.op("ReduceSum", [g.op("Mul", [prob, bins], f"{d}/dfl/Mul"), g.const([2])], f"{d}/dfl/ReduceSum",
                    keepdims=0)  # [B,4,A]
        lt = g.op("Slice", [ltrb, g.const([0]), g.const([2]), g.const([1])], f"{d}/decode/lt")
        rb = g.op("Slice", [ltrb, g.const([2]), g.const([4]), g.const([1])], f"{d}/decode/rb")
        if not obb:
            x1y1 = g.op("Sub", [anc, lt], f"{d}/decode/x1y1")
            x2y2 = g.op("Add", [anc, rb], f"{d}/decode/x2y2")
            cxy = g.op("Div", [g.op("Add", [x1y1, x2y2], f"{d}/decode/sum"), g.const(2.0, np.float32)],
                       f"{d}/decode/cxy")
            wh = g.op("Sub", [x2y2, x1y1], f"{d}/decode/wh")
        else:
            angle = g.op("Mul", [g.op("Sub", [g.op("Sigmoid", [cat["angle"]], f"{d}/angle/Sigmoid"),
                                              g.const(0.25, np.float32)], f"{d}/angle/Sub"),
                                 g.const(np.pi, np.float32)], f"{d}/angle/Mul")  # [B,1,A]
            cos, sin = g.op("Cos", [angle], f"{d}/decode/cos"), g.op("Sin", [angle], f"{d}/decode/sin")
            half = g.op("Div", [g.op("Sub", [rb, lt], f"{d}/decode/rb_lt"), g.const(2.0, np.float32)],
                        f"{d}/decode/half")
            xf, yf = g.op("Split", [half, g.const([1, 1])], f"{d}/decode/xfyf", n_out=2, axis=1)
            xr = g.op("Sub", [g.op("Mul", [xf, cos], f"{d}/decode/xcos"), g.op("Mul", [yf, sin], f"{d}/decode/ysin")],
                      f"{d}/decode/x")
            yr = g.op("Add", [g.op("Mul", [xf, sin], f"{d}/decode/xsin"), g.op("Mul", [yf, cos], f"{d}/decode/ycos")],
                      f"{d}/decode/y")
            cxy = g.op("Add", [g.op("Concat", [xr, yr], f"{d}/decode/xy", axis=1), anc], f"{d}/decode/cxy")
            wh = g.op("Add", [lt, rb], f"{d}/decode/wh")
        boxes = g.op("Mul", [g.op("Concat", [cxy, wh], f"{d}/decode/xywh", axis=1), stride], f"{d}/decode/boxes")
        out = {"boxes": boxes, "scores": g.op("Sigmoid", [cat["logit"]], f"{d}/scores")}
        if obb:
            out["angle"] = angle
        return out


    def emit_anchor_grid(self, feats: Sequence[str], strides: Sequence[int], head: str) -> tuple[str, str]:
        """Anchor centres [1,2,A] (x, y grid units + 0.5) and strides [1,1,A] from the runtime shapes of the
        Detect inputs [B,C,H/s,W/s], P3 first, row-major: `anchor_grid` as graph ops (Shape, Range, Expand) for
        symbolic H, W, as Ultralytics' `make_anchors(feats)`. Only `Shape` reads a feature map (in an INT8
        export, its dequantized copy: no extra Q/DQ); the grid is computed in float under decode/, the tail an
        INT8 export never quantizes (grid units reach 160)."""
        g, d = self.g, f"{head}/decode/anchors"
        pts, sts = [], []
        for lvl, (x, s) in enumerate(zip(feats, strides)):
            n = f"{d}/{lvl}"
            shp = g.op("Shape", [x], f"{n}/Shape")  # [4] int64: B, C, H, W
            hw = g.op("Slice", [shp, g.const([2]), g.const([4]), g.const([0])], f"{n}/hw")  # [2]: H, W
            hwf = g.op("Cast", [hw], f"{n}/hw_f", to=TensorProto.FLOAT)
            hf = g.op("Squeeze", [g.op("Slice", [hwf, g.const([0]), g.const([1]), g.const([0])], f"{n}/h_f1"),
                                  g.const([0])], f"{n}/h_f")
            wf = g.op("Squeeze", [g.op("Slice", [hwf, g.const([1]), g.const([2]), g.const([0])], f"{n}/w_f1"),
                                  g.const([0])], f"{n}/w_f")
            zero, one, half = g.const(0.0, np.float32), g.const(1.0, np.float32), g.const(0.5, np.float32)
            ys = g.op("Add", [g.op("Range", [zero, hf, one], f"{n}/Range_y"), half], f"{n}/ys")  # [H]
            xs = g.op("Add", [g.op("Range", [zero, wf, one], f"{n}/Range_x"), half], f"{n}/xs")  # [W]
            gx = g.op("Expand", [g.op("Unsqueeze", [xs, g.const([0])], f"{n}/xs_1w"), hw], f"{n}/grid_x")  # [H,W]
            gy = g.op("Expand", [g.op("Unsqueeze", [ys, g.const([1])], f"{n}/ys_h1"), hw], f"{n}/grid_y")
            pts.append(g.op("Concat", [g.op("Reshape", [gx, g.const([1, -1])], f"{n}/x_flat"),
                                       g.op("Reshape", [gy, g.const([1, -1])], f"{n}/y_flat")], f"{n}/xy", axis=0))
            count = g.op("ReduceProd", [hw], f"{n}/count", keepdims=1)  # [1] = H*W (attribute axes: opset 13)
            sts.append(g.op("Expand", [g.const([s], np.float32), count], f"{n}/strides"))  # [H*W]
        anc = g.op("Concat", pts, f"{d}/grid", axis=1)  # [2,A]
        anc = g.op("Unsqueeze", [anc, g.const([0])], f"{d}/grid_1")  # [1,2,A]
        st = g.op("Reshape", [g.op("Concat", sts, f"{d}/strides_cat", axis=0), g.const([1, 1, -1])], f"{d}/strides")
        return anc, st


def anchor_grid(shapes: Sequence[tuple[int, int]], strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [2, A] (x, y in grid units, +0.5) and strides [A], as `make_anchors` (P3 first)."""
    pts, st = [], []
    for (h, w), s in zip(shapes, strides):
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                             indexing="ij")
        pts.append(np.stack([sx.ravel(), sy.ravel()]))
        st.append(np.full(h * w, s, np.float32))
    return np.concatenate(pts, 1), np.concatenate(st)


# -- NMS ---------------------------------------------------------------------------------------------------
def emit_nms_ort(g: Graph, boxes: str, scores: str, batch: str, *, conf: float, iou: float, max_det: int
                 ) -> tuple[str, str]:
    """ONNX NonMaxSuppression (class-aware, multi-label) -> padded detections.

    boxes [B,4,A] cx,cy,w,h; scores [B,nc,A]; `batch` a 1-D int64 [1] tensor holding B.
    Returns (dets [B,max_det,6] x1,y1,x2,y2,score,class sorted by score, zero padded; num_dets [B] int64).
    NonMaxSuppression keeps at most max_det boxes per class; the top max_det over all classes of an image are
    then exactly the first max_det survivors of a greedy class-aware NMS over every (anchor, class) pair.
    """
    n = "nms"
    bt = g.op("Transpose", [boxes], f"{n}/boxes_t", perm=[0, 2, 1])  # [B,A,4] cx,cy,w,h
    sel = g.op("NonMaxSuppression", [bt, scores, g.const([max_det]), g.const([iou], np.float32),
                                     g.const([conf], np.float32)], f"{n}/NonMaxSuppression", center_point_box=1)
    bidx = g.op("Gather", [sel, g.const(0)], f"{n}/batch_idx", axis=1)  # [N]
    cidx = g.op("Gather", [sel, g.const(1)], f"{n}/class_idx", axis=1)
    aidx = g.op("Gather", [sel, g.const(2)], f"{n}/box_idx", axis=1)
    sel_scores = g.op("GatherND", [scores, sel], f"{n}/scores")  # [N]
    ba = g.op("Concat", [g.op("Unsqueeze", [bidx, g.const([1])], f"{n}/b1"),
                         g.op("Unsqueeze", [aidx, g.const([1])], f"{n}/a1")], f"{n}/batch_box", axis=1)
    sel_boxes = g.op("GatherND", [bt, ba], f"{n}/boxes")  # [N,4] cx,cy,w,h
    cxy = g.op("Slice", [sel_boxes, g.const([0]), g.const([2]), g.const([1])], f"{n}/cxy")
    hwh = g.op("Div", [g.op("Slice", [sel_boxes, g.const([2]), g.const([4]), g.const([1])], f"{n}/wh"),
                       g.const(2.0, np.float32)], f"{n}/half_wh")
    xyxy = g.op("Concat", [g.op("Sub", [cxy, hwh], f"{n}/x1y1"), g.op("Add", [cxy, hwh], f"{n}/x2y2")],
                f"{n}/xyxy", axis=1)
    rows = g.op("Concat", [xyxy, g.op("Unsqueeze", [sel_scores, g.const([1])], f"{n}/score1"),
                           g.op("Unsqueeze", [g.op("Cast", [cidx], f"{n}/class_f", to=TensorProto.FLOAT),
                                              g.const([1])], f"{n}/class1")], f"{n}/rows", axis=1)  # [N,6]
    # One row per image holding its selections' scores (-1 elsewhere), top max_det of each row.
    brange = g.op("Range", [g.const(0), g.op("Squeeze", [batch, g.const([0])], f"{n}/B"), g.const(1)],
                  f"{n}/brange")
    mask = g.op("Equal", [g.op("Unsqueeze", [bidx, g.const([0])], f"{n}/b0"),
                          g.op("Unsqueeze", [brange, g.const([1])], f"{n}/br1")], f"{n}/mask")  # [B,N]
    dense = g.op("Where", [mask, g.op("Unsqueeze", [sel_scores, g.const([0])], f"{n}/s0"), g.const(-1.0, np.float32)],
                 f"{n}/dense")
    nsel = g.op("Shape", [sel], f"{n}/nsel", start=0, end=1)
    k = g.op("Min", [nsel, g.const([max_det])], f"{n}/k")
    topv, topi = g.op("TopK", [dense, k], f"{n}/TopK", n_out=2, axis=1, largest=1, sorted=1)  # [B,k]
    valid = g.op("Greater", [topv, g.const(-0.5, np.float32)], f"{n}/valid")
    picked = g.op("Gather", [rows, topi], f"{n}/picked", axis=0)  # [B,k,6]
    picked = g.op("Where", [g.op("Unsqueeze", [valid, g.const([2])], f"{n}/valid2"), picked,
                            g.const(0.0, np.float32)], f"{n}/masked")
    padn = g.op("Sub", [g.const([max_det]), k], f"{n}/padn")
    pads = g.op("Concat", [g.const([0, 0, 0, 0]), padn, g.const([0])], f"{n}/pads", axis=0)
    dets = g.op("Pad", [picked, pads, g.const(0.0, np.float32)], f"{n}/Pad", outputs=["output0"], mode="constant")
    num = g.op("ReduceSum", [g.op("Cast", [valid], f"{n}/valid_i", to=TensorProto.INT64), g.const([1])],
               f"{n}/count", outputs=["num_dets"], keepdims=0)
    return dets, num


def emit_nms_trt(g: Graph, boxes: str, scores: str, *, conf: float, iou: float, max_det: int) -> list[str]:
    """TensorRT EfficientNMS_TRT plugin node (domain `TRT`): boxes [B,4,A] cx,cy,w,h, scores [B,nc,A]."""
    bt = g.op("Transpose", [boxes], "nms/boxes_t", perm=[0, 2, 1])
    st = g.op("Transpose", [scores], "nms/scores_t", perm=[0, 2, 1])
    outs = ["num_dets", "det_boxes", "det_scores", "det_classes"]
    g.op("EfficientNMS_TRT", [bt, st], "nms/EfficientNMS_TRT", domain="TRT", outputs=outs,
         background_class=-1, box_coding=1, iou_threshold=float(iou), max_output_boxes=int(max_det),
         plugin_version="1", score_activation=0, score_threshold=float(conf))
    return outs


# -- the whole model -----------------------------------------------------------------------------------
def _imgsz(imgsz) -> tuple[int, int]:
    h, w = (imgsz, imgsz) if isinstance(imgsz, (int, np.integer)) else tuple(int(v) for v in imgsz)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ValueError(f"imgsz {h}x{w} must be positive multiples of 32 (the P5 stride)")
    return h, w


def emit_onnx(spec: Spec, variables: Mapping, *, imgsz: int | Sequence[int] = 640, batch: int = 1,
              dynamic: bool = False, half: bool = False, opset: int = DEFAULT_OPSET, nms: str | None = None,
              conf: float = 0.25, iou: float = 0.7, max_det: int = 300, metadata: Mapping[str, Any] | None = None
              ) -> onnx.ModelProto:
    """The ONNX model of (spec, variables). Pure: no file is written. See the module docstring for the layout.

    dynamic: batch, height and width symbolic (Ultralytics' `dynamic=True`); imgsz is then only the nominal
    size written to the metadata (what checks, calibration and TensorRT's optimisation profile start from)."""
    h, w = _imgsz(imgsz)
    if not MIN_OPSET <= opset <= _max_opset():
        raise ValueError(f"opset {opset} not supported: use {MIN_OPSET}..{_max_opset()}")
    if nms not in (None, *NMS_KINDS):
        raise ValueError(f"nms must be one of {NMS_KINDS} or None, got {nms!r}")
    if nms and spec.task == "obb":
        raise ValueError("NMS inside the graph is for axis-aligned boxes; obb needs rotated NMS after the model "
                         "(export without nms)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0 or max_det < 1:
        raise ValueError(f"bad NMS settings conf={conf} iou={iou} max_det={max_det}")

    g = Graph(opset, half)
    bdim: Any = "batch" if dynamic else batch
    hdim, wdim = ("height", "width") if dynamic else (h, w)
    em = Emitter(g, spec, variables)
    x = "images"
    if half:
        x = g.op("Cast", [x], "images/Cast", to=TensorProto.FLOAT16)
    em.ch[x] = 3
    heads = em.emit_detect(em.emit_body(x), None if dynamic else (h, w))
    a: Any = "anchors" if dynamic else sum((h // s) * (w // s) for s in spec.strides)
    no = spec.num_outputs

    f32 = TensorProto.FLOAT
    if nms is None:
        parts = [heads["boxes"], heads["scores"]] + ([heads["angle"]] if "angle" in heads else [])
        g.op("Concat", parts, "output0/Concat", outputs=["output0"], axis=1)
        outputs = [helper.make_tensor_value_info("output0", f32, [bdim, no, a])]
    elif nms == "ort":
        batch_t = g.op("Shape", ["images"], "nms/batch", start=0, end=1) if dynamic else g.const([batch])
        emit_nms_ort(g, heads["boxes"], heads["scores"], batch_t, conf=conf, iou=iou, max_det=max_det)
        outputs = [helper.make_tensor_value_info("output0", f32, [bdim, max_det, 6]),
                   helper.make_tensor_value_info("num_dets", TensorProto.INT64, [bdim])]
    else:
        emit_nms_trt(g, heads["boxes"], heads["scores"], conf=conf, iou=iou, max_det=max_det)
        outputs = [helper.make_tensor_value_info("num_dets", TensorProto.INT32, [bdim, 1]),
                   helper.make_tensor_value_info("det_boxes", f32, [bdim, max_det, 4]),
                   helper.make_tensor_value_info("det_scores", f32, [bdim, max_det]),
                   helper.make_tensor_value_info("det_classes", TensorProto.INT32, [bdim, max_det])]

    graph = helper.make_graph(g.nodes, spec.name,
                              [helper.make_tensor_value_info("images", f32, [bdim, 3, hdim, wdim])], outputs,
                              initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("TRT", 1)] if nms == "trt" else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="yolojax",
                              producer_version=_version())
    model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    meta = model_metadata(spec, (h, w), batch=batch, dynamic=dynamic, half=half, nms=nms, conf=conf, iou=iou,
                          max_det=max_det)
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    helper.set_model_props(model, meta)
    return model


def _version() -> str:
    try:
        import yolojax
        return yolojax.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def model_metadata(spec: Spec, imgsz: tuple[int, int], *, batch: int, dynamic: bool, half: bool,
                   nms: str | None, conf: float, iou: float, max_det: int) -> dict[str, str]:
    """metadata_props, with Ultralytics' keys (names as a dict literal, stride, imgsz, task, batch) plus ours."""
    names = spec.names or tuple(f"class{i}" for i in range(spec.nc))
    meta = {
        "description": f"yolojax {spec.name.replace('yolov8', 'YOLOv8')} nc={spec.nc}",
        "author": "yolojax",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "version": _version(),
        "task": spec.task,
        "stride": str(max(spec.strides)),
        "strides": json.dumps(list(spec.strides)),
        "batch": str(batch),
        "dynamic": str(bool(dynamic)),
        "half": str(bool(half)),
        "imgsz": json.dumps(list(imgsz)),
        "names": repr(dict(enumerate(names))),
        "names_json": json.dumps(list(names)),
        "nms": nms or "none",
        "spec": spec.to_json(),
        "input": "images float32 [B,3,H,W] RGB in [0,1]",
        "output_layout": OUTPUT_LAYOUT if not nms else (
            "output0 [B,max_det,6] x1,y1,x2,y2,score,class; num_dets [B]" if nms == "ort" else
            "num_dets [B,1], det_boxes [B,max_det,4] x1y1x2y2, det_scores [B,max_det], det_classes [B,max_det]"),
    }
    if nms:
        meta.update(conf=str(conf), iou=str(iou), max_det=str(max_det))
    return meta


def export_onnx(model, path: str | Path, *, imgsz: int | Sequence[int] = 640, batch: int = 1,
                dynamic: bool = False, half: bool = False, opset: int = DEFAULT_OPSET, nms: str | None = None,
                conf: float = 0.25, iou: float = 0.7, max_det: int = 300, metadata: Mapping | None = None) -> Path:
    """Write the ONNX file of a `yolojax.Detector` (or a (spec, variables) pair) to `path`; returns the path.

    The file is written to a temporary name and renamed, so a failed export never leaves a partial .onnx.
    """
    spec, variables = (model.spec, model.variables) if hasattr(model, "spec") else model
    proto = emit_onnx(spec, variables, imgsz=imgsz, batch=batch, dynamic=dynamic, half=half, opset=opset,
                      nms=nms, conf=conf, iou=iou, max_det=max_det, metadata=metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(path)
    return path


def read_metadata(model: str | Path | onnx.ModelProto) -> dict[str, str]:
    """metadata_props of an ONNX file or model as a dict."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def spec_from_onnx(model: str | Path | onnx.ModelProto) -> Spec:
    """The Spec stored in an exported model's metadata."""
    meta = read_metadata(model)
    if "spec" not in meta:
        raise ValueError(f"{model if not isinstance(model, onnx.ModelProto) else 'model'}: no yolojax spec in "
                         "its metadata (not exported by yolojax)")
    return Spec.from_json(meta["spec"])
