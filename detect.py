"""Detect objects in image files with an SSD checkpoint; writes one JSON file per image.

    python detect.py --checkpoint_path=checkpoints/ssd_300_vgg.ckpt --anchor_preset=coco_ft \
        --output_dir=detections demo/*.jpg

Each ``<output_dir>/<image stem>.json`` holds the image size and the detections, best first:
``{"class_id", "class_name", "score", "bbox": {"ymin", "xmin", "ymax", "xmax"}}`` in pixels of
the original image. Exit codes: 2 usage error, 1 data error (unreadable image or checkpoint).
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_name", None, "Network name (ssd_300_vgg, ssd_512_vgg, ...). Default: "
                    "the checkpoint's .ssd.json sidecar, else its variable scope, else ssd_300_vgg.")
flags.DEFINE_string("checkpoint_path", None, "Checkpoint prefix, file or directory (latest "
                    "checkpoint). Required unless --random_weights.")
flags.DEFINE_integer("num_classes", None, "Classes including background. Default: the sidecar, "
                     "else the size of the checkpoint's class heads.")
flags.DEFINE_string("anchor_preset", None, "Anchor sizes: voc, voc_caffe, coco_ft, coco_ft_caffe. "
                    "Default: the sidecar, else voc. The original's published ssd_300_vgg.ckpt "
                    "needs coco_ft.")
flags.DEFINE_float("select_threshold", 0.5, "Minimum class score of a detection.")
flags.DEFINE_float("nms_threshold", 0.45, "IoU threshold of the per-class non-maximum suppression.")
flags.DEFINE_integer("select_top_k", 400, "Best boxes per class kept before NMS.")
flags.DEFINE_integer("keep_top_k", 200, "Detections kept per image after NMS.")
flags.DEFINE_integer("batch_size", 4, "Images per forward pass.")
flags.DEFINE_string("labels_file", None, "Label-map file (one class name per line, id = line "
                    "number) for class names; VOC names are used for 21 classes.")
flags.DEFINE_string("output_dir", "detections", "Where the JSON files go.")
flags.DEFINE_boolean("random_weights", False, "Run without a checkpoint (random weights; for "
                     "smoke tests only).")


def fail(message: str, code: int = 1) -> None:
    print(f"detect.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("no image files given (pass them after the flags).", exitcode=2)
    if not FLAGS.checkpoint_path and not FLAGS.random_weights:
        raise app.UsageError("--checkpoint_path is required (or --random_weights).", exitcode=2)
    for name in ("select_threshold", "nms_threshold"):
        if not 0.0 <= getattr(FLAGS, name) <= 1.0:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be in [0, 1].", exitcode=2)
    if FLAGS.batch_size < 1 or FLAGS.keep_top_k < 1 or FLAGS.select_top_k < 1:
        raise app.UsageError("--batch_size, --select_top_k and --keep_top_k must be >= 1.",
                             exitcode=2)
    for path in paths:
        if not os.path.isfile(path):
            fail(f"{path}: image file not found.")

    from datasets import pascalvoc_common
    from nets import checkpoints, detection, nets_factory, ssd_params

    if FLAGS.model_name is not None and FLAGS.model_name not in nets_factory.network_names():
        raise app.UsageError(f"--model_name={FLAGS.model_name} is unknown; valid names: "
                             f"{', '.join(nets_factory.network_names())}.", exitcode=2)
    if FLAGS.anchor_preset is not None and \
            FLAGS.anchor_preset not in ssd_params.anchor_preset_names():
        raise app.UsageError(f"--anchor_preset={FLAGS.anchor_preset} is unknown; valid: "
                             f"{', '.join(ssd_params.anchor_preset_names())}.", exitcode=2)
    class_names = None
    try:
        if FLAGS.labels_file:
            class_names = pascalvoc_common.labels_to_names(
                pascalvoc_common.load_label_map(FLAGS.labels_file))
        net = detection.build_net(FLAGS.model_name, FLAGS.checkpoint_path, FLAGS.num_classes,
                                  FLAGS.anchor_preset)
        if class_names is None and net.params.num_classes == 21:
            class_names = pascalvoc_common.labels_to_names(pascalvoc_common.VOC_CLASSES)
        detector = detection.ImageDetector(
            net, select_threshold=FLAGS.select_threshold, nms_threshold=FLAGS.nms_threshold,
            select_top_k=FLAGS.select_top_k, keep_top_k=FLAGS.keep_top_k)
        results = detector.detect_files(paths, batch_size=FLAGS.batch_size,
                                        class_names=class_names)
    except (FileNotFoundError, ValueError) as err:  # CheckpointMismatchError is a ValueError
        fail(str(err).splitlines()[0] if not isinstance(err, checkpoints.CheckpointMismatchError)
             else str(err))
    extra = {"model_name": net.model_name, "checkpoint": FLAGS.checkpoint_path,
             "anchor_preset": net.params.anchor_preset,
             "select_threshold": FLAGS.select_threshold, "nms_threshold": FLAGS.nms_threshold}
    written = detection.write_results(results, FLAGS.output_dir, extra)
    for result, path in zip(results, written):
        logging.info("%s: %d detections -> %s", result["image"], len(result["detections"]), path)
    print(f"Wrote {len(written)} detection file(s) to {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
