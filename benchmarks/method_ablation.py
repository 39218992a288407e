"""Ablation of the whole method: {no sparsity, grad-L1, prox-L1} x {plain fine-tune, CWD, spatial attention,
logit KD} at equal budgets, from one converged teacher, over several fine-tuning seeds.

Every arm runs what `yolojax compress` runs, with its defaults (yolojax.pipeline.CompressConfig):
  sparse stage  the same number of epochs for every arm: `none` continues training with lambda = 0 (so all
                arms have trained equally long), `grad` is the seed's form (lambda * sign(gamma) added to the
                gradient, decay schedule, lambda 1e-3), `prox` the default (proximal step after the optimizer,
                dynamic lambda driving 50% of the gammas below 1e-2);
  pruning       the default: a GFLOPs budget of half the teacher's, near-zero channels removed first, then
                the global ranking, BN statistics re-estimated;
  fine-tune     the same epochs, learning rate and seed for every method; `none` is plain fine-tuning.
Numbers are last-epoch values (no selection on the validation set); mean and spread (min..max) over seeds.

    python benchmarks/method_ablation.py --teacher runs/demo/teacher/best      # the demo's converged teacher
    python benchmarks/method_ablation.py --teacher T --data D --imgsz 640 --sparse-epochs 30 --finetune-epochs 50

Finished runs under --workdir are reused, so an interrupted ablation continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPARSITY = {  # arm -> CompressConfig overrides of the sparse stage
    "none": dict(sparsity=0.0),
    "grad": dict(sparsity=1e-3, sparsity_mode="grad", sparsity_schedule="decay", sparsity_beta=0.0),
    "prox": dict(),  # the defaults
}
METHODS = ("none", "cwd", "sad", "logit")


def _val(det, val, imgsz: int) -> dict:
    from yolojax.report import _evaluate
    m = _evaluate(det, val, imgsz, workers=2)
    return {k: float(m[k]) for k in ("map50", "map50_95") if k in m}


def _done(d: Path) -> dict | None:
    f = d / "result.json"
    return json.loads(f.read_text()) if f.exists() else None


def sparse_arm(cc, arm: str, teacher, train, val, work: Path) -> tuple[object, dict]:
    """The sparse stage of one arm, then the default pruning; (pruned Detector, row)."""
    from pruning.sparsity import gamma_stats
    from yolojax import load
    from yolojax.pipeline import _prune, _train_stage, sparse_pieces
    d = work / f"sparse_{arm}"
    row = _done(d)
    if row is None:
        t0 = time.time()
        a = dataclasses.replace(cc, **SPARSITY[arm])
        cfg, tx, hook = sparse_pieces(a, teacher, train)
        _train_stage(d / "train", cfg, train, val, teacher, extra_tx=tx, hooks=(hook,) if hook else (),
                     progress=False)
        sparse = load(d / "train" / "last")
        pruned = _prune(a, sparse, d / "pruned", train)
        pr = json.loads((d / "pruned" / "prune_report.json").read_text())
        row = {"sparse": _val(sparse, val, a.imgsz), "gamma_below_1e-2": gamma_stats(sparse.variables["params"])["frac_lt_1e-2"],
               "pruned": _val(pruned, val, a.imgsz), "gflops": pr["gflops_after"], "params": pr["params_after"],
               "near_zero": pr.get("near_zero"), "seconds": time.time() - t0}
        (d / "result.json").write_text(json.dumps(row, indent=1))
    return load(d / "pruned"), row


def finetune_arm(cc, teacher, pruned, method: str, seed: int, train, val, d: Path) -> dict:
    from distill.train import distill_finetune
    from yolojax.pipeline import _train_config
    from yolojax.train.checkpoints import resume_info
    row = _done(d)
    if row is None:
        t0 = time.time()
        cfg = _train_config(dataclasses.replace(cc, seed=seed), cc.epochs_finetune, len(train), warmup_epochs=0.5,
                            val_every=cc.epochs_finetune)
        distill_finetune(teacher, pruned, train, val, cfg, method=method, rundir=d / "train", progress=False,
                         resume=resume_info(d / "train") is not None)
        last = json.loads((d / "train" / "results.json").read_text())[-1]
        row = {"map50": last["val/map50"], "map50_95": last["val/map50_95"], "seconds": time.time() - t0}
        (d / "result.json").write_text(json.dumps(row, indent=1))
    return row


def summarize(vals: list[float]) -> dict:
    import numpy as np
    a = np.asarray(vals, float)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def markdown(res: dict) -> str:
    c, t = res["config"], res["teacher"]
    lines = [f"# Method ablation: sparsity x distillation ({c['data_name']}, yolov8n at {c['imgsz']} px)", "",
             f"Teacher: {t['source']}, mAP50 {t['map50']:.4f}, mAP50-95 {t['map50_95']:.4f}. Every arm: "
             f"{c['epochs_sparse']} sparse-stage epochs (lambda = 0 for `none`), pruning to half the teacher's "
             f"GFLOPs (near-zero channels first, then the global ranking), {c['epochs_finetune']} fine-tuning epochs "
             f"(AdamW lr0 {c['lr0']}, batch {c['batch']}); last-epoch numbers on {c['val_images']} validation "
             f"images; fine-tuning seeds {c['seeds']} (mean, and min..max).", "",
             "| sparsity | share of gammas < 1e-2 | sparse mAP50 | GFLOPs | pruned mAP50 (no fine-tune) | "
             + " | ".join(f"{m if m != 'none' else 'plain'} mAP50" for m in res["methods"]) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(res["methods"])]
    for arm, a in res["arms"].items():
        cells = []
        for m in res["methods"]:
            s = a["finetune"][m]["map50"]
            cells.append(f"{s['mean']:.4f} ({s['min']:.4f}..{s['max']:.4f})")
        lines.append(f"| {arm} | {a['gamma_below_1e-2']:.1%} | {a['sparse']['map50']:.4f} | {a['gflops']:.3f} | "
                     f"{a['pruned']['map50']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "mAP50-95 after fine-tuning (mean over seeds):", "",
              "| sparsity | " + " | ".join(m if m != "none" else "plain" for m in res["methods"]) + " |",
              "|---|" + "---:|" * len(res["methods"])]
    for arm, a in res["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{a['finetune'][m]['map50_95']['mean']:.4f}" for m in res["methods"])
                     + " |")
    if res.get("notes"):
        lines += ["", "## What this shows", "", *res["notes"]]
    lines += ["", f"Machine: {res['machine']}; {res['date']}; total wall time {res['total_seconds'] / 60:.1f} min.",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    arms, methods = list(res["arms"]), res["methods"]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    w = 0.8 / (len(methods) + 1)
    x = np.arange(len(arms))
    ax.bar(x - 0.4 + w / 2, [res["arms"][a]["pruned"]["map50"] for a in arms], w, color="#bbbbbb",
           label="pruned, no fine-tune")
    for j, m in enumerate(methods):
        s = [res["arms"][a]["finetune"][m]["map50"] for a in arms]
        mean = np.array([v["mean"] for v in s])
        err = np.array([[v["mean"] - v["min"] for v in s], [v["max"] - v["mean"] for v in s]])
        ax.bar(x - 0.4 + w * (j + 1.5), mean, w, yerr=err, capsize=2, label=m if m != "none" else "plain")
    ax.axhline(res["teacher"]["map50"], color="k", ls="--", lw=1, label="teacher")
    ax.set_xticks(x, [f"sparsity: {a}" for a in arms])
    ax.set_ylabel("mAP50 (val)")
    ax.set_title("pruned to 0.5x GFLOPs, then fine-tuned (mean, min..max over seeds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    from yolojax.pipeline import CompressConfig
    d = CompressConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="a converged teacher (e.g. runs/demo/teacher/best)")
    p.add_argument("--data", default=None, help="dataset; default: the demo's built-in synthetic set")
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--sparse-epochs", type=int, default=d.epochs_sparse)
    p.add_argument("--finetune-epochs", type=int, default=d.epochs_finetune)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--arms", default="none,grad,prox")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--workdir", default="runs/method_ablation")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/method_ablation"))
    args = p.parse_args(argv)

    from yolojax import load
    from yolojax.data import load_dataset
    from yolojax.train.cli import default_data
    t0 = time.time()
    data = args.data or str(default_data(d.synth_images, args.imgsz, d.seed, zoom=d.synth_zoom))
    cc = dataclasses.replace(d, data=data, imgsz=args.imgsz, epochs_sparse=args.sparse_epochs,
                             epochs_finetune=args.finetune_epochs, teacher=args.teacher, workers=2, progress=False)
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    teacher = load(args.teacher)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms, methods = args.arms.split(","), args.methods.split(",")
    work = Path(args.workdir)
    res = {"config": {**dataclasses.asdict(cc), "seeds": seeds, "val_images": len(val),
                      "data_name": Path(data).parent.name if data.endswith(".yaml") else data},
           "teacher": {"source": args.teacher, **_val(teacher, val, args.imgsz)}, "methods": methods, "arms": {},
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, JAX CPU",
           "date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    for arm in arms:
        print(f"[{time.time() - t0:6.0f}s] sparsity {arm}", file=sys.stderr, flush=True)
        pruned, row = sparse_arm(cc, arm, teacher, train, val, work)
        ft = {}
        for m in methods:
            runs = []
            for s in seeds:
                r = finetune_arm(cc, teacher, pruned, m, s, train, val, work / f"ft_{arm}_{m}_s{s}")
                print(f"[{time.time() - t0:6.0f}s]   {arm} / {m} / seed {s}: mAP50 {r['map50']:.4f}",
                      file=sys.stderr, flush=True)
                runs.append(r)
            ft[m] = {"map50": summarize([r["map50"] for r in runs]),
                     "map50_95": summarize([r["map50_95"] for r in runs]), "runs": runs}
        res["arms"][arm] = {**row, "finetune": ft}
    res["total_seconds"] = time.time() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.with_suffix(".json").exists():  # keep the notes written after a previous run
        res["notes"] = json.loads(out.with_suffix(".json").read_text()).get("notes", [])
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    plot(res, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
