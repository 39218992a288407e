"""End-to-end parity with Ultralytics' v8DetectionLoss on a fixed batch (yolov8n, nc=80, 2x320 px).

The reference (../shared/reference/yolov8n_nc80_loss.npz, README section "Loss") was made by
Ultralytics 8.4.190 from the random-weight yolov8n state with its own head-bias init, forward pass in
training mode. Float32 forward passes differ by ~5e-6 on the logits (XLA vs PyTorch accumulation
order); for the mostly negative anchors BCE ~ exp(logit), so that shows up 1:1 as a ~5e-6 relative
gap in the cls term. Box and DFL agree to ~1e-6.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.loss import LossConfig, detection_loss, dfl_decode, dist2bbox, task_aligned_assign

try:
    from yolojax.model import YOLOv8, import_state_dict, yolov8_spec
except ImportError:  # until the package re-exports it
    from yolojax.model import YOLOv8, yolov8_spec
    from yolojax.model.ultralytics import import_state_dict


def targets_to_batch(targets: np.ndarray, batch_size: int, imgsz: tuple[int, int]) -> dict:
    """Ultralytics targets rows (image, class, cx, cy, w, h normalized) -> padded xyxy pixel batch."""
    h, w = imgsz
    counts = np.bincount(targets[:, 0].astype(int), minlength=batch_size)
    M = int(counts.max())
    boxes = np.zeros((batch_size, M, 4), np.float32)
    classes = np.zeros((batch_size, M), np.int32)
    mask = np.zeros((batch_size, M), bool)
    for b in range(batch_size):
        rows = targets[targets[:, 0] == b]
        cxcywh = rows[:, 2:6] * np.array([w, h, w, h], np.float32)
        boxes[b, :len(rows)] = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], -1)
        classes[b, :len(rows)] = rows[:, 1].astype(np.int32)
        mask[b, :len(rows)] = True
    return dict(boxes=boxes, classes=classes, mask=mask, ignore=np.zeros_like(mask))


@pytest.fixture(scope="module")
def case(reference_dir):
    ref = np.load(reference_dir / "yolov8n_nc80_loss.npz")
    state = dict(np.load(reference_dir / "yolov8n_nc80_state.npz"))
    state.update({k[len("state:"):]: ref[k] for k in ref.files if k.startswith("state:")})
    spec = yolov8_spec("n", nc=80)
    variables = import_state_dict(spec, state)
    images = jnp.asarray(ref["images"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    forward = jax.jit(lambda v, x: YOLOv8(spec).apply(v, x, train=True, mutable=["batch_stats"])[0])
    preds, _ = forward(variables, images)
    batch = targets_to_batch(ref["targets"], images.shape[0], images.shape[1:3])
    return preds, batch, ref


def test_targets_to_batch_layout(case):
    _, batch, ref = case
    assert batch["boxes"].shape == (2, 23, 4) and batch["mask"].sum(1).tolist() == [5, 23]
    t = ref["targets"][0]  # image 0, class 79, normalized cxcywh
    np.testing.assert_allclose(batch["boxes"][0, 0], [(t[2] - t[4] / 2) * 320, (t[3] - t[5] / 2) * 320,
                                                      (t[2] + t[4] / 2) * 320, (t[3] + t[5] / 2) * 320], rtol=1e-6)


def test_items_match_ultralytics(case):
    preds, batch, ref = case
    loss, items = jax.jit(lambda p, b: detection_loss(p, b, nc=80))(preds, batch)
    got = np.array([float(items["box"]), float(items["cls"]), float(items["dfl"])])
    assert list(ref["item_names"]) == ["box_loss", "cls_loss", "dfl_loss"]
    np.testing.assert_allclose(got, ref["items"], rtol=2e-5)
    np.testing.assert_allclose(float(loss), float(ref["loss"].sum()), rtol=2e-5)  # ref["loss"] = items x batch size


def test_parity_is_not_vacuous(case):
    """The batch exercises the assigner: many positives in both images, and changing it moves the numbers."""
    preds, batch, ref = case
    B, A = preds["logits"].shape[:2]
    pb = dist2bbox(dfl_decode(preds["dist"].reshape(B, A, 4, 16)), preds["anchors"], xywh=False)
    s = preds["strides"][:, None]
    asg = task_aligned_assign(jax.nn.sigmoid(preds["logits"]), pb * s, preds["anchors"] * s, batch["classes"],
                              batch["boxes"], batch["mask"], num_classes=80)
    assert (np.asarray(asg.fg).sum(1) >= 40).all()
    _, items = detection_loss(preds, batch, nc=80, cfg=LossConfig(topk=5))
    assert abs(float(items["box"]) / ref["items"][0] - 1) > 1e-3
