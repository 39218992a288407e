"""Model checkpoints: a directory holding the spec beside the weights, so any checkpoint (pruned or not)
loads with no code change.

    DIR/spec.json      the Spec (widths of every layer)
    DIR/meta.json      free-form metadata (class names, image size, provenance, metrics)
    DIR/variables/     Orbax checkpoint of {'params', 'batch_stats'}

Writes go to a sibling temporary directory that is renamed into place at the end, so a crash never leaves a
half-written checkpoint under DIR. Trainers may add their own sub-directories (optimizer state) the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from .model.spec import Spec
from .model.yolov8 import variable_shapes

SPEC_FILE, META_FILE, VARS_DIR = "spec.json", "meta.json", "variables"


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays do not fit the spec they are loaded into."""


def _checkpointer():
    import orbax.checkpoint as ocp
    if jax.process_count() > 1:
        # Arrays here are host numpy copies and only the writing process saves: no cross-host barriers.
        me = jax.process_index()
        return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
    return ocp.StandardCheckpointer()


def save_pytree(path: Path, tree: Any) -> None:
    """Save a pytree of arrays with Orbax (blocking)."""
    ckptr = _checkpointer()
    ckptr.save(Path(path).absolute(), jax.tree.map(np.asarray, tree))
    ckptr.wait_until_finished()


def restore_pytree(path: Path, target: Any = None) -> Any:
    ckptr = _checkpointer()
    path = Path(path).absolute()
    if target is None:
        return ckptr.restore(path)
    return ckptr.restore(path, jax.tree.map(np.asarray, target))


def atomic_dir(final: Path):
    """Context manager yielding a temp dir beside `final` that replaces `final` only on success."""
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def recover_dir(final: Path) -> None:
    """Clean up after a writer killed mid-save: if `final` is missing but its previous version was moved aside
    (killed between the two renames of `atomic_dir`), put it back; then drop leftover temporary copies."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not final.exists() and olds:
        os.replace(olds.pop(), final)
    for p in olds + list(final.parent.glob(f".{final.name}.tmp-*")):
        shutil.rmtree(p, ignore_errors=True)


def save_model(directory: str | Path, spec: Spec, variables: Mapping, meta: Mapping | None = None) -> Path:
    """Write spec + {'params','batch_stats'} (+ meta) atomically to `directory`."""
    directory = Path(directory)
    meta = dict(meta or {})
    with atomic_dir(directory) as tmp:
        write_model_files(tmp, spec, variables, meta)
    return directory


def write_model_files(directory: Path, spec: Spec, variables: Mapping, meta: Mapping) -> None:
    """spec.json + meta.json + variables/ into an (already atomic, temporary) directory."""
    meta = dict(meta)
    meta.setdefault("format", "yolojax-model/1")
    meta.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
    (directory / SPEC_FILE).write_text(spec.to_json())
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    save_pytree(directory / VARS_DIR, {"params": variables["params"],
                                       "batch_stats": variables.get("batch_stats", {})})


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / SPEC_FILE).is_file() and (p / VARS_DIR).is_dir()


def check_shapes(spec: Spec, variables: Mapping, source: str = "checkpoint") -> None:
    """Raise CheckpointMismatchError naming the first path whose shape differs from what `spec` needs."""
    expected = variable_shapes(spec)
    for coll in ("params", "batch_stats"):
        exp = {tuple(k.key for k in p): l.shape for p, l in jax.tree_util.tree_flatten_with_path(expected[coll])[0]}
        got = {tuple(k.key for k in p): np.shape(l)
               for p, l in jax.tree_util.tree_flatten_with_path(variables.get(coll, {}))[0]}
        for path in sorted(exp.keys() | got.keys()):
            name = f"{coll}/{'/'.join(path)}"
            if path not in got:
                raise CheckpointMismatchError(f"{source} does not fit spec {spec.variant!r}: {name} is missing "
                                              f"(spec expects shape {tuple(exp[path])})")
            if path not in exp:
                raise CheckpointMismatchError(f"{source} does not fit spec {spec.variant!r}: {name} "
                                              f"{tuple(got[path])} has no place in the spec")
            if tuple(exp[path]) != tuple(got[path]):
                raise CheckpointMismatchError(f"{source} does not fit spec {spec.variant!r}: {name} has shape "
                                              f"{tuple(got[path])}, the spec expects {tuple(exp[path])}")


def load_model(directory: str | Path, spec: Spec | None = None) -> tuple[Spec, dict, dict]:
    """(spec, variables, meta) from a model checkpoint. With `spec`, load into it and check every shape."""
    directory = Path(directory)
    if not is_model_dir(directory):
        raise FileNotFoundError(f"{directory} is not a yolojax model checkpoint (no {SPEC_FILE} + {VARS_DIR}/)")
    saved_spec = Spec.from_json((directory / SPEC_FILE).read_text())
    meta = json.loads((directory / META_FILE).read_text()) if (directory / META_FILE).exists() else {}
    raw = restore_pytree(directory / VARS_DIR)
    variables = {"params": raw["params"], "batch_stats": raw.get("batch_stats", {})}
    target = spec or saved_spec
    check_shapes(target, variables, source=str(directory))
    variables = jax.tree.map(np.asarray, variables)
    return target, variables, meta
