"""Distillation: losses against direct numpy formulas, gradient flow (never into the teacher), adapters,
the trainer closure, a short prune-then-distil run (teacher untouched, adapters not in the checkpoint), CLI."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import adapters as ad
from distill.losses import (anchor_weights, angle_kd_loss, attention_map, cls_kd_loss, cwd_loss, dfl_kd_loss,
                            logit_kd_loss, multi_scale, sad_loss)
from distill.train import DistillConfig, make_distill_loss, parse_method

RNG = np.random.default_rng(0)


def _maps(shape=(2, 5, 6, 7), seed=0, scale=2.0):
    r = np.random.default_rng(seed)
    return (r.normal(size=shape) * scale).astype(np.float32), (r.normal(size=shape) * scale).astype(np.float32)


# -- numpy references -------------------------------------------------------------------------------------
def _np_log_softmax(x, axis):
    x = x.astype(np.float64)
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


def np_cwd(s, t, tau):
    b, h, w, c = s.shape
    total = 0.0
    for i in range(b):
        for k in range(c):
            ls = _np_log_softmax(s[i, :, :, k].ravel() / tau, 0)
            lt = _np_log_softmax(t[i, :, :, k].ravel() / tau, 0)
            total += np.sum(np.exp(lt) * (lt - ls))
    return tau ** 2 * total / (b * c)


def np_sad(s, t):
    def at(x):
        a = (x.astype(np.float64) ** 2).mean(-1).reshape(x.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.mean((at(s) - at(t)) ** 2)


def _sig(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def np_cls_bce(s, t, w, tau):
    """BCE(s/tau, sigmoid(t/tau)) - entropy(sigmoid(t/tau)), summed over classes, weighted anchor mean."""
    ps, pt = _sig(s / tau), _sig(t / tau)
    bce = -(pt * np.log(ps) + (1 - pt) * np.log(1 - ps))
    ent = -(pt * np.log(pt) + (1 - pt) * np.log(1 - pt))
    per = (bce - ent).sum(-1)
    return tau ** 2 * (per * w).sum() / max(w.sum(), 1.0)


def np_dfl_kd(s, t, w, reg_max, tau):
    b, a, _ = s.shape
    ls = _np_log_softmax(s.reshape(b, a, 4, reg_max) / tau, -1)
    lt = _np_log_softmax(t.reshape(b, a, 4, reg_max) / tau, -1)
    per = (np.exp(lt) * (lt - ls)).sum(-1).mean(-1)
    return tau ** 2 * (per * w).sum() / max(w.sum(), 1.0)


# -- CWD ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_cwd_matches_numpy_formula(tau):
    s, t = _maps(seed=int(tau * 10))
    np.testing.assert_allclose(float(cwd_loss(s, t, tau)), np_cwd(s, t, tau), rtol=2e-5)


def test_cwd_zero_iff_equal_and_positive_otherwise():
    s, t = _maps()
    assert float(cwd_loss(t, t, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(cwd_loss(t + 3.0, t, 1.0)) == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant
    assert float(cwd_loss(s, t, 1.0)) > 0.1
    assert float(cwd_loss(s, t, 1.0)) != pytest.approx(float(cwd_loss(t, s, 1.0)), rel=1e-3)  # KL is directed


def test_cwd_gradient_reaches_student_only():
    s, t = _maps()
    g_s, g_t = jax.grad(cwd_loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
    assert float(jnp.abs(g_s).max()) > 1e-4
    assert float(jnp.abs(g_t).max()) == 0.0
    # the teacher side is stopped inside the loss, not by the caller: the same holds when teacher features
    # come from differentiable parameters
    g_param = jax.grad(lambda a: cwd_loss(jnp.asarray(s), a * jnp.asarray(t)))(2.0)
    assert float(g_param) == 0.0


def test_cwd_rejects_different_widths():
    with pytest.raises(ValueError, match="adapters"):
        cwd_loss(np.zeros((1, 4, 4, 8)), np.zeros((1, 4, 4, 16)))


def test_multi_scale_weights():
    feats = {k: _maps((2, 8 // (2 ** i), 8 // (2 ** i), 4), seed=i) for i, k in enumerate(("p3", "p4", "p5"))}
    s = {k: v[0] for k, v in feats.items()}
    t = {k: v[1] for k, v in feats.items()}
    total, parts = multi_scale(cwd_loss, s, t, (2.0, 1.0, 0.5), tau=1.0)
    want = 2 * np_cwd(s["p3"], t["p3"], 1) + np_cwd(s["p4"], t["p4"], 1) + 0.5 * np_cwd(s["p5"], t["p5"], 1)
    np.testing.assert_allclose(float(total), want, rtol=2e-5)
    assert set(parts) == {"p3", "p4", "p5"}
    _, parts = multi_scale(cwd_loss, s, t, (1.0, 0.0, 1.0))
    assert set(parts) == {"p3", "p5"}  # a zero weight skips the scale


# -- spatial attention -------------------------------------------------------------------------------------
def test_attention_matches_numpy_and_is_unit_norm():
    s, t = _maps((3, 4, 5, 6), seed=3)
    np.testing.assert_allclose(float(sad_loss(s, t)), np_sad(s, t), rtol=1e-5)
    a = np.asarray(attention_map(s))
    assert a.shape == (3, 20)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    # widths may differ (no adapter needed): the map averages over channels
    t_wide = np.concatenate([t, t], -1)
    np.testing.assert_allclose(float(sad_loss(s, t_wide)), np_sad(s, t), rtol=1e-5)


def test_distill_gradients_are_finite_on_a_dead_student_level():
    """A pruned student's level can be exactly 0 (every kept gamma and beta 0): seen in the demo's student, whose
    P4/P5 outputs are 0 everywhere. SAD's normalisation then divides 0 by 0 unless guarded: the first
    fine-tuning step had a NaN gradient and the run stopped."""
    s, t = _maps((2, 4, 4, 8), seed=5)
    dead = np.zeros_like(s)
    for fn in (sad_loss, cwd_loss):
        g = np.asarray(jax.grad(lambda f: fn(f, t))(jnp.asarray(dead)))
        assert np.isfinite(g).all(), fn.__name__
    assert np.isfinite(float(sad_loss(dead, t))) and np.asarray(attention_map(dead)).max() == 0.0


def test_attention_zero_iff_equal_and_teacher_gets_no_gradient():
    s, t = _maps((2, 4, 4, 5), seed=4)
    assert float(sad_loss(t, t)) == pytest.approx(0.0, abs=1e-12)
    assert float(sad_loss(2.0 * t, t)) == pytest.approx(0.0, abs=1e-10)  # scale-free
    assert float(sad_loss(s, t)) > 1e-4
    g_s, g_t = jax.grad(sad_loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
    assert float(jnp.abs(g_s).max()) > 1e-6
    assert float(jnp.abs(g_t).max()) == 0.0


# -- logit KD ----------------------------------------------------------------------------------------------
def _head(seed, B=2, A=30, nc=5, R=16, scale=2.0):
    r = np.random.default_rng(seed)
    logits = (r.normal(size=(B, A, nc)) * scale - 2).astype(np.float32)
    return {"logits": logits, "scores": (1 / (1 + np.exp(-logits))).astype(np.float32),
            "dist": (r.normal(size=(B, A, 4 * R)) * scale).astype(np.float32),
            "angle": r.uniform(-0.7, 2.3, (B, A, 1)).astype(np.float32)}


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("mode", ["score", "threshold"])
def test_logit_kd_matches_numpy(tau, mode):
    s, t = _head(1), _head(2)
    w = t["scores"].max(-1) if mode == "score" else (t["scores"].max(-1) > 0.25).astype(np.float64)
    assert 0 < (t["scores"].max(-1) > 0.25).sum() < w.size  # the threshold keeps some anchors, not all
    wj = anchor_weights(t["scores"], mode, 0.25)
    np.testing.assert_allclose(np.asarray(wj), w, rtol=1e-6)
    np.testing.assert_allclose(float(cls_kd_loss(s["logits"], t["logits"], wj, tau=tau)),
                               np_cls_bce(s["logits"], t["logits"], w, tau), rtol=1e-4)
    np.testing.assert_allclose(float(dfl_kd_loss(s["dist"], t["dist"], wj, reg_max=16, tau=tau)),
                               np_dfl_kd(s["dist"], t["dist"], w, 16, tau), rtol=1e-4)
    d = np.abs(s["angle"] - t["angle"])[..., 0].astype(np.float64)
    huber = np.where(d < 0.1, 0.5 * d * d / 0.1, d - 0.05)
    np.testing.assert_allclose(float(angle_kd_loss(s["angle"], t["angle"], wj)),
                               (huber * w).sum() / max(w.sum(), 1.0), rtol=1e-4)


def test_cls_kd_softmax_mode_matches_numpy():
    s, t = _head(3), _head(4)
    w = t["scores"].max(-1)
    ls, lt = _np_log_softmax(s["logits"] / 2.0, -1), _np_log_softmax(t["logits"] / 2.0, -1)
    want = 4.0 * ((np.exp(lt) * (lt - ls)).sum(-1) * w).sum() / max(w.sum(), 1.0)
    np.testing.assert_allclose(float(cls_kd_loss(s["logits"], t["logits"], w, tau=2.0, mode="kl")), want, rtol=1e-4)


def test_logit_kd_zero_iff_equal_and_teacher_gets_no_gradient():
    s, t = _head(5), _head(6)
    same = logit_kd_loss(t, t)
    assert set(same) == {"cls", "dfl", "angle"}
    for k, v in same.items():
        assert float(v) == pytest.approx(0.0, abs=1e-5), k
    diff = logit_kd_loss(s, t)
    for k, v in diff.items():
        assert float(v) > 1e-3, k
    sj = {k: jnp.asarray(v) for k, v in s.items()}
    tj = {k: jnp.asarray(v) for k, v in t.items()}
    total = lambda a, b: sum(logit_kd_loss(a, b).values())  # noqa: E731
    g_s, g_t = jax.grad(total, argnums=(0, 1))(sj, tj)
    for k in ("logits", "dist", "angle"):
        assert float(jnp.abs(g_s[k]).max()) > 1e-6, k
    for k, g in g_t.items():
        assert float(jnp.abs(g).max()) == 0.0, k
    # detect heads have no angle: the term is simply absent
    assert set(logit_kd_loss({k: v for k, v in s.items() if k != "angle"}, t)) == {"cls", "dfl"}


def test_logit_kd_no_confident_anchor_gives_zero_not_nan():
    s, t = _head(7), _head(8)
    t["scores"] = np.full_like(t["scores"], 0.01)
    out = logit_kd_loss(s, t, weight_mode="threshold", threshold=0.5)
    assert float(out["cls"]) == 0.0 and float(out["dfl"]) == 0.0


# -- adapters ----------------------------------------------------------------------------------------------
def test_adapters_shapes_and_fit_recover_a_channel_selection():
    r = np.random.default_rng(9)
    teacher = {k: r.normal(size=(4, 8 // 2 ** i, 8 // 2 ** i, 16)).astype(np.float32)
               for i, k in enumerate(("p3", "p4", "p5"))}
    keep = np.sort(r.choice(16, 8, replace=False))
    student = {k: v[..., keep] for k, v in teacher.items()}
    rand = ad.init_adapters(0, {k: 8 for k in teacher}, {k: 16 for k in teacher})
    assert rand["p3"]["kernel"].shape == (1, 1, 8, 16) and rand["p3"]["bias"].shape == (16,)
    assert ad.apply_adapters(rand, student)["p4"].shape == (4, 4, 4, 16)
    fit = ad.fit_adapters(student, teacher, scales=("p3",), ridge=1e-6)
    assert set(fit) == {"p3"}
    mapped = ad.apply_adapters(fit, student)
    np.testing.assert_allclose(np.asarray(mapped["p3"])[..., keep], teacher["p3"][..., keep], atol=1e-3)
    assert mapped["p4"] is student["p4"]  # scales without an adapter pass through
    # the kept channels are copied, the lost ones can only be predicted (here: noise, so ~0)
    k = np.asarray(fit["p3"]["kernel"][0, 0])
    np.testing.assert_allclose(k[:, keep], np.eye(8), atol=1e-3)


def test_needed_scales_and_method_parsing():
    from yolojax.model import tiny_spec
    t = tiny_spec(3)
    w = dict(t.width_map)
    w["model_15/cv2"] = 8
    s = t.replace(widths=w)
    assert ad.neck_widths(t)["p3"] != 8
    assert ad.needed_scales(s, t) == ("p3",)
    assert ad.needed_scales(s, t, True) == ("p3", "p4", "p5")
    assert ad.needed_scales(s, t, False) == ()
    assert parse_method("logit+cwd") == ("cwd", "logit") and parse_method("none") == ()
    with pytest.raises(ValueError, match="distillation method"):
        parse_method("cwd+fitnet")
    with pytest.raises(ValueError, match="enable adapters"):
        make_distill_loss(t, s, DistillConfig(method="cwd", adapters=False))
    make_distill_loss(t, s, DistillConfig(method="sad", adapters=False))  # attention needs no adapter
    with pytest.raises(ValueError, match="nc"):
        make_distill_loss(tiny_spec(4), t, DistillConfig())
    with pytest.raises(ValueError, match="scale_weights"):
        DistillConfig(scale_weights=(1.0, -1.0))
    from distill.losses import level_weights
    assert level_weights((2.0, 1.0, 1.0), 4) == (2.0, 1.0, 1.0, 1.0)  # a P2 model: the last weight repeats
    with pytest.raises(ValueError, match="at most 3"):
        level_weights((1.0, 1.0, 1.0, 1.0), 3)


# -- the trainer closure -----------------------------------------------------------------------------------
def lively(variables, seed):
    """Fresh weights whose signals survive the depth (a plain init fades to a constant by the head, which
    makes a pruned copy agree with its teacher everywhere) and whose BN gammas differ (pruning picks)."""
    r = np.random.default_rng(seed)

    def f(path, x):
        x, name = np.asarray(x), path[-1].key
        if name == "kernel":
            return x * 2.0
        if name == "scale":
            return r.uniform(0.3, 1.5, x.shape).astype(np.float32)
        if name == "bias" and path[-2].key == "bn":
            return r.normal(0, 0.3, x.shape).astype(np.float32)
        return x
    return {"params": jax.tree_util.tree_map_with_path(f, variables["params"]),
            "batch_stats": jax.tree.map(np.asarray, variables["batch_stats"])}


@pytest.fixture(scope="module")
def pair():
    """A tiny teacher and its 50%-per-layer pruned student (P3 narrower: adapters needed)."""
    import pruning
    from yolojax.model import init_variables, tiny_spec
    t_spec = tiny_spec(3)
    t_vars = lively(init_variables(t_spec, 1), 1)
    s_spec, s_vars = pruning.prune(t_spec, t_vars, pruning.LayerRatio(ratio=0.5))
    return t_spec, jax.tree.map(np.asarray, t_vars), s_spec, jax.tree.map(np.asarray, s_vars)


def test_extra_loss_items_total_and_gradients(pair):
    from distill.train import init_aux
    from yolojax.model import YOLOv8
    t_spec, t_vars, s_spec, s_vars = pair
    assert ad.neck_widths(s_spec) != ad.neck_widths(t_spec)
    images = jnp.asarray(RNG.uniform(0, 1, (2, 64, 64, 3)), jnp.float32)
    dcfg = DistillConfig(method="cwd+sad+logit", loss_weight=0.5)
    aux = init_aux(t_spec, t_vars, s_spec, s_vars, dcfg, images=np.asarray(images * 255, np.uint8))
    assert set(aux["adapters"]) == set(ad.needed_scales(s_spec, t_spec))
    fn = make_distill_loss(t_spec, s_spec, dcfg)

    def total(aux, params, teacher):
        preds, feats = YOLOv8(s_spec).apply({"params": params, "batch_stats": s_vars["batch_stats"]}, images)
        return fn(aux, preds, feats, images, {}, teacher)

    grad_fn = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True))
    (loss, items), (g_aux, g_params, g_teacher) = grad_fn(aux, s_vars["params"], t_vars)
    assert set(items) == {"distill_cwd", "distill_sad", "distill_cls", "distill_dfl", "distill"}
    parts = sum(float(items[k]) for k in items if k != "distill")
    assert float(items["distill"]) == pytest.approx(parts, rel=1e-6)
    assert float(loss) == pytest.approx(parts * 2, rel=1e-6)  # x batch size, like the detection loss
    assert all(float(items[k]) > 0 for k in items)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_aux)) > 0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_params)) > 0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_teacher)) == 0.0
    # the global weight scales every term
    fn2 = make_distill_loss(t_spec, s_spec, DistillConfig(method="cwd+sad+logit", loss_weight=1.0))
    preds, feats = jax.jit(YOLOv8(s_spec).apply)(s_vars, images)
    _, items2 = jax.jit(fn2)(aux, preds, feats, images, {}, t_vars)
    assert float(items2["distill_cwd"]) == pytest.approx(2 * float(items["distill_cwd"]), rel=1e-5)


def test_self_distillation_is_zero(pair):
    """Student == teacher, identity adapters: every term vanishes."""
    from yolojax.model import YOLOv8
    t_spec, t_vars, _, _ = pair
    images = jnp.asarray(RNG.uniform(0, 1, (2, 64, 64, 3)), jnp.float32)
    fn = make_distill_loss(t_spec, t_spec, DistillConfig(method="cwd+sad+logit"))
    preds, feats = jax.jit(YOLOv8(t_spec).apply)(t_vars, images)
    _, items = jax.jit(fn)({}, preds, feats, images, {}, t_vars)
    for k, v in items.items():
        assert float(v) == pytest.approx(0.0, abs=1e-5), k


# -- a short run -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolojax.data.synth import make_synthetic
    return Path(make_synthetic(tmp_path_factory.mktemp("synth"), images=10, imgsz=64, seed=5, progress=False))


def test_prune_then_distil_run_leaves_teacher_untouched(tmp_path, synth):
    from distill.train import distill_finetune, prune_student
    from yolojax import Detector
    from yolojax.checkpoint import checksums, load_model
    from yolojax.train.checkpoints import resume_info
    from yolojax.data import load_dataset
    from yolojax.model import init_variables, tiny_spec
    from yolojax.train.config import TrainConfig

    train = load_dataset(synth, "train")
    val = load_dataset(synth, "val")
    spec = tiny_spec(train.nc).replace(names=tuple(train.names))
    teacher = Detector(spec, lively(init_variables(spec, 2), 2), {"source": "test"})
    before = jax.tree.map(np.copy, teacher.variables)
    student = prune_student(teacher, 0.5, "layer")
    assert student.meta["pruning"][-1]["params_after"] < student.meta["pruning"][-1]["params_before"]
    cfg = TrainConfig(epochs=1, batch=4, imgsz=64, nbs=4, workers=0, optimizer="adamw", lr0=0.01,
                      warmup_epochs=0, mosaic=False, max_boxes=16)
    logs = distill_finetune(teacher, student, train, val, cfg, "cwd+logit", rundir=tmp_path / "kd",
                            progress=False)
    assert logs["distill_cwd"] > 0 and logs["distill_cls"] > 0 and logs["distill_dfl"] > 0
    assert "val/map50" in logs
    # the teacher is bit-identical
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), before, teacher.variables)
    # the saved student is a plain model of the student's structure: no adapters, no teacher
    for which in ("last", "best"):
        s_spec, s_vars, meta = load_model(tmp_path / "kd" / which)
        assert s_spec == student.spec.replace(names=tuple(train.names))
        assert jax.tree.structure(s_vars) == jax.tree.structure(student.variables)
        jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), np.shape(b)), s_vars, student.variables)
        assert meta["distillation"]["method"] == "cwd+logit" and "pruning" in meta
    # the adapters lived (and trained) only in the training state (every array of which has a fingerprint)
    names = resume_info(tmp_path / "kd")["fingerprints"]
    assert any("adapters" in n for n in names) and not any("adapters" in n for n in checksums(s_vars))
    info = json.loads((tmp_path / "kd" / "distill.json").read_text())
    assert info["adapters"] == list(ad.needed_scales(student.spec, teacher.spec))
    header = (tmp_path / "kd" / "results.csv").read_text().splitlines()[0]
    assert "distill_cwd" in header and "distill_dfl" in header


def test_cli_prune_ratio_sad_and_bad_arguments(tmp_path, synth):
    from yolojax import Detector
    from yolojax.cli import main
    from yolojax.model import init_variables, tiny_spec
    from yolojax.data import load_dataset
    names = load_dataset(synth, "train").names
    spec = tiny_spec(len(names)).replace(names=tuple(names))
    Detector(spec, lively(init_variables(spec, 3), 3)).save(tmp_path / "teacher")
    common = ["--teacher", str(tmp_path / "teacher"), "--data", str(synth), "--imgsz", "64",
              "--batch", "4", "--nbs", "4", "--workers", "0", "--no-progress", "--no-mosaic"]
    out = tmp_path / "kd"
    assert main(["distill", *common, "--prune-ratio", "0.5", "--method", "sad", "-o", str(out), "--epochs", "1",
                 "--weights", "1,1,1", "--sad-weight", "100"]) == 0
    info = json.loads((out / "distill.json").read_text())
    assert info["config"]["scale_weights"] == [1.0, 1.0, 1.0] and info["config"]["sad_weight"] == 100.0
    assert info["student"]["params"] < info["teacher"]["params"]
    assert info["data"] == str(synth)
    before = (out / "results.csv").read_text()
    # --resume rebuilds the run from distill.json + last/ (config, method, adapters); a finished run stays as is
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "-o", str(out), "--resume", "--no-progress"]) == 0
    assert (out / "results.csv").read_text() == before
    with pytest.raises(SystemExit, match="--student or --prune-ratio|--student CHECKPOINT"):
        main(["distill", *common, "-o", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main(["distill", *common, "--prune-ratio", "0.5", "--method", "fitnet", "-o", str(tmp_path / "x")])
