"""SSD-VGG preprocessing: Caffe SSD's training augmentation, the original's, and eval resizing.

Boxes are ``(ymin, xmin, ymax, xmax)``, normalized to the image they belong to. Images come in
as uint8 RGB [H, W, 3] and leave as float32 RGB minus the means (123, 117, 104). Everything is TF
ops (no py_function, no NumPy at run time), runs eagerly, in ``tf.function`` and in
``tf.data.Dataset.map``, and draws its randomness only from stateless ops seeded by ``seed``.

Training chain (``chain='caffe'``, the default; Caffe SSD's AnnotatedDataLayer order):
photometric distortions -> expand (zoom-out) filled with the mean -> 7 batch samplers ->
keep boxes whose centre is in the crop (clipped) -> horizontal flip -> warp resize with a random
interpolation -> mean subtraction. Expand, crop, flip and resize are sampled in box coordinates
and rendered by one resampling of the original image (``geometry.render_window``); the
photometric distortions run on the (small) output afterwards, in one XLA-compiled function with
the mean subtraction, and the expand fill is reset to the exact mean. docs/preprocessing.md
explains why this equals Caffe's order up to clipping/rounding details.
"""
from __future__ import annotations

import enum
import functools
from typing import Callable, Sequence

import tensorflow as tf

from preprocessing import geometry, photometric
from preprocessing.geometry import CAFFE_BATCH_SAMPLERS, BatchSampler
from preprocessing.photometric import CAFFE_PHOTOMETRIC, PhotometricParams
from tf_extended.images import RGB_MEANS

# Caffe's resize_param interp_mode in ssd_pascal.py is [LINEAR, AREA, NEAREST, CUBIC, LANCZOS4],
# one picked uniformly. crop_and_resize offers bilinear and nearest only, so the four smooth
# modes map to bilinear: nearest keeps Caffe's 1-in-5 share.
CAFFE_INTERPOLATIONS = ("bilinear", "bilinear", "nearest", "bilinear", "bilinear")

TRAIN_CHAINS = ("caffe", "original")


class Resize(enum.IntEnum):
    """Eval resize modes, numbered as in balancap/SSD-Tensorflow."""

    NONE = 1            # keep the original size
    CENTRAL_CROP = 2    # central crop or zero-pad (after mean subtraction) to out_shape
    PAD_AND_RESIZE = 3  # shrink to fit (aspect kept, never enlarge), then pad centrally
    WARP_RESIZE = 4     # bilinear warp to out_shape (default)


@functools.lru_cache(maxsize=None)
def _finisher(kind: str, channel_swap: bool, means: tuple[float, ...], jit_compile: bool) -> Callable:
    """The per-pixel tail of the training chain as one (XLA-compiled) function.

    ``finish(pixels, inside_y, inside_x, draws)``: photometric distortions ('caffe', 'original'
    or 'none') on the rendered output, mean subtraction, and the expand fill set to exactly 0
    (= the mean) wherever the output samples outside the image. XLA fuses these elementwise
    ops into a few loops: about 3x faster than running them op by op on the CPU.
    """
    def finish(pixels, inside_y, inside_x, draws):
        if kind == "caffe":
            pixels = photometric.apply_caffe(pixels, draws, channel_swap)
        elif kind == "original":
            pixels = photometric.apply_original(pixels, draws)
        mask = (tf.cast(inside_y, tf.float32)[:, tf.newaxis, tf.newaxis]
                * tf.cast(inside_x, tf.float32)[tf.newaxis, :, tf.newaxis])
        return (pixels - tf.constant(means, tf.float32)) * mask

    return tf.function(finish, jit_compile=jit_compile, autograph=False)


def _as_seed(seed: tf.Tensor | Sequence[int] | None) -> tf.Tensor:
    if seed is None:
        # No seed given: draw one (non-reproducible, like the stateful ops would be).
        return tf.random.uniform([2], maxval=2**62, dtype=tf.int64)
    return tf.cast(tf.reshape(tf.convert_to_tensor(seed), [2]), tf.int64)


def _prepare(labels, bboxes, difficult):
    bboxes = tf.reshape(tf.cast(bboxes, tf.float32), [-1, 4])
    labels = tf.convert_to_tensor(labels)
    if difficult is None:
        difficult = tf.zeros_like(labels, dtype=tf.int64)
    return labels, bboxes, tf.convert_to_tensor(difficult)


def _drop_difficult(labels, bboxes, difficult, *others):
    keep = tf.equal(difficult, 0)
    return tuple(tf.boolean_mask(t, keep) for t in (labels, bboxes, difficult) + others)


def _box_flags(values, labels):
    """Per-box 0/1 flags as int64 [n] (zeros when None)."""
    if values is None:
        return tf.zeros_like(labels, dtype=tf.int64)
    return tf.cast(tf.convert_to_tensor(values), tf.int64)


def _check_out_shape(out_shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in out_shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"out_shape must be two Python ints (height, width), got {out_shape!r}.") from exc
    if h < 1 or w < 1:
        raise ValueError(f"out_shape must be positive, got {out_shape!r}.")
    return h, w


def preprocess_for_train(image: tf.Tensor, labels: tf.Tensor, bboxes: tf.Tensor,
                         out_shape: Sequence[int], difficult: tf.Tensor | None = None,
                         seed: tf.Tensor | Sequence[int] | None = None, *,
                         chain: str = "caffe",
                         photometric_params: PhotometricParams | None = CAFFE_PHOTOMETRIC,
                         expand: bool = True,
                         expand_prob: float = geometry.CAFFE_EXPAND_PROB,
                         max_expand_ratio: float = geometry.CAFFE_MAX_EXPAND_RATIO,
                         samplers: Sequence[BatchSampler] | None = CAFFE_BATCH_SAMPLERS,
                         flip: bool = True,
                         interpolations: Sequence[str] = CAFFE_INTERPOLATIONS,
                         color_distortion: bool = True,
                         drop_difficult: bool = False,
                         means: Sequence[float] = RGB_MEANS,
                         return_difficult: bool = False,
                         iscrowd: tf.Tensor | None = None,
                         return_iscrowd: bool = False,
                         jit_compile: bool = True):
    """Training augmentation for one image.

    Args:
      image: uint8 [H, W, 3] RGB.
      labels: int [n] class ids.
      bboxes: float [n, 4] ``(ymin, xmin, ymax, xmax)`` normalized; n may be 0.
      out_shape: (height, width) Python ints, e.g. (300, 300).
      difficult: int [n] VOC difficult flags, or None (all 0).
      seed: int [2] per-example seed for the stateless random ops (same seed, same output);
        None draws one (not reproducible).
      chain: 'caffe' (Caffe SSD, default) or 'original' (balancap/SSD-Tensorflow:
        sample_distorted_bounding_box with min_object_covered 0.25, aspect (0.6, 1.67), area
        (0.1, 1), 200 attempts; boxes with <= 0.5 of their area inside dropped, not clipped;
        its 4-order colour distortion; bilinear warp; flip).
      photometric_params: Caffe distortion parameters; None switches them off ('caffe').
      expand, expand_prob, max_expand_ratio: Caffe's zoom-out ('caffe').
      samplers: Caffe batch samplers; None or () switches cropping off ('caffe').
      flip: random horizontal flip with p=0.5 (both chains).
      interpolations: names drawn uniformly per image for the warp resize ('bilinear',
        'nearest'; repeats weight the draw). The original chain uses bilinear only.
      color_distortion: the original chain's colour distortion on/off ('original').
      drop_difficult: remove difficult boxes before anything else (default: keep them, as
        Caffe SSD trains on them).
      means: RGB means subtracted at the end; the expand fill becomes exactly 0.
      return_difficult: also return the difficult flags of the kept boxes.
      iscrowd: int [n] COCO crowd flags, or None (all 0); carried through the augmentation
        like ``difficult`` (kept or dropped with their boxes).
      return_iscrowd: also return the crowd flags of the kept boxes (after ``difficult``
        when both are asked).
      jit_compile: run the per-pixel tail (distortions, mean, fill) XLA-compiled; False runs
        the same ops one by one (same results up to float rounding).

    Returns:
      ``(image, labels, bboxes)`` (+ ``difficult``, + ``iscrowd`` if asked): float32 [h, w, 3]
      RGB minus the means (values in [-mean, 255 - mean]), the kept labels [m] and their boxes [m, 4]
      ``(ymin, xmin, ymax, xmax)`` normalized to the output image.
    """
    if chain not in TRAIN_CHAINS:
        raise ValueError(f"Unknown training chain {chain!r}; choose from {TRAIN_CHAINS}.")
    out_shape = _check_out_shape(out_shape)
    if not interpolations:
        raise ValueError("interpolations must name at least one method.")
    for name in interpolations:
        if name not in geometry.INTERPOLATIONS:
            raise ValueError(f"interpolation {name!r} is not supported; choose from {geometry.INTERPOLATIONS}.")
    with tf.name_scope("ssd_preprocessing_train"):
        image = tf.convert_to_tensor(image)
        labels, bboxes, difficult = _prepare(labels, bboxes, difficult)
        iscrowd = _box_flags(iscrowd, labels)
        if drop_difficult:
            labels, bboxes, difficult, iscrowd = _drop_difficult(labels, bboxes, difficult, iscrowd)
        seeds = tf.random.experimental.stateless_split(_as_seed(seed), num=6)
        image_shape = tf.shape(image)

        if chain == "caffe":
            if expand:
                canvas = geometry.sample_expand(image_shape, seeds[0], expand_prob, max_expand_ratio)
            else:
                canvas = tf.constant(geometry.UNIT_WINDOW)
            if samplers:
                window, _, _ = geometry.sample_batch_crop(bboxes, seeds[1], canvas, samplers)
            else:
                window = canvas
            window = geometry.snap_window(window, image_shape)
            projected, keep = geometry.boxes_in_window_caffe(bboxes, window)
        else:
            window = geometry.sample_original_crop(image_shape, bboxes, seeds[1])
            projected, keep = geometry.boxes_in_window_original(bboxes, window)
            interpolations = ("bilinear",)
        labels = tf.boolean_mask(labels, keep)
        bboxes = tf.boolean_mask(projected, keep)
        difficult = tf.boolean_mask(difficult, keep)
        iscrowd = tf.boolean_mask(iscrowd, keep)

        coins = tf.random.stateless_uniform([2], seed=seeds[2])
        do_flip = tf.logical_and(tf.constant(flip), coins[0] < 0.5)
        bboxes = tf.cond(do_flip, lambda: geometry.flip_bboxes(bboxes), lambda: bboxes)

        share = sum(name == "nearest" for name in interpolations) / len(interpolations)
        nearest = coins[1] < share
        pixels, inside_y, inside_x = geometry.render_window(image, window, out_shape, do_flip, nearest)

        if chain == "caffe" and photometric_params is not None:
            kind, draws = "caffe", photometric.caffe_draws(seeds[3], photometric_params)
            channel_swap = photometric_params.random_order_prob > 0.0
        elif chain == "original" and color_distortion:
            kind, draws, channel_swap = "original", photometric.original_draws(seeds[3]), False
        else:
            kind, draws, channel_swap = "none", {}, False
        finish = _finisher(kind, channel_swap, tuple(float(m) for m in means), bool(jit_compile))
        out = finish(pixels, inside_y, inside_x, draws)
        out = tf.ensure_shape(out, [out_shape[0], out_shape[1], 3])
        result = (out, labels, bboxes)
        if return_difficult:
            result += (difficult,)
        if return_iscrowd:
            result += (iscrowd,)
        return result


def _crop_or_pad_window(size: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Where an image of ``size`` [2] lands in ``tf.image.resize_with_crop_or_pad(target)``.

    Returns the image's top-left and bottom-right in output units (float32 [2] each).
    """
    offset_crop = tf.maximum((size - target) // 2, 0)
    offset_pad = tf.maximum((target - size) // 2, 0)
    start = tf.cast(offset_pad - offset_crop, tf.float32) / tf.cast(target, tf.float32)
    end = start + tf.cast(size, tf.float32) / tf.cast(target, tf.float32)
    return start, end


def preprocess_for_eval(image: tf.Tensor, labels: tf.Tensor, bboxes: tf.Tensor,
                        out_shape: Sequence[int], difficult: tf.Tensor | None = None,
                        resize: Resize | int = Resize.WARP_RESIZE, *,
                        drop_difficult: bool = False,
                        means: Sequence[float] = RGB_MEANS):
    """Eval preprocessing for one image (the original's modes).

    Args:
      image: uint8 [H, W, 3] RGB.
      labels: int [n]; bboxes: float [n, 4] ``(ymin, xmin, ymax, xmax)`` normalized.
      out_shape: (height, width) Python ints (ignored by ``Resize.NONE``).
      difficult: int [n] or None; used only with ``drop_difficult``.
      resize: a :class:`Resize` mode (default WARP_RESIZE).
      drop_difficult: remove difficult boxes (default keep; VOC eval needs them flagged).
      means: RGB means to subtract.

    Returns:
      ``(image, labels, bboxes, bbox_img)``: float32 [h, w, 3] RGB minus the means (padding is
      0, i.e. the mean); labels [m]; bboxes [m, 4] in *output-image* units; ``bbox_img`` float32
      [4], the original image's extent in output-image units, so detections map back to the
      original image with ``tf_extended.boxes.resize_to_window(det, bbox_img)``
      (:func:`bboxes_to_original`).
    """
    resize = Resize(int(resize))
    with tf.name_scope("ssd_preprocessing_eval"):
        image = tf.convert_to_tensor(image)
        labels, bboxes, difficult = _prepare(labels, bboxes, difficult)
        if drop_difficult:
            labels, bboxes, difficult = _drop_difficult(labels, bboxes, difficult)
        image = tf.cast(image, tf.float32) - tf.constant(means, tf.float32)
        bbox_img = tf.constant(geometry.UNIT_WINDOW)
        if resize == Resize.NONE:
            pass
        else:
            height, width = _check_out_shape(out_shape)
            target = tf.constant([height, width], tf.int32)
            if resize == Resize.WARP_RESIZE:
                image = tf.image.resize(image, [height, width], method="bilinear")
            else:
                if resize == Resize.PAD_AND_RESIZE:
                    size = tf.shape(image)[:2]
                    factor = tf.minimum(tf.constant(1.0, tf.float64),
                                         tf.reduce_min(tf.cast(target, tf.float64) / tf.cast(size, tf.float64)))
                    size = tf.cast(tf.floor(factor * tf.cast(size, tf.float64)), tf.int32)
                    size = tf.maximum(size, 1)
                    image = tf.image.resize(image, size, method="bilinear")
                start, end = _crop_or_pad_window(tf.shape(image)[:2], target)
                image = tf.image.resize_with_crop_or_pad(image, height, width)
                bbox_img = tf.concat([start, end], axis=0)
            image = tf.ensure_shape(image, [height, width, 3])
        bboxes = geometry.tfe_boxes.resize_from_window(bboxes, bbox_img)
        return image, labels, bboxes, bbox_img


def bboxes_to_original(bboxes: tf.Tensor, bbox_img: tf.Tensor, clip: bool = True) -> tf.Tensor:
    """Map ``(ymin, xmin, ymax, xmax)`` boxes from eval output units back to the original image.

    Args:
      bboxes: [..., K, 4] boxes (e.g. detections) in output-image units.
      bbox_img: [..., 4] from :func:`preprocess_for_eval` (batched: [N, 4] with bboxes [N, K, 4]).
      clip: clip the result to the image (detections in the padding are cut to it).
    """
    bbox_img = tf.convert_to_tensor(bbox_img)
    bboxes = geometry.tfe_boxes.resize_to_window(bboxes, bbox_img[..., tf.newaxis, :])
    return geometry.tfe_boxes.clip(bboxes) if clip else bboxes


def preprocess_image(image, labels, bboxes, out_shape, difficult=None, is_training=False, **kwargs):
    """The original's entry point: dispatch to :func:`preprocess_for_train` or :func:`preprocess_for_eval`."""
    if is_training:
        return preprocess_for_train(image, labels, bboxes, out_shape, difficult, **kwargs)
    return preprocess_for_eval(image, labels, bboxes, out_shape, difficult, **kwargs)
