"""Detection metrics: Pascal VOC (the devkit's VOC07 11-point and VOC2010+ area AP) and COCO.

:class:`VOCEvaluator` is ``VOCevaldet.m`` of the VOC devkit, vectorized:

* per class, detections are taken in decreasing score order, a stable sort (MATLAB's
  ``sort(-confidence)``): equal scores keep the order in which they arrived (image order,
  then order within the image), which is the order of the lines of a results file written
  in that order;
* a detection's ground truth is the box *of its class in its image* with the largest IoU
  (the first one on ties; boxes that do not overlap it are no candidates);
* IoU >= ``matching_threshold`` (VOCevaldet.m: ``ovmax >= VOCopts.minoverlap``) with a
  non-difficult box not yet taken: true positive, and the box is taken; with a box already
  taken (a duplicate), below the threshold or no box of the class in the image: false
  positive; with a *difficult* box: ignored (neither);
* ``n_gt`` counts the non-difficult boxes; recall = TP / n_gt, precision = TP / (TP + FP);
* VOC07 AP: for t in MATLAB's ``0:0.1:1`` (:data:`VOC07_THRESHOLDS`), the best precision at
  recall >= t, added up as ``ap = ap + p / 11``; VOC12 AP (``VOCap.m``): area under the
  monotone (right-to-left max) precision envelope, summed left to right;
* a class without (non-difficult) ground truth gets AP NaN, is left out of the mean and is
  listed in ``result()['classes_without_gt']``.

Two box modes (``box_mode``), one evaluator:

* ``'devkit'``: boxes are the devkit's 1-based inclusive pixel coordinates and IoU uses its
  ``+1`` convention (``iw = min(x2) - max(x1) + 1``, areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``),
  in float64, operation for operation. Given ``image_shapes``, normalized boxes are mapped to
  those pixels the way the files are written: ground truth with :func:`devkit_gt_boxes` (the
  XML's integers, recovered exactly from the TFRecords), detections with
  :func:`devkit_det_boxes` (the comp4 files' coordinates). What it computes is what
  VOCevaldet.m computes from those files.
* ``'normalized'`` (the default of the class, the project's former metric): boxes in any one
  consistent unit, IoU without ``+1``.

The one case where the devkit and this module differ: a class with ground truth whose every
detection matched a difficult box (so none counts either way) gets VOC07 AP 0 here and NaN
from the devkit (MATLAB's ``max`` of an all-NaN precision vector); VOC12 AP is 0 in both.

Speed: ``update`` only stores arrays; matching runs lazily, vectorized over all pending images
and classes at once (the greedy "first detection takes the box" rule reduces to "first
detection in score order among those whose best box is that box", since a detection's best
box does not depend on which boxes are taken). IoU comes from :mod:`tf_extended.boxes`.

:class:`COCOEvaluator` gives COCO's 12 numbers and per-class AP through the COCO API
(pycocotools' ``COCOeval``, or faster-coco-eval's C++ port of it: the same numbers, ~5x
faster), on ground truth rebuilt from the TFRecords or read from the original annotation file.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tf_extended import boxes as tfe_boxes

logger = logging.getLogger(__name__)

# Matching runs automatically once this many detections are pending (bounds peak memory).
_FLUSH_DETECTIONS = 1_000_000

BOX_MODES = ("devkit", "normalized")


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """MATLAB's ``start:step:stop`` for a whole number of steps, element for element.

    MATLAB computes the first half of the elements from ``start`` (``start + k * step``) and
    the second half from ``stop`` (``stop - (n - k) * step``), so ``0:0.1:1`` holds
    0.30000000000000004 (like ``np.arange``) but exactly 0.6 and 0.7 (``np.arange`` gives
    0.6000000000000001 and 0.7000000000000001).
    """
    n = int(round((stop - start) / step))
    return np.array([start + k * step if k < n / 2 else stop - (n - k) * step
                     for k in range(n + 1)], np.float64)


# VOC07's recall thresholds, VOCevaldet.m's ``for t=0:0.1:1``.
VOC07_THRESHOLDS = matlab_colon(0.0, 0.1, 1.0)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP from a PR curve in score order (recall nondecreasing).

    VOCevaldet.m (VOC2007): ``for t=0:0.1:1, p=max(prec(rec>=t)); if isempty(p), p=0; end;
    ap=ap+p/11; end``, with MATLAB's thresholds and its left-to-right sum.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at index >= i
    first = np.searchsorted(recall, VOC07_THRESHOLDS, side="left")  # first index with recall >= t
    best = np.where(first < recall.size, envelope[np.minimum(first, recall.size - 1)], 0.0)
    ap = 0.0
    for p in best.tolist():
        ap = ap + p / 11
    return ap


def voc12_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP (VOCap.m): area under the precision envelope, recall padded with 0 and 1."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    terms = (mrec[change] - mrec[change - 1]) * mpre[change]
    return float(np.cumsum(terms)[-1]) if terms.size else 0.0  # left to right, like a loop


def _scale(shapes: Any, ndim: int) -> np.ndarray:
    """(height, width[, ...]) -> [..., 4] factors (h, w, h, w), broadcastable to boxes of ``ndim``."""
    shapes = np.asarray(shapes, np.float64)
    hw = shapes[..., :2]
    scale = np.stack([hw[..., 0], hw[..., 1], hw[..., 0], hw[..., 1]], axis=-1)
    return scale.reshape(scale.shape[:-1] + (1,) * (ndim - scale.ndim) + (4,))


def devkit_gt_boxes(boxes: Any, shapes: Any) -> np.ndarray:
    """Ground truth as the VOC XML's integer pixel coordinates, float64 ``(ymin, xmin, ymax, xmax)``.

    The VOC converter stores ``pixel / side`` (1-based pixels, no ``-1``; see
    datasets/pascalvoc_to_tfrecords.py) as float32, so ``round(normalized * side)`` recovers
    the XML's integers exactly. ``shapes``: (height, width, ...) per image, broadcast over
    the boxes (``[4]`` with ``[2+]``, ``[n, 4]`` with ``[2+]``, ``[B, n, 4]`` with ``[B, 2+]``).
    """
    boxes = np.asarray(boxes, np.float64)
    return np.round(boxes * _scale(shapes, boxes.ndim))


def devkit_det_boxes(boxes: Any, shapes: Any) -> np.ndarray:
    """Detections in the devkit's 1-based pixels, float64 ``(ymin, xmin, ymax, xmax)``.

    ``normalized * side`` (the converter's rule, inverted), clipped to ``[1, side]``: the
    coordinates the comp4 files hold (engine.eval_outputs writes them at full precision).
    """
    boxes = np.asarray(boxes, np.float64)
    scale = _scale(shapes, boxes.ndim)
    return np.clip(boxes * scale, 1.0, scale)


def _as_boxes(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.size == 0:
        return a.reshape(0, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name} has shape {a.shape}; expected [n, 4] (ymin, xmin, ymax, xmax).")
    return a


def _as_vector(x: Any, name: str, n: int, dtype: Any) -> np.ndarray:
    a = np.asarray(x, dtype).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries; expected {n} (one per box).")
    return a


def _check_labels(labels: np.ndarray, name: str, num_classes: int) -> None:
    if labels.size and (labels.min() < 1 or labels.max() >= num_classes):
        bad = labels[(labels < 1) | (labels >= num_classes)][0]
        raise ValueError(f"{name} contains label {bad}; valid labels are 1..{num_classes - 1}.")


def _unpad_batch(gt_boxes: Any, gt_labels: Any, gt_flags: Sequence[Any], num_gt: Any,
                 det_boxes: Any, det_labels: Any, det_scores: Any, num_detections: Any
                 ) -> tuple[np.ndarray, ...]:
    """Padded batch arrays -> (gmask [B, G], dmask [B, K], gt_boxes, gt_labels, *flags, det_boxes,
    det_labels, det_scores) with the live rows only (image-major order)."""
    gt_boxes = np.asarray(gt_boxes, np.float64)
    det_boxes = np.asarray(det_boxes, np.float64)
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes has shape {gt_boxes.shape}; expected [B, G, 4].")
    if det_boxes.ndim != 3 or det_boxes.shape[-1] != 4:
        raise ValueError(f"det_boxes has shape {det_boxes.shape}; expected [B, K, 4].")
    batch, max_g = gt_boxes.shape[:2]
    max_d = det_boxes.shape[1]
    if det_boxes.shape[0] != batch:
        raise ValueError(f"det_boxes has {det_boxes.shape[0]} images, gt_boxes {batch}.")
    num_gt = _as_vector(num_gt, "num_gt", batch, np.int64)
    num_detections = _as_vector(num_detections, "num_detections", batch, np.int64)
    if np.any(num_gt > max_g) or np.any(num_detections > max_d):
        raise ValueError("num_gt / num_detections exceed the padded sizes.")
    gmask = np.arange(max_g)[None, :] < num_gt[:, None]
    dmask = np.arange(max_d)[None, :] < num_detections[:, None]
    flags = [np.zeros(int(gmask.sum()), np.float64) if f is None
             else np.asarray(f, np.float64).reshape(batch, max_g)[gmask] for f in gt_flags]
    return (gmask, dmask, gt_boxes, np.asarray(gt_labels, np.int64).reshape(batch, max_g)[gmask],
            *flags, det_boxes, np.asarray(det_labels, np.int64).reshape(batch, max_d)[dmask],
            np.asarray(det_scores, np.float64).reshape(batch, max_d)[dmask])


class VOCEvaluator:
    """Accumulates detections and ground truth over images; computes VOC07 / VOC12 AP.

    Args:
      num_classes: including the background (21 for VOC); labels are 1..num_classes-1.
      matching_threshold: a detection matches a box when IoU >= this (VOC: 0.5).
      labels_to_names: optional {label: name}; result dicts are then keyed by name.
      box_mode: ``'normalized'`` (default): boxes ``(ymin, xmin, ymax, xmax)`` in any one
        consistent unit, IoU without ``+1``; ``'devkit'``: the VOC devkit's pixels and ``+1``
        IoU (see the module doc): boxes in 1-based pixels, or normalized with ``image_shape``
        / ``image_shapes`` given (mapped by :func:`devkit_gt_boxes` / :func:`devkit_det_boxes`).
    """

    def __init__(self, num_classes: int, matching_threshold: float = 0.5,
                 labels_to_names: Mapping[int, str] | None = None,
                 box_mode: str = "normalized") -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: need the background plus at least one class.")
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode={box_mode!r}: must be one of {', '.join(BOX_MODES)}.")
        self.num_classes = int(num_classes)
        self.matching_threshold = float(matching_threshold)
        self.labels_to_names = dict(labels_to_names) if labels_to_names else None
        self.box_mode = box_mode
        self._iou_offset = 1.0 if box_mode == "devkit" else 0.0
        self.reset()

    # ----------------------------------------------------------------------------- input
    def reset(self) -> None:
        """Forget everything accumulated."""
        self._num_images = 0
        self._pending: list[tuple] = []  # (image ids, gt..., image ids, det...) per update
        self._pending_dets = 0
        # Matched detections in arrival order (image order, then input order): class, score, tp, fp.
        self._done: list[tuple[np.ndarray, ...]] = []
        self._num_gt = np.zeros(self.num_classes, np.int64)

    @property
    def num_images(self) -> int:
        return self._num_images

    def _to_frame(self, gt_boxes: np.ndarray, det_boxes: np.ndarray, gt_shapes: Any,
                  det_shapes: Any) -> tuple[np.ndarray, np.ndarray]:
        """Normalized boxes -> the devkit's pixels (devkit mode with shapes); else as given."""
        if self.box_mode != "devkit" or gt_shapes is None:
            return gt_boxes, det_boxes
        return devkit_gt_boxes(gt_boxes, gt_shapes), devkit_det_boxes(det_boxes, det_shapes)

    def update(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any,
               det_boxes: Any, det_labels: Any, det_scores: Any, image_shape: Any = None) -> None:
        """Add one image: its ground truth ([g, 4], [g], [g] or None) and detections ([d, 4], [d], [d]).

        Either side may be empty. ``image_shape`` (height, width, ...): in devkit mode, the
        boxes are normalized and mapped to the devkit's pixels; ignored in normalized mode.
        """
        gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
        g = gt_boxes.shape[0]
        gt_labels = _as_vector(gt_labels, "gt_labels", g, np.int64)
        gt_difficult = (np.zeros(g, bool) if gt_difficult is None
                        else _as_vector(gt_difficult, "gt_difficult", g, bool))
        det_boxes = _as_boxes(det_boxes, "det_boxes")
        d = det_boxes.shape[0]
        det_labels = _as_vector(det_labels, "det_labels", d, np.int64)
        det_scores = _as_vector(det_scores, "det_scores", d, np.float64)
        _check_labels(gt_labels, "gt_labels", self.num_classes)
        _check_labels(det_labels, "det_labels", self.num_classes)
        gt_boxes, det_boxes = self._to_frame(gt_boxes, det_boxes, image_shape, image_shape)
        image = self._num_images
        self._num_images += 1
        self._add(np.full(g, image, np.int64), gt_boxes, gt_labels, gt_difficult,
                  np.full(d, image, np.int64), det_boxes, det_labels, det_scores)

    def update_batch(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any, num_gt: Any,
                     det_boxes: Any, det_labels: Any, det_scores: Any, num_detections: Any,
                     image_shapes: Any = None, image_ids: Any = None, gt_crowd: Any = None,
                     gt_area: Any = None) -> None:
        """Add a batch of padded arrays, e.g. ``detected_bboxes`` outputs and padded ground truth.

        Args:
          gt_boxes [B, G, 4], gt_labels [B, G], gt_difficult [B, G] or None, num_gt [B];
          det_boxes [B, K, 4], det_labels [B, K], det_scores [B, K], num_detections [B].
          Entries past ``num_gt`` / ``num_detections`` are padding and ignored.
          image_shapes: [B, 2+] (height, width, ...): devkit mode maps normalized boxes to
            the devkit's pixels; ignored in normalized mode.
          gt_crowd: [B, G] or None: COCO crowd regions, treated as difficult boxes (neither to
            be found nor false positives when matched).
          image_ids, gt_area: accepted for the same signature as
            :meth:`COCOEvaluator.update_batch`; not used by VOC.
        """
        del image_ids, gt_area
        (gmask, dmask, gt_boxes, gt_labels, difficult, crowd, det_boxes, det_labels,
         det_scores) = _unpad_batch(gt_boxes, gt_labels, (gt_difficult, gt_crowd), num_gt,
                                    det_boxes, det_labels, det_scores, num_detections)
        _check_labels(gt_labels, "gt_labels", self.num_classes)
        _check_labels(det_labels, "det_labels", self.num_classes)
        batch = gmask.shape[0]
        shapes = None if image_shapes is None else np.asarray(image_shapes).reshape(batch, -1)
        gt_boxes, det_boxes = self._to_frame(
            gt_boxes, det_boxes, None if shapes is None else shapes[:, None, :],
            None if shapes is None else shapes[:, None, :])
        images = self._num_images + np.arange(batch)
        self._num_images += batch
        gimg = np.broadcast_to(images[:, None], gmask.shape)[gmask]
        dimg = np.broadcast_to(images[:, None], dmask.shape)[dmask]
        self._add(gimg, gt_boxes[gmask], gt_labels, (difficult != 0) | (crowd != 0),
                  dimg, det_boxes[dmask], det_labels, det_scores)  # image-major: arrival order

    def _add(self, *arrays: np.ndarray) -> None:
        self._pending.append(arrays)
        self._pending_dets += arrays[4].shape[0]
        if self._pending_dets >= _FLUSH_DETECTIONS:
            self._flush()

    # ----------------------------------------------------------------------------- matching
    def _flush(self) -> None:
        """Match every pending detection (vectorized over images and classes)."""
        if not self._pending:
            return
        cols = list(zip(*self._pending))
        self._pending = []
        self._pending_dets = 0
        gimg, gbox, glab, gdiff, dimg, dbox, dlab, dscore = (np.concatenate(c) for c in cols)
        self._num_gt += np.bincount(glab[~gdiff], minlength=self.num_classes)
        if dimg.size == 0:
            return
        c = self.num_classes
        # Ground truth grouped by (image, class), stable: the devkit's first-max tie rule.
        ggroup = gimg * c + glab
        gorder = np.argsort(ggroup, kind="stable")
        ggroup, gbox, gdiff = ggroup[gorder], gbox[gorder], gdiff[gorder]
        # Detections grouped by (image, class), best score first, then arrival order (stable sort).
        dorder = np.lexsort((-dscore, dimg * c + dlab))
        dgroup = (dimg * c + dlab)[dorder]
        dbox = dbox[dorder]
        start = np.searchsorted(ggroup, dgroup, side="left")
        count = np.searchsorted(ggroup, dgroup, side="right") - start  # boxes each detection can match

        num = dgroup.size
        best_iou = np.full(num, -1.0)
        best_gt = np.full(num, -1, np.int64)
        has = count > 0
        if np.any(has):
            # Every (detection, box of its class in its image) pair, detection-major.
            pair_det = np.repeat(np.arange(num), count)
            offset = np.cumsum(count) - count
            pair_gt = start[pair_det] + np.arange(pair_det.size) - offset[pair_det]
            overlap = tfe_boxes.elementwise_iou(tf.constant(dbox[pair_det]), tf.constant(gbox[pair_gt]),
                                                offset=self._iou_offset).numpy()
            seg = offset[has]
            seg_max = np.maximum.reduceat(overlap, seg)
            best_iou[has] = seg_max
            is_max = overlap == np.repeat(best_iou, count)
            first = np.where(is_max, np.arange(pair_det.size), pair_det.size)
            best_gt[has] = pair_gt[np.minimum.reduceat(first, seg)]

        # A box that does not overlap is no candidate (the devkit's ``if iw>0 & ih>0``).
        matched = (best_iou >= self.matching_threshold) & (best_iou > 0.0)
        ignored = matched & gdiff[np.maximum(best_gt, 0)] if gdiff.size else np.zeros(num, bool)
        candidate = np.flatnonzero(matched & ~ignored)  # in (group, score) order
        tp = np.zeros(num, bool)
        # The first detection (in score order) whose best box is a given box takes it.
        _, first_of_box = np.unique(best_gt[candidate], return_index=True)
        tp[candidate[first_of_box]] = True
        # Back to arrival order, which breaks score ties in result().
        tp_arrival = np.empty_like(tp)
        tp_arrival[dorder] = tp
        ignored_arrival = np.empty_like(ignored)
        ignored_arrival[dorder] = ignored
        keep = ~ignored_arrival  # detections matched to a difficult box do not count at all
        tp = tp_arrival[keep]
        self._done.append((dlab[keep], dscore[keep], tp, ~tp))
    # ----------------------------------------------------------------------------- results
    def _key(self, label: int) -> Any:
        if self.labels_to_names is not None:
            return self.labels_to_names.get(label, str(label))
        return label

    def _per_class(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """{label: (scores, tp, fp)} over all images, best score first (ties: image order)."""
        self._flush()
        if self._done:
            lab, score, tp, fp = (np.concatenate(c) for c in zip(*self._done))
            self._done = [(lab, score, tp, fp)]
        else:
            lab, score = np.zeros(0, np.int64), np.zeros(0)
            tp = fp = np.zeros(0, bool)
        order = np.lexsort((-score, lab))  # stable: equal scores stay in arrival order
        lab, score, tp, fp = lab[order], score[order], tp[order], fp[order]
        bounds = np.searchsorted(lab, np.arange(self.num_classes + 1))
        return {c: (score[bounds[c]:bounds[c + 1]], tp[bounds[c]:bounds[c + 1]], fp[bounds[c]:bounds[c + 1]])
                for c in range(1, self.num_classes)}

    def pr_data(self) -> dict[Any, dict[str, Any]]:
        """Per class: ``{'scores', 'tp', 'fp', 'num_gt'}``, detections best first.

        Detections matched to difficult boxes are left out (they count neither way).
        """
        out = {}
        for c, (score, tp, fp) in self._per_class().items():
            out[self._key(c)] = {"scores": score, "tp": tp, "fp": fp, "num_gt": int(self._num_gt[c])}
        return out

    def pr_curves(self) -> dict[Any, dict[str, np.ndarray]]:
        """Per class with ground truth: ``{'precision', 'recall', 'scores'}`` arrays, for plotting."""
        out = {}
        for c, (score, tp, fp) in self._per_class().items():
            n_gt = self._num_gt[c]
            if n_gt == 0:
                continue
            ctp = np.cumsum(tp, dtype=np.float64)
            cfp = np.cumsum(fp, dtype=np.float64)
            out[self._key(c)] = {"precision": ctp / np.maximum(ctp + cfp, 1.0), "recall": ctp / n_gt,
                                 "scores": score}
        return out

    def result(self) -> dict[str, Any]:
        """``{'mAP_VOC07', 'mAP_VOC12', 'AP_VOC07': {class: ap}, 'AP_VOC12': {...}, 'num_images',
        'num_gt': {class: n}, 'classes_without_gt': [class, ...]}``.

        Classes are keyed by name when ``labels_to_names`` was given, else by label. AP is NaN
        for a class without ground truth; the means skip those (NaN if no class has any).
        """
        ap07, ap12, num_gt, missing = {}, {}, {}, []
        for c, (_, tp, fp) in self._per_class().items():
            key = self._key(c)
            n_gt = int(self._num_gt[c])
            num_gt[key] = n_gt
            if n_gt == 0:
                ap07[key] = ap12[key] = float("nan")
                missing.append(key)
                continue
            ctp = np.cumsum(tp, dtype=np.float64)
            cfp = np.cumsum(fp, dtype=np.float64)
            recall = ctp / n_gt
            precision = ctp / np.maximum(ctp + cfp, 1.0)
            ap07[key] = voc07_ap(recall, precision)
            ap12[key] = voc12_ap(recall, precision)
        if missing:
            logger.info("Classes without ground truth (left out of the mAP): %s", missing)
        valid07 = [v for k, v in ap07.items() if k not in missing]
        valid12 = [v for k, v in ap12.items() if k not in missing]
        return {
            "mAP_VOC07": float(np.mean(valid07)) if valid07 else float("nan"),
            "mAP_VOC12": float(np.mean(valid12)) if valid12 else float("nan"),
            "AP_VOC07": ap07,
            "AP_VOC12": ap12,
            "num_images": self._num_images,
            "num_gt": num_gt,
            "classes_without_gt": missing,
        }


# --------------------------------------------------------------------------------- COCO

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")
# COCOeval implementations: faster-coco-eval (C++ evaluateImg/accumulate, the same numbers)
# and pycocotools (the reference, pure Python loops: ~5x slower on val2017).
COCO_BACKENDS = ("faster_coco_eval", "pycocotools")
# How normalized boxes map to COCO's 0-based continuous pixels: 'coco' = normalized * side (the
# COCO converter stores pixel / side); 'voc' = through the devkit's 1-based integer pixels
# (x = xmin - 1, w = xmax - xmin + 1: the box covers whole pixels xmin..xmax).
BOX_CONVENTIONS = ("coco", "voc")


def pycocotools_available() -> bool:
    """Whether ``pycocotools`` (a dependency, requirements.txt) can be imported."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        return False
    return True


def _coco_api(backend: str) -> tuple[Any, Any]:
    """(COCO, COCOeval) classes of a backend."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster
        return COCO, COCOeval_faster
    raise ValueError(f"COCO backend {backend!r}: must be one of {', '.join(COCO_BACKENDS)}.")


def coco_xywh(boxes: Any, shapes: Any, convention: str = "coco", detections: bool = True) -> np.ndarray:
    """Normalized ``(ymin, xmin, ymax, xmax)`` [..., 4] -> COCO ``[x, y, w, h]`` pixels, float64.

    ``shapes``: (height, width, ...) broadcast over the boxes as in :func:`devkit_gt_boxes`.
    ``'coco'``: ``x = xmin * width``, ``w = xmax * width - x``. ``'voc'``: through the devkit's
    pixels (:func:`devkit_det_boxes` for detections, :func:`devkit_gt_boxes` for ground truth),
    ``x = xmin - 1``, ``w = xmax - xmin + 1``.
    """
    if convention not in BOX_CONVENTIONS:
        raise ValueError(f"box convention {convention!r}: must be one of {', '.join(BOX_CONVENTIONS)}.")
    boxes = np.asarray(boxes, np.float64)
    if convention == "voc":
        pix = devkit_det_boxes(boxes, shapes) if detections else devkit_gt_boxes(boxes, shapes)
        ymin, xmin, ymax, xmax = np.moveaxis(pix, -1, 0)
        return np.stack([xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0], axis=-1)
    ymin, xmin, ymax, xmax = np.moveaxis(boxes * _scale(shapes, boxes.ndim), -1, 0)
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)


def coco_image_ids(raw_ids: Sequence[Any]) -> list:
    """COCO image ids of a run: COCO ids (ints) as they are; image names (strings) become ints
    when every one of them is all digits (VOC's ``'000001'`` -> 1), else stay strings.

    Raises:
      ValueError: two images would get the same id (names them).
    """
    raw = list(raw_ids)
    as_int = all(isinstance(r, (int, np.integer)) or (isinstance(r, str) and r.isdigit()) for r in raw)
    ids = [int(r) for r in raw] if as_int else [str(r) for r in raw]
    if len(set(ids)) != len(ids):
        seen: dict = {}
        for r, i in zip(raw, ids):
            if i in seen:
                raise ValueError(f"images {seen[i]!r} and {r!r} both have COCO image id {i!r}")
            seen[i] = r
    return ids


def coco_detection_rows(image_ids: Sequence[Any], xywh: np.ndarray, scores: np.ndarray,
                        category_ids: np.ndarray) -> list[dict]:
    """COCO results: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``, one per
    detection in the given order, full-precision floats (JSON writes them exactly)."""
    boxes = np.asarray(xywh, np.float64).tolist()
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(image_ids, np.asarray(category_ids, np.int64).tolist(), boxes,
                                  np.asarray(scores, np.float64).tolist())]


def load_coco_annotations(path: str) -> dict:
    """An annotation file (``instances_val2017.json``) as a dict; ValueError naming it when it
    is not COCO detection JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read the COCO annotations ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: not a COCO annotation file (needs 'images', 'annotations' and "
                         "'categories' lists)")
    return data


class COCOEvaluator:
    """COCO's AP@[.5:.95] and the other 11 numbers of ``COCOeval.summarize()``, plus per-class AP.

    Same ``update`` / ``update_batch`` / ``result`` shape as :class:`VOCEvaluator`. What is
    evaluated is exactly what :func:`coco_detection_rows` writes and (without ``annotations``)
    what :meth:`ground_truth` returns, so pycocotools run on those two JSON files gives the
    same numbers; with ``annotations`` (the original file) too.

    Args:
      num_classes: including the background; labels 1..num_classes-1.
      labels_to_names: {label: name} (per-class results are keyed by name).
      label_to_category_id: {label: COCO category id}; default: the label itself.
      box_convention: ``'coco'`` (COCO records, default) or ``'voc'`` (VOC records), see
        :func:`coco_xywh`.
      annotations: the original annotation file (path or loaded dict): its ground truth
        (exact crowd regions and areas) is used instead of the one rebuilt from the updates;
        the images are then named by their COCO ids (``image_ids``). ``annotations_path``
        names a dict's file in error messages.
      backend: one of :data:`COCO_BACKENDS`.

    Ground truth rebuilt from the updates: boxes by :func:`coco_xywh`; ``iscrowd`` = the
    crowd flag or the difficult flag (both are ignored regions for COCOeval: a detection on
    one counts neither way); ``area`` = ``gt_area`` when given with the ``'coco'`` convention
    (COCO's segmentation area), else the box's. Only the updated images are evaluated
    (``params.imgIds``), also with ``annotations``.
    """

    def __init__(self, num_classes: int, labels_to_names: Mapping[int, str] | None = None, *,
                 label_to_category_id: Mapping[int, int] | None = None, box_convention: str = "coco",
                 annotations: str | Mapping[str, Any] | None = None,
                 annotations_path: str | None = None,
                 backend: str = "faster_coco_eval") -> None:
        if not pycocotools_available():
            raise ImportError("COCOEvaluator needs pycocotools (pip install -r requirements.txt).")
        if box_convention not in BOX_CONVENTIONS:
            raise ValueError(f"box_convention={box_convention!r}: must be one of "
                             f"{', '.join(BOX_CONVENTIONS)}.")
        _coco_api(backend)  # fails early for an unknown or missing backend
        self.num_classes = int(num_classes)
        self.labels_to_names = dict(labels_to_names) if labels_to_names else None
        self.label_to_category_id = ({int(k): int(v) for k, v in label_to_category_id.items()}
                                     if label_to_category_id else None)
        self.box_convention = box_convention
        self.backend = backend
        self.annotations_path = annotations if isinstance(annotations, str) else annotations_path
        self._annotations = (load_coco_annotations(annotations) if isinstance(annotations, str)
                             else annotations)
        self.reset()

    def reset(self) -> None:
        self._raw_ids: list = []
        self._shapes: list[np.ndarray] = []
        self._gts: list[tuple[np.ndarray, ...]] = []  # image, boxes, labels, ignore, area
        self._dets: list[tuple[np.ndarray, ...]] = []  # image, boxes, labels, scores
        self._num_images = 0

    @property
    def num_images(self) -> int:
        return self._num_images

    def _category(self, labels: np.ndarray) -> np.ndarray:
        if self.label_to_category_id is None:
            return labels.astype(np.int64)
        lookup = np.zeros(self.num_classes, np.int64)
        for label, cat in self.label_to_category_id.items():
            if 0 <= label < self.num_classes:
                lookup[label] = cat
        return lookup[labels]

    # ------------------------------------------------------------------------------ input
    def update(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any, det_boxes: Any, det_labels: Any,
               det_scores: Any, image_shape: Any = None, image_id: Any = None, gt_crowd: Any = None,
               gt_area: Any = None) -> None:
        """Add one image (see :meth:`VOCEvaluator.update`). ``image_shape`` (height, width, ...):
        None takes the boxes in their own unit; ``image_id``: its COCO id or name (default: its
        1-based index); ``gt_crowd``, ``gt_area``: [g] or None."""
        gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
        det_boxes = _as_boxes(det_boxes, "det_boxes")
        g, d = gt_boxes.shape[0], det_boxes.shape[0]

        def pad(x, n, dtype):
            return None if x is None else _as_vector(x, "", n, dtype)[None]

        self.update_batch(gt_boxes[None], _as_vector(gt_labels, "gt_labels", g, np.int64)[None],
                          pad(gt_difficult, g, np.float64), [g], det_boxes[None],
                          _as_vector(det_labels, "det_labels", d, np.int64)[None],
                          _as_vector(det_scores, "det_scores", d, np.float64)[None], [d],
                          image_shapes=None if image_shape is None else [image_shape],
                          image_ids=None if image_id is None else [image_id],
                          gt_crowd=pad(gt_crowd, g, np.float64), gt_area=pad(gt_area, g, np.float64))

    def update_batch(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any, num_gt: Any, det_boxes: Any,
                     det_labels: Any, det_scores: Any, num_detections: Any, image_shapes: Any = None,
                     image_ids: Any = None, gt_crowd: Any = None, gt_area: Any = None) -> None:
        """Add a padded batch (see :meth:`VOCEvaluator.update_batch`).

        ``image_shapes`` [B, 2+] or None (boxes in their own unit); ``image_ids`` [B]: COCO
        ids (ints, a negative one = none) or names (default: 1-based index of the image in the
        run); ``gt_crowd``, ``gt_area`` [B, G] or None.
        """
        (gmask, dmask, gt_boxes, gt_labels, difficult, crowd, area, det_boxes, det_labels,
         det_scores) = _unpad_batch(gt_boxes, gt_labels, (gt_difficult, gt_crowd, gt_area), num_gt,
                                    det_boxes, det_labels, det_scores, num_detections)
        if gt_area is None:
            area = np.full_like(area, np.nan)
        _check_labels(gt_labels, "gt_labels", self.num_classes)
        _check_labels(det_labels, "det_labels", self.num_classes)
        batch = gmask.shape[0]
        shapes = (np.ones([batch, 2]) if image_shapes is None
                  else np.asarray(image_shapes, np.float64).reshape(batch, -1)[:, :2])
        for i in range(batch):
            raw = None if image_ids is None else image_ids[i]
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            if raw is None or (isinstance(raw, (int, np.integer)) and raw < 0):
                raw = self._num_images + i + 1
            self._raw_ids.append(int(raw) if isinstance(raw, (int, np.integer)) else str(raw))
        images = self._num_images + np.arange(batch)
        self._num_images += batch
        self._shapes.append(shapes)
        gimg = np.broadcast_to(images[:, None], gmask.shape)[gmask]
        dimg = np.broadcast_to(images[:, None], dmask.shape)[dmask]
        self._gts.append((gimg, gt_boxes[gmask], gt_labels, (difficult != 0) | (crowd != 0), area))
        self._dets.append((dimg, det_boxes[dmask], det_labels, det_scores))

    # ------------------------------------------------------------------------------ outputs
    def _columns(self, parts: list, width: int) -> list[np.ndarray]:
        if not parts:
            return [np.zeros([0, 4]) if k == 1 else np.zeros([0]) for k in range(width)]
        return [np.concatenate(c) for c in zip(*parts)]

    def image_ids(self) -> list:
        """The COCO image ids of the updated images, in update order (:func:`coco_image_ids`)."""
        return coco_image_ids(self._raw_ids)

    def detection_rows(self) -> list[dict]:
        """The detections as COCO results (:func:`coco_detection_rows`), in update order."""
        ids = self.image_ids()
        img, boxes, labels, scores = self._columns(self._dets, 4)
        img = img.astype(np.int64)
        shapes = np.concatenate(self._shapes) if self._shapes else np.ones([0, 2])
        xywh = coco_xywh(boxes, shapes[img], self.box_convention, detections=True)
        return coco_detection_rows([ids[i] for i in img.tolist()], xywh, scores,
                                   self._category(labels.astype(np.int64)))

    def _category_names(self) -> dict[int, str]:
        names = {}
        for label in range(1, self.num_classes):
            cat = int(self._category(np.array([label]))[0])
            names[cat] = str(self.labels_to_names.get(label, label)) if self.labels_to_names else str(label)
        return names

    def ground_truth(self) -> dict:
        """The ground truth evaluated, as a COCO annotation dict: the given ``annotations``, or
        rebuilt from the updates (a new dict at each call)."""
        if self._annotations is not None:
            return dict(self._annotations)
        ids = self.image_ids()
        shapes = np.concatenate(self._shapes) if self._shapes else np.ones([0, 2])
        img, boxes, labels, ignore, area = self._columns(self._gts, 5)
        img = img.astype(np.int64)
        xywh = coco_xywh(boxes, shapes[img], self.box_convention, detections=False)
        box_area = xywh[:, 2] * xywh[:, 3]
        if self.box_convention == "coco":
            area = np.where(np.isnan(area), box_area, area)
        else:
            area = box_area
        cats = self._category(labels.astype(np.int64)).tolist()
        return {
            "images": [{"id": i, "height": int(h), "width": int(w)}
                       for i, (h, w) in zip(ids, shapes.tolist())],
            "annotations": [{"id": k + 1, "image_id": ids[i], "category_id": c, "bbox": b,
                             "area": a, "iscrowd": int(z)}
                            for k, (i, c, b, a, z) in enumerate(zip(img.tolist(), cats, xywh.tolist(),
                                                                    area.tolist(), ignore.tolist()))],
            "categories": [{"id": c, "name": n} for c, n in sorted(self._category_names().items())],
        }

    def _check_annotations(self, ids: list) -> None:
        known = {img.get("id") for img in self._annotations["images"]}
        missing = [i for i in ids if i not in known]
        if missing:
            where = self.annotations_path or "the annotations"
            raise ValueError(f"{where}: no image with id {missing[0]!r} ({len(missing)} evaluated "
                             "image(s) missing; records without image/coco_id, or another split?)")

    def result(self) -> dict[str, Any]:
        """``{'AP', 'AP50', 'AP75', 'AP_small', ..., 'AR_large'`` (COCOeval.stats, -1 where the
        ground truth has no box of that size), ``'AP_per_class': {class: AP@[.5:.95]}`` (NaN
        for a category without ground truth), ``'num_images', 'num_detections', 'backend'}``."""
        out: dict[str, Any] = {name: float("nan") for name in COCO_STAT_NAMES}
        ids = self.image_ids()
        if self._annotations is not None:
            self._check_annotations(ids)
        rows = self.detection_rows()
        out.update(num_images=self._num_images, num_detections=len(rows), backend=self.backend,
                   AP_per_class={})
        if not ids:
            return out
        gt = self.ground_truth()
        if not rows and self.backend == "pycocotools":
            logger.warning("No detections: pycocotools cannot evaluate an empty result (use the "
                           "faster_coco_eval backend); COCO metrics are NaN.")
            return out
        coco_cls, eval_cls = _coco_api(self.backend)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # the COCO API prints; library code must not
            if self.backend == "pycocotools":
                coco_gt = coco_cls()
                coco_gt.dataset = gt
                coco_gt.createIndex()
                coco_dt = coco_gt.loadRes(rows)
                ev = eval_cls(coco_gt, coco_dt, iouType="bbox")
            else:
                coco_gt = coco_cls(gt)
                coco_dt = coco_gt.loadRes(rows)
                ev = eval_cls(coco_gt, coco_dt, iouType="bbox", print_function=logger.debug)
            ev.params.imgIds = sorted(ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        logger.debug("COCO API:\n%s", log.getvalue())
        out.update({name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats[:12])})
        precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out["AP_per_class"][names.get(int(cat), str(cat))] = float(p.mean()) if p.size else float("nan")
        return out
