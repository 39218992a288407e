"""Training-step throughput of yolojax (forward + loss with the task-aligned assigner + backward + SGD + EMA),
without data loading, side by side with Ultralytics' training step, and the host overhead of the real training
loop (`Trainer.train_epoch`) over the bare jitted step.

    .venv/bin/python benchmarks/train_throughput.py            # defaults below, 10-15 min on 2 CPU cores

Three measurements, each interleaved (A B A B ...) so that a load change hits both sides alike:

* bare step (`--configs VARIANT:IMGSZ:BATCH ...`, default n:640:8, nc=80): compile time, then `--rounds`
  rounds of `--steps` jitted steps on one fixed batch, each step timed to `block_until_ready`; median, min,
  max over all steps; images/s from the median; the process's CPU time per step. Each `--xla-variants` entry
  (default: `default`, and on CPU `ynn-convs-off` = XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
  -individual_convolution, see benchmarks/results/train_profile.md) runs in its own worker process, kept
  alive across the rounds. On an accelerator also MFU = 3 x forward FLOPs x batch /
  (step time x peak FLOP/s) (forward FLOPs from `yolojax.model.counting.count_flops`; the peak from
  PEAK_TFLOPS by device and dtype, or `--peak-tflops`).
* Ultralytics (CPU only, automatic when /tmp/ultra exists, `--no-ultralytics` to skip): one run of
  ../shared/tools/ultralytics_train_step.py (2 warm-up steps, median of 5) between the yolojax rounds of the
  same config; images/s ratio yolojax / Ultralytics (goal >= 0.8 at yolov8n 640 px batch 8).
* loop overhead (`--overhead VARIANT:IMGSZ:BATCH ...`, default n:160:16): a real `Trainer` built as
  `yolojax train` builds it, on a tiny synthetic set (nc=10), whose loader is replaced by `ReplayLoader` (the
  first batches of the real loader, replayed: no data loading in the measurement). Per round, `--loop-steps`
  steps of `trainer.train_epoch(stop_after=...)` (metrics fetched every LOG_EVERY steps, steps.csv,
  TensorBoard, divergence checks) against as many bare calls of the trainer's own jitted step, each blocked on;
  ratio loop / bare of the per-step times (goal <= 1.05).

Every result records os.getloadavg() before and after (the machine may be shared). Writes
benchmarks/results/train_throughput.{json,md} with the machine (CPU model, cores, jax version, date).

On a GPU (none in the session that wrote this; install the CUDA jaxlib matching the pinned jax first, e.g.
`pip install "jax[cuda12]==0.10.2"`):

    python benchmarks/train_throughput.py --configs n:640:64 s:640:64 m:640:64 --dtypes float32 bfloat16 \\
        --xla-variants default --overhead n:160:16 n:640:64 --steps 20 --rounds 3 \\
        --out benchmarks/results/train_throughput_gpu
    yolojax data synth /tmp/synth640 --images 2000 --imgsz 640
    yolojax train --model yolov8n --data /tmp/synth640/data.yaml --imgsz 640 --batch 64 --epochs 5 \\
        --workers 16 --val-every 5 -o runs/gpu_n640 --exist-ok   # then --dtype bfloat16; images_per_s is in
                                                                  # runs/gpu_n640/results.csv (per epoch)
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from yolojax.model import init_variables, yolov8_spec  # noqa: E402
from yolojax.model.counting import count_flops  # noqa: E402
from yolojax.train.config import TrainConfig  # noqa: E402
from yolojax.train.optim import build_optimizer, ema_decay_fn  # noqa: E402
from yolojax.train.step import create_state, make_train_step  # noqa: E402

ULTRA_PYTHON = Path("/tmp/ultra/bin/python")
ULTRA_TOOLS = REPO.parent / "shared" / "tools"
# Dense peak TFLOP/s by device and compute dtype (NVIDIA datasheets, SXM parts). float32 is rated at the TF32
# tensor-core peak: with JAX's default matmul precision, XLA runs float32 convolutions and matmuls in TF32 on
# Ampere and later (jax_default_matmul_precision=highest would make the plain FP32 peak, ~67 on H100/H200 and
# 19.5 on A100, the relevant one).
# XLA_FLAGS additions the bare step is measured under (each in its own process). ynn-convs-off: XLA CPU's
# convolutions on Eigen instead of YNNPACK (YNNPACK keeps the reductions); ynn-off: no YNNPACK at all.
# benchmarks/results/train_profile.md measures why: YNNPACK's kernel-gradient convolutions run at ~8 GFLOP/s here
# and take 60% of the default step.
XLA_VARIANTS = {"default": "", "ynn-convs-off": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
                "ynn-off": "--xla_cpu_experimental_ynn_fusion_type="}
CPU_ONLY = {"ynn-convs-off", "ynn-off"}
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 494.0}, "H200": {"bfloat16": 989.0, "float32": 494.0},
               "A100": {"bfloat16": 312.0, "float32": 156.0}}


def fake_batch(b: int, s: int, m: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, s - 64, (b, m, 2))
    wh = rng.uniform(8, 64, (b, m, 2))
    return {"images": rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8),
            "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
            "classes": rng.integers(0, 80, (b, m)).astype(np.int32),
            "mask": np.arange(m)[None].repeat(b, 0) < rng.integers(5, m, (b, 1)), "ignore": np.zeros((b, m), bool)}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spread(xs: list[float], nd: int = 4) -> dict:
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd),
            "n": len(xs)}


def parse_config(s: str) -> tuple[str, int, int]:
    v, imgsz, batch = s.split(":")
    return v.removeprefix("yolov8"), int(imgsz), int(batch)


def peak_tflops(device_kind: str, dtype: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for MFU; (None, why) when unknown."""
    if override:
        return override, "--peak-tflops"
    for name, table in PEAK_TFLOPS.items():
        if name in device_kind.upper():
            what = "bf16 dense" if dtype == "bfloat16" else "TF32 dense (JAX's default float32 precision)"
            return table[dtype], f"{name} {what}"
    return None, f"no peak known for {device_kind!r}: pass --peak-tflops"


# -- bare jitted step --------------------------------------------------------------------------------------
class BareStep:
    """The jitted train step (nc=80, SGD, EMA, no accumulation) on one fixed batch; compiles on construction."""

    def __init__(self, variant: str, imgsz: int, batch: int, dtype: str):
        self.variant, self.imgsz, self.batch, self.dtype = variant, imgsz, batch, dtype
        self.spec = yolov8_spec(variant, 80)
        variables = init_variables(self.spec, 0)
        cfg = TrainConfig(batch=batch, nbs=batch, optimizer="sgd", dtype=dtype)
        tx, _ = build_optimizer(cfg, variables["params"], steps_per_epoch=100, nc=80)
        self.step = jax.jit(make_train_step(self.spec, tx, ema_decay=ema_decay_fn(cfg),
                                            dtype=jax.numpy.bfloat16 if dtype == "bfloat16" else None),
                            donate_argnums=(0,))
        self.state = create_state(variables, tx)
        self.data = fake_batch(batch, imgsz)
        t0 = time.perf_counter()
        self.state, m = self.step(self.state, self.data, None)
        jax.block_until_ready(m["loss"])
        self.compile_s = time.perf_counter() - t0
        self.times: list[float] = []
        self.loss = float(m["loss"])

    def run(self, steps: int) -> list[float]:
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.state, m = self.step(self.state, self.data, None)
            jax.block_until_ready(m["loss"])
            out.append(time.perf_counter() - t0)
        self.loss = float(m["loss"])
        self.times += out
        return out


def ultralytics_step(variant: str, imgsz: int, batch: int, python: Path, tools: Path) -> dict:
    """One run of Ultralytics' training-step script: {'step_s', 'images_per_s'} or {'error'}."""
    env = {**os.environ, "PYTHONPATH": str(tools / "torchvision_shim"), "YOLO_CONFIG_DIR": "/tmp/ultra-cfg",
           "YOLO_OFFLINE": "1"}
    cmd = [str(python), str(tools / "ultralytics_train_step.py"), variant, str(imgsz), str(batch)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    m = re.search(r"([\d.]+) ms/step, ([\d.]+) img/s", p.stdout)
    if p.returncode or not m:
        return {"error": f"exit {p.returncode}: {(p.stdout + p.stderr).strip()[-300:]}"}
    return {"step_s": float(m.group(1)) / 1e3, "images_per_s": float(m.group(2))}


def worker(variant: str, imgsz: int, batch: int, dtype: str) -> None:
    """Child process of bench_bare: compile, say so, then answer `run N` with N step times until `quit`."""
    dev = jax.devices()[0]
    b = BareStep(variant, imgsz, batch, dtype)
    print(json.dumps({"compile_s": b.compile_s, "platform": dev.platform, "device": dev.device_kind,
                      "devices": jax.device_count()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        times = b.run(int(cmd[1]))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime) / max(len(times), 1)
        stats = dev.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use") or ru.ru_maxrss * 1024
        print(json.dumps({"times": times, "cpu_s": cpu, "loss": b.loss, "peak_bytes": peak}), flush=True)


class Worker:
    """A BareStep in its own process (its own XLA_FLAGS), kept alive across the interleaved rounds."""

    def __init__(self, config: tuple[str, int, int], dtype: str, xla_flags: str):
        env = {**os.environ, "XLA_FLAGS": " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), xla_flags) if x)}
        self.p = subprocess.Popen([sys.executable, __file__, "_worker", *map(str, config), dtype], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with {self.p.wait()}")
        return json.loads(line)

    def run(self, steps: int) -> dict:
        self.p.stdin.write(f"run {steps}\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait()


def bench_bare(variant: str, imgsz: int, batch: int, dtype: str, args, ultra: str | None) -> list[dict]:
    """One row per XLA flag variant; the variants (each in its own process) and Ultralytics interleaved."""
    load0 = load()
    workers: dict[str, Worker] = {}
    platform_ = None
    for name in args.xla_variants:
        if platform_ not in (None, "cpu") and name in CPU_ONLY:
            print(f"[{name}]: skipped on {platform_} (XLA CPU flags)", flush=True)
            continue
        workers[name] = Worker((variant, imgsz, batch), dtype, XLA_VARIANTS[name])
        platform_ = workers[name].ready["platform"]
        print(f"yolov8{variant} {imgsz}px b{batch} {dtype} [{name}]: compiled in {workers[name].ready['compile_s']:.1f} s",
              flush=True)
    if ultra is None and platform_ != "cpu":
        ultra = f"on {platform_}: Ultralytics' reference step here is a CPU one"
    times: dict[str, list] = {n: [] for n in workers}
    cpu: dict[str, list] = {n: [] for n in workers}
    last: dict = {}
    ultra_runs: list[dict] = []
    for r in range(args.rounds):
        for name, w in workers.items():
            last[name] = w.run(args.steps)
            times[name] += last[name]["times"]
            cpu[name].append(last[name]["cpu_s"])
            print(f"  round {r + 1} [{name}]: yolojax {statistics.median(last[name]['times']):.3f} s/step "
                  f"(load {load()[0]})", flush=True)
        if ultra is None:
            ultra_runs.append(ultralytics_step(variant, imgsz, batch, Path(args.ultra_python), Path(args.ultra_tools)))
            print(f"  round {r + 1}: ultralytics {ultra_runs[-1]} (load {load()[0]})", flush=True)
    for w in workers.values():
        w.close()
    ok = [u for u in ultra_runs if "error" not in u]
    us = spread([u["step_s"] for u in ok]) if ok else None
    rows = []
    for name, w in workers.items():
        step = spread(times[name])
        out = {"variant": f"yolov8{variant}", "nc": 80, "imgsz": imgsz, "batch": batch, "dtype": dtype,
               "xla_variant": name, "xla_flags": XLA_VARIANTS[name], "compile_s": round(w.ready["compile_s"], 2),
               "step_s": step, "step_s_all": [round(x, 4) for x in times[name]],
               "images_per_s": round(batch / step["median"], 2), "cpu_s_per_step_rounds": spread(cpu[name]),
               "peak_memory_gb": round(last[name]["peak_bytes"] / 2**30, 3), "loss": last[name]["loss"],
               "device": w.ready["device"], "load_before": load0, "load_after": load()}
        if platform_ != "cpu":
            fwd_gflops = count_flops(yolov8_spec(variant, 80), imgsz)  # forward GFLOPs per image
            flops = 3 * fwd_gflops * 1e9 * batch
            pk, src = peak_tflops(w.ready["device"], dtype, args.peak_tflops)
            out.update({"fwd_gflops_per_image": round(fwd_gflops, 3), "train_tflops_per_step": round(flops / 1e12, 3),
                        "achieved_tflops": round(flops / step["median"] / 1e12, 2), "peak_tflops": pk,
                        "peak_source": src, "mfu": round(flops / step["median"] / (pk * 1e12), 4) if pk else None})
        if ultra is not None:
            out["ultralytics"] = {"measured": False, "why": ultra}
        else:
            out["ultralytics"] = {"measured": bool(ok), "runs": ultra_runs}
            if us:
                out["ultralytics"].update({"step_s": us, "images_per_s": round(batch / us["median"], 2),
                                           "ratio_images_per_s": round(us["median"] / step["median"], 3)})
        rows.append(out)
    return rows


# -- training loop vs bare step ----------------------------------------------------------------------------
class ReplayLoader:
    """Stands in for `Trainer.train_loader`: yields the same precomputed numpy batches in turn, with the
    Loader's position interface (`state()` is the position after the batches yielded so far)."""

    def __init__(self, batches: list[dict], length: int, batch_size: int, seed: int = 0):
        self.batches, self.length, self.batch_size, self.seed = batches, length, batch_size, seed
        self._epoch, self._batch = 0, 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int, mosaic: bool | None = None) -> None:
        self._epoch, self._batch = int(epoch), 0

    def state(self) -> dict:
        return {"epoch": self._epoch, "batch": self._batch, "seed": self.seed, "mosaic": None}

    def restore(self, st: dict) -> None:
        self._epoch, self._batch = int(st["epoch"]), int(st["batch"])

    def __iter__(self):
        epoch = self._epoch
        for b in range(self._batch, self.length):
            self._batch = b + 1
            yield self.batches[b % len(self.batches)]
        if self._epoch == epoch and self._batch == self.length:
            self._epoch, self._batch = epoch + 1, 0

    def close(self) -> None:
        pass


def build_trainer(variant: str, imgsz: int, batch: int, dtype: str, workdir: Path, n_batches: int = 2):
    """A Trainer as `yolojax train` builds one (tiny synthetic set, no validation, no saves inside the epoch),
    its loader replaced by a ReplayLoader of the real loader's first n_batches batches."""
    from yolojax.data import load_dataset, make_synthetic
    from yolojax.train.trainer import Trainer, resolve_model
    images = math.ceil(n_batches * batch / 0.8) + 1  # make_synthetic puts 20% in val
    data = make_synthetic(workdir / "synth", images=images, imgsz=max(imgsz, 64), progress=False)
    train = load_dataset(data, "train")
    spec, variables, _ = resolve_model(f"yolov8{variant}", train.nc, train.names, 0)
    cfg = TrainConfig(epochs=10, batch=batch, imgsz=imgsz, workers=0, dtype=dtype, val_every=10**6,
                      save_every_steps=0)
    trainer = Trainer(cfg, workdir / "run", train, None, spec, variables, progress=False)
    trainer.rundir.mkdir(parents=True, exist_ok=True)
    real = trainer.train_loader
    real.set_epoch(0)
    batches = list(itertools.islice(iter(real), n_batches))
    real.close()
    trainer.train_loader = ReplayLoader(batches, length=10**6, batch_size=real.batch_size, seed=cfg.seed)
    trainer.steps_per_epoch = len(trainer.train_loader)
    return trainer, batches


def bench_overhead(variant: str, imgsz: int, batch: int, dtype: str, args) -> dict:
    from yolojax.train.distributed import device_batch
    load0 = load()
    k = args.loop_steps
    with tempfile.TemporaryDirectory(prefix="yolojax-loop-") as tmp:
        trainer, batches = build_trainer(variant, imgsz, batch, dtype, Path(tmp))
        t0 = time.perf_counter()
        trainer.train_epoch(stop_after=k)  # compiles; creates the TensorBoard writer, the divergence guard
        warm_s = time.perf_counter() - t0
        print(f"loop yolov8{variant} {imgsz}px b{batch} {dtype}: warm-up ({k} steps, compile included) "
              f"{warm_s:.1f} s", flush=True)
        bare_round, bare_all, loop_round = [], [], []
        for r in range(args.rounds):
            ts = []
            for i in range(k):  # the trainer's own jitted step, each call blocked on
                t0 = time.perf_counter()
                trainer.state, m = trainer._step(trainer.state, device_batch(batches[i % len(batches)],
                                                                             trainer.data_sharding), trainer.teacher)
                jax.block_until_ready(m["loss"])
                ts.append(time.perf_counter() - t0)
            bare_all += ts
            bare_round.append(sum(ts) / k)
            t0 = time.perf_counter()
            trainer.train_epoch(stop_after=k)
            loop_round.append((time.perf_counter() - t0) / k)
            print(f"  round {r + 1}: bare {bare_round[-1]:.4f} s/step, loop {loop_round[-1]:.4f} s/step "
                  f"(load {load()[0]})", flush=True)
        accumulate = trainer.opt_info["accumulate"]
        trainer.close()
    bare, loop = spread(bare_round), spread(loop_round)
    return {"variant": f"yolov8{variant}", "nc": 10, "imgsz": imgsz, "batch": batch, "dtype": dtype,
            "accumulate": accumulate, "steps_per_round": k, "rounds": args.rounds,
            "warmup_s": round(warm_s, 2), "bare_step_s": bare, "bare_step_s_each": spread(bare_all),
            "loop_step_s": loop, "loop_over_bare": round(loop["median"] / bare["median"], 3),
            "loop_over_bare_rounds": [round(lp / bp, 3) for lp, bp in zip(loop_round, bare_round)],
            "images_per_s_loop": round(batch / loop["median"], 2), "load_before": load0, "load_after": load()}


# -- report ------------------------------------------------------------------------------------------------
def fmt(s: dict, nd: int = 3) -> str:
    return f"{s['median']:.{nd}f} [{s['min']:.{nd}f}, {s['max']:.{nd}f}]"


def write_report(out: dict, path: str) -> str:
    m = out["machine"]
    where = m["cpu"] if m["platform"] == "cpu" else m["device"]
    lines = [f"# Training-step throughput ({m['platform']}: {where}, {m['cores']} cores, jax {m['jax']}, "
             f"{m['date']}, load average {m['load_average'][0]:.2f} at the start)", "",
             "Medians with [min, max]; the load averages (1, 5, 15 min) before/after each measurement are in the "
             ".json. Process CPU s/step (user + system, median over rounds) is less sensitive than wall time to "
             "other processes on the machine (2 cores: 2 compute threads).", "", "## Bare jitted step (nc=80, no data loading)", "",
             "| model | imgsz | batch | dtype | XLA flags | compile s | step s | process CPU s/step | images/s | "
             "Ultralytics step s | "
             "Ultralytics images/s | yolojax / Ultralytics images/s | peak memory GB | load (1 min) |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["bare"]:
        u = r["ultralytics"]
        us = (fmt(u["step_s"]), u["images_per_s"], f"**{u['ratio_images_per_s']:.2f}**") if u.get("step_s") else \
            ("not measured", "", "")
        flags = f"{r['xla_variant']}" + (f" (`{r['xla_flags']}`)" if r["xla_flags"] else "")
        lines.append(f"| {r['variant']} | {r['imgsz']} | {r['batch']} | {r['dtype']} | {flags} | {r['compile_s']} | "
                     f"{fmt(r['step_s'])} | {r['cpu_s_per_step_rounds']['median']:.2f} | {r['images_per_s']} | {us[0]} | {us[1]} | {us[2]} | "
                     f"{r['peak_memory_gb']} | {r['load_before'][0]} -> {r['load_after'][0]} |")
    if any("mfu" in r for r in out["bare"]):
        lines += ["", "| model | imgsz | batch | dtype | fwd GFLOPs/img | train TFLOP/step (3 x fwd) | achieved "
                  "TFLOP/s | peak TFLOP/s (source) | MFU |", "|---|---:|---:|---|---:|---:|---:|---|---:|"]
        for r in out["bare"]:
            if "mfu" in r:
                mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
                lines.append(f"| {r['variant']} | {r['imgsz']} | {r['batch']} | {r['dtype']} {r['xla_variant']} | "
                             f"{r['fwd_gflops_per_image']} | {r['train_tflops_per_step']} | {r['achieved_tflops']} | "
                             f"{r['peak_tflops']} ({r['peak_source']}) | {mfu} |")
    for r in out["bare"][:1]:
        if not r["ultralytics"].get("measured"):
            u = r["ultralytics"]
            lines.append(f"\nUltralytics not measured for {r['variant']} {r['imgsz']} b{r['batch']}: "
                         f"{u.get('why') or [x.get('error') for x in u.get('runs', [])]}")
    if out["overhead"]:
        lines += ["", "## Training loop (`Trainer.train_epoch`) vs the bare jitted step", "",
                  "Replayed batches (no data loading), nc=10; per round the mean step time of K loop steps and of "
                  "K bare calls of the trainer's own jitted step (each blocked on).", "",
                  "| model | imgsz | batch | dtype | K steps x rounds | bare s/step | loop s/step | loop / bare "
                  "(per round) | loop images/s | load (1 min) |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in out["overhead"]:
            lines.append(f"| {r['variant']} | {r['imgsz']} | {r['batch']} | {r['dtype']} | {r['steps_per_round']} x "
                         f"{r['rounds']} | {fmt(r['bare_step_s'], 4)} | {fmt(r['loop_step_s'], 4)} | "
                         f"**{r['loop_over_bare']:.3f}** ({', '.join(f'{x:.3f}' for x in r['loop_over_bare_rounds'])}) "
                         f"| {r['images_per_s_loop']} | {r['load_before'][0]} -> {r['load_after'][0]} |")
    loads = [x for r in out["bare"] + out["overhead"] for x in (r["load_before"][0], r["load_after"][0])]
    if m["platform"] == "cpu" and loads and max(loads) > 0.75 * (m["cores"] or 1):
        lines += ["", f"**Warning: load average up to {max(loads):.1f} on {m['cores']} cores: other processes competed "
                  "for the cores during this run.** Interleaving spreads that over both sides, but PyTorch's OpenMP "
                  "threads slow down more than XLA's when the cores are oversubscribed (seen on this machine: "
                  "Ultralytics 3.2 -> 13.6 s/step, yolojax 10.1 -> 17.3 s/step at load ~5), so the "
                  "yolojax / Ultralytics ratio of a loaded run flatters yolojax."]
    lines += ["", f"Command: `{out['command']}`", "", out["note"]]
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="*", default=["n:640:8"], help="bare-step configs VARIANT:IMGSZ:BATCH")
    ap.add_argument("--overhead", nargs="*", default=["n:160:16"], help="loop-vs-bare configs VARIANT:IMGSZ:BATCH")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--steps", type=int, default=3, help="bare steps per round")
    ap.add_argument("--loop-steps", type=int, default=10, help="loop (and bare) steps per overhead round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--no-ultralytics", action="store_true", help="do not run Ultralytics' step")
    ap.add_argument("--ultra-python", default=str(ULTRA_PYTHON))
    ap.add_argument("--ultra-tools", default=str(ULTRA_TOOLS))
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: PEAK_TFLOPS)")
    ap.add_argument("--xla-variants", nargs="+", default=["default", "ynn-convs-off"], choices=list(XLA_VARIANTS),
                    help="bare step under these XLA_FLAGS additions, each in its own process, interleaved "
                         f"({XLA_VARIANTS}; CPU-only ones are skipped on an accelerator)")
    ap.add_argument("--out", default="benchmarks/results/train_throughput")
    if sys.argv[1:2] == ["_worker"]:
        v, imgsz, batch, dtype = sys.argv[2:6]
        return worker(v, int(imgsz), int(batch), dtype)
    args = ap.parse_args()
    if args.no_ultralytics:
        ultra = "--no-ultralytics"
    elif not Path(args.ultra_python).exists() or not (Path(args.ultra_tools) / "ultralytics_train_step.py").exists():
        ultra = f"{args.ultra_python} or {args.ultra_tools}/ultralytics_train_step.py absent (../shared/tools/README.md)"
    else:
        ultra = None
    if ultra:
        print(f"Ultralytics not measured: {ultra}", flush=True)
    date, load_start, t_start = time.strftime("%Y-%m-%d %H:%M"), load(), time.perf_counter()
    # the bare steps run in worker processes first: this process initialises its backend only afterwards (on a
    # GPU it would otherwise take the memory the workers need)
    bare = [row for c in args.configs for d in args.dtypes for row in bench_bare(*parse_config(c), d, args, ultra)]
    dev = jax.devices()[0]
    machine = {"platform": dev.platform, "device": dev.device_kind, "devices": jax.device_count(),
               "cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "date": date,
               "load_average": load_start, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    overhead = [bench_overhead(*parse_config(c), d, args) for c in args.overhead for d in args.dtypes]
    out = {"machine": machine, "bare": bare, "overhead": overhead,
           "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
           "wall_s": round(time.perf_counter() - t_start, 1), "load_average_end": load(),
           "note": "Ultralytics: ../shared/tools/ultralytics_train_step.py (torch CPU, 2 threads, nc=80, 20 boxes/image, "
                   "SGD; its median of 5 steps after 2 warm-up, one run per round). yolojax's bare step also does "
                   "gradient clipping, the EMA and the finite check. Peak memory on CPU is the process's max RSS."}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    print(write_report(out, args.out + ".md"))


if __name__ == "__main__":
    main()
