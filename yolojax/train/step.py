"""The pure, jitted parts of training and inference: TrainState, train_step, predict."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ..eval.nms import non_max_suppression
from ..eval.obb import rotated_nms
from ..loss import LossConfig, detection_loss
from ..loss.obb import obb_loss
from ..model.modules import BN_MOMENTUM
from ..model.spec import Spec
from ..model.yolov8 import YOLOv8

# extra_loss(aux_params, preds, feats, images, batch, teacher) -> (loss, items): distillation and friends
ExtraLoss = Callable[[Any, dict, dict, jax.Array, dict, Any], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array             # batches done (micro-steps)
    params: Any                 # model params
    batch_stats: Any
    aux: Any                    # extra trainable params (e.g. distillation adapters); {} when none
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    ema_updates: jax.Array      # optimizer updates seen by the EMA

    @property
    def trainable(self):
        return {"model": self.params, "aux": self.aux}

    def ema_variables(self) -> dict:
        return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_state(variables: dict, tx: optax.GradientTransformation, aux: Any = None) -> TrainState:
    aux = {} if aux is None else aux
    params, stats = variables["params"], variables["batch_stats"]
    cast = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)  # noqa: E731
    params, stats = cast(params), cast(stats)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats, aux=cast(aux),
                      opt_state=tx.init({"model": params, "aux": cast(aux)}),
                      # copies: the EMA must not alias the live buffers (the step donates its state)
                      ema_params=jax.tree.map(jnp.copy, params), ema_batch_stats=jax.tree.map(jnp.copy, stats),
                      ema_updates=jnp.zeros((), jnp.float32))


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(spec: Spec, tx: optax.GradientTransformation, *, accumulate: int = 1,
                    loss_cfg: LossConfig = LossConfig(), ema_decay: Callable | None = None,
                    extra_loss: ExtraLoss | None = None, dtype: Any = None,
                    bn_warmup: bool = True, model: Any = None) -> Callable:
    """train_step(state, batch, teacher) -> (state, metrics), pure; jit it with the shardings you want.

    batch: images uint8 [B,S,S,3], boxes [B,M,4] xyxy px, classes [B,M], mask [B,M], ignore [B,M]
    (+ obb [B,M,5] for an obb spec, whose loss is `obb_loss`).
    A step whose loss or gradients are not finite leaves the state unchanged and reports finite=False,
    so the caller can stop with the last good state intact.

    bn_warmup: BN running statistics use a cumulative average over the first 1/(1-momentum) = 33 steps, then
    the usual exponential one. Plain EMA keeps 0.97^t of the initial (mean 0, var 1) for hundreds of steps,
    which breaks eval-mode outputs of short runs (and of fine-tuning a model whose statistics changed).
    model: what runs the forward (default YOLOv8(spec, dtype)); anything with YOLOv8's `apply`, e.g.
    `yolojax.model.quant.QATModel` for quantization-aware training.
    """
    model = model if model is not None else YOLOv8(spec, dtype=dtype)
    task_loss = obb_loss if spec.task == "obb" else detection_loss

    def train_step(state: TrainState, batch: dict, teacher: Any = None):
        images = batch["images"].astype(jnp.float32) / 255.0

        def loss_fn(trainable):
            (preds, feats), upd = model.apply({"params": trainable["model"], "batch_stats": state.batch_stats},
                                              images, train=True, mutable=["batch_stats"])
            loss, items = task_loss(preds, batch, nc=spec.nc, reg_max=spec.reg_max, cfg=loss_cfg)
            if extra_loss is not None:
                eloss, eitems = extra_loss(trainable["aux"], preds, feats, images, batch, teacher)
                loss = loss + eloss
                items = {**items, **eitems}
            return loss, (items, upd["batch_stats"])

        trainable = state.trainable
        (loss, (items, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        if bn_warmup:
            # Flax gave old + (1-m)(batch - old); rescale the step to weight max(1-m, 1/(t+1))
            w = jnp.maximum(1.0 - BN_MOMENTUM, 1.0 / (state.step.astype(jnp.float32) + 1.0))
            scale = w / (1.0 - BN_MOMENTUM)
            new_stats = jax.tree.map(lambda n, o: o + scale * (n - o), new_stats, state.batch_stats)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new = optax.apply_updates(trainable, updates)
        stepped = (state.step + 1) % accumulate == 0
        ema_updates = state.ema_updates + stepped.astype(jnp.float32)
        if ema_decay is not None:
            d = jnp.where(stepped, ema_decay(ema_updates), 1.0)
            mix = lambda e, m: d * e + (1.0 - d) * m  # noqa: E731
            ema_params = jax.tree.map(mix, state.ema_params, new["model"])
            ema_stats = jax.tree.map(mix, state.ema_batch_stats, new_stats)
        else:
            ema_params, ema_stats = new["model"], new_stats
        candidate = TrainState(step=state.step + 1, params=new["model"], batch_stats=new_stats, aux=new["aux"],
                               opt_state=opt_state, ema_params=ema_params, ema_batch_stats=ema_stats,
                               ema_updates=ema_updates)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        out = jax.tree.map(lambda n, o: jnp.where(finite, n, o), candidate, state)
        metrics = {"loss": loss, **items, "finite": finite,
                   "grad_norm": optax.global_norm(grads)}
        return out, metrics

    return train_step


def make_predict(spec: Spec, *, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                 multi_label: bool = True, dtype: Any = None, model: Any = None) -> Callable:
    """predict(variables, images uint8|float [B,S,S,3]) -> NMS'd detections (static shapes), jittable:
    boxes [B,max_det,4] xyxy, or for an obb spec [B,max_det,5] (cx,cy,w,h,angle) after rotated NMS (ProbIoU);
    scores, classes, valid [B,max_det]. model: as make_train_step's."""

    model = model if model is not None else YOLOv8(spec, dtype=dtype)

    def predict(variables, images):
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 255.0
        preds, _ = model.apply(variables, images, train=False)
        if spec.task == "obb":
            rboxes = jnp.concatenate([preds["boxes"], preds["angle"]], -1)
            return rotated_nms(rboxes, preds["scores"], conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)
        return non_max_suppression(preds["boxes"], preds["scores"], conf=conf, iou=iou, max_det=max_det,
                                   multi_label=multi_label)

    return predict
