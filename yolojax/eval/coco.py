"""COCO-format interop: detections and ground truth as COCO JSON, and evaluation with pycocotools.

Image ids follow Ultralytics' `pred_to_json`: the image file stem, as an int when it is all digits
(`000000000009` -> 9), else the string. Category ids are class indices unless a `class_map`
(e.g. COCO-80 index -> COCO-91 id) is given. pycocotools wants int image ids, so `coco_eval` maps
every id of the ground truth to 1..N before evaluating (string ids may be in our JSON).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from yolojax.eval.boxes import box_area, xyxy2ltwh

# The 12 numbers of COCOeval.summarize(), in order.
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def image_id_from(name) -> int | str:
    """Path / file name / stem / int -> COCO image id (the stem, int when all digits)."""
    if isinstance(name, (int, np.integer)):
        return int(name)
    stem = Path(str(name)).stem
    return int(stem) if stem.isdigit() else stem


def _category(cls: int, class_map) -> int:
    return int(class_map[cls]) if class_map is not None else int(cls)


def to_coco_detections(
    image_ids: Sequence,
    boxes: Sequence,
    scores: Sequence,
    classes: Sequence,
    *,
    class_map: Sequence[int] | Mapping[int, int] | None = None,
    decimals: int | None = None,
) -> list[dict]:
    """Per-image detections -> COCO results list of {image_id, category_id, bbox [x,y,w,h], score}.

    image_ids [B] (paths, stems or ints); boxes [B] of [n,4] xyxy in original image pixels;
    scores [B] of [n]; classes [B] of [n]. `decimals` rounds bbox (and score to decimals + 2) as
    Ultralytics' JSON does with 3; None keeps full precision.
    """
    if not (len(image_ids) == len(boxes) == len(scores) == len(classes)):
        raise ValueError(
            f"image_ids, boxes, scores, classes differ in length: "
            f"{len(image_ids)}, {len(boxes)}, {len(scores)}, {len(classes)}"
        )
    out = []
    for name, b, s, c in zip(image_ids, boxes, scores, classes):
        iid = image_id_from(name)
        b = np.asarray(b, np.float64).reshape(-1, 4)
        s, c = np.asarray(s, np.float64).reshape(-1), np.asarray(c).reshape(-1)
        if not (len(b) == len(s) == len(c)):
            raise ValueError(f"image {iid!r}: {len(b)} boxes, {len(s)} scores, {len(c)} classes")
        ltwh = xyxy2ltwh(b)
        if decimals is not None:
            ltwh, s = np.round(ltwh, decimals), np.round(s, decimals + 2)
        for box, score, cls in zip(ltwh.tolist(), s.tolist(), c.tolist()):
            out.append(dict(image_id=iid, category_id=_category(int(cls), class_map), bbox=box, score=score))
    return out


def to_coco_gt(
    image_ids: Sequence,
    image_sizes: Sequence[tuple[int, int]],
    gt_boxes: Sequence,
    gt_classes: Sequence,
    gt_ignore: Sequence | None = None,
    *,
    names: Sequence[str] | Mapping[int, str] | None = None,
    class_map: Sequence[int] | Mapping[int, int] | None = None,
) -> dict:
    """Per-image ground truth -> COCO dataset dict {images, annotations, categories}.

    image_ids [B]; image_sizes [B] of (h, w); gt_boxes [B] of [m,4] xyxy pixels; gt_classes [B] of [m];
    gt_ignore [B] of [m] bool (written as iscrowd=1, which COCOeval ignores); area = box w*h.
    Images with no boxes are kept (background: their detections are false positives).
    """
    n = len(image_ids)
    if not (len(image_sizes) == len(gt_boxes) == len(gt_classes) == n):
        raise ValueError("image_ids, image_sizes, gt_boxes, gt_classes differ in length")
    if gt_ignore is not None and len(gt_ignore) != n:
        raise ValueError("gt_ignore differs in length from image_ids")
    images, annotations, seen, cats = [], [], set(), set()
    for i, (name, (h, w), b, c) in enumerate(zip(image_ids, image_sizes, gt_boxes, gt_classes)):
        iid = image_id_from(name)
        if iid in seen:
            raise ValueError(f"duplicate image id {iid!r} (from {name!r})")
        seen.add(iid)
        images.append(dict(id=iid, height=int(h), width=int(w), file_name=Path(str(name)).name))
        b = np.asarray(b, np.float64).reshape(-1, 4)
        c = np.asarray(c).reshape(-1)
        ig = np.zeros(len(b), bool) if gt_ignore is None else np.asarray(gt_ignore[i], bool).reshape(-1)
        if not (len(b) == len(c) == len(ig)):
            raise ValueError(f"image {iid!r}: {len(b)} boxes, {len(c)} classes, {len(ig)} ignore flags")
        for box, area, cls, crowd in zip(xyxy2ltwh(b).tolist(), box_area(b).tolist(), c.tolist(), ig.tolist()):
            cat = _category(int(cls), class_map)
            cats.add((int(cls), cat))
            annotations.append(
                dict(id=len(annotations) + 1, image_id=iid, category_id=cat, bbox=box, area=area, iscrowd=int(crowd))
            )
    if names is not None:
        names = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
        cats |= {(k, _category(k, class_map)) for k in names}
    categories = [
        dict(id=cat, name=str(names[k]) if names is not None and k in names else str(k)) for k, cat in sorted(cats)
    ]
    return dict(images=images, annotations=annotations, categories=categories)


def save_json(obj, path) -> Path:
    """Write a COCO dict / results list as JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def _load(x, what):
    if isinstance(x, (str, Path)):
        with open(x) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{x}: line {e.lineno}: {what} is not valid JSON ({e.msg})") from None
    return x


def coco_eval(gt, dets, *, verbose: bool = False) -> np.ndarray:
    """pycocotools bbox evaluation -> the 12 COCOeval stats (see COCO_STAT_NAMES).

    gt: COCO dataset dict or JSON path; dets: results list or JSON path. Image ids (int or str) are
    remapped to 1..N for pycocotools; a detection on an image missing from gt is an error.
    `verbose` prints COCOeval's summary table.
    """
    from pycocotools.coco import COCO  # start-up: only the COCO cross-check needs it
    from pycocotools.cocoeval import COCOeval

    gt, dets = _load(gt, "ground truth"), _load(dets, "detections")
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"ground truth has no '{key}' (keys: {sorted(gt)})")
    ids = {img["id"]: k + 1 for k, img in enumerate(gt["images"])}
    if len(ids) != len(gt["images"]):
        raise ValueError("ground truth has duplicate image ids")
    unknown = {d["image_id"] for d in dets} - set(ids)
    if unknown:
        some = sorted(map(str, unknown))[:5]
        raise ValueError(f"{len(unknown)} detection image ids are not in the ground truth, e.g. {some}")
    gt_ds = dict(
        gt,
        images=[dict(img, id=ids[img["id"]]) for img in gt["images"]],
        annotations=[dict(a, image_id=ids[a["image_id"]]) for a in gt["annotations"]],
    )
    res = [dict(d, image_id=ids[d["image_id"]]) for d in dets]

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = gt_ds
        coco_gt.createIndex()
        if res:
            coco_dt = coco_gt.loadRes(res)
        else:  # loadRes cannot take an empty list; no detections is a valid (all-zero) result
            coco_dt = COCO()
            coco_dt.dataset = dict(images=gt_ds["images"], categories=gt_ds["categories"], annotations=[])
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, np.float64)


def coco_stats_dict(stats: Iterable[float]) -> dict:
    """12 COCOeval stats -> {name: value} with COCO_STAT_NAMES."""
    stats = list(stats)
    if len(stats) != len(COCO_STAT_NAMES):
        raise ValueError(f"expected {len(COCO_STAT_NAMES)} stats, got {len(stats)}")
    return dict(zip(COCO_STAT_NAMES, map(float, stats)))
