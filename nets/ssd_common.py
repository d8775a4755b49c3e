"""Helpers shared by every SSD network: flattening per-layer outputs in anchor order."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf


def flatten_layers(tensors: Sequence[tf.Tensor], last_dim: int) -> tf.Tensor:
    """Concatenate per-layer tensors [N, h, w, A, D] into [N, sum(h*w*A), D].

    The order is (layer, row, column, anchor), the order of ``net.anchors()``.
    """
    flat = []
    for t in tensors:
        # A static anchor count (h*w*A) keeps the [N, A, D] shape static in tf.function graphs.
        inner = t.shape[1:-1]
        size = int(np.prod(inner)) if inner.is_fully_defined() else -1
        flat.append(tf.reshape(t, [tf.shape(t)[0], size, last_dim]))
    return tf.concat(flat, axis=1)


def flatten_outputs(out: Mapping[str, Sequence[tf.Tensor]]) -> dict[str, tf.Tensor]:
    """Flatten the network's output dict (DESIGN.md §8).

    Args:
      out: ``{'logits': [N,h,w,A,C] per layer, 'predictions': same, 'localisations':
        [N,h,w,A,4] per layer}`` as returned by ``net(images)``.

    Returns:
      ``{'logits': [N, num_anchors, C], 'predictions': [N, num_anchors, C],
      'localisations': [N, num_anchors, 4]}`` (Caffe ``(x, y, w, h)`` offsets), rows in the
      order of ``net.anchors()``. Entries already flat (a tensor, not a list) pass through.
    """
    result = {}
    for key in ("logits", "predictions", "localisations"):
        value = out[key]
        if isinstance(value, (list, tuple)):
            last_dim = 4 if key == "localisations" else int(value[0].shape[-1])
            value = flatten_layers(value, last_dim)
        result[key] = value
    return result


def feature_map(end_points: Mapping[str, Any], params, index: int):
    """The end point of feature layer ``index``, checked against ``params.feat_shapes``.

    Raises ValueError naming the layer when it is not an end point or its (h, w) differs from
    the params (the anchors would then not match the outputs).
    """
    layer = params.feat_layers[index]
    if layer not in end_points:
        raise ValueError(f"Feature layer {layer!r} is not an end point of this net "
                         f"({', '.join(end_points)}).")
    x = end_points[layer]
    expected = tuple(params.feat_shapes[index])
    actual = tuple(x.shape[1:3])
    if actual != expected:
        raise ValueError(f"SSDParams.feat_shapes[{index}] is {expected}, but {layer} is {actual} "
                         f"for img_shape {tuple(params.img_shape)}: use "
                         f"params.with_img_shape({tuple(params.img_shape)}).")
    return x

