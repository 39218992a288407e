"""Augmentation geometry: boxes must follow the pixels exactly through letterbox, affine, mosaic and flip."""
import numpy as np
import pytest
import shapely.geometry as sg

from yolojax.data import augment as aug
from yolojax.data import geometry as geo

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def scene(h, w, boxes, rng=None):
    """Dark noisy image with one filled rectangle per box, each in its own pure colour."""
    rng = rng or np.random.default_rng(0)
    img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    for (x1, y1, x2, y2), c in zip(boxes, COLORS):
        img[int(y1):int(y2), int(x1):int(x2)] = c
    n = len(boxes)
    return img, aug.Targets(np.asarray(boxes, np.float32), np.arange(n, dtype=np.int32), np.zeros(n, bool))


def colour_extent(img, c, tol=60):
    """xyxy pixel-edge bounds of the pixels close to colour c (None if absent)."""
    m = (np.abs(img.astype(int) - np.array(c)).sum(-1) < tol)
    ys, xs = np.nonzero(m)
    if len(xs) < 4:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32), m


def assert_boxes_follow_pixels(img, t, tight=True, slack=1.5):
    """Every box covers all pixels of its colour; with tight=True it is also no bigger than them."""
    assert len(t) > 0
    for box, cls in zip(t.boxes, t.classes):
        ext = colour_extent(img, COLORS[cls])
        assert ext is not None, f"class {cls} box {box} has no pixels"
        e, _ = ext
        assert (box[:2] <= e[:2] + slack).all() and (box[2:] >= e[2:] - slack).all(), (box, e)
        if tight:
            np.testing.assert_allclose(box, e, atol=slack + 0.5)


def test_letterbox_params_and_pixels():
    img, t = scene(765, 1360, [[100, 200, 400, 500], [1200, 600, 1360, 765]])
    out, t2, r, (px, py) = aug.letterbox(img, t, (765, 1360), 640)
    assert out.shape == (640, 640, 3)
    assert r == pytest.approx(640 / 1360) and (px, py) == (0, 140)  # 360 rows of image, 140 px bands
    assert (out[:139] == 114).all() and (out[501:] == 114).all()
    np.testing.assert_allclose(t2.boxes, t.boxes * r + [0, 140, 0, 140], atol=1e-4)
    assert_boxes_follow_pixels(out, t2)
    # no scale-up when asked: a small image is only padded
    small, ts = scene(100, 60, [[10, 10, 50, 90]])
    out, t3, r, (px, py) = aug.letterbox(small, ts, (100, 60), 128, scaleup=False)
    assert r == 1 and (px, py) == (34, 14) and out.shape == (128, 128, 3)
    np.testing.assert_allclose(t3.boxes, [[44, 24, 84, 104]])


@pytest.mark.parametrize("degrees,shear", [(0.0, 0.0), (25.0, 0.0), (0.0, 8.0)])
def test_affine_boxes_cover_pixels(degrees, shear):
    cfg = aug.AugmentConfig(degrees=degrees, shear=shear, translate=0.1, scale=0.5)
    boxes = [[20, 30, 70, 60], [100, 90, 150, 160], [40, 120, 90, 150]]
    for seed in range(6):
        img, t = scene(192, 192, boxes)
        out, t2 = aug.random_affine(img, t, (192, 192), (192, 192), np.random.default_rng(seed), cfg)
        assert out.shape == (192, 192, 3)
        # rotated/sheared boxes are the bounds of the moved corners: they cover, and may exceed, the pixels
        assert_boxes_follow_pixels(out, t2, tight=degrees == 0 and shear == 0, slack=2.0)
        assert (t2.boxes[:, [0, 2]] >= 0).all() and (t2.boxes[:, [1, 3]] <= 192).all()


def test_box_candidates():
    # Ultralytics docstring example
    b1 = np.array([[0, 0, 100, 100], [0, 0, 50, 50]], np.float32)
    b2 = np.array([[10, 10, 90, 90], [5, 5, 45, 45]], np.float32)
    assert aug.box_candidates(b1, b2).tolist() == [True, True]
    lost = np.array([[0, 0, 20, 20], [0, 0, 2, 50], [0, 0, 100, 0.9]], np.float32)
    assert aug.box_candidates(b1[[0, 0, 0]], lost).tolist() == [False, False, False]  # area 4%, 2 px, aspect


def test_affine_drops_boxes_pushed_out():
    img, t = scene(128, 128, [[0, 0, 12, 12], [50, 50, 90, 90]])
    cfg = aug.AugmentConfig(translate=0.0, scale=0.0)
    out, t2 = aug.random_affine(img, t, (128, 128), (128, 128), np.random.default_rng(0), cfg)
    np.testing.assert_allclose(t2.boxes, t.boxes)  # identity when translate=scale=0
    np.testing.assert_array_equal(out, img)
    shifted = aug.Targets(t.boxes - [10, 10, 10, 10], t.classes, t.ignore)  # box 0 mostly outside
    kept = aug.clip_targets(shifted, 128, 128, min_area=-1)
    keep = aug.box_candidates(t.boxes, kept.boxes)
    assert keep.tolist() == [False, True]


def test_mosaic_then_affine_boxes_follow_pixels():
    rng = np.random.default_rng(3)
    items = []
    sizes = [(96, 128), (128, 80), (128, 128), (70, 128)]
    for k, (h, w) in enumerate(sizes):
        b = [[w * 0.2, h * 0.3, w * 0.6, h * 0.7]]
        img, t = scene(h, w, b, rng)
        t.classes[:] = k  # colour k in image k
        img[:] = np.where((img == COLORS[0]).all(-1, keepdims=True), COLORS[k], img)
        items.append((img, (h, w), t))
    for seed in range(5):
        canvas, t = aug.mosaic4(items, 128, np.random.default_rng(seed))
        assert canvas.shape == (256, 256, 3)
        assert_boxes_follow_pixels(canvas, t, tight=True)
        out, t2 = aug.random_affine(canvas, t, (256, 256), (128, 128), np.random.default_rng(seed), aug.AugmentConfig())
        if len(t2):
            assert_boxes_follow_pixels(out, t2, tight=False, slack=2.0)


def test_flip_and_hsv():
    img, t = scene(64, 96, [[10, 5, 30, 25]])
    out, t2 = aug.flip(img, t, (64, 96), horizontal=True)
    np.testing.assert_allclose(t2.boxes, [[66, 5, 86, 25]])
    assert_boxes_follow_pixels(out, t2)
    out, t3 = aug.flip(img, t, (64, 96), horizontal=False)
    np.testing.assert_allclose(t3.boxes, [[10, 39, 30, 59]])
    same = aug.augment_hsv(img.copy(), np.random.default_rng(0), 0, 0, 0)
    np.testing.assert_array_equal(same, img)
    a = aug.augment_hsv(img, np.random.default_rng(1), 0.015, 0.7, 0.4)
    b = aug.augment_hsv(img, np.random.default_rng(1), 0.015, 0.7, 0.4)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and not np.array_equal(a, img)


def test_train_transform_ignore_and_dry_run_agree():
    """Ignore flags travel with their boxes, and a targets-only dry run gives the very same targets."""
    img, t = scene(120, 160, [[10, 10, 60, 50], [80, 40, 150, 110], [20, 70, 70, 115]])
    t.ignore[1] = True
    item = (img, (120, 160), t)
    for seed in range(4):
        out, t1 = aug.train_transform([item] * 4, 128, np.random.default_rng(seed), aug.AugmentConfig())
        _, t0 = aug.train_transform([(None, (120, 160), t)] * 4, 128, np.random.default_rng(seed), aug.AugmentConfig())
        np.testing.assert_array_equal(t0.boxes, t1.boxes)
        np.testing.assert_array_equal(t1.ignore, t1.classes == 1)  # class 1 is the ignored box
        assert out.shape == (128, 128, 3)


def test_polygons_travel_and_obb_matches_pixels():
    """A rotated rectangle drawn into the image: after a rotating affine, the obb of the moved polygon
    covers the moved pixels (IoU > 0.85 with the pixel mask)."""
    import cv2
    h = w = 160
    rect = np.array([[80, 80, 60, 24, 0.5]])
    poly = geo.obb_to_polygons(rect).astype(np.float32)
    img = np.zeros((h, w, 3), np.uint8)
    cv2.fillConvexPoly(img, np.round(poly[0]).astype(np.int32), (255, 0, 0))
    t = aug.Targets(geo.polygons_to_xyxy(poly), np.zeros(1, np.int32), np.zeros(1, bool), poly)
    cfg = aug.AugmentConfig(degrees=40, translate=0.05, scale=0.2)
    for seed in range(4):
        out, t2 = aug.random_affine(img, t, (h, w), (h, w), np.random.default_rng(seed), cfg)
        (o,) = t2.obb()
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, np.round(geo.obb_to_polygons(o[None])[0]).astype(np.int32), 1)
        px = (out[..., 0] > 128).astype(np.uint8)
        iou = (mask & px).sum() / (mask | px).sum()
        assert iou > 0.85, iou
        assert_boxes_follow_pixels(np.where(px[..., None], np.array(COLORS[0], np.uint8), 0).astype(np.uint8), t2)


def test_clip_polygons_is_the_exact_intersection():
    rng = np.random.default_rng(0)
    r = np.stack([rng.uniform(-20, 120, 300), rng.uniform(-20, 120, 300), rng.uniform(5, 60, 300),
                  rng.uniform(5, 60, 300), rng.uniform(0, 3, 300)], 1)
    polys = geo.obb_to_polygons(r)
    pts, valid = geo.clip_polygons(polys, 100, 80)
    bounds = geo.masked_bounds(pts, valid)
    img = sg.box(0, 0, 100, 80)
    for p, b in zip(polys, bounds):
        inter = sg.Polygon(p).intersection(img)
        if inter.area < 1e-6:
            continue
        np.testing.assert_allclose(b, inter.bounds, atol=1e-6)
    # and the rectangle fitted to the clipped points has the intersection's minimum-rectangle area
    k = [i for i, p in enumerate(polys) if sg.Polygon(p).intersection(img).area > 1]
    rects = geo.min_area_rect(pts[k], valid[k])
    for i, rr in zip(k, rects):
        mrr = sg.Polygon(polys[i]).intersection(img).minimum_rotated_rectangle
        assert rr[2] * rr[3] == pytest.approx(mrr.area, rel=1e-6, abs=1e-6)


def _mosaic_reference(items, s, xc, yc):
    """Ultralytics' _mosaic4 pixel placement, written out: full gray canvas, then the four copies."""
    out = np.full((2 * s, 2 * s, 3), 114, np.uint8)
    for i, (img, (h, w), _) in enumerate(items):
        if i == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        out[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
    return out


def test_mosaic_canvas_matches_reference_placement():
    shapes = [(64, 50), (40, 64), (64, 64), (30, 64)]
    items = [(np.random.default_rng(k).integers(0, 255, (*hw, 3)).astype(np.uint8), hw, aug.Targets.empty(False))
             for k, hw in enumerate(shapes)]
    for seed in range(25):
        canvas, _ = aug.mosaic4(items, 64, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        yc, xc = (int(rng.uniform(32, 96)) for _ in range(2))
        np.testing.assert_array_equal(canvas, _mosaic_reference(items, 64, xc, yc))
