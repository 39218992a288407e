"""Loader: static shapes, determinism across worker counts and hosts, mask/ignore semantics, resume."""
import os
import warnings

import numpy as np
import pytest

from tests.conftest import DATA
from yolojax.data import load_dataset
from yolojax.data.loader import Loader
from yolojax.data.readers import IGNORE_CLASS
from yolojax.data.synth import make_synthetic

ARRAY_KEYS = ("images", "boxes", "classes", "mask", "ignore", "valid", "orig_shapes", "ratio_pad")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, images=10, imgsz=96, seed=1, val_fraction=0.2, progress=False)
    return load_dataset(root / "data.yaml", "train")


@pytest.fixture(scope="module")
def visdrone3(tmp_path_factory):
    """Three VisDrone images (with ignore regions) in a VisDrone folder of their own."""
    root = tmp_path_factory.mktemp("vd")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    stems = sorted(p.stem for p in (DATA / "visdrone" / "images").glob("*.jpg"))
    full = load_dataset(DATA / "visdrone")
    with_ignore = [r.image_id for r in full if r.ignore.any()][:3]
    for s in with_ignore:
        os.symlink(DATA / "visdrone" / "images" / f"{s}.jpg", root / "images" / f"{s}.jpg")
        os.symlink(DATA / "visdrone" / "annotations" / f"{s}.txt", root / "annotations" / f"{s}.txt")
    assert set(with_ignore) <= set(stems)
    return load_dataset(root)


def same(a, b):
    for k in ARRAY_KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["image_ids"] == b["image_ids"]


def test_static_shapes_and_dtypes(synth):
    tr = Loader(synth, batch_size=4, imgsz=96, augment=True, workers=0, seed=0)
    assert len(tr) == 2  # 8 train images, drop_last
    assert tr.max_boxes % 16 == 0 and tr.max_boxes >= max(len(r) for r in synth)
    batches = list(tr)
    assert len(batches) == 2
    M = tr.max_boxes
    for b in batches:
        assert b["images"].shape == (4, 96, 96, 3) and b["images"].dtype == np.uint8
        assert b["boxes"].shape == (4, M, 4) and b["boxes"].dtype == np.float32
        assert b["classes"].shape == (4, M) and b["classes"].dtype == np.int32
        assert b["mask"].dtype == bool and b["ignore"].dtype == bool and b["valid"].all()
        assert b["orig_shapes"].dtype == np.int32 and b["ratio_pad"].shape == (4, 4)
        assert len(b["image_ids"]) == 4 and "obb" not in b
        # padding rows are zero, real rows inside the image
        assert not b["boxes"][~b["mask"]].any() and not b["ignore"][~b["mask"]].any()
        real = b["boxes"][b["mask"]]
        assert (real >= 0).all() and (real <= 96).all() and (real[:, 2:] > real[:, :2]).all()


def test_same_seed_same_batches_for_any_worker_count(synth):
    def run(workers, seed=0, prefetch=2):
        ld = Loader(synth, 4, 96, augment=True, workers=workers, seed=seed, prefetch=prefetch)
        out = []
        for e in range(2):
            ld.set_epoch(e)
            out += list(ld)
        ld.close()
        return out

    a, b, c = run(0), run(2), run(3, prefetch=1)
    for x, y, z in zip(a, b, c):
        same(x, y)
        same(x, z)
    assert a[0]["image_ids"] != a[2]["image_ids"] or not np.array_equal(a[0]["images"], a[2]["images"])  # reshuffled
    d = run(2, seed=1)
    assert not np.array_equal(a[0]["images"], d[0]["images"])


def test_host_slices_make_the_global_batch(synth):
    whole = Loader(synth, 4, 96, augment=True, workers=0, seed=5).batch(0, 1)
    parts = [Loader(synth, 4, 96, augment=True, workers=0, seed=5, process_index=i, process_count=2).batch(0, 1)
             for i in range(2)]
    for k in ARRAY_KEYS:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k], err_msg=k)
    assert parts[0]["images"].shape[0] == 2
    with pytest.raises(ValueError, match="multiple of process_count"):
        Loader(synth, 3, 96, augment=True, process_count=2)


def test_resume_from_state(synth):
    ref = Loader(synth, 2, 96, augment=True, workers=0, seed=3)
    ref.set_epoch(4)
    expected = list(ref)
    assert ref.state()["epoch"] == 5 and ref.state()["batch"] == 0  # an epoch rolls over when it ends
    ld = Loader(synth, 2, 96, augment=True, workers=2, seed=3)
    ld.set_epoch(4)
    it = iter(ld)
    next(it), next(it)
    st = ld.state()
    assert st["epoch"] == 4 and st["batch"] == 2
    it.close()
    fresh = Loader(synth, 2, 96, augment=True, workers=2, seed=3)
    fresh.restore(st)
    rest = list(fresh)
    assert len(rest) == len(expected) - 2
    for x, y in zip(rest, expected[2:]):
        same(x, y)
    with pytest.raises(ValueError, match="seed"):
        Loader(synth, 2, 96, augment=True, seed=4).restore(st)


def test_close_mosaic(synth):
    ld = Loader(synth, 4, 96, augment=True, workers=0, epochs=5, close_mosaic=2)
    assert [ld.mosaic_on(e) for e in range(5)] == [True, True, True, False, False]

    def own_vs_shown(epoch):
        """(boxes of the sample's own image, boxes the sample shows) for every position of the epoch."""
        order = ld.order(epoch)
        return [(len(synth[int(order[p])]), len(ld.sample(epoch, p, order, dry=True)[1])) for p in range(len(order))]

    # mosaic off (the last close_mosaic epochs): a sample shows only boxes of its own image
    assert all(shown <= own for own, shown in own_vs_shown(4))
    # mosaic on: boxes of four images, often more than the sample's own image holds
    assert any(shown > own for own, shown in own_vs_shown(0))
    # an explicit switch wins over the epoch rule until the next set_epoch
    ld.set_epoch(0, mosaic=False)
    assert not ld.mosaic_on() and ld.state()["mosaic"] is False
    assert all(shown <= own for own, shown in own_vs_shown(0))
    ld.set_epoch(1)
    assert ld.mosaic_on()


def test_validation_batches_invert_to_original_boxes(visdrone3):
    ld = Loader(visdrone3, batch_size=2, imgsz=320, augment=False, workers=2)
    assert len(ld) == 2 and not ld.shuffle  # 3 images: last batch padded, not dropped
    assert ld.max_boxes == max(16, -(-max(len(r) for r in visdrone3) // 16) * 16)
    batches = list(ld)
    recs = {r.image_id: r for r in visdrone3}
    seen = []
    for b in batches:
        for k in range(2):
            if not b["valid"][k]:
                assert b["image_ids"][k] == "" and not b["mask"][k].any()
                continue
            rec = recs[b["image_ids"][k]]
            seen.append(rec.image_id)
            n = len(rec)
            assert b["mask"][k].sum() == n and (b["orig_shapes"][k] == rec.shape).all()
            ign = b["ignore"][k][:n]
            assert ign.sum() == rec.ignore.sum() > 0
            # ignore regions come after the targets; class-agnostic ones carry IGNORE_CLASS
            assert not ign[: (~rec.ignore).sum()].any()
            assert (b["classes"][k][:n][ign] == IGNORE_CLASS).any()
            rx, ry, px, py = b["ratio_pad"][k]
            back = (b["boxes"][k][:n] - [px, py, px, py]) / [rx, ry, rx, ry]
            order = np.argsort(rec.ignore, kind="stable")
            np.testing.assert_allclose(back, rec.boxes[order], atol=2.0)
    assert sorted(seen) == sorted(recs)
    assert batches[-1]["valid"].tolist() == [True, False]


def test_max_boxes_cut_is_counted_and_warned(visdrone3):
    ld = Loader(visdrone3, batch_size=1, imgsz=160, augment=False, workers=0, max_boxes=16)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b0 = ld.batch(0, 0)
        ld.batch(0, 1)
    assert len([x for x in w if "max_boxes" in str(x.message)]) == 1
    rec = next(r for r in visdrone3 if r.image_id == b0["image_ids"][0])
    n0 = len(rec)
    assert b0["mask"].sum() == 16 and ld.boxes_cut >= n0 - 16
    assert not b0["ignore"].any()  # targets are kept before ignore regions


def test_unreadable_image_is_replaced_and_reported(synth, tmp_path):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.dirname(synth[0].path))), root)
    ds = load_dataset(root / "data.yaml", "train")
    victim = ds[2].path
    with open(victim, "r+b") as f:  # corrupt after reading: the loader must cope
        f.write(b"this is no longer a jpeg")
    ld = Loader(ds, 4, 96, augment=False, workers=2, drop_last=False)
    batches = list(ld)
    ids = [i for b in batches for i in b["image_ids"] if i]
    assert len(ids) == len(ds)
    # the meta describes the image that stood in for the broken one
    assert ds[2].image_id not in ids and ids.count(ds[3].image_id) == 2
    assert [p.file for p in ld.problems] == [victim] and ld.problems[0].action == "skipped"


def test_obb_batches(tmp_path):
    make_synthetic(tmp_path, images=4, imgsz=96, seed=2, obb=True, val_fraction=0.25, progress=False)
    ds = load_dataset(tmp_path / "data.yaml", "train")
    assert ds.obb
    ld = Loader(ds, 3, 96, augment=True, workers=0)
    b = ld.batch(0, 0)
    assert b["obb"].shape == (3, ld.max_boxes, 5)
    o = b["obb"][b["mask"]]
    assert ((o[:, 4] >= 0) & (o[:, 4] < np.pi / 2)).all() and (o[:, 2:4] > 0).all()
    # the rotated box lies within (slack for the clip to the image) its axis-aligned box
    bx = b["boxes"][b["mask"]]
    assert (np.abs(o[:, 0] - (bx[:, 0] + bx[:, 2]) / 2) < 3).mean() > 0.9
