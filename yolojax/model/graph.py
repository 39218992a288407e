"""The one lowering of a Spec: a typed graph of primitive ops that every interpretation of the model folds over.

`lower(spec)` expands the architecture's layer table (`arch.py`) into nodes -- Conv (Conv2d + BatchNorm +
SiLU, or the head's plain conv with bias), Split / Part, Concat, Add, MaxPool, Upsample -- each carrying its
output channels, feature stride, layer, part of the network and role. This module is the only place that
knows how a block (Conv, C2f, SPPF, Upsample, Concat, Detect) is wired; the Flax forward, the parameter and
FLOP counts, the pruning dependency groups, the border-taint check, the ONNX emitter, the Ultralytics
importer and INT8 node selection all walk `Graph.nodes` and read fields, never block kinds or names.

Names are readable and stable: a conv's name is its module path in the parameter tree (`model_2/m_0/cv1`,
`model_22/cv3_1_2`); other nodes are `{layer}/{Op}` (`model_2/Split`, `model_9/MaxPool_0`,
`model_2/m_0/Add`). The ONNX graph uses the same names.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Callable

from .arch import ARCHS, Arch, Layer

if TYPE_CHECKING:  # the Spec only needs to answer width()/split(); spec.py imports this module
    from .spec import Spec


# -- nodes ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    id: int
    inputs: tuple[int, ...]
    channels: int         # output channels
    stride: int           # feature stride of the output (input pixels per cell)
    name: str
    layer: int            # index of the architecture layer the node belongs to (-1: the input)
    part: str             # input | backbone | neck | head
    block: str            # input | conv | c2f | sppf | upsample | concat | detect


@dataclasses.dataclass(frozen=True, kw_only=True)
class Input(Node):
    """The image, [B, H, W, 3]."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conv(Node):
    """k x k convolution, stride s, symmetric padding k//2. bn: Conv2d (no bias) + BatchNorm + SiLU, a pruning
    producer; otherwise a plain Conv2d with bias and no activation (Detect's final 1x1s: fixed widths)."""

    k: int = 1
    s: int = 1
    bn: bool = True
    role: str = "out"            # out | hidden | sppf_hidden | box | cls | angle
    level: int | None = None     # Detect level of a head conv
    bias_init: float = 0.0       # initial bias of a plain conv

    @property
    def path(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True, kw_only=True)
class Split(Node):
    """Channel split into `sizes`; its outputs are `Part` nodes. `key` is the spec's `splits` key."""

    sizes: tuple[int, ...]
    key: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part(Node):
    """Output `index` of a Split."""

    index: int
    role: str                    # split_a | split_b


@dataclasses.dataclass(frozen=True, kw_only=True)
class Concat(Node):
    """Channel concat of the inputs, in order."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Add(Node):
    """Elementwise sum (a residual): every input has the same channels."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaxPool(Node):
    """k x k max pool, stride 1, padding k//2 (with -inf)."""

    k: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Upsample(Node):
    """Nearest-neighbour upsampling by `factor` in H and W."""

    factor: int = 2


@dataclasses.dataclass(frozen=True)
class HeadLevel:
    """One Detect level: its input feature and the final conv of each branch (roles box, cls[, angle])."""

    level: int
    stride: int
    feature: int                           # node id of the Detect input
    outputs: tuple[tuple[str, int], ...]   # (role, node id of the branch's plain conv)

    @property
    def key(self) -> str:
        """'p3' for stride 8: the feature's name in the model output and in distillation."""
        return f"p{int(round(math.log2(self.stride)))}"

    def output(self, role: str) -> int:
        return dict(self.outputs)[role]


HEAD_BRANCHES = (("cv2", "box"), ("cv3", "cls"), ("cv4", "angle"))  # Ultralytics' Detect / OBB branch names


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    arch: str
    nc: int
    reg_max: int
    task: str
    nodes: tuple[Node, ...]
    levels: tuple[HeadLevel, ...]
    layer_outputs: tuple[int, ...]         # node id of each table layer's output
    detect_layer: int

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(lv.stride for lv in self.levels)

    @property
    def head_name(self) -> str:
        """Module path of the Detect layer (`model_22`)."""
        return f"model_{self.detect_layer}"

    @property
    def roles(self) -> tuple[str, ...]:
        """Head output roles: box, cls (+ angle for obb)."""
        return tuple(r for r, _ in self.levels[0].outputs)

    @functools.cached_property
    def consumers(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return {k: tuple(v) for k, v in out.items()}

    def convs(self, bn: bool | None = None) -> list[Conv]:
        return [n for n in self.nodes if isinstance(n, Conv) and (bn is None or n.bn == bn)]

    def layer_channels(self, i: int) -> int:
        return self.nodes[self.layer_outputs[i]].channels

    @property
    def head_outputs(self) -> list[Conv]:
        """The plain convs whose outputs the decode reads, level by level."""
        return [self.nodes[i] for lv in self.levels for _, i in lv.outputs]


# -- widths of an unpruned model: what each block holds ------------------------------------------------------

def head_widths(nc: int, ch0: int, reg_max: int = 16) -> tuple[int, int, int]:
    """Detect's inner widths (c2 box, c3 class, c4 angle) from the finest level's width, as Ultralytics."""
    c2 = max(16, ch0 // 4, reg_max * 4)
    c3 = max(ch0, min(nc, 100))
    c4 = max(ch0 // 4, 1)
    return c2, c3, c4


def initial_widths(arch: Arch, ch: Callable[[int], int], repeats: Callable[[Layer], int], *, nc: int,
                   reg_max: int, task: str) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """(widths, splits) of the unpruned model: `ch(c)` scales base channels, `repeats(layer)` the depth."""
    widths: dict[str, int] = {}
    splits: dict[str, tuple[int, int]] = {}
    out: dict[int, int] = {}
    prev = 3
    for L in arch.layers:
        p = f"model_{L.index}"
        if L.kind == "Conv":
            widths[p] = c = ch(L.c)
        elif L.kind == "C2f":
            c = ch(L.c)
            hidden = int(c * 0.5)
            widths[f"{p}/cv1"] = 2 * hidden
            splits[p] = (hidden, hidden)
            for j in range(repeats(L)):
                widths[f"{p}/m_{j}/cv1"] = widths[f"{p}/m_{j}/cv2"] = hidden
            widths[f"{p}/cv2"] = c
        elif L.kind == "SPPF":
            widths[f"{p}/cv1"] = prev // 2
            widths[f"{p}/cv2"] = c = ch(L.c)
        elif L.kind == "Upsample":
            c = prev
        elif L.kind == "Concat":
            c = sum(prev if f == -1 else out[f] for f in L.frm)
        else:
            raise ValueError(f"{arch.name}: unknown block {L.kind!r} at layer {L.index}")
        out[L.index] = prev = c
    c2, c3, c4 = head_widths(nc, out[arch.head_from[0]], reg_max)
    inner = {"box": c2, "cls": c3, "angle": c4}
    for lvl in range(len(arch.head_from)):
        for b, role in _branches(task):
            for k in (0, 1):
                widths[f"model_{arch.detect}/{b}_{lvl}_{k}"] = inner[role]
    return widths, splits


def _branches(task: str):
    return HEAD_BRANCHES if task == "obb" else HEAD_BRANCHES[:2]


def repeats_of(depth: float) -> Callable[[Layer], int]:
    return lambda L: max(round(L.repeats * depth), 1) if L.repeats > 1 else L.repeats


# -- the lowering -----------------------------------------------------------------------------------------

class _Builder:
    def __init__(self, spec: "Spec", arch: Arch):
        self.spec, self.arch = spec, arch
        self.nodes: list[Node] = []
        self.layer, self.block = -1, "input"

    def add(self, cls, inputs, channels, name, stride=None, **kw) -> int:
        inputs = tuple(inputs)
        if stride is None:
            stride = self.nodes[inputs[0]].stride
        n = cls(id=len(self.nodes), inputs=inputs, channels=channels, stride=stride, name=name, layer=self.layer,
                part=self.arch.part(self.layer) if self.layer >= 0 else "input", block=self.block, **kw)
        self.nodes.append(n)
        return n.id

    def ch(self, i: int) -> int:
        return self.nodes[i].channels

    def conv(self, path: str, x: int, k: int, s: int = 1, **kw) -> int:
        return self.add(Conv, [x], self.spec.width(path), path, stride=self.nodes[x].stride * s, k=k, s=s, **kw)

    # -- blocks: the only place their insides are written down ------------------------------------------
    def Conv(self, L: Layer, x: int) -> int:
        return self.conv(f"model_{L.index}", x, L.kw["k"], L.kw["s"])

    def C2f(self, L: Layer, x: int) -> int:
        """cv1 (1x1) split in parts (a, b); Bottlenecks (3x3, 3x3, + residual if shortcut) chained on part b;
        concat of all parts; cv2 (1x1)."""
        spec, p = self.spec, f"model_{L.index}"
        a, b = spec.split(p)
        if a + b != spec.width(f"{p}/cv1"):
            raise ValueError(f"{p}: split {a}+{b} != cv1 width {spec.width(f'{p}/cv1')}")
        y = self.conv(f"{p}/cv1", x, 1)
        sp = self.add(Split, [y], a + b, f"{p}/Split", sizes=(a, b), key=p)
        parts = [self.add(Part, [sp], c, f"{p}/Split:{j}", index=j, role=r)
                 for j, (c, r) in enumerate(((a, "split_a"), (b, "split_b")))]
        cur = parts[-1]
        for j in range(spec.n_bottlenecks(L.index)):
            m = f"{p}/m_{j}"
            out = self.conv(f"{m}/cv2", self.conv(f"{m}/cv1", cur, 3, role="hidden"), 3)
            if L.kw["shortcut"]:
                if self.ch(out) != self.ch(cur):
                    raise ValueError(f"{m}/cv2 is residual: its width must equal the split part {self.ch(cur)}")
                out = self.add(Add, [cur, out], self.ch(out), f"{m}/Add")
            parts.append(cur := out)
        cat = self.add(Concat, parts, sum(self.ch(i) for i in parts), f"{p}/Concat")
        return self.conv(f"{p}/cv2", cat, 1)

    def SPPF(self, L: Layer, x: int) -> int:
        """cv1 (1x1), three chained k x k max pools, concat of the four, cv2 (1x1)."""
        p = f"model_{L.index}"
        ys = [self.conv(f"{p}/cv1", x, 1, role="sppf_hidden")]
        for j in range(3):
            ys.append(self.add(MaxPool, [ys[-1]], self.ch(ys[-1]), f"{p}/MaxPool_{j}", k=L.kw["k"]))
        cat = self.add(Concat, ys, sum(self.ch(i) for i in ys), f"{p}/Concat")
        return self.conv(f"{p}/cv2", cat, 1)

    def Upsample(self, L: Layer, x: int) -> int:
        return self.add(Upsample, [x], self.ch(x), f"model_{L.index}/Resize", stride=self.nodes[x].stride // 2)

    def Concat(self, L: Layer, x: int, outs: dict[int, int]) -> int:
        ins = [x if f == -1 else outs[f] for f in L.frm]
        return self.add(Concat, ins, sum(self.ch(i) for i in ins), f"model_{L.index}/Concat")

    def Detect(self, feats: list[int]) -> list[HeadLevel]:
        """Per level and branch: Conv 3x3, Conv 3x3, plain 1x1 conv with bias (Ultralytics' initial biases)."""
        spec, d = self.spec, f"model_{self.arch.detect}"
        levels = []
        for lvl, f in enumerate(feats):
            s = self.nodes[f].stride
            init = {"box": 2.0, "cls": math.log(5.0 / spec.nc / (640.0 / s) ** 2), "angle": 0.0}
            outs = []
            for b, role in _branches(spec.task):
                h = self.conv(f"{d}/{b}_{lvl}_0", f, 3, role=role, level=lvl)
                h = self.conv(f"{d}/{b}_{lvl}_1", h, 3, role=role, level=lvl)
                o = self.add(Conv, [h], {"box": 4 * spec.reg_max, "cls": spec.nc, "angle": 1}[role],
                             f"{d}/{b}_{lvl}_2", k=1, s=1, bn=False, role=role, level=lvl, bias_init=init[role])
                outs.append((role, o))
            levels.append(HeadLevel(lvl, s, f, tuple(outs)))
        return levels


@functools.lru_cache(maxsize=128)
def lower(spec: "Spec") -> Graph:
    """The graph of `spec` (cached: specs are hashable). Raises ValueError where widths do not fit together."""
    arch = ARCHS[spec.arch]
    b = _Builder(spec, arch)
    x = b.add(Input, [], 3, "images", stride=1)
    outs: dict[int, int] = {}
    for L in arch.layers:
        b.layer, b.block = L.index, L.kind.lower()
        x = b.Concat(L, x, outs) if L.kind == "Concat" else getattr(b, L.kind)(L, x)
        outs[L.index] = x
    b.layer, b.block = arch.detect, "detect"
    levels = b.Detect([outs[i] for i in arch.head_from])
    return Graph(arch=arch.name, nc=spec.nc, reg_max=spec.reg_max, task=spec.task, nodes=tuple(b.nodes),
                 levels=tuple(levels), layer_outputs=tuple(outs[L.index] for L in arch.layers),
                 detect_layer=arch.detect)
