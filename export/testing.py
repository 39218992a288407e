"""Weights for testing a deployment: every layer matters.

Freshly initialised YOLOv8 weights are a poor parity test: BatchNorm's running statistics are (0, 1) and the
head biases dominate, so every anchor predicts nearly the same box and a broken layer barely shows. These
helpers give O(1) activations everywhere (as the Ultralytics reference vectors do). Pruned models for tests
come from the real pruner: `pruning.testing.random_prune` / `uniform_prune`.
"""
from __future__ import annotations

import copy
from typing import Mapping

import jax
import numpy as np

from yolojax.model.spec import Spec
from yolojax.model.yolov8 import variable_shapes


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
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(spec))
    return randomize_variables(zeros, seed)


def _to_numpy(tree):
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
