"""Readers on the real samples in ../shared/data: exact counts, quirks, geometry, and round trips via YOLO."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import yaml

from tests.conftest import DATA
from yolojax.data import COCO80_NAMES, DOTA_NAMES, VISDRONE_NAMES, VOC_NAMES, detect_format, load_dataset
from yolojax.data import geometry as geo
from yolojax.data.convert import convert_dataset
from yolojax.data.readers import IGNORE_CLASS


@pytest.fixture(scope="module")
def visdrone():
    return load_dataset(DATA / "visdrone")


@pytest.fixture(scope="module")
def dota():
    return load_dataset(DATA / "dota")


@pytest.fixture(scope="module")
def voc():
    return load_dataset(DATA / "voc")


@pytest.fixture(scope="module")
def coco128_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("coco128") / "coco128.yaml"
    p.write_text(yaml.safe_dump({"path": str(DATA / "coco128"), "train": "images/train", "val": "images/train",
                                 "names": COCO80_NAMES}))
    return p


def test_detect_format(coco128_yaml, tmp_path):
    assert detect_format(DATA / "visdrone") == "visdrone"
    assert detect_format(DATA / "voc") == "voc"
    assert detect_format(DATA / "dota") == "dota"
    assert detect_format(DATA / "coco128") == "yolo"
    assert detect_format(coco128_yaml) == "yolo"
    (tmp_path / "x.json").write_text("{}")
    assert detect_format(tmp_path / "x.json") == "coco"
    with pytest.raises(ValueError, match=str(tmp_path / "nothing")):
        detect_format(tmp_path / "nothing")


def test_visdrone_counts(visdrone):
    s = visdrone.summary()
    assert (s["images"], s["label_files"], s["label_lines"]) == (137, 137, 10518)
    assert s["ignored_boxes"] == 388 and s["dropped_others"] == 8
    assert s["boxes"] == 10518 - 388 - 8
    assert visdrone.names == VISDRONE_NAMES
    # the 8 `others` rows are reported with file and line
    others = [p for p in visdrone.problems if "others" in p.reason]
    assert len(others) == 8 and all(p.line and p.file.endswith(".txt") for p in others)
    first = others[0]
    row = open(first.file).read().splitlines()[first.line - 1].split(",")
    assert row[5] == "11"
    # category-0 regions have no class; the 10 classes map 1..10 -> 0..9
    cls = np.concatenate([r.classes for r in visdrone])
    ign = np.concatenate([r.ignore for r in visdrone])
    assert (cls[ign] == IGNORE_CLASS).all() and set(np.unique(cls[~ign])) == set(range(10))
    assert sorted({r.shape for r in visdrone}) == [(540, 960), (765, 1360), (1080, 1920)]


def test_visdrone_first_row_and_others_as_ignore(visdrone):
    rec = next(r for r in visdrone if r.image_id == "0000001_02999_d_0000005") if any(
        r.image_id == "0000001_02999_d_0000005" for r in visdrone) else visdrone[0]
    line = open(rec.label_path).read().splitlines()[0].split(",")
    left, top, w, h = map(float, line[:4])
    np.testing.assert_allclose(rec.boxes[0], [left, top, left + w, top + h])
    kept = load_dataset(DATA / "visdrone", others="ignore")
    assert kept.summary()["ignored_boxes"] == 396  # every score-0 row: 388 regions + 8 others
    assert kept.stats["dropped_others"] == 0


def test_coco128_yaml_counts(coco128_yaml):
    ds = load_dataset(coco128_yaml)
    s = ds.summary()
    assert (s["images"], s["labeled_images"], s["background_images"]) == (128, 126, 2)
    assert s["label_lines"] == 929 and s["boxes"] == 929
    assert s["orphan_label_files"] == 2 and s["label_lines"] + s["orphan_label_lines"] == 941
    orphans = sorted(os.path.basename(p.file) for p in ds.problems if "orphan" in p.reason)
    assert orphans == ["000000000656.txt", "000000000659.txt"]
    background = sorted(r.image_id for r in ds if len(r) == 0)
    assert background == ["000000000250", "000000000508"]
    assert ds.names == COCO80_NAMES
    # a known label: first row of 000000000009.txt is `45 0.479492 0.688771 0.955609 0.5955`
    rec = next(r for r in ds if r.image_id == "000000000009")
    h, w = rec.shape
    np.testing.assert_allclose(rec.boxes[0], [(0.479492 - 0.955609 / 2) * w, (0.688771 - 0.5955 / 2) * h,
                                              (0.479492 + 0.955609 / 2) * w, (0.688771 + 0.5955 / 2) * h], atol=1e-3)
    assert rec.classes[0] == 45


def test_yolo_split_as_txt_list_and_names_dict(tmp_path):
    imgs = sorted((DATA / "coco128" / "images" / "train").glob("*.jpg"))[:6]
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for p in imgs:
        os.symlink(p, root / "images" / p.name)
        lf = DATA / "coco128" / "labels" / "train" / (p.stem + ".txt")
        if lf.exists():
            shutil.copy(lf, root / "labels" / lf.name)
    (root / "train.txt").write_text("".join(f"./images/{p.name}\n" for p in imgs[:4]))
    (root / "val.txt").write_text("".join(f"images/{p.name}\n" for p in imgs[4:]))
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "train.txt", "val": "val.txt",
                                                    "names": dict(enumerate(COCO80_NAMES))}))
    tr, va = load_dataset(root / "data.yaml", "train"), load_dataset(root, "val")
    assert [r.image_id for r in tr] == [p.stem for p in imgs[:4]]
    assert [r.image_id for r in va] == [p.stem for p in imgs[4:]]
    assert tr.names == COCO80_NAMES


def test_voc_counts(voc):
    s = voc.summary()
    assert (s["images"], s["label_lines"], s["boxes"] + s["ignored_boxes"]) == (100, 273, 273)
    assert s["ignored_boxes"] == 38  # <difficult>1</difficult>
    assert voc.names == VOC_NAMES and all(c > 0 for c in s["boxes_per_class"].values())
    assert len(set(np.concatenate([r.classes for r in voc]))) == 20
    rec = next(r for r in voc if r.image_id == "2007_000027")
    assert rec.shape == (500, 486)
    np.testing.assert_allclose(rec.boxes, [[173, 100, 348, 350]])  # VOC is 1-based: xmin 174 -> 173
    assert rec.classes.tolist() == [VOC_NAMES.index("person")]


def test_dota_counts_and_obb(dota):
    s = dota.summary()
    assert (s["images"], s["label_lines"], s["boxes"] + s["ignored_boxes"]) == (5, 892, 892)
    assert dota.obb and dota.names == DOTA_NAMES
    assert s["ignored_boxes"] == 74 and s["dropped_boxes"] == 0 and s["clipped_boxes"] == 0
    assert {r.image_id: len(r) for r in dota} == {"P0003": 55, "P0004": 107, "P0005": 130, "P0706": 536,
                                                  "P1888": 64}
    # CRLF, int coords (P0706) and LF, float coords (P0003) both parse: first rows
    p0706 = next(r for r in dota if r.image_id == "P0706")
    assert p0706.shape == (1182, 1111)
    # x=1112 is 1 px past the 1111 px wide image: clipped (silently: within CLIP_REPORT_PX)
    np.testing.assert_allclose(p0706.polygons[0], [[1054, 1028], [1063, 1011], [1111, 1040], [1111, 1062]])
    assert p0706.ignore[0] and p0706.classes[0] == DOTA_NAMES.index("ship")
    p3 = next(r for r in dota if r.image_id == "P0003")
    np.testing.assert_allclose(p3.polygons[0], [[937, 913], [921, 912], [923, 874], [940, 875]])
    for r in dota:
        assert r.obb.shape == (len(r), 5)
        assert ((r.obb[:, 4] >= 0) & (r.obb[:, 4] < np.pi / 2)).all()
        # every polygon corner lies in its rectangle, and the rectangle is no bigger than the axis box
        corners = geo.obb_to_polygons(r.obb)
        for poly, rect in zip(r.polygons[:20], corners[:20]):
            for pt in poly:
                assert cv2.pointPolygonTest(rect.astype(np.float32), tuple(map(float, pt)), True) > -0.05
        area = r.obb[:, 2] * r.obb[:, 3]
        assert (area <= geo.box_area(geo.polygons_to_xyxy(r.polygons)) * 1.0001 + 1e-3).all()


def test_min_area_rect_matches_opencv():
    rng = np.random.default_rng(0)
    r = np.stack([rng.uniform(50, 450, 200), rng.uniform(50, 450, 200), rng.uniform(2, 80, 200),
                  rng.uniform(2, 80, 200), rng.uniform(-4, 4, 200)], 1)
    polys = geo.obb_to_polygons(r) + rng.normal(0, 0.7, (200, 4, 2))
    ours = geo.min_area_rect(polys)
    ref = np.array([cv2.minAreaRect(p.astype(np.float32)) for p in polys], dtype=object)
    ref_area = np.array([w * h for (_, (w, h), _) in ref])
    np.testing.assert_allclose(ours[:, 2] * ours[:, 3], ref_area, rtol=1e-4)
    assert ((ours[:, 4] >= 0) & (ours[:, 4] < np.pi / 2)).all()
    # an exact rectangle round-trips through corners
    clean = geo.regularize_obb(r)
    np.testing.assert_allclose(geo.min_area_rect(geo.obb_to_polygons(clean)), clean, atol=1e-7)


def test_coco_json(tmp_path):
    imgs = sorted((DATA / "coco128" / "images" / "train").glob("*.jpg"))[:3]
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for k, p in enumerate(imgs):
        os.symlink(p, tmp_path / "images" / p.name)
        h, w = cv2.imread(str(p)).shape[:2]
        images.append({"id": 100 + k, "file_name": p.name, "width": w, "height": h})
    anns = [
        {"id": 1, "image_id": 100, "category_id": 90, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {"id": 2, "image_id": 100, "category_id": 5, "bbox": [5, 5, 50, 60], "iscrowd": 1},
        {"id": 3, "image_id": 101, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},
        {"id": 4, "image_id": 101, "category_id": 77, "bbox": [1, 2, 3, 4], "iscrowd": 0},   # unknown category
        {"id": 5, "image_id": 999, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},   # no such image
    ]
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
    js = tmp_path / "instances_val.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    assert [r.image_id for r in load_dataset(js, "val")] == [imgs[0].stem, imgs[2].stem]  # 101: bad category
    ds = load_dataset(js, "val", malformed="drop")
    assert ds.names == ["person", "airplane", "toothbrush"]  # by category id, contiguous 0..2
    r0, r1, r2 = ds.records
    np.testing.assert_allclose(r0.boxes, [[10, 20, 40, 60], [5, 5, 55, 65]])
    assert r0.classes.tolist() == [2, 1] and r0.ignore.tolist() == [False, True]
    assert r1.classes.tolist() == [0] and len(r2) == 0
    reasons = [p.reason for p in ds.problems]
    assert any("annotation id 4" in m and "unknown category_id 77" in m for m in reasons)
    assert any("image_id 999" in m for m in reasons)


@pytest.mark.parametrize("src", ["visdrone", "voc", "dota"])
def test_round_trip_through_yolo(src, tmp_path, request):
    ds = request.getfixturevalue(src)
    out = convert_dataset(DATA / src, None, tmp_path / "yolo")
    back = load_dataset(out, "train")
    assert back.format == "yolo" and back.obb == ds.obb and back.names == ds.names
    assert [p for p in back.problems if p.action != "warning"] == []
    assert [r.image_id for r in back] == [r.image_id for r in ds]
    for a, b in zip(ds, back):
        order_a = np.argsort(a.ignore, kind="stable")  # converted files hold targets first, ignore rows after
        assert a.shape == b.shape
        np.testing.assert_allclose(b.boxes, a.boxes[order_a], atol=0.01)
        np.testing.assert_array_equal(b.classes, a.classes[order_a])
        np.testing.assert_array_equal(b.ignore, a.ignore[order_a])
        if ds.obb:
            np.testing.assert_allclose(b.polygons, a.polygons[order_a], atol=0.01)
            # the minimum-area rectangle of a non-rectangular quad can jump between near-equal candidates
            # when corners move by 1e-6: compare areas, not parameters
            np.testing.assert_allclose(b.obb[:, 2] * b.obb[:, 3], a.obb[order_a, 2] * a.obb[order_a, 3], rtol=5e-3)
    assert os.path.islink(os.path.join(tmp_path, "yolo", "images", "train", os.path.basename(ds[0].path)))


def test_yolo_split_as_list_of_dirs_and_obb_txt(tmp_path):
    """train: [dir, dir]; the OBB label variant (9 fields) is detected and read as polygons."""
    import cv2 as _cv2
    for part in ("a", "b"):
        (tmp_path / "images" / part).mkdir(parents=True)
        (tmp_path / "labels" / part).mkdir(parents=True)
        _cv2.imwrite(str(tmp_path / "images" / part / f"{part}.png"), np.zeros((50, 100, 3), np.uint8))
        (tmp_path / "labels" / part / f"{part}.txt").write_text("1 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"path": ".", "train": ["images/a", "images/b"],
                                                     "val": "images/b", "names": {0: "x", 1: "y"}}))
    ds = load_dataset(tmp_path / "d.yaml")
    assert [r.image_id for r in ds] == ["a", "b"] and ds.obb and ds.names == ["x", "y"]
    np.testing.assert_allclose(ds[0].polygons[0], [[10, 10], [50, 10], [50, 30], [10, 30]], atol=1e-4)
    np.testing.assert_allclose(ds[0].boxes[0], [10, 10, 50, 30], atol=1e-4)
    np.testing.assert_allclose(ds[0].obb[0], [30, 20, 40, 20, 0], atol=1e-4)
    assert len(load_dataset(tmp_path / "d.yaml", "val")) == 1
    with pytest.raises(ValueError, match="no 'test' split"):
        load_dataset(tmp_path / "d.yaml", "test")
