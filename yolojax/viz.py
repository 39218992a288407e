"""Drawing detections on images (predict, reports)."""
from __future__ import annotations

import colorsys
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from .data.augment import letterbox_params, resize_pad


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct BGR colours."""
    out = []
    for i in range(max(n, 1)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)
        out.append((int(b * 255), int(g * 255), int(r * 255)))
    return out


def draw_detections(image_bgr: np.ndarray, boxes, scores, classes, names, *, thickness: int | None = None,
                    polygons=None) -> np.ndarray:
    """A copy of image_bgr with boxes (xyxy, original pixels) or polygons [N,4,2] and 'name score' labels."""
    img = image_bgr.copy()
    colors = palette(len(names))
    t = thickness or max(1, round(sum(img.shape[:2]) / 800))
    fs = max(0.3, t / 3)
    for i in np.argsort(np.asarray(scores))[::-1] if len(scores) else []:
        c = int(classes[i])
        color = colors[c % len(colors)]
        if polygons is not None:
            pts = np.round(np.asarray(polygons[i])).astype(np.int32)
            cv2.polylines(img, [pts], True, color, t, cv2.LINE_AA)
            x1, y1 = pts[:, 0].min(), pts[:, 1].min()
        else:
            x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
            cv2.rectangle(img, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
        label = f"{names[c] if c < len(names) else c} {float(scores[i]):.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
        y0 = max(int(y1), th + 2)
        cv2.rectangle(img, (int(x1), y0 - th - 2), (int(x1) + tw + 2, y0), color, -1)
        cv2.putText(img, label, (int(x1) + 1, y0 - 2), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def letterbox_image(image_bgr: np.ndarray, imgsz: int | tuple[int, int], *, auto: bool = False,
                    stride: int = 32) -> tuple[np.ndarray, tuple[float, float, float]]:
    """BGR image -> (RGB uint8 letterboxed with gray 114, (ratio, padx, pady)).

    The output is [imgsz, imgsz, 3] (or the given (h, w)); with auto=True only padded to the next multiple of
    `stride` (Ultralytics predict on a single image). See `letterbox_batch` for predict's full rule and the
    per-axis gains Ultralytics maps boxes back with."""
    r, size, pads = letterbox_params(image_bgr.shape[:2], imgsz, auto=auto, stride=stride)
    img = resize_pad(image_bgr, size, pads)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (r, float(pads[2]), float(pads[0]))


class Letterboxed(NamedTuple):
    """How one image was letterboxed: the resize ratio r, the realised per-axis gains (resized / original
    width and height: Ultralytics maps boxes back with these, r rounds differently per side) and the left/top
    padding in pixels."""

    ratio: float
    gain: tuple[float, float]
    pad: tuple[float, float]

    def box_ratio_pad(self) -> tuple:
        """For `yolojax.eval.boxes.scale_boxes`: ((gain_x, gain_y), padx, pady)."""
        return self.gain, self.pad[0], self.pad[1]

    def rbox_ratio_pad(self) -> tuple[float, float, float]:
        """For `yolojax.eval.obb.scale_rboxes` (one ratio for both axes): (ratio, padx, pady)."""
        return self.ratio, self.pad[0], self.pad[1]


def letterbox_batch(images_bgr: Sequence[np.ndarray], imgsz: int | tuple[int, int], *, stride: int = 32,
                    auto: bool | None = None) -> tuple[np.ndarray, list[Letterboxed]]:
    """Ultralytics predict's pre-processing (`BasePredictor.pre_transform`): BGR images -> (RGB uint8
    [B,H,W,3], one `Letterboxed` per image).

    auto=None applies Ultralytics' rule: a single image, or a batch of images of one shape, is letterboxed
    with minimal padding (each side padded only to the next multiple of `stride`); a batch of mixed shapes goes
    to the full imgsz square. Resizing is cv2.INTER_LINEAR, scale-up allowed, sides rounded with Python's
    round, padding split round(d/2 -/+ 0.1) with gray 114 -- Ultralytics' `LetterBox`, pixel for pixel.
    """
    if not len(images_bgr):
        raise ValueError("letterbox_batch needs at least one image")
    same = len({im.shape for im in images_bgr}) == 1
    if auto is None:
        auto = same
    elif auto and not same:
        raise ValueError("auto letterboxing gives each shape its own size: a batch of mixed shapes needs auto=False")
    out, infos = [], []
    for im in images_bgr:
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"expected a BGR image [H,W,3], got shape {im.shape}")
        x, (r, px, py) = letterbox_image(im, imgsz, auto=auto, stride=stride)
        _, (nh, nw), _ = letterbox_params(im.shape[:2], imgsz, auto=auto, stride=stride)
        out.append(x)
        infos.append(Letterboxed(float(r), (nw / im.shape[1], nh / im.shape[0]), (px, py)))
    return np.stack(out), infos
