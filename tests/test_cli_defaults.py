"""A newcomer's first hour (issue 16): the CLI and the Python API share their defaults, every command runs a
model at its own image size and says so, `val` scores the data a model was trained on (or refuses), help texts
explain every option with its default, summaries instead of dumps, a cheap start."""
import argparse
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import yolojax
from yolojax.cli import HelpFormatter, build_parser, compilation_cache_dir, main
from yolojax.model import tiny_spec


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return Path(make_synthetic(tmp_path_factory.mktemp("synth"), images=10, imgsz=64, seed=5, progress=False))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synth):
    """A tiny checkpoint trained (as far as its meta says) at 64 px on `synth`."""
    from yolojax.data import load_dataset
    names = tuple(load_dataset(synth, "train").names)
    d = tmp_path_factory.mktemp("ck") / "tiny"
    yolojax.Detector.create(tiny_spec(len(names), names=names), seed=0).save(d, imgsz=64, data=str(synth))
    return d


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, ckpt):
    from export.onnx_emit import export_onnx
    return export_onnx(yolojax.load(ckpt), tmp_path_factory.mktemp("onnx") / "tiny.onnx", imgsz=64)  # fixed size


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. one set of defaults for the CLI and the API -----------------------------------------------------------

def test_compress_cli_defaults_are_compress_config():
    from yolojax.pipeline import CompressConfig, config_from_args
    args = build_parser().parse_args(["compress"])
    assert config_from_args(args) == CompressConfig()
    assert args.lr0 == CompressConfig.lr0 == 0.002  # not None: None fell back to TrainConfig's 0.01


def test_train_help_names_trainconfig_defaults(capsys):
    from yolojax.train.config import TrainConfig
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, field in (("--batch", "batch"), ("--workers", "workers"), ("--nbs", "nbs"), ("--lr0", "lr0")):
        assert f"(default {getattr(TrainConfig, field)}" in text, flag


# -- 7. help that explains ---------------------------------------------------------------------------------

def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield prefix + (name,), child
                yield from _subparsers(child, prefix + (name,))


def test_every_option_of_every_command_has_help_and_the_defaults_formatter():
    parser = build_parser()
    missing = []
    for path, p in _subparsers(parser):
        assert issubclass(p.formatter_class, HelpFormatter), path
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (a.help or "").strip():
                missing.append(f"{' '.join(path)} {a.option_strings or a.dest}")
    assert not missing, missing


@pytest.mark.parametrize("argv, says", [
    (("val",), ["(default: 0.001)", "(default: val)", "model's own", "training data"]),
    (("predict",), ["(default: 0.25)", "(default: runs/predict)", "predictions.json", "[x1, y1, x2, y2]"]),
    (("benchmark",), ["(default: onnxruntime)", "(default: 50)", "input shape"]),
    (("export",), ["(default: onnx)", "trained at"]),
    (("compress",), ["(default: 0.002)", "(default: 80)", "(default: runs/compress)", "(default: cwd)"]),
    (("data",), ["tile"]),
    (("data", "tile"), ["tile size"]),
])
def test_help_texts_show_defaults_and_explain(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for s in says:
        assert s in text, (argv, s)
    assert "(default: None)" not in text and "(default: False)" not in text


# -- 2. image sizes: the model's own, said -----------------------------------------------------------------

def test_info_uses_the_checkpoint_size(capsys, ckpt):
    rc, out, err = _run(capsys, "info", ckpt, "--json")
    assert rc == 0 and json.loads(out)["imgsz"] == 64
    assert "imgsz 64 (the model's own size" in err
    rc, out, err = _run(capsys, "info", "yolov8n", "--json")
    assert rc == 0 and json.loads(out)["imgsz"] == 640 and "Ultralytics' default" in err


def test_export_then_benchmark_run_at_the_model_size(tmp_path, capsys, ckpt):
    out = tmp_path / "m.onnx"
    rc, _, err = _run(capsys, "export", ckpt, "-o", out, "--no-check")
    assert rc == 0, err
    assert "export: imgsz 64 (the model's own size" in err
    from yolojax.commands import model_meta
    meta, _ = model_meta(out)
    assert meta["fixed_imgsz"] == (64, 64) and meta["data"] == yolojax.load(ckpt).meta["data"]
    rc, stdout, err = _run(capsys, "benchmark", out, "--runs", "2", "--warmup", "0", "--json")
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["imgsz"] == 64 and "benchmark: imgsz 64" in err
    r = res["results"][0]
    assert r["p10_ms"] <= r["p50_ms"] <= r["p90_ms"]


def test_a_fixed_size_graph_refuses_another_size_in_one_line(capsys, onnx_file, synth):
    for argv in (("benchmark", onnx_file, "--imgsz", "128"), ("val", onnx_file, "--imgsz", "96", "--data", synth)):
        rc, _, err = _run(capsys, *argv)
        line = _one_line_error(err)
        assert rc == 2 and "takes 64x64 images" in line and "not --imgsz" in line, argv


def test_models_of_different_sizes_need_imgsz(tmp_path, capsys, ckpt):
    other = tmp_path / "other"
    yolojax.load(ckpt).save(other, imgsz=96)
    rc, _, err = _run(capsys, "benchmark", ckpt, other, "--backend", "jax", "--runs", "1")
    assert rc == 2 and "different image sizes" in _one_line_error(err) and "--imgsz" in err


# -- 3. val scores the model's own data, or refuses ----------------------------------------------------------

def test_val_without_data_uses_the_recorded_training_data(capsys, ckpt, synth):
    rc, out, err = _run(capsys, "val", ckpt, "--json", "--batch", "2", "--workers", "0")
    assert rc == 0, err
    assert f"val: data {synth} [val] (the model's training data, recorded in {ckpt / 'meta.json'}" in err
    assert "val: imgsz 64 (the model's own size" in err
    assert json.loads(out)["images"] == 2


def _without_meta(ckpt):
    return dataclasses.replace(yolojax.load(ckpt), meta={})


def test_val_finds_the_data_of_a_compress_run(tmp_path, synth, ckpt):
    from yolojax.train.cli import _recorded_training_data
    run = tmp_path / "run"
    (run / "finetune").mkdir(parents=True)
    (run / "compress_config.json").write_text(json.dumps({"data": str(synth), "imgsz": 64}))
    best = run / "finetune" / "best"
    _without_meta(ckpt).save(best, imgsz=64)  # no data in its meta (older runs)
    assert _recorded_training_data(best) == (str(synth), str((run / "compress_config.json").resolve()))
    assert _recorded_training_data(run / "finetune") == _recorded_training_data(best)


def test_val_refuses_when_no_data_is_known(tmp_path, capsys, ckpt):
    bare = tmp_path / "bare"
    _without_meta(ckpt).save(bare, imgsz=64)
    for model in (bare, "yolov8n"):
        rc, _, err = _run(capsys, "val", model)
        line = _one_line_error(err)
        assert rc == 2 and "records no training data" in line and "--data" in line
    gone = tmp_path / "gone"
    _without_meta(ckpt).save(gone, imgsz=64, data=str(tmp_path / "nowhere.yaml"))
    rc, _, err = _run(capsys, "val", gone)
    assert rc == 2 and "nowhere.yaml" in _one_line_error(err) and "which is not here" in err


def test_predict_says_its_image_size(tmp_path, capsys, ckpt):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((64, 80, 3), 90, np.uint8))
    rc, _, err = _run(capsys, "predict", ckpt, tmp_path / "a.jpg", "--save-dir", tmp_path / "out")
    assert rc == 0, err
    assert "predict: imgsz 64 (the model's own size" in err
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert rows[0]["image"].endswith("a.jpg")


# -- 5. summaries, not dumps -------------------------------------------------------------------------------

def test_detector_repr_is_a_one_line_summary(ckpt):
    det = yolojax.load(ckpt)
    text = repr(det)
    assert len(text) < 300 and "\n" not in text and "array" not in text, text
    assert f"{det.num_params():,} params" in text and "GFLOPs@640" in text and "yolov8tiny" in text
    assert "unpruned" in text and "trained at 64 px" in text
    from pruning import GlobalRatio, prune
    spec, variables = prune(det.spec, det.variables, GlobalRatio(ratio=0.5, round_to=1, min_channels=1))
    assert "pruned:" in repr(yolojax.Detector(spec, variables))


def test_a_training_note_from_a_detector_is_short(ckpt):
    from yolojax.train.trainer import resolve_model
    det = yolojax.load(ckpt)
    _, _, note = resolve_model(det, det.spec.nc, list(det.names))
    assert len(note) < 300 and "array" not in note, note[:300]


def test_prune_policies_read_as_words():
    from pruning import Budget, GlobalRatio, LayerRatio
    from pruning.cli import policy_words
    words = policy_words(Budget(target_gflops=0.164, imgsz=128, prune_below=1e-2))
    assert "Budget(" not in words and "<= 0.164 GFLOPs at 128 px" in words and "|gamma| < 0.01 first" in words
    assert policy_words(LayerRatio(ratio=0.5)).startswith("the same share per layer: remove 50% of the channels")
    assert "global ranking" in policy_words(GlobalRatio(ratio=0.3).describe())


# -- 8. numbers that mislead ------------------------------------------------------------------------------

def test_report_sizes_are_decimal_mb_and_latency_shows_its_spread(tmp_path):
    from yolojax.report import MB, write_markdown
    assert MB == 1e6
    row = {"params": 1000, "gflops": 0.1, "gflops_640": 2.5, "macs": 5e7, "size_mb": 0.004, "map50": 0.5,
           "map50_95": 0.3, "map_small": 0.2, "map_medium": 0.4, "delta": {"map50": 0.0},
           "delta_pct": {"params": 0.0, "gflops": 0.0, "macs": 0.0},
           "jax_ms": 2.0, "jax_p10_ms": 1.5, "jax_p90_ms": 3.0, "ort_ms": 1.0, "ort_p10_ms": 0.9,
           "ort_p90_ms": 1.2, "ort_fps": 1000.0}
    onnx = {k: v for k, v in row.items() if not k.startswith("jax")}
    report = {"stages": {"baseline": row, "onnx": {**onnx, "ort_ms": 0.8, "ort_p10_ms": 0.7, "ort_p90_ms": 0.95}},
              "imgsz": 64, "stage_time_s": {}, "plots": {}, "config": {"bench_runs": 30}}
    text = write_markdown(report, tmp_path / "report.md").read_text()
    assert "ORT ms p50 (p10–p90)" in text and "MB = 10^6 bytes" in text
    assert "| 2.00 (1.50–3.00) | 1.00 (0.90–1.20) |" in text
    assert "| – | 0.80 (0.70–0.95) |" in text  # the ONNX row: its own measurement, no JAX number


# -- 6. a cheap start ------------------------------------------------------------------------------------

@pytest.mark.slow  # the reference init is the slow one: ~30 s on 2 busy cores
def test_fast_init_gives_the_same_weights():
    import jax
    from yolojax.model import YOLOv8, init_variables
    spec = tiny_spec(3)
    fast = init_variables(spec, 0)
    x = jax.numpy.zeros((1, 64, 64, 3))
    ref = jax.jit(lambda r: YOLOv8(spec).init(r, x))(jax.random.PRNGKey(0))  # the old way: optimised, 64 px
    ref = {"params": ref["params"], "batch_stats": ref["batch_stats"]}
    assert jax.tree.structure(fast) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_compilation_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("YOLOJAX_JAX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache_dir() == str(tmp_path / "yolojax" / "jax")
    monkeypatch.setenv("YOLOJAX_JAX_CACHE", str(tmp_path / "mine"))
    assert compilation_cache_dir() == str(tmp_path / "mine")
    monkeypatch.setenv("YOLOJAX_JAX_CACHE", "off")
    assert compilation_cache_dir() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-own"))
    assert compilation_cache_dir() == str(tmp_path / "jax-own")
