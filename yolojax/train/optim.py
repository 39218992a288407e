"""Optimizer: Ultralytics' three parameter groups, warmup and linear decay as optax schedules.

Groups (as Ultralytics): conv/linear kernels (weight decay), BN scales (no decay), all biases incl. BN betas
(no decay, warmup lr starting from warmup_bias_lr). Chain: [accumulate] -> clip_by_global_norm(10) ->
[extra transforms on the gradient, e.g. BN-L1 sparsity's gradient form, which must come after clipping so
clipping cannot swallow it] -> per-group SGD(Nesterov)/AdamW -> [post-update transforms that need the
learning rate, e.g. BN-L1's proximal form].
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .config import TrainConfig


def param_labels(params: Any) -> Any:
    """'decay' for kernels, 'bn' for BN scales, 'bias' for biases (BN betas included)."""
    def label(path, _):
        keys = [getattr(k, "key", str(k)) for k in path]
        if keys[-1] == "bias":
            return "bias"
        if keys[-1] == "scale":
            return "bn"
        return "decay"
    return jax.tree_util.tree_map_with_path(label, params)


def make_schedules(cfg: TrainConfig, updates_per_epoch: int, lr0: float, momentum: float, xp=jnp):
    """lr(count) per group and momentum(count), count = optimizer updates done. xp: jax.numpy for the optimizer
    (traced inside the step), numpy for the host's logs (no device round trip)."""
    upe = max(int(updates_per_epoch), 1)
    warmup = max(round(cfg.warmup_epochs * upe), min(100, upe * cfg.epochs)) if cfg.warmup_epochs > 0 else 0

    def lf(count):
        epoch = xp.minimum(count // upe, cfg.epochs - 1).astype(xp.float32)
        return (1 - epoch / cfg.epochs) * (1.0 - cfg.lrf) + cfg.lrf

    def lr(start):
        def schedule(count):
            target = lr0 * lf(count)
            if warmup == 0:
                return target
            frac = xp.clip(count / warmup, 0.0, 1.0)
            return xp.where(count < warmup, start + (target - start) * frac, target)
        return schedule

    def mom(count):
        if warmup == 0:
            return xp.asarray(momentum, xp.float32)
        frac = xp.clip(count / warmup, 0.0, 1.0)
        return xp.where(count < warmup, cfg.warmup_momentum + (momentum - cfg.warmup_momentum) * frac, momentum)

    return {"decay": lr(0.0), "bn": lr(0.0), "bias": lr(cfg.warmup_bias_lr)}, mom, warmup


def build_optimizer(cfg: TrainConfig, params: Any, *, steps_per_epoch: int, nc: int,
                    extra: optax.GradientTransformation | Callable | None = None
                    ) -> tuple[optax.GradientTransformation, dict]:
    """The full optax chain and a dict of schedules for logging ({'lr': fn, 'momentum': fn, ...}).

    extra: a GradientTransformation acts on the clipped gradient before the optimizer; a callable
    `lr_schedule -> GradientTransformation` is built with the BN group's learning-rate schedule (a function of
    the optimizer update count) and chained after the optimizer (a proximal step on its update).
    """
    name, lr0, momentum = cfg.resolve_optimizer(steps_per_epoch, nc)
    k = cfg.accumulate()
    updates_per_epoch = max(steps_per_epoch // k, 1)
    if name == "adamw" and cfg.warmup_bias_lr > 0.01:
        # as Ultralytics: a 0.1 bias lr is an SGD habit that makes Adam diverge in warmup
        cfg = dataclasses.replace(cfg, warmup_bias_lr=0.0)
    lrs, mom, warmup = make_schedules(cfg, updates_per_epoch, lr0, momentum)
    wd = cfg.scaled_weight_decay()

    def group(label: str) -> optax.GradientTransformation:
        decay = wd if label == "decay" else 0.0
        if name == "sgd":
            sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=lrs[label], momentum=mom, nesterov=True)
            # PyTorch SGD adds weight decay to the gradient before momentum
            return optax.chain(optax.add_decayed_weights(decay), sgd) if decay else sgd
        if name == "adamw":
            return optax.inject_hyperparams(optax.adamw)(learning_rate=lrs[label], b1=momentum, b2=0.999,
                                                         eps=1e-8, weight_decay=decay)
        raise ValueError(f"unknown optimizer {name!r}; expected sgd, adamw or auto")

    post = extra if callable(extra) else None
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    if extra is not None and post is None:
        parts.append(extra)
    parts.append(optax.multi_transform({g: group(g) for g in ("decay", "bn", "bias")}, param_labels))
    if post is not None:
        parts.append(post(lrs["bn"]))
    tx = optax.chain(*parts)
    if k > 1:
        # Ultralytics sums the gradients of `accumulate` batches (loss x batch size each) before a step
        tx = optax.MultiSteps(tx, every_k_schedule=k, use_grad_mean=False)
    info = {"optimizer": name, "lr0": lr0, "momentum": momentum, "accumulate": k, "warmup_updates": warmup,
            "weight_decay": wd, "updates_per_epoch": updates_per_epoch, "lr": lrs["decay"], "lr_bias": lrs["bias"],
            "momentum_fn": mom,
            "lr_host": make_schedules(cfg, updates_per_epoch, lr0, momentum, xp=np)[0]["decay"]}
    return tx, info


def optimizer_count(opt_state: Any, accumulate: int) -> jax.Array:
    """Optimizer updates applied so far (for logging lr)."""
    if accumulate > 1:
        return opt_state.gradient_step
    return _find_count(opt_state)


def _find_count(tree) -> jax.Array:
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if getattr(leaf_path[-1], "name", None) == "count":
            return leaf
    return jnp.zeros((), jnp.int32)


def ema_decay_fn(cfg: TrainConfig) -> Callable:
    return lambda updates: cfg.ema_decay * (1 - jnp.exp(-updates / cfg.ema_tau))
