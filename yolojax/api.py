"""The Python API: `Detector`, `load`, `from_ultralytics`."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint
from .model.spec import Spec, yolov8_spec
from .model.yolov8 import YOLOv8, init_variables
from .model import ultralytics as ul


@functools.lru_cache(maxsize=32)
def _jitted_apply(spec: Spec):
    model = YOLOv8(spec)

    @jax.jit
    def apply(variables, images):
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 255.0
        preds, feats = model.apply(variables, images, train=False)
        return preds, feats

    return apply


@dataclasses.dataclass(frozen=True)
class Detector:
    """A model: its spec and its variables ({'params', 'batch_stats'}). `dataclasses.replace` gives a new one.

    `Detector(images)` with images [B,H,W,3] (float in [0,1] or uint8; H, W multiples of 32) returns a dict:
    boxes [B,A,4] (cx,cy,w,h in input pixels), scores [B,A,nc] (sigmoid), plus the raw outputs
    (dist, logits, anchors, strides; angle for obb).
    """

    spec: Spec
    variables: Mapping[str, Any]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __call__(self, images) -> dict:
        images = jnp.asarray(images)
        if images.ndim == 3:
            images = images[None]
        h, w = images.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"image size {h}x{w} must be a multiple of 32 (letterbox it first)")
        preds, _ = _jitted_apply(self.spec)(self.variables, images)
        return preds

    def features(self, images) -> dict:
        """Neck features p3/p4/p5 [B,H/s,W/s,C]."""
        return _jitted_apply(self.spec)(self.variables, jnp.asarray(images))[1]

    @property
    def names(self) -> tuple[str, ...]:
        return self.spec.names or tuple(f"class{i}" for i in range(self.spec.nc))

    def num_params(self) -> int:
        from .model.counting import count_params
        return count_params(self.spec)

    def save(self, directory: str | Path, **meta) -> Path:
        return checkpoint.save_model(directory, self.spec, self.variables, {**self.meta, **meta})

    @classmethod
    def create(cls, variant: str | Spec = "n", nc: int = 80, *, seed: int = 0, names=()) -> "Detector":
        """A freshly initialised model of a named scale (or of a given spec)."""
        spec = variant if isinstance(variant, Spec) else yolov8_spec(variant, nc, names=names)
        return cls(spec, init_variables(spec, seed))


def from_ultralytics(path: str | Path, *, nc: int | None = None, variant: str | None = None) -> Detector:
    """Import Ultralytics weights from a `.pt` checkpoint (read without torch) or a state_dict `.npz`.

    Variant, nc and every width are inferred from the tensors; `nc`/`variant` if given are checked.
    """
    path = Path(path)
    if path.suffix == ".pt":
        state, meta = ul.state_dict_from_pt(path)
    elif path.suffix == ".npz":
        state, meta = ul.load_npz_state(path), {}
    else:
        raise ValueError(f"{path}: expected an Ultralytics .pt checkpoint or a state_dict .npz")
    spec, variables = ul.import_state_dict(None, state)
    if nc is not None and spec.nc != nc:
        raise ValueError(f"{path} holds nc={spec.nc}, not the requested nc={nc}")
    if variant is not None and spec.variant != variant.removeprefix("yolov8"):
        raise ValueError(f"{path} holds a yolov8{spec.variant}, not the requested {variant}")
    names = meta.get("names") or ()
    if names and len(names) == spec.nc:
        spec = spec.replace(names=tuple(names))
    variables = jax.tree.map(np.asarray, variables)
    return Detector(spec, variables, {"source": str(path), "ultralytics_version": meta.get("version")})


def load(path: str | Path, spec: Spec | None = None) -> Detector:
    """Load any model: a yolojax checkpoint dir (or a training run dir: its `best`, else `last`), an
    Ultralytics `.pt`/`.npz`, or a variant name like `yolov8n` (fresh weights)."""
    p = Path(path)
    if p.is_dir():
        if not checkpoint.is_model_dir(p):
            for sub in ("best", "last"):
                if checkpoint.is_model_dir(p / sub):
                    p = p / sub
                    break
        spec, variables, meta = checkpoint.load_model(p, spec)
        return Detector(spec, variables, meta)
    if p.suffix in (".pt", ".npz"):
        if not p.exists():
            raise FileNotFoundError(p)
        return from_ultralytics(p)
    name = str(path)
    if name.startswith("yolov8") and not p.exists():
        return Detector.create(name.removeprefix("yolov8").removesuffix(".yaml"))
    raise FileNotFoundError(f"{path}: not a checkpoint directory, an Ultralytics .pt/.npz, or a variant name")
