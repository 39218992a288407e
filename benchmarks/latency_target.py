"""Pruning to a latency target on the deployment backend (pruning.LatencyTarget), measured.

For each variant and image size: the latency table of the backend is built (or read from the per-machine cache),
the unpruned latency L0 taken from its calibration, and the model (random BN |gamma|, as in prune_latency.py:
latency does not care about values) pruned to targets of 0.5 x L0 and 0.3 x L0. The unpruned model, the
latency-targeted ones, and GFLOPs-budget prunes (pruning.Budget, global ranking) at 0.5x and 0.3x the GFLOPs
are then timed side by side (interleaved: every repetition runs every model once, shuffled), medians with
p10-p90. The latency model is checked against the measurements of the models it was not calibrated on.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/latency_target.py
    # writes benchmarks/results/latency_target.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pruning import Budget, LatencyTarget, prune  # noqa: E402
from pruning.latency import LatencyTargetUnreachable, end_to_end_runner, latency_model, measure_ms, plan_measured, time_interleaved  # noqa: E402
from pruning.prune import apply_masks  # noqa: E402
from yolojax.api import Detector  # noqa: E402
from yolojax.model.counting import count_flops, count_params  # noqa: E402
from yolojax.model.spec import yolov8_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent


def random_gammas(spec, seed=0):
    v = Detector.create(spec, seed=seed).variables
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: rng.uniform(0.01, 1.0, x.shape).astype(np.float32) if p[-1].key == "scale" else np.asarray(x), v)


def run_one(variant, imgsz, backend, targets, reps, table_reps, log):
    spec = yolov8_spec(variant, 80)
    v = random_gammas(spec)
    t0 = time.perf_counter()
    model = latency_model(spec, backend=backend, imgsz=imgsz, reps=table_reps, variables=v, log=log)
    table_s = time.perf_counter() - t0
    l0 = model.predict()
    models = [("unpruned", None, spec, v)]
    for t in targets:
        s, pv = prune(spec, v, LatencyTarget(target_ms=t * l0, imgsz=imgsz, backend=backend, model=model))
        models.append((f"latency target {t:g}x", ("ms", t), s, pv))
    # what `yolojax prune --target-ms` does by default: the table's plan measured and re-planned (--refine 2),
    # the target t x the unpruned model's measured latency
    th = model.table.settings["threads"]
    measure = lambda s, pv: measure_ms(s, pv, backend, imgsz, 1, th, reps=reps)  # noqa: E731
    m0 = measure(spec, v)
    for t in targets:
        try:
            masks, hist = plan_measured(spec, v, LatencyTarget(target_ms=t * m0, imgsz=imgsz, backend=backend,
                                                                model=model), measure, rounds=2, log=log)
        except LatencyTargetUnreachable as e:
            log(f"{variant}@{imgsz} {t:g}x measured: {e}")
            continue
        s, pv = apply_masks(spec, v, masks)
        models.append((f"latency target {t:g}x, measured re-plans", ("ms", t, len(hist)), s, pv))
    g0 = count_flops(spec, imgsz)
    for t in targets:
        s, pv = prune(spec, v, Budget(target_gflops=t * g0, imgsz=imgsz))
        models.append((f"GFLOPs budget {t:g}x", ("gflops", t), s, pv))
    with tempfile.TemporaryDirectory(prefix="yolojax-lt-") as work:
        fns = [end_to_end_runner(s, pv, backend, imgsz, 1, model.table.settings["threads"], work)
               for _, _, s, pv in models]
        times = time_interleaved(fns, reps, warmup=3, seed=1)
    base = float(np.median(times[0]))
    rows = []
    for (label, tgt, s, _), t in zip(models, times):
        med = float(np.median(t))
        pred = model.predict_spec(s)
        row = dict(variant=variant, imgsz=imgsz, model=label, params=count_params(s), gflops=round(count_flops(s, imgsz), 3),
                   gflops_ratio=round(count_flops(s, imgsz) / g0, 3), predicted_ms=round(pred, 2),
                   median_ms=round(med, 2), p10_ms=round(float(np.percentile(t, 10)), 2),
                   p90_ms=round(float(np.percentile(t, 90)), 2), latency_ratio=round(med / base, 3),
                   pred_error=round((pred - med) / med, 3))
        if tgt and tgt[0] == "ms":
            row["target_ms"] = round(tgt[1] * (l0 if len(tgt) == 2 else m0), 2)
            if len(tgt) == 3:
                row["plans_measured"] = tgt[2]
            row["target_ratio"] = tgt[1]
            row["ratio_error"] = round(med / base / tgt[1] - 1, 3)
            row["met_within_10pct"] = bool(abs(row["ratio_error"]) <= 0.10)
        rows.append(row)
        log(f"{variant}@{imgsz} {label}: predicted {pred:.2f} ms, measured {med:.2f} ms "
            f"(p10-p90 {row['p10_ms']}-{row['p90_ms']}), ratio {med / base:.3f}, GFLOPs ratio {row['gflops_ratio']}")
    return rows, {"variant": variant, "imgsz": imgsz, "table": str(model.table.path), "table_build_s": round(table_s, 1),
                  "L0_predicted_ms": round(l0, 2), "alpha": model.alpha, "beta": model.beta,
                  "table_settings": model.table.settings}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["n", "s"])
    ap.add_argument("--imgsz", nargs="+", type=int, default=[320, 640])
    ap.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "jax"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3])
    ap.add_argument("--reps", type=int, default=30, help="interleaved end-to-end repetitions")
    ap.add_argument("--table-reps", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "latency_target")
    args = ap.parse_args(argv)
    from export.benchmark import machine_info
    info = {**machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": list(os.getloadavg()),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    log = lambda m: print(m, flush=True)  # noqa: E731
    rows, tables = [], []
    for variant in args.variants:
        for imgsz in args.imgsz:
            r, t = run_one(variant, imgsz, args.backend, args.targets, args.reps, args.table_reps, log)
            rows += r
            tables.append(t)
    info["loadavg_end"] = list(os.getloadavg())
    oos = [r for r in rows if r["model"] != "unpruned"]
    err = np.abs([r["pred_error"] for r in oos])
    summary = {"pred_abs_error_median": round(float(np.median(err)), 3), "pred_abs_error_max": round(float(err.max()), 3),
               "targets_met": sum(r.get("met_within_10pct", False) for r in rows if "plans_measured" not in r),
               "targets": sum("target_ratio" in r and "plans_measured" not in r for r in rows),
               "targets_met_measured": sum(r.get("met_within_10pct", False) for r in rows if "plans_measured" in r),
               "targets_measured": sum("plans_measured" in r for r in rows)}
    result = {"machine": info, "backend": args.backend, "batch": 1, "reps": args.reps, "tables": tables,
              "results": rows, "summary": summary,
              "note": ("Models were timed interleaved and medians are quoted: the ratios to the unpruned model in the "
                       "same run are the meaningful numbers (absolute times move with the machine's load).")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    md = [f"# Pruning to a latency target ({args.backend}, batch 1)", "",
          f"Machine: {info['cpu']}, {info['cores']} cores; onnxruntime {info.get('onnxruntime')}, jax {info.get('jax')}; "
          f"{info['date']}; load average {info['loadavg_start'][0]:.1f} at start, {info['loadavg_end'][0]:.1f} at "
          f"end{' (other jobs shared the cores)' if max(info['loadavg_start'][0], info['loadavg_end'][0]) > 1.5 else ' (otherwise idle)'}. ONNX "
          "Runtime sessions with `session.intra_op.allow_spinning=0`, OMP_WAIT_POLICY=PASSIVE; every model timed "
          f"interleaved ({args.reps} shuffled rounds), medians with p10-p90.", "",
          "Models: random BN |gamma| (latency does not depend on values). `latency target Tx` = `pruning.LatencyTarget` "
          "(target T x the predicted unpruned latency L0, the table's plan alone); `..., measured re-plans` = what "
          "`yolojax prune --target-ms` does (`pruning.latency.plan_measured`: target T x the *measured* unpruned "
          "latency, the plan timed end to end and re-planned with the miss taken out, at most 2 re-plans); `GFLOPs budget Tx` = `pruning.Budget` (global ranking) "
          "at T x the GFLOPs. *ratio* = measured median / unpruned median in the same run; *ratio error* = ratio / T - 1 "
          "(met: within 10%). *pred. error* = (predicted - measured) / measured, on models the table was not "
          "calibrated on.", "",
          "| model | imgsz | variant | GFLOPs (ratio) | predicted ms | measured ms | p10-p90 | ratio | target | ratio error | pred. error |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tgt = f"{r['target_ratio']:g}x ({r['target_ms']:.1f} ms)" if "target_ratio" in r else ""
        rerr = (f"{r['ratio_error']:+.1%} {'met' if r['met_within_10pct'] else 'MISSED'}" if "ratio_error" in r else "")
        md.append(f"| {r['model']} | {r['imgsz']} | yolov8{r['variant']} | {r['gflops']:.2f} ({r['gflops_ratio']:.2f}) | "
                  f"{r['predicted_ms']:.2f} | {r['median_ms']:.2f} | {r['p10_ms']:.1f}-{r['p90_ms']:.1f} | "
                  f"{r['latency_ratio']:.3f} | {tgt} | {rerr} | {r['pred_error']:+.1%} |")
    md += ["", f"Targets met within 10%: the table's plan alone {summary['targets_met']} of {summary['targets']}; "
               f"with measured re-plans {summary['targets_met_measured']} of {summary['targets_measured']}. Latency model error "
               f"(|predicted - measured| / measured, pruned models): median {summary['pred_abs_error_median']:.1%}, "
               f"max {summary['pred_abs_error_max']:.1%}.", "",
           "Tables (per variant and size): " + "; ".join(
               f"yolov8{t['variant']}@{t['imgsz']}: built in {t['table_build_s']} s (0 = cached), calibration "
               f"ms = {t['alpha']:.3f} x conv sum + {t['beta']:.2f}" for t in tables), "",
           result["note"]]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
