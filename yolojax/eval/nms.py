"""Non-maximum suppression with static shapes (jittable), plus a numpy reference.

Follows Ultralytics' `non_max_suppression` for detection: candidates are (anchor, class) pairs
with score > conf (every class of an anchor when multi_label, else only its best class), the
highest `max_candidates` of them (Ultralytics' max_nms = 30000) go through greedy class-aware
NMS (a box suppresses a lower-scored box of the same class when IoU > iou), and the first
`max_det` survivors are returned, sorted by score.

Static shapes: the jitted version pads its output to `max_det` with a `valid` mask. The greedy
loop runs once per *kept* box (a `lax.while_loop` that jumps to the next live candidate), so it
costs at most max_det x max_candidates IoUs per image and O(max_candidates) memory, which is
why the Ultralytics bound of 30000 candidates can be kept as the default.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from yolojax.eval.boxes import box_iou, xywh2xyxy

MAX_CANDIDATES = 30000  # Ultralytics max_nms


def _greedy_nms(boxes, classes, alive, *, iou_thres, max_det, agnostic):
    """One image. boxes [K,4] xyxy sorted by descending score, classes [K], alive [K] bool.

    Returns (keep [max_det] int32 indices into K, n_kept int32).
    """
    k = boxes.shape[0]
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)

    def cond(state):
        alive, _, n = state
        return (n < max_det) & jnp.any(alive)

    def body(state):
        alive, keep, n = state
        i = jnp.argmax(alive)  # first live candidate = highest remaining score (inputs are sorted)
        b = boxes[i]
        lt = jnp.maximum(b[:2], boxes[:, :2])
        rb = jnp.minimum(b[2:], boxes[:, 2:])
        inter = jnp.prod((rb - lt).clip(0), axis=-1)
        iou = inter / (area[i] + area - inter + 1e-7)
        # Same-class mask instead of Ultralytics' `boxes + cls * max_wh` offset: the same rule
        # (classes never suppress each other) without float32 rounding of coordinates near 6e5.
        suppress = iou > iou_thres
        if not agnostic:
            suppress &= classes == classes[i]
        alive = alive & ~suppress & (jnp.arange(k) != i)
        return alive, keep.at[n].set(i.astype(jnp.int32)), n + 1

    keep0 = jnp.zeros((max_det,), jnp.int32)
    _, keep, n = lax.while_loop(cond, body, (alive, keep0, jnp.int32(0)))
    return keep, n


@functools.partial(
    jax.jit, static_argnames=("conf", "iou", "max_det", "multi_label", "max_candidates", "agnostic")
)
def non_max_suppression(
    boxes_xywh,
    scores,
    *,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    multi_label: bool = True,
    max_candidates: int = MAX_CANDIDATES,
    agnostic: bool = False,
):
    """Batched NMS on decoded head outputs.

    boxes_xywh [B, A, 4] (cx, cy, w, h) pixels; scores [B, A, nc] class probabilities (after sigmoid).
    Returns dict: boxes [B, max_det, 4] xyxy, scores [B, max_det], classes [B, max_det] int32,
    valid [B, max_det] bool; rows are sorted by score and padded with zeros where not valid.
    """
    if boxes_xywh.ndim != 3 or boxes_xywh.shape[-1] != 4:
        raise ValueError(f"boxes_xywh must be [B, A, 4], got {boxes_xywh.shape}")
    if scores.ndim != 3 or scores.shape[:2] != boxes_xywh.shape[:2]:
        raise ValueError(f"scores must be [B, A, nc] with B, A of boxes {boxes_xywh.shape}, got {scores.shape}")
    top_s, cand, cls = select_candidates(boxes_xywh, scores, multi_label=multi_label,
                                         max_candidates=max_candidates)
    cand = xywh2xyxy(cand)
    nms = functools.partial(_greedy_nms, iou_thres=iou, max_det=max_det, agnostic=agnostic)
    keep, n = jax.vmap(nms)(cand, cls, top_s > conf)
    return gather_kept(cand, top_s, cls, keep, n, max_det)


def select_candidates(boxes, scores, *, multi_label: bool, max_candidates: int):
    """The NMS candidates of a batch, best first (static shapes): boxes [B,A,D], scores [B,A,nc] ->
    (score [B,K], box [B,K,D], class [B,K] int32) of the top (anchor, class) pairs (multi-label) or anchors."""
    b, a, nc = scores.shape
    if multi_label and nc > 1:  # as Ultralytics: single class is never multi-label
        k = min(max_candidates, a * nc)
        top_s, top_i = lax.top_k(scores.reshape(b, a * nc), k)  # ties: lower index first, as a stable sort
        anchor, cls = top_i // nc, top_i % nc
    else:
        k = min(max_candidates, a)
        top_s, anchor = lax.top_k(scores.max(-1), k)
        cls = jnp.take_along_axis(scores.argmax(-1), anchor, axis=1)
    return top_s, jnp.take_along_axis(boxes, anchor[..., None], axis=1), cls.astype(jnp.int32)


def gather_kept(cand, top_s, cls, keep, n, max_det: int) -> dict:
    """Kept rows (indices [B,max_det], counts [B]) -> the padded NMS output dict."""
    valid = jnp.arange(max_det)[None, :] < n[:, None]
    take = lambda x: jnp.take_along_axis(x, keep, axis=1)  # noqa: E731
    return dict(
        boxes=jnp.where(valid[..., None], jnp.take_along_axis(cand, keep[..., None], axis=1), 0.0),
        scores=jnp.where(valid, take(top_s), 0.0),
        classes=jnp.where(valid, take(cls), 0),
        valid=valid,
    )


def nms_numpy(boxes, scores, iou_thres: float, classes=None):
    """Greedy NMS reference (plain loop). boxes [N,4] xyxy, scores [N] -> kept indices, by score.

    With `classes` [N], only boxes of the same class suppress each other.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes)[order]
    cls = None if classes is None else np.asarray(classes)[order]
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        ious = box_iou(boxes[i : i + 1], boxes)[0]
        sup = ious > iou_thres
        if cls is not None:
            sup &= cls == cls[i]
        alive &= ~sup
    return np.asarray(keep, dtype=np.int64)


def candidates_numpy(scores, *, conf: float, multi_label: bool, max_candidates: int):
    """One image's NMS candidates, best first: scores [A, nc] -> (score [K], anchor [K], class [K]) of the top
    max_candidates (anchor, class) pairs (multi-label) or anchors (best class), above conf."""
    nc = scores.shape[-1]
    if multi_label:
        flat = scores.reshape(-1)
        idx = np.argsort(-flat, kind="stable")[:max_candidates]
        s, anchor, cls = flat[idx], idx // nc, idx % nc
    else:
        best = scores.max(-1)
        anchor = np.argsort(-best, kind="stable")[:max_candidates]
        s, cls = best[anchor], scores.argmax(-1)[anchor]
    m = s > conf
    return s[m], anchor[m], cls[m]


def non_max_suppression_numpy(
    boxes_xywh,
    scores,
    *,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    multi_label: bool = True,
    max_candidates: int = MAX_CANDIDATES,
    agnostic: bool = False,
):
    """numpy reference for `non_max_suppression` (same arguments, same padded output)."""
    boxes_xywh, scores = np.asarray(boxes_xywh), np.asarray(scores)
    b, a, nc = scores.shape
    multi_label = multi_label and nc > 1
    out = dict(
        boxes=np.zeros((b, max_det, 4), boxes_xywh.dtype),
        scores=np.zeros((b, max_det), scores.dtype),
        classes=np.zeros((b, max_det), np.int32),
        valid=np.zeros((b, max_det), bool),
    )
    for bi in range(b):
        s, anchor, cls = candidates_numpy(scores[bi], conf=conf, multi_label=multi_label,
                                          max_candidates=max_candidates)
        boxes = xywh2xyxy(boxes_xywh[bi][anchor])
        keep = nms_numpy(boxes, s, iou, None if agnostic else cls)[:max_det]
        n = len(keep)
        out["boxes"][bi, :n] = boxes[keep]
        out["scores"][bi, :n] = s[keep]
        out["classes"][bi, :n] = cls[keep]
        out["valid"][bi, :n] = True
    return out


def unpad(result, index: int | None = None):
    """Padded NMS output -> per image (boxes [n,4], scores [n], classes [n]) numpy tuples.

    Returns a list over the batch, or one tuple when `index` is given.
    """
    r = {k: np.asarray(v) for k, v in result.items()}
    rows = range(r["valid"].shape[0]) if index is None else [index]
    out = [(r["boxes"][i][r["valid"][i]], r["scores"][i][r["valid"][i]], r["classes"][i][r["valid"][i]]) for i in rows]
    return out if index is None else out[0]
