"""SSD multibox loss: softmax cross-entropy + smooth L1 with hard negative mining.

Caffe SSD's ``MultiBoxLoss`` (the reference recipe, docs/DESIGN.md §7):

* positives: anchors with ``gt_labels > 0``; their cross-entropy with their label and the
  smooth L1 of their 4 Caffe ``(x, y, w, h)`` offsets (times ``alpha``, Caffe's ``loc_weight``);
* negative candidates: ``gt_labels == 0`` and ``gt_scores < match_threshold`` (Caffe's
  ``neg_overlap``); ``gt_labels == -1`` is ignored;
* hard negatives, per image: the ``int(negative_ratio * num_positives_of_the_image)`` candidates
  (at most all of them) with the largest background loss ``-log softmax(logits)[0]``
  (Caffe's ``MAX_NEGATIVE`` mining, ``neg_pos_ratio: 3``); their cross-entropy with class 0;
* every term is summed over the batch and divided by the number of positives in the batch
  (at least 1; Caffe's ``normalization: VALID``).

``mining='batch'`` reproduces balancap/SSD-Tensorflow's ``ssd_losses`` instead (see
:func:`ssd_losses`). All arithmetic is float32, whatever the dtype of the logits.
"""
from __future__ import annotations

import tensorflow as tf

MINING_MODES = ("per_image", "batch")
NORMALIZATIONS = ("positives", "batch_size")


def smooth_l1(x: tf.Tensor) -> tf.Tensor:
    """Caffe's SmoothL1 (sigma 1): ``0.5 x^2`` if ``|x| < 1`` else ``|x| - 0.5``, elementwise."""
    absx = tf.abs(x)
    return tf.where(absx < 1.0, 0.5 * tf.square(x), absx - 0.5)


def _hard_negatives_per_image(bg_loss: tf.Tensor, negative: tf.Tensor, num_neg: tf.Tensor) -> tf.Tensor:
    """Sum over images of the ``num_neg[i]`` largest ``bg_loss`` among ``negative`` anchors.

    bg_loss [N, A] >= 0, negative [N, A] bool, num_neg [N] int32 (<= number of candidates).
    Equal losses: the lower anchor index is taken first (tf.math.top_k's order).
    """
    values = tf.where(negative, bg_loss, -1.0)  # non-candidates sort last (losses are >= 0)
    num_anchors = tf.shape(values)[1]
    ranked, _ = tf.math.top_k(values, k=num_anchors)  # [N, A], sorted, differentiable
    take = tf.range(num_anchors)[tf.newaxis, :] < num_neg[:, tf.newaxis]
    return tf.reduce_sum(tf.where(take, ranked, 0.0))


def ssd_losses(logits: tf.Tensor,
               localisations: tf.Tensor,
               gt_labels: tf.Tensor,
               gt_localisations: tf.Tensor,
               gt_scores: tf.Tensor,
               negative_ratio: float = 3.0,
               alpha: float = 1.0,
               mining: str = "per_image",
               match_threshold: float = 0.5,
               normalization: str | None = None) -> dict[str, tf.Tensor]:
    """SSD losses over a batch of flattened outputs.

    Args:
      logits: [N, A, C] class logits (any float dtype; the loss is computed in float32).
      localisations: [N, A, 4] predicted Caffe ``(x, y, w, h)`` offsets.
      gt_labels: [N, A] int from :func:`tf_extended.targets.batch_encode_targets`:
        > 0 positive, 0 background, -1 ignored.
      gt_localisations: [N, A, 4] target offsets (only read at positives).
      gt_scores: [N, A] IoU of each anchor with its matched / best ground truth.
      negative_ratio: hard negatives per positive (Caffe: 3).
      alpha: weight of the localisation loss (Caffe's ``loc_weight``: 1).
      mining: 'per_image' (Caffe) or 'batch' (the original TF port), see below.
      match_threshold: anchors labelled 0 are negative candidates only when their score is
        below this (Caffe's ``neg_overlap``: 0.5).
      normalization: 'positives' (divide by the batch's number of positives, at least 1;
        Caffe's VALID) or 'batch_size' (divide by N, the original's). None: 'positives' for
        per_image mining, 'batch_size' for batch mining.

    ``mining='batch'`` is balancap/SSD-Tensorflow's variant, quirks included: negatives are
    ranked over the whole batch by softmax background probability (lowest first);
    ``k = int(negative_ratio * positives_in_batch) + N`` (N = batch size: even a batch without
    positives mines N), capped at candidates + 1; and only the candidates whose probability is
    strictly below the k-th smallest value are kept, so the k-th one and anything tied with it
    are dropped (at most k - 1 negatives; when the cap is reached, the k-th value comes from
    a non-candidate (value 1) and all candidates below 1 are taken).

    Returns:
      dict of scalar float32 tensors: ``cross_entropy_pos``, ``cross_entropy_neg``,
      ``localization`` (already times ``alpha``) and ``total`` (their sum; no weight decay).
      A batch without positives gives finite values (the normalizer is at least 1).
    """
    if mining not in MINING_MODES:
        raise ValueError(f"mining={mining!r}; valid values: {', '.join(MINING_MODES)}.")
    if normalization is None:
        normalization = "positives" if mining == "per_image" else "batch_size"
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}; valid values: {', '.join(NORMALIZATIONS)}.")
    logits = tf.cast(logits, tf.float32)
    localisations = tf.cast(localisations, tf.float32)
    gt_localisations = tf.cast(gt_localisations, tf.float32)
    gt_scores = tf.cast(gt_scores, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)

    positive = gt_labels > 0
    negative = (gt_labels == 0) & (gt_scores < match_threshold)
    fpos = tf.cast(positive, tf.float32)
    batch_size = tf.cast(tf.shape(logits)[0], tf.float32)

    # One cross-entropy serves both: at label 0 it is the background loss -log p_0.
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(gt_labels, 0), logits=logits)
    ce_pos = tf.reduce_sum(tf.where(positive, ce, 0.0))

    if mining == "per_image":
        num_pos = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # [N]
        num_cand = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)
        # Caffe: num_sel = min(static_cast<int>(num_pos * neg_pos_ratio), num_neg).
        wanted = tf.cast(tf.floor(tf.cast(num_pos, tf.float32) * negative_ratio), tf.int32)
        num_neg = tf.minimum(wanted, num_cand)
        ce_neg = _hard_negatives_per_image(ce, negative, num_neg)
    else:
        p_bg = tf.nn.softmax(logits)[..., 0]
        values = tf.reshape(tf.where(negative, p_bg, 1.0), [-1])  # positives/ignored count as 1
        num_pos = tf.reduce_sum(tf.cast(positive, tf.int32))
        num_cand = tf.reduce_sum(tf.cast(negative, tf.int32))
        k = tf.cast(tf.floor(tf.cast(num_pos, tf.float32) * negative_ratio), tf.int32) + tf.shape(logits)[0]
        k = tf.minimum(tf.minimum(k, num_cand + 1), tf.size(values))
        # The k-th smallest value; a full sort keeps k out of the shapes (XLA-compatible).
        kth = tf.gather(tf.sort(values), k - 1)
        chosen = negative & (tf.reshape(values, tf.shape(negative)) < kth)
        ce_neg = tf.reduce_sum(tf.where(chosen, ce, 0.0))

    diff = smooth_l1(localisations - gt_localisations)
    loc = alpha * tf.reduce_sum(tf.where(positive[..., tf.newaxis], diff, 0.0))

    if normalization == "positives":
        normalizer = tf.maximum(tf.reduce_sum(fpos), 1.0)
    else:
        normalizer = batch_size
    losses = {
        "cross_entropy_pos": ce_pos / normalizer,
        "cross_entropy_neg": ce_neg / normalizer,
        "localization": loc / normalizer,
    }
    losses["total"] = losses["cross_entropy_pos"] + losses["cross_entropy_neg"] + losses["localization"]
    return losses
