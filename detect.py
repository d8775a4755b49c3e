"""Detect objects in images (files or folders) and videos with an SSD checkpoint or an
exported model.

    python detect.py --checkpoint_path=demo_output/train/export --labels_file=sample_data/labels.txt \\
        --output_dir=detections sample_data/JPEGImages/test_000001.jpg some_folder/
    python detect.py --model_path=exported/model_int8.tflite --output_dir=detections clip.mp4

For each image ``<stem>.<ext>`` it writes, in ``--output_dir``:

* ``<stem>.json``: the image path and size and its detections, best first,
  ``{"class_id", "class_name", "score", "bbox": {"ymin", "xmin", "ymax", "xmax"}}`` in pixels of
  the original image (not of the network input), plus the model name, checkpoint and thresholds;
* ``<stem>.png`` (unless ``--nodraw``): the image with the boxes, class names and scores drawn;

and ``detections.json``, all images in one file. Folders are searched (not recursively) for
.jpg/.jpeg/.png/.bmp/.gif files, with a progress bar. The images go through the eval
preprocessing of ``eval_ssd_network.py`` (the library is the ``inference`` package).

A video file (.mp4, .avi, .mov, read with OpenCV) gives ``<stem>.jsonl`` (one line per frame:
frame index, timestamp in seconds, detections in pixels) and, unless ``--nodraw``,
``<stem>_detections<ext>`` with the boxes drawn; a progress bar runs and the frames per
second are printed.

``--model_path`` runs an exported model (``export_ssd_network.py``: a SavedModel or export
folder, a .tflite or an .onnx file) in its own runtime instead of a checkpoint; its
post-processing is the one exported, and ``--select_threshold`` keeps the detections above it.

Exit codes: 0 done (also ``--help``); 2 usage error; 1 data error: a missing input, an
unreadable or corrupt checkpoint or exported model (one line naming it), or an unreadable image
or video (each one named on its own line, without output; the others are still processed).
"""
from __future__ import annotations

import os

from absl import flags, logging

import cli.app
from cli.app import UsageError
from cli.flags import (check_postprocessing_flags, define_model_flags,
                       define_postprocessing_flags)
from datasets import pascalvoc_common
from deploy import runtime
from inference import image_files, video
from inference.detector import ImageDetector
from nets import configure

FLAGS = flags.FLAGS
define_model_flags(None, with_preprocessing=False,
                   anchor_default_help="the checkpoint's sidecar, else voc",
                   num_classes_default_help="the checkpoint's sidecar, else the size of its "
                   "class heads")
define_postprocessing_flags(0.5)
flags.DEFINE_string("checkpoint_path", None, "Checkpoint prefix, file or directory (latest "
                    "checkpoint). Required unless --model_path or --random_weights.")
flags.DEFINE_string("model_path", None, "An exported model instead of a checkpoint: a SavedModel "
                    "(or export) folder, a .tflite or an .onnx file (export_ssd_network.py).")
flags.DEFINE_integer("batch_size", 4, "Images per forward pass.")
flags.DEFINE_string("labels_file", None, "Label-map file (one class name per line, id = line "
                    "number) for class names; VOC names are used for 21 classes.")
flags.DEFINE_string("output_dir", "detections", "Where the JSON and PNG files go.")
flags.DEFINE_boolean("draw", True, "Also write <stem>.png with the detections drawn.")
flags.DEFINE_boolean("random_weights", False, "Run without a checkpoint (random weights; for "
                     "smoke tests only).")


def _check_flags(inputs: list[str]) -> None:
    if not inputs:
        raise UsageError("no image files given (pass them after the flags).")
    if FLAGS.model_path and (FLAGS.checkpoint_path or FLAGS.random_weights):
        raise UsageError("--model_path runs an exported model: give it without "
                         "--checkpoint_path or --random_weights.")
    if not FLAGS.checkpoint_path and not FLAGS.random_weights and not FLAGS.model_path:
        raise UsageError("--checkpoint_path is required (or --model_path, or --random_weights).")
    check_postprocessing_flags()
    if FLAGS.batch_size < 1:
        raise UsageError(f"--batch_size={FLAGS.batch_size}: must be >= 1")


def _exported_detector():
    """The exported model of --model_path, keeping the detections above --select_threshold."""
    model = runtime.load(FLAGS.model_path)
    baked = model.select_threshold
    if baked is not None and FLAGS.select_threshold < baked:
        logging.warning("%s was exported with select_threshold %s: detections scoring below it "
                        "are not in the model's output.", FLAGS.model_path, baked)
    model.min_score = FLAGS.select_threshold
    for name in ("nms_threshold", "select_top_k", "keep_top_k", "model_name", "num_classes",
                 "anchor_preset"):
        if FLAGS[name].present:
            logging.warning("--%s is ignored with --model_path (the export's own settings "
                            "apply).", name)
    extra = {"model_name": model.model_name, "model_path": FLAGS.model_path,
             "model_format": model.format, "select_threshold": FLAGS.select_threshold}
    return model, model.class_names or None, extra


def _checkpoint_detector():
    net = configure.build_net(FLAGS.model_name, checkpoint=FLAGS.checkpoint_path or None,
                              num_classes=FLAGS.num_classes, anchor_preset=FLAGS.anchor_preset)
    class_names = None
    if net.params.num_classes == 21:
        class_names = pascalvoc_common.labels_to_names(pascalvoc_common.VOC_CLASSES)
    detector = ImageDetector(net, select_threshold=FLAGS.select_threshold,
                             nms_threshold=FLAGS.nms_threshold, select_top_k=FLAGS.select_top_k,
                             keep_top_k=FLAGS.keep_top_k)
    extra = {"model_name": net.model_name, "checkpoint": FLAGS.checkpoint_path,
             "anchor_preset": net.params.anchor_preset,
             "select_threshold": FLAGS.select_threshold, "nms_threshold": FLAGS.nms_threshold}
    return detector, class_names, extra


def main(argv: list[str]) -> int:
    inputs = argv[1:]
    _check_flags(inputs)
    videos = [i for i in inputs if os.path.isfile(i) and video.is_video(i)]
    images = [i for i in inputs if i not in videos]
    paths = image_files.list_images(images)
    detector, class_names, extra = (_exported_detector() if FLAGS.model_path
                                    else _checkpoint_detector())
    if FLAGS.labels_file:
        class_names = pascalvoc_common.labels_to_names(
            pascalvoc_common.load_label_map(FLAGS.labels_file))
    failed: list[str] = []
    if paths:
        try:
            run = image_files.detect_images(detector, paths, FLAGS.output_dir,
                                            class_names=class_names, batch_size=FLAGS.batch_size,
                                            draw=FLAGS.draw, extra=extra,
                                            progress=any(os.path.isdir(i) for i in images))
        except OSError as err:
            cli.app.fail(f"{FLAGS.output_dir}: cannot write results ({err.strerror or err}).")
        for result in run.results:
            logging.info("%s: %d detections -> %s", result["image"], len(result["detections"]),
                         result["json"])
        drawn = " and annotated PNG" if FLAGS.draw else ""
        print(f"Wrote {len(run.results)} detection file(s){drawn} to {FLAGS.output_dir} "
              f"(all images: {run.index})")
        failed += run.failed
    for path in videos:
        try:
            done = video.detect_video(detector, path, FLAGS.output_dir, class_names=class_names,
                                      batch_size=FLAGS.batch_size, draw=FLAGS.draw)
        except (FileNotFoundError, ValueError) as err:
            failed.append(str(err))
            continue
        except OSError as err:
            cli.app.fail(f"{FLAGS.output_dir}: cannot write results ({err.strerror or err}).")
        outputs = ", ".join(p for p in (done.annotated, done.jsonl) if p)
        print(f"{path}: {done.frames} frames in {done.seconds:.1f} s "
              f"({done.frames_per_second:.1f} frames/s) -> {outputs}", flush=True)
    if failed:
        for message in failed:
            cli.app.report_error(message)
        return cli.app.DATA_ERROR
    return 0


if __name__ == "__main__":
    cli.app.run(main, allow_positional=True)
