"""Hand-made broken inputs: every problem is reported with its file and line, nothing crashes, nothing is
dropped silently, and an empty dataset is a clear error."""
import argparse
import json

import cv2
import numpy as np
import pytest
import yaml

from yolojax.data import load_dataset
from yolojax.data import cli as data_cli
from yolojax.data.check import check_dataset, format_report


def jpeg_bytes(h=48, w=64, seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3)).astype(np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


BAD_LINES = [
    "0 0.5 0.5 0.2 0.2",        # 1 fine
    "1 0.5 0.5 0.2",            # 2 four fields
    "0 nan 0.5 0.1 0.1",        # 3 NaN
    "999 0.5 0.5 0.1 0.1",      # 4 class out of range
    "0 0.5 0.5 -0.1 0.1",       # 5 negative width
    "0 0.5 0.5 0.1 abc",        # 6 non-numeric
    "1 0.95 0.5 0.3 0.2",       # 7 crosses the right border by 0.1 * 64 = 6.4 px: clipped
    "0 0.5 0.5 0.2 0.2",        # 8 duplicate of line 1
    "1.5 0.5 0.5 0.1 0.1",      # 9 class not an integer
    "1 0.2 0.2 0.1 inf",        # 10 inf
    "",                         # 11 blank: fine
    "1 0.25 0.25 0.1 0.1",      # 12 fine
]


@pytest.fixture()
def bad_yolo(tmp_path):
    root = tmp_path / "bad"
    im, lb = root / "images" / "train", root / "labels" / "train"
    im.mkdir(parents=True)
    lb.mkdir(parents=True)
    good = jpeg_bytes()
    (im / "good1.jpg").write_bytes(good)
    (im / "good2.jpg").write_bytes(jpeg_bytes(seed=1))
    (im / "background.jpg").write_bytes(jpeg_bytes(seed=2))
    (im / "truncated.jpg").write_bytes(good[: len(good) * 6 // 10])
    (im / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (im / "empty.jpg").write_bytes(b"")
    (lb / "good1.txt").write_text("\n".join(BAD_LINES) + "\n")
    (lb / "good2.txt").write_text("0 0.5 0.5 0.5 0.5\r\n1 0.2 0.2 0.1 0.1\r\n")  # CRLF is fine
    (lb / "truncated.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (lb / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.1 0.1\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/train",
                                                    "names": ["car", "person"]}))
    return root


def by_line(problems, file_end):
    return {p.line: p for p in problems if p.file.endswith(file_end)}


def test_every_bad_line_is_reported_with_file_and_line(bad_yolo):
    ds = load_dataset(bad_yolo / "data.yaml", malformed="drop")  # keep the image, drop the bad rows
    lines = by_line(ds.problems, "good1.txt")
    assert sorted(lines) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "4 fields" in lines[2].reason
    assert "non-finite" in lines[3].reason and "non-finite" in lines[10].reason
    assert "class id 999 out of range [0, 2)" in lines[4].reason
    assert "degenerate" in lines[5].reason and "width -6.4" in lines[5].reason
    assert "non-numeric field 'abc'" in lines[6].reason
    assert lines[7].action == "clipped" and "6.4 px outside" in lines[7].reason
    assert lines[8].reason == "duplicate of line 1"
    assert "not an integer" in lines[9].reason
    assert all(p.action == "dropped" for n, p in lines.items() if n != 7)
    rec = next(r for r in ds if r.image_id == "good1")
    assert len(rec) == 3  # lines 1, 7 (clipped), 12
    np.testing.assert_allclose(rec.boxes[1], [(0.95 - 0.15) * 64, (0.5 - 0.1) * 48, 64, (0.5 + 0.1) * 48], atol=1e-4)
    assert {p.kind for n, p in lines.items()} == {"malformed", "class_id", "degenerate", "clipped", "duplicate"}


def test_unreadable_rows_leave_their_image_out_by_default(bad_yolo):
    """Rows that cannot be read describe unknown objects: training on the image would teach that they are
    background, so (as in Ultralytics) the image is left out, and says why."""
    ds = load_dataset(bad_yolo / "data.yaml")
    assert "good1" not in [r.image_id for r in ds]
    (p,) = [p for p in ds.problems if p.file.endswith("good1.jpg")]
    assert p.action == "skipped" and p.kind == "labels"
    assert "6 label row(s) unreadable" in p.reason and "good1.txt:2" in p.reason  # lines 2, 3, 4, 6, 9, 10
    # degenerate, duplicate and clipped rows alone keep the image
    (bad_yolo / "labels" / "train" / "good1.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0 0.1\n")
    assert len(next(r for r in load_dataset(bad_yolo / "data.yaml") if r.image_id == "good1")) == 1
    with pytest.raises(ValueError, match="malformed must be"):
        load_dataset(bad_yolo / "data.yaml", malformed="ignore")


def test_bad_images_are_skipped_and_counted(bad_yolo):
    ds = load_dataset(bad_yolo / "data.yaml", malformed="drop")
    assert sorted(r.image_id for r in ds) == ["background", "good1", "good2"]
    skipped = {p.file.rsplit("/", 1)[-1]: p.reason for p in ds.problems if p.action == "skipped"}
    assert set(skipped) == {"truncated.jpg", "text.jpg", "empty.jpg"}
    assert "truncated" in skipped["truncated.jpg"]
    assert "not an image" in skipped["text.jpg"] and "text file starting" in skipped["text.jpg"]
    assert "empty" in skipped["empty.jpg"]
    orphans = [p for p in ds.problems if "orphan" in p.reason]
    assert [p.file.rsplit("/", 1)[-1] for p in orphans] == ["orphan.txt"]
    s = ds.summary()
    assert (s["images"], s["background_images"], s["skipped"], s["orphan_label_lines"]) == (3, 1, 3, 2)


def test_check_report_and_cli_json(bad_yolo, capsys):
    rep = check_dataset(bad_yolo / "data.yaml")  # train and val are the same folder: checked once
    assert list(rep["splits"]) == ["train"]
    # good1 is left out for its unreadable rows, beside the 3 broken images
    assert (rep["images"], rep["boxes"], rep["background_images"], rep["skipped"]) == (2, 2, 1, 4)
    assert rep["clipped_boxes"] == 1 and rep["dropped_boxes"] == 8
    text = format_report(rep)
    assert "good1.txt:2" in text and "truncated.jpg" in text
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    args = parser.parse_args(["data", "check", str(bad_yolo / "data.yaml"), "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("images", "boxes", "background_images", "skipped", "problems"):
        assert key in out
    assert {"file", "line", "reason"} <= set(out["problems"][0])
    assert any(p["file"].endswith("good1.txt") and p["line"] == 4 for p in out["problems"])


def test_decode_check_catches_what_headers_do_not(tmp_path):
    """A PNG whose pixel data is cut short but which still ends with its IEND chunk passes the cheap header
    check of `load_dataset`; the full decode of `check_dataset` rejects it, and so does the loader."""
    from yolojax.data.loader import Loader
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    png = cv2.imencode(".png", img)[1].tobytes()
    (root / "images" / "a.png").write_bytes(png)
    (root / "images" / "b.png").write_bytes(png[: len(png) // 2] + png[-12:])
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images", "val": "images", "names": ["x"]}))
    ds = load_dataset(root / "data.yaml")
    assert len(ds) == 2 and not ds.problems
    rep = check_dataset(root / "data.yaml", "train")
    assert rep["skipped"] == 1 and rep["images"] == 1
    (p,) = [p for p in rep["problems"] if p["action"] == "skipped"]
    assert p["file"].endswith("b.png") and "truncated" in p["reason"]
    assert check_dataset(root / "data.yaml", "train", decode=False)["skipped"] == 0
    ld = Loader(ds, 2, 64, augment=False, workers=0)
    batch = ld.batch(0, 0)
    assert batch["image_ids"] == ["a", "a"] and [p.file for p in ld.problems] == [str(root / "images" / "b.png")]


def test_empty_dataset_is_a_clear_error(tmp_path):
    root = tmp_path / "empty"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/train", "names": ["a"]}))
    with pytest.raises(ValueError, match=f"{root}.*no usable images"):
        load_dataset(root / "data.yaml")
    (root / "images" / "train" / "x.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="no usable images.*not an image"):
        load_dataset(root / "data.yaml")
    vd = tmp_path / "vd"
    (vd / "images").mkdir(parents=True)
    (vd / "annotations").mkdir()
    with pytest.raises(ValueError, match=str(vd)):
        load_dataset(vd)
    with pytest.raises(ValueError, match=str(tmp_path / "missing")):
        load_dataset(tmp_path / "missing", format="yolo")


def test_visdrone_bad_rows(tmp_path):
    root = tmp_path / "vd"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "a.jpg").write_bytes(jpeg_bytes(100, 200))
    rows = ["10,10,20,20,1,4,0,0,",      # 1 trailing comma: fine
            "10,10,20,20,1,4,0",         # 2 seven fields
            "10,10,20,20,1,12,0,0",      # 3 category 12
            "10,10,x,20,1,4,0,0",        # 4 non-numeric
            "50,50,0,10,1,4,0,0",        # 5 zero width
            "0,0,30,30,0,0,0,0",         # 6 ignored region
            "60,60,20,20,0,4,0,0",       # 7 score 0 -> ignore, class kept
            "80,80,5,5,1,11,0,0"]        # 8 others: dropped
    (root / "annotations" / "a.txt").write_text("\n".join(rows) + "\n")
    (root / "annotations" / "b.txt").write_text("1,1,2,2,1,1,0,0\n")  # no image
    with pytest.raises(ValueError, match="no usable images.*left out"):  # its only image has unreadable rows
        load_dataset(root)
    ds = load_dataset(root, malformed="drop")
    lines = by_line(ds.problems, "a.txt")
    assert sorted(lines) == [2, 3, 4, 5, 8]
    assert "7 fields" in lines[2].reason and "not in 0..11" in lines[3].reason
    assert "'x'" in lines[4].reason and "degenerate" in lines[5].reason and "others" in lines[8].reason
    (r,) = ds.records
    assert r.classes.tolist() == [3, -1, 3] and r.ignore.tolist() == [False, True, True]
    assert ds.stats["orphan_label_files"] == 1 and ds.stats["dropped_others"] == 1


def test_voc_and_dota_bad_rows(tmp_path):
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for s in ("a", "b", "c"):
        (voc / "JPEGImages" / f"{s}.jpg").write_bytes(jpeg_bytes(100, 120))
    obj = "<object><name>{}</name><difficult>0</difficult><bndbox><xmin>{}</xmin><ymin>5</ymin><xmax>50</xmax>" \
          "<ymax>60</ymax></bndbox></object>"
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation>\n<size><width>120</width><height>100</height></size>\n" + obj.format("dog", 10) + "\n"
        + obj.format("unicorn", 10) + "\n" + obj.format("cat", "ten") + "\n</annotation>\n")
    (voc / "Annotations" / "b.xml").write_text("<annotation>\n<size>\n<width>120</oops>\n</annotation>\n")
    (voc / "Annotations" / "c.xml").write_text(  # <size> disagrees with the file
        "<annotation>\n<size><width>640</width><height>480</height></size>\n" + obj.format("cat", 10)
        + "\n</annotation>\n")
    assert sorted(r.image_id for r in load_dataset(voc)) == ["c"]  # a.xml has a non-numeric xmin
    ds = load_dataset(voc, malformed="drop")
    a = by_line(ds.problems, "a.xml")
    assert "unknown class 'unicorn'" in a[4].reason and "bndbox" in a[5].reason
    (b,) = [p for p in ds.problems if p.file.endswith("b.xml")]
    assert b.line == 3 and b.action == "skipped" and "invalid XML" in b.reason
    (c,) = [p for p in ds.problems if p.file.endswith("c.xml")]
    assert c.action == "warning" and "640x480" in c.reason
    assert sorted(r.image_id for r in ds) == ["a", "c"]

    dota = tmp_path / "dota"
    (dota / "images").mkdir(parents=True)
    (dota / "labelTxt").mkdir()
    cv2.imwrite(str(dota / "images" / "P1.png"), np.zeros((100, 100, 3), np.uint8))
    (dota / "labelTxt" / "P1.txt").write_bytes(
        b"imagesource:GoogleEarth\r\ngsd:0.5\r\n10 10 40 10 40 30 10 30 plane 0\r\n10 10 40 10 40 30 plane 0\r\n"
        b"10 10 40 10 40 30 10 30 container-crane 1\r\n50 50 60 50 60 55 50 55 ship\r\n")
    ds = load_dataset(dota, malformed="drop")
    d = by_line(ds.problems, "P1.txt")
    assert sorted(d) == [4, 5] and "8 fields" in d[4].reason and "DOTA_V2_NAMES" in d[5].reason
    (r,) = ds.records
    assert r.classes.tolist() == [0, 1] and r.ignore.tolist() == [False, False]
    np.testing.assert_allclose(r.obb[0], [25, 20, 30, 20, 0], atol=1e-5)
