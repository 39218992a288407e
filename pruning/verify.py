"""Where pruning is exact: the anchors whose receptive field never sees a zero-padded border of a pruned tensor.

Folding a removed channel's constant output c into a consumer conv adds c * (sum of all kernel taps); at a
border, the unpruned conv summed only the in-image taps (the padding is 0, not c). So every 3x3 conv that
reads a pruned tensor taints a one-pixel ring, and the taint spreads: through later 3x3 convs (one pixel per
conv), strided convs, 5x5 max pools (two pixels each; their -inf padding itself is exact), upsampling,
concats and residual adds. 1x1 convs are exact everywhere. This walks the spec graph with boolean maps.

At 640 px every output of a YOLOv8 is tainted: the SPPF alone spreads the taint 6 cells at stride 32. The
interior appears at about 1024 px (P3 anchors only). With gamma = 0 and beta = 0 the constant is SiLU(0) = 0
and pruning is exact everywhere.
"""
from __future__ import annotations

import numpy as np

from yolojax.model.spec import HEAD_INPUTS, LAYERS, Spec


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
    """bool [A]: anchors (P3, P4, P5 row-major, the model's order) whose outputs constant folding leaves
    exactly unchanged for any pruning (False: a zero-padded border of a pruned tensor is in their field)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    conv = lambda t, k, s: _window_any(t, k, s, pad_value=k > 1)  # noqa: E731  padding taints 3x3 convs
    pool = lambda t: _window_any(t, 5, 1, pad_value=False)  # noqa: E731  max-pool padding is -inf: exact
    # model_0 reads the image, which no pruning touches: its padding is the unpruned model's padding too.
    t = _window_any(np.zeros((h, w), bool), 3, 2, pad_value=False)
    outs = {0: t}
    for i, kind, frm, _, _, kw in LAYERS[1:]:
        if kind == "Conv":
            t = conv(t, kw["k"], kw["s"])
        elif kind == "C2f":
            cur = t  # cv1 is 1x1: exact
            parts = [t, cur]
            for _ in range(spec.n_bottlenecks(i)):
                y = conv(conv(cur, 3, 1), 3, 1)
                cur = (cur | y) if kw["shortcut"] else y
                parts.append(cur)
            t = np.logical_or.reduce(parts)
        elif kind == "SPPF":
            y = [t]
            for _ in range(3):
                y.append(pool(y[-1]))
            t = np.logical_or.reduce(y)
        elif kind == "Upsample":
            t = np.repeat(np.repeat(t, 2, 0), 2, 1)
        elif kind == "Concat":
            t = t | outs[frm[1]]
        outs[i] = t
    # each head branch: two 3x3 Conv then a 1x1 conv
    return np.concatenate([(~conv(conv(outs[i], 3, 1), 3, 1)).reshape(-1) for i in HEAD_INPUTS])
