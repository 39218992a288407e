"""The model spec: an immutable description of a YOLOv8 network down to every channel width.

A spec is data. The Flax module, the parameter shapes, the pruning dependency groups, the ONNX graph and the
FLOPs count are all interpretations of it, so a pruned model is the same code with another spec.

Widths are keyed by the path of the Conv(+BN) module whose output they size, mirroring the Flax parameter
tree (`model_2/cv1`, `model_2/m_0/cv2`, `model_22/cv3_1_0`). C2f layers also carry the explicit sizes of
the two parts of their cv1 output (`splits`), which stop being equal halves once pruned. `arch` names the
layer table (`arch.py`: yolov8, yolov8-p2); `graph.lower` turns a spec into the graph everything folds over.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Iterable, Mapping

from .arch import ARCHS, DEFAULT_ARCH, SCALES, TASKS, is_model_name, make_divisible, model_name, parse_model_name
from .graph import Graph, head_widths, initial_widths, lower, repeats_of

__all__ = ["Spec", "yolov8_spec", "tiny_spec", "SCALES", "TASKS", "ARCHS", "make_divisible", "head_widths",
           "parse_model_name", "is_model_name", "model_name", "STRIDES"]

# The default architecture's strides, for user code written against it; the package reads them from the spec
# (`spec.strides`), which a P2 model changes.
STRIDES = (8, 16, 32)


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
    arch: str = DEFAULT_ARCH

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
        """Output channels of layer i of the architecture (concats included)."""
        return self.graph.layer_channels(i)

    @property
    def graph(self) -> Graph:
        """The lowered graph every interpretation folds over (cached per spec)."""
        return lower(self)

    @property
    def strides(self) -> tuple[int, ...]:
        """Feature strides of the Detect levels, finest first ((8, 16, 32); (4, 8, 16, 32) for P2)."""
        return self.graph.strides

    @property
    def name(self) -> str:
        """Ultralytics-style model name: yolov8n, yolov8s-p2, yolov8n-obb."""
        return model_name(self.variant, self.arch, self.task)

    def with_classes(self, nc: int, names: Iterable[str] = ()) -> "Spec":
        """The same network for `nc` classes: the class branches get Ultralytics' width for nc (the pruned
        rest is kept)."""
        names = tuple(names)
        new = dataclasses.replace(self, nc=nc, names=names)
        g = self.graph
        _, c3, _ = head_widths(nc, g.nodes[g.levels[0].feature].channels, self.reg_max)
        widths = dict(self.width_map)
        for n in g.convs(bn=True):
            if n.role == "cls":
                widths[n.path] = c3
        return new.replace(widths=widths)

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
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {sorted(ARCHS)}")
        if self.nc < 1:
            raise ValueError(f"nc must be >= 1, got {self.nc}")
        if self.names and len(self.names) != self.nc:
            raise ValueError(f"{len(self.names)} class names given for nc={self.nc}")
        for p, w in self.widths:
            if w < 1:
                raise ValueError(f"width of {p} must be >= 1, got {w}")
        lower(self)  # splits that fit their convs, residual widths that agree, every width present

    # -- serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "variant": self.variant, "nc": self.nc, "reg_max": self.reg_max, "task": self.task,
            "names": list(self.names), "widths": dict(self.widths),
            "splits": {k: list(v) for k, v in self.splits},
        } | ({"arch": self.arch} if self.arch != DEFAULT_ARCH else {})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Spec":
        spec = cls(
            variant=str(d["variant"]), nc=int(d["nc"]), reg_max=int(d.get("reg_max", 16)),
            task=str(d.get("task", "detect")), names=tuple(d.get("names", ())),
            widths=tuple(sorted((str(k), int(v)) for k, v in d["widths"].items())),
            splits=tuple(sorted((str(k), (int(v[0]), int(v[1]))) for k, v in d["splits"].items())),
            arch=str(d.get("arch", DEFAULT_ARCH)),
        )
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, s: str) -> "Spec":
        return cls.from_dict(json.loads(s))

    def is_pruned_from(self, other: "Spec") -> bool:
        return self.widths != other.widths


def yolov8_spec(variant: str = "n", nc: int = 80, *, reg_max: int = 16, task: str = "detect",
                names: Iterable[str] = (), arch: str | None = None) -> Spec:
    """The unpruned spec of a named model: `n`..`x` (or `tiny` for tests), `yolov8s`, `yolov8n-p2`, `m-obb`."""
    parsed = parse_model_name(variant)
    if parsed is None:
        raise ValueError(f"unknown YOLOv8 variant {variant!r}; expected one of {sorted(SCALES)}, optionally "
                         "with yolov8 before and -p2 / -obb after (yolov8n-p2)")
    variant, name_arch, name_task = parsed
    task = "obb" if name_task == "obb" else task
    arch = arch or name_arch
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
    depth, width, max_ch = SCALES[variant]
    widths, splits = initial_widths(ARCHS[arch], lambda c: make_divisible(min(c, max_ch) * width, 8),
                                    repeats_of(depth), nc=nc, reg_max=reg_max, task=task)
    names = tuple(names)
    if names and len(names) != nc:
        raise ValueError(f"{len(names)} class names given for nc={nc}")
    spec = Spec(variant=variant, nc=nc, reg_max=reg_max, task=task, names=names, arch=arch,
                widths=tuple(sorted(widths.items())), splits=tuple(sorted(splits.items())))
    spec.validate()
    return spec


def tiny_spec(nc: int = 4, **kw) -> Spec:
    """Widths 8-16 (the head 16-64): the spec every fast test uses."""
    return yolov8_spec("tiny", nc, **kw)
