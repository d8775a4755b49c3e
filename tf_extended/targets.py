"""SSD training targets: match ground-truth boxes to anchors and encode them.

Two matching recipes are available:

* ``matching='caffe'`` (default), Caffe SSD's ``MultiBoxLoss`` with ``match_type:
  PER_PREDICTION``, the recipe behind the published VOC07 numbers:

  1. *Bipartite step.* Each ground truth takes one anchor. Caffe does this greedily: it
     repeatedly takes the (ground truth, anchor) pair with the highest IoU among unmatched
     ground truths and unmatched anchors, over pairs with IoU > 1e-6 (Caffe only stores
     overlaps above 1e-6), until no such pair is left. Equal IoUs go to the lower anchor
     index, then to the lower ground-truth index (Caffe scans anchors, then ground truths, in
     order, with a strict ``>``). So a ground truth whose best IoU is 0.3 still gets a
     positive anchor, and two ground truths competing for one anchor are resolved by IoU.
  2. *Per-prediction step.* Every anchor not matched in step 1 whose best IoU is
     ``>= match_threshold`` takes its best ground truth (ties: lower ground-truth index), as
     Caffe's MatchBBox compares (``overlap >= overlap_threshold``; DESIGN.md §7). Anchors below
     the threshold are the negative candidates (the loss's ``gt_scores < match_threshold``),
     so an IoU of exactly 0.5 is a positive, never a negative.

* ``matching='original'``, balancap/SSD-Tensorflow's encoder: each anchor takes its max-IoU
  ground truth (ties: the earlier one) and is positive when that IoU is ``> match_threshold``
  (the original's ``gscores > match_threshold``). There is no bipartite step, so a ground
  truth whose best IoU is <= 0.5 gets no positive.

Ignored anchors (label -1, neither positive nor negative for the loss):

* ``ignore_difficult``: anchors matched to a difficult box (VOC).
* crowd boxes (``gt_crowd``, COCO's ``iscrowd``): a crowd box takes no anchor in the bipartite
  step (it never forces a positive), and an anchor whose best ground truth is a crowd box at
  IoU at or above the threshold is ignored. Anchors below the threshold stay negative
  candidates. An anchor that a non-crowd ground truth took in the bipartite step stays that
  ground truth's positive.

Boxes are ``(ymin, xmin, ymax, xmax)``, normalized; localisation targets are Caffe's
``(x, y, w, h)`` offsets from :func:`tf_extended.boxes.encode`.

The step 1 implementation is vectorized and gives exactly the sequential loop's matching.
With the strict total order on pairs (IoU desc, anchor asc, ground truth asc), greedy
matching equals repeatedly matching, all at once, every pair that is the best of both its
row (ground truth) and its column (anchor) among what is still unmatched: a tf.while_loop of
usually 2-3 rounds over the [G, A] IoU matrix (at most G). When the ground truths' best
anchors are all different, which is the common case, that is the answer and the loop is
skipped.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tf_extended import boxes as tfe_boxes

# (*) Ties: tf.argmax returns the lowest index among equal maxima (Eigen's and XLA's argmax
# reducers break ties by index; TF's docs do not promise it). The tests on grid boxes, full of
# exact ties, check this against Caffe's loop on CPU, eagerly and under XLA.

# Caffe's MatchBBox keeps only overlaps above 1e-6 as matching candidates (bbox_util.cpp).
_CAFFE_MIN_OVERLAP = 1e-6

MATCHING_MODES = ("caffe", "original")


def _bipartite_match(iou: tf.Tensor) -> tf.Tensor:
    """Caffe's greedy bipartite step.

    Args:
      iou: [N, G, A] float32; rows of invalid ground truths hold 0.

    Returns:
      [N, G] int32: the anchor each ground truth took, or -1.
    """
    shape = tf.shape(iou)
    batch, num_gt, num_a = shape[0], shape[1], shape[2]
    g_range = tf.range(num_gt)
    # Round 1's row bests (over all anchors). Ties: the lowest anchor index (*).
    best_anchor = tf.argmax(iou, axis=2, output_type=tf.int32)  # [N, G]
    best_val = tf.gather(iou, best_anchor[:, :, tf.newaxis], axis=2, batch_dims=2)[:, :, 0]
    has = best_val > _CAFFE_MIN_OVERLAP
    # Fast path: when the ground truths' best anchors are all different, greedy matching gives
    # each ground truth its best anchor (taking the global best pair never removes another
    # ground truth's best anchor).
    clash = (best_anchor[:, :, tf.newaxis] == best_anchor[:, tf.newaxis, :]) & has[:, :, tf.newaxis] \
        & has[:, tf.newaxis, :] & (g_range[:, tf.newaxis] != g_range[tf.newaxis, :])
    fast = tf.where(has, best_anchor, -1)
    return tf.cond(tf.reduce_any(clash), lambda: _greedy_rounds(iou, best_anchor, best_val), lambda: fast)


def _greedy_rounds(iou: tf.Tensor, best_anchor: tf.Tensor, best_val: tf.Tensor) -> tf.Tensor:
    """The general case of :func:`_bipartite_match`: rounds of locally dominant pairs.

    Each round, every open ground truth has its best anchor among those not taken yet
    (``best_anchor``, ``best_val`` [N, G] for the first round); the pairs that are also the
    best of their anchor's column (among open ground truths) are matched together. Usually
    2-3 rounds, at most G.
    """
    shape = tf.shape(iou)
    batch, num_gt, num_a = shape[0], shape[1], shape[2]
    g_range = tf.range(num_gt)
    lower_gt = g_range[:, tf.newaxis] < g_range[tf.newaxis, :]  # [g', g]: g' wins ties against g
    batch_index = tf.repeat(tf.range(batch)[:, tf.newaxis], num_gt, axis=1)  # [N, G]

    def next_best(open_gt, taken):
        blocked = taken[:, tf.newaxis, :-1] | ~open_gt[:, :, tf.newaxis]
        masked = tf.where(blocked, -1.0, iou)  # [N, G, A]
        anchor = tf.argmax(masked, axis=2, output_type=tf.int32)  # ties: lowest index (*)
        return anchor, tf.gather(masked, anchor[:, :, tf.newaxis], axis=2, batch_dims=2)[:, :, 0]

    def body(open_gt, taken, forced, best_anchor, best_val, _):
        has = open_gt & (best_val > _CAFFE_MIN_OVERLAP)
        col = tf.gather(iou, best_anchor, axis=2, batch_dims=1)  # [N, G', G] = iou[g', best_anchor[g]]
        ref = best_val[:, tf.newaxis, :]
        beaten = open_gt[:, :, tf.newaxis] & ((col > ref) | ((col == ref) & lower_gt))
        dominant = has & ~tf.reduce_any(beaten, axis=1)  # best of its row and of its column
        forced = tf.where(dominant, best_anchor, forced)
        open_gt = open_gt & ~dominant
        # `taken` has a dummy last column (index A) that absorbs the rows matching nothing.
        column = tf.where(dominant, best_anchor, num_a)
        taken = tf.tensor_scatter_nd_update(taken, tf.stack([batch_index, column], axis=-1),
                                            tf.ones_like(dominant))
        active = tf.reduce_any(has & ~dominant)
        best_anchor, best_val = tf.cond(active, lambda: next_best(open_gt, taken),
                                        lambda: (best_anchor, best_val))
        return open_gt, taken, forced, best_anchor, best_val, active

    open_gt = best_val > _CAFFE_MIN_OVERLAP
    taken = tf.zeros(tf.stack([batch, num_a + 1]), tf.bool)
    forced = -tf.ones(shape[:2], tf.int32)
    out = tf.while_loop(
        lambda *state: state[-1], body,
        (open_gt, taken, forced, best_anchor, best_val, tf.constant(True)),
        maximum_iterations=num_gt)
    return out[2]


def batch_encode_targets(gt_labels: tf.Tensor,
                         gt_bboxes: tf.Tensor,
                         anchors: tf.Tensor,
                         num_gt: tf.Tensor | None = None,
                         gt_difficult: tf.Tensor | None = None,
                         matching: str = "caffe",
                         match_threshold: float = 0.5,
                         ignore_difficult: bool = False,
                         prior_scaling: Sequence[float] = tfe_boxes.DEFAULT_PRIOR_SCALING,
                         gt_crowd: tf.Tensor | None = None,
                         ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Encode padded ground truth of a batch against all anchors at once.

    Args:
      gt_labels: [N, G] int, 1..C-1 (padding: anything).
      gt_bboxes: [N, G, 4] ``(ymin, xmin, ymax, xmax)`` normalized; boxes of zero area
        (e.g. zero padding) never match.
      anchors: [A, 4] ``(ymin, xmin, ymax, xmax)`` normalized, as ``net.anchors()``.
      num_gt: optional [N] int, the number of real boxes per image (the rest is padding).
      gt_difficult: optional [N, G] bool/int, VOC's difficult flags.
      matching: 'caffe' (bipartite + per-prediction) or 'original' (per-prediction only).
      match_threshold: an anchor is positive when its IoU is >= this ('caffe', Caffe's 0.5;
        'original': > this).
      ignore_difficult: anchors matched to a difficult box get label -1 (ignored by the loss).
      prior_scaling: Caffe's prior variances ``(x, y, w, h)``.
      gt_crowd: optional [N, G] bool/int, COCO's iscrowd flags: crowd boxes are never matched
        by the bipartite step, and anchors whose best ground truth is a crowd box at IoU >=
        the threshold get label -1 (see the module doc).

    Returns:
      ``(labels int64 [N, A], localisations float32 [N, A, 4], scores float32 [N, A])``.
      labels: the matched ground truth's label, 0 = background (a negative candidate when
      its score is below the threshold), -1 = ignored. localisations: Caffe ``(x, y, w, h)``
      offsets of the matched ground truth, zeros for unmatched anchors. scores: IoU with the
      matched ground truth, or the best IoU over all ground truths for unmatched anchors
      (0 when there is none).
    """
    if matching not in MATCHING_MODES:
        raise ValueError(f"matching={matching!r}; valid values: {', '.join(MATCHING_MODES)}.")
    gt_bboxes = tf.cast(tf.convert_to_tensor(gt_bboxes), tf.float32)
    gt_labels = tf.cast(tf.convert_to_tensor(gt_labels), tf.int64)
    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    def flags(values):
        if values is None:
            return tf.zeros_like(gt_labels, tf.bool)
        return tf.cast(tf.convert_to_tensor(values), tf.bool)

    gt_difficult = flags(gt_difficult)
    has_crowd = gt_crowd is not None
    gt_crowd = flags(gt_crowd)
    # Without any box slot, add one invalid (zero) box so that every gather below stays in range.
    if gt_bboxes.shape[1] is None or gt_bboxes.shape[1] == 0:
        extra = tf.maximum(1 - tf.shape(gt_bboxes)[1], 0)
        gt_bboxes = tf.pad(gt_bboxes, [[0, 0], [0, extra], [0, 0]])
        gt_labels = tf.pad(gt_labels, [[0, 0], [0, extra]])
        gt_difficult = tf.pad(gt_difficult, [[0, 0], [0, extra]])
        gt_crowd = tf.pad(gt_crowd, [[0, 0], [0, extra]])
    num_slots = tf.shape(gt_bboxes)[1]
    g_range = tf.range(num_slots)

    valid = tfe_boxes.area(gt_bboxes) > 0.0  # [N, G]
    if num_gt is not None:
        num_gt = tf.cast(tf.reshape(num_gt, [-1]), tf.int32)
        valid = valid & (g_range[tf.newaxis, :] < num_gt[:, tf.newaxis])
        # Zero the padding: a zero box has IoU 0 with every anchor, so it can never be
        # anyone's best (best IoU 0 is neither positive nor a bipartite candidate).
        gt_bboxes = tf.where(valid[:, :, tf.newaxis], gt_bboxes, 0.0)

    iou = tfe_boxes.iou(gt_bboxes, anchors)  # [N, G, A]; 0 for invalid boxes

    # Per anchor: best ground truth, ties to the lower index (*).
    best_gt = tf.argmax(iou, axis=1, output_type=tf.int32)  # [N, A]
    best_iou = tf.reduce_max(iou, axis=1)
    # Caffe's MatchBBox: overlap >= threshold; the original: gscores > threshold.
    above = best_iou >= match_threshold if matching == "caffe" else best_iou > match_threshold
    assigned = tf.where(above, best_gt, -1)  # [N, A]
    scores = best_iou

    if matching == "caffe":
        # Crowd boxes take no anchor in the bipartite step (their rows count as no overlap).
        bipartite_iou = tf.where(gt_crowd[:, :, tf.newaxis], 0.0, iou) if has_crowd else iou
        forced = _bipartite_match(bipartite_iou)  # [N, G], anchor index or -1
        # Scatter the forced pairs over the per-prediction result. Unmatched ground truths write
        # into an extra dummy column A, dropped afterwards (forced anchors are distinct).
        num_a = tf.shape(anchors)[0]
        batch = tf.shape(forced)[0]
        column = tf.where(forced >= 0, forced, num_a)
        index = tf.stack([tf.repeat(tf.range(batch)[:, tf.newaxis], num_slots, axis=1), column], axis=-1)
        forced_iou = tf.gather(iou, tf.maximum(forced, 0)[:, :, tf.newaxis], axis=2, batch_dims=2)[:, :, 0]
        assigned = tf.tensor_scatter_nd_update(
            tf.pad(assigned, [[0, 0], [0, 1]]), index,
            tf.repeat(g_range[tf.newaxis, :], batch, axis=0))[:, :-1]
        scores = tf.tensor_scatter_nd_update(tf.pad(scores, [[0, 0], [0, 1]]), index, forced_iou)[:, :-1]

    matched = assigned >= 0
    safe = tf.maximum(assigned, 0)
    labels = tf.where(matched, tf.gather(gt_labels, safe, batch_dims=1), tf.zeros_like(gt_labels[:, :1]))
    ignored = tf.zeros_like(matched)
    if ignore_difficult:
        ignored |= tf.gather(gt_difficult, safe, batch_dims=1)
    if has_crowd:
        ignored |= tf.gather(gt_crowd, safe, batch_dims=1)
    if ignore_difficult or has_crowd:
        labels = tf.where(ignored & matched, tf.constant(-1, tf.int64), labels)
    matched_boxes = tf.gather(gt_bboxes, safe, batch_dims=1)  # [N, A, 4]
    localisations = tfe_boxes.encode(matched_boxes, anchors, prior_scaling)
    localisations = tf.where(matched[:, :, tf.newaxis], localisations, 0.0)
    return labels, localisations, scores


def encode_targets(gt_labels: tf.Tensor,
                   gt_bboxes: tf.Tensor,
                   anchors: tf.Tensor,
                   num_gt: tf.Tensor | None = None,
                   gt_difficult: tf.Tensor | None = None,
                   matching: str = "caffe",
                   match_threshold: float = 0.5,
                   ignore_difficult: bool = False,
                   prior_scaling: Sequence[float] = tfe_boxes.DEFAULT_PRIOR_SCALING,
                   gt_crowd: tf.Tensor | None = None,
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Encode one image's ground truth against all anchors (usable inside ``tf.data.map``).

    Args:
      gt_labels: [G] int, 1..C-1.
      gt_bboxes: [G, 4] ``(ymin, xmin, ymax, xmax)`` normalized; G may be 0 or unknown.
      anchors: [A, 4] ``(ymin, xmin, ymax, xmax)`` normalized.
      num_gt: optional scalar, the number of real boxes when the rest is padding.
      gt_difficult, matching, match_threshold, ignore_difficult, prior_scaling, gt_crowd: see
        :func:`batch_encode_targets` (gt_difficult, gt_crowd: [G]).

    Returns:
      ``(labels int64 [A], localisations float32 [A, 4], scores float32 [A])``, see
      :func:`batch_encode_targets`.
    """
    gt_labels = tf.convert_to_tensor(gt_labels)
    gt_bboxes = tf.convert_to_tensor(gt_bboxes)
    labels, localisations, scores = batch_encode_targets(
        gt_labels[tf.newaxis], gt_bboxes[tf.newaxis], anchors,
        num_gt=None if num_gt is None else tf.reshape(num_gt, [1]),
        gt_difficult=None if gt_difficult is None else tf.convert_to_tensor(gt_difficult)[tf.newaxis],
        matching=matching, match_threshold=match_threshold,
        ignore_difficult=ignore_difficult, prior_scaling=prior_scaling,
        gt_crowd=None if gt_crowd is None else tf.convert_to_tensor(gt_crowd)[tf.newaxis])
    return labels[0], localisations[0], scores[0]
