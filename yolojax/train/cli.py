"""`yolojax train`, `yolojax val`, `yolojax predict`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

DEFAULT_SYNTH = Path("runs/synth")


def default_data(images: int = 400, imgsz: int = 256, seed: int = 0, obb: bool = False, zoom: float = 1.0) -> Path:
    """The built-in synthetic aerial dataset (generated once, deterministic; `obb`: oriented labels; `zoom`:
    objects that many times larger)."""
    from ..data.synth import make_synthetic
    z = f"-z{zoom:g}" if zoom != 1.0 else ""
    out = DEFAULT_SYNTH / f"aerial-{images}-{imgsz}-{seed}{z}{'-obb' if obb else ''}"
    if not (out / "data.yaml").exists():
        print(f"generating the built-in synthetic aerial dataset in {out} ...", file=sys.stderr)
        make_synthetic(out, images=images, imgsz=imgsz, seed=seed, obb=obb, zoom=zoom)
    return out / "data.yaml"


def _datasets(data: str | None, fmt: str | None, obb: bool = False):
    """(train, val). Only a dataset that defines no val split validates on its training images; a declared
    val split that is missing or empty is an error (as in Ultralytics), not a silent fallback."""
    from ..data import load_dataset
    from ..data.readers import SplitNotFoundError
    path = data or default_data()
    train = load_dataset(path, "train", fmt)
    try:
        val = load_dataset(path, "val", fmt)
    except SplitNotFoundError as e:
        print(f"no validation split ({e}); validating on the training images", file=sys.stderr)
        val = train
    for ds in (train, val):
        if ds.problems:
            print(f"{ds.root} [{ds.split}]: {len(ds.problems)} problems (skipped/clipped, see `yolojax data check`)",
                  file=sys.stderr)
    return train, val


def config_from_args(args, **overrides):
    from .config import TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    kw.update(overrides)
    return TrainConfig(**kw)


def add_train_args(p: argparse.ArgumentParser, *, epochs: int = 100) -> None:
    """The training options of `train` and `distill`. None means TrainConfig's default, named in each help."""
    from .config import TrainConfig
    d = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p.add_argument("--data", default=None,
                   help="dataset (data .yaml, dataset folder or COCO .json, any supported format); default: the "
                        "built-in synthetic aerial set, generated once under runs/synth/")
    p.add_argument("--format", default=None, help="annotation format (default: detected)")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    p.add_argument("--imgsz", type=int, default=None, help=f"square training size (default {d['imgsz']})")
    p.add_argument("--batch", type=int, default=None, help=f"global batch size (default {d['batch']})")
    p.add_argument("--workers", type=int, default=None, help=f"data loading processes (default {d['workers']})")
    p.add_argument("--optimizer", choices=["sgd", "adamw", "auto"], default=None,
                   help="default auto: Ultralytics' rule (AdamW for short runs, else SGD), which also picks lr0")
    p.add_argument("--lr0", type=float, default=None, help=f"initial learning rate (default {d['lr0']}, or auto's choice)")
    p.add_argument("--nbs", type=int, default=None, help=f"nominal batch size for accumulation (default {d['nbs']})")
    p.add_argument("--warmup-epochs", dest="warmup_epochs", type=float, default=None,
                   help=f"warmup epochs (default {d['warmup_epochs']:g})")
    p.add_argument("--close-mosaic", dest="close_mosaic", type=int, default=None,
                   help=f"turn mosaic off for the last N epochs (default {d['close_mosaic']})")
    p.add_argument("--no-mosaic", dest="mosaic", action="store_false", default=None, help="never use mosaic")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help=f"compute dtype (default {d['dtype']}; bfloat16 on GPU/TPU)")
    p.add_argument("--seed", type=int, default=None, help=f"random seed (default {d['seed']})")
    p.add_argument("--val-every", dest="val_every", type=int, default=None, help=f"validate every N epochs (default {d['val_every']})")
    p.add_argument("--save-every-steps", dest="save_every_steps", type=int, default=None,
                   help=f"also checkpoint the training state every N steps, asynchronously (default "
                        f"{d['save_every_steps']}: at epoch ends only)")
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int, default=None,
                   help=f"training-state checkpoints kept in RUN/checkpoints, newest first (default "
                        f"{d['keep_checkpoints']})")
    p.add_argument("--sparsity", type=float, default=None,
                   help=f"L1 rate on BN gammas (network slimming), e.g. 1e-4 (default {d['sparsity']:g}: off)")
    p.add_argument("--sparsity-mode", dest="sparsity_mode", choices=["prox", "grad"], default=None,
                   help="prox (default): proximal L1 step after the optimizer, shrink = lr * rate under any "
                        "optimizer; grad: rate * sign(gamma) added to the gradient (only L1 under SGD)")
    p.add_argument("--sparsity-schedule", dest="sparsity_schedule", choices=["constant", "decay", "dynamic"],
                   default=None, help=f"how the rate changes over the run (default {d['sparsity_schedule']})")
    p.add_argument("--sparsity-target", dest="sparsity_target", type=float, default=None,
                   help=f"dynamic schedule: share of BN gammas to drive to ~0 (default {d['sparsity_target']})")
    p.add_argument("--sparsity-beta", dest="sparsity_beta", type=float, default=None,
                   help=f"L1 rate on BN betas (default {d['sparsity_beta']:g})")
    p.add_argument("--coordinator", default=None, help="jax.distributed coordinator host:port (multi-host)")
    p.add_argument("--num-processes", dest="num_processes", type=int, default=None, help="multi-host: hosts")
    p.add_argument("--process-id", dest="process_id", type=int, default=None, help="multi-host: this host's index")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def sparsity_pieces(cfg, updates_total: int, initial_params=None, weights=None):
    """(optax transform, epoch hook) for BN-L1 sparsity training, from the pruning stage (imported only here,
    at the edge, so the trainer itself does not depend on a later stage). For the proximal form the
    transform is a callable lr_schedule -> transformation (the trainer chains it after the optimizer)."""
    if not cfg.sparsity:
        return None, None
    from pruning import sparsity as sp
    return sp.sparsity_transform(cfg, updates_total, weights), sp.SparsityMonitor(initial_params)


def check_args(args) -> None:
    """Refuse impossible values before any work (one line each, not a ZeroDivisionError or OpenCV assertion)."""
    from ..errors import UserError
    rules = {"epochs": (1, None), "batch": (1, None), "imgsz": (32, 32), "nbs": (1, None), "workers": (0, None),
             "val_every": (1, None), "save_every_steps": (0, None), "keep_checkpoints": (1, None),
             "close_mosaic": (0, None),
             "max_det": (1, None)}
    for name, (low, multiple) in rules.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        flag = "--" + name.replace("_", "-")
        if v < low:
            raise UserError(f"{flag} must be at least {low}, got {v}")
        if multiple and v % multiple:
            raise UserError(f"{flag} must be a multiple of {multiple} (the model's largest stride), got {v}")
    ranges = {"lr0": (0, math.inf, False), "warmup_epochs": (0, math.inf, True), "conf": (0, 1, True),
              "iou": (0, 1, False)}
    for name, (low, high, low_ok) in ranges.items():
        v = getattr(args, name, None)
        if v is not None and not (math.isfinite(v) and (low < v or (low_ok and v == low)) and v <= high):
            bounds = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
            raise UserError(f"--{name.replace('_', '-')} must be in {bounds}, got {v}")


def _check_rundir(rundir: Path, exist_ok: bool) -> None:
    """A new run must not mix with, or overwrite, a previous run's checkpoints and logs."""
    from ..checkpoint import is_model_dir
    from ..errors import OutputExistsError
    old = [n for n in ("last", "best", "checkpoints", "args.json", "steps.csv") if (rundir / n).exists()]
    if not old:
        return
    if not exist_ok:
        raise OutputExistsError(f"{rundir} holds a previous run ({', '.join(old)}): continue it with --resume, "
                                f"choose another -o, or --exist-ok to start over in it")
    for n in ("last", "best"):
        d = rundir / n
        if d.exists() and not is_model_dir(d):
            raise OutputExistsError(f"{d} exists and is not a yolojax checkpoint: refusing to replace it")
    import shutil
    for n in ("last", "best", "checkpoints"):
        if (rundir / n).exists():
            shutil.rmtree(rundir / n)
    (rundir / "steps.csv").unlink(missing_ok=True)


def _recorded_data(rundir: Path, info: dict | None = None) -> str | None:
    """The dataset a run trained on: args.json gets it only when a run finishes, so an interrupted run's comes
    from its checkpoint's metadata or last/meta.json (None: the built-in synthetic set)."""
    args_file, meta_file = rundir / "args.json", rundir / "last" / "meta.json"
    data = json.loads(args_file.read_text()).get("data") if args_file.exists() else None
    if data is None and info is not None:
        data = info.get("meta", {}).get("data")
    if data is None and meta_file.exists():
        data = json.loads(meta_file.read_text()).get("data")
    return None if data in (None, "builtin-synthetic") else data


def _recorded_training_data(model) -> tuple[str | None, str | None]:
    """(the dataset `model` was trained on, the file that says so), from what training recorded: the checkpoint's
    meta.json or an .onnx file's metadata (`data`), else the run files at most three folders above it (a train
    run's args.json, a distill run's distill.json, a compress run's compress_config.json). (None, None) when
    nothing is recorded (a variant name, an Ultralytics .pt, a bare checkpoint)."""
    from ..commands import model_meta
    meta, where = model_meta(model)
    if meta.get("data"):
        data = meta["data"]
        return (str(default_data()) if data == "builtin-synthetic" else str(data)), str(where)
    p = Path(str(model))
    if not p.exists():
        return None, None
    start = p.resolve() if p.is_dir() else p.resolve().parent
    for d in [start, *start.parents][:4]:
        for name in ("args.json", "distill.json"):  # written by `yolojax train` / `yolojax distill`
            f = d / name
            if f.is_file():
                rec = json.loads(f.read_text())
                if "data" in rec:  # None: the built-in synthetic set
                    return (str(rec["data"]) if rec["data"] else str(default_data())), str(f)
        f = d / "compress_config.json"
        if f.is_file():
            from ..pipeline import CompressConfig
            cc = {**dataclasses.asdict(CompressConfig()), **json.loads(f.read_text())}
            if cc.get("data"):
                return str(cc["data"]), str(f)
            return str(default_data(cc["synth_images"], cc["imgsz"], cc["seed"], obb=cc["task"] == "obb",
                                    zoom=cc["synth_zoom"])), str(f)
    return None, None


def _model_imgsz(model, imgsz: int | None, what: str) -> int:
    """--imgsz, else the model's own size (else 640), said on stderr (yolojax.commands.resolve_imgsz)."""
    from ..commands import resolve_imgsz
    return resolve_imgsz(model, imgsz, what=what)


def _resolve_val_data(args) -> None:
    """`yolojax val` defaults: without --data the model's own training data when it is recorded (else a one-line
    refusal, not another dataset), without --imgsz the model's own size. Says on stderr what it used."""
    from ..errors import UserError
    if args.data:
        print(f"val: data {args.data} [{args.split}] (--data)", file=sys.stderr)
    else:
        data, where = _recorded_training_data(args.model)
        if data is None:
            raise UserError(f"{args.model} records no training data: give --data DATASET (a data .yaml, a dataset "
                            f"folder or a COCO .json) to validate on")
        if not Path(data).exists():
            raise UserError(f"{args.model} was trained on {data} (recorded in {where}), which is not here: give "
                            f"--data DATASET")
        args.data = data
        print(f"val: data {data} [{args.split}] (the model's training data, recorded in {where}; --data to "
              f"change)", file=sys.stderr)
    args.imgsz = _model_imgsz(args.model, args.imgsz, "val")


def cmd_train(args) -> int:
    check_args(args)
    from .distributed import maybe_initialize
    maybe_initialize(args.coordinator, args.num_processes, args.process_id)
    from ..errors import UserError
    from .trainer import Trainer, resolve_model
    rundir = Path(args.output)
    saved = None
    if args.resume:
        from .checkpoints import resume_info
        saved = resume_info(rundir)
        if saved is None:
            raise UserError(f"{rundir}: nothing to resume (no committed checkpoint in {rundir / 'checkpoints'}); "
                            f"was a run started there?")
        from .config import TrainConfig
        cfg = TrainConfig(**saved["config"])
        args.data = args.data or _recorded_data(rundir, saved)
    else:
        from .distributed import is_primary
        if is_primary():  # the other hosts would see the primary's fresh files as a previous run
            _check_rundir(rundir, args.exist_ok)
    train, val = _datasets(args.data, args.format)
    if not args.resume:
        cfg = config_from_args(args)
        if args.lr0 is not None and cfg.optimizer == "auto":
            # Ultralytics' auto rule picks lr0 too and would drop the one given: honour it, and say what auto chose
            name, auto_lr0, momentum = cfg.resolve_optimizer(max(len(train) // cfg.batch, 1), train.nc)
            print(f"--optimizer auto chose {name} (lr0={auto_lr0}, momentum={momentum}); using {name} with the "
                  f"given --lr0 {cfg.lr0}", file=sys.stderr)
            cfg = dataclasses.replace(cfg, optimizer=name, momentum=momentum)
    model = args.model
    if saved is not None:  # the checkpoint's spec (older runs: last/'s); its weights come with the state
        from .checkpoints import resume_model
        model = resume_model(rundir, saved)
    spec, variables, note = resolve_model(model, train.nc, train.names, cfg.seed)
    updates_total = cfg.epochs * (len(train) // cfg.batch) // cfg.accumulate()
    extra_tx, hook = sparsity_pieces(cfg, max(updates_total, 1), variables["params"])
    trainer = Trainer(cfg, rundir, train, val, spec, variables, extra_tx=extra_tx,
                      epoch_hooks=(hook,) if hook else (), progress=args.progress, note=note,
                      meta={"data": str(args.data or "builtin-synthetic")})
    if args.resume:
        trainer.restore()
    print(f"{note}; {trainer.opt_info['optimizer']} lr0={trainer.opt_info['lr0']} accumulate="
          f"{trainer.opt_info['accumulate']}; {len(train)} train / {len(val)} val images; devices: "
          f"{len(trainer.mesh.devices.ravel())}", file=sys.stderr)
    try:
        logs = trainer.fit()
    except KeyboardInterrupt:
        trainer.close()
        from .checkpoints import resume_info
        resumable = resume_info(rundir) is not None
        print(f"stopped; resume with --resume (yolojax train --resume -o {rundir})" if resumable else
              "stopped before the first checkpoint: nothing to resume", file=sys.stderr)
        return 130
    from .distributed import is_primary
    if is_primary():  # only the primary writes args.json; the others would read it half-written
        args_file, tmp = rundir / "args.json", rundir / ".args.json.tmp"
        tmp.write_text(json.dumps({**json.loads(args_file.read_text()),
                                   "data": str(args.data) if args.data else None}, indent=1))
        tmp.replace(args_file)
    print(json.dumps({k: v for k, v in logs.items() if k.startswith("val/")}))
    return 0


def cmd_val(args) -> int:
    check_args(args)
    _resolve_val_data(args)
    from ..api import load
    from ..data import load_dataset
    from ..errors import UserError
    from ..eval.metrics import format_results, plot_pr_curve
    from .validate import run_validation, val_loader
    predict = None
    if str(args.model).endswith(".onnx"):  # an exported (e.g. INT8) graph, run in ONNX Runtime
        from ..report import onnx_detector
        det, predict = onnx_detector(args.model, conf=args.conf, iou=args.iou)
    else:
        det = load(args.model)
    data = args.data or default_data()
    ds = load_dataset(data, args.split, args.format)
    if not any((~r.ignore).any() for r in ds):
        # every AP would be 0 (or undefined): a score with no ground truth is not a result
        raise UserError(f"{ds.root} [{ds.split}]: no labelled objects in its {len(ds)} images: nothing to score")
    obb = det.spec.task == "obb"
    if args.save_dota and not obb:
        raise UserError("--save-dota writes oriented boxes: it needs an OBB model")
    imgsz = args.imgsz or int(det.meta.get("imgsz", 640))
    rect = args.rect
    if predict is not None and rect:  # an .onnx: rect batches need a graph with symbolic height and width
        from .validate import onnx_fixed_size
        if onnx_fixed_size(args.model):
            if args.rect_given:
                print(f"{args.model} has a fixed input size: validating in {imgsz}x{imgsz} squares, not rect "
                      "batches (export with --dynamic for rect)", file=sys.stderr)
            rect = False
    loader = val_loader(ds, args.batch, imgsz, args.workers, rect=rect)
    metrics, dets = run_validation(det.spec, det.variables, loader, conf=args.conf, iou=args.iou, predict=predict,
                                   collect=bool(args.save_json or args.save_dota), progress=not args.json)
    loader.close()
    if args.save_json and obb:
        from ..eval.obb import save_json
        save_json(dets, args.save_json, det.names)
    elif args.save_json:
        from ..eval.coco import save_json, to_coco_detections
        ids, boxes, scores, classes = zip(*dets) if dets else ((), (), (), ())
        save_json(to_coco_detections(ids, boxes, scores, classes), args.save_json)
    if args.save_dota:
        from ..eval.obb import save_dota
        save_dota(dets, args.save_dota, det.names)
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        plot_pr_curve(metrics, Path(args.plots) / "PR_curve.png")
    if args.json:
        keys = ("map50", "map50_95", "map75", "precision", "recall", "map_small", "map_medium", "map_large",
                "fitness", "per_class", "images", "instances")
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}, default=float))
    else:
        print(format_results(metrics))
    return 0


def cmd_predict(args) -> int:
    check_args(args)
    args.imgsz = _model_imgsz(args.model, args.imgsz, "predict")
    import cv2
    import numpy as np
    from ..api import load
    from ..data.imageio import IMG_SUFFIXES, is_image
    from ..data.tiling import predict_tiled
    from ..eval.rotated import rbox_corners
    from ..api import predictor
    from ..viz import draw_detections
    from ..errors import OutputExistsError, UserError
    src = Path(args.source)
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    if src.is_file() and not is_image(str(src)):
        raise UserError(f"{src}: not an image file (expected {', '.join(sorted(IMG_SUFFIXES))})")
    files = sorted(p for p in src.rglob("*") if is_image(str(p))) if src.is_dir() else [src]
    if not files:
        raise UserError(f"{src}: no images found")
    out = Path(args.save_dir)
    clobbered = {(out / f"{f.stem}.jpg").resolve() for f in files} & {f.resolve() for f in files}
    if clobbered:
        raise OutputExistsError(f"--save-dir {out} would overwrite the input image {sorted(clobbered)[0]}: choose "
                                f"another --save-dir")
    det = load(args.model)
    obb = det.spec.task == "obb"
    if args.tile and not obb:
        raise UserError("--tile merges oriented boxes across tiles: it needs an OBB model")
    out.mkdir(parents=True, exist_ok=True)
    imgsz = args.imgsz or int(det.meta.get("imgsz", 640))
    # As Ultralytics predict: the best class of each box (no multi-label), one image at a time letterboxed with
    # minimal padding to a multiple of 32 (each new input shape compiles once).
    predict = predictor(det.spec, args.conf, args.iou, args.max_det, False)
    results = []
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            print(f"{f}: unreadable image, skipped", file=sys.stderr)
            continue
        if args.tile:
            boxes, scores, classes = predict_tiled(predict, det.variables, img, imgsz=imgsz, tile=args.tile,
                                                   overlap=args.tile_overlap, max_det=args.max_det)
        else:
            (r,) = det.predict(img, imgsz=imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det)
            boxes, scores, classes = r["rboxes" if obb else "boxes"], r["scores"], r["classes"]
        if obb:
            polys = rbox_corners(np.asarray(boxes, np.float64))
            drawn = draw_detections(img, None, scores, classes, det.names, polygons=polys)
            rows = [{"rbox": [round(float(v), 4 if i == 4 else 2) for i, v in enumerate(b)],
                     "poly": [round(float(v), 2) for v in p.reshape(-1)]} for b, p in zip(boxes, polys)]
        else:
            drawn = draw_detections(img, boxes, scores, classes, det.names)
            rows = [{"box": [round(float(v), 2) for v in b]} for b in boxes]
        cv2.imwrite(str(out / f"{f.stem}.jpg"), drawn)
        results.append({"image": str(f), "detections": [
            {**row, "score": round(float(s), 4), "class": int(c), "name": det.names[int(c)]}
            for row, s, c in zip(rows, scores, classes)]})
        print(f"{f.name}: {len(boxes)} detections", file=sys.stderr)
    if not results:
        raise UserError(f"{src}: none of its {len(files)} images could be read" if src.is_dir() else
                        f"{src}: unreadable image")
    (out / "predictions.json").write_text(json.dumps(results, indent=1))
    print(f"saved {len(results)} images to {out}")
    return 0


class _RectAction(argparse.Action):
    """--rect / --no-rect, remembering that the user chose (args.rect_given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.rect = option_string == "--rect"
        namespace.rect_given = True


def register(sub) -> None:
    p = sub.add_parser("train", help="train a YOLOv8 (Ultralytics defaults; data-parallel over all devices)")
    p.add_argument("--model", default="yolov8n", help="model name (yolov8n..x, yolov8n-p2..x-p2, tiny) or checkpoint/.pt to "
                   "start from")
    p.add_argument("-o", "--output", default="runs/train", help="run directory (last/, best/, results, tb/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    p.add_argument("--exist-ok", dest="exist_ok", action="store_true",
                   help="start a new run in an --output that holds one (its last/ and best/ are deleted)")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("val", help="mAP of a model on a dataset (COCO-style numbers, pycocotools-compatible JSON)",
                       description="Validate a model: mAP50, mAP50-95, precision, recall, COCO APs/APm/APl "
                                   "(Ultralytics' matching and 101-point AP; conf 0.001, NMS IoU 0.7). Without "
                                   "--data, the model's own training data when its checkpoint or run records it.")
    p.add_argument("model", help="checkpoint dir, run dir (its best/, else last/), Ultralytics .pt/.npz, or an "
                                 "exported .onnx (run in ONNX Runtime)")
    p.add_argument("--data", default=None,
                   help="dataset: data .yaml, dataset folder or COCO .json (default: the model's training data, "
                        "when recorded)")
    p.add_argument("--format", default=None, help="annotation format (default: detected)")
    p.add_argument("--split", default="val", help="split of --data to score")
    p.add_argument("--imgsz", type=int, default=None,
                   help="image size (default: the model's own: its training size, or an .onnx input size)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (rect batches depend on it: Ultralytics' val uses 16)")
    p.add_argument("--workers", type=int, default=4, help="data loading processes")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold before NMS (keep it low for mAP)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--rect", action=_RectAction, nargs=0, default=True,
                   help="rectangular batches, as Ultralytics' val (default): images in order of aspect ratio, "
                        "each batch letterboxed to its own shape (a multiple of 32, half a stride of margin)")
    p.add_argument("--no-rect", dest="rect", action=_RectAction, nargs=0,
                   help="letterbox every image to the imgsz square instead")
    p.add_argument("--json", action="store_true", help="print one JSON object (map50, map50_95, ...)")
    p.add_argument("--save-json", dest="save_json", default=None,
                   help="write detections to this file (COCO format: bbox [x, y, w, h] in original-image pixels; "
                        "OBB models: rbox + poly rows)")
    p.add_argument("--save-dota", dest="save_dota", default=None, help="OBB: DOTA task-1 result files in this dir")
    p.add_argument("--plots", default=None, help="directory for the PR curve (PR_curve.png)")
    p.set_defaults(func=cmd_val, rect_given=False)

    p = sub.add_parser("predict", help="detect objects in images and draw them",
                       description="Detect objects in an image or a folder of images. Writes SAVE_DIR/<image>.jpg "
                                   "with the boxes drawn and SAVE_DIR/predictions.json: one entry per image, "
                                   "{image, detections: [{box: [x1, y1, x2, y2] (pixels of the original image, "
                                   "top-left and bottom-right corners), score, class (index), name}]}; OBB "
                                   "models give rbox [cx, cy, w, h, angle in radians] and poly [x1, y1, ..., x4, "
                                   "y4] instead of box.")
    p.add_argument("model", help="checkpoint dir, run dir (its best/, else last/), Ultralytics .pt/.npz or a "
                                 "variant name (random weights)")
    p.add_argument("source", help="image file or directory (searched recursively)")
    p.add_argument("--save-dir", dest="save_dir", default="runs/predict",
                   help="where the drawn images and predictions.json go")
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the model's training size, else 640)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", dest="max_det", type=int, default=300, help="most detections kept per image")
    p.add_argument("--tile", type=int, default=0,
                   help="OBB: run on overlapping tiles of this size in px (large images; 0: off)")
    p.add_argument("--tile-overlap", dest="tile_overlap", type=int, default=200, help="overlap of the tiles in px")
    p.set_defaults(func=cmd_predict)
