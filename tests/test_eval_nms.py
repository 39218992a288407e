"""NMS: the jitted static-shape version against the numpy reference and hand-made cases."""
import numpy as np
import pytest

from yolojax.eval.nms import non_max_suppression, non_max_suppression_numpy, unpad


def _xywh(*xyxy):
    b = np.asarray(xyxy, np.float32).reshape(-1, 4)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], -1)


def _clustered(rng, b, a, nc):
    """Boxes jittered around a few centres, so that many overlap and NMS has work to do."""
    centres = rng.uniform(40, 280, (b, 6, 2))
    pick = rng.integers(0, 6, (b, a))
    xy = np.take_along_axis(centres, pick[..., None], 1) + rng.normal(0, 6, (b, a, 2))
    wh = rng.uniform(20, 60, (b, 1, 2)) * rng.uniform(0.8, 1.2, (b, a, 2))
    scores = rng.uniform(0, 1, (b, a, nc)) ** 3
    return np.concatenate([xy, wh], -1).astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize(
    "multi_label,agnostic,max_candidates",
    [(True, False, 30000), (False, False, 30000), (True, True, 30000), (True, False, 30)],
)
def test_jitted_equals_numpy_reference(multi_label, agnostic, max_candidates):
    rng = np.random.default_rng(0)
    boxes, scores = _clustered(rng, 2, 300, 4)
    kw = dict(conf=0.05, iou=0.5, max_det=40, multi_label=multi_label, agnostic=agnostic, max_candidates=max_candidates)
    got = {k: np.asarray(v) for k, v in non_max_suppression(boxes, scores, **kw).items()}
    ref = non_max_suppression_numpy(boxes, scores, **kw)
    assert got["boxes"].shape == (2, 40, 4) and got["classes"].dtype == np.int32 and got["valid"].dtype == bool
    np.testing.assert_array_equal(got["valid"], ref["valid"])
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=0, atol=0)
    np.testing.assert_allclose(got["boxes"], ref["boxes"], rtol=1e-6, atol=1e-4)
    # Suppression really happened, and not everything was kept or dropped.
    n = got["valid"].sum(1)
    assert np.all(n > 3), n
    if max_candidates == 30:  # only the 30 best (anchor, class) pairs were candidates
        assert np.all(n <= 30), n


def test_reference_matches_when_fewer_than_max_det_survive():
    rng = np.random.default_rng(1)
    boxes, scores = _clustered(rng, 3, 120, 2)
    kw = dict(conf=0.3, iou=0.7, max_det=300)
    got = {k: np.asarray(v) for k, v in non_max_suppression(boxes, scores, **kw).items()}
    ref = non_max_suppression_numpy(boxes, scores, **kw)
    assert 0 < got["valid"].sum() < 3 * 300
    for k in ("valid", "classes", "scores"):
        np.testing.assert_array_equal(got[k], ref[k])
    # Padding rows are zeros.
    assert np.all(got["boxes"][~got["valid"]] == 0) and np.all(got["scores"][~got["valid"]] == 0)


def test_class_aware_overlapping_boxes_of_different_classes_both_survive():
    boxes = _xywh([10, 10, 50, 50], [12, 12, 52, 52])[None]  # IoU ~0.82
    scores = np.array([[[0.9, 0.0], [0.0, 0.8]]], np.float32)  # anchor 0 class 0, anchor 1 class 1
    out = unpad(non_max_suppression(boxes, scores, iou=0.7, max_det=10), 0)
    assert sorted(out[2].tolist()) == [0, 1]
    out = unpad(non_max_suppression(boxes, scores, iou=0.7, max_det=10, agnostic=True), 0)
    assert out[2].tolist() == [0] and out[1].tolist() == pytest.approx([0.9])


def test_same_class_suppression_uses_iou_strictly_above_threshold():
    # Nested boxes: IoU = inner area / outer area = 0.6 for the first pair, 0.8 for the second.
    boxes = _xywh([0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30], [20, 20, 30, 28])[None]
    scores = np.array([[[0.9], [0.8], [0.7], [0.6]]], np.float32)
    b, s, c = unpad(non_max_suppression(boxes, scores, iou=0.7, max_det=10), 0)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.7])  # IoU 0.6 kept, IoU 0.8 suppressed
    np.testing.assert_allclose(b, [[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30]], atol=1e-5)
    b, s, c = unpad(non_max_suppression(boxes, scores, iou=0.5, max_det=10), 0)
    assert s.tolist() == pytest.approx([0.9, 0.7])


def test_max_det_respected_and_sorted():
    rng = np.random.default_rng(2)
    xy = np.stack(np.meshgrid(np.arange(10), np.arange(5)), -1).reshape(-1, 2) * 30.0 + 15  # 50 disjoint boxes
    boxes = np.concatenate([xy, np.full_like(xy, 20)], -1)[None].astype(np.float32)
    scores = rng.uniform(0.1, 1, (1, 50, 1)).astype(np.float32)
    out = non_max_suppression(boxes, scores, max_det=10)
    assert out["valid"].shape == (1, 10) and bool(out["valid"].all())
    np.testing.assert_allclose(np.asarray(out["scores"][0]), np.sort(scores[0, :, 0])[::-1][:10])


def test_multi_label_emits_every_class_above_conf():
    boxes = _xywh([10, 10, 50, 50])[None]
    scores = np.array([[[0.9, 0.8, 0.0005]]], np.float32)
    b, s, c = unpad(non_max_suppression(boxes, scores, conf=0.001, multi_label=True), 0)
    assert c.tolist() == [0, 1] and s.tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_allclose(b, [[10, 10, 50, 50]] * 2, atol=1e-5)
    b, s, c = unpad(non_max_suppression(boxes, scores, conf=0.001, multi_label=False), 0)
    assert c.tolist() == [0] and s.tolist() == pytest.approx([0.9])


def test_conf_is_strict_and_empty_output_is_all_padding():
    boxes = _xywh([10, 10, 50, 50], [60, 60, 90, 90])[None]
    scores = np.array([[[0.25], [0.3]]], np.float32)
    out = non_max_suppression(boxes, scores, conf=0.25, max_det=5)  # 0.25 is exact in float32
    assert np.asarray(out["scores"][0]).tolist() == pytest.approx([0.3, 0, 0, 0, 0])
    assert np.asarray(out["valid"][0]).tolist() == [True, False, False, False, False]
    out = non_max_suppression(boxes, scores, conf=0.5, max_det=5)
    assert not bool(out["valid"].any())


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="scores must be"):
        non_max_suppression(np.zeros((1, 5, 4), np.float32), np.zeros((1, 4, 3), np.float32))
