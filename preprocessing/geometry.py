"""Geometric augmentation in box coordinates: expand (zoom-out), batch samplers, windows, rendering.

Every box here is ``(ymin, xmin, ymax, xmax)``, normalized to the *original* image (0..1 inside
the image; a window may extend beyond [0, 1] when it covers the expand canvas).

The training chain never materializes the expanded canvas or the crop. Expand and crop are
sampled as boxes, composed into one *window* relative to the original image, and the output is
produced by a single ``tf.image.crop_and_resize`` of the original image (:func:`render_window`).
The horizontal flip is folded into the same call (a window with xmin > xmax is mirrored).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from tf_extended import boxes as tfe_boxes

INTERPOLATIONS = ("bilinear", "nearest")


@dataclasses.dataclass(frozen=True)
class BatchSampler:
    """One Caffe SSD ``batch_sampler`` entry (caffe.proto BatchSampler / Sampler / SampleConstraint).

    A trial draws ``scale ~ U(min_scale, max_scale)`` and ``aspect ~ U(min_aspect_ratio,
    max_aspect_ratio)`` clamped to ``[scale**2, 1 / scale**2]`` (so the crop stays inside the
    unit square), giving width ``scale * sqrt(aspect)`` and height ``scale / sqrt(aspect)`` in
    normalized units of the (expanded) image, at a uniform position inside it. A trial is
    accepted when some ground-truth box has ``min_jaccard_overlap <= IoU <= max_jaccard_overlap``
    (bounds that are None are not checked); with neither bound set every trial is accepted.
    With a bound set and no boxes, no trial is accepted (Caffe's ``SatisfySampleConstraint``).
    The first accepted trial of ``max_trials`` is the sampler's crop (Caffe's max_sample 1).
    """

    min_scale: float = 1.0
    max_scale: float = 1.0
    min_aspect_ratio: float = 1.0
    max_aspect_ratio: float = 1.0
    min_jaccard_overlap: float | None = None
    max_jaccard_overlap: float | None = None
    max_trials: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ValueError(f"BatchSampler needs 0 < min_scale <= max_scale <= 1, got {self}.")
        if not 0.0 < self.min_aspect_ratio <= self.max_aspect_ratio:
            raise ValueError(f"BatchSampler needs 0 < min_aspect_ratio <= max_aspect_ratio, got {self}.")
        if self.max_trials < 1:
            raise ValueError(f"BatchSampler needs max_trials >= 1, got {self}.")


def _caffe_crop(min_iou: float | None = None, max_iou: float | None = None) -> BatchSampler:
    # ssd_pascal.py: scale 0.3-1, aspect 0.5-2, max_trials 50, max_sample 1.
    return BatchSampler(0.3, 1.0, 0.5, 2.0, min_iou, max_iou, 50)


# The 7 batch samplers of Caffe SSD's examples/ssd/ssd_pascal.py, in its order: the whole image;
# min IoU 0.1, 0.3, 0.5, 0.7, 0.9; and the "unconstrained" one, which Caffe writes as
# max_jaccard_overlap 1.0 (always true when the image has at least one box).
CAFFE_BATCH_SAMPLERS: tuple[BatchSampler, ...] = (
    BatchSampler(),
    *(_caffe_crop(min_iou=t) for t in (0.1, 0.3, 0.5, 0.7, 0.9)),
    _caffe_crop(max_iou=1.0),
)

# Caffe SSD expand_param (ssd_pascal.py): prob 0.5, max_expand_ratio 4.0.
CAFFE_EXPAND_PROB = 0.5
CAFFE_MAX_EXPAND_RATIO = 4.0

UNIT_WINDOW = (0.0, 0.0, 1.0, 1.0)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=tf.float32)


def sample_expand(image_shape: tf.Tensor, seed: tf.Tensor, prob: float = CAFFE_EXPAND_PROB,
                  max_ratio: float = CAFFE_MAX_EXPAND_RATIO) -> tf.Tensor:
    """Caffe's ``ExpandImage`` as a box: the expanded canvas relative to the original image.

    With probability ``prob`` the canvas is ``ratio ~ U(1, max_ratio)`` times the image on each
    side and the image sits at a uniform whole-pixel offset inside it (Caffe floors the
    offsets); otherwise the canvas is the image itself.

    Args:
      image_shape: int [3] or [2] (height, width, ...) of the original image.
      seed: int [2] stateless seed.

    Returns:
      float32 [4] canvas ``(ymin, xmin, ymax, xmax)`` in original-image units, e.g.
      (-0.5, -1.0, 1.5, 1.0): it contains the unit square.
    """
    u = _uniform(seed, [4])
    hw = tf.cast(image_shape[:2], tf.float32)
    do_expand = u[0] < prob
    ratio = tf.where(do_expand, 1.0 + (max_ratio - 1.0) * u[1], 1.0)
    # Caffe: h_off = floor(U(0, expanded_h - img_h)) pixels, same for w.
    off = tf.floor(u[2:4] * (ratio - 1.0) * hw) / tf.maximum(hw, 1.0)
    origin = -off
    return tf.concat([origin, origin + ratio], axis=0)


def sample_batch_crop(bboxes: tf.Tensor, seed: tf.Tensor, canvas: tf.Tensor = UNIT_WINDOW,
                      samplers: Sequence[BatchSampler] = CAFFE_BATCH_SAMPLERS,
                      uniforms: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Caffe's ``GenerateBatchSamples`` + random pick, vectorized over samplers and trials.

    All ``len(samplers) x max(max_trials)`` candidate crops are drawn at once, their IoU with
    every box comes from one ``tf_extended.boxes.iou`` call, each sampler takes its first
    accepted trial, and one sampler is picked uniformly among those that found a crop (Caffe:
    ``rand() % sampled_bboxes.size()``). No loop over trials runs at graph time.

    Args:
      bboxes: float32 [n, 4] ground truth ``(ymin, xmin, ymax, xmax)`` in original-image units
        (n may be 0).
      seed: int [2] stateless seed.
      canvas: [4] the (expanded) canvas the crops are sampled in, original-image units
        (:func:`sample_expand`). IoU is invariant under the axis-aligned affine map between
        the canvas and the image, so checking it in image units is Caffe's check.
      samplers: the batch samplers (Caffe's 7 by default).
      uniforms: optional float32 [S, T, 5] of U(0, 1) draws (pick, scale, aspect, x, y) to
        use instead of ``seed``-drawn ones; for tests against a NumPy reference.

    Returns:
      ``(window, sampler_index, found)``: float32 [4] the chosen crop in original-image units;
      int32 scalar index of the chosen sampler (-1 when none found, window = canvas); bool [S]
      which samplers found a crop.
    """
    samplers = tuple(samplers)
    num_samplers = len(samplers)
    num_trials = max(s.max_trials for s in samplers)
    bboxes = tf.reshape(tf.cast(bboxes, tf.float32), [-1, 4])
    canvas = tf.cast(tf.convert_to_tensor(canvas), tf.float32)

    def column(name, default=None):
        return tf.constant([[getattr(s, name) if getattr(s, name) is not None else default]
                            for s in samplers], tf.float32)  # [S, 1]

    if uniforms is None:
        uniforms = _uniform(seed, [num_samplers, num_trials, 5])
    u_scale, u_aspect, u_x, u_y = (uniforms[..., i] for i in range(1, 5))
    min_s, max_s = column("min_scale"), column("max_scale")
    min_a, max_a = column("min_aspect_ratio"), column("max_aspect_ratio")
    scale = min_s + (max_s - min_s) * u_scale  # [S, T]
    aspect = min_a + (max_a - min_a) * u_aspect
    aspect = tf.clip_by_value(aspect, scale * scale, 1.0 / (scale * scale))
    sqrt_aspect = tf.sqrt(aspect)
    w = tf.minimum(scale * sqrt_aspect, 1.0)
    h = tf.minimum(scale / sqrt_aspect, 1.0)
    x0 = u_x * (1.0 - w)
    y0 = u_y * (1.0 - h)
    crops = tf.stack([y0, x0, y0 + h, x0 + w], axis=-1)  # [S, T, 4] in canvas units
    crops = tfe_boxes.resize_from_window(crops, canvas)  # -> original-image units

    overlaps = tfe_boxes.iou(crops, bboxes[tf.newaxis])  # [S, T, n]
    ok = tf.ones_like(overlaps, dtype=tf.bool)
    ok &= overlaps >= column("min_jaccard_overlap", -1.0)[..., tf.newaxis]
    ok &= overlaps <= column("max_jaccard_overlap", 2.0)[..., tf.newaxis]
    constrained = tf.constant([[s.min_jaccard_overlap is not None or s.max_jaccard_overlap is not None]
                               for s in samplers])  # [S, 1]
    accepted = tf.logical_or(~constrained, tf.reduce_any(ok, axis=-1))  # [S, T]
    trial_ids = tf.range(num_trials)[tf.newaxis, :]
    allowed = trial_ids < tf.constant([[s.max_trials] for s in samplers])  # [S, T]
    accepted &= allowed
    found = tf.reduce_any(accepted, axis=-1)  # [S]
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=-1, output_type=tf.int32)  # [S]
    chosen_crops = tf.gather(crops, first, batch_dims=1)  # [S, 4]

    # Uniform pick among the samplers that found a crop: the k-th found one, k ~ U{0..count-1}.
    num_found = tf.reduce_sum(tf.cast(found, tf.int32))
    k = tf.cast(tf.floor(uniforms[0, 0, 0] * tf.cast(num_found, tf.float32)), tf.int32)
    k = tf.minimum(k, num_found - 1)
    rank = tf.cumsum(tf.cast(found, tf.int32)) - 1  # rank of each found sampler
    is_pick = found & tf.equal(rank, k)
    index = tf.where(num_found > 0, tf.argmax(tf.cast(is_pick, tf.int32), output_type=tf.int32), -1)
    window = tf.where(num_found > 0, tf.gather(chosen_crops, tf.maximum(index, 0)), canvas)
    return window, index, found


def sample_original_crop(image_shape: tf.Tensor, bboxes: tf.Tensor, seed: tf.Tensor,
                         min_object_covered: float = 0.25,
                         aspect_ratio_range: tuple[float, float] = (0.6, 1.67),
                         area_range: tuple[float, float] = (0.1, 1.0),
                         max_attempts: int = 200) -> tf.Tensor:
    """balancap/SSD-Tensorflow's crop: ``sample_distorted_bounding_box`` with its ranges.

    Args:
      image_shape: int [3] (height, width, channels).
      bboxes: float32 [n, 4] ``(ymin, xmin, ymax, xmax)`` normalized (n may be 0: the whole
        image is then a valid crop, ``use_image_if_no_bounding_boxes``).
      seed: int [2] stateless seed.

    Returns:
      float32 [4] the crop window in original-image units, on whole pixels.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(image_shape, tf.int32), tf.reshape(tf.cast(bboxes, tf.float32), [1, -1, 4]),
        seed=tf.cast(seed, tf.int64), min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range,
        max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    hw = tf.cast(image_shape[:2], tf.float32)
    start = tf.cast(begin[:2], tf.float32) / hw
    extent = tf.cast(size[:2], tf.float32) / hw
    return tf.concat([start, start + extent], axis=0)


def boxes_in_window_caffe(bboxes: tf.Tensor, window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Caffe's emit constraint CENTER + ``ProjectBBox``: keep boxes whose centre lies in the window.

    Args:
      bboxes: float32 [n, 4] ``(ymin, xmin, ymax, xmax)`` in original-image units.
      window: float32 [4] the crop in the same units.

    Returns:
      ``(projected, keep)``: float32 [n, 4] boxes relative to the window clipped to [0, 1],
      bool [n] keep mask (centre inside the window, bounds inclusive, and a projected box of
      positive area, as Caffe).
    """
    cy = (bboxes[:, 0] + bboxes[:, 2]) * 0.5
    cx = (bboxes[:, 1] + bboxes[:, 3]) * 0.5
    inside = (cy >= window[0]) & (cy <= window[2]) & (cx >= window[1]) & (cx <= window[3])
    projected = tfe_boxes.clip(tfe_boxes.resize_to_window(bboxes, window))
    keep = inside & (tfe_boxes.area(projected) > 0.0)
    return projected, keep


def boxes_in_window_original(bboxes: tf.Tensor, window: tf.Tensor,
                             threshold: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """balancap/SSD-Tensorflow's ``bboxes_filter_overlap``: keep boxes with > 0.5 of their area inside.

    Boxes are re-expressed relative to the window and, as in the original, not clipped.

    Returns:
      ``(projected, keep)``: float32 [n, 4] and bool [n].
    """
    projected = tfe_boxes.resize_to_window(bboxes, window)
    inside = tfe_boxes.intersection(projected, tf.constant([UNIT_WINDOW]))[:, 0]
    fraction = tf.math.divide_no_nan(inside, tfe_boxes.area(projected))
    return projected, fraction > threshold


def flip_bboxes(bboxes: tf.Tensor) -> tf.Tensor:
    """Mirror ``(ymin, xmin, ymax, xmax)`` boxes left-right: x -> 1 - x."""
    ymin, xmin, ymax, xmax = tf.unstack(bboxes, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def snap_window(window: tf.Tensor, image_shape: tf.Tensor) -> tf.Tensor:
    """Snap a ``(ymin, xmin, ymax, xmax)`` window (image units) to whole pixels, >= 1 pixel a side.

    Caffe crops whole pixels too (``CropImage`` truncates the sampled box to ints); snapping
    moves each edge by at most half a pixel and lets :func:`render_window` read an in-image
    window with a slice and ``tf.image.resize`` (about twice as fast as crop_and_resize).
    Boxes must be projected onto the snapped window.
    """
    hw = tf.cast(image_shape[:2], tf.float32)
    hw2 = tf.concat([hw, hw], axis=0)
    pixels = tf.round(tf.cast(window, tf.float32) * hw2)
    end = tf.maximum(pixels[2:], pixels[:2] + 1.0)
    return tf.concat([pixels[:2], end], axis=0) / hw2


def render_window(image: tf.Tensor, window: tf.Tensor, out_shape: Sequence[int],
                  flip: tf.Tensor | bool = False,
                  method: str | tf.Tensor = "bilinear") -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Crop ``window`` out of ``image`` and warp-resize it to ``out_shape`` in one resampling.

    Pixel convention: pixel ``i`` of an image of height H covers [i/H, (i+1)/H) in normalized
    units, and output pixel ``j`` samples the window at ``(j + 0.5) / out_h`` (the half-pixel
    convention of ``tf.image.resize``); samples between the outermost pixel centres and the
    image border read the edge pixel, samples outside the image are fill.

    Two paths:

    * a whole-pixel window inside the image (:func:`snap_window`) is sliced and resized with
      ``tf.image.resize`` (the flip reverses the slice): Caffe's crop-then-resize, so samples
      in the outer half pixel of the window clamp to the crop's edge pixels;
    * any other window (the expand canvas) goes through ``tf.image.crop_and_resize``, which
      maps a box coordinate y to pixel centre ``y * (H - 1)`` and extrapolates outside
      [0, H - 1]: the box is converted to the convention above, only the block of output
      pixels that sample inside the image is computed, and the rest is zero-padded. When some
      sample falls between the outermost pixel centre and the border, the image is first
      padded by one replicated pixel (a copy) so it reads the edge pixel.

    Output pixels whose sample point lies outside the image are reported by ``inside_y`` /
    ``inside_x`` (exact to the convention above); their values in ``pixels`` are unspecified
    (mostly 0) and the caller fills them (with the mean).

    Args:
      image: [H, W, C] (uint8 or float) image.
      window: float32 [4] ``(ymin, xmin, ymax, xmax)`` in image units; may exceed [0, 1].
      out_shape: (height, width) of the output.
      flip: scalar bool, mirror the output left-right.
      method: 'bilinear' or 'nearest', or a scalar bool tensor (True = nearest).

    Returns:
      ``(pixels, inside_y, inside_x)``: float32 [out_h, out_w, C]; bool [out_h] and bool
      [out_w], which output rows / columns sample inside the image (in output order).
    """
    if isinstance(method, str):
        if method not in INTERPOLATIONS:
            raise ValueError(f"interpolation {method!r} is not supported; choose from {INTERPOLATIONS}.")
        method = tf.constant(method == "nearest")
    out_h, out_w = int(out_shape[0]), int(out_shape[1])
    channels = image.shape[-1]
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    window = tf.cast(window, tf.float32)
    flip = tf.convert_to_tensor(flip, tf.bool)
    step = (window[2:] - window[:2]) / tf.constant([out_h, out_w], tf.float32)
    # Normalized sample positions of every output row / column (unflipped order).
    ys = window[0] + (tf.range(out_h, dtype=tf.float32) + 0.5) * step[0]
    xs = window[1] + (tf.range(out_w, dtype=tf.float32) + 0.5) * step[1]
    inside_y = (ys >= 0.0) & (ys <= 1.0)
    inside_x = (xs >= 0.0) & (xs <= 1.0)

    edges = window * tf.concat([hw, hw], axis=0)
    on_grid = tf.reduce_all(tf.abs(edges - tf.round(edges)) < 1e-3)
    in_image = tf.reduce_all(window[:2] >= 0.0) & tf.reduce_all(window[2:] <= 1.0)
    fast = on_grid & in_image

    def sliced(nearest):
        begin = tf.cast(tf.round(edges[:2]), tf.int32)
        size = tf.maximum(tf.cast(tf.round(edges[2:]), tf.int32) - begin, 1)
        crop = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
        crop = tf.cond(flip, lambda: tf.reverse(crop, [1]), lambda: crop)
        out = tf.image.resize(crop, [out_h, out_w], method="nearest" if nearest else "bilinear")
        return tf.cast(out, tf.float32)

    def sampled(nearest):
        # The block of output rows / columns that sample inside the image (contiguous).
        def span(inside):
            count = tf.reduce_sum(tf.cast(inside, tf.int32))
            start = tf.where(count > 0, tf.argmax(tf.cast(inside, tf.int32), output_type=tf.int32), 0)
            return start, tf.maximum(count, 1)  # an empty block is computed as 1 masked pixel

        r0, nr = span(inside_y)
        c0, nc = span(inside_x)
        first = tf.stack([tf.gather(ys, r0), tf.gather(xs, c0)]) * hw - 0.5  # pixel centres
        last = tf.stack([tf.gather(ys, r0 + nr - 1), tf.gather(xs, c0 + nc - 1)]) * hw - 0.5
        needs_pad = tf.reduce_any(first < 0.0) | tf.reduce_any(last > hw - 1.0) | tf.reduce_any(hw < 2.0)

        def crop(source, offset, denom):
            y1, x1 = tf.unstack((first + offset) / denom)
            y2, x2 = tf.unstack((last + offset) / denom)
            x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
            boxes = tf.stack([y1, x1, y2, x2])[tf.newaxis]
            return tf.image.crop_and_resize(source[tf.newaxis], boxes, tf.zeros([1], tf.int32),
                                            tf.stack([nr, nc]),
                                            method="nearest" if nearest else "bilinear")[0]

        def padded():
            # Replicate the border once so samples near it clamp like tf.image.resize.
            source = tf.concat([image[:1], image, image[-1:]], axis=0)
            source = tf.concat([source[:, :1], source, source[:, -1:]], axis=1)
            return crop(source, 1.0, hw + 1.0)

        block = tf.cond(needs_pad, padded, lambda: crop(image, 0.0, tf.maximum(hw - 1.0, 1.0)))
        left = tf.where(flip, out_w - c0 - nc, c0)
        return tf.pad(block, [[r0, out_h - r0 - nr], [left, out_w - left - nc], [0, 0]])

    branch = tf.cast(~fast, tf.int32) * 2 + tf.cast(method, tf.int32)
    pixels = tf.switch_case(branch, [lambda: sliced(False), lambda: sliced(True),
                                     lambda: sampled(False), lambda: sampled(True)])
    pixels = tf.ensure_shape(pixels, [out_h, out_w, channels])
    inside_x = tf.where(flip, tf.reverse(inside_x, [0]), inside_x)
    return pixels, inside_y, inside_x
