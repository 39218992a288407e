"""Validation: jitted forward + NMS on letterboxed batches, boxes back to original pixels, mAP."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from ..eval.boxes import scale_boxes
from ..eval.metrics import DetectionMetrics
from ..eval.obb import OBBMetrics, scale_rboxes
from ..model.spec import Spec
from .step import make_predict


def val_loader(dataset, batch: int, imgsz: int, workers: int = 4):
    """Letterbox-only loader for validation. Metrics read ground truth from the records, so the padded box rows
    only need to hold every image's boxes (no cut, no warning)."""
    from ..data.loader import Loader
    m = max((len(r.boxes) for r in dataset.records), default=1)
    return Loader(dataset, batch, imgsz, augment=False, workers=workers, max_boxes=max(8, -(-m // 8) * 8))


def run_validation(spec: Spec, variables: dict, loader, *, conf: float = 0.001, iou: float = 0.7,
                   max_det: int = 300, predict: Callable | None = None, progress: bool = True,
                   collect: bool = False, desc: str = "val") -> tuple[dict, list]:
    """Evaluate `variables` on a (non-augmented) loader. Returns (metrics dict, detections).

    Ground truth comes from the dataset's records in original image pixels (ignore regions included), and
    predictions are scaled back from the letterboxed input, so numbers are comparable with pycocotools.
    detections: when `collect`, a list of (image_id, boxes xyxy [N,4], scores [N], classes [N]) in original
    pixels; else []. An obb spec is scored by `OBBMetrics` (polygon IoU against the annotated quadrilaterals,
    DOTA's overlap) and its boxes are rotated, (cx, cy, w, h, angle) [N,5].
    """
    names = list(spec.names) if spec.names else None
    obb = spec.task == "obb"
    if obb and not loader.dataset.obb:
        raise ValueError(f"{loader.dataset.root}: an OBB model needs an oriented dataset (DOTA labelTxt or "
                         "Ultralytics OBB txt `cls x1 y1 ... x4 y4`)")
    metrics = (OBBMetrics if obb else DetectionMetrics)(spec.nc, names)
    if predict is None:
        predict = jax.jit(make_predict(spec, conf=conf, iou=iou, max_det=max_det))
    dets: list = []
    loader.set_epoch(0)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        out = jax.device_get(predict(variables, batch["images"]))
        for k in np.flatnonzero(batch["valid"]):
            keep = out["valid"][k]
            if obb:
                boxes = scale_rboxes(out["boxes"][k][keep], tuple(batch["ratio_pad"][k]))
            else:
                boxes = scale_boxes(out["boxes"][k][keep], tuple(batch["ratio_pad"][k]), tuple(batch["orig_shapes"][k]))
            scores, classes = out["scores"][k][keep], out["classes"][k][keep]
            rec = loader.dataset[int(batch["indices"][k])]  # by index: stems may repeat across folders
            metrics.update(rec.image_id, boxes, scores, classes, rec.polygons if obb else rec.boxes, rec.classes,
                           rec.ignore)
            if collect:
                dets.append((rec.image_id, boxes, scores, classes))
    return metrics.compute(), dets
