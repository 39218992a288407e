"""Compression stage 3: fine-tuning pruned students with distillation from the unpruned teacher.

    from distill import distill_finetune, DistillConfig
    logs = distill_finetune(teacher, student, train, val, cfg, method="cwd+logit", rundir="runs/kd")

Losses (pure, NHWC): cwd_loss, sad_loss, attention_map, logit_kd_loss (cls/dfl/angle); adapters: 1x1 convs
as a params pytree (init_adapters, fit_adapters, apply_adapters). Names resolve lazily so that the CLI's
`--help` does not import JAX.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "losses": ("cwd_loss", "sad_loss", "attention_map", "multi_scale", "anchor_weights", "cls_kd_loss",
               "dfl_kd_loss", "angle_kd_loss", "logit_kd_loss"),
    "adapters": ("init_adapters", "fit_adapters", "apply_adapters", "neck_widths", "needed_scales"),
    "train": ("DistillConfig", "METHODS", "parse_method", "make_distill_loss", "init_aux", "distill_finetune",
              "prune_student", "check_pair"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
