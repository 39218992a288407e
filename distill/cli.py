"""`yolojax distill`: fine-tune a student (pruned, or pruned here from the teacher) with knowledge distillation."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  yolojax distill --teacher runs/train/best --student runs/pruned --data data.yaml -o runs/kd --method cwd
  yolojax distill --teacher runs/train/best --prune-ratio 0.5 --data data.yaml -o runs/kd --method cwd+logit
  yolojax distill --teacher runs/train/best --student runs/pruned -o runs/ft --method none   # plain fine-tune
  yolojax distill --teacher runs/train/best -o runs/kd --resume                               # continue a run
methods: none | cwd (channel-wise, neck P3-P5) | sad (spatial attention) | logit (class scores + DFL
  [+ angle], anchors weighted by teacher confidence) | cwd+logit | any '+'-joined combination."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 2,1,1") from None
    if not 1 <= len(vals) <= 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 1-4 weights, finest level first (P3,P4,P5; "
                                         "P2,P3,P4,P5 for a P2 model)")
    return vals


def _method(text: str) -> str:
    from .train import parse_method
    try:
        parse_method(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


OVERRIDES = {  # CLI dest -> DistillConfig field
    "tau": "tau", "weights": "scale_weights", "loss_weight": "loss_weight", "cwd_weight": "cwd_weight",
    "sad_weight": "sad_weight", "cls_weight": "cls_weight", "dfl_weight": "dfl_weight",
    "angle_weight": "angle_weight", "logit_tau": "logit_tau", "cls_mode": "cls_mode",
    "anchor_weighting": "anchor_weighting", "score_threshold": "score_threshold", "adapters": "adapters",
    "adapter_init": "adapter_init"}


def cmd_distill(args) -> int:
    from yolojax import load
    from yolojax.train.cli import _datasets, check_args, config_from_args
    from yolojax.train.checkpoints import resume_info, resume_model
    from yolojax.train.config import TrainConfig
    check_args(args)  # --batch 0, --imgsz 100, ...: one line, not a ZeroDivisionError

    from .train import DistillConfig, distill_finetune, prune_student

    rundir = Path(args.output)
    if args.resume:
        info_file = rundir / "distill.json"
        saved = resume_info(rundir)
        if not info_file.exists() or saved is None:
            raise SystemExit(f"{rundir}: nothing to resume (needs distill.json and a committed checkpoint in "
                             f"{rundir / 'checkpoints'})")
        info = json.loads(info_file.read_text())
        cfg = TrainConfig(**saved["config"])
        dcfg = DistillConfig(**{**info["config"], "scale_weights": tuple(info["config"]["scale_weights"])})
        data = args.data or info.get("data")
    else:
        dcfg = DistillConfig(**{f: getattr(args, d) for d, f in OVERRIDES.items() if getattr(args, d) is not None})
        cfg = config_from_args(args)
        data = args.data
        student_src = args.student
    if args.student is None and args.prune_ratio is None and not args.resume:
        raise SystemExit("give --student CHECKPOINT or --prune-ratio R (prune the teacher, then fine-tune)")
    if args.student is not None and args.prune_ratio is not None:
        raise SystemExit("--student and --prune-ratio exclude each other")
    train, val = _datasets(data, args.format)
    teacher = load(args.teacher)
    if args.resume:
        student = resume_model(rundir, saved)
    elif args.student is not None:
        student = load(student_src)
    else:
        student = prune_student(teacher, args.prune_ratio, args.prune_policy)
    method = None if args.resume else args.method
    from yolojax.model.counting import count_flops, count_params
    print(f"teacher {args.teacher}: {count_params(teacher.spec):,} params, {count_flops(teacher.spec, cfg.imgsz):.3f} "
          f"GFLOPs@{cfg.imgsz}; student: {count_params(student.spec):,} params, "
          f"{count_flops(student.spec, cfg.imgsz):.3f} GFLOPs; method {method or dcfg.method}; "
          f"{len(train)} train / {len(val)} val images", file=sys.stderr)
    qat = info.get("qat") if args.resume else ({"float_convs": [c for c in args.qat_float.split(",") if c],
                                                 "reduce_range": args.qat_reduce_range} if args.qat else None)
    if qat and "qat" in student.meta and not args.resume:
        print(f"note: {student_src} is a QAT model already; its ranges are calibrated again", file=sys.stderr)
    logs = distill_finetune(teacher, student, train, val, cfg, method, rundir=rundir, dcfg=dcfg,
                            progress=args.progress, resume=args.resume, qat=bool(qat),
                            qat_float_convs=tuple(qat["float_convs"]) if qat else (),
                            qat_reduce_range=bool(qat and qat["reduce_range"]),
                            meta={"data": str(data or "builtin-synthetic"), "teacher_path": str(args.teacher)})
    if not args.resume:
        info = json.loads((rundir / "distill.json").read_text())
        info["data"] = str(data) if data else None
        (rundir / "distill.json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps({k: v for k, v in logs.items() if k.startswith("val/") or k.startswith("distill")},
                     default=float))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from yolojax.train.cli import add_train_args
    p = sub.add_parser("distill", help="fine-tune a (pruned) student with distillation from a teacher",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher model: checkpoint/run dir, .pt/.npz")
    p.add_argument("--student", default=None, help="student checkpoint (else --prune-ratio prunes the teacher)")
    p.add_argument("--prune-ratio", dest="prune_ratio", type=float, default=None,
                   help="prune the teacher by this share of channels first (0-1), then fine-tune with KD")
    p.add_argument("--prune-policy", dest="prune_policy", choices=("layer", "global", "group"), default="layer",
                   help="pruning policy for --prune-ratio (default layer: the same share per layer)")
    p.add_argument("--method", type=_method, default="cwd", help="none|cwd|sad|logit|cwd+logit|... (default cwd)")
    p.add_argument("-o", "--output", default="runs/distill", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --output (needs --teacher)")
    q = p.add_argument_group("quantization-aware training (the student fine-tuned for `export --int8`)")
    q.add_argument("--qat", action="store_true",
                   help="simulate the INT8 export's rounding while fine-tuning (BN frozen and folded, int8 per-channel "
                        "weights, uint8 activations); start from a trained --student; `export --int8` then uses the "
                        "learned ranges")
    q.add_argument("--qat-float", dest="qat_float", default="", metavar="PATHS",
                   help="body convs the INT8 graph keeps float, comma-separated (e.g. model_0, what "
                        "`export --int8-keep-float auto` picks)")
    q.add_argument("--qat-reduce-range", dest="qat_reduce_range", action="store_true",
                   help="7-bit weights: for x86 CPUs without VNNI (their uint8 x int8 kernels saturate 8-bit weights)")
    g = p.add_argument_group("distillation")
    g.add_argument("--tau", type=float, default=None, help="CWD temperature (default 1)")
    g.add_argument("--weights", type=_floats, default=None, help="per-level weights, finest first: P3,P4,P5 (P2,... for a P2 model; a "
                   "short list repeats its last value) (default 2,1,1)")
    g.add_argument("--loss-weight", dest="loss_weight", type=float, default=None,
                   help="multiplies the whole distillation loss (default 1)")
    g.add_argument("--cwd-weight", dest="cwd_weight", type=float, default=None, help="CWD weight (default 5)")
    g.add_argument("--sad-weight", dest="sad_weight", type=float, default=None, help="attention weight (default 500)")
    g.add_argument("--cls-weight", dest="cls_weight", type=float, default=None, help="class-score KD (default 1)")
    g.add_argument("--dfl-weight", dest="dfl_weight", type=float, default=None, help="DFL KD (default 1)")
    g.add_argument("--angle-weight", dest="angle_weight", type=float, default=None, help="obb angle KD (default 1)")
    g.add_argument("--logit-tau", dest="logit_tau", type=float, default=None, help="logit KD temperature (default 1)")
    g.add_argument("--cls-mode", dest="cls_mode", choices=("bce", "kl"), default=None,
                   help="logit KD on class scores: per-class BCE to the teacher's sigmoid (default) or KL")
    g.add_argument("--anchor-weighting", dest="anchor_weighting", choices=("score", "threshold"), default=None,
                   help="logit KD anchors: weighted by teacher max score (default) or above --score-threshold")
    g.add_argument("--score-threshold", dest="score_threshold", type=float, default=None,
                   help="--anchor-weighting threshold: teacher score an anchor needs (default 0.25)")
    g.add_argument("--adapters", dest="adapters", action="store_true", default=None,
                   help="1x1 adapters on every scale (default: only where widths differ)")
    g.add_argument("--no-adapters", dest="adapters", action="store_false",
                   help="no adapters (widths must then match)")
    g.add_argument("--adapter-init", dest="adapter_init", choices=("lstsq", "random"), default=None,
                   help="adapters start as a least-squares fit on a training batch (default lstsq) or random")
    add_train_args(p)
    p.set_defaults(func=cmd_distill)
