"""ONNX Runtime and JAX latency of YOLOv8n/s at 640 px, unpruned vs 50%-pruned, on this machine.

    .venv/bin/python benchmarks/backends.py [--runs 30] [--variants n s] [--imgsz 640]

Writes benchmarks/results/backends.json and .md. Pruned models come from `pruning.prune(spec, variables,
LayerRatio(0.5))` (the seed paper's uniform 50%, kept counts rounded to multiples of 8). Weights are random
(latency does not depend on their values). Each pair (unpruned, pruned) is timed interleaved in one process,
ONNX Runtime with spinning off and intra-op threads = cores; medians are quoted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pruned_model(spec, variables):
    from pruning import LayerRatio, prune
    return (*prune(spec, variables, LayerRatio(ratio=0.5)), "pruning.prune(LayerRatio(ratio=0.5))")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["n", "s"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ultralytics-onnx", type=Path, help="Ultralytics' own yolov8n ONNX export at --imgsz, timed "
                    "interleaved with ours (see /work/shared/tools/README.md for its environment)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "backends")
    args = ap.parse_args(argv)

    from export.benchmark import benchmark, machine_info
    from export.testing import random_variables
    from yolojax import Detector, yolov8_spec
    from yolojax.model.counting import count_flops, count_params

    load_before = os.getloadavg()
    t0 = time.time()
    rows, raw = [], {}
    for v in args.variants:
        spec = yolov8_spec(v, 80)
        variables = random_variables(spec, 0)
        pspec, pvars, how = pruned_model(spec, variables)
        full, pruned = Detector(spec, variables), Detector(pspec, pvars)
        flops = (count_flops(spec, args.imgsz), count_flops(pspec, args.imgsz))
        params = (count_params(spec), count_params(pspec))
        for backend in ("onnxruntime", "jax"):
            print(f"yolov8{v} {backend}: unpruned vs pruned, {args.runs} interleaved runs", flush=True)
            res = benchmark([full, pruned], backend=backend, imgsz=args.imgsz, batch=1, runs=args.runs,
                            warmup=args.warmup, names=[f"yolov8{v}", f"yolov8{v}-pruned50"])
            raw[f"{v}/{backend}"] = res
            for r, label in zip(res["results"], ("unpruned", "pruned50")):
                rows.append({"variant": v, "backend": backend, "model": label, "params": r["params"],
                             "gflops": round(r["gflops"], 3), "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"],
                             "p99_ms": r["p99_ms"], "fps": r["fps"]})
            rows[-1]["latency_ratio"] = res["ratio_p50"][1]
            rows[-1]["flops_ratio"] = round(flops[1] / flops[0], 4)
            rows[-1]["params_ratio"] = round(params[1] / params[0], 4)
            print(f"  p50 {res['results'][0]['p50_ms']:.1f} -> {res['results'][1]['p50_ms']:.1f} ms "
                  f"(x{res['ratio_p50'][1]:.3f}; FLOPs x{flops[1] / flops[0]:.3f})", flush=True)

    ultra = None
    if args.ultralytics_onnx:
        from export.onnx_emit import export_onnx
        spec = yolov8_spec("n", 80)
        ours = export_onnx(Detector(spec, random_variables(spec, 0)), args.out.parent / ".yolojax_n.onnx",
                           imgsz=args.imgsz)
        print("Ultralytics' ONNX vs ours (yolov8n, onnxruntime)", flush=True)
        ultra = benchmark([str(args.ultralytics_onnx), str(ours)], backend="onnxruntime", imgsz=args.imgsz,
                          runs=args.runs, warmup=args.warmup, names=["ultralytics-8.4.190", "yolojax"])
        ours.unlink()

    machine = machine_info()
    out = {"imgsz": args.imgsz, "batch": 1, "runs": args.runs, "warmup": args.warmup, "pruning": how,
           "machine": machine, "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "wall_s": round(time.time() - t0, 1), "rows": rows, "raw": raw, "ultralytics_vs_yolojax": ultra,
           "note": "2 CPU cores shared with other engineers' jobs while this ran (see load averages): absolute "
                   "latencies are noisy and higher than on an idle machine; the interleaved pruned/unpruned "
                   "ratios are the numbers to read."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    args.out.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    m = out["machine"]
    lb, la = out["load_average_before"], out["load_average_after"]
    lines = [
        f"# Backend latency, YOLOv8 at {out['imgsz']} px, batch 1",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; jax {m.get('jax')}, onnxruntime {m.get('onnxruntime')}, "
        f"Python {m['python']}. {out['runs']} interleaved runs after {out['warmup']} warm-up runs, "
        f"p50/p90/p99 in ms. Pruned: {out['pruning']}.",
        "",
        f"**Shared machine:** {out['note']} Load average (1/5/15 min) before: "
        f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after: {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}.",
        "",
        "| variant | backend | model | params | GFLOPs | p50 ms | p90 ms | p99 ms | fps | p50 ratio pruned/unpruned | FLOPs ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(f"| {r['variant']} | {r['backend']} | {r['model']} | {r['params']:,} | {r['gflops']:.2f} | "
                     f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['fps']:.1f} | "
                     f"{r.get('latency_ratio', '')} | {r.get('flops_ratio', '')} |")
    u = out.get("ultralytics_vs_yolojax")
    if u:
        a, b = u["results"]
        lines += ["", f"Same ONNX Runtime session settings, yolov8n: Ultralytics 8.4.190's own ONNX export p50 "
                      f"{a['p50_ms']:.1f} ms, ours {b['p50_ms']:.1f} ms (ratio ours/theirs {u['ratio_p50'][1]:.3f}, "
                      f"interleaved)."]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/backends.py` (writes this file and backends.json).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
