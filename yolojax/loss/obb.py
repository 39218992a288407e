"""YOLOv8-OBB loss (Ultralytics `v8OBBLoss`): BCE + ProbIoU + DFL on rotated ltrb distances, rotated TAL.

The pieces of the detection loss are reused: the task-aligned assigner with the rotated geometry injected
(`points_in_rboxes` for the candidates, ProbIoU for the alignment metric), BCE, DFL decode and DFL loss. The
angle has no loss term of its own: it enters the decoded box (`dist2rbox`), so the ProbIoU loss trains it,
and the DFL targets are the ground truth's distances measured in its own rotated frame (`rbox2dist`).
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from yolojax.eval.rotated import points_in_rboxes, probiou
from yolojax.loss.assigner import task_aligned_assign
from yolojax.loss.detection import LossConfig, assigned_cls_loss, dfl_decode, dfl_loss
from yolojax.model.modules import dist2rbox

MIN_TARGET_SIDE = 2.0  # px; Ultralytics drops thinner targets "to stabilize training"


def rbox2dist(rboxes: jax.Array, anchor_points: jax.Array, reg_max: float | None = None) -> jax.Array:
    """Rotated boxes [..., 5] (cx, cy, w, h, angle) -> (l, t, r, b) [..., 4]: the distances from each anchor
    point [..., 2] to the box's four sides, measured along the box's own axes; the inverse of `dist2rbox`.
    With `reg_max`, clamped to [0, reg_max - 0.01] (as `bbox2dist`)."""
    off = anchor_points - rboxes[..., :2]
    c, s = jnp.cos(rboxes[..., 4]), jnp.sin(rboxes[..., 4])
    u = off[..., 0] * c + off[..., 1] * s  # anchor in the box frame
    v = -off[..., 0] * s + off[..., 1] * c
    hw, hh = rboxes[..., 2] / 2, rboxes[..., 3] / 2
    dist = jnp.stack([hw + u, hh + v, hw - u, hh - v], -1)
    if reg_max is not None:
        dist = jnp.clip(dist, 0.0, reg_max - 0.01)
    return dist


def obb_loss(preds: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *, nc: int, reg_max: int = 16,
             cfg: LossConfig = LossConfig()) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv8-OBB loss for one batch, pure and jittable; the same contract as `detection_loss`.

    preds: `dist` [B, A, 4*reg_max], `logits` [B, A, nc], `angle` [B, A, 1] radians, `anchors` [A, 2] grid
      units, `strides` [A].
    batch: `obb` [B, M, 5] (cx, cy, w, h, angle) input pixels, `classes` [B, M], `mask` [B, M] (real row),
      `ignore` [B, M] (optional: an ignore region, its anchors give no negatives). Targets thinner than 2 px
      are left out, as Ultralytics does.
    Returns (loss, items): items = dict(box (1 - ProbIoU), cls, dfl) after gains, normalized by the sum of
    target scores; loss = (box + cls + dfl) * B.
    """
    if "obb" not in batch:
        raise ValueError("obb_loss: the batch has no 'obb' rows: an OBB model needs an oriented dataset "
                         "(DOTA labelTxt, or Ultralytics OBB txt `cls x1 y1 ... x4 y4`)")
    if reg_max < 2:
        raise ValueError(f"obb_loss: reg_max={reg_max}; the DFL-free head (reg_max=1) is not supported")
    dist = jnp.asarray(preds["dist"], jnp.float32)
    logits = jnp.asarray(preds["logits"], jnp.float32)
    angle = jnp.asarray(preds["angle"], jnp.float32)
    anchors = jnp.asarray(preds["anchors"], jnp.float32)
    strides = jnp.asarray(preds["strides"], jnp.float32).reshape(-1)
    B, A = logits.shape[:2]
    if logits.shape[-1] != nc:
        raise ValueError(f"obb_loss: preds['logits'] has {logits.shape[-1]} classes, nc={nc}")
    if dist.shape != (B, A, 4 * reg_max) or angle.shape != (B, A, 1):
        raise ValueError(f"obb_loss: preds['dist'] {dist.shape} / preds['angle'] {angle.shape}, expected "
                         f"{(B, A, 4 * reg_max)} / {(B, A, 1)}")
    if anchors.shape != (A, 2) or strides.shape != (A,):
        raise ValueError(f"obb_loss: anchors {anchors.shape} / strides {strides.shape} do not match A={A}")
    gt = jnp.asarray(batch["obb"], jnp.float32)
    gt_mask = jnp.asarray(batch["mask"], bool)
    if gt.ndim != 3 or gt.shape[0] != B or gt.shape[-1] != 5:
        raise ValueError(f"obb_loss: batch['obb'] shape {gt.shape}, expected ({B}, M, 5)")
    ignore = jnp.asarray(batch["ignore"], bool) & gt_mask if "ignore" in batch else jnp.zeros_like(gt_mask)
    target_mask = gt_mask & ~ignore & (gt[..., 2] >= MIN_TARGET_SIDE) & (gt[..., 3] >= MIN_TARGET_SIDE)
    # padding rows become unit boxes: finite overlaps everywhere, and the mask drops them anyway
    gt = jnp.where(gt_mask[..., None], gt, jnp.asarray([0.0, 0.0, 1.0, 1.0, 0.0]))

    pred_dist = dist.reshape(B, A, 4, reg_max)
    pred_rbox = jnp.concatenate([dist2rbox(dfl_decode(pred_dist), angle, anchors), angle], -1)  # grid units
    to_px = jnp.concatenate([jnp.broadcast_to(strides[:, None], (A, 4)), jnp.ones((A, 1))], -1)  # [A, 5]
    anchors_px = anchors * strides[:, None]

    asg = task_aligned_assign(
        jax.nn.sigmoid(logits), pred_rbox * to_px, anchors_px, batch["classes"], gt, target_mask,
        num_classes=nc, topk=cfg.topk, alpha=cfg.alpha, beta=cfg.beta, eps=cfg.eps, iou_fn=probiou,
        inside_fn=functools.partial(points_in_rboxes, min_side=cfg.small_side))
    loss_cls, target_scores_sum, weight = assigned_cls_loss(
        logits, asg, anchors_px, gt, ignore, points_in_rboxes, use_ignore="ignore" in batch)
    # off-foreground targets: a unit box on the anchor, so weight-0 terms give clean zero gradients
    unit = jnp.concatenate([anchors, jnp.ones((A, 2)), jnp.zeros((A, 1))], -1)
    target = jnp.where(asg.fg[:, :, None], asg.boxes / to_px, unit[None])
    iou = probiou(pred_rbox, target)  # [B, A]
    loss_box = ((1.0 - iou) * weight).sum() / target_scores_sum
    target_ltrb = rbox2dist(target, anchors, reg_max - 1)
    loss_dfl = (dfl_loss(pred_dist, target_ltrb) * weight).sum() / target_scores_sum

    items = dict(box=loss_box * cfg.box, cls=loss_cls * cfg.cls, dfl=loss_dfl * cfg.dfl)
    loss = (items["box"] + items["cls"] + items["dfl"]) * B
    return loss, items
