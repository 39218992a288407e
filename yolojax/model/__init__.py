"""YOLOv8 model: spec, Flax modules, counting, Ultralytics weight import."""
from .spec import Spec, yolov8_spec, tiny_spec, make_divisible, SCALES, STRIDES
from .modules import make_anchors, dfl_decode, dist2bbox_xywh, dist2rbox
from .yolov8 import YOLOv8, init_variables, variable_shapes
