"""Box utilities shared by NMS, metrics and COCO export (numpy and jax.numpy alike).

Every function takes and returns arrays of the same library: pass numpy arrays to get numpy
back (float64 stays float64, for exact metrics), jax arrays to stay traceable under jit.
Boxes are `xyxy` (x1, y1, x2, y2) or `xywh` (centre x, centre y, width, height) in pixels.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
    """numpy unless any input is a jax array (or a tracer)."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _as_float(x):
    xp = _xp(x)
    x = xp.asarray(x)
    return x if xp.issubdtype(x.dtype, xp.floating) else x.astype(xp.float32 if xp is jnp else np.float64)


def xywh2xyxy(x):
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    xp, x = _xp(x), _as_float(x)
    c, half = x[..., :2], x[..., 2:4] / 2
    return xp.concatenate([c - half, c + half], axis=-1)


def xyxy2xywh(x):
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    xp, x = _xp(x), _as_float(x)
    return xp.concatenate([(x[..., :2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., :2]], axis=-1)


def xyxy2ltwh(x):
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (left, top, w, h), the COCO `bbox` layout."""
    xp, x = _xp(x), _as_float(x)
    return xp.concatenate([x[..., :2], x[..., 2:4] - x[..., :2]], axis=-1)


def box_area(boxes):
    """[..., 4] xyxy -> [...] area (negative extents count as 0)."""
    xp, b = _xp(boxes), _as_float(boxes)
    return xp.clip(b[..., 2] - b[..., 0], 0, None) * xp.clip(b[..., 3] - b[..., 1], 0, None)


def _intersection(box1, box2):
    xp = _xp(box1, box2)
    lt = xp.maximum(box1[..., :, None, :2], box2[..., None, :, :2])
    rb = xp.minimum(box1[..., :, None, 2:4], box2[..., None, :, 2:4])
    wh = xp.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou(box1, box2, eps: float = 1e-7):
    """Pairwise IoU: box1 [..., N, 4], box2 [..., M, 4] xyxy -> [..., N, M].

    `eps` in the denominator as Ultralytics (keeps degenerate boxes at IoU 0 instead of NaN).
    """
    box1, box2 = _as_float(box1), _as_float(box2)
    inter = _intersection(box1, box2)
    union = box_area(box1)[..., :, None] + box_area(box2)[..., None, :] - inter
    return inter / (union + eps)


def box_ioa(box1, box2, eps: float = 1e-7):
    """Pairwise intersection over the area of box1 (COCO's IoU for crowd ground truth).

    box1 [..., N, 4] (detections), box2 [..., M, 4] (crowd / ignored regions) -> [..., N, M].
    """
    box1, box2 = _as_float(box1), _as_float(box2)
    return _intersection(box1, box2) / (box_area(box1)[..., :, None] + eps)


def clip_boxes(boxes, shape: Sequence[int]):
    """Clip xyxy boxes [..., 4] to an image of shape (h, w)."""
    xp, b = _xp(boxes), _as_float(boxes)
    h, w = shape[0], shape[1]
    x = xp.clip(b[..., 0::2], 0, w)
    y = xp.clip(b[..., 1::2], 0, h)
    return xp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def unletterbox_boxes(boxes, ratio_pad):
    """Letterboxed-input pixels -> original image pixels, unclipped (what Ultralytics matches to the ground
    truth). boxes [..., 4] xyxy in the network input; ratio_pad = (ratio, padx, pady) where ratio is the
    resize gain (a float, or (gain_w, gain_h)) and padx/pady the left/top padding in pixels. Returns [..., 4]."""
    if len(ratio_pad) != 3:
        raise ValueError(f"ratio_pad must be (ratio, padx, pady), got {ratio_pad!r}")
    ratio, padx, pady = ratio_pad
    rw, rh = (ratio, ratio) if np.ndim(ratio) == 0 else (ratio[0], ratio[1])
    xp, b = _xp(boxes), _as_float(boxes)
    pad = xp.asarray([padx, pady, padx, pady], dtype=b.dtype)
    gain = xp.asarray([rw, rh, rw, rh], dtype=b.dtype)
    return (b - pad) / gain


def scale_boxes(boxes, ratio_pad, orig_shape: Sequence[int]):
    """`unletterbox_boxes`, then clipped to the original image of shape (h, w)."""
    return clip_boxes(unletterbox_boxes(boxes, ratio_pad), orig_shape)
