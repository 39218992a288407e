"""Parameters, MACs and FLOPs computed from the spec alone (no arrays), with Ultralytics' definitions.

GFLOPs = 2 x (conv multiply-adds without bias + 4 x the element count of every BN input) / 1e9, as thop
counts them for Ultralytics; activations, pooling, upsampling, concat and decode count zero.
"""
from __future__ import annotations

import dataclasses

from .graph import Conv, Input, Upsample, lower
from .spec import Spec


@dataclasses.dataclass(frozen=True)
class ConvInfo:
    path: str       # Flax path of the conv's module (Conv+BN) or of the bare head conv
    cin: int
    cout: int
    k: int
    stride: int
    h: int          # output height
    w: int          # output width
    bn: bool        # followed by BatchNorm (+SiLU); False for the head's final 1x1 convs (with bias)

    @property
    def params(self) -> int:
        return self.cin * self.cout * self.k * self.k + (2 * self.cout if self.bn else self.cout)

    @property
    def macs(self) -> int:
        return self.cin * self.cout * self.k * self.k * self.h * self.w

    @property
    def bn_elements(self) -> int:
        return self.cout * self.h * self.w if self.bn else 0


def feature_sizes(spec: Spec, imgsz: int | tuple[int, int] = 640) -> list[tuple[int, int]]:
    """(h, w) of every node of the spec's graph for an input of `imgsz`."""
    ih, iw = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    sizes: list[tuple[int, int]] = []
    for n in lower(spec).nodes:
        if isinstance(n, Input):
            sizes.append((ih, iw))
            continue
        h, w = sizes[n.inputs[0]]
        if isinstance(n, Conv):
            p = n.k // 2
            sizes.append(((h + 2 * p - n.k) // n.s + 1, (w + 2 * p - n.k) // n.s + 1))
        elif isinstance(n, Upsample):
            sizes.append((h * n.factor, w * n.factor))
        else:  # split, part, concat, add, max pool (stride 1, same padding): the input's size
            sizes.append((h, w))
    return sizes


def conv_table(spec: Spec, imgsz: int | tuple[int, int] = 640) -> list[ConvInfo]:
    """Every convolution of the network in execution order, with its input/output widths and map size."""
    g = lower(spec)
    sizes = feature_sizes(spec, imgsz)
    return [ConvInfo(n.path, g.nodes[n.inputs[0]].channels, n.channels, n.k, n.s, *sizes[n.id], n.bn)
            for n in g.convs()]


def count_params(spec: Spec) -> int:
    """Parameter count as Ultralytics reports it (its fixed DFL conv's reg_max weights included)."""
    dfl = spec.reg_max if spec.reg_max > 1 else 0
    return sum(r.params for r in conv_table(spec, 64)) + dfl


def _dfl_macs(spec: Spec, rows: list[ConvInfo]) -> int:
    # Ultralytics' DFL is a fixed 1x1 conv (reg_max -> 1) over 4 sides of every anchor; thop counts it.
    box = {n.path for n in lower(spec).head_outputs if n.role == "box"}
    anchors = sum(r.h * r.w for r in rows if r.path in box)
    return spec.reg_max * 4 * anchors if spec.reg_max > 1 else 0


def count_macs(spec: Spec, imgsz: int | tuple[int, int] = 640) -> int:
    """Multiply-adds of every conv (bias excluded) plus the DFL conv, as thop counts them."""
    rows = conv_table(spec, imgsz)
    return sum(r.macs for r in rows) + _dfl_macs(spec, rows)


def count_flops(spec: Spec, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs as Ultralytics reports them: 2 x (conv MACs + 4 x BN input elements) / 1e9."""
    rows = conv_table(spec, imgsz)
    macs = sum(r.macs for r in rows) + _dfl_macs(spec, rows)
    return 2 * (macs + 4 * sum(r.bn_elements for r in rows)) / 1e9


def summary(spec: Spec, imgsz: int = 640) -> dict:
    rows = conv_table(spec, imgsz)
    return {
        "variant": spec.variant, "arch": spec.arch, "task": spec.task, "nc": spec.nc, "imgsz": imgsz,
        "params": count_params(spec), "macs": count_macs(spec, imgsz),
        "gflops": count_flops(spec, imgsz), "convs": len(rows),
        "layers": [dataclasses.asdict(r) for r in rows],
    }
