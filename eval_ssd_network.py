r"""Evaluate SSD checkpoints on a TFRecord dataset: Pascal VOC07 / VOC12 mAP.

    python eval_ssd_network.py --eval_dir=logs/eval --dataset_dir=tfrecords \
        --dataset_name=pascalvoc_2007 --dataset_split_name=test --model_name=ssd_300_vgg \
        --checkpoint_path=checkpoints/ssd_300_vgg.ckpt --anchor_preset=coco_ft --batch_size=8

Prints a per-class AP table (VOC07 11-point and VOC12 area under the curve) and the mAPs,
writes <eval_dir>/metrics.json (the last result), appends one JSON line per evaluated
checkpoint to <eval_dir>/metrics.jsonl, and writes TensorBoard summaries in eval_dir.
With --wait_for_checkpoints it watches the --checkpoint_path directory and evaluates
every new checkpoint once, oldest first, as training writes them.

The flags are the original project's (balancap/SSD-Tensorflow) with its defaults, except
where those were bugs: --model_name defaults to ssd_300_vgg (not inception_v3), and
--dataset_name has no default (it was imagenet). See docs/evaluation.md.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

# The flag definitions need no TensorFlow; it is imported in main() so that --help is quick.
FLAGS = flags.FLAGS

# -- Detection (the original's flags, Caffe SSD test-net values) -----------------------------
flags.DEFINE_float("select_threshold", 0.01, "Minimum class score of a detection candidate.")
flags.DEFINE_integer("select_top_k", 400, "Candidates per class kept before NMS.")
flags.DEFINE_integer("keep_top_k", 200, "Detections kept per image after NMS (all classes).")
flags.DEFINE_float("nms_threshold", 0.45, "Per-class non-maximum suppression IoU threshold.")
flags.DEFINE_float("matching_threshold", 0.5,
                   "A detection matches a ground-truth box when their IoU is above this.")
flags.DEFINE_integer("eval_resize", 4,
                     "Image resizing: 1 NONE (images must already have the network size), "
                     "2 CENTRAL_CROP, 3 PAD_AND_RESIZE, 4 WARP_RESIZE (default).")
flags.DEFINE_integer("eval_image_size", None,
                     "Network input side in pixels (default: the checkpoint's / the model's, "
                     "e.g. 300).")
flags.DEFINE_boolean("remove_difficult", True,
                     "VOC semantics: difficult boxes are neither to be found nor false "
                     "positives when detected. --noremove_difficult counts them as ordinary boxes.")
flags.DEFINE_integer("num_classes", None,
                     "Number of classes including the background (default: the checkpoint's "
                     "sidecar, else its class heads, else the dataset's; 21 for VOC).")
flags.DEFINE_string("anchor_preset", None,
                    "Anchor sizes: voc, coco_ft, voc_caffe, coco_ft_caffe (default: the "
                    "checkpoint's sidecar, else the model default 'voc'). The original's "
                    "published ssd_300_vgg.ckpt needs coco_ft.")

# -- Run ----------------------------------------------------------------------------------
flags.DEFINE_integer("batch_size", 1, "Images per network call (any value; the last batch "
                     "holds the rest).")
flags.DEFINE_integer("max_num_batches", None, "Evaluate only this many batches (default: all).")
flags.DEFINE_string("master", "", "Unused (TF1 session target); accepted for compatibility.")
flags.DEFINE_string("checkpoint_path", "/tmp/tfmodel/",
                    "A checkpoint (prefix or one of its files) or a directory (its latest "
                    "checkpoint; with --wait_for_checkpoints, the directory to watch).")
flags.DEFINE_string("eval_dir", None,
                    "Where metrics.json, metrics.jsonl and the TensorBoard events go "
                    "(default: <checkpoint directory>/eval_<split>).")
flags.DEFINE_integer("num_preprocessing_threads", 4, "Parallel image decoding/preprocessing calls.")
flags.DEFINE_float("moving_average_decay", None,
                   "If set, evaluate the exponential moving averages of a TF1 checkpoint's "
                   "weights (its .../ExponentialMovingAverage shadows; the value itself is not "
                   "used). train_ssd_network.py checkpoints need no flag: they already store "
                   "the averages as the weights to evaluate when training kept them.")
flags.DEFINE_float("gpu_memory_fraction", None,
                   "Fraction of GPU memory to take (default: grow as needed, so that "
                   "evaluation can run beside training).")
flags.DEFINE_integer("num_threads", None,
                     "CPU threads for TensorFlow ops and the input pipeline (default: all "
                     "cores); set it when evaluating beside training on one machine.")
flags.DEFINE_enum("mixed_precision", None, ["bfloat16", "float16"],
                  "Run the network in bfloat16 or float16 (weights stay float32; outputs and "
                  "post-processing float32). bfloat16 is about 4x faster on CPUs with AMX "
                  "(bench/bench_nets.py); see docs/evaluation.md for its effect on mAP.")
flags.DEFINE_boolean("wait_for_checkpoints", False,
                     "Watch --checkpoint_path (a directory) and evaluate each new checkpoint once.")
flags.DEFINE_float("eval_interval_secs", 60.0, "Seconds between looks for new checkpoints.")
flags.DEFINE_float("eval_timeout", None,
                   "With --wait_for_checkpoints: stop after this many seconds without a new "
                   "checkpoint (default: never).")
flags.DEFINE_string("detections_dir", None,
                    "Also write the detections: VOC devkit files comp4_det_<split>_<class>.txt "
                    "(1-based pixels of the original image) and detections_<split>_coco.json.")

# -- Data and model ---------------------------------------------------------------------------
flags.DEFINE_string("dataset_name", None, "pascalvoc_2007, pascalvoc_2012, pascalvoc_0712 or voc.")
flags.DEFINE_string("dataset_split_name", "test", "Split to evaluate.")
flags.DEFINE_string("dataset_dir", None, "Folder of the TFRecord files.")
flags.DEFINE_string("file_pattern", None,
                    "Glob of the TFRecord files, '%s' = the split (default: the dataset's).")
flags.DEFINE_string("labels_file", None,
                    "Label map of a custom VOC-format dataset (one class name per line).")
flags.DEFINE_string("model_name", "ssd_300_vgg", "Network: ssd_300_vgg or ssd_512_vgg.")
flags.DEFINE_string("preprocessing_name", None, "Preprocessing (default: --model_name's).")

flags.mark_flags_as_required(["dataset_name", "dataset_dir"])

USAGE_ERROR = 2
DATA_ERROR = 1


class UsageError(Exception):
    """A flag value that cannot work (exit code 2)."""


def _fail(code: int, message: str) -> None:
    sys.stderr.write(f"eval_ssd_network.py: error: {message}\n")
    sys.exit(code)


def _check_flags() -> None:
    if FLAGS.batch_size < 1:
        raise UsageError(f"--batch_size={FLAGS.batch_size}: must be >= 1")
    if FLAGS.max_num_batches is not None and FLAGS.max_num_batches < 1:
        raise UsageError(f"--max_num_batches={FLAGS.max_num_batches}: must be >= 1")
    if FLAGS.eval_resize not in (1, 2, 3, 4):
        raise UsageError(f"--eval_resize={FLAGS.eval_resize}: must be 1 (NONE), 2 (CENTRAL_CROP), "
                         "3 (PAD_AND_RESIZE) or 4 (WARP_RESIZE)")
    if FLAGS.eval_image_size is not None and FLAGS.eval_image_size < 32:
        raise UsageError(f"--eval_image_size={FLAGS.eval_image_size}: too small")
    if FLAGS.gpu_memory_fraction is not None and not 0 < FLAGS.gpu_memory_fraction <= 1:
        raise UsageError(f"--gpu_memory_fraction={FLAGS.gpu_memory_fraction}: must be in (0, 1]")
    if FLAGS.num_threads is not None and FLAGS.num_threads < 1:
        raise UsageError(f"--num_threads={FLAGS.num_threads}: must be >= 1")
    if FLAGS.eval_interval_secs <= 0:
        raise UsageError(f"--eval_interval_secs={FLAGS.eval_interval_secs}: must be > 0")
    if FLAGS.eval_timeout is not None and FLAGS.eval_timeout < 0:
        raise UsageError(f"--eval_timeout={FLAGS.eval_timeout}: must be >= 0")
    if FLAGS.moving_average_decay is not None and not 0 < FLAGS.moving_average_decay < 1:
        raise UsageError(f"--moving_average_decay={FLAGS.moving_average_decay}: must be in (0, 1)")
    if FLAGS.wait_for_checkpoints and not os.path.isdir(FLAGS.checkpoint_path) and \
            os.path.exists(FLAGS.checkpoint_path):
        raise UsageError(f"--checkpoint_path={FLAGS.checkpoint_path}: --wait_for_checkpoints "
                         "needs a directory to watch")
    if FLAGS.master:
        logging.warning("--master=%s is ignored (no TF1 sessions).", FLAGS.master)


def _default_eval_dir() -> str:
    path = FLAGS.checkpoint_path.rstrip("/") or "."
    base = path if (os.path.isdir(path) or FLAGS.wait_for_checkpoints) else os.path.dirname(path)
    return os.path.join(base or ".", f"eval_{FLAGS.dataset_split_name}")


def run() -> int:
    """Turn the flags into library calls; returns the exit code."""
    _check_flags()
    from engine import evaluation  # noqa: E402  (TensorFlow import, after --help)

    evaluation.configure_runtime(num_threads=FLAGS.num_threads,
                                 gpu_memory_fraction=FLAGS.gpu_memory_fraction)
    from datasets import dataset_factory
    from engine import checkpoint_watch
    from nets import nets_factory
    from preprocessing import preprocessing_factory

    try:
        nets_factory.get_network(FLAGS.model_name)
        preprocess_fn = preprocessing_factory.get_preprocessing(
            FLAGS.preprocessing_name or FLAGS.model_name, is_training=False,
            resize=FLAGS.eval_resize)
        config = evaluation.EvalConfig(
            select_threshold=FLAGS.select_threshold, nms_threshold=FLAGS.nms_threshold,
            select_top_k=FLAGS.select_top_k, keep_top_k=FLAGS.keep_top_k,
            matching_threshold=FLAGS.matching_threshold, remove_difficult=FLAGS.remove_difficult,
            batch_size=FLAGS.batch_size, max_num_batches=FLAGS.max_num_batches,
            use_moving_average=FLAGS.moving_average_decay is not None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    spec = dataset_factory.get_dataset(FLAGS.dataset_name, FLAGS.dataset_split_name,
                                       FLAGS.dataset_dir, file_pattern=FLAGS.file_pattern,
                                       labels_file=FLAGS.labels_file)
    if not spec.files():
        raise FileNotFoundError(f"--dataset_dir={FLAGS.dataset_dir}: no TFRecord files match "
                                f"{' or '.join(spec.file_patterns)}")
    eval_dir = FLAGS.eval_dir or _default_eval_dir()
    evaluator = evaluation.CheckpointEvaluator(
        model_name=FLAGS.model_name, dataset_spec=spec, preprocess_fn=preprocess_fn,
        config=config, eval_dir=eval_dir, detections_dir=FLAGS.detections_dir,
        num_classes=FLAGS.num_classes, anchor_preset=FLAGS.anchor_preset,
        image_size=FLAGS.eval_image_size, num_parallel_calls=FLAGS.num_preprocessing_threads,
        num_threads=FLAGS.num_threads, check_size=FLAGS.eval_resize == 1,
        dtype_policy=f"mixed_{FLAGS.mixed_precision}" if FLAGS.mixed_precision else None)

    def report(record: dict) -> None:
        print(evaluation.format_ap_table(record), flush=True)

    try:
        if FLAGS.wait_for_checkpoints:
            stats = evaluation.evaluate_as_trained(
                evaluator, FLAGS.checkpoint_path, interval_secs=FLAGS.eval_interval_secs,
                timeout_secs=FLAGS.eval_timeout, on_record=report)
            print(f"Evaluated {len(stats.evaluated)} checkpoint(s); {len(stats.deleted)} deleted "
                  f"before evaluation, {len(stats.failed)} unreadable. Results in {eval_dir}.",
                  flush=True)
        else:
            prefix = checkpoint_watch.resolve_checkpoint(FLAGS.checkpoint_path)
            report(evaluator.evaluate(prefix))
            print(f"Results in {eval_dir}.", flush=True)
    finally:
        evaluator.close()
    return 0


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(USAGE_ERROR, f"unexpected arguments {argv[1:]} (flags are --name=value)")
    try:
        code = run()
    except UsageError as err:
        _fail(USAGE_ERROR, str(err))
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    except Exception as err:  # One clear line for data/checkpoint problems, no traceback.
        from engine import evaluation
        from tf_extended.errors import describe_error

        code = USAGE_ERROR if isinstance(err, evaluation.SettingsError) else DATA_ERROR
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.exception("Evaluation failed")
        _fail(code, describe_error(err))
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, but a bad or missing flag exits with code 2 and one line."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        _fail(USAGE_ERROR, f"{err} (see --help)")
        raise  # unreachable


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
