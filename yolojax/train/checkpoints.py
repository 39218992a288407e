"""Training-state checkpoints through Orbax's CheckpointManager: RUNDIR/checkpoints/<step>/.

Each checkpoint holds two items: `state`, the whole TrainState as the device arrays the step uses (saved from
the device, sharded as they are; every process takes part, Orbax decides who writes what), and `trainer`, a
JSON of the position (epoch, loader), best fitness, history, config, spec, run metadata and a fingerprint of
every array. `step` is the global micro-step the checkpoint was taken after.

Saves are asynchronous: `save` returns once the arrays are copied off the device (the training step that
follows may donate them) and Orbax writes the files in the background while training goes on. A checkpoint
is committed atomically (written under a temporary name, renamed when complete), so a process killed at any
moment, during a save too, leaves the previous committed checkpoints loadable; `max_to_keep` bounds how many
stay. Orbax does not verify what it reads (flipped bytes load silently): `restore` recomputes the fingerprints
on the device and names the first array that differs.

Runs written before this module kept their state in RUNDIR/last/train_state + last/trainer.json; `resume_info`
and `Trainer.restore` still read them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..checkpoint import CheckpointCorruptError, _leaf_name, _sigint_deferred

CHECKPOINTS_DIR = "checkpoints"
LEGACY_STATE_DIR, LEGACY_TRAINER_FILE = "train_state", "trainer.json"  # inside RUNDIR/last (older runs)
log = logging.getLogger("yolojax.train")


def _words(x: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words (one word per element for 1-, 2- and 4-byte types, two for 8-byte)."""
    size = jnp.dtype(x.dtype).itemsize
    if size < 4:
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).reshape(-1).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)


@jax.jit
def fingerprints(tree: Any) -> jax.Array:
    """One uint32 per leaf: sum over words w_i of w_i * (2i + 1) * 2654435761 (mod 2^32). Each word's weight is
    odd, so changing any single word (any flipped bit) changes the sum; the position weights catch swapped
    words. Computed where the arrays live: a save fetches one number per array, not the arrays."""
    out = []
    for leaf in jax.tree.leaves(tree):
        w = _words(jnp.asarray(leaf))
        odd = (jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(2654435761)
        out.append(jnp.sum(w * odd, dtype=jnp.uint32))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def fingerprint_dict(tree: Any) -> dict[str, int]:
    names = [_leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return dict(zip(names, (int(v) for v in np.asarray(jax.device_get(fingerprints(tree))))))


def verify_fingerprints(where: str, tree: Any, saved: dict[str, int] | None) -> None:
    if not saved:
        return
    got = fingerprint_dict(tree)
    for name in sorted(saved.keys() & got.keys()):
        if int(saved[name]) != got[name]:
            raise CheckpointCorruptError(f"{where}: array {name} does not match the fingerprint written with it: "
                                         f"the checkpoint is damaged (delete that step to resume from an earlier "
                                         f"one, or retrain)")


def _ocp():
    import orbax.checkpoint as ocp  # heavy (tensorstore): only when checkpoints are touched
    return ocp


class TrainCheckpoints:
    """RUNDIR/checkpoints: save (async), list, restore the full training state. Every process calls every
    method (Orbax coordinates multi-host saves itself)."""

    def __init__(self, rundir: str | Path, max_to_keep: int | None = 2, *, read_only: bool = False):
        ocp = _ocp()
        self.directory = (Path(rundir) / CHECKPOINTS_DIR).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=not read_only,
                                               create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "trainer"))

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, info: dict) -> None:
        """Start an asynchronous save of `state` (device arrays) and `info` (JSON) as checkpoint `step`;
        returns when the arrays are off the device. A step saved before (an epoch end after a save at its last
        batch, a step redone after a resume) is replaced."""
        ocp = _ocp()
        info = {**info, "step": int(step), "fingerprints": fingerprint_dict(state)}
        if step in self.manager.all_steps():
            self.manager.wait_until_finished()
            self.manager.delete(step)
        with _sigint_deferred():  # Ctrl-C mid-call would leave Orbax's writer threads half-started
            self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 trainer=ocp.args.JsonSave(info)))

    def info(self, step: int | None = None) -> dict | None:
        """The `trainer` JSON of checkpoint `step` (default: the latest committed one); None if there is none."""
        step = self.latest() if step is None else step
        if step is None:
            return None
        ocp = _ocp()
        return dict(self.manager.restore(step, args=ocp.args.Composite(trainer=ocp.args.JsonRestore()))["trainer"])

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """(state, info) of checkpoint `step`, the state laid out like `template` (its shapes, dtypes and
        shardings), its fingerprints verified."""
        ocp = _ocp()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
        where = self.directory / str(step)
        try:
            got = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     trainer=ocp.args.JsonRestore()))
        except (ValueError, OSError, RuntimeError) as e:  # a damaged chunk can fail to decode at all
            raise CheckpointCorruptError(f"{where}: could not be read, the checkpoint is damaged "
                                         f"({type(e).__name__}: {str(e)[:200]})") from e
        info = dict(got["trainer"])
        verify_fingerprints(str(where), got["state"], info.get("fingerprints"))
        return got["state"], info

    def wait(self) -> None:
        """Block until every started save is committed."""
        with _sigint_deferred():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with _sigint_deferred():
            self.manager.close()


def resume_info(rundir: str | Path) -> dict | None:
    """What a resumed run starts from: the `trainer` JSON of RUNDIR's latest committed checkpoint (with
    'step'), or an older run's last/trainer.json (with 'legacy': True); None when there is nothing to resume."""
    rundir = Path(rundir)
    if (rundir / CHECKPOINTS_DIR).is_dir():
        store = TrainCheckpoints(rundir, read_only=True)
        try:
            info = store.info()
        finally:
            store.close()
        if info is not None:
            return info
    legacy = rundir / "last" / LEGACY_TRAINER_FILE
    if legacy.exists():
        import json
        return {**json.loads(legacy.read_text()), "legacy": True}
    return None


def resume_model(rundir: str | Path, info: dict):
    """The model a resumed run is built from (its weights are then replaced by the checkpoint's state): the
    checkpoint's spec as a Detector with fresh weights and the run's metadata; an older run's RUNDIR/last."""
    from ..api import Detector, load
    from ..model.spec import Spec
    from ..model.yolov8 import init_variables
    if "spec" not in info:
        return load(Path(rundir) / "last")
    spec = Spec.from_dict(info["spec"])
    return Detector(spec, init_variables(spec, 0), dict(info.get("meta", {})))
