"""Distillation losses: pure functions of student and teacher outputs (feature maps NHWC, head outputs).

Every function puts the teacher side under `jax.lax.stop_gradient`, so a gradient can only reach the
student (and its adapters). All values are per-image means in float32 (the trainer multiplies the sum by
the batch size, as it does the detection loss).

    cwd_loss(s, t, tau)                 channel-wise divergence (Shu et al. 2021; mmrazor ChannelWiseDivergence)
    attention_map(x), sad_loss(s, t)    spatial attention transfer (Zagoruyko & Komodakis 2017)
    anchor_weights(teacher_preds)       which anchors logit distillation looks at
    cls_kd_loss, dfl_kd_loss, angle_kd_loss, logit_kd_loss
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

SCALES = ("p3", "p4", "p5")  # a YOLOv8's Detect levels (P2 models add "p2"); models return features keyed so


def level_weights(weights: Sequence[float], n: int) -> tuple[float, ...]:
    """Per-level weights, finest level first, for a model with `n` Detect levels: a shorter tuple is extended
    with its last value ((2, 1, 1) -> (2, 1, 1, 1) for P2-P5: the finest level keeps the extra weight)."""
    w = tuple(float(v) for v in weights)
    if not w or len(w) > n:
        raise ValueError(f"expected at most {n} per-level weights (finest first), got {w}")
    return w + (w[-1],) * (n - len(w))


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _check_pair(s, t, what: str) -> None:
    if s.ndim != 4 or s.shape != t.shape:
        raise ValueError(f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must be equal [B,H,W,C] "
                         f"(map widths with adapters first)")


# -- channel-wise distillation ---------------------------------------------------------------------------
def cwd_loss(student: jax.Array, teacher: jax.Array, tau: float = 1.0) -> jax.Array:
    """Channel-wise divergence of feature maps [B,H,W,C] -> scalar.

    Each channel is turned into a distribution over its H*W positions (softmax of x / tau);
    loss = tau^2 * sum over (b, c) of KL(teacher || student) / (B * C).
    """
    _check_pair(student, teacher, "cwd_loss")
    b, h, w, c = student.shape
    s = _f32(student).reshape(b, h * w, c) / tau
    t = jax.lax.stop_gradient(_f32(teacher)).reshape(b, h * w, c) / tau
    log_pt = jax.nn.log_softmax(t, axis=1)
    log_ps = jax.nn.log_softmax(s, axis=1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=1)  # [B, C]
    return tau ** 2 * jnp.sum(kl) / (b * c)


def multi_scale(loss_fn, student: Mapping[str, jax.Array], teacher: Mapping[str, jax.Array],
                weights: Sequence[float] = (1.0,), **kw) -> tuple[jax.Array, dict]:
    """sum_k weights[k] * loss_fn(student[k], teacher[k], **kw) over the levels of `student` (finest first:
    p3, p4, p5, with p2 before them for P2 models; weights as `level_weights`) -> (total, {level: unweighted})."""
    if set(student) != set(teacher):
        raise ValueError(f"student levels {sorted(student)} but teacher levels {sorted(teacher)}")
    keys = list(student)
    weights = level_weights(weights, len(keys))
    parts = {k: loss_fn(student[k], teacher[k], **kw) for k, w in zip(keys, weights) if w}
    total = sum((w * parts[k] for k, w in zip(keys, weights) if w), jnp.zeros((), jnp.float32))
    return total, parts


# -- spatial attention ------------------------------------------------------------------------------------
def attention_map(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Spatial attention of [B,H,W,C] -> [B,H*W]: mean over channels of x^2, L2-normalized over positions."""
    b, h, w, _ = x.shape
    a = jnp.mean(jnp.square(_f32(x)), axis=-1).reshape(b, h * w)
    # sqrt(max(|a|^2, eps^2)), not max(norm(a), eps): norm's gradient at a = 0 is 0/0 = NaN even where the max
    # discards it, and a pruned student's level can be exactly 0 everywhere (all its kept gammas and betas 0)
    n2 = jnp.sum(jnp.square(a), axis=-1, keepdims=True)
    return a / jnp.sqrt(jnp.maximum(n2, eps * eps))


def sad_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """Spatial attention distillation [B,H,W,Cs], [B,H,W,Ct] -> mean((at_s - at_t)^2). Widths may differ."""
    if student.ndim != 4 or student.shape[:3] != teacher.shape[:3]:
        raise ValueError(f"sad_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         f"must share [B,H,W]")
    at_t = jax.lax.stop_gradient(attention_map(teacher))
    return jnp.mean(jnp.square(attention_map(student) - at_t))


# -- logit distillation -----------------------------------------------------------------------------------
def anchor_weights(teacher_scores: jax.Array, mode: str = "score", threshold: float = 0.25) -> jax.Array:
    """Per-anchor weights [B,A] from teacher class scores [B,A,nc].

    'score': the teacher's max class score (soft: confident anchors dominate, background fades);
    'threshold': 1 where that max exceeds `threshold`, else 0.
    """
    conf = jnp.max(jax.lax.stop_gradient(_f32(teacher_scores)), axis=-1)
    if mode == "score":
        return conf
    if mode == "threshold":
        return (conf > threshold).astype(jnp.float32)
    raise ValueError(f"anchor weight mode must be 'score' or 'threshold', got {mode!r}")


def _weighted_mean(per_anchor: jax.Array, weights: jax.Array) -> jax.Array:
    # like the detection loss's division by the target-score sum: a mean over (softly) selected anchors
    return jnp.sum(per_anchor * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _binary_kl(s_logits, t_logits):
    """Bernoulli KL(sigmoid(t) || sigmoid(s)) elementwise = BCE(s, sigmoid(t)) - H(sigmoid(t))."""
    pt = jax.nn.sigmoid(t_logits)
    return (pt * (jax.nn.log_sigmoid(t_logits) - jax.nn.log_sigmoid(s_logits))
            + (1 - pt) * (jax.nn.log_sigmoid(-t_logits) - jax.nn.log_sigmoid(-s_logits)))


def cls_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, *,
                tau: float = 1.0, mode: str = "bce") -> jax.Array:
    """Class-score distillation on logits [B,A,nc] with anchor weights [B,A] -> scalar.

    'bce': binary cross-entropy of the student logits against the teacher's sigmoid scores minus the
      teacher's entropy (same gradient as BCE, and 0 when they agree), summed over classes; logits / tau,
      times tau^2.
    'kl': KL(teacher || student) of the softmaxes over classes of logits / tau, times tau^2.
    """
    s = _f32(student_logits) / tau
    t = jax.lax.stop_gradient(_f32(teacher_logits)) / tau
    if s.shape != t.shape:
        raise ValueError(f"cls_kd_loss: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    if mode == "bce":
        per = jnp.sum(_binary_kl(s, t), axis=-1)
    elif mode == "kl":
        log_pt = jax.nn.log_softmax(t, -1)
        per = jnp.sum(jnp.exp(log_pt) * (log_pt - jax.nn.log_softmax(s, -1)), axis=-1)
    else:
        raise ValueError(f"cls_kd_loss mode must be 'bce' or 'kl', got {mode!r}")
    return tau ** 2 * _weighted_mean(per, weights)


def dfl_kd_loss(student_dist: jax.Array, teacher_dist: jax.Array, weights: jax.Array, *, reg_max: int = 16,
                tau: float = 1.0) -> jax.Array:
    """Box-distribution distillation on DFL logits [B,A,4*reg_max] (side-major) -> scalar:
    KL(teacher || student) of the per-side softmaxes over the reg_max bins, mean over the 4 sides, x tau^2."""
    b, a, n = student_dist.shape
    if n != 4 * reg_max or teacher_dist.shape != student_dist.shape:
        raise ValueError(f"dfl_kd_loss: dist shapes {tuple(student_dist.shape)} / {tuple(teacher_dist.shape)}, "
                         f"expected [B,A,{4 * reg_max}]")
    s = _f32(student_dist).reshape(b, a, 4, reg_max) / tau
    t = jax.lax.stop_gradient(_f32(teacher_dist)).reshape(b, a, 4, reg_max) / tau
    log_pt = jax.nn.log_softmax(t, -1)
    per = jnp.sum(jnp.exp(log_pt) * (log_pt - jax.nn.log_softmax(s, -1)), axis=-1).mean(-1)  # [B, A]
    return tau ** 2 * _weighted_mean(per, weights)


def angle_kd_loss(student_angle: jax.Array, teacher_angle: jax.Array, weights: jax.Array,
                  beta: float = 0.1) -> jax.Array:
    """OBB angle distillation: smooth-L1 (Huber with transition `beta` radians) of angles [B,A,1] -> scalar."""
    d = jnp.abs(_f32(student_angle) - jax.lax.stop_gradient(_f32(teacher_angle)))[..., 0]
    per = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return _weighted_mean(per, weights)


def logit_kd_loss(student: Mapping[str, jax.Array], teacher: Mapping[str, jax.Array], *, reg_max: int = 16,
                  tau: float = 1.0, cls_mode: str = "bce", weight_mode: str = "score",
                  threshold: float = 0.25) -> dict[str, jax.Array]:
    """Head distillation from the prediction dicts of YOLOv8: {'cls', 'dfl'} (+ 'angle' for obb), unweighted."""
    w = anchor_weights(teacher["scores"], weight_mode, threshold)
    out = {"cls": cls_kd_loss(student["logits"], teacher["logits"], w, tau=tau, mode=cls_mode),
           "dfl": dfl_kd_loss(student["dist"], teacher["dist"], w, reg_max=reg_max, tau=tau)}
    if "angle" in student and "angle" in teacher:
        out["angle"] = angle_kd_loss(student["angle"], teacher["angle"], w)
    return out
