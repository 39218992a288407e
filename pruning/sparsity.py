"""Sparsity training (network slimming): an L1 penalty on BatchNorm scales, as an Optax transformation.

Two forms of the same penalty lambda(t) * sum |gamma| (and optionally on BN betas):

prox (default)  a proximal step AFTER the optimizer's update, scaled by the current learning rate and
                decoupled from the optimizer the way AdamW decouples weight decay:
                    gamma <- sign(gamma) * max(|gamma| - lr_t * lambda_t, 0)
                It produces exact zeros, and a zero stays zero while the data gradient's step is smaller than
                lr_t * lambda_t. The shrink per step is lr_t * lambda_t under SGD, Adam and AdamW alike.

                    tx = optax.chain(optax.clip_by_global_norm(10.0), optimizer,
                                     bn_l1(1.0, mode="prox", learning_rate=lr_schedule))

grad            the seed's form: lambda(t) * sign(gamma) added to the gradient BEFORE the optimizer (after
                clipping, so clipping cannot swallow it). Under SGD the shrink is lr * lambda, as intended.
                Under Adam/AdamW it is not an L1 penalty at all: the second-moment normalisation divides the
                penalty by the gradient's RMS, so with no data gradient every gamma moves by lr per step
                whatever lambda is (measured: lambda 1e-5, 1e-3 and 1e-1 all shrink a gamma by 0.0200 in 10
                steps at lr 0.002), and with a data gradient lambda's weight depends on that gradient's scale.

                    tx = optax.chain(optax.clip_by_global_norm(10.0), bn_l1(1e-4, mode="grad"), sgd)

The transform is elementwise plus one reduction (the dynamic schedule's share), so it works unchanged under
data-parallel sharding and inside `jax.jit`.

Schedules (progress = step / total_steps, clipped to [0, 1]):
    constant  lambda(t) = rate
    decay     lambda(t) = rate * (1 - 0.9 * progress)      (the seed paper's recipe, per step)
    dynamic   drives the share of |gamma| < threshold to `target_sparsity`.
              prox (with total_steps): the L1 threshold of each update is set so that the target quantile
              of |gamma| (the gamma below which `target_sparsity` of them lie) follows a path from its value
              at step 0 down to exactly 0, falling in proportion to the learning rate spent, over the first
              `ramp` of total_steps; afterwards the path stays at 0, so the `target_sparsity` least-pulled
              gammas are exact zeros at every update while the rest of the stage recovers accuracy (a zero
              whose data gradient pulls harder than a live gamma's takes its place: a soft threshold, not a
              frozen mask). Per update: tau = max(q(|gamma + update|) - wanted, lr * rate), applied as the
              proximal step; lambda = tau / lr is what the state reports. rate is the floor of lambda,
              max_lambda its ceiling (the target is then reached later, as fast as the ceiling allows).
              grad (or without total_steps): a multiplicative controller, the share it asks for rising
              linearly to the target over the first `ramp` of total_steps (at once without total_steps);
              lambda <- lambda * exp(adapt * (wanted - share) / target), within [rate * min_scale,
              rate * max_scale]. It has to wait for gammas to travel to the threshold before the share moves,
              so it lags and overshoots on short stages: the prox controller steers the quantile instead,
              which moves at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from yolojax.data.loader import Loader
from yolojax.loss import detection_loss
from yolojax.loss.obb import obb_loss
from yolojax.model.yolov8 import YOLOv8

SCHEDULES = ("constant", "decay", "dynamic")
MODES = ("prox", "grad")


class BNL1State(NamedTuple):
    count: jax.Array       # int32 step counter
    rate: jax.Array        # float32 lambda used at the last update (the dynamic schedule's controller state)
    sparsity: jax.Array    # float32 share of |gamma| < threshold seen at the last update
    # (plain float defaults: an array here would start the XLA backend at import, before jax.distributed)
    start: jax.Array | float = 0.0    # prox+dynamic: the target quantile of |gamma| at step 0
    cum_lr: jax.Array | float = 0.0   # prox+dynamic: learning rate summed over the updates so far


def _key(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def is_bn_scale(path) -> bool:
    keys = [_key(k) for k in path]
    return len(keys) >= 2 and keys[-1] == "scale" and keys[-2] == "bn"


def is_bn_bias(path) -> bool:
    keys = [_key(k) for k in path]
    return len(keys) >= 2 and keys[-1] == "bias" and keys[-2] == "bn"


def bn_scales(params) -> list[jax.Array]:
    """Every BN scale leaf of a parameter tree (in YOLOv8 every Conv+BN produces a prunable channel group,
    so these are the prunable gammas)."""
    return [l for p, l in jax.tree_util.tree_flatten_with_path(params)[0] if is_bn_scale(p)]


def sparse_fraction(params, threshold: float) -> jax.Array:
    """Share of BN scales with |gamma| < threshold (jittable)."""
    scales = bn_scales(params)
    below = sum(jnp.sum(jnp.abs(s) < threshold) for s in scales)
    return below.astype(jnp.float32) / max(sum(s.size for s in scales), 1)


def bn_l1(rate: float, *, mode: str = "grad", learning_rate: float | Callable | None = None,
          schedule: str = "constant", total_steps: int | None = None, beta_rate: float = 0.0,
          target_sparsity: float = 0.5, threshold: float = 1e-2, adapt: float = 1e-3, ramp: float = 0.5,
          min_scale: float = 0.1, max_scale: float = 10.0, max_lambda: float | None = None,
          weights: dict[str, Any] | None = None,
          scale_mask: Callable[[Any], bool] = is_bn_scale,
          bias_mask: Callable[[Any], bool] = is_bn_bias) -> optax.GradientTransformation:
    """L1 on BN scales (network slimming) as a GradientTransformation whose `update` needs `params`.

    mode: 'prox' (chain it after the optimizer; needs learning_rate, a float or a schedule of the update
    count) or 'grad' (chain it after clipping, before the optimizer). See the module doc for why 'prox' is
    the one that means the same under every optimizer.
    rate: lambda at step 0. beta_rate: L1 on BN biases at beta_rate * lambda(t) / rate (0 disables).
    total_steps: needed by 'decay'; sets the ramp of 'dynamic'. target_sparsity, threshold, adapt, ramp,
    min_scale, max_scale: the 'dynamic' controller (see module doc). max_lambda: the prox+dynamic controller's
    ceiling (under Adam, lambda >= 1 outweighs any data pull: every gamma shrinks alike). The masks take a key
    path. weights (prox only): per-channel L1 weights, {'model_0/bn/scale': array, ...} keyed by the path of
    the BN scale in the model's parameters: the adaptive lasso (penalty lambda * sum w_i |gamma_i|, see
    `adaptive_weights`); a channel's threshold is tau * w_i and the dynamic target counts |gamma| / w.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "prox" and learning_rate is None:
        raise ValueError("mode='prox' needs learning_rate (the optimizer's learning rate or its schedule)")
    if schedule == "decay" and not total_steps:
        raise ValueError("schedule='decay' needs total_steps")
    if rate < 0 or beta_rate < 0:
        raise ValueError(f"rates must be >= 0, got rate={rate}, beta_rate={beta_rate}")
    if schedule == "dynamic" and not 0.0 < target_sparsity <= 1.0:
        raise ValueError(f"target_sparsity must be in (0, 1], got {target_sparsity}")
    lr_fn = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
    quantile = mode == "prox" and schedule == "dynamic" and bool(total_steps)
    if quantile:
        ramp_steps = max(int(round(ramp * total_steps)), 1)
        # the wanted quantile falls in proportion to the learning rate spent: lr summed over the ramp
        lr_ramp = float(np.broadcast_to(np.asarray(lr_fn(jnp.arange(ramp_steps)), np.float64), (ramp_steps,)).sum())
        lr_ramp = max(lr_ramp, 1e-12)

    def init(params):
        del params
        return BNL1State(jnp.zeros((), jnp.int32), jnp.asarray(rate, jnp.float32), jnp.zeros((), jnp.float32),
                         jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def weight_of(path):
        if weights is None:
            return None
        key = "/".join(_key(k) for k in path)
        for k in (key, key.split("/", 1)[-1]):  # the model's own path, or under a wrapper ({'model': params})
            if k in weights:
                return jnp.asarray(weights[k], jnp.float32)
        raise KeyError(f"bn_l1: no L1 weight for {key}")

    def target_threshold(updates, params, state, lr):
        """(tau, q0, cum_lr): the proximal threshold that puts the target quantile of |gamma| (of |gamma| / w
        with weights) on its path."""
        z = [(jnp.abs(p + u) / (1.0 if weight_of(path) is None else weight_of(path))).reshape(-1)
             for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(params))
             if scale_mask(path)]
        z = jnp.concatenate(z).astype(jnp.float32)
        k = min(max(int(np.ceil(target_sparsity * z.size)), 1), z.size)
        q = jnp.sort(z)[k - 1]
        q0 = jnp.where(state.count == 0, q, state.start)
        cum = state.cum_lr + lr
        wanted = q0 * (1.0 - jnp.clip(cum / lr_ramp, 0.0, 1.0))
        tau = jnp.maximum(q - wanted, lr * rate)
        if max_lambda is not None:
            tau = jnp.minimum(tau, lr * max_lambda)
        return tau, q0, cum

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("bn_l1 needs params: call tx.update(grads, opt_state, params)")
        share = sparse_fraction(params, threshold)
        start, cum_lr = state.start, state.cum_lr
        lr = jnp.asarray(lr_fn(state.count), jnp.float32) if mode == "prox" else None
        if quantile:
            tau, start, cum_lr = target_threshold(updates, params, state, lr)
            lam = tau / jnp.maximum(lr, 1e-12)
        elif schedule == "constant":
            lam = jnp.asarray(rate, jnp.float32)
        elif schedule == "decay":
            progress = jnp.clip(state.count / total_steps, 0.0, 1.0)
            lam = rate * (1.0 - 0.9 * progress)
        else:
            wanted = target_sparsity
            if total_steps:
                wanted = target_sparsity * jnp.clip(state.count / max(ramp * total_steps, 1.0), 0.0, 1.0)
            lam = state.rate * jnp.exp(adapt * (wanted - share) / target_sparsity)
            lam = jnp.clip(lam, rate * min_scale, rate * max_scale)
        lam = lam.astype(jnp.float32)
        lam_beta = lam * (beta_rate / rate) if rate > 0 else jnp.asarray(beta_rate, jnp.float32)

        if mode == "grad":
            def add(path, g, p):
                if scale_mask(path):
                    return g + (lam * jnp.sign(p)).astype(g.dtype)
                if beta_rate > 0 and bias_mask(path):
                    return g + (lam_beta * jnp.sign(p)).astype(g.dtype)
                return g
            new = jax.tree_util.tree_map_with_path(add, updates, params)
        else:
            t_scale = tau if quantile else lr * lam

            def prox(path, u, p):
                if scale_mask(path):
                    w = weight_of(path)
                    t = t_scale if w is None else t_scale * w
                elif beta_rate > 0 and bias_mask(path):
                    w = weight_of(path[:-1] + (jax.tree_util.DictKey("scale"),)) if weights is not None else None
                    t = lr * lam_beta if w is None else lr * lam_beta * w
                else:
                    return u
                z = p + u
                shrunk = jnp.sign(z) * jnp.maximum(jnp.abs(z) - t.astype(z.dtype), 0.0)
                return (shrunk - p).astype(u.dtype)  # p + (0 - p) == 0 exactly: zeros are exact
            new = jax.tree_util.tree_map_with_path(prox, updates, params)
        return new, BNL1State(optax.safe_increment(state.count), lam, share, start, cum_lr)

    return optax.GradientTransformation(init, update)


# The dynamic controller's gain when driven from a TrainConfig: lambda can change 10x in ~46 updates at full
# error, so a stage of a few hundred updates reaches its target whatever the starting rate's scale.
DYNAMIC_ADAPT = 0.05


def taylor_importance(spec, variables, dataset, imgsz: int, *, batches: int = 8, batch: int = 16, seed: int = 0,
                      workers: int = 2) -> dict[str, np.ndarray]:
    """First-order Taylor importance of every BN channel (Molchanov et al. 2019): the RMS over `batches`
    training batches (letterboxed, no augmentation) of gamma * dL/dgamma, the loss change removing the
    channel's scale would cause to first order. {'model_0/bn/scale': [cout], ...}."""
    model = YOLOv8(spec)
    task_loss = obb_loss if spec.task == "obb" else detection_loss

    @jax.jit
    def grads(params, stats, batch):
        def loss_fn(p):
            x = batch["images"].astype(jnp.float32) / 255.0
            (preds, _), _ = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return task_loss(preds, batch, nc=spec.nc, reg_max=spec.reg_max)[0]
        return jax.grad(loss_fn)(params)

    keys = ("images", "boxes", "classes", "mask", "ignore", "obb")
    loader = Loader(dataset, min(batch, len(dataset)), imgsz, augment=False, shuffle=True, drop_last=True,
                    seed=seed, workers=workers)
    flat_p = {"/".join(_key(k) for k in path): np.asarray(v, np.float64)
              for path, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0] if is_bn_scale(path)}
    acc = {k: np.zeros_like(v) for k, v in flat_p.items()}
    n = 0
    try:
        for b in loader:
            g = grads(variables["params"], variables["batch_stats"], {k: jnp.asarray(b[k]) for k in keys if k in b})
            for path, v in jax.tree_util.tree_flatten_with_path(g)[0]:
                if is_bn_scale(path):
                    k = "/".join(_key(x) for x in path)
                    acc[k] += (flat_p[k] * np.asarray(v, np.float64)) ** 2
            n += 1
            if n >= batches:
                break
    finally:
        loader.close()
    return {k: np.sqrt(v / max(n, 1)) for k, v in acc.items()}


class TaylorScores:
    """A pruning importance (the `importance=` callable of a policy) from `taylor_importance`'s per-BN scores:
    a group's channel scores the sum over its coupled producers (first-order loss changes add).

    Unlike |gamma|, these are comparable across layers: a channel whose output no live head uses has ~0
    gradient whatever its gamma, and one that feeds the only working head scores high. That is what a
    ranking by importance *per millisecond* needs (the high-resolution layers cost the most milliseconds per
    channel; with |gamma| they are cut first, whatever they carry)."""

    __name__ = "taylor"

    def __init__(self, per_bn: dict[str, np.ndarray]):
        self.per_bn = {k: np.asarray(v, np.float64) for k, v in per_bn.items()}

    def __call__(self, spec, variables, group) -> np.ndarray:
        per = []
        for pr in group.producers:
            key = f"{pr.path}/bn/scale"
            if key not in self.per_bn:
                raise KeyError(f"no Taylor importance for {key}: scores of another model?")
            per.append(self.per_bn[key][pr.start:pr.start + group.size])
        return np.sum(per, 0)

    def __repr__(self) -> str:
        return "taylor"


def adaptive_weights(importance: dict[str, np.ndarray], power: float = 2.0, bounds=(1e-2, 1e2)
                     ) -> dict[str, np.ndarray]:
    """Adaptive-lasso weights (Zou 2006) from channel importances: w = (median / importance) ** power, clipped
    to `bounds`, so the median channel has weight 1, a channel 10x as important 1/100 (it barely shrinks) and
    one 10x less important 100 (it goes first). With weights the L1 reaches its target by removing the
    channels that matter least instead of shrinking every gamma alike: the demo teacher's gammas all sit near
    their init of 1, so plain L1 cannot tell them apart within a short stage."""
    allv = np.concatenate([v.reshape(-1) for v in importance.values()])
    med = float(np.median(allv[allv > 0])) if (allv > 0).any() else 1.0
    lo, hi = bounds
    return {k: np.clip((med / np.maximum(v, 1e-30)) ** power, lo, hi).astype(np.float32)
            for k, v in importance.items()}


def sparsity_transform(cfg, updates_total: int, weights: dict[str, np.ndarray] | None = None):
    """The BN-L1 transform a TrainConfig asks for (cfg.sparsity, sparsity_mode, sparsity_schedule,
    sparsity_target, sparsity_beta): a GradientTransformation for the gradient form, or a callable
    lr_schedule -> GradientTransformation for the proximal form (what `build_optimizer` chains after the
    optimizer). The dynamic schedule reaches its target over the first half of `updates_total`: for prox, by
    steering the target quantile of |gamma| to 0 with cfg.sparsity as lambda's floor; for grad, with the
    multiplicative controller moving lambda within [rate / 100, rate * 100]."""
    mode = getattr(cfg, "sparsity_mode", "prox")
    kw = dict(schedule=cfg.sparsity_schedule, total_steps=max(int(updates_total), 1), beta_rate=cfg.sparsity_beta,
              target_sparsity=cfg.sparsity_target)
    if cfg.sparsity_schedule == "dynamic":
        kw.update(adapt=DYNAMIC_ADAPT, min_scale=1e-2, max_scale=1e2, ramp=getattr(cfg, "sparsity_ramp", 0.5),
                  max_lambda=getattr(cfg, "sparsity_max", 0.0) or None)
    if mode == "grad":
        return bn_l1(cfg.sparsity, mode="grad", **kw)
    return lambda lr_schedule: bn_l1(cfg.sparsity, mode="prox", learning_rate=lr_schedule, weights=weights, **kw)


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
    import matplotlib  # heavy, plots only
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
        ax.hist(np.clip(arr, bins[0], None), bins=bins,  # exact zeros land in the first bin (bins[0] may round above lo) alpha=0.55,
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
        lam = f", lambda {stats['lambda']:.3g}" if "lambda" in stats else ""
        tqdm.write(f"epoch {epoch + 1}: {stats['frac_lt_1e-2']:.1%} of BN gammas below 1e-2 "
                   f"({stats['frac_lt_1e-3']:.1%} below 1e-3){lam}; detection loss {logs.get('loss', float('nan')):.3f}")
        writer = getattr(trainer, "writer", None)
        if writer is not None:
            g = np.abs(np.concatenate([np.asarray(s).reshape(-1) for s in bn_scales(params)]))
            writer.add_histogram("sparsity/abs_gamma", g, epoch + 1)
            gamma_histogram_plot(self.initial, params, Path(trainer.rundir) / "gamma_hist.png",
                                 title=f"BN |gamma|: start vs epoch {epoch + 1}")
