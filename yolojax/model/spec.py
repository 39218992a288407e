"""The model spec: an immutable description of a YOLOv8 network down to every channel width.

A spec is data. The Flax module, the parameter shapes, the pruning dependency groups, the ONNX graph and the
FLOPs count are all interpretations of it, so a pruned model is the same code with another spec.

Widths are keyed by the path of the Conv(+BN) module whose output they size, mirroring the Flax parameter
tree (`model_2/cv1`, `model_2/m_0/cv2`, `model_22/cv3_1_0`). C2f layers also carry the explicit sizes of
the two parts of their cv1 output (`splits`), which stop being equal halves once pruned.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Iterable, Mapping

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
STRIDES = (8, 16, 32)
DETECT = 22  # index of the Detect layer

# The yolov8.yaml graph: (index, kind, from, base channels, repeats, shortcut / kernel / stride).
BACKBONE = (
    (0, "Conv", -1, 64, 1, dict(k=3, s=2)),
    (1, "Conv", -1, 128, 1, dict(k=3, s=2)),
    (2, "C2f", -1, 128, 3, dict(shortcut=True)),
    (3, "Conv", -1, 256, 1, dict(k=3, s=2)),
    (4, "C2f", -1, 256, 6, dict(shortcut=True)),
    (5, "Conv", -1, 512, 1, dict(k=3, s=2)),
    (6, "C2f", -1, 512, 6, dict(shortcut=True)),
    (7, "Conv", -1, 1024, 1, dict(k=3, s=2)),
    (8, "C2f", -1, 1024, 3, dict(shortcut=True)),
    (9, "SPPF", -1, 1024, 1, dict(k=5)),
)
NECK = (
    (10, "Upsample", -1, None, 1, {}),
    (11, "Concat", (-1, 6), None, 1, {}),
    (12, "C2f", -1, 512, 3, dict(shortcut=False)),
    (13, "Upsample", -1, None, 1, {}),
    (14, "Concat", (-1, 4), None, 1, {}),
    (15, "C2f", -1, 256, 3, dict(shortcut=False)),
    (16, "Conv", -1, 256, 1, dict(k=3, s=2)),
    (17, "Concat", (-1, 12), None, 1, {}),
    (18, "C2f", -1, 512, 3, dict(shortcut=False)),
    (19, "Conv", -1, 512, 1, dict(k=3, s=2)),
    (20, "Concat", (-1, 9), None, 1, {}),
    (21, "C2f", -1, 1024, 3, dict(shortcut=False)),
)
LAYERS = BACKBONE + NECK
HEAD_INPUTS = (15, 18, 21)  # P3, P4, P5


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


@dataclasses.dataclass(frozen=True)
class Spec:
    """Immutable, hashable YOLOv8 description. Build one with `yolov8_spec`."""

    variant: str
    nc: int
    widths: tuple[tuple[str, int], ...]
    splits: tuple[tuple[str, tuple[int, int]], ...]
    reg_max: int = 16
    task: str = "detect"
    names: tuple[str, ...] = ()

    # -- lookup -------------------------------------------------------------------------------------
    @functools.cached_property
    def width_map(self) -> dict[str, int]:
        return dict(self.widths)

    @functools.cached_property
    def split_map(self) -> dict[str, tuple[int, int]]:
        return {k: tuple(v) for k, v in self.splits}

    def width(self, path: str) -> int:
        try:
            return self.width_map[path]
        except KeyError:
            raise KeyError(f"spec {self.variant!r} has no width for {path!r}") from None

    def split(self, layer: str) -> tuple[int, int]:
        return self.split_map[layer]

    def n_bottlenecks(self, i: int) -> int:
        return sum(1 for p in self.width_map if p.startswith(f"model_{i}/m_") and p.endswith("/cv1"))

    @property
    def num_outputs(self) -> int:
        """Channels per anchor of the decoded output: 4 box + nc (+1 angle for obb)."""
        return 4 + self.nc + (1 if self.task == "obb" else 0)

    def layer_out(self, i: int) -> int:
        """Output channels of layer i of the graph (concats included)."""
        return _layer_out_channels(self)[i]

    # -- edits --------------------------------------------------------------------------------------
    def replace(self, **changes) -> "Spec":
        if "widths" in changes and isinstance(changes["widths"], Mapping):
            changes["widths"] = tuple(sorted(changes["widths"].items()))
        if "splits" in changes and isinstance(changes["splits"], Mapping):
            changes["splits"] = tuple(sorted((k, tuple(v)) for k, v in changes["splits"].items()))
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.nc < 1:
            raise ValueError(f"nc must be >= 1, got {self.nc}")
        for p, w in self.widths:
            if w < 1:
                raise ValueError(f"width of {p} must be >= 1, got {w}")
        for i, kind, _, _, _, kw in LAYERS:
            if kind != "C2f":
                continue
            a, b = self.split(f"model_{i}")
            if a + b != self.width(f"model_{i}/cv1"):
                raise ValueError(f"model_{i}: split {a}+{b} != cv1 width {self.width(f'model_{i}/cv1')}")
            if kw["shortcut"]:
                for j in range(self.n_bottlenecks(i)):
                    if self.width(f"model_{i}/m_{j}/cv2") != b:
                        raise ValueError(
                            f"model_{i}/m_{j}/cv2 is residual: its width must equal the split part {b}")

    # -- serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "variant": self.variant, "nc": self.nc, "reg_max": self.reg_max, "task": self.task,
            "names": list(self.names), "widths": dict(self.widths),
            "splits": {k: list(v) for k, v in self.splits},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Spec":
        spec = cls(
            variant=str(d["variant"]), nc=int(d["nc"]), reg_max=int(d.get("reg_max", 16)),
            task=str(d.get("task", "detect")), names=tuple(d.get("names", ())),
            widths=tuple(sorted((str(k), int(v)) for k, v in d["widths"].items())),
            splits=tuple(sorted((str(k), (int(v[0]), int(v[1]))) for k, v in d["splits"].items())),
        )
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, s: str) -> "Spec":
        return cls.from_dict(json.loads(s))

    def is_pruned_from(self, other: "Spec") -> bool:
        return self.widths != other.widths


def _layer_out_channels(spec: Spec) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, kind, frm, _, _, _ in LAYERS:
        if kind == "Conv":
            out[i] = spec.width(f"model_{i}")
        elif kind in ("C2f", "SPPF"):
            out[i] = spec.width(f"model_{i}/cv2")
        elif kind == "Upsample":
            out[i] = out[i - 1]
        elif kind == "Concat":
            out[i] = out[i - 1] + out[frm[1]]
    return out


def head_widths(nc: int, ch0: int, reg_max: int = 16) -> tuple[int, int, int]:
    """Detect's inner widths (c2 box, c3 class, c4 angle) from the P3 width, as Ultralytics computes them."""
    c2 = max(16, ch0 // 4, reg_max * 4)
    c3 = max(ch0, min(nc, 100))
    c4 = max(ch0 // 4, 1)
    return c2, c3, c4


def yolov8_spec(variant: str = "n", nc: int = 80, *, reg_max: int = 16, task: str = "detect",
                names: Iterable[str] = ()) -> Spec:
    """The unpruned YOLOv8 spec of a named scale (n/s/m/l/x, or `tiny` for tests)."""
    variant = variant.removeprefix("yolov8")
    if variant.endswith("-obb"):
        variant, task = variant[: -len("-obb")], "obb"
    if variant not in SCALES:
        raise ValueError(f"unknown YOLOv8 variant {variant!r}; expected one of {sorted(SCALES)}")
    depth, width, max_ch = SCALES[variant]
    ch = lambda c: make_divisible(min(c, max_ch) * width, 8)  # noqa: E731
    widths: dict[str, int] = {}
    splits: dict[str, tuple[int, int]] = {}
    for i, kind, _, c, n, kw in LAYERS:
        p = f"model_{i}"
        if kind == "Conv":
            widths[p] = ch(c)
        elif kind == "C2f":
            c2 = ch(c)
            n = max(round(n * depth), 1) if n > 1 else n
            hidden = int(c2 * 0.5)
            widths[f"{p}/cv1"] = 2 * hidden
            splits[p] = (hidden, hidden)
            for j in range(n):
                widths[f"{p}/m_{j}/cv1"] = hidden
                widths[f"{p}/m_{j}/cv2"] = hidden
            widths[f"{p}/cv2"] = c2
        elif kind == "SPPF":
            c1 = widths["model_8/cv2"]
            widths[f"{p}/cv1"] = c1 // 2
            widths[f"{p}/cv2"] = ch(c)
    c2, c3, c4 = head_widths(nc, widths["model_15/cv2"], reg_max)
    for lvl in range(len(STRIDES)):
        for k in (0, 1):
            widths[f"model_{DETECT}/cv2_{lvl}_{k}"] = c2
            widths[f"model_{DETECT}/cv3_{lvl}_{k}"] = c3
            if task == "obb":
                widths[f"model_{DETECT}/cv4_{lvl}_{k}"] = c4
    names = tuple(names)
    if names and len(names) != nc:
        raise ValueError(f"{len(names)} class names given for nc={nc}")
    return Spec(variant=variant, nc=nc, reg_max=reg_max, task=task, names=names,
                widths=tuple(sorted(widths.items())), splits=tuple(sorted(splits.items())))


def tiny_spec(nc: int = 4, **kw) -> Spec:
    """Widths 8-16 (the head 16-64): the spec every fast test uses."""
    return yolov8_spec("tiny", nc, **kw)
