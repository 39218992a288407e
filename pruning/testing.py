"""Pruned models for tests and benchmarks, made by the real pruner (`apply_masks`) from chosen masks.

`random_prune` keeps a different random count and subset of every group (C2f parts independently, so splits
become uneven): the hardest case for anything that reads a pruned spec (the ONNX emitter, TensorRT, INT8).
`uniform_prune` removes the same fraction everywhere, counts rounded to a multiple: the shape of the seed
paper's uniform 50% pruning, for latency measurements.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from yolojax.model.arch import make_divisible
from yolojax.model.spec import Spec

from .groups import build_groups
from .prune import apply_masks


def random_prune(spec: Spec, variables: Mapping, keep: float = 0.5, seed: int = 0) -> tuple[Spec, dict]:
    """Keep about `keep` of every group's channels, each group a different random count (x0.7-1.3) and
    subset; at least one channel per group. Removed channels are folded into their consumers as always."""
    rng = np.random.default_rng(seed)
    masks = {}
    for g in build_groups(spec):
        n = int(np.clip(round(g.size * keep * rng.uniform(0.7, 1.3)), 1, g.size))
        m = np.zeros(g.size, bool)
        m[rng.choice(g.size, n, replace=False)] = True
        masks[g.name] = m
    return apply_masks(spec, variables, masks)


def uniform_prune(spec: Spec, variables: Mapping, ratio: float = 0.5, multiple: int = 8) -> tuple[Spec, dict]:
    """Remove `ratio` of the channels of every group (the first ones kept), counts rounded up to `multiple`."""
    masks = {}
    for g in build_groups(spec):
        n = int(min(g.size, max(multiple, make_divisible(g.size * (1 - ratio), multiple))))
        masks[g.name] = np.arange(g.size) < n
    return apply_masks(spec, variables, masks)
