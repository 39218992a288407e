"""The one record type every reader produces, the problems they report, and the dataset holding both."""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterator

import numpy as np

# What happened to the thing a problem is about. `skipped`: a whole image is left out;
# `dropped`: one box/line is left out; `clipped`: a box was cut to the image; `warning`: kept as is.
ACTIONS = ("skipped", "dropped", "clipped", "warning")


# Problem kinds that mean a label row could not be understood: the object it describes is unknown, so by
# default its image is left out rather than trained on with an unlabeled object (as Ultralytics does).
MALFORMED_KINDS = frozenset({"malformed", "class_id"})


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding about an input file. `line` is 1-based, None when it concerns the whole file.

    kind: a short code for grouping (malformed, class_id, unknown_class, degenerate, outside, clipped,
    duplicate, others, image, labels, label_file, missing_label, orphan, size_mismatch, names, list_entry).
    """

    file: str
    line: int | None
    reason: str
    action: str = "dropped"
    kind: str = ""

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"Problem.action must be one of {ACTIONS}, got {self.action!r}")

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason, "action": self.action,
                "kind": self.kind}

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason} ({self.action})"


def _frozen(a: np.ndarray, dtype, shape_tail: tuple, name: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.shape[1:] != shape_tail:
        raise ValueError(f"Record.{name} must have shape [N,{','.join(map(str, shape_tail))}], got {a.shape}")
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One image and its boxes, in original-image pixels.

    path: image file; image_id: file stem; shape: (h, w) of the image as decoded (EXIF orientation applied);
    boxes float32 [N,4] xyxy; classes int32 [N]; ignore bool [N] (ignore region, difficult or crowd: not a
    target, and its area yields no negatives); for oriented datasets polygons float32 [N,4,2] (corner points)
    and obb float32 [N,5] (cx, cy, w, h, angle in radians, see `geometry.polygons_to_obb`); label_path: the
    annotation file (None for background images without one). Arrays are read-only.
    """

    path: str
    image_id: str
    shape: tuple[int, int]
    boxes: np.ndarray
    classes: np.ndarray
    ignore: np.ndarray
    polygons: np.ndarray | None = None
    obb: np.ndarray | None = None
    label_path: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        set_(self, "boxes", _frozen(self.boxes, np.float32, (4,), "boxes"))
        n = len(self.boxes)
        set_(self, "classes", _frozen(np.reshape(self.classes, (-1,)), np.int32, (), "classes"))
        set_(self, "ignore", _frozen(np.reshape(self.ignore, (-1,)), bool, (), "ignore"))
        if len(self.classes) != n or len(self.ignore) != n:
            raise ValueError(f"Record {self.path}: boxes/classes/ignore lengths differ "
                             f"({n}, {len(self.classes)}, {len(self.ignore)})")
        if (self.polygons is None) != (self.obb is None):
            raise ValueError(f"Record {self.path}: polygons and obb come together")
        if self.polygons is not None:
            set_(self, "polygons", _frozen(self.polygons, np.float32, (4, 2), "polygons"))
            set_(self, "obb", _frozen(self.obb, np.float32, (5,), "obb"))
            if len(self.polygons) != n or len(self.obb) != n:
                raise ValueError(f"Record {self.path}: polygons/obb lengths differ from boxes ({n})")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def is_obb(self) -> bool:
        return self.polygons is not None

    @property
    def num_targets(self) -> int:
        """Boxes that are training targets (not ignore regions)."""
        return int((~self.ignore).sum())


@dataclasses.dataclass
class Dataset:
    """Records of one split, class names, and every problem found while reading.

    stats holds the counters readers fill (see `STAT_KEYS`); `summary()` derives the report counts.
    """

    records: list[Record]
    names: list[str]
    root: str
    format: str
    split: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    stats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    obb: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def nc(self) -> int:
        return len(self.names)

    def summary(self) -> dict:
        """Counts for reports: images, labeled/background images, boxes per class, ignored and dropped rows."""
        per_class = np.zeros(self.nc, np.int64)
        ignored = 0
        labeled = 0
        for r in self.records:
            if len(r):
                labeled += 1
            ignored += int(r.ignore.sum())
            np.add.at(per_class, r.classes[~r.ignore], 1)
        acts = collections.Counter(p.action for p in self.problems)
        out = {
            "format": self.format,
            "root": self.root,
            "split": self.split,
            "obb": self.obb,
            "names": list(self.names),
            "images": len(self.records),
            "labeled_images": labeled,
            "background_images": len(self.records) - labeled,
            "skipped": acts["skipped"],
            "boxes": int(per_class.sum()),
            "ignored_boxes": ignored,
            "boxes_per_class": {n: int(c) for n, c in zip(self.names, per_class)},
            "dropped_boxes": acts["dropped"],
            "clipped_boxes": acts["clipped"],
            "warnings": acts["warning"],
        }
        for k in STAT_KEYS:
            out.setdefault(k, int(self.stats.get(k, 0)))
        return out


# Counters readers fill in `Dataset.stats` (absent = 0).
STAT_KEYS = (
    "label_files",          # annotation files read for the images of this split
    "label_lines",          # annotation rows in those files (header lines not counted)
    "dropped_others",       # VisDrone category 11 rows dropped by default
    "duplicate_boxes",      # exact duplicate rows removed
    "orphan_label_files",   # annotation files with no image
    "orphan_label_lines",   # rows in those files
    "missing_label_files",  # images without an annotation file (background)
)

