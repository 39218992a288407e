"""OBB through the trainer and the CLI (train, val, predict, tiled predict), the synthetic overfit, and a
pruned OBB model exported to ONNX against JAX in ONNX Runtime."""
import dataclasses
import json

import cv2
import jax
import numpy as np
import optax
import pytest

from yolojax.cli import main
from yolojax.data import load_dataset
from yolojax.data.loader import Loader
from yolojax.data.synth import make_synthetic, synth_image
from yolojax.eval.obb import OBBMetrics
from yolojax.model import init_variables, tiny_spec
from yolojax.train.step import create_state, make_predict, make_train_step
from yolojax.train.validate import run_validation, val_loader


@pytest.fixture(scope="module")
def synth_obb(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth_obb"), images=6, imgsz=64, seed=3, obb=True,
                          progress=False, val_fraction=0.34)


def test_train_step_uses_the_obb_loss(synth_obb):
    ds = load_dataset(synth_obb, "train")
    assert ds.obb
    loader = Loader(ds, 4, 64, augment=False, workers=1, max_boxes=16)
    batch = next(iter(loader))
    loader.close()
    assert batch["obb"].shape == (4, 16, 5)
    spec = tiny_spec(ds.nc, task="obb")
    tx = optax.sgd(0.01, momentum=0.9)
    step = jax.jit(make_train_step(spec, tx))
    state = create_state(init_variables(spec, 0), tx)
    jb = {k: batch[k] for k in ("images", "boxes", "classes", "mask", "ignore", "obb")}
    new, m = step(state, jb)
    assert bool(m["finite"]) and {"box", "cls", "dfl"} <= set(m) and float(m["box"]) > 0
    head, head0 = new.params["model_22"], state.params["model_22"]
    for branch in ("cv4_0_2", "cv2_0_2"):  # the angle and box branches learn
        assert float(abs(head[branch]["kernel"] - head0[branch]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="no 'obb' rows"):
        step(state, {k: v for k, v in jb.items() if k != "obb"})
    state = new
    # rotated NMS behind make_predict: [B, max_det, 5] boxes
    out = jax.jit(make_predict(spec, max_det=20))(state.variables(), batch["images"])
    assert out["boxes"].shape == (4, 20, 5)
    # an OBB model cannot be scored on axis-aligned ground truth
    voc_like = dataclasses.replace(ds, obb=False)
    with pytest.raises(ValueError, match="oriented dataset"):
        run_validation(spec, state.variables(), Loader(voc_like, 2, 64, augment=False, workers=1), progress=False)


def test_cli_train_val_predict(synth_obb, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", synth_obb, "--model", "tiny-obb", "--epochs", "1", "--imgsz", "64", "--batch",
                 "2", "--workers", "1", "--optimizer", "sgd", "--no-progress", "-o", str(run)]) == 0
    args = json.loads((run / "args.json").read_text())
    assert args["spec"]["task"] == "obb"
    assert "val/map50" in (run / "results.csv").read_text().splitlines()[0]
    capsys.readouterr()

    dota_dir = tmp_path / "dota"
    assert main(["val", str(run), "--data", synth_obb, "--imgsz", "64", "--batch", "2", "--workers", "1", "--json",
                 "--save-json", str(tmp_path / "pred.json"), "--save-dota", str(dota_dir)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"map50", "map50_95", "per_class"} <= set(res) and res["images"] == 2
    rows = json.loads((tmp_path / "pred.json").read_text())
    assert rows and {"image_id", "category_id", "score", "rbox", "poly"} <= set(rows[0])
    assert len(list(dota_dir.glob("Task1_*.txt"))) == 10

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"im{i}.jpg"), synth_image(3, i, 64)[0])
    big, _, _ = synth_image(5, 0, 160)
    cv2.imwrite(str(images / "big.png"), big)
    out = tmp_path / "pred"
    # one epoch of a tiny model: scores are still near the initial class bias (~1e-4 .. 1e-3)
    assert main(["predict", str(run), str(images), "--save-dir", str(out), "--imgsz", "64", "--conf", "1e-4"]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    assert len(pred) == 3 and all((out / f"{p}.jpg").exists() for p in ("im0", "im1", "big"))
    dets = [d for p in pred for d in p["detections"]]
    assert dets and {"rbox", "poly", "score", "class", "name"} <= set(dets[0]) and len(dets[0]["poly"]) == 8
    out2 = tmp_path / "pred_tiled"
    assert main(["predict", str(run), str(images / "big.png"), "--save-dir", str(out2), "--imgsz", "64", "--conf",
                 "1e-4", "--tile", "64", "--tile-overlap", "16"]) == 0
    tiled = json.loads((out2 / "predictions.json").read_text())[0]["detections"]
    corners = np.array([d["poly"] for d in tiled]).reshape(-1, 4, 2)
    assert len(tiled) and corners[..., 0].max() > 64 and corners[..., 1].max() > 64  # full-image coordinates


@pytest.mark.slow
def test_overfit_synthetic_obb(tmp_path):
    """yolov8n-obb on 8 synthetic 160 px images (SGD 0.01, no augmentation, 200 steps): mAP50 >= 0.5 on its own
    images, scored by polygon IoU. The angles are learned: the same detections with angle 0 score far lower."""
    from yolojax.train.config import TrainConfig
    from yolojax.train.trainer import Trainer, resolve_model

    data = make_synthetic(tmp_path / "synth", images=8, imgsz=160, seed=1, obb=True, progress=False, val_fraction=0)
    train = load_dataset(data, "train")
    # 25 passes over the 8 images per epoch: 25 steps between the trainer's per-epoch checkpoints
    repeated = dataclasses.replace(train, records=train.records * 25)
    spec, variables, _ = resolve_model("yolov8n-obb", train.nc, train.names)
    cfg = TrainConfig(epochs=8, batch=8, nbs=8, imgsz=160, workers=2, augment=False, mosaic=False, optimizer="sgd",
                      lr0=0.01, warmup_epochs=1, val_every=8, max_boxes=48)
    trainer = Trainer(cfg, tmp_path / "run", repeated, train, spec, variables, progress=False)
    logs = trainer.fit()
    assert logs["val/map50"] >= 0.5, logs
    loader = val_loader(train, 8, 160, workers=1)  # the trainer's own validation loader (rect batches)
    metrics, dets = run_validation(spec, jax.device_get(trainer.state.ema_variables()), loader, progress=False,
                                   collect=True)
    loader.close()
    assert metrics["map50"] == pytest.approx(logs["val/map50"], abs=1e-6)
    flat = OBBMetrics(spec.nc, list(spec.names))
    records = {r.image_id: r for r in train}
    for image_id, boxes, scores, classes in dets:
        rec = records[image_id]
        flat.update(image_id, boxes * [1, 1, 1, 1, 0], scores, classes, rec.polygons, rec.classes, rec.ignore)
    assert flat.compute()["map50"] < metrics["map50"] - 0.2


def test_pruned_obb_model_exports_and_matches_jax(tmp_path):
    """yolov8n-obb (DOTA's 15 classes), 50% of the channels of every layer pruned, as ONNX: the graph passes the
    checker and ONNX Runtime matches JAX on boxes, scores and angles."""
    import pruning
    from export import check_onnx, export_onnx
    from yolojax.api import Detector
    from yolojax.model.counting import count_params
    from yolojax.model.spec import yolov8_spec

    spec = yolov8_spec("n", 15, task="obb")
    variables = init_variables(spec, 0)
    pspec, pvars = pruning.prune(spec, variables, pruning.LayerRatio(ratio=0.5))
    assert count_params(pspec) < 0.45 * count_params(spec) and pspec.task == "obb"
    assert pspec.width("model_22/cv4_0_0") < spec.width("model_22/cv4_0_0")  # the angle branch is pruned too
    det = Detector(pspec, pvars)
    path = export_onnx(det, tmp_path / "pruned_obb.onnx", imgsz=160, dynamic=True)
    report = check_onnx(path, det, batch=2)
    assert report["passed"], report["errors"]
    assert report["checker"] and not report["unsupported_ops"]
    assert set(report["parity"]["groups"]) == {"boxes", "scores", "angle"}
