"""What evaluation writes and prints: the metrics record, metrics.json(l), the AP table,
TensorBoard summaries with precision-recall curves, VOC devkit and COCO detection files.

- :func:`make_record`: the DESIGN.md §6 JSON record (exactly :data:`RECORD_KEYS`, plus a
  ``coco`` block (:func:`coco_record`) when the COCO metric was computed).
- :func:`write_metrics`: ``metrics.json`` (atomically) + one ``metrics.jsonl`` line;
  :func:`read_metrics_history`, :func:`read_evaluated_checkpoints` read them back.
- :func:`format_ap_table`, :func:`format_coco_table`: the tables the script prints.
- :class:`PRCurve`, :func:`evaluator_pr_curves`, :func:`pr_curve_data`,
  :func:`write_summaries`: TensorBoard scalars (the original's tags) and PR curves.
- :class:`DetectionSet` (every detection of one evaluation, boxes ``(ymin, xmin, ymax, xmax)``
  normalized to the original image), :func:`write_voc_detections` /
  :func:`read_voc_detections` (devkit ``comp4`` files, 1-based pixels, full precision),
  :func:`write_coco_detections` (COCO results JSON, 0-based pixels) and
  :func:`write_coco_ground_truth` (the rebuilt ground truth as a COCO annotation file). The
  boxes are those the metrics score (``tf_extended.metrics``: ``devkit_det_boxes``,
  ``coco_xywh``, ``coco_detection_rows``), written exactly.

Every file is written through :mod:`fileio.atomic` (a reader never sees half of one), except
``metrics.jsonl``, which is appended one line at a time (a torn last line is skipped on read).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
from tensorboard.plugins.pr_curve import metadata as pr_metadata

from fileio import atomic
from tf_extended import metrics

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_JSONL = "metrics.jsonl"
# Keys of one metrics record, DESIGN.md §6 (and nothing else).
RECORD_KEYS = ("checkpoint", "global_step", "num_images", "mAP_VOC07", "mAP_VOC12", "AP_VOC07",
               "AP_VOC12")

# Thresholds at which precision-recall curves are sampled for TensorBoard's pr_curve plugin.
PR_CURVE_NUM_THRESHOLDS = 101


@dataclasses.dataclass
class DetectionSet:
    """All detections of one evaluation, NumPy, boxes normalized to the original image.

    Attributes:
      image_ids: [N] image identifiers (file stems, e.g. VOC's ``'000001'``).
      shapes: int64 [N, 3] original (height, width, channels).
      boxes: float32 [N, K, 4] ``(ymin, xmin, ymax, xmax)``.
      scores: float32 [N, K].
      classes: int32 [N, K] (1..num_classes-1).
      num_detections: int32 [N]; rows past it are padding.
      coco_ids: int64 [N] COCO image ids (-1: none), or None.
    """

    image_ids: list[str]
    shapes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    num_detections: np.ndarray
    coco_ids: np.ndarray | None = None

    def raw_ids(self) -> list:
        """Per image: its COCO id when it has one, else its name (for ``coco_image_ids``)."""
        if self.coco_ids is None:
            return list(self.image_ids)
        return [int(c) if int(c) >= 0 else name for c, name in zip(self.coco_ids, self.image_ids)]

    def __len__(self) -> int:
        return len(self.image_ids)


# -- The record, metrics.json(l), the table ---------------------------------------------------

def _json_float(value: Any) -> float | None:
    """A float for JSON: NaN / None (a class without ground truth) -> None."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _named(aps: Mapping[Any, Any], labels_to_names: Mapping[int, str]) -> dict[str, float | None]:
    """Per-class AP keyed by class name (ids mapped through ``labels_to_names``)."""
    out = {}
    for key, value in aps.items():
        if isinstance(key, (int, np.integer)):
            key = labels_to_names.get(int(key), str(int(key)))
        out[str(key)] = _json_float(value)
    return out


def make_record(checkpoint: str, global_step: int | None, result: Mapping[str, Any],
                labels_to_names: Mapping[int, str], num_images: int | None = None,
                coco: Mapping[str, Any] | None = None) -> dict:
    """The DESIGN.md §6 record: exactly ``RECORD_KEYS``, plus ``coco`` when given.

    ``result`` is ``VOCEvaluator.result()``; classes are named by ``labels_to_names``; a class
    without ground truth has AP ``null``. ``coco``: :func:`coco_record`.
    """
    record = {
        "checkpoint": checkpoint,
        "global_step": int(global_step) if global_step is not None else 0,
        "num_images": int(num_images if num_images is not None else result["num_images"]),
        "mAP_VOC07": _json_float(result["mAP_VOC07"]),
        "mAP_VOC12": _json_float(result["mAP_VOC12"]),
        "AP_VOC07": _named(result["AP_VOC07"], labels_to_names),
        "AP_VOC12": _named(result["AP_VOC12"], labels_to_names),
    }
    if coco is not None:
        record["coco"] = dict(coco)
    return record


def coco_record(result: Mapping[str, Any], annotations_file: str | None = None) -> dict:
    """The ``coco`` block of a record from ``COCOEvaluator.result()``: the 12 numbers of
    ``COCOeval.stats`` (``-1`` where the ground truth has no box of that size),
    ``AP_per_class`` (``null``: no ground truth), ``num_detections``, the ``backend`` and the
    ground truth (``annotations_file``, or null: rebuilt from the TFRecords)."""
    block: dict[str, Any] = {name: _json_float(result[name]) for name in metrics.COCO_STAT_NAMES}
    block["AP_per_class"] = {str(k): _json_float(v) for k, v in result["AP_per_class"].items()}
    block["num_detections"] = int(result["num_detections"])
    block["backend"] = str(result["backend"])
    block["annotations_file"] = os.path.abspath(annotations_file) if annotations_file else None
    return block


def write_metrics(eval_dir: str, record: Mapping[str, Any]) -> None:
    """``<eval_dir>/metrics.json`` (atomically) and one line appended to ``metrics.jsonl``."""
    os.makedirs(eval_dir, exist_ok=True)
    atomic.write_json(os.path.join(eval_dir, METRICS_JSON), record, indent=2, allow_nan=False)
    with open(os.path.join(eval_dir, METRICS_JSONL), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


def read_metrics_history(eval_dir: str) -> list[dict]:
    """Records of ``<eval_dir>/metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    path = os.path.join(eval_dir, METRICS_JSONL)
    records = []
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d: not a JSON line, ignored.", path, line_no)
    return records


def read_evaluated_checkpoints(eval_dir: str) -> set[str]:
    """Absolute prefixes of the checkpoints already in ``<eval_dir>/metrics.jsonl``."""
    return {os.path.abspath(r["checkpoint"]) for r in read_metrics_history(eval_dir)
            if isinstance(r, dict) and r.get("checkpoint")}


def format_ap_table(record: Mapping[str, Any]) -> str:
    """Per-class AP table (VOC07 11-point and VOC12 area) with the mAPs, as text."""
    names = list(record["AP_VOC07"])
    width = max([len("mAP"), len("class")] + [len(n) for n in names])

    def cell(value: float | None) -> str:
        return f"{value:8.4f}" if value is not None else "   no gt"

    lines = [f"checkpoint {record['checkpoint']}  (step {record['global_step']}, "
             f"{record['num_images']} images)",
             f"{'class':<{width}}  AP_VOC07  AP_VOC12",
             "-" * (width + 20)]
    for name in names:
        lines.append(f"{name:<{width}}  {cell(record['AP_VOC07'][name])}  "
                     f"{cell(record['AP_VOC12'].get(name))}")
    lines.append("-" * (width + 20))
    lines.append(f"{'mAP':<{width}}  {cell(record['mAP_VOC07'])}  {cell(record['mAP_VOC12'])}")
    return "\n".join(lines)


# COCOeval.summarize()'s lines: (stat, "Average Precision/Recall", IoU, area, maxDets).
_COCO_LINES = (("AP", "Precision", "0.50:0.95", "all", 100), ("AP50", "Precision", "0.50", "all", 100),
               ("AP75", "Precision", "0.75", "all", 100), ("AP_small", "Precision", "0.50:0.95", "small", 100),
               ("AP_medium", "Precision", "0.50:0.95", "medium", 100),
               ("AP_large", "Precision", "0.50:0.95", "large", 100),
               ("AR_1", "Recall", "0.50:0.95", "all", 1), ("AR_10", "Recall", "0.50:0.95", "all", 10),
               ("AR_100", "Recall", "0.50:0.95", "all", 100), ("AR_small", "Recall", "0.50:0.95", "small", 100),
               ("AR_medium", "Recall", "0.50:0.95", "medium", 100),
               ("AR_large", "Recall", "0.50:0.95", "large", 100))


def format_coco_table(record: Mapping[str, Any]) -> str:
    """COCO's 12 numbers (as ``COCOeval.summarize()`` prints them) and the per-class AP, as text."""
    coco = record["coco"]

    def cell(value: float | None) -> str:
        return f"{value:6.3f}" if value is not None else "   nan"

    lines = [f"checkpoint {record['checkpoint']}  (step {record['global_step']}, "
             f"{record['num_images']} images, {coco['num_detections']} detections; COCO metric, "
             f"ground truth {coco['annotations_file'] or 'from the TFRecords'})"]
    for stat, kind, iou, area, max_dets in _COCO_LINES:
        short = "(AP)" if kind == "Precision" else "(AR)"
        lines.append(f" Average {kind:<9} {short} @[ IoU={iou:<9} | area={area:>6} | "
                     f"maxDets={max_dets:>3} ] = {cell(coco[stat])}   {stat}")
    names = list(coco["AP_per_class"])
    width = max([len("class")] + [len(n) for n in names])
    lines += ["", f"{'class':<{width}}  AP@[.5:.95]", "-" * (width + 13)]
    lines += [f"{name:<{width}}  {cell(coco['AP_per_class'][name])}" for name in names]
    lines.append("-" * (width + 13))
    lines.append(f"{'AP':<{width}}  {cell(coco['AP'])}")
    return "\n".join(lines)


# -- TensorBoard ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PRCurve:
    """The detections of one class, for a precision-recall curve.

    Attributes:
      scores: float [M] detection scores.
      tp: bool/int [M] true positive flags (VOC matching).
      fp: bool/int [M] false positive flags (detections matched to a difficult box are neither).
      num_gt: number of (non-difficult) ground-truth boxes.
    """

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_gt: int


def evaluator_pr_curves(evaluator: Any, labels_to_names: Mapping[int, str]) -> dict[str, PRCurve]:
    """Per-class detections (scores, TP/FP flags, #gt) of a VOCEvaluator, by class name."""
    getter = getattr(evaluator, "pr_data", None)
    if getter is None:
        return {}
    curves = {}
    for key, value in getter().items():
        if int(value["num_gt"]) == 0:
            continue  # No ground truth: no recall, no curve.
        name = labels_to_names.get(int(key), str(key)) if isinstance(key, (int, np.integer)) else str(key)
        curves[name] = PRCurve(np.asarray(value["scores"]), np.asarray(value["tp"]),
                               np.asarray(value["fp"]), int(value["num_gt"]))
    return curves


def pr_curve_data(curve: PRCurve, num_thresholds: int = PR_CURVE_NUM_THRESHOLDS) -> np.ndarray:
    """TensorBoard pr_curve tensor float32 [6, T]: TP, FP, TN, FN, precision, recall.

    Column t is for the score threshold t / (T - 1): detections with score >= it count.
    TN is 0 (undefined for detection); precision is 1 where nothing is detected.
    """
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    scores = np.asarray(curve.scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    cum_tp = np.concatenate([[0], np.cumsum(np.asarray(curve.tp, np.float64)[order])])
    cum_fp = np.concatenate([[0], np.cumsum(np.asarray(curve.fp, np.float64)[order])])
    # Number of detections with score >= t (scores sorted descending).
    count = np.searchsorted(-scores, -thresholds, side="right")
    tp = cum_tp[count]
    fp = cum_fp[count]
    fn = np.maximum(float(curve.num_gt) - tp, 0.0)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
    recall = tp / curve.num_gt if curve.num_gt > 0 else np.zeros_like(tp)
    return np.stack([tp, fp, np.zeros_like(tp), fn, precision, recall]).astype(np.float32)


def write_summaries(writer: tf.summary.SummaryWriter, record: Mapping[str, Any], step: int,
                    pr_curves: Mapping[str, PRCurve] | None = None) -> None:
    """TensorBoard: ``AP_VOC07/mAP``, ``AP_VOC12/mAP``, ``AP_VOC07/<class>``, ... and PR curves.

    The original's tags (reference §7). PR curves use the pr_curve plugin
    (``PR_VOC/<class>``) when per-class detections are given. A record with a ``coco`` block
    adds ``COCO/<stat>`` (the 12 numbers, ``COCO/AP`` ...) and ``COCO_AP/<class>``.
    """
    with writer.as_default(step=int(step)):
        for metric in ("VOC07", "VOC12"):
            if record[f"mAP_{metric}"] is not None:
                tf.summary.scalar(f"AP_{metric}/mAP", record[f"mAP_{metric}"])
            for name, ap in record[f"AP_{metric}"].items():
                if ap is not None:
                    tf.summary.scalar(f"AP_{metric}/{name}", ap)
        tf.summary.scalar("eval/num_images", record["num_images"])
        coco = record.get("coco")
        if coco:
            for stat in metrics.COCO_STAT_NAMES:
                if coco[stat] is not None:
                    tf.summary.scalar(f"COCO/{stat}", coco[stat])
            for name, ap in coco["AP_per_class"].items():
                if ap is not None:
                    tf.summary.scalar(f"COCO_AP/{name}", ap)
        if pr_curves:
            for name, curve in pr_curves.items():
                meta = pr_metadata.create_summary_metadata(
                    display_name=f"PR {name}", description="VOC matching, IoU >= threshold",
                    num_thresholds=PR_CURVE_NUM_THRESHOLDS)
                tf.summary.write(f"PR_VOC/{name}/pr_curves", pr_curve_data(curve), metadata=meta)
    writer.flush()


# -- VOC devkit and COCO detection files ---------------------------------------------------

def _pixel_boxes(detections: DetectionSet, i: int) -> np.ndarray:
    """Image i's live detections as 1-based pixel ``(xmin, ymin, xmax, ymax)`` [d, 4], float64.

    ``tf_extended.metrics.devkit_det_boxes``: normalized * side (the TFRecords store VOC's
    1-based pixels divided by the side, without a -1), clipped to [1, side]; the boxes the
    devkit metric scores.
    """
    d = int(detections.num_detections[i])
    pix = metrics.devkit_det_boxes(detections.boxes[i, :d], detections.shapes[i])
    return pix[:, [1, 0, 3, 2]]


def voc_detection_filename(split_name: str, class_name: str) -> str:
    """The VOC devkit's results file name, ``comp4_det_<split>_<class>.txt``."""
    return f"comp4_det_{split_name}_{class_name}.txt"


def write_voc_detections(detections_dir: str, split_name: str, detections: DetectionSet,
                         labels_to_names: Mapping[int, str]) -> list[str]:
    """VOC devkit submission files, one per class (competition 4: any training data).

    Each line: ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>``, 1-based pixel
    coordinates of the original image, every number at full precision (``repr``: the exact
    float64 that was scored, so VOCevaldet.m on these files computes the printed AP). Lines
    are in evaluation order (image order, then the detector's order within an image): the
    devkit's stable sort breaks score ties in that order, as the evaluator does. Every class
    gets a file, empty when nothing was found.

    Returns:
      The paths written.
    """
    os.makedirs(detections_dir, exist_ok=True)
    lines: dict[int, list[str]] = {label: [] for label in labels_to_names if label > 0}
    for i, image_id in enumerate(detections.image_ids):
        d = int(detections.num_detections[i])
        if d == 0:
            continue
        xy = _pixel_boxes(detections, i)
        for label, score, box in zip(detections.classes[i, :d].tolist(),
                                     detections.scores[i, :d].tolist(), xy.tolist()):
            lines.setdefault(int(label), []).append(
                f"{image_id} {score!r} {box[0]!r} {box[1]!r} {box[2]!r} {box[3]!r}\n")
    paths = []
    for label, rows in sorted(lines.items()):
        name = labels_to_names.get(label, str(label))
        path = os.path.join(detections_dir, voc_detection_filename(split_name, name))
        atomic.write_text(path, "".join(rows))
        paths.append(path)
    return paths


def read_voc_detections(detections_dir: str, split_name: str,
                        labels_to_names: Mapping[int, str]) -> dict[str, list[tuple]]:
    """Parse devkit files back: ``{image_id: [(label, score, xmin, ymin, xmax, ymax), ...]}``.

    Raises:
      ValueError: a malformed line (names the file and line).
    """
    out: dict[str, list[tuple]] = {}
    for label, name in sorted(labels_to_names.items()):
        if label <= 0:
            continue
        path = os.path.join(detections_dir, voc_detection_filename(split_name, name))
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 6:
                    raise ValueError(f"{path}:{line_no}: expected 'image_id score xmin ymin xmax "
                                     f"ymax', got {line.strip()!r}")
                out.setdefault(parts[0], []).append((label, *map(float, parts[1:])))
    return out


def write_coco_detections(path: str, detections: DetectionSet,
                          labels_to_names: Mapping[int, str],
                          label_to_category_id: Mapping[int, int] | None = None,
                          box_convention: str = "voc") -> int:
    """COCO results JSON: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

    What ``tf_extended.metrics.COCOEvaluator`` scores, exactly (full-precision floats):
    ``image_id`` is the COCO id, else the image name (an int when every name is all digits,
    VOC's ``'000001'`` -> 1; ``metrics.coco_image_ids``); ``category_id`` is
    ``label_to_category_id[label]`` (default: the label); ``bbox`` is in 0-based pixels of
    the original image (``metrics.coco_xywh``: for VOC records (``box_convention='voc'``)
    from the devkit's 1-based inclusive box, ``x = xmin - 1, w = xmax - xmin + 1``; for COCO
    records ``normalized * side``); ``category_name`` is added for readability.

    Returns:
      The number of detections written.
    """
    num = detections.num_detections.astype(np.int64)
    live = np.arange(detections.boxes.shape[1] if detections.boxes.ndim == 3 else 0)[None, :] < num[:, None]
    image_of = np.broadcast_to(np.arange(len(detections))[:, None], live.shape)[live]
    ids = metrics.coco_image_ids(detections.raw_ids())
    labels = detections.classes[live].astype(np.int64)
    xywh = metrics.coco_xywh(detections.boxes[live], np.asarray(detections.shapes)[image_of],
                             box_convention, detections=True)
    cats = (labels if label_to_category_id is None
            else np.array([label_to_category_id.get(int(l), int(l)) for l in labels], np.int64))
    rows = metrics.coco_detection_rows([ids[i] for i in image_of.tolist()], xywh,
                                       detections.scores[live], cats)
    for row, label in zip(rows, labels.tolist()):
        row["category_name"] = labels_to_names.get(label, str(label))
    atomic.write_json(path, rows, indent=None)
    return len(rows)


def write_coco_ground_truth(path: str, ground_truth: Mapping[str, Any]) -> None:
    """A COCO annotation file (``images``, ``annotations``, ``categories``), e.g. the ground
    truth ``COCOEvaluator`` rebuilt from the TFRecords: pycocotools on it and the detections
    file gives the printed numbers."""
    atomic.write_json(path, dict(ground_truth), indent=None)
