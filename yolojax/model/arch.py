"""Architectures as data: the layer tables of Ultralytics' model yamls (`yolov8.yaml`, `yolov8-p2.yaml`).

A table lists blocks and how they connect, nothing about what is inside a block: `graph.py` is the one place
that knows how a Conv, C2f, SPPF, Upsample, Concat or Detect is wired, and lowers a spec of one of these
architectures into primitive ops. Adding an architecture is adding a table here.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

# variant -> (depth multiple, width multiple, max channels). `tiny` is for tests and CPU demos.
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
    "tiny": (0.33, 0.0625, 256),
}
TASKS = ("detect", "obb")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of a model yaml: `index`, block `kind`, inputs `frm` (-1 = the previous layer), base channels
    `c` (before the width multiple), `repeats` (before the depth multiple) and the block's arguments."""

    index: int
    kind: str                     # Conv | C2f | SPPF | Upsample | Concat
    frm: tuple[int, ...]
    c: int | None = None
    repeats: int = 1
    args: tuple[tuple[str, object], ...] = ()

    @property
    def kw(self) -> dict:
        return dict(self.args)


def _L(index, kind, frm, c=None, repeats=1, **args) -> Layer:
    frm = (frm,) if isinstance(frm, int) else tuple(frm)
    return Layer(index, kind, frm, c, repeats, tuple(sorted(args.items())))


@dataclasses.dataclass(frozen=True)
class Arch:
    """A YOLOv8-family network: `backbone` + `neck` layer tables and the layers the Detect head reads."""

    name: str
    backbone: tuple[Layer, ...]
    neck: tuple[Layer, ...]
    head_from: tuple[int, ...]     # layers feeding Detect, the finest stride first

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.backbone + self.neck

    @property
    def detect(self) -> int:
        """Index of the Detect layer (after the last table layer)."""
        return len(self.layers)

    def part(self, index: int) -> str:
        return "backbone" if index < len(self.backbone) else ("neck" if index < self.detect else "head")


YOLOV8_BACKBONE = (
    _L(0, "Conv", -1, 64, k=3, s=2),       # P1/2
    _L(1, "Conv", -1, 128, k=3, s=2),      # P2/4
    _L(2, "C2f", -1, 128, 3, shortcut=True),
    _L(3, "Conv", -1, 256, k=3, s=2),      # P3/8
    _L(4, "C2f", -1, 256, 6, shortcut=True),
    _L(5, "Conv", -1, 512, k=3, s=2),      # P4/16
    _L(6, "C2f", -1, 512, 6, shortcut=True),
    _L(7, "Conv", -1, 1024, k=3, s=2),     # P5/32
    _L(8, "C2f", -1, 1024, 3, shortcut=True),
    _L(9, "SPPF", -1, 1024, k=5),
)

# the head's top-down path to P3, shared by yolov8.yaml and yolov8-p2.yaml
YOLOV8_TOP_DOWN = (
    _L(10, "Upsample", -1),
    _L(11, "Concat", (-1, 6)),
    _L(12, "C2f", -1, 512, 3, shortcut=False),
    _L(13, "Upsample", -1),
    _L(14, "Concat", (-1, 4)),
    _L(15, "C2f", -1, 256, 3, shortcut=False),         # P3/8
)

ARCHS: dict[str, Arch] = {
    # ultralytics/cfg/models/v8/yolov8.yaml
    "yolov8": Arch("yolov8", YOLOV8_BACKBONE, YOLOV8_TOP_DOWN + (
        _L(16, "Conv", -1, 256, k=3, s=2),
        _L(17, "Concat", (-1, 12)),
        _L(18, "C2f", -1, 512, 3, shortcut=False),     # P4/16
        _L(19, "Conv", -1, 512, k=3, s=2),
        _L(20, "Concat", (-1, 9)),
        _L(21, "C2f", -1, 1024, 3, shortcut=False),    # P5/32
    ), head_from=(15, 18, 21)),
    # ultralytics/cfg/models/v8/yolov8-p2.yaml: a stride-4 level for small objects
    "yolov8-p2": Arch("yolov8-p2", YOLOV8_BACKBONE, YOLOV8_TOP_DOWN + (
        _L(16, "Upsample", -1),
        _L(17, "Concat", (-1, 2)),
        _L(18, "C2f", -1, 128, 3, shortcut=False),     # P2/4
        _L(19, "Conv", -1, 128, k=3, s=2),
        _L(20, "Concat", (-1, 15)),
        _L(21, "C2f", -1, 256, 3, shortcut=False),     # P3/8
        _L(22, "Conv", -1, 256, k=3, s=2),
        _L(23, "Concat", (-1, 12)),
        _L(24, "C2f", -1, 512, 3, shortcut=False),     # P4/16
        _L(25, "Conv", -1, 512, k=3, s=2),
        _L(26, "Concat", (-1, 9)),
        _L(27, "C2f", -1, 1024, 3, shortcut=False),    # P5/32
    ), head_from=(18, 21, 24, 27)),
}
DEFAULT_ARCH = "yolov8"
# model-name suffix of each architecture: yolov8n, yolov8n-p2
ARCH_SUFFIX = {"yolov8": "", "yolov8-p2": "-p2"}


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def parse_model_name(name: str) -> tuple[str, str, str] | None:
    """'yolov8n', 'n', 'yolov8s-p2', 'm-obb', 'yolov8n-p2-obb' -> (variant, arch, task); None if not a name."""
    s = str(name).removeprefix("yolov8")
    task = "detect"
    if s.endswith("-obb"):
        s, task = s[: -len("-obb")], "obb"
    arch = DEFAULT_ARCH
    for a, suffix in ARCH_SUFFIX.items():
        if suffix and s.endswith(suffix):
            s, arch = s[: -len(suffix)], a
    return (s, arch, task) if s in SCALES else None


def is_model_name(model) -> bool:
    """A model name (`yolov8n`, `s-p2`, `yolov8m-obb.yaml`) and not an existing file of that name."""
    return parse_model_name(str(model).removesuffix(".yaml")) is not None and not Path(str(model)).exists()


def model_name(variant: str, arch: str = DEFAULT_ARCH, task: str = "detect") -> str:
    return f"yolov8{variant}{ARCH_SUFFIX[arch]}{'-obb' if task == 'obb' else ''}"
