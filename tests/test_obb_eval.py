"""OBB evaluation: exact polygon IoU against shapely, rotated NMS against a numpy reference and against its
IoU definition, DOTA-style mAP (and the coco128 reference numbers through the rotated path), result files."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import shapely

from yolojax.data import DOTA_NAMES, geometry as geo, load_dataset
from yolojax.eval.metrics import DetectionMetrics
from yolojax.eval.obb import (OBBMetrics, nms_rotated_numpy, obb_json, rotated_nms, rotated_nms_numpy, save_dota,
                              scale_rboxes)
from yolojax.eval.rotated import intersection_area, polygon_iou, rbox_corners, rbox_iou
from tests.conftest import DATA, REFERENCE

RNG = np.random.default_rng(1)


def rand_rboxes(n, rng=RNG, lo=2.0, hi=60.0):
    return np.stack([rng.uniform(0, 200, n), rng.uniform(0, 200, n), rng.uniform(lo, hi, n),
                     rng.uniform(lo, hi, n), rng.uniform(-np.pi, np.pi, n)], -1)


def shapely_iou(p, q):
    p, q = shapely.Polygon(p), shapely.Polygon(q)
    return p.intersection(q).area / p.union(q).area


def test_polygon_iou_is_exact():
    a, b = rand_rboxes(400), rand_rboxes(400)
    b[:200, :2] = a[:200, :2] + RNG.normal(0, 6, (200, 2))
    b[200:220] = a[200:220]  # identical
    b[220:240] = a[220:240] * [1, 1, 0.5, 0.5, 1]  # contained
    ca, cb = rbox_corners(a), rbox_corners(b)
    ref = np.array([shapely_iou(p, q) for p, q in zip(ca, cb)])
    assert (ref > 0).sum() > 220 and (ref == 0).sum() > 50
    np.testing.assert_allclose(rbox_iou(a, b), ref, atol=1e-9)
    np.testing.assert_allclose(rbox_iou(a[200:220], b[200:220]), 1.0, atol=1e-9)
    got32 = np.asarray(jax.jit(rbox_iou)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(got32, ref, atol=5e-5)
    full = polygon_iou(ca[:60], cb[:80])  # pairwise, with the bounds prefilter
    np.testing.assert_allclose(full, [[shapely_iou(p, q) for q in cb[:80]] for p in ca[:60]], atol=1e-9)
    ioa = polygon_iou(ca[:60], cb[:80], mode="ioa")
    ref_ioa = [[shapely.Polygon(p).intersection(shapely.Polygon(q)).area / shapely.Polygon(q).area for q in cb[:80]]
               for p in ca[:60]]
    np.testing.assert_allclose(ioa, ref_ioa, atol=1e-9)


def test_polygon_iou_on_dota_quadrilaterals():
    """Ground truth quadrilaterals (not rectangles, some concave-looking) against their rotated boxes."""
    ds = load_dataset(DATA / "dota")
    polys = np.concatenate([r.polygons for r in ds]).astype(np.float64)
    rects = rbox_corners(np.concatenate([r.obb for r in ds]).astype(np.float64))
    got = polygon_iou(polys[:300], rects[:300])
    ref = np.array([[shapely_iou(p, q) if shapely.Polygon(p).is_valid else np.nan for q in rects[:300]]
                    for p in polys[:300]])
    ok = np.isfinite(ref)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(got[ok], ref[ok], atol=1e-9)
    # a concave quadrilateral clipped by a rectangle
    concave = np.array([[0, 0], [10, 0], [3, 3], [0, 10.0]])
    rect = np.array([[1, 1], [8, 1], [8, 8], [1, 8.0]])
    assert intersection_area(concave, rect) == pytest.approx(
        shapely.Polygon(concave).intersection(shapely.Polygon(rect)).area, abs=1e-12)


def nms_case(seed=0, B=2, A=300, nc=3):
    rng = np.random.default_rng(seed)
    ctr = rng.uniform(0, 160, (B, A, 2))
    ctr[:, A // 2:] = ctr[:, :A // 2] + rng.normal(0, 3, (B, A // 2, 2))  # clusters of near-duplicates
    wh = rng.uniform(5, 40, (B, A, 2))
    ang = rng.uniform(-np.pi / 4, 3 * np.pi / 4, (B, A, 1))
    scores = rng.uniform(0, 1, (B, A, nc)) ** 3
    return np.concatenate([ctr, wh, ang], -1).astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize("iou_type", ["probiou", "polygon"])
@pytest.mark.parametrize("multi_label", [True, False])
def test_rotated_nms_matches_the_numpy_reference(iou_type, multi_label):
    boxes, scores = nms_case()
    kw = dict(conf=0.05, iou=0.5, max_det=80, multi_label=multi_label, iou_type=iou_type)
    got = jax.device_get(rotated_nms(jnp.asarray(boxes), jnp.asarray(scores), **kw))
    ref = rotated_nms_numpy(boxes, scores, **kw)
    assert ref["valid"].sum() > 40
    np.testing.assert_array_equal(got["valid"], ref["valid"])
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-6)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-7)


def test_polygon_nms_obeys_polygon_iou():
    """Kept boxes of a class overlap each other by at most `iou` (exact polygon IoU), and every candidate that
    was dropped overlaps a kept higher-scored box of its class by more."""
    boxes, scores = nms_case(seed=3, B=1, A=200, nc=2)
    thr = 0.4
    out = jax.device_get(rotated_nms(jnp.asarray(boxes), jnp.asarray(scores), conf=0.1, iou=thr, max_det=200,
                                     iou_type="polygon"))
    v = out["valid"][0]
    kb, ks, kc = out["boxes"][0][v].astype(np.float64), out["scores"][0][v], out["classes"][0][v]
    kcor = rbox_corners(kb)
    for c in np.unique(kc):
        m = kc == c
        iou = polygon_iou(kcor[m], kcor[m])
        np.fill_diagonal(iou, 0)
        assert iou.max() <= thr + 1e-5
    a, cls = np.nonzero(scores[0] > 0.1)
    kept = {(round(float(b[0]), 4), round(float(b[1]), 4), int(c)) for b, c in zip(kb, kc)}
    dropped = [(i, c) for i, c in zip(a, cls) if (round(float(boxes[0, i, 0]), 4), round(float(boxes[0, i, 1]), 4),
                                                      int(c)) not in kept]
    assert len(dropped) > 20
    for i, c in dropped:
        same = (kc == c) & (ks >= scores[0, i, c])
        overlap = polygon_iou(rbox_corners(boxes[0, i][None].astype(np.float64)), kcor[same])
        assert overlap.max() > thr - 1e-5


def test_nms_groups_and_ios():
    big = np.array([50, 50, 40, 20, 0.3])
    part = np.array([50 + 10 * np.cos(0.3), 50 + 10 * np.sin(0.3), 20, 20, 0.3])  # the right half of big
    boxes = np.stack([big, part])
    assert rbox_iou(big, part) == pytest.approx(0.5, abs=1e-9)
    assert list(nms_rotated_numpy(boxes, [0.9, 0.8], 0.55, iou_type="polygon")) == [0, 1]
    assert list(nms_rotated_numpy(boxes, [0.9, 0.8], 0.5, iou_type="ios")) == [0]
    assert list(nms_rotated_numpy(boxes, [0.9, 0.8], 0.5, iou_type="ios", groups=[0, 0])) == [0, 1]
    assert list(nms_rotated_numpy(boxes, [0.9, 0.8], 0.5, [0, 1], iou_type="ios")) == [0, 1]
    with pytest.raises(ValueError, match="iou_type"):
        rotated_nms(jnp.zeros((1, 4, 5)), jnp.zeros((1, 4, 2)), iou_type="ios")


def test_scale_rboxes_inverts_the_letterbox():
    r = rand_rboxes(10)
    ratio, padx, pady = 0.4, 12.0, 30.0
    boxed = r * [ratio, ratio, ratio, ratio, 1] + [padx, pady, 0, 0, 0]
    np.testing.assert_allclose(scale_rboxes(boxed, (ratio, padx, pady)), r, atol=1e-9)
    with pytest.raises(ValueError, match="scalar ratio"):
        scale_rboxes(boxed, ((0.4, 0.5), 0, 0))


# -- metrics ------------------------------------------------------------------------------------------------------

def test_rotated_metrics_reproduce_the_coco128_reference():
    """Axis-aligned boxes are rotated boxes with angle 0: through OBBMetrics (polygon IoU, shared matching and
    AP) the coco128 reference detections give Ultralytics' numbers, and every number DetectionMetrics gives."""
    from tests.test_eval_metrics import load_coco128

    ref = np.load(REFERENCE / "coco128_noisy_detections.npz")
    stems = [str(s) for s in ref["stems"]]
    gt = load_coco128(DATA, stems)
    m, d = OBBMetrics(80, ignore_overlap="ioa"), DetectionMetrics(80)
    det = ref["detections"]
    for k, stem in enumerate(stems):
        rows = det[det[:, 0] == k]
        rbox = np.concatenate([geo.xyxy_to_xywh(rows[:, 1:5]), np.zeros((len(rows), 1))], 1)
        m.update(stem, rbox, rows[:, 5], rows[:, 6], geo.box_corners(gt[stem][0]), gt[stem][1])
        d.update(stem, rows[:, 1:5], rows[:, 5], rows[:, 6], gt[stem][0], gt[stem][1])
    got, want = m.compute(), d.compute()
    assert got["map50"] == pytest.approx(float(ref["ultralytics_map50"]), abs=1e-4)
    assert got["map50_95"] == pytest.approx(float(ref["ultralytics_map50_95"]), abs=1e-4)
    for k in ("map50", "map50_95", "map75", "precision", "recall", "map_small", "map_medium", "map_large"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


PERFECT = 0.995  # Ultralytics' AP of one perfect detection (101-point interpolation with its sentinels)


def test_hand_cases_polygon_iou_decides():
    gt = np.array([[[0, 0], [40, 0], [40, 20], [0, 20]]], np.float64)  # a 40x20 rectangle
    # the same rectangle as (w, h, angle) and as its 90-degree twin (h, w, angle + pi/2): both perfect
    for det in ([20, 10, 40, 20, 0.0], [20, 10, 20, 40, np.pi / 2]):
        m = OBBMetrics(1)
        m.update("a", [det], [0.9], [0], gt, [0])
        assert m.compute()["map50_95"] == pytest.approx(PERFECT)
    # shifted by 9 px along x: polygon IoU 31*20 / (2*800 - 620) = 0.633 -> TP at 0.50, 0.55, 0.60, FP above
    m = OBBMetrics(1)
    m.update("a", [[29, 10, 40, 20, 0.0]], [0.9], [0], gt, [0])
    r = m.compute()
    assert r["map50"] == pytest.approx(PERFECT) and r["map50_95"] == pytest.approx(0.3 * PERFECT)
    # ProbIoU of that pair is 0.73: scored by it, the detection would count up to the 0.70 threshold
    from yolojax.eval.rotated import probiou
    assert float(probiou(np.array([29, 10, 40, 20, 0.0]), np.array([20, 10, 40, 20, 0.0]))) > 0.7


def test_difficult_ground_truth_is_ignored():
    gt = np.array([[[0, 0], [40, 0], [40, 20], [0, 20]], [[100, 100], [140, 100], [140, 120], [100, 120]]], float)
    dets = [[20, 10, 40, 20, 0.0], [120, 110, 40, 20, 0.0]]
    m = OBBMetrics(1)
    m.update("a", dets, [0.9, 0.95], [0, 0], gt, [0, 0], [False, True])
    r = m.compute()
    # the detection on the difficult object is neither TP nor FP; the difficult one is no instance
    assert r["instances"] == 1 and r["map50_95"] == pytest.approx(PERFECT) and r["precision"] == pytest.approx(1.0)
    m2 = OBBMetrics(1)
    m2.update("a", dets, [0.9, 0.95], [0, 0], gt, [0, 0], [False, False])
    assert m2.compute()["instances"] == 2


def test_dota_per_class_ap():
    """Ground truth quadrilaterals against detections of their rotated boxes, some jittered, some missed,
    and some with the wrong class: per-class AP over the 15 DOTA classes."""
    ds = load_dataset(DATA / "dota")
    m = OBBMetrics(len(DOTA_NAMES), DOTA_NAMES)
    rng = np.random.default_rng(0)
    for rec in ds:
        r = rec.obb.astype(np.float64)
        found = rng.uniform(size=len(r)) < 0.9
        det = r[found] + np.concatenate([rng.normal(0, 1.0, (found.sum(), 2)), np.zeros((found.sum(), 3))], 1)
        cls = rec.classes[found].copy()
        flip = rng.uniform(size=len(cls)) < 0.05
        cls[flip] = (cls[flip] + 1) % len(DOTA_NAMES)
        m.update(rec.image_id, det, rng.uniform(0.3, 1, len(det)), cls, rec.polygons, rec.classes, rec.ignore)
    r = m.compute()
    names = {c["name"] for c in r["per_class"]}
    assert names == {DOTA_NAMES[c] for rec in ds for c in rec.classes[~rec.ignore]}
    assert {"small-vehicle", "large-vehicle", "ship", "harbor"} <= names
    assert r["instances"] == 892 - 74  # difficult objects are no instances
    assert 0.7 < r["map50"] < 0.95 and r["map50_95"] < r["map50"]
    for c in r["per_class"]:
        assert 0 <= c["ap50_95"] <= c["ap50"] <= 1


def test_result_files(tmp_path):
    dets = [("P0001", np.array([[20, 10, 40, 20, 0.0]]), np.array([0.9]), np.array([1])),
            ("P0002", np.zeros((0, 5)), np.zeros(0), np.zeros(0, int))]
    rows = obb_json(dets, DOTA_NAMES)
    assert rows == [{"image_id": "P0001", "category_id": 1, "score": 0.9, "rbox": [20.0, 10.0, 40.0, 20.0, 0.0],
                     "poly": [40.0, 20.0, 40.0, 0.0, 0.0, 0.0, 0.0, 20.0], "name": "ship"}]
    files = save_dota(dets, tmp_path / "dota", DOTA_NAMES)
    assert len(files) == 15
    assert (tmp_path / "dota" / "Task1_ship.txt").read_text() == "P0001 0.900000 40.0 20.0 40.0 0.0 0.0 0.0 0.0 20.0\n"
    assert (tmp_path / "dota" / "Task1_plane.txt").read_text() == ""
    json.dumps(rows)
