"""The YOLOv8 network, every width read from a Spec."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .modules import SPPF, C2f, Conv, Detect, upsample2x
from .spec import DETECT, HEAD_INPUTS, LAYERS, STRIDES, Spec


def c2f_from_spec(spec: Spec, i: int, shortcut: bool, dtype=None, name=None) -> C2f:
    p = f"model_{i}"
    n = spec.n_bottlenecks(i)
    return C2f(features=spec.width(f"{p}/cv2"), split=spec.split(p),
               hidden=tuple(spec.width(f"{p}/m_{j}/cv1") for j in range(n)),
               outs=tuple(spec.width(f"{p}/m_{j}/cv2") for j in range(n)),
               shortcut=shortcut, dtype=dtype, name=name)


def detect_from_spec(spec: Spec, dtype=None, name=None) -> Detect:
    p = f"model_{DETECT}"
    pair = lambda b, l: (spec.width(f"{p}/{b}_{l}_0"), spec.width(f"{p}/{b}_{l}_1"))  # noqa: E731
    lv = range(len(STRIDES))
    return Detect(nc=spec.nc, reg_max=spec.reg_max, strides=STRIDES, dtype=dtype, name=name,
                  box_widths=tuple(pair("cv2", l) for l in lv), cls_widths=tuple(pair("cv3", l) for l in lv),
                  angle_widths=tuple(pair("cv4", l) for l in lv) if spec.task == "obb" else None)


class YOLOv8(nn.Module):
    """YOLOv8 detector (or OBB detector) described by `spec`.

    __call__(x [B,H,W,3] float in [0,1], H and W multiples of 32) -> (preds, feats):
      preds: boxes [B,A,4] (cx,cy,w,h px), scores [B,A,nc] (sigmoid), dist [B,A,4*reg_max] (raw DFL
             logits, side-major l,t,r,b), logits [B,A,nc], anchors [A,2] (grid units), strides [A]
             (+ angle [B,A,1] radians and angle_raw for obb).
      feats: p3, p4, p5 neck outputs (the Detect inputs), for distillation.
    Every layer output is also sown into the `intermediates` collection as `layerNN` when that collection
    is mutable (parity tests, feature inspection).
    """

    spec: Spec
    dtype: Any = None  # compute dtype (e.g. jnp.bfloat16 on GPU/TPU); parameters stay float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        spec, dt = self.spec, self.dtype
        if dt is not None:
            x = x.astype(dt)
        outs: dict[int, jax.Array] = {}
        for i, kind, frm, _, _, kw in LAYERS:
            name = f"model_{i}"
            if kind == "Conv":
                x = Conv(spec.width(name), kw["k"], kw["s"], dtype=dt, name=name)(x, train=train)
            elif kind == "C2f":
                x = c2f_from_spec(spec, i, kw["shortcut"], dt, name)(x, train=train)
            elif kind == "SPPF":
                x = SPPF(spec.width(f"{name}/cv1"), spec.width(f"{name}/cv2"), kw["k"], dtype=dt,
                         name=name)(x, train=train)
            elif kind == "Upsample":
                x = upsample2x(x)
            elif kind == "Concat":
                x = jnp.concatenate([x, outs[frm[1]]], -1)
            outs[i] = x
            self.sow("intermediates", f"layer{i:02d}", x)
        feats = tuple(outs[i] for i in HEAD_INPUTS)
        preds = detect_from_spec(spec, dt, f"model_{DETECT}")(feats, train=train)
        return preds, {"p3": feats[0], "p4": feats[1], "p5": feats[2]}


# Initialisation runs once per model: XLA's optimisation passes cost far more than they save there (measured,
# yolov8s on 2 busy CPU cores: 37 s of compilation at the default level, 8 s at level 0). The values are the
# same bits: threefry is integer arithmetic and the uniform draw a few exact float ops.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_variables(spec: Spec, rng: jax.Array | int = 0, imgsz: int = 32) -> dict:
    """Fresh {'params', 'batch_stats'} for `spec` (PyTorch-like init, Ultralytics head biases).

    The parameters do not depend on the input size: `imgsz` (a multiple of 32) only sizes the dummy forward
    pass Flax's init runs, so the smallest is the cheapest."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    x = jnp.zeros((1, imgsz, imgsz, 3), jnp.float32)
    init = jax.jit(lambda r: YOLOv8(spec).init(r, x)).lower(rng)
    try:
        compiled = init.compile(compiler_options=_INIT_COMPILER_OPTIONS)
    except Exception:  # a backend that rejects these options (they are XLA CPU/GPU flags): default compile
        compiled = init.compile()
    variables = compiled(rng)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def variable_shapes(spec: Spec) -> dict:
    """Shapes of {'params', 'batch_stats'} without computing anything (jax.eval_shape)."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    v = jax.eval_shape(lambda: YOLOv8(spec).init(jax.random.PRNGKey(0), jnp.zeros(x.shape)))
    return {"params": v["params"], "batch_stats": v["batch_stats"]}
