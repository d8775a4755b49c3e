"""Keras 3 layers of the SSD-VGG nets: a TF-Slim-like conv and Caffe's L2 ``Normalize``.

Both keep their weights in TF-Slim's layout (conv kernels HWIO ``[kh, kw, in, out]``), so a
TF1 checkpoint loads without transposes. The project runs on the TensorFlow backend only.
"""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

# Caffe's Normalize layer adds eps inside the square root: norm = sqrt(sum(x^2) + eps),
# eps default 1e-10 (caffe.proto NormalizeParameter).
CAFFE_NORMALIZE_EPS = 1e-10


class SlimConv2D(keras.layers.Layer):
    """2-D convolution + bias (+ ReLU), NHWC, with TF-Slim's defaults.

    Written with ``tf.nn.conv2d`` + ``tf.nn.bias_add`` + ``tf.nn.relu`` rather than
    ``keras.layers.Conv2D`` because Keras 3 adds the bias with a reshape + ``AddV2``, which
    TensorFlow's graph optimizer does not fuse; ``Conv2D -> BiasAdd -> Relu`` becomes one
    fused oneDNN kernel inside a ``tf.function`` (measured in bench/bench_nets.py).

    Weights: ``kernel`` [kh, kw, in, out] (Glorot-uniform = slim's xavier_initializer),
    ``bias`` [out] (zeros; none with ``use_bias=False``). ``padding`` is TensorFlow's 'SAME' or 'VALID'.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "SAME",
                 dilation_rate: int = 1, activation: Optional[str] = "relu",
                 use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if activation not in ("relu", None):
            raise ValueError(f"activation is {activation!r}, but must be 'relu' or None.")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding.upper()
        self.dilation_rate = int(dilation_rate)
        self.activation = activation
        self.use_bias = bool(use_bias)

    def build(self, input_shape) -> None:
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
            initializer="glorot_uniform")
        # No bias before a BatchNorm (its beta is the bias), as TF-Slim's conv2d with a normalizer.
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                     if self.use_bias else None)

    def call(self, inputs):
        x = tf.nn.conv2d(inputs, self.kernel, strides=self.strides, padding=self.padding,
                         dilations=self.dilation_rate)
        if self.bias is not None:
            x = tf.nn.bias_add(x, self.bias)
        if self.activation == "relu":
            x = tf.nn.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape

        def out(size):
            if size is None:
                return None
            if self.padding == "SAME":
                return -(-size // self.strides)
            effective = (self.kernel_size - 1) * self.dilation_rate + 1
            return (size - effective) // self.strides + 1

        return (n, out(h), out(w), self.filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding, dilation_rate=self.dilation_rate,
                      activation=self.activation, use_bias=self.use_bias)
        return config


class L2Normalization(keras.layers.Layer):
    """Caffe SSD's ``Normalize`` layer (across_spatial=false, channel_shared=false), NHWC.

    ``y = x / sqrt(sum_c x^2 + eps) * gamma`` with one learned ``gamma`` per channel,
    initialised to ``scale`` (20 for conv4_3 in Caffe SSD). Computed in float32 even under a
    bfloat16 policy, because a 512-term sum of squares in bfloat16 loses too much.
    """

    def __init__(self, scale: float = 20.0, eps: float = CAFFE_NORMALIZE_EPS, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.eps = float(eps)

    def build(self, input_shape) -> None:
        self.gamma = self.add_weight(name="gamma", shape=(int(input_shape[-1]),),
                                     initializer=keras.initializers.Constant(self.scale))

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        inv_norm = tf.math.rsqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True) + self.eps)
        y = x * inv_norm * tf.cast(self.gamma, tf.float32)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(scale=self.scale, eps=self.eps)
        return config
