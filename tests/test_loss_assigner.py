"""Task-aligned assigner on synthetic layouts where the right answer is known."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.loss import bbox_iou, make_anchors, points_in_boxes, task_aligned_assign

NC = 3
# one 8x8 level at stride 8 (a 64 px image): anchor (col i, row j) sits at pixel (4 + 8i, 4 + 8j)
ANCHORS, STRIDES = make_anchors([(8, 8)], [8])
PX = np.asarray(ANCHORS * STRIDES[:, None])
A = PX.shape[0]


def idx(col, row):
    return row * 8 + col


def run(scores, boxes, gt_boxes, gt_labels, gt_mask, **kw):
    kw.setdefault("topk", 10)
    return task_aligned_assign(jnp.asarray(scores, jnp.float32), jnp.asarray(boxes, jnp.float32), jnp.asarray(PX),
                               jnp.asarray(gt_labels), jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_mask),
                               num_classes=NC, **kw)


def test_topk_highest_alignment_inside_the_box():
    rng = np.random.default_rng(0)
    gt = np.array([16.0, 8.0, 48.0, 40.0])  # covers columns 2..5, rows 1..4: 16 anchors
    inside = np.array([idx(c, r) for r in range(1, 5) for c in range(2, 6)])
    scores = rng.uniform(0.05, 0.9, (1, A, NC))
    outside = np.setdiff1d(np.arange(A), inside)
    scores[0, outside[:10], 1] = 0.99  # high scores outside the box must not be picked
    boxes = np.broadcast_to(gt, (1, A, 4))  # every prediction equals the gt: IoU 1, metric = sqrt(score)
    asg = run(scores, boxes, gt[None, None], [[1]], [[True]])

    want = inside[np.argsort(-scores[0, inside, 1])[:10]]
    assert set(np.flatnonzero(np.asarray(asg.fg[0]))) == set(want)
    t = np.asarray(asg.scores[0])
    # normalized: metric / best metric of the gt * best IoU of the gt (= 1 here), only on the gt's class
    expect = np.sqrt(scores[0, want, 1]) / np.sqrt(scores[0, want, 1].max())
    np.testing.assert_allclose(t[want, 1], expect, rtol=1e-5)
    assert t[:, [0, 2]].max() == 0 and t[np.setdiff1d(np.arange(A), want)].max() == 0
    assert (np.asarray(asg.labels[0, want]) == 1).all()
    np.testing.assert_allclose(np.asarray(asg.boxes[0, want]), np.broadcast_to(gt, (10, 4)))


def test_box_with_fewer_anchors_than_topk_gets_only_its_own():
    scores = np.full((1, A, NC), 0.5)
    gt = np.array([[[8.0, 8.0, 24.0, 16.5], [0.0, 0.0, 64.0, 64.0]]])  # 2 anchors inside; second row is padding
    boxes = np.broadcast_to(np.array([6.0, 6.0, 26.0, 18.0]), (1, A, 4))
    asg = run(scores, boxes, gt, [[0, 2]], [[True, False]])
    assert set(np.flatnonzero(np.asarray(asg.fg[0]))) == {idx(1, 1), idx(2, 1)}
    assert (np.asarray(asg.gt_idx[0, [idx(1, 1), idx(2, 1)]]) == 0).all()
    assert np.asarray(asg.scores)[..., 2].max() == 0  # the padded row's class never appears


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("pred,winner", [((6.0, 6.0, 46.0, 46.0), 0), ((10.0, 10.0, 50.0, 50.0), 1)])
def test_anchor_claimed_by_two_gts_goes_to_higher_iou(order, pred, winner):
    gts = np.array([[0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 56.0, 56.0]])  # both contain the 3x3 at 20..36
    labels = np.array([0, 2])
    shared = [idx(c, r) for c in (2, 3, 4) for r in (2, 3, 4)]
    scores = np.full((1, A, NC), 0.5)
    boxes = np.broadcast_to(np.array(pred), (1, A, 4))
    o = list(order)
    asg = run(scores, boxes, gts[o][None], labels[o][None], [[True, True]], topk=64)
    ious = np.asarray(bbox_iou(jnp.asarray(gts), jnp.asarray(pred), ciou=True))
    assert ious[winner] > ious[1 - winner] > 0.3  # the layout is what the test says
    assert (np.asarray(asg.labels[0, shared]) == labels[winner]).all()
    assert (np.asarray(asg.gt_idx[0, shared]) == o.index(winner)).all()
    np.testing.assert_allclose(np.asarray(asg.boxes[0, shared]), np.broadcast_to(gts[winner], (9, 4)))
    # every anchor inside either box is foreground (topk = all anchors)
    in_any = ((PX[:, None, 0] > gts[:, 0]) & (PX[:, None, 0] < gts[:, 2])
              & (PX[:, None, 1] > gts[:, 1]) & (PX[:, None, 1] < gts[:, 3])).any(1)
    np.testing.assert_array_equal(np.asarray(asg.fg[0]), in_any)
    # each gt's best positive carries that gt's best IoU as its target score
    t = np.asarray(asg.scores[0]).sum(-1)
    for g in (0, 1):
        mine = np.asarray(asg.gt_idx[0]) == o.index(g)
        assert t[mine & in_any].max() == pytest.approx(ious[g], rel=1e-5)


def test_padded_rows_and_batch_independence():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.1, 0.9, (2, A, NC))
    boxes = np.stack([np.broadcast_to([10.0, 10.0, 40.0, 44.0], (A, 4)), np.broadcast_to([30.0, 5.0, 60.0, 30.0], (A, 4))])
    gts = np.array([[[12.0, 8.0, 40.0, 40.0], [0, 0, 0, 0]], [[30.0, 6.0, 58.0, 30.0], [0.0, 0.0, 64.0, 64.0]]])
    a = run(scores, boxes, gts, [[1, 0], [2, 2]], [[True, False], [True, False]])
    single = run(scores[1:], boxes[1:], gts[1:, :1], [[2]], [[True]])
    for f in ("fg", "labels", "scores", "boxes"):
        np.testing.assert_allclose(np.asarray(getattr(a, f))[1], np.asarray(getattr(single, f))[0], rtol=1e-6)
    assert np.asarray(a.fg).sum(1).tolist() == [10, 9]  # 12 anchors inside the first box, 9 in the second


def test_small_box_widened_for_candidate_test():
    gt = np.array([[[21.0, 21.0, 27.0, 27.0]]])  # 6x6 px around (24, 24): no anchor centre inside
    scores = np.full((1, A, NC), 0.5)
    boxes = np.broadcast_to(np.array([18.0, 18.0, 30.0, 30.0]), (1, A, 4))
    plain = run(scores, boxes, gt, [[0]], [[True]])
    assert not np.asarray(plain.fg).any()
    # widened to 16x16 (16..32): the anchors at 20 and 28 are inside
    wide = run(scores, boxes, gt, [[0]], [[True]], inside_fn=functools.partial(points_in_boxes, min_side=16.0))
    assert set(np.flatnonzero(np.asarray(wide.fg[0]))) == {idx(c, r) for c in (2, 3) for r in (2, 3)}
    np.testing.assert_allclose(np.asarray(wide.boxes[0, idx(2, 2)]), gt[0, 0])  # the target stays the real box


def test_geometry_is_injected():
    """iou_fn and inside_fn replace the geometry (how the rotated variant plugs in)."""
    gt = np.array([[[16.0, 16.0, 40.0, 40.0]]])
    scores = np.full((1, A, NC), 0.5)
    boxes = np.broadcast_to(np.array([16.0, 16.0, 40.0, 40.0]), (1, A, 4))
    everywhere = lambda pts, g: jnp.ones(g.shape[:2] + (pts.shape[0],), bool)  # noqa: E731
    asg = run(scores, boxes, gt, [[0]], [[True]], topk=20, inside_fn=everywhere)
    assert int(asg.fg.sum()) == 20  # candidates are no longer limited to the 9 anchors inside
    half = lambda g, p: 0.5 * jnp.ones(jnp.broadcast_shapes(g.shape[:-1], p.shape[:-1]))  # noqa: E731
    asg = run(scores, boxes, gt, [[0]], [[True]], iou_fn=half)
    np.testing.assert_allclose(np.asarray(asg.scores).max(), 0.5, rtol=1e-6)  # normalized to the best overlap


def test_no_gt_rows():
    asg = run(np.full((1, A, NC), 0.5), np.zeros((1, A, 4)), np.zeros((1, 0, 4)), np.zeros((1, 0), np.int32),
              np.zeros((1, 0), bool))
    assert not np.asarray(asg.fg).any() and np.asarray(asg.scores).shape == (1, A, NC)
    assert np.asarray(asg.scores).max() == 0
