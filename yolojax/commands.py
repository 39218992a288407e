"""Model-level commands: `yolojax info`, `yolojax convert`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


ULTRALYTICS_IMGSZ = 640  # a model that records no size of its own (a variant name, an Ultralytics .pt)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_dir(model: str | Path) -> Path | None:
    """The checkpoint directory `yolojax.load` would read for `model` (a checkpoint or a run dir's best/last)."""
    p = Path(str(model))
    if not p.is_dir():
        return None
    for d in (p, p / "best", p / "last"):
        if (d / "spec.json").is_file() and (d / "variables").is_dir():
            return d
    return None


def model_meta(model: str | Path) -> tuple[dict, Path | None]:
    """(what a model records about itself, the file it was read from), without loading its weights: a
    checkpoint's meta.json, or an .onnx file's metadata (imgsz as an int, plus `fixed_imgsz` when the graph's
    input has a fixed height and width). ({}, None) for a variant name or an Ultralytics .pt."""
    p = Path(str(model))
    if p.suffix.lower() == ".onnx" and p.is_file():
        import onnx
        proto = onnx.load(str(p), load_external_data=False)
        meta: dict = {m.key: m.value for m in proto.metadata_props}
        try:
            meta["imgsz"] = int(json.loads(meta["imgsz"])[0])
        except (KeyError, ValueError, TypeError, IndexError):
            meta.pop("imgsz", None)
        dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else ()
        hw = [d.dim_value if d.HasField("dim_value") else 0 for d in list(dims)[2:4]]
        if len(hw) == 2 and all(hw):
            meta["fixed_imgsz"] = (hw[0], hw[1])
            meta["imgsz"] = hw[0]
        return meta, p
    d = model_dir(p)
    if d is not None and (d / "meta.json").is_file():
        try:
            meta = json.loads((d / "meta.json").read_text())
        except ValueError:
            return {}, None
        if isinstance(meta.get("imgsz"), (list, tuple)):
            meta["imgsz"] = int(meta["imgsz"][0])
        return meta, d / "meta.json"
    return {}, None


def resolve_imgsz(model: str | Path, given: int | None, *, what: str = "") -> int:
    """The image size a command runs `model` at, said on stderr: --imgsz when given, else the model's own (its
    training size, or an .onnx graph's input size), else Ultralytics' 640. A graph with a fixed input size
    refuses any other (one line, not an ONNX Runtime shape error)."""
    from .errors import UserError
    meta, where = model_meta(model)
    own, fixed = meta.get("imgsz"), meta.get("fixed_imgsz")
    prefix = f"{what}: " if what else ""
    if given is not None:
        if fixed and (given, given) != tuple(fixed):
            raise UserError(f"{model} takes {fixed[0]}x{fixed[1]} images (its fixed input shape), not --imgsz "
                            f"{given}: leave out --imgsz, or export the model again at {given}")
        _say(f"{prefix}imgsz {given} (--imgsz)")
        return int(given)
    if own:
        _say(f"{prefix}imgsz {own} (the model's own size, from {where}; --imgsz to change)")
        return int(own)
    _say(f"{prefix}imgsz {ULTRALYTICS_IMGSZ} (Ultralytics' default: {model} records no image size)")
    return ULTRALYTICS_IMGSZ


def _resolve_spec(model: str, nc: int | None):
    """A Spec from a model name (yolov8n, n, yolov8s-obb, yolov8n-p2, tiny) or from any loadable model."""
    from .model.spec import is_model_name, yolov8_spec
    if is_model_name(model):
        return yolov8_spec(model.removesuffix(".yaml"), nc if nc is not None else 80)
    from .api import load
    spec = load(model).spec
    if nc is not None and nc != spec.nc:
        from .errors import UserError
        raise UserError(f"{model} has nc={spec.nc}; --nc {nc} only applies to variant names")
    return spec


def cmd_info(args) -> int:
    from .model.counting import summary
    spec = _resolve_spec(args.model, args.nc)
    args.imgsz = resolve_imgsz(args.model, args.imgsz)
    s = summary(spec, args.imgsz)
    if args.json:
        print(json.dumps({"params": s["params"], "gflops": s["gflops"], "macs": s["macs"],
                          "variant": spec.variant, "arch": spec.arch, "task": spec.task, "nc": spec.nc, "imgsz": args.imgsz,
                          "convs": s["convs"]}))
        return 0
    print(f"{'path':<24} {'cin':>5} {'cout':>5} {'k':>2} {'s':>2} {'out':>9} {'params':>10} {'MMACs':>9}")
    for r in s["layers"]:
        params = r["cin"] * r["cout"] * r["k"] ** 2 + (2 if r["bn"] else 1) * r["cout"]
        print(f"{r['path']:<24} {r['cin']:>5} {r['cout']:>5} {r['k']:>2} {r['stride']:>2} "
              f"{r['h']:>4}x{r['w']:<4} {params:>10,} {r['cin'] * r['cout'] * r['k'] ** 2 * r['h'] * r['w'] / 1e6:>9.2f}")
    print(f"\n{spec.name.replace('yolov8', 'YOLOv8')} nc={spec.nc}: {s['convs']} convs, "
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
    print(f"wrote {args.outdir}{' (replacing the checkpoint there)' if replaced else ''}: {det.spec.name} "
          f"nc={det.spec.nc} task={det.spec.task}, {det.num_params():,} parameters")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="layers, parameters, GFLOPs and MACs of a model")
    p.add_argument("model", help="model name (yolov8n ... yolov8x, yolov8n-p2, yolov8n-obb) or a checkpoint/.pt/.npz")
    p.add_argument("--nc", type=int, default=None, help="number of classes (variant names only; default 80)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="image size for FLOPs and MACs (default: the model's own size, else 640)")
    p.add_argument("--json", action="store_true", help="print one JSON object (params, gflops, macs)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="Ultralytics .pt / state_dict .npz -> yolojax checkpoint",
                       description="Import Ultralytics YOLOv8 weights (variant, classes and widths read from the "
                                   "tensors; torch is not needed). Official weights: yolov8n.pt ... yolov8x.pt, "
                                   "yolov8n-obb.pt ... from https://github.com/ultralytics/assets/releases.")
    p.add_argument("weights", type=Path, help="Ultralytics .pt checkpoint or state_dict .npz")
    p.add_argument("outdir", type=Path, help="new checkpoint folder (absent, empty, or a checkpoint to replace)")
    p.add_argument("--force", action="store_true", help="replace OUTDIR even if it is not a yolojax checkpoint")
    p.set_defaults(func=cmd_convert)
