"""Export and deployment: ONNX emitted from the spec (checked against JAX), TensorRT engines, TensorFlow
SavedModel, INT8 quantization and latency benchmarks. Heavy/optional imports happen inside the functions."""
from .onnx_emit import emit_onnx, export_onnx, read_metadata, spec_from_onnx
from .check import check_onnx, format_report, ExportCheckError, TRT_OPS

__all__ = ["emit_onnx", "export_onnx", "read_metadata", "spec_from_onnx", "check_onnx", "format_report",
           "ExportCheckError", "TRT_OPS", "build_engine", "export_savedmodel", "benchmark"]


def build_engine(*args, **kwargs):
    """See `export.tensorrt.build_engine` (TensorRT is imported only here)."""
    from .tensorrt import build_engine as _build
    return _build(*args, **kwargs)


def export_savedmodel(*args, **kwargs):
    """See `export.savedmodel.export_savedmodel` (TensorFlow is imported only here)."""
    from .savedmodel import export_savedmodel as _export
    return _export(*args, **kwargs)


def benchmark(*args, **kwargs):
    """See `export.benchmark.benchmark`."""
    from .benchmark import benchmark as _bench
    return _bench(*args, **kwargs)
