"""Orbax model checkpoints: exact round trip, clear wrong-spec errors, atomic writes; the CLI commands."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import yolojax
from yolojax import checkpoint
from yolojax.checkpoint import CheckpointMismatchError
from yolojax.model import tiny_spec
from tests.conftest import REFERENCE, REPO


@pytest.fixture(scope="module")
def tiny():
    return yolojax.Detector.create(tiny_spec(3), seed=1)


def test_save_load_round_trip_is_exact(tmp_path, tiny):
    tiny.save(tmp_path / "ck", note="hello")
    back = yolojax.load(tmp_path / "ck")
    assert back.spec == tiny.spec and back.meta["note"] == "hello"
    for a, b in zip(jax.tree.leaves(tiny.variables), jax.tree.leaves(back.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(tiny(x)["boxes"]), np.asarray(back(x)["boxes"]))


def test_wrong_spec_names_first_mismatch(tmp_path, tiny):
    tiny.save(tmp_path / "ck")
    other = tiny.spec.replace(widths={**tiny.spec.width_map, "model_1": 16})
    with pytest.raises(CheckpointMismatchError, match=r"params/model_1/bn/bias has shape \(8,\), the spec expects \(16,\)"):
        yolojax.load(tmp_path / "ck", spec=other)
    with pytest.raises(CheckpointMismatchError, match="cv4_0_0"):
        yolojax.load(tmp_path / "ck", spec=tiny_spec(3, task="obb"))


def test_failed_save_leaves_previous_checkpoint(tmp_path, tiny, monkeypatch):
    tiny.save(tmp_path / "ck", version=1)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "save_pytree", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny.save(tmp_path / "ck", version=2)
    assert yolojax.load(tmp_path / "ck").meta["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp directory left behind


def test_load_rejects_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        yolojax.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a yolojax model checkpoint"):
        yolojax.load(tmp_path / "empty")


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "yolojax.cli", *map(str, args)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_cli_info_json():
    d = json.loads(_cli("info", "yolov8s", "--nc", "10", "--json"))
    assert d["params"] == 11_139_470 and round(d["gflops"], 3) == 28.661 and d["macs"] == 14_226_048_000


def test_cli_convert_then_info(tmp_path):
    _cli("convert", REFERENCE / "yolov8n_nc80_random.pt", tmp_path / "ck")
    d = json.loads(_cli("info", tmp_path / "ck", "--imgsz", "320", "--json"))
    assert d["params"] == 3_157_200 and d["variant"] == "n"
    det = yolojax.load(tmp_path / "ck")
    assert det.names[0] == "class0" and det.meta["source"].endswith("yolov8n_nc80_random.pt")


def test_recover_after_kill_between_renames(tmp_path, tiny):
    tiny.save(tmp_path / "ck", version=1)
    # a writer killed after moving the old version aside and before renaming the new one into place
    (tmp_path / "ck").rename(tmp_path / ".ck.old-1234")
    (tmp_path / ".ck.tmp-5678").mkdir()
    checkpoint.recover_dir(tmp_path / "ck")
    assert yolojax.load(tmp_path / "ck").meta["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
