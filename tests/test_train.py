"""Trainer: optimizer groups and schedules, data-parallel equivalence, NaN stop, kill -9 + resume, multi-host."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from yolojax.model import init_variables, tiny_spec
from yolojax.train.config import TrainConfig
from yolojax.train.optim import build_optimizer, make_schedules, param_labels
from yolojax.train.step import create_state, make_train_step
from yolojax.train.checkpoints import resume_info
from tests.conftest import REPO, committed_steps

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def test_param_groups_follow_ultralytics():
    v = init_variables(tiny_spec(2), 0)
    labels = param_labels(v["params"])
    assert labels["model_0"]["conv"]["kernel"] == "decay"
    assert labels["model_0"]["bn"]["scale"] == "bn"
    assert labels["model_0"]["bn"]["bias"] == "bias"
    assert labels["model_22"]["cv3_0_2"]["kernel"] == "decay"
    assert labels["model_22"]["cv3_0_2"]["bias"] == "bias"


def test_schedules_warmup_and_linear_decay():
    cfg = TrainConfig(epochs=10, lr0=0.01, lrf=0.01, warmup_epochs=3, warmup_bias_lr=0.1)
    lrs, mom, warmup = make_schedules(cfg, updates_per_epoch=50, lr0=0.01, momentum=0.937)
    assert warmup == 150
    assert float(lrs["bias"](0)) == pytest.approx(0.1)
    assert float(lrs["decay"](0)) == pytest.approx(0.0)
    assert float(mom(0)) == pytest.approx(0.8)
    assert float(mom(75)) == pytest.approx(0.8 + 0.137 / 2, rel=1e-5)
    # after warmup: lr0 * lf(epoch), lf linear from 1 to lrf, stepped per epoch
    assert float(lrs["decay"](200)) == pytest.approx(0.01 * ((1 - 4 / 10) * 0.99 + 0.01), rel=1e-6)
    assert float(lrs["bias"](499)) == pytest.approx(0.01 * ((1 - 9 / 10) * 0.99 + 0.01), rel=1e-6)
    assert float(mom(400)) == pytest.approx(0.937)


def test_weight_decay_only_on_kernels():
    spec = tiny_spec(2)
    v = init_variables(spec, 0)
    cfg = TrainConfig(optimizer="sgd", batch=64, nbs=64, clip_norm=0, warmup_epochs=0, lr0=0.1)
    tx, info = build_optimizer(cfg, v["params"], steps_per_epoch=10, nc=2)
    trainable = {"model": v["params"], "aux": {}}
    zeros = jax.tree.map(jnp.zeros_like, trainable)
    upd, _ = tx.update(zeros, tx.init(trainable), trainable)
    # with zero gradients only decayed leaves move: -lr * wd * p, times (1 + momentum) on a first Nesterov
    # step (PyTorch: buf = g; g + mu * buf)
    k = v["params"]["model_1"]["conv"]["kernel"]
    np.testing.assert_allclose(upd["model"]["model_1"]["conv"]["kernel"], -0.1 * 5e-4 * 1.937 * k, rtol=1e-5,
                               atol=1e-12)
    assert float(jnp.abs(upd["model"]["model_1"]["bn"]["scale"]).max()) == 0.0
    assert float(jnp.abs(upd["model"]["model_22"]["cv2_0_2"]["bias"]).max()) == 0.0


def _batch(B=4, S=64, M=6, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, S - 20, (B, M, 2))
    wh = rng.uniform(6, 20, (B, M, 2))
    mask = np.arange(M)[None] < rng.integers(1, M + 1, (B, 1))
    return {"images": rng.integers(0, 255, (B, S, S, 3), dtype=np.uint8),
            "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
            "classes": rng.integers(0, 2, (B, M)).astype(np.int32), "mask": mask,
            "ignore": np.zeros((B, M), bool)}


def test_non_finite_step_leaves_state_unchanged():
    spec = tiny_spec(2)
    v = init_variables(spec, 0)
    tx = optax.sgd(0.01)
    step = jax.jit(make_train_step(spec, tx))
    state = create_state(v, tx)
    batch = _batch()
    good, m = step(state, batch)
    assert bool(m["finite"]) and np.isfinite(float(m["loss"]))
    params = jax.tree.map(lambda x: x, good.params)
    params["model_1"]["conv"]["kernel"] = params["model_1"]["conv"]["kernel"].at[0, 0, 0, 0].set(jnp.inf)
    poisoned = good.replace(params=params)
    bad, m = step(poisoned, batch)
    assert not bool(m["finite"]) and not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(bad), jax.tree.leaves(poisoned)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


DP_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, jax, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[1])
    from tests.test_train import _batch
    from yolojax.model import init_variables, tiny_spec
    from yolojax.train.step import create_state, make_train_step
    assert jax.device_count() == 4, jax.devices()
    spec = tiny_spec(2)
    tx = optax.sgd(0.01, momentum=0.9)
    state0 = create_state(init_variables(spec, 0), tx)
    batch = _batch(B=8)
    out = {}
    for n in (1, 4):
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
        data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        step = jax.jit(make_train_step(spec, tx), in_shardings=(rep, data, rep), out_shardings=(rep, rep))
        s = jax.device_put(state0, rep)
        b = {k: jax.device_put(v, data) for k, v in batch.items()}
        losses = []
        for _ in range(2):
            s, m = step(s, b, None)
            losses.append(float(m["loss"]))
        out[n] = dict(losses=losses, mean=np.asarray(s.batch_stats["model_0"]["bn"]["mean"]).tolist(),
                      k=float(np.abs(np.asarray(s.params["model_1"]["conv"]["kernel"])).sum()))
    print(json.dumps(out))
""")


def test_same_loss_on_1_and_4_devices():
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", DP_SCRIPT, str(REPO)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    one, four = out["1"], out["4"]
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-4)
    # BN statistics are those of the whole global batch, not of a device's shard
    np.testing.assert_allclose(four["mean"], one["mean"], rtol=1e-4, atol=1e-6)
    assert four["k"] == pytest.approx(one["k"], rel=1e-5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return Path(make_synthetic(tmp_path_factory.mktemp("synth"), images=20, imgsz=64, seed=3, progress=False))


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "yolojax.cli", "train", "--data", str(data), "--model", "tiny", "-o", str(out),
            "--imgsz", "64", "--batch", "4", "--nbs", "4", "--workers", "2", "--no-progress", "--val-every", "100",
            *extra]


def _steps(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "steps.csv").read_text().splitlines():
        step, loss = line.split(",")[:2]
        out[int(step)] = float(loss)  # a resumed run re-logs replayed steps: keep the last
    return out


@pytest.mark.slow
def test_kill_then_resume_matches_uninterrupted_run(tmp_path, synth):
    args = ("--epochs", "2", "--save-every-steps", "3")
    ref = tmp_path / "ref"
    r = subprocess.run(_train_cmd(synth, ref, *args), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    p = subprocess.Popen(_train_cmd(synth, run, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=ENV, cwd=REPO)
    deadline = time.time() + 600
    while time.time() < deadline and max(committed_steps(run), default=0) < 3:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = resume_info(run)["loader"]
    assert (killed_at["epoch"], killed_at["batch"]) < (2, 0)
    r = subprocess.run(_train_cmd(synth, run, *args, "--resume"), capture_output=True, text=True, env=ENV,
                       cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _steps(ref), _steps(run)
    assert sorted(a) == sorted(b) and len(a) == 8
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-5), (k, a[k], b[k])
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    assert all(p.name.isdigit() for p in (run / "checkpoints").iterdir())  # Orbax's neither
    assert committed_steps(run) == [6, 8]  # max_to_keep 2: the last mid-epoch save and the end


def test_divergence_stops_with_clear_message(tmp_path, synth):
    r = subprocess.run(_train_cmd(synth, tmp_path / "nan", "--epochs", "2", "--optimizer", "sgd", "--lr0", "1e30",
                                  "--warmup-epochs", "0"),
                       capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert r.returncode != 0
    assert "non-finite loss/gradients" in r.stderr and "last good checkpoint" in r.stderr
    assert not [p for p in (tmp_path / "nan").iterdir() if p.name.startswith(".")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_distributed_training(tmp_path, synth):
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = _train_cmd(synth, tmp_path / "dist", "--epochs", "1", "--coordinator", f"127.0.0.1:{port}",
                         "--num-processes", "2", "--process-id", str(pid))
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                                      cwd=REPO))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    args = json.loads((tmp_path / "dist" / "args.json").read_text())
    assert args["processes"] == 2 and len(args["devices"]) == 2
    assert (tmp_path / "dist" / "last" / "spec.json").exists()
    assert len(_steps(tmp_path / "dist")) == 4  # 16 training images (20 - 20% val) / global batch 4


@pytest.mark.slow
def test_same_seed_same_numbers_whatever_the_worker_count(tmp_path, synth):
    """Reproducibility: the same command and seed give the same per-step losses and per-epoch metrics (mosaic,
    augmentation, shuffling and init all seeded, every sample a pure function of (seed, epoch, position)), with
    0 or 3 loader workers; the sparse stage's controller included."""
    args = ("--epochs", "2", "--val-every", "1", "--close-mosaic", "1", "--sparsity", "0.05",
            "--sparsity-schedule", "dynamic", "--sparsity-target", "0.3")
    runs = []
    for workers in ("0", "3"):
        out = tmp_path / f"w{workers}"
        cmd = [*_train_cmd(synth, out, *args), "--workers", workers]  # the last --workers wins
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(out)
    a, b = ((r / "steps.csv").read_text() for r in runs)
    assert a == b and len(a.splitlines()) == 8
    ra, rb = (json.loads((r / "results.json").read_text()) for r in runs)
    drop = ("epoch_time_s", "images_per_s")
    assert [{k: v for k, v in row.items() if k not in drop} for row in ra] == \
           [{k: v for k, v in row.items() if k not in drop} for row in rb]
    assert "val/map50" in ra[-1] and "sparsity/frac_lt_1e-2" in ra[-1]


def test_cli_import_leaves_the_backend_for_jax_distributed():
    """Building the CLI (every command module imported) must not start the XLA backend: multi-host runs call
    jax.distributed.initialize after it (an array default in BNL1State once did)."""
    code = ("from jax._src import xla_bridge as xb\nimport yolojax.cli as c\nc.build_parser()\n"
            "assert not xb._backends, 'backend started at import'\nprint('OK')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_step_loop_makes_no_implicit_transfer_and_fetches_metrics_in_batches(tmp_path, synth, monkeypatch):
    """Under jax.transfer_guard('disallow') the loop runs (every transfer is explicit: batches put on the
    device, metrics fetched), and metrics are fetched once per LOG_EVERY steps, not per step."""
    from yolojax.data import load_dataset
    from yolojax.train.trainer import Trainer, resolve_model
    train = load_dataset(synth, "train")
    spec, variables, _ = resolve_model("tiny", train.nc, train.names)
    cfg = TrainConfig(epochs=1, batch=2, nbs=2, imgsz=64, workers=0, augment=False, mosaic=False,
                      optimizer="sgd", warmup_epochs=0)
    (tmp_path / "run").mkdir()  # fit() makes it; this test drives train_epoch directly
    t = Trainer(cfg, tmp_path / "run", train, None, spec, variables, progress=False)
    t.LOG_EVERY = 4
    fetches = []
    real_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: fetches.append(x) or real_get(x))
    with jax.transfer_guard("disallow"):
        assert t.steps_per_epoch > 7
        logs = t.train_epoch(stop_after=7)
    metric_fetches = [f for f in fetches if isinstance(f, list)]
    # the first step alone (compilation timing), then 4, then the last 2 at stop_after
    assert [len(f) for f in metric_fetches] == [1, 4, 2], [len(f) for f in metric_fetches]
    assert np.isfinite(logs["loss"])
    rows = (tmp_path / "run" / "steps.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 8))
    # batches were prefetched to the device ahead of the step; the loader is put back where training stopped
    assert t.position()["batch"] == 7 and t.train_loader.state()["batch"] == 7


def test_detector_and_validation_place_weights_on_device_once(synth):
    """Numpy weights (what `load` returns) are put on the device once, not uploaded by every call: with every
    implicit transfer disallowed, repeated calls and a whole validation run."""
    from yolojax import Detector
    from yolojax.data import load_dataset
    from yolojax.train.validate import run_validation, val_loader
    val = load_dataset(synth, "val")
    spec = tiny_spec(val.nc)
    det = Detector(spec, jax.tree.map(np.asarray, init_variables(spec, 0)))
    x = jax.device_put(np.zeros((2, 64, 64, 3), np.float32))
    det(x)  # the first call places the weights (an explicit transfer)
    with jax.transfer_guard("disallow"):
        for _ in range(2):
            assert det(x)["boxes"].shape[0] == 2
        metrics, _ = run_validation(spec, det.variables, val_loader(val, 2, 64, workers=0), progress=False)
    assert 0.0 <= metrics["map50"] <= 1.0
