"""Box geometry shared by the detection loss, the assigner, OBB and distillation.

Boxes are xyxy unless a function says otherwise. Every function broadcasts over leading axes, so a
pairwise [B, M, A] matrix comes from `f(gt[:, :, None], pred[:, None])` without ever building a
[B, M, A, 4] array: the four coordinates are split first and only scalar fields are broadcast.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from yolojax.model.modules import make_anchors  # noqa: F401  (one definition, shared with the model head)


def dist2bbox(distance: jax.Array, anchor_points: jax.Array, xywh: bool = True) -> jax.Array:
    """(l, t, r, b) distances [..., 4] from anchor points [..., 2] to boxes [..., 4] (xywh or xyxy).

    Same default as Ultralytics (`xywh=True`); the loss uses xyxy.
    """
    lt, rb = distance[..., :2], distance[..., 2:]
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        return jnp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)
    return jnp.concatenate([x1y1, x2y2], -1)


def bbox2dist(anchor_points: jax.Array, bbox: jax.Array, reg_max: float | None = None) -> jax.Array:
    """xyxy boxes [..., 4] to (l, t, r, b) distances from anchor points [..., 2].

    With `reg_max`, distances are clamped to [0, reg_max - 0.01] (Ultralytics passes reg_max - 1
    here, so DFL targets stay strictly below the last bin).
    """
    dist = jnp.concatenate([anchor_points - bbox[..., :2], bbox[..., 2:] - anchor_points], -1)
    if reg_max is not None:
        dist = jnp.clip(dist, 0.0, reg_max - 0.01)
    return dist


def xywh2xyxy(x: jax.Array) -> jax.Array:
    """(cx, cy, w, h) [..., 4] -> (x1, y1, x2, y2)."""
    xy, half = x[..., :2], x[..., 2:4] / 2
    return jnp.concatenate([xy - half, xy + half], -1)


def xyxy2xywh(x: jax.Array) -> jax.Array:
    """(x1, y1, x2, y2) [..., 4] -> (cx, cy, w, h)."""
    return jnp.concatenate([(x[..., :2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., :2]], -1)


def bbox_iou(box1: jax.Array, box2: jax.Array, *, xywh: bool = False, giou: bool = False,
             diou: bool = False, ciou: bool = False, eps: float = 1e-7) -> jax.Array:
    """IoU (or GIoU / DIoU / CIoU) of boxes [..., 4] broadcast against boxes [..., 4] -> [...].

    Ultralytics' `bbox_iou` formula exactly, eps placement included (in xyxy mode the heights get
    +eps, which also enters CIoU's aspect term). CIoU's trade-off weight alpha carries no gradient,
    as in the paper and in Ultralytics (`torch.no_grad`).
    """
    if xywh:
        w1, h1, w2, h2 = box1[..., 2], box1[..., 3], box2[..., 2], box2[..., 3]
        box1, box2 = xywh2xyxy(box1), xywh2xyxy(box2)
    b1x1, b1y1, b1x2, b1y2 = (box1[..., i] for i in range(4))
    b2x1, b2y1, b2x2, b2y2 = (box2[..., i] for i in range(4))
    if not xywh:
        w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
        w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps

    inter = (jnp.maximum(jnp.minimum(b1x2, b2x2) - jnp.maximum(b1x1, b2x1), 0.0)
             * jnp.maximum(jnp.minimum(b1y2, b2y2) - jnp.maximum(b1y1, b2y1), 0.0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (giou or diou or ciou):
        return iou
    cw = jnp.maximum(b1x2, b2x2) - jnp.minimum(b1x1, b2x1)  # enclosing box
    ch = jnp.maximum(b1y2, b2y2) - jnp.minimum(b1y1, b2y1)
    if ciou or diou:
        c2 = cw ** 2 + ch ** 2 + eps
        rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
        if ciou:
            v = (4 / math.pi ** 2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
            alpha = jax.lax.stop_gradient(v / (v - iou + (1 + eps)))
            return iou - (rho2 / c2 + v * alpha)
        return iou - rho2 / c2
    c_area = cw * ch + eps
    return iou - (c_area - union) / c_area


def points_in_boxes(points: jax.Array, boxes: jax.Array, *, min_side: float = 0.0,
                    eps: float = 1e-9) -> jax.Array:
    """Whether each point lies strictly inside each box: points [A, 2], boxes [..., M, 4] -> [..., M, A].

    "Inside" means the smallest distance to the four edges exceeds `eps` (Ultralytics). With
    `min_side`, box sides shorter than it are widened to it about the box centre first: Ultralytics
    >= 8.4 does this so that a box smaller than a stride still owns some anchors.
    """
    x1, y1, x2, y2 = (boxes[..., i][..., None] for i in range(4))
    if min_side > 0:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        w = jnp.where(w < min_side, min_side, w)
        h = jnp.where(h < min_side, min_side, h)
        x1, x2, y1, y2 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    px, py = points[:, 0], points[:, 1]
    d = jnp.minimum(jnp.minimum(px - x1, py - y1), jnp.minimum(x2 - px, y2 - py))
    return d > eps
