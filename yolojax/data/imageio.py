"""Image files: cheap header checks for reading a dataset, full decodes for checking and loading."""
from __future__ import annotations

import math
import os
import warnings

import cv2
import numpy as np
from PIL import Image

# What cv2.imread decodes (Ultralytics' list less the formats OpenCV cannot read).
IMG_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".pfm", ".jp2", ".pbm",
                          ".pgm", ".ppm"})
# EXIF orientations that swap width and height (cv2.imread applies the rotation).
_SWAP_ORIENTATIONS = (5, 6, 7, 8)
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file."""


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMG_SUFFIXES


def _intact_tail(path: str, fmt: str) -> bool | None:
    """Whether the file ends with its format's end marker (None: format has none we check)."""
    marker = {"JPEG": _JPEG_EOI, "MPO": _JPEG_EOI, "PNG": _PNG_IEND}.get(fmt)
    if marker is None:
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read()
    # Some encoders append a few bytes of padding after the end marker.
    return marker in tail


def image_size(path: str, *, full: bool = False) -> tuple[int, int]:
    """(h, w) of an image as cv2.imread returns it (EXIF rotation applied), from the header.

    Raises ImageError for a file that is not an image, is empty, or is truncated. Truncation is caught
    cheaply by the JPEG/PNG end marker; files lacking it are decoded fully and rejected only if that fails
    (trailing garbage after the marker is common and harmless). full=True always decodes fully.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(f"{path}: empty file")
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format or ""
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block does not make the pixels unusable
                orientation = 1
            intact = _intact_tail(path, fmt)
            if full or intact is False:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    im.load()  # PIL raises OSError("image file is truncated") on short data
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found") from e
    except Image.UnidentifiedImageError as e:
        kind = _sniff(path)
        raise ImageError(f"{path}: not an image{kind}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from e
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has size {w}x{h}")
    if orientation in _SWAP_ORIENTATIONS:
        w, h = h, w
    return h, w


def _sniff(path: str) -> str:
    """A hint of what a non-image file holds (for error messages)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return ""
    if not head:
        return " (empty file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return " (unknown binary content)"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f" (text file starting {first!r})"


def decode(path: str, reduce: int = 1) -> np.ndarray:
    """Decode to uint8 BGR [H,W,3]. reduce in {1,2,4,8} lets libjpeg decode at 1/reduce size (DCT scaling).

    Raises ImageError when OpenCV cannot decode the file.
    """
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    im = cv2.imread(path, flag)
    if im is None:
        raise ImageError(f"{path}: OpenCV could not decode the image")
    return im


def reduce_factor(shape: tuple[int, int], target_long_side: int) -> int:
    """Largest DCT reduction (1, 2, 4, 8) that keeps the long side >= target_long_side."""
    long_side = max(shape)
    k = 1
    while k < 8 and math.ceil(long_side / (2 * k)) >= target_long_side:
        k *= 2
    return k


def verify_decode(path: str) -> tuple[int, int]:
    """Decode fully with both PIL (strict about truncation) and OpenCV; returns (h, w) or raises ImageError."""
    h, w = image_size(path, full=True)
    im = decode(path)
    if im.shape[:2] != (h, w):
        raise ImageError(f"{path}: OpenCV decodes {im.shape[1]}x{im.shape[0]}, header says {w}x{h}")
    return h, w
