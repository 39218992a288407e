"""YOLOv8 detection loss, task-aligned assigner and the box geometry they share."""
from yolojax.loss.assigner import Assignment, ciou_overlap, select_topk, task_aligned_assign
from yolojax.loss.boxes import (bbox2dist, bbox_iou, dist2bbox, make_anchors, points_in_boxes,
                                xywh2xyxy, xyxy2xywh)
from yolojax.loss.detection import (LossConfig, bce_with_logits, detection_loss, dfl_decode,
                                    dfl_loss)
from yolojax.loss.obb import obb_loss, rbox2dist

__all__ = [
    "Assignment", "LossConfig", "bbox2dist", "bbox_iou", "bce_with_logits", "ciou_overlap",
    "detection_loss", "dfl_decode", "dfl_loss", "dist2bbox", "make_anchors", "points_in_boxes",
    "select_topk", "task_aligned_assign", "obb_loss", "rbox2dist", "xywh2xyxy", "xyxy2xywh",
]
