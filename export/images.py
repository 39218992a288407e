"""Images for calibration, checks and benchmarks: find them, read them, letterbox them like Ultralytics."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from yolojax.data.augment import letterbox_params, resize_pad

IMG_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


class CalibrationDataError(ValueError):
    """Calibration/check images missing or unreadable; the message names the source."""


def letterbox(img: np.ndarray, new_shape: tuple[int, int], color: int = 114) -> np.ndarray:
    """Resize keeping the aspect ratio (cv2.INTER_LINEAR), then pad to `new_shape` (h, w) centred: Ultralytics'
    LetterBox(auto=False, scaleup=True), pixel for pixel (`yolojax.data.augment.letterbox_params`).
    img [H,W,3] uint8 -> [h,w,3] uint8."""
    _, size, pads = letterbox_params(img.shape[:2], tuple(new_shape))
    return resize_pad(img, size, pads, color)


def image_files(source: str | Path) -> list[Path]:
    """Image paths from a directory (recursive), one image, a .txt list of paths, or an Ultralytics dataset
    YAML (its `val`, else `train`, relative to `path`). Sorted; raises CalibrationDataError if none."""
    src = Path(source)
    if not src.exists():
        raise CalibrationDataError(f"{src}: no such file or directory")
    if src.is_dir():
        files = [p for p in src.rglob("*") if p.suffix.lower() in IMG_SUFFIXES and p.is_file()]
    elif src.suffix.lower() in IMG_SUFFIXES:
        files = [src]
    elif src.suffix.lower() == ".txt":
        files = []
        for n, line in enumerate(src.read_text().splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line) if Path(line).is_absolute() else src.parent / line
                files.extend(image_files(p) if p.is_dir() else [p])
    elif src.suffix.lower() in (".yaml", ".yml"):
        import yaml
        cfg = yaml.safe_load(src.read_text()) or {}
        # `path` is relative to the YAML's folder (as Ultralytics resolves it); without one, the folder itself
        root = Path(cfg["path"]) if cfg.get("path") else src.parent
        root = root if root.is_absolute() or not cfg.get("path") else src.parent / root
        split = cfg.get("val") or cfg.get("train")
        if not split:
            raise CalibrationDataError(f"{src}: dataset YAML has neither `val` nor `train`")
        files = []
        for s in split if isinstance(split, list) else [split]:
            files.extend(image_files(root / s))
    else:
        raise CalibrationDataError(f"{src}: expected an image directory, an image, a .txt list or a dataset YAML")
    if not files:
        raise CalibrationDataError(f"{src}: no images found ({', '.join(sorted(IMG_SUFFIXES))})")
    return sorted(files)


def load_images(source: str | Path | Sequence[str | Path], imgsz: int | tuple[int, int], n: int | None = None,
                *, seed: int = 0) -> np.ndarray:
    """Up to `n` letterboxed RGB images as float32 [N,h,w,3] in [0,1] (a seeded random subset when there are
    more). Unreadable files are skipped with a warning that counts and names them; none readable is an error."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    files = image_files(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if n is not None and len(files) > n:
        idx = np.random.default_rng(seed).choice(len(files), n, replace=False)
        files = [files[i] for i in sorted(idx)]
    out, bad = [], []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            bad.append(str(f))
            continue
        out.append(letterbox(img[..., ::-1], (h, w)))
    if not out:
        raise CalibrationDataError(f"{source}: none of {len(files)} image(s) could be read (e.g. {bad[0]})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(files)} from {source}: {bad[:5]}"
                      f"{' ...' if len(bad) > 5 else ''}", stacklevel=2)
    return np.stack(out).astype(np.float32) / 255.0
