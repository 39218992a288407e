"""Quantization-aware fine-tuning against post-training INT8, on a trained (pruned, distilled) student.

Arms, every INT8 graph scored in ONNX Runtime with the same NMS and metrics as `yolojax val`, side by side:

* the student as it is: float32 ONNX, PTQ INT8 with 8-bit weights (`export --int8` default) and 7-bit
  (`--reduce-range`);
* control: the same number of extra fine-tuning epochs in float (same distillation, optimizer, data), then PTQ:
  separates what QAT does from what more training does;
* QAT (`yolojax distill --qat`, teacher in float), 8-bit and 7-bit weights: the fake-quantized JAX model's mAP
  (what the trainer validates) and the exported INT8 graph's mAP (`export --int8`: the trained ranges).

Every arm takes the run's `last` weights (no selection on the scored split). On x86 CPUs without VNNI, ONNX
Runtime's uint8 x int8 kernels saturate 8-bit weights (see yolojax/model/quant.py): there only 7-bit weights run
the graph their Q/DQ nodes describe.

    python benchmarks/qat.py                       # the demo's student and teacher (runs/demo), 5 epochs each
    # writes benchmarks/results/qat.{json,md}
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


def main(argv=None) -> int:
    import jax
    from distill.train import distill_finetune
    from export.benchmark import machine_info
    from export.int8 import quantize_int8
    from export.onnx_emit import export_onnx
    from yolojax import load
    from yolojax.data import load_dataset
    from yolojax.model.quant import QATModel, ranges_from_meta, with_ranges
    from yolojax.pipeline import CompressConfig
    from yolojax.report import _evaluate, onnx_predict
    from yolojax.train.cli import default_data
    from yolojax.train.config import TrainConfig
    from yolojax.train.step import make_predict
    d = CompressConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="runs/demo/finetune/best")
    ap.add_argument("--teacher", default="runs/demo/teacher/best")
    ap.add_argument("--data", default=None, help="dataset YAML; default: the demo's built-in synthetic set")
    ap.add_argument("--imgsz", type=int, default=d.imgsz)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr0", type=float, default=1e-4, help="AdamW learning rate of the extra fine-tuning")
    ap.add_argument("--method", default=d.distill)
    ap.add_argument("--arms", default="control,qat8,qat7")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "qat")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "qat")
    args = ap.parse_args(argv)
    data = args.data or str(default_data(d.synth_images, args.imgsz, d.seed, zoom=d.synth_zoom))
    calib = Path(data).parent / "images" / "train"
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    teacher, student = load(args.teacher), load(args.student)
    args.work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    res = {"machine": {**machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
           "data": data, "imgsz": args.imgsz, "val_images": len(val), "student": args.student,
           "teacher": args.teacher, "epochs": args.epochs, "lr0": args.lr0, "method": args.method, "rows": []}

    def m(metrics):
        return {"map50": round(float(metrics["map50"]), 5), "map50_95": round(float(metrics["map50_95"]), 5)}

    def onnx_scores(det, tag, ranges=None, float_convs=(), reduce_range_sets=(False, True)):
        f32 = export_onnx(det, args.work / f"{tag}_fp32.onnx", imgsz=args.imgsz, dynamic=True)
        out = {"float32": m(_evaluate(det, val, args.imgsz, predict=onnx_predict(f32, det.spec), workers=2))}
        for rr in reduce_range_sets:
            q = quantize_int8(f32, args.work / f"{tag}_int8_{7 if rr else 8}.onnx", calib_data=calib,
                              calib_images=128, reduce_range=rr, ranges=ranges, keep_float=list(float_convs))
            out[f"int8_{7 if rr else 8}bit"] = m(_evaluate(det, val, args.imgsz, predict=onnx_predict(q["path"],
                                                                                                    det.spec),
                                                           workers=2))
        return out

    def log(row):
        res["rows"].append(row)
        print(json.dumps(row), flush=True)

    t0 = time.time()
    log({"arm": "student as trained", **onnx_scores(student, "student"), "seconds": round(time.time() - t0)})
    cfg = TrainConfig(epochs=args.epochs, batch=d.batch, imgsz=args.imgsz, workers=2, optimizer="adamw",
                      lr0=args.lr0, lrf=0.1, warmup_epochs=0, mosaic=False, seed=d.seed, nbs=d.nbs)
    for arm in args.arms.split(","):
        t0 = time.time()
        rd = args.work / arm
        qat = arm.startswith("qat")
        rr = arm == "qat7"
        distill_finetune(teacher, student, train, val, cfg, args.method, rundir=rd, progress=False, qat=qat,
                         qat_reduce_range=rr)
        det = load(rd / "last")
        row = {"arm": arm, "train_seconds": round(time.time() - t0)}
        if qat:
            qm = QATModel(det.spec, tuple(det.meta["qat"]["float_convs"]), rr)
            variables = with_ranges(det.variables, ranges_from_meta(det.meta["qat"]))
            pred = jax.jit(make_predict(det.spec, model=qm))
            from yolojax.train.validate import run_validation, val_loader
            loader = val_loader(val, 8, args.imgsz, 2)
            try:
                row["jax_fake_quant"] = m(run_validation(det.spec, variables, loader, predict=pred,
                                                         progress=False)[0])
            finally:
                loader.close()
            row.update(onnx_scores(det, arm, ranges=det.meta["qat"]["ranges"], reduce_range_sets=(rr,)))
        else:
            row.update(onnx_scores(det, arm))
        row["seconds"] = round(time.time() - t0)
        log(row)
    res["seconds"] = round(time.time() - t_all)
    res["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    args.out.with_suffix(".md").write_text(render(res))
    print(render(res))
    return 0


# What the 2026-12-02 run showed (numbers from results/qat.json; rewrite when rerun)
NOTES = [
    "- **The JAX QAT model scores what its exported INT8 graph scores**: 7-bit weights 0.9164 / 0.5463 in JAX vs "
    "0.9165 / 0.5462 in ONNX Runtime (mAP50 / mAP50-95, +0.01 / -0.01 points); 8-bit weights 0.9158 / 0.5476 vs "
    "0.9154 / 0.5484 (-0.04 / +0.08), although on this AVX2 machine ORT's 8-bit kernels saturate int16 pair sums "
    "and run a slightly different graph. Goal 0.2 points. (With the convs summed in float rather than in integers "
    "the two were 0.36 / 0.59 points apart: two draws of rounding noise, see docs/export.md.)",
    "- **QAT does not beat post-training INT8 on this student, because PTQ loses nothing measurable here**: PTQ of "
    "the student as trained is +0.10 (8-bit) / +0.10 (7-bit) mAP50 against its float32; QAT's INT8 is -0.23 "
    "(7-bit) / -0.35 (8-bit) against the QAT model's own float32, -0.41 / -0.52 against the student's. Every "
    "difference in this table is within the scoring noise of 80 validation images (one image moves mAP50 by up "
    "to ~1 point; the float-only control moved -0.09 / -0.78 in five epochs). The issue's goal, INT8 within 1 "
    "point of float with PTQ defaults or within 0.5 with QAT, holds both ways.",
    "- The extra epochs at lr 1e-4 do not improve the float model (0.9206 -> 0.919-0.920): the student is "
    "converged, so QAT here only has to hold accuracy, and it does. Where PTQ does lose (a model with wider "
    "activation ranges, or 640 px, not measured here: the demo's models are trained at 128 px), QAT is the tool; "
    "this run shows its machinery is exact, not that it is needed for this model.",
    "- 8-bit vs 7-bit weights: no measurable mAP difference on either path; on an AVX2-only x86 deploy 7-bit "
    "(`--reduce-range`, `--qat-reduce-range`) so the INT8 graph runs what its Q/DQ nodes say.",
]


def render(res: dict) -> str:
    mc = res["machine"]
    lines = [f"## Quantization-aware fine-tuning vs post-training INT8 ({res['imgsz']} px, ONNX Runtime)", "",
             f"Machine: {mc.get('cpu', '?')} ({mc.get('isa', '?')}); onnxruntime {mc.get('onnxruntime', '?')}; "
             f"{mc['date']}; load {mc['loadavg_start']} -> {mc.get('loadavg_end')}. Data: {res['data']} "
             f"({res['val_images']} val images scored; PTQ calibration on 128 train images). Student "
             f"{res['student']}, teacher {res['teacher']} (float). Extra fine-tuning: {res['epochs']} epochs, "
             f"distillation `{res['method']}`, AdamW lr {res['lr0']} -> x0.1, no mosaic; every arm's `last` weights.",
             "", "| arm | JAX fake-quant mAP50 / 50-95 | float32 ONNX | INT8 8-bit weights | INT8 7-bit weights | "
             "train s |", "|---|---:|---:|---:|---:|---:|"]

    def c(r, k):
        v = r.get(k)
        return f"{v['map50']:.4f} / {v['map50_95']:.4f}" if v else "–"
    for r in res["rows"]:
        lines.append(f"| {r['arm']} | {c(r, 'jax_fake_quant')} | {c(r, 'float32')} | {c(r, 'int8_8bit')} | "
                     f"{c(r, 'int8_7bit')} | {r.get('train_seconds', '–')} |")
    lines += ["", "### What this shows", "", *res.get("notes", NOTES), "",
              f"Command: `python benchmarks/qat.py` ({res['seconds'] / 60:.0f} min)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
