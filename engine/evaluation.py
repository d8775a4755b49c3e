"""Evaluation engine: VOC07/VOC12 mAP (and COCO's metrics) of an SSD checkpoint on a TFRecord
dataset (the loop).

The pieces, each usable on its own (eval_ssd_network.py only turns flags into calls):

- :class:`EvalConfig`: the original eval flags (thresholds of Caffe SSD's test net).
- :func:`make_detect_fn`: one ``tf.function`` = network forward + ``detected_bboxes`` + the
  mapping of the boxes back to the original image, for a whole batch, fixed-size output.
- :func:`make_eval_dataset`: TFRecords -> batched images + the ORIGINAL padded ground truth.
- :func:`run_evaluation`: drives batches through the detector (any ``detect(images,
  bbox_img)`` function) and feeds one or more evaluators (``tf_extended.metrics``
  ``VOCEvaluator``, ``COCOEvaluator``: the same ``update_batch``) with NumPy arrays (one
  transfer per batch; the metric update of batch i runs in a worker thread while the
  network computes batch i+1).
- :func:`load_weights`: a checkpoint's weights (or their moving averages) into the net.
- :class:`CheckpointEvaluator`: builds the network once and evaluates checkpoint after
  checkpoint (one file, a directory's latest); :func:`evaluate_as_trained` as training
  writes them (watching through :mod:`engine.checkpoint_watch`).

What evaluation writes (metrics.json(l), the AP table, TensorBoard, devkit / COCO files) is
:mod:`engine.eval_outputs`; checkpoint paths are resolved by :mod:`fileio.checkpoint_files`;
the net's settings come from ``nets.configure.resolve_model``.

Boxes are ``(ymin, xmin, ymax, xmax)`` normalized to the ORIGINAL image everywhere in this
module. Metrics are computed in the original image frame: detections are mapped back through
``bbox_img`` (the original image's window in the network input; ``(0, 0, 1, 1)`` for the
default warp resize) and clipped to the image, and compared with the ground truth as stored
in the TFRecords. The VOC metric (``EvalConfig.voc_metric``) is by default the devkit's
(``'devkit'``: each image's 1-based pixels, the ``+1`` IoU, what VOCevaldet.m computes from
the comp4 files written by :mod:`engine.eval_outputs`); ``'normalized'`` compares the
normalized boxes without ``+1``. The COCO metric goes through the COCO API
(``tf_extended.metrics.COCOEvaluator``).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from engine import checkpoint_watch, eval_outputs
from engine.eval_outputs import DetectionSet
from fileio import checkpoint_files
from fileio.checkpoint_files import CheckpointNotFoundError, CheckpointUnavailableError
from nets import checkpoints, configure, nets_factory
from nets.configure import SettingsError
from preprocessing import pipeline, ssd_vgg_preprocessing
from tf_extended import metrics

logger = logging.getLogger(__name__)


METRICS = ("voc", "coco")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Post-processing and matching settings (the original eval flags, Caffe SSD test values).

    Attributes:
      select_threshold: min class score of a candidate (Caffe ``confidence_threshold`` 0.01).
      nms_threshold: per-class NMS IoU (Caffe ``nms_threshold`` 0.45).
      select_top_k: candidates per class entering NMS (Caffe ``top_k`` 400).
      keep_top_k: detections kept per image over all classes (Caffe ``keep_top_k`` 200).
      matching_threshold: a detection matches a ground truth when IoU >= this (VOC: 0.5).
      remove_difficult: True: VOC semantics, difficult ground truth is neither to be found
        nor a false positive when matched; False: difficult boxes count like the others.
      batch_size: images per network call (any; the last batch may be smaller).
      max_num_batches: evaluate only this many batches (None: the whole split).
      use_moving_average: load the exponential-moving-average weights when the checkpoint
        has them.
      clip_detections: clip detected boxes to the image (they then match what the devkit
        files contain; it can only raise the IoU with a ground truth inside the image).
      freeze_weights: run the network with each checkpoint's weights baked in as constants
        (``net.inference_function(frozen=True)``, rebuilt per checkpoint): oneDNN then keeps
        them in its own layout, up to ~1.8x faster at batch 1 on a CPU (docs/nets.md).
      metric: ``'voc'`` or ``'coco'`` (``METRICS``); None: the dataset's ``default_metric``.
        The VOC numbers are computed in both cases (metrics.json keeps its keys); ``'coco'``
        adds COCO's (a ``coco`` block).
      voc_metric: ``'devkit'`` (VOCevaldet.m's pixels and ``+1``) or ``'normalized'``; None:
        devkit for VOC-format datasets, normalized for COCO ones (their boxes are not on the
        integer pixel grid the devkit assumes).
      coco_annotations_file: the original COCO annotation JSON to evaluate against (exact
        crowd regions and areas); None: the ground truth is rebuilt from the TFRecords.
      coco_backend: the COCOeval implementation (``tf_extended.metrics.COCO_BACKENDS``).
    """

    select_threshold: float = 0.01
    nms_threshold: float = 0.45
    select_top_k: int = 400
    keep_top_k: int = 200
    matching_threshold: float = 0.5
    remove_difficult: bool = True
    batch_size: int = 1
    max_num_batches: int | None = None
    use_moving_average: bool = False
    clip_detections: bool = True
    freeze_weights: bool = True
    metric: str | None = None
    voc_metric: str | None = None
    coco_annotations_file: str | None = None
    coco_backend: str = "faster_coco_eval"

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"metric is {self.metric!r}, must be one of {', '.join(METRICS)}.")
        if self.voc_metric is not None and self.voc_metric not in metrics.BOX_MODES:
            raise ValueError(f"voc_metric is {self.voc_metric!r}, must be one of "
                             f"{', '.join(metrics.BOX_MODES)}.")
        if self.coco_backend not in metrics.COCO_BACKENDS:
            raise ValueError(f"coco_backend is {self.coco_backend!r}, must be one of "
                             f"{', '.join(metrics.COCO_BACKENDS)}.")
        if self.coco_annotations_file and self.metric == "voc":
            raise ValueError("coco_annotations_file is for the COCO metric, but metric is 'voc'.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size is {self.batch_size}, but must be >= 1.")
        if self.max_num_batches is not None and self.max_num_batches < 1:
            raise ValueError(f"max_num_batches is {self.max_num_batches}, but must be >= 1.")
        if not 0.0 <= self.select_threshold < 1.0:
            raise ValueError(f"select_threshold is {self.select_threshold}, must be in [0, 1).")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold is {self.nms_threshold}, must be in (0, 1].")
        if not 0.0 <= self.matching_threshold < 1.0:
            raise ValueError(f"matching_threshold is {self.matching_threshold}, must be in [0, 1).")
        if self.select_top_k < 1 or self.keep_top_k < 1:
            raise ValueError(f"select_top_k ({self.select_top_k}) and keep_top_k "
                             f"({self.keep_top_k}) must be >= 1.")


# ---------------------------------------------------------------------------------------
# Inference.

DetectFn = Callable[[tf.Tensor, tf.Tensor], Mapping[str, tf.Tensor]]


def detections_to_image_frame(det: Mapping[str, tf.Tensor], bbox_img: tf.Tensor,
                              clip: bool = True) -> dict[str, tf.Tensor]:
    """Map detections from the network-input frame to the original image's frame.

    The mapping is ``preprocessing.ssd_vgg_preprocessing.bboxes_to_original`` (the inverse of
    the eval preprocessing's window); this adds the masking of the padded rows.

    Args:
      det: ``detected_bboxes`` output: ``boxes`` [N, K, 4] ``(ymin, xmin, ymax, xmax)``
        normalized to the network input, ``scores`` [N, K], ``classes`` [N, K],
        ``num_detections`` [N].
      bbox_img: [N, 4] the original image's window in the network input (same format).
      clip: clip the boxes to the image (0..1).

    Returns:
      The same dict with boxes normalized to the original image; padded rows stay zero.
    """
    boxes = ssd_vgg_preprocessing.bboxes_to_original(
        det["boxes"], tf.cast(bbox_img, det["boxes"].dtype), clip=clip)
    # Rows past num_detections are padding: keep them zero (not mapped padding boxes).
    live = tf.range(tf.shape(boxes)[1])[None, :] < tf.cast(det["num_detections"], tf.int32)[:, None]
    out = dict(det)
    out["boxes"] = tf.where(live[..., None], boxes, 0.0)
    return out


def make_detect_fn(net: Any, config: EvalConfig, image_shape: Sequence[int] | None = None,
                   frozen: bool = False) -> DetectFn:
    """The batched detector: ``detect(images [N,H,W,3], bbox_img [N,4]) -> dict`` (one tf.function).

    Network forward, ``net.detected_bboxes`` (fixed-size, K = ``keep_top_k``) and the mapping
    back to the original image run in one graph; the batch dimension is left free so the
    smaller last batch reuses the same trace.

    Args:
      net: an SSD network of ``nets_factory`` (callable, with ``detected_bboxes``).
      config: thresholds.
      image_shape: (H, W) of the network input, for the input signature (default
        ``net.params.img_shape``).
      frozen: bake the net's current weights into the function (a snapshot: make a new one
        after loading other weights); needs the net's ``inference_function``.
    """
    if image_shape is None:
        image_shape = net.params.img_shape
    height, width = int(image_shape[0]), int(image_shape[1])
    num_anchors = int(np.asarray(net.anchors()).shape[0])
    num_classes = int(net.params.num_classes)
    if frozen:
        forward = net.inference_function(frozen=True)
    else:
        def forward(images):
            return net(images, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32),
                                  tf.TensorSpec([None, 4], tf.float32)],
                 reduce_retracing=True)
    def detect(images: tf.Tensor, bbox_img: tf.Tensor) -> dict[str, tf.Tensor]:
        flat = dict(net.flat_outputs(forward(images)))
        # The fixed-size post-processing needs the static anchor count; with a free batch
        # dimension make sure it is there (it is known from the anchors).
        for key, last in (("predictions", num_classes), ("localisations", 4)):
            flat[key] = tf.ensure_shape(flat[key], [None, num_anchors, last])
        det = net.detected_bboxes(flat, select_threshold=config.select_threshold,
                                  nms_threshold=config.nms_threshold,
                                  select_top_k=config.select_top_k, keep_top_k=config.keep_top_k)
        return detections_to_image_frame(det, bbox_img, clip=config.clip_detections)

    return detect


# ---------------------------------------------------------------------------------------
# Data.

# COCO extras of preprocessing.pipeline.eval_dataset's info -> the batch keys.
_COCO_BATCH_KEYS = {"coco_id": "coco_id", "iscrowd": "gt_iscrowd", "area": "gt_area"}

def make_eval_dataset(dataset: tf.data.Dataset,
                      preprocess_fn: Callable[..., tuple],
                      out_shape: Sequence[int] | None,
                      batch_size: int,
                      max_num_batches: int | None = None,
                      num_parallel_calls: int = tf.data.AUTOTUNE,
                      prefetch: int = 2,
                      num_threads: int | None = None,
                      check_size: bool = False) -> tf.data.Dataset:
    """Decoded examples (``DatasetSpec.read()`` dicts) -> batches for :func:`run_evaluation`.

    Built on ``preprocessing.pipeline.eval_dataset``: each image is preprocessed for the
    network by ``preprocess_fn`` (``preprocessing_factory.get_preprocessing(name,
    is_training=False, resize=...)``) while the ground truth stays that of the ORIGINAL image,
    because the metrics are computed in the original image frame (a crop must not hide the
    objects it cut away).

    Args (besides the obvious): ``out_shape`` None leaves the images at their own size (an
    exported model that takes original images, with ``eval_resize`` NONE and batch size 1);
    ``num_threads`` caps the pipeline's thread pool (evaluation beside training);
    ``check_size`` fails with the images' names when a batch is not ``out_shape``
    (``eval_resize`` NONE feeds images at their own size).

    Returns:
      A dataset of dicts, batch dimension B (the last batch may be smaller):
      ``image`` float32 [B, H, W, 3], ``bbox_img`` float32 [B, 4], ``shape`` int64 [B, 3],
      ``filename`` string [B], ``gt_bboxes`` float32 [B, G, 4] ``(ymin, xmin, ymax, xmax)``
      normalized, ``gt_labels`` int64 [B, G], ``gt_difficult`` int64 [B, G] (padded with
      zeros), ``num_gt`` int32 [B]; with COCO records (or any reader that gives them)
      ``coco_id`` int64 [B] (-1: none), ``gt_iscrowd`` int64 [B, G], ``gt_area`` float32 [B, G].
    """
    out_shape = None if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
    image_shape = [None, None, None, 3] if out_shape is None else [None, *out_shape, 3]

    def rename(images: tf.Tensor, info: dict) -> dict:
        images = tf.cast(images, tf.float32)
        if check_size and out_shape is not None:
            same = tf.reduce_all(tf.equal(tf.shape(images)[1:3], tf.constant(out_shape, tf.int32)))
            check = tf.debugging.Assert(same, [
                f"images are not {out_shape[0]}x{out_shape[1]}, the network input: with "
                "eval_resize NONE they must already have that size (use eval_resize 4, "
                "WARP_RESIZE); image ids:", info["filename"], "batch image size:",
                tf.shape(images)[1:3]], summarize=8)
            with tf.control_dependencies([check]):
                images = tf.identity(images)
        return {
            "image": tf.ensure_shape(images, image_shape),
            "bbox_img": tf.cast(info["bbox_img"], tf.float32),
            "shape": tf.cast(info["shape"], tf.int64),
            "filename": info["filename"],
            "gt_bboxes": tf.cast(info["bboxes"], tf.float32),
            "gt_labels": tf.cast(info["labels"], tf.int64),
            "gt_difficult": tf.cast(info["difficult"], tf.int64),
            "num_gt": tf.cast(info["num_gt"], tf.int32),
            **{out: info[key] for key, out in _COCO_BATCH_KEYS.items() if key in info},
        }

    ds = pipeline.eval_dataset(dataset, preprocess_fn, batch_size, out_shape=out_shape,
                               num_parallel_calls=num_parallel_calls, prefetch=prefetch)
    ds = ds.map(rename, num_parallel_calls=1, deterministic=True)
    if max_num_batches is not None:
        ds = ds.take(max_num_batches)
    ds = ds.prefetch(prefetch)
    if num_threads is not None:
        options = tf.data.Options()
        options.threading.private_threadpool_size = int(num_threads)
        options.threading.max_intra_op_parallelism = 1
        ds = ds.with_options(options)
    return ds


# ---------------------------------------------------------------------------------------
# The evaluation loop.

def image_id_from_filename(filename: bytes | str, index: int) -> str:
    """``b'JPEGImages/000001.jpg'`` -> ``'000001'``; empty -> the read index, 6 digits."""
    if isinstance(filename, bytes):
        filename = filename.decode("utf-8", errors="replace")
    stem = os.path.splitext(os.path.basename(filename.strip()))[0]
    return stem if stem else f"{index:06d}"


def raw_image_ids(batch: Mapping[str, np.ndarray], start: int) -> list:
    """Per image of a batch: its COCO id (``coco_id`` >= 0) or its name
    (:func:`image_id_from_filename`; ``start`` = the run index of the first image)."""
    n = len(batch["num_gt"])
    filenames = batch.get("filename", np.array([b""] * n))
    coco_ids = batch.get("coco_id")
    return [int(coco_ids[i]) if coco_ids is not None and int(coco_ids[i]) >= 0
            else image_id_from_filename(filenames[i], start + i) for i in range(n)]


def _update_evaluator(evaluators: Sequence[Any], batch: Mapping[str, np.ndarray],
                      det: Mapping[str, np.ndarray], remove_difficult: bool, image_ids: list) -> None:
    """Feed one batch (NumPy) to each evaluator: ``update_batch`` when it has one (with the
    image sizes, ids, crowd flags and areas), else ``update`` per image."""
    num_gt = batch["num_gt"]
    difficult = batch["gt_difficult"]
    if not remove_difficult:
        difficult = np.zeros_like(difficult)
    for evaluator in evaluators:
        if hasattr(evaluator, "update_batch"):
            evaluator.update_batch(batch["gt_bboxes"], batch["gt_labels"], difficult, num_gt,
                                   det["boxes"], det["classes"], det["scores"],
                                   det["num_detections"], image_shapes=batch.get("shape"),
                                   image_ids=image_ids, gt_crowd=batch.get("gt_iscrowd"),
                                   gt_area=batch.get("gt_area"))
            continue
        num_det = det["num_detections"]
        for i in range(len(num_gt)):
            g, d = int(num_gt[i]), int(num_det[i])
            evaluator.update(batch["gt_bboxes"][i, :g], batch["gt_labels"][i, :g], difficult[i, :g],
                             det["boxes"][i, :d], det["classes"][i, :d], det["scores"][i, :d])


_GT_KEYS = ("gt_bboxes", "gt_labels", "gt_difficult", "num_gt", "shape", "filename", "coco_id",
            "gt_iscrowd", "gt_area")
_DET_KEYS = ("boxes", "scores", "classes", "num_detections")


@dataclasses.dataclass
class RunStats:
    """Timing of one :func:`run_evaluation` (seconds)."""

    num_images: int = 0
    num_batches: int = 0
    total_secs: float = 0.0
    detect_secs: float = 0.0  # Inside the detector calls (network + post-processing).


def run_evaluation(batches: Iterable[Mapping[str, Any]],
                   detect_fn: DetectFn,
                   evaluator: Any,
                   *,
                   remove_difficult: bool = True,
                   keep_detections: bool = False,
                   overlap: bool = True) -> tuple[RunStats, DetectionSet | None]:
    """Run the detector over ``batches`` and accumulate the metrics in ``evaluator``.

    Args:
      batches: dicts as made by :func:`make_eval_dataset` (tensors or NumPy).
      detect_fn: ``detect(image, bbox_img) -> {'boxes','scores','classes','num_detections'}``,
        boxes normalized to the original image (the network's, or any other detector's).
      evaluator: a ``tf_extended.metrics.VOCEvaluator`` / ``COCOEvaluator`` (``update_batch``,
        or ``update`` per image), or a list of them (all fed from the same batches).
      remove_difficult: see :class:`EvalConfig`.
      keep_detections: also return every detection (for the devkit / COCO files).
      overlap: update the metrics of batch i in a worker thread while the detector runs
        batch i+1 (TF releases the GIL while it computes).

    Returns:
      (RunStats, DetectionSet or None).
    """
    stats = RunStats()
    evaluators = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
    kept: dict[str, list] = {k: [] for k in ("ids", "coco_ids", "shapes", *_DET_KEYS)}
    start = time.perf_counter()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1) if overlap else None
    pending: concurrent.futures.Future | None = None
    try:
        for batch in batches:
            t0 = time.perf_counter()
            det = detect_fn(batch["image"], batch["bbox_img"])
            # One NumPy transfer per tensor per batch; no per-image work on tensors.
            det_np = {k: np.asarray(det[k]) for k in _DET_KEYS}
            stats.detect_secs += time.perf_counter() - t0
            batch_np = {k: np.asarray(batch[k]) for k in _GT_KEYS if k in batch}
            batch_np.setdefault("num_gt", np.full([len(det_np["num_detections"])],
                                                  batch_np["gt_labels"].shape[1], np.int32))
            image_ids = raw_image_ids(batch_np, stats.num_images)
            if pending is not None:
                pending.result()  # Keep updates in order and surface their errors.
            if executor is not None:
                pending = executor.submit(_update_evaluator, evaluators, batch_np, det_np,
                                          remove_difficult, image_ids)
            else:
                _update_evaluator(evaluators, batch_np, det_np, remove_difficult, image_ids)
            n = len(det_np["num_detections"])
            if keep_detections:
                filenames = batch_np.get("filename", np.array([b""] * n))
                kept["ids"] += [image_id_from_filename(f, stats.num_images + i)
                                for i, f in enumerate(filenames)]
                kept["coco_ids"].append(np.asarray(batch_np.get("coco_id", np.full(n, -1)),
                                                   np.int64).reshape(n))
                kept["shapes"].append(batch_np["shape"].reshape(n, -1))
                for k in _DET_KEYS:
                    kept[k].append(det_np[k])
            stats.num_images += n
            stats.num_batches += 1
        if pending is not None:
            pending.result()
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
    stats.total_secs = time.perf_counter() - start
    detections = None
    if keep_detections:
        if stats.num_batches:
            detections = DetectionSet(kept["ids"], np.concatenate(kept["shapes"]),
                                      *(np.concatenate(kept[k]) for k in _DET_KEYS),
                                      coco_ids=np.concatenate(kept["coco_ids"]))
        else:
            detections = DetectionSet([], np.zeros([0, 3], np.int64), np.zeros([0, 0, 4], np.float32),
                                      np.zeros([0, 0], np.float32), np.zeros([0, 0], np.int32),
                                      np.zeros([0], np.int32))
    return stats, detections


# ---------------------------------------------------------------------------------------
# Model weights.

def load_weights(net: Any, prefix: str, use_moving_average: bool = False) -> str:
    """Load a checkpoint (TF1 names, converted Caffe, or the trainer's) into ``net``.

    Moving averages of the weights: the trainer's checkpoints keep what to evaluate under
    ``model``, which IS the moving average when training kept one (its raw weights are under
    ``train_model``), so they are used with or without ``use_moving_average``, as
    docs/training.md promises. TF1 checkpoints (the original's TF-Slim training) hold them as
    ``<name>/ExponentialMovingAverage`` shadows: used with ``use_moving_average`` (the
    original's ``--moving_average_decay``), else the raw weights, as in the original.

    Returns:
      ``'moving_average'`` or ``'weights'``: what was loaded.

    Raises:
      fileio.checkpoint_files.CheckpointUnavailableError: the files vanished, are truncated
        or corrupt (names the checkpoint).
      nets.checkpoints.CheckpointMismatchError: the checkpoint is of another net (by name).
    """
    if not checkpoint_files.checkpoint_exists(prefix):
        raise CheckpointUnavailableError(f"{prefix}: checkpoint files are gone")
    # open_reader / read_tensor (and net.load_checkpoint, which uses them) turn a vanished,
    # truncated or corrupt checkpoint into CheckpointUnavailableError naming it.
    reader = checkpoint_files.open_reader(prefix)
    reader_names = reader.get_variable_to_shape_map()
    net.load_checkpoint(prefix)
    if any(n.startswith(checkpoints.TRAINING_RAW_WEIGHTS_KEY + "/") for n in reader_names):
        return "moving_average"
    if not use_moving_average:
        return "weights"
    variables = net.variables_by_checkpoint_name()
    shadows = {n: f"{n}/ExponentialMovingAverage" for n in variables}
    if all(s in reader_names for s in shadows.values()):
        for name, var in variables.items():
            var.assign(checkpoint_files.read_tensor(reader, prefix, shadows[name]))
        return "moving_average"
    logger.warning("%s holds no moving averages of the weights: evaluating the raw weights.",
                   prefix)
    return "weights"


# ---------------------------------------------------------------------------------------
# Checkpoint after checkpoint.

def default_evaluator_factory(num_classes: int, matching_threshold: float,
                              labels_to_names: Mapping[int, str], box_mode: str = "devkit") -> Any:
    """A ``tf_extended.metrics.VOCEvaluator`` for ``num_classes`` (incl. background)."""
    return metrics.VOCEvaluator(num_classes=num_classes, matching_threshold=matching_threshold,
                                box_mode=box_mode)


class CheckpointEvaluator:
    """Evaluates checkpoints one after another: one network, one tf.function, one dataset.

    The network is built at the first checkpoint, from the flags and that checkpoint's
    sidecar (``nets.configure.resolve_model``); later checkpoints must agree with it.
    Each :meth:`evaluate` writes ``metrics.json`` / ``metrics.jsonl``, TensorBoard summaries
    at the checkpoint's global step and, with ``detections_dir``, the devkit and COCO files
    (and, for the COCO metric on rebuilt ground truth, that ground truth as COCO JSON).

    The metric: ``config.metric``, else ``'coco'`` with ``config.coco_annotations_file``, else
    the dataset spec's ``default_metric``; COCO category ids from its ``label_to_category_id``
    (None: VOC-format records, whose boxes are on the devkit's pixel grid).
    """

    def __init__(self,
                 *,
                 model_name: str,
                 dataset_spec: Any,
                 preprocess_fn: Callable[..., tuple],
                 config: EvalConfig,
                 eval_dir: str,
                 detections_dir: str | None = None,
                 num_classes: int | None = None,
                 anchor_preset: str | None = None,
                 image_size: int | None = None,
                 num_parallel_calls: int = tf.data.AUTOTUNE,
                 num_threads: int | None = None,
                 check_size: bool = False,
                 evaluator_factory: Callable[..., Any] = default_evaluator_factory,
                 write_tensorboard: bool = True,
                 net: Any = None,
                 dtype_policy: str | None = None):
        """Args: see the module and :class:`EvalConfig`; ``dataset_spec`` is a
        ``datasets.dataset_factory.DatasetSpec`` (``read()``, ``labels_to_names``,
        ``split_name``, ``num_classes``); ``net`` skips building (tests, notebooks);
        ``dtype_policy`` (e.g. ``'mixed_bfloat16'``) is the Keras policy of the net built."""
        self.model_name = model_name
        self.dataset_spec = dataset_spec
        self.preprocess_fn = preprocess_fn
        self.config = config
        self.eval_dir = eval_dir
        self.detections_dir = detections_dir
        self.flags = {"num_classes": num_classes, "anchor_preset": anchor_preset,
                      "image_size": image_size}
        self.num_parallel_calls = num_parallel_calls
        self.num_threads = num_threads
        self.check_size = check_size
        self.evaluator_factory = evaluator_factory
        self.write_tensorboard = write_tensorboard
        self.net = net
        self.dtype_policy = dtype_policy
        self.metadata: dict | None = None
        self.labels_to_names = {int(k): str(v) for k, v in dataset_spec.labels_to_names.items()}
        self.label_to_category_id = getattr(dataset_spec, "label_to_category_id", None)
        coco_records = self.label_to_category_id is not None
        self.metric = config.metric or ("coco" if config.coco_annotations_file
                                        else getattr(dataset_spec, "default_metric", "voc"))
        self.voc_metric = config.voc_metric or ("normalized" if coco_records else "devkit")
        self.box_convention = "coco" if coco_records else "voc"
        self._coco_annotations: dict | None = None
        self._detect_fn: DetectFn | None = None
        self._frozen = False
        self._dataset: tf.data.Dataset | None = None
        self._writer: tf.summary.SummaryWriter | None = None
        self.last_stats: RunStats | None = None
        self.last_detections: DetectionSet | None = None

    # -- set-up ------------------------------------------------------------------------------

    def _setup(self, prefix: str, metadata: dict | None) -> None:
        if self.net is None:
            self.model_name, params = configure.resolve_model(
                self.model_name, checkpoint=prefix,
                default_num_classes=self.dataset_spec.num_classes, **self.flags)
            net_class = nets_factory.get_network(self.model_name)
            self.net = net_class(params, dtype_policy=self.dtype_policy)
            logger.info("Built %s: %d classes, anchor preset %r, input %s%s.", self.model_name,
                        params.num_classes, params.anchor_preset, tuple(params.img_shape),
                        f", {self.dtype_policy}" if self.dtype_policy else "")
        self.metadata = metadata
        params = self.net.params
        if params.num_classes < self.dataset_spec.num_classes:
            raise SettingsError(f"{prefix}: the model has {params.num_classes} classes, the "
                                f"dataset {self.dataset_spec.name} has "
                                f"{self.dataset_spec.num_classes} (with background)")
        self._frozen = bool(self.config.freeze_weights and hasattr(self.net, "inference_function"))
        if not self._frozen:
            self._detect_fn = make_detect_fn(self.net, self.config)
        self._dataset = make_eval_dataset(self.dataset_spec.read(), self.preprocess_fn,
                                          params.img_shape, self.config.batch_size,
                                          self.config.max_num_batches, self.num_parallel_calls,
                                          num_threads=self.num_threads, check_size=self.check_size)

    def _check_same_model(self, prefix: str, metadata: dict | None) -> None:
        """A later checkpoint must fit the net built for the first one."""
        if metadata is None or metadata == self.metadata:
            return
        params = checkpoints.params_from_metadata(metadata, self.net.params)
        mine = self.net.params
        if (metadata.get("model_name") not in (None, self.model_name)
                or params.num_classes != mine.num_classes
                or params.anchor_sizes != mine.anchor_sizes
                or params.anchor_ratios != mine.anchor_ratios):
            raise SettingsError(f"{prefix}{checkpoints.SIDECAR_SUFFIX}: this checkpoint's model "
                                "(classes/anchors) differs from the one evaluated so far; "
                                "evaluate it in a separate run")

    # -- one checkpoint --------------------------------------------------------------------------

    def evaluate(self, checkpoint: str) -> dict:
        """Evaluate one checkpoint (prefix, file or directory); returns its metrics record."""
        prefix = checkpoint_files.resolve_checkpoint(checkpoint)
        metadata = checkpoints.read_metadata(prefix)
        if self._dataset is None:
            self._setup(prefix, metadata)
        else:
            self._check_same_model(prefix, metadata)
        global_step = checkpoint_files.read_global_step(prefix)
        loaded = load_weights(self.net, prefix, self.config.use_moving_average)
        if self._frozen:  # a snapshot of these weights
            self._detect_fn = make_detect_fn(self.net, self.config, frozen=True)
        logger.info("Evaluating %s (step %s, %s).", prefix, global_step, loaded)
        return self._score(prefix, global_step, self.net.params.num_classes)

    def evaluate_model(self, model: Any) -> dict:
        """Evaluate an exported model instead of a checkpoint: the same loop and outputs.

        ``model`` is a ``deploy.runtime`` detector: ``path``, ``num_classes`` (None: the
        dataset's), ``input_size`` ((h, w) when it takes warp-resized images, None when it takes
        the original images, which the dataset must then deliver: ``preprocess_fn`` with
        ``Resize.NONE`` and batch size 1) and ``eval_detect_fn``. The record's ``checkpoint`` is
        the model's path, its ``global_step`` None.
        """
        num_classes = int(model.num_classes or self.dataset_spec.num_classes)
        if num_classes < self.dataset_spec.num_classes:
            raise SettingsError(f"{model.path}: the model has {num_classes} classes, the dataset "
                                f"{self.dataset_spec.name} has {self.dataset_spec.num_classes} "
                                "(with background)")
        if self._dataset is None:
            self._dataset = make_eval_dataset(self.dataset_spec.read(), self.preprocess_fn,
                                              model.input_size, self.config.batch_size,
                                              self.config.max_num_batches, self.num_parallel_calls,
                                              num_threads=self.num_threads)
        self._detect_fn = model.eval_detect_fn
        logger.info("Evaluating %s.", model.path)
        return self._score(model.path, None, num_classes)

    def _score(self, prefix: str, global_step: int | None, num_classes: int) -> dict:
        """Run the loop with ``self._detect_fn`` and write the outputs of one evaluation."""
        evaluator = self.evaluator_factory(num_classes,
                                           self.config.matching_threshold, self.labels_to_names,
                                           box_mode=self.voc_metric)
        coco = self._coco_evaluator(num_classes) if self.metric == "coco" else None
        keep = self.detections_dir is not None
        stats, detections = run_evaluation(self._dataset, self._detect_fn,
                                           [evaluator] + ([coco] if coco else []),
                                           remove_difficult=self.config.remove_difficult,
                                           keep_detections=keep)
        result = evaluator.result()
        coco_block = None
        if coco is not None:
            t0 = time.perf_counter()
            coco_block = eval_outputs.coco_record(coco.result(), self.config.coco_annotations_file)
            logger.info("COCO metrics (%s): %.1f s.", coco.backend, time.perf_counter() - t0)
        record = eval_outputs.make_record(prefix, global_step, result, self.labels_to_names,
                                          stats.num_images, coco=coco_block)
        logger.info("%s: %d images in %.1f s (%.2f images/s, %.0f%% in the detector); "
                    "mAP VOC07 %s, VOC12 %s (%s)%s.", os.path.basename(prefix), stats.num_images,
                    stats.total_secs, stats.num_images / max(stats.total_secs, 1e-9),
                    100.0 * stats.detect_secs / max(stats.total_secs, 1e-9),
                    record["mAP_VOC07"], record["mAP_VOC12"], self.voc_metric,
                    f"; COCO AP {coco_block['AP']}" if coco_block else "")
        eval_outputs.write_metrics(self.eval_dir, record)
        if self.write_tensorboard:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.eval_dir)
            eval_outputs.write_summaries(
                self._writer, record, record["global_step"],
                eval_outputs.evaluator_pr_curves(evaluator, self.labels_to_names))
        if keep:
            split = self.dataset_spec.split_name
            eval_outputs.write_voc_detections(self.detections_dir, split, detections,
                                              self.labels_to_names)
            eval_outputs.write_coco_detections(
                os.path.join(self.detections_dir, f"detections_{split}_coco.json"), detections,
                self.labels_to_names, label_to_category_id=self.label_to_category_id,
                box_convention=self.box_convention)
            if coco is not None and self._coco_annotations is None:
                eval_outputs.write_coco_ground_truth(
                    os.path.join(self.detections_dir, f"groundtruth_{split}_coco.json"),
                    coco.ground_truth())
        self.last_stats = stats
        self.last_detections = detections
        return record

    def _coco_evaluator(self, num_classes: int) -> metrics.COCOEvaluator:
        """A COCOEvaluator for this dataset (the annotation file is read once)."""
        path = self.config.coco_annotations_file
        if path and self._coco_annotations is None:
            self._coco_annotations = metrics.load_coco_annotations(path)
        return metrics.COCOEvaluator(
            num_classes, self.labels_to_names,
            label_to_category_id=self.label_to_category_id, box_convention=self.box_convention,
            annotations=self._coco_annotations, annotations_path=path,
            backend=self.config.coco_backend)

    def close(self) -> None:
        """Flush and close the summary writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def evaluate_as_trained(evaluator: CheckpointEvaluator, train_dir: str, *,
                        interval_secs: float = 60.0, timeout_secs: float | None = None,
                        on_record: Callable[[dict], None] | None = None,
                        **watch_kwargs) -> checkpoint_watch.WatchStats:
    """Evaluate each new checkpoint of ``train_dir`` once, oldest first, until the timeout.

    Checkpoints already in ``<eval_dir>/metrics.jsonl`` are skipped (restarts resume).
    A checkpoint whose model differs from the first one's is logged and skipped.
    """
    done = eval_outputs.read_evaluated_checkpoints(evaluator.eval_dir)
    if done:
        logger.info("%d checkpoint(s) already evaluated in %s/%s: skipped.", len(done),
                    evaluator.eval_dir, eval_outputs.METRICS_JSONL)

    def evaluate_one(prefix: str) -> None:
        try:
            record = evaluator.evaluate(prefix)
        except CheckpointNotFoundError as err:  # Rotated away meanwhile.
            raise CheckpointUnavailableError(str(err)) from err
        except SettingsError as err:
            logger.error("%s", err)
            return
        if on_record is not None:
            on_record(record)

    return checkpoint_watch.watch(train_dir, evaluate_one, interval_secs=interval_secs,
                                  timeout_secs=timeout_secs, already_evaluated=done,
                                  **watch_kwargs)
