"""int8 calibration data: images from TFRecords through the project's eval preprocessing.

The converter measures the range of every activation on these inputs, so they must look like
what the model will see: real images of the task, warp-resized like evaluation does
(:func:`deploy.graph.make_tflite_input_fn`: the TFLite model's input, RGB 0..255).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from deploy.graph import make_tflite_input_fn


class CalibrationError(ValueError):
    """No usable calibration images (missing files, an empty split, unreadable records)."""

    exit_code = 1


def calibration_images(dataset_spec, preprocessing_name: str, img_shape: Sequence[int],
                       count: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``count`` model inputs float32 [1, h, w, 3] from a dataset split.

    Args:
      dataset_spec: a ``datasets.dataset_factory.DatasetSpec`` (its ``read()``).
      preprocessing_name: the eval preprocessing's name (the model name).
      img_shape: the net input (h, w).
      count: how many images (the first ``count`` of a seeded shuffle of the split).

    Raises:
      CalibrationError: no TFRecord file, an empty split, or records that do not decode
        (the message names the files).
    """
    if count < 1:
        raise CalibrationError(f"calibration count is {count}; need at least 1 image")
    where = " or ".join(dataset_spec.file_patterns)
    try:
        dataset = dataset_spec.read(shuffle=True, seed=seed)
    except FileNotFoundError as err:
        raise CalibrationError(f"calibration data: {err}") from None
    resize = make_tflite_input_fn(preprocessing_name, img_shape)
    images = []
    try:
        for example in dataset.take(count):
            net_input, _ = resize(example["image"])
            images.append(net_input.numpy()[np.newaxis])
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
            tf.errors.NotFoundError) as err:
        first = (err.message or str(err)).strip().splitlines()[0]
        raise CalibrationError(f"calibration data {where}: unreadable records ({first})") from None
    if not images:
        raise CalibrationError(f"calibration data {where}: the split holds no image")
    return images
