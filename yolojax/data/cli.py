"""`yolojax data check|convert|synth`."""
from __future__ import annotations

import argparse
import json
import sys

FORMAT_CHOICES = ("yolo", "visdrone", "voc", "coco", "dota")


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="check, convert, synthesize or tile datasets",
                              description="Dataset tools: check (counts and problems), convert (VisDrone/VOC/COCO/"
                                          "DOTA to YOLO), synth (the built-in synthetic aerial set), tile (split "
                                          "large DOTA images into overlapping tiles). `yolojax data ACTION --help` "
                                          "for each.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    c = sub.add_parser("check", help="validate a dataset and report counts and problems",
                       description="Read a dataset with every check (images decoded fully) and report "
                                   "counts and every problem with file and line.")
    c.add_argument("data", help="data .yaml, dataset folder or COCO .json")
    c.add_argument("--format", choices=FORMAT_CHOICES, help="annotation format (default: detected)")
    c.add_argument("--split", help="one split (default: train and val)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--no-decode", action="store_true", help="read image headers only (faster)")
    c.add_argument("--show", type=int, default=5, metavar="N", help="problems listed per kind (default 5)")
    c.set_defaults(func=run_check)

    v = sub.add_parser("convert", help="convert VisDrone/VOC/COCO/DOTA to an Ultralytics YOLO dataset",
                       description="Write data.yaml, images/ (symlinks) and labels/ under OUT.")
    v.add_argument("src", help="source dataset (folder or COCO .json)")
    v.add_argument("--format", choices=FORMAT_CHOICES, help="source format (default: detected)")
    v.add_argument("out", help="output folder")
    v.add_argument("--copy", action="store_true", help="copy images instead of symlinking")
    v.set_defaults(func=run_convert)

    s = sub.add_parser("synth", help="generate the synthetic aerial dataset",
                       description="Deterministic synthetic top-down scenes with 10 VisDrone classes, "
                                   "written as a YOLO dataset (OUT/data.yaml).")
    s.add_argument("out", help="output folder")
    s.add_argument("--images", type=int, default=500, help="number of images (default 500)")
    s.add_argument("--imgsz", type=int, default=256, help="image size in px (default 256)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--obb", action="store_true", help="oriented-box labels (cls x1 y1 ... x4 y4)")
    s.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val (default 0.2)")
    s.set_defaults(func=run_synth)

    from yolojax.data import tiling
    t = sub.add_parser("tile", help="split large images (DOTA) into overlapping tiles, written as a YOLO dataset",
                       description="Cut large oriented-box images (DOTA) into overlapping tiles and write them as "
                                   "an Ultralytics OBB dataset (OUT/data.yaml); objects cut by a tile edge stay "
                                   "targets when enough of them is inside, else become ignore regions.")
    tiling.add_arguments(t)
    t.set_defaults(func=tiling.run)

    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_check(args) -> int:
    from yolojax.data.check import check_dataset, format_report
    try:
        rep = check_dataset(args.data, split=args.split, format=args.format, decode=not args.no_decode,
                            progress=not args.json and sys.stderr.isatty())
    except ValueError as e:
        if args.json:
            print(json.dumps({"path": args.data, "error": str(e)}))
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep))
    else:
        print(format_report(rep, args.show))
    return 0


def run_convert(args) -> int:
    from yolojax.data.convert import convert_dataset
    try:
        path = convert_dataset(args.src, args.format, args.out, copy=args.copy, progress=sys.stderr.isatty())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def run_synth(args) -> int:
    from yolojax.data.synth import make_synthetic
    try:
        path = make_synthetic(args.out, images=args.images, imgsz=args.imgsz, seed=args.seed, obb=args.obb,
                              val_fraction=args.val_fraction, progress=sys.stderr.isatty())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # python -m yolojax.data.cli ...
    parser = argparse.ArgumentParser(prog="yolojax")
    register(parser.add_subparsers(dest="command"))
    a = parser.parse_args()
    sys.exit(a.func(a) if getattr(a, "func", None) else 1)
