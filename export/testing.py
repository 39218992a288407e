"""Models for testing a deployment: weights that make every layer matter, and channel-sliced (pruned) specs.

Freshly initialised YOLOv8 weights are a poor parity test: BatchNorm's running statistics are (0, 1) and the
head biases dominate, so every anchor predicts nearly the same box and a broken layer barely shows. These
helpers give O(1) activations everywhere (as the Ultralytics reference vectors do) and pruned specs with
uneven widths and C2f splits, without depending on the pruning package: channels are sliced consistently
through residuals, concats, SPPF and the head, so the result is a valid (spec, variables) pair.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import numpy as np

from yolojax.model.spec import DETECT, HEAD_INPUTS, LAYERS, STRIDES, Spec, make_divisible


def randomize_variables(variables: Mapping, seed: int = 0) -> dict:
    """Same tree with random conv weights (std 1/sqrt(fan_in)), BN statistics and head biases: O(1) activations
    whose outputs (boxes, scores) differ from anchor to anchor."""
    rng = np.random.default_rng(seed)
    params = copy.deepcopy(_to_numpy(variables["params"]))
    stats = copy.deepcopy(_to_numpy(variables["batch_stats"]))

    def visit(p: dict, s: dict | None):
        for k, v in p.items():
            if not isinstance(v, dict):
                continue
            if "conv" in v and "bn" in v:  # Conv + BN
                kern = v["conv"]["kernel"]
                fan_in = int(np.prod(kern.shape[:3]))
                v["conv"]["kernel"] = rng.normal(0, 1 / np.sqrt(fan_in), kern.shape).astype(np.float32)
                c = kern.shape[-1]
                v["bn"]["scale"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
                v["bn"]["bias"] = rng.normal(0, 0.5, c).astype(np.float32)
                s[k]["bn"]["mean"] = rng.normal(0, 0.3, c).astype(np.float32)
                s[k]["bn"]["var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
            elif "kernel" in v and "bias" in v:  # head final conv (bias, no BN)
                fan_in = int(np.prod(v["kernel"].shape[:3]))
                v["kernel"] = rng.normal(0, 1 / np.sqrt(fan_in), v["kernel"].shape).astype(np.float32)
                v["bias"] = rng.normal(0, 1.0, v["bias"].shape).astype(np.float32)
            else:
                visit(v, s.get(k) if s is not None else None)

    visit(params, stats)
    return {"params": params, "batch_stats": stats}


def random_variables(spec: Spec, seed: int = 0) -> dict:
    """`randomize_variables` on the shapes of `spec`, without running Flax's init (no compilation)."""
    import jax
    from yolojax.model.yolov8 import variable_shapes
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(spec))
    return randomize_variables(zeros, seed)


def _to_numpy(tree):
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def _get(tree: dict, path: str) -> dict:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def slice_channels(spec: Spec, variables: Mapping, choose: Callable[[str, int], np.ndarray],
                   choose_split: Callable[[str, int, int], tuple[np.ndarray, np.ndarray]]) -> tuple[Spec, dict]:
    """Keep the output channels `choose(path, width)` (sorted indices) of every prunable conv and slice every
    consumer's inputs to match. `choose_split(layer, a, b)` picks the kept channels of each C2f cv1 part (indices
    within the part). Residual Bottleneck outputs follow their C2f's part b; head final convs keep all outputs.
    Returns (pruned spec, sliced variables)."""
    params = copy.deepcopy(_to_numpy(variables["params"]))
    stats = copy.deepcopy(_to_numpy(variables["batch_stats"]))
    widths, splits = dict(spec.widths), dict(spec.splits)

    def conv(path: str, in_idx: np.ndarray, out_idx: np.ndarray | None, bn: bool = True) -> np.ndarray:
        p = _get(params, path)
        if bn:
            kern = p["conv"]["kernel"]
            out_idx = np.arange(kern.shape[-1]) if out_idx is None else out_idx
            p["conv"]["kernel"] = kern[:, :, in_idx][..., out_idx]
            for k in ("scale", "bias"):
                p["bn"][k] = p["bn"][k][out_idx]
            s = _get(stats, path)
            for k in ("mean", "var"):
                s["bn"][k] = s["bn"][k][out_idx]
            widths[path] = len(out_idx)
        else:
            p["kernel"] = p["kernel"][:, :, in_idx]
        return out_idx

    def pick(path: str) -> np.ndarray:
        idx = np.sort(np.asarray(choose(path, spec.width(path)), dtype=np.int64))
        if len(idx) < 1 or len(np.unique(idx)) != len(idx) or idx[-1] >= spec.width(path):
            raise ValueError(f"{path}: bad kept channels {idx}")
        return idx

    # a tensor = (kept indices in the unpruned numbering, unpruned width)
    x = (np.arange(3), 3)
    outs: dict[int, tuple[np.ndarray, int]] = {}
    for i, kind, frm, _, _, kw in LAYERS:
        p = f"model_{i}"
        if kind == "Conv":
            x = (conv(p, x[0], pick(p)), spec.width(p))
        elif kind == "C2f":
            a, b = spec.split(p)
            ka, kb = choose_split(p, a, b)
            ka, kb = np.sort(np.asarray(ka, np.int64)), np.sort(np.asarray(kb, np.int64))
            conv(f"{p}/cv1", x[0], np.concatenate([ka, kb + a]))
            splits[p] = (len(ka), len(kb))
            parts = [(ka, a), (kb, b)]
            for j in range(spec.n_bottlenecks(i)):
                h = conv(f"{p}/m_{j}/cv1", parts[-1][0], pick(f"{p}/m_{j}/cv1"))
                o = kb if kw["shortcut"] else pick(f"{p}/m_{j}/cv2")
                conv(f"{p}/m_{j}/cv2", h, o)
                parts.append((o, spec.width(f"{p}/m_{j}/cv2")))
            x = (conv(f"{p}/cv2", _concat(parts)[0], pick(f"{p}/cv2")), spec.width(f"{p}/cv2"))
        elif kind == "SPPF":
            k = conv(f"{p}/cv1", x[0], pick(f"{p}/cv1"))
            c = spec.width(f"{p}/cv1")
            x = (conv(f"{p}/cv2", _concat([(k, c)] * 4)[0], pick(f"{p}/cv2")), spec.width(f"{p}/cv2"))
        elif kind == "Concat":
            x = _concat([x, outs[frm[1]]])
        outs[i] = x
    d = f"model_{DETECT}"
    branches = ("cv2", "cv3") + (("cv4",) if spec.task == "obb" else ())
    for lvl, src in enumerate(HEAD_INPUTS):
        for br in branches:
            h0 = conv(f"{d}/{br}_{lvl}_0", outs[src][0], pick(f"{d}/{br}_{lvl}_0"))
            h1 = conv(f"{d}/{br}_{lvl}_1", h0, pick(f"{d}/{br}_{lvl}_1"))
            conv(f"{d}/{br}_{lvl}_2", h1, None, bn=False)
    assert len(HEAD_INPUTS) == len(STRIDES)
    new = spec.replace(widths=widths, splits=splits)
    return new, {"params": params, "batch_stats": stats}


def _concat(parts):
    idx, off = [], 0
    for k, w in parts:
        idx.append(k + off)
        off += w
    return np.concatenate(idx), off


def random_prune(spec: Spec, variables: Mapping, keep: float = 0.5, seed: int = 0) -> tuple[Spec, dict]:
    """Keep about `keep` of every layer's channels, each layer a different random count and subset (C2f parts
    pruned independently, so splits become uneven). At least one channel per layer."""
    rng = np.random.default_rng(seed)

    def count(w: int) -> int:
        return int(np.clip(round(w * keep * rng.uniform(0.7, 1.3)), 1, w))

    def choose(path, w):
        return rng.choice(w, count(w), replace=False)

    def choose_split(layer, a, b):
        return rng.choice(a, count(a), replace=False), rng.choice(b, count(b), replace=False)

    return slice_channels(spec, variables, choose, choose_split)


def uniform_prune(spec: Spec, variables: Mapping, ratio: float = 0.5, multiple: int = 8) -> tuple[Spec, dict]:
    """Remove `ratio` of the channels of every layer (the first ones kept), counts rounded up to `multiple`:
    the shape of the seed paper's uniform 50% pruning, for latency measurements."""
    def count(w: int) -> int:
        return int(min(w, max(multiple, make_divisible(w * (1 - ratio), multiple))))

    return slice_channels(spec, variables, lambda p, w: np.arange(count(w)),
                          lambda layer, a, b: (np.arange(count(a)), np.arange(count(b))))
