"""Sparsity training (network slimming): an L1 penalty on BatchNorm scales, as an Optax transformation.

`bn_l1` adds lambda(t) * sign(gamma) to the gradient of every BN scale (leaves named `scale` under a module
named `bn`), and optionally beta_rate(t) * sign(beta) to BN biases. Chain it AFTER gradient clipping and
BEFORE the optimizer's momentum/learning-rate scaling:

    tx = optax.chain(optax.clip_by_global_norm(10.0), bn_l1(1e-4, schedule="decay", total_steps=N),
                     optax.sgd(lr, momentum=0.937, nesterov=True))       # == with_sparsity(clip, sgd, l1)

Before clipping, the penalty would count in the global norm and be scaled down with the loss gradient whenever
clipping triggers (early training, loss spikes), i.e. swallowed exactly when it matters. The transform is
elementwise (plus one reduction for the dynamic schedule), so it works unchanged under data-parallel
sharding and inside `jax.jit`.

Schedules (progress = step / total_steps, clipped to [0, 1]):
    constant  lambda(t) = rate
    decay     lambda(t) = rate * (1 - 0.9 * progress)      (the seed paper's recipe, per step)
    dynamic   lambda rises while the share of |gamma| < threshold is below target_sparsity and falls once
              the target is reached: lambda <- lambda * exp(adapt * (target - share) / target), kept within
              [rate * min_scale, rate * max_scale]; the YOLOv4-era "dynamic sparsity" idea.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "decay", "dynamic")


class BNL1State(NamedTuple):
    count: jax.Array       # int32 step counter
    rate: jax.Array        # float32 lambda used at the last update (the dynamic schedule's controller state)
    sparsity: jax.Array    # float32 share of |gamma| < threshold seen at the last update


def _key(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def is_bn_scale(path) -> bool:
    keys = [_key(k) for k in path]
    return len(keys) >= 2 and keys[-1] == "scale" and keys[-2] == "bn"


def is_bn_bias(path) -> bool:
    keys = [_key(k) for k in path]
    return len(keys) >= 2 and keys[-1] == "bias" and keys[-2] == "bn"


def bn_scales(params) -> list[jax.Array]:
    """Every BN scale leaf of a parameter tree."""
    return [l for p, l in jax.tree_util.tree_flatten_with_path(params)[0] if is_bn_scale(p)]


def sparse_fraction(params, threshold: float) -> jax.Array:
    """Share of BN scales with |gamma| < threshold (jittable)."""
    scales = bn_scales(params)
    below = sum(jnp.sum(jnp.abs(s) < threshold) for s in scales)
    return below.astype(jnp.float32) / max(sum(s.size for s in scales), 1)


def bn_l1(rate: float, *, schedule: str = "constant", total_steps: int | None = None, beta_rate: float = 0.0,
          target_sparsity: float = 0.5, threshold: float = 1e-2, adapt: float = 1e-3,
          min_scale: float = 0.1, max_scale: float = 10.0,
          scale_mask: Callable[[Any], bool] = is_bn_scale,
          bias_mask: Callable[[Any], bool] = is_bn_bias) -> optax.GradientTransformation:
    """L1 on BN scales (network slimming) as a GradientTransformation whose `update` needs `params`.

    rate: lambda at step 0 (1e-4 is the common YOLOv8 setting). beta_rate: L1 on BN biases at
    beta_rate * lambda(t) / rate (0 disables). total_steps: needed by 'decay'. target_sparsity, threshold,
    adapt, min_scale, max_scale: the 'dynamic' controller (see module doc). The masks take a key path.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "decay" and not total_steps:
        raise ValueError("schedule='decay' needs total_steps")
    if rate < 0 or beta_rate < 0:
        raise ValueError(f"rates must be >= 0, got rate={rate}, beta_rate={beta_rate}")
    if schedule == "dynamic" and not 0.0 < target_sparsity <= 1.0:
        raise ValueError(f"target_sparsity must be in (0, 1], got {target_sparsity}")

    def init(params):
        del params
        return BNL1State(jnp.zeros((), jnp.int32), jnp.asarray(rate, jnp.float32), jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("bn_l1 needs params: call tx.update(grads, opt_state, params)")
        share = sparse_fraction(params, threshold)
        if schedule == "constant":
            lam = jnp.asarray(rate, jnp.float32)
        elif schedule == "decay":
            progress = jnp.clip(state.count / total_steps, 0.0, 1.0)
            lam = rate * (1.0 - 0.9 * progress)
        else:
            lam = state.rate * jnp.exp(adapt * (target_sparsity - share) / target_sparsity)
            lam = jnp.clip(lam, rate * min_scale, rate * max_scale)
        lam = lam.astype(jnp.float32)
        lam_beta = lam * (beta_rate / rate) if rate > 0 else jnp.asarray(beta_rate, jnp.float32)

        def add(path, g, p):
            if scale_mask(path):
                return g + (lam * jnp.sign(p)).astype(g.dtype)
            if beta_rate > 0 and bias_mask(path):
                return g + (lam_beta * jnp.sign(p)).astype(g.dtype)
            return g

        new = jax.tree_util.tree_map_with_path(add, updates, params)
        return new, BNL1State(optax.safe_increment(state.count), lam, share)

    return optax.GradientTransformation(init, update)


def with_sparsity(tx_clip: optax.GradientTransformation, base_tx: optax.GradientTransformation,
                  sparsity_tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """clip -> sparsity -> optimizer: the only order in which clipping cannot swallow the penalty."""
    return optax.chain(tx_clip, sparsity_tx, base_tx)


def find_state(opt_state) -> BNL1State | None:
    """The BNL1State inside an (arbitrarily chained) optimizer state, or None."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, BNL1State))
             if isinstance(s, BNL1State)]
    return found[0] if found else None


def gamma_stats(params, opt_state=None) -> dict[str, float]:
    """Host-side summary of BN scales for logging.

    Keys: frac_lt_1e-3, frac_lt_1e-2, frac_lt_1e-1 (share of |gamma| below), mean_abs, median_abs, count;
    plus lambda and sparsity (the transform's last lambda and observed share) when `opt_state` holds a
    BNL1State.
    """
    g = np.abs(np.concatenate([np.asarray(jax.device_get(s), np.float64).reshape(-1) for s in bn_scales(params)]))
    out = {f"frac_lt_{t}": float(np.mean(g < float(t))) for t in ("1e-3", "1e-2", "1e-1")}
    out.update(mean_abs=float(g.mean()), median_abs=float(np.median(g)), count=int(g.size))
    st = find_state(opt_state) if opt_state is not None else None
    if st is not None:
        out["lambda"] = float(jax.device_get(st.rate))
        out["sparsity"] = float(jax.device_get(st.sparsity))
    return out


def gamma_histogram_plot(params_before, params_after, path: str | Path, *, title: str = "BN |gamma|") -> Path:
    """Histogram (log-spaced bins) of |gamma| before and after sparsity training, saved to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def absg(p):
        return np.abs(np.concatenate([np.asarray(jax.device_get(s)).reshape(-1) for s in bn_scales(p)]))

    before, after = absg(params_before), absg(params_after)
    lo = max(min(before.min(), after.min()), 1e-6)
    hi = max(before.max(), after.max(), lo * 10)
    bins = np.logspace(np.log10(lo), np.log10(hi), 60)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for arr, label in ((before, "before"), (after, "after")):
        ax.hist(np.clip(arr, lo, None), bins=bins, alpha=0.55,
                label=f"{label} (n={arr.size}, {np.mean(arr < 1e-2):.1%} < 1e-2)")
    ax.set_xscale("log")
    ax.set_xlabel("|gamma| (values below the first bin are counted in it)")
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


class SparsityMonitor:
    """Trainer epoch hook for sparsity training: gamma statistics into the epoch logs (and so TensorBoard and
    results.csv), a TensorBoard histogram of |gamma| per epoch, and `gamma_hist.png` (first epoch's start vs
    now) in the run directory.

    Use: `Trainer(..., extra_tx=bn_l1(...), epoch_hooks=(SparsityMonitor(initial_params),))`.
    """

    def __init__(self, initial_params=None):
        self.initial = None if initial_params is None else jax.device_get(initial_params)

    def __call__(self, trainer, epoch: int, logs: dict) -> None:
        params = jax.device_get(trainer.state.params)
        if self.initial is None:
            self.initial = params
        stats = gamma_stats(params, jax.device_get(trainer.state.opt_state))
        logs.update({f"sparsity/{k}": float(v) for k, v in stats.items() if k != "count"})
        writer = getattr(trainer, "writer", None)
        if writer is not None:
            g = np.abs(np.concatenate([np.asarray(s).reshape(-1) for s in bn_scales(params)]))
            writer.add_histogram("sparsity/abs_gamma", g, epoch + 1)
            gamma_histogram_plot(self.initial, params, Path(trainer.rundir) / "gamma_hist.png",
                                 title=f"BN |gamma|: start vs epoch {epoch + 1}")
