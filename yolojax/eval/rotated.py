"""Rotated-box geometry for the OBB loss, NMS, metrics and tiling, in numpy and jax.numpy alike.

A rotated box is (cx, cy, w, h, angle) in pixels and radians (see `yolojax.data.geometry` for the angle
convention). Every function takes and returns arrays of one library (numpy in -> numpy out, float64 kept, for
exact metrics; jax in -> jax out, traceable under jit) and broadcasts over leading axes, so a pairwise matrix
comes from `f(a[:, None], b[None])`.

Two overlaps, for two jobs:
- `probiou`: the Bhattacharyya-based similarity of the boxes' Gaussians (Llerena et al. 2021), smooth and
  differentiable; what Ultralytics' OBB loss, assigner and NMS use. It is not the polygon IoU (a square has
  the same Gaussian at every rotation).
- `polygon_iou` / `rbox_iou`: the exact area IoU, by Sutherland-Hodgman clipping of one polygon against a
  convex one with a fixed vertex capacity (static shapes), as DOTA's evaluation measures overlap.
"""
from __future__ import annotations

import numpy as np

from yolojax.eval.boxes import _xp

PROBIOU_EPS = 1e-7


def rbox_corners(rboxes):
    """[..., 5] (cx, cy, w, h, angle) -> [..., 4, 2] corners, in `geometry.obb_to_polygons` order."""
    xp = _xp(rboxes)
    r = xp.asarray(rboxes)
    c, s = xp.cos(r[..., 4]), xp.sin(r[..., 4])
    hw, hh = r[..., 2] / 2, r[..., 3] / 2
    v1 = xp.stack([hw * c, hw * s], -1)
    v2 = xp.stack([-hh * s, hh * c], -1)
    ctr = r[..., :2]
    return xp.stack([ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2], axis=-2)


def covariance(rboxes):
    """Covariance (a, b, c) = (var x, var y, cov xy) of the uniform distribution over each rotated box [..., 5]:
    R diag(w^2/12, h^2/12) R^T."""
    xp = _xp(rboxes)
    a, b = rboxes[..., 2] ** 2 / 12, rboxes[..., 3] ** 2 / 12
    cos, sin = xp.cos(rboxes[..., 4]), xp.sin(rboxes[..., 4])
    return a * cos**2 + b * sin**2, a * sin**2 + b * cos**2, (a - b) * cos * sin


def probiou(obb1, obb2, eps: float = PROBIOU_EPS):
    """ProbIoU of rotated boxes [..., 5] and [..., 5] (broadcast) -> [...]: 1 - Hellinger distance between the
    boxes' Gaussians, from the Bhattacharyya distance clipped to [eps, 100]. Ultralytics' `probiou` formula with
    its eps placement; the determinant product under the square root is floored at 1e-20 (not 0) so that
    gradients stay finite for degenerate boxes."""
    xp = _xp(obb1, obb2)
    x1, y1, x2, y2 = obb1[..., 0], obb1[..., 1], obb2[..., 0], obb2[..., 1]
    a1, b1, c1 = covariance(obb1)
    a2, b2, c2 = covariance(obb2)
    den = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2
    t1 = ((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / (den + eps) * 0.25
    t2 = ((c1 + c2) * (x2 - x1) * (y1 - y2)) / (den + eps) * 0.5
    dets = xp.maximum(a1 * b1 - c1**2, 0.0) * xp.maximum(a2 * b2 - c2**2, 0.0)
    t3 = xp.log(den / (4 * xp.sqrt(dets + 1e-20) + eps) + eps) * 0.5
    bd = xp.clip(t1 + t2 + t3, eps, 100.0)
    return 1.0 - xp.sqrt(1.0 - xp.exp(-bd) + eps)


def batch_probiou(obb1, obb2, eps: float = PROBIOU_EPS):
    """Pairwise ProbIoU: [N, 5] x [M, 5] -> [N, M]."""
    return probiou(obb1[:, None], obb2[None], eps)


def points_in_rboxes(points, rboxes, *, min_side: float = 0.0):
    """Whether each point lies in each rotated box (edges included): points [A, 2], rboxes [..., M, 5] ->
    [..., M, A]. With `min_side`, sides shorter than it count as that long (about the centre), as the
    axis-aligned `points_in_boxes`, so that tiny objects still own anchors."""
    xp = _xp(points, rboxes)
    r = rboxes[..., None, :]  # [..., M, 1, 5]
    dx, dy = points[:, 0] - r[..., 0], points[:, 1] - r[..., 1]
    c, s = xp.cos(r[..., 4]), xp.sin(r[..., 4])
    w, h = r[..., 2], r[..., 3]
    if min_side > 0:
        w, h = xp.maximum(w, min_side), xp.maximum(h, min_side)
    u = dx * c + dy * s  # coordinates in the box frame
    v = -dx * s + dy * c
    return (xp.abs(u) <= w / 2) & (xp.abs(v) <= h / 2)


# -- exact polygon overlap -------------------------------------------------------------------------------------

def polygon_area(poly, valid=None):
    """Area (>= 0) of polygons [..., K, 2], vertices in order; `valid` [..., K] marks the real vertices, which
    must come first (a padded polygon repeats its first vertex, so padding adds nothing)."""
    xp = _xp(poly)
    if valid is not None:
        poly = xp.where(valid[..., None], poly, poly[..., :1, :])
    return xp.abs(_signed_area(poly))


def _signed_area(poly):
    """Shoelace area, positive when the vertices turn counter-clockwise in x-right/y-up axes."""
    nxt = _xp(poly).roll(poly, -1, axis=-2)
    return (poly[..., 0] * nxt[..., 1] - nxt[..., 0] * poly[..., 1]).sum(-1) / 2


def _clip_halfplane(pts, valid, a, b, xp):
    """One Sutherland-Hodgman step: keep the part of polygons pts [..., K, 2] (valid [..., K], padded with
    their first vertex) left of the directed lines a -> b ([..., 2]). Same capacity K out."""
    k = pts.shape[-2]
    ex, ey = (b - a)[..., None, 0], (b - a)[..., None, 1]
    side = ex * (pts[..., 1] - a[..., None, 1]) - ey * (pts[..., 0] - a[..., None, 0])  # [..., K]
    nxt, side_n = xp.roll(pts, -1, axis=-2), xp.roll(side, -1, axis=-1)
    inside, inside_n = side >= 0, side_n >= 0
    denom = side - side_n
    t = side / xp.where(denom == 0, 1.0, denom)
    cross = pts + t[..., None] * (nxt - pts)
    emit = xp.stack([valid & inside, valid & (inside != inside_n)], -1).reshape(*valid.shape[:-1], 2 * k)
    cand = xp.stack([pts, cross], -2).reshape(*pts.shape[:-2], 2 * k, 2)
    # compact the emitted points to the front, in polygon order: numpy sorts; under XLA a one-hot [2K, K]
    # product runs several times faster than a sort or a scatter over many small polygons
    if xp is np:
        out = np.take_along_axis(cand, np.argsort(~emit, axis=-1, kind="stable")[..., :k, None], axis=-2)
    else:
        slot = xp.cumsum(emit, axis=-1) - 1
        place = (slot[..., :, None] == xp.arange(k)) & emit[..., :, None]  # [..., 2K, K]
        out = (place[..., None].astype(cand.dtype) * cand[..., :, None, :]).sum(-3)  # [..., K, 2]
    out_valid = xp.arange(k) < emit.sum(-1, keepdims=True)
    out = xp.where(out_valid[..., None], out, out[..., :1, :])
    return out, out_valid


def intersection_area(subject, clip, capacity: int = 16):
    """Area of subject polygons [..., P, 2] (simple, vertices in order) cut by convex polygons clip [..., C, 2]
    (either orientation); shapes broadcast. `capacity` bounds the vertices of the intermediate polygons: 8
    suffices for two rectangles, 16 for a quadrilateral and a rectangle."""
    xp = _xp(subject, clip)
    shape = np.broadcast_shapes(subject.shape[:-2], clip.shape[:-2])
    subject = xp.broadcast_to(subject, (*shape, *subject.shape[-2:]))
    clip = xp.broadcast_to(clip, (*shape, *clip.shape[-2:]))
    # local coordinates around the clip polygon: float32 cross products of ~1000 px coordinates lose digits
    ref = clip.mean(-2, keepdims=True)
    subject, clip = subject - ref, clip - ref
    clip = xp.where((_signed_area(clip) < 0)[..., None, None], xp.flip(clip, axis=-2), clip)
    p = subject.shape[-2]
    pad = xp.broadcast_to(subject[..., :1, :], (*shape, capacity - p, 2))
    pts = xp.concatenate([subject, pad], axis=-2)
    valid = xp.broadcast_to(xp.arange(capacity) < p, (*shape, capacity))
    c = clip.shape[-2]
    for i in range(c):
        pts, valid = _clip_halfplane(pts, valid, clip[..., i, :], clip[..., (i + 1) % c, :], xp)
    return polygon_area(pts, valid)


def polygon_iou_elementwise(poly1, poly2, capacity: int = 16, eps: float = 1e-9):
    """IoU of polygons [..., P, 2] and convex polygons [..., C, 2], broadcast -> [...]."""
    inter = intersection_area(poly1, poly2, capacity)
    return inter / (polygon_area(poly1) + polygon_area(poly2) - inter + eps)


def rbox_iou(rbox1, rbox2, eps: float = 1e-9):
    """Exact area IoU of rotated boxes [..., 5] and [..., 5] (broadcast) -> [...]."""
    return polygon_iou_elementwise(rbox_corners(rbox1), rbox_corners(rbox2), capacity=8, eps=eps)


def polygon_iou(poly1, poly2, *, mode: str = "iou", eps: float = 1e-9) -> np.ndarray:
    """Pairwise exact overlap of quadrilaterals (numpy, float64): poly1 [N, 4, 2] (any simple quadrilaterals,
    e.g. DOTA ground truth), poly2 [M, 4, 2] convex (rotated boxes) -> [N, M]. mode: "iou"; "ioa", the
    intersection over poly2's area (a detection's overlap with an ignored region); "ios", over the smaller of
    the two areas (a cut copy of an object against the whole). Only pairs whose axis-aligned bounds meet are
    clipped, so the cost follows the number of touching pairs, not N x M."""
    if mode not in ("iou", "ioa", "ios"):
        raise ValueError(f"mode must be 'iou', 'ioa' or 'ios', got {mode!r}")
    p1 = np.asarray(poly1, np.float64).reshape(-1, 4, 2)
    p2 = np.asarray(poly2, np.float64).reshape(-1, 4, 2)
    out = np.zeros((len(p1), len(p2)))
    if not len(p1) or not len(p2):
        return out
    lo1, hi1, lo2, hi2 = p1.min(1), p1.max(1), p2.min(1), p2.max(1)
    meet = ((np.minimum(hi1[:, None], hi2[None]) - np.maximum(lo1[:, None], lo2[None])) > 0).all(-1)
    i, j = np.nonzero(meet)
    if len(i):
        inter = intersection_area(p1[i], p2[j], capacity=16)
        a1, a2 = polygon_area(p1[i]), polygon_area(p2[j])
        den = {"iou": a1 + a2 - inter, "ioa": a2, "ios": np.minimum(a1, a2)}[mode]
        out[i, j] = inter / (den + eps)
    return out
