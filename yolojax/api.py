"""The Python API: `Detector`, `load`, `from_ultralytics`."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint
from .errors import UserError
from .eval.boxes import scale_boxes
from .eval.obb import scale_rboxes
from .model.counting import count_flops, count_params
from .model.spec import Spec, yolov8_spec
from .model.yolov8 import YOLOv8, init_variables
from .model import ultralytics as ul
from .train.step import make_predict
from .viz import letterbox_batch


# Where the Ultralytics YOLOv8 weights are published (named in the error for a missing .pt).
ULTRALYTICS_WEIGHTS = "https://github.com/ultralytics/assets/releases"


class WeightsNotFoundError(UserError, FileNotFoundError):
    """An Ultralytics .pt/.npz that is not there; the message says where to get one."""

    def __str__(self) -> str:  # FileNotFoundError formats (errno, strerror); keep the plain message
        return str(self.args[0]) if self.args else ""


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


@functools.lru_cache(maxsize=32)
def predictor(spec: Spec, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, multi_label: bool = False):
    """The jitted `make_predict` (forward + NMS) of a spec, cached. Defaults are Ultralytics predict's (conf 0.25,
    IoU 0.7, 300 detections, best class per box); validation uses conf 0.001 and multi_label=True."""
    return jax.jit(make_predict(spec, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label))


def _read_image(src) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    img = cv2.imread(str(src))
    if img is None:
        raise FileNotFoundError(f"{src}: not found or not an image OpenCV can read")
    return img


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

    @functools.cached_property
    def device_variables(self) -> Any:
        """The variables on the default device, placed once per Detector (numpy trees from `load` would
        otherwise be uploaded again by every call)."""
        return jax.device_put(self.variables)

    def __call__(self, images) -> dict:
        images = jnp.asarray(images)
        if images.ndim == 3:
            images = images[None]
        h, w = images.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"image size {h}x{w} must be a multiple of 32 (letterbox it first)")
        preds, _ = _jitted_apply(self.spec)(self.device_variables, images)
        return preds

    def predict(self, source, *, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7,
                max_det: int = 300, batch: int = 1) -> list[dict]:
        """Detect objects in images the way Ultralytics' `YOLO(...).predict` does.

        source: an image path, a BGR uint8 image [H,W,3] (OpenCV's order, as Ultralytics takes arrays), or a
        list of them. imgsz: the long side (default: the size the model was trained at, else 640). Images go
        `batch` at a time; each batch is letterboxed as Ultralytics' predictor does (`viz.letterbox_batch`: a
        single image or same-shaped images with minimal padding to a multiple of 32, mixed shapes to the imgsz
        square), then NMS keeps the best class of each box (conf, iou, max_det as Ultralytics' defaults).
        Every distinct input shape compiles once.

        Returns one dict per image: boxes [N,4] xyxy in original pixels, clipped to the image (OBB models:
        rboxes [N,5] cx, cy, w, h, angle), scores [N], classes [N] int, shape (h, w).
        """
        items = list(source) if isinstance(source, (list, tuple)) else [source]
        imgsz = int(imgsz or self.meta.get("imgsz", 640))
        if imgsz % 32:
            raise ValueError(f"imgsz {imgsz} must be a multiple of 32 (the largest stride)")
        run = predictor(self.spec, float(conf), float(iou), int(max_det), False)
        obb = self.spec.task == "obb"
        out = []
        for i in range(0, len(items), max(1, batch)):
            ims = [_read_image(s) for s in items[i:i + max(1, batch)]]
            x, infos = letterbox_batch(ims, imgsz)
            r = jax.device_get(run(self.device_variables, x))
            for k, (im, info) in enumerate(zip(ims, infos)):
                keep = r["valid"][k]
                res = {"scores": r["scores"][k][keep], "classes": r["classes"][k][keep].astype(np.int64),
                       "shape": im.shape[:2]}
                if obb:
                    res["rboxes"] = scale_rboxes(r["boxes"][k][keep], info.rbox_ratio_pad())
                else:
                    res["boxes"] = scale_boxes(np.asarray(r["boxes"][k][keep], np.float64), info.box_ratio_pad(),
                                               im.shape[:2])
                out.append(res)
        return out

    def features(self, images) -> dict:
        """Neck features by level ('p3', 'p4', 'p5'; 'p2' too for P2 models) [B,H/s,W/s,C]."""
        return _jitted_apply(self.spec)(self.device_variables, jnp.asarray(images))[1]

    @property
    def names(self) -> tuple[str, ...]:
        return self.spec.names or tuple(f"class{i}" for i in range(self.spec.nc))

    def num_params(self) -> int:
        return count_params(self.spec)

    def save(self, directory: str | Path, **meta) -> Path:
        return checkpoint.save_model(directory, self.spec, self.variables, {**self.meta, **meta})

    @classmethod
    def create(cls, variant: str | Spec = "n", nc: int = 80, *, seed: int = 0, names=()) -> "Detector":
        """A freshly initialised model of a named scale (or of a given spec)."""
        spec = variant if isinstance(variant, Spec) else yolov8_spec(variant, nc, names=names)
        return cls(spec, init_variables(spec, seed))

    def summary(self) -> str:
        """One line: model name, spec (classes, task, pruned or not), parameters, GFLOPs at 640 px, and the
        recorded training size and source when known (what `repr` shows: never the arrays)."""
        spec = self.spec
        name = spec.name
        channels = sum(w for _, w in spec.widths)
        try:
            full = sum(w for _, w in yolov8_spec(spec.variant, spec.nc, reg_max=spec.reg_max, task=spec.task,
                                                  arch=spec.arch).widths)
        except ValueError:
            full = channels
        shape = f"pruned: {channels:,} of {full:,} channels" if channels != full else "unpruned"
        parts = [f"{name} nc={spec.nc} {spec.task}", shape, f"{count_params(spec):,} params",
                 f"{count_flops(spec, 640):.2f} GFLOPs@640"]
        if not self.variables:
            parts.append("no weights")
        meta = self.meta or {}
        if meta.get("imgsz"):
            parts.append(f"trained at {meta['imgsz']} px")
        for key in ("source", "onnx"):
            if meta.get(key):
                parts.append(f"{key} {meta[key]}")
        return f"Detector({', '.join(parts)})"

    __repr__ = summary


def from_ultralytics(path: str | Path, *, nc: int | None = None, variant: str | None = None) -> Detector:
    """Import Ultralytics weights from a `.pt` checkpoint (read without torch) or a state_dict `.npz`.

    Variant, nc and every width are inferred from the tensors; `nc`/`variant` if given are checked.
    """
    path = Path(path)
    if path.suffix not in (".pt", ".npz"):
        raise ValueError(f"{path}: expected an Ultralytics .pt checkpoint or a state_dict .npz")
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{path}: no such file. Ultralytics publishes YOLOv8 weights (yolov8n.pt ... yolov8x.pt, "
            f"yolov8n-obb.pt ...) at {ULTRALYTICS_WEIGHTS}: download one there, or give the path of your own .pt")
    if path.suffix == ".pt":
        state, meta = ul.state_dict_from_pt(path)
    else:
        state, meta = ul.load_npz_state(path), {}
    spec, variables = ul.import_state_dict(None, state)
    if nc is not None and spec.nc != nc:
        raise ValueError(f"{path} holds nc={spec.nc}, not the requested nc={nc}")
    if variant is not None and spec.variant != variant.removeprefix("yolov8"):
        raise ValueError(f"{path} holds a {spec.name}, not the requested {variant}")
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
        return from_ultralytics(p)
    name = str(path)
    if name.startswith("yolov8") and not p.exists():
        return Detector.create(name.removeprefix("yolov8").removesuffix(".yaml"))
    if p.suffix.lower() in (".onnx", ".engine", ".plan") and p.exists():
        raise UserError(f"{path}: an exported {p.suffix} graph has no JAX weights: give the checkpoint it was "
                        f"exported from (`yolojax val` and `yolojax benchmark` also run .onnx files)")
    raise FileNotFoundError(f"{path}: not a checkpoint directory, an Ultralytics .pt/.npz, or a variant name")
