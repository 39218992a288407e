"""`yolojax export` and `yolojax benchmark`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FORMATS = ("onnx", "savedmodel", "engine")


def _default_out(model: str, fmt: str) -> Path:
    suffix = {"onnx": ".onnx", "engine": ".engine", "savedmodel": "_saved_model"}[fmt]
    p = Path(model)
    if p.is_dir():
        return p.parent / f"{p.name}{suffix}"
    if p.suffix in (".pt", ".npz"):
        return p.with_name(p.stem + suffix)
    return Path(f"{p.name}{suffix}")


# What an export may replace without --force: its own kind of artefact from an earlier export.
_OWN_SUFFIXES = {"onnx": (".onnx",), "engine": (".engine", ".plan", ".trt")}


def _check_output(out: Path, fmt: str, force: bool) -> None:
    """Refuse to replace what is not an earlier export of the same kind (a folder of the user's files, a .pt)."""
    from yolojax.errors import OutputExistsError
    if force or not (out.exists() or out.is_symlink()):
        return
    if fmt == "savedmodel":
        if out.is_dir() and (not any(out.iterdir()) or (out / "saved_model.pb").is_file()):
            return
        what = "is not a SavedModel"
    elif out.is_dir():
        raise OutputExistsError(f"{out} is a folder: give the {fmt} file to write with -o")
    elif out.suffix.lower() in _OWN_SUFFIXES[fmt]:
        return
    else:
        what = f"is not a {'/'.join(_OWN_SUFFIXES[fmt])} file"
    raise OutputExistsError(f"{out} exists and {what}: refusing to replace it (choose another -o, or --force)")


def run_export(args) -> int:
    from yolojax.commands import resolve_imgsz
    from yolojax.train.cli import check_args

    from .benchmark import _load_detector
    from .check import check_onnx, format_report
    check_args(args)  # --imgsz 100, --batch 0, ...: one line before any work
    out = Path(args.output) if args.output else _default_out(args.model, args.format)
    _check_output(out, args.format, args.force)
    if args.format == "engine":
        _check_output(out.with_suffix(".onnx"), "onnx", args.force)
    if str(args.model).lower().endswith(".onnx"):
        from yolojax.errors import UserError
        raise UserError(f"{args.model} is already an ONNX graph: export the checkpoint it came from")
    args.imgsz = resolve_imgsz(args.model, args.imgsz, what="export")
    det = _load_detector(args.model)
    # the training data travels with the graph, so `yolojax val MODEL.onnx` finds it without --data
    metadata = {"data": str(det.meta["data"])} if det.meta.get("data") else None
    check_images = None
    if args.check_images:
        from .images import load_images
        check_images = load_images(args.check_images, args.imgsz, args.batch if not args.dynamic else 2)
        if not args.dynamic:
            check_images = check_images[: args.batch]

    if args.format == "savedmodel":
        return _export_savedmodel(det, out, args, check_images)

    onnx_path = out if args.format == "onnx" else out.with_suffix(".onnx")
    if args.int8 and args.half:
        print("error: choose --int8 or --half", file=sys.stderr)
        return 2
    if args.int8 and args.int8_target == "tensorrt" and args.int8_format != "qdq":
        print("error: TensorRT reads Q/DQ graphs only: --int8-target tensorrt needs --int8-format qdq", file=sys.stderr)
        return 2
    if args.int8 and not args.calib_data:
        print("error: --int8 needs --calib-data (images the model will see, e.g. the val split)", file=sys.stderr)
        return 2
    if args.int8 and args.format == "onnx":
        from .int8 import quantize_int8
        from .onnx_emit import export_onnx
        qat = det.meta.get("qat")
        kw = {"reduce_range": args.reduce_range, "keep_float": args.int8_keep_float}
        if qat:  # a QAT model: its trained ranges, float convs and weight range, not a new calibration
            if args.int8_target != "cpu" or args.calib_method != "minmax" or args.int8_head:
                print("error: this model was trained for the cpu target's uint8 graph (QAT, meta['qat']): drop "
                      "--int8-target/--calib-method/--int8-head", file=sys.stderr)
                return 2
            if args.int8_keep_float not in ("none", ",".join(qat["float_convs"])) or (
                    args.reduce_range and not qat["reduce_range"]):
                print(f"error: this QAT model was trained with float convs {qat['float_convs'] or 'none'} and "
                      f"{'7' if qat['reduce_range'] else '8'}-bit weights; the INT8 graph uses those", file=sys.stderr)
                return 2
            kw = {"reduce_range": bool(qat["reduce_range"]), "keep_float": list(qat["float_convs"]),
                  "ranges": qat["ranges"]}
        fp32 = onnx_path.with_name(onnx_path.stem + "_fp32.onnx")
        export_onnx(det, fp32, imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic, opset=args.opset,
                    nms=args.nms, conf=args.conf, iou=args.iou, max_det=args.max_det, metadata=metadata)
        rep = quantize_int8(fp32, onnx_path, det, calib_data=args.calib_data, calib_images=args.calib_images,
                            method=args.calib_method, check_images=check_images, target=args.int8_target,
                            quant_format=args.int8_format, keep_head_float=not args.int8_head,
                            log=lambda m: print(m, file=sys.stderr), **kw)
        how = (f"the QAT model's {len(qat['ranges'])} trained activation ranges" if qat else
               f"{args.calib_method} calibration on {rep['calib_images']} images")
        print(f"wrote {onnx_path} (INT8 {args.int8_format.upper()} for {args.int8_target}, {how}; float model {fp32})")
        if "scan" in rep:
            sc = rep["scan"]
            scan_json = onnx_path.with_name(onnx_path.stem + "_scan.json")
            scan_json.write_text(json.dumps(sc, indent=1))
            print(f"sensitivity scan on {sc['images']} calibration images: detection damage {sc['damage_int8']:.4f} "
                  f"all INT8, {sc['damage_chosen']:.4f} with {', '.join(sc['chosen']) or 'no conv'} float "
                  f"(per conv: {scan_json})")
        print(rep["summary"])
        if args.int8_target == "cpu":
            from .benchmark import int8_expectation
            print(int8_expectation())
        return 0 if rep["passed"] else 1
    else:
        from .onnx_emit import export_onnx
        export_onnx(det, onnx_path, imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic, half=args.half,
                    opset=args.opset, nms=args.nms, conf=args.conf, iou=args.iou, max_det=args.max_det,
                    metadata=metadata)
        size = onnx_path.stat().st_size / 1e6
        print(f"wrote {onnx_path} ({size:.1f} MB, opset {args.opset}, {'dynamic' if args.dynamic else args.batch}"
              f" batch, {args.imgsz}px{', fp16' if args.half else ''}{', nms ' + args.nms if args.nms else ''})")
        if not args.no_check:
            report = check_onnx(onnx_path, det, images=check_images)
            print(format_report(report))
            if not report["passed"]:
                return 1
    if args.format == "engine":
        from .tensorrt import TensorRTUnavailable, build_engine
        try:
            build_engine(onnx_path, out, half=args.half, int8=args.int8, calib_data=args.calib_data,
                         calib_images=args.calib_images, workspace_gb=args.workspace, nms_plugin=args.nms == "trt")
        except TensorRTUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {out}")
    return 0


def _export_savedmodel(det, out: Path, args, check_images) -> int:
    import numpy as np

    from .check import compare, reference_outputs
    from .savedmodel import export_savedmodel, run_savedmodel
    if args.half or args.nms or args.int8:
        print("error: --half/--nms/--int8 apply to onnx/engine, not savedmodel", file=sys.stderr)
        return 2
    try:
        export_savedmodel(det, out, imgsz=args.imgsz, dynamic=args.dynamic, batch=args.batch)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    if args.no_check:
        return 0
    x = check_images if check_images is not None else np.random.default_rng(0).random(
        (args.batch, args.imgsz, args.imgsz, 3), dtype=np.float32)
    y = run_savedmodel(out, x)
    ref = reference_outputs(det, x)
    nc = det.spec.nc
    got = {"boxes": y[:, :4], "scores": y[:, 4:4 + nc], **({"angle": y[:, 4 + nc:]} if "angle" in ref else {})}
    res = compare(got, ref, 2e-4, 1e-5)
    print(f"TensorFlow vs JAX (batch {len(x)}): {'ok' if res['passed'] else 'FAILED'}: max abs {res['max_abs']:.3g}, "
          f"max rel to scale {res['max_rel']:.3g}")
    return 0 if res["passed"] else 1


def _benchmark_imgsz(models, given: int | None) -> int:
    """One size for every model, said on stderr: --imgsz, else the models' own (an .onnx graph's input shape,
    a checkpoint's training size), else 640. Models of different own sizes need --imgsz."""
    import io
    from contextlib import redirect_stderr

    from yolojax.commands import resolve_imgsz
    from yolojax.errors import UserError
    if given is not None:
        for m in models:  # a fixed-size graph refuses another size here, in one line
            with redirect_stderr(io.StringIO()):
                resolve_imgsz(m, given)
        print(f"benchmark: imgsz {given} (--imgsz)", file=sys.stderr)
        return given
    own = {}
    for m in models:
        with redirect_stderr(io.StringIO()) as said:
            own[m] = resolve_imgsz(m, None)
        own[m] = (own[m], said.getvalue().strip())
    sizes = {size for size, _ in own.values()}
    if len(sizes) > 1:
        raise UserError("the models have different image sizes (" + ", ".join(f"{m}: {s}" for m, (s, _) in
                                                                              own.items())
                        + "): give --imgsz (a fixed-size .onnx runs only at its own)")
    print(f"benchmark: {own[models[0]][1]}", file=sys.stderr)
    return sizes.pop()


def run_benchmark(args) -> int:
    from yolojax.train.cli import check_args

    from .benchmark import BACKENDS, benchmark, format_table
    check_args(args)
    if args.runs < 1 or args.warmup < 0:
        from yolojax.errors import UserError
        raise UserError(f"--runs must be at least 1 and --warmup at least 0, got {args.runs} and {args.warmup}")
    if args.backend not in BACKENDS:  # argparse's choices guard the CLI; this guards a bad default
        raise ValueError(f"unknown backend {args.backend!r}; expected one of {BACKENDS}")
    imgsz = _benchmark_imgsz(args.models, args.imgsz)
    res = benchmark(args.models, backend=args.backend, imgsz=imgsz, batch=args.batch, half=args.half,
                    runs=args.runs, warmup=args.warmup, threads=args.threads, progress=not args.json)
    print(json.dumps(res, indent=1) if args.json else format_table(res))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX / TensorFlow SavedModel / TensorRT engine, with checks",
                       description="Export a model. ONNX graphs are checked (onnx.checker, shape inference, "
                                   "TensorRT op allowlist, ONNX Runtime vs JAX) unless --no-check.")
    p.add_argument("model", help="checkpoint dir, run dir, Ultralytics .pt/.npz, or a variant name (yolov8n)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="what to write")
    p.add_argument("-o", "--output", help="output file/dir (default: beside the model)")
    p.add_argument("--force", action="store_true", help="replace --output even if it is not an earlier export")
    p.add_argument("--imgsz", type=int, default=None,
                   help="input size (square, multiple of 32); default: the size the model was trained at "
                        "(640 for a variant name or an Ultralytics .pt)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size (ignored with --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width (as Ultralytics' dynamic export); one graph serves several sizes")
    p.add_argument("--half", action="store_true", help="float16 weights and convs (float32 I/O)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--nms", choices=("ort", "trt"), help="NMS in the graph: ONNX NonMaxSuppression or "
                                                          "TensorRT EfficientNMS_TRT")
    p.add_argument("--conf", type=float, default=0.25, help="NMS score threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="most detections per image kept by the graph's NMS")
    p.add_argument("--int8", action="store_true", help="INT8: static Q/DQ (onnx) or TensorRT calibration (engine)")
    p.add_argument("--calib-data", help="calibration images: dir, image list .txt or dataset YAML")
    p.add_argument("--calib-images", type=int, default=256, help="number of calibration images")
    p.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how activation ranges are chosen from the calibration images")
    p.add_argument("--int8-target", choices=("cpu", "tensorrt"), default="cpu",
                   help="cpu: uint8 activations, every op quantized (fast in ONNX Runtime); tensorrt: symmetric "
                        "int8 Q/DQ on convs (what TensorRT reads; slow in ONNX Runtime on x86)")
    p.add_argument("--int8-format", choices=("qdq", "qoperator"), default="qdq",
                   help="Q/DQ pairs (portable) or ONNX Runtime's QLinear ops (cpu target only)")
    p.add_argument("--int8-head", action="store_true",
                   help="quantize the head's final 1x1 convs too (DFL/decode always stay float)")
    p.add_argument("--int8-keep-float", default="none", metavar="none|auto|PATHS",
                   help="body convs left in float: none; auto (a per-layer sensitivity scan on the calibration images "
                        "keeps float the few whose INT8 error costs most; minutes); or conv paths, comma-separated "
                        "(e.g. model_0,model_22/cv3_0_1)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: for x86 CPUs without VNNI, where uint8 x int8 products can saturate")
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace in GB")
    p.add_argument("--check-images", help="images for the ONNX Runtime vs JAX check (default: noise)")
    p.add_argument("--no-check", action="store_true", help="skip the checks")
    p.set_defaults(func=run_export)

    p = sub.add_parser("benchmark", help="latency p10/p50/p90/p99 and throughput of one or two models",
                       description="Warm up, then time N interleaved runs of each model on one backend; "
                                   "prints the latency percentiles (ms) and throughput (images/s at p50).")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="checkpoint dir, variant name or .onnx file (onnxruntime); two models are compared")
    p.add_argument("--backend", choices=("jax", "onnxruntime", "tensorrt"), default="onnxruntime",
                   help="runtime: jax (checkpoints and variant names), onnxruntime (.onnx files as they are; "
                        "checkpoints are exported first), tensorrt (.engine/.plan or .onnx; needs a GPU)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="square input size; default: the models' own (an .onnx graph's input shape, a "
                        "checkpoint's training size), else 640")
    p.add_argument("--batch", type=int, default=1, help="images per run")
    p.add_argument("--half", action="store_true", help="float16 (jax, tensorrt; an .onnx exported with --half)")
    p.add_argument("--runs", type=int, default=50, help="timed runs of each model (interleaved)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs of each model first")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_benchmark)
