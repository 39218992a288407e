"""yolojax: YOLOv8 in JAX/Flax with a compression toolkit.

The public API (`load`, `from_ultralytics`, `Detector`, `yolov8_spec`, ...) is imported lazily so that
light commands (`yolojax data ...`) do not pay for importing JAX and Flax.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_API = {
    "Spec": "yolojax.model.spec", "yolov8_spec": "yolojax.model.spec", "tiny_spec": "yolojax.model.spec",
    "Detector": "yolojax.api", "load": "yolojax.api", "from_ultralytics": "yolojax.api",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'yolojax' has no attribute {name!r}")
