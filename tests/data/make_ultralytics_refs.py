"""Regenerate the Ultralytics reference files of tests/test_ultralytics_preprocess.py (run it with Ultralytics,
in the separate environment of ../shared/tools/README.md, never in the project's venv):

    PYTHONPATH=../shared/tools/torchvision_shim YOLO_CONFIG_DIR=/tmp/ultra-cfg YOLO_OFFLINE=1 \
        /tmp/ultra/bin/python tests/data/make_ultralytics_refs.py

(ultralytics 8.4.190, torch 2.13.0 CPU, from the repository root). It writes, next to itself:

- `ultra_tiny_nc10.pt`: a YOLOv8 at the `tiny` scale (depth 0.33, width 0.0625, max channels 256; the project's
  `tiny` variant), 10 classes, random weights made with the recipe of ../shared/tools/make_reference.py (BN
  statistics randomized, every conv rescaled to unit output std on 16 other photos, so activations are O(1) on
  photos; head biases N(0,1) for boxes, N(-2,1) for classes, so scores spread over (0,1) instead of saturating),
  saved as Ultralytics saves checkpoints (a pickled DetectionModel in float16 under `model`). 195k parameters.
- `ultra_refs.json`: what Ultralytics does with it on real coco128 photos (../shared/data/coco128):
  * `val`: `YOLO(pt).val(data, imgsz=256, batch=3, conf=0.001, iou=0.7)` on 7 photos of aspect ratios 0.34..1.78,
    rect (Ultralytics' default) and rect=False: mAP50, mAP50-95, the images in rect order with each one's
    batch shape, the batch shapes, and every detection (original pixels, clipped). The labels are pseudo-labels
    (`val.labels`, YOLO rows): Ultralytics' own rect detections on the photos, jittered, plus one missed box per
    image, so that mAP sits mid-range and moves when the pre-processing moves (a random model scores ~0 on the
    real COCO labels, which would test nothing).
  * `predict`: `YOLO(pt).predict(img, imgsz=256, conf=0.25, iou=0.7)` one image at a time (auto letterbox), a
    batch of two same-shaped images (auto) and of two different shapes (square): network input shape and
    detections (xyxy original pixels, score, class) per image.
  * `letterbox`: sha256 of Ultralytics' letterboxed uint8 BGR pixels for several cases (predict auto, square,
    val rect), with their shapes.
  * `onnx_dynamic`: the input/output dims of Ultralytics' own `export(format="onnx", dynamic=True)` (if it ran).
- `ultra_raw_256x224.npz`: the network's raw output `y` [1, 14, A] (cx, cy, w, h, 10 sigmoid scores) in float32
  for the Ultralytics-letterboxed photo `input` (uint8 RGB [1, 256, 224, 3]; predict's auto letterbox of
  000000000049.jpg at imgsz 256): the reference for the dynamic-shape ONNX export.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
COCO = HERE.parents[2] / "shared" / "data" / "coco128"
if not COCO.is_dir():
    COCO = Path(os.environ.get("COCO128", "/work/shared/data/coco128"))
IMAGES = COCO / "images" / "train"
NAMES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light"]
IMGSZ = 256
VAL_STEMS = ["000000000357", "000000000428", "000000000110", "000000000400", "000000000036", "000000000415",
             "000000000049"]  # aspect ratios h/w 0.34, 0.56, 0.75, 1.003, 1.33, 1.78, 1.31
VAL_BATCH = 3
PREDICT_STEMS = ["000000000110", "000000000049", "000000000357", "000000000560"]
SAME_SHAPE_PAIR = ["000000000110", "000000000133"]  # both 480x640
MIXED_PAIR = ["000000000110", "000000000049"]       # 480x640 and 500x381
# LSUV calibration photos (none of them in the sets above). Random networks amplify some photos far more than
# others; the photos above were picked among those whose class logits stay moderate (no score saturates at 1.0,
# where ties would make the order of detections arbitrary).
CALIB_STEMS = ["000000000030", "000000000034", "000000000042", "000000000061", "000000000064", "000000000071",
               "000000000072", "000000000073", "000000000074", "000000000077", "000000000078", "000000000081",
               "000000000086", "000000000089", "000000000092", "000000000094"]
RAW_STEM = "000000000049"


def make_model(seed: int = 0):
    from ultralytics.data.augment import LetterBox
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    torch.manual_seed(seed)
    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"] = {"t": [0.33, 0.0625, 256]}
    cfg["scale"] = "t"
    m = DetectionModel(cfg, nc=len(NAMES), verbose=False).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    det = m.model[-1]
    box_last, cls_last = [s[-1] for s in det.cv2], [s[-1] for s in det.cv3]
    for c in box_last + cls_last:
        c.bias.data.zero_()
    # 16 photos outside the test sets, so that activations are O(1) on photos in general, not on one
    files = [IMAGES / f"{stem}.jpg" for stem in CALIB_STEMS]
    x = np.stack([LetterBox(IMGSZ)(image=cv2.imread(str(f)))[..., ::-1].transpose(2, 0, 1) for f in files])
    calib = torch.from_numpy(x).float() / 255
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c is not det.dfl.conv]
    for c in convs:  # LSUV-style, in execution order
        out = {}
        h = c.register_forward_hook(lambda mod, i, o: out.__setitem__("o", o))
        with torch.no_grad():
            m(calib)
        h.remove()
        s = float(out["o"].std())
        if s > 0:
            c.weight.data /= s
    g3 = torch.Generator().manual_seed(seed + 3)
    for c in box_last:
        c.bias.data.copy_(torch.randn(c.bias.shape, generator=g3))
    for c in cls_last:
        c.bias.data.copy_(torch.randn(c.bias.shape, generator=g3) - 2.0)
    m.names = dict(enumerate(NAMES))
    return m


def save_pt(m, path: Path) -> None:
    from ultralytics import __version__
    ck = {"date": "2025-01-01T00:00:00", "version": __version__, "model": copy.deepcopy(m).half(),
          "train_args": {"task": "detect", "imgsz": IMGSZ}, "docs": "random weights for tests (make_ultralytics_refs.py)"}
    torch.save(ck, path)


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write_dataset(root: Path, labels: dict[str, list[list[float]]]) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for stem in VAL_STEMS:
        shutil.copy(IMAGES / f"{stem}.jpg", root / "images" / "val" / f"{stem}.jpg")
        rows = labels.get(stem, [])
        (root / "labels" / "val" / f"{stem}.txt").write_text(
            "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in rows))
    y = root / "data.yaml"
    y.write_text(json.dumps({"path": str(root), "train": "images/val", "val": "images/val",
                             "names": dict(enumerate(NAMES))}))
    return y


def run_val(pt: Path, data: Path, rect: bool) -> dict:
    """Ultralytics val; every detection captured in original pixels (clipped, as its JSON), plus shapes."""
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils import ops
    captured, info = [], {}
    orig = DetectionValidator.update_metrics

    def update_metrics(self, preds, batch):
        for si, pred in enumerate(preds):
            pb = self._prepare_batch(si, batch)
            boxes = ops.scale_boxes(pb["imgsz"], pred["bboxes"].clone(), pb["ori_shape"], ratio_pad=pb["ratio_pad"])
            top = slice(0, 50)  # the best 50 (NMS sorts by score): enough to compare, small to store
            captured.append({"stem": Path(pb["im_file"]).stem, "input_hw": [int(v) for v in pb["imgsz"]],
                             "n": int(len(pred["conf"])), "boxes": boxes[top].numpy().round(3).tolist(),
                             "scores": pred["conf"][top].numpy().round(6).tolist(),
                             "classes": pred["cls"][top].numpy().astype(int).tolist()})
            if "img_sha" not in info and rect:  # first image's letterboxed pixels (BGR HWC uint8)
                x = batch["img"][si]  # RGB CHW, already scaled to [0, 1] by the validator's preprocess
                x = (x * 255).round().to(torch.uint8) if x.is_floating_point() else x
                info["img_sha"] = sha(x.permute(1, 2, 0).numpy()[..., ::-1])
                info["img_sha_stem"] = Path(pb["im_file"]).stem
        return orig(self, preds, batch)

    def on_val_end(v):
        ds = v.dataloader.dataset
        info["order"] = [Path(f).stem for f in ds.im_files]
        info["batch_shapes"] = np.asarray(ds.batch_shapes).tolist() if rect else None

    DetectionValidator.update_metrics = update_metrics
    try:
        model = YOLO(str(pt))
        model.add_callback("on_val_end", on_val_end)
        m = model.val(data=str(data), imgsz=IMGSZ, batch=VAL_BATCH, conf=0.001, iou=0.7, device="cpu", workers=0,
                      rect=rect, plots=False, verbose=False, project=str(data.parent / "runs"), name="val")
    finally:
        DetectionValidator.update_metrics = orig
    return {"map50": float(m.box.map50), "map50_95": float(m.box.map), "detections": captured, **info}


def pseudo_labels(dets: list[dict], shapes: dict[str, tuple[int, int]], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for d in dets:
        h, w = shapes[d["stem"]]
        b, s, c = np.array(d["boxes"]).reshape(-1, 4), np.array(d["scores"]), np.array(d["classes"])
        rows = []
        k = int(np.clip((s > 0.5).sum(), 4, 20))  # the image's confident detections become its objects
        for i in np.argsort(-s, kind="stable")[:k]:
            x1, y1, x2, y2 = b[i]
            bw, bh = x2 - x1, y2 - y1
            if bw < 4 or bh < 4:
                continue
            j = rng.normal(0, 0.04, 4) * [bw, bh, bw, bh]
            x1, y1, x2, y2 = np.clip([x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3]], 0, [w, h, w, h])
            rows.append([int(c[i]), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
        cx, cy, bw, bh = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3)
        rows.append([int(rng.integers(len(NAMES))), cx, cy, bw, bh])  # one box the model does not find
        out[d["stem"]] = [[r[0]] + [float(f"{v:.6f}") for v in r[1:]] for r in rows]
    return out


def predict_refs(pt: Path) -> dict:
    from ultralytics import YOLO
    from ultralytics.engine.predictor import BasePredictor
    shapes = []
    orig = BasePredictor.preprocess

    def preprocess(self, im):
        x = orig(self, im)
        shapes.append(list(x.shape))
        return x

    BasePredictor.preprocess = preprocess
    out = {"single": [], "batches": []}
    try:
        model = YOLO(str(pt))
        kw = dict(imgsz=IMGSZ, conf=0.25, iou=0.7, device="cpu", verbose=False)
        for stem in PREDICT_STEMS:
            r = model.predict(str(IMAGES / f"{stem}.jpg"), **kw)[0]
            out["single"].append({"stem": stem, "input_shape": shapes[-1], **_result(r)})
        for kind, pair in (("same_shape", SAME_SHAPE_PAIR), ("mixed", MIXED_PAIR)):
            ims = [cv2.imread(str(IMAGES / f"{s}.jpg")) for s in pair]
            rs = model.predict(ims, batch=2, **kw)
            out["batches"].append({"kind": kind, "stems": pair, "input_shape": shapes[-1],
                                   "results": [_result(r) for r in rs]})
    finally:
        BasePredictor.preprocess = orig
    return out


def _result(r) -> dict:
    return {"orig_shape": list(r.orig_shape), "boxes": r.boxes.xyxy.numpy().round(4).tolist(),
            "scores": r.boxes.conf.numpy().round(6).tolist(), "classes": r.boxes.cls.numpy().astype(int).tolist()}


def letterbox_refs() -> dict:
    from ultralytics.data.augment import LetterBox
    refs = []
    cases = [("000000000049", dict(new_shape=IMGSZ, auto=True)), ("000000000357", dict(new_shape=IMGSZ, auto=True)),
             ("000000000560", dict(new_shape=IMGSZ, auto=True)), ("000000000049", dict(new_shape=IMGSZ)),
             ("000000000415", dict(new_shape=320, auto=True)), ("000000000036", dict(new_shape=(224, 160), scaleup=False))]
    for stem, kw in cases:
        img = cv2.imread(str(IMAGES / f"{stem}.jpg"))
        lb = LetterBox(**kw)(image=img)
        refs.append({"stem": stem, "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
                     "shape": list(lb.shape), "sha256": sha(lb)})
    return refs


def raw_ref(m) -> dict:
    from ultralytics.data.augment import LetterBox
    img = cv2.imread(str(IMAGES / f"{RAW_STEM}.jpg"))
    rgb = LetterBox(IMGSZ, auto=True)(image=img)[..., ::-1].copy()
    x = torch.from_numpy(rgb.transpose(2, 0, 1)[None].copy()).float() / 255
    mf = copy.deepcopy(m).half().float().eval()  # the weights as stored in the .pt
    with torch.no_grad():
        y = mf(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    return {"input": rgb[None], "y": y.numpy().astype(np.float32)}


def onnx_dims(pt: Path, work: Path) -> dict | None:
    try:
        from ultralytics import YOLO
        pt = Path(shutil.copy(pt, work / pt.name))  # the export lands beside the weights
        f = YOLO(str(pt)).export(format="onnx", dynamic=True, imgsz=IMGSZ, simplify=False, device="cpu")
        import onnx
        g = onnx.load(f).graph
        dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
        return {"inputs": {i.name: dims(i) for i in g.input}, "outputs": {o.name: dims(o) for o in g.output}}
    except Exception as e:  # the exporter needs torch.onnx pieces that may be missing here
        print(f"Ultralytics ONNX export failed ({type(e).__name__}: {e}); onnx_dynamic left out", file=sys.stderr)
        return None


def no_nms_time_limit() -> None:
    """Ultralytics' NMS gives up after 2 s + 0.05 s per image (`max_time_img`) and returns what it has: a random
    model at conf 0.001 on a busy 2-core machine hits that, and the references would depend on the load. Lift it."""
    import ultralytics.utils.nms as unms
    orig = unms.non_max_suppression

    def nms(*args, **kwargs):
        kwargs["max_time_img"] = 1e6
        return orig(*args, **kwargs)

    unms.non_max_suppression = nms


def main() -> None:
    torch.set_num_threads(2)
    no_nms_time_limit()
    pt = HERE / "ultra_tiny_nc10.pt"
    m = make_model()
    save_pt(m, pt)
    shapes = {s: cv2.imread(str(IMAGES / f"{s}.jpg")).shape[:2] for s in VAL_STEMS}
    with tempfile.TemporaryDirectory(prefix="ultra-refs-") as work:
        work = Path(work)
        # pass 1: the model's own rect detections on the photos (one placeholder label each) -> pseudo-labels
        first = run_val(pt, write_dataset(work / "pass1", {s: [[0, 0.5, 0.5, 0.2, 0.2]] for s in VAL_STEMS}), True)
        labels = pseudo_labels(first["detections"], shapes)
        data = write_dataset(work / "pass2", labels)
        val = {"imgsz": IMGSZ, "batch": VAL_BATCH, "conf": 0.001, "iou": 0.7, "stems": VAL_STEMS, "labels": labels,
               "rect": run_val(pt, data, True), "square": run_val(pt, data, False)}
        dims = onnx_dims(pt, work)
    refs = {"ultralytics": __import__("ultralytics").__version__, "torch": torch.__version__, "cv2": cv2.__version__,
            "model": pt.name, "names": NAMES, "imgsz": IMGSZ, "val": val, "predict": predict_refs(pt),
            "letterbox": letterbox_refs(), "onnx_dynamic": dims}
    (HERE / "ultra_refs.json").write_text(json.dumps(refs, separators=(",", ":")))
    raw = raw_ref(m)
    np.savez_compressed(HERE / "ultra_raw_256x224.npz", **raw)
    print(f"rect mAP50 {val['rect']['map50']:.4f} mAP50-95 {val['rect']['map50_95']:.4f}; square mAP50 "
          f"{val['square']['map50']:.4f} mAP50-95 {val['square']['map50_95']:.4f}; batch shapes "
          f"{val['rect']['batch_shapes']}; raw y {raw['y'].shape}")


if __name__ == "__main__":
    main()
