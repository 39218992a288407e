"""Dataset readers: Ultralytics YAML/YOLO txt (boxes and OBB), VisDrone-DET, PASCAL VOC, COCO JSON, DOTA.

Every reader returns a `Dataset` of `Record`s (original-image pixels, xyxy) and reports each problem with
its file and line. A bad image is skipped, a bad label line dropped, an out-of-image box clipped; each one
is a `Problem` in `Dataset.problems`, never silent. `load_dataset` picks the reader from the path.
"""
from __future__ import annotations

import collections
import glob
import json
import math
import os
import xml.etree.ElementTree as ET
import xml.parsers.expat
from typing import Iterable, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from yolojax.data import geometry as geo
from yolojax.data.imageio import ImageError, image_size, is_image
from yolojax.data.records import MALFORMED_KINDS, Dataset, Problem, Record

VISDRONE_NAMES = ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus",
                  "motor"]
DOTA_NAMES = ["plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
              "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
              "roundabout", "soccer-ball-field", "swimming-pool"]
DOTA_V15_NAMES = DOTA_NAMES + ["container-crane"]
DOTA_V2_NAMES = DOTA_V15_NAMES + ["airport", "helipad"]
VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
COCO80_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"]

FORMATS = ("yolo", "visdrone", "voc", "coco", "dota")
# Overhang below this many pixels is clipped without a report: annotation tools disagree on whether a
# coordinate names a pixel or its edge (DOTA corners reach w+1), which is not an error worth a line.
CLIP_REPORT_PX = 1.0
# Class id for class-agnostic ignore regions (VisDrone category 0): they are never targets.
IGNORE_CLASS = -1


class SplitNotFoundError(ValueError):
    """The dataset defines no such split (no `val:` key, no images/val folder). A split that is defined but
    missing or empty raises a plain ValueError: a caller may fall back on another split only in this case."""


# ---------------------------------------------------------------------------------------------- rows

class _Rows:
    """Parsed annotation rows of one file before validation (pixels, xyxy or polygons)."""

    def __init__(self, with_polygons: bool = False):
        self.boxes: list = []
        self.polys: list = []
        self.classes: list = []
        self.ignore: list = []
        self.lines: list = []
        self.with_polygons = with_polygons

    def add(self, line: int, cls: int, box=None, poly=None, ignore: bool = False):
        if poly is not None:
            poly = np.asarray(poly, np.float64).reshape(-1, 2)
            box = (poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max())
            if self.with_polygons:
                self.polys.append(poly)
        self.boxes.append(box)
        self.classes.append(cls)
        self.ignore.append(ignore)
        self.lines.append(line)

    def __len__(self):
        return len(self.boxes)


def _validate(file: str, shape: tuple[int, int], rows: _Rows, nc: int, problems: list[Problem],
              stats: collections.Counter, row_name: str | None = None) -> dict:
    """Clean one file's rows against the image: drop non-finite, out-of-range class, degenerate and
    duplicate rows; clip to the image. Returns Record fields (boxes, classes, ignore, polygons, obb).

    rows.lines are 1-based line numbers, or ids named by row_name (e.g. 'annotation id' for JSON)."""
    h, w = shape
    n = len(rows)
    boxes = np.asarray(rows.boxes, np.float64).reshape(n, 4)
    classes = np.asarray(rows.classes, np.int64).reshape(n)
    ignore = np.asarray(rows.ignore, bool).reshape(n)
    lines = np.asarray(rows.lines, np.int64).reshape(n)
    polys = np.asarray(rows.polys, np.float64).reshape(n, 4, 2) if rows.with_polygons else None
    keep = np.ones(n, bool)

    def report(i, reason, kind, action="dropped"):
        if row_name is None:
            problems.append(Problem(file, int(lines[i]), reason, action, kind))
        else:
            problems.append(Problem(file, None, f"{row_name} {lines[i]}: {reason}", action, kind))

    def drop(mask, reason_fn, kind):
        for i in np.flatnonzero(mask & keep):
            report(i, reason_fn(i), kind)
        keep[mask] = False

    finite = np.isfinite(boxes).all(1) & (np.isfinite(polys).all((1, 2)) if polys is not None else True)
    drop(~finite, lambda i: "non-finite coordinate (nan/inf)", "malformed")
    bad_cls = ((classes < 0) & ~((classes == IGNORE_CLASS) & ignore)) | (classes >= nc)
    drop(bad_cls, lambda i: f"class id {classes[i]} out of range [0, {nc})", "class_id")
    with np.errstate(invalid="ignore"):
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        drop(~((bw > 0) & (bh > 0)), lambda i: f"degenerate box (width {bw[i]:.6g}, height {bh[i]:.6g})",
             "degenerate")
        over = np.maximum.reduce([-boxes[:, 0], -boxes[:, 1], boxes[:, 2] - w, boxes[:, 3] - h])
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    drop(~((cw > 0) & (ch > 0)), lambda i: f"box {np.round(boxes[i], 2).tolist()} lies outside the "
                                           f"{w}x{h} image", "outside")
    for i in np.flatnonzero(keep & (over > CLIP_REPORT_PX)):
        report(i, f"box {np.round(boxes[i], 2).tolist()} extends {over[i]:.1f} px outside the {w}x{h} image",
               "clipped", "clipped")
    # exact duplicates (same class, flag and coordinates); the first occurrence stays
    key = np.concatenate([classes[:, None], ignore[:, None], boxes if polys is None else polys.reshape(n, 8)],
                         axis=1)
    idx = np.flatnonzero(keep)
    if len(idx) > 1:
        _, first, inverse = np.unique(key[idx], axis=0, return_index=True, return_inverse=True)
        dup = np.zeros(n, bool)
        firsts = idx[first[inverse.reshape(-1)]]
        dup[idx] = firsts != idx
        for i in np.flatnonzero(dup):
            report(i, f"duplicate of {row_name or 'line'} {lines[firsts[np.searchsorted(idx, i)]]}", "duplicate")
        stats["duplicate_boxes"] += int(dup.sum())
        keep &= ~dup
    out = {"boxes": clipped[keep].astype(np.float32), "classes": classes[keep].astype(np.int32),
           "ignore": ignore[keep]}
    if polys is not None:
        # Polygons are clipped point by point (as Ultralytics clips point sets); box and obb derive from the
        # clipped points, so that a file written back from the record reads the same.
        p = polys[keep].copy()
        p[..., 0] = np.clip(p[..., 0], 0, w)
        p[..., 1] = np.clip(p[..., 1], 0, h)
        out["boxes"] = geo.polygons_to_xyxy(p).astype(np.float32)
        out["polygons"] = p.astype(np.float32)
        out["obb"] = geo.polygons_to_obb(p)
    return out


def _malformed(problems: list[Problem], start: int, files) -> list[Problem]:
    return [p for p in problems[start:] if p.kind in MALFORMED_KINDS and p.file in files]


def _leave_out(img: str, bad: list[Problem], problems: list[Problem], policy: str) -> bool:
    """Whether an image is left out for label rows that could not be read (policy 'skip'); says so."""
    if not bad or policy == "drop":
        return False
    first = bad[0]
    where = first.file if first.line is None else f"{first.file}:{first.line}"
    problems.append(Problem(img, None, f"left out: {len(bad)} label row(s) unreadable (first {where}: {first.reason}); "
                            "its objects are not all known", "skipped", "labels"))
    return True


def _check_policy(malformed: str) -> None:
    if malformed not in ("skip", "drop"):
        raise ValueError(f"malformed must be 'skip' (leave the image out) or 'drop' (drop the row), got {malformed!r}")


def _label_lines(img: str, path: str, problems: list[Problem], stats, *, missing: str,
                 unreadable: str) -> list[str] | None:
    """An image's annotation lines: [] when the file is missing (a background image, reported as a warning),
    None when it cannot be read (the image is skipped, reported)."""
    if not os.path.isfile(path):
        stats["missing_label_files"] += 1
        problems.append(Problem(img, None, f"no {missing}: used as a background image", "warning", "missing_label"))
        return []
    lines = _read_text(path, problems)
    if lines is None:
        problems.append(Problem(img, None, f"its {unreadable} cannot be read", "skipped", "label_file"))
        return None
    stats["label_files"] += 1
    return lines


def _read_text(path: str, problems: list[Problem]) -> list[str] | None:
    """Lines of a text annotation file (CRLF or LF); None (and a problem) when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        problems.append(Problem(path, None, f"cannot read annotation file ({e.strerror})", "skipped", "label_file"))
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problems.append(Problem(path, None, "annotation file is not UTF-8 text", "skipped", "label_file"))
        return None
    return text.splitlines()


def _num(tok: str) -> float:
    return float(tok)  # accepts 'nan'/'inf'; those are reported by _validate


def _image_shape(path: str, problems: list[Problem]) -> tuple[int, int] | None:
    try:
        return image_size(path)
    except ImageError as e:
        problems.append(Problem(path, None, str(e).split(": ", 1)[-1], "skipped", "image"))
        return None


def _progress(it: Sequence, desc: str, progress: bool):
    return tqdm(it, desc=desc, unit="img", disable=not progress, leave=False)


def _list_images(folder: str) -> list[str]:
    files = glob.glob(os.path.join(glob.escape(folder), "**", "*"), recursive=True)
    return sorted(f for f in files if is_image(f) and os.path.isfile(f))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _finish(records, names, root, fmt, split, problems, stats, obb=False) -> Dataset:
    if not records:
        skipped = [p for p in problems if p.action == "skipped"]
        why = (f"; {len(skipped)} images left out, first: {skipped[0]}" if skipped else
               f"; {len(problems)} problems, first: {problems[0]}" if problems else "")
        raise ValueError(f"{root}: no usable images found for split {split!r} ({fmt} format){why}")
    return Dataset(records=records, names=list(names), root=root, format=fmt, split=split, problems=problems,
                   stats=stats, obb=obb)


def _orphans(label_files: Iterable[str], used: set[str], problems, stats, what="label file"):
    for lf in sorted(set(label_files) - used):
        stats["orphan_label_files"] += 1
        lines = _read_text(lf, [])
        stats["orphan_label_lines"] += sum(1 for ln in (lines or []) if ln.strip())
        problems.append(Problem(lf, None, f"orphan {what}: no image for it", "warning", "orphan"))


# ---------------------------------------------------------------------------------------- YOLO / yaml

def img2label_path(img: str, labels: str = "labels") -> str:
    """Ultralytics pairing: the last /images/ of the path becomes /labels/ and the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}{labels}{os.sep}"
    if sa in img:
        base = sb.join(img.rsplit(sa, 1))
    else:  # no images/ folder in the path: labels/ beside the image
        base = os.path.join(os.path.dirname(img), labels, os.path.basename(img))
    return os.path.splitext(base)[0] + ".txt"


def _names_from(obj, where: str) -> list[str]:
    if isinstance(obj, dict):
        keys = sorted(int(k) for k in obj)
        if keys != list(range(len(keys))):
            raise ValueError(f"{where}: names keys must be 0..n-1, got {keys[:10]}")
        return [str(obj[k] if k in obj else obj[str(k)]) for k in keys]
    if isinstance(obj, (list, tuple)):
        return [str(n) for n in obj]
    raise ValueError(f"{where}: names must be a list or a dict, got {type(obj).__name__}")


def read_data_yaml(path: str) -> dict:
    """Parse an Ultralytics dataset YAML: returns {root, names, train, val, test} with resolved paths."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping with train/val/names")
    here = os.path.dirname(os.path.abspath(path))
    root = cfg.get("path")
    if root:
        root = os.path.expanduser(str(root))
        if not os.path.isabs(root):
            cand = os.path.join(here, root)
            root = cand if os.path.exists(cand) or not os.path.exists(root) else os.path.abspath(root)
    else:
        root = here
    if "names" not in cfg:
        if "nc" in cfg:
            names = [f"class{i}" for i in range(int(cfg["nc"]))]
        else:
            raise ValueError(f"{path}: no 'names' (and no 'nc')")
    else:
        names = _names_from(cfg["names"], path)
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise ValueError(f"{path}: nc={cfg['nc']} but {len(names)} names")

    def resolve(v):
        if v is None:
            return None
        vs = v if isinstance(v, (list, tuple)) else [v]
        return [p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p)) for p in map(str, vs)]

    return {"root": root, "names": names, "train": resolve(cfg.get("train")), "val": resolve(cfg.get("val")),
            "test": resolve(cfg.get("test")), "yaml": path}


def _split_images(sources: list[str], where: str, problems: list[Problem]) -> tuple[list[str], list[str]]:
    """Image files of a split given as dirs / txt lists / files; also the label dirs of the dir sources."""
    images, dirs = [], []
    for src in sources:
        if os.path.isdir(src):
            images += _list_images(src)
            dirs.append(src)
        elif src.endswith(".txt") and os.path.isfile(src):
            parent = os.path.dirname(src)
            for i, line in enumerate(_read_text(src, problems) or [], 1):
                s = line.strip()
                if not s:
                    continue
                if s.startswith("./"):
                    p = os.path.join(parent, s[2:])
                elif os.path.isabs(s):
                    p = s
                else:
                    cand = os.path.join(parent, s)
                    p = cand if os.path.exists(cand) else os.path.abspath(s)
                if not is_image(p):
                    problems.append(Problem(src, i, f"not an image path: {s!r}", "skipped", "list_entry"))
                else:
                    images.append(os.path.normpath(p))
        elif os.path.isfile(src) and is_image(src):
            images.append(src)
        else:
            raise ValueError(f"{where}: split source {src} does not exist")
    seen, uniq = set(), []
    for p in images:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq, dirs


def _parse_yolo_lines(lf: str, lines: list[str], problems: list[Problem]):
    """Rows of one YOLO txt: list of (line, cls, values) with values normalized; bad lines reported."""
    out = []
    for i, raw in enumerate(lines, 1):
        parts = raw.split()
        if not parts:
            continue
        n = len(parts)
        if not (n == 5 or (n >= 7 and n % 2 == 1)):
            problems.append(Problem(lf, i, f"{n} fields, expected 5 (cls cx cy w h) or 9 (cls x1 y1 ... x4 y4)",
                                    kind="malformed"))
            continue
        try:
            vals = [_num(t) for t in parts]
        except ValueError:
            bad = next(t for t in parts if not _is_float(t))
            problems.append(Problem(lf, i, f"non-numeric field {bad!r}", kind="malformed"))
            continue
        c = vals[0]
        if not math.isfinite(c) or c != int(c):
            problems.append(Problem(lf, i, f"class id {parts[0]!r} is not an integer", kind="malformed"))
            continue
        out.append((i, int(c), vals[1:]))
    return out


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _load_yolo_split(images: list[str], names: list[str], root: str, split: str, label_dirs: list[str],
                     obb: bool | None, problems: list[Problem], progress: bool, malformed: str) -> Dataset:
    stats = collections.Counter()
    parsed = []  # (img, shape, label_file, rows)
    used_labels = set()
    for img in _progress(images, f"read {split}", progress):
        shape = _image_shape(img, problems)
        lf = img2label_path(img)
        if shape is None:
            used_labels.add(lf)
            continue
        rows, ign_rows = [], []
        if os.path.isfile(lf):
            used_labels.add(lf)
            lines = _read_text(lf, problems)
            if lines is None:
                problems.append(Problem(img, None, "its label file cannot be read", "skipped", "label_file"))
                continue
            stats["label_files"] += 1
            stats["label_lines"] += sum(1 for ln in lines if ln.strip())
            rows = _parse_yolo_lines(lf, lines, problems)
        else:
            stats["missing_label_files"] += 1
        # ignore regions written by `convert_dataset` (not part of the Ultralytics format) sit in ignore/
        igf = img2label_path(img, "ignore")
        if os.path.isfile(igf):
            ign_rows = _parse_yolo_lines(igf, _read_text(igf, problems) or [], problems)
        parsed.append((img, shape, lf, rows, igf, ign_rows))
    parse_bad = collections.defaultdict(list)
    for p in problems:
        if p.kind in MALFORMED_KINDS:
            parse_bad[p.file].append(p)
    counts = collections.Counter(len(v) for *_, rows, _, ign in parsed for _, _, v in rows + ign)
    if obb is None:
        obb = bool(counts) and set(counts) == {8}
    records = []
    for img, shape, lf, rows, igf, ign_rows in parsed:
        h, w = shape
        start = len(problems)
        per_file = []
        for file, rr, ig in ((lf, rows, False), (igf, ign_rows, True)):
            if not rr:
                continue
            r = _Rows(with_polygons=obb)
            for line, c, v in rr:
                if obb:
                    if len(v) != 8:
                        problems.append(Problem(file, line, f"{len(v) + 1} fields in an OBB dataset, expected 9",
                                                kind="malformed"))
                        continue
                    r.add(line, c, poly=np.asarray(v).reshape(4, 2) * (w, h), ignore=ig)
                elif len(v) == 4:
                    cx, cy, bw, bh = v
                    r.add(line, c, box=((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h),
                          ignore=ig)
                else:  # a segment polygon (or a 4-point one in a box dataset): its bounds, as Ultralytics does
                    r.add(line, c, poly=np.asarray(v).reshape(-1, 2) * (w, h), ignore=ig)
            per_file.append(_validate(file, shape, r, len(names), problems, stats))
        bad = parse_bad[lf] + parse_bad[igf] + _malformed(problems, start, (lf, igf))
        if _leave_out(img, bad, problems, malformed):
            continue
        fields = _merge(per_file, obb)
        records.append(Record(path=img, image_id=_stem(img), shape=shape,
                              label_path=lf if os.path.isfile(lf) else None, **fields))
    # orphans: label files in the label dirs of directory splits that no image claims
    for d in label_dirs:
        ld = os.path.dirname(img2label_path(os.path.join(d, "x.jpg")))
        if os.path.isdir(ld):
            found = glob.glob(os.path.join(glob.escape(ld), "**", "*.txt"), recursive=True)
            _orphans(found, used_labels, problems, stats)
    return _finish(records, names, root, "yolo", split, problems, stats, obb=obb)


def _merge(parts: list[dict], obb: bool) -> dict:
    if not parts:
        out = {"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int32), "ignore": np.zeros(0, bool)}
        if obb:
            out.update(polygons=np.zeros((0, 4, 2), np.float32), obb=np.zeros((0, 5), np.float32))
        return out
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_yolo(path: str, split: str = "train", *, names: Sequence[str] | None = None, obb: bool | None = None,
              malformed: str = "skip", progress: bool = False) -> Dataset:
    """Ultralytics dataset: a data YAML, a dir holding one, or a dir with images/[split] and labels/[split].

    obb None: oriented boxes when every label row has 9 fields (`cls x1 y1 ... x4 y4`). Rows with more
    points are segments: their bounds are used. Ignore rows may sit in ignore/ beside labels/ (written by
    `convert_dataset`). malformed='skip' leaves out an image with an unreadable label row, 'drop' only
    the row."""
    _check_policy(malformed)
    problems: list[Problem] = []
    if os.path.isfile(path):
        cfg = read_data_yaml(path)
        sources = cfg.get(split)
        if not sources:
            raise SplitNotFoundError(f"{path}: no {split!r} split (has: "
                                     f"{[k for k in ('train', 'val', 'test') if cfg.get(k)]})")
        images, dirs = _split_images(sources, path, problems)
        root, names = cfg["root"], list(names or cfg["names"])
    else:
        yamls = sorted(glob.glob(os.path.join(glob.escape(path), "*.yaml")) +
                       glob.glob(os.path.join(glob.escape(path), "*.yml")))
        if yamls:
            pick = [y for y in yamls if os.path.basename(y) in ("data.yaml", "dataset.yaml")] or yamls
            return load_yolo(pick[0], split, names=names, obb=obb, malformed=malformed, progress=progress)
        imgdir = os.path.join(path, "images")
        if not os.path.isdir(imgdir):
            raise ValueError(f"{path}: not a YOLO dataset (no data YAML and no images/ folder)")
        sub = os.path.join(imgdir, split)
        if os.path.isdir(sub):
            src = sub
        elif any(os.path.isdir(os.path.join(imgdir, s)) for s in ("train", "val", "test")):
            have = [s for s in os.listdir(imgdir) if os.path.isdir(os.path.join(imgdir, s))]
            raise SplitNotFoundError(f"{path}: no images/{split} folder (found {sorted(have)})")
        else:
            src = imgdir
        images, dirs = _split_images([src], path, problems)
        root = path
        if names is None:
            names = _names_beside(path)
    if names is None:
        names = _names_from_labels(images)
        problems.append(Problem(path, None, f"no class names given: using ids 0..{len(names) - 1} as names",
                                "warning", "names"))
    return _load_yolo_split(images, list(names), root, split, dirs, obb, problems, progress, malformed)


def _names_beside(path: str) -> list[str] | None:
    for fn in ("classes.txt", "obj.names", "names.txt") + tuple(
            os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(path), "*.names"))):
        p = os.path.join(path, fn)
        if os.path.isfile(p):
            return [ln.strip() for ln in open(p, encoding="utf-8") if ln.strip()]
    return None


def _names_from_labels(images: list[str]) -> list[str]:
    top = -1
    for img in images:
        lf = img2label_path(img)
        if os.path.isfile(lf):
            for ln in open(lf, encoding="utf-8", errors="replace"):
                parts = ln.split()
                if parts and _is_float(parts[0]) and math.isfinite(float(parts[0])):
                    top = max(top, int(float(parts[0])))
    return [str(i) for i in range(top + 1)]


# ------------------------------------------------------------------------------------------- VisDrone

def _find_split_dir(path: str, split: str, marker: str) -> str:
    """`path` itself if it holds `marker`, else its one subfolder for `split` that does
    (e.g. VisDrone2019-DET-train/annotations, DOTA train/labelTxt)."""
    if os.path.isdir(os.path.join(path, marker)):
        return path
    subs = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d, marker))]
    hits = [d for d in subs if split.lower() in d.lower()]
    if len(hits) == 1:
        return os.path.join(path, hits[0])
    if not subs:
        raise ValueError(f"{path}: no {marker}/ folder")
    error = ValueError if hits else SplitNotFoundError
    raise error(f"{path}: no single folder for split {split!r} with {marker}/ (found {subs})")


def load_visdrone(path: str, split: str = "train", *, others: str = "drop", malformed: str = "skip",
                  progress: bool = False) -> Dataset:
    """VisDrone-DET: images/*.jpg + annotations/*.txt rows `left,top,w,h,score,category,trunc,occl`.

    category 0 (ignored region) and score 0 become ignore rows (category 0 has no class: IGNORE_CLASS);
    category 11 (others) is dropped and counted (`others='ignore'` keeps it as an ignore row instead).
    Classes 1..10 map to 0..9 (VISDRONE_NAMES). malformed: as in `load_yolo`.
    """
    _check_policy(malformed)
    if others not in ("drop", "ignore"):
        raise ValueError(f"others must be 'drop' or 'ignore', got {others!r}")
    d = _find_split_dir(path, split, "annotations")
    problems: list[Problem] = []
    stats = collections.Counter()
    images = _list_images(os.path.join(d, "images"))
    used = set()
    records = []
    for img in _progress(images, f"read {split}", progress):
        af = os.path.join(d, "annotations", _stem(img) + ".txt")
        shape = _image_shape(img, problems)
        used.add(af)
        if shape is None:
            continue
        start = len(problems)
        rows = _Rows()
        lines = _label_lines(img, af, problems, stats, missing="annotation file", unreadable="annotation file")
        if lines is None:
            continue
        for i, raw in enumerate(lines, 1):
            s = raw.strip()
            if not s:
                continue
            stats["label_lines"] += 1
            parts = [t.strip() for t in s.split(",")]
            while parts and parts[-1] == "":  # trailing commas occur in the official files
                parts.pop()
            if len(parts) != 8:
                problems.append(Problem(af, i, f"{len(parts)} fields, expected 8 "
                                               "(left,top,width,height,score,category,truncation,occlusion)",
                                        kind="malformed"))
                continue
            try:
                v = [_num(t) for t in parts]
            except ValueError:
                bad = next(t for t in parts if not _is_float(t))
                problems.append(Problem(af, i, f"non-numeric field {bad!r}", kind="malformed"))
                continue
            left, top, bw, bh, score, cat = v[:6]
            if not math.isfinite(cat) or cat != int(cat) or not 0 <= cat <= 11:
                problems.append(Problem(af, i, f"category {parts[5]!r} not in 0..11", kind="class_id"))
                continue
            cat = int(cat)
            if cat == 11 and others == "drop":
                stats["dropped_others"] += 1
                problems.append(Problem(af, i, "category 11 (others) dropped", kind="others"))
                continue
            box = (left, top, left + bw, top + bh)
            if cat == 0 or cat == 11:
                rows.add(i, IGNORE_CLASS, box=box, ignore=True)
            else:
                rows.add(i, cat - 1, box=box, ignore=score == 0)
        fields = _validate(af, shape, rows, len(VISDRONE_NAMES), problems, stats)
        if _leave_out(img, _malformed(problems, start, (af,)), problems, malformed):
            continue
        records.append(Record(path=img, image_id=_stem(img), shape=shape,
                              label_path=af if os.path.isfile(af) else None, **fields))
    _orphans(glob.glob(os.path.join(glob.escape(d), "annotations", "*.txt")), used, problems, stats,
             "annotation file")
    return _finish(records, VISDRONE_NAMES, d, "visdrone", split, problems, stats)


# ------------------------------------------------------------------------------------------------ VOC

def _parse_xml(path: str) -> ET.Element:
    """Parse XML keeping each element's source line in its attribute '__line__' (for problem reports)."""
    builder = ET.TreeBuilder()
    parser = xml.parsers.expat.ParserCreate()

    def start(tag, attrs):
        builder.start(tag, {**attrs, "__line__": str(parser.CurrentLineNumber)})

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    with open(path, "rb") as f:
        parser.ParseFile(f)
    return builder.close()


def load_voc(path: str, split: str = "train", *, names: Sequence[str] | None = None, malformed: str = "skip",
             progress: bool = False) -> Dataset:
    """PASCAL VOC: Annotations/*.xml (+ JPEGImages/, optional ImageSets/Main/<split>.txt, voc.names).

    difficult objects become ignore rows. Coordinates are 1-based in VOC: 1 is subtracted (as Ultralytics'
    VOC converter does). Names: `names`, else voc.names beside Annotations/, else the 20 VOC classes.
    Objects of other classes are dropped (reported). malformed: as in `load_yolo`.
    """
    _check_policy(malformed)
    d = _find_split_dir(path, split, "Annotations")
    problems: list[Problem] = []
    stats = collections.Counter()
    if names is None:
        nf = [p for p in glob.glob(os.path.join(glob.escape(d), "*.names"))]
        names = [ln.strip() for ln in open(nf[0], encoding="utf-8") if ln.strip()] if nf else VOC_NAMES
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    ids_file = os.path.join(d, "ImageSets", "Main", f"{split}.txt")
    if os.path.isfile(ids_file):
        ids = [ln.split()[0] for ln in open(ids_file, encoding="utf-8") if ln.strip()]
        xmls = [os.path.join(d, "Annotations", i + ".xml") for i in ids]
    else:
        xmls = sorted(glob.glob(os.path.join(glob.escape(d), "Annotations", "*.xml")))
    records = []
    for xf in _progress(xmls, f"read {split}", progress):
        try:
            root = _parse_xml(xf)
        except FileNotFoundError:
            problems.append(Problem(xf, None, "annotation file not found", "skipped", "label_file"))
            continue
        except xml.parsers.expat.ExpatError as e:
            problems.append(Problem(xf, e.lineno, f"invalid XML ({xml.parsers.expat.ErrorString(e.code)})",
                                    "skipped", "label_file"))
            continue
        stats["label_files"] += 1
        img = _voc_image(d, xf, root)
        if img is None:
            problems.append(Problem(xf, None, "no image for this annotation in JPEGImages/", "skipped", "image"))
            continue
        shape = _image_shape(img, problems)
        if shape is None:
            continue
        start = len(problems)
        size = root.find("size")
        if size is not None:
            try:
                sw, sh = int(float(size.findtext("width"))), int(float(size.findtext("height")))
                if (sw, sh) != (shape[1], shape[0]) and sw > 0 and sh > 0:
                    problems.append(Problem(xf, int(size.get("__line__")), f"<size> says {sw}x{sh}, image is "
                                            f"{shape[1]}x{shape[0]}: the image size is used", "warning",
                                            "size_mismatch"))
            except (TypeError, ValueError):
                pass
        rows = _Rows()
        for obj in root.iter("object"):
            line = int(obj.get("__line__"))
            stats["label_lines"] += 1
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                problems.append(Problem(xf, line, f"unknown class {name!r}", kind="unknown_class"))
                continue
            bb = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                problems.append(Problem(xf, line, "object without a numeric <bndbox> xmin/ymin/xmax/ymax",
                                        kind="malformed"))
                continue
            diff = (obj.findtext("difficult") or "0").strip()
            rows.add(line, index[name], box=(x1, y1, x2, y2), ignore=diff not in ("0", ""))
        fields = _validate(xf, shape, rows, len(names), problems, stats)
        if _leave_out(img, _malformed(problems, start, (xf,)), problems, malformed):
            continue
        records.append(Record(path=img, image_id=_stem(img), shape=shape, label_path=xf, **fields))
    return _finish(records, names, d, "voc", split, problems, stats)


def _voc_image(d: str, xf: str, root: ET.Element) -> str | None:
    folder = os.path.join(d, "JPEGImages")
    for cand in [os.path.join(folder, _stem(xf) + s) for s in (".jpg", ".jpeg", ".png", ".JPG")] + \
                [os.path.join(folder, (root.findtext("filename") or "").strip())]:
        if os.path.isfile(cand):
            return cand
    return None


# ----------------------------------------------------------------------------------------------- COCO

def load_coco(path: str, split: str = "train", *, images_dir: str | None = None, malformed: str = "skip",
              progress: bool = False) -> Dataset:
    """COCO instances JSON. Category ids are remapped to 0..nc-1 in id order (names from `categories`);
    iscrowd (and an `ignore` flag) make ignore rows. Images are looked up in images_dir, else beside the
    JSON, in images/, or in ../images/<name> and ../<name> where <name> comes from instances_<name>.json.
    malformed: as in `load_yolo` (an annotation without a valid bbox or category)."""
    _check_policy(malformed)
    if os.path.isdir(path):
        cands = sorted(glob.glob(os.path.join(glob.escape(path), "annotations", "*.json")) +
                       glob.glob(os.path.join(glob.escape(path), "*.json")))
        hits = [c for c in cands if split in os.path.basename(c)] or cands
        if len(hits) != 1:
            raise ValueError(f"{path}: cannot pick a COCO JSON for split {split!r} from {cands}")
        path = hits[0]
    problems: list[Problem] = []
    stats = collections.Counter()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: not a COCO instances file (no {key!r})")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c["name"]) for c in cats]
    here = os.path.dirname(os.path.abspath(path))
    tag = _stem(path).split("_", 1)[-1]
    search = [images_dir] if images_dir else [
        here, os.path.join(here, "images"), os.path.join(here, "..", "images", tag), os.path.join(here, "..", tag),
        os.path.join(here, "..", "images"), os.path.join(here, tag)]
    by_image = collections.defaultdict(list)
    for a in data["annotations"]:
        by_image[a.get("image_id")].append(a)
    image_ids = {im.get("id") for im in data["images"]}
    for iid in sorted(set(by_image) - image_ids, key=str):
        n = len(by_image[iid])
        stats["orphan_label_lines"] += n
        problems.append(Problem(path, None, f"{n} annotations refer to image_id {iid} which is not in 'images'",
                                kind="orphan"))
    records = []
    for im in _progress(data["images"], f"read {split}", progress):
        fn = str(im.get("file_name", ""))
        img = next((os.path.normpath(os.path.join(s, fn)) for s in search if s and os.path.isfile(os.path.join(s, fn))),
                   None)
        if img is None:
            problems.append(Problem(path, None, f"image {fn!r} (id {im.get('id')}) not found in {search}", "skipped",
                                    "image"))
            continue
        shape = _image_shape(img, problems)
        if shape is None:
            continue
        if (im.get("height"), im.get("width")) not in ((shape[0], shape[1]), (None, None)):
            problems.append(Problem(path, None, f"image id {im.get('id')}: JSON says "
                                    f"{im.get('width')}x{im.get('height')}, "
                                    f"file is {shape[1]}x{shape[0]}: the file size is used", "warning",
                                    "size_mismatch"))
        start = len(problems)
        rows = _Rows()
        anns = by_image.get(im.get("id"), [])
        stats["label_lines"] += len(anns)
        for a in anns:
            aid = a.get("id")
            if a.get("category_id") not in cat_index:
                problems.append(Problem(path, None, f"annotation id {aid}: unknown category_id {a.get('category_id')}",
                                        kind="class_id"))
                continue
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(path, None, f"annotation id {aid}: bbox is not 4 numbers", kind="malformed"))
                continue
            rows.add(aid if isinstance(aid, int) else -1, cat_index[a["category_id"]], box=(x, y, x + bw, y + bh),
                     ignore=bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)))
        if anns:
            stats["label_files"] += 1
        fields = _validate(path, shape, rows, len(names), problems, stats, row_name="annotation id")
        if _leave_out(img, _malformed(problems, start, (path,)), problems, malformed):
            continue
        records.append(Record(path=img, image_id=_stem(img), shape=shape, label_path=path, **fields))
    return _finish(records, names, path, "coco", split, problems, stats)


# ----------------------------------------------------------------------------------------------- DOTA

def load_dota(path: str, split: str = "train", *, names: Sequence[str] | None = None, malformed: str = "skip",
              progress: bool = False) -> Dataset:
    """DOTA: images/*.png + labelTxt/*.txt (`imagesource:`/`gsd:` headers, then
    `x1 y1 x2 y2 x3 y3 x4 y4 class difficult`, CRLF or LF, int or float). difficult=1 -> ignore row.
    Records carry polygons and obb; boxes are the polygons' bounds clipped to the image. Objects of classes
    not in `names` (default the 15 DOTA-v1.0 classes) are dropped (reported). malformed: as in `load_yolo`."""
    _check_policy(malformed)
    d = _find_split_dir(path, split, "labelTxt")
    names = list(names or DOTA_NAMES)
    index = {n: i for i, n in enumerate(names)}
    problems: list[Problem] = []
    stats = collections.Counter()
    images = _list_images(os.path.join(d, "images"))
    used = set()
    records = []
    for img in _progress(images, f"read {split}", progress):
        lf = os.path.join(d, "labelTxt", _stem(img) + ".txt")
        used.add(lf)
        shape = _image_shape(img, problems)
        if shape is None:
            continue
        start = len(problems)
        rows = _Rows(with_polygons=True)
        lines = _label_lines(img, lf, problems, stats, missing="labelTxt file", unreadable="label file")
        if lines is None:
            continue
        for i, raw in enumerate(lines, 1):
            parts = raw.split()
            if not parts or parts[0].startswith(("imagesource:", "gsd:")):
                continue
            stats["label_lines"] += 1
            if len(parts) not in (9, 10):
                problems.append(Problem(lf, i, f"{len(parts)} fields, expected 10 "
                                               "(x1 y1 x2 y2 x3 y3 x4 y4 class difficult)", kind="malformed"))
                continue
            try:
                pts = [_num(t) for t in parts[:8]]
            except ValueError:
                bad = next(t for t in parts[:8] if not _is_float(t))
                problems.append(Problem(lf, i, f"non-numeric coordinate {bad!r}", kind="malformed"))
                continue
            if parts[8] not in index:
                problems.append(Problem(lf, i, f"unknown class {parts[8]!r}"
                                        + (" (a DOTA-v1.5/v2 class: pass names=DOTA_V2_NAMES)"
                                           if parts[8] in DOTA_V2_NAMES else ""), kind="unknown_class"))
                continue
            difficult = len(parts) == 10 and parts[9] not in ("0",)
            rows.add(i, index[parts[8]], poly=pts, ignore=difficult)
        fields = _validate(lf, shape, rows, len(names), problems, stats)
        if _leave_out(img, _malformed(problems, start, (lf,)), problems, malformed):
            continue
        records.append(Record(path=img, image_id=_stem(img), shape=shape,
                              label_path=lf if os.path.isfile(lf) else None, **fields))
    _orphans(glob.glob(os.path.join(glob.escape(d), "labelTxt", "*.txt")), used, problems, stats)
    return _finish(records, names, d, "dota", split, problems, stats, obb=True)


# ------------------------------------------------------------------------------------------ detection

def detect_format(path: str) -> str:
    """Guess the annotation format of a dataset path (see `load_dataset`)."""
    p = os.fspath(path)
    if os.path.isfile(p):
        ext = os.path.splitext(p)[1].lower()
        if ext in (".yaml", ".yml"):
            return "yolo"
        if ext == ".json":
            return "coco"
        raise ValueError(f"{p}: cannot tell the dataset format of a {ext or 'suffix-less'} file "
                         "(expected a data .yaml or a COCO .json)")
    if not os.path.isdir(p):
        raise ValueError(f"{p}: no such file or directory")

    def has(*parts):
        return os.path.isdir(os.path.join(p, *parts))

    subdirs = [s for s in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, s))]
    for marker, fmt in (("labelTxt", "dota"), ("Annotations", "voc")):
        if has(marker) or any(has(s, marker) for s in subdirs):
            return fmt
    if glob.glob(os.path.join(glob.escape(p), "*.yaml")) or glob.glob(os.path.join(glob.escape(p), "*.yml")):
        return "yolo"
    if has("annotations"):
        ann = os.path.join(p, "annotations")
        if glob.glob(os.path.join(glob.escape(ann), "*.json")):
            return "coco"
        if glob.glob(os.path.join(glob.escape(ann), "*.txt")):
            return "visdrone"
    if any(has(s, "annotations") and glob.glob(os.path.join(glob.escape(os.path.join(p, s, "annotations")), "*.txt"))
           for s in subdirs):
        return "visdrone"
    if glob.glob(os.path.join(glob.escape(p), "*.json")):
        return "coco"
    if has("images") and has("labels"):
        return "yolo"
    raise ValueError(f"{p}: cannot tell the dataset format: expected a data .yaml, a COCO .json, or a folder "
                     "with labelTxt/ (DOTA), Annotations/ (VOC), annotations/*.txt (VisDrone), "
                     "annotations/*.json (COCO) or images/+labels/ (YOLO)")


def load_dataset(path: str | os.PathLike, split: str = "train", format: str | None = None, *,
                 progress: bool = False, **kwargs) -> Dataset:
    """Read a dataset in any supported format (auto-detected when format is None).

    path: a data .yaml / dir of an Ultralytics dataset, a VisDrone dir (images/, annotations/), a VOC dir
    (Annotations/, JPEGImages/), a COCO .json (or a dir with annotations/*.json), a DOTA dir (images/,
    labelTxt/). Formats without a split definition (VisDrone, DOTA, VOC without ImageSets) read the folder
    for `split` if the path holds one per split, else the whole folder. kwargs go to the reader
    (names, obb, others, images_dir, malformed). An image with an unreadable label row (wrong field count,
    non-numeric, nan/inf, class id out of range) is left out by default (malformed='skip', as Ultralytics
    does: its objects are not all known); malformed='drop' keeps it without that row. Raises ValueError
    naming the path when nothing usable is found.
    """
    path = os.fspath(path)
    fmt = (format or detect_format(path)).lower()
    readers = {"yolo": load_yolo, "visdrone": load_visdrone, "voc": load_voc, "coco": load_coco, "dota": load_dota}
    if fmt not in readers:
        raise ValueError(f"unknown dataset format {fmt!r}; one of {FORMATS}")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or directory")
    return readers[fmt](path, split, progress=progress, **kwargs)
