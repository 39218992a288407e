"""The synthetic aerial dataset: deterministic, a normal YOLO dataset, VisDrone-like sizes, learnable classes."""
import filecmp
import os

import cv2
import numpy as np
import yaml

from yolojax.data import VISDRONE_NAMES, load_dataset
from yolojax.data import geometry as geo
from yolojax.data.synth import make_synthetic, synth_image


def test_written_dataset_is_deterministic_and_readable(tmp_path):
    a = make_synthetic(tmp_path / "a", images=10, imgsz=128, seed=7, val_fraction=0.3, progress=False)
    b = make_synthetic(tmp_path / "b", images=10, imgsz=128, seed=7, val_fraction=0.3, progress=False)
    c = make_synthetic(tmp_path / "c", images=10, imgsz=128, seed=8, val_fraction=0.3, progress=False)
    cfg = yaml.safe_load(open(a))
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val" and "path" not in cfg  # relocatable
    assert [cfg["names"][i] for i in range(10)] == VISDRONE_NAMES
    for split, n in (("train", 7), ("val", 3)):
        files = sorted(os.listdir(tmp_path / "a" / "images" / split))
        assert len(files) == n
        for f in files + [f.replace(".jpg", ".txt") for f in files]:
            sub = "images" if f.endswith(".jpg") else "labels"
            assert filecmp.cmp(tmp_path / "a" / sub / split / f, tmp_path / "b" / sub / split / f, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / "labels" / "train" / "synth_000000.txt",
                           tmp_path / "c" / "labels" / "train" / "synth_000000.txt", shallow=False)
    tr, va = load_dataset(a, "train"), load_dataset(a, "val")
    assert (len(tr), len(va)) == (7, 3) and not tr.problems and not va.problems
    assert all(r.shape == (128, 128) for r in tr)


def test_sizes_scale_with_imgsz_and_crowding():
    sizes, counts, classes = {256: [], 640: []}, [], []
    for S in sizes:
        for i in range(6):
            img, c, p = synth_image(0, i, S)
            assert img.shape == (S, S, 3) and img.dtype == np.uint8
            b = geo.polygons_to_xyxy(p)
            sizes[S] += list(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
            assert (b >= 0).all() and (b <= S).all()
            if S == 256:
                counts.append(len(c))
                classes += list(c)
    s256, s640 = np.array(sizes[256]), np.array(sizes[640])
    assert 8 <= np.median(s256) <= 24 and np.percentile(s256, 95) <= 50 and s256.min() >= 5
    assert np.mean(s640 < 32) > 0.5  # most objects under 32 px at 640, as in VisDrone
    assert 1.4 < np.median(s640) / np.median(s256) < 2.1  # sizes grow as imgsz**0.6: a wider field of view
    assert min(counts) >= 8 and np.mean(counts) >= 15
    assert len(set(classes)) >= 8


def test_obb_labels_are_the_rotated_rectangles(tmp_path):
    path = make_synthetic(tmp_path, images=3, imgsz=128, seed=3, obb=True, val_fraction=0, progress=False)
    ds = load_dataset(path, "train")
    assert ds.obb and len(ds) == 3
    _, classes, polys = synth_image(3, 0, 128)
    rec = ds[0]
    np.testing.assert_array_equal(rec.classes, classes)
    np.testing.assert_allclose(rec.polygons, polys, atol=1e-3)
    # rotated rectangles: the fitted obb has the polygon's own area
    area = 0.5 * np.abs(np.einsum("ni,ni->n", polys[..., 0], np.roll(polys[..., 1], -1, 1))
                        - np.einsum("ni,ni->n", polys[..., 1], np.roll(polys[..., 0], -1, 1)))
    np.testing.assert_allclose(rec.obb[:, 2] * rec.obb[:, 3], area, rtol=1e-3)


def _object_features(seed, n, S=256):
    X, Y = [], []
    for i in range(n):
        img, cls, polys = synth_image(seed, i, S)
        obb = geo.polygons_to_obb(polys)
        for c, p, o in zip(cls, polys, obb):
            m = np.zeros(img.shape[:2], np.uint8)
            cv2.fillConvexPoly(m, np.round(p).astype(np.int32), 1)
            px = img[m > 0].astype(np.float32)
            if len(px) < 3:
                continue
            L, W = max(o[2], o[3]), min(o[2], o[3])
            X.append(np.r_[L, W, L / W, px.mean(0), px.std(0), np.percentile(px.mean(1), [10, 90])])
            Y.append(c)
    return np.array(X), np.array(Y)


def test_classes_are_visually_distinct():
    """Learnability proxy: a 5-nearest-neighbour classifier on 13 crude per-object features (size, aspect,
    colour statistics) tells the 10 classes apart on unseen images (chance: the majority class ~25%)."""
    Xtr, Ytr = _object_features(0, 16)
    Xte, Yte = _object_features(1, 6)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    d = ((((Xte - mu) / sd)[:, None] - ((Xtr - mu) / sd)[None]) ** 2).sum(-1)
    pred = np.array([np.bincount(Ytr[r], minlength=10).argmax() for r in np.argsort(d, 1)[:, :5]])
    assert (pred == Yte).mean() > 0.85
    for k in range(10):
        if (Yte == k).sum() >= 3:
            assert (pred[Yte == k] == k).mean() >= 0.6, (k, VISDRONE_NAMES[k])
