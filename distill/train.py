"""Fine-tuning a (pruned) student with distillation from a frozen teacher, on the yolojax Trainer.

The trainer's hooks carry everything: `extra_loss` (built here) runs the teacher forward in eval mode and
adds the distillation terms to the detection loss, `teacher=` holds the teacher variables (replicated,
never differentiated, never in the optimizer), `aux=` holds the adapters (trained with the student, kept
only in RUNDIR/last/train_state, never in a model checkpoint).

    logs = distill_finetune(teacher, student, train, val, TrainConfig(epochs=100), method="cwd",
                            rundir="runs/kd")
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

import pruning
from yolojax.api import Detector
from yolojax.data.loader import Loader
from yolojax.model.counting import count_flops, count_params
from yolojax.model.quant import QATModel, calibrate_ranges, with_ranges
from yolojax.model.spec import Spec
from yolojax.model.yolov8 import YOLOv8
from yolojax.train.trainer import Trainer, resolve_model

from . import adapters as ad
from .losses import cwd_loss, logit_kd_loss, multi_scale, sad_loss

TERMS = ("cwd", "sad", "logit")
QAT_CALIB_IMAGES = 32  # training images (letterboxed, not augmented) the starting activation ranges come from
METHODS = ("none", "cwd", "sad", "logit", "cwd+logit", "sad+logit", "cwd+sad", "cwd+sad+logit")


def parse_method(method: str) -> tuple[str, ...]:
    """'cwd+logit' -> ('cwd', 'logit'); 'none' -> ()."""
    m = method.strip().lower()
    if m in ("none", ""):
        return ()
    terms = tuple(t.strip() for t in m.split("+"))
    bad = [t for t in terms if t not in TERMS]
    if bad or len(set(terms)) != len(terms):
        raise ValueError(f"distillation method {method!r}: expected 'none' or terms from {TERMS} joined by '+' "
                         f"(e.g. cwd+logit)")
    return tuple(t for t in TERMS if t in terms)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """What to distil and how much.

    Every term is a per-image value (like the detection loss items box/cls/dfl); the trainer adds
    loss_weight * sum(term weights * terms) * batch size, the detection loss's convention. Defaults were set
    from magnitudes measured on a real batch (a trained yolov8n teacher at 160 px and its 50%-per-layer
    pruned student, start of fine-tuning, where box+cls+dfl = 8.1; docs/distillation.md):
      cwd_weight 5 with scale_weights (2, 1, 1): raw CWD (tau 1) is P3 0.65, P4 0.11, P5 0.035, so mmrazor's
        detection default (weight 10 on every level) would give 8.0, the size of the detection loss; 5 x
        (2, 1, 1) keeps that total (7.4) and moves the weight to P3, where small objects (VisDrone's) live;
      sad_weight 500 (Zagoruyko & Komodakis' beta/2 with beta = 1000): attention maps are unit vectors
        over H*W, so the mean squared difference is tiny (0.012 weighted): 500 makes it 5.9;
      cls_weight 1, dfl_weight 1 on anchors weighted by the teacher's max class score: 1.6 + 0.44, a quarter
        of the detection loss (whose own cls and dfl are 3.1 and 1.2).
    The mean of squared attention differences shrinks with the map size: at 640 px raise sad_weight.
    """

    method: str = "cwd"
    tau: float = 1.0                              # CWD temperature
    scale_weights: tuple[float, ...] = (2.0, 1.0, 1.0)  # per level, finest first (CWD, SAD); see level_weights
    loss_weight: float = 1.0                      # global multiplier of the whole distillation loss
    cwd_weight: float = 5.0
    sad_weight: float = 500.0
    cls_weight: float = 1.0
    dfl_weight: float = 1.0
    angle_weight: float = 1.0                     # obb only
    logit_tau: float = 1.0
    cls_mode: str = "bce"                         # bce | kl
    anchor_weighting: str = "score"               # score | threshold
    score_threshold: float = 0.25
    adapters: bool | None = None                  # None: where widths differ; True: every scale; False: none
    adapter_init: str = "lstsq"                   # lstsq (fit on a training batch) | random
    adapter_bias: bool = True

    def __post_init__(self):
        parse_method(self.method)
        sw = tuple(float(w) for w in self.scale_weights)
        if not 1 <= len(sw) <= 4 or any(w < 0 for w in sw):
            raise ValueError(f"scale_weights must be 1-4 non-negative numbers (finest level first), got "
                             f"{self.scale_weights}")
        object.__setattr__(self, "scale_weights", sw)
        if self.tau <= 0 or self.logit_tau <= 0:
            raise ValueError(f"temperatures must be > 0, got tau={self.tau}, logit_tau={self.logit_tau}")
        if self.cls_mode not in ("bce", "kl"):
            raise ValueError(f"cls_mode must be bce|kl, got {self.cls_mode!r}")
        if self.anchor_weighting not in ("score", "threshold"):
            raise ValueError(f"anchor_weighting must be score|threshold, got {self.anchor_weighting!r}")
        if self.adapter_init not in ("lstsq", "random"):
            raise ValueError(f"adapter_init must be lstsq|random, got {self.adapter_init!r}")

    @property
    def terms(self) -> tuple[str, ...]:
        return parse_method(self.method)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_pair(teacher: Spec, student: Spec) -> None:
    """Teacher and student must predict the same thing."""
    for what in ("nc", "task", "reg_max", "strides"):
        a, b = getattr(teacher, what), getattr(student, what)
        if a != b:
            raise ValueError(f"teacher and student differ in {what}: {a} vs {b}; distillation needs the same head")


def adapter_scales(teacher: Spec, student: Spec, dcfg: DistillConfig) -> tuple[str, ...]:
    """Scales whose student features go through an adapter (only CWD compares channels one to one)."""
    if "cwd" not in dcfg.terms:
        return ()
    scales = ad.needed_scales(student, teacher, dcfg.adapters)
    ws, wt = ad.neck_widths(student), ad.neck_widths(teacher)
    missing = [k for k in ws if ws[k] != wt[k] and k not in scales]
    if missing:
        raise ValueError(f"CWD compares channels one to one, but the student's {', '.join(missing)} widths "
                         f"({', '.join(str(ws[k]) for k in missing)}) differ from the teacher's "
                         f"({', '.join(str(wt[k]) for k in missing)}); enable adapters")
    return scales


def make_distill_loss(teacher_spec: Spec, student_spec: Spec, dcfg: DistillConfig, *,
                      dtype: Any = None) -> Callable:
    """The trainer's extra_loss(aux, preds, feats, images, batch, teacher_variables) -> (loss, items).

    Runs the teacher forward in eval mode (no BN updates), stops gradients on every teacher output, and
    returns loss = loss_weight * sum of the weighted terms * B with items distill_cwd, distill_sad,
    distill_cls, distill_dfl (distill_angle for obb), each already weighted (per image), and distill (their
    sum). aux: {'adapters': {scale: {kernel, bias}}} or {}.
    """
    check_pair(teacher_spec, student_spec)
    terms = dcfg.terms
    if not terms:
        raise ValueError("method 'none' has no distillation loss; train without extra_loss")
    scales = adapter_scales(teacher_spec, student_spec, dcfg)
    teacher_model = YOLOv8(teacher_spec, dtype=dtype)
    lw = dcfg.loss_weight

    def extra_loss(aux, preds, feats, images, batch, teacher):
        if teacher is None:
            raise ValueError("distillation needs the teacher variables: Trainer(teacher=...)")
        t_preds, t_feats = teacher_model.apply(teacher, images, train=False)
        t_preds, t_feats = jax.lax.stop_gradient((t_preds, t_feats))
        items: dict[str, jax.Array] = {}
        if "cwd" in terms:
            adapters = (aux or {}).get("adapters", {})
            if set(adapters) != set(scales):
                raise ValueError(f"aux adapters for {sorted(adapters)}, expected {sorted(scales)}")
            s_feats = ad.apply_adapters(adapters, feats)
            v, _ = multi_scale(cwd_loss, s_feats, t_feats, dcfg.scale_weights, tau=dcfg.tau)
            items["distill_cwd"] = lw * dcfg.cwd_weight * v
        if "sad" in terms:
            v, _ = multi_scale(sad_loss, feats, t_feats, dcfg.scale_weights)
            items["distill_sad"] = lw * dcfg.sad_weight * v
        if "logit" in terms:
            parts = logit_kd_loss(preds, t_preds, reg_max=student_spec.reg_max, tau=dcfg.logit_tau,
                                  cls_mode=dcfg.cls_mode, weight_mode=dcfg.anchor_weighting,
                                  threshold=dcfg.score_threshold)
            items["distill_cls"] = lw * dcfg.cls_weight * parts["cls"]
            items["distill_dfl"] = lw * dcfg.dfl_weight * parts["dfl"]
            if "angle" in parts:
                items["distill_angle"] = lw * dcfg.angle_weight * parts["angle"]
        total = sum(items.values(), jnp.zeros((), jnp.float32))
        items["distill"] = total
        return total * images.shape[0], items

    return extra_loss


def _feature_batch(dataset, imgsz: int, n: int = 16) -> np.ndarray:
    """Up to n letterboxed training images, uint8 [n,S,S,3] (for fitting adapters)."""
    # max_boxes: only the images are used, but rows past it would warn
    loader = Loader(dataset, min(n, len(dataset)), imgsz, augment=False, workers=0, max_boxes=1024)
    try:
        loader.set_epoch(0)
        batch = next(iter(loader))
    finally:
        loader.close()
    return np.asarray(batch["images"])[np.asarray(batch["valid"], bool)]


def init_aux(teacher_spec: Spec, teacher_vars: Mapping, student_spec: Spec, student_vars: Mapping,
             dcfg: DistillConfig, *, images: np.ndarray | None = None, seed: int = 0) -> dict:
    """{'adapters': ...} for the scales that need one ({} when none): least squares on `images` (uint8
    [N,S,S,3]) when dcfg.adapter_init == 'lstsq' and images are given, else random.

    The student side is taken in train mode, as the loss sees it: a freshly pruned student's BN running
    statistics are stale (its inputs lost channels), so its eval-mode features are not the ones it trains on.
    """
    scales = adapter_scales(teacher_spec, student_spec, dcfg)
    if not scales:
        return {}
    if dcfg.adapter_init == "lstsq" and images is not None and len(images):
        x = jnp.asarray(images, jnp.float32) / 255.0
        fs = jax.jit(lambda v, x: YOLOv8(student_spec).apply(v, x, train=True, mutable=["batch_stats"])[0][1])(
            dict(student_vars), x)
        ft = jax.jit(lambda v, x: YOLOv8(teacher_spec).apply(v, x)[1])(dict(teacher_vars), x)
        return {"adapters": ad.fit_adapters(fs, ft, scales, bias=dcfg.adapter_bias)}
    return {"adapters": ad.init_adapters(seed, ad.neck_widths(student_spec), ad.neck_widths(teacher_spec), scales,
                                         bias=dcfg.adapter_bias)}


def prune_student(teacher, ratio: float, policy: str = "layer", **policy_kw):
    """Prune the teacher into a student (pruning's public API): Detector with meta['pruning'] recorded."""
    kinds = {"layer": pruning.LayerRatio, "global": pruning.GlobalRatio, "group": pruning.GroupPolicy}
    if policy not in kinds:
        raise ValueError(f"prune policy must be one of {sorted(kinds)}, got {policy!r}")
    pol = kinds[policy](ratio=ratio, **policy_kw)
    spec, variables = pruning.prune(teacher.spec, teacher.variables, pol)
    rep = pruning.prune_report(teacher.spec, spec, int(teacher.meta.get("imgsz", 640) or 640))
    record = {"policy": pol.describe() if hasattr(pol, "describe") else {"policy": policy, "ratio": ratio},
              **{k: rep[k] for k in ("params_before", "params_after", "gflops_before", "gflops_after", "imgsz")}}
    meta = {"pruning": list(teacher.meta.get("pruning", [])) + [record]}
    return Detector(spec, variables, meta)


def distill_finetune(teacher, student, train_data, val_data, cfg, method: str | None = None, *,
                     rundir: str | Path = "runs/distill", dcfg: DistillConfig | None = None,
                     progress: bool = True, note: str = "", meta: Mapping | None = None, epoch_hooks=(),
                     resume: bool = False, qat: bool = False, qat_float_convs: tuple[str, ...] = (),
                     qat_reduce_range: bool = False, **overrides) -> dict:
    """Fine-tune `student` (a yolojax Detector, usually pruned from `teacher`) on train_data with
    distillation from the frozen `teacher` Detector; returns the Trainer's last-epoch logs (losses incl.
    distill_* items, val/map50, val/map50_95, val/map_small, ...). Writes RUNDIR like `yolojax train`
    (last/, best/, results.csv, tb/) plus distill.json.

    method: 'none' | 'cwd' | 'sad' | 'logit' | 'cwd+logit' | ... (default: dcfg's, else 'cwd');
    overrides: DistillConfig fields (tau, scale_weights, loss_weight, cwd_weight, adapters, ...);
    cfg: yolojax.train.config.TrainConfig. resume: continue RUNDIR/last exactly (state, adapters, position).
    qat: quantization-aware fine-tuning (`yolojax.model.quant`): the student runs with the INT8 export's rounding
    simulated (BN frozen and folded, int8 per-channel weights, uint8 activations with ranges calibrated on
    training images, then tracked), the teacher in float; the saved models carry the ranges in meta['qat'], and
    `yolojax export --int8` uses them. Start from a trained student (its BN statistics are frozen).
    qat_float_convs: body convs the INT8 graph keeps float (`--int8-keep-float`); qat_reduce_range: 7-bit
    weights, for x86 CPUs without VNNI (see yolojax/model/quant.py).
    """
    dcfg = dcfg or DistillConfig()
    dcfg = dataclasses.replace(dcfg, method=dcfg.method if method is None else method, **overrides)
    check_pair(teacher.spec, student.spec)
    if teacher.spec.nc != train_data.nc:
        raise ValueError(f"teacher has nc={teacher.spec.nc} but {train_data.root} has {train_data.nc} classes")
    spec, variables, snote = resolve_model(student, train_data.nc, list(train_data.names), cfg.seed)
    t_vars = {"params": teacher.variables["params"], "batch_stats": teacher.variables["batch_stats"]}
    terms = dcfg.terms
    aux = {}
    if terms:
        images = _feature_batch(train_data, cfg.imgsz) if adapter_scales(teacher.spec, spec, dcfg) else None
        aux = init_aux(teacher.spec, t_vars, spec, variables, dcfg, images=images, seed=cfg.seed)
    extra = make_distill_loss(teacher.spec, spec, dcfg,
                              dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else None) if terms else None
    info = {"method": dcfg.method, "config": dcfg.to_dict(), "adapters": sorted(aux.get("adapters", {})),
            "teacher": {"source": str(teacher.meta.get("source", teacher.meta.get("path", ""))),
                        "params": count_params(teacher.spec), "gflops": count_flops(teacher.spec, cfg.imgsz)},
            "student": {"params": count_params(spec), "gflops": count_flops(spec, cfg.imgsz)}}
    run_meta = {k: v for k, v in dict(student.meta).items() if k == "pruning"}
    run_meta.update(dict(meta or {}))
    run_meta["distillation"] = info
    model = None
    if qat:
        model = QATModel(spec, tuple(qat_float_convs), bool(qat_reduce_range))
        x = _feature_batch(train_data, cfg.imgsz, n=QAT_CALIB_IMAGES)
        ranges = calibrate_ranges(spec, variables, [x[i:i + 8] for i in range(0, len(x), 8)],
                                  float_convs=model.float_convs)
        variables = with_ranges(variables, ranges)
        info["qat"] = {"float_convs": list(model.float_convs), "reduce_range": model.reduce_range,
                       "calib_images": int(len(x)), "sites": len(ranges)}
        snote += f"; QAT ({len(ranges)} activation ranges, {7 if qat_reduce_range else 8}-bit weights)"
    trainer = Trainer(cfg, Path(rundir), train_data, val_data, spec, variables, extra_loss=extra,
                      teacher=t_vars if terms else None, aux=aux or None, epoch_hooks=tuple(epoch_hooks),
                      progress=progress, note=note or f"{snote}; distill {dcfg.method}", meta=run_meta, model=model)
    if resume:
        trainer.restore()
    else:
        Path(rundir).mkdir(parents=True, exist_ok=True)
        (Path(rundir) / "distill.json").write_text(json.dumps(info, indent=1, default=str))
    return trainer.fit()
