"""Distillation adapters: a 1x1 conv per scale mapping student neck widths to the teacher's.

A plain params pytree {'p3': {'kernel': [1,1,Cs,Ct], 'bias': [Ct]}, ...} (only the scales that need one).
It is trained with the student through the trainer's `aux` (leaf names give the optimizer groups: `kernel`
decays, `bias` does not) and lives only in the training state, never in a model checkpoint.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from yolojax.model.spec import Spec

from .losses import SCALES


def neck_widths(spec: Spec) -> dict[str, int]:
    """{'p3': C3, 'p4': C4, 'p5': C5} (and 'p2' for P2 models): widths of the Detect inputs, finest first."""
    g = spec.graph
    return {lv.key: g.nodes[lv.feature].channels for lv in g.levels}


def needed_scales(student: Spec, teacher: Spec, adapters: bool | None = None) -> tuple[str, ...]:
    """Scales that get an adapter: None (auto) -> where widths differ; True -> all; False -> none."""
    ws, wt = neck_widths(student), neck_widths(teacher)
    if adapters is None:
        return tuple(k for k in ws if ws[k] != wt[k])
    return tuple(ws) if adapters else ()


def init_adapters(rng: jax.Array | int, student_widths: Mapping[str, int], teacher_widths: Mapping[str, int],
                  scales: tuple[str, ...] = SCALES, bias: bool = True) -> dict:
    """Random 1x1 convs (PyTorch's default conv init: U(+-1/sqrt(Cs)), bias likewise)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    out = {}
    for k, key in zip(scales, jax.random.split(rng, max(len(scales), 1))):
        cs, ct = int(student_widths[k]), int(teacher_widths[k])
        bound = 1.0 / np.sqrt(cs)
        kk, kb = jax.random.split(key)
        out[k] = {"kernel": jax.random.uniform(kk, (1, 1, cs, ct), jnp.float32, -bound, bound)}
        if bias:
            out[k]["bias"] = jax.random.uniform(kb, (ct,), jnp.float32, -bound, bound)
    return out


def fit_adapters(student_feats: Mapping[str, jax.Array], teacher_feats: Mapping[str, jax.Array],
                 scales: tuple[str, ...] = SCALES, bias: bool = True, ridge: float = 0.1) -> dict:
    """Adapters initialised by ridge regression of teacher features on student features [B,H,W,C].

    A pruned student's channels are (up to the folded constants) a subset of the teacher's, so the fit
    starts the adapters close to the channel selection, and the distillation loss starts out measuring
    what the student lost rather than a random projection. ridge: relative to the mean diagonal of X^T X
    (0.1 generalised best from 16 images on our batches).
    """
    out = {}
    for k in scales:
        x = np.asarray(student_feats[k], np.float64).reshape(-1, student_feats[k].shape[-1])
        y = np.asarray(teacher_feats[k], np.float64).reshape(-1, teacher_feats[k].shape[-1])
        if bias:
            x = np.concatenate([x, np.ones((len(x), 1))], 1)
        gram = x.T @ x
        reg = ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
        if bias:
            reg[-1, -1] = 0.0
        w = np.linalg.solve(gram + reg, x.T @ y)
        cs = student_feats[k].shape[-1]
        out[k] = {"kernel": jnp.asarray(w[:cs].reshape(1, 1, cs, -1), jnp.float32)}
        if bias:
            out[k]["bias"] = jnp.asarray(w[cs], jnp.float32)
    return out


def apply_adapters(params: Mapping, feats: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Map student features through the adapters where present: {scale: [B,H,W,Ct]}; others pass unchanged."""
    out = dict(feats)
    for k, p in params.items():
        y = jnp.einsum("bhwc,cd->bhwd", feats[k].astype(jnp.float32), p["kernel"][0, 0])
        out[k] = y + p["bias"] if "bias" in p else y
    return out
