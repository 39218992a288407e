"""Ultralytics-style augmentation in numpy/OpenCV with exact box bookkeeping.

Images are uint8 BGR [H,W,3] (OpenCV order; the loader flips to RGB at the end). Every geometric step takes
`img=None` too and then only transforms the targets: the loader uses that to size `max_boxes` from the data
without decoding images. Random draws never depend on the pixels, so such a dry run sees the same boxes.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from yolojax.data import geometry as geo

PAD_VALUE = 114


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ultralytics training defaults (hyp names kept). mosaic is the probability when mosaic is on."""

    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    flipud: float = 0.0
    mosaic: float = 1.0


@dataclasses.dataclass
class Targets:
    """Boxes of one image in its current pixel frame. boxes float32 [N,4] xyxy, classes int32 [N],
    ignore bool [N], polygons float32 [N,4,2] or None (oriented datasets)."""

    boxes: np.ndarray
    classes: np.ndarray
    ignore: np.ndarray
    polygons: np.ndarray | None = None

    @classmethod
    def from_record(cls, rec) -> "Targets":
        return cls(rec.boxes.copy(), rec.classes.copy(), rec.ignore.copy(),
                   None if rec.polygons is None else rec.polygons.copy())

    @classmethod
    def empty(cls, obb: bool) -> "Targets":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool),
                   np.zeros((0, 4, 2), np.float32) if obb else None)

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> "Targets":
        return Targets(self.boxes[keep], self.classes[keep], self.ignore[keep],
                       None if self.polygons is None else self.polygons[keep])

    def affine(self, sx: float, sy: float, dx: float, dy: float) -> "Targets":
        """x -> x*sx + dx, y -> y*sy + dy (scale and shift, no rotation)."""
        b = self.boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([dx, dy, dx, dy], np.float32)
        p = self.polygons
        if p is not None:
            p = (p * np.array([sx, sy], np.float32) + np.array([dx, dy], np.float32)).astype(np.float32)
        return Targets(b.astype(np.float32), self.classes, self.ignore, p)

    @staticmethod
    def concat(items: list["Targets"]) -> "Targets":
        polys = None if items[0].polygons is None else np.concatenate([t.polygons for t in items])
        return Targets(np.concatenate([t.boxes for t in items]), np.concatenate([t.classes for t in items]),
                       np.concatenate([t.ignore for t in items]), polys)

    def obb(self) -> np.ndarray | None:
        """[N,5] oriented boxes of the polygons (see geometry), or None."""
        return None if self.polygons is None else geo.polygons_to_obb(self.polygons)


def clip_targets(t: Targets, w: float, h: float, min_area: float = 0.0) -> Targets:
    """Clip boxes to [0,w]x[0,h]; polygons that cross the border become the minimum-area rectangle of their
    part inside (boxes then bound that part exactly). Boxes with area <= min_area are removed."""
    b = t.boxes.copy()
    p = t.polygons
    if p is not None and len(p):
        out = (p[..., 0].min(1) < 0) | (p[..., 1].min(1) < 0) | (p[..., 0].max(1) > w) | (p[..., 1].max(1) > h)
        if out.any():
            pts, valid = geo.clip_polygons(p[out], w, h)
            p = p.copy()
            p[out] = geo.obb_to_polygons(geo.min_area_rect(pts, valid)).astype(np.float32)
            b[out] = geo.masked_bounds(pts, valid)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    t = Targets(b.astype(np.float32), t.classes, t.ignore, p)
    keep = geo.box_area(b) > min_area
    return t if keep.all() else t.select(keep)


# -------------------------------------------------------------------------------------------- resizing

def resized_shape(shape: tuple[int, int], imgsz: int) -> tuple[int, int]:
    """(h, w) after Ultralytics `load_image`: long side to imgsz, aspect kept (ceil, capped at imgsz)."""
    h0, w0 = shape
    r = imgsz / max(h0, w0)
    if r == 1:
        return h0, w0
    return min(math.ceil(h0 * r), imgsz), min(math.ceil(w0 * r), imgsz)


def letterbox_params(shape: tuple[int, int], new: int | tuple[int, int], scaleup: bool = True, *,
                     auto: bool = False, stride: int = 32, center: bool = True):
    """Ultralytics `LetterBox.get_params`: ratio r, resized (h, w), pads (top, bottom, left, right).

    new: the target (h, w), or an int for a square. auto: minimal padding, each side only up to the next
    multiple of `stride` (Ultralytics predict on one image or a batch of same-shaped images); otherwise the
    image is padded to `new` exactly. scaleup=False never enlarges (validation). Each resized side keeps at
    least one pixel; sides round with Python's `round`, the pads split as round(d/2 -/+ 0.1), as Ultralytics.
    """
    h, w = shape
    nh_t, nw_t = (new, new) if isinstance(new, (int, np.integer)) else (int(new[0]), int(new[1]))
    r = min(nh_t / h, nw_t / w)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = max(int(round(w * r)), 1), max(int(round(h * r)), 1)
    dw, dh = nw_t - nw, nh_t - nh
    if auto:
        dw, dh = dw % stride, dh % stride
    if center:
        dw, dh = dw / 2, dh / 2
        top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    else:
        top = left = 0
    bottom, right = int(round(dh + 0.1)), int(round(dw + 0.1))
    return r, (nh, nw), (top, bottom, left, right)


def letterbox(img: np.ndarray | None, t: Targets, shape: tuple[int, int], new: int | tuple[int, int],
              scaleup: bool = True, *, auto: bool = False, stride: int = 32):
    """Resize keeping aspect (cv2.INTER_LINEAR) and pad with gray 114 to `new` (int: square; (h, w)), or with
    auto=True only to the next multiple of `stride` (see `letterbox_params`).

    Returns (img or None, targets, ratio, (padx, pady)); boxes map x -> x*ratio + padx. The image is
    [h_out, w_out, 3] with h_out = resized h + top + bottom.
    """
    r, size, pads = letterbox_params(shape, new, scaleup, auto=auto, stride=stride)
    if img is not None:
        img = resize_pad(img, size, pads)
    return img, t.affine(r, r, pads[2], pads[0]), r, (pads[2], pads[0])


def resize_pad(img: np.ndarray, size: tuple[int, int], pads: tuple[int, int, int, int],
               color: int = PAD_VALUE) -> np.ndarray:
    """The pixels of a letterbox: resize to `size` (h, w) with cv2.INTER_LINEAR (skipped when already that
    size), then pad (top, bottom, left, right) with `color`; `size` and `pads` from `letterbox_params`."""
    nh, nw = size
    if (img.shape[0], img.shape[1]) != (nh, nw):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom, left, right = pads
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color,) * 3)


def rect_batch_shapes(shapes: np.ndarray, batch: int, imgsz: int, stride: int = 32, pad: float = 0.5):
    """Ultralytics `BaseDataset.set_rectangle` for validation: the images sorted by aspect ratio h/w (numpy's
    default `argsort`, as Ultralytics, so ties fall the same way), cut into batches of `batch`, and each batch
    letterboxed to its own (h, w): the batch's extreme aspect ratio times imgsz, plus `pad` strides, rounded
    up to a multiple of `stride`.

    shapes [N,2] (h, w) of the original images. Returns (order [N] dataset indices in batch order,
    batch_shapes int [ceil(N/batch), 2] (h, w)).
    """
    s = np.asarray(shapes, np.float64).reshape(-1, 2)
    n = len(s)
    bi = np.floor(np.arange(n) / batch).astype(int)
    nb = int(bi[-1]) + 1 if n else 0
    ar = s[:, 0] / s[:, 1]
    order = ar.argsort()
    ar = ar[order]
    out = [[1.0, 1.0]] * nb
    for i in range(nb):
        ari = ar[bi == i]
        mini, maxi = ari.min(), ari.max()
        if maxi < 1:
            out[i] = [maxi, 1]
        elif mini > 1:
            out[i] = [1, 1 / mini]
    batch_shapes = np.ceil(np.array(out, np.float64).reshape(-1, 2) * imgsz / stride + pad).astype(int) * stride
    return order, batch_shapes


# ---------------------------------------------------------------------------------------------- mosaic

def mosaic4(items: list[tuple[np.ndarray | None, tuple[int, int], Targets]], imgsz: int,
            rng: np.random.Generator):
    """Ultralytics 4-image mosaic on a 2*imgsz canvas (gray 114) around a random center.

    items: 4 x (img [h,w,3] or None, (h, w), targets in that image's pixels), already resized so that the
    long side is imgsz. Returns (canvas [2s,2s,3] or None, targets clipped to the canvas).
    """
    s = imgsz
    yc, xc = (int(rng.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))
    canvas = None
    if items[0][0] is not None:
        # only the canvas not covered by the four images is painted gray (a full fill costs as much as
        # the copies)
        canvas = np.empty((2 * s, 2 * s, items[0][0].shape[2]), dtype=np.uint8)
    parts = []
    for i, (img, (h, w), t) in enumerate(items):
        if i == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        if canvas is not None:
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            qx0, qx1 = (0, xc) if i in (0, 2) else (xc, 2 * s)  # this image's quadrant
            qy0, qy1 = (0, yc) if i in (0, 1) else (yc, 2 * s)
            canvas[qy0:y1a, qx0:qx1] = PAD_VALUE
            canvas[y2a:qy1, qx0:qx1] = PAD_VALUE
            canvas[y1a:y2a, qx0:x1a] = PAD_VALUE
            canvas[y1a:y2a, x2a:qx1] = PAD_VALUE
        parts.append(t.affine(1, 1, x1a - x1b, y1a - y1b))
    # Each image extends away from (xc, yc), so its footprint ends at the canvas edge or at the center lines:
    # clipping to the canvas is clipping to its own part.
    return canvas, clip_targets(Targets.concat(parts), 2 * s, 2 * s, min_area=0.0)


# ---------------------------------------------------------------------------------------------- affine

def affine_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator,
                  cfg: AugmentConfig) -> tuple[np.ndarray, float]:
    """Ultralytics RandomPerspective matrix (no perspective term): M = T @ S @ R @ C, and its scale s."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    a = rng.uniform(-cfg.degrees, cfg.degrees)
    s = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(rng.uniform(-cfg.shear, cfg.shear) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-cfg.shear, cfg.shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * out_hw[0]
    return T @ S @ R @ C, s


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[...,2] points through a 3x3 affine matrix."""
    return pts @ M[:2, :2].T + M[:2, 2]


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Ultralytics filter: keep boxes still > wh_thr px, with aspect < ar_thr and > area_thr of their area.
    box1 [N,4] before (already multiplied by the affine scale), box2 [N,4] after; xyxy."""
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_affine(img: np.ndarray | None, t: Targets, in_hw: tuple[int, int], out_hw: tuple[int, int],
                  rng: np.random.Generator, cfg: AugmentConfig):
    """Warp [in_h,in_w] to [out_h,out_w] (gray 114 outside); boxes by their corners (polygons by their
    points), clipped, then filtered by `box_candidates`. Returns (img or None, targets)."""
    M, s = affine_matrix(in_hw, out_hw, rng, cfg)
    oh, ow = out_hw
    if img is not None:
        img = cv2.warpAffine(img, M[:2], dsize=(ow, oh), borderValue=(PAD_VALUE,) * 3)
    if len(t) == 0:
        return img, t
    if t.polygons is not None:
        polys = _apply(M, t.polygons.astype(np.float64)).astype(np.float32)
        moved = Targets(geo.polygons_to_xyxy(polys), t.classes, t.ignore, polys)
        area_thr = 0.01  # Ultralytics uses the looser threshold when instances carry point sets
    else:
        corners = _apply(M, geo.box_corners(t.boxes.astype(np.float64)))
        moved = Targets(geo.polygons_to_xyxy(corners).astype(np.float32), t.classes, t.ignore, None)
        area_thr = 0.10
    new = clip_targets(moved, ow, oh, min_area=-1.0)  # keep rows aligned with t for the filter
    keep = box_candidates(t.boxes * s, new.boxes, area_thr=area_thr)
    return img, new.select(keep)


# ---------------------------------------------------------------------------------------- color / flip

def augment_hsv(img: np.ndarray | None, rng: np.random.Generator, hgain: float, sgain: float, vgain: float):
    """Ultralytics RandomHSV (>= 8.3.79): additive hue shift, multiplicative saturation/value, via LUTs.
    img is BGR uint8; returns a new image."""
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain]
    if img is None or not (hgain or sgain or vgain):
        return img
    x = np.arange(0, 256, dtype=np.float64)
    lut = np.empty((256, 1, 3), np.uint8)  # one LUT per channel, applied in one pass
    lut[:, 0, 0] = ((x + r[0] * 180) % 180).astype(np.uint8)
    lut[:, 0, 1] = np.clip(x * (r[1] + 1), 0, 255).astype(np.uint8)
    lut[:, 0, 2] = np.clip(x * (r[2] + 1), 0, 255).astype(np.uint8)
    lut[0, 0, 1] = 0  # pure white / gray stay unsaturated
    hsv = cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=hsv)


def flip(img: np.ndarray | None, t: Targets, hw: tuple[int, int], horizontal: bool):
    """Mirror left-right (horizontal) or top-bottom; boxes and polygons follow."""
    h, w = hw
    b = t.boxes.copy()
    p = None if t.polygons is None else t.polygons.copy()
    if horizontal:
        b[:, [0, 2]] = w - t.boxes[:, [2, 0]]
        if p is not None:
            p[..., 0] = w - p[..., 0]
        if img is not None:
            img = cv2.flip(img, 1)
    else:
        b[:, [1, 3]] = h - t.boxes[:, [3, 1]]
        if p is not None:
            p[..., 1] = h - p[..., 1]
        if img is not None:
            img = cv2.flip(img, 0)
    return img, Targets(b, t.classes, t.ignore, p)


# --------------------------------------------------------------------------------------------- pipelines

def train_transform(items, imgsz: int, rng: np.random.Generator, cfg: AugmentConfig):
    """The Ultralytics training pipeline for one sample.

    items: list of (img or None, (h, w), targets) resized by `resized_shape`: 4 items make a mosaic (the
    first is the sample itself), then an affine back to imgsz; 1 item is letterboxed, then the affine.
    Then HSV and flips. Returns (img [imgsz,imgsz,3] or None, targets).
    """
    if len(items) == 4:
        img, t = mosaic4(items[:4], imgsz, rng)
        in_hw = (2 * imgsz, 2 * imgsz)
    else:
        img, hw, t = items[0]
        img, t, _, _ = letterbox(img, t, hw, imgsz)
        in_hw = (imgsz, imgsz)
    img, t = random_affine(img, t, in_hw, (imgsz, imgsz), rng, cfg)
    img = augment_hsv(img, rng, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
    if rng.uniform() < cfg.flipud:
        img, t = flip(img, t, (imgsz, imgsz), horizontal=False)
    if rng.uniform() < cfg.fliplr:
        img, t = flip(img, t, (imgsz, imgsz), horizontal=True)
    return img, t


def val_transform(item, orig_hw: tuple[int, int], imgsz: int, shape: tuple[int, int] | None = None):
    """Validation: letterbox only, never scaling up (Ultralytics `LetterBox(scaleup=False)`). item = (img or
    None, (h, w), targets) after `resized_shape`; shape: the batch's (h, w) in rectangular validation (see
    `rect_batch_shapes`), else the imgsz square.

    Returns (img, targets, (ratio_x, ratio_y, padx, pady)) with per-axis ratios relative to the original
    image, so that original = (letterboxed - pad) / ratio: Ultralytics' `ratio_pad` (the resize to imgsz rounds
    each side up, so the two ratios differ slightly).
    """
    img, hw, t = item
    img, t, r, (px, py) = letterbox(img, t, hw, shape if shape is not None else imgsz, scaleup=False)
    rx, ry = r * hw[1] / orig_hw[1], r * hw[0] / orig_hw[0]
    return img, t, (float(rx), float(ry), float(px), float(py))
