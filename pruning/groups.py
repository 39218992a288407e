"""Channel dependency groups of a YOLOv8, a fold over the spec's graph (`yolojax.model.graph.lower`).

A group is a set of channels that must be kept or removed together: one keep-mask of `size` entries shared
by every member. Members are *producers* (a Conv+BN whose output channels [start, start+size) are the group)
and *consumers* (a conv reading the group at input channels [offset, offset+size)). The walk carries each
tensor as a list of segments (group, size, sources), so concats, upsampling, SPPF's four-way concat and the
Detect branches get their offsets by construction, not from per-variant tables: every Conv+BN starts a group,
a Split cuts its (fresh) group into one group per part, an Add folds the new branch's producer into the
residual's group, max pooling and upsampling pass segments through, and a Conv consumes what it reads.

`sources` names the producers whose outputs add up to what a consumer reads: one producer for a plain
output; in a residual chain (C2f with shortcut) the value after Bottleneck j is cv1's part b plus the
outputs of m_0..m_j cv2, which is what pruning must fold into that consumer.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math

from yolojax.model.graph import Add, Concat, Conv, Input, MaxPool, Part, Split, Upsample, lower
from yolojax.model.spec import Spec


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
    layer: int          # architecture layer of the producing node (the Detect layer for head groups)
    part: str           # backbone | neck | head
    kind: str           # conv | c2f | sppf | detect
    role: str           # out | split_a | split_b | residual | hidden | sppf_hidden | box | cls | angle
    stride: int         # feature stride of the group's tensor (2..32)
    split: tuple[str, int] | None = None  # (spec.splits key, part index) of a C2f split part

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
    split: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class _Seg:
    group: str
    size: int
    sources: tuple[int, ...]


@functools.lru_cache(maxsize=64)
def build_groups(spec: Spec) -> tuple[Group, ...]:
    """Every dependency group of `spec`, in execution order. Cached: specs are hashable."""
    g = lower(spec)
    groups: dict[str, _Builder] = {}
    vals: list[list[_Seg]] = []  # per node: the segments of its output

    for n in g.nodes:
        ins = [vals[i] for i in n.inputs]
        if isinstance(n, Input):
            v: list[_Seg] = []  # the image: 3 channels that belong to no group
        elif isinstance(n, Conv):
            off = 0
            for seg in ins[0]:
                groups[seg.group].consumers.append(Consumer(n.path, off, seg.sources, bias=not n.bn))
                off += seg.size
            if n.bn:
                if n.path in groups:
                    raise AssertionError(f"duplicate group {n.path}")
                groups[n.path] = _Builder(n.path, n.channels, n.layer, n.part, n.block, n.role, n.stride,
                                          [Producer(n.path)])
                v = [_Seg(n.path, n.channels, (0,))]
            else:
                v = []  # a plain conv's outputs are fixed (Detect's box/class/angle channels)
        elif isinstance(n, Split):
            # a split conv output becomes one group per part, named `{conv}:a`, `{conv}:b`
            (seg,) = ins[0]
            src = groups.pop(seg.group)
            if src.consumers or len(src.producers) != 1:
                raise AssertionError(f"{n.name}: can only split a fresh conv output")
            v, start = [], 0
            for j, size in enumerate(n.sizes):
                name = f"{src.name}:{chr(ord('a') + j)}"
                groups[name] = _Builder(name, size, src.layer, src.part, src.kind, "", src.stride,
                                        [Producer(src.name, start)], split=(n.key, j))
                v.append(_Seg(name, size, (0,)))
                start += size
        elif isinstance(n, Part):
            seg = ins[0][n.index]
            groups[seg.group].role = n.role
            v = [seg]
        elif isinstance(n, Add):
            # residual: the value is the first input's group plus each added branch's producer
            base, *rest = ins
            (cur,) = base
            gb = groups[cur.group]
            for other in rest:
                (seg,) = other
                new = groups.pop(seg.group)
                if new.consumers or seg.size != cur.size:
                    raise AssertionError(f"{n.name}: residual branch must be a fresh conv output of equal width")
                gb.producers.extend(new.producers)
                cur = _Seg(cur.group, cur.size, cur.sources + (len(gb.producers) - 1,))
            gb.role = "residual"
            v = [cur]
        elif isinstance(n, Concat):
            v = [seg for x in ins for seg in x]
        elif isinstance(n, (MaxPool, Upsample)):
            v = ins[0]  # max pools and upsampling of a constant are the constant: same sources
        else:  # pragma: no cover
            raise TypeError(f"build_groups: no rule for {type(n).__name__} ({n.name})")
        vals.append(v)

    return tuple(Group(b.name, b.size, tuple(b.producers), tuple(b.consumers), b.layer, b.part, b.kind, b.role,
                       b.stride, b.split) for b in groups.values())


def group_map(spec: Spec) -> dict[str, Group]:
    return {g.name: g for g in build_groups(spec)}


def describe(spec: Spec) -> list[dict]:
    """One row per group (for reports): name, size, tags, member and consumer counts."""
    return [dict(name=g.name, size=g.size, part=g.part, kind=g.kind, role=g.role, scale=g.scale,
                 producers=[pr.path for pr in g.producers],
                 consumers=[f"{c.path}@{c.offset}" for c in g.consumers]) for g in build_groups(spec)]
