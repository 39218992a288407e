"""yolojax: YOLOv8 in JAX/Flax with a compression toolkit."""
from .model.spec import Spec, yolov8_spec, tiny_spec
from .api import Detector, load, from_ultralytics

__all__ = ["Spec", "yolov8_spec", "tiny_spec", "Detector", "load", "from_ultralytics"]
__version__ = "0.1.0"
