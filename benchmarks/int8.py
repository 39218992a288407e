"""INT8 vs FP32 in ONNX Runtime on this CPU: latency (640 px and the model's own size) and mAP of a trained model.

    .venv/bin/python benchmarks/int8.py [--model runs/int8/teacher] [--data runs/int8/data/data.yaml]
                                        [--calib runs/int8/data/images/train] [--runs 30]

Writes benchmarks/results/int8.json and int8.md. Models: the trained checkpoint (FP32 export, INT8 with the
default `cpu` target) and the same after `pruning.prune(spec, variables, GlobalRatio(ratio=0.5))` (no
fine-tuning), FP32 and INT8. At 640 px the investigation variants are timed beside them: the `tensorrt`
target (symmetric int8 Q/DQ on convs only: the first INT8 export), uint8 with Q/DQ on convs only, and the
QOperator format. All candidates of one size are timed interleaved in one process (every round runs each
once, order alternating), ONNX Runtime with spinning off, intra-op threads = cores, OMP_WAIT_POLICY=PASSIVE;
medians are quoted. Accuracy: `run_validation` on the val split at the model's own size, each ONNX graph run
in ONNX Runtime (`yolojax.report.onnx_predict`), the same NMS and metrics as `yolojax val`. Calibration images
come from the train split (never the images that are scored).
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


def _rel(path) -> str:
    p = Path(path).absolute()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _top_processes(n: int = 6) -> list[str]:
    """The busiest other processes (the 2 cores are shared): `ps` lines, this process left out."""
    import subprocess
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    me = str(os.getpid())
    rows = [ln.strip() for ln in out[1:] if ln.split() and ln.split()[0] != me]
    # user processes only: kernel threads ([name]) and the VM's own agent are not load from other work
    return [ln[:140] for ln in rows if not ln.split(None, 3)[-1].startswith(("[", "/process_api"))][:n]


TRT_LABEL = "int8-tensorrt (s8 Q/DQ on convs)"
S8_LABEL = "int8-cpu every op, s8 activations"


def int8_allowed_candidate(path: Path, size: int, name: str):
    """A graph with int8 activations under ORT's `session.qdqisint8allowed=1`: its QDQ units are then fused
    into S8S8 integer kernels (off by default on x86), to show that int8 activations are slow here even fused."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from export.benchmark import Candidate
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = os.cpu_count() or 1, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    so.log_severity_level = 3
    opt = path.with_name(path.stem + "_int8allowed_opt.onnx")
    so.optimized_model_filepath = str(opt)  # what ORT runs: counted below
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    fused = sum(n.op_type == "QLinearConv" for n in onnx.load(str(opt)).graph.node)
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
    return Candidate(name, lambda: sess.run(None, feed), {"backend": "onnxruntime", "ort_int8_convs": fused,
                                                             "size_mb": round(path.stat().st_size / 1e6, 3)})


def evaluate(onnx_path: Path, spec, data: str, imgsz: int, workers: int) -> dict:
    from yolojax.data import load_dataset
    from yolojax.data.loader import Loader
    from yolojax.report import onnx_predict
    from yolojax.train.validate import run_validation
    ds = load_dataset(data, "val")
    loader = Loader(ds, 8, imgsz, augment=False, workers=workers, max_boxes=8)
    try:
        m, _ = run_validation(spec, {}, loader, predict=onnx_predict(onnx_path, spec), progress=False)
    finally:
        loader.close()
    return {k: round(float(m[k]), 5) for k in ("map50", "map50_95", "precision", "recall")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "runs" / "int8" / "teacher"))
    ap.add_argument("--data", default=str(REPO / "runs" / "int8" / "data" / "data.yaml"))
    ap.add_argument("--calib", default=str(REPO / "runs" / "int8" / "data" / "images" / "train"),
                    help="calibration images (the train split: not the scored images)")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--imgsz", type=int, default=640, help="deployment size timed beside the model's own")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "int8" / "bench")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json (no measuring)")
    args = ap.parse_args(argv)
    if args.render_only:
        args.out.with_suffix(".md").write_text(render(json.loads(args.out.with_suffix(".json").read_text())))
        return 0

    import warnings
    warnings.filterwarnings("ignore", message=".*max_boxes.*")  # val GT comes from the records, not the loader
    import yolojax
    from export.benchmark import machine_info, onnx_candidate, summarize, time_candidates
    from export.int8 import quantize_int8
    from export.onnx_emit import export_onnx
    from pruning import GlobalRatio, prune
    from yolojax.model.counting import count_flops, count_params

    t0 = time.time()
    load = {"before": _load()}
    top_before = _top_processes()
    det = yolojax.load(args.model)
    own = int(det.meta.get("imgsz", 640))
    pspec, pvars = prune(det.spec, det.variables, GlobalRatio(ratio=0.5))
    models = {"yolov8n": det, "yolov8n-pruned50": yolojax.Detector(pspec, pvars, det.meta)}
    info = {k: {"params": count_params(m.spec), "gflops_640": round(count_flops(m.spec, 640), 3)}
            for k, m in models.items()}
    print(f"model {args.model} (trained at {own} px); pruned: GlobalRatio(0.5) -> "
          f"{info['yolov8n-pruned50']['params']:,} params", flush=True)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, int], Path] = {}
    quant: dict[str, dict] = {}
    variants_640 = {  # name -> quantize_int8 options (the investigation, at the deployment size only)
        TRT_LABEL: dict(target="tensorrt"),
        "int8-cpu convs only (u8 Q/DQ)": dict(target="cpu", op_types=("Conv",)),
        S8_LABEL: dict(target="cpu", activations="int8"),
        "int8-cpu qoperator": dict(target="cpu", quant_format="qoperator"),
        # 7-bit weights: on x86 without VNNI, ORT's U8S8 kernels multiply with vpmaddubsw, whose int16 pair sums
        # can saturate; reduce_range avoids it (and may change which kernels run)
        "int8-cpu reduce-range (7-bit weights)": dict(target="cpu", reduce_range=True),
        "int8-cpu qoperator reduce-range": dict(target="cpu", quant_format="qoperator", reduce_range=True),
        # what `--int8-keep-float auto` chose on the demo's trained models (benchmarks/int8_calibration.py)
        "int8-cpu model_0 float (keep-float auto's choice)": dict(target="cpu", keep_float=["model_0"]),
    }
    for size in sorted({args.imgsz, own}, reverse=True):
        for name, m in models.items():
            f32 = export_onnx(m, work / f"{name}_{size}_fp32.onnx", imgsz=size)
            files[(f"{name} fp32", size)] = f32
            jobs = {f"{name} int8": {}}
            if name == "yolov8n" and size == args.imgsz:
                jobs.update({f"{name} {k}": v for k, v in variants_640.items()})
            if name == "yolov8n" and size == own:
                jobs.update({f"{name} int8 (entropy)": dict(method="entropy"),
                             f"{name} int8 (percentile)": dict(method="percentile"),
                             f"{name} {TRT_LABEL}": dict(target="tensorrt")})
            for label, kw in jobs.items():
                out = work / f"{label.replace(' ', '_').replace('(', '').replace(')', '').replace('/', '')}_{size}.onnx"
                t = time.time()
                rep = quantize_int8(f32, out, calib_data=args.calib, calib_images=args.calib_images, seed=0, **kw)
                files[(label, size)] = out
                quant[f"{label} @{size}"] = {k: rep[k] for k in (
                    "target", "format", "activation_type", "op_types", "method", "calib_images", "quantized_convs",
                    "float_convs", "qdq_nodes", "size_mb", "float_size_mb", "ort_int8_convs", "ort_ops",
                    "vs_float", "passed", "tensorrt_ready")}
                quant[f"{label} @{size}"]["quantize_s"] = round(time.time() - t, 1)
                print(f"{label} @{size}: {rep['summary']}", flush=True)

    latency = {}
    for size in sorted({args.imgsz, own}, reverse=True):
        names = [k for (k, s) in files if s == size]
        cands = [onnx_candidate(str(files[(k, size)]), size, 1, False, name=k) for k in names]
        s8 = f"yolov8n {S8_LABEL}"
        if (s8, size) in files:
            cands.append(int8_allowed_candidate(files[(s8, size)], size, f"{s8}, qdqisint8allowed=1"))
        print(f"timing {len(cands)} graphs at {size} px, {args.runs} interleaved rounds", flush=True)
        load[f"start_{size}"] = _load()
        time_candidates(cands, runs=args.runs, warmup=args.warmup)
        load[f"end_{size}"] = _load()
        res = {c.name: summarize(c, 1) for c in cands}
        for c in cands:
            ref = res[c.name.split(" ")[0] + " fp32"]["p50_ms"]
            res[c.name]["ratio_vs_fp32"] = round(res[c.name]["p50_ms"] / ref, 4)
            res[c.name]["ratio_vs_unpruned_fp32"] = round(res[c.name]["p50_ms"] / res["yolov8n fp32"]["p50_ms"], 4)
            print(f"  {c.name:45s} p50 {res[c.name]['p50_ms']:8.2f} ms  x{res[c.name]['ratio_vs_fp32']:.3f} "
                  f"of its fp32", flush=True)
        latency[str(size)] = res

    accuracy = {}
    for (label, size), path in files.items():
        if size != own:
            continue
        spec = models[label.split(" ")[0]].spec
        accuracy[label] = evaluate(path, spec, args.data, own, args.workers)
        print(f"  mAP {label:45s} {accuracy[label]['map50']:.4f} / {accuracy[label]['map50_95']:.4f}", flush=True)
    for label, a in accuracy.items():
        ref = accuracy[label.split(" ")[0] + " fp32"]
        a["d_map50_pts"] = round(100 * (a["map50"] - ref["map50"]), 2)
        a["d_map50_95_pts"] = round(100 * (a["map50_95"] - ref["map50_95"]), 2)

    load["after"] = _load()
    out = {"model": _rel(args.model), "data": _rel(args.data), "calib": _rel(args.calib),
           "calib_images": args.calib_images, "own_imgsz": own, "deploy_imgsz": args.imgsz, "runs": args.runs,
           "pruning": "pruning.prune(spec, variables, GlobalRatio(ratio=0.5)), no fine-tuning",
           "models": info, "machine": machine_info(), "load_average": load, "busy_processes_before": top_before,
           "busy_processes_after": _top_processes(), "latency": latency, "accuracy": accuracy, "quantization": quant,
           "wall_s": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    args.out.with_suffix(".md").write_text(render(out))
    print(f"wrote {args.out.with_suffix('.md')} ({out['wall_s']} s)")
    return 0


def _busy(rows: list[str]) -> list[str]:
    cmds = [x.split(None, 3)[-1] for x in rows]
    return [c[:60] for c in cmds if not c.startswith(("[", "/process_api"))][:4]


HEADER = ("| graph | p50 ms | p90 ms | min ms | p50 x its FP32 | min x its FP32 | p50 x unpruned FP32 | MB "
          "| int8 convs ORT runs as QLinearConv |")
SEP = "|---|---|---|---|---|---|---|---|---|"


def render(r: dict) -> str:
    m, la = r["machine"], r["load_average"]
    big, own = str(r["deploy_imgsz"]), str(r["own_imgsz"])
    lat = r["latency"]
    main = lat[big]
    ratio = main["yolov8n int8"]["ratio_vs_fp32"]
    acc = r["accuracy"]
    d50 = acc["yolov8n int8"]["d_map50_pts"]
    isa = m.get("isa") or "instruction set not recorded (a VNNI machine: AVX512-VNNI)"
    # other processes using the cores at the start or end (this benchmark itself puts the load average near 2)
    busy = any(float(row.split()[1]) > 20 for row in r.get("busy_processes_before", []) + r.get("busy_processes_after", [])
               if len(row.split()) > 1 and row.split()[1].replace(".", "", 1).isdigit())
    best = min((k for k in main if k.startswith("yolov8n int8")), key=lambda k: main[k]["p50_ms"])
    fastest = ("" if best == "yolov8n int8" else
               f"; the fastest INT8 graph here is `{best}` at **{main[best]['ratio_vs_fp32']:.2f}x**")
    lines = [
        "# INT8 vs FP32 in ONNX Runtime on this CPU", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, **{isa}**, onnxruntime {m.get('onnxruntime')}, "
        f"onnx {m.get('onnx')}, Python {m['python']}; {r.get('date', '')}. Batch 1, {r['runs']} interleaved rounds "
        f"after warm-up (every round runs each graph once, order alternating), ONNX Runtime CPU provider, intra-op "
        f"threads = cores, spinning off, OMP_WAIT_POLICY=PASSIVE; p50 = median.", "",
        ("**Shared machine:** other jobs ran on the 2 cores during the run. " if busy else "**Idle machine.** ")
        + f"Load average (1/5/15 min) before {la['before']}, during the {big} px timing {la[f'start_{big}']} -> "
        f"{la[f'end_{big}']}, after {la['after']}. The ratios within one size (same rounds) are the numbers to "
        "read.", "",
        f"**Result on this {isa} CPU:** INT8 (default `cpu` target) runs at **{ratio:.2f}x** the FP32 latency of the "
        f"same model at {big} px (goal <= 0.55x){fastest} and loses **{-d50:.2f}** mAP50 points against the FP32 export on the "
        f"{own} px validation images (target <= 1 point). At the model's own {own} px (a few ms per run, noisy): "
        f"{lat[own]['yolov8n int8']['ratio_vs_fp32']:.2f}x (p50), "
        f"{lat[own]['yolov8n int8']['min_ms'] / lat[own]['yolov8n fp32']['min_ms']:.2f}x (min).", "",
        f"## Latency, {big} px (deployment size)", "",
        HEADER, SEP]
    q = r["quantization"]

    def row(name, res, size):
        fp = lat[str(size)][name.split(" ")[0] + " fp32"]
        qq = q.get(f"{name} @{size}")
        fused = f"{qq['ort_int8_convs']} / {qq['quantized_convs']}" if qq else "(float)"
        if "ort_int8_convs" in res:
            fused = f"{res['ort_int8_convs']} (S8S8)"
        return (f"| {name} | {res['p50_ms']:.1f} | {res['p90_ms']:.1f} | {res['min_ms']:.1f} | "
                f"{res['ratio_vs_fp32']:.3f} | {res['min_ms'] / fp['min_ms']:.3f} | {res['ratio_vs_unpruned_fp32']:.3f} | "
                f"{res.get('size_mb', 0):.2f} | "
                f"{fused} |")

    lines += [row(k, v, big) for k, v in main.items()]
    lines += ["", f"`{S8_LABEL}`: the `cpu` graph with int8 (symmetric) instead of uint8 activations; "
              "`qdqisint8allowed=1`: the same graph with ORT's session option that fuses int8-activation Q/DQ "
              "units on x86 too (off by default), i.e. S8S8 integer kernels."]
    lines += ["", f"## Latency, {own} px (the model's training size)", "",
              "At a few ms per run the shared cores' scheduling noise is large: the minmax, entropy and percentile INT8 "
              "graphs are structurally identical (same kernels, only scales differ), so their spread shows it. The "
              "ratio of the minimum times is the steadier number here.", "", HEADER, SEP]
    lines += [row(k, v, own) for k, v in lat[own].items()]
    lines += ["", f"## Accuracy, val split at {own} px ({r['data']})", "",
              f"Calibration: {r['calib_images']} images of `{r['calib']}` (not the scored images), minmax unless "
              "named. Δ = points against the FP32 export of the same model.", "",
              "| graph | mAP50 | mAP50-95 | Δ mAP50 | Δ mAP50-95 | precision | recall |", "|---|---|---|---|---|---|---|"]
    for k, a in acc.items():
        lines.append(f"| {k} | {a['map50']:.4f} | {a['map50_95']:.4f} | {a['d_map50_pts']:+.2f} | "
                     f"{a['d_map50_95_pts']:+.2f} | {a['precision']:.4f} | {a['recall']:.4f} |")
    p = r["models"]["yolov8n-pruned50"]
    lines += ["", f"Pruned: {r['pruning']}: {p['params']:,} params, {p['gflops_640']} GFLOPs at 640 (unpruned "
              f"{r['models']['yolov8n']['params']:,}, {r['models']['yolov8n']['gflops_640']}); without fine-tuning "
              "its accuracy is low, the INT8-vs-FP32 comparison is what this table shows for it.", ""]
    lines += ["## What ONNX Runtime runs (graph after its optimizations, ORT_ENABLE_ALL)", "",
              "| graph | ops |", "|---|---|"]
    for k, v in q.items():
        if k.endswith(f"@{big}") and k.startswith("yolov8n "):
            ops = ", ".join(f"{o} {c}" for o, c in v["ort_ops"].items() if c >= 2 or "QLinear" in o)
            lines.append(f"| {k} | {ops} |")
    lines += ["", "## Why the first INT8 export was slower than FP32, and what fixed it", "",
              "ONNX Runtime's CPU provider runs a Q/DQ graph fast only when its QDQ transformer can fuse each "
              "`DequantizeLinear -> op -> QuantizeLinear` unit into an integer kernel. Two things stopped it:",
              "",
              "1. **int8 activations.** On x86, ORT does not fuse Q/DQ units with int8 (signed) activations: its "
              "integer GEMM is built for uint8 x int8 (VNNI `vpdpbusd`), and S8S8 kernels are slower (the `s8 "
              "activations` rows: unfused by default, and slower still when the fusion is forced). So the "
              "symmetric int8 graph (what TensorRT wants) runs as float convolutions wrapped in extra "
              "Quantize/Dequantize nodes: every weight is dequantized, every activation quantized and "
              "dequantized again, on top of the float work (see `int8-tensorrt` above: 0 QLinearConv).",
              "2. **Q/DQ on convolutions only.** YOLOv8's SiLU is `Sigmoid` + `Mul`; left float, each conv output "
              "must be dequantized for them and re-quantized for the next conv (`int8-cpu convs only` above: "
              "QLinearConv, but a DQ -> float SiLU -> Q round trip per layer).", "",
              "The `cpu` target quantizes activations to **uint8** (asymmetric; weights stay int8 symmetric "
              "per-channel) and puts Q/DQ on **every op of the body** (Conv, Sigmoid, Mul, Add, Concat, Split, "
              "MaxPool, Resize). ORT then runs QLinearConv -> QLinearSigmoid (a lookup table) -> QLinearMul, "
              "QLinearAdd for the residuals, QLinearConcat, and MaxPool (NHWC), Resize and Split directly on "
              "uint8: the tensors stay 8-bit from the first conv to the head. The head's final 1x1 convs, DFL, "
              "decode and the score sigmoid stay float (about 1% of the FLOPs; 8 bits over 640 px would be "
              "2.5 px steps). The QOperator format gives the same kernels (the QDQ graph is the portable one). "
              "`quant_pre_process` (shape inference + ORT's basic optimizations) runs first. `reduce_range` (7-bit "
              "weights) matters on x86 without VNNI, where ORT's U8S8 kernels sum uint8 x int8 pairs in int16 "
              "(`vpmaddubsw`) and can saturate; with VNNI (`vpdpbusd`, int32 sums) it is not needed.",
              "",
              "The `tensorrt` target writes symmetric int8 Q/DQ on the conv inputs only (TensorRT reads only zero "
              "points of 0, fuses Conv+SiLU itself and requantizes at the next conv's input); it is for TensorRT, "
              "not for ONNX Runtime on a CPU (there it runs as float convs + Q/DQ work, with Sigmoid*Mul fused into "
              "QuickGelu).", "",
              f"Reproduce: `{r.get('command', '.venv/bin/python benchmarks/int8.py')}` ({r['wall_s']} s here). "
              f"Busy processes at the start: {'; '.join(_busy(r['busy_processes_before'])) or 'none'}.", ""]
    if r.get("notes"):
        lines += ["## What this shows", "", *r["notes"], ""]
    cal = Path(__file__).resolve().parent / "results" / "int8_calibration.json"
    if cal.exists():  # the calibration choices on trained models (benchmarks/int8_calibration.py)
        from int8_calibration import render as render_calibration
        lines += [render_calibration(json.loads(cal.read_text()))]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
