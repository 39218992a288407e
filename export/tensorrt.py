"""TensorRT engines from the exported ONNX graph (ONNX parser, FP16, INT8 entropy calibration, EfficientNMS).

TensorRT is imported only when an engine is built: it needs an NVIDIA GPU and its own libraries
(`pip install tensorrt` with a CUDA driver, or an NVIDIA TensorRT container) and cannot be installed on a
CPU-only machine. The INT8 calibrator copies batches to the GPU with cuda-python (`pip install cuda-python`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

INSTALL_HINT = (
    "TensorRT is not installed. It needs an NVIDIA GPU with a CUDA driver: `pip install tensorrt` "
    "(plus `pip install cuda-python` for INT8 calibration), or run inside an NVIDIA container such as "
    "nvcr.io/nvidia/tensorrt:24.08-py3. Export ONNX with `yolojax export CKPT --format onnx` and build the "
    "engine there, or with `trtexec --onnx=model.onnx --saveEngine=model.engine [--fp16]`.")


class TensorRTUnavailable(ImportError):
    """TensorRT (or cuda-python for calibration) is missing; the message says how to install it."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415  (optional, GPU-only dependency)
    except ImportError as e:
        raise TensorRTUnavailable(f"{INSTALL_HINT} ({e})") from e
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise TensorRTUnavailable("INT8 calibration copies images to the GPU with cuda-python: "
                                      f"`pip install cuda-python` ({e})") from e
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def make_entropy_calibrator(trt: Any, images: np.ndarray, batch: int, cache: Path | None) -> Any:
    """An IInt8EntropyCalibrator2 over letterboxed images [N,h,w,3] float in [0,1] (fed as NCHW batches)."""
    cudart = _cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.data = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
            self.batch, self.pos = batch, 0
            self.nbytes = self.data[:batch].nbytes
            self.dev = _check(cudart.cudaMalloc(self.nbytes))

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self.pos + self.batch > len(self.data):
                return None
            chunk = np.ascontiguousarray(self.data[self.pos:self.pos + self.batch])
            _check(cudart.cudaMemcpy(self.dev, chunk.ctypes.data, chunk.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self.pos += self.batch
            return [int(self.dev)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.exists() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

        def __del__(self):
            try:
                cudart.cudaFree(self.dev)
            except Exception:
                pass

    return EntropyCalibrator()


def optimization_profile(shape: Sequence[int], imgsz: Sequence[int], *, max_batch: int = 16, min_hw: int = 32,
                         max_hw: Sequence[int] | None = None, stride: int = 32
                         ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of a TensorRT optimisation profile for an input of `shape` [B,3,H,W] with
    -1 for symbolic dims (`export --dynamic`). Fixed dims stay as they are. Symbolic batch: 1 / max(1,
    max_batch // 2) / max_batch. Symbolic height/width, as Ultralytics' TensorRT export: min_hw (32) / the
    nominal imgsz (h, w) / max_hw (default 2 x imgsz), all multiples of `stride`."""
    if len(shape) != 4:
        raise ValueError(f"expected an input [B,3,H,W], got shape {tuple(shape)}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    h, w = (int(v) for v in imgsz)
    hi = (2 * h, 2 * w) if max_hw is None else tuple(int(v) for v in max_hw)
    for v in (min_hw, h, w, *hi):
        if v < stride or v % stride:
            raise ValueError(f"profile sizes must be positive multiples of {stride}, got {v}")
    if min_hw > min(h, w) or hi[0] < h or hi[1] < w:
        raise ValueError(f"profile must satisfy min {min_hw} <= imgsz {h}x{w} <= max {hi[0]}x{hi[1]}")
    lo = (1, shape[1], min_hw, min_hw)
    opt = (max(1, max_batch // 2), shape[1], h, w)
    top = (max_batch, shape[1], *hi)
    pick = lambda ref: tuple(int(d) if d > 0 else int(r) for d, r in zip(shape, ref))  # noqa: E731
    return pick(lo), pick(opt), pick(top)


def build_engine(onnx_path: str | Path, out: str | Path, *, half: bool = False, int8: bool = False,
                 calib_data: str | Path | np.ndarray | None = None, calib_images: int = 512,
                 calib_batch: int = 8, workspace_gb: float = 4.0, nms_plugin: bool = True,
                 max_batch: int = 16, min_imgsz: int = 32, max_imgsz: Sequence[int] | int | None = None,
                 verbose: bool = False) -> Path:
    """Build and write a serialized TensorRT engine for an exported ONNX graph; returns `out`.

    half: FP16 kernels allowed. int8: INT8 with an entropy calibrator (IInt8EntropyCalibrator2) fed by
    `calib_data` (an image directory/list/dataset YAML, letterboxed to the graph's size, or an array
    [N,h,w,3] in [0,1]); the calibration cache is kept beside the engine (`out.calib`). workspace_gb: builder
    workspace limit. nms_plugin: register TensorRT's plugins (EfficientNMS_TRT for `--nms trt` graphs).
    A dynamic graph (`export --dynamic`: batch, height, width symbolic) gets one optimisation profile
    (`optimization_profile`): batch 1 / max(1, max_batch // 2) / max_batch, and height/width min_imgsz (32) /
    the exported imgsz / max_imgsz (default twice imgsz), as Ultralytics' engines; INT8 calibration runs at the
    opt shape. The metadata (names, imgsz, strides, task, spec) goes to `<out>.json` beside the engine.
    """
    trt = import_tensorrt()
    import onnx

    from .onnx_emit import read_metadata
    onnx_path, out = Path(onnx_path), Path(out)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    if nms_plugin:
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if half or int8:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    meta = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    imgsz = tuple(json.loads(meta["imgsz"])) if "imgsz" in meta else tuple(shape[2:])
    hw = tuple(d if d > 0 else n for d, n in zip(shape[2:], imgsz))  # fixed dims win; nominal size for -1
    profile = None
    if any(d < 0 for d in shape):
        if isinstance(max_imgsz, int):
            max_imgsz = (max_imgsz, max_imgsz)
        lo, opt, hi = optimization_profile(shape, hw, max_batch=max_batch, min_hw=min_imgsz, max_hw=max_imgsz)
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if int8:
        if calib_data is None:
            raise ValueError("int8=True needs calib_data (images the model will see, e.g. the val split)")
        from .images import load_images
        imgs = calib_data if isinstance(calib_data, np.ndarray) else load_images(calib_data, hw, calib_images)
        b = shape[0] if shape[0] > 0 else min(calib_batch, len(imgs))
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_entropy_calibrator(trt, imgs, b, out.with_suffix(".calib"))
        if profile is not None:
            cal = builder.create_optimization_profile()
            fixed = (b, shape[1], *imgs.shape[1:3])
            cal.set_shape(inp.name, fixed, fixed, fixed)
            config.set_calibration_profile(cal)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (run with verbose=True)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(engine))
    meta.update(half=str(half), int8=str(int8), tensorrt=trt.__version__)
    if profile is not None:
        meta["profile"] = json.dumps({"min": lo, "opt": opt, "max": hi})
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(meta, indent=1))
    return out
