"""Independent NumPy references shared by the tests: plain loops, checkable by hand.

- :func:`iou`: intersection over union of two boxes (Caffe's JaccardOverlap, VOC without +1).
- Caffe SSD's layers (caffe/src/caffe/layers): :func:`caffe_conv`, :func:`caffe_max_pool`,
  :func:`caffe_normalize`, all on NHWC arrays with HWIO weights; :func:`nchw` adapts them to
  Caffe's own [C, H, W] blobs with [O, C, kh, kw] weights.
- The VOC devkit: :func:`vocevaldet` (VOCevaldet.m / VOCap.m transcribed), with
  :func:`read_voc_xml` (the annotation files) and :func:`read_comp4` (the results files).
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


# -- The VOC devkit's VOCevaldet.m, transcribed ------------------------------------------------
#
# Written from VOCevaldet.m (VOCdevkit 2007: the 11-point AP inside it; 2010+: VOCap.m) one
# MATLAB statement at a time, in plain Python: MATLAB's sort is stable, max() skips NaN (NaN
# only when every element is NaN), 0/0 is NaN, and ``t=0:0.1:1`` is built like MATLAB's colon
# (first half from the start, second half from the end). Independent of tf_extended.metrics.

def matlab_0_to_1_by_tenths() -> list[float]:
    """MATLAB's ``0:0.1:1``: elements k < 5 are ``0 + k*0.1``, the others ``1 - (10-k)*0.1``."""
    return [0.0 + k * 0.1 if k < 5 else 1.0 - (10 - k) * 0.1 for k in range(11)]


def _matlab_max(values: Sequence[float]) -> float | None:
    """MATLAB's max of a vector: None for an empty one, NaN only when all are NaN."""
    if not values:
        return None
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def read_voc_xml(path: str) -> list[tuple[str, tuple[float, float, float, float], bool]]:
    """PASreadrecord.m's objects: (class, (xmin, ymin, xmax, ymax), difficult) in file order."""
    import xml.etree.ElementTree as ET

    objects = []
    for obj in ET.parse(path).getroot().findall("object"):
        box = obj.find("bndbox")
        bbox = tuple(float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.find("difficult")
        objects.append((obj.find("name").text.strip(), bbox,
                        difficult is not None and difficult.text.strip() == "1"))
    return objects


def read_comp4(path: str) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """``textread(file, '%s %f %f %f %f %f')``: (image id, confidence, (b1, b2, b3, b4)) per line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                rows.append((parts[0], float(parts[1]), tuple(float(v) for v in parts[2:6])))
    return rows


def vocevaldet(gt: dict, detections: Sequence[tuple], cls: str, minoverlap: float = 0.5) -> dict:
    """VOCevaldet.m for one class.

    Args:
      gt: {image id: [(class, (xmin, ymin, xmax, ymax), difficult), ...]} for every image of
        the test set (the image set file, in its order).
      detections: the results file's lines, in file order: (image id, confidence, box).
      cls: the class.

    Returns:
      {'rec', 'prec' (lists), 'ap07' (VOC2007's 11-point AP), 'ap12' (VOCap), 'npos'}.
    """
    records = {}
    npos = 0
    for image_id, objects in gt.items():
        clsinds = [o for o in objects if o[0] == cls]
        records[image_id] = {"BB": [o[1] for o in clsinds], "diff": [o[2] for o in clsinds],
                             "det": [False] * len(clsinds)}
        npos += sum(1 for o in clsinds if not o[2])
    confidence = [d[1] for d in detections]
    si = sorted(range(len(confidence)), key=lambda k: -confidence[k])  # [sc,si]=sort(-confidence)
    ids = [detections[k][0] for k in si]
    BB = [detections[k][2] for k in si]
    nd = len(confidence)
    tp = [0.0] * nd
    fp = [0.0] * nd
    for d in range(nd):
        if ids[d] not in records:
            raise ValueError(f'unrecognized image "{ids[d]}"')
        rec = records[ids[d]]
        bb = BB[d]
        ovmax = -math.inf
        jmax = None
        for j, bbgt in enumerate(rec["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
        if ovmax >= minoverlap:
            if not rec["diff"][jmax]:
                if not rec["det"][jmax]:
                    tp[d] = 1.0
                    rec["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    for d in range(1, nd):  # fp=cumsum(fp); tp=cumsum(tp);
        fp[d] += fp[d - 1]
        tp[d] += tp[d - 1]
    rec = [t / npos if npos else math.nan for t in tp]
    prec = [t / (f + t) if f + t else math.nan for t, f in zip(tp, fp)]
    ap07 = 0.0
    for t in matlab_0_to_1_by_tenths():
        p = _matlab_max([p for p, r in zip(prec, rec) if r >= t])
        if p is None:
            p = 0.0
        ap07 = ap07 + p / 11
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = _matlab_max([mpre[i], mpre[i + 1]])
    ap12 = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap12 = ap12 + (mrec[i] - mrec[i - 1]) * mpre[i]
    return {"rec": rec, "prec": prec, "ap07": ap07, "ap12": ap12, "npos": npos}
