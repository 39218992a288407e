"""Channel dependency groups of a YOLOv8, derived from the spec by walking `yolojax.model.spec.LAYERS`.

A group is a set of channels that must be kept or removed together: one keep-mask of `size` entries shared
by every member. Members are *producers* (a Conv+BN whose output channels [start, start+size) are the group)
and *consumers* (a conv reading the group at input channels [offset, offset+size)). The walk carries each
tensor as a list of segments (group, size, sources), so concats, upsampling, SPPF's four-way concat and the
Detect branches get their offsets by construction, not from per-variant tables.

`sources` names the producers whose outputs add up to what a consumer reads: one producer for a plain
output; in a residual chain (C2f with shortcut) the value after Bottleneck j is cv1's part b plus the
outputs of m_0..m_j cv2, which is what pruning must fold into that consumer.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math

from yolojax.model.spec import DETECT, HEAD_INPUTS, LAYERS, Spec

BACKBONE_END = 9  # layers 0..9 are the backbone, 10..21 the neck, 22 the head


@dataclasses.dataclass(frozen=True)
class Producer:
    """Output channels [start, start + group.size) of the Conv+BN at `path`."""

    path: str
    start: int = 0


@dataclasses.dataclass(frozen=True)
class Consumer:
    """Input channels [offset, offset + group.size) of the conv at `path`.

    sources: indices into the group's producers whose outputs sum to the value read here.
    bias: the conv has a bias and no BN (Detect's final 1x1 convs); otherwise a Conv+BN.
    """

    path: str
    offset: int
    sources: tuple[int, ...]
    bias: bool = False


@dataclasses.dataclass(frozen=True)
class Group:
    """Channels pruned together. Tags for policies: part, kind, scale, role (see `tags`)."""

    name: str
    size: int
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]
    layer: int          # graph index of the producing layer (22 for Detect)
    part: str           # backbone | neck | head
    kind: str           # conv | c2f | sppf | detect
    role: str           # out | split_a | split_b | residual | hidden | sppf_hidden | box | cls | angle
    stride: int         # feature stride of the group's tensor (2..32)

    @property
    def scale(self) -> str:
        """'P1'..'P5' (stride 2**k)."""
        return f"P{int(round(math.log2(self.stride)))}"

    @property
    def residual(self) -> bool:
        return self.role == "residual"

    @property
    def tags(self) -> frozenset[str]:
        return frozenset((self.part, self.kind, self.role, self.scale))

    def matches(self, selector: str) -> bool:
        """`selector` is a glob over the group name (if it starts with 'model_') or '/'-joined tags that must
        all apply, e.g. 'head', 'P3', 'neck/P3', 'backbone/c2f', 'residual', 'model_22/cv3_*'."""
        if selector.startswith("model_"):
            return fnmatch.fnmatchcase(self.name, selector)
        return all(t in self.tags for t in selector.split("/") if t)


@dataclasses.dataclass
class _Builder:
    name: str
    size: int
    layer: int
    part: str
    kind: str
    role: str
    stride: int
    producers: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Seg:
    group: str
    size: int
    sources: tuple[int, ...]


def _part(i: int) -> str:
    return "backbone" if i <= BACKBONE_END else ("neck" if i < DETECT else "head")


@functools.lru_cache(maxsize=64)
def build_groups(spec: Spec) -> tuple[Group, ...]:
    """Every dependency group of `spec`, in execution order. Cached: specs are hashable."""
    groups: dict[str, _Builder] = {}

    def new(name, path, size, layer, kind, role, stride, start=0) -> _Seg:
        if name in groups:
            raise AssertionError(f"duplicate group {name}")
        groups[name] = _Builder(name, size, layer, _part(layer), kind, role, stride, [Producer(path, start)])
        return _Seg(name, size, (0,))

    def consume(path, segs, bias=False) -> int:
        off = 0
        for s in segs:
            groups[s.group].consumers.append(Consumer(path, off, s.sources, bias))
            off += s.size
        return off

    outs: dict[int, list[_Seg]] = {}
    x: list[_Seg] = []  # the image: 3 channels that belong to no group
    stride = 1
    for i, kind, frm, _, _, kw in LAYERS:
        p = f"model_{i}"
        if kind == "Conv":
            consume(p, x)
            stride *= kw["s"]
            x = [new(p, p, spec.width(p), i, "conv", "out", stride)]
        elif kind == "C2f":
            consume(f"{p}/cv1", x)
            a, b = spec.split(p)
            shortcut = kw["shortcut"]
            parts = [new(f"{p}/cv1:a", f"{p}/cv1", a, i, "c2f", "split_a", stride),
                     new(f"{p}/cv1:b", f"{p}/cv1", b, i, "c2f", "residual" if shortcut else "split_b", stride,
                         start=a)]
            cur = parts[-1]
            for j in range(spec.n_bottlenecks(i)):
                m = f"{p}/m_{j}"
                consume(f"{m}/cv1", [cur])
                hid = new(f"{m}/cv1", f"{m}/cv1", spec.width(f"{m}/cv1"), i, "c2f", "hidden", stride)
                consume(f"{m}/cv2", [hid])
                if shortcut:
                    g = groups[cur.group]
                    g.producers.append(Producer(f"{m}/cv2"))
                    cur = _Seg(cur.group, cur.size, cur.sources + (len(g.producers) - 1,))
                else:
                    cur = new(f"{m}/cv2", f"{m}/cv2", spec.width(f"{m}/cv2"), i, "c2f", "out", stride)
                parts.append(cur)
            consume(f"{p}/cv2", parts)
            x = [new(f"{p}/cv2", f"{p}/cv2", spec.width(f"{p}/cv2"), i, "c2f", "out", stride)]
        elif kind == "SPPF":
            consume(f"{p}/cv1", x)
            hid = new(f"{p}/cv1", f"{p}/cv1", spec.width(f"{p}/cv1"), i, "sppf", "sppf_hidden", stride)
            consume(f"{p}/cv2", [hid] * 4)  # max pools of a constant are the constant: same sources
            x = [new(f"{p}/cv2", f"{p}/cv2", spec.width(f"{p}/cv2"), i, "sppf", "out", stride)]
        elif kind == "Upsample":
            stride //= 2
        elif kind == "Concat":
            x = x + outs[frm[1]]
        outs[i] = x

    branches = [("cv2", "box"), ("cv3", "cls")] + ([("cv4", "angle")] if spec.task == "obb" else [])
    for lvl, src in enumerate(HEAD_INPUTS):
        s = 8 * 2 ** lvl
        for b, role in branches:
            p = f"model_{DETECT}/{b}_{lvl}"
            consume(f"{p}_0", outs[src])
            h = new(f"{p}_0", f"{p}_0", spec.width(f"{p}_0"), DETECT, "detect", role, s)
            consume(f"{p}_1", [h])
            h = new(f"{p}_1", f"{p}_1", spec.width(f"{p}_1"), DETECT, "detect", role, s)
            consume(f"{p}_2", [h], bias=True)

    return tuple(Group(g.name, g.size, tuple(g.producers), tuple(g.consumers), g.layer, g.part, g.kind,
                       g.role, g.stride) for g in groups.values())


def group_map(spec: Spec) -> dict[str, Group]:
    return {g.name: g for g in build_groups(spec)}


def describe(spec: Spec) -> list[dict]:
    """One row per group (for reports): name, size, tags, member and consumer counts."""
    return [dict(name=g.name, size=g.size, part=g.part, kind=g.kind, role=g.role, scale=g.scale,
                 producers=[pr.path for pr in g.producers],
                 consumers=[f"{c.path}@{c.offset}" for c in g.consumers]) for g in build_groups(spec)]
