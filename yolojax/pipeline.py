"""`yolojax compress`: teacher -> sparsity training -> pruning -> distillation fine-tune -> export -> report.

Every stage writes under RUNDIR/<stage>/ and a `DONE.json` when it finishes; a rerun skips finished stages and
resumes an interrupted training stage from its `last` checkpoint. This module is the orchestration edge: it is
the one place in `yolojax/` that calls the later stages (pruning/, distill/, export/), lazily.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

STAGES = ("teacher", "sparse", "pruned", "finetune", "export")
# The demo's synthetic set at 128 px flies low enough (objects 2.5x the 256-px scale, ~5 a picture) that a
# YOLOv8n teacher converges within the 2-core budget; see docs/pruning.md for the measurements behind these.
SYNTH_ZOOM = 2.5
# lambda's floor under the dynamic prox controller (which sets lambda so that `sparsity_target` of the gammas
# reach exactly 0 by half the stage): every gamma shrinks by at least lr * 0.05 per update, so a channel whose
# (Adam-normalised) pull is weaker than 5% of a full step dies even past the target
SPARSITY_RATE = 0.05
SPARSE_WARMUP_EPOCHS = 1.0  # the sparse stage restarts the optimizer: a short warmup, not a jump to lr0
CONVERGED_WINDOW, CONVERGED_TOL = 0.2, 0.01   # teacher converged: mAP50 trend < 1 point over its last 20%


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """Defaults: the README's main job, the built-in synthetic set on 2 CPU cores in ~15 minutes."""

    data: str | None = None           # None: built-in synthetic aerial set
    model: str = "yolov8n"            # variant or checkpoint to train the teacher from
    task: str = "detect"              # detect | obb (oriented boxes: an -obb model and oriented labels)
    teacher: str | None = None        # a trained model (checkpoint, run dir, Ultralytics .pt): skips stage 1
    imgsz: int = 128
    batch: int = 16
    workers: int = 4
    # 80 teacher epochs, measured on the built-in set: val mAP50 0.917 (60: 0.863, and the later stages, 18 more
    # epochs, then found 2 points more than the teacher: it was on a plateau of its schedule, not converged)
    epochs_teacher: int = 80
    epochs_sparse: int = 8
    epochs_finetune: int = 10
    # Short CPU schedules: AdamW at 0.002 (Ultralytics' `auto` would pick AdamW at 0.0007 for 10 classes), and
    # an optimizer step per batch (nbs = batch) instead of accumulating to 64.
    optimizer: str = "adamw"
    lr0: float | None = 0.002
    nbs: int = 16
    # Sparsity: proximal L1 on BN gammas (shrink lr * lambda per update under any optimizer), lambda set by
    # the dynamic controller so that `sparsity_target` of the gammas are exactly 0 from half the stage on.
    sparsity: float = SPARSITY_RATE
    sparsity_mode: str = "prox"
    sparsity_schedule: str = "dynamic"
    sparsity_target: float = 0.5
    # L1 on BN betas at the same (weighted) strength: a channel whose gamma reached 0 outputs the constant
    # SiLU(beta), which pruning folds into its consumers exactly only away from zero-padded borders (at 160 px
    # most of a 5x5 P5 map is border: measured prune-time mAP50 0.79 -> 0.10 with betas left alone). The next
    # BN removes a constant in training, so a dead channel's beta has no data gradient and goes to 0 with it.
    sparsity_beta: float = SPARSITY_RATE
    # Adaptive lasso: every gamma's L1 weight is (median importance / its first-order Taylor importance)^2,
    # measured on the teacher before the stage. The teacher's gammas all sit near their init of 1: plain L1
    # must shrink every gamma alike to bring half of them to 0 within a short stage (measured: val mAP50 0 by
    # mid-stage, and uniform gamma x 0.3 alone costs 0.5 mAP50); weighted, the least important go first and
    # the important barely move. `none`: plain L1.
    sparsity_weights: str = "taylor"
    sparsity_ramp: float = 0.6        # the target is reached over the first 60% of the stage
    sparsity_max: float = 0.0         # no ceiling on the dynamic lambda
    # What to prune (first set wins): a share of channels by `policy`; an absolute GFLOPs budget; a share of the
    # baseline's GFLOPs (default: half). Budgets search the least pruning of `policy` that fits.
    prune_ratio: float | None = None
    target_flops: float | None = None
    target_ms: float | None = None    # latency target (ms, ONNX Runtime on this machine, batch 1): pruning.LatencyTarget
    flops_ratio: float | None = 0.5
    # global | group | layer (layer + prune_ratio 0.5 = the seed paper's uniform recipe). After the near-zero
    # channels go, the rest of the budget is found by this ranking. Measured on the sparse model (160 px): the
    # zeros alone give 0.68x GFLOPs at no mAP cost; global ranking then reaches 0.49x keeping 0.89x of the
    # sparse mAP50, group ranking (a share of every part x scale x kind class) 0.17x: it must cut classes that
    # hold no zeros.
    policy: str = "global"
    round_to: int = 8
    # channels whose BN |gamma| the sparse stage drove below this are removed first (for free); the budget
    # search prunes further by `policy` only if that does not reach the budget
    prune_below: float | None = 1e-2
    distill: str = "cwd"              # cwd | sad | logit | cwd+logit | none
    # Quantization-aware fine-tuning after the fine-tune (0: none): this many epochs of distillation with the INT8
    # graph's rounding simulated (yolojax/model/quant.py), AdamW at qat_lr, no mosaic; the export stage then also
    # writes model_int8.onnx with the trained ranges and the report scores it. qat_reduce_range: 7-bit weights
    # (x86 CPUs without VNNI).
    qat_epochs: int = 0
    qat_lr: float = 1e-4
    qat_reduce_range: bool = False
    export: str = "onnx"              # onnx | none
    bench_runs: int = 30
    seed: int = 0
    synth_images: int = 400
    synth_zoom: float = SYNTH_ZOOM
    progress: bool = True


def _done(d: Path) -> dict | None:
    f = d / "DONE.json"
    return json.loads(f.read_text()) if f.exists() else None


def _mark_done(d: Path, **info) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".DONE.json.tmp"
    tmp.write_text(json.dumps({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, indent=1, default=str))
    tmp.replace(d / "DONE.json")


def _stage_seconds(d: Path, t0: float) -> float:
    """A stage's time: what its DONE.json recorded when it ran (a rerun skips it), else the time since t0."""
    done = _done(d) or {}
    return float(done.get("seconds", time.time() - t0))


def _say(msg: str) -> None:
    print(f"[compress] {msg}", file=sys.stderr, flush=True)


def ema_for_schedule(total_updates: int) -> tuple[float, float]:
    """(ema_decay, ema_tau) for a run of `total_updates` optimizer updates.

    Ultralytics' EMA (decay 0.9999 * (1 - exp(-updates / 2000))) is made for 10^4-10^5 updates; over a few
    hundred it never averages (decay 0.26 after 600 updates: the EMA is the last weights, and val mAP jumps
    +-0.03 from epoch to epoch at the end of the demo's teacher run). Here the averaging window 1/(1 - decay)
    is at most 5% of the run and the warm-up of the decay a tenth of it; long runs keep Ultralytics' values."""
    n = max(int(total_updates), 1)
    return min(0.9999, max(0.9, 1.0 - 20.0 / n)), float(min(2000.0, max(n / 10, 10.0)))


def _train_config(cc: CompressConfig, epochs: int, n_train: int | None = None, **kw):
    """A stage's TrainConfig; with n_train (training images) the EMA is sized to the stage's length."""
    from .train.config import TrainConfig
    base = dict(epochs=epochs, batch=cc.batch, imgsz=cc.imgsz, workers=cc.workers, optimizer=cc.optimizer,
                nbs=cc.nbs, seed=cc.seed, close_mosaic=max(1, min(10, epochs // 3)),
                warmup_epochs=min(3.0, max(epochs / 10, 0.5)))
    if cc.lr0 is not None:
        base["lr0"] = cc.lr0
    if n_train:
        acc = max(round(cc.nbs / cc.batch), 1)
        base["ema_decay"], base["ema_tau"] = ema_for_schedule(epochs * (n_train // cc.batch) // acc)
    return TrainConfig(**{**base, **kw})


def sparse_config(cc: CompressConfig, n_train: int):
    """The sparse stage's TrainConfig: BN-L1 as configured, a short warmup (it restarts the optimizer), and no
    EMA: the stage saves its live weights, whose zeros are exact (an EMA would hold decay^k of a gamma that
    reached 0 k updates ago)."""
    return _train_config(cc, cc.epochs_sparse, n_train, sparsity=cc.sparsity, sparsity_mode=cc.sparsity_mode,
                         sparsity_schedule=cc.sparsity_schedule, sparsity_target=cc.sparsity_target,
                         sparsity_beta=cc.sparsity_beta, warmup_epochs=SPARSE_WARMUP_EPOCHS, ema=False,
                         sparsity_max=cc.sparsity_max,
                         sparsity_ramp=cc.sparsity_ramp)


def sparse_pieces(cc: CompressConfig, teacher, train):
    """(TrainConfig, optax transform, epoch hook) of the sparse stage; with `sparsity_weights='taylor'` (prox
    only) the L1 weights come from the teacher's first-order Taylor importance on training images."""
    from .train.cli import sparsity_pieces
    cfg = sparse_config(cc, len(train))
    updates = max(cfg.epochs * (len(train) // cfg.batch) // cfg.accumulate(), 1)
    weights = None
    if cc.sparsity and cc.sparsity_mode == "prox" and cc.sparsity_weights == "taylor":
        from pruning.sparsity import adaptive_weights, taylor_importance
        weights = adaptive_weights(taylor_importance(teacher.spec, teacher.variables, train, cc.imgsz,
                                                     seed=cc.seed, workers=min(cc.workers, 2)))
    tx, hook = sparsity_pieces(cfg, updates, teacher.variables["params"], weights)
    return cfg, tx, hook


def _train_stage(d: Path, cfg, train, val, model, *, extra_tx=None, hooks=(), note="", progress=True, meta=None):
    """Run (or resume) a training stage in directory d; returns the stage's best Detector. `note` (one line, kept
    in args.json) says where the weights came from; `meta` goes into the checkpoints (e.g. the data)."""
    from .api import load
    from .train.checkpoints import resume_info, resume_model
    from .train.trainer import Trainer, resolve_model
    info = resume_info(d)
    resume = info is not None
    spec, variables, why = resolve_model(resume_model(d, info) if resume else model, train.nc, train.names,
                                         cfg.seed)
    trainer = Trainer(cfg, d, train, val, spec, variables, extra_tx=extra_tx, epoch_hooks=tuple(hooks),
                      progress=progress, note=note or why, meta=dict(meta or {}))
    if resume:
        trainer.restore()
        _say(f"{d.name}: resuming at epoch {trainer.epoch}")
    trainer.fit()
    return load(d / "best" if (d / "best").exists() else d / "last")


def run_compress(cc: CompressConfig, rundir: str | Path) -> dict:
    """Run every stage; returns the report dict (also written to RUNDIR/report.json and report.md)."""
    from .api import load
    from .data import load_dataset
    from .data.readers import SplitNotFoundError
    from .model.spec import is_model_name, parse_model_name
    from .train.cli import default_data

    rundir = Path(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / "compress_config.json").write_text(json.dumps(dataclasses.asdict(cc), indent=1))
    timings: dict[str, float] = {}
    obb = cc.task == "obb"
    data = cc.data or str(default_data(cc.synth_images, cc.imgsz, cc.seed, obb=obb, zoom=cc.synth_zoom))
    model = cc.model
    if obb and is_model_name(model) and parse_model_name(model)[2] != "obb":
        model = f"{model}-obb"  # a model name: its oriented-box twin
    # recorded in every stage's checkpoint (and the ONNX metadata): `yolojax val CKPT` finds it without --data
    run_meta = {"data": str(data)}
    teacher_src = cc.teacher or str(rundir / "teacher" / "best")
    _say(f"data: {data}")
    train = load_dataset(data, "train")
    try:
        val = load_dataset(data, "val")
    except SplitNotFoundError:  # a val split that is declared but missing is an error, not a fallback
        _say("no val split: validating on the training images")
        val = train

    # 1. teacher -------------------------------------------------------------------------------------
    d = rundir / "teacher"
    t0 = time.time()
    if cc.teacher:
        teacher = load(cc.teacher)
        _say(f"teacher: using {cc.teacher} ({teacher.spec.name}, nc={teacher.spec.nc})")
        if teacher.spec.nc != train.nc:
            raise ValueError(f"--teacher {cc.teacher} has nc={teacher.spec.nc}, the data has {train.nc} classes")
    elif _done(d):
        teacher = load(d / "best")
        _say("teacher: done, skipped")
    else:
        _say(f"teacher: training {model} for {cc.epochs_teacher} epochs at {cc.imgsz}px")
        teacher = _train_stage(d, _train_config(cc, cc.epochs_teacher, len(train)), train, val, model,
                               progress=cc.progress, meta=run_meta)
        _mark_done(d, seconds=round(time.time() - t0, 1))
    timings["teacher"] = _stage_seconds(d, t0)

    # 2. sparsity training ---------------------------------------------------------------------------
    d = rundir / "sparse"
    t0 = time.time()
    if cc.epochs_sparse <= 0 or cc.sparsity <= 0:
        sparse = teacher
        _say("sparse: skipped (no sparsity epochs)")
    elif _done(d):
        sparse = load(d / "model")
        _say("sparse: done, skipped")
    else:
        cfg, tx, hook = sparse_pieces(cc, teacher, train)
        _say(f"sparse: L1 on BN gammas ({cc.sparsity_mode}, lambda {cc.sparsity:g}, {cc.sparsity_schedule}"
             f"{f', target {cc.sparsity_target:.0%} below 1e-2' if cc.sparsity_schedule == 'dynamic' else ''}) "
             f"for {cc.epochs_sparse} epochs")
        _train_stage(d, cfg, train, val, teacher, extra_tx=tx, hooks=(hook,), progress=cc.progress, meta=run_meta,
                     note=f"sparsity training of the teacher ({teacher_src}: {teacher.summary()})")
        # the last (sparsest) weights, not the most accurate: what pruning wants. (BN recalibration here
        # measured 0.788 -> 0.771 mAP50: the stage ends at a low learning rate, its statistics have caught up.)
        sparse = load(d / "last")
        _save_stage_model(sparse, d / "model")
        _mark_done(d, seconds=round(time.time() - t0, 1))
    timings["sparse"] = _stage_seconds(d, t0)

    # 3. pruning -------------------------------------------------------------------------------------
    d = rundir / "pruned"
    t0 = time.time()
    if _done(d):
        pruned = load(d)
        _say("pruned: done, skipped")
    else:
        pruned = _prune(cc, sparse, d, train, meta=run_meta)
        _mark_done(d, seconds=round(time.time() - t0, 1))
    timings["pruned"] = _stage_seconds(d, t0)

    # 4. fine-tune with distillation -----------------------------------------------------------------
    d = rundir / "finetune"
    t0 = time.time()
    if _done(d):
        finetuned = load(d / "best")
        _say("finetune: done, skipped")
    else:
        cfg = _train_config(cc, cc.epochs_finetune, len(train), warmup_epochs=0.5)
        _say(f"finetune: {cc.epochs_finetune} epochs, distillation: {cc.distill}")
        if cc.distill == "none":
            finetuned = _train_stage(d, cfg, train, val, pruned, progress=cc.progress, meta=run_meta,
                                     note=f"fine-tuning of the pruned model ({rundir / 'pruned'}: {pruned.summary()})")
        else:
            from distill.train import distill_finetune
            from .train.checkpoints import resume_info
            distill_finetune(teacher, pruned, train, val, cfg, method=cc.distill, rundir=d, progress=cc.progress,
                             resume=resume_info(d) is not None, meta=run_meta,
                             note=f"fine-tuning of the pruned model ({rundir / 'pruned'}: {pruned.summary()}) with "
                                  f"{cc.distill} distillation from the teacher ({teacher_src})")
            finetuned = load(d / "best" if (d / "best").exists() else d / "last")
        _mark_done(d, seconds=round(time.time() - t0, 1))
    timings["finetune"] = _stage_seconds(d, t0)

    # 4b. quantization-aware fine-tuning (optional) ----------------------------------------------------------
    qat_model = None
    if cc.qat_epochs > 0:
        d = rundir / "qat"
        t0 = time.time()
        if _done(d):
            _say("qat: done, skipped")
        else:
            from distill.train import distill_finetune
            from .train.checkpoints import resume_info
            from .train.config import TrainConfig
            _say(f"qat: {cc.qat_epochs} epochs of quantization-aware fine-tuning (distillation: {cc.distill}, "
                 f"{7 if cc.qat_reduce_range else 8}-bit weights)")
            cfg = TrainConfig(epochs=cc.qat_epochs, batch=cc.batch, imgsz=cc.imgsz, workers=cc.workers,
                              optimizer="adamw", lr0=cc.qat_lr, lrf=0.1, warmup_epochs=0, mosaic=False,
                              nbs=cc.nbs, seed=cc.seed)
            distill_finetune(teacher, finetuned, train, val, cfg, method=cc.distill, rundir=d, progress=cc.progress, resume=resume_info(d) is not None, meta=run_meta,
                             qat=True, qat_reduce_range=cc.qat_reduce_range,
                             note=f"quantization-aware fine-tuning of {rundir / 'finetune' / 'best'}")
            _mark_done(d, seconds=round(time.time() - t0, 1))
        qat_model = load(d / "last")  # no selection on the validation split the report scores
        timings["qat"] = _stage_seconds(d, t0)

    # 5. export --------------------------------------------------------------------------------------
    d = rundir / "export"
    t0 = time.time()
    onnx_path = None
    if cc.export == "onnx":
        onnx_path = d / "model.onnx"
        if not _done(d):
            from export.check import check_onnx
            from export.onnx_emit import export_onnx
            export_onnx(finetuned, onnx_path, imgsz=cc.imgsz, dynamic=True, metadata=run_meta)
            report = check_onnx(onnx_path, finetuned)
            (d / "check.json").write_text(json.dumps(report, indent=1, default=str))
            if not report["passed"]:
                raise RuntimeError(f"exported ONNX failed its checks: {report['errors']}")
            if qat_model is not None:
                from export.int8 import quantize_int8
                q32 = export_onnx(qat_model, d / "qat_fp32.onnx", imgsz=cc.imgsz, dynamic=True, metadata=run_meta)
                qm = qat_model.meta["qat"]
                check = d / "int8_check_images.txt"  # the ranges are trained: images only for the closeness check
                check.write_text("".join(f"{r.path}\n" for r in val.records[:8]))
                rep = quantize_int8(q32, d / "model_int8.onnx", qat_model, calib_data=check, ranges=qm["ranges"],
                                    keep_float=list(qm["float_convs"]), reduce_range=bool(qm["reduce_range"]))
                (d / "int8.json").write_text(json.dumps(rep, indent=1, default=str))
            _mark_done(d, onnx=str(onnx_path), seconds=round(time.time() - t0, 1))
        _say(f"export: {onnx_path} (checked against ONNX Runtime)"
             + (f"; {d / 'model_int8.onnx'} (INT8 with the QAT ranges)" if qat_model is not None else ""))
    timings["export"] = _stage_seconds(d, t0)

    # 6. report --------------------------------------------------------------------------------------
    t_report = time.time()
    from .report import build_report
    models = {"baseline": teacher, "sparse": sparse, "pruned": pruned, "finetuned": finetuned}
    paths = {"baseline": Path(cc.teacher) if cc.teacher else rundir / "teacher" / "best",
             "sparse": rundir / "sparse" / "model", "pruned": rundir / "pruned", "finetuned": rundir / "finetune" / "best"}
    paths = {k: (p / "variables" if (p / "variables").is_dir() else p) for k, p in paths.items() if p.exists()}
    int8_path = rundir / "export" / "model_int8.onnx"
    int8 = (int8_path, qat_model) if qat_model is not None and int8_path.exists() else None
    report = build_report(cc, rundir, models, val, onnx_path=onnx_path, timings=timings, paths=paths, int8=int8)
    from pruning.sparsity import gamma_stats
    for name, det in models.items():
        report["stages"][name]["gamma_below_1e-2"] = round(gamma_stats(det.variables["params"])["frac_lt_1e-2"], 4)
    prune_rep = rundir / "pruned" / "prune_report.json"
    report["checks"] = stage_checks(
        report["stages"], teacher_history=_history(rundir / "teacher") if not cc.teacher else None,
        near_zero=json.loads(prune_rep.read_text()).get("near_zero") if prune_rep.exists() else None, cc=cc)
    for c in report["checks"]:
        _say(f"check: {c['text']}")
    # wall time of the whole pipeline: its stages as they ran (also across reruns that skipped them) + this report
    report["wall_time_s"] = round(sum(timings.values()) + time.time() - t_report, 1)
    report["config"] = dataclasses.asdict(cc)
    # report.json: one key per stage (params, gflops, map50, map50_95, ort_ms, ...) and `meta`
    flat = {**report["stages"], "meta": {k: v for k, v in report.items() if k != "stages"}}
    (rundir / "report.json").write_text(json.dumps(flat, indent=1, default=float))
    from .report import write_markdown
    write_markdown(report, rundir / "report.md")
    _say(f"report: {rundir / 'report.md'} ({report['wall_time_s']:.0f} s)")
    return report


def _history(d: Path) -> list[dict] | None:
    f = d / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def convergence(history: list[dict] | None, window: float = CONVERGED_WINDOW, key: str = "val/map50") -> dict | None:
    """How much `key` moved over the last `window` share of a training run's epochs (at least 2 epochs).

    'trend' is the least-squares line's rise over the window, robust to the +-0.5-point epoch-to-epoch noise of
    a small validation set; 'change' is last minus first, 'spread' max minus min (that noise included).
    Converged: |trend| < 1 point. Returns {'epochs', 'window', 'first', 'last', 'change', 'trend', 'spread',
    'converged'}."""
    vals = [row[key] for row in history or () if key in row]
    if len(vals) < 2:
        return None
    k = max(2, int(round(window * len(vals))))
    tail = vals[-k:]
    t = list(range(k))
    tm, vm = sum(t) / k, sum(tail) / k
    slope = sum((a - tm) * (v - vm) for a, v in zip(t, tail)) / sum((a - tm) ** 2 for a in t)
    trend = slope * (k - 1)
    return {"epochs": len(vals), "window": k, "first": tail[0], "last": tail[-1], "change": tail[-1] - tail[0],
            "trend": trend, "spread": max(tail) - min(tail), "converged": abs(trend) < CONVERGED_TOL}


# What each stage must show for the method to be working (issue 13's bar): the sparse model keeps 95% of the
# teacher's mAP50 with >= 40% of its gammas ~0; pruning to half the GFLOPs keeps 80% before fine-tuning; the
# student ends within 3% of the teacher and not above it by more than noise.
GOALS = {"sparse_share": 0.40, "sparse_map": 0.95, "prune_map": 0.80, "student_map": 0.97, "student_above": 0.01}


def stage_checks(stages: dict, *, teacher_history: list[dict] | None, near_zero: dict | None, cc) -> list[dict]:
    """One line per stage saying whether it did its job, with the numbers behind it."""
    out = []
    base, sparse, pruned, fin = (stages.get(k) for k in ("baseline", "sparse", "pruned", "finetuned"))
    conv = convergence(teacher_history)
    if conv is None:
        why = ("given (--teacher), convergence not measured here" if cc.teacher else
               "fewer than 2 validated epochs: convergence cannot be judged")
        out.append({"stage": "teacher", "ok": None, "text": f"teacher: {why}"})
    else:
        out.append({"stage": "teacher", "ok": conv["converged"], **conv, "text":
                    f"teacher: val mAP50 trend {conv['trend']:+.4f} over its last {conv['window']} of "
                    f"{conv['epochs']} epochs (least-squares; first to last {conv['change']:+.4f}, epoch-to-epoch "
                    f"spread {conv['spread']:.4f}): "
                    + ("converged" if conv["converged"] else f"NOT converged (|trend| >= {CONVERGED_TOL})")})
    if sparse is not None and base is not None and sparse is not base and cc.epochs_sparse > 0:
        share, ratio = sparse["gamma_below_1e-2"], sparse["map50"] / max(base["map50"], 1e-9)
        ok = share >= GOALS["sparse_share"] and ratio >= GOALS["sparse_map"]
        out.append({"stage": "sparse", "ok": ok, "share": share, "map_ratio": ratio, "text":
                    f"sparse: {share:.1%} of prunable BN gammas below 1e-2 (goal >= {GOALS['sparse_share']:.0%}), "
                    f"mAP50 {sparse['map50']:.4f} = {ratio:.3f}x the teacher's (goal >= {GOALS['sparse_map']}): "
                    + ("ok" if ok else "MISSED")})
    if pruned is not None and sparse is not None:
        ratio = pruned["map50"] / max(sparse["map50"], 1e-9)
        fl = pruned["gflops"] / max(base["gflops"], 1e-9)
        ok = ratio >= GOALS["prune_map"]
        nz = ""
        if near_zero:
            nz = (f"; removed {near_zero['removed_total']:,} of {near_zero['prunable']:,} channels, "
                  f"{near_zero['removed']:,} of them near zero")
        out.append({"stage": "pruned", "ok": ok, "map_ratio": ratio, "gflops_ratio": fl, "text":
                    f"pruning: {fl:.2f}x the teacher's GFLOPs{nz}; mAP50 before fine-tuning {pruned['map50']:.4f} = "
                    f"{ratio:.3f}x the sparse model's (prune-time drop {pruned['map50'] - sparse['map50']:+.4f}; "
                    f"goal >= {GOALS['prune_map']}x): " + ("ok" if ok else "MISSED")})
    if fin is not None and base is not None:
        ratio = fin["map50"] / max(base["map50"], 1e-9)
        above = fin["map50"] - base["map50"]
        ok = ratio >= GOALS["student_map"] and above <= GOALS["student_above"]
        out.append({"stage": "finetuned", "ok": ok, "map_ratio": ratio, "text":
                    f"student: mAP50 {fin['map50']:.4f} = {ratio:.3f}x the teacher's {base['map50']:.4f} "
                    f"(goal >= {GOALS['student_map']}x and not above by more than {GOALS['student_above']}) at "
                    f"{fin['gflops'] / max(base['gflops'], 1e-9):.2f}x its GFLOPs, "
                    f"{fin['params'] / max(base['params'], 1):.2f}x its params: " + ("ok" if ok else "MISSED")})
    return out


def _recalibrated(det, train, cc: CompressConfig):
    """The Detector with BN running statistics re-estimated on training images (yolojax.train.recalibrate)."""
    import dataclasses as dc
    from .train.recalibrate import recalibrate_bn
    variables = recalibrate_bn(det.spec, det.variables, train, cc.imgsz, seed=cc.seed, workers=min(cc.workers, 2))
    return dc.replace(det, variables=variables, meta={**dict(det.meta), "bn_recalibrated": True})


def _save_stage_model(det, d: Path) -> None:
    """Write a stage's own model directory (the pipeline owns RUNDIR/<stage>/, so it may replace it)."""
    if d.exists():
        shutil.rmtree(d)
    det.save(d)


def _prune(cc: CompressConfig, model, d: Path, train=None, meta=None):
    """Structured pruning of `model` by the configured policy; writes the checkpoint, report and plot to d."""
    import pruning
    from pruning.cli import plot_channels, policy_words
    from .api import Detector
    from .model.counting import count_flops
    kw = dict(round_to=cc.round_to)
    by_policy = {"layer": pruning.LayerRatio, "group": pruning.GroupPolicy, "global": pruning.GlobalRatio}
    if cc.policy not in by_policy:
        raise ValueError(f"unknown pruning policy {cc.policy!r}; one of {sorted(by_policy)}")
    if cc.prune_ratio:
        policy = by_policy[cc.policy](ratio=cc.prune_ratio, **kw)
    elif cc.target_ms:
        if train is None:
            raise ValueError("a latency target ranks channels by Taylor importance: pass the training set")
        # importance per millisecond needs importances comparable across layers: |gamma| is not (measured on the
        # demo's sparse model at 0.5x latency, BN statistics re-estimated: mAP50 before fine-tuning 0.05 with
        # |gamma|, 0.87 with Taylor; benchmarks/results/latency_vs_flops.md)
        from pruning.sparsity import TaylorScores, taylor_importance
        _say("pruned: Taylor importance of every channel on 8 training batches")
        tay = taylor_importance(model.spec, model.variables, train, cc.imgsz, workers=cc.workers, seed=cc.seed)
        policy = pruning.LatencyTarget(target_ms=cc.target_ms, backend="onnxruntime", imgsz=cc.imgsz,
                                       prune_below=cc.prune_below, importance=TaylorScores(tay), **kw)
    else:
        target = cc.target_flops or cc.flops_ratio * count_flops(model.spec, cc.imgsz)
        base = None if cc.policy == "global" else by_policy[cc.policy](ratio=0.0, **kw)
        policy = pruning.Budget(target_gflops=target, imgsz=cc.imgsz, base=base, prune_below=cc.prune_below, **kw)
    _say(f"pruned: {policy_words(policy)}")
    latency = None
    if cc.target_ms:  # the table's plan, measured end to end and re-planned while it misses by more than 5%
        from pruning.latency import default_threads, measure_ms, plan_measured
        masks, latency = plan_measured(
            model.spec, model.variables, policy,
            lambda s, v: measure_ms(s, v, "onnxruntime", cc.imgsz, 1, default_threads(), reps=30), rounds=2, log=_say)
    else:
        masks = pruning.plan(model.spec, model.variables, policy)
    spec, variables = pruning.apply_masks(model.spec, model.variables, masks)
    rep = pruning.prune_report(model.spec, spec, imgsz=cc.imgsz)
    if latency is not None:
        rep["latency"] = {"target_ms": cc.target_ms, "backend": "onnxruntime", "imgsz": cc.imgsz, "batch": 1,
                          "plans": latency, "table": str(policy.model.table.path)}
    # what the sparse stage made: channels near zero in every coupled BN, and how many of them went
    zero = pruning.near_zero_masks(model.spec, model.variables, cc.prune_below or 1e-2)
    removed = {k: ~m for k, m in masks.items()}
    rep["near_zero"] = {"threshold": cc.prune_below or 1e-2,
                        "channels": int(sum(z.sum() for z in zero.values())),
                        "removed": int(sum((zero[k] & removed[k]).sum() for k in masks)),
                        "removed_total": int(sum(r.sum() for r in removed.values())),
                        "prunable": int(sum(len(z) for z in zero.values()))}
    det = Detector(spec, variables, {**dict(model.meta), **dict(meta or {}), "pruning": [policy.describe()]})
    if train is not None:  # folding is exact only away from padded borders: re-estimate BN statistics
        det = _recalibrated(det, train, cc)
    _save_stage_model(det, d)
    (d / "prune_report.json").write_text(json.dumps(rep, indent=1, default=float))
    plot_channels(rep, d / "channels.png")
    nz = rep["near_zero"]
    _say(f"pruned: removed {nz['removed_total']:,} of {nz['prunable']:,} channels ({nz['removed']:,} of the "
         f"{nz['channels']:,} with |gamma| < {nz['threshold']:g}); params {rep['params_before']:,} -> "
         f"{rep['params_after']:,}, GFLOPs@{cc.imgsz} {rep['gflops_before']:.3f} -> {rep['gflops_after']:.3f}")
    return det


def add_compress_args(p) -> None:
    f = {x.name: x.default for x in dataclasses.fields(CompressConfig)}
    p.add_argument("--data", default=None,
                   help="dataset (data .yaml, folder or COCO .json; any supported format); default: the built-in "
                        "synthetic aerial set, generated once under runs/synth/")
    p.add_argument("--model", default=f["model"], help="model name (yolov8n..x, yolov8n-p2..x-p2 for small objects, tiny) or "
                   "checkpoint the teacher is trained from")
    p.add_argument("--teacher", default=None, help="trained model to compress (skips teacher training)")
    p.add_argument("--task", default=f["task"], choices=["detect", "obb"], help="obb: oriented boxes (DOTA-style)")
    p.add_argument("-o", "--output", default="runs/compress",
                   help="run directory: one folder per stage, report.md and report.json")
    p.add_argument("--imgsz", type=int, default=f["imgsz"], help="square image size of every stage")
    p.add_argument("--batch", type=int, default=f["batch"], help="batch size of every training stage")
    p.add_argument("--workers", type=int, default=f["workers"], help="data loading processes")
    p.add_argument("--epochs-teacher", type=int, default=f["epochs_teacher"], help="epochs of teacher training")
    p.add_argument("--epochs-sparse", type=int, default=f["epochs_sparse"],
                   help="epochs of sparsity training (0: skip the stage)")
    p.add_argument("--epochs-finetune", type=int, default=f["epochs_finetune"],
                   help="epochs of fine-tuning the pruned model")
    p.add_argument("--optimizer", default=f["optimizer"], choices=["sgd", "adamw", "auto"],
                   help="optimizer of every training stage")
    p.add_argument("--lr0", type=float, default=f["lr0"], help="initial learning rate of every stage")
    p.add_argument("--nbs", type=int, default=f["nbs"], help="nominal batch size: gradients accumulate to it (Ultralytics: 64)")
    p.add_argument("--sparsity", type=float, default=f["sparsity"],
                   help="L1 rate on BN gammas: lambda (prox: shrink lr * lambda per update); with the dynamic "
                        "schedule, lambda's floor (prox) or its start (grad)")
    p.add_argument("--sparsity-mode", default=f["sparsity_mode"], choices=["prox", "grad"],
                   help="prox: proximal step after the optimizer (L1 under any optimizer); grad: sign(gamma) "
                        "added to the gradient (the seed's form; only L1 under SGD)")
    p.add_argument("--sparsity-schedule", default=f["sparsity_schedule"], choices=["constant", "decay", "dynamic"],
                   help="constant rate, the seed's linear decay, or dynamic: driven toward --sparsity-target")
    p.add_argument("--sparsity-target", type=float, default=f["sparsity_target"],
                   help="dynamic schedule: share of BN gammas to drive below 1e-2")
    p.add_argument("--sparsity-beta", type=float, default=f["sparsity_beta"], help="L1 rate on BN betas")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prune-ratio", type=float, default=None, help="share of channels to remove (by --policy)")
    g.add_argument("--target-flops", type=float, default=None, help="GFLOPs budget at --imgsz (found by search)")
    g.add_argument("--target-ms", type=float, default=None,
                   help="latency target in ms (ONNX Runtime on this machine at --imgsz, batch 1; a measured "
                        "latency table, cached) in place of the GFLOPs budget")
    g.add_argument("--flops-ratio", type=float, default=f["flops_ratio"],
                   help="GFLOPs budget as a share of the baseline's")
    p.add_argument("--policy", default=f["policy"], choices=["global", "group", "layer"],
                   help="channel ranking: global, per (part, scale, kind) group, or the same share per layer")
    p.add_argument("--round-to", type=int, default=f["round_to"], help="kept channels round up to a multiple of this")
    p.add_argument("--prune-below", type=float, default=f["prune_below"],
                   help="remove channels whose BN |gamma| is below this first (what the sparse stage zeroed)")
    p.add_argument("--distill", default=f["distill"], choices=["cwd", "sad", "logit", "cwd+logit", "none"],
                   help="distillation from the teacher while fine-tuning (none: plain fine-tuning)")
    p.add_argument("--qat", dest="qat_epochs", type=int, default=f["qat_epochs"], metavar="EPOCHS",
                   help="quantization-aware fine-tuning epochs after the fine-tune (0: none); the export stage then "
                        "also writes model_int8.onnx with the trained ranges and the report scores it")
    p.add_argument("--qat-lr", type=float, default=f["qat_lr"], help="AdamW learning rate of the QAT epochs")
    p.add_argument("--qat-reduce-range", action="store_true", help="QAT with 7-bit weights (x86 CPUs without VNNI)")
    p.add_argument("--export", default=f["export"], choices=["onnx", "none"], help="export the fine-tuned model")
    p.add_argument("--bench-runs", type=int, default=f["bench_runs"], help="timed runs per model for the latency columns")
    p.add_argument("--synth-images", type=int, default=f["synth_images"], help="built-in synthetic set: number of images")
    p.add_argument("--synth-zoom", type=float, default=f["synth_zoom"],
                   help="built-in synthetic set: object scale (2 = objects twice the 256-px size)")
    p.add_argument("--seed", type=int, default=f["seed"], help="random seed")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def config_from_args(args) -> CompressConfig:
    names = {x.name for x in dataclasses.fields(CompressConfig)}
    return CompressConfig(**{k: v for k, v in vars(args).items() if k in names})


def cmd_compress(args) -> int:
    from .train.cli import check_args
    check_args(args)  # impossible sizes and rates: one line before any work
    for name in ("epochs_teacher", "epochs_sparse", "epochs_finetune"):
        if getattr(args, name) < 0:
            from .errors import UserError
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    report = run_compress(config_from_args(args), args.output)
    print((Path(args.output) / "report.md").read_text())
    return 0 if report else 1


def register(sub) -> None:
    p = sub.add_parser("compress", help="the whole pipeline: teacher, sparsity, pruning, distillation, export, report",
                       description="Train a teacher, sparsity-train it (L1 on BN gammas), prune it to a budget, "
                                   "fine-tune the pruned model with distillation, export it to ONNX, and write "
                                   "OUTPUT/report.md. Each stage writes OUTPUT/<stage>/; a rerun skips finished "
                                   "stages and resumes an interrupted one. The defaults are the README's demo.")
    add_compress_args(p)
    p.set_defaults(func=cmd_compress)
