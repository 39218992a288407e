"""Latency of one or two models on one backend (JAX, ONNX Runtime, TensorRT), measured interleaved.

Timing several runtimes in one process on a few shared cores is noisy (see /work/shared/tools/README.md):
ONNX Runtime sessions are made with spinning off and intra-op threads = cores, two candidates run in
alternating order within every round, and medians are what to quote.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

BACKENDS = ("jax", "onnxruntime", "tensorrt")


@dataclass
class Candidate:
    name: str
    run: Callable[[], Any]  # one inference on the prepared input, blocking until done
    info: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)


def cpu_isa() -> str:
    """The x86 vector instruction sets INT8 speed depends on, from /proc/cpuinfo's flags ('AVX512-VNNI',
    'AVX-VNNI', 'AVX512', 'AVX2', ...; AMX where present); '' where unknown (not Linux, not x86)."""
    try:
        flags = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), set())
    except OSError:
        return ""
    names = [("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"),
             ("avx512f", "AVX512"), ("avx2", "AVX2")]
    have = [name for flag, name in names if flag in flags]
    if "AVX512-VNNI" in have or "AVX-VNNI" in have:
        have = [h for h in have if h not in ("AVX512", "AVX2")] + [h for h in have if h in ("AVX512", "AVX2")]
    return ", ".join(have) + ("" if any("VNNI" in h or "AMX" in h for h in have) or not have else " (no VNNI)")


def int8_expectation(isa: str | None = None) -> str:
    """One line: what speedup INT8 (the `cpu` target) gives in ONNX Runtime on a CPU with this instruction set,
    from the measurements in benchmarks/results/int8.md (yolov8n, 640 px, batch 1)."""
    isa = cpu_isa() if isa is None else isa
    if ("VNNI" in isa and "no VNNI" not in isa) or "AMX" in isa:
        return (f"INT8 speed on this CPU ({isa}): expect ~2.5x over float32 in ONNX Runtime (measured 0.39x the "
                "latency on an AVX512-VNNI EPYC, benchmarks/results/int8.md)")
    if "AVX2" in isa or "AVX512" in isa:
        return (f"INT8 speed on this CPU ({isa}): expect only ~1.3x over float32 in ONNX Runtime (measured 0.76x "
                "the latency on an AVX2 EPYC without VNNI; ~2.5x with VNNI; benchmarks/results/int8.md); the "
                "file is 3.6x smaller either way")
    return "INT8 speed on this CPU: instruction set unknown here; time it with `yolojax benchmark FP32.onnx INT8.onnx`"


def machine_info() -> dict:
    """CPU model, vector instruction sets, cores and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "isa": cpu_isa(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    for mod in ("jax", "onnxruntime", "onnx", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    try:
        import jax
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:
        pass
    return info


def _load_detector(model: str):
    from yolojax.api import load
    from yolojax.model.spec import is_model_name, yolov8_spec
    if is_model_name(model):
        from yolojax.api import Detector
        return Detector.create(yolov8_spec(model.removesuffix(".yaml"), 80))
    return load(model)


def _model_info(spec, imgsz: int) -> dict:
    from yolojax.model.counting import count_flops, count_params
    return {"params": count_params(spec), "gflops": round(count_flops(spec, imgsz), 4), "variant": spec.variant,
            "nc": spec.nc}


def jax_candidate(model, imgsz: int, batch: int, half: bool, name: str | None = None) -> Candidate:
    """`model`: a Detector or anything `yolojax.load` reads (or a variant name)."""
    import jax
    import jax.numpy as jnp

    from yolojax.model.yolov8 import YOLOv8
    det = model if hasattr(model, "spec") else _load_detector(str(model))
    net = YOLOv8(det.spec, dtype=jnp.float16 if half else None)
    fn = jax.jit(lambda v, x: net.apply(v, x, train=False)[0])
    variables = jax.device_put(det.variables)
    x = jax.device_put(np.random.default_rng(0).random((batch, imgsz, imgsz, 3), dtype=np.float32))
    run = lambda: jax.block_until_ready(fn(variables, x))  # noqa: E731
    return Candidate(name or str(model if not hasattr(model, "spec") else det.spec.name), run,
                     {"backend": "jax", **_model_info(det.spec, imgsz)})


def onnx_candidate(model, imgsz: int, batch: int, half: bool, name: str | None = None,
                   threads: int | None = None, workdir: str | None = None) -> Candidate:
    """`model`: an .onnx file (run as is), or a model that is exported first (fixed batch, no NMS)."""
    from .check import ort_session
    from .onnx_emit import export_onnx, read_metadata, spec_from_onnx
    info: dict[str, Any] = {"backend": "onnxruntime"}
    if str(model).endswith(".onnx"):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(path)
        meta = read_metadata(path)
        if "spec" in meta:
            info.update(_model_info(spec_from_onnx(path), imgsz))
        info["size_mb"] = round(path.stat().st_size / 1e6, 3)
        if meta.get("int8") == "True":
            info["int8"] = f"{meta.get('int8_target', 'tensorrt')}/{meta.get('int8_format', 'qdq')}"
        if half and meta.get("half") != "True":
            raise ValueError(f"{path} is a float32 graph; --half needs a graph exported with --half")
    else:
        det = model if hasattr(model, "spec") else _load_detector(str(model))
        path = Path(workdir or tempfile.mkdtemp(prefix="yolojax-bench-")) / f"{name or 'model'}_{id(det)}.onnx"
        export_onnx(det, path, imgsz=imgsz, batch=batch, half=half)
        info.update(_model_info(det.spec, imgsz))
    sess = ort_session(path, threads=threads)
    inp = sess.get_inputs()[0]
    # symbolic dims: the batch, and the height and width of a graph exported with --dynamic
    shape = [d if isinstance(d, int) else (batch if i == 0 else imgsz) for i, d in enumerate(inp.shape)]
    if shape[0] != batch:
        raise ValueError(f"{path} has a fixed batch {shape[0]}, not {batch}")
    if shape[2:] != [imgsz, imgsz]:
        raise ValueError(f"{path} takes {shape[2]}x{shape[3]} images (its fixed input shape), not --imgsz {imgsz}: "
                         f"leave out --imgsz, or export the model again at {imgsz}")
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    feed = {inp.name: x}
    info["threads"] = threads or os.cpu_count()
    return Candidate(name or str(model), lambda: sess.run(None, feed), info)


def tensorrt_candidate(model, imgsz: int, batch: int, half: bool, name: str | None = None) -> Candidate:
    """A serialized engine (.engine/.plan) or an .onnx that is built into one first (needs TensorRT + GPU)."""
    from yolojax.errors import RuntimeFailure

    from .tensorrt import TensorRTUnavailable, _check, _cudart, build_engine, import_tensorrt
    path = Path(model)
    if path.suffix not in (".onnx", ".engine", ".plan"):  # said before TensorRT is looked for
        raise ValueError(f"{model}: the tensorrt backend takes an .engine/.plan or an .onnx file (export one "
                         f"with `yolojax export {model} --format engine`), or use --backend jax/onnxruntime")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        trt = import_tensorrt()
        cudart = _cudart()
    except TensorRTUnavailable as e:
        raise RuntimeFailure(f"--backend tensorrt: {e}") from e
    if path.suffix == ".onnx":
        path = build_engine(path, path.with_suffix(".engine"), half=half)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    ctx = engine.create_execution_context()
    stream = _check(cudart.cudaStreamCreate())
    buffers = []
    for i in range(engine.num_io_tensors):
        tname = engine.get_tensor_name(i)
        shape = list(engine.get_tensor_shape(tname))
        if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
            shape[0] = batch if shape[0] == -1 else shape[0]
            ctx.set_input_shape(tname, shape)
    for i in range(engine.num_io_tensors):
        tname = engine.get_tensor_name(i)
        shape = ctx.get_tensor_shape(tname)
        nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(tname))).itemsize
        dev = _check(cudart.cudaMalloc(max(nbytes, 1)))
        ctx.set_tensor_address(tname, int(dev))
        buffers.append(dev)

    def run():
        ctx.execute_async_v3(stream)
        _check(cudart.cudaStreamSynchronize(stream))

    return Candidate(name or str(model), run, {"backend": "tensorrt", "engine": str(path)})


def make_candidate(model, backend: str, **kw) -> Candidate:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "jax":
        if str(model).lower().endswith((".onnx", ".engine", ".plan")):
            raise ValueError(f"{model}: an exported graph runs on --backend onnxruntime (.onnx) or tensorrt, not "
                             f"jax: give the checkpoint for jax")
        kw.pop("threads", None)
        kw.pop("workdir", None)
        return jax_candidate(model, **kw)
    if backend == "onnxruntime":
        return onnx_candidate(model, **kw)
    kw.pop("threads", None)
    kw.pop("workdir", None)
    return tensorrt_candidate(model, **kw)


def time_candidates(cands: Sequence[Candidate], runs: int = 50, warmup: int = 5, progress: bool = True) -> None:
    """Warm up each candidate, then `runs` rounds; in each round every candidate runs once, the order
    alternating between rounds so neither always follows the other."""
    from tqdm import tqdm
    for c in cands:
        for _ in range(warmup):
            c.run()
    for r in tqdm(range(runs), desc="benchmark", unit="round", disable=not progress, leave=False):
        order = cands if r % 2 == 0 else list(reversed(cands))
        for c in order:
            t0 = time.perf_counter()
            c.run()
            c.times.append(time.perf_counter() - t0)


def summarize(c: Candidate, batch: int) -> dict:
    t = np.asarray(c.times) * 1e3
    return {"model": c.name, **c.info, "batch": batch, "runs": len(t),
            "p10_ms": round(float(np.percentile(t, 10)), 3),
            "p50_ms": round(float(np.percentile(t, 50)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "p99_ms": round(float(np.percentile(t, 99)), 3), "mean_ms": round(float(t.mean()), 3),
            "min_ms": round(float(t.min()), 3), "fps": round(float(batch * 1e3 / np.percentile(t, 50)), 2)}


def benchmark(models: Sequence[Any], *, backend: str = "onnxruntime", imgsz: int = 640, batch: int = 1,
              half: bool = False, runs: int = 50, warmup: int = 5, threads: int | None = None,
              names: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Time one or two (or more) models interleaved on one backend.

    Returns {'backend', 'imgsz', 'batch', 'half', 'runs', 'machine', 'results': [per model: model, backend,
    p10_ms, p50_ms, p90_ms, p99_ms, mean_ms, min_ms, fps (batch / p50), params, gflops, ...]} plus, for the first
    result, its keys `p50_ms`, `p90_ms`, `fps` at top level, and with two or more models 'ratio_p50'
    (each model's p50 over the first's).
    """
    if imgsz % 32:
        raise ValueError(f"imgsz {imgsz} must be a multiple of 32")
    if runs < 1:
        raise ValueError("runs must be >= 1")
    with tempfile.TemporaryDirectory(prefix="yolojax-bench-") as work:
        cands = [make_candidate(m, backend, imgsz=imgsz, batch=batch, half=half,
                                name=(names[i] if names else None), threads=threads, workdir=work)
                 for i, m in enumerate(models)]
        time_candidates(cands, runs=runs, warmup=warmup, progress=progress)
    results = [summarize(c, batch) for c in cands]
    out = {"backend": backend, "imgsz": imgsz, "batch": batch, "half": half, "runs": runs,
           "machine": machine_info(), "results": results,
           "p50_ms": results[0]["p50_ms"], "p90_ms": results[0]["p90_ms"], "fps": results[0]["fps"]}
    if len(results) > 1:
        out["ratio_p50"] = [round(r["p50_ms"] / results[0]["p50_ms"], 4) for r in results]
    return out


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"{res['backend']} | imgsz {res['imgsz']} | batch {res['batch']} | half {res['half']} | "
             f"{res['runs']} interleaved runs | {m['cpu']} ({m['cores']} cores{', ' + m['isa'] if m.get('isa') else ''}) "
             f"| jax {m.get('jax')} "
             f"| onnxruntime {m.get('onnxruntime')}",
             f"{'model':<40} {'p10 ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'fps':>8} {'GFLOPs':>8} "
             f"{'ratio':>6}"]
    for i, r in enumerate(res["results"]):
        ratio = res.get("ratio_p50", [1.0])[i] if "ratio_p50" in res else 1.0
        lines.append(f"{r['model'][-40:]:<40} {r.get('p10_ms', float('nan')):>9.2f} {r['p50_ms']:>9.2f} "
                     f"{r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                     f"{r['fps']:>8.1f} {r.get('gflops', float('nan')):>8.3f} {ratio:>6.3f}")
    return "\n".join(lines)
