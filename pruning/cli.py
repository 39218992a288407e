"""`yolojax prune`: structured channel pruning of a checkpoint into a new, normal checkpoint."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EPILOG = """examples:
  yolojax prune runs/sparse/best -o runs/pruned --ratio 0.5 --policy layer     # seed recipe: 50% per layer
  yolojax prune runs/sparse/best -o runs/pruned --threshold 0.01               # network slimming
  yolojax prune runs/sparse/best -o runs/pruned --ratio 0.4 --policy group --rule head=0.2 --rule P3=0.2
  yolojax prune runs/sparse/best -o runs/pruned --target-flops 14.0            # budget: GFLOPs at --imgsz
  yolojax prune runs/sparse/best -o runs/pruned --target-ms 12 --backend onnxruntime --imgsz 320
                                     # latency target, by a latency table measured on this machine (cached)
selectors (--rule/--skip): tags joined by '/' (backbone|neck|head, conv|c2f|sppf|detect, P1..P5,
  residual|split_a|split_b|hidden|out|box|cls|angle), or a group-name glob like 'model_22/cv3_*'."""


def _rules(items) -> tuple:
    out = []
    for item in items or ():
        sel, sep, val = item.rpartition("=")
        if not sep or not sel:
            raise SystemExit(f"--rule {item!r}: expected SELECTOR=VALUE, e.g. head=0.2")
        try:
            out.append((sel, float(val)))
        except ValueError:
            raise SystemExit(f"--rule {item!r}: {val!r} is not a number") from None
    return tuple(out)


def make_policy(args):
    """The Policy the command-line options describe."""
    from .policy import Budget, GlobalRatio, GlobalThreshold, GroupPolicy, LatencyTarget, LayerRatio

    common = dict(round_to=args.round_to, min_channels=args.min_channels, importance=args.importance,
                  reduce=args.reduce, skip=tuple(args.skip or ()))
    rules = _rules(args.rule)
    if getattr(args, "target_ms", None) is not None:
        if rules or args.policy != "global":
            raise SystemExit("--target-ms ranks channels globally by importance per ms: leave out --rule/--policy")
        return LatencyTarget(target_ms=args.target_ms, backend=args.backend, imgsz=args.imgsz, batch=args.batch,
                             threads=args.threads, table=args.latency_table, prune_below=args.prune_below, **common)
    if rules and args.policy == "global":
        raise SystemExit("--rule needs --policy group or layer")
    budget = args.target_flops is not None or args.target_params is not None
    ratio = 0.0 if budget else args.ratio
    if args.threshold is not None:
        if args.policy == "layer":
            raise SystemExit("--threshold works with --policy global or group (a layer policy is a ratio)")
        if args.policy == "global":
            return GlobalThreshold(threshold=args.threshold, **common)
        return GroupPolicy(threshold=args.threshold, rules=rules, **common)
    if args.policy == "global":
        base = GlobalRatio(ratio=ratio, **common)
    elif args.policy == "layer":
        base = LayerRatio(ratio=ratio, rules=rules, **common)
    else:
        base = GroupPolicy(ratio=ratio, rules=rules, **common)
    if not budget:
        return base
    return Budget(target_gflops=args.target_flops, target_params=args.target_params, imgsz=args.imgsz,
                  base=base, **common)


_RANKING = {"GlobalRatio": "global ranking", "GlobalThreshold": "global threshold", "GroupPolicy": "per-group ranking",
            "LayerRatio": "the same share per layer"}


def policy_words(policy) -> str:
    """A policy (or its `describe()` dict) in one readable line, for logs: never a dataclass repr."""
    d = policy.describe() if hasattr(policy, "describe") else dict(policy)
    kind = d.get("policy")
    rules = f" ({', '.join(f'{k}={v:g}' for k, v in d['rules'])})" if d.get("rules") else ""
    skip = f", never {', '.join(d['skip'])}" if d.get("skip") else ""
    rounding = f"; kept channels a multiple of {d.get('round_to', 1)}, at least {d.get('min_channels', 1)} a group"
    if kind == "LatencyTarget":
        zero = (f"channels with |gamma| < {d['prune_below']:g} first, then " if d.get("prune_below") is not None
                else "")
        return (f"latency target <= {d['target_ms']:g} ms on {d['backend']} at {d['imgsz']} px batch {d['batch']} "
                f"(measured latency table): {zero}the least {d.get('importance', 'bn')} importance lost per ms "
                f"saved{skip}{rounding}")
    if kind == "Budget":
        targets = []
        if d.get("target_gflops") is not None:
            targets.append(f"<= {d['target_gflops']:.3f} GFLOPs at {d.get('imgsz')} px")
        if d.get("target_params") is not None:
            targets.append(f"<= {int(d['target_params']):,} params")
        base = d.get("base") or {}
        zero = (f"channels with |gamma| < {d['prune_below']:g} first, then " if d.get("prune_below") is not None
                else "")
        return (f"budget {' and '.join(targets)}: {zero}the least important by "
                f"{_RANKING.get(base.get('policy'), base.get('policy', 'global ranking'))} "
                f"({d.get('importance', 'bn')} importance){skip}{rounding}")
    if kind == "GlobalThreshold" or d.get("threshold") is not None:
        return (f"{_RANKING.get(kind, kind)}: remove channels with importance < {d['threshold']:g} "
                f"({d.get('importance', 'bn')}){rules}{skip}{rounding}")
    ratio = d.get("ratio")
    share = f"remove {ratio:.0%} of the channels" if ratio is not None else "remove channels"
    return f"{_RANKING.get(kind, kind)}: {share} ({d.get('importance', 'bn')} importance){rules}{skip}{rounding}"


def plot_channels(report: dict, path: Path) -> Path:
    """Bar chart of output channels per conv (BN convs, execution order), before vs after."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in report["layers"] if r["bn"]]  # Detect's final convs keep their outputs
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(10, 0.22 * len(rows)), 4.8), dpi=110)
    ax.bar(x, [r["cout_before"] for r in rows], 0.8, color="#c7c7c7", label="before")
    ax.bar(x, [r["cout_after"] for r in rows], 0.5, color="#1f77b4", label="after")
    ax.set_xticks(x, [r["path"].replace("model_", "") for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(f"channels per layer: params {report['params_before']:,} -> {report['params_after']:,}, "
                 f"GFLOPs@{report['imgsz']} {report['gflops_before']:.2f} -> {report['gflops_after']:.2f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    lines = [f"{'layer':<22} {'out before':>10} {'out after':>9} {'in before':>9} {'in after':>8} {'kept':>6}"]
    for r in report["layers"]:
        lines.append(f"{r['path']:<22} {r['cout_before']:>10} {r['cout_after']:>9} {r['cin_before']:>9} "
                     f"{r['cin_after']:>8} {r['cout_after'] / r['cout_before']:>6.0%}")
    pb, pa, fb, fa = (report[k] for k in ("params_before", "params_after", "gflops_before", "gflops_after"))
    mb, ma = report["macs_before"], report["macs_after"]
    lines += ["", f"params  {pb:>13,} -> {pa:>13,}  ({pa / pb:.1%})",
              f"GFLOPs  {fb:>13.3f} -> {fa:>13.3f}  ({fa / fb:.1%}) at {report['imgsz']} px",
              f"GMACs   {mb / 1e9:>13.3f} -> {ma / 1e9:>13.3f}  ({ma / mb:.1%})",
              f"channels{report['channels_before']:>13,} -> {report['channels_after']:>13,}"]
    return "\n".join(lines)


def _check_output(out: Path, source: str, force: bool) -> None:
    """OUT may be new, empty, or a checkpoint to replace, but never the model being pruned (or a folder
    holding it): the atomic save would delete the input."""
    from yolojax.checkpoint import check_replaceable
    from yolojax.errors import OutputExistsError
    if force:
        return
    check_replaceable(out)
    src, o = Path(source).resolve(), out.resolve()
    if o in (src, src / "best", src / "last") or src.is_relative_to(o):
        raise OutputExistsError(f"-o {out} would replace the model being pruned ({source}): choose another -o, or "
                                f"--force")


def _check_latency_args(args) -> None:
    from yolojax.errors import UserError
    if not (args.target_ms > 0):
        raise UserError(f"--target-ms must be a positive number of milliseconds, got {args.target_ms:g}")
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.imgsz % 32:
        raise UserError(f"--imgsz must be a multiple of 32 (the model's largest stride), got {args.imgsz}")
    if args.backend == "tensorrt":  # the one-line error before anything is loaded or measured
        from .latency import backend_version
        backend_version("tensorrt")


def latency_report(det, new_spec, new_vars, model, args) -> dict:
    """Predicted (table) and measured (end-to-end, interleaved, medians) latency before and after."""
    import tempfile

    import numpy as np

    from .latency import end_to_end_runner, time_interleaved
    st = model.table.settings
    out = {"backend": args.backend, "imgsz": args.imgsz, "batch": args.batch, "threads": st["threads"],
           "target_ms": args.target_ms, "table": str(model.table.path),
           "predicted_ms_before": round(model.predict(), 3), "predicted_ms_after": round(model.predict_spec(new_spec), 3),
           "table_settings": st}
    if args.measure_runs > 0:
        print(f"prune: measuring before/after end to end on {args.backend} ({args.measure_runs} interleaved runs)",
              file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="yolojax-prune-") as work:
            fns = [end_to_end_runner(s, v, args.backend, args.imgsz, args.batch, st["threads"], work)
                   for s, v in ((det.spec, det.variables), (new_spec, new_vars))]
            times = time_interleaved(fns, args.measure_runs, warmup=3)
        for tag, t in zip(("before", "after"), times):
            out[f"measured_ms_{tag}"] = round(float(np.median(t)), 3)
            out[f"measured_p10_p90_{tag}"] = [round(float(np.percentile(t, q)), 3) for q in (10, 90)]
        out["measured_runs"] = args.measure_runs
        out["met"] = bool(out["measured_ms_after"] <= args.target_ms * 1.1)
    return out


def format_latency(lat: dict) -> str:
    lines = [f"latency on {lat['backend']} at {lat['imgsz']} px batch {lat['batch']} (target {lat['target_ms']:g} ms):",
             f"  predicted {lat['predicted_ms_before']:>9.2f} -> {lat['predicted_ms_after']:>9.2f} ms  "
             f"(table {lat['table']})"]
    if "measured_ms_after" in lat:
        lines.append(f"  measured  {lat['measured_ms_before']:>9.2f} -> {lat['measured_ms_after']:>9.2f} ms  "
                     f"(median of {lat['measured_runs']} interleaved runs; p10-p90 after "
                     f"{lat['measured_p10_p90_after'][0]:.2f}-{lat['measured_p10_p90_after'][1]:.2f})")
    for h in lat.get("refine", []) if len(lat.get("refine", [])) > 1 else []:
        lines.append(f"  plan {h['round']}: planned for {h['target_ms_used']:.2f} ms, predicted {h['predicted_ms']:.2f}, "
                     f"measured {h['measured_ms']:.2f} ms{'  <- kept' if h['chosen'] else ''}")
    return "\n".join(lines)


def cmd_prune(args) -> int:
    from yolojax import load
    from yolojax.checkpoint import save_model

    from .prune import prune, prune_report

    from yolojax.commands import resolve_imgsz
    from yolojax.train.cli import check_args
    check_args(args)
    out = Path(args.output)
    _check_output(out, args.checkpoint, args.force)
    args.imgsz = resolve_imgsz(args.checkpoint, args.imgsz, what="prune")  # the size FLOPs and budgets refer to
    latency = args.target_ms is not None
    if latency:
        _check_latency_args(args)
    importance = args.importance or ("taylor" if latency and args.data else "bn")
    if importance == "taylor" and not args.data:
        from yolojax.errors import UserError
        raise UserError("--importance taylor needs --data (the training set's dataset YAML): the importance is "
                        "measured on its images")
    args.importance = "bn" if importance == "taylor" else importance
    policy = make_policy(args)  # the options' errors before anything is loaded
    if latency and importance == "bn":
        print("prune: warning: --target-ms ranks channels by importance per ms saved, and |gamma| is not comparable "
              "across layers (the high-resolution layers cost the most ms and go first, whatever they carry): "
              "pass --data DATA.yaml for Taylor importance", file=sys.stderr)
    det = load(args.checkpoint)
    if importance == "taylor":
        from yolojax.data import load_dataset

        from .sparsity import TaylorScores, taylor_importance
        train = load_dataset(args.data, "train")
        if train.nc != det.spec.nc:
            from yolojax.errors import UserError
            raise UserError(f"--data {args.data} has {train.nc} classes, {args.checkpoint} has nc={det.spec.nc}: "
                            f"pass the data the model was trained on")
        print(f"prune: Taylor importance of every channel on {args.data} (8 training batches)", file=sys.stderr)
        args.importance = TaylorScores(taylor_importance(det.spec, det.variables, train, args.imgsz))
        policy = make_policy(args)
    print(f"prune: {policy_words(policy)}", file=sys.stderr)
    if latency:  # measure (or read from the cache) the table before pruning: its progress on stderr
        from .latency import latency_model
        model = latency_model(det.spec, backend=args.backend, imgsz=args.imgsz, batch=args.batch,
                              threads=args.threads, table=args.latency_table, reps=args.table_reps,
                              variables=det.variables, log=lambda m: print(m, file=sys.stderr))
        object.__setattr__(policy, "model", model)
    refine = None
    if latency and args.measure_runs > 0 and args.refine > 0:
        from .latency import measure_ms, plan_measured
        from .prune import apply_masks
        th = policy.model.table.settings["threads"]
        masks, refine = plan_measured(
            det.spec, det.variables, policy,
            lambda s, v: measure_ms(s, v, args.backend, args.imgsz, args.batch, th, reps=args.measure_runs),
            rounds=args.refine, log=lambda m: print(f"prune: {m}", file=sys.stderr))
        new_spec, new_vars = apply_masks(det.spec, det.variables, masks)
    else:
        new_spec, new_vars = prune(det.spec, det.variables, policy)
    report = prune_report(det.spec, new_spec, args.imgsz)
    if latency:
        report["latency"] = latency_report(det, new_spec, new_vars, policy.model, args)
        if refine is not None:
            report["latency"]["refine"] = refine
    if args.ratio and not (args.target_flops or args.target_params):
        got = 1.0 - report["channels_after"] / max(report["channels_before"], 1)
        if got < args.ratio - 0.01:
            print(f"warning: --ratio {args.ratio:g} not reached: {got:.1%} of the channels removed; every layer "
                  f"keeps at least --min-channels {args.min_channels} (rounded to --round-to {args.round_to})",
                  file=sys.stderr)
    record = {"policy": policy.describe(), "source": str(args.checkpoint),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "imgsz": args.imgsz,
              **{k: report[k] for k in ("params_before", "params_after", "gflops_before", "gflops_after")}}
    if latency:
        record["latency"] = {k: v for k, v in report["latency"].items() if k != "table_settings"}
    meta = {k: v for k, v in dict(det.meta).items() if k not in ("saved_at",)}
    meta["pruning"] = list(meta.get("pruning", [])) + [record]
    save_model(out, new_spec, new_vars, meta, force=args.force)  # atomic: replaces OUT, so reports come after it
    (out / "prune_report.json").write_text(json.dumps(report, indent=1))
    table = format_table(report)
    (out / "prune_report.txt").write_text(table + "\n")
    plot_channels(report, out / "channels.png")
    if args.json:
        print(json.dumps({**{k: v for k, v in report.items()}, "output": str(out), "policy": policy.describe()},
                         default=str))
    else:
        print(table)
        if latency:
            print(format_latency(report["latency"]))
        print(f"\n{policy_words(policy)}: wrote {out} (a normal checkpoint: yolojax.load / val / train / "
              f"export read it), prune_report.txt/.json, channels.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="structured channel pruning (network slimming, group, layer, budget)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="model to prune: checkpoint/run dir, Ultralytics .pt/.npz")
    p.add_argument("-o", "--output", required=True,
                   help="output checkpoint directory (absent, empty, or a checkpoint to replace)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT even if it is not a yolojax checkpoint")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="share of channels to remove (0-1)")
    how.add_argument("--threshold", type=float, help="remove channels whose importance (|gamma| summed over coupled BNs) is below")
    how.add_argument("--target-flops", type=float, help="GFLOPs budget at --imgsz (searched)")
    how.add_argument("--target-params", type=int, help="parameter budget (searched)")
    how.add_argument("--target-ms", type=float,
                     help="latency target in ms on --backend at --imgsz/--batch, by a latency table measured on "
                          "this machine (cached per machine and backend)")
    p.add_argument("--policy", choices=("global", "group", "layer"), default="global",
                   help="global ranking, per (part, scale, kind) class, or the same share per layer")
    p.add_argument("--rule", action="append", metavar="SEL=V", help="group/layer: ratio or threshold per selector")
    p.add_argument("--skip", action="append", metavar="SEL", help="never prune these groups (e.g. head)")
    p.add_argument("--importance", choices=("bn", "l1", "l2", "taylor"), default=None,
                   help="|gamma| (bn), kernel norm (l1/l2), or first-order Taylor (loss change; needs --data). "
                        "Default: taylor with --target-ms and --data, else bn")
    p.add_argument("--data", default=None, help="dataset YAML whose training images measure Taylor importance")
    p.add_argument("--reduce", choices=("sum", "mean", "max"), default="sum", help="over coupled layers")
    p.add_argument("--round-to", type=int, default=8, help="kept channels round up to a multiple of this")
    p.add_argument("--min-channels", type=int, default=8, help="never keep fewer per group")
    p.add_argument("--imgsz", type=int, default=None,
                   help="image size of FLOPs and --target-flops (default: the model's training size, else 640)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    lat = p.add_argument_group("latency target (--target-ms)")
    lat.add_argument("--backend", choices=("onnxruntime", "jax", "tensorrt"), default="onnxruntime",
                     help="deployment backend the latency table is measured on")
    lat.add_argument("--batch", type=int, default=1, help="deployment batch size")
    lat.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the cores)")
    lat.add_argument("--latency-table", default=None,
                     help="latency table JSON (default: ~/.cache/yolojax/latency/<backend>-...-<machine>.json; "
                          "measured where missing)")
    lat.add_argument("--table-reps", type=int, default=15, help="timed repeats per point when measuring the table")
    lat.add_argument("--measure-runs", type=int, default=30,
                     help="interleaved end-to-end runs to measure latency before/after (0: predicted only)")
    lat.add_argument("--refine", type=int, default=2,
                     help="times to re-plan when the measured latency misses the target by more than 5%% (the "
                          "table's error at that width taken out; needs --measure-runs > 0; 0: the table's plan)")
    lat.add_argument("--prune-below", type=float, default=None,
                     help="remove channels whose BN |gamma| is below this first (what a sparse stage zeroed)")
    p.set_defaults(func=cmd_prune)
