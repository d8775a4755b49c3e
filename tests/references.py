"""Independent NumPy references shared by the tests: plain loops, checkable by hand.

- :func:`iou`: intersection over union of two boxes (Caffe's JaccardOverlap, VOC without +1).
- Caffe SSD's layers (caffe/src/caffe/layers): :func:`caffe_conv`, :func:`caffe_max_pool`,
  :func:`caffe_normalize`, all on NHWC arrays with HWIO weights; :func:`nchw` adapts them to
  Caffe's own [C, H, W] blobs with [O, C, kh, kw] weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (ymin, xmin, ymax, xmax) boxes, plain floats; 0 for empty unions."""
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def caffe_conv(x, w, b, pad=0, stride=1, dilation=1, relu=True):
    """Caffe Convolution on NHWC x [N,H,W,C], weights HWIO: symmetric zero pad, floor rule;
    float64 accumulation."""
    kh, kw = w.shape[0], w.shape[1]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[1] + 2 * pad - (dilation * (kh - 1) + 1)) // stride + 1
    out_w = (x.shape[2] + 2 * pad - (dilation * (kw - 1) + 1)) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, w.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dilation: i * dilation + stride * (out_h - 1) + 1: stride,
                       j * dilation: j * dilation + stride * (out_w - 1) + 1: stride, :]
            y += patch.astype(np.float64) @ w[i, j].astype(np.float64)
    y += b
    return np.maximum(y, 0) if relu else y


def caffe_max_pool(x, kernel, stride, pad=0):
    """Caffe Pooling (MAX) on NHWC: ceil-mode output size; with padding, the last window must
    start inside the image (+pad); windows clipped to the image."""
    n, h, w, c = x.shape

    def out_size(size):
        pooled = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
        if pad and (pooled - 1) * stride >= size + pad:
            pooled -= 1
        return pooled

    out_h, out_w = out_size(h), out_size(w)
    y = np.empty((n, out_h, out_w, c), x.dtype)
    for ph in range(out_h):
        for pw in range(out_w):
            hs, ws = max(ph * stride - pad, 0), max(pw * stride - pad, 0)
            he, we = min(ph * stride - pad + kernel, h), min(pw * stride - pad + kernel, w)
            y[:, ph, pw] = x[:, hs:he, ws:we].max(axis=(1, 2))
    return y


def caffe_normalize(x, scale, eps=1e-10):
    """Caffe SSD Normalize (across_spatial false, channel_shared false) on NHWC, float64."""
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).sum(-1, keepdims=True) + eps) * scale


def nchw(layer, x, *weights, **kwargs):
    """Run an NHWC reference ``layer`` on a Caffe blob x [C, H, W] (batch of one) with Caffe
    weights ([O, C, kh, kw] kernel, then bias or scale); returns [C', H', W'] float32."""
    if weights and np.ndim(weights[0]) == 4:
        weights = (np.transpose(weights[0], (2, 3, 1, 0)),) + tuple(weights[1:])
    y = layer(np.transpose(x, (1, 2, 0))[None], *weights, **kwargs)
    return np.transpose(y[0], (2, 0, 1)).astype(np.float32)
