"""Check a dataset: read it with every validation, decode every image fully, report counts and problems."""
from __future__ import annotations

import collections
import concurrent.futures as cf
import os

from tqdm import tqdm

from yolojax.data.imageio import ImageError, verify_decode
from yolojax.data.readers import load_dataset
from yolojax.data.records import Dataset, Problem

_SUM_KEYS = ("images", "labeled_images", "background_images", "skipped", "boxes", "ignored_boxes",
             "dropped_boxes", "clipped_boxes", "warnings", "label_files", "label_lines", "dropped_others",
             "duplicate_boxes", "orphan_label_files", "orphan_label_lines", "missing_label_files")


def decode_check(ds: Dataset, workers: int = 2, progress: bool = False) -> Dataset:
    """Decode every image fully (PIL, strict about truncation, and OpenCV). Returns a Dataset without the
    images that fail, each reported as a skipped Problem."""
    bad: dict[str, str] = {}

    def one(path):
        try:
            verify_decode(path)
        except ImageError as e:
            return path, str(e).split(": ", 1)[-1]
        return path, None

    paths = [r.path for r in ds.records]
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 and PIL decoders release the GIL
        for path, err in tqdm(pool.map(one, paths), total=len(paths), desc="decode", unit="img",
                              disable=not progress, leave=False):
            if err:
                bad[path] = err
    if not bad:
        return ds
    problems = list(ds.problems) + [Problem(p, None, e, "skipped", "image") for p, e in bad.items()]
    records = [r for r in ds.records if r.path not in bad]
    if not records:
        raise ValueError(f"{ds.root}: no image of split {ds.split!r} decodes ({len(bad)} failed)")
    return Dataset(records=records, names=ds.names, root=ds.root, format=ds.format, split=ds.split,
                   problems=problems, stats=ds.stats, obb=ds.obb)


def check_dataset(path: str | os.PathLike | Dataset, split: str | None = None, format: str | None = None, *,
                  decode: bool = True, workers: int = 2, progress: bool = False, **reader_kwargs) -> dict:
    """Validate a dataset and report it.

    path: anything `load_dataset` reads, or a loaded Dataset. split None checks 'train' and 'val' (a split
    the source does not define is left out; one that resolves to the same images as another is checked
    once). decode=True decodes every image fully. Returns totals over the checked splits:
    images, labeled_images, background_images, skipped (images left out), boxes (targets), ignored_boxes,
    boxes_per_class, dropped_boxes, clipped_boxes, warnings, label_files, label_lines, dropped_others,
    duplicate_boxes, orphan_label_files, orphan_label_lines, missing_label_files; plus format, path, names,
    obb, splits (the same counts per split) and problems (list of {file, line, reason, action, kind}).
    Raises ValueError naming the path when no split has a usable image.
    """
    if isinstance(path, Dataset):
        datasets = [path]
        where = path.root
    else:
        where = os.fspath(path)
        datasets = []
        errors = []
        for s in ([split] if split else ["train", "val"]):
            try:
                ds = load_dataset(where, s, format, progress=progress, **reader_kwargs)
            except ValueError as e:
                if split or not _undefined_split(e):
                    raise
                errors.append(e)
                continue
            if any([r.path for r in d.records] == [r.path for r in ds.records] for d in datasets):
                continue
            datasets.append(ds)
        if not datasets:
            raise errors[0] if errors else ValueError(f"{where}: no split to check")
    if decode:
        datasets = [decode_check(d, workers, progress) for d in datasets]
    splits = {d.split: d.summary() for d in datasets}
    total = {k: sum(s[k] for s in splits.values()) for k in _SUM_KEYS}
    per_class = collections.Counter()
    for s in splits.values():
        per_class.update(s["boxes_per_class"])
    problems = [p.as_dict() for d in datasets for p in d.problems]
    first = datasets[0]
    return {"path": where, "format": first.format, "obb": first.obb, "names": list(first.names), **total,
            "boxes_per_class": {n: per_class[n] for n in first.names}, "splits": splits, "problems": problems}


def _undefined_split(e: ValueError) -> bool:
    msg = str(e)
    return any(s in msg for s in ("no 'val' split", "no 'train' split", "no single folder", "no images/"))


def format_report(rep: dict, max_per_reason: int = 5) -> str:
    """Human-readable report: counts, boxes per class, then problems grouped by kind."""
    lines = [f"{rep['path']}  ({rep['format']}{', oriented boxes' if rep['obb'] else ''}, {len(rep['names'])} classes)"]
    for name, s in rep["splits"].items():
        lines.append(f"  {name:6s} images {s['images']}  labeled {s['labeled_images']}  background "
                     f"{s['background_images']}  skipped {s['skipped']}  boxes {s['boxes']}  ignored "
                     f"{s['ignored_boxes']}  dropped {s['dropped_boxes']}  clipped {s['clipped_boxes']}")
    extra = [f"{k} {rep[k]}" for k in ("label_lines", "dropped_others", "duplicate_boxes", "orphan_label_files",
                                       "orphan_label_lines", "missing_label_files") if rep[k]]
    if extra:
        lines.append("  " + "  ".join(extra))
    width = max((len(n) for n in rep["names"]), default=4)
    lines.append("  boxes per class:")
    lines += [f"    {n:{width}s} {c}" for n, c in rep["boxes_per_class"].items()]
    if not rep["problems"]:
        lines.append("  no problems found")
        return "\n".join(lines)
    groups = collections.defaultdict(list)
    for p in rep["problems"]:
        groups[(p["action"], p.get("kind") or _kind(p["reason"]))].append(p)
    lines.append(f"  {len(rep['problems'])} problems:")
    for (action, kind), ps in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"    [{action}] {kind}: {len(ps)}")
        for p in ps[:max_per_reason]:
            where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
            lines.append(f"      {where}: {p['reason']}")
        if len(ps) > max_per_reason:
            lines.append(f"      ... {len(ps) - max_per_reason} more")
    return "\n".join(lines)


def _kind(reason: str) -> str:
    """A short grouping key for a problem reason (its words up to the first number or quote)."""
    words = []
    for w in reason.split():
        if any(ch.isdigit() for ch in w) or w[:1] in "'\"[(":
            break
        words.append(w)
    return " ".join(words) or reason[:30]
