"""Parity with Ultralytics: every layer output of the reference yolov8n and yolov8n-obb, and the .pt importer."""
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

import yolojax
from yolojax.model import YOLOv8
from yolojax.model.ultralytics import (UnsafeCheckpointError, import_state_dict, load_npz_state, read_pt,
                                       spec_from_state_dict, export_state_dict)
from tests.conftest import REFERENCE, REPO


def _run_all_layers(spec, variables, x_nchw):
    (preds, feats), inter = YOLOv8(spec).apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)),
                                               mutable=["intermediates"])
    layers = {k: np.asarray(v[0]).transpose(0, 3, 1, 2) for k, v in inter["intermediates"].items()}
    return preds, feats, layers


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_npz_import_reproduces_every_layer_and_y():
    io = np.load(REFERENCE / "yolov8n_nc80_io.npz")
    spec, variables = import_state_dict(None, load_npz_state(REFERENCE / "yolov8n_nc80_state.npz"))
    assert (spec.variant, spec.nc, spec.task) == ("n", 80, "detect")
    preds, feats, layers = _run_all_layers(spec, variables, io["input"])
    for i in range(22):
        assert _rel(layers[f"layer{i:02d}"], io[f"layer{i:02d}"]) <= 1e-4, f"layer{i:02d}"
    for i, k in enumerate(("p3", "p4", "p5")):
        assert _rel(np.asarray(feats[k]).transpose(0, 3, 1, 2), io[f"feat{i}"]) <= 1e-4
    y = np.concatenate([preds["boxes"], preds["scores"]], -1).transpose(0, 2, 1)
    assert _rel(y, io["y_f64"]) <= 1e-5
    np.testing.assert_allclose(y[:, 4:], io["y_f64"][:, 4:], atol=2e-5)  # scores in [0,1]
    np.testing.assert_allclose(np.asarray(preds["dist"]).transpose(0, 2, 1), io["boxes"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(preds["anchors"]).T, io["anchors"])
    np.testing.assert_allclose(np.asarray(preds["strides"])[None], io["strides"])


def test_obb_import_reproduces_every_layer_and_y():
    io = np.load(REFERENCE / "yolov8n_obb_nc15_io.npz")
    spec, variables = import_state_dict(None, load_npz_state(REFERENCE / "yolov8n_obb_nc15_state.npz"))
    assert (spec.task, spec.nc) == ("obb", 15)
    preds, feats, layers = _run_all_layers(spec, variables, io["input"])
    for i in range(22):
        assert _rel(layers[f"layer{i:02d}"], io[f"layer{i:02d}"]) <= 1e-4, f"layer{i:02d}"
    y = np.concatenate([preds["boxes"], preds["scores"], preds["angle"]], -1).transpose(0, 2, 1)
    assert _rel(y[:, :4], io["y"][:, :4]) <= 1e-5
    np.testing.assert_allclose(y[:, 4:], io["y"][:, 4:], atol=1e-4)


def test_state_dict_round_trip():
    state = load_npz_state(REFERENCE / "yolov8n_nc80_state.npz")
    spec, variables = import_state_dict(None, state)
    back = export_state_dict(spec, variables)
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    assert set(back) == wanted
    for k in wanted:
        np.testing.assert_array_equal(back[k], state[k].astype(np.float32), err_msg=k)


def test_wrong_shapes_are_named():
    state = load_npz_state(REFERENCE / "yolov8n_nc80_state.npz")
    with pytest.raises(ValueError, match=r"model.0.conv.weight: shape \(16, 3, 3, 3\)"):
        import_state_dict(yolojax.yolov8_spec("s", 80), state)
    del state["model.9.cv2.bn.bias"]
    with pytest.raises(KeyError, match="model_9/cv2/bn/bias"):
        import_state_dict(yolojax.yolov8_spec("n", 80), state)


def test_spec_inferred_from_pruned_state_dict():
    state = load_npz_state(REFERENCE / "yolov8n_nc80_state.npz")
    # drop channels 0..3 of model.1 (a plain Conv): its BN and the consumer's input shrink
    for k in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        state[f"model.1.{k}"] = state[f"model.1.{k}"][4:]
    state["model.2.cv1.conv.weight"] = state["model.2.cv1.conv.weight"][:, 4:]
    spec = spec_from_state_dict(state)
    assert spec.width("model_1") == 28 and spec.variant == "n"
    spec2, variables = import_state_dict(None, state)
    assert spec2 == spec and variables["params"]["model_2"]["cv1"]["conv"]["kernel"].shape == (1, 1, 28, 32)


PT_CHECK = textwrap.dedent("""
    import sys
    sys.modules['torch'] = None          # `import torch` now raises ImportError
    sys.modules['ultralytics'] = None
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit('torch importable')
    import numpy as np, yolojax
    from yolojax.model.ultralytics import load_npz_state
    ref = sys.argv[1]
    det = yolojax.from_ultralytics(ref + '/yolov8n_nc80_random.pt')
    assert det.spec.variant == 'n' and det.spec.nc == 80 and len(det.spec.names) == 80
    # the .pt holds the npz weights rounded to float16: rebuild that model exactly from the npz
    state = {k: v.astype(np.float16).astype(np.float32) for k, v in load_npz_state(ref + '/yolov8n_nc80_state.npz').items()
             if not k.endswith('num_batches_tracked')}
    exact = yolojax.from_ultralytics.__globals__['ul'].import_state_dict(det.spec, state)
    import jax
    for a, b in zip(jax.tree.leaves(det.variables), jax.tree.leaves(exact)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    io = np.load(ref + '/yolov8n_nc80_io.npz')
    p = det(io['input'].transpose(0, 2, 3, 1))
    y = np.concatenate([p['boxes'], p['scores']], -1).transpose(0, 2, 1)
    rel = np.abs(y - io['y_f64']).max() / np.abs(io['y_f64']).max()
    assert rel < 5e-3, rel                    # float16 weights: ~1e-3 relative on pixel coordinates
    assert np.abs(y[:, 4:] - io['y_f64'][:, 4:]).max() < 1e-2  # scores: seen 6e-3
    print('ok', rel)
""")


def test_pt_import_without_torch():
    out = subprocess.run([sys.executable, "-c", PT_CHECK, str(REFERENCE)], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_malicious_pt_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "os.system":
        obj = {"model": _Evil(f"touch {marker}")}
    else:
        class _Eval:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w')",))
        obj = {"model": _Eval()}
    pt = tmp_path / "evil.pt"
    with zipfile.ZipFile(pt, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr("evil/byteorder", "little")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load global"):
        read_pt(pt)
    with pytest.raises(UnsafeCheckpointError):
        yolojax.from_ultralytics(pt)
    assert not marker.exists()


def test_not_a_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match="not a zip-format"):
        read_pt(bad)
