"""Input pipelines: decoded dataset -> preprocessing -> target encoding -> batch -> prefetch.

The datasets these take are ``tf.data.Dataset``s of dicts as produced by
``datasets.dataset_factory.get_dataset(...).read()`` (DESIGN §8): ``image`` uint8 [H, W, 3],
``shape`` int64 [3], ``object/bbox`` float32 [n, 4] ``(ymin, xmin, ymax, xmax)`` normalized,
``object/label`` int64 [n], ``object/difficult`` int64 [n], ``filename`` string, and
``object/iscrowd`` int64 [n] (COCO's crowd flags; zeros for VOC records). This module
does not import ``datasets`` or ``nets``: anchors come in as an array ([A, 4], the order of
``net.anchors()``).

Randomness: example ``i`` of the stream (counted after any repeat/shuffle the caller did) is
augmented with the stateless seed ``(seed, i)``, so a pipeline built twice with the same
``seed`` over the same ordered input yields the same batches, whatever the parallelism.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tf_extended import targets

AUTOTUNE = tf.data.AUTOTUNE


def _default_encode_fn() -> Callable:
    return targets.encode_targets


def _default_batch_encode_fn() -> Callable:
    return targets.batch_encode_targets


def train_dataset(ds: tf.data.Dataset, preprocess_fn: Callable, anchors: np.ndarray | tf.Tensor,
                  batch_size: int, *, out_shape: Sequence[int], seed: int = 0,
                  encode_fn: Callable | None = None, encode_options: dict | None = None,
                  encode_per_example: bool = True,
                  ignore_difficult: bool = False,
                  ignore_crowd: bool = True,
                  shuffle_buffer: int = 0,
                  num_parallel_calls: int = AUTOTUNE, drop_remainder: bool = True,
                  prefetch: int = AUTOTUNE) -> tf.data.Dataset:
    """The training input pipeline.

    Args:
      ds: dataset of decoded example dicts (see the module doc); repeat/shuffle it before if
        wanted (``DatasetSpec.read(shuffle=True, seed=..., repeat=True)``).
      preprocess_fn: ``preprocessing_factory.get_preprocessing(name, is_training=True, ...)``.
      anchors: [A, 4] ``(ymin, xmin, ymax, xmax)`` normalized, e.g. ``net.anchors()``.
      batch_size: examples per batch.
      out_shape: (height, width) of the network input, e.g. ``params.img_shape``.
      seed: base seed; example ``i`` uses the stateless seed ``(seed, i)``.
      encode_fn: ``tf_extended.targets.encode_targets`` (default) or a function of the same
        signature; with ``encode_per_example=False``, ``batch_encode_targets`` (default) or one
        of its signature.
      encode_options: extra keyword arguments for the encoder (``matching``,
        ``match_threshold``, ``prior_scaling``, ...).
      encode_per_example: encode inside the per-example parallel map (default) or once per
        padded batch with ``batch_encode_targets``.
      ignore_difficult: pass the difficult flags of the kept boxes to the encoder with
        ``ignore_difficult=True`` (anchors matched to them get label -1). The preprocessing
        function must accept ``return_difficult`` (ours does).
      ignore_crowd: when the examples have ``object/iscrowd``, carry the crowd flags through
        the augmentation and give them to the encoder (``gt_crowd``): crowd boxes are neither
        positives nor negatives (``tf_extended.targets``). The preprocessing function must
        accept ``iscrowd`` and ``return_iscrowd`` (ours does).
      shuffle_buffer: if > 0, shuffle examples (seeded with ``seed``) before augmentation.
      num_parallel_calls: parallelism of the per-example map.
      drop_remainder: drop a last partial batch (static batch size).
      prefetch: prefetch buffer in batches.

    Returns:
      Dataset of ``(images, targets)``: images float32 [N, h, w, 3]; targets a dict with
      ``labels`` int64 [N, A], ``localisations`` float32 [N, A, 4] (Caffe ``(x, y, w, h)``
      offsets), ``scores`` float32 [N, A], and ``image_ids`` string [N] (the examples'
      ``filename``, to name images in error messages).
    """
    out_shape = tuple(int(v) for v in out_shape)
    anchors = tf.constant(np.asarray(anchors, np.float32))
    options = dict(encode_options or {})
    if ignore_difficult:
        options["ignore_difficult"] = True
    if encode_fn is None:
        encode_fn = _default_encode_fn() if encode_per_example else _default_batch_encode_fn()
    base_seed = tf.constant(int(seed), tf.int64)
    use_crowd = (ignore_crowd and isinstance(ds.element_spec, dict)
                 and "object/iscrowd" in ds.element_spec)

    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def augment(index, example):
        kwargs = {"return_difficult": True} if ignore_difficult else {}
        if use_crowd:
            kwargs.update(iscrowd=example["object/iscrowd"], return_iscrowd=True)
        result = preprocess_fn(example["image"], example["object/label"], example["object/bbox"],
                               out_shape, difficult=example["object/difficult"],
                               seed=tf.stack([base_seed, index]), **kwargs)
        image, labels, bboxes = result[:3]
        extra = list(result[3:])
        difficult = extra.pop(0) if ignore_difficult else None
        crowd = extra.pop(0) if use_crowd else None
        return image, labels, bboxes, difficult, crowd, example["filename"]

    def per_example(index, example):
        image, labels, bboxes, difficult, crowd, filename = augment(index, example)
        kwargs = dict(options)
        if difficult is not None:
            kwargs["gt_difficult"] = difficult
        if crowd is not None:
            kwargs["gt_crowd"] = crowd
        glabels, glocalisations, gscores = encode_fn(labels, bboxes, anchors, **kwargs)
        return image, {"labels": glabels, "localisations": glocalisations, "scores": gscores,
                       "image_ids": filename}

    ds = ds.enumerate()
    if encode_per_example:
        ds = ds.map(per_example, num_parallel_calls=num_parallel_calls, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        def preprocess_only(index, example):
            image, labels, bboxes, difficult, crowd, filename = augment(index, example)
            item = {"image": image, "labels": labels, "bboxes": bboxes,
                    "num_gt": tf.shape(labels)[0], "filename": filename}
            if difficult is not None:
                item["difficult"] = difficult
            if crowd is not None:
                item["iscrowd"] = crowd
            return item

        def encode_batch(batch):
            kwargs = dict(options)
            if "difficult" in batch:
                kwargs["gt_difficult"] = batch["difficult"]
            if "iscrowd" in batch:
                kwargs["gt_crowd"] = batch["iscrowd"]
            glabels, glocalisations, gscores = encode_fn(
                batch["labels"], batch["bboxes"], anchors, num_gt=batch["num_gt"], **kwargs)
            return batch["image"], {"labels": glabels, "localisations": glocalisations,
                                    "scores": gscores, "image_ids": batch["filename"]}

        ds = ds.map(preprocess_only, num_parallel_calls=num_parallel_calls, deterministic=True)
        ds = ds.padded_batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(encode_batch, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.prefetch(prefetch)


# Keys of the decoded examples that eval_dataset passes on when the reader gives them
# (datasets.tfrecords: COCO records' image id, crowd flags and areas) -> their info names.
_COCO_INFO_KEYS = {"coco_id": "coco_id", "object/iscrowd": "iscrowd", "object/area": "area"}


def eval_dataset(ds: tf.data.Dataset, preprocess_fn: Callable, batch_size: int, *,
                 out_shape: Sequence[int] | None, max_boxes: int | None = None,
                 num_parallel_calls: int = AUTOTUNE, drop_remainder: bool = False,
                 prefetch: int = AUTOTUNE) -> tf.data.Dataset:
    """The evaluation input pipeline.

    Args:
      ds: dataset of decoded example dicts (see the module doc), in evaluation order.
      preprocess_fn: ``preprocessing_factory.get_preprocessing(name, is_training=False, ...)``
        (bind ``resize=`` there; WARP_RESIZE by default).
      batch_size: examples per batch (the last batch may be smaller).
      out_shape: (height, width) of the network input; None with ``Resize.NONE`` for images
        kept at their own sizes (batch size 1 unless they are all alike).
      max_boxes: pad the ground truth to this many boxes (fixed shapes, e.g. for
        tf.distribute); default pads to the largest count in each batch. An image with more
        boxes than ``max_boxes`` raises an error naming it.
      num_parallel_calls, drop_remainder, prefetch: as usual.

    Returns:
      Dataset of ``(images, info)``: images float32 [N, h, w, 3] (with ``Resize.NONE``, padded
      to the largest image of the batch with 0 = the mean); info a dict of
      ``labels`` int64 [N, G], ``bboxes`` float32 [N, G, 4] ``(ymin, xmin, ymax, xmax)``
      normalized to the *original* image, ``difficult`` int64 [N, G], ``num_gt`` int32 [N]
      (rows past num_gt are padding: label 0, box 0), ``bbox_img`` float32 [N, 4] (the original
      image's extent in network-input units: map detections back with
      ``ssd_vgg_preprocessing.bboxes_to_original(det, bbox_img)``), ``shape`` int64 [N, 3]
      (original height, width, channels) and ``filename`` string [N]; from examples that
      have them (``datasets.tfrecords``: ``coco_id``, ``object/iscrowd``, ``object/area``),
      ``coco_id`` int64 [N], ``iscrowd`` int64 [N, G] and ``area`` float32 [N, G].
    """
    out_shape = None if out_shape is None else tuple(int(v) for v in out_shape)

    def preprocess(example):
        labels = example["object/label"]
        bboxes = tf.cast(example["object/bbox"], tf.float32)
        difficult = example["object/difficult"]
        image, _, _, bbox_img = preprocess_fn(example["image"], labels, bboxes, out_shape,
                                              difficult=difficult)
        num_gt = tf.shape(labels)[0]
        if max_boxes is not None:
            check = tf.debugging.Assert(num_gt <= max_boxes, [
                "eval_dataset: image", example["filename"], "has", num_gt,
                "boxes, more than max_boxes =", max_boxes])
            with tf.control_dependencies([check]):
                num_gt = tf.identity(num_gt)
        info = {"labels": labels, "bboxes": bboxes, "difficult": difficult,
                "num_gt": num_gt, "bbox_img": bbox_img, "shape": example["shape"],
                "filename": example["filename"]}
        for key, name in _COCO_INFO_KEYS.items():  # COCO metrics: ids, crowd flags, areas
            if key in example:
                info[name] = example[key]
        return image, info

    ds = ds.map(preprocess, num_parallel_calls=num_parallel_calls, deterministic=True)
    g = max_boxes
    info_shapes = {"labels": [g], "bboxes": [g, 4], "difficult": [g], "num_gt": [],
                   "bbox_img": [4], "shape": [3], "filename": []}
    info_shapes.update({name: shape for name, shape in (("coco_id", []), ("iscrowd", [g]), ("area", [g]))
                        if name in ds.element_spec[1]})
    padded_shapes = ([None, None, 3], info_shapes)
    ds = ds.padded_batch(batch_size, padded_shapes=padded_shapes, drop_remainder=drop_remainder)
    return ds.prefetch(prefetch)
