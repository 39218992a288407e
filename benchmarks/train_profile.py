"""Where the CPU training step's time goes, and what XLA CPU settings change it.

    .venv/bin/python benchmarks/train_profile.py breakdown [--variant n --imgsz 640 --batch 8]
    .venv/bin/python benchmarks/train_profile.py subsets   [--imgsz 640]   # forward / fwd+bwd / loss jitted alone
    .venv/bin/python benchmarks/train_profile.py flags     [--imgsz 320 --rounds 3]
    .venv/bin/python benchmarks/train_profile.py conv      [--rounds 5]   # conv + gradient formulations

breakdown: traces `--steps` jitted training steps (the step of benchmarks/train_throughput.py) with
jax.profiler.trace (perfetto JSON), joins every thunk event (named after its HLO instruction) with the
optimized HLO of the step, and sums the time by phase (model forward, model backward, loss forward and
backward, optimizer/EMA/finite checks, unattributed layout copies; from each instruction's op_name:
jvp(YOLOv8) / transpose(jvp(YOLOv8)) / jvp() ...), by kind (convolution forward, input gradient, weight
gradient with their nominal FLOPs and GFLOP/s; elementwise loop fusions, reductions, copies) and lists the
slowest thunks. subsets: forward only (train mode, BN statistics), forward+backward without the loss (gradient
of a sum over the head outputs), loss (value and gradient w.r.t. the head outputs), full step, interleaved.
flags: the full step in a fresh process per XLA_FLAGS / option candidate, candidates interleaved over
rounds (JAX's persistent compilation cache in a temporary dir keeps later rounds from recompiling).
conv: a conv + its gradients in NHWC/HWIO vs NCHW/OIHW, 1x1 convs as a matmul, under the default XLA CPU
runtime (YNNPACK convolutions) and with YNNPACK convolutions off (Eigen), interleaved.

Every result carries os.getloadavg() (the machine may be shared). Results print as markdown; --json FILE also
writes them. benchmarks/results/train_profile.md is written by hand from these outputs.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def med(xs):
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


# -- HLO parsing -------------------------------------------------------------------------------------------
_INSTR = re.compile(r"^\s+(?:ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*)$")
_HEAD = re.compile(r"^(ENTRY )?%(\S+) \(")


def _shape(s: str) -> list[int]:
    m = re.match(r"\(?[a-z0-9]+\[([\d,]*)\]", s)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def parse_hlo(text: str) -> dict:
    """{'comps': {name: [instr]}, 'entry': name, 'files': {frame_id: file}}; instr = dict(name, shape, op,
    rest, op_name, frame, calls)."""
    comps: dict[str, list] = {}
    entry, cur = None, None
    files, locs, frames = {}, {}, {}
    table = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            table = line
            continue
        if table and re.match(r"^\d+ ", line):
            i, rest = line.split(" ", 1)
            if table == "FileNames":
                files[int(i)] = rest.strip('"')
            elif table == "FileLocations":
                locs[int(i)] = int(re.search(r"file_name_id=(\d+)", rest).group(1))
            elif table == "StackFrames":
                frames[int(i)] = (int(re.search(r"file_location_id=(\d+)", rest).group(1)),
                                  int(re.search(r"parent_frame_id=(\d+)", rest).group(1)))
            continue
        table = None
        h = _HEAD.match(line)
        if h:
            cur = h.group(2)
            comps[cur] = []
            if h.group(1):
                entry = cur
            continue
        m = _INSTR.match(line)
        if m and cur is not None:
            name, shape, op, rest = m.groups()
            on = re.search(r'op_name="([^"]*)"', rest)
            fr = re.search(r"stack_frame_id=(\d+)", rest)
            calls = re.search(r"calls=%([\w.-]+)", rest)
            comps[cur].append({"name": name, "shape": shape, "op": op, "rest": rest,
                               "op_name": on.group(1) if on else "", "frame": int(fr.group(1)) if fr else None,
                               "calls": calls.group(1) if calls else None})
    frame_file = {f: files.get(locs.get(loc, -1), "?") for f, (loc, _) in frames.items()}
    return {"comps": comps, "entry": entry, "frame_file": frame_file}


def conv_flops(ins: dict, shapes: dict) -> float:
    """Nominal FLOPs of an HLO convolution: 2 x output elements x window x input features per group."""
    out = _shape(ins["shape"])
    win = re.search(r"window=\{size=([\dx]+)", ins["rest"])
    labels = re.search(r"dim_labels=\w+_(\w+)->", ins["rest"])
    operands = re.findall(r"%([\w.-]+)", ins["rest"].split(")", 1)[0])
    if not (out and win and labels and len(operands) >= 2 and operands[1] in shapes):
        return 0.0
    rhs = _shape(shapes[operands[1]])
    i = labels.group(1).index("i")
    window = 1
    for w in win.group(1).split("x"):
        window *= int(w)
    n = 1
    for d in out:
        n *= d
    return 2.0 * n * window * rhs[i]


def classify(hlo: dict) -> dict:
    """{entry instruction name: info}: phase, kind, flops, op_name, shape, source file."""
    comps = hlo["comps"]
    out = {}

    def inner(comp: str, seen=None) -> list:
        seen = seen or set()
        res = []
        for ins in comps.get(comp, []):
            res.append(ins)
            if ins["calls"] and ins["calls"] not in seen:
                seen.add(ins["calls"])
                res += inner(ins["calls"], seen)
        return res

    for ins in comps[hlo["entry"]]:
        body = inner(ins["calls"]) if ins["calls"] else []
        named = [x for x in [ins] + body if x["op_name"]]
        op_name = named[-1]["op_name"] if not ins["op_name"] and named else ins["op_name"]
        frame = ins["frame"] or next((x["frame"] for x in named if x["frame"]), None)
        src = hlo["frame_file"].get(frame, "") if frame else ""
        ops = {x["op"] for x in [ins] + body}
        convs = [x for x in [ins] + body if x["op"] == "convolution"]
        if "transpose(jvp(YOLOv8" in op_name:
            phase = "model backward"
        elif "jvp(YOLOv8" in op_name:
            phase = "model forward"
        elif "transpose(jvp(" in op_name:
            phase = "loss backward"
        elif "jvp(" in op_name:
            phase = "loss forward (incl. assigner)"
        elif op_name:
            phase = "optimizer, EMA, BN stats, finite checks"
        else:
            phase = "layout copies / unattributed"
        flops = 0.0
        if convs:
            shapes = {x["name"]: x["shape"] for x in [ins] + body}
            shapes.update({x["name"]: x["shape"] for x in comps[hlo["entry"]]})
            flops = sum(conv_flops(c, shapes) for c in convs)
            win = re.search(r"window=\{size=([\dx]+)", convs[0]["rest"])
            wprod = 1
            for w in (win.group(1).split("x") if win else []):
                wprod *= int(w)
            if phase == "model forward":
                kind = "conv forward"
            elif wprod > 9:
                kind = "conv weight gradient"
            else:
                kind = "conv input gradient"
            if phase.startswith("layout") or phase.startswith("optim"):
                phase = "model backward" if kind != "conv forward" else "model forward"
        elif "dot" in ops:
            kind = "dot"
        elif ins["op"] in ("copy", "transpose") or (ins["op"] == "fusion" and "transpose" in ins["name"]):
            kind = "copy / transpose"
        elif ops & {"reduce", "reduce-window"}:
            kind = "reduce / reduce-window"
        elif ins["op"] in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            kind = "none"
        else:
            kind = "elementwise / other"
        if "loss" in phase and src:
            phase += f" [{Path(src).name}]"
        out[ins["name"]] = {"phase": phase, "kind": kind, "flops": flops, "op_name": op_name,
                            "shape": ins["shape"][:60], "src": src}
    return out


# -- trace parsing -----------------------------------------------------------------------------------------
def trace_events(trace_dir: str) -> list[dict]:
    path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
    data = json.load(gzip.open(path))
    ev = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in ev if e.get("ph") == "X"]


def build_step(variant: str, imgsz: int, batch: int, dtype: str = "float32"):
    """(jitted step, state, numpy batch, spec) as benchmarks/train_throughput.BareStep builds them, uncompiled."""
    import jax
    from train_throughput import fake_batch
    from yolojax.model import init_variables, yolov8_spec
    from yolojax.train.config import TrainConfig
    from yolojax.train.optim import build_optimizer, ema_decay_fn
    from yolojax.train.step import create_state, make_train_step
    spec = yolov8_spec(variant, 80)
    variables = init_variables(spec, 0)
    cfg = TrainConfig(batch=batch, nbs=batch, optimizer="sgd", dtype=dtype)
    tx, _ = build_optimizer(cfg, variables["params"], steps_per_epoch=100, nc=80)
    step = jax.jit(make_train_step(spec, tx, ema_decay=ema_decay_fn(cfg),
                                   dtype=jax.numpy.bfloat16 if dtype == "bfloat16" else None), donate_argnums=(0,))
    return step, create_state(variables, tx), fake_batch(batch, imgsz), spec


def cmd_breakdown(args) -> dict:
    import jax
    step, state, batch, _ = build_step(args.variant, args.imgsz, args.batch)
    load0 = load()
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, None).compile()
    compile_s = time.perf_counter() - t0
    hlo = parse_hlo(compiled.as_text())
    info = classify(hlo)
    state, m = compiled(state, batch, None)
    jax.block_until_ready(m["loss"])
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                t0 = time.perf_counter()
                state, m = compiled(state, batch, None)
                jax.block_until_ready(m["loss"])
                walls.append(time.perf_counter() - t0)
        events = trace_events(tmp)
    per_name = collections.defaultdict(float)
    for e in events:
        if e["name"] in info:
            per_name[e["name"]] += e["dur"] / 1e3 / args.steps  # ms per step
    total = sum(per_name.values())
    wall_ms = statistics.median(walls) * 1e3
    by_phase, by_kind, by_pk = collections.Counter(), collections.Counter(), collections.Counter()
    flops = collections.Counter()
    for n, ms in per_name.items():
        i = info[n]
        by_phase[i["phase"]] += ms
        by_kind[i["kind"]] += ms
        by_pk[(i["phase"].split(" [")[0], i["kind"])] += ms
        flops[i["kind"]] += i["flops"]
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:args.top]
    res = {"variant": args.variant, "imgsz": args.imgsz, "batch": args.batch, "steps": args.steps,
           "compile_s": round(compile_s, 1), "wall_ms": med([w * 1e3 for w in walls]), "thunk_ms_sum": round(total, 1),
           "by_phase": {k: round(v, 1) for k, v in by_phase.most_common()},
           "by_kind": {k: round(v, 1) for k, v in by_kind.most_common()},
           "by_phase_kind": {f"{p} | {k}": round(v, 1) for (p, k), v in by_pk.most_common()},
           "conv_gflops": {k: round(v / 1e9, 2) for k, v in flops.items() if v},
           "top": [{"name": n, "ms": round(ms, 1), **{k: info[n][k] for k in ("phase", "kind", "op_name", "shape")},
                    "gflops": round(info[n]["flops"] / 1e9, 3)} for n, ms in top],
           "thunks": len(per_name), "load_before": load0, "load_after": load()}
    lines = [f"## Breakdown: yolov8{args.variant} {args.imgsz} px batch {args.batch}, {args.steps} traced steps",
             f"step wall {wall_ms:.0f} ms (median), sum of thunk times {total:.0f} ms/step over {len(per_name)} "
             f"thunks; compile {compile_s:.0f} s; load {load0} -> {res['load_after']}", "",
             *(["Thunk times sum to less than the wall time: Eigen convolution thunks (YNNPACK off) complete "
                "asynchronously, so their events hold only the dispatch; the convolutions' time is the remainder.", ""]
               if total < 0.9 * wall_ms else []),
             "| phase | ms/step | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.0f} | {100 * v / total:.1f}% |" for k, v in by_phase.most_common()]
    lines += ["", "| kind | ms/step | share | nominal GFLOP/step | GFLOP/s |", "|---|---:|---:|---:|---:|"]
    for k, v in by_kind.most_common():
        g = flops[k] / 1e9
        lines.append(f"| {k} | {v:.0f} | {100 * v / total:.1f}% | {g:.1f} | "
                     f"{g / (v / 1e3):.1f} |" if g else f"| {k} | {v:.0f} | {100 * v / total:.1f}% | | |")
    lines += ["", "| phase | kind | ms/step |", "|---|---|---:|"]
    lines += [f"| {p} | {k} | {v:.0f} |" for (p, k), v in by_pk.most_common(16)]
    lines += ["", "| thunk | ms/step | kind | GFLOP | op_name | shape |", "|---|---:|---|---:|---|---|"]
    for t in res["top"]:
        lines.append(f"| {t['name']} | {t['ms']:.1f} | {t['kind']} | {t['gflops']} | "
                     f"{t['op_name'].replace('jit(train_step)/', '')[:70]} | {t['shape']} |")
    res["markdown"] = "\n".join(lines)
    return res


# -- subsets -----------------------------------------------------------------------------------------------
def cmd_subsets(args) -> dict:
    import jax
    import jax.numpy as jnp
    from yolojax.loss import LossConfig, detection_loss
    from yolojax.model.yolov8 import YOLOv8
    step, state, batch, spec = build_step(args.variant, args.imgsz, args.batch)
    model = YOLOv8(spec)
    # copies: the step donates its state
    variables = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})
    images = jnp.asarray(batch["images"])

    def forward(params, images):
        (preds, _), upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      images.astype(jnp.float32) / 255.0, train=True, mutable=["batch_stats"])
        return preds, upd

    def fwd(params, images):
        preds, upd = forward(params, images)
        return jnp.sum(preds["dist"]) + jnp.sum(preds["logits"]), upd

    def fwd_bwd(params, images):  # gradient of a sum over the head outputs: no loss, no assigner
        return jax.grad(lambda p: fwd(p, images)[0])(params)

    preds, _ = jax.jit(forward)(variables["params"], images)
    preds = {k: v for k, v in preds.items()}
    lb = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss_grad(dist, logits):
        def f(d, lg):
            return detection_loss({**preds, "dist": d, "logits": lg}, lb, nc=spec.nc, reg_max=spec.reg_max,
                                   cfg=LossConfig())[0]
        return jax.value_and_grad(f, argnums=(0, 1))(dist, logits)

    cands = {"forward (train mode)": (jax.jit(fwd), (variables["params"], images)),
             "forward + backward, no loss": (jax.jit(fwd_bwd), (variables["params"], images)),
             "loss + its gradient (assigner incl.)": (jax.jit(loss_grad), (preds["dist"], preds["logits"]))}
    load0 = load()
    compile_s = {}
    for name, (f, a) in cands.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(*a))
        compile_s[name] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    state, m = step(state, batch, None)
    jax.block_until_ready(m["loss"])
    compile_s["full step"] = round(time.perf_counter() - t0, 1)
    times = collections.defaultdict(list)
    for _ in range(args.rounds):
        for name, (f, a) in cands.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state, m = step(state, batch, None)
        jax.block_until_ready(m["loss"])
        times["full step"].append(time.perf_counter() - t0)
    full = statistics.median(times["full step"])
    res = {"variant": args.variant, "imgsz": args.imgsz, "batch": args.batch, "rounds": args.rounds,
           "times_s": {k: med(v) for k, v in times.items()}, "compile_s": compile_s,
           "load_before": load0, "load_after": load()}
    lines = [f"## Subsets: yolov8{args.variant} {args.imgsz} px batch {args.batch}, {args.rounds} interleaved rounds "
             f"(load {load0} -> {res['load_after']})", "", "| jitted alone | s (median [min, max]) | / full step |",
             "|---|---:|---:|"]
    for k, v in times.items():
        s = med(v)
        lines.append(f"| {k} | {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] | {s['median'] / full:.2f} |")
    res["markdown"] = "\n".join(lines)
    return res


# -- flags -------------------------------------------------------------------------------------------------
# glibc's malloc: transparent huge pages for its mmapped chunks (XLA's large buffers are fresh mmaps every step:
# ~140k page faults per yolov8n 320 px b8 step otherwise), and the same with large buffers kept in the heap.
_THP = "glibc.malloc.hugetlb=1"
_THP_HEAP = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
FLAG_CANDIDATES = {
    "default": ({}, []),
    "ynn off (Eigen convs)": ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}, []),
    "ynn convs off (Eigen convs, YNN reductions)": (
        {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"}, []),
    "ynn +eltwise": ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+eltwise"}, []),
    "fast math": ({"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}, []),
    "xnn graph fusion greedy": ({"XLA_FLAGS": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"}, []),
    "onednn dot,eltwise,reduce": ({"XLA_FLAGS": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"}, []),
    "no multi-thread eigen": ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, []),
    "use_thunk_runtime=false": ({"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"}, []),
    "matmul precision bf16": ({"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"}, []),
    "bfloat16 compute": ({}, ["--dtype", "bfloat16"]),
    "glibc malloc: no trim/mmap": ({"MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_MMAP_THRESHOLD_": "33554432",
                                    "MALLOC_TOP_PAD_": "1073741824"}, []),
    "glibc THP": ({"GLIBC_TUNABLES": _THP}, []),
    "glibc THP, no trim/mmap": ({"GLIBC_TUNABLES": _THP_HEAP}, []),
    "ynn off + glibc THP, no trim/mmap": ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=",
                                           "GLIBC_TUNABLES": _THP_HEAP}, []),
}


def cmd_child(args) -> dict:
    """One process: compile the step, time --steps steps (run by `flags`)."""
    import jax
    step, state, batch, _ = build_step(args.variant, args.imgsz, args.batch, args.dtype)
    t0 = time.perf_counter()
    state, m = step(state, batch, None)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t0
    ts = []
    ru0 = __import__("resource").getrusage(0)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = step(state, batch, None)
        jax.block_until_ready(m["loss"])
        ts.append(time.perf_counter() - t0)
    ru1 = __import__("resource").getrusage(0)
    return {"first_s": round(first, 2), "steps_s": [round(t, 4) for t in ts], "loss": float(m["loss"]),
            "minflt_per_step": (ru1.ru_minflt - ru0.ru_minflt) // max(args.steps, 1),
            "sys_s_per_step": round((ru1.ru_stime - ru0.ru_stime) / max(args.steps, 1), 3),
            "cpu_s_per_step": round((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / max(args.steps, 1), 3)}


def cmd_flags(args) -> dict:
    names = args.candidates or list(FLAG_CANDIDATES)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tempfile.mkdtemp(prefix="yolojax-flags-cache-")
    runs = collections.defaultdict(list)
    load0 = load()
    for r in range(args.rounds):
        for name in names:
            env_extra, extra_args = FLAG_CANDIDATES[name]
            env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, **env_extra}
            cmd = [sys.executable, __file__, "_child", "--variant", args.variant, "--imgsz", str(args.imgsz),
                   "--batch", str(args.batch), "--steps", str(args.steps), *extra_args]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            try:
                res = json.loads(p.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                res = {"error": (p.stdout + p.stderr).strip()[-400:]}
            res["load"] = load()[0]
            runs[name].append(res)
            print(f"round {r + 1} {name}: {res}", flush=True)
    lines = [f"## XLA CPU flags: yolov8{args.variant} {args.imgsz} px batch {args.batch}, a fresh process per "
             f"candidate, {args.rounds} interleaved rounds x {args.steps} steps (load {load0} -> {load()})", "",
             "| candidate | env / option | step s (median [min, max]) | vs default | process CPU s/step | vs default "
             "| first call s (round 1, compile incl.) | sys s/step | loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = cbase = None
    out = {}
    for name in names:
        ok = [x for x in runs[name] if "error" not in x]
        if not ok:
            lines.append(f"| {name} | {FLAG_CANDIDATES[name]} | failed: {runs[name][0]['error'][-120:]} | | | | |")
            continue
        s = med([t for x in ok for t in x["steps_s"]])
        c = statistics.median(x.get("cpu_s_per_step", math.nan) for x in ok)
        if name == "default":
            base, cbase = s["median"], c
        rel = f"{s['median'] / base:.2f}" if base else ""
        crel = f"{c / cbase:.2f}" if base else ""
        env_extra, extra_args = FLAG_CANDIDATES[name]
        what = " ".join([f"{k}={v}" for k, v in env_extra.items()] + extra_args) or "(none)"
        lines.append(f"| {name} | `{what}` | {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] | {rel} | {c:.2f} | {crel} | "
                     f"{ok[0]['first_s']} | {statistics.median(x['sys_s_per_step'] for x in ok):.2f} | "
                     f"{ok[-1]['loss']:.4g} |")
        out[name] = {"step_s": s, "runs": runs[name]}
    return {"variant": args.variant, "imgsz": args.imgsz, "batch": args.batch, "candidates": out,
            "markdown": "\n".join(lines)}


# -- conv formulations -------------------------------------------------------------------------------------
CONV_SHAPES = [  # (name, N, H, Cin, Cout, k, stride): yolov8n layers at 640 px, batch 8
    ("stem 3x3 s2 3->16 @640", 8, 640, 3, 16, 3, 2),
    ("3x3 s2 16->32 @320", 8, 320, 16, 32, 3, 2),
    ("C2f bottleneck 3x3 16->16 @160", 8, 160, 16, 16, 3, 1),
    ("C2f cv1 1x1 32->32 @160", 8, 160, 32, 32, 1, 1),
    ("C2f cv2 1x1 48->32 @160", 8, 160, 48, 32, 1, 1),
    ("3x3 64->64 @80", 8, 80, 64, 64, 3, 1),
    ("1x1 128->128 @40", 8, 40, 128, 128, 1, 1),
]


def conv_candidates(N, H, Cin, Cout, k, s):
    import jax
    import jax.numpy as jnp
    p = k // 2
    pad = ((p, p), (p, p))

    def nhwc(x, w):
        return jax.lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def nchw(x, w):  # x stored NHWC, transposed in and out (what a model in NCHW would not pay)
        return jax.lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def dot1x1(x, w):
        return jnp.einsum("nhwc,cd->nhwd", x, w.reshape(Cin, Cout))

    @jax.custom_vjp
    def wgrad_dots(x, w):  # forward and input gradient as XLA's; kernel gradient as k*k matmuls
        return nhwc(x, w)

    def wgrad_dots_fwd(x, w):
        return nhwc(x, w), (x, w)

    def wgrad_dots_bwd(res, g):
        x, w = res
        dx = jax.vjp(lambda x: nhwc(x, w), x)[1](g)[0]
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        ho, wo = g.shape[1], g.shape[2]
        rows = [[jnp.einsum("nhwc,nhwd->cd", xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :], g)
                 for j in range(k)] for i in range(k)]
        return dx, jnp.stack([jnp.stack(r) for r in rows])

    wgrad_dots.defvjp(wgrad_dots_fwd, wgrad_dots_bwd)

    def loss(f):
        def g(x, w):
            y = f(x, w)
            return jnp.sum(jax.nn.silu(y) * y)
        return jax.jit(jax.value_and_grad(g, argnums=(0, 1)))

    rng = jax.random.PRNGKey(0)
    x_nhwc = jax.random.normal(rng, (N, H, H, Cin))
    w_hwio = jax.random.normal(rng, (k, k, Cin, Cout)) * 0.1
    cands = {"NHWC/HWIO conv": (loss(nhwc), (x_nhwc, w_hwio)),
             "NCHW/OIHW conv": (loss(nchw), (jnp.transpose(x_nhwc, (0, 3, 1, 2)), jnp.transpose(w_hwio, (3, 2, 0, 1))))}
    cands["NHWC conv, kernel gradient as k*k dots (custom_vjp)"] = (loss(wgrad_dots), (x_nhwc, w_hwio))
    if k == 1 and s == 1:
        cands["1x1 as einsum (dot)"] = (loss(dot1x1), (x_nhwc, w_hwio))
    return cands


def cmd_conv_child(args) -> dict:
    import jax
    out = {}
    for name, N, H, Cin, Cout, k, s in CONV_SHAPES:
        cands = conv_candidates(N, H, Cin, Cout, k, s)
        for c, (f, a) in cands.items():
            jax.block_until_ready(f(*a))
        times = collections.defaultdict(list)
        for _ in range(args.rounds):
            for c, (f, a) in cands.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(*a))
                times[c].append(time.perf_counter() - t0)
        out[name] = {c: med(v) for c, v in times.items()}
        out[name]["gflop_fwd"] = round(2 * N * (H // s) ** 2 * Cin * Cout * k * k / 1e9, 3)
    return out


def cmd_conv(args) -> dict:
    """Each shape under the default runtime and with YNNPACK off, in two processes run alternately."""
    envs = {"default (YNNPACK convs)": {}, "ynn off (Eigen convs)": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}}
    runs = collections.defaultdict(list)
    load0 = load()
    for r in range(args.outer):
        for label, extra in envs.items():
            cmd = [sys.executable, __file__, "_conv_child", "--rounds", str(args.rounds)]
            p = subprocess.run(cmd, env={**os.environ, **extra}, capture_output=True, text=True)
            runs[label].append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"conv round {r + 1} {label} done (load {load()[0]})", flush=True)
    lines = [f"## Conv + gradient (value_and_grad w.r.t. input and kernel of sum(silu(y) * y)), ms; median of "
             f"{args.rounds} calls per process, median over {args.outer} alternating processes (load {load0} -> "
             f"{load()})", "", "| layer | GFLOP fwd | formulation | default (YNNPACK) ms | Eigen ms |",
             "|---|---:|---|---:|---:|"]
    for name, *_ in CONV_SHAPES:
        first = runs["default (YNNPACK convs)"][0][name]
        for c in first:
            if c == "gflop_fwd":
                continue
            vals = [statistics.median(x[name][c]["median"] for x in runs[label]) * 1e3 for label in envs]
            lines.append(f"| {name} | {first['gflop_fwd']} | {c} | {vals[0]:.1f} | {vals[1]:.1f} |")
    return {"runs": runs, "markdown": "\n".join(lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["breakdown", "subsets", "flags", "conv", "_child", "_conv_child"])
    ap.add_argument("--variant", default="n")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--outer", type=int, default=2, help="conv: alternating processes per runtime")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--candidates", nargs="*", default=None, help=f"flags: subset of {list(FLAG_CANDIDATES)}")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    fn = {"breakdown": cmd_breakdown, "subsets": cmd_subsets, "flags": cmd_flags, "conv": cmd_conv,
          "_child": cmd_child, "_conv_child": cmd_conv_child}[args.what]
    res = fn(args)
    if args.what.startswith("_"):
        print(json.dumps(res))
        return
    print(res["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
