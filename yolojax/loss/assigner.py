"""Task-aligned assigner (TOOD / Ultralytics `TaskAlignedAssigner`), vectorized over [B, M, A].

Box geometry is injected: `iou_fn` (pairwise overlap) and `inside_fn` (which anchors a gt box
covers), so the rotated variant only swaps in ProbIoU and a rotated in-box test.

Memory: the [B, M, A] arrays (in-box mask, overlaps, alignment metric, positive mask) are the only
large ones. The overlap is computed for every (gt, anchor) pair, not only for anchors inside a box,
because a gather of the inside pairs has no static shape; the IoU functions split coordinates
before broadcasting, so no [B, M, A, 4] array exists and XLA fuses the whole CIoU into one pass.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from yolojax.loss.boxes import bbox_iou, points_in_boxes

IouFn = Callable[[jax.Array, jax.Array], jax.Array]
InsideFn = Callable[[jax.Array, jax.Array], jax.Array]


class Assignment(NamedTuple):
    """Per-anchor targets. labels [B, A] int32, boxes [B, A, D] (gt format), scores [B, A, nc]
    (one-hot times the normalized alignment, zero off foreground), fg [B, A] bool, gt_idx [B, A] int32
    (index of the assigned gt row; 0 where not foreground)."""
    labels: jax.Array
    boxes: jax.Array
    scores: jax.Array
    fg: jax.Array
    gt_idx: jax.Array


def ciou_overlap(gt_boxes: jax.Array, pd_boxes: jax.Array) -> jax.Array:
    """Assigner overlap for axis-aligned xyxy boxes: CIoU (as Ultralytics uses it here)."""
    return bbox_iou(gt_boxes, pd_boxes, ciou=True)


def select_topk(metric: jax.Array, k: int) -> jax.Array:
    """Boolean mask [..., A] of the k largest entries along the last axis of metric [..., A]."""
    k = min(k, metric.shape[-1])
    _, idx = jax.lax.top_k(metric, k)  # [..., k]
    lead = metric.shape[:-1]
    flat = idx.reshape(-1, k)
    rows = jnp.arange(flat.shape[0])[:, None]
    mask = jnp.zeros((flat.shape[0], metric.shape[-1]), bool).at[rows, flat].set(True)
    return mask.reshape(*lead, metric.shape[-1])


def task_aligned_assign(pd_scores: jax.Array, pd_boxes: jax.Array, anchor_points: jax.Array,
                        gt_labels: jax.Array, gt_boxes: jax.Array, gt_mask: jax.Array, *,
                        num_classes: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                        eps: float = 1e-9, iou_fn: IouFn = ciou_overlap,
                        inside_fn: InsideFn = points_in_boxes) -> Assignment:
    """Assign gt boxes to anchors by the alignment metric score^alpha * iou^beta.

    Args:
      pd_scores: [B, A, nc] predicted class probabilities (after sigmoid).
      pd_boxes: [B, A, D] predicted boxes, in the same units as gt_boxes (pixels for the loss).
      anchor_points: [A, 2] anchor centres in those units.
      gt_labels: [B, M] int class ids (any value on padded rows).
      gt_boxes: [B, M, D]; gt_mask: [B, M] bool, True for real rows.
      iou_fn: (gt [B, M, 1, D], pred [B, 1, A, D]) -> [B, M, A]; clamped at 0 here.
      inside_fn: (points [A, 2], gt [B, M, D]) -> [B, M, A] bool.

    Per gt: candidates are anchors inside it; the topk highest-metric anchors (over all anchors)
    that are candidates become positives. An anchor positive for several gts goes to the gt with
    the highest overlap among those it lies inside. Target score = metric normalized so that each
    gt's best anchor gets that gt's best overlap. Nothing here carries gradient.
    """
    pd_scores, pd_boxes, anchor_points, gt_boxes = jax.lax.stop_gradient(
        (pd_scores, pd_boxes, anchor_points, gt_boxes))
    B, A = pd_scores.shape[:2]
    M = gt_boxes.shape[1]
    labels = jnp.clip(gt_labels.astype(jnp.int32), 0, num_classes - 1)
    if M == 0:
        return Assignment(jnp.full((B, A), num_classes, jnp.int32),
                          jnp.zeros((B, A, gt_boxes.shape[-1]), pd_boxes.dtype),
                          jnp.zeros((B, A, num_classes), pd_scores.dtype),
                          jnp.zeros((B, A), bool), jnp.zeros((B, A), jnp.int32))

    candidate = inside_fn(anchor_points, gt_boxes) & gt_mask[:, :, None]  # [B, M, A]
    overlaps = jnp.where(candidate, jnp.maximum(iou_fn(gt_boxes[:, :, None], pd_boxes[:, None]), 0.0), 0.0)
    # Score of each anchor for its gt's class, gathered without a [B, M, A, nc] array.
    scores = jnp.take_along_axis(jnp.swapaxes(pd_scores, 1, 2), labels[:, :, None], axis=1)  # [B, M, A]
    metric = jnp.where(candidate, scores ** alpha * overlaps ** beta, 0.0)

    # topk over all anchors, as Ultralytics: when a gt covers fewer than topk anchors, the rest of
    # its topk are non-candidates and the candidate mask drops them.
    mask_pos = select_topk(metric, topk) & candidate

    # An anchor claimed by several gts goes to the one it overlaps most (argmax over all gts, so it
    # may even go to a gt whose topk did not include it: Ultralytics' behaviour, kept for parity).
    n_claims = mask_pos.sum(1)  # [B, A]
    best = jnp.argmax(overlaps, axis=1)  # [B, A]
    is_best = best[:, None, :] == jnp.arange(M)[None, :, None]
    mask_pos = jnp.where((n_claims > 1)[:, None, :], is_best, mask_pos)
    fg = mask_pos.any(1)
    gt_idx = jnp.argmax(mask_pos, axis=1).astype(jnp.int32)  # [B, A]

    metric = metric * mask_pos
    pos_metric = metric.max(-1, keepdims=True)  # [B, M, 1]
    pos_overlap = (overlaps * mask_pos).max(-1, keepdims=True)
    norm = (metric * pos_overlap / (pos_metric + eps)).max(1)  # [B, A]

    t_labels = jnp.take_along_axis(labels, gt_idx, axis=1)
    t_boxes = jnp.take_along_axis(gt_boxes, gt_idx[:, :, None], axis=1)
    t_scores = jax.nn.one_hot(t_labels, num_classes, dtype=pd_scores.dtype) * (fg * norm)[:, :, None]
    return Assignment(t_labels, t_boxes, t_scores, fg, gt_idx)
