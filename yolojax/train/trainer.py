"""The training loop: the one place with side effects (data, devices, checkpoints, logs, progress).

RUNDIR layout:
    checkpoints/<step>/  the full training state for --resume (Orbax CheckpointManager, async; see checkpoints.py)
    last/   model checkpoint of the last epoch (EMA weights, spec): what val/predict/export/prune read
    best/   model checkpoint of the best validation fitness
    results.csv, results.json, steps.csv, tb/ (TensorBoard), args.json
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..api import Detector, load
from ..data.loader import Loader
from ..errors import RuntimeFailure
from ..loss import LossConfig
from ..model.arch import is_model_name
from ..model.spec import Spec, yolov8_spec
from ..model.yolov8 import init_variables
from .checkpoints import LEGACY_STATE_DIR, LEGACY_TRAINER_FILE, TrainCheckpoints
from .config import TrainConfig
from .distributed import data_mesh, device_batch, is_primary, shardings
from .optim import build_optimizer, ema_decay_fn
from .step import TrainState, create_state, make_predict, make_train_step
from .validate import run_validation, val_loader

log = logging.getLogger("yolojax.train")


class TrainingDiverged(RuntimeFailure, RuntimeError):
    """The loss or the gradients became NaN/inf, or the run exploded (loss far above its level, huge weights)."""


class DivergenceGuard:
    """Notices an exploding run while its numbers are still finite, so that no exploded weights are saved.

    The step's NaN check sees only the end of an explosion: with a far too large learning rate the loss can
    climb to 1e12 and the weights to 1e25 for epochs before anything overflows, each epoch saved as `last`.
    Two signs, both orders of magnitude beyond anything training does: the running (EMA) loss at LOSS_RATIO x
    the lowest level it has had (a level that fell near zero, as when overfitting, counts as 1/100 of the first
    loss), and the weights' global norm at WEIGHT_RATIO x the norm this process started from (checked before
    every save). A single odd batch moves the running level by a tenth only."""

    LOSS_RATIO, WEIGHT_RATIO, ALPHA = 1e3, 1e2, 0.1

    def __init__(self, params):
        self.ref_norm = self.norm(params)
        self.level: float | None = None
        self.first = self.floor = math.inf

    @staticmethod
    def norm(params) -> float:
        """Global norm, computed where the arrays are (device arrays are not fetched: one number comes back)."""
        return float(_global_norm(params))

    def loss(self, loss: float) -> str | None:
        """Why the run has diverged after a step with this loss (None: it has not)."""
        if self.level is None:
            self.level = self.first = loss
        self.level = (1 - self.ALPHA) * self.level + self.ALPHA * loss
        self.floor = min(self.floor, self.level)
        ref = max(self.floor, self.first / 100, 1e-12)
        if self.level > self.LOSS_RATIO * ref:
            return (f"the loss exploded: {loss:.4g}, its running level {self.level:.4g} is {self.level / ref:.3g}x "
                    f"its lowest level {ref:.4g}")
        return None

    def weights(self, *trees) -> str | None:
        """Why these weights are not sane (None: they are)."""
        norm = max(self.norm(t) for t in trees)
        if not math.isfinite(norm) or norm > self.WEIGHT_RATIO * max(self.ref_norm, 1e-12):
            return (f"the weights exploded: global norm {norm:.4g}, {norm / max(self.ref_norm, 1e-12):.3g}x the "
                    f"{self.ref_norm:.4g} the run started from")
        return None


@jax.jit
def _global_norm(tree) -> jax.Array:
    """sqrt(sum of squares) of every leaf, scaled by the largest magnitude so that weights of 1e25 give a finite
    norm in float32 (only inf/NaN weights give a non-finite one)."""
    leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    top = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in leaves]))
    scale = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
    return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


def prefetch_to_device(items, put: Callable, size: int = 2):
    """Yield put(item) for each item of `items`, keeping `size` of them put ahead (double-buffering when the
    puts are asynchronous device transfers). The generator's close() stops the underlying iterator."""
    it = iter(items)
    queue: collections.deque = collections.deque()
    try:
        for item in itertools.islice(it, size):
            queue.append(put(item))
        while queue:
            yield queue.popleft()
            for item in itertools.islice(it, 1):
                queue.append(put(item))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def transfer_weights(spec: Spec, variables: dict, source: dict) -> tuple[dict, int, int]:
    """Copy every source array whose path and shape match (Ultralytics' intersect_dicts): lets a checkpoint
    with another number of classes initialise everything but the class head. Returns (variables, copied, total)."""
    flat_src = {tuple(k.key for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
    copied = 0

    def pick(path, leaf):
        nonlocal copied
        key = tuple(k.key for k in path)
        v = flat_src.get(key)
        if v is not None and np.shape(v) == np.shape(leaf):
            copied += 1
            return np.asarray(v, np.float32)
        return leaf

    out = jax.tree_util.tree_map_with_path(pick, variables)
    return out, copied, len(jax.tree.leaves(variables))


def resolve_model(model: str | Path | Spec | Any, nc: int, names: list[str], seed: int = 0,
                  task: str = "detect") -> tuple[Spec, dict, str]:
    """A (spec, variables, note) for training on `nc` classes from a variant name, a spec, a Detector, or any
    checkpoint `yolojax.load` reads (weights transferred where shapes fit when nc differs)."""
    if isinstance(model, Spec):
        spec = model.replace(names=tuple(names)) if model.nc == nc else None
        if spec is None:
            raise ValueError(f"spec has nc={model.nc}, dataset has {nc} classes")
        return spec, init_variables(spec, seed), f"fresh {spec.name}"
    if isinstance(model, Detector):
        det = model
    else:
        if is_model_name(model):
            spec = yolov8_spec(str(model).removesuffix(".yaml"), nc, names=names, task=task)
            return spec, init_variables(spec, seed), f"fresh {spec.name} (random init)"
        det = load(model)
    spec = det.spec
    if spec.nc == nc:
        return spec.replace(names=tuple(names)), det.variables, f"weights from {model}"
    new_spec = spec.with_classes(nc, names)
    fresh = init_variables(new_spec, seed)
    variables, copied, total = transfer_weights(new_spec, fresh, det.variables)
    return new_spec, variables, f"transferred {copied}/{total} arrays from {model} (nc {spec.nc} -> {nc})"


@dataclasses.dataclass
class Trainer:
    """Train a spec'd YOLOv8 on a dataset. Construct, then `fit()`.

    extra_tx: optax transformation chained after gradient clipping (e.g. BN-L1 sparsity's gradient form), or a
    callable lr_schedule -> transformation chained after the optimizer (BN-L1's proximal form).
    extra_loss / teacher / aux: distillation hooks (see step.make_train_step).
    epoch_hooks: callables (trainer, epoch, logs dict) -> None, run after each epoch (e.g. gamma histograms);
    they may add scalars to the logs dict.
    """

    cfg: TrainConfig
    rundir: Path
    train_data: Any                       # yolojax.data.Dataset
    val_data: Any | None
    spec: Spec
    variables: dict
    extra_tx: optax.GradientTransformation | Callable | None = None
    extra_loss: Callable | None = None
    teacher: Any = None
    aux: Any = None
    epoch_hooks: tuple = ()
    model: Any = None                     # the forward (default YOLOv8(spec)); a QATModel for QAT
    progress: bool = True
    note: str = ""
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        cfg = self.cfg
        self.rundir = Path(self.rundir)
        pc, pi = jax.process_count(), jax.process_index()
        if cfg.batch % jax.device_count():
            raise ValueError(f"global batch {cfg.batch} must be a multiple of the {jax.device_count()} devices")
        self.train_loader = Loader(self.train_data, cfg.batch, cfg.imgsz, augment=cfg.augment, shuffle=True,
                                   max_boxes=cfg.max_boxes, drop_last=True, seed=cfg.seed, workers=cfg.workers, mosaic=cfg.mosaic, process_index=pi,
                                   process_count=pc, epochs=cfg.epochs, close_mosaic=cfg.close_mosaic)
        self.val_loader = None
        if self.val_data is not None and is_primary():
            vb = max(1, min(cfg.batch, 16))
            self.val_loader = val_loader(self.val_data, vb, cfg.imgsz, cfg.workers, stride=max(self.spec.strides))
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.train_data.root}: no full batch of {cfg.batch} images")
        self.tx, self.opt_info = build_optimizer(cfg, self.variables["params"], steps_per_epoch=self.steps_per_epoch,
                                                 nc=self.spec.nc, extra=self.extra_tx)
        self.mesh = data_mesh()
        self.data_sharding, self.replicated = shardings(self.mesh)
        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else None
        step = make_train_step(self.spec, self.tx, accumulate=self.opt_info["accumulate"],
                               loss_cfg=LossConfig(box=cfg.box, cls=cfg.cls, dfl=cfg.dfl),
                               ema_decay=ema_decay_fn(cfg) if cfg.ema else None, extra_loss=self.extra_loss,
                               dtype=dtype, model=self.model,
                               # a QAT model freezes BN: its batch_stats hold the activation ranges' own EMA
                               bn_warmup=self.model is None)
        self._step = jax.jit(step, in_shardings=(self.replicated, self.data_sharding, self.replicated),
                             out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))
        self._predict = jax.jit(make_predict(self.spec, model=self.model))
        self.state: TrainState = jax.device_put(create_state(self.variables, self.tx, self.aux), self.replicated)
        self.teacher = jax.device_put(self.teacher, self.replicated) if self.teacher is not None else None
        self.epoch, self.best_fitness, self.history = 0, -1.0, []
        self._writer = None
        self._position: dict | None = None  # loader position after the last batch the loop consumed
        if is_primary():
            for which in ("last", "best"):
                ckpt.recover_dir(self.rundir / which)
        self.checkpoints = TrainCheckpoints(self.rundir, cfg.keep_checkpoints)

    # -- checkpoints -------------------------------------------------------------------------------------
    def _meta(self, **extra) -> dict:
        return {"names": list(self.spec.names), "imgsz": self.cfg.imgsz, "epoch": self.epoch,
                "best_fitness": self.best_fitness, "train_config": dataclasses.asdict(self.cfg),
                "ema": self.cfg.ema, **self.meta, **extra}

    def position(self) -> dict:
        """The loader position after the last batch trained on (the loader itself runs ahead: batches are
        prefetched to the device)."""
        return dict(self._position or self.train_loader.state())

    def _check_weights(self, what: str) -> None:
        guard = getattr(self, "_guard", None)
        why = guard.weights(self.state.params, self.state.ema_params) if guard is not None else None
        if why:  # keep the last sane checkpoint rather than replace it with exploded weights
            raise self._diverged(f"training diverged before saving {what}: {why}")

    def save_state(self, *, position: dict | None = None) -> int:
        """Checkpoint the whole training state as RUNDIR/checkpoints/<step> (asynchronous: returns once the
        arrays are off the device; every process calls it). Returns the step."""
        pos = dict(position or self.position())
        step = int(pos["epoch"]) * self.steps_per_epoch + int(pos["batch"])
        self._check_weights(f"checkpoint {step}")
        info = {"epoch": self.epoch, "best_fitness": self.best_fitness, "history": self.history, "loader": pos,
                "config": dataclasses.asdict(self.cfg), "spec": self.spec.to_dict(), "meta": self._meta()}
        self.checkpoints.save(step, self.state, json.loads(json.dumps(info, default=float)))
        return step

    def save(self, which: str = "last", *, metrics: dict | None = None) -> Path:
        """Atomically write the model checkpoint RUNDIR/which (EMA weights + spec; what val/predict/export
        read). Synchronous, primary process only: it is the EMA copy of the weights, written at epoch ends."""
        if not is_primary():
            return self.rundir / which
        self._check_weights(f"{which}/")
        variables, extra = jax.device_get(self.state.ema_variables()), {}
        if hasattr(self.model, "split"):  # QAT: float weights, the activation ranges into meta['qat']
            variables, extra["qat"] = self.model.split(variables)
        ckpt.save_model(self.rundir / which, self.spec, variables, self._meta(metrics=metrics or {}, **extra))
        return self.rundir / which

    def restore(self, directory: Path | None = None) -> None:
        """Continue exactly from the latest committed checkpoint in RUNDIR/checkpoints (state, epoch, loader
        position, best fitness), or from an older run's RUNDIR/last/train_state."""
        step = self.checkpoints.latest() if directory is None else None
        if step is not None:
            state, info = self.checkpoints.restore(step, self.state)
            self.state = state
            where = self.checkpoints.directory / str(step)
        else:
            d = Path(directory or self.rundir / "last")
            if not (d / LEGACY_TRAINER_FILE).exists():
                raise FileNotFoundError(f"{self.rundir}: nothing to resume (no committed checkpoint in "
                                        f"{self.checkpoints.directory}); was the run started?")
            info = json.loads((d / LEGACY_TRAINER_FILE).read_text())
            restored = ckpt.restore_pytree(d / LEGACY_STATE_DIR, jax.device_get(self.state))
            self.state = jax.device_put(restored, self.replicated)
            where = d
        self.epoch, self.best_fitness = int(info["epoch"]), float(info["best_fitness"])
        self.history = info.get("history", [])
        self.train_loader.restore(info["loader"])
        self._position = dict(info["loader"])
        self._reconcile_best(info)
        log.info("resumed from %s at epoch %d batch %d", where, info["loader"]["epoch"], info["loader"]["batch"])

    def _reconcile_best(self, info: dict) -> None:
        """Make best/ agree with the best fitness the checkpoint records. `fit` saves best/ before the epoch's
        checkpoint, so a kill between the two only makes the resumed run redo that epoch; a run killed between
        them by an older version, or a deleted best/, leaves a recorded fitness with no (or stale) weights behind
        it, which later epochs would never beat. Rewrite best/ from the resumed state when it holds that epoch's
        weights, else lower the recorded best to what best/ holds, so the next improvement writes it."""
        if not is_primary() or self.best_fitness < 0:
            return
        best = self.rundir / "best"
        meta_file = best / ckpt.META_FILE
        meta = json.loads(meta_file.read_text()) if ckpt.is_model_dir(best) and meta_file.exists() else {}
        saved = meta.get("best_fitness")
        if saved is not None and (math.isclose(float(saved), self.best_fitness, rel_tol=1e-9, abs_tol=1e-12) or
                                  int(meta.get("epoch", 0)) > self.epoch):
            return  # consistent, or saved just before a kill in an epoch this run redoes (and so rewrites)
        row = self.history[-1] if self.history else {}
        at_best = (info["loader"]["batch"] == 0 and row.get("epoch") == self.epoch and
                   row.get("val/fitness") is not None and abs(row["val/fitness"] - self.best_fitness) <= 1e-6)
        if at_best:
            log.warning("%s: missing or stale; rewriting it from the checkpoint (epoch %d)", best, self.epoch)
            self.save("best", metrics={k: v for k, v in row.items() if k != "epoch"})
        else:
            log.warning("%s: missing or stale and the checkpoint is not the best epoch; best/ will be the best of "
                        "the epochs from now on", best)
            self.best_fitness = float(saved) if saved is not None else -1.0

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error for a diverged run, saying which checkpoint is the last good one (if any)."""
        self.checkpoints.wait()  # a save of good weights may still be in flight: it is the last good one
        step = self.checkpoints.latest()
        if step is not None:
            pos = self.checkpoints.info(step)["loader"]
            kept = (f"the last good checkpoint, {self.checkpoints.directory / str(step)} (after {pos['epoch']} "
                    f"epochs + {pos['batch']} batches), is intact")
        else:
            kept = f"there is no last good checkpoint: none was saved in {self.rundir} before this"
        return TrainingDiverged(f"{what}. {kept[0].upper()}{kept[1:]}. Lower the learning rate, check the data "
                                f"(`yolojax data check`), or use float32.")

    # -- logging -----------------------------------------------------------------------------------------
    @property
    def writer(self):
        if self._writer is None and is_primary():
            from tensorboardX import SummaryWriter  # only the primary host writes; heavy (protobuf)
            self._writer = SummaryWriter(str(self.rundir / "tb"))
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def _write_results(self) -> None:
        if not is_primary() or not self.history:
            return
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with open(self.rundir / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(self.history)
        (self.rundir / "results.json").write_text(json.dumps(self.history, indent=1, default=float))

    # -- loop --------------------------------------------------------------------------------------------
    def validate(self, variables: dict | None = None) -> dict:
        if self.val_loader is None:
            return {}
        variables = variables or self.state.ema_variables()  # on the device already: validation reads it there
        if jax.process_count() > 1:  # global arrays span hosts: each host validates on its own copy
            variables = jax.device_get(variables)
        metrics, _ = run_validation(self.spec, variables, self.val_loader, predict=self._predict,
                                    progress=self.progress)
        return metrics

    # Metrics stay on the device and are fetched in one transfer every LOG_EVERY steps, before every save and at
    # the end of an epoch: the host never waits for a step to finish before dispatching the next one. A
    # non-finite step is never applied (the jitted step keeps the old state); it is reported at the next fetch,
    # before anything is saved, so the last checkpoint on disk is always a good one.
    LOG_EVERY = 10
    # Batches are put on the device this many steps ahead (device_put is asynchronous): the host assembles and
    # transfers the next batches while the device runs the current step.
    PREFETCH = 2

    def train_epoch(self, stop_after: int | None = None) -> dict:
        """Run the rest of the current epoch. stop_after: stop after that many steps (tests, kill simulation)."""
        cfg, loader = self.cfg, self.train_loader
        if loader.state()["batch"] == 0:
            loader.set_epoch(self.epoch)
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(total=self.steps_per_epoch, initial=loader.state()["batch"], disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
        t0 = time.time()
        if getattr(self, "_guard", None) is None:
            self._guard = DivergenceGuard(self.state.params)
        pending: list[tuple[int, int, Any]] = []  # (global step, batch index in the epoch, device metrics)

        def flush() -> None:
            """Fetch the pending steps' metrics in one transfer and account for them in order."""
            nonlocal n
            if not pending:
                return
            fetched = jax.device_get([m for _, _, m in pending])
            rows = []
            for (gstep, bidx, _), m in zip(pending, fetched):
                where = f"epoch {self.epoch + 1}, batch {bidx}"
                if not bool(m["finite"]):
                    raise self._diverged(
                        f"non-finite loss/gradients at {where} (loss={float(m['loss'])}, "
                        f"items={ {k: float(v) for k, v in m.items() if k not in ('finite',)} }); the step was "
                        f"not applied")
                why = self._guard.loss(float(m["loss"]))
                if why:
                    raise self._diverged(f"training diverged at {where}: {why}")
                n += 1
                for k, v in m.items():
                    if k != "finite":
                        sums[k] = sums.get(k, 0.0) + float(v)
                # per-step losses (resume checks, plotting); a resumed run re-appends the steps it replays
                rows.append(f"{gstep},{float(m['loss']):.9g},{float(m['box']):.9g},{float(m['cls']):.9g},"
                            f"{float(m['dfl']):.9g}\n")
                if gstep % 10 == 0:
                    lr = float(self.opt_info["lr_host"](gstep // self.opt_info["accumulate"]))
                    for k in ("loss", "box", "cls", "dfl", "grad_norm"):
                        if k in m:
                            self.scalar(f"train_step/{k}", m[k], gstep)
                    self.scalar("train_step/lr", lr, gstep)
            if is_primary():
                with open(self.rundir / "steps.csv", "a") as f:
                    f.write("".join(rows))
            if self.progress:
                (gstep, _, _), m = pending[-1], fetched[-1]
                lr = float(self.opt_info["lr_host"](gstep // self.opt_info["accumulate"]))
                bar.set_postfix(loss=f"{float(m['loss']):.3f}", box=f"{float(m['box']):.3f}",
                                cls=f"{float(m['cls']):.3f}", dfl=f"{float(m['dfl']):.3f}", lr=f"{lr:.2e}")
            pending.clear()

        dispatched = 0
        batches = prefetch_to_device(loader, lambda b: (device_batch(b, self.data_sharding), loader.state()),
                                     self.PREFETCH)
        for batch, position in batches:
            compiling = not getattr(self, "_step_ready", False)
            if compiling:  # XLA compiles the step on its first call: minutes of silence would look like a hang
                tqdm.write("compiling the training step (once per process; `yolojax` caches it on disk, so a "
                           "rerun with the same model and shapes starts faster) ...", file=sys.stderr)
                t_compile = time.time()
            self.state, metrics = self._step(self.state, batch, self.teacher)
            self._position = position
            bidx = position["batch"]
            gstep = int(self.epoch * self.steps_per_epoch + bidx)
            pending.append((gstep, bidx, metrics))
            dispatched += 1
            if compiling:
                flush()
                self._step_ready = True
                tqdm.write(f"first training step done in {time.time() - t_compile:.1f} s (compilation included)",
                           file=sys.stderr)
            bar.update(1)
            save = bool(cfg.save_every_steps and gstep % cfg.save_every_steps == 0)
            stop = stop_after is not None and dispatched >= stop_after
            if save or stop or len(pending) >= self.LOG_EVERY:
                flush()
            if save:
                self.save_state()
            if stop:
                batches.close()  # stops the loader, which has run ahead of the last batch trained on
                loader.restore(self.position())
                break
        flush()
        bar.close()
        logs = {k: v / max(n, 1) for k, v in sums.items()}
        logs["epoch_time_s"] = time.time() - t0
        logs["images_per_s"] = n * self.train_loader.batch_size / max(logs["epoch_time_s"], 1e-9)
        return logs

    def fit(self, stop_after_steps: int | None = None) -> dict:
        """Train until cfg.epochs; returns the last epoch's logs (with validation metrics)."""
        cfg = self.cfg
        self.rundir.mkdir(parents=True, exist_ok=True)
        if is_primary():
            (self.rundir / "args.json").write_text(json.dumps(
                {"config": dataclasses.asdict(cfg), "spec": self.spec.to_dict(), "note": self.note,
                 "optimizer": {k: v for k, v in self.opt_info.items() if not callable(v)},
                 "devices": [str(d) for d in jax.devices()], "processes": jax.process_count()},
                indent=1, default=str))
        logs: dict = {}
        while self.epoch < cfg.epochs:
            logs = self.train_epoch(stop_after=stop_after_steps)
            if stop_after_steps is not None and self.train_loader.state()["batch"] not in (0,):
                self.save_state()
                self.checkpoints.wait()
                return logs
            done = self.epoch + 1
            if done % cfg.val_every == 0 or done == cfg.epochs:
                val = self.validate()
                logs.update({f"val/{k}": val[k] for k in ("map50", "map50_95", "precision", "recall",
                                                         "map_small", "map_medium", "map_large", "fitness")
                             if k in val})
            for hook in self.epoch_hooks:
                hook(self, self.epoch, logs)
            self.epoch = done
            fitness = logs.get("val/fitness")
            improved = fitness is not None and fitness > self.best_fitness
            if improved:
                self.best_fitness = float(fitness)
            row = {"epoch": done, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}}
            self.history.append(row)
            for k, v in logs.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.scalar(k if "/" in k else f"train/{k}", v, done)
            self._write_results()
            # best/ first: a kill between the saves then only makes the resumed run redo this epoch, which
            # rewrites best/; the other order would record a best fitness whose weights were never written
            if improved or (fitness is None and done == cfg.epochs):
                self.save("best", metrics=logs)
            self.save("last", metrics=logs)
            self._position = {"epoch": done, "batch": 0, "seed": cfg.seed, "mosaic": None}
            self.save_state()
            if self.progress and "val/map50" in logs:
                tqdm.write(f"epoch {done}/{cfg.epochs}: loss {logs.get('loss', float('nan')):.3f} "
                           f"mAP50 {logs['val/map50']:.4f} mAP50-95 {logs['val/map50_95']:.4f}")
        if self._writer is not None:
            self._writer.flush()
        self.close()  # waits for the last checkpoint to commit
        return logs

    def close(self) -> None:
        """Wait for checkpoints being written (so the last one commits), stop the loaders."""
        self.checkpoints.wait()
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                loader.close()
