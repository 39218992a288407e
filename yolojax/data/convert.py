"""Write any readable dataset as an Ultralytics YOLO dataset (data.yaml + images/ + labels/)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import yaml
from tqdm import tqdm

from yolojax.data import geometry as geo
from yolojax.data.readers import load_dataset
from yolojax.data.records import Dataset, Record


def _label_lines(rec: Record, rows: np.ndarray, obb: bool) -> list[str]:
    h, w = rec.shape
    if obb:
        p = (rec.polygons[rows] / np.array([w, h], np.float64)).reshape(-1, 8)
        return [f"{c} " + " ".join(f"{v:.6f}" for v in row) for c, row in zip(rec.classes[rows], p)]
    b = geo.xyxy_to_xywh(rec.boxes[rows].astype(np.float64)) / np.array([w, h, w, h])
    return [f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for c, (x, y, bw, bh) in zip(rec.classes[rows], b)]


def _write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))


def _place_image(src: str, dst: str, copy: bool) -> None:
    if os.path.lexists(dst):
        os.remove(dst)
    if not copy:
        try:
            os.symlink(os.path.abspath(src), dst)
            return
        except OSError:  # filesystems without symlinks
            pass
    shutil.copy2(src, dst)


def write_split(ds: Dataset, out: str, split: str, copy: bool = False, progress: bool = False) -> int:
    """Write one split; returns the number of images written. Ignore rows (ignore regions, difficult,
    crowd) go to ignore/<split>/<stem>.txt in the same format, which yolojax reads back and other tools
    skip; background images get an empty label file."""
    dirs = {k: os.path.join(out, k, split) for k in ("images", "labels", "ignore")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    taken: dict[str, int] = {}
    for rec in tqdm(ds.records, desc=f"convert {split}", unit="img", disable=not progress, leave=False):
        base = os.path.basename(rec.path)
        stem, ext = os.path.splitext(base)
        k = taken.get(stem, 0)
        taken[stem] = k + 1
        if k:  # same file name from different folders
            stem = f"{stem}_{k}"
        _place_image(rec.path, os.path.join(dirs["images"], stem + ext), copy)
        _write(os.path.join(dirs["labels"], stem + ".txt"), _label_lines(rec, np.flatnonzero(~rec.ignore), ds.obb))
        ig = np.flatnonzero(rec.ignore)
        if len(ig):
            _write(os.path.join(dirs["ignore"], stem + ".txt"), _label_lines(rec, ig, ds.obb))
    if not os.listdir(dirs["ignore"]):
        os.rmdir(dirs["ignore"])
        if not os.listdir(os.path.dirname(dirs["ignore"])):
            os.rmdir(os.path.dirname(dirs["ignore"]))
    return len(ds.records)


def convert_dataset(src: str | os.PathLike, fmt: str | None, out: str | os.PathLike, *, copy: bool = False,
                    splits: tuple[str, ...] = ("train", "val"), progress: bool = False, **reader_kwargs) -> str:
    """Convert a VisDrone / VOC / COCO / DOTA (or YOLO) dataset to an Ultralytics YOLO dataset at `out`.

    Each of `splits` that the source defines is written to images/<split> (symlinks, or copies with copy=True)
    and labels/<split> (`cls cx cy w h` normalized; for DOTA the OBB variant `cls x1 y1 ... x4 y4`). A source
    with one split only (a single VisDrone/DOTA folder, VOC without ImageSets) is written once, under the name
    of its folder's split if that names one (else 'train'), and data.yaml points train and val at it.
    Returns the path of out/data.yaml. Problems found while reading are skipped rows, as in `load_dataset`.
    """
    src, out = os.fspath(src), os.fspath(out)
    loaded: dict[str, Dataset] = {}
    for split in splits:
        try:
            ds = load_dataset(src, split, fmt, progress=progress, **reader_kwargs)
        except ValueError as e:
            if "split" in str(e) or "no single folder" in str(e):
                continue  # this split is not defined by the source
            raise
        same = next((k for k, d in loaded.items() if [r.path for r in d.records] == [r.path for r in ds.records]), None)
        if same is None:
            loaded[split] = ds
    if not loaded:
        raise ValueError(f"{src}: none of the splits {splits} could be read")
    if len(loaded) == 1:
        (ds,) = loaded.values()
        name = os.path.basename(os.path.normpath(ds.root)).lower()
        only = "val" if "val" in name else "test" if "test" in name else "train"
        loaded = {only: ds}
    os.makedirs(out, exist_ok=True)
    for split, ds in loaded.items():
        write_split(ds, out, split, copy=copy, progress=progress)
    first = next(iter(loaded.values()))
    cfg = {"train": f"images/{'train' if 'train' in loaded else next(iter(loaded))}",
           "val": f"images/{'val' if 'val' in loaded else next(iter(loaded))}"}
    if "test" in loaded and len(loaded) > 1:
        cfg["test"] = "images/test"
    cfg.update(nc=len(first.names), names=dict(enumerate(first.names)))
    path = os.path.join(out, "data.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# converted by yolojax from {first.format} dataset {src}"
                f"{' (oriented boxes: cls x1 y1 ... x4 y4)' if first.obb else ''}; ignore regions in ignore/\n")
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    return path
