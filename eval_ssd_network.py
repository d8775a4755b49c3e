r"""Evaluate SSD checkpoints on a TFRecord dataset: Pascal VOC07 / VOC12 mAP, COCO metrics.

    python eval_ssd_network.py --eval_dir=logs/eval --dataset_dir=tfrecords \
        --dataset_name=pascalvoc_2007 --dataset_split_name=test --model_name=ssd_300_vgg \
        --checkpoint_path=checkpoints/ssd_300_vgg.ckpt --anchor_preset=coco_ft --batch_size=8

    python eval_ssd_network.py --dataset_name=coco_2017 --dataset_split_name=val \
        --dataset_dir=tfrecords --checkpoint_path=CKPT --metric=coco \
        --coco_annotations_file=annotations/instances_val2017.json

Prints a per-class AP table (VOC07 11-point and VOC12 area under the curve, as the VOC
devkit computes them) and the mAPs, or with --metric=coco COCO's 12 numbers and per-class AP
(through the COCO API), writes <eval_dir>/metrics.json (the last result), appends one JSON
line per evaluated checkpoint to <eval_dir>/metrics.jsonl, and writes TensorBoard summaries
in eval_dir.
With --wait_for_checkpoints it watches the --checkpoint_path directory and evaluates
every new checkpoint once, oldest first, as training writes them.
With --model_path it evaluates an exported model (export_ssd_network.py: a SavedModel or
export folder, a .tflite or an .onnx file) in its own runtime, with the same loop and outputs:
what int8 costs is the difference of two runs (docs/deploy.md).

The flags are the original project's (balancap/SSD-Tensorflow) with its defaults, except
where those were bugs: --model_name defaults to ssd_300_vgg (not inception_v3), and
--dataset_name has no default (it was imagenet). See docs/evaluation.md.
"""
from __future__ import annotations

import logging
import os

from absl import flags

from cli import app
from cli.flags import (check_postprocessing_flags, check_required, config_from_flags,
                       define_dataset_flags, define_device_flags, define_model_flags,
                       define_postprocessing_flags)
from datasets import dataset_factory
from deploy import runtime
from engine import devices, eval_outputs, evaluation
from fileio.checkpoint_files import resolve_checkpoint
from nets import nets_factory
from preprocessing import preprocessing_factory
from preprocessing.ssd_vgg_preprocessing import Resize
from tf_extended import metrics

FLAGS = flags.FLAGS

define_dataset_flags("test")
define_model_flags("ssd_300_vgg")
define_postprocessing_flags(0.01)
define_device_flags("Run the network in bfloat16 or float16 (weights stay float32; outputs and "
                    "post-processing float32). bfloat16 is about 4x faster on CPUs with AMX "
                    "(bench/bench_nets.py); see docs/evaluation.md for its effect on mAP.")

# -- Matching and images --------------------------------------------------------------------
flags.DEFINE_float("matching_threshold", 0.5,
                   "A detection matches a ground-truth box when their IoU is at least this "
                   "(VOCevaldet.m: ovmax >= 0.5).")
flags.DEFINE_integer("eval_resize", 4,
                     "Image resizing: 1 NONE (images must already have the network size), "
                     "2 CENTRAL_CROP, 3 PAD_AND_RESIZE, 4 WARP_RESIZE (default).")
flags.DEFINE_integer("eval_image_size", None,
                     "Network input side in pixels (default: the checkpoint's / the model's, "
                     "e.g. 300).")
flags.DEFINE_boolean("remove_difficult", True,
                     "VOC semantics: difficult boxes are neither to be found nor false "
                     "positives when detected. --noremove_difficult counts them as ordinary boxes.")

# -- Metrics ------------------------------------------------------------------------------
flags.DEFINE_enum("metric", None, list(evaluation.METRICS),
                  "voc: VOC07/VOC12 AP; coco: COCO's 12 numbers and per-class AP through the "
                  "COCO API, added to metrics.json as a 'coco' block (the VOC numbers are "
                  "computed too). Default: the dataset's (coco for the COCO datasets, voc "
                  "otherwise; coco with --coco_annotations_file).")
flags.DEFINE_enum("voc_metric", None, list(metrics.BOX_MODES),
                  "devkit: the VOC devkit's VOCevaldet.m (each image's 1-based pixels, the XML's "
                  "integer boxes, IoU with +1), what the devkit computes from the comp4 files of "
                  "--detections_dir; normalized: normalized boxes, IoU without +1 (the former "
                  "metric). Default: devkit for VOC-format datasets, normalized for COCO ones.")
flags.DEFINE_string("coco_annotations_file", None,
                    "With the COCO metric: evaluate against this original annotation file "
                    "(e.g. instances_val2017.json: its exact crowd regions and areas) instead "
                    "of the ground truth rebuilt from the TFRecords; needs records with "
                    "image/coco_id (tf_convert_data.py --dataset_name=coco).")
flags.DEFINE_enum("coco_backend", "faster_coco_eval", list(metrics.COCO_BACKENDS),
                  "The COCOeval implementation: faster_coco_eval (its C++ port, the same numbers, "
                  "~5x faster) or pycocotools (the reference).")

# -- Run ----------------------------------------------------------------------------------
flags.DEFINE_integer("batch_size", 1, "Images per network call (any value; the last batch "
                     "holds the rest).")
flags.DEFINE_integer("max_num_batches", None, "Evaluate only this many batches (default: all).")
flags.DEFINE_string("master", "", "Unused (TF1 session target); accepted for compatibility.")
flags.DEFINE_string("checkpoint_path", "/tmp/tfmodel/",
                    "A checkpoint (prefix or one of its files) or a directory (its latest "
                    "checkpoint; with --wait_for_checkpoints, the directory to watch).")
flags.DEFINE_string("model_path", None,
                    "Evaluate an exported model instead of a checkpoint: a SavedModel (or "
                    "export) folder, a .tflite or an .onnx file (export_ssd_network.py). Its "
                    "preprocessing and post-processing are the exported ones.")
flags.DEFINE_string("eval_dir", None,
                    "Where metrics.json, metrics.jsonl and the TensorBoard events go "
                    "(default: <checkpoint directory>/eval_<split>).")
flags.DEFINE_integer("num_preprocessing_threads", 4, "Parallel image decoding/preprocessing calls.")
flags.DEFINE_float("moving_average_decay", None,
                   "If set, evaluate the exponential moving averages of a TF1 checkpoint's "
                   "weights (its .../ExponentialMovingAverage shadows; the value itself is not "
                   "used). train_ssd_network.py checkpoints need no flag: they already store "
                   "the averages as the weights to evaluate when training kept them.")
flags.DEFINE_integer("num_threads", None,
                     "CPU threads for TensorFlow ops and the input pipeline (default: all "
                     "cores); set it when evaluating beside training on one machine.")
flags.DEFINE_boolean("wait_for_checkpoints", False,
                     "Watch --checkpoint_path (a directory) and evaluate each new checkpoint once.")
flags.DEFINE_float("eval_interval_secs", 60.0, "Seconds between looks for new checkpoints.")
flags.DEFINE_float("eval_timeout", None,
                   "With --wait_for_checkpoints: stop after this many seconds without a new "
                   "checkpoint (default: never).")
flags.DEFINE_string("detections_dir", None,
                    "Also write the detections: VOC devkit files comp4_det_<split>_<class>.txt "
                    "(1-based pixels of the original image, full precision) and "
                    "detections_<split>_coco.json (COCO results; with the COCO metric on rebuilt "
                    "ground truth also groundtruth_<split>_coco.json).")


def _check_flags() -> None:
    check_required("dataset_name", "dataset_dir")
    check_postprocessing_flags()
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size}: must be >= 1")
    if FLAGS.max_num_batches is not None and FLAGS.max_num_batches < 1:
        raise app.UsageError(f"--max_num_batches={FLAGS.max_num_batches}: must be >= 1")
    if FLAGS.eval_resize not in (1, 2, 3, 4):
        raise app.UsageError(f"--eval_resize={FLAGS.eval_resize}: must be 1 (NONE), 2 "
                             "(CENTRAL_CROP), 3 (PAD_AND_RESIZE) or 4 (WARP_RESIZE)")
    if FLAGS.eval_image_size is not None and FLAGS.eval_image_size < 32:
        raise app.UsageError(f"--eval_image_size={FLAGS.eval_image_size}: too small")
    if FLAGS.gpu_memory_fraction is not None and not 0 < FLAGS.gpu_memory_fraction <= 1:
        raise app.UsageError(f"--gpu_memory_fraction={FLAGS.gpu_memory_fraction}: must be in "
                             "(0, 1]")
    if FLAGS.num_threads is not None and FLAGS.num_threads < 1:
        raise app.UsageError(f"--num_threads={FLAGS.num_threads}: must be >= 1")
    if FLAGS.eval_interval_secs <= 0:
        raise app.UsageError(f"--eval_interval_secs={FLAGS.eval_interval_secs}: must be > 0")
    if FLAGS.eval_timeout is not None and FLAGS.eval_timeout < 0:
        raise app.UsageError(f"--eval_timeout={FLAGS.eval_timeout}: must be >= 0")
    if FLAGS.moving_average_decay is not None and not 0 < FLAGS.moving_average_decay < 1:
        raise app.UsageError(f"--moving_average_decay={FLAGS.moving_average_decay}: must be in "
                             "(0, 1)")
    if FLAGS.wait_for_checkpoints and not os.path.isdir(FLAGS.checkpoint_path) and \
            os.path.exists(FLAGS.checkpoint_path):
        raise app.UsageError(f"--checkpoint_path={FLAGS.checkpoint_path}: --wait_for_checkpoints "
                             "needs a directory to watch")
    if FLAGS.coco_annotations_file and FLAGS.metric == "voc":
        raise app.UsageError("--coco_annotations_file is for --metric=coco")
    if FLAGS.master:
        logging.warning("--master=%s is ignored (no TF1 sessions).", FLAGS.master)
    if FLAGS.model_path:
        for name in ("wait_for_checkpoints", "moving_average_decay", "mixed_precision",
                     "eval_image_size"):
            if FLAGS[name].present:
                raise app.UsageError(f"--{name} does not apply to --model_path (an exported "
                                     "model has its weights, size and precision)")
        if FLAGS.eval_resize != 4:
            raise app.UsageError("--eval_resize: an exported model has the warp resize (4) "
                                 "inside")
        for name in ("select_threshold", "nms_threshold", "select_top_k", "keep_top_k",
                     "model_name", "num_classes", "anchor_preset", "checkpoint_path"):
            if FLAGS[name].present:
                logging.warning("--%s is ignored with --model_path (the export's own settings "
                                "apply).", name)


def _print_record(record: dict, voc_metric: str) -> None:
    if "coco" in record:
        print(eval_outputs.format_coco_table(record), flush=True)
        print(f"VOC mAP@0.5 ({voc_metric}): VOC07 {record['mAP_VOC07']}, "
              f"VOC12 {record['mAP_VOC12']}", flush=True)
    else:
        print(eval_outputs.format_ap_table(record), flush=True)


def _default_eval_dir() -> str:
    if FLAGS.model_path:
        path = FLAGS.model_path.rstrip("/") or "."
        return os.path.join(os.path.dirname(path) or ".", f"eval_{FLAGS.dataset_split_name}")
    path = FLAGS.checkpoint_path.rstrip("/") or "."
    base = path if (os.path.isdir(path) or FLAGS.wait_for_checkpoints) else os.path.dirname(path)
    return os.path.join(base or ".", f"eval_{FLAGS.dataset_split_name}")


def _dataset_spec():
    """The dataset to evaluate on, from the dataset flags; it must hold TFRecord files."""
    spec = dataset_factory.get_dataset(FLAGS.dataset_name, FLAGS.dataset_split_name,
                                       FLAGS.dataset_dir, file_pattern=FLAGS.file_pattern,
                                       labels_file=FLAGS.labels_file)
    if not spec.files():
        raise FileNotFoundError(f"--dataset_dir={FLAGS.dataset_dir}: no TFRecord files match "
                                f"{' or '.join(spec.file_patterns)}")
    return spec


def main(argv: list[str]) -> int:
    """Turn the flags into library calls; returns the exit code."""
    _check_flags()
    devices.configure_devices(num_threads=FLAGS.num_threads,
                              gpu_memory_fraction=FLAGS.gpu_memory_fraction)
    if FLAGS.model_path:
        return _evaluate_exported()
    try:
        nets_factory.get_network(FLAGS.model_name)
        preprocess_fn = preprocessing_factory.get_preprocessing(
            FLAGS.preprocessing_name or FLAGS.model_name, is_training=False,
            resize=FLAGS.eval_resize)
        config = config_from_flags(evaluation.EvalConfig,
                                   use_moving_average=FLAGS.moving_average_decay is not None)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    spec = _dataset_spec()
    eval_dir = FLAGS.eval_dir or _default_eval_dir()
    evaluator = evaluation.CheckpointEvaluator(
        model_name=FLAGS.model_name, dataset_spec=spec, preprocess_fn=preprocess_fn,
        config=config, eval_dir=eval_dir, detections_dir=FLAGS.detections_dir,
        num_classes=FLAGS.num_classes, anchor_preset=FLAGS.anchor_preset,
        image_size=FLAGS.eval_image_size, num_parallel_calls=FLAGS.num_preprocessing_threads,
        num_threads=FLAGS.num_threads, check_size=FLAGS.eval_resize == 1,
        dtype_policy=devices.dtype_policy(FLAGS.mixed_precision))

    def report(record: dict) -> None:
        _print_record(record, evaluator.voc_metric)

    try:
        if FLAGS.wait_for_checkpoints:
            stats = evaluation.evaluate_as_trained(
                evaluator, FLAGS.checkpoint_path, interval_secs=FLAGS.eval_interval_secs,
                timeout_secs=FLAGS.eval_timeout, on_record=report)
            print(f"Evaluated {len(stats.evaluated)} checkpoint(s); {len(stats.deleted)} deleted "
                  f"before evaluation, {len(stats.failed)} unreadable. Results in {eval_dir}.",
                  flush=True)
        else:
            report(evaluator.evaluate(resolve_checkpoint(FLAGS.checkpoint_path)))
            print(f"Results in {eval_dir}.", flush=True)
    finally:
        evaluator.close()
    return 0


def _evaluate_exported() -> int:
    """--model_path: the exported model in its runtime, through the same evaluation loop."""
    model = runtime.load(FLAGS.model_path, num_threads=FLAGS.num_threads)
    name = model.model_name or FLAGS.preprocessing_name or FLAGS.model_name
    overrides = {"use_moving_average": False}
    if model.input_size is None:
        # The model resizes inside: it gets the original images, one at a time.
        resize = Resize.NONE
        if FLAGS.batch_size != 1:
            logging.info("%s takes images of any size: evaluating one image per call.",
                         FLAGS.model_path)
        overrides["batch_size"] = 1
    else:
        resize = Resize.WARP_RESIZE
    settings = model.metadata.get("postprocess") or {}
    for key in ("select_threshold", "nms_threshold", "select_top_k", "keep_top_k"):
        if key in settings:
            overrides[key] = settings[key]
    try:
        preprocess_fn = preprocessing_factory.get_preprocessing(name, is_training=False,
                                                               resize=resize)
        config = config_from_flags(evaluation.EvalConfig, **overrides)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    spec = _dataset_spec()
    eval_dir = FLAGS.eval_dir or _default_eval_dir()
    evaluator = evaluation.CheckpointEvaluator(
        model_name=name, dataset_spec=spec, preprocess_fn=preprocess_fn, config=config,
        eval_dir=eval_dir, detections_dir=FLAGS.detections_dir,
        num_parallel_calls=FLAGS.num_preprocessing_threads, num_threads=FLAGS.num_threads)
    print(f"Evaluating {model.describe()}", flush=True)
    try:
        _print_record(evaluator.evaluate_model(model), evaluator.voc_metric)
        print(f"Results in {eval_dir}.", flush=True)
    finally:
        evaluator.close()
    return 0


if __name__ == "__main__":
    app.run(main)
