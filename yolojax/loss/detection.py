"""YOLOv8 detection loss (Ultralytics `v8DetectionLoss`): BCE + CIoU + DFL with task-aligned targets."""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from yolojax.loss.assigner import task_aligned_assign
from yolojax.loss.boxes import bbox2dist, bbox_iou, dist2bbox, points_in_boxes


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Gains and assigner settings (Ultralytics defaults).

    small_side: for the anchor-in-box test only, gt sides shorter than this many pixels are widened
      to it about the centre (Ultralytics >= 8.4 uses its second stride, 16), so that tiny objects
      (most of VisDrone) still own anchors. 0 gives the pre-8.4 behaviour.
    """
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    eps: float = 1e-9
    small_side: float = 16.0


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy on logits (PyTorch's stable form), same shape as inputs."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def dfl_decode(pred_dist: jax.Array) -> jax.Array:
    """Expected distance per side: softmax over bins dotted with 0..reg_max-1. [..., 4, R] -> [..., 4]."""
    reg_max = pred_dist.shape[-1]
    return jax.nn.softmax(pred_dist, axis=-1) @ jnp.arange(reg_max, dtype=pred_dist.dtype)


def dfl_loss(pred_dist: jax.Array, target: jax.Array) -> jax.Array:
    """Distribution focal loss, mean over the 4 sides: logits [..., 4, R], distances [..., 4] -> [...].

    Each target t (grid units) is clamped to [0, R - 1 - 0.01] and split between its two
    neighbouring bins: floor(t) gets weight floor(t) + 1 - t, floor(t) + 1 gets the rest
    (t = 3.3 -> 0.7 on bin 3, 0.3 on bin 4); the loss is the cross-entropy against that split.
    """
    reg_max = pred_dist.shape[-1]
    target = jnp.clip(target, 0.0, reg_max - 1 - 0.01)
    left = jnp.floor(target).astype(jnp.int32)
    w_left = left + 1 - target
    logp = jax.nn.log_softmax(pred_dist, axis=-1)
    lp_left = jnp.take_along_axis(logp, left[..., None], axis=-1)[..., 0]
    lp_right = jnp.take_along_axis(logp, left[..., None] + 1, axis=-1)[..., 0]
    return -(lp_left * w_left + lp_right * (1 - w_left)).mean(-1)


def assigned_cls_loss(logits, asg, anchors_px, gt_boxes, ignore, inside_fn, *, use_ignore: bool):
    """BCE against the assigned target scores over sum(target scores) (Ultralytics); anchors whose centre lies in
    an ignore region and that are not foreground give no negatives. Shared by the detection and OBB losses.

    Returns (cls loss, target_scores_sum, per-anchor box/DFL weight [B, A]).
    """
    target_scores_sum = jnp.maximum(asg.scores.sum(), 1.0)
    bce = bce_with_logits(logits, asg.scores)
    if use_ignore and gt_boxes.shape[1] > 0:
        in_ignore = (inside_fn(anchors_px, gt_boxes) & ignore[:, :, None]).any(1)  # [B, A]
        bce = bce * (~in_ignore | asg.fg)[:, :, None]
    return bce.sum() / target_scores_sum, target_scores_sum, asg.scores.sum(-1) * asg.fg


def detection_loss(preds: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *, nc: int,
                   reg_max: int = 16, cfg: LossConfig = LossConfig()
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv8 loss for one batch, pure and jittable.

    preds: `dist` [B, A, 4*reg_max] DFL logits (channel = side*reg_max + bin, sides l, t, r, b),
      `logits` [B, A, nc], `anchors` [A, 2] grid units, `strides` [A].
    batch: `boxes` [B, M, 4] xyxy input pixels, `classes` [B, M] int, `mask` [B, M] bool (real
      row), `ignore` [B, M] bool (optional; an ignore region: never a positive, and anchors whose
      centre lies in it are not negatives, i.e. their BCE terms are dropped unless foreground).
    Returns (loss, items): items = dict(box, cls, dfl) after gains, each normalized by the sum of
    target scores; loss = (box + cls + dfl) * B, what Ultralytics backpropagates.
    """
    if reg_max < 2:
        raise ValueError(f"detection_loss: reg_max={reg_max}; the DFL-free head (reg_max=1) is not supported")
    dist = jnp.asarray(preds["dist"], jnp.float32)
    logits = jnp.asarray(preds["logits"], jnp.float32)
    anchors = jnp.asarray(preds["anchors"], jnp.float32)
    strides = jnp.asarray(preds["strides"], jnp.float32).reshape(-1)
    B, A = logits.shape[:2]
    if logits.shape[-1] != nc:
        raise ValueError(f"detection_loss: preds['logits'] has {logits.shape[-1]} classes, nc={nc}")
    if dist.shape != (B, A, 4 * reg_max):
        raise ValueError(f"detection_loss: preds['dist'] shape {dist.shape}, expected {(B, A, 4 * reg_max)}")
    if anchors.shape != (A, 2) or strides.shape != (A,):
        raise ValueError(f"detection_loss: anchors {anchors.shape} / strides {strides.shape} do not match A={A}")
    gt_boxes = jnp.asarray(batch["boxes"], jnp.float32)
    gt_mask = jnp.asarray(batch["mask"], bool)
    ignore = jnp.asarray(batch["ignore"], bool) & gt_mask if "ignore" in batch else jnp.zeros_like(gt_mask)
    if gt_boxes.shape[:1] != (B,) or gt_boxes.shape[-1] != 4:
        raise ValueError(f"detection_loss: batch['boxes'] shape {gt_boxes.shape}, expected ({B}, M, 4)")

    pred_dist = dist.reshape(B, A, 4, reg_max)
    pred_boxes = dist2bbox(dfl_decode(pred_dist), anchors, xywh=False)  # grid units
    stride2 = strides[:, None]
    anchors_px = anchors * stride2

    asg = task_aligned_assign(
        jax.nn.sigmoid(logits), pred_boxes * stride2, anchors_px,
        batch["classes"], gt_boxes, gt_mask & ~ignore,
        num_classes=nc, topk=cfg.topk, alpha=cfg.alpha, beta=cfg.beta, eps=cfg.eps,
        inside_fn=functools.partial(points_in_boxes, min_side=cfg.small_side))
    loss_cls, target_scores_sum, weight = assigned_cls_loss(
        logits, asg, anchors_px, gt_boxes, ignore, points_in_boxes, use_ignore="ignore" in batch)
    # Off-foreground targets are arbitrary gt rows (possibly zero padding): swap in a unit box
    # around the anchor so that weight-0 terms stay finite and give clean zero gradients.
    unit = jnp.concatenate([anchors - 0.5, anchors + 0.5], -1)
    target_boxes = jnp.where(asg.fg[:, :, None], asg.boxes / stride2, unit[None])
    iou = bbox_iou(pred_boxes, target_boxes, ciou=True)  # [B, A]
    loss_box = ((1.0 - iou) * weight).sum() / target_scores_sum
    target_ltrb = bbox2dist(anchors, target_boxes, reg_max - 1)
    loss_dfl = (dfl_loss(pred_dist, target_ltrb) * weight).sum() / target_scores_sum

    items = dict(box=loss_box * cfg.box, cls=loss_cls * cfg.cls, dfl=loss_dfl * cfg.dfl)
    loss = (items["box"] + items["cls"] + items["dfl"]) * B
    return loss, items
