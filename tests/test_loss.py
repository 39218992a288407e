"""Detection loss: box geometry, DFL, BCE, masking, ignore regions, jit/grad, permutation invariance."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.loss import (LossConfig, bbox2dist, bbox_iou, detection_loss, dfl_decode, dfl_loss,
                          dist2bbox, make_anchors, points_in_boxes, task_aligned_assign)

NC, R = 3, 16


def ciou_np(b1, b2, eps=1e-7):
    """CIoU (Zheng et al. 2020) in float64, written from the formula, with Ultralytics' eps placement."""
    b1, b2 = np.asarray(b1, np.float64), np.asarray(b2, np.float64)
    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1] + eps
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1] + eps
    iw = np.clip(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]), 0, None)
    ih = np.clip(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]), 0, None)
    inter = iw * ih
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = np.maximum(b1[..., 2], b2[..., 2]) - np.minimum(b1[..., 0], b2[..., 0])
    ch = np.maximum(b1[..., 3], b2[..., 3]) - np.minimum(b1[..., 1], b2[..., 1])
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = (((b1[..., 0] + b1[..., 2]) - (b2[..., 0] + b2[..., 2])) ** 2
            + ((b1[..., 1] + b1[..., 3]) - (b2[..., 1] + b2[..., 3])) ** 2) / 4
    v = 4 / math.pi ** 2 * (np.arctan(w2 / h2) - np.arctan(w1 / h1)) ** 2
    alpha = v / (1 - iou + v + eps)
    return iou - rho2 / c2 - alpha * v


def softplus_np(x):
    return np.logaddexp(0.0, np.asarray(x, np.float64))


def random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(1, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


# -- geometry ------------------------------------------------------------------------------------------

def test_ciou_hand_values():
    a = jnp.array([0.0, 0.0, 10.0, 10.0])
    # Shifted square: IoU 25/175, centre distance^2 50 over diagonal^2 450, same aspect (v = 0).
    assert float(bbox_iou(a, jnp.array([5.0, 5.0, 15.0, 15.0]), ciou=True)) == pytest.approx(1 / 7 - 1 / 9, abs=1e-6)
    assert float(bbox_iou(a, jnp.array([5.0, 5.0, 15.0, 15.0]))) == pytest.approx(1 / 7, abs=1e-6)
    assert float(bbox_iou(a, jnp.array([5.0, 5.0, 15.0, 15.0]), giou=True)) == pytest.approx(1 / 7 - 50 / 225, abs=1e-6)
    # Same origin, twice as wide: IoU 1/2, rho^2/c^2 = 25/500, aspect term v = 4/pi^2 (atan 2 - atan 1)^2.
    v = 4 / math.pi ** 2 * (math.atan(2) - math.atan(1)) ** 2
    want = 0.5 - 25 / 500 - v * v / (v + 0.5)
    assert float(bbox_iou(a, jnp.array([0.0, 0.0, 20.0, 10.0]), ciou=True)) == pytest.approx(want, abs=1e-6)
    assert want == pytest.approx(0.446752, abs=1e-6)


def test_ciou_matches_numpy_reference():
    rng = np.random.default_rng(0)
    b1, b2 = random_boxes(rng, 200), random_boxes(rng, 200)
    b2[:50] = b1[:50] + rng.normal(0, 2, (50, 4)).astype(np.float32)  # overlapping pairs too
    b2[:50, 2:] = np.maximum(b2[:50, 2:], b2[:50, :2] + 0.5)
    got = np.asarray(bbox_iou(jnp.asarray(b1), jnp.asarray(b2), ciou=True))
    want = ciou_np(b1, b2)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert (want < 0).any() and (want > 0.5).any()  # the sample covers both regimes


def test_identical_boxes_have_iou_one():
    b = jnp.asarray(random_boxes(np.random.default_rng(1), 20))
    np.testing.assert_allclose(np.asarray(bbox_iou(b, b, ciou=True)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bbox_iou(b, b)), 1.0, atol=1e-6)


def test_bbox_iou_broadcasts_pairwise_and_xywh():
    rng = np.random.default_rng(2)
    g, p = random_boxes(rng, 3), random_boxes(rng, 5)
    pair = np.asarray(bbox_iou(jnp.asarray(g)[:, None], jnp.asarray(p)[None], ciou=True))
    assert pair.shape == (3, 5)
    np.testing.assert_allclose(pair, ciou_np(g[:, None], p[None]), atol=2e-6)
    to_xywh = lambda b: np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], -1)  # noqa: E731
    np.testing.assert_allclose(np.asarray(bbox_iou(jnp.asarray(to_xywh(g)), jnp.asarray(to_xywh(g[::-1])), xywh=True)),
                               np.asarray(bbox_iou(jnp.asarray(g), jnp.asarray(g[::-1]))), atol=1e-5)


def test_ciou_gradient_treats_alpha_as_constant():
    b1 = jnp.array([0.0, 0.0, 10.0, 10.0])
    b2 = jnp.array([1.0, 2.0, 21.0, 12.0])
    g = np.asarray(jax.grad(lambda b: bbox_iou(b1, b, ciou=True))(b2))
    assert np.isfinite(g).all()

    def v(b):
        return 4 / math.pi ** 2 * (jnp.arctan((b[2] - b[0]) / (b[3] - b[1] + 1e-7)) - jnp.arctan(10 / (10 + 1e-7))) ** 2

    iou = bbox_iou(b1, b2)
    alpha0 = float(v(b2) / (v(b2) - iou + 1 + 1e-7))
    fixed = np.asarray(jax.grad(lambda b: bbox_iou(b1, b, diou=True) - alpha0 * v(b))(b2))
    full = np.asarray(jax.grad(lambda b: bbox_iou(b1, b, diou=True) - v(b) ** 2 / (v(b) - bbox_iou(b1, b) + 1 + 1e-7))(b2))
    np.testing.assert_allclose(g, fixed, rtol=1e-5, atol=1e-7)
    assert np.abs(full - fixed).max() > 1e-4  # the distinction is visible on this pair


def test_anchors_and_distance_round_trip():
    pts, st = make_anchors([(2, 3), (1, 2)], [8, 16])
    np.testing.assert_array_equal(np.asarray(pts), [[.5, .5], [1.5, .5], [2.5, .5], [.5, 1.5], [1.5, 1.5], [2.5, 1.5],
                                                    [.5, .5], [1.5, .5]])
    np.testing.assert_array_equal(np.asarray(st), [8, 8, 8, 8, 8, 8, 16, 16])
    ltrb = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    box = dist2bbox(ltrb, jnp.array([[5.0, 5.0]]), xywh=False)
    np.testing.assert_allclose(np.asarray(box), [[4, 3, 8, 9]])
    np.testing.assert_allclose(np.asarray(dist2bbox(ltrb, jnp.array([[5.0, 5.0]]))), [[6, 6, 4, 6]])  # xywh default
    np.testing.assert_allclose(np.asarray(bbox2dist(jnp.array([[5.0, 5.0]]), box)), ltrb)
    far = jnp.array([[-30.0, 4.0, 6.0, 40.0]])
    np.testing.assert_allclose(np.asarray(bbox2dist(jnp.array([[5.0, 5.0]]), far, 15)), [[14.99, 1, 1, 14.99]], rtol=1e-6)


def test_points_in_boxes_strict_and_min_side():
    pts = jnp.array([[5.0, 5.0], [10.0, 5.0], [12.0, 5.0]])
    box = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    np.testing.assert_array_equal(np.asarray(points_in_boxes(pts, box)), [[True, False, False]])  # edge is outside
    tiny = jnp.array([[7.5, 4.0, 8.5, 6.0]])  # 1x2 around (8, 5): holds none of the points
    np.testing.assert_array_equal(np.asarray(points_in_boxes(pts, tiny)), [[False, False, False]])
    # widened to 6x6 about its centre: (5, 5) sits on the new edge, (10, 5) is inside
    np.testing.assert_array_equal(np.asarray(points_in_boxes(pts, tiny, min_side=6.0)), [[False, True, False]])
    np.testing.assert_array_equal(np.asarray(points_in_boxes(pts, tiny, min_side=9.0)), [[True, True, True]])
    # sides already longer than min_side stay as they are
    np.testing.assert_array_equal(np.asarray(points_in_boxes(pts, box, min_side=9.0)), [[True, False, False]])


# -- DFL -----------------------------------------------------------------------------------------------

def test_dfl_target_interpolation():
    """The DFL gradient at uniform logits is (softmax - target distribution) / 4: read the target off it."""
    logits = jnp.zeros((4, R))
    target = jnp.array([3.3, 0.0, 20.0, 7.0])  # 20 clamps to R - 1 - 0.01
    grad = np.asarray(jax.grad(lambda z: dfl_loss(z, target))(logits))
    implied = 1 / R - 4 * grad
    want = np.zeros((4, R))
    want[0, 3], want[0, 4] = 0.7, 0.3
    want[1, 0] = 1.0
    want[2, 14], want[2, 15] = 0.01, 0.99
    want[3, 7] = 1.0
    np.testing.assert_allclose(implied, want, atol=1e-5)
    # value: cross-entropy against that split, averaged over sides
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, R)), jnp.float32)
    logp = np.asarray(jax.nn.log_softmax(z, -1), np.float64)
    assert float(dfl_loss(z, target)) == pytest.approx(-(want * logp).sum(-1).mean(), rel=1e-5)


def test_dfl_decode_is_softmax_expectation():
    z = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, R)), jnp.float32)
    p = np.exp(np.asarray(z, np.float64))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(dfl_decode(z)), (p * np.arange(R)).sum(-1), rtol=1e-5)


# -- the loss ------------------------------------------------------------------------------------------

def make_preds(rng, B=2, shapes=((8, 8), (4, 4), (2, 2)), strides=(8, 16, 32), nc=NC):
    anchors, st = make_anchors(shapes, strides)
    A = anchors.shape[0]
    return dict(dist=jnp.asarray(rng.normal(0, 1, (B, A, 4 * R)), jnp.float32),
                logits=jnp.asarray(rng.normal(-2, 1.5, (B, A, nc)), jnp.float32),
                anchors=anchors, strides=st)


def make_batch(rows_per_image, M):
    """rows_per_image: list (per image) of (x1, y1, x2, y2, cls[, ignore]) tuples, padded to M rows."""
    B = len(rows_per_image)
    boxes = np.zeros((B, M, 4), np.float32)
    classes = np.zeros((B, M), np.int32)
    mask = np.zeros((B, M), bool)
    ignore = np.zeros((B, M), bool)
    for b, rows in enumerate(rows_per_image):
        for m, r in enumerate(rows):
            boxes[b, m], classes[b, m], mask[b, m] = r[:4], r[4], True
            ignore[b, m] = len(r) > 5 and r[5]
    return dict(boxes=boxes, classes=classes, mask=mask, ignore=ignore)


ROWS = [[(4, 4, 30, 40, 0), (20, 18, 60, 50, 1), (40, 2, 62, 20, 2)], [(10, 10, 26, 22, 2), (33, 30, 63, 63, 0)]]


def loss_np(preds, batch):
    loss, items = detection_loss(preds, batch, nc=NC)
    return float(loss), {k: float(v) for k, v in items.items()}


def test_one_box_one_anchor_by_hand():
    """A 32 px image with a single stride-32 anchor at (16, 16) and one gt box around it."""
    anchors, st = make_anchors([(1, 1)], [32])
    z = np.random.default_rng(4).normal(0, 0.5, (1, 1, 4, R)).astype(np.float32)
    z[0, 0, :, 0] += 6.0  # mass near bin 0: a box of about one cell, overlapping the gt
    logits = np.array([[[-1.0, 0.5, -2.0]]], np.float32)
    preds = dict(dist=jnp.asarray(z.reshape(1, 1, 4 * R)), logits=jnp.asarray(logits), anchors=anchors, strides=st)
    gt = np.array([4.0, 6.0, 28.0, 30.0], np.float32)
    batch = make_batch([[(*gt, 1)]], 1)
    _, items = loss_np(preds, batch)

    p = np.exp(z[0, 0].astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    ltrb = (p * np.arange(R)).sum(-1)
    pred_grid = np.array([0.5 - ltrb[0], 0.5 - ltrb[1], 0.5 + ltrb[2], 0.5 + ltrb[3]])
    overlap = max(ciou_np(gt, pred_grid * 32), 0.0)
    assert 0.1 < overlap < 0.9  # the case is not degenerate
    t = overlap  # normalized score of the only positive: metric * max_iou / max_metric
    target = np.array([0.0, t, 0.0])
    tss = max(t, 1.0)
    bce = softplus_np(logits[0, 0]) - logits[0, 0] * target
    assert items["cls"] == pytest.approx(0.5 * bce.sum() / tss, rel=1e-5)
    gt_grid = gt / 32
    assert items["box"] == pytest.approx(7.5 * (1 - ciou_np(pred_grid, gt_grid)) * t / tss, rel=1e-5)
    d = np.clip(np.array([0.5 - gt_grid[0], 0.5 - gt_grid[1], gt_grid[2] - 0.5, gt_grid[3] - 0.5]), 0, R - 1 - 0.01)
    lo = np.floor(d).astype(int)
    logp = np.log(p)
    dfl = -(logp[np.arange(4), lo] * (lo + 1 - d) + logp[np.arange(4), lo + 1] * (d - lo)).mean()
    assert items["dfl"] == pytest.approx(1.5 * dfl * t / tss, rel=1e-5)


def test_no_targets_is_plain_bce_sum():
    preds = make_preds(np.random.default_rng(5))
    batch = make_batch([[], []], 4)
    loss, items = loss_np(preds, batch)
    want = 0.5 * softplus_np(preds["logits"]).sum()  # all targets 0, normalizer max(0, 1) = 1
    assert items["cls"] == pytest.approx(want, rel=1e-5)
    assert items["box"] == 0.0 and items["dfl"] == 0.0
    assert loss == pytest.approx(2 * want, rel=1e-5)
    # M = 0 (no gt rows at all) is the same
    assert loss_np(preds, make_batch([[], []], 0))[1]["cls"] == pytest.approx(want, rel=1e-5)


def test_loss_is_items_sum_times_batch_and_positive():
    preds = make_preds(np.random.default_rng(6))
    loss, items = loss_np(preds, make_batch(ROWS, 4))
    assert all(v > 0 for v in items.values())
    assert loss == pytest.approx(2 * sum(items.values()), rel=1e-6)


def test_gains_scale_items():
    preds, batch = make_preds(np.random.default_rng(7)), make_batch(ROWS, 4)
    _, a = detection_loss(preds, batch, nc=NC)
    _, b = detection_loss(preds, batch, nc=NC, cfg=LossConfig(box=1.0, cls=1.0, dfl=1.0))
    for k, g in (("box", 7.5), ("cls", 0.5), ("dfl", 1.5)):
        assert float(a[k]) == pytest.approx(g * float(b[k]), rel=1e-6)


def test_padded_rows_change_nothing():
    preds = make_preds(np.random.default_rng(8))
    base = loss_np(preds, make_batch(ROWS, 3))
    padded = make_batch(ROWS, 7)
    # garbage in padded rows: boxes over the image, invalid classes
    padded["boxes"][0, 3:] = [[0, 0, 64, 64], [10, 10, 50, 50], [5, 5, 6, 6], [1, 2, 3, 4]]
    padded["boxes"][1, 2:] = [[0, 0, 64, 64], [0, 0, 0, 0], [30, 30, 40, 40], [2, 2, 60, 60], [0, 0, 9, 9]]
    padded["classes"][:, 3:] = -1
    padded["classes"][1, 2] = 99
    got = loss_np(preds, padded)
    assert got[0] == pytest.approx(base[0], rel=1e-6)
    for k in base[1]:
        assert got[1][k] == pytest.approx(base[1][k], rel=1e-6)


def test_permuting_rows_changes_nothing():
    preds = make_preds(np.random.default_rng(9))
    batch = make_batch(ROWS, 6)
    base = loss_np(preds, batch)
    perm = np.array([4, 2, 0, 5, 1, 3])  # interleaves padded and real rows
    shuffled = {k: v[:, perm] for k, v in batch.items()}
    got = loss_np(preds, shuffled)
    assert got[0] == pytest.approx(base[0], rel=1e-6)
    for k in base[1]:
        assert got[1][k] == pytest.approx(base[1][k], rel=1e-6)


def test_ignore_region_drops_only_negatives_inside():
    preds = make_preds(np.random.default_rng(10))
    region = (36, 36, 64, 64)
    plain = make_batch([ROWS[0][:1], ROWS[1][:1]], 3)
    ign = make_batch([ROWS[0][:1], ROWS[1][:1] + [(*region, 0, True)]], 3)
    _, a = loss_np(preds, plain)
    _, b = loss_np(preds, ign)
    # never a positive: box/DFL (which only see positives) are untouched
    assert b["box"] == pytest.approx(a["box"], rel=1e-6) and b["dfl"] == pytest.approx(a["dfl"], rel=1e-6)
    # the BCE of anchors whose centre lies in the region (all negatives here) is removed, nothing else
    px = np.asarray(preds["anchors"] * preds["strides"][:, None])
    inside = (px[:, 0] > region[0]) & (px[:, 0] < region[2]) & (px[:, 1] > region[1]) & (px[:, 1] < region[3])
    assert inside.sum() == 9 + 4 + 1  # 3x3 at stride 8, 2x2 at 16, 1 at 32
    tss = max(target_scores_sum(preds, plain), 1.0)
    removed = 0.5 * softplus_np(preds["logits"][1][inside]).sum() / tss
    assert a["cls"] - b["cls"] == pytest.approx(removed, rel=1e-4)


def test_ignore_region_keeps_foreground_anchors():
    preds = make_preds(np.random.default_rng(11))
    plain = make_batch(ROWS, 4)
    everywhere = make_batch([ROWS[0] + [(0, 0, 64, 64, 0, True)], ROWS[1]], 4)
    _, a = loss_np(preds, plain)
    _, b = loss_np(preds, everywhere)
    assert b["box"] == pytest.approx(a["box"], rel=1e-6) and b["dfl"] == pytest.approx(a["dfl"], rel=1e-6)
    # image 0 keeps only its foreground anchors' BCE: recompute that by hand
    asg = assign(preds, plain)
    fg0 = np.asarray(asg.fg[0])
    assert 0 < fg0.sum() < fg0.size
    x = np.asarray(preds["logits"], np.float64)
    t = np.asarray(asg.scores, np.float64)
    bce = softplus_np(x) - x * t
    tss = max(t.sum(), 1.0)
    assert b["cls"] == pytest.approx(0.5 * (bce[0][fg0].sum() + bce[1].sum()) / tss, rel=1e-5)


def assign(preds, batch):
    B, A = preds["logits"].shape[:2]
    pb = dist2bbox(dfl_decode(preds["dist"].reshape(B, A, 4, R)), preds["anchors"], xywh=False)
    s = preds["strides"][:, None]
    return task_aligned_assign(jax.nn.sigmoid(preds["logits"]), pb * s, preds["anchors"] * s, batch["classes"],
                               batch["boxes"], batch["mask"] & ~batch["ignore"], num_classes=NC,
                               inside_fn=functools.partial(points_in_boxes, min_side=16.0))


def target_scores_sum(preds, batch):
    return float(assign(preds, batch).scores.sum())


def test_jit_and_grad():
    preds, batch = make_preds(np.random.default_rng(12)), make_batch(ROWS, 4)
    f = lambda p, b: detection_loss(p, b, nc=NC)  # noqa: E731
    eager, _ = f(preds, batch)
    jitted, _ = jax.jit(f)(preds, batch)
    assert float(jitted) == pytest.approx(float(eager), rel=1e-5)
    grads = jax.jit(jax.grad(lambda p, b: f(p, b)[0]))(preds, batch)
    for k in ("dist", "logits"):
        g = np.asarray(grads[k])
        assert np.isfinite(g).all() and np.abs(g).max() > 0
    # a small step against the gradient lowers the loss
    step = {**preds, "dist": preds["dist"] - 1e-2 * grads["dist"], "logits": preds["logits"] - 1e-2 * grads["logits"]}
    assert float(f(step, batch)[0]) < float(eager)
    # box/DFL gradients reach exactly the foreground anchors with a nonzero target score
    asg = assign(preds, batch)
    live = np.asarray(asg.fg & (asg.scores.sum(-1) > 0))
    gd = np.abs(np.asarray(grads["dist"])).sum(-1)
    assert live.sum() > 5 and (gd[~live] == 0).all() and (gd[live] > 0).all()


def test_bad_shapes_raise_clear_errors():
    preds, batch = make_preds(np.random.default_rng(13)), make_batch(ROWS, 4)
    with pytest.raises(ValueError, match="nc=5"):
        detection_loss(preds, batch, nc=5)
    with pytest.raises(ValueError, match="dist"):
        detection_loss(preds, batch, nc=NC, reg_max=8)
    with pytest.raises(ValueError, match="reg_max=1"):
        detection_loss(preds, batch, nc=NC, reg_max=1)
