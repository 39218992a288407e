"""TensorFlow SavedModel via jax2tf (optional extra: `pip install yolojax[tf]`).

Current jax2tf serializes natively: the SavedModel holds one XlaCallModule op (StableHLO), so it runs in
TensorFlow (Serving, TF 2.x with XLA) but cannot be converted further with tf2onnx; use the ONNX export for
that. Parameters are tf.Variables (not constants folded into the program) and the batch is polymorphic.

Signature `serving_default`: `images` float32 [B, H, W, 3] (NHWC, RGB in [0, 1], TensorFlow's layout) ->
`output0` float32 [B, 4 + nc (+1 angle for obb), A], the same layout as the ONNX `output0`.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

TF_HINT = "TensorFlow is needed for the SavedModel export: `pip install 'yolojax[tf]'` (tensorflow-cpu)"


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf  # noqa: PLC0415  (optional dependency)
    except ImportError as e:
        raise ImportError(f"{TF_HINT} ({e})") from e
    return tf


def export_savedmodel(model, out_dir: str | Path, *, imgsz: int | Sequence[int] = 640, dynamic: bool = True,
                      batch: int = 1) -> Path:
    """Write a SavedModel of a `yolojax.Detector` to `out_dir` (atomically); returns the directory."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import jax2tf

    from yolojax.model.yolov8 import YOLOv8
    from .onnx_emit import _imgsz, model_metadata

    tf = import_tensorflow()
    spec, variables = model.spec, model.variables
    h, w = _imgsz(imgsz)
    net = YOLOv8(spec)

    def predict(variables, images):
        p, _ = net.apply(variables, images, train=False)
        parts = [p["boxes"], p["scores"]] + ([p["angle"]] if "angle" in p else [])
        return jnp.transpose(jnp.concatenate(parts, -1), (0, 2, 1))

    variables = jax.tree.map(lambda a: np.asarray(a, np.float32), dict(variables))
    tf_vars = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), variables)
    bdim = "b" if dynamic else str(batch)
    tf_predict = jax2tf.convert(predict, polymorphic_shapes=[None, f"({bdim}, {h}, {w}, 3)"], with_gradient=False)

    module = tf.Module()
    module.variables_list = tf.nest.flatten(tf_vars)  # tracked, so they are saved
    signature = tf.TensorSpec([None if dynamic else batch, h, w, 3], tf.float32, name="images")

    @tf.function(input_signature=[signature], autograph=False)
    def serve(images):
        return {"output0": tf_predict(tf_vars, images)}

    module.serve = serve
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": serve.get_concrete_function()})
        meta = model_metadata(spec, (h, w), batch=batch, dynamic=dynamic, half=False, nms=None, conf=0.25,
                              iou=0.7, max_det=300)
        meta["input"] = "images float32 [B,H,W,3] (NHWC) RGB in [0,1]"
        (tmp / "yolojax_meta.json").write_text(json.dumps(meta, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def run_savedmodel(path: str | Path, images_nhwc) -> Any:
    """Load a SavedModel and run its serving signature -> output0 as numpy."""
    tf = import_tensorflow()
    loaded = tf.saved_model.load(str(path))
    return loaded.signatures["serving_default"](images=tf.constant(images_nhwc, tf.float32))["output0"].numpy()
