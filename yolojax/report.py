"""The compression report: every stage's size, cost, accuracy and speed side by side, with plots."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


MB = 1e6  # sizes are decimal megabytes (10^6 bytes), as `yolojax export` prints them


def dir_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def onnx_predict(onnx_path: Path, spec, *, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> Callable:
    """predict(_, images uint8 NHWC) -> NMS'd detections, running the network in ONNX Runtime (for
    `run_validation`), so the exported graph (float32, fp16 or INT8) is evaluated with the same NMS and metrics
    as every other model. A fixed-batch graph is run over the loader's batch in slices of its batch."""
    import jax
    import jax.numpy as jnp
    from export.check import ort_session
    from export.onnx_emit import read_metadata
    from .eval.nms import non_max_suppression
    from .eval.obb import rotated_nms

    if read_metadata(onnx_path).get("nms", "none") != "none":
        raise ValueError(f"{onnx_path}: has NMS inside the graph; validate a graph exported without --nms "
                         "(the validator applies its own NMS at conf 0.001)")
    sess = ort_session(onnx_path)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    size = tuple(inp.shape[2:4])
    nc, obb = spec.nc, spec.task == "obb"
    if obb:
        nms = jax.jit(lambda b, s: rotated_nms(b, s, conf=conf, iou=iou, max_det=max_det))
    else:
        nms = jax.jit(lambda b, s: non_max_suppression(b, s, conf=conf, iou=iou, max_det=max_det))

    def predict(_variables, images):
        x = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2) / 255.0)
        if all(isinstance(v, int) for v in size) and tuple(x.shape[2:]) != size:  # symbolic H, W: any size
            raise ValueError(f"{onnx_path} takes {size[0]}x{size[1]} images, got {x.shape[2]}x{x.shape[3]}: "
                             f"validate at --imgsz {size[0]}")
        step = fixed or len(x)
        if len(x) % step:
            raise ValueError(f"{onnx_path} has a fixed batch {fixed}: use a multiple of it as --batch")
        y = np.concatenate([sess.run(None, {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)])
        y = y.transpose(0, 2, 1)  # [B, A, 4+nc(+1)]
        if obb:
            return nms(jnp.asarray(np.concatenate([y[..., :4], y[..., 4 + nc:5 + nc]], -1)),
                       jnp.asarray(y[..., 4:4 + nc]))
        return nms(jnp.asarray(y[..., :4]), jnp.asarray(y[..., 4:4 + nc]))

    return predict


def onnx_detector(onnx_path: str | Path, *, conf: float = 0.001, iou: float = 0.7, max_det: int = 300):
    """(Detector with the graph's spec and no variables, its `onnx_predict`) for `yolojax val MODEL.onnx`;
    meta['imgsz'] is the graph's input size."""
    from export.onnx_emit import read_metadata, spec_from_onnx
    from .api import Detector
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    spec = spec_from_onnx(onnx_path)
    imgsz = json.loads(read_metadata(onnx_path).get("imgsz", "[640, 640]"))[0]
    det = Detector(spec, {}, {"imgsz": imgsz, "onnx": str(onnx_path)})
    return det, onnx_predict(onnx_path, spec, conf=conf, iou=iou, max_det=max_det)


def _evaluate(det, val, imgsz: int, predict=None, workers: int = 4) -> dict:
    from .train.validate import run_validation, val_loader
    loader = val_loader(val, 8, imgsz, workers)
    try:
        metrics, _ = run_validation(det.spec, det.variables, loader, predict=predict, progress=False)
    finally:
        loader.close()
    return metrics


def _draw_samples(models: Mapping[str, Any], val, imgsz: int, path: Path, n: int = 4) -> Path:
    """A grid: rows = models, columns = the first n validation images, predictions drawn (conf 0.25)."""
    import cv2
    import jax
    from .eval.boxes import scale_boxes
    from .train.step import make_predict
    from .viz import draw_detections, letterbox_image
    recs = val.records[:n]
    rows = []
    for name, det in models.items():
        predict = jax.jit(make_predict(det.spec, conf=0.25))
        tiles = []
        for rec in recs:
            img = cv2.imread(rec.path)
            x, rp = letterbox_image(img, imgsz)
            r = jax.device_get(predict(det.variables, x[None]))
            keep = r["valid"][0]
            scores, classes = r["scores"][0][keep], r["classes"][0][keep]
            if det.spec.task == "obb":
                from .eval.obb import scale_rboxes
                from .eval.rotated import rbox_corners
                polys = rbox_corners(np.asarray(scale_rboxes(r["boxes"][0][keep], rp), np.float64))
                tile = draw_detections(img, None, scores, classes, det.names, polygons=polys)
            else:
                boxes = scale_boxes(r["boxes"][0][keep], rp, img.shape[:2])
                tile = draw_detections(img, boxes, scores, classes, det.names)
            tile = cv2.resize(tile, (320, int(320 * img.shape[0] / img.shape[1])))
            tiles.append(tile)
        h = max(t.shape[0] for t in tiles)
        row = np.concatenate([cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 4, cv2.BORDER_CONSTANT, value=(255,) * 3)
                              for t in tiles], 1)
        label = np.full((28, row.shape[1], 3), 255, np.uint8)
        cv2.putText(label, name, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, row], 0))
    w = max(r.shape[1] for r in rows)
    grid = np.concatenate([cv2.copyMakeBorder(r, 0, 0, 0, w - r.shape[1], cv2.BORDER_CONSTANT, value=(255,) * 3)
                           for r in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def build_report(cc, rundir: Path, models: Mapping[str, Any], val, *, onnx_path: Path | None,
                 timings: Mapping[str, float], paths: Mapping[str, Path] | None = None,
                 int8: tuple[Path, Any] | None = None) -> dict:
    """Evaluate every stage model; returns {'stages': {name: row}, 'plots': {...}, 'machine': ..., ...}.
    int8: (INT8 .onnx, the QAT Detector it came from): an `int8` row scored and timed in ONNX Runtime."""
    from .eval.metrics import plot_pr_curve
    from .model.counting import count_flops, count_macs, count_params
    plots = Path(rundir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    for name, det in models.items():
        m = _evaluate(det, val, cc.imgsz, workers=cc.workers)
        plot_pr_curve(m, plots / f"pr_{name}.png", title=f"Precision-Recall: {STAGE_TITLES.get(name, name)}")
        stages[name] = _row(det.spec, m, cc.imgsz, count_params, count_flops, count_macs)
        if paths and name in paths:
            stages[name]["size_mb"] = round(dir_size(paths[name]) / MB, 3)
    # exported graphs, scored in ONNX Runtime with the same NMS and metrics: {row: (file, the Detector behind it)}
    files = {}
    if onnx_path is not None:
        files["onnx"] = (onnx_path, models["finetuned"])
    if int8 is not None:
        files["int8"] = int8
    for name, (path, det) in files.items():
        m = _evaluate(det, val, cc.imgsz, predict=onnx_predict(path, det.spec), workers=cc.workers)
        plot_pr_curve(m, plots / f"pr_{name}.png", title=f"Precision-Recall: {STAGE_TITLES[name]}")
        stages[name] = _row(det.spec, m, cc.imgsz, count_params, count_flops, count_macs)
        stages[name]["size_mb"] = round(Path(path).stat().st_size / MB, 3)

    # latency: every model in one interleaved run per backend (ratios are what is comparable); the exported
    # .onnx is timed as the file it is (ONNX Runtime only: it has no JAX weights), not given another row's number
    from export.benchmark import benchmark
    names = list(models)
    machine = None
    for backend, key in (("jax", "jax"), ("onnxruntime", "ort")):
        cands, labels = [models[n] for n in names], list(names)
        if backend == "onnxruntime":
            for k, (f, _) in files.items():
                cands.append(str(f))
                labels.append(k)
        res = benchmark(cands, backend=backend, imgsz=cc.imgsz, batch=1, runs=cc.bench_runs, warmup=3, names=labels,
                        progress=False)
        machine = res["machine"]
        for n, r in zip(labels, res["results"]):
            for q in ("p10", "p50", "p90"):
                stages[n][f"{key}_{q}_ms"] = round(r[f"{q}_ms"], 3)
            stages[n][f"{key}_ms"] = round(r["p50_ms"], 3)
            stages[n][f"{key}_fps"] = round(r["fps"], 2)
    base = stages["baseline"]
    for row in stages.values():
        row["delta"] = {k: round(row[k] - base[k], 4) for k in ("params", "gflops", "map50", "map50_95")}
        row["delta_pct"] = {k: round(100 * (row[k] - base[k]) / base[k], 2) if base[k] else None
                            for k in ("params", "gflops", "macs")}
    _draw_samples({k: models[k] for k in ("baseline", "finetuned") if k in models}, val, cc.imgsz,
                  plots / "predictions.png")
    plot_files = {"predictions": "plots/predictions.png", **{f"pr_{k}": f"plots/pr_{k}.png" for k in stages}}
    if plot_stage_curves(rundir, plots / "curves.png") is not None:
        plot_files = {"curves": "plots/curves.png", **plot_files}
    for key, rel in (("gamma_hist", "sparse/gamma_hist.png"), ("channels", "pruned/channels.png")):
        if (Path(rundir) / rel).exists():
            plot_files[key] = rel
    return {"stages": stages, "plots": plot_files, "machine": machine, "imgsz": cc.imgsz,
            "stage_time_s": {k: round(v, 1) for k, v in timings.items()}, "config": vars(cc) if hasattr(cc, "__dict__") else {},
            "cpu_count": os.cpu_count()}


def plot_stage_curves(rundir: Path, path: Path) -> Path | None:
    """Validation mAP50 per epoch of every training stage (teacher, sparse, fine-tune) on one axis, with the
    sparse stage's share of gammas below 1e-2 on a second: whether the teacher plateaued, what the sparse
    stage cost and how fine-tuning recovered, at a glance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rundir = Path(rundir)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax2 = None
    offset, drawn = 0, False
    for stage, color in (("teacher", "#1f77b4"), ("sparse", "#d62728"), ("finetune", "#2ca02c")):
        f = rundir / stage / "results.json"
        if not f.exists():
            continue
        rows = [r for r in json.loads(f.read_text()) if "val/map50" in r]
        if not rows:
            continue
        x = [offset + r["epoch"] for r in rows]
        ax.plot(x, [r["val/map50"] for r in rows], color=color, marker=".", ms=3, label=f"{stage} val mAP50")
        if stage == "sparse" and "sparsity/frac_lt_1e-2" in rows[0]:
            ax2 = ax.twinx()
            ax2.plot(x, [r["sparsity/frac_lt_1e-2"] for r in rows], color="#ff7f0e", ls="--",
                     label="share of gammas < 1e-2")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("share of BN gammas < 1e-2")
            ax2.legend(loc="lower right", fontsize=8)
        offset = x[-1]
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch (stages one after another)")
    ax.set_ylabel("val mAP50")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower center", fontsize=8)
    ax.set_title("training curves of the compression stages")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _row(spec, m: Mapping, imgsz: int, count_params, count_flops, count_macs) -> dict:
    return {"params": count_params(spec), "gflops": round(count_flops(spec, imgsz), 4),
            "gflops_640": round(count_flops(spec, 640), 4), "macs": count_macs(spec, imgsz),
            "size_mb": round(count_params(spec) * 4 / MB, 3),
            "map50": round(float(m["map50"]), 4), "map50_95": round(float(m["map50_95"]), 4),
            "map_small": round(float(m.get("map_small", -1)), 4), "map_medium": round(float(m.get("map_medium", -1)), 4)}


STAGE_TITLES = {"baseline": "baseline (teacher)", "sparse": "sparsity-trained", "pruned": "pruned, before fine-tune",
                "finetuned": "pruned + fine-tuned (KD)", "onnx": "exported ONNX (ORT)",
                "int8": "QAT, INT8 ONNX (ORT)"}


def _num(v, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _latency(r: Mapping, key: str) -> str:
    """'p50 (p10–p90)' of a row's `key` latency in ms, '–' when not measured."""
    if r.get(f"{key}_ms") is None:
        return "–"
    if r.get(f"{key}_p10_ms") is None:
        return f"{r[f'{key}_ms']:.2f}"
    return f"{r[f'{key}_ms']:.2f} ({r[f'{key}_p10_ms']:.2f}–{r[f'{key}_p90_ms']:.2f})"


def _pruning_words(cfg: Mapping) -> str:
    if cfg.get("prune_ratio"):
        return f"`{cfg.get('policy')}` policy, {cfg['prune_ratio']:.0%} of channels"
    if cfg.get("target_flops"):
        return f"`{cfg.get('policy')}` policy searched for <= {cfg['target_flops']} GFLOPs"
    return f"`{cfg.get('policy')}` policy searched for <= {cfg.get('flops_ratio', 0):.0%} of the baseline's GFLOPs"


def write_markdown(report: Mapping, path: Path) -> Path:
    """report: build_report's dict, or the flat report.json (stages at top level + `meta`)."""
    if "stages" not in report:
        report = {**report["meta"], "stages": {k: v for k, v in report.items() if k != "meta"}}
    st = report["stages"]
    cfg = report.get("config", {})
    lines = ["# Compression report", "",
             f"Data: {cfg.get('data') or 'built-in synthetic aerial set'}; model {cfg.get('model')}; "
             f"{report['imgsz']} px; distillation `{cfg.get('distill')}`; pruning: {_pruning_words(cfg)}; wall time {report.get('wall_time_s', 0):.0f} s "
             f"(stages: {', '.join(f'{k} {v:.0f}s' for k, v in report['stage_time_s'].items())}).",
             f"Machine: {(report.get('machine') or {}).get('cpu', '?')}, {report.get('cpu_count')} cores. "
             f"Latency: median (p10–p90) of {cfg.get('bench_runs', '?')} interleaved runs per backend, batch 1, "
             f"{report['imgsz']} px, every row measured itself"
             f"{' (the ONNX row times the exported file in ONNX Runtime)' if 'onnx' in st else ''}; "
             f"on a shared CPU two rows of the same architecture can differ by ~10%: read the spreads, not only "
             f"the medians. Size: MB = 10^6 bytes on disk (a stage's saved weights; the ONNX row's .onnx file), "
             f"as `yolojax export` prints it.", "",
             "| stage | params | GFLOPs | MACs (G) | size (MB) | mAP50 | mAP50-95 | APs | APm | JAX ms p50 (p10–p90) | ORT ms p50 (p10–p90) | ORT FPS | params Δ | GFLOPs Δ | mAP50 Δ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in st.items():
        d = r["delta_pct"]
        lines.append(f"| {STAGE_TITLES.get(k, k)} | {r['params']:,} | {r['gflops']:.3f} | {r['macs'] / 1e9:.3f} | "
                     f"{r['size_mb']:.2f} | {r['map50']:.4f} | {r['map50_95']:.4f} | {r['map_small']:.4f} | "
                     f"{r['map_medium']:.4f} | {_latency(r, 'jax')} | {_latency(r, 'ort')} | "
                     f"{_num(r.get('ort_fps'), 1)} | {d['params']:+.1f}% | {d['gflops']:+.1f}% | "
                     f"{r['delta']['map50']:+.4f} |")
    checks = report.get("checks") or []
    if checks:
        lines += ["", "## Did each stage do its job?", ""]
        lines += [f"- {'✅' if c.get('ok') else ('❌' if c.get('ok') is False else '–')} {c['text']}" for c in checks]
    if any("gamma_below_1e-2" in r for r in st.values()):
        lines += ["", "Share of prunable BN gammas below 1e-2: " +
                  ", ".join(f"{k} {r['gamma_below_1e-2']:.1%}" for k, r in st.items() if "gamma_below_1e-2" in r)
                  + "."]
    lines += ["", "GFLOPs at the report's image size (Ultralytics' definition); at 640 px: " +
              ", ".join(f"{k} {r['gflops_640']:.2f}" for k, r in st.items()) + ".", "", "## Plots", ""]
    for key, rel in report["plots"].items():
        lines.append(f"![{key}]({rel})")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
