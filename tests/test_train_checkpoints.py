"""Training-state checkpoints (Orbax CheckpointManager, asynchronous): what is saved is the state at the save
even though the step that follows donates it, a save killed mid-write leaves the previous checkpoint to resume
from, damage is named, max_to_keep holds, and runs written by the older layout still resume."""
import json
import shutil

import jax
import numpy as np
import pytest

from yolojax import checkpoint
from yolojax.checkpoint import CheckpointCorruptError
from yolojax.data import load_dataset
from yolojax.train.checkpoints import fingerprints, resume_info
from yolojax.train.config import TrainConfig
from yolojax.train.trainer import Trainer, resolve_model
from tests.conftest import committed_steps


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synth"), images=20, imgsz=64, seed=3, progress=False)


def _trainer(run, synth, **cfg):
    train = load_dataset(synth, "train")
    spec, variables, _ = resolve_model("tiny", train.nc, train.names)
    cfg = TrainConfig(**{**dict(epochs=2, batch=2, nbs=2, imgsz=64, workers=0, augment=False, mosaic=False,
                                optimizer="sgd", warmup_epochs=0), **cfg})
    run.mkdir(exist_ok=True)
    return Trainer(cfg, run, train, None, spec, variables, progress=False)


def _host(state):
    return jax.tree.map(np.asarray, jax.device_get(state))


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_async_save_holds_the_state_at_the_save_and_resumes_it(tmp_path, synth):
    run = tmp_path / "run"
    t = _trainer(run, synth, keep_checkpoints=2)
    t.train_epoch(stop_after=2)
    at_save = _host(t.state)
    step = t.save_state()
    t.train_epoch(stop_after=2)  # the step donates the state the save read: the save must not see it change
    t.save_state()
    t.train_epoch(stop_after=1)
    last = t.save_state()
    t.close()  # waits for the writes
    assert step == 2 and last == 5
    assert committed_steps(run) == [4, 5]  # keep_checkpoints=2
    t2 = _trainer(run, synth, keep_checkpoints=2)
    st, info = t2.checkpoints.restore(4, t2.state)
    assert info["loader"]["batch"] == 4 and info["step"] == 4
    t2.restore()  # the latest: step 5
    assert t2.position()["batch"] == 5 and t2.train_loader.state()["batch"] == 5
    assert int(t2.state.step) == 5
    # step 2 was rotated out, so check what a save holds with a fresh run that keeps everything
    t3 = _trainer(tmp_path / "run3", synth, keep_checkpoints=10)
    t3.train_epoch(stop_after=2)
    ref = _host(t3.state)
    t3.save_state()
    t3.train_epoch(stop_after=3)
    t3.close()
    restored, _ = t3.checkpoints.restore(2, t3.state)
    _assert_same(restored, ref)
    _assert_same(ref, at_save)  # same seed, same data: the same state as the first run's at its step 2


def test_a_save_killed_mid_write_is_ignored_and_cleaned_then_resume_continues(tmp_path, synth):
    run = tmp_path / "run"
    t = _trainer(run, synth)
    t.train_epoch(stop_after=3)
    t.save_state()
    t.close()
    # what kill -9 during Orbax's write leaves: a step under its temporary name, half written
    tmp = run / "checkpoints" / "5.orbax-checkpoint-tmp-1764612000000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 17)
    assert resume_info(run)["step"] == 3
    t2 = _trainer(run, synth)
    t2.restore()
    assert t2.position()["batch"] == 3
    t2.train_epoch(stop_after=1)
    assert t2.save_state() == 4
    t2.close()
    assert committed_steps(run) == [3, 4]
    assert not tmp.exists()  # the resumed run's checkpoint manager removed it


def test_damaged_checkpoint_is_named_on_resume(tmp_path, synth):
    run = tmp_path / "run"
    t = _trainer(run, synth)
    t.train_epoch(stop_after=1)
    t.save_state()
    t.close()
    # flip the fingerprint of one array: what a changed byte in that array's chunk looks like on restore
    info_file = run / "checkpoints" / "1" / "trainer" / "metadata"
    info = json.loads(info_file.read_text())
    name = sorted(info["fingerprints"])[3]
    info["fingerprints"][name] ^= 1
    info_file.write_text(json.dumps(info))
    t2 = _trainer(run, synth)
    with pytest.raises(CheckpointCorruptError, match=f"array {name} does not match"):
        t2.restore()


def test_fingerprint_changes_with_any_word_and_position():
    x = np.arange(1000, dtype=np.float32)
    base = int(fingerprints([x])[0])
    for i in (0, 1, 500, 999):
        y = x.copy()
        y.view(np.uint32)[i] ^= 1 << 31
        assert int(fingerprints([y])[0]) != base
    assert int(fingerprints([x[::-1].copy()])[0]) != base


def test_runs_of_the_older_layout_still_resume(tmp_path, synth):
    """Before the CheckpointManager, RUN/last held train_state/ (Orbax StandardCheckpointer) + trainer.json."""
    run = tmp_path / "run"
    t = _trainer(run, synth)
    t.train_epoch(stop_after=3)
    state = _host(t.state)
    pos = t.position()
    t.close()
    shutil.rmtree(run / "checkpoints")
    checkpoint.save_model(run / "last", t.spec, _host(t.state.ema_variables()))
    checkpoint.save_pytree(run / "last" / "train_state", state)
    (run / "last" / "trainer.json").write_text(json.dumps({"epoch": 0, "best_fitness": -1.0, "history": [],
                                                           "loader": pos, "config": {}}))
    info = resume_info(run)
    assert info["legacy"] and info["loader"]["batch"] == 3
    t2 = _trainer(run, synth)
    t2.restore()
    _assert_same(_host(t2.state), state)
    assert t2.position()["batch"] == 3
    t2.train_epoch(stop_after=1)
    assert t2.save_state() == 4  # continues in the new layout
    t2.close()
    assert resume_info(run)["step"] == 4
