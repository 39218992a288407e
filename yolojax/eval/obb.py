"""Oriented-box evaluation: jittable rotated NMS, DOTA-style mAP with exact polygon IoU, result files.

NMS follows Ultralytics' rotated NMS (candidates as in `eval.nms`, class-aware, ProbIoU by default: what the
OBB models are trained and tuned with); `iou_type="polygon"` suppresses by the exact polygon IoU instead.
Unlike Ultralytics' `nms_rotated` (a "fast NMS": a box is dropped when any higher-scored box overlaps it,
even one that was itself dropped) this is the greedy NMS of the detection path: a box is dropped only by a
kept box. Static shapes as in `eval.nms`: outputs padded to max_det with a `valid` mask, one loop step per
kept box.

Metrics: `OBBMetrics` is `DetectionMetrics` with the overlap of DOTA's evaluation: the exact polygon IoU of
each detection's rectangle with each ground-truth quadrilateral (the annotated polygon, not its rectangle).
Matching, AP (Ultralytics 101-point interpolation), mAP50 and mAP50-95 are the shared ones. DOTA's
difficult objects are ignored ground truth: a detection on one (IoU >= threshold) is neither TP nor FP.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from yolojax.eval.metrics import DetectionMetrics, match_overlaps
from yolojax.eval.nms import MAX_CANDIDATES, candidates_numpy, gather_kept, select_candidates
from yolojax.eval.rotated import (batch_probiou, polygon_area, polygon_iou, polygon_iou_elementwise, probiou,
                                  rbox_corners)

IOU_TYPES = ("probiou", "polygon")
# numpy NMS also takes "ios" (polygon intersection over the smaller box): merging tiles, where two cut copies
# of one object overlap little as IoU but one lies almost wholly inside the other
IOU_TYPES_NUMPY = IOU_TYPES + ("ios",)


def _check_iou_type(iou_type: str, allowed=IOU_TYPES) -> None:
    if iou_type not in allowed:
        raise ValueError(f"iou_type must be one of {allowed}, got {iou_type!r}")


POLYGON_CHUNK = 64  # candidates clipped per inner step of the polygon NMS


def _greedy(suppress_row: Callable, k: int, alive, *, max_det):
    """Greedy NMS of one image over K candidates sorted by score; suppress_row(i, alive) -> [K] bool, the live
    candidates that kept candidate i removes. Returns (keep [max_det] int32 indices, n_kept int32)."""

    def cond(state):
        alive, _, n = state
        return (n < max_det) & jnp.any(alive)

    def body(state):
        alive, keep, n = state
        i = jnp.argmax(alive)  # first live candidate = highest remaining score
        alive = alive & ~suppress_row(i, alive) & (jnp.arange(k) != i)
        return alive, keep.at[n].set(i.astype(jnp.int32)), n + 1

    keep0 = jnp.zeros((max_det,), jnp.int32)
    _, keep, n = lax.while_loop(cond, body, (alive, keep0, jnp.int32(0)))
    return keep, n


def _polygon_suppressor(boxes, same: Callable, iou_thres: float) -> Callable:
    """suppress_row for exact polygon IoU: only the live candidates whose bounding circles meet box i's are
    clipped, POLYGON_CHUNK at a time (clipping all K candidates for every kept box costs seconds per image)."""
    k = boxes.shape[0]
    corners = rbox_corners(boxes)
    ctr, radius = boxes[:, :2], jnp.hypot(boxes[:, 2], boxes[:, 3]) / 2

    def row(i, alive):
        near = alive & same(i) & (((ctr - ctr[i]) ** 2).sum(-1) < (radius + radius[i]) ** 2)

        def chunk(state):
            near, sup = state
            idx = jnp.nonzero(near, size=POLYGON_CHUNK, fill_value=k)[0]  # k: past the end, dropped below
            iou = polygon_iou_elementwise(corners[i], jnp.take(corners, idx, axis=0, mode="clip"), capacity=8)
            sup = sup.at[idx].set(iou > iou_thres, mode="drop")
            return near.at[idx].set(False, mode="drop"), sup

        _, sup = lax.while_loop(lambda s: jnp.any(s[0]), chunk, (near, jnp.zeros(k, bool)))
        return sup

    return row


@functools.partial(jax.jit, static_argnames=("conf", "iou", "max_det", "multi_label", "max_candidates",
                                             "agnostic", "iou_type"))
def rotated_nms(rboxes, scores, *, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                multi_label: bool = True, max_candidates: int = MAX_CANDIDATES, agnostic: bool = False,
                iou_type: str = "probiou"):
    """Batched NMS of rotated boxes.

    rboxes [B, A, 5] (cx, cy, w, h, angle) pixels/radians; scores [B, A, nc] (after sigmoid). Candidates are
    (anchor, class) pairs with score > conf (every class when multi_label, else the best), at most
    max_candidates of them by score. Returns dict: boxes [B, max_det, 5], scores [B, max_det], classes
    [B, max_det] int32, valid [B, max_det] bool; sorted by score, zero-padded where not valid.
    """
    _check_iou_type(iou_type)
    if rboxes.ndim != 3 or rboxes.shape[-1] != 5:
        raise ValueError(f"rboxes must be [B, A, 5], got {rboxes.shape}")
    if scores.ndim != 3 or scores.shape[:2] != rboxes.shape[:2]:
        raise ValueError(f"scores must be [B, A, nc] with B, A of rboxes {rboxes.shape}, got {scores.shape}")
    top_s, cand, cls = select_candidates(rboxes, scores, multi_label=multi_label,
                                         max_candidates=max_candidates)  # cand [B, K, 5]
    k = top_s.shape[1]

    def one(boxes, classes, alive):
        same = (lambda i: True) if agnostic else (lambda i: classes == classes[i])  # noqa: E731
        if iou_type == "polygon":
            row = _polygon_suppressor(boxes, same, iou)
        else:
            row = lambda i, alive: (probiou(boxes[i], boxes) > iou) & same(i)  # noqa: E731
        return _greedy(row, k, alive, max_det=max_det)

    keep, n = jax.vmap(one)(cand, cls, top_s > conf)
    return gather_kept(cand, top_s, cls, keep, n, max_det)


def nms_rotated_numpy(rboxes, scores, iou_thres: float, classes=None, iou_type: str = "probiou",
                      groups=None) -> np.ndarray:
    """Greedy NMS of rotated boxes [N, 5] (plain loop, float64): kept indices by descending score. With
    `classes` [N], only boxes of the same class suppress each other; with `groups` [N], only boxes of
    different groups do (the tiles of `merge_tiles`, each already NMS'd). iou_type: "probiou", "polygon" or
    "ios"."""
    _check_iou_type(iou_type, IOU_TYPES_NUMPY)
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(rboxes, np.float64).reshape(-1, 5)[order]
    cls = None if classes is None else np.asarray(classes)[order]
    grp = None if groups is None else np.asarray(groups)[order]
    corners = rbox_corners(boxes)
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        alive[i] = False
        rest = np.flatnonzero(alive)
        if iou_type in ("polygon", "ios"):
            ious = polygon_iou(corners[i:i + 1], corners[rest], mode="iou" if iou_type == "polygon" else "ios")[0]
        else:
            ious = batch_probiou(boxes[i:i + 1], boxes[rest])[0]
        sup = ious > iou_thres
        if cls is not None:
            sup &= cls[rest] == cls[i]
        if grp is not None:
            sup &= grp[rest] != grp[i]
        alive[rest[sup]] = False
    return np.asarray(keep, dtype=np.int64)


def rotated_nms_numpy(rboxes, scores, *, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                      multi_label: bool = True, max_candidates: int = MAX_CANDIDATES, agnostic: bool = False,
                      iou_type: str = "probiou") -> dict:
    """numpy reference for `rotated_nms` (same arguments, same padded output)."""
    rboxes, scores = np.asarray(rboxes), np.asarray(scores)
    b, a, nc = scores.shape
    multi_label = multi_label and nc > 1
    out = dict(boxes=np.zeros((b, max_det, 5), rboxes.dtype), scores=np.zeros((b, max_det), scores.dtype),
               classes=np.zeros((b, max_det), np.int32), valid=np.zeros((b, max_det), bool))
    for bi in range(b):
        s, anchor, cls = candidates_numpy(scores[bi], conf=conf, multi_label=multi_label,
                                          max_candidates=max_candidates)
        boxes = rboxes[bi][anchor]
        keep = nms_rotated_numpy(boxes, s, iou, None if agnostic else cls, iou_type)[:max_det]
        n = len(keep)
        out["boxes"][bi, :n], out["scores"][bi, :n] = boxes[keep], s[keep]
        out["classes"][bi, :n], out["valid"][bi, :n] = cls[keep], True
    return out


def scale_rboxes(rboxes, ratio_pad) -> np.ndarray:
    """Letterboxed-input rotated boxes [..., 5] -> original image pixels. ratio_pad = (ratio, padx, pady) with
    one resize gain for both axes (a rectangle scaled unevenly is no longer a rectangle). Not clipped: the
    corners of a box at the border may lie outside the image, as the ground truth's do."""
    if len(ratio_pad) != 3 or np.ndim(ratio_pad[0]) != 0:
        raise ValueError(f"ratio_pad must be (ratio, padx, pady) with a scalar ratio, got {ratio_pad!r}")
    r, padx, pady = (float(v) for v in ratio_pad)
    out = np.array(rboxes, np.float64, copy=True)
    out[..., 0] = (out[..., 0] - padx) / r
    out[..., 1] = (out[..., 1] - pady) / r
    out[..., 2:4] /= r
    return out


class OBBMetrics(DetectionMetrics):
    """`DetectionMetrics` for rotated boxes, overlap = exact polygon IoU (DOTA's evaluation).

    `update(image_id, pred_rboxes [N,5], pred_scores [N], pred_classes [N], gt_polygons [M,4,2], gt_classes
    [M], gt_ignore [M])`, original image pixels. Ignored ground truth (DOTA difficult) is matched by IoU by
    default (`ignore_overlap="iou"`, DOTA's rule; "ioa" uses intersection over the detection's area). Area
    ranges use the polygon areas. `compute()` returns the same dict as `DetectionMetrics.compute`.
    """

    pred_box_shape = (5,)
    gt_box_shape = (4, 2)

    def __init__(self, nc: int, names=None, *, ignore_overlap: str = "iou", **kwargs):
        super().__init__(nc, names, ignore_overlap=ignore_overlap, **kwargs)

    def _match(self, pred_boxes, pred_classes, gt_boxes, gt_classes, gt_ignore):
        corners = rbox_corners(pred_boxes)
        overlap = polygon_iou(gt_boxes, corners).T  # [N, M]
        if self.ignore_overlap == "ioa" and gt_ignore.any():
            overlap[:, gt_ignore] = polygon_iou(gt_boxes[gt_ignore], corners, mode="ioa").T
        return match_overlaps(overlap, pred_classes, gt_classes, gt_ignore, det_area=polygon_area(corners),
                              gt_area=polygon_area(gt_boxes), iou_thresholds=self.iou_thresholds)


def obb_json(detections: Sequence, names: Sequence[str] | None = None) -> list[dict]:
    """Detections [(image_id, rboxes [N,5], scores [N], classes [N]), ...] -> JSON rows in the layout of
    Ultralytics' OBB `predictions.json`: image_id, category_id, (name,) score, rbox [cx,cy,w,h,angle],
    poly [x1,y1,...,x4,y4]."""
    rows = []
    for image_id, boxes, scores, classes in detections:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
        for b, p, s, c in zip(boxes, rbox_corners(boxes).reshape(-1, 8), scores, classes):
            row = {"image_id": image_id, "category_id": int(c), "score": round(float(s), 5),
                   "rbox": [round(float(v), 3) for v in b], "poly": [round(float(v), 3) for v in p]}
            if names is not None:
                row["name"] = names[int(c)]
            rows.append(row)
    return rows


def save_json(detections: Sequence, path, names: Sequence[str] | None = None) -> str:
    """Write `obb_json(detections, names)` to path; returns it."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obb_json(detections, names), f)
    return path


def save_dota(detections: Sequence, out_dir, names: Sequence[str]) -> list[str]:
    """Write DOTA task-1 result files (the evaluation server's format): out_dir/Task1_<class>.txt, one line per
    detection `image_id score x1 y1 x2 y2 x3 y3 x4 y4`. Returns the files written (one per class)."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    lines: dict[int, list[str]] = {c: [] for c in range(len(names))}
    for image_id, boxes, scores, classes in detections:
        polys = rbox_corners(np.asarray(boxes, np.float64).reshape(-1, 5)).reshape(-1, 8)
        for p, s, c in zip(polys, scores, classes):
            lines[int(c)].append(f"{image_id} {float(s):.6f} " + " ".join(f"{v:.1f}" for v in p))
    files = []
    for c, rows in lines.items():
        path = os.path.join(out_dir, f"Task1_{names[c]}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + ("\n" if rows else ""))
        files.append(path)
    return files
