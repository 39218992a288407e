"""Drawing detections on images (predict, reports)."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np


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


def letterbox_image(image_bgr: np.ndarray, imgsz: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """BGR image -> (RGB uint8 [imgsz,imgsz,3] letterboxed with gray 114, (ratio, padx, pady))."""
    from .data.augment import letterbox_params
    r, (nh, nw), (top, bottom, left, right) = letterbox_params(image_bgr.shape[:2], imgsz)
    img = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != image_bgr.shape[:2] else image_bgr
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (r, float(left), float(top))
