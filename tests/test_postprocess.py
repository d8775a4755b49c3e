"""tf_extended.postprocess.detected_bboxes against a pure-Python greedy NMS (Caffe's DetectionOutput)."""
import numpy as np
import pytest
import tensorflow as tf

from tf_extended import boxes, postprocess

from tests.references import iou


def _reference(scores, bboxes, select_threshold, nms_threshold, top_k, keep_top_k):
    """Slow reference for one image: scores [A, C], bboxes [A, 4] already decoded.

    Per class c >= 1: candidates with score > threshold, sorted by (score desc, anchor asc),
    first top_k, greedy NMS (drop a box when IoU > nms_threshold with a kept one). Then all
    kept (score, class, anchor) sorted by (score desc, class asc, anchor asc), first keep_top_k.
    """
    kept = []
    num_anchors, num_classes = scores.shape
    for c in range(1, num_classes):
        cands = [(float(scores[a, c]), a) for a in range(num_anchors) if scores[a, c] > select_threshold]
        cands.sort(key=lambda t: (-t[0], t[1]))
        cands = cands[:top_k]
        sel = []
        for s, a in cands:
            if all(iou(bboxes[a], bboxes[k]) <= nms_threshold for _, k in sel):
                sel.append((s, a))
        kept += [(s, c, a) for s, a in sel]
    kept.sort(key=lambda t: (-t[0], t[1], t[2]))
    return kept[:keep_top_k]


def _check(pred, loc, anchors, select_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200,
           fn=postprocess.detected_bboxes):
    out = fn(pred, loc, anchors, select_threshold=select_threshold, nms_threshold=nms_threshold,
             select_top_k=top_k, keep_top_k=keep_top_k)
    decoded = boxes.decode(tf.constant(loc, tf.float32), tf.constant(anchors, tf.float32)).numpy()
    pred = np.asarray(pred, np.float32)
    for n in range(pred.shape[0]):
        want = _reference(pred[n], decoded[n], select_threshold, nms_threshold, top_k, keep_top_k)
        num = int(out["num_detections"][n])
        assert num == len(want)
        np.testing.assert_array_equal(out["scores"][n, :num].numpy(), [w[0] for w in want])
        np.testing.assert_array_equal(out["classes"][n, :num].numpy(), [w[1] for w in want])
        # Boxes: exact on the grid cases; tf.function may fuse decode differently (1 ulp).
        np.testing.assert_allclose(out["boxes"][n, :num].numpy(), decoded[n][[w[2] for w in want]],
                                   rtol=0, atol=1e-6)
        # Padding is zeros.
        assert not out["scores"][n, num:].numpy().any()
        assert not out["classes"][n, num:].numpy().any()
        assert not out["boxes"][n, num:].numpy().any()
    return out


def _grid_boxes(rng, num, cells=8):
    """Boxes on a 1/cells grid, so that areas and IoUs are exact in float32."""
    y0 = rng.integers(0, cells - 1, num)
    x0 = rng.integers(0, cells - 1, num)
    y1 = np.minimum(y0 + rng.integers(1, 5, num), cells)
    x1 = np.minimum(x0 + rng.integers(1, 5, num), cells)
    return (np.stack([y0, x0, y1, x1], axis=1) / cells).astype(np.float32)


def test_iou_exactly_at_threshold_is_kept():
    # A = 4x5 cells, B = 3x3 cells inside it: IoU = 9/20 = 0.45 exactly (as float32 division).
    # C = A's right half: IoU(A, C) = 10/20 = 0.5 -> suppressed at 0.45, kept at 0.5
    # (C and B barely overlap: 1.5/17.5).
    anchors = np.array([[0, 0, 4, 5], [0, 0, 3, 3], [0, 2.5, 4, 5]], np.float32) / 8
    pred = np.zeros([1, 3, 3], np.float32)
    pred[0, :, 1] = [0.9, 0.8, 0.7]
    loc = np.zeros([1, 3, 4], np.float32)
    out = _check(pred, loc, anchors, nms_threshold=0.45)
    assert out["num_detections"].numpy().tolist() == [2]  # B kept (0.45 is not > 0.45), C dropped
    out = _check(pred, loc, anchors, nms_threshold=0.5)
    assert out["num_detections"].numpy().tolist() == [3]


def test_hand_case_classes_threshold_and_ties():
    anchors = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 4, 3]], np.float32) / 8
    pred = np.zeros([1, 4, 3], np.float32)
    pred[0, :, 1] = [0.5, 0.5, 0.3, 0.01]  # tie on identical boxes: anchor 0 wins; 0.01 not > 0.01
    pred[0, :, 2] = [0.0, 0.2, 0.5, 0.4]  # class 2: anchors 2, 3 (IoU 0), anchor 1 vs 3: IoU 0.75
    loc = np.zeros([1, 4, 4], np.float32)
    out = _check(pred, loc, anchors)
    # Expected order by (score desc, class asc): (0.5,c1,a0), (0.5,c2,a2), (0.4,c2,a3), (0.3,c1,a2)
    assert out["classes"][0, :4].numpy().tolist() == [1, 2, 2, 1]
    np.testing.assert_array_equal(out["boxes"][0, 0].numpy(), anchors[0])
    np.testing.assert_allclose(out["scores"][0, :5].numpy(), [0.5, 0.5, 0.4, 0.3, 0.0])
    assert out["classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_grid_boxes_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, a, c = 3, 120, 5
    anchors = _grid_boxes(rng, a)
    # Few distinct score values: many ties within and across classes.
    pred = rng.choice(np.array([0.0, 0.005, 0.01, 0.1, 0.25, 0.5, 0.75], np.float32), size=(n, a, c))
    loc = np.zeros([n, a, 4], np.float32)  # boxes = anchors, exactly
    for thr in (0.3, 0.45, 0.5):
        _check(pred, loc, anchors, nms_threshold=thr, top_k=30, keep_top_k=40)
    _check(pred, loc, anchors, nms_threshold=0.5, top_k=400, keep_top_k=7)


def test_random_continuous_outputs_and_tf_function():
    rng = np.random.default_rng(3)
    n, a, c = 2, 300, 6
    yx = rng.uniform(0, 0.8, (a, 2))
    anchors = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (a, 2))], axis=1).astype(np.float32)
    logits = rng.normal(size=(n, a, c)) * 2
    logits[..., 0] += 3  # mostly background, like a trained SSD
    pred = tf.nn.softmax(tf.constant(logits, tf.float32)).numpy()
    loc = rng.normal(size=(n, a, 4)).astype(np.float32)
    fn = tf.function(postprocess.detected_bboxes)
    _check(pred, loc, anchors, top_k=50, keep_top_k=60, fn=fn)
    _check(pred, loc, anchors, top_k=400, keep_top_k=200)


def test_top_k_limits_nms_candidates():
    # 5 disjoint boxes of one class: with select_top_k=3 only the 3 best can be output.
    anchors = np.array([[i, 0, i + 1, 1] for i in range(5)], np.float32) / 8
    pred = np.zeros([1, 5, 2], np.float32)
    pred[0, :, 1] = [0.2, 0.6, 0.4, 0.8, 0.1]
    out = _check(pred, np.zeros([1, 5, 4], np.float32), anchors, top_k=3, keep_top_k=10)
    np.testing.assert_allclose(out["scores"][0, :4].numpy(), [0.8, 0.6, 0.4, 0.0])


def test_clip_window_half_precision_and_shapes():
    anchors = np.array([[-0.2, 0.1, 0.5, 1.3]], np.float32)
    pred = np.array([[[0.1, 0.9]]], np.float16)
    out = postprocess.detected_bboxes(pred, np.zeros([1, 1, 4], np.float16), anchors,
                                      clip_window=(0.0, 0.0, 1.0, 1.0), keep_top_k=3)
    np.testing.assert_allclose(out["boxes"][0, 0].numpy(), [0.0, 0.1, 0.5, 1.0], atol=1e-6)
    assert out["boxes"].shape == (1, 3, 4) and out["scores"].dtype == tf.float32
    assert out["num_detections"].numpy().tolist() == [1]


# -- the converter-friendly forms (deploy/: ONNX NonMaxSuppression, TFLite's post-process op) --

def test_top_k_per_class_keeps_each_columns_k_best():
    rng = np.random.default_rng(7)
    scores = rng.uniform(size=(2, 50, 3)).astype(np.float32)
    out = postprocess.top_k_per_class(tf.constant(scores), 5).numpy()
    for n in range(2):
        for c in range(3):
            best = set(np.argsort(-scores[n, :, c])[:5])
            assert set(np.flatnonzero(out[n, :, c])) == best
            np.testing.assert_array_equal(out[n, list(best), c], scores[n, list(best), c])
    # k beyond the anchors keeps everything.
    np.testing.assert_array_equal(postprocess.top_k_per_class(tf.constant(scores), 80).numpy(), scores)


@pytest.mark.parametrize("top_k,keep_top_k", [(50, 60), (400, 200), (7, 10)])
def test_shared_boxes_form_gives_the_same_detections(top_k, keep_top_k):
    # Continuous scores (no ties): the one-box-per-anchor form (what tf2onnx converts) equals
    # the reference, top-k pre-selection and per-class NMS included.
    rng = np.random.default_rng(11)
    n, a, c = 2, 300, 6
    yx = rng.uniform(0, 0.8, (a, 2))
    anchors = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (a, 2))], axis=1).astype(np.float32)
    logits = rng.normal(size=(n, a, c)) * 2
    logits[..., 0] += 3
    pred = tf.nn.softmax(tf.constant(logits, tf.float32)).numpy()
    loc = rng.normal(size=(n, a, 4)).astype(np.float32)
    _check(pred, loc, anchors, top_k=top_k, keep_top_k=keep_top_k,
           fn=postprocess.detected_bboxes_shared_boxes)
