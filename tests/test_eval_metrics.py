"""Detection metrics: Ultralytics' numbers on the coco128 reference detections, and hand-made cases."""
import numpy as np
import pytest
from PIL import Image

from yolojax.eval.boxes import xywh2xyxy
from yolojax.eval.metrics import (
    DetectionMetrics,
    compute_ap,
    compute_ap_coco,
    format_results,
    match_detections,
    plot_metric_curve,
    plot_pr_curve,
)


def load_coco128(data_dir, stems):
    """Ground truth for the given stems: (xyxy pixels [m,4], classes [m], (h, w)); no label file = background."""
    root = data_dir / "coco128"
    out = {}
    for s in stems:
        w, h = Image.open(root / "images" / "train" / f"{s}.jpg").size
        f = root / "labels" / "train" / f"{s}.txt"
        lab = np.loadtxt(f, ndmin=2).reshape(-1, 5) if f.exists() else np.zeros((0, 5))
        out[s] = (xywh2xyxy(lab[:, 1:] * [w, h, w, h]), lab[:, 0].astype(int), (h, w))
    return out


@pytest.fixture(scope="module")
def coco128(data_dir, reference_dir):
    ref = np.load(reference_dir / "coco128_noisy_detections.npz")
    stems = [str(s) for s in ref["stems"]]
    return ref, stems, load_coco128(data_dir, stems)


@pytest.fixture(scope="module")
def coco128_metrics(coco128):
    ref, stems, gt = coco128
    det = ref["detections"]
    m = DetectionMetrics(80)
    for i, s in enumerate(stems):
        d = det[det[:, 0] == i]
        m.update(s, d[:, 1:5], d[:, 5], d[:, 6], gt[s][0], gt[s][1])
    return m


def test_coco128_equals_ultralytics(coco128, coco128_metrics):
    ref, stems, gt = coco128
    assert sum(len(g[1]) for g in gt.values()) == 929  # 2 orphan label files (12 boxes) have no image
    assert sum(len(g[1]) == 0 for g in gt.values()) == 2  # background images
    r = coco128_metrics.compute()
    assert r["map50"] == pytest.approx(float(ref["ultralytics_map50"]), abs=1e-4)
    assert r["map50_95"] == pytest.approx(float(ref["ultralytics_map50_95"]), abs=1e-4)
    assert r["map50"] == pytest.approx(0.6483, abs=1e-4) and r["map50_95"] == pytest.approx(0.3843, abs=1e-4)
    assert r["fitness"] == pytest.approx(0.1 * r["map50"] + 0.9 * r["map50_95"])
    assert r["images"] == 128 and r["instances"] == 929
    assert len(r["per_class"]) == 71 and sum(c["instances"] for c in r["per_class"]) == 929
    assert np.mean([c["ap50_95"] for c in r["per_class"]]) == pytest.approx(r["map50_95"])
    assert np.mean([c["precision"] for c in r["per_class"]]) == pytest.approx(r["precision"])
    assert 0.3 < r["precision"] < 1 and 0.3 < r["recall"] < 1
    # Within half a point of pycocotools' AP on the same detections (gap = interpolation only here).
    coco = ref["pycocotools_stats"]
    assert abs(r["map50_95"] - coco[0]) < 0.005 and abs(r["map50"] - coco[1]) < 0.005
    for key, k in (("map_small", 3), ("map_medium", 4), ("map_large", 5)):
        assert abs(r[key] - coco[k]) < 0.005, (key, r[key], coco[k])


def test_coco128_coco_interpolation_equals_pycocotools(coco128, coco128_metrics):
    """Same matching, COCO's step interpolation: the 6 AP stats of pycocotools, area ranges included."""
    ref, _, _ = coco128
    r = coco128_metrics.compute(ap_method="coco")
    got = [r[k] for k in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large")]
    np.testing.assert_allclose(got, ref["pycocotools_stats"][:6], atol=1e-9)


def test_curves_and_plots(coco128_metrics, tmp_path):
    r = coco128_metrics.compute()
    c = r["curves"]
    assert c["px"].shape == (1000,) and c["prec_values"].shape == (71, 1000) and len(c["names"]) == 71
    assert c["f1_curve"].shape == (71, 1000) and np.all((c["p_curve"] >= 0) & (c["p_curve"] <= 1))
    assert np.all(np.diff(c["prec_values"], axis=1) <= 1e-12)  # the envelope never rises with recall
    path = plot_pr_curve(r, tmp_path / "PR_curve.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (2250, 1500)  # 9x6 inches at 250 dpi, like Ultralytics
    assert plot_metric_curve(r, tmp_path / "F1_curve.png", "f1").stat().st_size > 10_000
    table = format_results(r)
    assert "all" in table.splitlines()[1] and len(table.splitlines()) == 2 + 71


# ---------------------------------------------------------------------------------------------
# Hand-made cases (one class unless said otherwise; boxes in pixels)

GT = np.array([[10, 10, 50, 50], [100, 100, 200, 180]], float)


def _one(m, image_id, pred, scores, cls, gt=GT, gt_cls=None, ignore=None):
    gt_cls = np.zeros(len(gt), int) if gt_cls is None else gt_cls
    m.update(image_id, np.asarray(pred, float).reshape(-1, 4), scores, cls, gt, gt_cls, ignore)


def test_perfect_detections():
    m = DetectionMetrics(3, names=["a", "b", "c"])
    _one(m, "x", GT, [0.9, 0.8], [0, 1], gt_cls=np.array([0, 1]))
    _one(m, "y", GT + 3, [0.7, 0.6], [1, 1], gt=GT + 3, gt_cls=np.array([1, 1]))
    coco = m.compute(ap_method="coco")
    for k in ("map50", "map50_95", "map75", "map_medium"):  # both boxes are medium (1600, 8000 px^2)
        assert coco[k] == 1.0, k
    assert coco["map_small"] == coco["map_large"] == -1.0  # no instance in range: COCO's -1
    r = m.compute()
    # Ultralytics' interpolation tops out at 0.995: its sentinel drops precision to 0 at recall 1,
    # so the trapezoid over the 101-point grid loses half of the last 0.01 interval.
    assert r["map50"] == pytest.approx(0.995) and r["map50_95"] == pytest.approx(0.995)
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    assert [(c["name"], c["instances"], c["images"]) for c in r["per_class"]] == [("a", 1, 1), ("b", 3, 2)]
    assert r["maps"].shape == (3,) and r["maps"][2] == pytest.approx(r["map50_95"])


def test_false_positive_above_true_positive_lowers_ap_by_hand():
    m = DetectionMetrics(1)
    # One ground truth; an FP (no overlap) scored above the TP: precision 0 then 1/2 at recall 1.
    _one(m, "x", [[300, 300, 340, 340], GT[0]], [0.9, 0.8], [0, 0], gt=GT[:1])
    r = m.compute()
    # Envelope 0.5 on the grid [0, 0.99], 0 at recall 1 (sentinel) -> 0.5 * (0.99 + 0.01 / 2).
    assert r["map50"] == pytest.approx(0.5 * 0.995, abs=1e-12)
    assert m.compute(ap_method="coco")["map50"] == pytest.approx(0.5)
    # The same FP below the TP costs nothing.
    m2 = DetectionMetrics(1)
    _one(m2, "x", [[300, 300, 340, 340], GT[0]], [0.7, 0.8], [0, 0], gt=GT[:1])
    assert m2.compute()["map50"] == pytest.approx(0.995)


def test_two_objects_tp_fp_tp_by_hand():
    m = DetectionMetrics(1)
    _one(m, "x", [GT[0], [300, 300, 340, 340], GT[1]], [0.9, 0.8, 0.7], [0, 0, 0])
    # recall (0.5, 0.5, 1), precision (1, 1/2, 2/3); envelope 1 up to recall 0.5, 2/3 after, 0 at 1.
    # np.interp on the grid: 1 at 0..0.49, 2/3 at 0.50..0.99 (0.5 takes the later duplicate), 0 at 1.
    grid = np.r_[np.ones(50), np.full(50, 2 / 3), 0.0]
    by_hand = np.sum((grid[1:] + grid[:-1]) / 2 * 0.01)
    assert by_hand == pytest.approx(0.49 + (1 + 2 / 3) / 2 * 0.01 + 49 * 2 / 3 * 0.01 + (2 / 3) / 2 * 0.01)
    assert m.compute()["map50"] == pytest.approx(by_hand, abs=1e-12)
    assert m.compute(ap_method="coco")["map50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_localisation_sets_map50_95_by_threshold():
    m = DetectionMetrics(1)
    # IoU 0.72 with the ground truth: TP at thresholds 0.50..0.70 (5 of 10), FP above.
    gt = np.array([[0, 0, 100, 100]], float)
    _one(m, "x", [[0, 0, 100, 72]], [0.9], [0], gt=gt)
    r = m.compute()
    assert r["map50"] == pytest.approx(0.995) and r["map75"] == 0.0
    assert r["map50_95"] == pytest.approx(0.995 * 5 / 10)


def test_duplicate_detection_is_fp_and_each_gt_claimed_once():
    m = DetectionMetrics(1)
    _one(m, "x", [GT[0], GT[0] + 1], [0.9, 0.8], [0, 0], gt=GT[:1])
    tp, ign, counted = match_detections(np.array([GT[0], GT[0] + 1]), [0, 0], GT[:1], [0])
    assert tp[:, 0, 0].tolist() == [True, False] and not ign[:, 0].any()
    # Greedy by confidence: the high-scoring det claims its best GT; the next one takes what is left.
    dets = np.array([[10, 10, 50, 50], [12, 10, 52, 50]])
    tp, _, _ = match_detections(dets, [0, 0], np.array([[11, 10, 51, 50], [10, 10, 50, 50]]), [0, 0])
    assert tp[:, 0, 0].tolist() == [True, True]


def test_wrong_class_is_fp_and_absent_classes_do_not_count():
    m = DetectionMetrics(3)
    # Class 0 found; a class-2 detection on the class-0 object: FP of class 2, which has no instance.
    _one(m, "x", [GT[0], GT[0]], [0.9, 0.95], [0, 2], gt=GT[:1])
    r = m.compute()
    assert [c["class"] for c in r["per_class"]] == [0] and r["map50"] == pytest.approx(0.995)
    # A class with instances but no detection counts as AP 0.
    m2 = DetectionMetrics(3)
    _one(m2, "x", [GT[0]], [0.9], [0], gt=GT, gt_cls=np.array([0, 1]))
    assert m2.compute()["map50"] == pytest.approx(0.995 / 2)


def test_ignored_ground_truth():
    region = np.array([[200, 0, 400, 200]], float)  # ignored region, e.g. VisDrone category 0
    gt = np.r_[GT[:1], region]
    ignore = np.array([False, True])
    inside = [[210, 10, 250, 50], [300, 100, 340, 140]]  # small boxes in the region: IoU tiny, IoA 1
    m = DetectionMetrics(1)
    _one(m, "x", [GT[0], *inside], [0.5, 0.9, 0.8], [0, 0, 0], gt=gt, ignore=ignore)
    r = m.compute()
    # Both detections in the region are neither TP nor FP (crowd-like: a region absorbs many);
    # the region is not an instance.
    assert r["instances"] == 1 and r["map50"] == pytest.approx(0.995)
    # Without the ignore flag they are FPs above the TP, and the region is a missed object.
    m2 = DetectionMetrics(1)
    _one(m2, "x", [GT[0], *inside], [0.5, 0.9, 0.8], [0, 0, 0], gt=gt)
    r2 = m2.compute()
    assert r2["instances"] == 2 and r2["map50"] < 0.3
    # With IoU as the overlap for ignored boxes, small detections inside a big region stay FPs.
    m3 = DetectionMetrics(1, ignore_overlap="iou")
    _one(m3, "x", [GT[0], *inside], [0.5, 0.9, 0.8], [0, 0, 0], gt=gt, ignore=ignore)
    assert m3.compute()["map50"] == pytest.approx(0.995 / 3)  # precision 1/3 at recall 1
    # An undetected ignored box is no false negative.
    m4 = DetectionMetrics(1)
    _one(m4, "x", [GT[0]], [0.5], [0], gt=gt, ignore=ignore)
    assert m4.compute()["recall"] == pytest.approx(1.0)


def test_regular_ground_truth_preferred_over_ignored():
    # An ignored box exactly on the detection and a regular one at IoU 0.78: the regular one wins.
    gt = np.array([[0, 0, 100, 100], [0, 0, 100, 78]], float)
    tp, ign, counted = match_detections(np.array([[0, 0, 100, 100]]), [0], gt, [0, 0], [True, False])
    assert tp[0, 0, 0] and not ign[0, 0, 0]
    assert tp[0, 0].tolist() == [True] * 6 + [False] * 4  # IoU 0.78 passes 0.50..0.75
    assert ign[0, 0].tolist() == [False] * 6 + [True] * 4  # above that it lands on the ignored box
    assert counted[:, 0].tolist() == [False, True]


def test_area_ranges_follow_coco():
    # GT small (20x20) and large (120x120); a TP on each; an unmatched small FP.
    gt = np.array([[0, 0, 20, 20], [100, 100, 220, 220]], float)
    det = np.array([[0, 0, 20, 20], [100, 100, 220, 220], [400, 400, 410, 410]], float)
    tp, ign, counted = match_detections(det, [0, 0, 0], gt, [0, 0])
    # ranges: all, small, medium, large
    assert counted.tolist() == [[True, True, False, False], [True, False, False, True]]
    assert tp[:, :, 0].tolist() == [[True, True, False, False], [True, False, False, True], [False] * 4]
    # The small det matched to the large-range-ignored small GT is ignored there (and vice versa);
    # the unmatched 10x10 FP counts in 'all' and 'small', is ignored in 'medium'/'large'.
    assert ign[:, :, 0].tolist() == [[False, False, True, True], [False, True, True, False], [False, False, True, True]]


def test_bad_input_names_the_image():
    m = DetectionMetrics(2)
    with pytest.raises(ValueError, match="'img7'.*pred_classes"):
        m.update("img7", [[0, 0, 1, 1]], [0.5], [2], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="'img8'.*pred_scores has 2 rows"):
        m.update("img8", [[0, 0, 1, 1]], [0.5, 0.4], [0], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="'img9'.*non-finite"):
        m.update("img9", [[0, 0, np.nan, 1]], [0.5], [0], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="names has 1 entries"):
        DetectionMetrics(2, names=["a"])
    assert len(m) == 0


def test_empty_inputs():
    m = DetectionMetrics(2)
    assert m.compute()["map50"] == 0.0
    m.update("bg", np.zeros((0, 4)), [], [], np.zeros((0, 4)), [])
    m.update("fp", [[0, 0, 5, 5]], [0.3], [1], np.zeros((0, 4)), [])
    r = m.compute()
    assert r["map50_95"] == 0.0 and r["per_class"] == [] and r["images"] == 2 and r["map_small"] == -1.0


def test_compute_ap_sentinels():
    ap, mpre, mrec = compute_ap(np.array([0.25, 0.5]), np.array([1.0, 1.0]))
    assert mrec.tolist() == [0, 0.25, 0.5, 0.5, 1] and mpre.tolist() == [1, 1, 1, 0, 0]
    assert ap == pytest.approx(0.495)  # 1 up to 0.49, half an interval to 0 at 0.5
    assert compute_ap_coco(np.array([0.25, 0.5]), np.array([1.0, 1.0])) == pytest.approx(51 / 101)
