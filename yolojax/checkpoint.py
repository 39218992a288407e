"""Model checkpoints: a directory holding the spec beside the weights, so any checkpoint (pruned or not)
loads with no code change.

    DIR/spec.json      the Spec (widths of every layer)
    DIR/meta.json      free-form metadata (class names, image size, provenance, metrics)
    DIR/variables/     Orbax checkpoint of {'params', 'batch_stats'}
    DIR/variables.sha256.json   SHA-256 of every array, checked on load (Orbax reads flipped bytes silently)

Writes go to a sibling temporary directory that is renamed into place at the end, so a crash never leaves a
half-written checkpoint under DIR. Trainers may add their own sub-directories (optimizer state) the same way.
A save replaces DIR only if it is absent, an empty folder or a yolojax checkpoint: it never deletes files it
did not write (`force=True` to replace anything).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from .errors import OutputExistsError, UserError
from .model.spec import Spec
from .model.yolov8 import variable_shapes

SPEC_FILE, META_FILE, VARS_DIR = "spec.json", "meta.json", "variables"
CHECKSUM_SUFFIX = ".sha256.json"
log = logging.getLogger("yolojax.checkpoint")


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint's arrays do not fit the spec they are loaded into."""


class CheckpointCorruptError(UserError, ValueError):
    """A checkpoint's array differs from the checksum written with it: the files were damaged after the save."""


def _checkpointer():
    import orbax.checkpoint as ocp
    if jax.process_count() > 1:
        # Arrays here are host numpy copies and only the writing process saves: no cross-host barriers.
        me = jax.process_index()
        return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
    return ocp.StandardCheckpointer()


def _leaf_name(path) -> str:
    """'params/model_0/conv/kernel' for a dict path, an attribute path (TrainState.params) or a sequence index
    alike, so the names match whether a tree is restored into a template or as plain dicts."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
    return h.hexdigest()


def checksums(tree: Any) -> dict[str, str]:
    """{leaf name: sha256 of dtype, shape and bytes} of a pytree of arrays."""
    return {_leaf_name(p): _digest(np.asarray(leaf)) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def verify_checksums(path: Path, tree: Any) -> None:
    """Raise CheckpointCorruptError naming the first array of `tree` (restored from `path`) whose bytes differ
    from the checksum saved beside it. Checkpoints written before checksums existed load unverified."""
    file = _checksum_file(Path(path))
    if not file.exists():
        log.info("%s: no %s (an older checkpoint): arrays not verified", path, file.name)
        return
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointCorruptError(f"{file}: unreadable checksums ({e})") from None
    got = checksums(tree)
    missing = sorted(saved.keys() - got.keys())
    if missing and got.keys() <= saved.keys():  # same names, fewer arrays: some were lost, not renamed
        raise CheckpointCorruptError(f"{path}: array {missing[0]} is missing ({len(missing)} of {len(saved)})")
    for name in sorted(saved.keys() & got.keys()):
        if saved[name] != got[name]:
            raise CheckpointCorruptError(f"{path}: array {name} does not match the checksum written with it: the "
                                         f"checkpoint is damaged (restore it from a copy, or retrain)")


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until the block is done, then raise it. Orbax writes from its own threads: interrupted in
    `wait_until_finished`, the command would exit while they still write (a traceback from a dying thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def save_pytree(path: Path, tree: Any) -> None:
    """Save a pytree of arrays with Orbax (blocking), and the SHA-256 of every array beside it."""
    ckptr = _checkpointer()
    tree = jax.tree.map(np.asarray, tree)
    with _sigint_deferred():
        ckptr.save(Path(path).absolute(), tree)
        ckptr.wait_until_finished()
    _checksum_file(Path(path)).write_text(json.dumps(checksums(tree), indent=0))


def restore_pytree(path: Path, target: Any = None) -> Any:
    """Restore a pytree saved by `save_pytree` (into `target`'s structure if given), verifying its checksums."""
    ckptr = _checkpointer()
    path = Path(path).absolute()
    try:
        tree = ckptr.restore(path) if target is None else ckptr.restore(path, jax.tree.map(np.asarray, target))
    except (ValueError, OSError, RuntimeError) as e:  # a damaged chunk can fail to decode before any checksum
        raise CheckpointCorruptError(f"{path}: could not be read, the checkpoint is damaged ({type(e).__name__}: "
                                     f"{str(e)[:200]})") from e
    verify_checksums(path, tree)
    return tree


def atomic_dir(final: Path, *, force: bool = False):
    """Context manager yielding a temp dir beside `final` that replaces `final` only on success.

    `final` must be absent, an empty folder or a yolojax checkpoint (checked before anything is written):
    anything else raises OutputExistsError, since replacing it would delete the user's files. force=True
    replaces whatever is there."""
    final = Path(final)
    if not force:
        check_replaceable(final)
    return _AtomicDir(final)


def check_replaceable(final: Path, what: str = "output") -> None:
    """Raise OutputExistsError unless `final` is absent, an empty folder or a yolojax model checkpoint."""
    final = Path(final)
    if not (final.exists() or final.is_symlink()):
        return
    if final.is_dir() and not final.is_symlink() and (is_model_dir(final) or not any(final.iterdir())):
        return
    kind = "file" if final.is_file() or final.is_symlink() else "folder that is not a yolojax checkpoint"
    raise OutputExistsError(f"{what} {final} exists and is a {kind}: refusing to replace it (choose another "
                            f"output, or --force to overwrite)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
        try:
            if self.final.exists() or self.final.is_symlink():
                old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.final, old)
            os.replace(self.tmp, self.final)
        except BaseException:
            # e.g. a read-only target: put the previous version back and leave no temporary copy behind
            if old is not None and not (self.final.exists() or self.final.is_symlink()):
                os.replace(old, self.final)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            _remove(old)
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
        _remove(p)


def save_model(directory: str | Path, spec: Spec, variables: Mapping, meta: Mapping | None = None, *,
               force: bool = False) -> Path:
    """Write spec + {'params','batch_stats'} (+ meta) atomically to `directory` (see `atomic_dir` for what it
    may replace)."""
    directory = Path(directory)
    meta = dict(meta or {})
    with atomic_dir(directory, force=force) as tmp:
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
