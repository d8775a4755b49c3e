"""Box ops, the one place for them.

Every box in this project is ``(ymin, xmin, ymax, xmax)``, normalized to the image
(0..1) unless a docstring says otherwise. Localisation offsets follow Caffe SSD's
``(x, y, w, h)`` order. All functions are plain TF ops: they broadcast over leading
batch dimensions and run eagerly, in ``tf.function`` and in ``tf.data.map``.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

# Caffe SSD's prior variances (x, y, w, h): "variance: 0.1 0.1 0.2 0.2" in every PriorBox layer.
DEFAULT_PRIOR_SCALING = (0.1, 0.1, 0.2, 0.2)

# Smallest box side used inside log() so that padded (zero) boxes never produce -inf/NaN.
_MIN_SIDE = 1e-8


def _check_last_dim(bboxes: tf.Tensor, name: str) -> None:
    last = bboxes.shape[-1]
    if last is not None and last != 4:
        raise ValueError(f"{name}.shape[-1] is {last}, but must be 4 (ymin, xmin, ymax, xmax).")


def area(bboxes: tf.Tensor, offset: float = 0.0) -> tf.Tensor:
    """Area of ``(ymin, xmin, ymax, xmax)`` boxes [..., 4] -> [...]; empty or inverted boxes give 0.

    ``offset=1`` is the VOC devkit's convention for inclusive integer pixel coordinates:
    ``(ymax - ymin + 1) * (xmax - xmin + 1)``.
    """
    bboxes = tf.convert_to_tensor(bboxes)
    _check_last_dim(bboxes, "bboxes")
    ymin, xmin, ymax, xmax = tf.unstack(bboxes, axis=-1)
    return tf.maximum(ymax - ymin + offset, 0.0) * tf.maximum(xmax - xmin + offset, 0.0)


def intersection(bboxes1: tf.Tensor, bboxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection areas: [..., N, 4] x [..., M, 4] -> [..., N, M]."""
    bboxes1 = tf.convert_to_tensor(bboxes1)
    bboxes2 = tf.convert_to_tensor(bboxes2, dtype=bboxes1.dtype)
    _check_last_dim(bboxes1, "bboxes1")
    _check_last_dim(bboxes2, "bboxes2")
    ymin1, xmin1, ymax1, xmax1 = tf.split(bboxes1, 4, axis=-1)  # [..., N, 1]
    ymin2, xmin2, ymax2, xmax2 = tf.unstack(bboxes2, axis=-1)  # [..., M]
    ymin2, xmin2, ymax2, xmax2 = (t[..., tf.newaxis, :] for t in (ymin2, xmin2, ymax2, xmax2))
    h = tf.maximum(tf.minimum(ymax1, ymax2) - tf.maximum(ymin1, ymin2), 0.0)
    w = tf.maximum(tf.minimum(xmax1, xmax2) - tf.maximum(xmin1, xmin2), 0.0)
    return h * w


def iou(bboxes1: tf.Tensor, bboxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union: [..., N, 4] x [..., M, 4] -> [..., N, M].

    A pair whose union is empty (two degenerate boxes) has IoU 0, never NaN.
    """
    bboxes1 = tf.convert_to_tensor(bboxes1)
    bboxes2 = tf.convert_to_tensor(bboxes2, dtype=bboxes1.dtype)
    inter = intersection(bboxes1, bboxes2)
    union = area(bboxes1)[..., :, tf.newaxis] + area(bboxes2)[..., tf.newaxis, :] - inter
    return tf.math.divide_no_nan(inter, union)


def elementwise_iou(bboxes1: tf.Tensor, bboxes2: tf.Tensor, offset: float = 0.0) -> tf.Tensor:
    """IoU of matching pairs: [..., 4] x [..., 4] -> [...] (broadcasting).

    ``offset=1``: the VOC devkit's IoU of inclusive pixel boxes (VOCevaldet.m), operation for
    operation: ``iw = min(xmax) - max(xmin) + 1`` (likewise ``ih``), ``ua = area1 + area2 -
    iw * ih`` with ``+1`` areas, ``iw * ih / ua``; pairs with ``iw <= 0`` or ``ih <= 0`` give 0.
    In float64 the result is bit for bit the devkit's.
    """
    bboxes1 = tf.convert_to_tensor(bboxes1)
    bboxes2 = tf.convert_to_tensor(bboxes2, dtype=bboxes1.dtype)
    ymin1, xmin1, ymax1, xmax1 = tf.unstack(bboxes1, axis=-1)
    ymin2, xmin2, ymax2, xmax2 = tf.unstack(bboxes2, axis=-1)
    h = tf.maximum(tf.minimum(ymax1, ymax2) - tf.maximum(ymin1, ymin2) + offset, 0.0)
    w = tf.maximum(tf.minimum(xmax1, xmax2) - tf.maximum(xmin1, xmin2) + offset, 0.0)
    inter = h * w
    union = area(bboxes1, offset) + area(bboxes2, offset) - inter
    return tf.math.divide_no_nan(inter, union)


def clip(bboxes: tf.Tensor, window: Sequence[float] | tf.Tensor = (0.0, 0.0, 1.0, 1.0)) -> tf.Tensor:
    """Clip ``(ymin, xmin, ymax, xmax)`` boxes [..., 4] to ``window`` (same format)."""
    bboxes = tf.convert_to_tensor(bboxes)
    window = tf.cast(tf.convert_to_tensor(window), bboxes.dtype)
    lo = tf.stack([window[..., 0], window[..., 1], window[..., 0], window[..., 1]], axis=-1)
    hi = tf.stack([window[..., 2], window[..., 3], window[..., 2], window[..., 3]], axis=-1)
    return tf.minimum(tf.maximum(bboxes, lo), hi)


def _window_origin_scale(window: Sequence[float] | tf.Tensor,
                         dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """``(ymin, xmin, ymin, xmin)`` and ``(h, w, h, w)`` of a window, each [..., 4]."""
    window = tf.cast(tf.convert_to_tensor(window), dtype)
    origin = tf.stack([window[..., 0], window[..., 1], window[..., 0], window[..., 1]], axis=-1)
    h = window[..., 2] - window[..., 0]
    w = window[..., 3] - window[..., 1]
    return origin, tf.stack([h, w, h, w], axis=-1)


def resize_to_window(bboxes: tf.Tensor, window: Sequence[float] | tf.Tensor) -> tf.Tensor:
    """Re-express boxes relative to ``window`` (both ``(ymin, xmin, ymax, xmax)``).

    A box equal to ``window`` becomes (0, 0, 1, 1). Used after a crop (window = the crop)
    and, inverted by :func:`resize_from_window`, to map detections back through a padding.
    """
    bboxes = tf.convert_to_tensor(bboxes)
    origin, scale = _window_origin_scale(window, bboxes.dtype)
    return (bboxes - origin) / scale


def resize_from_window(bboxes: tf.Tensor, window: Sequence[float] | tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`resize_to_window`: boxes relative to ``window`` -> absolute."""
    bboxes = tf.convert_to_tensor(bboxes)
    origin, scale = _window_origin_scale(window, bboxes.dtype)
    return bboxes * scale + origin


def to_center(bboxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(ymin, xmin, ymax, xmax)`` -> the tuple ``(cy, cx, h, w)``, each [...]."""
    ymin, xmin, ymax, xmax = tf.unstack(bboxes, axis=-1)
    return (ymin + ymax) * 0.5, (xmin + xmax) * 0.5, ymax - ymin, xmax - xmin


def from_center(cy: tf.Tensor, cx: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``(cy, cx, h, w)`` -> ``(ymin, xmin, ymax, xmax)`` [..., 4]."""
    return tf.stack([cy - h * 0.5, cx - w * 0.5, cy + h * 0.5, cx + w * 0.5], axis=-1)


def encode(bboxes: tf.Tensor, anchors: tf.Tensor,
           prior_scaling: Sequence[float] = DEFAULT_PRIOR_SCALING) -> tf.Tensor:
    """Encode boxes against anchors into Caffe SSD offsets.

    Args:
      bboxes: [..., 4] ``(ymin, xmin, ymax, xmax)`` ground-truth boxes, normalized.
      anchors: [..., 4] anchors in the same format (broadcast against ``bboxes``).
      prior_scaling: Caffe's prior variances in ``(x, y, w, h)`` order.

    Returns:
      [..., 4] offsets in Caffe order ``(x, y, w, h)``:
      ``((cx - xa) / wa / s0, (cy - ya) / ha / s1, log(w / wa) / s2, log(h / ha) / s3)``.
      Degenerate (zero-size) boxes give finite values. Invariant:
      ``decode(encode(b, a), a) == b`` for every box with positive sides.
    """
    bboxes = tf.convert_to_tensor(bboxes)
    anchors = tf.cast(tf.convert_to_tensor(anchors), bboxes.dtype)
    cy, cx, h, w = to_center(bboxes)
    acy, acx, ah, aw = to_center(anchors)
    s0, s1, s2, s3 = prior_scaling
    tx = (cx - acx) / aw / s0
    ty = (cy - acy) / ah / s1
    tw = tf.math.log(tf.maximum(w, _MIN_SIDE) / aw) / s2
    th = tf.math.log(tf.maximum(h, _MIN_SIDE) / ah) / s3
    return tf.stack([tx, ty, tw, th], axis=-1)


def decode(localisations: tf.Tensor, anchors: tf.Tensor,
           prior_scaling: Sequence[float] = DEFAULT_PRIOR_SCALING) -> tf.Tensor:
    """Decode Caffe ``(x, y, w, h)`` offsets [..., 4] against anchors -> ``(ymin, xmin, ymax, xmax)``.

    Inverse of :func:`encode`. Computed in the dtype of ``localisations``.
    """
    localisations = tf.convert_to_tensor(localisations)
    anchors = tf.cast(tf.convert_to_tensor(anchors), localisations.dtype)
    acy, acx, ah, aw = to_center(anchors)
    s0, s1, s2, s3 = prior_scaling
    tx, ty, tw, th = tf.unstack(localisations, axis=-1)
    cx = tx * s0 * aw + acx
    cy = ty * s1 * ah + acy
    w = aw * tf.exp(tw * s2)
    h = ah * tf.exp(th * s3)
    return from_center(cy, cx, h, w)
