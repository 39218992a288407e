"""Validation: jitted forward + NMS on letterboxed batches, boxes back to original pixels, mAP.

As Ultralytics' validator (`yolo val`, and its trainer's validation): rectangular batches by default (the images
in order of aspect ratio, each batch letterboxed to its own stride-multiple shape with half a stride of margin,
never scaled up), and detections matched to the ground truth unclipped (Ultralytics matches in the letterboxed
frame before any clipping; the map back to original pixels changes no IoU). See docs/evaluation.md.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from ..data.loader import Loader
from ..eval.boxes import clip_boxes, unletterbox_boxes
from ..eval.metrics import DetectionMetrics
from ..eval.obb import OBBMetrics, scale_rboxes
from ..model.spec import Spec
from .step import make_predict


def val_loader(dataset, batch: int, imgsz: int, workers: int = 4, *, rect: bool = True, stride: int = 32):
    """Letterbox-only loader for validation. rect: Ultralytics' rectangular batches (its default for `val`),
    sides multiples of `stride` (the model's largest, `max(spec.strides)`), else every image letterboxed to
    the imgsz square. Metrics read ground truth from the records, so the padded box rows only need to hold
    every image's boxes (no cut, no warning)."""
    m = max((len(r.boxes) for r in dataset.records), default=1)
    return Loader(dataset, batch, imgsz, augment=False, workers=workers, max_boxes=max(8, -(-m // 8) * 8),
                  rect=rect, pad=0.5, stride=stride)


def onnx_fixed_size(path) -> tuple[int, int] | None:
    """(h, w) of an ONNX graph's fixed input size, or None when height or width is symbolic (`export
    --dynamic`): only such a graph can run rectangular batches."""
    import onnx
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    hw = [d.dim_value if d.HasField("dim_value") else 0 for d in list(dims)[2:4]]
    return (hw[0], hw[1]) if len(hw) == 2 and all(v > 0 for v in hw) else None


def run_validation(spec: Spec, variables: dict, loader, *, conf: float = 0.001, iou: float = 0.7,
                   max_det: int = 300, predict: Callable | None = None, progress: bool = True,
                   collect: bool = False, desc: str = "val") -> tuple[dict, list]:
    """Evaluate `variables` on a (non-augmented) loader. Returns (metrics dict, detections).

    Ground truth comes from the dataset's records in original image pixels (ignore regions included), and
    predictions are mapped back from the letterboxed input by the per-axis ratio and pad. They are matched
    unclipped, as Ultralytics matches them; the collected detections are clipped to the image (COCO JSON).
    detections: when `collect`, a list of (image_id, boxes xyxy [N,4], scores [N], classes [N]) in original
    pixels; else []. An obb spec is scored by `OBBMetrics` (polygon IoU against the annotated quadrilaterals,
    DOTA's overlap) and its boxes are rotated, (cx, cy, w, h, angle) [N,5].

    With a rect loader each distinct batch shape compiles `predict` once (jit caches by shape); the last
    partial batch is padded and its padding rows masked by `valid`.
    """
    names = list(spec.names) if spec.names else None
    obb = spec.task == "obb"
    if obb and not loader.dataset.obb:
        raise ValueError(f"{loader.dataset.root}: an OBB model needs an oriented dataset (DOTA labelTxt or "
                         "Ultralytics OBB txt `cls x1 y1 ... x4 y4`)")
    metrics = (OBBMetrics if obb else DetectionMetrics)(spec.nc, names)
    if predict is None:
        predict = jax.jit(make_predict(spec, conf=conf, iou=iou, max_det=max_det))
    # once, not uploaded again with every batch; arrays already on devices stay where they are
    variables = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), variables)
    dets: list = []
    loader.set_epoch(0)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        out = jax.device_get(predict(variables, jax.device_put(batch["images"])))
        for k in np.flatnonzero(batch["valid"]):
            keep = out["valid"][k]
            rp = batch["ratio_pad"][k]
            orig = tuple(int(v) for v in batch["orig_shapes"][k])
            if obb:
                # one gain for both axes (a rectangle scaled unevenly is no rectangle): the long side's
                r = rp[0] if orig[1] >= orig[0] else rp[1]
                boxes = scale_rboxes(out["boxes"][k][keep], (float(r), float(rp[2]), float(rp[3])))
                matched = boxes
            else:
                matched = unletterbox_boxes(np.asarray(out["boxes"][k][keep], np.float64),
                                            ((float(rp[0]), float(rp[1])), float(rp[2]), float(rp[3])))
                boxes = clip_boxes(matched, orig)
            scores, classes = out["scores"][k][keep], out["classes"][k][keep]
            rec = loader.dataset[int(batch["indices"][k])]  # by index: stems may repeat across folders
            metrics.update(rec.image_id, matched, scores, classes, rec.polygons if obb else rec.boxes, rec.classes,
                           rec.ignore)
            if collect:
                dets.append((rec.image_id, boxes, scores, classes))
    return metrics.compute(), dets
