"""tf_extended.boxes: hand-checkable values and invariants."""
import numpy as np
import pytest
import tensorflow as tf

from tf_extended import boxes


def test_iou_hand_values():
    # Two unit squares in a 2x2 frame: [0,0,1,1] vs [0,0.5,1,1.5] overlap in half of each.
    a = tf.constant([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[0.0, 0.5, 1.0, 1.5], [0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0]])
    got = boxes.iou(a, b).numpy()
    # inter 0.5, union 1.5 -> 1/3; identical -> 1; disjoint -> 0; [0,.5,1,1.5] lies inside [0,0,2,2]: 1/4.
    want = np.array([[1 / 3, 1.0, 0.0], [0.25, 0.25, 0.0]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(boxes.elementwise_iou(a, b[:2]).numpy(), [1 / 3, 0.25], rtol=1e-6)


def test_iou_degenerate_is_zero_not_nan():
    z = tf.zeros([2, 4])
    assert np.all(boxes.iou(z, z).numpy() == 0.0)


def test_area_and_bad_shape():
    np.testing.assert_allclose(boxes.area(tf.constant([[0.0, 0.0, 0.5, 0.2], [1.0, 1.0, 0.0, 0.0]])), [0.1, 0.0])
    with pytest.raises(ValueError, match="must be 4"):
        boxes.area(tf.zeros([3, 5]))


def test_encode_golden_and_round_trip():
    anchor = tf.constant([[0.4, 0.4, 0.6, 0.6]])  # centre 0.5, side 0.2
    box = tf.constant([[0.4, 0.42, 0.6, 0.62]])  # shifted 0.02 in x, same size
    # tx = 0.02 / 0.2 / 0.1 = 1, ty = 0, tw = th = log(1) / 0.2 = 0, Caffe order (x, y, w, h).
    np.testing.assert_allclose(boxes.encode(box, anchor).numpy(), [[1.0, 0.0, 0.0, 0.0]], atol=1e-5)
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 0.5, (100, 2))
    hw = rng.uniform(0.01, 0.5, (100, 2))
    b = np.concatenate([yx, yx + hw], axis=1).astype(np.float32)
    a = np.roll(b, 1, axis=0)
    np.testing.assert_allclose(boxes.decode(boxes.encode(b, a), a).numpy(), b, atol=1e-5)


def test_encode_zero_box_is_finite():
    out = boxes.encode(tf.zeros([1, 4]), tf.constant([[0.4, 0.4, 0.6, 0.6]]))
    assert np.all(np.isfinite(out.numpy()))


def test_window_round_trip_and_clip():
    window = tf.constant([0.2, 0.1, 0.6, 0.5])
    np.testing.assert_allclose(boxes.resize_to_window(window[None], window).numpy(), [[0, 0, 1, 1]], atol=1e-6)
    b = tf.constant([[0.3, 0.2, 0.5, 0.9]])
    np.testing.assert_allclose(boxes.resize_from_window(boxes.resize_to_window(b, window), window), b, atol=1e-6)
    np.testing.assert_allclose(boxes.clip(tf.constant([[-0.1, 0.5, 1.2, 0.7]])), [[0.0, 0.5, 1.0, 0.7]])


def test_ops_inside_tf_data():
    ds = tf.data.Dataset.from_tensors((tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.constant([[0.0, 0.5, 1.0, 1.5]])))
    got = next(iter(ds.map(boxes.iou)))
    np.testing.assert_allclose(got.numpy(), [[1 / 3]], rtol=1e-6)
