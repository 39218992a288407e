"""Where pruning is exact: the anchors whose receptive field never sees a zero-padded border of a pruned tensor.

Folding a removed channel's constant output c into a consumer conv adds c * (sum of all kernel taps); at a
border, the unpruned conv summed only the in-image taps (the padding is 0, not c). So every 3x3 conv that
reads a pruned tensor taints a one-pixel ring, and the taint spreads: through later 3x3 convs (one pixel per
conv), strided convs, 5x5 max pools (two pixels each; their -inf padding itself is exact), upsampling,
concats and residual adds. 1x1 convs are exact everywhere. This folds boolean maps over the spec's graph.

At 640 px every output of a YOLOv8 is tainted: the SPPF alone spreads the taint 6 cells at stride 32. The
interior appears at about 1024 px (P3 anchors only). With gamma = 0 and beta = 0 the constant is SiLU(0) = 0
and pruning is exact everywhere.
"""
from __future__ import annotations

import numpy as np

from yolojax.model.graph import Conv, Input, MaxPool, Upsample, lower
from yolojax.model.spec import Spec


def _window_any(t: np.ndarray, k: int, s: int, pad_value: bool) -> np.ndarray:
    """Any over k x k windows, stride s, symmetric padding k//2 filled with `pad_value`. t: [H, W] bool."""
    p = k // 2
    tp = np.pad(t, p, constant_values=pad_value)
    h, w = (t.shape[0] + 2 * p - k) // s + 1, (t.shape[1] + 2 * p - k) // s + 1
    out = np.zeros((h, w), bool)
    for dy in range(k):
        for dx in range(k):
            out |= tp[dy:dy + s * (h - 1) + 1:s, dx:dx + s * (w - 1) + 1:s]
    return out


def exact_anchor_mask(spec: Spec, imgsz: int | tuple[int, int]) -> np.ndarray:
    """bool [A]: anchors (levels finest first, row-major: the model's order) whose outputs constant folding
    leaves exactly unchanged for any pruning (False: a zero-padded border of a pruned tensor is in their field)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    g = lower(spec)
    taint: list[np.ndarray] = []
    for n in g.nodes:
        ins = [taint[i] for i in n.inputs]
        if isinstance(n, Input):
            t = np.zeros((h, w), bool)
        elif isinstance(n, Conv):
            # padding taints a k > 1 conv, except on the image, which no pruning touches (its padding is the
            # unpruned model's padding too)
            reads_image = isinstance(g.nodes[n.inputs[0]], Input)
            t = _window_any(ins[0], n.k, n.s, pad_value=n.k > 1 and not reads_image)
        elif isinstance(n, MaxPool):
            t = _window_any(ins[0], n.k, 1, pad_value=False)  # max-pool padding is -inf: exact
        elif isinstance(n, Upsample):
            t = np.repeat(np.repeat(ins[0], n.factor, 0), n.factor, 1)
        else:  # split, part, concat, add: any input tainted
            t = np.logical_or.reduce(ins)
        taint.append(t)
    return np.concatenate([(~np.logical_or.reduce([taint[i] for _, i in lv.outputs])).reshape(-1)
                           for lv in g.levels])
