"""Box and oriented-box geometry in numpy, vectorized over boxes.

OBB convention (the one Ultralytics trains with, `xyxyxyxy2xywhr` followed by `regularize_rboxes`):
obb = (cx, cy, w, h, angle) with angle in radians in [0, pi/2); w is the side along direction
(cos angle, sin angle) in image coordinates (y down), h the side along (-sin angle, cos angle).
The rectangle is the minimum-area rectangle of the polygon (what cv2.minAreaRect gives).
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-9


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """[N,4] (cx, cy, w, h) -> [N,4] (x1, y1, x2, y2)."""
    b = np.asarray(b)
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, 0:2] - half, b[:, 0:2] + half], axis=1)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    """[N,4] (x1, y1, x2, y2) -> [N,4] (cx, cy, w, h)."""
    b = np.asarray(b)
    return np.concatenate([(b[:, 0:2] + b[:, 2:4]) / 2, b[:, 2:4] - b[:, 0:2]], axis=1)


def ltwh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """[N,4] (left, top, w, h) -> [N,4] xyxy."""
    b = np.asarray(b)
    return np.concatenate([b[:, 0:2], b[:, 0:2] + b[:, 2:4]], axis=1)


def box_area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N,4] x [M,4] xyxy -> [N,M] IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter + _EPS)


def polygons_to_xyxy(p: np.ndarray) -> np.ndarray:
    """[N,P,2] -> [N,4] axis-aligned bounds."""
    if len(p) == 0:
        return np.zeros((0, 4), np.float32)
    return np.concatenate([p.min(axis=1), p.max(axis=1)], axis=1)


def box_corners(b: np.ndarray) -> np.ndarray:
    """[N,4] xyxy -> [N,4,2] corners (x1y1, x2y1, x2y2, x1y2)."""
    x1, y1, x2, y2 = (b[:, i] for i in range(4))
    return np.stack([np.stack([x1, y1], -1), np.stack([x2, y1], -1),
                     np.stack([x2, y2], -1), np.stack([x1, y2], -1)], axis=1)


def obb_to_polygons(r: np.ndarray) -> np.ndarray:
    """[N,5] (cx, cy, w, h, angle) -> [N,4,2] corners, in Ultralytics `xywhr2xyxyxyxy` order."""
    r = np.asarray(r, np.float64)
    c, s = np.cos(r[:, 4]), np.sin(r[:, 4])
    v1 = np.stack([r[:, 2] / 2 * c, r[:, 2] / 2 * s], -1)
    v2 = np.stack([-r[:, 3] / 2 * s, r[:, 3] / 2 * c], -1)
    ctr = r[:, :2]
    return np.stack([ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2], axis=1)


def regularize_obb(r: np.ndarray) -> np.ndarray:
    """Bring angles into [0, pi/2), swapping w and h where that turns the frame by 90 degrees."""
    r = np.array(r, np.float64, copy=True)
    t = np.mod(r[:, 4], np.pi)
    swap = t >= np.pi / 2
    w, h = r[:, 2].copy(), r[:, 3].copy()
    r[:, 2] = np.where(swap, h, w)
    r[:, 3] = np.where(swap, w, h)
    r[:, 4] = np.mod(t, np.pi / 2)
    # mod can return pi/2 itself by rounding; that is the same frame as 0 with sides swapped
    edge = r[:, 4] >= np.pi / 2 - 1e-12
    r[edge, 4] = 0.0
    r[edge, 2], r[edge, 3] = r[edge, 3].copy(), r[edge, 2].copy()
    return r


def min_area_rect(points: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Minimum-area enclosing rectangle of each point set, regularized.

    points [N,P,2], valid bool [N,P] (all valid if None) -> obb float64 [N,5]. The optimal rectangle has a
    side along an edge of the convex hull, and every hull edge joins two of the points, so trying the
    direction of every pair of points finds it exactly (P*(P-1)/2 candidates, no hull needed).
    Sets with no two distinct valid points give a zero-size box at their first valid point.
    """
    pts = np.asarray(points, np.float64)
    n, p = pts.shape[:2]
    if valid is None:
        valid = np.ones((n, p), bool)
    if n == 0:
        return np.zeros((0, 5))
    ii, jj = np.triu_indices(p, k=1)
    d = pts[:, jj] - pts[:, ii]                                    # [N,K,2]
    length = np.hypot(d[..., 0], d[..., 1])
    ok = valid[:, ii] & valid[:, jj] & (length > 1e-9)            # [N,K]
    u = d / np.maximum(length, 1e-12)[..., None]
    along = np.einsum("nkc,npc->nkp", u, pts)                      # projections on the direction
    across = u[..., 0, None] * pts[:, None, :, 1] - u[..., 1, None] * pts[:, None, :, 0]  # on its normal
    big = 1e30
    vm = valid[:, None, :]
    a_lo = np.where(vm, along, big).min(-1)
    a_hi = np.where(vm, along, -big).max(-1)
    c_lo = np.where(vm, across, big).min(-1)
    c_hi = np.where(vm, across, -big).max(-1)
    area = (a_hi - a_lo) * (c_hi - c_lo)
    area = np.where(ok, area, np.inf)
    k = np.argmin(area, axis=1)
    rows = np.arange(n)
    uk = u[rows, k]
    w = (a_hi - a_lo)[rows, k]
    h = (c_hi - c_lo)[rows, k]
    am = (a_hi + a_lo)[rows, k] / 2
    cm = (c_hi + c_lo)[rows, k] / 2
    # back from the (u, normal) frame; normal = (-u_y, u_x) so that across = u x p
    cx = am * uk[:, 0] - cm * uk[:, 1]
    cy = am * uk[:, 1] + cm * uk[:, 0]
    angle = np.arctan2(uk[:, 1], uk[:, 0])
    out = np.stack([cx, cy, w, h, angle], -1)
    none = ~ok.any(axis=1)
    if none.any():
        first = np.argmax(valid, axis=1)
        out[none] = 0.0
        out[none, :2] = pts[rows[none], first[none]]
    return regularize_obb(out)


def polygons_to_obb(polygons: np.ndarray) -> np.ndarray:
    """[N,4,2] corner points -> [N,5] float32 obb (minimum-area rectangle, regularized)."""
    if len(polygons) == 0:
        return np.zeros((0, 5), np.float32)
    return min_area_rect(polygons).astype(np.float32)


def clip_polygons(polygons: np.ndarray, w: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Intersect convex polygons with the image [0,w]x[0,h].

    polygons [N,4,2] -> points [N,24,2], valid [N,24]: the vertices of each intersection (unordered),
    made of the polygon's vertices inside the image, the image corners inside the polygon and the crossings
    of polygon edges with the image border. Feed them to `min_area_rect` or take their bounds.
    """
    poly = np.asarray(polygons, np.float64)
    n = len(poly)
    tol = 1e-6
    # 1) polygon vertices inside the image
    inside_img = (poly[..., 0] >= -tol) & (poly[..., 0] <= w + tol) & (poly[..., 1] >= -tol) & (poly[..., 1] <= h + tol)
    # 2) image corners inside the polygon (same side of every edge, either orientation)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    a = poly
    b = np.roll(poly, -1, axis=1)
    e = b - a                                                        # [N,4,2]
    rel = corners[None, None, :, :] - a[:, :, None, :]               # [N,4 edges,4 corners,2]
    cross = e[:, :, None, 0] * rel[..., 1] - e[:, :, None, 1] * rel[..., 0]
    scale = np.abs(e).sum(-1)[:, :, None] + 1.0
    in_poly = np.all(cross >= -tol * scale, axis=1) | np.all(cross <= tol * scale, axis=1)  # [N,4]
    # 3) edge crossings with the four border lines x=0, x=w, y=0, y=h
    pts_x = []
    ok_x = []
    for axis, value in ((0, 0.0), (0, w), (1, 0.0), (1, h)):
        denom = e[..., axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (value - a[..., axis]) / denom
        hit = (np.abs(denom) > 1e-12) & (t >= -tol) & (t <= 1 + tol)
        q = a + np.clip(np.nan_to_num(t), 0, 1)[..., None] * e
        q[..., axis] = value
        other = 1 - axis
        lim = h if other == 1 else w
        hit &= (q[..., other] >= -tol) & (q[..., other] <= lim + tol)
        pts_x.append(q)
        ok_x.append(hit)
    points = np.concatenate([poly, np.broadcast_to(corners, (n, 4, 2))] + pts_x, axis=1)
    valid = np.concatenate([inside_img, in_poly] + ok_x, axis=1)
    points[..., 0] = np.clip(points[..., 0], 0, w)
    points[..., 1] = np.clip(points[..., 1], 0, h)
    return points, valid


def masked_bounds(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[N,P,2], [N,P] -> [N,4] xyxy bounds of the valid points (zeros where none)."""
    big = 1e30
    v = valid[..., None]
    lo = np.where(v, points, big).min(axis=1)
    hi = np.where(v, points, -big).max(axis=1)
    out = np.concatenate([lo, hi], axis=1)
    out[~valid.any(axis=1)] = 0.0
    return out
