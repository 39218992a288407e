"""The YOLOv8 network: a fold of the spec's graph (`graph.py`) into Flax modules, every width read from the spec."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from .graph import Add, Concat, Conv as ConvNode, Input, MaxPool, Part, Split, Upsample, lower
from .modules import Conv, decode_head, max_pool_same, torch_conv_init
from .spec import Spec


class _Namespace(nn.Module):
    """A level of the parameter tree (`model_2`, `m_0`): runs `fn` so that modules it creates nest here."""

    @nn.compact
    def __call__(self, fn: Callable):
        return fn()


class YOLOv8(nn.Module):
    """YOLOv8 detector (or OBB detector, or a P2 variant) described by `spec`.

    __call__(x [B,H,W,3] float in [0,1], H and W multiples of the largest stride) -> (preds, feats):
      preds: boxes [B,A,4] (cx,cy,w,h px), scores [B,A,nc] (sigmoid), dist [B,A,4*reg_max] (raw DFL
             logits, side-major l,t,r,b), logits [B,A,nc], anchors [A,2] (grid units), strides [A]
             (+ angle [B,A,1] radians and angle_raw for obb).
      feats: the Detect inputs by level name ('p3', 'p4', 'p5'; 'p2' too for P2 models), for distillation.
    Every layer output is also sown into the `intermediates` collection as `layerNN` when that collection
    is mutable (parity tests, feature inspection).
    """

    spec: Spec
    dtype: Any = None  # compute dtype (e.g. jnp.bfloat16 on GPU/TPU); parameters stay float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        g, dt = lower(self.spec), self.dtype
        if dt is not None:
            x = x.astype(dt)
        spaces: dict[str, nn.Module] = {}

        def in_scope(path: str, make: Callable[[], Any]):
            """Run `make` (which creates the module named path's last part) inside the scope of its parents."""
            parts = path.split("/")
            if len(parts) == 1:
                return make()
            for k in range(1, len(parts)):
                key = "/".join(parts[:k])
                if key not in spaces:
                    parent = spaces.get("/".join(parts[:k - 1]))
                    spaces[key] = (_Namespace(name=parts[k - 1]) if parent is None
                                   else parent(lambda: _Namespace(name=parts[k - 1])))
            return spaces["/".join(parts[:-1])](make)

        def conv(n: ConvNode, v):
            leaf = n.path.rsplit("/", 1)[-1]
            if n.bn:
                return in_scope(n.path, lambda: Conv(n.channels, n.k, n.s, dtype=dt, name=leaf)(v, train=train))
            p = n.k // 2
            return in_scope(n.path, lambda: nn.Conv(
                n.channels, (n.k, n.k), (n.s, n.s), padding=((p, p), (p, p)), use_bias=True,
                kernel_init=torch_conv_init, bias_init=nn.initializers.constant(n.bias_init), dtype=dt,
                name=leaf)(v))

        vals: list[Any] = []
        for n in g.nodes:
            ins = [vals[i] for i in n.inputs]
            if isinstance(n, Input):
                v = x
            elif isinstance(n, ConvNode):
                v = conv(n, ins[0])
            elif isinstance(n, Split):
                v = tuple(jnp.split(ins[0], [sum(n.sizes[:k]) for k in range(1, len(n.sizes))], axis=-1))
            elif isinstance(n, Part):
                v = ins[0][n.index]
            elif isinstance(n, Concat):
                v = jnp.concatenate(ins, -1)
            elif isinstance(n, Add):
                v = sum(ins[1:], ins[0])
            elif isinstance(n, MaxPool):
                v = max_pool_same(ins[0], n.k)
            elif isinstance(n, Upsample):
                v = jnp.repeat(jnp.repeat(ins[0], n.factor, axis=1), n.factor, axis=2)
            else:  # pragma: no cover - a node type added to graph.py without teaching this fold
                raise TypeError(f"YOLOv8 forward: no rule for {type(n).__name__} ({n.name})")
            vals.append(v)
        for i, nid in enumerate(g.layer_outputs):
            self.sow("intermediates", f"layer{i:02d}", vals[nid])

        raw = {r: [vals[lv.output(r)] for lv in g.levels] for r in g.roles}
        preds = decode_head(raw["box"], raw["cls"], raw.get("angle", []),
                            [vals[lv.feature].shape[1:3] for lv in g.levels], g.strides, self.spec.reg_max)
        return preds, {lv.key: vals[lv.feature] for lv in g.levels}


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
