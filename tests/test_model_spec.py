"""Spec, parameter and FLOP counts against Ultralytics' numbers; every variant builds and runs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.model import YOLOv8, init_variables, tiny_spec, variable_shapes, yolov8_spec
from yolojax.model.counting import count_flops, count_macs, count_params, conv_table
from yolojax.model.spec import Spec
from tests.conftest import REFERENCE

TABLE = json.loads((REFERENCE / "param_flops_table.json").read_text())


@pytest.mark.parametrize("row", TABLE, ids=lambda r: f"{r['model']}-nc{r['nc']}")
def test_params_and_flops_match_ultralytics(row):
    spec = yolov8_spec(row["model"], row["nc"])
    assert count_params(spec) == row["params"]
    assert count_macs(spec, 640) == row["conv_macs"]
    assert round(count_flops(spec, 640), 3) == round(row["gflops_info"], 3)
    # the counted parameters are exactly the Flax tree's (+ the fixed DFL conv Ultralytics counts)
    tree = variable_shapes(spec)["params"]
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree)) + spec.reg_max == row["params"]


def test_obb_param_count():
    assert count_params(yolov8_spec("n", 15, task="obb")) == 3_085_440
    assert yolov8_spec("yolov8n-obb", 15).task == "obb"


def test_flops_scale_with_image_area():
    spec = yolov8_spec("n", 80)
    assert count_flops(spec, 320) == pytest.approx(count_flops(spec, 640) / 4, rel=1e-12)
    assert count_macs(spec, (320, 640)) * 2 == count_macs(spec, 640)


def test_spec_json_round_trip_and_hash():
    spec = yolov8_spec("s", 10, names=[f"c{i}" for i in range(10)])
    back = Spec.from_json(spec.to_json())
    assert back == spec and hash(back) == hash(spec)
    assert back.width("model_2/m_0/cv2") == 32 and back.split("model_2") == (32, 32)


def test_spec_validation_names_the_problem():
    spec = yolov8_spec("n", 80)
    with pytest.raises(ValueError, match="model_2: split"):
        spec.replace(splits={**spec.split_map, "model_2": (10, 10)})
    with pytest.raises(ValueError, match="model_4/m_0/cv2 is residual"):
        spec.replace(widths={**spec.width_map, "model_4/m_0/cv2": 8})
    with pytest.raises(ValueError, match="unknown YOLOv8 variant"):
        yolov8_spec("q")


def test_tiny_spec_is_tiny():
    spec = tiny_spec(nc=3)
    body = [w for p, w in spec.widths if not p.startswith("model_22")]
    assert min(body) >= 4 and max(body) <= 16
    assert count_params(spec) < 200_000


@pytest.mark.parametrize("variant", ["tiny", "n", "s", "m", "l", "x"])
def test_every_variant_builds_and_runs(variant):
    spec = yolov8_spec(variant, 5)
    variables = init_variables(spec, 0, imgsz=64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 96, 3))
    preds, feats = jax.jit(lambda v, x: YOLOv8(spec).apply(v, x))(variables, x)
    a = 8 * 12 + 4 * 6 + 2 * 3
    assert preds["boxes"].shape == (2, a, 4) and preds["scores"].shape == (2, a, 5)
    assert preds["dist"].shape == (2, a, 64) and preds["anchors"].shape == (a, 2)
    assert feats["p3"].shape == (2, 8, 12, spec.layer_out(15))
    assert feats["p5"].shape == (2, 2, 3, spec.layer_out(21))
    assert bool(jnp.all(jnp.isfinite(preds["boxes"])))
    # the conv table agrees with the real network's map sizes
    rows = {r.path: r for r in conv_table(spec, (64, 96))}
    assert (rows["model_21/cv2"].h, rows["model_21/cv2"].w) == (2, 3)


def test_train_mode_updates_batch_stats_only():
    spec = tiny_spec(2)
    v = init_variables(spec, 0)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))
    (_, _), upd = YOLOv8(spec).apply(v, x, train=True, mutable=["batch_stats"])
    before, after = v["batch_stats"]["model_0"]["bn"]["mean"], upd["batch_stats"]["model_0"]["bn"]["mean"]
    # Flax momentum 0.97 == PyTorch momentum 0.03: new = 0.97 * old + 0.03 * batch_mean
    assert not np.allclose(before, after)
    assert np.all(np.abs(np.asarray(after)) < 0.03 * 10)


def test_head_bias_init_matches_ultralytics():
    spec = yolov8_spec("n", 80)
    v = init_variables(spec, 0, imgsz=64)
    head = v["params"]["model_22"]
    np.testing.assert_allclose(head["cv2_0_2"]["bias"], 2.0)
    np.testing.assert_allclose(head["cv3_2_2"]["bias"], np.log(5 / 80 / (640 / 32) ** 2), rtol=1e-6)
