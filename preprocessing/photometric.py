"""Photometric (colour) distortions, stateless and per-pixel, on float RGB images in 0..255.

Two recipes live here:

* :func:`caffe_distort` is Caffe SSD's ``DistortionParameter`` (``ApplyDistort`` in
  ``src/caffe/util/im_transforms.cpp``): brightness, contrast, saturation and hue, each applied
  with probability 0.5, in one of two orders picked with probability 0.5, then an optional
  random channel order. Caffe works on uint8 BGR and saturates to 0..255 after every step; we
  work on float RGB and clip to 0..255 after every step (no rounding to integers).
* :func:`original_distort_color` is balancap/SSD-Tensorflow's ``distort_color`` (one of four
  orders of brightness, saturation, hue and contrast, every op always applied, clip at the end).

Every op here is *per pixel* except ``tf.image.adjust_contrast`` in the original's recipe, so
the Caffe distortions can run on the small output image instead of the full input image (see
``docs/preprocessing.md``). Randomness comes only from ``tf.random.stateless_*`` with an explicit
``seed`` of shape [2], so the same seed always gives the same image. The draws
(``caffe_draws``/``original_draws``) are separate from the pixel work (``apply_caffe``/
``apply_original``) so that the latter can be XLA-compiled while the random numbers stay the
host's stateless ones.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

# Caffe's OpenCV 8-bit HSV stores hue as degrees / 2, i.e. on a 0..180 scale, while
# tf.image.adjust_hue takes a fraction of the full hue circle in [-1, 1]. Caffe's hue_delta 18
# (ssd_pascal.py) is therefore 18 / 180 = 0.1 of the circle (36 degrees).
CAFFE_HUE_SCALE = 180.0


@dataclasses.dataclass(frozen=True)
class PhotometricParams:
    """Caffe SSD ``distort_param`` (values from ``examples/ssd/ssd_pascal.py``).

    Brightness and hue deltas are in Caffe's units: brightness in 0..255 intensity steps, hue on
    OpenCV's 0..180 hue scale (converted to ``tf.image.adjust_hue``'s fraction of the circle by
    dividing by 180). Contrast is Caffe's: a plain multiplication of every channel (``convertTo``
    with alpha), *not* ``tf.image.adjust_contrast``'s blend towards the mean.
    """

    brightness_prob: float = 0.5
    brightness_delta: float = 32.0
    contrast_prob: float = 0.5
    contrast_lower: float = 0.5
    contrast_upper: float = 1.5
    hue_prob: float = 0.5
    hue_delta: float = 18.0
    saturation_prob: float = 0.5
    saturation_lower: float = 0.5
    saturation_upper: float = 1.5
    # ssd_pascal.py sets random_order_prob 0.0: the channel swap exists but is off.
    random_order_prob: float = 0.0


CAFFE_PHOTOMETRIC = PhotometricParams()


def _uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=tf.float32)


def _clip(image: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(image, 0.0, 255.0)


def caffe_draws(seed: tf.Tensor, params: PhotometricParams = CAFFE_PHOTOMETRIC) -> dict[str, tf.Tensor]:
    """Draw the random choices of Caffe's ``ApplyDistort`` for one image (stateless).

    Drawn apart from :func:`apply_caffe` so the pixel work can run in an XLA-compiled function
    while the random numbers stay those of ``tf.random.stateless_*`` on the host.

    Returns a dict of scalars (and a [3] channel permutation): ``brightness`` (the delta, 0 when
    not applied), ``contrast_first`` / ``contrast_last`` (the factor for the order that applies,
    1 otherwise), ``saturation`` (factor), ``do_saturation``, ``hue`` (fraction of the circle),
    ``do_hue``, ``channels`` (a permutation of [0, 1, 2]).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    coins = _uniform(seeds[0], shape=[6])  # order, brightness, contrast, saturation, hue, channels
    contrast_first = coins[0] > 0.5  # Caffe: "if (prob > 0.5)" -> brightness, contrast, sat, hue.
    do_contrast = coins[2] < params.contrast_prob
    alpha = _uniform(seeds[2], params.contrast_lower, params.contrast_upper)
    delta = _uniform(seeds[1], -params.brightness_delta, params.brightness_delta)
    do_channels = coins[5] < params.random_order_prob
    perm = tf.argsort(_uniform(seeds[5], shape=[3]))
    return {
        "brightness": tf.where(coins[1] < params.brightness_prob, delta, 0.0),
        "contrast_first": tf.where(do_contrast & contrast_first, alpha, 1.0),
        "contrast_last": tf.where(do_contrast & ~contrast_first, alpha, 1.0),
        "saturation": _uniform(seeds[3], params.saturation_lower, params.saturation_upper),
        "do_saturation": coins[3] < params.saturation_prob,
        "hue": _uniform(seeds[4], -params.hue_delta, params.hue_delta) / CAFFE_HUE_SCALE,
        "do_hue": coins[4] < params.hue_prob,
        "channels": tf.where(do_channels, perm, tf.range(3, dtype=perm.dtype)),
    }


def apply_caffe(image: tf.Tensor, draws: dict[str, tf.Tensor], channel_swap: bool = False) -> tf.Tensor:
    """Apply drawn Caffe distortions (:func:`caffe_draws`) to float32 RGB [..., 3] in 0..255.

    Brightness and contrast are applied always, with 0 / 1 when skipped (then the clip is a
    no-op on a 0..255 image); saturation and hue only when drawn (``tf.cond``).
    """
    image = _clip(image + draws["brightness"])
    image = _clip(image * draws["contrast_first"])
    image = tf.cond(draws["do_saturation"],
                    lambda: _clip(tf.image.adjust_saturation(image, draws["saturation"])), lambda: image)
    image = tf.cond(draws["do_hue"], lambda: _clip(tf.image.adjust_hue(image, draws["hue"])), lambda: image)
    image = _clip(image * draws["contrast_last"])
    if channel_swap:
        image = tf.gather(image, draws["channels"], axis=-1)
    return image


def caffe_distort(image: tf.Tensor, seed: tf.Tensor,
                  params: PhotometricParams = CAFFE_PHOTOMETRIC) -> tf.Tensor:
    """Caffe SSD's ``ApplyDistort`` on a float32 RGB image [H, W, 3] with values in 0..255.

    Order (Caffe): with probability 0.5 brightness, contrast, saturation, hue; otherwise
    brightness, saturation, hue, contrast; then a random channel order with
    ``params.random_order_prob``. Each of the four distortions is applied with its own
    probability. The result is clipped to 0..255 after every step, as Caffe's uint8 ``convertTo``
    saturates.

    Args:
      image: float32 [H, W, 3] RGB in 0..255.
      seed: int [2] stateless seed.
      params: the distortion parameters (Caffe's by default).

    Returns:
      float32 [H, W, 3] RGB in 0..255.
    """
    return apply_caffe(image, caffe_draws(seed, params), params.random_order_prob > 0.0)


# balancap/SSD-Tensorflow distort_color (fast_mode=False): brightness max_delta 32/255,
# saturation and contrast in [0.5, 1.5], hue max_delta 0.2 (fraction of the circle).
ORIGINAL_BRIGHTNESS_DELTA = 32.0  # 32/255 on its [0, 1] scale = 32 on ours.
ORIGINAL_HUE_DELTA = 0.2


def original_draws(seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Random choices of the original's ``distort_color`` (order 0..3 and the four amounts)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    return {
        "order": tf.random.stateless_uniform([], seed=seeds[0], minval=0, maxval=4, dtype=tf.int32),
        "brightness": _uniform(seeds[1], -ORIGINAL_BRIGHTNESS_DELTA, ORIGINAL_BRIGHTNESS_DELTA),
        "saturation": _uniform(seeds[2], 0.5, 1.5),
        "hue": _uniform(seeds[3], -ORIGINAL_HUE_DELTA, ORIGINAL_HUE_DELTA),
        "contrast": _uniform(seeds[4], 0.5, 1.5),
    }


def apply_original(image: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
    """Apply drawn original distortions (:func:`original_draws`) to float32 RGB in 0..255."""
    def b(x):
        return x + draws["brightness"]

    def s(x):
        return tf.image.adjust_saturation(x, draws["saturation"])

    def h(x):
        return tf.image.adjust_hue(x, draws["hue"])

    def c(x):
        return tf.image.adjust_contrast(x, draws["contrast"])

    # The four orders of the original's distort_color (color_ordering 0..3).
    orders = ((b, s, h, c), (s, b, c, h), (c, h, b, s), (h, s, c, b))

    def branch(ops):
        def run():
            x = image
            for op in ops:
                x = op(x)
            return x
        return run

    return _clip(tf.switch_case(draws["order"], [branch(ops) for ops in orders]))


def original_distort_color(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """balancap/SSD-Tensorflow's ``distort_color`` on float32 RGB in 0..255.

    One of four orders is picked uniformly; all four ops are always applied with random
    amounts; the result is clipped to 0..255 at the end only (the original clipped to [0, 1]
    after working on a [0, 1] image; every op involved is scale-equivariant, so working on
    0..255 gives 255 times its result). Contrast here is ``tf.image.adjust_contrast`` (blend
    towards the per-channel mean), as in the original.
    """
    return apply_original(image, original_draws(seed))
