"""Tiling of large images (DOTA): overlapping patches for training, per-tile inference merged back.

Windows follow Ultralytics' `split_dota` (and DOTA_devkit's ImgSplit): square tiles of `tile` px stepping by
`tile - overlap`, the last one in each row/column moved back to end at the image border; images smaller than
a tile give one window (the patch is then the whole image). Tile files are named as Ultralytics names
them, `{stem}__{tile}__{x0}___{y0}`, so the origin travels with the file.

Objects cut by a tile edge (as DOTA_devkit): an object whose visible fraction (area inside the tile over its
area) is at least `min_visible` stays a target, as the minimum-area rectangle of its visible part; a smaller
visible part becomes an ignore region (written to ignore/, which yolojax reads back: no target there, and no
negatives either), instead of background that would teach the model to miss cut objects.

Inference (`predict_tiled`): every tile is letterboxed to the model's size and run in batches; detections go
back to full-image coordinates and a class-aware rotated NMS across tiles (by polygon intersection over the
smaller box, as SAHI merges slices) removes the copies of objects seen by several tiles.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Callable, Iterable, Mapping, Sequence

import cv2
import jax
import numpy as np
import yaml
from tqdm import tqdm

from yolojax.data import geometry as geo
from yolojax.data.convert import _label_lines, _write
from yolojax.data.imageio import decode
from yolojax.data.readers import load_dataset
from yolojax.data.records import Dataset, Record
from yolojax.eval.obb import nms_rotated_numpy, scale_rboxes
from yolojax.eval.rotated import intersection_area, polygon_area
from yolojax.viz import letterbox_image

TILE = 1024
OVERLAP = 200
MIN_VISIBLE = 0.7  # DOTA_devkit's and Ultralytics' iof threshold
_NAME = re.compile(r"^(?P<stem>.+)__(?P<size>\d+)__(?P<x>\d+)___(?P<y>\d+)$")


def tile_windows(shape: tuple[int, int], tile: int = TILE, overlap: int = OVERLAP,
                 min_image_fraction: float = 0.6) -> np.ndarray:
    """Windows over an image of shape (h, w): int64 [T, 4] (x0, y0, x1, y1), x1 - x0 = y1 - y0 = tile (they
    may reach past the border of a small image). Windows less than `min_image_fraction` covered by the image
    are dropped unless none is better (Ultralytics `get_windows`)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    h, w = shape
    step = tile - overlap

    def starts(n: int) -> list[int]:
        k = 1 if n <= tile else math.ceil((n - tile) / step + 1)
        s = [step * i for i in range(k)]
        if len(s) > 1 and s[-1] + tile > n:
            s[-1] = n - tile
        return s

    start = np.array([(x, y) for y in starts(h) for x in starts(w)], np.int64)
    win = np.concatenate([start, start + tile], 1)
    inside = (np.minimum(win[:, 2], w) - win[:, 0]) * (np.minimum(win[:, 3], h) - win[:, 1])
    rate = inside / float(tile * tile)
    if not (rate > min_image_fraction).any():
        rate[np.abs(rate - rate.max()) < 0.01] = 1.0
    return win[rate > min_image_fraction]


def tile_name(stem: str, window) -> str:
    x0, y0, x1, _ = (int(v) for v in window)
    return f"{stem}__{x1 - x0}__{x0}___{y0}"


def parse_tile_name(name: str) -> tuple[str, int, int] | None:
    """`P0003__1024__0___824` -> ('P0003', 0, 824); None for a name that is not a tile's."""
    m = _NAME.match(os.path.splitext(os.path.basename(name))[0])
    return None if m is None else (m["stem"], int(m["x"]), int(m["y"]))


def crop_targets(polygons: np.ndarray, classes: np.ndarray, ignore: np.ndarray, window, shape: tuple[int, int],
                 *, min_visible: float = MIN_VISIBLE) -> dict:
    """The objects of one window, in its pixel frame.

    polygons [N,4,2] image pixels, classes [N], ignore [N]; window (x0, y0, x1, y1); shape (h, w) of the image.
    Returns dict polygons [K,4,2] (tile pixels), classes [K], ignore [K] (kept ignore rows, plus objects with
    less than min_visible of their area inside), visible [K] (that fraction), index [K] (rows of the input).
    Objects wholly inside keep their polygon; cut ones become the minimum-area rectangle of the visible part.
    """
    x0, y0 = int(window[0]), int(window[1])
    x1, y1 = min(int(window[2]), shape[1]), min(int(window[3]), shape[0])
    tw, th = x1 - x0, y1 - y0
    poly = np.asarray(polygons, np.float64).reshape(-1, 4, 2) - (x0, y0)
    rect = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float64)
    area = polygon_area(poly)
    inter = intersection_area(poly, rect[None], capacity=16)
    centre_in = ((poly.mean(1) >= 0) & (poly.mean(1) <= (tw, th))).all(1)
    # a zero-area (collinear) annotation belongs to the tile holding its centre
    visible = np.where(area > 1e-9, inter / np.maximum(area, 1e-9), centre_in.astype(np.float64))
    keep = np.flatnonzero(visible > 1e-6)
    poly, visible = poly[keep], np.minimum(visible[keep], 1.0)
    cut = visible < 1.0 - 1e-6
    if cut.any():
        pts, valid = geo.clip_polygons(poly[cut], tw, th)
        rect_cut = geo.obb_to_polygons(geo.min_area_rect(pts, valid))
        # the rectangle of a visible part may poke past the tile edge; clip as the reader would
        rect_cut[..., 0] = np.clip(rect_cut[..., 0], 0, tw)
        rect_cut[..., 1] = np.clip(rect_cut[..., 1], 0, th)
        poly[cut] = rect_cut
    return {"polygons": poly.astype(np.float32), "classes": np.asarray(classes)[keep],
            "ignore": np.asarray(ignore, bool)[keep] | (visible < min_visible), "visible": visible,
            "index": keep}


def tile_record(rec: Record, tile: int = TILE, overlap: int = OVERLAP, *, min_visible: float = MIN_VISIBLE,
                ext: str = ".jpg") -> list[tuple[np.ndarray, Record]]:
    """Windows of one oriented record and a Record per window (shape, polygons, obb, boxes in tile pixels;
    path = the tile file name it should get, with `ext`). Returns [(window (x0,y0,x1,y1), Record), ...]."""
    if not rec.is_obb:
        raise ValueError(f"{rec.path}: tiling needs oriented boxes (polygons); this record has none")
    out = []
    for win in tile_windows(rec.shape, tile, overlap):
        t = crop_targets(rec.polygons, rec.classes, rec.ignore, win, rec.shape, min_visible=min_visible)
        th, tw = min(int(win[3]), rec.shape[0]) - int(win[1]), min(int(win[2]), rec.shape[1]) - int(win[0])
        name = tile_name(rec.image_id, win)
        out.append((win, Record(path=name + ext, image_id=name, shape=(th, tw),
                                boxes=geo.polygons_to_xyxy(t["polygons"]), classes=t["classes"], ignore=t["ignore"],
                                polygons=t["polygons"], obb=geo.polygons_to_obb(t["polygons"]))))
    return out


def tile_dataset(datasets: Dataset | Mapping[str, Dataset], out: str | os.PathLike, *, tile: int = TILE,
                 overlap: int = OVERLAP, min_visible: float = MIN_VISIBLE, ext: str = ".jpg",
                 background: bool = True, progress: bool = True) -> str:
    """Write oriented datasets (e.g. DOTA train/val) as a tiled Ultralytics OBB dataset under `out`.

    datasets: one Dataset (written under its split name) or {split: Dataset}. Writes images/<split>/<tile>.<ext>,
    labels/<split>/<tile>.txt (`cls x1 y1 ... x4 y4` normalized to the tile) and ignore/<split>/<tile>.txt
    (difficult objects and objects cut below min_visible), and out/data.yaml; returns its path. background:
    also write tiles with no object (empty label file), as Ultralytics does.
    """
    if isinstance(datasets, Dataset):
        datasets = {datasets.split: datasets}
    if not datasets:
        raise ValueError("tile_dataset: no dataset given")
    out = os.fspath(out)
    first = next(iter(datasets.values()))
    for split, ds in datasets.items():
        if not ds.obb:
            raise ValueError(f"{ds.root} [{split}]: not an oriented dataset; tiling writes OBB labels")
        if list(ds.names) != list(first.names):
            raise ValueError(f"{ds.root} [{split}]: class names differ from the {first.split!r} split's")
        dirs = {k: os.path.join(out, k, split) for k in ("images", "labels", "ignore")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        n = 0
        for rec in tqdm(ds.records, desc=f"tile {split}", unit="img", disable=not progress, leave=False):
            img = decode(rec.path)
            for win, t in tile_record(rec, tile, overlap, min_visible=min_visible, ext=ext):
                if not len(t) and not background:
                    continue
                x0, y0 = int(win[0]), int(win[1])
                cv2.imwrite(os.path.join(dirs["images"], t.path), img[y0:y0 + t.shape[0], x0:x0 + t.shape[1]])
                _write(os.path.join(dirs["labels"], t.image_id + ".txt"),
                       _label_lines(t, np.flatnonzero(~t.ignore), True))
                if t.ignore.any():
                    _write(os.path.join(dirs["ignore"], t.image_id + ".txt"),
                           _label_lines(t, np.flatnonzero(t.ignore), True))
                n += 1
        if not n:
            raise ValueError(f"{ds.root} [{split}]: no tile written")
    splits = list(datasets)
    cfg = {"train": f"images/{'train' if 'train' in splits else splits[0]}",
           "val": f"images/{'val' if 'val' in splits else splits[0]}",
           "nc": len(first.names), "names": dict(enumerate(first.names))}
    path = os.path.join(out, "data.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# tiled by yolojax from {first.root}: {tile} px tiles, overlap {overlap}, objects kept when >= "
                f"{min_visible:.0%} visible (else ignore regions in ignore/); oriented boxes\n")
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    return path


# -- inference ----------------------------------------------------------------------------------------------

def merge_tiles(parts: Iterable[tuple], *, iou: float = 0.5, iou_type: str = "ios", agnostic: bool = False,
                max_det: int | None = None, return_index: bool = False) -> tuple[np.ndarray, ...]:
    """Detections of several tiles -> one image's.

    parts: (origin (x0, y0), rboxes [N,5] in tile pixels, scores [N], classes [N]) per tile, each tile's
    detections already NMS'd. Shifts every box by its origin, then a class-aware greedy NMS across tiles (a
    box is only suppressed by a higher-scored box of the same class from another tile) at `iou`, with
    iou_type "ios" (polygon intersection over the smaller box: a copy of an object cut by a tile edge lies
    mostly inside the whole one, however little their IoU), "polygon" or "probiou". Returns (rboxes [K,5],
    scores [K], classes [K]) by score, plus with return_index the kept rows' indices into the concatenated parts.
    """

    boxes, scores, classes, groups = [np.zeros((0, 5))], [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, int)]
    for g, ((x0, y0), b, s, c) in enumerate(parts):
        b = np.array(b, np.float64, copy=True).reshape(-1, 5)
        b[:, 0] += x0
        b[:, 1] += y0
        boxes.append(b)
        scores.append(np.asarray(s, np.float64).reshape(-1))
        classes.append(np.asarray(c, np.int64).reshape(-1))
        groups.append(np.full(len(b), g))
    boxes, scores, classes, groups = (np.concatenate(x) for x in (boxes, scores, classes, groups))
    keep = nms_rotated_numpy(boxes, scores, iou, None if agnostic else classes, iou_type, groups)[:max_det]
    return (boxes[keep], scores[keep], classes[keep]) + ((keep,) if return_index else ())


def predict_tiled(predict: Callable, variables, image_bgr: np.ndarray, *, imgsz: int, tile: int = TILE,
                  overlap: int = OVERLAP, batch: int = 4, merge_iou: float = 0.5, iou_type: str = "ios",
                  max_det: int = 300, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect on a large image tile by tile.

    predict: `jax.jit(make_predict(spec))` of an OBB model (variables, images uint8 [B,S,S,3] RGB) -> rotated
    NMS dict. Tiles are letterboxed to imgsz and run `batch` at a time (the last batch padded, so one
    compilation serves every image). Returns (rboxes [K,5], scores [K], classes [K]) in image pixels.
    """


    h, w = image_bgr.shape[:2]
    windows = tile_windows((h, w), tile, overlap)
    parts = []
    for i in tqdm(range(0, len(windows), batch), desc="tiles", unit="batch", disable=not progress, leave=False):
        wins = windows[i:i + batch]
        xs, pads = [], []
        for x0, y0, x1, y1 in wins:
            x, ratio_pad = letterbox_image(image_bgr[y0:min(y1, h), x0:min(x1, w)], imgsz)
            xs.append(x)
            pads.append(ratio_pad)
        xs += [np.full_like(xs[0], 114)] * (batch - len(xs))
        r = jax.device_get(predict(variables, np.stack(xs)))
        for k, (win, ratio_pad) in enumerate(zip(wins, pads)):
            v = r["valid"][k]
            parts.append(((int(win[0]), int(win[1])), scale_rboxes(r["boxes"][k][v], ratio_pad), r["scores"][k][v],
                          r["classes"][k][v]))
    return merge_tiles(parts, iou=merge_iou, iou_type=iou_type, max_det=max_det)


# -- command line ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the tiling command (for `python -m yolojax.data.tiling` or a `data tile` subcommand)."""
    p.add_argument("src", help="oriented dataset: DOTA folder (images/, labelTxt/) or Ultralytics OBB data")
    p.add_argument("out", help="output folder (data.yaml, images/, labels/, ignore/)")
    p.add_argument("--format", default=None, help="source format (default: detect)")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to tile (default: train val)")
    p.add_argument("--tile", type=int, default=TILE, help=f"tile size in px (default {TILE})")
    p.add_argument("--overlap", type=int, default=OVERLAP, help=f"overlap of neighbouring tiles (default {OVERLAP})")
    p.add_argument("--min-visible", dest="min_visible", type=float, default=MIN_VISIBLE,
                   help="share of a cut object that must be inside to keep it as a target (default 0.7)")
    p.add_argument("--ext", default=".jpg", help="tile image type (default .jpg)")
    p.add_argument("--no-background", dest="background", action="store_false", help="skip tiles with no object")


def run(args) -> int:

    loaded: dict[str, Dataset] = {}
    for split in args.splits:
        try:
            ds = load_dataset(args.src, split, args.format)
        except ValueError as e:
            print(f"{args.src}: no {split} split ({e})")
            continue
        if not any([r.path for r in d.records] == [r.path for r in ds.records] for d in loaded.values()):
            loaded[split] = ds  # a folder without split subfolders reads the same for every split
    if not loaded:
        raise SystemExit(f"{args.src}: none of the splits {args.splits} could be read")
    path = tile_dataset(loaded, args.out, tile=args.tile, overlap=args.overlap, min_visible=args.min_visible,
                        ext=args.ext, background=args.background)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m yolojax.data.tiling",
                                description="Split an oriented dataset (DOTA) into overlapping tiles.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
