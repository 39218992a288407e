"""Pruning to a latency target (pruning/latency.py, LatencyTarget, `yolojax prune --target-ms`)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pruning import LatencyTarget, LayerRatio, build_groups, prune
from pruning.latency import (BadLatencyTable, LatencyModel, LatencyTable, LatencyTargetUnreachable, _Structure,
                             latency_model, settings)
from pruning.prune import spec_from_counts
from yolojax.api import Detector
from yolojax.model.counting import conv_table
from yolojax.model.spec import tiny_spec, yolov8_spec

IMGSZ = 64


def synthetic_table(spec, imgsz=IMGSZ, path=None) -> LatencyTable:
    """ms = 0.01 + 1e-7 * cin * cout * k^2 * h * w per conv (a FLOPs-like cost), on a 3-point grid."""
    tab = LatencyTable({"backend": "synthetic", "imgsz": imgsz, "batch": 1, "threads": 1}, path=path)
    for key, n in _Structure(spec, imgsz).needs().items():
        cins = sorted({n["cin_max"]} | ({8, max(8, n["cin_max"] // 2)} if not n["cin_fixed"] else set()))
        couts = sorted({n["cout_max"]} | ({8, max(8, n["cout_max"] // 2)} if not n["cout_fixed"] else set()))
        ms = np.array([[0.01 + 1e-7 * a * b * n["k"] ** 2 * n["h"] * n["w"] for b in couts] for a in cins])
        tab.set_site(key, cins, couts, ms)
    return tab


def random_gammas(det, seed=0):
    rng = np.random.default_rng(seed)
    import jax
    return jax.tree_util.tree_map_with_path(
        lambda p, x: rng.uniform(0.05, 1.0, x.shape).astype(np.float32) if p[-1].key == "scale" else np.asarray(x),
        det.variables)


def test_structure_matches_conv_table_of_pruned_spec():
    spec = yolov8_spec("n", 80)
    st = _Structure(spec, 320)
    groups = build_groups(spec)
    counts = LayerRatio(ratio=0.37).keep_counts(groups, {g.name: np.arange(g.size, dtype=float) for g in groups})
    rows = conv_table(spec_from_counts(spec, counts), 320)
    assert [st.cin(i, counts) for i in range(len(rows))] == [r.cin for r in rows]
    assert [st.cout(i, counts) for i in range(len(rows))] == [r.cout for r in rows]
    assert len(st.needs()) == 19  # distinct (k, stride, map, activation) sites of a YOLOv8 at 320


def test_plan_meets_target_under_its_own_table():
    spec = tiny_spec()
    det = Detector.create(spec)
    v = random_gammas(det)
    model = LatencyModel(spec, synthetic_table(spec))
    full = model.predict()
    groups = build_groups(spec)
    floor = model.predict({g.name: min(8, g.size) for g in groups})
    assert floor < full
    for share in (0.9, 0.7):
        target = floor + share * (full - floor)
        pol = LatencyTarget(target_ms=target, imgsz=IMGSZ, model=model)
        new_spec, _ = prune(spec, v, pol)
        got = model.predict_spec(new_spec)
        assert got <= target + 1e-9
        assert got > floor  # it did not just prune everything
        for g in build_groups(new_spec):  # round-to and min-channels kept
            size = next(x.size for x in groups if x.name == g.name)
            assert g.size == size or (g.size % 8 == 0 and g.size >= min(8, size))
    # greedy, one step at a time: the last step is the only overshoot, so the result is close to the target
    pol = LatencyTarget(target_ms=floor + 0.5 * (full - floor), imgsz=IMGSZ, model=model)
    new_spec, _ = prune(spec, v, pol)
    assert model.predict_spec(new_spec) > floor + 0.5 * (full - floor) - 0.25 * (full - floor)


def test_near_zero_channels_go_first_and_importance_decides():
    spec = tiny_spec()
    det = Detector.create(spec)
    v = random_gammas(det)
    model = LatencyModel(spec, synthetic_table(spec))
    groups = build_groups(spec)
    # zero every gamma of one wide group: with prune_below it is cut first even under a loose target
    g = max((g for g in groups if len(g.producers) == 1 and g.size >= 16), key=lambda g: g.size)
    path = g.producers[0].path.split("/")
    node = v["params"]
    for k in path:
        node = node[k]
    node["bn"]["scale"] = np.zeros_like(node["bn"]["scale"])
    pol = LatencyTarget(target_ms=model.predict() * 10, imgsz=IMGSZ, model=model, prune_below=1e-2)
    new_spec, _ = prune(spec, v, pol)
    kept = {x.name: x.size for x in build_groups(new_spec)}
    assert kept[g.name] == 8 and sum(kept.values()) == sum(x.size for x in groups) - (g.size - 8)


def test_unreachable_target_is_one_line_user_error():
    spec = tiny_spec()
    model = LatencyModel(spec, synthetic_table(spec))
    floor = model.predict({g.name: min(8, g.size) for g in build_groups(spec)})
    with pytest.raises(LatencyTargetUnreachable, match=r"below what the minimum widths allow") as e:
        prune(spec, Detector.create(spec).variables, LatencyTarget(target_ms=floor * 0.9, imgsz=IMGSZ, model=model))
    assert "\n" not in str(e.value) and f"{floor:.2f} ms" in str(e.value)


def test_table_round_trips_and_bad_files_name_themselves(tmp_path):
    spec = tiny_spec()
    tab = synthetic_table(spec, path=tmp_path / "t.json")
    tab.calibration["x"] = {"alpha": 1.5, "beta": -0.25}
    tab.save()
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.settings == tab.settings and back.sites == tab.sites and back.calibration == tab.calibration
    st = _Structure(spec, IMGSZ)
    counts = {g.name: max(8, g.size // 2) for g in st.groups}
    assert LatencyModel(spec, back).conv_sum(counts) == pytest.approx(LatencyModel(spec, tab).conv_sum(counts), abs=1e-4)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadLatencyTable, match=str(bad)):
        LatencyTable.load(bad)
    d = json.loads((tmp_path / "t.json").read_text())
    key = next(k for k, v in d["sites"].items() if len(v["cin"]) > 1)
    d["sites"][key]["ms"] = [[1.0]]
    bad.write_text(json.dumps(d))
    with pytest.raises(BadLatencyTable, match=f"{bad}.*{key}"):
        LatencyTable.load(bad)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A real ONNX Runtime table of the tiny model at 64 px (few repeats), and its checkpoint."""
    d = tmp_path_factory.mktemp("lat")
    det = Detector.create(tiny_spec())
    det.save(d / "tiny")
    model = latency_model(det.spec, backend="onnxruntime", imgsz=IMGSZ, table=d / "table.json", reps=3,
                          points=3, calibrate_reps=5)
    return d, det, model


def test_measured_table_settings_and_plan(measured):
    d, det, model = measured
    tab = LatencyTable.load(d / "table.json")
    want = settings("onnxruntime", IMGSZ, 1)
    for k in ("backend", "version", "imgsz", "batch", "threads", "cpu"):
        assert tab.settings[k] == want[k]
    assert "date" in tab.settings and model.calibrated
    assert LatencyModel(det.spec, tab).predict() == pytest.approx(model.predict())
    full = model.predict()
    floor = model.predict({g.name: min(8, g.size) for g in build_groups(det.spec)})
    assert 0 < floor < full
    target = 0.5 * (full + floor)
    new_spec, _ = prune(det.spec, random_gammas(det), LatencyTarget(target_ms=target, imgsz=IMGSZ, model=model))
    assert model.predict_spec(new_spec) <= target


def test_cli_refuses_target_below_minimum_widths(measured, capsys):
    from yolojax.cli import main
    d, det, model = measured
    floor = model.predict({g.name: min(8, g.size) for g in build_groups(det.spec)})
    rc = main(["prune", str(d / "tiny"), "-o", str(d / "out"), "--target-ms", f"{floor * 0.5:.4f}",
               "--imgsz", str(IMGSZ), "--latency-table", str(d / "table.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: --target-ms") and "below what the minimum widths allow" in err[-1]
    assert not (d / "out").exists()
    rc = main(["prune", str(d / "tiny"), "-o", str(d / "out"), "--target-ms", "1", "--imgsz", str(IMGSZ),
               "--backend", "tensorrt"])
    assert rc == 1 and "tensorrt" in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_prunes_to_target_with_measured_json(measured, capsys):
    from yolojax.cli import main
    d, det, model = measured
    full = model.predict()
    floor = model.predict({g.name: min(8, g.size) for g in build_groups(det.spec)})
    target = floor + 0.3 * (full - floor)
    rc = main(["prune", str(d / "tiny"), "-o", str(d / "out2"), "--target-ms", f"{target:.4f}", "--imgsz",
               str(IMGSZ), "--latency-table", str(d / "table.json"), "--measure-runs", "5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lat = out["latency"]
    assert lat["predicted_ms_after"] <= target + 1e-3 and lat["predicted_ms_before"] == pytest.approx(full, abs=1e-3)
    assert lat["measured_ms_before"] > 0 and lat["measured_ms_after"] > 0
    rep = json.loads((d / "out2" / "prune_report.json").read_text())
    assert rep["latency"]["target_ms"] == pytest.approx(float(f"{target:.4f}"))
