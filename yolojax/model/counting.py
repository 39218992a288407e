"""Parameters, MACs and FLOPs computed from the spec alone (no arrays), with Ultralytics' definitions.

GFLOPs = 2 x (conv multiply-adds without bias + 4 x the element count of every BN input) / 1e9, as thop
counts them for Ultralytics; activations, pooling, upsampling, concat and decode count zero.
"""
from __future__ import annotations

import dataclasses

from .spec import DETECT, HEAD_INPUTS, LAYERS, STRIDES, Spec


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


def conv_table(spec: Spec, imgsz: int | tuple[int, int] = 640) -> list[ConvInfo]:
    """Every convolution of the network in execution order, with its input/output widths and map size."""
    ih, iw = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    rows: list[ConvInfo] = []
    ch: dict[int, int] = {}
    size: dict[int, tuple[int, int]] = {}
    c, (h, w) = 3, (ih, iw)

    def conv(path, cin, cout, k, s, hw, bn=True):
        oh, ow = (hw[0] + 2 * (k // 2) - k) // s + 1, (hw[1] + 2 * (k // 2) - k) // s + 1
        rows.append(ConvInfo(path, cin, cout, k, s, oh, ow, bn))
        return cout, (oh, ow)

    for i, kind, frm, _, _, kw in LAYERS:
        p = f"model_{i}"
        if kind == "Conv":
            c, (h, w) = conv(p, c, spec.width(p), kw["k"], kw["s"], (h, w))
        elif kind == "C2f":
            a, b = spec.split(p)
            conv(f"{p}/cv1", c, a + b, 1, 1, (h, w))
            total, prev = a + b, b
            for j in range(spec.n_bottlenecks(i)):
                hid, _ = conv(f"{p}/m_{j}/cv1", prev, spec.width(f"{p}/m_{j}/cv1"), 3, 1, (h, w))
                prev, _ = conv(f"{p}/m_{j}/cv2", hid, spec.width(f"{p}/m_{j}/cv2"), 3, 1, (h, w))
                total += prev
            c, _ = conv(f"{p}/cv2", total, spec.width(f"{p}/cv2"), 1, 1, (h, w))
        elif kind == "SPPF":
            hid, _ = conv(f"{p}/cv1", c, spec.width(f"{p}/cv1"), 1, 1, (h, w))
            c, _ = conv(f"{p}/cv2", 4 * hid, spec.width(f"{p}/cv2"), 1, 1, (h, w))
        elif kind == "Upsample":
            h, w = 2 * h, 2 * w
        elif kind == "Concat":
            c = c + ch[frm[1]]
        ch[i], size[i] = c, (h, w)

    branches = [("cv2", 4 * spec.reg_max), ("cv3", spec.nc)] + ([("cv4", 1)] if spec.task == "obb" else [])
    for lvl, src in enumerate(HEAD_INPUTS):
        for b, out in branches:
            p = f"model_{DETECT}/{b}_{lvl}"
            c1, hw = conv(f"{p}_0", ch[src], spec.width(f"{p}_0"), 3, 1, size[src])
            c1, hw = conv(f"{p}_1", c1, spec.width(f"{p}_1"), 3, 1, hw)
            conv(f"{p}_2", c1, out, 1, 1, hw, bn=False)
    return rows


def count_params(spec: Spec) -> int:
    """Parameter count as Ultralytics reports it (its fixed DFL conv's reg_max weights included)."""
    dfl = spec.reg_max if spec.reg_max > 1 else 0
    return sum(r.params for r in conv_table(spec, 64)) + dfl


def _dfl_macs(spec: Spec, rows: list[ConvInfo]) -> int:
    # Ultralytics' DFL is a fixed 1x1 conv (reg_max -> 1) over 4 sides of every anchor; thop counts it.
    anchors = sum(r.h * r.w for r in rows if r.path.startswith(f"model_{DETECT}/cv2_") and r.path.endswith("_2"))
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
        "variant": spec.variant, "task": spec.task, "nc": spec.nc, "imgsz": imgsz,
        "params": count_params(spec), "macs": count_macs(spec, imgsz),
        "gflops": count_flops(spec, imgsz), "convs": len(rows),
        "layers": [dataclasses.asdict(r) for r in rows],
    }
