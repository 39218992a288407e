"""Training-step throughput of yolojax (forward + loss with the task-aligned assigner + backward + SGD + EMA)
for YOLOv8n and YOLOv8s, measured side by side in one run, without data loading (as Ultralytics' own
`ultralytics_train_step.py` in ../shared/tools measures it).

    python benchmarks/train_throughput.py [--imgsz 640] [--batch 8] [--steps 5] [--variants n s]

Writes benchmarks/results/train_throughput.{json,md} with the machine it ran on. Peak memory is the process's
maximum resident set size (CPU) or the device allocator's peak (GPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from yolojax.model import init_variables, yolov8_spec
from yolojax.train.config import TrainConfig
from yolojax.train.optim import build_optimizer, ema_decay_fn
from yolojax.train.step import create_state, make_train_step


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


def run(variant: str, imgsz: int, batch: int, steps: int, dtype: str) -> dict:
    spec = yolov8_spec(variant, 80)
    variables = init_variables(spec, 0, imgsz=64)
    cfg = TrainConfig(batch=batch, nbs=batch, optimizer="sgd", dtype=dtype)
    tx, info = build_optimizer(cfg, variables["params"], steps_per_epoch=100, nc=80)
    step = jax.jit(make_train_step(spec, tx, ema_decay=ema_decay_fn(cfg),
                                   dtype=jax.numpy.bfloat16 if dtype == "bfloat16" else None), donate_argnums=(0,))
    state = create_state(variables, tx)
    batch_np = fake_batch(batch, imgsz)
    t0 = time.perf_counter()
    state, m = step(state, batch_np, None)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch_np, None)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    med = statistics.median(times)
    return {"variant": f"yolov8{variant}", "imgsz": imgsz, "batch": batch, "steps": steps, "dtype": dtype,
            "compile_s": round(compile_s, 2), "step_s_median": round(med, 4), "step_s_all": [round(t, 4) for t in times],
            "images_per_s": round(batch / med, 2), "peak_memory_gb": round(peak / 2**30, 3),
            "loss": float(m["loss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["n", "s"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default="benchmarks/results/train_throughput")
    args = ap.parse_args()
    dev = jax.devices()[0]
    results = [run(v, args.imgsz, args.batch, args.steps, args.dtype) for v in args.variants]
    machine = {"platform": dev.platform, "device": dev.device_kind, "devices": jax.device_count(),
               "cpu": cpu_name(), "cores": __import__("os").cpu_count(), "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": __import__("os").getloadavg()}
    out = {"machine": machine, "results": results,
           "note": "Peak memory on CPU is the whole process's max RSS, so the second model's figure includes the "
                   "first's; Ultralytics' own training step on this CPU was seen at ~1.37 s/step (yolov8n, 640 px, "
                   "batch 8, 2 threads; ../shared/tools/README.md), not measured in this run."}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    lines = [f"# Training-step throughput ({machine['platform']}: {machine['cpu'] if machine['platform'] == 'cpu' else machine['device']}, "
             f"{machine['cores']} cores, jax {machine['jax']}, {machine['date']}, load average {machine['load_average'][0]:.1f})", "",
             "| model | imgsz | batch | dtype | compile s | step s (median) | images/s | peak memory GB |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['imgsz']} | {r['batch']} | {r['dtype']} | {r['compile_s']} | "
                     f"{r['step_s_median']} | {r['images_per_s']} | {r['peak_memory_gb']} |")
    if len(results) > 1:
        lines.append(f"\nStep-time ratio {results[1]['variant']}/{results[0]['variant']}: "
                     f"{results[1]['step_s_median'] / results[0]['step_s_median']:.2f}")
    lines.append(f"\n{out['note']}")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
