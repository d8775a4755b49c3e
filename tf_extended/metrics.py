"""Pascal VOC detection metrics (VOC07 11-point AP and VOC12 area AP), vectorized NumPy.

:class:`VOCEvaluator` follows the VOC devkit's ``VOCevaldet``:

* per class, detections are taken in decreasing score order; a detection's ground truth is
  the box *of its class in its image* with the largest IoU (the first one on ties);
* IoU > ``matching_threshold`` with a non-difficult box not yet taken: true positive, and the
  box is taken; with a box already taken (a duplicate) or IoU <= threshold (or no box of the
  class in the image): false positive; with a *difficult* box: ignored (neither);
* ``n_gt`` counts the non-difficult boxes; recall = TP / n_gt, precision = TP / (TP + FP);
* VOC07 AP: mean over t in {0, 0.1, ..., 1} (exactly i/10) of the best precision at recall >= t;
  VOC12 AP: area under the monotone (right-to-left max) precision envelope;
* a class without (non-difficult) ground truth gets AP NaN, is left out of the mean and is
  listed in ``result()['classes_without_gt']``.

Differences from the devkit, on purpose: boxes are compared in whatever unit they come in
(normalized here), without the devkit's ``+1`` pixel convention; detections with equal scores
are taken in the order they were given (image order, then order within the image), which is
what the devkit's stable MATLAB sort does with a results file written in that order.

Speed: ``update`` only stores arrays; matching runs lazily, vectorized over all pending images
and classes at once (the greedy "first detection takes the box" rule reduces to "first
detection in score order among those whose best box is that box", since a detection's best
box does not depend on which boxes are taken). IoU comes from :mod:`tf_extended.boxes`.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tf_extended import boxes as tfe_boxes

logger = logging.getLogger(__name__)

# Matching runs automatically once this many detections are pending (bounds peak memory).
_FLUSH_DETECTIONS = 1_000_000

# VOC07 recall thresholds 0, 0.1, ..., 1.0 computed as i / 10 (exact decimal-style values, so a
# recall of exactly 3/10 counts for t = 0.3; np.arange(0, 1.1, 0.1) would give 0.30000000000000004).
_VOC07_THRESHOLDS = np.arange(11) / 10.0


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP from a PR curve in score order (recall nondecreasing)."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at index >= i
    first = np.searchsorted(recall, _VOC07_THRESHOLDS, side="left")  # first index with recall >= t
    best = np.where(first < recall.size, envelope[np.minimum(first, recall.size - 1)], 0.0)
    return float(best.sum() / 11.0)


def voc12_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the precision envelope, recall padded with 0 and 1."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[change] - mrec[change - 1]) * mpre[change]))


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


class VOCEvaluator:
    """Accumulates detections and ground truth over images; computes VOC07 / VOC12 AP.

    Args:
      num_classes: including the background (21 for VOC); labels are 1..num_classes-1.
      matching_threshold: a detection matches a box when IoU > this (VOC: 0.5).
      labels_to_names: optional {label: name}; result dicts are then keyed by name.

    Boxes are ``(ymin, xmin, ymax, xmax)`` in any one consistent unit (normalized or pixels).
    """

    def __init__(self, num_classes: int, matching_threshold: float = 0.5,
                 labels_to_names: Mapping[int, str] | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: need the background plus at least one class.")
        self.num_classes = int(num_classes)
        self.matching_threshold = float(matching_threshold)
        self.labels_to_names = dict(labels_to_names) if labels_to_names else None
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
        self._num_dets_seen = 0

    @property
    def num_images(self) -> int:
        return self._num_images

    def _check_labels(self, labels: np.ndarray, name: str) -> None:
        if labels.size and (labels.min() < 1 or labels.max() >= self.num_classes):
            bad = labels[(labels < 1) | (labels >= self.num_classes)][0]
            raise ValueError(f"{name} contains label {bad}; valid labels are 1..{self.num_classes - 1}.")

    def update(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any,
               det_boxes: Any, det_labels: Any, det_scores: Any) -> None:
        """Add one image: its ground truth ([g, 4], [g], [g] or None) and detections ([d, 4], [d], [d]).

        Either side may be empty.
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
        self._check_labels(gt_labels, "gt_labels")
        self._check_labels(det_labels, "det_labels")
        image = self._num_images
        self._num_images += 1
        self._add(np.full(g, image, np.int64), gt_boxes, gt_labels, gt_difficult,
                  np.full(d, image, np.int64), det_boxes, det_labels, det_scores)

    def update_batch(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any, num_gt: Any,
                     det_boxes: Any, det_labels: Any, det_scores: Any, num_detections: Any) -> None:
        """Add a batch of padded arrays, e.g. ``detected_bboxes`` outputs and padded ground truth.

        Args:
          gt_boxes [B, G, 4], gt_labels [B, G], gt_difficult [B, G] or None, num_gt [B];
          det_boxes [B, K, 4], det_labels [B, K], det_scores [B, K], num_detections [B].
          Entries past ``num_gt`` / ``num_detections`` are padding and ignored.
        """
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
        gt_labels = np.asarray(gt_labels, np.int64).reshape(batch, max_g)[gmask]
        gt_difficult = (np.zeros(int(gmask.sum()), bool) if gt_difficult is None
                        else np.asarray(gt_difficult).astype(bool).reshape(batch, max_g)[gmask])
        det_labels = np.asarray(det_labels, np.int64).reshape(batch, max_d)[dmask]
        det_scores = np.asarray(det_scores, np.float64).reshape(batch, max_d)[dmask]
        self._check_labels(gt_labels, "gt_labels")
        self._check_labels(det_labels, "det_labels")
        images = self._num_images + np.arange(batch)
        self._num_images += batch
        gimg = np.broadcast_to(images[:, None], gmask.shape)[gmask]
        dimg = np.broadcast_to(images[:, None], dmask.shape)[dmask]
        self._add(gimg, gt_boxes[gmask], gt_labels, gt_difficult,
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
            overlap = tfe_boxes.elementwise_iou(tf.constant(dbox[pair_det]), tf.constant(gbox[pair_gt])).numpy()
            seg = offset[has]
            seg_max = np.maximum.reduceat(overlap, seg)
            best_iou[has] = seg_max
            is_max = overlap == np.repeat(best_iou, count)
            first = np.where(is_max, np.arange(pair_det.size), pair_det.size)
            best_gt[has] = pair_gt[np.minimum.reduceat(first, seg)]

        matched = best_iou > self.matching_threshold
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


# --------------------------------------------------------------------------------- COCO (optional)

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


def pycocotools_available() -> bool:
    """Whether the optional ``pycocotools`` package can be imported."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        return False
    return True


class COCOEvaluator:
    """COCO-style AP@[.5:.95] (and the other 11 COCO numbers) through ``pycocotools``.

    Optional: ``pycocotools`` is not a dependency of this project; constructing this class
    without it raises ImportError with a one-line explanation. Same ``update`` /
    ``update_batch`` API as :class:`VOCEvaluator`, plus an optional ``image_shapes`` so boxes can
    be converted to pixels (COCO's small / medium / large ranges are in pixels; AP itself is
    unit-free). Difficult boxes become COCO "crowd" regions (``iscrowd=1``): detections on them
    are ignored, as in VOC. COCO keeps the 100 best detections per image (``maxDets``).
    """

    def __init__(self, num_classes: int, labels_to_names: Mapping[int, str] | None = None) -> None:
        if not pycocotools_available():
            raise ImportError("COCOEvaluator needs pycocotools (pip install pycocotools); "
                              "it is optional and not installed.")
        self.num_classes = int(num_classes)
        self.labels_to_names = dict(labels_to_names) if labels_to_names else None
        self.reset()

    def reset(self) -> None:
        self._gts: list[np.ndarray] = []  # rows: image, x, y, w, h, label, crowd
        self._dets: list[np.ndarray] = []  # rows: image, x, y, w, h, score, label
        self._num_images = 0

    @property
    def num_images(self) -> int:
        return self._num_images

    @staticmethod
    def _xywh(bboxes: np.ndarray, shape: Any) -> np.ndarray:
        """(ymin, xmin, ymax, xmax) -> COCO (x, y, w, h), times (width, height) when a shape is given."""
        h, w = (1.0, 1.0) if shape is None else (float(shape[0]), float(shape[1]))
        y0, x0, y1, x1 = (bboxes[:, i] for i in range(4))
        return np.stack([x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h], axis=1)

    def update(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any, det_boxes: Any, det_labels: Any,
               det_scores: Any, image_shape: Any = None) -> None:
        """Add one image (see :meth:`VOCEvaluator.update`); ``image_shape`` = (height, width) or None."""
        gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
        g = gt_boxes.shape[0]
        gt_labels = _as_vector(gt_labels, "gt_labels", g, np.float64)
        crowd = np.zeros(g) if gt_difficult is None else _as_vector(gt_difficult, "gt_difficult", g, np.float64)
        det_boxes = _as_boxes(det_boxes, "det_boxes")
        d = det_boxes.shape[0]
        det_labels = _as_vector(det_labels, "det_labels", d, np.float64)
        det_scores = _as_vector(det_scores, "det_scores", d, np.float64)
        image = float(self._num_images + 1)  # COCO ids start at 1
        self._num_images += 1
        self._gts.append(np.column_stack([np.full(g, image), self._xywh(gt_boxes, image_shape), gt_labels, crowd]))
        self._dets.append(np.column_stack([np.full(d, image), self._xywh(det_boxes, image_shape), det_scores,
                                           det_labels]))

    def update_batch(self, gt_boxes: Any, gt_labels: Any, gt_difficult: Any, num_gt: Any, det_boxes: Any,
                     det_labels: Any, det_scores: Any, num_detections: Any, image_shapes: Any = None) -> None:
        """Add a padded batch (see :meth:`VOCEvaluator.update_batch`); ``image_shapes`` [B, 2+] or None."""
        for i in range(len(num_gt)):  # per image: pycocotools itself is per image anyway
            g, d = int(num_gt[i]), int(num_detections[i])
            self.update(np.asarray(gt_boxes[i])[:g], np.asarray(gt_labels[i])[:g],
                        None if gt_difficult is None else np.asarray(gt_difficult[i])[:g],
                        np.asarray(det_boxes[i])[:d], np.asarray(det_labels[i])[:d], np.asarray(det_scores[i])[:d],
                        None if image_shapes is None else image_shapes[i])

    def result(self) -> dict[str, Any]:
        """``{'AP', 'AP50', 'AP75', 'AP_small', ..., 'AR_large', 'num_images'}`` (COCOeval.stats)."""
        import contextlib
        import io

        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gts = np.concatenate(self._gts) if self._gts else np.zeros([0, 7])
        dets = np.concatenate(self._dets) if self._dets else np.zeros([0, 7])
        out: dict[str, Any] = {name: float("nan") for name in COCO_STAT_NAMES}
        out["num_images"] = self._num_images
        if gts.shape[0] == 0 or dets.shape[0] == 0:
            return out
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i} for i in range(1, self._num_images + 1)],
            "categories": [{"id": c, "name": str(self.labels_to_names.get(c, c) if self.labels_to_names else c)}
                           for c in range(1, self.num_classes)],
            "annotations": [{"id": k + 1, "image_id": int(r[0]), "bbox": [float(v) for v in r[1:5]],
                             "area": float(r[3] * r[4]), "category_id": int(r[5]), "iscrowd": int(r[6])}
                            for k, r in enumerate(gts)],
        }
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # pycocotools prints; library code must not
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        logger.debug("pycocotools:\n%s", log.getvalue())
        out.update({name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats)})
        return out
