"""Other people's files: outputs are never replaced unless they are our own, hostile .pt files cannot read
past their buffers, damaged checkpoints are named on load, and a killed run keeps best/ and last/ consistent."""
import collections
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import yolojax
from yolojax import checkpoint
from yolojax.checkpoint import CheckpointCorruptError
from yolojax.errors import OutputExistsError
from yolojax.model import tiny_spec
from yolojax.model.ultralytics import MalformedCheckpointError, read_pt, state_dict_from_pt
from yolojax.train.checkpoints import resume_info
from tests.conftest import REFERENCE, REPO

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny():
    return yolojax.Detector.create(tiny_spec(3), seed=1)


def _cli(*args, **kw):
    from yolojax.cli import main
    return main([str(a) for a in args])


def _user_files(d: Path) -> Path:
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "sub").mkdir()
    (d / "sub" / "data.csv").write_text("1,2,3")
    return d


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# -- 1. outputs: refuse rather than overwrite ---------------------------------------------------------------

def test_convert_refuses_a_folder_of_user_files(tmp_path, capsys):
    d = _user_files(tmp_path / "mine")
    before = _snapshot(d)
    assert _cli("convert", REFERENCE / "yolov8n_nc80_random.pt", d) == 2
    err = capsys.readouterr().err
    assert "refusing to replace" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _snapshot(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no .tmp / .old left beside it


def test_convert_refuses_an_existing_file_and_replaces_only_a_checkpoint(tmp_path, tiny, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    assert _cli("convert", REFERENCE / "yolov8n_nc80_random.pt", f) == 2
    assert f.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # an earlier checkpoint is the command's own kind of output: replaced
    tiny.save(tmp_path / "ck")
    assert _cli("convert", REFERENCE / "yolov8n_nc80_random.pt", tmp_path / "ck") == 0
    assert "replacing the checkpoint" in capsys.readouterr().out
    assert yolojax.load(tmp_path / "ck").spec.variant == "n"
    # --force replaces even a file, and leaves no hidden copy of it
    assert _cli("convert", REFERENCE / "yolov8n_nc80_random.pt", f, "--force") == 0
    assert checkpoint.is_model_dir(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "notes.txt"]


def test_save_model_api_refuses_too(tmp_path, tiny):
    d = _user_files(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="not a yolojax checkpoint"):
        tiny.save(d)
    (tmp_path / "empty").mkdir()
    tiny.save(tmp_path / "empty")  # an empty folder is fine
    assert checkpoint.is_model_dir(tmp_path / "empty")


def test_failed_rename_restores_the_previous_version_and_cleans_up(tmp_path, tiny, monkeypatch):
    tiny.save(tmp_path / "ck", version=1)
    real = os.replace

    def replace(src, dst):  # a read-only target: moving the new version into place fails
        if ".tmp-" in str(src):
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(PermissionError):
        tiny.save(tmp_path / "ck", version=2)
    monkeypatch.undo()
    assert yolojax.load(tmp_path / "ck").meta["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_prune_refuses_user_folder_and_its_own_input(tmp_path, tiny, capsys):
    src = tmp_path / "src"
    tiny.save(src)
    d = _user_files(tmp_path / "mine")
    before = _snapshot(d)
    assert _cli("prune", src, "-o", d, "--ratio", "0.3") == 2
    assert _snapshot(d) == before
    assert _cli("prune", src, "-o", src, "--ratio", "0.3") == 2
    assert "would replace the model being pruned" in capsys.readouterr().err
    assert yolojax.load(src).spec == tiny.spec


def test_export_refuses_user_files(tmp_path, tiny, capsys):
    tiny.save(tmp_path / "ck")
    d = _user_files(tmp_path / "mine")
    before = _snapshot(d)
    for fmt in ("onnx", "savedmodel"):
        assert _cli("export", tmp_path / "ck", "--format", fmt, "-o", d, "--imgsz", "64") == 2
    (tmp_path / "model.pt").write_bytes(b"weights")
    assert _cli("export", tmp_path / "ck", "-o", tmp_path / "model.pt", "--imgsz", "64") == 2
    assert _snapshot(d) == before and (tmp_path / "model.pt").read_bytes() == b"weights"
    assert "refusing to replace" in capsys.readouterr().err


# -- 2. hostile .pt files ----------------------------------------------------------------------------------

class _G:
    """A global written by name into the pickle: torch and ultralytics need not be installed to forge one."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __reduce_ex__(self, protocol):
        return self.name

    def __call__(self, *args):  # pickle only checks that a reduce function is callable
        raise TypeError("a forged global is not callable")


class _Call:
    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce_ex__(self, protocol):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


class _StorageRef:
    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _Pickler(pickle._Pickler):
    def save_global(self, obj, name=None):
        if isinstance(obj, _G):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        return super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            st = _G("torch", obj.storage_type) if isinstance(obj.storage_type, str) else obj.storage_type
            return ("storage", st, obj.key, "cpu", obj.numel)
        return None


def forge_pt(path: Path, tensors: dict, storages: dict, storage_type="FloatStorage", byteorder="little",
             numel=None) -> Path:
    """A torch-format zip whose model holds `tensors` {name: (key, offset, size, stride)} over raw `storages`."""
    params = collections.OrderedDict()
    for name, (key, offset, size, stride) in tensors.items():
        n = numel if numel is not None else len(storages[key]) // 4
        params[name] = _Call(_G("torch._utils", "_rebuild_tensor_v2"), _StorageRef(key, storage_type, n), offset,
                             size, stride, False, collections.OrderedDict())
    model = _Call(_G("ultralytics.nn.tasks", "DetectionModel"),
                  state={"_parameters": params, "_buffers": collections.OrderedDict(),
                         "_modules": collections.OrderedDict()})
    import io
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"model": model, "epoch": -1})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", buf.getvalue())
        zf.writestr("m/byteorder", byteorder)
        for key, raw in storages.items():
            zf.writestr(f"m/data/{key}", raw)
    return path


def test_forged_pt_reads_like_torch(tmp_path):
    raw = np.arange(12, dtype="<f4").tobytes()
    pt = forge_pt(tmp_path / "ok.pt", {"w": ("0", 0, (3, 4), (4, 1)), "t": ("0", 1, (2, 2), (1, 4)),
                                       "s": ("0", 5, (), ())}, {"0": raw})
    state, _ = state_dict_from_pt(pt)
    np.testing.assert_array_equal(state["w"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(state["t"], [[1, 5], [2, 6]])
    assert state["s"].shape == () and float(state["s"]) == 5.0


@pytest.mark.parametrize("case", ["past_end", "huge", "offset", "negative_stride", "rank", "overlap", "short_storage"])
def test_tensor_extent_is_checked_before_any_view(tmp_path, case):
    raw = np.arange(16, dtype="<f4").tobytes()
    t = {"past_end": ("0", 0, (4, 8), (8, 1)),          # 32 elements from a storage of 16: heap beyond it
         "huge": ("0", 0, (1 << 20, 1 << 20), (1 << 20, 1)),  # segfaulted `yolojax info`
         "offset": ("0", 20, (2,), (1,)),
         "negative_stride": ("0", 15, (4,), (-1,)),
         "rank": ("0", 0, (4, 4), (4,)),
         "overlap": ("0", 0, (1000, 16), (0, 1)),        # within bounds, but 1000x its storage
         "short_storage": ("0", 0, (16,), (1,))}[case]
    pt = forge_pt(tmp_path / "evil.pt", {"w": t}, {"0": raw}, numel=64 if case == "short_storage" else None)
    with pytest.raises(MalformedCheckpointError):
        read_pt(pt)


@pytest.mark.parametrize("case", ["object_dtype", "big_endian", "missing_storage", "not_a_storage"])
def test_storage_dtype_and_byte_order_are_validated(tmp_path, case):
    raw = np.arange(4, dtype="<f4").tobytes()
    if case == "object_dtype":
        pt = forge_pt(tmp_path / "e.pt", {"w": ("0", 0, (4,), (1,))}, {"0": raw},
                      storage_type=_Call(_G("numpy", "dtype"), "O"))
    elif case == "big_endian":
        pt = forge_pt(tmp_path / "e.pt", {"w": ("0", 0, (4,), (1,))}, {"0": raw}, byteorder="big")
    elif case == "missing_storage":
        pt = forge_pt(tmp_path / "e.pt", {"w": ("0", 0, (4,), (1,))}, {"0": raw})
        with zipfile.ZipFile(pt) as z:
            files = {n: z.read(n) for n in z.namelist() if not n.endswith("data/0")}
        with zipfile.ZipFile(pt, "w") as z:
            for n, b in files.items():
                z.writestr(n, b)
    else:  # a tensor rebuilt from a list the pickle made, not from a storage of the archive
        import io
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump({"x": _Call(_G("torch._utils", "_rebuild_tensor_v2"), [1.0] * 4, 0, (64,),
                                                   (1,), False, collections.OrderedDict())})
        pt = tmp_path / "e.pt"
        with zipfile.ZipFile(pt, "w") as zf:
            zf.writestr("m/data.pkl", buf.getvalue())
    with pytest.raises(MalformedCheckpointError):
        read_pt(pt)


def test_crafted_pt_is_an_error_not_a_crash_in_the_cli(tmp_path):
    pt = forge_pt(tmp_path / "evil.pt", {"model.0.conv.weight": ("0", 0, (1 << 20, 1 << 20), (1 << 20, 1))},
                  {"0": np.zeros(16, "<f4").tobytes()})
    for cmd in (["info", pt], ["convert", pt, tmp_path / "out"]):
        r = subprocess.run([sys.executable, "-m", "yolojax.cli", *map(str, cmd)], capture_output=True, text=True,
                           env=ENV, cwd=REPO, timeout=300)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]  # (library warnings may precede it)
        assert len(errors) == 1 and "storage" in errors[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


# -- 4. damaged checkpoints --------------------------------------------------------------------------------

def _flip(path: Path, n: int = 400) -> None:
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    for i in range(mid, min(mid + n, len(b))):
        b[i] ^= 0x5A
    path.write_bytes(bytes(b))


def test_flipped_bytes_are_named_on_load(tmp_path, tiny, capsys):
    tiny.save(tmp_path / "ck")
    chunks = sorted((p for p in (tmp_path / "ck" / "variables").rglob("*") if p.is_file()),
                    key=lambda p: p.stat().st_size)
    _flip(chunks[-1])
    with pytest.raises(CheckpointCorruptError, match=r"array (params|batch_stats)/\S+ does not match|could not be read"):  # or fails to decode at all
        yolojax.load(tmp_path / "ck")
    assert _cli("info", tmp_path / "ck", "--json") == 2
    err = capsys.readouterr().err  # the flip lands in an array (checksum) or in the store's index (unreadable)
    assert ("does not match the checksum" in err or "could not be read" in err) and str(tmp_path / "ck") in err


def test_restore_into_a_template_is_verified(tmp_path):
    tree = {"a": np.arange(50_000, dtype=np.float32) * 1.37, "b": {"c": np.ones((3, 3)), "step": np.int32(7)}}
    checkpoint.save_pytree(tmp_path / "t", tree)
    back = checkpoint.restore_pytree(tmp_path / "t", tree)
    np.testing.assert_array_equal(back["a"], tree["a"])
    names = json.loads((tmp_path / "t.sha256.json").read_text())
    assert set(names) == {"a", "b/c", "b/step"}
    names["b/c"] = "0" * 64
    (tmp_path / "t.sha256.json").write_text(json.dumps(names))
    with pytest.raises(CheckpointCorruptError, match="array b/c"):
        checkpoint.restore_pytree(tmp_path / "t", tree)


def test_checkpoint_without_checksums_still_loads(tmp_path, tiny):
    tiny.save(tmp_path / "ck")
    (tmp_path / "ck" / "variables.sha256.json").unlink()  # written before checksums existed
    assert yolojax.load(tmp_path / "ck").spec == tiny.spec


# -- 3. best/ and last/ stay consistent across a kill --------------------------------------------------------

class _Killed(BaseException):
    pass


def _trainer(tmp_path, data, epochs):
    from yolojax.data import load_dataset
    from yolojax.train.config import TrainConfig
    from yolojax.train.trainer import Trainer
    from yolojax.model import init_variables
    train = load_dataset(data, "train")
    spec = tiny_spec(train.nc).replace(names=tuple(train.names))
    cfg = TrainConfig(epochs=epochs, batch=4, imgsz=64, nbs=4, workers=1, mosaic=False, augment=False,
                      optimizer="sgd", warmup_epochs=0)
    t = Trainer(cfg, tmp_path / "run", train, None, spec, init_variables(spec, 0), progress=False)
    fitness = {1: 0.1, 2: 0.2, 3: 0.3}
    t.validate = lambda variables=None: {"fitness": fitness[t.epoch + 1], "map50": fitness[t.epoch + 1]}
    return t


def _consistent(run: Path) -> dict:
    info = resume_info(run)
    best = yolojax.load(run / "best")
    last = yolojax.load(run / "last")
    assert best.meta["best_fitness"] == info["best_fitness"]
    assert best.meta["epoch"] <= info["epoch"]
    return {"info": info, "best": best, "last": last}


@pytest.mark.slow
def test_kill_between_best_and_last_then_resume(tmp_path):
    from yolojax.data.synth import make_synthetic
    data = make_synthetic(tmp_path / "data", images=10, imgsz=64, seed=3, progress=False)
    t = _trainer(tmp_path, data, 3)
    save_state = t.save_state

    def killing_save_state(**kw):
        if t.epoch == 2:
            raise _Killed  # kill -9 after best/ (and last/) of epoch 2 are written, before its checkpoint
        return save_state(**kw)

    t.save_state = killing_save_state
    with pytest.raises(_Killed):
        t.fit()
    t.close()
    run = tmp_path / "run"
    assert json.loads((run / "best" / "meta.json").read_text())["epoch"] == 2
    assert resume_info(run)["epoch"] == 1

    t = _trainer(tmp_path, data, 3)
    t.restore()
    t.fit()
    s = _consistent(run)
    assert s["info"]["best_fitness"] == 0.3 and s["best"].meta["epoch"] == 3
    for a, b in zip(jax.tree.leaves(s["best"].variables), jax.tree.leaves(s["last"].variables)):
        np.testing.assert_array_equal(a, b)  # epoch 3 is both the best and the last

    # a best/ lost by an older version (or deleted): rewritten from last/ when last/ is the best epoch
    import shutil
    shutil.rmtree(run / "best")
    t = _trainer(tmp_path, data, 3)
    t.restore()
    t.close()
    s = _consistent(run)
    assert s["best"].meta["epoch"] == 3
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
