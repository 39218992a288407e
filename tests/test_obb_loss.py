"""OBB loss: ProbIoU against the Bhattacharyya formula, rotated assigner geometry, hand cases, masks, jit/grad."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.data import geometry as geo
from yolojax.eval.rotated import batch_probiou, points_in_rboxes, probiou, rbox_iou
from yolojax.loss import LossConfig, task_aligned_assign
from yolojax.loss.obb import obb_loss, rbox2dist
from yolojax.model import init_variables, tiny_spec
from yolojax.model.modules import dist2rbox, make_anchors
from yolojax.model.yolov8 import YOLOv8

RNG = np.random.default_rng(0)


def rand_rboxes(n, rng=RNG, lo=2.0, hi=60.0):
    return np.stack([rng.uniform(0, 200, n), rng.uniform(0, 200, n), rng.uniform(lo, hi, n),
                     rng.uniform(lo, hi, n), rng.uniform(-np.pi, np.pi, n)], -1)


def bhattacharyya_iou(r1, r2, eps=1e-7):
    """1 - Hellinger distance of the boxes' Gaussians, from 2x2 matrices (no shortcuts shared with the code):
    Sigma = R diag(w^2, h^2)/12 R^T, BD = 1/8 dmu^T S^-1 dmu + 1/2 ln(det S / sqrt(det S1 det S2)), S = mean."""
    def sigma(r):
        c, s = np.cos(r[4]), np.sin(r[4])
        rot = np.array([[c, -s], [s, c]])
        return rot @ np.diag([r[2] ** 2 / 12, r[3] ** 2 / 12]) @ rot.T

    s1, s2 = sigma(r1), sigma(r2)
    s = (s1 + s2) / 2
    d = np.asarray(r1[:2]) - np.asarray(r2[:2])
    bd = d @ np.linalg.inv(s) @ d / 8 + 0.5 * np.log(np.linalg.det(s) / np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    bd = np.clip(bd, eps, 100.0)
    return 1 - np.sqrt(1 - np.exp(-bd) + eps)


def test_probiou_is_the_bhattacharyya_formula():
    a, b = rand_rboxes(200), rand_rboxes(200)
    b[:100, :2] = a[:100, :2] + RNG.normal(0, 8, (100, 2))  # overlapping pairs, not just far-apart ones
    ref = np.array([bhattacharyya_iou(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(probiou(a, b), ref, atol=2e-6)
    got32 = np.asarray(jax.jit(probiou)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(got32, ref, atol=2e-4)
    assert (ref[:100] > 0.05).mean() > 0.5  # the comparison covers real overlaps
    np.testing.assert_allclose(batch_probiou(a[:7], b[:5]), probiou(a[:7, None], b[None, :5]))


def test_probiou_properties_and_how_it_differs_from_polygon_iou():
    r = rand_rboxes(50)
    same = probiou(r, r)
    np.testing.assert_allclose(same, 1 - np.sqrt(1 - np.exp(-1e-7) + 1e-7), rtol=1e-6)  # ~0.99955, the eps floor
    swapped = np.stack([r[:, 0], r[:, 1], r[:, 3], r[:, 2], r[:, 4] + np.pi / 2], -1)  # the same rectangle
    np.testing.assert_allclose(probiou(r, swapped), same, atol=1e-9)
    np.testing.assert_allclose(probiou(r[:25], r[25:]), probiou(r[25:], r[:25]), atol=1e-12)
    # a square's Gaussian is isotropic: ProbIoU cannot see it turn, the polygon IoU can
    sq, turned = np.array([50, 50, 20, 20, 0.0]), np.array([50, 50, 20, 20, np.pi / 4])
    assert probiou(sq, turned) == pytest.approx(float(probiou(sq, sq)), abs=1e-9)
    octagon = 2 * (np.sqrt(2) - 1)  # the two unit squares' intersection
    assert float(rbox_iou(sq, turned)) == pytest.approx(octagon / (2 - octagon), rel=1e-9)
    far = np.array([500, 500, 20, 20, 0.0])
    assert float(probiou(sq, far)) < 1e-3


def test_points_in_rboxes_matches_the_polygon():
    boxes = rand_rboxes(20, lo=5, hi=80)
    pts = RNG.uniform(-20, 220, (500, 2))
    inside = np.asarray(points_in_rboxes(jnp.asarray(pts), jnp.asarray(boxes)))
    corners = geo.obb_to_polygons(boxes).astype(np.float32)
    for m, poly in enumerate(corners):
        d = np.array([cv2.pointPolygonTest(poly, tuple(map(float, p)), True) for p in pts])
        sure = np.abs(d) > 1e-3  # away from the edges, where float rounding decides
        assert (inside[m][sure] == (d[sure] > 0)).all()
        assert inside[m].any() or not (d > 0).any()
    # min_side widens thin boxes about their centre
    thin = np.array([[100.0, 100.0, 40.0, 2.0, 0.3]])
    probe = np.array([[100.0 - 5 * np.sin(0.3), 100 + 5 * np.cos(0.3)]])  # 5 px off the long axis
    assert not points_in_rboxes(probe, thin)[0, 0]
    assert points_in_rboxes(probe, thin, min_side=16.0)[0, 0]


def test_rbox2dist_inverts_dist2rbox():
    anchors = jnp.asarray(RNG.uniform(0, 20, (64, 2)), jnp.float32)
    ltrb = jnp.asarray(RNG.uniform(0.5, 6, (64, 4)), jnp.float32)
    angle = jnp.asarray(RNG.uniform(-np.pi / 4, 3 * np.pi / 4, (64, 1)), jnp.float32)
    box = dist2rbox(ltrb, angle, anchors)
    back = rbox2dist(jnp.concatenate([box, angle], -1), anchors)
    np.testing.assert_allclose(back, ltrb, atol=1e-5)
    clamped = rbox2dist(jnp.concatenate([box * 10, angle], -1), anchors, reg_max=15)
    assert float(clamped.max()) <= 15 - 0.01 + 1e-6 and float(clamped.min()) >= 0


# -- the loss on hand-built predictions --------------------------------------------------------------------------

S = 64  # input size; anchors of strides 8/16/32
ANCHORS, STRIDES = make_anchors([(S // s, S // s) for s in (8, 16, 32)], (8, 16, 32))
A, R, NC = ANCHORS.shape[0], 16, 3


def exact_preds(target_px, cls, logit=2.0):
    """Predictions whose decoded box at every anchor is `target_px` [5] (where the distances fit the bins):
    two-bin DFL logits with the split the loss asks for, the target's angle, class logit `logit` for cls."""
    stride = STRIDES[:, None]
    t = jnp.asarray(target_px, jnp.float32)
    grid = jnp.concatenate([t[:4] / stride, jnp.broadcast_to(t[4:], (A, 1))], -1)
    d = np.asarray(rbox2dist(grid, ANCHORS, R - 1))  # [A, 4]
    left = np.floor(d).astype(int)
    w_left = left + 1 - d
    logp = np.full((A, 4, R), -1e4, np.float32)
    rows, sides = np.arange(A)[:, None], np.arange(4)[None]
    logp[rows, sides, left] = np.log(np.maximum(w_left, 1e-30))
    logp[rows, sides, left + 1] = np.log(np.maximum(1 - w_left, 1e-30))
    logits = np.full((A, NC), -4.0, np.float32)
    logits[:, cls] = logit
    return {"dist": jnp.asarray(logp.reshape(1, A, 4 * R)), "logits": jnp.asarray(logits[None]),
            "angle": jnp.full((1, A, 1), target_px[4], jnp.float32), "anchors": ANCHORS, "strides": STRIDES}


def one_box_batch(box, cls=1, extra=()):
    rows = [box, *extra]
    return {"obb": jnp.asarray([rows], jnp.float32), "classes": jnp.asarray([[cls] * len(rows)], jnp.int32),
            "mask": jnp.asarray([[True] * len(rows)]), "ignore": jnp.asarray([[False] * len(rows)])}


BOX = np.array([30.0, 34.0, 28.0, 14.0, 0.5])


def test_identical_boxes_give_near_zero_box_loss_and_the_dfl_floor():
    loss_fn = jax.jit(lambda p, b: obb_loss(p, b, nc=NC, reg_max=R))
    loss, items = loss_fn(exact_preds(BOX, 1), one_box_batch(BOX))
    # 1 - ProbIoU of identical boxes is the eps floor sqrt(2e-7) = 4.5e-4 (4.9e-4 in float32), times the gain 7.5
    assert 0 < float(items["box"]) < 7.5 * 5e-4
    off, _ = loss_fn(exact_preds(BOX + [3, -2, 4, 2, 0.3], 1), one_box_batch(BOX))
    assert float(off) > float(loss) + 1.0
    _, off_items = loss_fn(exact_preds(BOX + [0, 0, 0, 0, 0.3], 1), one_box_batch(BOX))
    assert float(off_items["box"]) > 20 * float(items["box"])  # a wrong angle alone costs box loss
    assert float(loss) == pytest.approx(float(sum(items.values())), rel=1e-6)


def test_dfl_targets_are_distances_in_the_box_frame():
    """With the optimal split, the DFL term equals the entropy of the split: only if the targets are the
    box-frame distances that `dist2rbox` decodes."""
    from yolojax.loss.detection import dfl_loss

    preds = exact_preds(BOX, 1)
    _, items = obb_loss(preds, one_box_batch(BOX), nc=NC, reg_max=R)
    grid = jnp.concatenate([jnp.asarray(BOX[:4], jnp.float32) / STRIDES[:, None], jnp.full((A, 1), BOX[4])], -1)
    d = rbox2dist(grid, ANCHORS, R - 1)
    per_anchor = dfl_loss(preds["dist"].reshape(A, 4, R), d)
    inside = points_in_rboxes(ANCHORS * STRIDES[:, None], jnp.asarray(BOX[None]), min_side=16.0)[0]
    # every anchor carries the floor; the loss averages it over the positives with their weights
    assert float(items["dfl"]) / 1.5 == pytest.approx(float(per_anchor[inside].mean()), rel=0.25)
    assert float(items["dfl"]) / 1.5 <= float(per_anchor[inside].max()) + 1e-6


def test_grad_reaches_the_angle_only_through_positives():
    batch = one_box_batch(BOX)
    inside = np.asarray(points_in_rboxes(ANCHORS * STRIDES[:, None], jnp.asarray(BOX[None]), min_side=16.0)[0])
    for turn in (0.2, -0.2):
        preds = exact_preds(BOX + [0, 0, 0, 0, turn], 1)

        def f(angle):
            return obb_loss({**preds, "angle": angle}, batch, nc=NC, reg_max=R)[0]

        g = np.asarray(jax.jit(jax.grad(f))(preds["angle"]))[0, :, 0]
        assert np.isfinite(g).all()
        assert np.abs(g[~inside]).max() == 0.0  # background anchors: no box term, no angle gradient
        # the angle is learned through the decoded box: the gradient turns it back toward the target
        assert np.abs(g[inside]).max() > 1e-2
        assert np.sign(g[inside][np.abs(g[inside]) > 1e-6]).tolist() == [np.sign(turn)] * int(
            (np.abs(g[inside]) > 1e-6).sum())


def test_padding_tiny_targets_and_ignore_regions():
    loss_fn = jax.jit(lambda p, b: obb_loss(p, b, nc=NC, reg_max=R))
    preds = exact_preds(BOX + [1, 1, 2, -1, 0.2], 1, logit=1.0)
    base, items = loss_fn(preds, one_box_batch(BOX))
    # padded rows (mask False) hold anything: same loss
    padded = one_box_batch(BOX, extra=[[1e4, -1e4, 0.0, 0.0, 9.0], [5, 5, 30, 30, 0.1]])
    padded["mask"] = jnp.asarray([[True, False, False]])
    np.testing.assert_allclose(float(loss_fn(preds, padded)[0]), float(base), rtol=1e-6)
    # a target thinner than 2 px is left out (Ultralytics)
    thin = one_box_batch(BOX, extra=[[50, 50, 20, 1.5, 0.2]])
    np.testing.assert_allclose(float(loss_fn(preds, thin)[0]), float(base), rtol=1e-6)
    # an ignore region is no target, and its anchors give no negatives: only the cls term drops
    ign = one_box_batch(BOX, extra=[[48, 16, 30, 20, 0.0]])
    ign["ignore"] = jnp.asarray([[False, True]])
    _, it2 = loss_fn(preds, ign)
    np.testing.assert_allclose(float(it2["box"]), float(items["box"]), rtol=1e-6)
    np.testing.assert_allclose(float(it2["dfl"]), float(items["dfl"]), rtol=1e-6)
    assert float(it2["cls"]) < float(items["cls"]) - 1e-3
    # the same row as a real target changes the box term
    as_target = one_box_batch(BOX, extra=[[48, 16, 30, 20, 0.0]])
    assert abs(float(loss_fn(preds, as_target)[1]["box"]) - float(items["box"])) > 1e-3


def test_rotated_assigner_picks_anchors_inside_the_rotated_box():
    cfg = LossConfig()
    gt = jnp.asarray([[[32.0, 32.0, 60.0, 10.0, np.pi / 4]]])  # a thin diagonal box
    anchors_px = ANCHORS * STRIDES[:, None]
    pred = jnp.broadcast_to(gt[:, :1], (1, A, 5))  # every anchor predicts the box: the metric ranks by score
    scores = jnp.asarray(RNG.uniform(0.1, 0.9, (1, A, NC)), jnp.float32)
    import functools
    asg = task_aligned_assign(scores, pred, anchors_px, jnp.asarray([[2]]), gt, jnp.asarray([[True]]),
                              num_classes=NC, iou_fn=probiou,
                              inside_fn=functools.partial(points_in_rboxes, min_side=cfg.small_side))
    fg = np.asarray(asg.fg[0])
    inside = np.asarray(points_in_rboxes(anchors_px, gt[0], min_side=cfg.small_side))[0]
    axis_box = np.asarray(geo.polygons_to_xyxy(geo.obb_to_polygons(np.asarray(gt[0]))))[0]
    in_axis_box = ((anchors_px >= axis_box[:2]) & (anchors_px <= axis_box[2:])).all(1)
    assert 0 < fg.sum() <= cfg.topk and (fg <= inside).all()
    assert in_axis_box.sum() > inside.sum()  # the rotated test is stricter than the axis-aligned one
    assert (np.asarray(asg.labels[0])[fg] == 2).all()
    # the chosen ones are the best-scoring candidates of class 2
    s = np.asarray(scores[0, :, 2])
    assert s[fg].min() >= np.sort(s[inside])[-fg.sum()] - 1e-7


def test_model_loss_jits_and_differentiates():
    spec = tiny_spec(NC, task="obb")
    v = init_variables(spec, 0)
    x = jnp.asarray(RNG.random((2, S, S, 3)), jnp.float32)
    batch = {"obb": jnp.asarray([[BOX, [40, 20, 12, 12, 0.0]], [[20, 40, 30, 8, 1.2], [0, 0, 0, 0, 0]]], jnp.float32),
             "classes": jnp.asarray([[0, 1], [2, 0]]), "mask": jnp.asarray([[True, True], [True, False]]),
             "ignore": jnp.zeros((2, 2), bool)}

    def f(params):
        (preds, _), _ = YOLOv8(spec).apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                                           mutable=["batch_stats"])
        return obb_loss(preds, batch, nc=NC, reg_max=spec.reg_max)

    (loss, items), g = jax.jit(jax.value_and_grad(f, has_aux=True))(v["params"])
    assert np.isfinite(float(loss)) and set(items) == {"box", "cls", "dfl"}
    leaves = jax.tree.leaves(g)
    assert all(np.isfinite(np.asarray(l)).all() for l in leaves)
    assert float(jnp.abs(g["model_22"]["cv4_0_2"]["kernel"]).max()) > 0  # the angle branch learns
    with pytest.raises(ValueError, match="oriented dataset"):
        obb_loss({}, {"boxes": batch["obb"][..., :4]}, nc=NC)
