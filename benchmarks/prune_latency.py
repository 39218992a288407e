"""Latency of channel-pruned vs unpruned YOLOv8 (jitted JAX on this machine's CPU), side by side in one run.

For each variant, the unpruned model and its uniformly pruned versions (LayerRatio: the same share of
channels removed from every dependency group, kept counts rounded up to multiples of 8) are compiled, then
timed interleaved (every repetition runs every model once, in a shuffled order), so that load from other
processes hits all models alike; medians are reported, with the FLOPs ratio beside the latency ratio.

    .venv/bin/python benchmarks/prune_latency.py            # writes benchmarks/results/prune_latency.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from pruning import LayerRatio, prune
from pruning.latency import cpu_model as cpu_name
from yolojax.model import YOLOv8, init_variables
from yolojax.model.counting import count_flops, count_params
from yolojax.model.spec import yolov8_spec

ROOT = Path(__file__).resolve().parent


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg_start": list(os.getloadavg())}


def build(variant: str, ratios, nc: int, seed: int = 0):
    """[(label, ratio, spec, variables)]: the unpruned model first."""
    spec = yolov8_spec(variant, nc)
    v = init_variables(spec, seed)
    rng = np.random.default_rng(seed)
    # random |gamma| so that the pruning choice is not a tie-break on a fresh init (latency does not care)
    v = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.uniform(0.01, 1.0, x.shape).astype(np.float32) if p[-1].key == "scale" else np.asarray(x),
        v)
    models = [(f"yolov8{variant}", 0.0, spec, v)]
    for r in ratios:
        s, pv = prune(spec, v, LayerRatio(ratio=r))
        models.append((f"yolov8{variant} -{r:.0%}", r, s, pv))
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["n", "s"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--nc", type=int, default=80)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "prune_latency")
    args = ap.parse_args(argv)

    info = machine()
    x = jnp.asarray(np.random.default_rng(0).random((args.batch, args.imgsz, args.imgsz, 3), np.float32))
    entries = []
    for variant in args.variants:
        for label, ratio, spec, v in build(variant, args.ratios, args.nc):
            fn = jax.jit(lambda v, x, spec=spec: YOLOv8(spec).apply(v, x)[0]["boxes"])
            v = jax.device_put(v)
            t0 = time.perf_counter()
            fn(v, x).block_until_ready()  # compile
            compile_s = time.perf_counter() - t0
            for _ in range(2):
                fn(v, x).block_until_ready()
            entries.append(dict(label=label, variant=variant, ratio=ratio, spec=spec, fn=fn, v=v, times=[],
                                compile_s=compile_s, params=count_params(spec),
                                gflops=count_flops(spec, args.imgsz)))

    order_rng = np.random.default_rng(1)
    for _ in tqdm(range(args.reps), desc="interleaved reps"):
        for i in order_rng.permutation(len(entries)):
            e = entries[i]
            t0 = time.perf_counter()
            e["fn"](e["v"], x).block_until_ready()
            e["times"].append(time.perf_counter() - t0)
    info["loadavg_end"] = list(os.getloadavg())

    rows = []
    for e in entries:
        base = next(b for b in entries if b["variant"] == e["variant"] and b["ratio"] == 0.0)
        t = np.array(e["times"]) * 1e3
        med, base_med = float(np.median(t)), float(np.median(np.array(base["times"]) * 1e3))
        rows.append(dict(model=e["label"], variant=e["variant"], ratio=e["ratio"], params=e["params"],
                         gflops=round(e["gflops"], 3), median_ms=round(med, 2),
                         p10_ms=round(float(np.percentile(t, 10)), 2), p90_ms=round(float(np.percentile(t, 90)), 2),
                         flops_ratio=round(e["gflops"] / base["gflops"], 3), latency_ratio=round(med / base_med, 3),
                         speedup=round(base_med / med, 2), compile_s=round(e["compile_s"], 1)))

    result = {"machine": info, "imgsz": args.imgsz, "batch": args.batch, "reps": args.reps,
              "policy": "LayerRatio (uniform per group), round_to=8, min_channels=8", "results": rows,
              "note": ("CPU shared with other engineers' jobs during the run (see loadavg): absolute times are "
                       "noisy; the interleaved medians make the ratios the meaningful numbers.")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = [f"# Pruned vs unpruned YOLOv8 latency (jitted JAX, {info['backend'].upper()})", "",
          f"Machine: {info['cpu']}, {info['cores']} cores, {info['platform']}; jax {info['jax']}; "
          f"{info['date']}. Batch {args.batch}, {args.imgsz}x{args.imgsz}, {args.reps} interleaved repetitions, "
          f"medians. Load average {info['loadavg_start'][0]:.1f} at start, {info['loadavg_end'][0]:.1f} at end: "
          "the cores were shared with other jobs, so absolute times are noisy and the ratios matter.", "",
          f"Pruning: {result['policy']}.", "",
          "| model | params | GFLOPs | median ms | p10-p90 ms | FLOPs ratio | latency ratio | speedup |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['params']:,} | {r['gflops']:.2f} | {r['median_ms']:.1f} | "
                  f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f} | {r['flops_ratio']:.3f} | {r['latency_ratio']:.3f} | "
                  f"{r['speedup']:.2f}x |")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
