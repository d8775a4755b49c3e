"""tf_extended.targets: crafted matching cases (IoU exactly 0.5, COCO crowd boxes) and a slow
replica of Caffe's MatchBBox loop."""
import numpy as np
import pytest
import tensorflow as tf

from tf_extended import boxes, losses, targets


def _caffe_reference(iou, gt_labels, valid, threshold, matching="caffe", crowd=None):
    """Slow, literal replica of Caffe's MatchBBox (bipartite + per-prediction) on an IoU matrix.

    iou [G, A]; crowd [G] or None: crowd boxes take no anchor in the bipartite step, and an
    anchor whose per-prediction match is a crowd box is ignored (label -1).
    Returns (labels [A], matched gt [A] or -1, scores [A]).
    """
    crowd = [False] * len(valid) if crowd is None else [bool(c) for c in crowd]
    num_gt, num_anchors = iou.shape
    match = [-1] * num_anchors
    score = [0.0] * num_anchors
    for a in range(num_anchors):
        for g in range(num_gt):
            if valid[g]:
                score[a] = max(score[a], float(iou[g, a]))
    if matching == "caffe":
        pool = [g for g in range(num_gt) if valid[g] and not crowd[g]]
        while pool:
            best_a, best_g, best_v = -1, -1, -1.0
            for a in range(num_anchors):  # anchors in order, then ground truths, strict '>'
                if match[a] != -1:
                    continue
                for g in pool:
                    v = float(iou[g, a])
                    if v > 1e-6 and v > best_v:
                        best_a, best_g, best_v = a, g, v
            if best_a == -1:
                break
            match[best_a], score[best_a] = best_g, best_v
            pool.remove(best_g)
    forced = list(match)
    for a in range(num_anchors):
        if match[a] != -1:
            continue
        best_g, best_v = -1, -1.0
        for g in range(num_gt):
            v = float(iou[g, a])
            if valid[g] and v > best_v:
                best_g, best_v = g, v
        # Caffe's MatchBBox: overlap >= threshold (DESIGN.md §7); the original: '>'. Compared
        # in float32 like the TF op.
        above = (np.float32(best_v) >= np.float32(threshold) if matching == "caffe"
                 else np.float32(best_v) > np.float32(threshold))
        match[a] = best_g if above else -1
    labels = [(-1 if crowd[m] and forced[a] == -1 else int(gt_labels[m])) if m >= 0 else 0
              for a, m in enumerate(match)]
    return np.array(labels), np.array(match), np.array(score, np.float32)


def _grid_boxes(rng, num, cells=8):
    y0 = rng.integers(0, cells - 1, num)
    x0 = rng.integers(0, cells - 1, num)
    y1 = np.minimum(y0 + rng.integers(1, 5, num), cells)
    x1 = np.minimum(x0 + rng.integers(1, 5, num), cells)
    return (np.stack([y0, x0, y1, x1], axis=1) / cells).astype(np.float32)


def _check_against_reference(gt_labels, gt_bboxes, anchors, valid, matching, threshold=0.5, **kw):
    labels, locs, scores = targets.encode_targets(gt_labels, gt_bboxes, anchors, matching=matching,
                                                  match_threshold=threshold, **kw)
    iou = boxes.iou(tf.constant(gt_bboxes), tf.constant(anchors)).numpy()
    want_labels, want_match, want_scores = _caffe_reference(iou, gt_labels, valid, threshold, matching,
                                                            crowd=kw.get("gt_crowd"))
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_array_equal(scores.numpy(), want_scores)
    pos = want_match >= 0
    # Localisation targets decode back to the matched box; zeros elsewhere.
    np.testing.assert_allclose(boxes.decode(locs.numpy()[pos], anchors[pos]).numpy(),
                               gt_bboxes[want_match[pos]], atol=1e-5)
    assert not locs.numpy()[~pos].any()
    return labels.numpy(), scores.numpy()


def test_weak_ground_truth_still_gets_its_best_anchor():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], np.float32)
    # gt: [0, 0, 0.3, 0.5] -> IoU 0.15/0.25 = 0.6 with anchor 0; [0.5, 0.5, 0.8, 0.7] -> 0.06/0.25 = 0.24
    # with anchor 1 (its best; 0.06 with anchor 2).
    gt = np.array([[0.0, 0.0, 0.3, 0.5], [0.5, 0.5, 0.8, 0.7]], np.float32)
    lab = np.array([3, 7])
    labels, scores = _check_against_reference(lab, gt, anchors, [True, True], "caffe")
    assert labels.tolist() == [3, 7, 0]
    np.testing.assert_allclose(scores, [0.6, 0.24, 0.15], rtol=1e-5)
    labels, _ = _check_against_reference(lab, gt, anchors, [True, True], "original")
    assert labels.tolist() == [3, 0, 0]  # the original loses the weak box


def test_two_ground_truths_compete_for_one_anchor():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.25, 0.5, 0.75], [0.5, 0.5, 1.0, 1.0]], np.float32)
    # gt0 = anchor 0 shifted right by 0.05 -> IoU 0.225/0.275 = 0.818 with anchor 0, 0.15/0.35 = 3/7
    # with anchor 1. gt1 = anchor 0 exactly -> IoU 1 with anchor 0: gt1 wins anchor 0, gt0 is forced
    # onto anchor 1 although 3/7 < 0.5.
    gt = np.array([[0.0, 0.05, 0.5, 0.55], [0.0, 0.0, 0.5, 0.5]], np.float32)
    labels, scores = _check_against_reference(np.array([1, 2]), gt, anchors, [True, True], "caffe")
    assert labels.tolist() == [2, 1, 0]
    np.testing.assert_allclose(scores, [1.0, 3 / 7, 0.0], rtol=1e-5)
    labels, _ = _check_against_reference(np.array([1, 2]), gt, anchors, [True, True], "original")
    assert labels.tolist() == [2, 0, 0]


def test_padding_zero_boxes_num_gt_and_difficult():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]], np.float32)
    gt = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]],
                  np.float32)
    lab = np.array([4, 9, 5, 6])
    # Zero box (index 1) never matches; num_gt=3 drops the last one.
    labels, _, scores = targets.encode_targets(lab, gt, anchors, num_gt=3)
    assert labels.numpy().tolist() == [4, 5, 0]
    assert labels.dtype == tf.int64 and scores.dtype == tf.float32
    # Difficult boxes: their anchors are ignored (-1) only when asked.
    diff = np.array([0, 0, 1, 0])
    labels, _, _ = targets.encode_targets(lab, gt, anchors, gt_difficult=diff, ignore_difficult=True)
    assert labels.numpy().tolist() == [4, -1, 6]
    labels, _, _ = targets.encode_targets(lab, gt, anchors, gt_difficult=diff)
    assert labels.numpy().tolist() == [4, 5, 6]
    # No ground truth at all.
    labels, locs, scores = targets.encode_targets(np.zeros([0], np.int64), np.zeros([0, 4], np.float32), anchors)
    assert labels.numpy().tolist() == [0, 0, 0] and not locs.numpy().any() and not scores.numpy().any()


def test_bad_matching_name():
    with pytest.raises(ValueError, match="caffe, original"):
        targets.encode_targets([1], [[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]], matching="hungarian")


@pytest.mark.parametrize("seed", range(6))
def test_random_grid_cases_against_caffe_loop(seed):
    # Grid boxes give exact IoUs, so many ties (equal IoU to several anchors / ground truths).
    rng = np.random.default_rng(seed)
    anchors = _grid_boxes(rng, 150)
    num_gt = int(rng.integers(1, 12))
    gt = _grid_boxes(rng, num_gt)
    gt[rng.random(num_gt) < 0.15] = 0.0  # some zero boxes
    lab = rng.integers(1, 21, num_gt)
    valid = boxes.area(gt).numpy() > 0
    for matching in ("caffe", "original"):
        for thr in (0.5, 0.3):
            _check_against_reference(lab, gt, anchors, valid, matching, threshold=thr)


def test_random_continuous_many_gts_against_caffe_loop():
    rng = np.random.default_rng(7)
    yx = rng.uniform(0, 0.8, (300, 2))
    anchors = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (300, 2))], 1).astype(np.float32)
    yx = rng.uniform(0, 0.7, (40, 2))
    gt = np.concatenate([yx, yx + rng.uniform(0.02, 0.3, (40, 2))], 1).astype(np.float32)
    _check_against_reference(rng.integers(1, 21, 40), gt, anchors, [True] * 40, "caffe")


def test_batch_matches_per_image_and_runs_in_tf_data():
    rng = np.random.default_rng(11)
    anchors = _grid_boxes(rng, 100)
    sizes = [3, 0, 5]
    gts = [_grid_boxes(rng, s) for s in sizes]
    labs = [rng.integers(1, 5, s) for s in sizes]
    pad_b = np.zeros([3, 6, 4], np.float32)
    pad_l = np.zeros([3, 6], np.int64)
    for i, (g, l) in enumerate(zip(gts, labs)):
        pad_b[i, :len(g)] = g
        pad_l[i, :len(l)] = l
    pad_b[0, 5] = [0.0, 0.0, 0.5, 0.5]  # garbage past num_gt must be ignored
    b_lab, b_loc, b_sc = tf.function(targets.batch_encode_targets)(pad_l, pad_b, anchors, num_gt=sizes)

    def gen():
        for g, l in zip(gts, labs):
            yield l, g

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32)))
    ds = ds.map(lambda l, g: targets.encode_targets(l, g, anchors), num_parallel_calls=2)
    for i, (lab, loc, sc) in enumerate(ds):
        np.testing.assert_array_equal(lab.numpy(), b_lab[i].numpy())
        np.testing.assert_allclose(loc.numpy(), b_loc[i].numpy(), atol=1e-6)
        np.testing.assert_array_equal(sc.numpy(), b_sc[i].numpy())
        iou = boxes.iou(tf.constant(gts[i].reshape(-1, 4)), tf.constant(anchors)).numpy()
        want, _, _ = _caffe_reference(iou, labs[i], [True] * sizes[i], 0.5)
        np.testing.assert_array_equal(lab.numpy(), want)


@pytest.mark.parametrize("seed", range(3))
def test_more_ground_truths_than_anchors(seed):
    # Heavy competition: 12 ground truths for 7 anchors, so some ground truths lose.
    rng = np.random.default_rng(100 + seed)
    anchors = _grid_boxes(rng, 7, cells=4)
    gt = _grid_boxes(rng, 12, cells=4)
    _check_against_reference(rng.integers(1, 21, 12), gt, anchors, [True] * 12, "caffe")


def test_compiles_with_xla():
    # Static shapes (a padded batch): the whole encoder, bipartite loop included, compiles with XLA.
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.25, 0.5, 0.75], [0.5, 0.5, 1.0, 1.0]], np.float32)
    gt = np.array([[[0.0, 0.05, 0.5, 0.55], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    fn = tf.function(lambda l, b, n: targets.batch_encode_targets(l, b, anchors, num_gt=n), jit_compile=True)
    labels, locs, scores = fn(np.array([[1, 2, 0]]), gt, np.array([2]))
    assert labels.numpy().tolist() == [[2, 1, 0]]  # gt1 takes anchor 0, gt0 is forced onto anchor 1
    np.testing.assert_allclose(scores.numpy(), [[1.0, 3 / 7, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(boxes.decode(locs[0, :2], anchors[:2]).numpy(), gt[0, 1::-1], atol=1e-5)


def test_xla_grid_ties_match_caffe_loop():
    # Exact IoU ties (grid boxes) under XLA: argmax / tie rules are the same as eagerly.
    rng = np.random.default_rng(21)
    anchors = _grid_boxes(rng, 80)
    gt = np.stack([_grid_boxes(rng, 9) for _ in range(3)])
    lab = rng.integers(1, 21, (3, 9))
    fn = tf.function(lambda l, b: targets.batch_encode_targets(l, b, anchors), jit_compile=True)
    labels, _, scores = fn(lab, gt)
    for i in range(3):
        iou = boxes.iou(tf.constant(gt[i]), tf.constant(anchors)).numpy()
        want_labels, _, want_scores = _caffe_reference(iou, lab[i], [True] * 9, 0.5)
        np.testing.assert_array_equal(labels[i].numpy(), want_labels)
        np.testing.assert_array_equal(scores[i].numpy(), want_scores)


# ---------------------------------------------------------------------------------------
# IoU exactly at the threshold (DESIGN.md §7: Caffe's MatchBBox compares with >=)
# ---------------------------------------------------------------------------------------

# Two boxes of area 0.75 overlapping by 2/3 of their area: inter 0.5, union 1, IoU 0.5, and
# every coordinate, area and the quotient are exact in float32 (multiples of 1/128).
_GT_HALF = np.array([[0.0, 0.25, 1.0, 1.0]], np.float32)
_ANCHORS_HALF = np.array([
    [0.0, 0.25, 1.0, 1.0],          # the ground truth itself: IoU 1 (the bipartite match)
    [0.0, 0.0, 1.0, 0.75],          # shifted by a third of its width: IoU exactly 0.5
    [0.0, 0.0, 1.0, 0.7421875],     # a hair narrower: 0.4921875 / 1.0, below 0.5
    [0.0, 0.25, 0.5, 1.0],          # the top half of the ground truth: 0.375 / 0.75 = 0.5
], np.float32)


def test_iou_exactly_half_is_exact_in_float32():
    iou = boxes.iou(tf.constant(_GT_HALF), tf.constant(_ANCHORS_HALF)).numpy()[0]
    assert iou.dtype == np.float32
    assert iou.tolist() == [1.0, 0.5, 0.4921875, 0.5]


def test_iou_exactly_at_threshold_is_positive_for_caffe_matching():
    labels, _, scores = targets.encode_targets(np.array([7]), _GT_HALF, _ANCHORS_HALF,
                                               matching="caffe")
    assert labels.numpy().tolist() == [7, 7, 0, 7]  # >= 0.5: positive
    assert scores.numpy().tolist() == [1.0, 0.5, 0.4921875, 0.5]
    _check_against_reference(np.array([7]), _GT_HALF, _ANCHORS_HALF, [True], "caffe")
    # The original's encoder and loss compared with '>': exactly 0.5 is not a positive.
    labels, _, _ = targets.encode_targets(np.array([7]), _GT_HALF, _ANCHORS_HALF,
                                          matching="original")
    assert labels.numpy().tolist() == [7, 0, 0, 0]


def test_loss_negative_candidates_are_below_the_threshold():
    # Anchor 1 at IoU exactly 0.5 labelled 0 ('original' matching) must not be a negative
    # candidate (gt_scores < 0.5), anchor 2 just below must: with one positive and ratio 1,
    # the mined negative is anchor 2 even though anchor 1 has the larger background loss.
    labels, locs, scores = targets.encode_targets(np.array([1]), _GT_HALF, _ANCHORS_HALF[:3],
                                                  matching="original")
    assert labels.numpy().tolist() == [1, 0, 0]
    logits = np.zeros([1, 3, 2], np.float32)
    logits[0, 1] = [0.0, 5.0]   # background loss of anchor 1: large
    logits[0, 2] = [0.0, 1.0]   # anchor 2: smaller
    out = losses.ssd_losses(logits, np.zeros([1, 3, 4], np.float32), labels[tf.newaxis],
                            locs[tf.newaxis], scores[tf.newaxis], negative_ratio=1.0)
    want = np.log1p(np.exp(1.0))  # -log softmax([0, 1])[0]
    np.testing.assert_allclose(out["cross_entropy_neg"].numpy(), want, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# COCO crowd boxes: neither positives nor negatives
# ---------------------------------------------------------------------------------------

def test_crowd_box_alone_gives_ignored_anchors_and_no_positive():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.375], [0.5, 0.5, 1.0, 1.0],
                        [0.0, 0.0, 0.5, 0.125]], np.float32)
    crowd_box = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    # IoU with the crowd box: 1, 0.75, 0, 0.25. Without the crowd flag, all >= 0.5 positive.
    labels, _, scores = targets.encode_targets(np.array([3]), crowd_box, anchors)
    assert labels.numpy().tolist() == [3, 3, 0, 0]
    labels, _, scores = targets.encode_targets(np.array([3]), crowd_box, anchors,
                                               gt_crowd=np.array([1]))
    assert labels.numpy().tolist() == [-1, -1, 0, 0]  # no forced positive for a crowd box
    assert scores.numpy().tolist() == [1.0, 0.75, 0.0, 0.25]  # 2 and 3: negative candidates


def test_crowd_box_next_to_a_person():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 0.875],
                        [0.5, 0.0, 1.0, 0.5]], np.float32)
    gt = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0]], np.float32)
    lab = np.array([1, 1])
    # gt 1 is a crowd region; gt 0 a person: anchor 0 is the person's, anchors 1 and 2 fall
    # in the crowd (IoU 1 and 0.75) and are ignored, anchor 3 is background.
    labels, _, _ = targets.encode_targets(lab, gt, anchors, gt_crowd=np.array([0, 1]))
    assert labels.numpy().tolist() == [1, -1, -1, 0]
    _check_against_reference(lab, gt, anchors, [True, True], "caffe", gt_crowd=np.array([0, 1]))


def test_a_crowd_box_does_not_take_the_bipartite_anchor_of_a_person():
    # One anchor; the crowd box overlaps it more than the person does. Without the flag the
    # crowd box would win the bipartite step; with it the person keeps its only anchor.
    anchors = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    gt = np.array([[0.0, 0.0, 0.25, 0.5], [0.0, 0.0, 0.5, 0.5]], np.float32)
    labels, _, _ = targets.encode_targets(np.array([2, 5]), gt, anchors)
    assert labels.numpy().tolist() == [5]
    labels, _, _ = targets.encode_targets(np.array([2, 5]), gt, anchors, gt_crowd=np.array([0, 1]))
    assert labels.numpy().tolist() == [2]


@pytest.mark.parametrize("seed", range(4))
def test_random_grid_cases_with_crowd_against_reference(seed):
    rng = np.random.default_rng(300 + seed)
    anchors = _grid_boxes(rng, 120)
    num_gt = int(rng.integers(2, 10))
    gt = _grid_boxes(rng, num_gt)
    lab = rng.integers(1, 21, num_gt)
    crowd = (rng.random(num_gt) < 0.4).astype(np.int64)
    difficult = (rng.random(num_gt) < 0.2).astype(np.int64)
    for matching in ("caffe", "original"):
        _check_against_reference(lab, gt, anchors, [True] * num_gt, matching, gt_crowd=crowd)
    # Crowd and difficult together, in a padded batch with XLA: the same as one by one.
    fn = tf.function(lambda l, b, c, d: targets.batch_encode_targets(
        l, b, anchors, gt_crowd=c, gt_difficult=d, ignore_difficult=True), jit_compile=True)
    b_labels, _, _ = fn(lab[None], gt[None], crowd[None], difficult[None])
    one, _, _ = targets.encode_targets(lab, gt, anchors, gt_crowd=crowd, gt_difficult=difficult,
                                       ignore_difficult=True)
    np.testing.assert_array_equal(b_labels[0].numpy(), one.numpy())
    iou = boxes.iou(tf.constant(gt), tf.constant(anchors)).numpy()
    want, match, _ = _caffe_reference(iou, lab, [True] * num_gt, 0.5, crowd=crowd)
    want = np.where((match >= 0) & (difficult[np.maximum(match, 0)] == 1), -1, want)
    np.testing.assert_array_equal(one.numpy(), want)
