"""Quantization-aware training: the YOLOv8 forward with the INT8 graph's rounding simulated (fake quantization).

What ONNX Runtime runs after `yolojax export --int8` (cpu target, `export/int8.py`) is simulated op for op:

* BatchNorm folded into the conv (running statistics, frozen: QAT is a last fine-tune of a trained model) and
  the folded weights rounded to int8 per output channel, symmetric, scale max|w| / 127 (ONNX Runtime's
  per-channel weights);
* every tensor the Q/DQ graph quantizes rounded to uint8 with its own range (scale (hi - lo) / 255 with the
  range widened to hold 0, zero point round(-lo / scale): ONNX Runtime's asymmetric MinMax rule): the image,
  each body conv's output, its Sigmoid and its SiLU (the Mul), every Add and Concat. Split, MaxPool and
  Upsample outputs keep their input's scale (ONNX Runtime gives them the input's parameters), so they add no
  rounding. A conv unit kept float (`float_convs`) is not rounded inside; its SiLU is, where a quantized op
  reads it. The head's final 1x1 convs, DFL and decode stay float, as in the export.

reduce_range: 7-bit weights (ONNX Runtime's `reduce_range`), for x86 CPUs without VNNI. There ONNX Runtime's
uint8 x int8 kernels add pairs of products in int16 and saturate: with full 8-bit weights the INT8 graph it runs
is not the graph its Q/DQ nodes describe (measured on a tiny model: score error against the Q/DQ reference
1.1e-3, as large as the rounding itself; with 7-bit weights 2e-7). Train with the weights the target runs.

Gradients pass straight through the rounding (STE), and are zero outside an activation's range (clipped STE).
Activation ranges are state, not parameters: an exponential moving average of each tensor's batch min / max,
started from a calibration pass (`calibrate_ranges`). They live in the `batch_stats` collection under the key
`quant` during training (so the trainer's state, EMA, sharding and checkpoints carry them) and in a model
checkpoint's meta (`meta['qat']`, `split_qat`): the exported INT8 graph uses exactly these ranges.

    model = QATModel(spec, float_convs=("model_0",))
    variables = with_ranges(variables, calibrate_ranges(spec, variables, images, float_convs=...))
    (preds, feats), upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .graph import Add, Concat, Conv as ConvNode, Input, MaxPool, Part, Split, Upsample, lower
from .modules import BN_EPS, decode_head, max_pool_same
from .spec import Spec

QUANT_KEY = "quant"        # batch_stats[QUANT_KEY][tensor name] = {'lo': [], 'hi': []}
RANGE_MOMENTUM = 0.99      # EMA of the observed batch min / max during QAT
INPUT = "images"           # the ONNX graph's input name


def conv_tensors(path: str) -> tuple[str, str, str]:
    """ONNX tensor names of a Conv+BN+SiLU unit as the emitter writes it: conv output, Sigmoid, SiLU (Mul)."""
    return f"{path}/Conv", f"{path}/Sigmoid", f"{path}/SiLU"


def _node_tensor(n) -> str:
    return INPUT if isinstance(n, Input) else conv_tensors(n.path)[2] if isinstance(n, ConvNode) else n.name


def quant_sites(spec: Spec, float_convs: Iterable[str] = ()) -> list[str]:
    """ONNX tensor names that the INT8 graph rounds with their own range, in graph order (see module doc)."""
    g = lower(spec)
    floats = set(float_convs)
    bn_convs = {n.path for n in g.nodes if isinstance(n, ConvNode) and n.bn}
    unknown = floats - bn_convs
    if unknown:
        raise ValueError(f"float_convs: {sorted(unknown)[0]!r} is not a Conv+BN unit of this model")
    consumers: dict[int, list] = {n.id: [] for n in g.nodes}
    for n in g.nodes:
        for i in n.inputs:
            consumers[i].append(n)

    def quantized(n) -> bool:  # does ORT quantize this op node
        if isinstance(n, ConvNode):
            return n.bn and n.path not in floats
        return isinstance(n, (Split, Concat, Add, MaxPool, Upsample))

    sites = []
    for n in g.nodes:
        if isinstance(n, Part):
            continue
        read_by_q = any(quantized(c) for c in consumers[n.id] if not isinstance(c, Part)) or any(
            quantized(cc) for c in consumers[n.id] if isinstance(c, Part) for cc in consumers[c.id])
        if isinstance(n, Input):
            if read_by_q:
                sites.append(INPUT)
        elif isinstance(n, ConvNode) and n.bn:
            c, s, silu = conv_tensors(n.path)
            if quantized(n):
                sites += [c, s, silu]
            elif read_by_q:
                sites.append(silu)
        elif isinstance(n, (Concat, Add)):
            sites.append(n.name)
    return sites


def qparams(lo, hi):
    """ONNX Runtime's uint8 asymmetric scale and zero point for the range [lo, hi] (widened to hold 0)."""
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    scale = (hi - lo) / 255.0
    scale = jnp.where(scale > 0, scale, 1.0)
    zp = jnp.clip(jnp.round(-lo / scale), 0, 255)
    return scale, zp


def _uint8(t, zp):
    """ORT QuantizeLinear of a value already divided by its scale: round half to even, add the zero point, saturate."""
    return jnp.clip(jnp.round(t) + zp, 0.0, 255.0)


def _on_grid(x, q, scale, zp):
    """The dequantized value (q - zp) * scale forward; x's gradient backward, zero outside the grid (clipped STE)."""
    xc = jnp.clip(x, (0.0 - zp) * scale, (255.0 - zp) * scale)
    return xc + jax.lax.stop_gradient((q - zp) * scale - xc)


def fake_quant_act(x, lo, hi):
    """x rounded to the uint8 grid of [lo, hi] (ORT QuantizeLinear then DequantizeLinear); clipped STE."""
    scale, zp = qparams(lo, hi)
    return _on_grid(x, _uint8(x / scale, zp), scale, zp)


def _weight_int(w, reduce_range: bool = False):
    """(integers w_q, scale) of per-output-channel (last axis) symmetric int8 weights: scale max|w| / 127, or
    max|w| / 64 with reduce_range (ONNX Runtime's reduced range). w_q carries w's gradient (STE)."""
    qmax = 64.0 if reduce_range else 127.0
    amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
    scale = jax.lax.stop_gradient(jnp.where(amax > 0, amax / qmax, 1.0))
    return _ste_round(w / scale), scale  # |w / scale| <= qmax: nothing to saturate


def fake_quant_weight(w, reduce_range: bool = False):
    """Per-output-channel (last axis, HWIO) symmetric int8 rounding, scale max|w| / 127 (reduce_range: 7 bits,
    max|w| / 64, ONNX Runtime's reduced range); STE."""
    wi, scale = _weight_int(w, reduce_range)
    return wi * scale


def _ste_round(x):
    """round(x) forward, identity backward."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _get(tree: Mapping, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _conv(x, kernel, stride: int, bias=None):
    k = kernel.shape[0]
    p = k // 2
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if bias is None else y + bias


def fold_bn(params: Mapping, stats: Mapping):
    """Conv kernel and bias with the BatchNorm (running statistics) folded in, as the ONNX export folds it."""
    inv = params["bn"]["scale"] / jnp.sqrt(stats["bn"]["var"] + BN_EPS)
    return params["conv"]["kernel"] * inv, params["bn"]["bias"] - stats["bn"]["mean"] * inv


def forward(spec: Spec, variables: Mapping, x, *, float_convs: Sequence[str] = (), quantize: bool = True,
            reduce_range: bool = False, observe: bool = False, capture: dict | None = None):
    """The fake-quantized forward (eval-mode BN folded). x [B,H,W,3] in [0,1].

    Returns (preds, feats, observed): preds/feats as `YOLOv8.__call__`; observed = {tensor: (min, max)} of each
    site's values before rounding when `observe` (else {}). quantize=False runs the same folded graph in float
    (what calibration observes). variables['batch_stats'][QUANT_KEY] holds the ranges when quantize.
    capture: a dict that receives each site's tensor before rounding (debugging, parity tests; not under jit)."""
    g = lower(spec)
    params, stats = variables["params"], variables["batch_stats"]
    ranges = stats.get(QUANT_KEY, {}) if quantize else {}
    sites = set(quant_sites(spec, float_convs))
    floats = set(float_convs)
    observed: dict[str, tuple] = {}
    x = jnp.asarray(x, jnp.float32)

    def q(name: str, v, exact=None):
        """Round v to the uint8 grid of its range; returns (value, (scale, zero point) or None). exact: (integer
        accumulator, its scale) when v is a conv's int32 result (`int_conv`), requantized as QLinearConv does."""
        if name not in sites:
            return v, None
        if observe:
            observed[name] = (jnp.min(v), jnp.max(v))
        if capture is not None:
            capture[name] = v
        if not quantize:
            return v, None
        r = ranges[name]
        scale, zp = qparams(r["lo"], r["hi"])
        qi = _uint8(v / scale if exact is None else exact[0] * (exact[1] / scale), zp)
        return _on_grid(v, qi, scale, zp), (scale, zp)

    def int_conv(n, x, grid, w, b):
        """ONNX Runtime's QLinearConv: int32 sum of (x_q - zx) * w_q (exact here: integer-valued float32 products
        summed at full precision), the bias quantized to int32 at scale sx * sw, then requantized to the output's
        grid with the multiplier sx * sw / sy. The float equivalent rounds the same values differently in the last
        bit, and in a chain of 8-bit layers such one-step flips spread (measured: a 1e-6 relative change of the
        weights moves the final scores as much as float vs INT8 does), so the exported graph would score a different
        draw of rounding noise than the model trained on."""
        sx, _ = grid
        wi, sw = _weight_int(w, reduce_range)
        xi = _ste_round(x / sx)  # x = (x_q - zx) * sx: the integers x_q - zx
        k = w.shape[0] // 2
        acc = jax.lax.conv_general_dilated(xi, wi, (n.s, n.s), ((k, k), (k, k)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           precision=jax.lax.Precision.HIGHEST)
        bs = sx * sw
        acc = acc + _ste_round(b / bs)
        # acc * bs: what the float conv on dequantized inputs computes, up to its rounding
        return q(conv_tensors(n.path)[0], acc * bs, exact=(acc, bs))

    vals: list[Any] = []
    grids: list[Any] = []  # the (scale, zero point) grid each value lies on, or None (float)
    for n in g.nodes:
        ins = [vals[i] for i in n.inputs]
        grid = None
        if isinstance(n, Input):
            v, grid = q(INPUT, x)
        elif isinstance(n, ConvNode):
            if n.bn:
                w, b = fold_bn(_get(params, n.path), _get(stats, n.path))
                c, s, silu = conv_tensors(n.path)
                if quantize and n.path not in floats:
                    if grids[n.inputs[0]] is None:  # pragma: no cover - quant_sites quantizes every int8 conv's input
                        raise AssertionError(f"{n.path}: input not quantized")
                    y, _ = int_conv(n, ins[0], grids[n.inputs[0]], w, b)
                else:
                    y, _ = q(c, _conv(ins[0], w, n.s, b))
                sig, _ = q(s, jax.nn.sigmoid(y))
                v, grid = q(silu, y * sig)
            else:  # the head's final 1x1s: float, as exported
                p = _get(params, n.path)
                v = _conv(ins[0], p["kernel"], n.s, p["bias"])
        elif isinstance(n, Split):
            v = tuple(jnp.split(ins[0], [sum(n.sizes[:k]) for k in range(1, len(n.sizes))], axis=-1))
            grid = grids[n.inputs[0]]
        elif isinstance(n, Part):
            v, grid = ins[0][n.index], grids[n.inputs[0]]
        elif isinstance(n, Concat):
            v, grid = q(n.name, jnp.concatenate(ins, -1))
        elif isinstance(n, Add):
            v, grid = q(n.name, sum(ins[1:], ins[0]))
        elif isinstance(n, MaxPool):
            v, grid = max_pool_same(ins[0], n.k), grids[n.inputs[0]]
        elif isinstance(n, Upsample):
            v = jnp.repeat(jnp.repeat(ins[0], n.factor, axis=1), n.factor, axis=2)
            grid = grids[n.inputs[0]]
        else:  # pragma: no cover - a node type added to graph.py without teaching this fold
            raise TypeError(f"QAT forward: no rule for {type(n).__name__} ({n.name})")
        vals.append(v)
        grids.append(grid)
    raw = {r: [vals[lv.output(r)] for lv in g.levels] for r in g.roles}
    preds = decode_head(raw["box"], raw["cls"], raw.get("angle", []),
                        [vals[lv.feature].shape[1:3] for lv in g.levels], g.strides, spec.reg_max)
    return preds, {lv.key: vals[lv.feature] for lv in g.levels}, observed


@dataclasses.dataclass(frozen=True)
class QATModel:
    """Stands in for `YOLOv8(spec)` in the trainer (`apply` has its signature): the fake-quantized forward, BN
    frozen (folded with its running statistics in train and eval), and in train mode with
    mutable=['batch_stats'] the activation ranges moved towards the batch's min / max (EMA, `momentum`)."""

    spec: Spec
    float_convs: tuple[str, ...] = ()
    reduce_range: bool = False
    momentum: float = RANGE_MOMENTUM

    def apply(self, variables, x, *, train: bool = False, mutable=()):
        preds, feats, obs = forward(self.spec, variables, x, float_convs=self.float_convs, observe=train,
                                    reduce_range=self.reduce_range)
        if not mutable:
            return preds, feats
        stats = dict(variables["batch_stats"])
        old = stats[QUANT_KEY]
        m = self.momentum
        stats[QUANT_KEY] = {k: ({"lo": m * r["lo"] + (1 - m) * obs[k][0], "hi": m * r["hi"] + (1 - m) * obs[k][1]}
                                if train and k in obs else r) for k, r in old.items()}
        return (preds, feats), {"batch_stats": stats}

    def split(self, variables: Mapping) -> tuple[dict, dict]:
        """(float variables a plain YOLOv8 reads, meta['qat'] for the checkpoint)."""
        return split_qat(variables, self.float_convs, self.reduce_range)


def calibrate_ranges(spec: Spec, variables: Mapping, batches: Iterable, *, float_convs: Sequence[str] = ()) -> dict:
    """Starting ranges {tensor: {'lo', 'hi'}}: each site's min / max averaged over `batches` (images [B,H,W,3],
    uint8 or [0,1] float) in the folded float graph: ONNX Runtime's MinMax calibration with moving average."""
    fn = jax.jit(lambda v, x: forward(spec, v, x, float_convs=float_convs, quantize=False, observe=True)[2])
    acc: dict[str, list] = {}
    for x in batches:
        x = np.asarray(x)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        obs = jax.device_get(fn(dict(variables), x))
        for k, (lo, hi) in obs.items():
            acc.setdefault(k, []).append((float(lo), float(hi)))
    if not acc:
        raise ValueError("calibrate_ranges: no calibration batch")
    return {k: {"lo": jnp.float32(np.mean([a for a, _ in v])), "hi": jnp.float32(np.mean([b for _, b in v]))}
            for k, v in acc.items()}


def with_ranges(variables: Mapping, ranges: Mapping) -> dict:
    """variables with the ranges under batch_stats[QUANT_KEY] (what `QATModel.apply` reads)."""
    stats = dict(variables["batch_stats"])
    stats[QUANT_KEY] = {k: {"lo": jnp.asarray(r["lo"], jnp.float32), "hi": jnp.asarray(r["hi"], jnp.float32)}
                        for k, r in ranges.items()}
    return {**dict(variables), "batch_stats": stats}


def split_qat(variables: Mapping, float_convs: Sequence[str] = (), reduce_range: bool = False) -> tuple[dict, dict]:
    """(variables without the ranges, {'ranges': {tensor: [lo, hi]}, 'float_convs': [...], 'reduce_range'}) for a
    checkpoint's meta['qat']."""
    stats = dict(variables["batch_stats"])
    ranges = stats.pop(QUANT_KEY, {})
    meta = {"ranges": {k: [float(np.asarray(r["lo"])), float(np.asarray(r["hi"]))] for k, r in ranges.items()},
            "float_convs": list(float_convs), "reduce_range": bool(reduce_range),
            "weights": f"int8 per-channel symmetric ({7 if reduce_range else 8}-bit)",
            "activations": "uint8 asymmetric per-tensor"}
    return {**dict(variables), "batch_stats": stats}, meta


def ranges_from_meta(qat: Mapping) -> dict:
    """The ranges a checkpoint's meta['qat'] records, as `with_ranges` takes them."""
    return {k: {"lo": v[0], "hi": v[1]} for k, v in qat["ranges"].items()}


__all__ = ("QATModel", "forward", "quant_sites", "calibrate_ranges", "with_ranges", "split_qat", "ranges_from_meta",
           "fake_quant_act", "fake_quant_weight", "qparams", "fold_bn", "conv_tensors", "QUANT_KEY")
