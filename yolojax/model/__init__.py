"""YOLOv8 model: architectures, spec, the lowered graph, the Flax forward, counting, Ultralytics weight import."""
from .arch import ARCHS, SCALES, make_divisible
from .graph import Graph, lower
from .modules import dfl_decode, dist2bbox_xywh, dist2rbox, make_anchors
from .spec import STRIDES, Spec, tiny_spec, yolov8_spec
from .yolov8 import YOLOv8, init_variables, variable_shapes

__all__ = ["ARCHS", "SCALES", "make_divisible", "Graph", "lower", "dfl_decode", "dist2bbox_xywh", "dist2rbox",
           "make_anchors", "STRIDES", "Spec", "tiny_spec", "yolov8_spec", "YOLOv8", "init_variables",
           "variable_shapes"]
