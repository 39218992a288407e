"""COCO JSON interop and pycocotools, cross-checked against our own matching."""
import json

import numpy as np
import pytest
from PIL import Image

from yolojax.eval.boxes import xywh2xyxy
from yolojax.eval.coco import (
    COCO_STAT_NAMES,
    coco_eval,
    coco_stats_dict,
    image_id_from,
    save_json,
    to_coco_detections,
    to_coco_gt,
)
from yolojax.eval.metrics import DetectionMetrics


def _coco128(data_dir, stems):
    root = data_dir / "coco128"
    sizes, boxes, classes = [], [], []
    for s in stems:
        w, h = Image.open(root / "images" / "train" / f"{s}.jpg").size
        f = root / "labels" / "train" / f"{s}.txt"
        lab = np.loadtxt(f, ndmin=2).reshape(-1, 5) if f.exists() else np.zeros((0, 5))  # no file: background
        sizes.append((h, w))
        boxes.append(xywh2xyxy(lab[:, 1:] * [w, h, w, h]))
        classes.append(lab[:, 0].astype(int))
    return sizes, boxes, classes


def test_coco128_reproduces_pycocotools_stats(data_dir, reference_dir, tmp_path):
    ref = np.load(reference_dir / "coco128_noisy_detections.npz")
    stems = [str(s) for s in ref["stems"]]
    det = ref["detections"]
    per = [det[det[:, 0] == i] for i in range(len(stems))]
    sizes, boxes, classes = _coco128(data_dir, stems)
    gt = to_coco_gt([f"images/{s}.jpg" for s in stems], sizes, boxes, classes, names=[f"c{i}" for i in range(80)])
    dets = to_coco_detections(stems, [d[:, 1:5] for d in per], [d[:, 5] for d in per], [d[:, 6] for d in per])
    assert len(gt["images"]) == 128 and len(gt["annotations"]) == 929 and len(gt["categories"]) == 80
    assert len(dets) == len(det) and dets[0]["image_id"] == 9 and gt["images"][0]["id"] == 9
    assert set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    # Through real JSON files, as a user would hand them to any COCO tool.
    stats = coco_eval(save_json(gt, tmp_path / "gt.json"), save_json(dets, tmp_path / "predictions.json"))
    np.testing.assert_allclose(stats, ref["pycocotools_stats"], atol=1e-9)
    assert coco_stats_dict(stats)["AP50"] == pytest.approx(0.6498, abs=1e-4)
    # Ultralytics' JSON rounding (3 decimals) moves the stats by < 1e-4.
    rounded = to_coco_detections(
        stems, [d[:, 1:5] for d in per], [d[:, 5] for d in per], [d[:, 6] for d in per], decimals=3
    )
    np.testing.assert_allclose(coco_eval(gt, rounded), ref["pycocotools_stats"], atol=1e-4)


def _synthetic(seed=0, n_images=12, nc=3):
    """Random scenes with small/medium/large objects, crowd regions, jittered TPs, FPs, wrong classes."""
    rng = np.random.default_rng(seed)
    ids, sizes, gtb, gtc, gti, db, ds, dc = [], [], [], [], [], [], [], []
    for i in range(n_images):
        h, w = 480, 640
        m = rng.integers(0, 9)
        wh = np.exp(rng.uniform(np.log(12), np.log(200), (m, 2)))
        xy = rng.uniform(0, 1, (m, 2)) * ([w, h] - wh)
        b = np.c_[xy, xy + wh]
        c = rng.integers(0, nc, m)
        ig = rng.uniform(size=m) < 0.15
        found = rng.uniform(size=m) < 0.8
        jit = b[found] + rng.normal(0, 0.08, (found.sum(), 4)) * np.repeat(wh[found], 2, 1)
        jc = np.where(rng.uniform(size=found.sum()) < 0.1, rng.integers(0, nc, found.sum()), c[found])
        k = rng.integers(0, 5)  # false positives
        fwh = rng.uniform(8, 150, (k, 2))
        fxy = rng.uniform(0, 1, (k, 2)) * ([w, h] - fwh)
        # Small detections inside crowd regions: ignored only through IoA.
        crowd = b[ig]
        inner = np.c_[crowd[:, :2] + 2, crowd[:, :2] + 2 + (crowd[:, 2:] - crowd[:, :2]) * 0.4]
        boxes = np.r_[jit, np.c_[fxy, fxy + fwh], inner]
        cls = np.r_[jc, rng.integers(0, nc, k), c[ig]]
        ids.append(f"scene_{i:02d}" if i % 2 else str(1000 + i))  # string and numeric stems
        sizes.append((h, w))
        gtb.append(b)
        gtc.append(c)
        gti.append(ig)
        db.append(boxes)
        ds.append(rng.uniform(0.01, 1, len(boxes)))
        dc.append(cls)
    return ids, sizes, gtb, gtc, gti, db, ds, dc


def test_our_matching_with_coco_interpolation_equals_pycocotools_with_crowd():
    ids, sizes, gtb, gtc, gti, db, ds, dc = _synthetic()
    assert sum(g.sum() for g in gti) >= 3  # the scenes do hold crowd regions
    gt = to_coco_gt(ids, sizes, gtb, gtc, gti)
    assert {type(im["id"]) for im in gt["images"]} == {int, str}
    assert sum(a["iscrowd"] for a in gt["annotations"]) == sum(g.sum() for g in gti)
    stats = coco_eval(gt, to_coco_detections(ids, db, ds, dc))
    m = DetectionMetrics(3)
    for args in zip(ids, db, ds, dc, gtb, gtc, gti):
        m.update(*args)
    r = m.compute(ap_method="coco")
    got = [r[k] for k in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large")]
    np.testing.assert_allclose(got, stats[:6], atol=1e-9)
    # Ultralytics' interpolation on the same matching: close, not equal.
    u = m.compute()
    assert 0 < abs(u["map50_95"] - stats[0]) < 0.02


def test_class_map_and_category_ids():
    ids, sizes, gtb, gtc, gti, db, ds, dc = _synthetic(seed=1, n_images=4)
    coco91 = [1, 7, 90]
    gt = to_coco_gt(ids, sizes, gtb, gtc, gti, names=["person", "train", "toothbrush"], class_map=coco91)
    assert [(c["id"], c["name"]) for c in gt["categories"]] == [(1, "person"), (7, "train"), (90, "toothbrush")]
    dets = to_coco_detections(ids, db, ds, dc, class_map=coco91)
    assert {d["category_id"] for d in dets} <= {1, 7, 90}
    plain = coco_eval(to_coco_gt(ids, sizes, gtb, gtc, gti), to_coco_detections(ids, db, ds, dc))
    np.testing.assert_allclose(coco_eval(gt, dets), plain, atol=1e-12)


def test_errors_and_edge_cases(tmp_path):
    gt = to_coco_gt(["a.jpg", "b.jpg"], [(10, 10), (10, 10)], [np.array([[1, 1, 5, 5.0]]), np.zeros((0, 4))], [[0], []])
    assert [im["id"] for im in gt["images"]] == ["a", "b"]
    with pytest.raises(ValueError, match="not in the ground truth.*'c'"):
        coco_eval(gt, [dict(image_id="c", category_id=0, bbox=[1, 1, 2, 2], score=0.5)])
    stats = coco_eval(gt, [])  # no detections at all: AP 0 where there is ground truth, -1 where none
    assert stats[0] == 0 and stats[1] == 0 and stats[3] == 0 and stats[4] == -1
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": "a",\n "bbox": [1, 2, 3, 4],, }]')
    with pytest.raises(ValueError, match="bad.json: line 2"):
        coco_eval(gt, bad)
    with pytest.raises(ValueError, match="duplicate image id 'a'"):
        to_coco_gt(["x/a.jpg", "y/a.png"], [(1, 1)] * 2, [np.zeros((0, 4))] * 2, [[], []])
    with pytest.raises(ValueError, match="image 'a': 1 boxes, 2 scores"):
        to_coco_detections(["a"], [np.zeros((1, 4))], [[0.1, 0.2]], [[0]])
    assert image_id_from("/data/images/000000000009.jpg") == 9 and image_id_from("img_3.png") == "img_3"
    assert len(COCO_STAT_NAMES) == 12
    assert json.loads((save_json([], tmp_path / "d" / "e.json")).read_text()) == []
