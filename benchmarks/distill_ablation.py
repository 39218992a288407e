"""Ablation: fine-tuning pruned YOLOv8 students with and without distillation from the unpruned teacher.

Train a teacher (or take one by path), prune it by each --ratios share (LayerRatio: the seed paper's
per-layer recipe), fine-tune every pruned student for the same budget with each method (none = plain
fine-tuning, cwd, sad, logit, cwd+logit), and write a table (mAP50, mAP50-95, APs, params, GFLOPs) to
benchmarks/results/distill_ablation.{json,md} and a bar chart distill_ablation.png.

    python benchmarks/distill_ablation.py                          # built-in synthetic set, 160 px (CPU size)
    python benchmarks/distill_ablation.py --teacher runs/x/best --data data.yaml --imgsz 640 \
        --student-epochs 100 --out benchmarks/results/distill_ablation_visdrone

Finished runs under --workdir are reused (delete a run's folder to redo it), so an interrupted ablation
continues where it stopped. Numbers are the last epoch's (same budget for every method, no selection on
the validation set).
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

METRICS = ("map50", "map50_95", "map_small", "map_medium", "map_large", "precision", "recall")


def _val(det, val, imgsz: int) -> dict:
    from yolojax.data.loader import Loader
    from yolojax.train.validate import run_validation
    loader = Loader(val, 16, imgsz, augment=False, workers=2, max_boxes=8)
    try:
        m, _ = run_validation(det.spec, det.variables, loader, progress=False)
    finally:
        loader.close()
    return {k: float(m[k]) for k in METRICS if k in m}


def _counts(spec, imgsz: int) -> dict:
    from yolojax.model.counting import count_flops, count_params
    return {"params": count_params(spec), "gflops": round(count_flops(spec, imgsz), 4)}


def _finished(run: Path, epochs: int) -> dict | None:
    f = run / "results.json"
    if not f.exists():
        return None
    rows = json.loads(f.read_text())
    if not rows or rows[-1].get("epoch") != epochs or "val/map50" not in rows[-1]:
        return None
    return rows[-1]


def train_teacher(args, train, val, out: Path):
    from yolojax import load
    from yolojax.train.checkpoints import resume_info
    from yolojax.train.config import TrainConfig
    from yolojax.train.trainer import Trainer, resolve_model
    cfg = TrainConfig(epochs=args.teacher_epochs, batch=args.batch, imgsz=args.imgsz, optimizer="adamw",
                      lr0=args.teacher_lr0, nbs=args.batch, workers=args.workers, seed=args.seed,
                      val_every=max(args.teacher_epochs // 6, 1))
    if _finished(out, cfg.epochs) is None:
        spec, variables, note = resolve_model(args.model, train.nc, list(train.names), args.seed)
        t0 = time.time()
        trainer = Trainer(cfg, out, train, val, spec, variables, progress=args.progress, note=note,
                          meta={"data": str(args.data)})
        if resume_info(out) is not None:
            trainer.restore()
        trainer.fit()
        (out / "time.json").write_text(json.dumps({"seconds": time.time() - t0}))
    return load(out / "last"), dataclasses.asdict(cfg)


def finetune(args, teacher, student, train, val, method: str, out: Path) -> tuple[dict, float]:
    from distill.train import distill_finetune
    from yolojax.train.checkpoints import resume_info
    from yolojax.train.config import TrainConfig
    cfg = TrainConfig(epochs=args.student_epochs, batch=args.batch, imgsz=args.imgsz, optimizer="adamw",
                      lr0=args.student_lr0, nbs=args.batch, workers=args.workers, seed=args.finetune_seed,
                      warmup_epochs=args.warmup_epochs, val_every=args.student_epochs)
    row = _finished(out, cfg.epochs)
    if row is None:
        t0 = time.time()
        distill_finetune(teacher, student, train, val, cfg, method, rundir=out, progress=args.progress,
                         resume=resume_info(out) is not None)
        (out / "time.json").write_text(json.dumps({"seconds": time.time() - t0}))
        row = _finished(out, cfg.epochs)
    secs = json.loads((out / "time.json").read_text())["seconds"] if (out / "time.json").exists() else float("nan")
    return row, secs


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    ratios = result["ratios"]
    methods = result["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, key, title in zip(axes, ("map50_95", "map50"), ("mAP50-95", "mAP50")):
        x = np.arange(len(ratios))
        width = 0.8 / (len(methods) + 1)
        pruned = [result["students"][str(r)]["pruned"][key] for r in ratios]
        ax.bar(x - 0.4 + width / 2, pruned, width, color="#bbbbbb", label="pruned, no fine-tune")
        for j, m in enumerate(methods):
            vals = [result["students"][str(r)]["runs"][m][key] for r in ratios]
            ax.bar(x - 0.4 + width * (j + 1.5), vals, width, label=m)
        ax.axhline(result["teacher"]["metrics"][key], color="k", ls="--", lw=1, label="teacher")
        ax.set_xticks(x, [f"{int(r * 100)}% pruned\n{result['students'][str(r)]['gflops']:.2f} GFLOPs" for r in ratios])
        ax.set_title(f"{title} after {result['config']['student_epochs']} fine-tuning epochs")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict) -> str:
    t = result["teacher"]
    c = result["config"]
    lines = [f"# Distillation ablation: {c['data_name']}, yolov8{t['variant']} at {c['imgsz']} px", "",
             f"Teacher: {t['source']} ({t['params']:,} params, {t['gflops']:.3f} GFLOPs@{c['imgsz']}); students: "
             f"LayerRatio pruning of the teacher, then {c['student_epochs']} epochs of fine-tuning (AdamW lr0 "
             f"{c['student_lr0']}, batch {c['batch']}, warmup {c['warmup_epochs']} epochs), the same budget for "
             f"every method. Last-epoch numbers on the validation split ({c['val_images']} images). "
             f"Distillation defaults: {json.dumps(c['distill_defaults'])}.", "",
             "| model | method | mAP50 | mAP50-95 | APs | APm | params | GFLOPs | fine-tune time |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "n/a" if v is None or v != v or v < 0 else f"{v:.4f}"
    m = t["metrics"]
    lines.append(f"| teacher | - | {fmt(m['map50'])} | {fmt(m['map50_95'])} | {fmt(m.get('map_small'))} | "
                 f"{fmt(m.get('map_medium'))} | {t['params']:,} | {t['gflops']:.3f} | - |")
    for r in result["ratios"]:
        s = result["students"][str(r)]
        p = s["pruned"]
        lines.append(f"| {int(r * 100)}% pruned | no fine-tune | {fmt(p['map50'])} | {fmt(p['map50_95'])} | "
                     f"{fmt(p.get('map_small'))} | {fmt(p.get('map_medium'))} | {s['params']:,} | "
                     f"{s['gflops']:.3f} | - |")
        best = max(result["methods"], key=lambda k: s["runs"][k]["map50_95"])
        for meth in result["methods"]:
            q = s["runs"][meth]
            mark = " **(best)**" if meth == best else ""
            lines.append(f"| {int(r * 100)}% pruned | {meth}{mark} | {fmt(q['map50'])} | {fmt(q['map50_95'])} | "
                         f"{fmt(q.get('map_small'))} | {fmt(q.get('map_medium'))} | {s['params']:,} | "
                         f"{s['gflops']:.3f} | {q['seconds']:.0f} s |")
    lines += ["", "Distillation loss at the end of fine-tuning (per image, weighted; detection loss for scale):", "",
              "| model | method | box+cls+dfl | distill terms |", "|---|---|---|---|"]
    for r in result["students"]:
        for meth, q in result["students"][r]["runs"].items():
            det = q.get("box", 0) + q.get("cls", 0) + q.get("dfl", 0)
            terms = ", ".join(f"{k.removeprefix('distill_')} {v:.3f}" for k, v in q.items()
                              if k.startswith("distill_"))
            lines.append(f"| {int(float(r) * 100)}% | {meth} | {det:.3f} | {terms or '-'} |")
    if result.get("notes"):
        lines += ["", "## Notes", "", *result["notes"]]
    lines += ["", f"Machine: {result['machine']}. Total wall time {result['total_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset (default: built-in synthetic, --images at --imgsz)")
    p.add_argument("--images", type=int, default=400, help="synthetic images (default 400: 320 train / 80 val)")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--model", default="yolov8n", help="teacher variant when training one")
    p.add_argument("--teacher", default=None, help="use this teacher (checkpoint/run dir) instead of training one")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--teacher-lr0", type=float, default=0.002)
    p.add_argument("--student-epochs", type=int, default=10)
    p.add_argument("--student-lr0", type=float, default=0.001)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-seed", dest="finetune_seed", type=int, default=0,
                   help="seed of the fine-tuning runs (data order, augmentation); rerun with another to see the noise")
    p.add_argument("--ratios", default="0.5,0.75")
    p.add_argument("--methods", default="none,cwd,sad,logit,cwd+logit")
    p.add_argument("--workdir", default="runs/distill_ablation")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/distill_ablation"),
                   help="output prefix (.json, .md, .png)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    from distill.train import DistillConfig, parse_method, prune_student
    from yolojax import load
    from yolojax.data import load_dataset
    from yolojax.data.synth import make_synthetic

    t_start = time.time()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        args.data = make_synthetic(work / f"synth-{args.images}-{args.imgsz}", images=args.images, imgsz=args.imgsz,
                                   seed=args.seed, progress=False)
    train, val = load_dataset(args.data, "train"), load_dataset(args.data, "val")
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    for m in methods:
        parse_method(m)

    if args.teacher:
        teacher, tcfg = load(args.teacher), None
        source = str(args.teacher)
    else:
        teacher, tcfg = train_teacher(args, train, val, work / "teacher")
        source = f"trained here ({args.teacher_epochs} epochs, {work / 'teacher'})"
    print(f"teacher: {source}", file=sys.stderr)
    result = {
        "config": {**{k: v for k, v in vars(args).items() if k not in ("progress",)}, "data": str(args.data),
                   "data_name": (Path(str(args.data)).parent.name if str(args.data).endswith(".yaml")
                                 else str(args.data)),
                   "train_images": len(train), "val_images": len(val), "teacher_train_config": tcfg,
                   "distill_defaults": {k: v for k, v in DistillConfig().to_dict().items() if k != "method"}},
        "ratios": ratios, "methods": methods,
        "teacher": {"source": source, "variant": teacher.spec.variant, **_counts(teacher.spec, args.imgsz),
                    "metrics": _val(teacher, val, args.imgsz)},
        "students": {}, "notes": [],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), JAX CPU",
    }
    print(f"teacher mAP50 {result['teacher']['metrics']['map50']:.4f} "
          f"mAP50-95 {result['teacher']['metrics']['map50_95']:.4f}", file=sys.stderr)
    for r in ratios:
        student = prune_student(dataclasses.replace(teacher, meta={**dict(teacher.meta), "imgsz": args.imgsz}), r,
                                "layer")
        entry = {**_counts(student.spec, args.imgsz), "pruned": _val(student, val, args.imgsz), "runs": {}}
        result["students"][str(r)] = entry
        for m in methods:
            suffix = f"_s{args.finetune_seed}" if args.finetune_seed else ""
            out = work / f"r{int(r * 100)}_{m.replace('+', '_')}{suffix}"
            print(f"[{time.time() - t_start:7.0f}s] ratio {r}: fine-tune with {m} -> {out}", file=sys.stderr)
            row, secs = finetune(args, teacher, student, train, val, m, out)
            entry["runs"][m] = {**{k.removeprefix("val/"): float(v) for k, v in row.items()
                                   if k.startswith("val/")},
                                **{k: float(v) for k, v in row.items() if k in ("box", "cls", "dfl")
                                   or k.startswith("distill")}, "seconds": secs}
            q = entry["runs"][m]
            print(f"    mAP50 {q['map50']:.4f} mAP50-95 {q['map50_95']:.4f} ({secs:.0f} s)", file=sys.stderr)
    result["total_seconds"] = time.time() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.with_suffix(".json").exists():  # keep notes written by hand after a previous run
        result["notes"] = json.loads(out.with_suffix(".json").read_text()).get("notes", [])
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
