"""Detect objects in images (files or folders) with an SSD checkpoint.

    python detect.py --checkpoint_path=demo_output/train/export --labels_file=sample_data/labels.txt \\
        --output_dir=detections sample_data/JPEGImages/test_000001.jpg some_folder/

For each image ``<stem>.<ext>`` it writes, in ``--output_dir``:

* ``<stem>.json``: the image path and size and its detections, best first,
  ``{"class_id", "class_name", "score", "bbox": {"ymin", "xmin", "ymax", "xmax"}}`` in pixels of
  the original image (not of the network input), plus the model name, checkpoint and thresholds;
* ``<stem>.png`` (unless ``--nodraw``): the image with the boxes, class names and scores drawn;

and ``detections.json``, all images in one file. Folders are searched (not recursively) for
.jpg/.jpeg/.png/.bmp/.gif files, with a progress bar. The images go through the eval
preprocessing of ``eval_ssd_network.py`` (the library is the ``inference`` package).

Exit codes: 0 done (also ``--help``); 2 usage error; 1 data error: a missing input, an
unreadable or corrupt checkpoint (one line naming it), or an unreadable image (each one named
on its own line; the other images are still processed and written).
"""
from __future__ import annotations

import os
import sys

from absl import flags, logging

import cli.app
from cli.app import UsageError
from cli.flags import (check_postprocessing_flags, define_model_flags,
                       define_postprocessing_flags)
from datasets import pascalvoc_common
from inference import image_files
from inference.detector import ImageDetector
from nets import configure

FLAGS = flags.FLAGS
define_model_flags(None, with_preprocessing=False,
                   anchor_default_help="the checkpoint's sidecar, else voc",
                   num_classes_default_help="the checkpoint's sidecar, else the size of its "
                   "class heads")
define_postprocessing_flags(0.5)
flags.DEFINE_string("checkpoint_path", None, "Checkpoint prefix, file or directory (latest "
                    "checkpoint). Required unless --random_weights.")
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
    if not FLAGS.checkpoint_path and not FLAGS.random_weights:
        raise UsageError("--checkpoint_path is required (or --random_weights).")
    check_postprocessing_flags()
    if FLAGS.batch_size < 1:
        raise UsageError(f"--batch_size={FLAGS.batch_size}: must be >= 1")


def main(argv: list[str]) -> int:
    inputs = argv[1:]
    _check_flags(inputs)
    paths = image_files.list_images(inputs)
    class_names = None
    if FLAGS.labels_file:
        class_names = pascalvoc_common.labels_to_names(
            pascalvoc_common.load_label_map(FLAGS.labels_file))
    net = configure.build_net(FLAGS.model_name, checkpoint=FLAGS.checkpoint_path or None,
                              num_classes=FLAGS.num_classes, anchor_preset=FLAGS.anchor_preset)
    if class_names is None and net.params.num_classes == 21:
        class_names = pascalvoc_common.labels_to_names(pascalvoc_common.VOC_CLASSES)
    detector = ImageDetector(net, select_threshold=FLAGS.select_threshold,
                             nms_threshold=FLAGS.nms_threshold, select_top_k=FLAGS.select_top_k,
                             keep_top_k=FLAGS.keep_top_k)
    extra = {"model_name": net.model_name, "checkpoint": FLAGS.checkpoint_path,
             "anchor_preset": net.params.anchor_preset,
             "select_threshold": FLAGS.select_threshold, "nms_threshold": FLAGS.nms_threshold}
    try:
        run = image_files.detect_images(detector, paths, FLAGS.output_dir, class_names=class_names,
                                        batch_size=FLAGS.batch_size, draw=FLAGS.draw, extra=extra,
                                        progress=any(os.path.isdir(i) for i in inputs))
    except OSError as err:
        cli.app.fail(f"{FLAGS.output_dir}: cannot write results ({err.strerror or err}).")
    for result in run.results:
        logging.info("%s: %d detections -> %s", result["image"], len(result["detections"]),
                     result["json"])
    drawn = " and annotated PNG" if FLAGS.draw else ""
    print(f"Wrote {len(run.results)} detection file(s){drawn} to {FLAGS.output_dir} "
          f"(all images: {run.index})")
    if run.failed:
        for message in run.failed:
            sys.stderr.write(f"{cli.app.program_name()}: error: {message}\n")
        return cli.app.DATA_ERROR
    return 0


if __name__ == "__main__":
    cli.app.run(main, allow_positional=True)
