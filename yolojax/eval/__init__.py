"""Evaluation: NMS, detection metrics (Ultralytics mAP, COCO area ranges), COCO JSON interop."""
from yolojax.eval.boxes import box_ioa, box_iou, clip_boxes, scale_boxes, xywh2xyxy, xyxy2ltwh, xyxy2xywh
from yolojax.eval.coco import COCO_STAT_NAMES, coco_eval, save_json, to_coco_detections, to_coco_gt
from yolojax.eval.metrics import DetectionMetrics, ap_per_class, compute_ap, format_results, plot_pr_curve
from yolojax.eval.nms import non_max_suppression, non_max_suppression_numpy, unpad
from yolojax.eval.obb import OBBMetrics, rotated_nms, rotated_nms_numpy

__all__ = [
    "COCO_STAT_NAMES",
    "DetectionMetrics",
    "OBBMetrics",
    "rotated_nms",
    "rotated_nms_numpy",
    "ap_per_class",
    "box_ioa",
    "box_iou",
    "clip_boxes",
    "coco_eval",
    "compute_ap",
    "format_results",
    "non_max_suppression",
    "non_max_suppression_numpy",
    "plot_pr_curve",
    "save_json",
    "scale_boxes",
    "to_coco_detections",
    "to_coco_gt",
    "unpad",
    "xywh2xyxy",
    "xyxy2ltwh",
    "xyxy2xywh",
]
