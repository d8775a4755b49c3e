"""Helpers shared by the eval tests, and checks of the helpers themselves.

- :func:`reference_voc`: a slow, obviously-correct Pascal VOC AP (VOC07 11-point and VOC12
  area), written from the devkit's description (DESIGN.md §3), pure Python loops.
- :func:`plant_ssd`: an SSD300 whose weights make it output the same few chosen detections
  for every image: every weight is zero except the class-head biases (background wins
  everywhere) and, on the last (1x1) feature layer, the biases that decode into the chosen
  boxes and classes. A real network, real checkpoint, known output.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest

from tests.references import iou


def reference_voc(images: Sequence[dict], num_classes: int, threshold: float = 0.5,
                  use_difficult_flags: bool = True) -> dict:
    """VOC AP per class, the slow way.

    Args:
      images: dicts with ``gt_boxes`` [g, 4], ``gt_labels`` [g], ``gt_difficult`` [g],
        ``det_boxes`` [d, 4], ``det_labels`` [d], ``det_scores`` [d]; boxes
        (ymin, xmin, ymax, xmax) in one unit.
      num_classes: including the background (class 0 is never scored).
      use_difficult_flags: False counts difficult boxes as ordinary ones.

    Returns:
      ``{'AP_VOC07': {label: ap or nan}, 'AP_VOC12': {...}, 'mAP_VOC07', 'mAP_VOC12'}``;
      a class without (non-difficult) ground truth has AP nan and is left out of the mean.
    """
    ap07, ap12 = {}, {}
    for c in range(1, num_classes):
        dets = []
        npos = 0
        for i, im in enumerate(images):
            for g in range(len(im["gt_labels"])):
                hard = bool(im["gt_difficult"][g]) and use_difficult_flags
                if im["gt_labels"][g] == c and not hard:
                    npos += 1
            for k in range(len(im["det_labels"])):
                if im["det_labels"][k] == c:
                    dets.append((-float(im["det_scores"][k]), i, k))
        dets.sort(key=lambda t: t[0])  # Stable: equal scores keep image order.
        taken = set()
        tp, fp = [], []
        for _, i, k in dets:
            im = images[i]
            best, best_g = -1.0, -1
            for g in range(len(im["gt_labels"])):
                if im["gt_labels"][g] != c:
                    continue
                overlap = iou(im["det_boxes"][k], im["gt_boxes"][g])
                if overlap > best:
                    best, best_g = overlap, g
            if best >= threshold:  # VOCevaldet.m: ovmax >= minoverlap (DESIGN §3)
                if im["gt_difficult"][best_g] and use_difficult_flags:
                    continue  # Neither true nor false positive.
                if (i, best_g) not in taken:
                    taken.add((i, best_g))
                    tp.append(1.0), fp.append(0.0)
                else:
                    tp.append(0.0), fp.append(1.0)
            else:
                tp.append(0.0), fp.append(1.0)
        if npos == 0:
            ap07[c] = ap12[c] = math.nan
            continue
        recall, precision = [], []
        sum_tp = sum_fp = 0.0
        for t, f in zip(tp, fp):
            sum_tp += t
            sum_fp += f
            recall.append(sum_tp / npos)
            precision.append(sum_tp / (sum_tp + sum_fp))
        total = 0.0
        for t in (0.0, 0.1, 0.2, 0.1 * 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):  # MATLAB's 0:0.1:1
            candidates = [p for r, p in zip(recall, precision) if r >= t]
            total += max(candidates) if candidates else 0.0
        ap07[c] = total / 11.0
        mrec = [0.0] + recall + [1.0]
        mpre = [0.0] + precision + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap12[c] = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))

    def mean(aps):
        values = [v for v in aps.values() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    return {"AP_VOC07": ap07, "AP_VOC12": ap12, "mAP_VOC07": mean(ap07), "mAP_VOC12": mean(ap12)}


def plant_ssd(boxes: Sequence[Sequence[float]], classes: Sequence[int], logits: Sequence[float],
              num_classes: int = 21, model_name: str = "ssd_300_vgg"):
    """An SSD net that detects ``boxes`` (normalized network-input frame) for every image.

    The last feature layer of SSD300 is 1x1 with 4 anchors: anchor a gets class
    ``classes[a]`` with logit ``logits[a]`` against 0 for the others, and a localisation bias
    that decodes exactly to ``boxes[a]``. Every other anchor predicts the background with
    logit 10 (foreground scores ~4.5e-5, below the 0.01 selection threshold). Keep the
    logits >= 6 so that the other classes of a planted anchor stay below 0.01 too.
    """
    import dataclasses

    import tensorflow as tf

    from nets import nets_factory
    from tf_extended import boxes as tfe_boxes

    net_class = nets_factory.get_network(model_name)
    params = dataclasses.replace(net_class.default_params, num_classes=num_classes,
                                 no_annotation_label=num_classes)
    net = net_class(params)
    variables = net.variables_by_checkpoint_name()
    for var in variables.values():
        var.assign(tf.zeros_like(var))
    last = params.feat_layers[-1]
    for layer in params.feat_layers:
        bias = np.zeros(variables[f"{model_name}/{layer}_box/conv_cls/biases"].shape, np.float32)
        bias[0::num_classes] = 10.0  # Channels are anchor-major: a * num_classes + c.
        if layer == last:
            for a, (c, logit) in enumerate(zip(classes, logits)):
                bias[a * num_classes] = 0.0
                bias[a * num_classes + c] = logit
        variables[f"{model_name}/{layer}_box/conv_cls/biases"].assign(bias)
    num_last = params.num_anchors_per_location[-1]
    assert len(boxes) <= num_last and params.feat_shapes[-1] == (1, 1)
    anchors = net.anchors()[-num_last:][: len(boxes)]
    loc = np.zeros([num_last, 4], np.float32)
    loc[: len(boxes)] = tfe_boxes.encode(np.asarray(boxes, np.float32), anchors,
                                         params.prior_scaling).numpy()
    variables[f"{model_name}/{last}_box/conv_loc/biases"].assign(loc.reshape(-1))
    return net


def softmax_score(logit: float, num_classes: int) -> float:
    """Score of a class with ``logit`` when the other ``num_classes - 1`` logits are 0."""
    return math.exp(logit) / (math.exp(logit) + num_classes - 1)


# -- checks of the helpers -----------------------------------------------------------------

def _image(gt, gt_labels, gt_difficult, det, det_labels, det_scores):
    return {"gt_boxes": gt, "gt_labels": gt_labels, "gt_difficult": gt_difficult,
            "det_boxes": det, "det_labels": det_labels, "det_scores": det_scores}


A = [0.0, 0.0, 1.0, 1.0]
B = [0.0, 0.0, 0.5, 0.5]


def test_reference_voc_hand_values():
    # TP at 0.9 then FP at 0.8: precision (1, 1/2), recall (1, 1): both APs 1.
    res = reference_voc([_image([A], [1], [0], [A, B], [1, 1], [0.9, 0.8])], 2)
    assert res["AP_VOC07"][1] == pytest.approx(1.0) and res["AP_VOC12"][1] == pytest.approx(1.0)
    # FP first then TP: precision (0, 1/2), recall (0, 1): 11 points of 1/2; area 1/2.
    res = reference_voc([_image([A], [1], [0], [A, B], [1, 1], [0.8, 0.9])], 2)
    assert res["AP_VOC07"][1] == pytest.approx(0.5) and res["AP_VOC12"][1] == pytest.approx(0.5)
    # Two ground truths, one found: recall 1/2 -> VOC07 6/11 (t = 0 .. 0.5), VOC12 1/2.
    res = reference_voc([_image([A, B], [1, 1], [0, 0], [A], [1], [0.7])], 2)
    assert res["AP_VOC07"][1] == pytest.approx(6 / 11) and res["AP_VOC12"][1] == pytest.approx(0.5)
    # The same with B difficult: B is not to be found, so AP 1; a detection of B is ignored.
    res = reference_voc([_image([A, B], [1, 1], [0, 1], [B, A], [1, 1], [0.9, 0.7])], 2)
    assert res["AP_VOC07"][1] == pytest.approx(1.0) and res["AP_VOC12"][1] == pytest.approx(1.0)
    # A class without ground truth is nan and out of the mean.
    res = reference_voc([_image([A], [1], [0], [A, A], [1, 2], [0.9, 0.9])], 3)
    assert math.isnan(res["AP_VOC07"][2]) and res["mAP_VOC07"] == pytest.approx(1.0)


def test_plant_ssd_outputs_the_planted_boxes():
    import tensorflow as tf

    boxes = [[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8]]
    net = plant_ssd(boxes, [2, 5], [9.0, 6.0], num_classes=6)
    out = net(tf.random.uniform([1, 300, 300, 3], -100, 100), training=False)
    det = net.detected_bboxes(out)
    n = int(det["num_detections"][0])
    assert n == 2
    np.testing.assert_allclose(det["boxes"][0, :n].numpy(), boxes, atol=1e-5)
    assert det["classes"][0, :n].numpy().tolist() == [2, 5]
    np.testing.assert_allclose(det["scores"][0, :n].numpy(),
                               [softmax_score(9.0, 6), softmax_score(6.0, 6)], rtol=1e-5)
