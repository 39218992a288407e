"""Model-level commands: `yolojax info`, `yolojax convert`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _resolve_spec(model: str, nc: int | None):
    """A Spec from a variant name (yolov8n, n, yolov8s-obb, tiny) or from any loadable model."""
    from .model.spec import SCALES, yolov8_spec
    name = model.removeprefix("yolov8").removesuffix(".yaml")
    base = name.removesuffix("-obb")
    if base in SCALES and not Path(model).exists():
        return yolov8_spec(name, nc if nc is not None else 80)
    from .api import load
    spec = load(model).spec
    if nc is not None and nc != spec.nc:
        from .errors import UserError
        raise UserError(f"{model} has nc={spec.nc}; --nc {nc} only applies to variant names")
    return spec


def cmd_info(args) -> int:
    from .model.counting import summary
    spec = _resolve_spec(args.model, args.nc)
    s = summary(spec, args.imgsz)
    if args.json:
        print(json.dumps({"params": s["params"], "gflops": s["gflops"], "macs": s["macs"],
                          "variant": spec.variant, "task": spec.task, "nc": spec.nc, "imgsz": args.imgsz,
                          "convs": s["convs"]}))
        return 0
    print(f"{'path':<24} {'cin':>5} {'cout':>5} {'k':>2} {'s':>2} {'out':>9} {'params':>10} {'MMACs':>9}")
    for r in s["layers"]:
        params = r["cin"] * r["cout"] * r["k"] ** 2 + (2 if r["bn"] else 1) * r["cout"]
        print(f"{r['path']:<24} {r['cin']:>5} {r['cout']:>5} {r['k']:>2} {r['stride']:>2} "
              f"{r['h']:>4}x{r['w']:<4} {params:>10,} {r['cin'] * r['cout'] * r['k'] ** 2 * r['h'] * r['w'] / 1e6:>9.2f}")
    print(f"\nYOLOv8{spec.variant}{'-obb' if spec.task == 'obb' else ''} nc={spec.nc}: {s['convs']} convs, "
          f"{s['params']:,} parameters, {s['gflops']:.3f} GFLOPs, {s['macs'] / 1e9:.3f} GMACs at {args.imgsz}px")
    return 0


def cmd_convert(args) -> int:
    from .api import from_ultralytics
    from .checkpoint import check_replaceable, is_model_dir, save_model
    if not args.force:
        check_replaceable(args.outdir)  # before the import: say it now, not after the work
    replaced = is_model_dir(args.outdir)
    det = from_ultralytics(args.weights)
    save_model(args.outdir, det.spec, det.variables, {**det.meta, "source": str(args.weights)}, force=args.force)
    print(f"wrote {args.outdir}{' (replacing the checkpoint there)' if replaced else ''}: yolov8{det.spec.variant} "
          f"nc={det.spec.nc} task={det.spec.task}, {det.num_params():,} parameters")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="layers, parameters, GFLOPs and MACs of a model")
    p.add_argument("model", help="variant name (yolov8n ... yolov8x, yolov8n-obb) or a checkpoint/.pt/.npz")
    p.add_argument("--nc", type=int, default=None, help="number of classes (variant names only; default 80)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--json", action="store_true", help="print one JSON object (params, gflops, macs)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="Ultralytics .pt / state_dict .npz -> yolojax checkpoint")
    p.add_argument("weights", type=Path)
    p.add_argument("outdir", type=Path, help="new checkpoint folder (absent, empty, or a checkpoint to replace)")
    p.add_argument("--force", action="store_true", help="replace OUTDIR even if it is not a yolojax checkpoint")
    p.set_defaults(func=cmd_convert)
