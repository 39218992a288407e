"""Training hyper-parameters (Ultralytics defaults unless stated)."""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch: int = 16               # global batch (all devices, all hosts)
    imgsz: int = 640
    optimizer: str = "auto"       # sgd | adamw | auto (Ultralytics: AdamW for < 10k iterations, else SGD)
    lr0: float = 0.01
    lrf: float = 0.01             # final lr = lr0 * lrf (linear decay)
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nbs: int = 64                 # nominal batch size: gradient accumulation and weight-decay scaling
    clip_norm: float = 10.0
    ema: bool = True
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    close_mosaic: int = 10
    mosaic: bool = True
    augment: bool = True          # False: letterbox only (overfitting checks, debugging)
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    seed: int = 0
    workers: int = 4
    dtype: str = "float32"        # compute dtype: float32 | bfloat16 (GPU/TPU)
    val_every: int = 1            # validate every N epochs (and always after the last)
    save_every_steps: int = 0     # also checkpoint the training state every N micro-steps (0: per epoch only)
    keep_checkpoints: int = 2     # training-state checkpoints kept in RUNDIR/checkpoints (the newest)
    max_boxes: int | None = None
    # sparsity training (network slimming): L1 on BN gammas
    sparsity: float = 0.0
    sparsity_mode: str = "prox"   # prox: proximal step after the optimizer (lr-scaled); grad: sign(gamma) gradient
    sparsity_schedule: str = "constant"
    sparsity_target: float = 0.5
    sparsity_beta: float = 0.0
    sparsity_ramp: float = 0.5    # dynamic: share of the run over which the target is approached
    sparsity_max: float = 0.0     # dynamic prox: ceiling of lambda (0: none)

    def resolve_optimizer(self, steps_per_epoch: int, nc: int) -> tuple[str, float, float]:
        """(name, lr0, momentum) after Ultralytics' `auto` rule."""
        if self.optimizer != "auto":
            return self.optimizer, self.lr0, self.momentum
        iterations = math.ceil(steps_per_epoch * self.epochs * self.batch / max(self.nbs, self.batch)) * 1
        if iterations > 10_000:
            return "sgd", 0.01, 0.9
        return "adamw", round(0.002 * 5 / (4 + nc), 6), 0.9

    def accumulate(self) -> int:
        return max(round(self.nbs / self.batch), 1)

    def scaled_weight_decay(self) -> float:
        return self.weight_decay * self.batch * self.accumulate() / self.nbs
