"""Structured pruning: dependency groups, exactness of constant folding, policies, every variant, round trip, CLI."""
import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import yolojax
from yolojax.checkpoint import check_shapes, save_model
from yolojax.model import YOLOv8, init_variables, variable_shapes
from yolojax.model.counting import conv_table, count_flops, count_params
from yolojax.model.spec import yolov8_spec

from pruning import (Budget, GlobalRatio, GlobalThreshold, GroupPolicy, LayerRatio, build_groups,
                     exact_anchor_mask, group_map, plan, prune)
from pruning.prune import apply_masks, importance_scores, prune_report


def _flat(tree):
    return {k: np.array(v) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _unflat(flat):
    return traverse_util.unflatten_dict(flat, sep="/")


def random_variables(spec, seed=0, dtype=np.float32):
    """Random {'params','batch_stats'} of the right shapes without running the model (fast for l/x)."""
    rng = np.random.default_rng(seed)
    shapes = variable_shapes(spec)
    out = {}
    for coll in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(dict(shapes[coll]), sep="/")
        out[coll] = {}
        for k, s in flat.items():
            if k.endswith("/var"):
                a = rng.uniform(0.5, 2.0, s.shape)
            elif k.endswith("bn/scale"):
                a = rng.uniform(0.0, 1.0, s.shape)
            else:
                a = rng.normal(0.0, 0.1, s.shape)
            out[coll][k] = a.astype(dtype)
        out[coll] = _unflat(out[coll])
    return out


def n_params(variables):
    return sum(np.size(l) for l in jax.tree.leaves(variables["params"]))


def forward(spec, variables, x):
    return jax.jit(lambda v, x: YOLOv8(spec).apply(v, x)[0])(variables, x)


# -- groups ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,task", [("n", "detect"), ("s", "detect"), ("m", "detect"), ("l", "detect"),
                                          ("x", "detect"), ("tiny", "detect"), ("n", "obb"), ("n-p2", "detect")])
def test_groups_cover_every_channel_exactly_once(variant, task):
    spec = yolov8_spec(variant, 80 if task == "detect" else 15, task=task)
    groups = build_groups(spec)
    rows = {r.path: r for r in conv_table(spec, 64)}
    out_cov = {p: np.zeros(r.cout, int) for p, r in rows.items()}
    in_cov = {p: np.zeros(r.cin, int) for p, r in rows.items()}
    for g in groups:
        assert g.size >= 1 and g.producers and g.consumers, g.name
        for pr in g.producers:
            out_cov[pr.path][pr.start:pr.start + g.size] += 1
            assert pr.start + g.size <= rows[pr.path].cout
        for c in g.consumers:
            in_cov[c.path][c.offset:c.offset + g.size] += 1
            assert all(0 <= s < len(g.producers) for s in c.sources)
            assert c.bias == (not rows[c.path].bn)
    for p, r in rows.items():
        fixed_out = not r.bn  # Detect's final convs keep their outputs
        assert (out_cov[p] == (0 if fixed_out else 1)).all(), p
        assert (in_cov[p] == (0 if p == "model_0" else 1)).all(), p  # model_0 reads the image


def test_group_structure_of_yolov8s():
    gm = group_map(yolov8_spec("s", 80))
    # residual chain: cv1 part b and every Bottleneck cv2 output of a shortcut C2f, one mask
    g = gm["model_4/cv1:b"]
    assert g.residual and [p.path for p in g.producers] == ["model_4/cv1", "model_4/m_0/cv2", "model_4/m_1/cv2"]
    assert g.producers[0].start == 64
    # what m_1/cv1 reads is cv1's part plus m_0's output; cv2 reads the three chain values at 64, 128, 192
    assert [(c.path, c.offset, c.sources) for c in g.consumers] == [
        ("model_4/m_0/cv1", 0, (0,)), ("model_4/m_1/cv1", 0, (0, 1)), ("model_4/cv2", 64, (0,)),
        ("model_4/cv2", 128, (0, 1)), ("model_4/cv2", 192, (0, 1, 2))]
    assert not gm["model_12/cv1:b"].residual and "model_12/m_0/cv2" in gm  # neck C2f: no shortcut
    # concat 14 = [upsample(12), 4]: layer 4's output sits after layer 12's 256 channels in model_15/cv1
    assert [(c.path, c.offset) for c in gm["model_4/cv2"].consumers] == [("model_5", 0), ("model_15/cv1", 256)]
    # SPPF: cv1's mask repeated four times in cv2's input
    assert [c.offset for c in gm["model_9/cv1"].consumers] == [0, 256, 512, 768]
    # P3 feeds the next layer and both Detect branches of level 0
    assert [c.path for c in gm["model_15/cv2"].consumers] == ["model_16", "model_22/cv2_0_0", "model_22/cv3_0_0"]
    assert gm["model_22/cv3_0_1"].consumers[0].bias and gm["model_22/cv3_0_1"].consumers[0].path == "model_22/cv3_0_2"
    tags = {n: (g.part, g.kind, g.scale) for n, g in gm.items()}
    assert tags["model_6/cv1:a"] == ("backbone", "c2f", "P4")
    assert tags["model_9/cv2"] == ("backbone", "sppf", "P5")
    assert tags["model_15/cv2"] == ("neck", "c2f", "P3")
    assert tags["model_22/cv2_2_1"] == ("head", "detect", "P5")
    assert gm["model_22/cv3_1_0"].matches("head/P4/cls") and not gm["model_22/cv3_1_0"].matches("head/P3")
    assert gm["model_22/cv3_1_0"].matches("model_22/cv3_*")


# -- exactness ------------------------------------------------------------------------------------------------
def gamma_zeroed(spec, seed, beta_zero):
    """Random BN statistics; gamma = 0 on a random proper subset of every group's channels (every producer),
    and beta = 0 there too when `beta_zero`. Returns (variables, removed masks)."""
    v = init_variables(spec, seed, imgsz=64)
    rng = np.random.default_rng(seed)
    P, S = _flat(v["params"]), _flat(v["batch_stats"])
    for k, a in P.items():
        if k.endswith("bn/scale"):
            P[k] = (rng.uniform(0.5, 1.5, a.shape) * rng.choice([-1, 1], a.shape)).astype(np.float32)
        elif k.endswith("bn/bias"):
            P[k] = rng.normal(0, 0.5, a.shape).astype(np.float32)
    for k, a in S.items():
        S[k] = (rng.normal(0, 0.2, a.shape) if k.endswith("mean") else rng.uniform(0.5, 2, a.shape)).astype(np.float32)
    removed = {}
    for g in build_groups(spec):
        idx = rng.choice(g.size, size=int(rng.integers(1, g.size)), replace=False)
        removed[g.name] = np.isin(np.arange(g.size), idx)
        for pr in g.producers:
            P[f"{pr.path}/bn/scale"][pr.start + idx] = 0.0
            if beta_zero:
                P[f"{pr.path}/bn/bias"][pr.start + idx] = 0.0
    return {"params": _unflat(P), "batch_stats": _unflat(S)}, removed


EXACT = GlobalThreshold(threshold=1e-6, round_to=1, min_channels=1)
OUTPUTS = ("dist", "logits", "boxes", "scores")


def max_rel_err(ref, out, rows):
    """max |out - ref| / (|ref| + 1e-4 * max|ref|) over the selected anchors: relative error 1e-4 with an
    absolute floor at 1e-4 of the output's scale (raw logits near 0 have no meaningful relative error)."""
    a, b = np.asarray(ref)[:, rows], np.asarray(out)[:, rows]
    return float(np.max(np.abs(a - b) / (np.abs(a) + 1e-4 * np.abs(np.asarray(ref)).max())))


def test_exact_when_gamma_and_beta_zero_everywhere():
    """gamma = beta = 0: removed channels output SiLU(0) = 0, so pruning is exact at every anchor, border too."""
    spec = yolov8_spec("s", 80)
    v, removed = gamma_zeroed(spec, 0, beta_zero=True)
    masks = plan(spec, v, EXACT)
    assert all((masks[n] == ~removed[n]).all() for n in masks)  # exactly the zeroed channels go
    new_spec, new_v = apply_masks(spec, v, masks)
    assert count_params(new_spec) < 0.75 * count_params(spec)
    x = jnp.asarray(np.random.default_rng(1).random((2, 64, 64, 3), np.float32))
    ref, out = forward(spec, v, x), forward(new_spec, new_v, x)
    for k in OUTPUTS:
        assert max_rel_err(ref[k], out[k], slice(None)) < 1e-4, k


def test_exact_constant_folding_with_random_beta_on_interior():
    """gamma = 0, random beta: a removed channel outputs SiLU(beta) (summed along residual chains); folded into
    consumers' BN means / Detect biases, outputs are unchanged at every anchor whose receptive field avoids a
    zero-padded border of a pruned tensor. At 640 px no such anchor exists (the SPPF alone spreads border
    effects 6 cells at stride 32), so this runs at 1536 px, where all three levels have interior anchors
    (P3 5776, P4 961, P5 64 of 48384) and every group's consumers are on their paths."""
    spec, sz = yolov8_spec("s", 80), 1536
    v, removed = gamma_zeroed(spec, 1, beta_zero=False)
    masks = plan(spec, v, EXACT)
    assert all((masks[n] == ~removed[n]).all() for n in masks)
    exact = exact_anchor_mask(spec, sz)
    a3, a4 = (sz // 8) ** 2, (sz // 16) ** 2
    assert exact[:a3].sum() == 5776 and exact[a3:a3 + a4].sum() == 961 and exact[a3 + a4:].sum() == 64
    assert not exact_anchor_mask(spec, 640).any()

    x = jnp.asarray(np.random.default_rng(2).random((1, sz, sz, 3), np.float32))
    ref = forward(spec, v, x)
    new_spec, new_v = apply_masks(spec, v, masks)
    out = forward(new_spec, new_v, x)
    for k in OUTPUTS:
        assert max_rel_err(ref[k], out[k], exact) < 1e-4, k
    # near the borders the difference is real (the analysis is not vacuous) ...
    assert max_rel_err(ref["dist"], out["dist"], ~exact) > 1e-3
    # ... and without folding (removed channels replaced by 0, as most tools do) the interior is wrong
    _, zero_v = apply_masks(spec, v, masks, fold=False)
    assert max_rel_err(ref["dist"], forward(new_spec, zero_v, x)["dist"], exact) > 1e-2


def test_exact_anchor_mask_matches_small_cases():
    spec = yolov8_spec("n", 80)
    assert exact_anchor_mask(spec, 64).shape == (64 + 16 + 4,)
    assert not exact_anchor_mask(spec, 896).any()
    m = exact_anchor_mask(spec, 1024)
    assert m.sum() == 144 and m[: 128 * 128].sum() == 144  # only P3 anchors, a 12x12 square
    idx = np.flatnonzero(m[: 128 * 128])
    rows, cols = idx // 128, idx % 128
    assert rows.max() - rows.min() == 11 and cols.max() - cols.min() == 11
    # off-centre towards the bottom right: a 3x3 stride-2 conv (pad 1) on an even map reads padding only on
    # its top/left side
    assert (rows.min(), rows.max()) == (60, 71) and (cols.min(), cols.max()) == (60, 71)


# -- policies -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    spec = yolov8_spec("s", 10)  # widths up to 512: room for ratios and rounding
    return spec, random_variables(spec, 3)


def test_global_threshold_removes_exactly_below(tiny_model):
    spec, v = tiny_model
    scores = importance_scores(spec, v, EXACT)
    masks = plan(spec, v, GlobalThreshold(threshold=0.5, round_to=1, min_channels=1))
    for n, m in masks.items():
        s = scores[n]
        if (s >= 0.5).any():
            np.testing.assert_array_equal(m, s >= 0.5)
        else:  # never empty: the single most important channel stays
            assert m.sum() == 1 and m[np.argmax(s)]


def test_importance_is_gamma_summed_over_coupled_bns(tiny_model):
    spec, v = tiny_model
    scores = importance_scores(spec, v, EXACT)
    P = _flat(v["params"])
    want = sum(np.abs(P[f"model_6/{m}/bn/scale"][s:s + 128].astype(np.float64))
               for m, s in (("cv1", 128), ("m_0/cv2", 0), ("m_1/cv2", 0)))
    np.testing.assert_allclose(scores["model_6/cv1:b"], want)
    l1 = importance_scores(spec, v, GlobalRatio(ratio=0.1, importance="l1"))["model_0"]
    np.testing.assert_allclose(l1, np.abs(P["model_0/conv/kernel"]).sum((0, 1, 2)), rtol=1e-6)
    mx = importance_scores(spec, v, GlobalRatio(ratio=0.1, reduce="max"))["model_6/cv1:b"]
    assert (mx <= want).all() and (mx > 0).all()


def test_global_ratio_removes_the_lowest_share(tiny_model):
    spec, v = tiny_model
    scores = importance_scores(spec, v, EXACT)
    masks = plan(spec, v, GlobalRatio(ratio=0.3, round_to=1, min_channels=1))
    flat = np.concatenate([scores[n] for n in masks])
    kept = np.concatenate([masks[n] for n in masks])
    assert (~kept).sum() == int(0.3 * flat.size)
    assert flat[~kept].max() <= flat[kept].min()


def test_rounding_minimum_and_most_important_kept(tiny_model):
    spec, v = tiny_model
    scores = importance_scores(spec, v, EXACT)
    masks = plan(spec, v, GlobalRatio(ratio=0.9, round_to=8, min_channels=16))
    for n, m in masks.items():
        k = int(m.sum())
        assert k % 8 == 0 and k >= 16, (n, k)
        assert scores[n][m].min() >= scores[n][~m].max() if (~m).any() else True


def test_layer_ratio_is_uniform_and_rules_override(tiny_model):
    spec, v = tiny_model
    pol = LayerRatio(ratio=0.5, rules={"head": 0.25, "model_0": 0.0}, round_to=1, min_channels=1)
    masks = plan(spec, v, pol)
    for g in build_groups(spec):
        want = g.size if g.name == "model_0" else (int(np.ceil(g.size * 0.75)) if g.part == "head" else g.size // 2)
        assert masks[g.name].sum() == want, g.name


def test_group_policy_ranks_within_classes(tiny_model):
    spec, v = tiny_model
    groups = build_groups(spec)
    pol = GroupPolicy(ratio=0.5, rules=(("head/cls", 0.0),), round_to=1, min_channels=1)
    masks = plan(spec, v, pol)
    classes = {}
    for g in groups:
        classes.setdefault((g.part, g.scale, g.kind, pol.value_for(g)), []).append(g)
    for (part, scale, kind, r), members in classes.items():
        total = sum(g.size for g in members)
        kept = sum(int(masks[g.name].sum()) for g in members)
        assert total - kept == int(r * total), (part, scale, kind)
    assert all(masks[g.name].all() for g in groups if g.matches("head/cls"))
    # threshold form: each class its own threshold
    pt = GroupPolicy(threshold=0.3, rules={"backbone": 0.6}, round_to=1, min_channels=1)
    scores = importance_scores(spec, v, pt)
    mt = plan(spec, v, pt)
    g = group_map(spec)["model_5"]
    np.testing.assert_array_equal(mt["model_5"], scores["model_5"] >= 0.6)
    np.testing.assert_array_equal(mt["model_16"], scores["model_16"] >= 0.3)
    assert g.part == "backbone"


def test_skip_keeps_groups_whole(tiny_model):
    spec, v = tiny_model
    masks = plan(spec, v, GlobalRatio(ratio=0.6, skip=("head", "residual")))
    for g in build_groups(spec):
        if g.part == "head" or g.residual:
            assert masks[g.name].all(), g.name
    with pytest.raises(ValueError, match="ratio"):
        GlobalRatio(ratio=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        GroupPolicy(ratio=0.3, threshold=0.1)


@pytest.mark.parametrize("base", [None, LayerRatio(), GroupPolicy(ratio=0.0)])
def test_budget_search_hits_the_target(tiny_model, base):
    spec, v = tiny_model
    target = 0.5 * count_flops(spec, 640)
    new_spec, new_v = prune(spec, v, Budget(target_gflops=target, base=base))
    got = count_flops(new_spec, 640)
    assert 0.9 * target <= got <= target
    pspec, _ = prune(spec, v, Budget(target_params=3_000_000))
    assert 2_600_000 <= count_params(pspec) <= 3_000_000
    with pytest.raises(ValueError, match="budget unreachable"):
        prune(spec, v, Budget(target_gflops=0.01))


@pytest.mark.parametrize("base", [None, GroupPolicy(ratio=0.0, round_to=1, min_channels=1)])
def test_budget_removes_what_sparsity_zeroed_first(base):
    """prune_below: channels whose every coupled gamma is ~0 go first and for free; the budget search prunes
    further only when they do not reach the budget, and never keeps a zero channel while removing a live one."""
    spec = yolov8_spec("s", 10)
    v, removed = gamma_zeroed(spec, 4, beta_zero=True)
    full = count_flops(spec, 640)
    loose = Budget(target_gflops=full, base=base, prune_below=1e-2, round_to=1, min_channels=1)
    masks = plan(spec, v, loose)
    assert all((masks[n] == ~removed[n]).all() for n in masks)  # exactly the zeros, though the budget is met
    without = plan(spec, v, Budget(target_gflops=full, base=base, round_to=1, min_channels=1))
    assert all(m.all() for m in without.values())                  # (no prune_below: nothing to do)
    zero_spec, _ = apply_masks(spec, v, masks)
    target = 0.7 * count_flops(zero_spec, 640)                      # more than the zeros give
    masks = plan(spec, v, Budget(target_gflops=target, base=base, prune_below=1e-2, round_to=1, min_channels=1))
    assert not any((masks[n] & removed[n]).any() for n in masks)   # every zero channel is gone ...
    assert sum((~masks[n] & ~removed[n]).sum() for n in masks) > 0  # ... and live ones too, to meet the budget
    new_spec, _ = apply_masks(spec, v, masks)
    assert 0.9 * target <= count_flops(new_spec, 640) <= target


def test_prune_is_pure(tiny_model):
    spec, v = tiny_model
    before = jax.tree.map(np.copy, v)
    prune(spec, v, GlobalRatio(ratio=0.5))
    jax.tree.map(np.testing.assert_array_equal, before, v)
    with pytest.raises(ValueError, match="cannot be emptied"):
        apply_masks(spec, v, {"model_0": np.zeros(32, bool)})
    with pytest.raises(ValueError, match="shape"):
        apply_masks(spec, v, {"model_0": np.ones(7, bool)})


# -- every variant --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def variant_vars():
    cache = {}

    def get(variant):
        if variant not in cache:
            cache.clear()  # keep one big model in memory at a time
            spec = yolov8_spec(variant, 80)
            cache[variant] = (spec, random_variables(spec, 7))
        return cache[variant]
    return get


@pytest.mark.parametrize("variant", ["tiny", "n", "s", "m", "l", "x"])
@pytest.mark.parametrize("policy_kind", ["global", "group"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
def test_every_variant_prunes_to_a_valid_model(variant_vars, variant, policy_kind, ratio):
    spec, v = variant_vars(variant)
    pol = GlobalRatio(ratio=ratio) if policy_kind == "global" else GroupPolicy(ratio=ratio)
    new_spec, new_v = prune(spec, v, pol)
    new_spec.validate()
    check_shapes(new_spec, new_v, "pruned")
    # count_params adds Ultralytics' fixed DFL conv (reg_max weights), which has no parameters here
    assert n_params(new_v) + spec.reg_max == count_params(new_spec)
    assert count_flops(new_spec, 640) < count_flops(spec, 640)
    before, after = spec.width_map, new_spec.width_map
    for path, w in after.items():
        assert w >= min(8, before[path]), path  # nothing empties
        layer = path.rsplit("/", 1)[0]
        if path.endswith("/cv1") and layer in new_spec.split_map:  # C2f cv1: each part rounds on its own
            for s_new, s_old in zip(new_spec.split(layer), spec.split(layer)):
                assert s_new % 8 == 0 or s_new == s_old, (path, s_new)
        else:
            assert w % 8 == 0 or w == before[path], (path, w)
    if variant in ("tiny", "n", "s"):
        x = jnp.asarray(np.random.default_rng(0).random((1, 64, 64, 3), np.float32))
        out = forward(new_spec, new_v, x)
        assert out["boxes"].shape == (1, 84, 4) and out["scores"].shape == (1, 84, 80)
        assert np.isfinite(np.asarray(out["boxes"])).all()
    else:
        out = jax.eval_shape(lambda v, x: YOLOv8(new_spec).apply(v, x)[0], new_v,
                             jax.ShapeDtypeStruct((1, 640, 640, 3), jnp.float32))
        assert out["boxes"].shape == (1, 8400, 4)


def test_obb_head_prunes_and_runs():
    spec = yolov8_spec("n", 15, task="obb")
    v = random_variables(spec, 1)
    new_spec, new_v = prune(spec, v, LayerRatio(ratio=0.5))
    assert (spec.width("model_22/cv4_0_0"), new_spec.width("model_22/cv4_0_0")) == (16, 8)
    assert n_params(new_v) + 16 == count_params(new_spec)
    out = forward(new_spec, new_v, jnp.zeros((1, 64, 64, 3)))
    assert out["angle"].shape == (1, 84, 1)


# -- round trip and CLI ---------------------------------------------------------------------------------------
def test_round_trip_save_load_forward(tmp_path):
    spec = yolov8_spec("n", 80)
    v = random_variables(spec, 5)
    new_spec, new_v = prune(spec, v, GlobalRatio(ratio=0.5))
    save_model(tmp_path / "pruned", new_spec, new_v, {"pruning": [{"policy": "GlobalRatio"}]})
    det = yolojax.load(tmp_path / "pruned")
    assert det.spec == new_spec and det.meta["pruning"][0]["policy"] == "GlobalRatio"
    x = np.random.default_rng(0).random((1, 96, 96, 3)).astype(np.float32)
    got, want = det(x), forward(new_spec, new_v, jnp.asarray(x))
    for k in OUTPUTS:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


def _cli(argv):
    from yolojax.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def test_cli_prune_writes_a_loadable_checkpoint_and_reports(tmp_path):
    spec = yolov8_spec("n", 80)
    src = tmp_path / "src"
    save_model(src, spec, random_variables(spec, 2), {"names": ["a"] * 80})
    rc, out = _cli(["prune", str(src), "-o", str(tmp_path / "p"), "--ratio", "0.5", "--policy", "layer",
                    "--json", "--imgsz", "320"])
    assert rc == 0
    rep = json.loads(out)
    assert rep["params_before"] == 3_157_200 and rep["params_after"] < 0.35 * rep["params_before"]
    assert rep["gflops_before"] == pytest.approx(count_flops(spec, 320)) and rep["gflops_after"] < rep["gflops_before"]
    row = next(r for r in rep["layers"] if r["path"] == "model_2/cv1")
    assert (row["cout_before"], row["cout_after"]) == (32, 16)
    for f in ("channels.png", "prune_report.json", "prune_report.txt", "spec.json", "meta.json"):
        assert (tmp_path / "p" / f).is_file(), f
    det = yolojax.load(tmp_path / "p")
    assert count_params(det.spec) == rep["params_after"]
    assert det.meta["names"] == ["a"] * 80 and det.meta["pruning"][-1]["policy"]["policy"] == "LayerRatio"
    assert det(np.zeros((1, 64, 64, 3), np.float32))["scores"].shape == (1, 84, 80)

    # budget, then prune the pruned model again: the history grows
    rc, out = _cli(["prune", str(tmp_path / "p"), "-o", str(tmp_path / "p2"), "--target-flops", "1.5"])
    assert rc == 0 and "GFLOPs" in out
    det2 = yolojax.load(tmp_path / "p2")
    assert count_flops(det2.spec, 640) <= 1.5 and len(det2.meta["pruning"]) == 2
    with pytest.raises(SystemExit, match="--threshold works with"):
        _cli(["prune", str(src), "-o", str(tmp_path / "q"), "--threshold", "0.1", "--policy", "layer"])
    assert prune_report(spec, spec)["params_after"] == 3_157_200


def test_cli_prune_says_when_the_ratio_is_not_reached(tmp_path, capsys):
    """--ratio 0.999 stops at the minimum widths: the command says so instead of pretending."""
    spec = yolov8_spec("n", 10)
    src = tmp_path / "src"
    save_model(src, spec, random_variables(spec, 2), {"names": ["a"] * 10})
    rc, _ = _cli(["prune", str(src), "-o", str(tmp_path / "p"), "--ratio", "0.999", "--policy", "layer", "--json"])
    assert rc == 0
    assert "--ratio 0.999 not reached" in capsys.readouterr().err
    rc, _ = _cli(["prune", str(src), "-o", str(tmp_path / "q"), "--ratio", "0.25", "--policy", "layer",
                  "--round-to", "1", "--min-channels", "1", "--json"])
    assert rc == 0 and "not reached" not in capsys.readouterr().err
