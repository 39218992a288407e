"""A measured latency model of a deployment backend, and pruning to a latency target (HALP-style).

Latency is not proportional to FLOPs: small channel counts, memory-bound layers and kernel choices decide it.
So the latency of a (pruned) YOLOv8 is *measured*, per convolution, on the backend it will run on:

    table     every conv of the network is a *site*: (kernel, stride, output map size, activation), at the
              deployment image size and batch. Each site is timed in isolation as a one-op graph (Conv + bias +
              SiLU: what the exported graph runs after BN folding) over a grid of (cin, cout) values, interleaved,
              medians. A conv's latency at any (cin, cout) is the bilinear interpolation of its site's grid
              (exact for a + b*cin + c*cout + d*cin*cout within a cell; linear extrapolation outside).
    calibration  the sum over convs misses what is not a conv (concat, split, upsample, max pools, adds, the
              Detect decode) and counts one call overhead per conv. End-to-end latency of the model at three
              widths (unpruned, and the same share of every group removed: 50%, 75%) is measured and
              `ms = alpha * sum(conv ms) + beta` fitted. Predicted latency of any width = that.
    groups    a dependency group's channels enter its producers' cout and its consumers' cin (`_Structure`),
              so the latency of any keep-count per group is a sum over the convs it touches.

The table is cached per machine and backend in a JSON file (settings recorded: backend and its version, imgsz,
batch, threads, CPU model, cores, date, repeats); sites missing from it (another variant, wider channels) are
measured and added. TensorRT goes through the same interface where TensorRT exists; here it is a one-line
error.

Planning (`plan_latency_counts`): channels whose BN |gamma| is near zero go first (free), then greedily, one
`round_to` step at a time, the group whose next step loses the least importance per millisecond saved, until the
predicted latency meets the target. The dependency groups, `round_to` and `min_channels` are respected by
construction (every step goes to the next count `Policy.finalize` allows).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from yolojax.api import Detector
from yolojax.errors import RuntimeFailure, UserError
from yolojax.model.counting import conv_table
from yolojax.model.spec import Spec

from .groups import build_groups
from .policy import LayerRatio
from .prune import spec_from_counts

BACKENDS = ("onnxruntime", "jax", "tensorrt")
TABLE_FORMAT = 1


class LatencyTargetUnreachable(UserError, ValueError):
    """The target is below what the minimum widths allow (one line)."""


class BadLatencyTable(UserError, ValueError):
    """A latency table file that cannot be read or does not fit the request (one line, naming the file)."""


# -- machine and backend ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        import onnxruntime  # heavy: only for the onnxruntime backend
        return onnxruntime.__version__
    if backend == "jax":
        return f"{jax.__version__} ({jax.default_backend()})"
    if backend == "tensorrt":
        _tensorrt()
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def _tensorrt():
    try:
        import tensorrt  # noqa: F401  optional (GPU machines only)
    except Exception as e:  # ImportError, or a broken CUDA install
        raise RuntimeFailure(f"--backend tensorrt: TensorRT is not available on this machine ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:80]}); build the latency table on the deployment "
                             f"machine, or use --backend onnxruntime|jax") from None
    raise RuntimeFailure("--backend tensorrt: latency tables for TensorRT are not implemented yet; use "
                         "--backend onnxruntime|jax")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def settings(backend: str, imgsz: int, batch: int, threads: int | None = None) -> dict:
    return {"backend": backend, "version": backend_version(backend), "imgsz": int(imgsz), "batch": int(batch),
            "threads": int(threads or default_threads()), "cpu": cpu_model(), "cores": os.cpu_count()}


def default_table_path(backend: str, imgsz: int, batch: int, threads: int | None = None) -> Path:
    """~/.cache/yolojax/latency/<backend>-<version>-<imgsz>px-b<batch>-t<threads>-<machine>.json
    ($YOLOJAX_LATENCY_CACHE or $XDG_CACHE_HOME move it)."""
    s = settings(backend, imgsz, batch, threads)
    machine = hashlib.sha1(f"{s['cpu']}|{s['cores']}|{platform.machine()}".encode()).hexdigest()[:8]
    base = os.environ.get("YOLOJAX_LATENCY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "yolojax", "latency")
    version = s["version"].split()[0]
    return Path(base) / f"{backend}-{version}-{imgsz}px-b{batch}-t{s['threads']}-{machine}.json"


# -- sites: what a conv's latency depends on -----------------------------------------------------------------
def _site_key(r, fixed_cin: int | None, fixed_cout: int | None) -> str:
    key = f"k{r.k}s{r.stride}h{r.h}w{r.w}{'' if r.bn else 'lin'}"
    if fixed_cin is not None:
        key += f"ci{fixed_cin}"
    if fixed_cout is not None:
        key += f"co{fixed_cout}"
    return key


class _Structure:
    """Per conv of `spec` (conv_table order): cin and cout as (constant + sum of group counts), and its site."""

    def __init__(self, spec: Spec, imgsz: int):
        rows = conv_table(spec, imgsz)
        self.rows = rows
        index = {r.path: i for i, r in enumerate(rows)}
        self.groups = build_groups(spec)
        cin_terms: list[list[str]] = [[] for _ in rows]
        cout_terms: list[list[str]] = [[] for _ in rows]
        for g in self.groups:
            for pr in g.producers:
                cout_terms[index[pr.path]].append(g.name)
            for c in g.consumers:
                cin_terms[index[c.path]].append(g.name)
        size = {g.name: g.size for g in self.groups}
        self.cin_terms, self.cout_terms = cin_terms, cout_terms
        self.cin_const = [r.cin - sum(size[n] for n in t) for r, t in zip(rows, cin_terms)]
        self.cout_const = [r.cout - sum(size[n] for n in t) for r, t in zip(rows, cout_terms)]
        self.keys = [_site_key(r, r.cin if not ti else None, r.cout if not to else None)
                     for r, ti, to in zip(rows, cin_terms, cout_terms)]
        self.touches: dict[str, list[int]] = {g.name: [] for g in self.groups}
        for i, (ti, to) in enumerate(zip(cin_terms, cout_terms)):
            for n in set(ti) | set(to):
                self.touches[n].append(i)

    def cin(self, i: int, counts: Mapping[str, int]) -> int:
        return self.cin_const[i] + sum(int(counts[n]) for n in self.cin_terms[i])

    def cout(self, i: int, counts: Mapping[str, int]) -> int:
        return self.cout_const[i] + sum(int(counts[n]) for n in self.cout_terms[i])

    def needs(self) -> dict[str, dict]:
        """Per site: geometry and the largest cin/cout any of its convs can have (the unpruned widths)."""
        out: dict[str, dict] = {}
        for i, (r, key) in enumerate(zip(self.rows, self.keys)):
            s = out.setdefault(key, dict(k=r.k, stride=r.stride, h=r.h, w=r.w, act=r.bn, cin_max=0, cout_max=0,
                                         cin_fixed=not self.cin_terms[i], cout_fixed=not self.cout_terms[i]))
            s["cin_max"] = max(s["cin_max"], r.cin)
            s["cout_max"] = max(s["cout_max"], r.cout)
        return out


def _axis(fixed: bool, hi: int, points: int) -> list[int]:
    if fixed or hi <= 8:
        return [int(hi)]
    vals = {8, int(hi)} | {int(round(v / 8.0)) * 8 for v in np.linspace(8, hi, points)}
    return sorted(v for v in vals if 8 <= v <= hi)


def _interp_axis(grid: np.ndarray, x: float) -> tuple[int, int, float]:
    """Indices (i, j) and weight t with value = (1 - t) * v[i] + t * v[j]; linear extrapolation outside."""
    n = len(grid)
    if n == 1:
        return 0, 0, 0.0
    j = int(np.searchsorted(grid, x))
    j = min(max(j, 1), n - 1)
    i = j - 1
    return i, j, float((x - grid[i]) / (grid[j] - grid[i]))


# -- the table ---------------------------------------------------------------------------------------------
class LatencyTable:
    """Measured per-site grids (ms) and per-model calibrations, with the measurement's settings."""

    def __init__(self, settings: dict, sites: dict | None = None, calibration: dict | None = None,
                 path: Path | None = None):
        self.settings = dict(settings)
        self.sites = dict(sites or {})
        self.calibration = dict(calibration or {})
        self.path = path
        self._np = {}

    # file round trip
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "settings": self.settings, "sites": self.sites,
                "calibration": self.calibration}

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path or self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadLatencyTable(f"{path}: no such latency table") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadLatencyTable(f"{path}: not a latency table ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:80]})") from None
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT or not isinstance(d.get("settings"), dict):
            raise BadLatencyTable(f"{path}: not a latency table of format {TABLE_FORMAT} (no 'format'/'settings')")
        sites = d.get("sites") or {}
        for key, s in sites.items():
            try:
                ms = np.asarray(s["ms"], np.float64)
                ok = ms.shape == (len(s["cin"]), len(s["cout"])) and np.all(np.isfinite(ms)) and np.all(ms >= 0)
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise BadLatencyTable(f"{path}: site {key!r} is malformed (need cin, cout and an ms grid of "
                                      f"len(cin) x len(cout) finite values)")
        return cls(d["settings"], sites, d.get("calibration") or {}, path)

    def check(self, want: Mapping) -> None:
        """Refuse a table measured under other settings (backend, imgsz, batch, threads)."""
        for k in ("backend", "imgsz", "batch", "threads"):
            if k in want and self.settings.get(k) != want[k]:
                raise BadLatencyTable(f"{self.path}: measured with {k}={self.settings.get(k)!r}, not {want[k]!r}: "
                                      f"use another --latency-table, or leave it out to use the cached one")

    # lookups
    def covers(self, key: str, need: Mapping) -> bool:
        s = self.sites.get(key)
        return s is not None and max(s["cin"]) >= need["cin_max"] and max(s["cout"]) >= need["cout_max"]

    def conv_ms(self, key: str, cin: int, cout: int) -> float:
        if key not in self._np:
            s = self.sites[key]
            self._np[key] = (np.asarray(s["cin"], np.float64), np.asarray(s["cout"], np.float64),
                             np.asarray(s["ms"], np.float64))
        gi, go, ms = self._np[key]
        i0, i1, t = _interp_axis(gi, cin)
        j0, j1, u = _interp_axis(go, cout)
        v = ((1 - t) * (1 - u) * ms[i0, j0] + t * (1 - u) * ms[i1, j0] + (1 - t) * u * ms[i0, j1]
             + t * u * ms[i1, j1])
        return max(float(v), 0.0)

    def set_site(self, key: str, cin: Sequence[int], cout: Sequence[int], ms: np.ndarray) -> None:
        self.sites[key] = {"cin": [int(c) for c in cin], "cout": [int(c) for c in cout],
                           "ms": [[round(float(x), 5) for x in row] for row in np.asarray(ms)]}
        self._np.pop(key, None)


def spec_key(spec: Spec) -> str:
    return hashlib.sha1(spec.to_json().encode()).hexdigest()[:12]


class LatencyModel:
    """Predicted latency (ms) of `spec` and of any keep-counts of its groups, from a table."""

    def __init__(self, spec: Spec, table: LatencyTable):
        self.spec, self.table = spec, table
        self.imgsz = int(table.settings["imgsz"])
        self.struct = _Structure(spec, self.imgsz)
        missing = [k for k, need in self.struct.needs().items() if not table.covers(k, need)]
        if missing:
            raise BadLatencyTable(f"{table.path}: no measurement for {len(missing)} conv site(s) of this model "
                                  f"(e.g. {missing[0]}): rebuild the table for it")
        cal = table.calibration.get(spec_key(spec))
        self.alpha, self.beta = (float(cal["alpha"]), float(cal["beta"])) if cal else (1.0, 0.0)
        self.calibrated = cal is not None

    def full_counts(self) -> dict[str, int]:
        return {g.name: g.size for g in self.struct.groups}

    def row_ms(self, i: int, counts: Mapping[str, int]) -> float:
        s = self.struct
        return self.table.conv_ms(s.keys[i], s.cin(i, counts), s.cout(i, counts))

    def conv_sum(self, counts: Mapping[str, int]) -> float:
        return sum(self.row_ms(i, counts) for i in range(len(self.struct.rows)))

    def predict(self, counts: Mapping[str, int] | None = None) -> float:
        return self.alpha * self.conv_sum(counts or self.full_counts()) + self.beta

    def predict_spec(self, spec: Spec) -> float:
        """Predicted latency of a pruned version of this model's spec."""
        counts = {g.name: g.size for g in build_groups(spec)}
        return self.predict(counts)

    def group_latency(self, name: str, counts: Mapping[str, int]) -> float:
        """The latency (ms, calibrated scale) of the convs a group's channels enter, at `counts`."""
        return self.alpha * sum(self.row_ms(i, counts) for i in self.struct.touches[name])


# -- measuring ---------------------------------------------------------------------------------------------
def _onnx_conv(cin, cout, k, s, h, w, act, batch) -> bytes:
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32), "W")
    B = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, "B")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[k, k], strides=[s, s],
                              pads=[k // 2] * 4)]
    out = "c"
    if act:
        nodes += [helper.make_node("Sigmoid", ["c"], ["sg"]), helper.make_node("Mul", ["c", "sg"], ["y"])]
        out = "y"
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [batch, cin, h * s, w * s])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], [W, B])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = min(m.ir_version, 9)
    return m.SerializeToString()


def _ort_session(model: bytes | str, threads: int):
    import onnxruntime as ort  # heavy: only when measuring on this backend
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _conv_runner(backend, cin, cout, k, s, h, w, act, batch, threads) -> Callable[[], object]:
    x = np.random.default_rng(1).random((batch, cin, h * s, w * s), dtype=np.float32)
    if backend == "onnxruntime":
        sess = _ort_session(_onnx_conv(cin, cout, k, s, h, w, act, batch), threads)
        feed = {"x": x}
        return lambda: sess.run(None, feed)
    if backend == "jax":
        xj = jnp.asarray(x.transpose(0, 2, 3, 1))
        wj = jnp.asarray(np.random.default_rng(0).standard_normal((k, k, cin, cout)).astype(np.float32) * 0.05)
        bj = jnp.zeros((cout,), jnp.float32)

        @jax.jit
        def f(x, wt, b):
            y = jax.lax.conv_general_dilated(x, wt, (s, s), [(k // 2, k // 2)] * 2,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
            return y * jax.nn.sigmoid(y) if act else y
        f(xj, wj, bj).block_until_ready()
        return lambda: f(xj, wj, bj).block_until_ready()
    if backend == "tensorrt":
        _tensorrt()
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def time_interleaved(fns: Sequence[Callable], reps: int, warmup: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Times (ms) of each fn: `warmup` untimed calls each, then `reps` rounds, every fn once per round in a
    shuffled order (load from other processes hits all alike)."""
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        for i in rng.permutation(len(fns)):
            t0 = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [np.asarray(t) for t in times]


def measure_sites(table: LatencyTable, needs: Mapping[str, dict], *, reps: int = 15, points: int = 4,
                  log: Callable[[str], None] | None = None) -> int:
    """Measure the sites `table` lacks (or covers too narrowly) into it; returns how many were measured."""
    st = table.settings
    todo = [(k, n) for k, n in needs.items() if not table.covers(k, n)]
    for done, (key, n) in enumerate(todo):
        old = table.sites.get(key)
        ci_hi = max(n["cin_max"], max(old["cin"]) if old else 0)
        co_hi = max(n["cout_max"], max(old["cout"]) if old else 0)
        cins, couts = _axis(n["cin_fixed"], ci_hi, points), _axis(n["cout_fixed"], co_hi, points)
        cells = [(a, b) for a in cins for b in couts]
        t0 = time.perf_counter()
        fns = [_conv_runner(st["backend"], a, b, n["k"], n["stride"], n["h"], n["w"], n["act"], st["batch"],
                            st["threads"]) for a, b in cells]
        times = time_interleaved(fns, reps)
        ms = np.array([float(np.median(t)) for t in times]).reshape(len(cins), len(couts))
        # more channels are never faster: timing noise (a loaded machine, a few repeats) must not make the
        # model reward keeping channels, so the grid is made non-decreasing along both axes
        ms = np.maximum.accumulate(np.maximum.accumulate(ms, axis=0), axis=1)
        table.set_site(key, cins, couts, ms)
        if log:
            log(f"latency table: site {done + 1}/{len(todo)} {key}: {len(cells)} points in "
                f"{time.perf_counter() - t0:.1f} s ({ms.min():.3f}-{ms.max():.3f} ms)")
    return len(todo)


def end_to_end_runner(spec: Spec, variables, backend: str, imgsz: int, batch: int, threads: int,
                      workdir: str | Path) -> Callable[[], object]:
    """One inference of the whole model (exported graph, no NMS, for onnxruntime; jitted apply for jax).
    Uses the export stage's public entry points (imported here, lazily)."""
    det = Detector(spec, variables if variables is not None else Detector.create(spec).variables)
    if backend == "tensorrt":
        _tensorrt()
    from export.benchmark import make_candidate  # the export stage, needed only to time whole models
    kw = dict(imgsz=imgsz, batch=batch, half=False, name=f"m{spec_key(spec)}")
    if backend == "onnxruntime":
        kw.update(threads=threads, workdir=str(workdir))
    return make_candidate(det, backend, **kw).run


def calibrate(model: LatencyModel, *, reps: int = 20, shares: Sequence[float] = (0.5, 0.75), variables=None,
              log: Callable[[str], None] | None = None) -> dict:
    """Fit ms = alpha * sum(conv ms) + beta on end-to-end measurements of the model at several widths (the
    same share of every group removed), store it in the table under the spec's key, and return it."""

    st = model.table.settings
    groups = model.struct.groups
    specs, sums = [model.spec], [model.conv_sum(model.full_counts())]
    for r in shares:
        counts = LayerRatio(ratio=r).keep_counts(groups, {g.name: np.zeros(g.size) for g in groups})
        specs.append(spec_from_counts(model.spec, counts))
        sums.append(model.conv_sum(counts))
    with tempfile.TemporaryDirectory(prefix="yolojax-latency-") as work:
        fns = [end_to_end_runner(s, variables if i == 0 else None, st["backend"], st["imgsz"], st["batch"],
                                 st["threads"], work) for i, s in enumerate(specs)]
        times = time_interleaved(fns, reps)
    med = np.array([float(np.median(t)) for t in times])
    A = np.stack([np.asarray(sums), np.ones(len(sums))], 1)
    alpha, beta = np.linalg.lstsq(A, med, rcond=None)[0]
    if not 0.3 <= alpha <= 3.0:  # noisy points: keep the slope at 1, only the overhead fitted
        alpha, beta = 1.0, float(np.mean(med - np.asarray(sums)))
    cal = {"alpha": round(float(alpha), 5), "beta": round(float(beta), 5), "variant": model.spec.variant,
           "sites": sorted(model.struct.needs()),
           "points": [{"conv_sum_ms": round(float(s), 4), "measured_ms": round(float(m), 4)} for s, m in zip(sums, med)],
           "reps": reps, "date": datetime.datetime.now().isoformat(timespec="seconds")}
    model.table.calibration[spec_key(model.spec)] = cal
    model.alpha, model.beta, model.calibrated = cal["alpha"], cal["beta"], True  # as stored: file == memory
    if log:
        log(f"latency table: calibrated {model.spec.name}: ms = {alpha:.3f} x conv sum + {beta:.2f} "
            f"(measured {', '.join(f'{m:.2f}' for m in med)} ms)")
    return cal


def latency_model(spec: Spec, *, backend: str = "onnxruntime", imgsz: int = 640, batch: int = 1,
                  threads: int | None = None, table: str | Path | None = None, reps: int = 15, points: int = 4,
                  calibrate_reps: int = 20, variables=None, log: Callable[[str], None] | None = None
                  ) -> LatencyModel:
    """The latency model of `spec` on `backend`: the cached table (or `table`), with what it lacks measured and
    saved back."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if imgsz % 32:
        raise ValueError(f"imgsz {imgsz} must be a multiple of 32")
    want = settings(backend, imgsz, batch, threads)  # tensorrt: the one-line error, before any work
    path = Path(table) if table else default_table_path(backend, imgsz, batch, threads)
    if path.exists():
        tab = LatencyTable.load(path)
        tab.check(want)
        if table is None and (tab.settings.get("cpu") != want["cpu"] or tab.settings.get("version") != want["version"]):
            tab = None  # the cache of another machine or version: measure afresh
    else:
        tab = None
    if tab is None:
        tab = LatencyTable({**want, "reps": reps, "grid_points": points}, path=path)
    needs = _Structure(spec, imgsz).needs()
    # sites already in the table that this spec needs wider are measured again, at another time: the calibrations
    # fitted on their old values (other variants sharing the table) no longer hold and are dropped
    remeasured = {k for k, n in needs.items() if k in tab.sites and not tab.covers(k, n)}
    changed = measure_sites(tab, needs, reps=reps, points=points, log=log)
    if remeasured:
        for key, cal in list(tab.calibration.items()):
            if remeasured & set(cal.get("sites", remeasured)):
                del tab.calibration[key]
                if log:
                    log(f"latency table: calibration of {cal.get('variant', key)} dropped (its sites were measured "
                        f"again); it is fitted again when next used")
    if changed:
        tab.settings["date"] = datetime.datetime.now().isoformat(timespec="seconds")
        tab.settings["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    model = LatencyModel(spec, tab)
    if not model.calibrated and calibrate_reps > 0:
        calibrate(model, reps=calibrate_reps, variables=variables, log=log)
        changed = True
    if changed:
        tab.save(path)
    return model


# -- planning ----------------------------------------------------------------------------------------------
def _step_down(policy, size: int, k: int) -> int:
    """The next smaller kept count the policy's rounding allows (k itself when none)."""
    return min(k, policy.finalize(size, ((k - 1) // policy.round_to) * policy.round_to))


def floor_counts(groups, policy) -> dict[str, int]:
    """The smallest kept count per group the policy allows (skipped groups whole): the fastest model it can give."""
    return {g.name: g.size if policy.is_skipped(g) else policy.finalize(g.size, 0) for g in groups}


def plan_latency_counts(model: LatencyModel, groups, scores: Mapping[str, np.ndarray], policy,
                        zero: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:
    """Kept count per group meeting `policy.target_ms` under `model` with the least importance lost (greedy on
    importance lost per ms saved; near-zero channels first)."""
    target = float(policy.target_ms)
    active = [g for g in groups if not policy.is_skipped(g)]
    counts = {g.name: g.size for g in groups}
    for g in active:
        if zero is not None:
            counts[g.name] = policy.finalize(g.size, int((~zero[g.name]).sum()))
    floor = floor_counts(groups, policy)
    lowest = model.predict(floor)
    if lowest > target:
        t = model.table.settings
        raise LatencyTargetUnreachable(
            f"--target-ms {target:g} is below what the minimum widths allow: {lowest:.2f} ms predicted on "
            f"{t['backend']} at {t['imgsz']} px batch {t['batch']} with every group at --min-channels "
            f"{policy.min_channels} (round-to {policy.round_to}); the unpruned model is "
            f"{model.predict():.2f} ms")
    sorted_scores = {g.name: np.sort(np.clip(np.asarray(scores[g.name], np.float64), 0, None))[::-1] for g in groups}
    struct = model.struct
    row_ms = [model.row_ms(i, counts) for i in range(len(struct.rows))]
    current = model.alpha * sum(row_ms) + model.beta
    by_name = {g.name: g for g in active}
    neighbours = {n: {m for i in struct.touches[n] for m in set(struct.cin_terms[i]) | set(struct.cout_terms[i])}
                  for n in by_name}

    def candidate(name):
        g = by_name[name]
        k = counts[name]
        k2 = _step_down(policy, g.size, k)
        if k2 >= k:
            return None
        trial = dict(counts)
        trial[name] = k2
        saved = model.alpha * sum(row_ms[i] - model.row_ms(i, trial) for i in struct.touches[name])
        lost = float(sorted_scores[name][k2:k].sum())
        score = lost / saved if saved > 1e-9 else math.inf
        return score, lost, saved, k2

    cands = {n: candidate(n) for n in by_name}
    while current > target:
        live = [(c[0], -c[2], n) for n, c in cands.items() if c is not None]
        if not live:
            break
        _, _, best = min(live)
        counts[best] = cands[best][3]
        for i in struct.touches[best]:
            row_ms[i] = model.row_ms(i, counts)
        current = model.alpha * sum(row_ms) + model.beta
        for n in neighbours[best]:
            if n in by_name:
                cands[n] = candidate(n)
    if current > target:  # a table that is not monotonic somewhere: fall back to the floor, which fits
        counts = floor
    return counts


# -- closing the loop on the measurement -------------------------------------------------------------------
def measure_ms(spec: Spec, variables, backend: str, imgsz: int, batch: int, threads: int, reps: int = 20) -> float:
    """Median end-to-end latency (ms) of one model on `backend` (`reps` timed runs after 3 warm-up runs)."""
    with tempfile.TemporaryDirectory(prefix="yolojax-measure-") as work:
        fn = end_to_end_runner(spec, variables, backend, imgsz, batch, threads, work)
        (t,) = time_interleaved([fn], reps, warmup=3)
    return float(np.median(t))


def plan_measured(spec: Spec, variables, policy, measure: Callable[[Spec, dict], float], *, rounds: int = 2,
                  tol: float = 0.05, log: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """Keep-masks for a LatencyTarget, the table's prediction corrected by measurement.

    The table predicts a pruned model's latency to ~10-20% (what it cannot see: memory traffic between ops,
    kernel choices of one width over another); the target is what the deployment measures. So the plan is
    measured end to end (`measure(spec, variables) -> ms`) and, while it misses the target by more than `tol`
    (either way: too slow misses the deployment, too fast throws away accuracy), planned again with the target
    scaled by the miss (`target_used * target / measured`: the table's local error, taken out), up to `rounds`
    more times. The plan measured closest to the target wins, a plan within the target preferred.
    The unpruned model is measured first: the table's scale now (tables drift with the machine's load and clocks)
    sets the first plan's target (`target * predicted / measured` of the unpruned model); an unpruned model already
    within the target is returned whole.
    Returns (masks, history: one {'target_ms_used', 'predicted_ms', 'measured_ms', 'chosen'} per plan)."""
    import dataclasses

    from .prune import apply_masks, plan
    target = float(policy.target_ms)
    history, plans = [], []
    # the table's scale on this machine now (tables drift: load, clocks): the unpruned model measured first
    lm = policy.latency_model(spec, variables)
    full_pred = lm.predict()
    floor_pred = lm.predict(floor_counts(build_groups(spec), policy))
    full_ms = float(measure(spec, variables))
    used = target * full_pred / full_ms
    if used < floor_pred <= target:
        # only the measured scale puts the target below the minimum widths (one measurement, maybe noisy): plan the
        # minimum widths, measure them, and say so; a target below them on the table itself is refused below
        used = floor_pred * (1 + 1e-9)
    if log:
        log(f"latency target {target:g} ms: unpruned model predicted {full_pred:.2f} ms, measured {full_ms:.2f} ms; "
            f"planning for {used:.2f} ms on the table's scale"
            f"{' (the minimum widths: the target looks out of reach here)' if used <= floor_pred * (1 + 1e-6) else ''}")
    if full_ms <= target:  # nothing to prune for speed (near-zero channels still go: they are free)
        masks = plan(spec, variables, dataclasses.replace(policy, target_ms=full_pred * 2))
        pred = lm.predict_spec(apply_masks(spec, variables, masks)[0])
        if log:
            log(f"latency target {target:g} ms: the unpruned model already meets it")
        return masks, [{"round": 0, "target_ms_used": round(full_pred * 2, 4), "predicted_ms": round(pred, 4),
                        "measured_ms": round(full_ms, 4), "chosen": True, "unpruned_within_target": True}]
    for r in range(rounds + 1):
        p = dataclasses.replace(policy, target_ms=used)
        try:
            masks = plan(spec, variables, p)
        except LatencyTargetUnreachable as e:
            if r == 0:
                raise LatencyTargetUnreachable(
                    f"{e} (measured here: the unpruned model runs in {full_ms:.2f} ms, the table predicts "
                    f"{full_pred:.2f} ms: the target on the table's scale is {used:.2f} ms)") from None
            if log:  # the correction asks for less than the minimum widths give: the floor was measured already
                log(f"latency target {target:g} ms: a re-plan for {used:.2f} ms is below the minimum widths; stopping")
            break
        new_spec, new_vars = apply_masks(spec, variables, masks)
        pred = lm.predict_spec(new_spec)
        ms = float(measure(new_spec, new_vars))
        history.append({"round": r, "target_ms_used": round(used, 4), "predicted_ms": round(pred, 4),
                        "measured_ms": round(ms, 4)})
        plans.append(masks)
        if log:
            log(f"latency target {target:g} ms: plan {r} (planned for {used:.2f} ms) predicted {pred:.2f} ms, "
                f"measured {ms:.2f} ms ({ms / target - 1:+.1%})")
        if abs(ms / target - 1) <= tol:
            break
        nxt = used * target / ms
        if any(abs(nxt / h["target_ms_used"] - 1) < 1e-3 for h in history):
            break  # the same plan again
        used = nxt
    within = [i for i, h in enumerate(history) if h["measured_ms"] <= target * (1 + tol)]
    pool = within or range(len(history))
    best = min(pool, key=lambda i: abs(history[i]["measured_ms"] / target - 1))
    for i, h in enumerate(history):
        h["chosen"] = i == best
    return plans[best], history
