"""SSD post-processing: decode, per-class selection, per-class NMS, keep the best per image.

The recipe is Caffe SSD's ``DetectionOutput`` layer (the one behind the published VOC07
numbers): for every class but the background, keep the boxes whose score is above
``select_threshold``, take the ``select_top_k`` best, run greedy NMS at ``nms_threshold``,
then keep the ``keep_top_k`` best detections of the image over all classes.

Everything is batched over images and classes; there is no Python loop at run time.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tf_extended import boxes as tfe_boxes


def detected_bboxes(predictions: tf.Tensor,
                    localisations: tf.Tensor,
                    anchors: tf.Tensor,
                    prior_scaling: Sequence[float] = tfe_boxes.DEFAULT_PRIOR_SCALING,
                    select_threshold: float = 0.01,
                    nms_threshold: float = 0.45,
                    select_top_k: int = 400,
                    keep_top_k: int = 200,
                    clip_window: Sequence[float] | tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Turn SSD outputs into a fixed-size, zero-padded list of detections per image.

    Args:
      predictions: [N, A, C] softmax class scores (class 0 = background, never reported).
        Any float dtype; computed in float32.
      localisations: [N, A, 4] encoded offsets in Caffe order ``(x, y, w, h)``.
      anchors: [A, 4] ``(ymin, xmin, ymax, xmax)`` normalized, in the order of the flattened outputs.
      prior_scaling: Caffe's prior variances ``(x, y, w, h)`` used by :func:`boxes.decode`.
      select_threshold: a (box, class) pair is a candidate when its score is strictly greater
        (Caffe's ``confidence_threshold``, 0.01 in the published VOC test prototxt).
      nms_threshold: per-class greedy NMS; a box is suppressed by a better box of its class
        when their IoU is strictly greater (Caffe's and TensorFlow's rule; 0.45 in Caffe).
      select_top_k: at most this many candidates per class and image enter NMS
        (Caffe's ``nms_param.top_k``, 400).
      keep_top_k: K, the number of detections kept per image over all classes (Caffe: 200).
      clip_window: optional ``(ymin, xmin, ymax, xmax)`` window; decoded boxes are clipped to it
        before NMS. None (the default, like Caffe's VOC models) leaves boxes unclipped.

    Returns:
      dict of tensors: ``boxes`` [N, K, 4] float32 ``(ymin, xmin, ymax, xmax)`` normalized,
      ``scores`` [N, K] float32, ``classes`` [N, K] int32 in 1..C-1, ``num_detections`` [N] int32.
      Rows are sorted by score, best first; rows past ``num_detections`` are zeros.

    Ties are resolved deterministically: candidates with equal scores are ordered by class,
    then by anchor index (lower first) -- within a class this is also the order in which
    greedy NMS visits them, as in Caffe's stable sort.
    """
    predictions = tf.cast(tf.convert_to_tensor(predictions), tf.float32)
    localisations = tf.cast(tf.convert_to_tensor(localisations), tf.float32)
    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    num_anchors = predictions.shape[1]
    num_classes = predictions.shape[2]
    if num_anchors is None or num_classes is None:
        raise ValueError("predictions must have a static shape [N, A, C]; got "
                         f"{predictions.shape}.")
    if num_classes < 2:
        raise ValueError(f"predictions has {num_classes} classes; need background + at least one.")
    num_fg = num_classes - 1
    top_k = min(int(select_top_k), num_anchors)
    keep_top_k = int(keep_top_k)

    bboxes = tfe_boxes.decode(localisations, anchors, prior_scaling)  # [N, A, 4]
    if clip_window is not None:
        bboxes = tfe_boxes.clip(bboxes, clip_window)

    # Per class: the top_k best anchors. top_k orders equal scores by lower index first.
    class_scores = tf.transpose(predictions[:, :, 1:], [0, 2, 1])  # [N, C-1, A]
    cand_scores, cand_idx = tf.math.top_k(class_scores, k=top_k)  # [N, C-1, T]
    valid = cand_scores > select_threshold
    cand_boxes = tf.gather(bboxes, cand_idx, batch_dims=1)  # [N, C-1, T, 4]

    # CombinedNonMaxSuppression sorts its final output with an unstable sort, so equal scores
    # could come out in any order (and be cut differently at keep_top_k). Feed it instead a
    # distinct integer key per candidate: its rank in (score desc, class asc, anchor rank asc)
    # order, as an exactly representable float. Within a class this key orders candidates as
    # the scores do, so per-class NMS is unchanged; the real scores are gathered back after.
    num_cand = num_fg * top_k
    if num_cand >= 2 ** 24:
        raise ValueError(f"(num_classes - 1) * select_top_k = {num_cand} is too large (max 2**24).")
    flat_scores = tf.reshape(tf.where(valid, cand_scores, -1.0), [-1, num_cand])
    order = tf.argsort(flat_scores, axis=-1, direction="DESCENDING", stable=True)  # [N, M]
    batch = tf.shape(order)[0]
    rank = tf.scatter_nd(
        tf.stack([tf.repeat(tf.range(batch)[:, None], num_cand, axis=1), order], axis=-1),
        tf.tile(tf.range(num_cand)[None, :], [batch, 1]),
        tf.stack([batch, num_cand]))  # rank[n, order[n, j]] = j
    keys = tf.cast(num_cand - rank, tf.float32)  # best = num_cand, worst = 1
    keys = tf.where(tf.reshape(valid, [-1, num_cand]), keys, 0.0)
    keys = tf.transpose(tf.reshape(keys, [-1, num_fg, top_k]), [0, 2, 1])  # [N, T, C-1]
    nms_boxes = tf.transpose(cand_boxes, [0, 2, 1, 3])  # [N, T, C-1, 4]: q = C-1 box sets

    nms = tf.image.combined_non_max_suppression(
        nms_boxes, keys,
        max_output_size_per_class=min(keep_top_k, top_k),
        max_total_size=keep_top_k,
        iou_threshold=float(nms_threshold),
        score_threshold=0.5,  # keys of valid candidates are >= 1, invalid ones 0
        pad_per_class=False,
        clip_boxes=False)
    num_det = tf.cast(nms.valid_detections, tf.int32)
    out_k = tf.shape(nms.nmsed_scores)[1]
    live = tf.range(out_k)[None, :] < num_det[:, None]  # [N, K']
    flat_pos = num_cand - tf.cast(nms.nmsed_scores, tf.int32)  # position in `order`
    flat_pos = tf.where(live, flat_pos, 0)
    flat_index = tf.gather(order, flat_pos, batch_dims=1)  # index into [C-1 * T]
    scores = tf.gather(tf.reshape(cand_scores, [-1, num_cand]), flat_index, batch_dims=1)
    scores = tf.where(live, scores, 0.0)
    classes = tf.where(live, flat_index // top_k + 1, 0)
    out_boxes = tf.where(live[..., None], nms.nmsed_boxes, 0.0)

    # combined_non_max_suppression returns min(max_total_size, ...) rows; pad up to K.
    pad = keep_top_k - out_k
    out_boxes = tf.pad(out_boxes, [[0, 0], [0, pad], [0, 0]])
    scores = tf.pad(scores, [[0, 0], [0, pad]])
    classes = tf.pad(classes, [[0, 0], [0, pad]])
    static_n = predictions.shape[0]
    out_boxes = tf.ensure_shape(out_boxes, [static_n, keep_top_k, 4])
    scores = tf.ensure_shape(scores, [static_n, keep_top_k])
    classes = tf.ensure_shape(tf.cast(classes, tf.int32), [static_n, keep_top_k])
    return {"boxes": out_boxes, "scores": scores, "classes": classes, "num_detections": num_det}


def top_k_per_class(scores: tf.Tensor, k: int) -> tf.Tensor:
    """Zero every score that is not among the ``k`` best of its class.

    ``detected_bboxes``' ``select_top_k`` as a mask, for post-processors that take all the
    scores at once (TFLite's ``TFLite_Detection_PostProcess``, ONNX ``NonMaxSuppression``)
    and have no per-class pre-selection of their own.

    Args:
      scores: [N, A, C] class scores (any classes; each column is ranked on its own).
      k: candidates kept per class and image (``k >= A`` keeps everything).

    Returns:
      ``scores`` with the entries below each column's k-th best set to 0. A score equal to the
      k-th best is kept, so ties at the cut can keep a few more than ``k`` (``detected_bboxes``
      keeps the lower anchor indices there); with continuous scores this does not happen.
    """
    scores = tf.convert_to_tensor(scores)
    num_anchors = scores.shape[1]
    if num_anchors is None:
        raise ValueError(f"scores must have a static anchor dimension; got {scores.shape}.")
    k = min(int(k), int(num_anchors))
    kth = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), k=k).values[:, :, -1]  # [N, C]
    return tf.where(scores >= kth[:, tf.newaxis, :], scores, tf.zeros_like(scores))


def detected_bboxes_shared_boxes(predictions: tf.Tensor,
                                 localisations: tf.Tensor,
                                 anchors: tf.Tensor,
                                 prior_scaling: Sequence[float] = tfe_boxes.DEFAULT_PRIOR_SCALING,
                                 select_threshold: float = 0.01,
                                 nms_threshold: float = 0.45,
                                 select_top_k: int = 400,
                                 keep_top_k: int = 200) -> dict[str, tf.Tensor]:
    """:func:`detected_bboxes` written for converters: one box per anchor shared by the classes.

    The same detections (per class: the ``select_top_k`` best candidates above
    ``select_threshold``, greedy NMS at ``nms_threshold``; then the ``keep_top_k`` best of the
    image), expressed as ``combined_non_max_suppression`` on the decoded anchor boxes with
    the scores outside each class's top k zeroed (:func:`top_k_per_class`). That is the form
    tf2onnx turns into ONNX's ``NonMaxSuppression`` (it cannot convert per-class box sets).
    Only the order of exactly equal scores may differ from :func:`detected_bboxes`.

    Args and returns: as :func:`detected_bboxes` (no ``clip_window``).
    """
    predictions = tf.cast(tf.convert_to_tensor(predictions), tf.float32)
    localisations = tf.cast(tf.convert_to_tensor(localisations), tf.float32)
    num_anchors, num_classes = predictions.shape[1], predictions.shape[2]
    if num_anchors is None or num_classes is None:
        raise ValueError("predictions must have a static shape [N, A, C]; got "
                         f"{predictions.shape}.")
    if num_classes < 2:
        raise ValueError(f"predictions has {num_classes} classes; need background + at least one.")
    top_k = min(int(select_top_k), int(num_anchors))
    keep_top_k = int(keep_top_k)
    bboxes = tfe_boxes.decode(localisations, anchors, prior_scaling)  # [N, A, 4]
    scores = top_k_per_class(predictions[:, :, 1:], top_k)  # [N, A, C-1]
    nms = tf.image.combined_non_max_suppression(
        bboxes[:, :, tf.newaxis, :], scores,
        max_output_size_per_class=min(keep_top_k, top_k), max_total_size=keep_top_k,
        iou_threshold=float(nms_threshold), score_threshold=float(select_threshold),
        pad_per_class=False, clip_boxes=False)
    num_det = tf.cast(nms.valid_detections, tf.int32)
    out_k = tf.shape(nms.nmsed_scores)[1]
    live = tf.range(out_k)[None, :] < num_det[:, None]
    pad = keep_top_k - out_k
    static_n = predictions.shape[0]
    out_boxes = tf.pad(tf.where(live[..., None], nms.nmsed_boxes, 0.0), [[0, 0], [0, pad], [0, 0]])
    scores = tf.pad(tf.where(live, nms.nmsed_scores, 0.0), [[0, 0], [0, pad]])
    classes = tf.pad(tf.where(live, tf.cast(nms.nmsed_classes, tf.int32) + 1, 0), [[0, 0], [0, pad]])
    return {"boxes": tf.ensure_shape(out_boxes, [static_n, keep_top_k, 4]),
            "scores": tf.ensure_shape(scores, [static_n, keep_top_k]),
            "classes": tf.ensure_shape(classes, [static_n, keep_top_k]),
            "num_detections": num_det}
