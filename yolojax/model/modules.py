"""The primitives the Flax forward applies to the spec's graph (`graph.py`): Conv+BN+SiLU, max pooling,
upsampling, and Detect's decode (anchors, DFL, boxes). How blocks are wired is the graph's business.

Submodules carry explicit Ultralytics-like names (`conv`, `bn`): Flax's automatic names depend on call order,
which would silently break the weight mapping and the pruning paths.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.97  # PyTorch momentum 0.03
BN_EPS = 1e-3
# PyTorch's default conv init (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Conv(nn.Module):
    """Conv (no bias, symmetric pad k//2) + BatchNorm + SiLU. [B,H,W,Cin] -> [B,H/s,W/s,features]."""

    features: int
    kernel: int = 1
    stride: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        p = self.kernel // 2
        x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                    padding=((p, p), (p, p)), use_bias=False, kernel_init=torch_conv_init,
                    dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                         dtype=self.dtype, name="bn")(x)
        return nn.silu(x)


def max_pool_same(x, k: int = 5):
    p = k // 2
    return nn.max_pool(x, (k, k), strides=(1, 1), padding=((p, p), (p, p)))


def upsample2x(x):
    """Nearest-neighbour x2 upsampling of [B,H,W,C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def make_anchors(shapes: Sequence[tuple[int, int]], strides: Sequence[int], offset: float = 0.5):
    """Anchor centres in grid units [A,2] (x + offset, y + offset) and their strides [A] float32, levels in
    order (P3 first), row-major (h, w) within a level."""
    if len(shapes) != len(strides):
        raise ValueError(f"make_anchors: {len(shapes)} feature shapes but {len(strides)} strides")
    points, stride_list = [], []
    for (h, w), s in zip(shapes, strides):
        sy, sx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + offset,
                              jnp.arange(w, dtype=jnp.float32) + offset, indexing="ij")
        points.append(jnp.stack([sx, sy], -1).reshape(-1, 2))
        stride_list.append(jnp.full((h * w,), s, jnp.float32))
    return jnp.concatenate(points), jnp.concatenate(stride_list)


def dfl_decode(dist, reg_max: int):
    """Expected distance per side: softmax over bins, then E[bin]. [...,4*reg_max] -> [...,4] (l,t,r,b)."""
    d = dist.reshape(*dist.shape[:-1], 4, reg_max)
    return jnp.sum(jax.nn.softmax(d, axis=-1) * jnp.arange(reg_max, dtype=d.dtype), axis=-1)


def dist2bbox_xywh(ltrb, anchors):
    """ltrb distances [...,4] around anchor points [...,2] -> boxes (cx, cy, w, h)."""
    lt, rb = ltrb[..., :2], ltrb[..., 2:]
    x1y1, x2y2 = anchors - lt, anchors + rb
    return jnp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)


def dist2rbox(ltrb, angle, anchors):
    """Rotated decode (Ultralytics dist2rbox): ltrb [...,4], angle [...,1], anchors [...,2] -> (cx,cy,w,h)."""
    lt, rb = ltrb[..., :2], ltrb[..., 2:]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    xf, yf = jnp.split((rb - lt) / 2, 2, axis=-1)
    x, y = xf * cos - yf * sin, xf * sin + yf * cos
    return jnp.concatenate([jnp.concatenate([x, y], -1) + anchors, lt + rb], -1)


def decode_head(dists, logits, angles, shapes, strides, reg_max: int) -> dict:
    """Detect's decode of the raw per-level branch outputs ([B,h,w,C] each, finest level first) into the
    model's predictions: DFL, anchors, boxes in input pixels, sigmoid scores (and the OBB angle)."""
    def flat(ys):
        return jnp.concatenate([y.reshape(y.shape[0], -1, y.shape[-1]) for y in ys], 1).astype(jnp.float32)

    dist, logit = flat(dists), flat(logits)
    anchors, stride = make_anchors(shapes, strides)
    ltrb = dfl_decode(dist, reg_max)
    preds = {"dist": dist, "logits": logit, "anchors": anchors, "strides": stride, "scores": jax.nn.sigmoid(logit)}
    if not angles:
        preds["boxes"] = dist2bbox_xywh(ltrb, anchors) * stride[:, None]
    else:
        raw = flat(angles)
        angle = (jax.nn.sigmoid(raw) - 0.25) * jnp.pi
        preds["angle_raw"] = raw
        preds["angle"] = angle
        preds["boxes"] = dist2rbox(ltrb, angle, anchors) * stride[:, None]
    return preds
