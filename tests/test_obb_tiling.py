"""Tiling of large oriented-box images: windows, cut objects, a tiled DOTA written and read back, the ground
truth round trip through tile merging, and tiled inference merged back to full-image coordinates."""
import cv2
import numpy as np
import pytest

from yolojax.data import DOTA_NAMES, geometry as geo, load_dataset
from yolojax.data.tiling import (crop_targets, main, merge_tiles, parse_tile_name, predict_tiled, tile_dataset,
                                 tile_name, tile_record, tile_windows)
from yolojax.eval.rotated import polygon_area, polygon_iou, rbox_corners
from tests.conftest import DATA


@pytest.fixture(scope="module")
def dota():
    ds = load_dataset(DATA / "dota")
    assert len(ds) == 5 and sum(len(r) for r in ds) == 892 and ds.names == DOTA_NAMES
    return ds


def test_windows():
    np.testing.assert_array_equal(tile_windows((1464, 824)), [[0, 0, 1024, 1024], [0, 440, 1024, 1464]])
    np.testing.assert_array_equal(tile_windows((300, 500)), [[0, 0, 1024, 1024]])  # smaller than a tile
    win = tile_windows((3000, 4000), 1024, 200)
    xs, ys = np.unique(win[:, 0]), np.unique(win[:, 1])
    np.testing.assert_array_equal(xs, [0, 824, 1648, 2472, 2976])
    np.testing.assert_array_equal(ys, [0, 824, 1648, 1976])
    assert len(win) == 20 and (win[:, 2] <= 4000).all() and (win[:, 3] <= 3000).all()
    assert (np.diff(xs) <= 824).all() and (np.diff(ys) <= 824).all()  # neighbours overlap by >= 200 px
    with pytest.raises(ValueError, match="overlap"):
        tile_windows((100, 100), 512, 512)
    assert tile_name("P0003", [0, 824, 1024, 1848]) == "P0003__1024__0___824"
    assert parse_tile_name("a__b__1024__16___8.png") == ("a__b", 16, 8)
    assert parse_tile_name("P0003.png") is None


def test_cut_objects():
    def rect(cx, cy, w, h, a=0.0):
        return geo.obb_to_polygons(np.array([[cx, cy, w, h, a]]))[0]

    polys = np.stack([rect(50, 50, 20, 10),  # inside
                      rect(100, 50, 40, 10),  # half inside: becomes an ignore region
                      rect(88, 20, 40, 10),  # 80% inside: a target, the rectangle of its visible part
                      rect(300, 300, 10, 10),  # outside
                      rect(50, 90, 20, 10, 0.6)])  # rotated, cut by the bottom edge
    out = crop_targets(polys, np.array([0, 1, 2, 3, 4]), np.zeros(5, bool), (0, 0, 100, 100), (400, 400))
    np.testing.assert_array_equal(out["index"], [0, 1, 2, 4])
    np.testing.assert_allclose(out["visible"][:3], [1.0, 0.5, 0.8], atol=1e-9)
    np.testing.assert_array_equal(out["ignore"], [False, True, False, out["visible"][3] < 0.7])
    np.testing.assert_allclose(out["polygons"][0], polys[0], atol=1e-5)
    np.testing.assert_allclose(geo.polygons_to_xyxy(out["polygons"][2:3])[0], [68, 15, 100, 25], atol=1e-4)
    assert float(polygon_area(out["polygons"][3].astype(float))) == pytest.approx(out["visible"][3] * 200, rel=0.05)
    assert (out["polygons"] >= 0).all() and (out["polygons"] <= 100).all()
    # a window into a 2nd image row: coordinates are relative to its corner
    out2 = crop_targets(polys, np.zeros(5), np.zeros(5, bool), (40, 40, 140, 140), (400, 400))
    np.testing.assert_allclose(out2["polygons"][0], polys[0] - 40, atol=1e-5)


def test_tiled_dota_written_and_read_back(dota, tmp_path):
    path = tile_dataset({"train": dota}, tmp_path / "tiled", tile=512, overlap=128, ext=".png", progress=False)
    back = load_dataset(path, "train")
    assert back.obb and back.names == DOTA_NAMES and not [p for p in back.problems if p.action != "warning"]
    expected = {t.image_id: (rec, win, t) for rec in dota for win, t in tile_record(rec, 512, 128)}
    assert sorted(r.image_id for r in back) == sorted(expected) and len(back) == 36
    for r in back:
        rec, win, t = expected[r.image_id]
        assert parse_tile_name(r.path) == (rec.image_id, int(win[0]), int(win[1]))
        assert r.shape == t.shape
        order = np.lexsort((t.polygons.reshape(-1, 8).T.round(2)))
        got = np.lexsort((r.polygons.reshape(-1, 8).T.round(2)))
        np.testing.assert_allclose(r.polygons[got], t.polygons[order], atol=2e-3)
        np.testing.assert_array_equal(r.classes[got], t.classes[order])
        np.testing.assert_array_equal(r.ignore[got], t.ignore[order])
    # pixels: the tile is the crop
    r = next(r for r in back if r.image_id == "P0706__512__384___384")
    full = cv2.imread(str(DATA / "dota" / "images" / "P0706.png"))
    np.testing.assert_array_equal(cv2.imread(r.path), full[384:896, 384:896])
    # the CLI writes the same tiles
    assert main([str(DATA / "dota"), str(tmp_path / "cli"), "--splits", "train", "--tile", "512", "--overlap",
                 "128"]) == 0
    assert len(load_dataset(tmp_path / "cli" / "data.yaml", "train")) == 36
    with pytest.raises(ValueError, match="not an oriented dataset"):
        tile_dataset(load_dataset(DATA / "voc"), tmp_path / "voc", progress=False)


@pytest.mark.parametrize("tile,overlap", [(1024, 200), (512, 128)])
def test_ground_truth_round_trip(dota, tile, overlap):
    """Tile every image, take each tile's objects back to full-image coordinates and merge: every object that
    some tile holds (>= 70% of it) comes back exactly once, and exactly as annotated when a tile holds all of it."""
    missing, partial = [], 0
    for rec in dota:
        parts, polys, src = [], [], []
        held = np.zeros(len(rec), bool)
        whole = np.zeros(len(rec), bool)
        for win, t in tile_record(rec, tile, overlap):
            crop = crop_targets(rec.polygons, rec.classes, rec.ignore, win, rec.shape)
            sel = crop["visible"] >= 0.7  # targets and difficult objects; slivers are ignore regions only
            held[crop["index"][sel]] = True
            whole[crop["index"][crop["visible"] == 1.0]] = True
            parts.append(((win[0], win[1]), t.obb[sel], crop["visible"][sel], t.classes[sel]))
            polys.append(t.polygons[sel] + win[:2])
            src.append(crop["index"][sel])
        polys, src = np.concatenate(polys), np.concatenate(src)
        boxes, scores, classes, keep = merge_tiles(parts, return_index=True)
        count = np.bincount(src[keep], minlength=len(rec))
        assert (count[held] == 1).all(), rec.image_id
        assert (count[~held] == 0).all()
        np.testing.assert_array_equal(classes, rec.classes[src[keep]])
        exact = whole[src[keep]]
        np.testing.assert_allclose(polys[keep][exact], rec.polygons[src[keep]][exact], atol=1e-3)
        missing += [(rec.image_id, float(np.ptp(rec.polygons[i], 0).max())) for i in np.flatnonzero(~held)]
        partial += int((~whole).sum())
    if tile == 1024:  # every object lies wholly in some tile: all come back exactly
        assert missing == [] and partial == 0
    else:  # only a harbor longer than the tiles can hold at 70%
        assert len(missing) == 1 and missing[0][0] == "P0706" and missing[0][1] > 512 * 0.7


def white_rectangles(shape=(896, 1280), n=30, seed=0):
    """A black image with n white rotated rectangles that do not touch each other: (image, rboxes [n,5])."""
    rng = np.random.default_rng(seed)
    img = np.zeros((*shape, 3), np.uint8)
    taken = np.zeros(shape, np.uint8)
    boxes = []
    while len(boxes) < n:
        r = np.array([rng.uniform(40, shape[1] - 40), rng.uniform(40, shape[0] - 40), rng.uniform(16, 90),
                      rng.uniform(10, 40), rng.uniform(0, np.pi)])
        poly = np.round(geo.obb_to_polygons(r[None])[0]).astype(np.int32)
        if poly.min() < 3 or (poly.max(0) > np.array(shape[::-1]) - 4).any():
            continue  # away from the image border: only tile edges cut objects
        m = np.zeros(shape, np.uint8)
        cv2.fillConvexPoly(m, poly, 1)
        if (cv2.dilate(m, np.ones((9, 9), np.uint8)) & taken).any():
            continue
        taken |= m
        cv2.fillConvexPoly(img, poly, (255, 255, 255))
        boxes.append(geo.polygons_to_obb(poly[None].astype(np.float32))[0])
    return img, np.asarray(boxes, np.float64)


def rectangle_finder(max_det=100):
    """A stand-in detector for `predict_tiled`: the minimum-area rectangles of white blobs, score 0.5 for blobs
    cut by the tile border (a model is less sure of them) and 0.9 for whole ones."""
    def predict(variables, images):
        b = len(images)
        out = {"boxes": np.zeros((b, max_det, 5), np.float32), "scores": np.zeros((b, max_det), np.float32),
               "classes": np.zeros((b, max_det), np.int32), "valid": np.zeros((b, max_det), bool)}
        for k, im in enumerate(images):
            mask = (im[..., 0] > 200).astype(np.uint8)  # the gray 114 letterbox padding is no blob
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for i, c in enumerate(contours[:max_det]):
                poly = cv2.boxPoints(cv2.minAreaRect(c)).astype(np.float32)
                x, y, w, h = cv2.boundingRect(c)
                cut = x == 0 or y == 0 or x + w >= im.shape[1] or y + h >= im.shape[0]
                out["boxes"][k, i] = geo.polygons_to_obb(poly[None])[0]
                out["scores"][k, i] = 0.5 if cut else 0.9
                out["valid"][k, i] = True
        return out

    return predict


def test_tiled_inference_merges_cut_objects():
    img, truth = white_rectangles()
    wins = tile_windows(img.shape[:2], 512, 128)
    assert len(wins) == 6
    corners = geo.obb_to_polygons(truth)
    cut = [(np.ptp(np.clip(corners[:, :, 0], w[0], w[2]), 1) < np.ptp(corners[:, :, 0], 1) - 1).sum() for w in wins]
    assert sum(cut) > 5  # objects cut by tile edges are part of the test
    boxes, scores, classes = predict_tiled(rectangle_finder(), None, img, imgsz=512, tile=512, overlap=128, batch=4)
    iou = polygon_iou(corners, rbox_corners(boxes))
    assert len(boxes) == len(truth)
    assert (iou.max(1) > 0.85).all() and ((iou > 0.3).sum(1) == 1).all()
    np.testing.assert_allclose(scores, 0.9)  # the whole copies won over the cut ones
    # copies are only looked for across tiles: each tile's own detections were already NMS'd
    again = ((0, 0), boxes[:3], scores[:3] - 0.1, classes[:3])
    assert len(merge_tiles([((0, 0), boxes, scores, classes), again])[0]) == len(truth)
    one_tile = ((0, 0), np.concatenate([boxes, boxes[:3]]), np.concatenate([scores, scores[:3] - 0.1]),
                np.concatenate([classes, classes[:3]]))
    assert len(merge_tiles([one_tile])[0]) == len(truth) + 3
