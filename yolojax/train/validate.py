"""Validation: jitted forward + NMS on letterboxed batches, boxes back to original pixels, mAP."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from ..eval.boxes import scale_boxes
from ..eval.metrics import DetectionMetrics
from ..model.spec import Spec
from .step import make_predict


def run_validation(spec: Spec, variables: dict, loader, *, conf: float = 0.001, iou: float = 0.7,
                   max_det: int = 300, predict: Callable | None = None, progress: bool = True,
                   collect: bool = False, desc: str = "val") -> tuple[dict, list]:
    """Evaluate `variables` on a (non-augmented) loader. Returns (metrics dict, detections).

    Ground truth comes from the dataset's records in original image pixels (ignore regions included), and
    predictions are scaled back from the letterboxed input, so numbers are comparable with pycocotools.
    detections: when `collect`, a list of (image_id, boxes xyxy [N,4], scores [N], classes [N]) in original
    pixels; else [].
    """
    names = list(spec.names) if spec.names else None
    metrics = DetectionMetrics(spec.nc, names)
    if predict is None:
        predict = jax.jit(make_predict(spec, conf=conf, iou=iou, max_det=max_det))
    dets: list = []
    loader.set_epoch(0)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        out = jax.device_get(predict(variables, batch["images"]))
        for k in np.flatnonzero(batch["valid"]):
            keep = out["valid"][k]
            boxes = scale_boxes(out["boxes"][k][keep], tuple(batch["ratio_pad"][k]), tuple(batch["orig_shapes"][k]))
            scores, classes = out["scores"][k][keep], out["classes"][k][keep]
            rec = loader.dataset[int(batch["indices"][k])]  # by index: stems may repeat across folders
            metrics.update(rec.image_id, boxes, scores, classes, rec.boxes, rec.classes, rec.ignore)
            if collect:
                dets.append((rec.image_id, boxes, scores, classes))
    return metrics.compute(), dets
