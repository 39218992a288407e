"""INT8 post-training quantization choices, measured on trained models: mAP of each calibration choice against
the float model, in ONNX Runtime, with the same NMS and metrics as `yolojax val`.

One factor at a time from the default (`yolojax export --int8`: minmax ranges, 128 calibration images,
per-channel int8 weights, uint8 asymmetric activations on every body op, the head's last convs float):
the calibration method (entropy, percentile), the number of images, per-tensor weights, int8 symmetric
activations, and the per-layer sensitivity scan (`--int8-keep-float auto`). Calibration images come from
the train split; the val split is scored (never calibrated on).

    python benchmarks/int8_calibration.py                    # the demo's student and teacher (runs/demo)
    python benchmarks/int8_calibration.py --models A B --data D.yaml --imgsz 160
    # writes benchmarks/results/int8_calibration.{json,md}; benchmarks/int8.py shows it in int8.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VARIANTS = {  # name -> quantize_int8 options over the default
    "default (minmax, 128 images)": {},
    "entropy": {"method": "entropy"},
    "percentile": {"method": "percentile"},
    "32 images": {"calib_images": 32},
    "all train images": {"calib_images": 100000},
    "per-tensor weights": {"per_channel": False},
    "int8 symmetric activations": {"activations": "int8"},
    "keep-float auto (sensitivity scan)": {"keep_float": "auto"},
}


def main(argv=None) -> int:
    from export.benchmark import machine_info
    from export.int8 import quantize_int8
    from export.onnx_emit import export_onnx
    from yolojax import load
    from yolojax.data import load_dataset
    from yolojax.model.counting import count_params
    from yolojax.report import _evaluate, onnx_predict
    from yolojax.train.cli import default_data
    from yolojax.pipeline import CompressConfig
    d = CompressConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["runs/demo/finetune/best", "runs/demo/teacher/best"])
    ap.add_argument("--labels", nargs="+", default=["compress student (pruned, KD)", "teacher (80 epochs)"])
    ap.add_argument("--data", default=None, help="dataset YAML; default: the demo's built-in synthetic set")
    ap.add_argument("--imgsz", type=int, default=d.imgsz)
    ap.add_argument("--variants", default=";".join(VARIANTS), help="variant names, separated by ;")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "int8_calibration")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8_calibration")
    args = ap.parse_args(argv)
    data = args.data or str(default_data(d.synth_images, args.imgsz, d.seed, zoom=d.synth_zoom))
    calib = Path(data).parent / "images" / "train"
    val = load_dataset(data, "val")
    t_all = time.time()
    res = {"machine": {**machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
           "data": data, "calib": str(calib), "imgsz": args.imgsz, "val_images": len(val), "models": []}
    for path, label in zip(args.models, args.labels):
        det = load(path)
        w = args.work / Path(path).parent.name
        w.mkdir(parents=True, exist_ok=True)
        f32 = export_onnx(det, w / "fp32.onnx", imgsz=args.imgsz, dynamic=True)

        def score(p):
            m = _evaluate(det, val, args.imgsz, predict=onnx_predict(p, det.spec), workers=2)
            return {"map50": round(float(m["map50"]), 5), "map50_95": round(float(m["map50_95"]), 5)}
        row = {"model": path, "label": label, "params": count_params(det.spec), "float": score(f32), "variants": {}}
        print(f"{label}: float {row['float']}", flush=True)
        for name in args.variants.split(";"):
            kw = {"calib_images": 128, **VARIANTS[name]}
            t0 = time.time()
            rep = quantize_int8(f32, w / "q.onnx", calib_data=calib, seed=0, **kw)
            s = score(w / "q.onnx")
            v = {**s, "d_map50": round(s["map50"] - row["float"]["map50"], 5),
                 "d_map50_95": round(s["map50_95"] - row["float"]["map50_95"], 5),
                 "calib_images": rep["calib_images"], "kept_float": rep["kept_float"],
                 "seconds": round(time.time() - t0, 1)}
            if "scan" in rep:
                v["scan"] = {k: rep["scan"][k] for k in ("damage_int8", "damage_chosen", "chosen", "seconds")}
                v["scan"]["most_sensitive"] = sorted(rep["scan"]["per_conv"].items(), key=lambda kv: kv[1])[:5]
            row["variants"][name] = v
            print(f"  {name}: {v}", flush=True)
        res["models"].append(row)
    res["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    res["total_seconds"] = round(time.time() - t_all)
    res["command"] = "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    args.out.with_suffix(".md").write_text(render(res))
    print(render(res))
    return 0


def render(res: dict) -> str:
    m = res["machine"]
    lines = [f"## INT8 calibration choices on trained models ({res['imgsz']} px, ONNX Runtime)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores{' (' + m['isa'] + ')' if m.get('isa') else ''}; onnxruntime "
             f"{m.get('onnxruntime')}; {m['date']}. Data: {res['data']} ({res['val_images']} val images scored; "
             f"calibration from {res['calib']}). One factor at a time from the default `yolojax export --int8` "
             "(minmax, 128 images, per-channel int8 weights, uint8 asymmetric activations on every body op, head "
             "tail float). Δ = points of mAP against the float32 ONNX graph of the same model.", ""]
    for r in res["models"]:
        f = r["float"]
        lines += [f"**{r['label']}** ({r['model']}, {r['params']:,} params): float32 mAP50 {f['map50']:.4f}, "
                  f"mAP50-95 {f['map50_95']:.4f}", "",
                  "| INT8 variant | mAP50 | Δ mAP50 | mAP50-95 | Δ mAP50-95 | convs kept float | seconds |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for name, v in r["variants"].items():
            lines.append(f"| {name} | {v['map50']:.4f} | {100 * v['d_map50']:+.2f} | {v['map50_95']:.4f} | "
                         f"{100 * v['d_map50_95']:+.2f} | {', '.join(v['kept_float']) or '–'} | {v['seconds']:.0f} |")
        scans = [v["scan"] for v in r["variants"].values() if "scan" in v]
        for sc in scans:
            lines += ["", f"Sensitivity scan: detection damage {sc['damage_int8']:.4f} with every conv INT8, "
                          f"{sc['damage_chosen']:.4f} with {', '.join(sc['chosen']) or 'none'} float; most sensitive "
                          "(damage with only that conv float): " + ", ".join(f"{k} {d:.4f}" for k, d in sc["most_sensitive"])
                      + f" ({sc['seconds']:.0f} s)."]
        lines.append("")
    if res.get("notes"):
        lines += ["### What this shows", "", *res["notes"], ""]
    lines += [f"Command: `{res['command']}` ({res['total_seconds'] / 60:.1f} min).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
