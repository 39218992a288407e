"""Box utilities: conversions, IoU (numpy and jax agree), letterbox -> original scaling."""
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.eval.boxes import box_ioa, box_iou, clip_boxes, scale_boxes, xywh2xyxy, xyxy2ltwh, xyxy2xywh


def test_conversions_round_trip_and_keep_library():
    xywh = np.array([[50.0, 40.0, 20.0, 10.0]])
    xyxy = xywh2xyxy(xywh)
    np.testing.assert_array_equal(xyxy, [[40, 35, 60, 45]])
    np.testing.assert_array_equal(xyxy2xywh(xyxy), xywh)
    np.testing.assert_array_equal(xyxy2ltwh(xyxy), [[40, 35, 20, 10]])
    assert isinstance(xyxy, np.ndarray) and xyxy.dtype == np.float64
    j = xywh2xyxy(jnp.asarray(xywh, jnp.float32))
    assert isinstance(j, jnp.ndarray) and not isinstance(j, np.ndarray)
    np.testing.assert_allclose(np.asarray(j), xyxy)


def test_box_iou_by_hand_and_numpy_equals_jax():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]], np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float64)
    iou = box_iou(a, b)
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150.
    np.testing.assert_allclose(iou, [[50 / 150, 0, 1], [0, 0, 16 / 100]], atol=1e-6)
    j = box_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(np.asarray(j), iou, atol=1e-6)
    # Intersection over the first box's area (COCO crowd overlap): the small box lies inside.
    np.testing.assert_allclose(box_ioa(a[1:], b[2:]), [[1.0]], atol=1e-6)


def test_scale_boxes_undoes_letterbox_and_clips():
    # A 480x640 (h, w) image letterboxed to 320x320: gain 0.5, resized 240x320, pad top/bottom 40.
    orig = np.array([[100.0, 50.0, 300.0, 250.0], [600.0, 400.0, 700.0, 500.0]])
    letterboxed = orig * 0.5 + [0, 40, 0, 40]
    back = scale_boxes(letterboxed, (0.5, 0.0, 40.0), (480, 640))
    np.testing.assert_allclose(back, [[100, 50, 300, 250], [600, 400, 640, 480]])  # second box clipped
    # Separate gains per axis, jax input stays jax.
    j = scale_boxes(jnp.asarray([[10.0, 20.0, 30.0, 40.0]]), ((0.5, 0.25), 2.0, 4.0), (1000, 1000))
    np.testing.assert_allclose(np.asarray(j), [[16, 64, 56, 144]])
    np.testing.assert_array_equal(clip_boxes(np.array([[-5.0, -5, 5, 5]]), (4, 3)), [[0, 0, 3, 4]])
    with pytest.raises(ValueError, match="ratio_pad"):
        scale_boxes(letterboxed, (0.5, 0.0), (480, 640))
