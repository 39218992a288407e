"""mAP at equal measured latency: pruning to a latency target (pruning.LatencyTarget) against pruning to a
GFLOPs budget (pruning.Budget, the compress default), from the same sparse model, with the same fine-tuning.

1. The latency model of the deployment backend (ONNX Runtime, batch 1, the model's image size) is built or
   read from the per-machine cache; L0 = its predicted latency of the unpruned model.
2. `latency`: the sparse model pruned to `--ratio` x L0 (what `yolojax compress --target-ms` does).
3. `gflops`: the GFLOPs budget whose pruned model the latency model predicts as fast as the `latency` one
   (bisection over the budget), pruned as `yolojax compress --target-flops G` does.
4. Both timed end to end side by side (interleaved, with the unpruned model), so the equal latency is a
   measurement, not a prediction.
5. Both fine-tuned identically (`compress`'s fine-tune stage: same epochs, learning rate, distillation and
   seeds), last-epoch mAP on the validation split.

    python benchmarks/latency_vs_flops.py --teacher runs/demo/teacher/best --sparse runs/demo/sparse/model
    # writes benchmarks/results/latency_vs_flops.{json,md}; finished runs under --workdir are reused
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from method_ablation import _val, finetune_arm, summarize  # noqa: E402


def budget_for_ms(spec, variables, lm, want_ms: float, imgsz: int, round_to: int, prune_below, importance="bn",
                  iters: int = 14) -> float:
    """The GFLOPs budget whose Budget prune the latency model predicts closest to want_ms (bisection)."""
    import pruning
    from yolojax.model.counting import count_flops
    lo, hi = 0.02 * count_flops(spec, imgsz), count_flops(spec, imgsz)
    best = (hi, lm.predict())
    for _ in range(iters):
        g = 0.5 * (lo + hi)
        s, _ = pruning.prune(spec, variables, pruning.Budget(target_gflops=g, imgsz=imgsz, round_to=round_to,
                                                              prune_below=prune_below, importance=importance))
        ms = lm.predict_spec(s)
        if abs(ms - want_ms) < abs(best[1] - want_ms):
            best = (g, ms)
        lo, hi = (g, hi) if ms < want_ms else (lo, g)
    return best[0]


def equal_latency_budget(sparse, lm, measured_ms: float, cc, importance, measure, log, rounds: int = 2) -> tuple[float, list]:
    """A GFLOPs budget whose pruned model *measures* as fast as `measured_ms` (within 5%): the table's
    prediction first, then corrected by the measurement of that prune (its local error taken out)."""
    import pruning
    want, tried = measured_ms, []
    for r in range(rounds + 1):
        g = budget_for_ms(sparse.spec, sparse.variables, lm, want, cc.imgsz, cc.round_to, cc.prune_below, importance)
        s, v = pruning.prune(sparse.spec, sparse.variables, pruning.Budget(
            target_gflops=g, imgsz=cc.imgsz, round_to=cc.round_to, prune_below=cc.prune_below, importance=importance))
        pred, ms = lm.predict_spec(s), measure(s, v)
        tried.append({"gflops_budget": round(g, 5), "predicted_ms": round(pred, 3), "measured_ms": round(ms, 3)})
        log(f"  budget {g:.4f} GFLOPs: predicted {pred:.2f} ms, measured {ms:.2f} ms (want {measured_ms:.2f})")
        if abs(ms / measured_ms - 1) <= 0.05:
            break
        want = pred * measured_ms / ms
    best = min(tried, key=lambda t: abs(t["measured_ms"] / measured_ms - 1))
    return best["gflops_budget"], tried


def main(argv=None) -> int:
    import numpy as np

    import pruning
    from export.benchmark import machine_info
    from pruning.latency import default_threads, end_to_end_runner, latency_model, measure_ms, time_interleaved
    from pruning.sparsity import TaylorScores, taylor_importance
    from yolojax import load
    from yolojax.api import Detector
    from yolojax.data import load_dataset
    from yolojax.model.counting import count_flops, count_params
    from yolojax.pipeline import CompressConfig, _prune
    from yolojax.train.cli import default_data
    d = CompressConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the unpruned teacher (distillation), e.g. runs/demo/teacher/best")
    p.add_argument("--sparse", required=True, help="the sparse model to prune, e.g. runs/demo/sparse/model")
    p.add_argument("--data", default=None, help="dataset; default: the demo's built-in synthetic set")
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--ratio", type=float, default=0.5, help="latency target as a share of the unpruned latency")
    p.add_argument("--finetune-epochs", type=int, default=d.epochs_finetune)
    p.add_argument("--method", default=d.distill)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--reps", type=int, default=60, help="interleaved end-to-end timing rounds")
    p.add_argument("--workdir", default="runs/latency_vs_flops")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/latency_vs_flops"))
    args = p.parse_args(argv)
    t0 = time.time()
    log = lambda m: print(f"[{time.time() - t0:6.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    data = args.data or str(default_data(d.synth_images, args.imgsz, d.seed, zoom=d.synth_zoom))
    cc = dataclasses.replace(d, data=data, imgsz=args.imgsz, epochs_finetune=args.finetune_epochs,
                             teacher=args.teacher, distill=args.method, workers=2, progress=False)
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    teacher, sparse = load(args.teacher), load(args.sparse)
    work = Path(args.workdir)
    info = {**machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": list(os.getloadavg())}
    th = default_threads()
    measure = lambda s, v: measure_ms(s, v, "onnxruntime", args.imgsz, 1, th, reps=40)  # noqa: E731

    lm = latency_model(sparse.spec, backend="onnxruntime", imgsz=args.imgsz, variables=sparse.variables, log=log)
    m0 = measure(sparse.spec, sparse.variables)
    target_ms = args.ratio * m0
    log(f"unpruned: predicted {lm.predict():.2f} ms, measured {m0:.2f} ms; latency target {target_ms:.2f} ms")
    taylor = TaylorScores(taylor_importance(sparse.spec, sparse.variables, train, args.imgsz, seed=cc.seed))

    def pruned(tag, **over):
        dd = work / f"pruned_{tag}"
        return load(dd) if (dd / "prune_report.json").exists() else \
            _prune(dataclasses.replace(cc, **over), sparse, dd, train)

    lat = pruned("latency", target_ms=target_ms)  # what `compress --target-ms` does (Taylor, measured re-plans)
    m_lat = measure(lat.spec, lat.variables)
    budgets = {}
    for tag, imp in (("gflops", "bn"), ("gflops_taylor", taylor)):
        f = work / f"budget_{tag}.json"
        if not f.exists():
            log(f"equal-latency GFLOPs budget, {tag}")
            g, tried = equal_latency_budget(sparse, lm, m_lat, cc, imp, measure, log)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({"gflops": g, "tried": tried}))
        budgets[tag] = json.loads(f.read_text())
    flops = pruned("gflops", target_flops=budgets["gflops"]["gflops"])  # the compress default ranking (|gamma|)
    # the same budget with Taylor importance: separates "ranked per ms" from "ranked by Taylor"
    dd = work / "pruned_gflops_taylor"
    if (dd / "prune_report.json").exists():
        flops_t = load(dd)
    else:
        s, v = pruning.prune(sparse.spec, sparse.variables, pruning.Budget(
            target_gflops=budgets["gflops_taylor"]["gflops"], imgsz=cc.imgsz, round_to=cc.round_to,
            prune_below=cc.prune_below, importance=taylor))
        from yolojax.pipeline import _recalibrated, _save_stage_model
        flops_t = _recalibrated(Detector(s, v, dict(sparse.meta)), train, cc)
        _save_stage_model(flops_t, dd)
        (dd / "prune_report.json").write_text(json.dumps(pruning.prune_report(sparse.spec, s, cc.imgsz), default=float))
    # |gamma| ranked per ms, for the record (no fine-tune): why the latency target ranks by Taylor
    s, v = pruning.prune(sparse.spec, sparse.variables, pruning.LatencyTarget(
        target_ms=target_ms, imgsz=args.imgsz, model=lm, prune_below=cc.prune_below, round_to=cc.round_to))
    from yolojax.pipeline import _recalibrated
    lat_bn = _recalibrated(Detector(s, v, dict(sparse.meta)), train, cc)
    models = {"unpruned (sparse)": (sparse, None), "latency target, Taylor (compress --target-ms)": (lat, "latency"),
              "GFLOPs budget, |gamma| (compress default)": (flops, "gflops"),
              "GFLOPs budget, Taylor": (flops_t, "gflops_taylor"),
              "latency target, |gamma| (not fine-tuned)": (lat_bn, None)}

    log(f"timing the models end to end, {args.reps} interleaved rounds")
    with tempfile.TemporaryDirectory(prefix="yolojax-lvf-") as tmp:
        fns = [end_to_end_runner(m.spec, m.variables, "onnxruntime", args.imgsz, 1, th, tmp) for m, _ in models.values()]
        times = time_interleaved(fns, args.reps, warmup=3, seed=1)
    base = float(np.median(times[0]))
    g0 = count_flops(sparse.spec, args.imgsz)
    arms = {}
    for (name, (m, _)), t in zip(models.items(), times):
        arms[name] = {"params": count_params(m.spec), "gflops": round(count_flops(m.spec, args.imgsz), 4),
                      "gflops_ratio": round(count_flops(m.spec, args.imgsz) / g0, 3),
                      "predicted_ms": round(lm.predict_spec(m.spec), 3), "measured_ms": round(float(np.median(t)), 3),
                      "p10_p90_ms": [round(float(np.percentile(t, q)), 3) for q in (10, 90)],
                      "latency_ratio": round(float(np.median(t)) / base, 3), "val": _val(m, val, args.imgsz)}
        log(f"{name}: {arms[name]}")
    seeds = [int(s) for s in args.seeds.split(",")]
    for name, (m, tag) in models.items():
        if tag is None:
            continue
        runs = []
        for s in seeds:
            r = finetune_arm(cc, teacher, m, args.method, s, train, val, work / f"ft_{tag}_s{s}")
            log(f"{name} / seed {s}: mAP50 {r['map50']:.4f}, mAP50-95 {r['map50_95']:.4f}")
            runs.append(r)
        arms[name]["finetuned"] = {"map50": summarize([r["map50"] for r in runs]),
                                   "map50_95": summarize([r["map50_95"] for r in runs])}
    info["loadavg_end"] = list(os.getloadavg())
    lat_rep = json.loads((work / "pruned_latency" / "prune_report.json").read_text()).get("latency", {})
    res = {"machine": info, "config": {**dataclasses.asdict(cc), "seeds": seeds, "ratio": args.ratio,
                                       "val_images": len(val)},
           "teacher": {"source": args.teacher, **_val(teacher, val, args.imgsz)}, "sparse": args.sparse,
           "unpruned_measured_ms": round(m0, 3), "L0_predicted_ms": round(lm.predict(), 3),
           "target_ms": round(target_ms, 3), "latency_plans": lat_rep.get("plans"), "budgets": budgets,
           "table": str(lm.table.path), "reps": args.reps, "arms": arms, "total_seconds": round(time.time() - t0),
           "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    c, m = res["config"], res["machine"]
    lines = [f"# Latency-targeted vs GFLOPs-budget pruning at equal measured latency (yolov8n, {c['imgsz']} px)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m.get('onnxruntime')}, jax {m.get('jax')}; "
             f"{m['date']}; load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end.", "",
             f"From one sparse model ({res['sparse']}): `latency target` = what `compress --target-ms` does "
             f"(pruning.LatencyTarget, Taylor importance per ms, the plan measured and re-planned) at {c['ratio']:g} x "
             f"the measured unpruned latency ({res['target_ms']:.2f} of {res['unpruned_measured_ms']:.2f} ms, ONNX "
             f"Runtime, batch 1); `GFLOPs budget` = pruning.Budget (near-zero channels first, then the global "
             f"ranking) at the budget ({res['budgets']['gflops']['gflops']:.4f} GFLOPs; with Taylor "
             f"{res['budgets']['gflops_taylor']['gflops']:.4f}) whose pruned model measures as fast as the latency "
             f"target's (found by the table, corrected by measurement). Every model's BN statistics re-estimated "
             f"after pruning, as compress does. Latency: median of {res['reps']} interleaved end-to-end rounds "
             f"(p10-p90). Fine-tuning: `compress`'s stage, {c['epochs_finetune']} epochs, distillation "
             f"`{c['distill']}` from the teacher ({res['teacher']['source']}, mAP50 {res['teacher']['map50']:.4f}), "
             f"seeds {c['seeds']}: last-epoch mAP on {c['val_images']} validation images, mean (min..max).", "",
             "| model | params | GFLOPs (ratio) | predicted ms | measured ms (p10-p90) | latency ratio | mAP50 pruned | "
             "mAP50 fine-tuned | mAP50-95 fine-tuned |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, a in res["arms"].items():
        ft = a.get("finetuned")
        f50 = f"{ft['map50']['mean']:.4f} ({ft['map50']['min']:.4f}..{ft['map50']['max']:.4f})" if ft else "–"
        f95 = f"{ft['map50_95']['mean']:.4f} ({ft['map50_95']['min']:.4f}..{ft['map50_95']['max']:.4f})" if ft else "–"
        lines.append(f"| {name.replace('|', chr(92) + '|')} | {a['params']:,} | {a['gflops']:.3f} ({a['gflops_ratio']:.2f}) | {a['predicted_ms']:.2f} | "
                     f"{a['measured_ms']:.2f} ({a['p10_p90_ms'][0]:.2f}-{a['p10_p90_ms'][1]:.2f}) | "
                     f"{a['latency_ratio']:.3f} | {a['val']['map50']:.4f} | {f50} | {f95} |")
    if res.get("notes"):
        lines += ["", "## What this shows", "", *res["notes"]]
    lines += ["", f"Total wall time {res['total_seconds'] / 60:.1f} min. Command: `{res['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
