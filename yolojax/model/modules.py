"""YOLOv8 building blocks in Flax linen. Every width is an explicit field: the spec decides, not the module.

Submodules carry explicit Ultralytics-like names (`cv1`, `m_0`, `bn`): Flax's automatic names depend on call
order, which would silently break the weight mapping and the pruning paths.
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


class Bottleneck(nn.Module):
    """3x3 -> 3x3 with a residual when `shortcut` (then input and output widths must agree)."""

    hidden: int
    features: int
    shortcut: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        y = Conv(self.hidden, 3, dtype=self.dtype, name="cv1")(x, train=train)
        y = Conv(self.features, 3, dtype=self.dtype, name="cv2")(y, train=train)
        if self.shortcut:
            if x.shape[-1] != self.features:
                raise ValueError(f"residual Bottleneck needs equal widths, got {x.shape[-1]} -> {self.features}")
            return x + y
        return y


class C2f(nn.Module):
    """cv1 (1x1) split into explicit parts (a, b); Bottlenecks chained on part b; concat of all; cv2 (1x1).

    `hidden[j]`, `outs[j]` are Bottleneck j's widths. Ultralytics chunks cv1 in halves; after pruning the parts
    differ, so the split is explicit.
    """

    features: int
    split: tuple[int, int]
    hidden: Sequence[int]
    outs: Sequence[int]
    shortcut: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        a, b = self.split
        y = Conv(a + b, 1, dtype=self.dtype, name="cv1")(x, train=train)
        parts = [y[..., :a], y[..., a:]]
        for j, (h, o) in enumerate(zip(self.hidden, self.outs)):
            parts.append(Bottleneck(h, o, self.shortcut, dtype=self.dtype, name=f"m_{j}")(parts[-1], train=train))
        return Conv(self.features, 1, dtype=self.dtype, name="cv2")(jnp.concatenate(parts, -1), train=train)


def max_pool_same(x, k: int = 5):
    p = k // 2
    return nn.max_pool(x, (k, k), strides=(1, 1), padding=((p, p), (p, p)))


class SPPF(nn.Module):
    """cv1 (1x1) -> three chained 5x5 max pools -> concat of the four -> cv2 (1x1)."""

    hidden: int
    features: int
    k: int = 5
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        y = [Conv(self.hidden, 1, dtype=self.dtype, name="cv1")(x, train=train)]
        for _ in range(3):
            y.append(max_pool_same(y[-1], self.k))
        return Conv(self.features, 1, dtype=self.dtype, name="cv2")(jnp.concatenate(y, -1), train=train)


def upsample2x(x):
    """Nearest-neighbour x2 upsampling of [B,H,W,C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def head_branch(parent: nn.Module, x, prefix: str, widths: tuple[int, int], out: int, bias_init, *,
                train: bool, dtype=None):
    """Conv3x3 -> Conv3x3 -> conv1x1(+bias) created in `parent`'s scope as `{prefix}_0/_1/_2`."""
    x = Conv(widths[0], 3, dtype=dtype, parent=parent, name=f"{prefix}_0")(x, train=train)
    x = Conv(widths[1], 3, dtype=dtype, parent=parent, name=f"{prefix}_1")(x, train=train)
    return nn.Conv(out, (1, 1), use_bias=True, kernel_init=torch_conv_init, bias_init=bias_init,
                   dtype=dtype, parent=parent, name=f"{prefix}_2")(x)


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


class Detect(nn.Module):
    """Decoupled YOLOv8 head over the P3/P4/P5 features. With `obb`, a third branch predicts one angle."""

    nc: int
    reg_max: int
    box_widths: Sequence[tuple[int, int]]
    cls_widths: Sequence[tuple[int, int]]
    angle_widths: Sequence[tuple[int, int]] | None = None
    strides: Sequence[int] = (8, 16, 32)
    dtype: Any = None

    @nn.compact
    def __call__(self, feats, *, train: bool = False):
        dists, logits, angles, shapes = [], [], [], []
        for lvl, (x, s) in enumerate(zip(feats, self.strides)):
            b, h, w, _ = x.shape
            shapes.append((h, w))
            cls_bias = nn.initializers.constant(jnp.log(5.0 / self.nc / (640.0 / s) ** 2))
            d = head_branch(self, x, f"cv2_{lvl}", self.box_widths[lvl], 4 * self.reg_max,
                            nn.initializers.constant(2.0), train=train, dtype=self.dtype)
            c = head_branch(self, x, f"cv3_{lvl}", self.cls_widths[lvl], self.nc, cls_bias,
                            train=train, dtype=self.dtype)
            dists.append(d.reshape(b, h * w, -1))
            logits.append(c.reshape(b, h * w, -1))
            if self.angle_widths is not None:
                a = head_branch(self, x, f"cv4_{lvl}", self.angle_widths[lvl], 1, nn.initializers.zeros,
                                train=train, dtype=self.dtype)
                angles.append(a.reshape(b, h * w, 1))
        dist = jnp.concatenate(dists, 1).astype(jnp.float32)
        logit = jnp.concatenate(logits, 1).astype(jnp.float32)
        anchors, strides = make_anchors(shapes, self.strides)
        ltrb = dfl_decode(dist, self.reg_max)
        preds = {"dist": dist, "logits": logit, "anchors": anchors, "strides": strides,
                 "scores": jax.nn.sigmoid(logit)}
        if self.angle_widths is None:
            preds["boxes"] = dist2bbox_xywh(ltrb, anchors) * strides[:, None]
        else:
            raw = jnp.concatenate(angles, 1).astype(jnp.float32)
            angle = (jax.nn.sigmoid(raw) - 0.25) * jnp.pi
            preds["angle_raw"] = raw
            preds["angle"] = angle
            preds["boxes"] = dist2rbox(ltrb, angle, anchors) * strides[:, None]
        return preds


def dist2rbox(ltrb, angle, anchors):
    """Rotated decode (Ultralytics dist2rbox): ltrb [...,4], angle [...,1], anchors [...,2] -> (cx,cy,w,h)."""
    lt, rb = ltrb[..., :2], ltrb[..., 2:]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    xf, yf = jnp.split((rb - lt) / 2, 2, axis=-1)
    x, y = xf * cos - yf * sin, xf * sin + yf * cos
    return jnp.concatenate([jnp.concatenate([x, y], -1) + anchors, lt + rb], -1)
