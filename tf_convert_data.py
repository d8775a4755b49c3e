"""Converts a Pascal VOC-format folder or a COCO detection JSON into TFRecord shards.

    python tf_convert_data.py --dataset_name=pascalvoc --dataset_dir=VOC2007/ \\
        --output_name=voc_2007_train --output_dir=tfrecords

writes tfrecords/voc_2007_train_000.tfrecord, _001, ... (200 examples each), the files
`dataset_factory.get_dataset('pascalvoc_2007', 'train', 'tfrecords')` reads.

    python tf_convert_data.py --dataset_name=coco \\
        --annotations_file=annotations/instances_val2017.json --images_dir=val2017/ \\
        --output_name=coco_2017_val --output_dir=tfrecords

writes tfrecords/coco_2017_val_NNN.tfrecord and tfrecords/coco_2017_val_label_map.json (COCO
category ids -> labels 1..80), read by `get_dataset('coco_2017', 'val', 'tfrecords')`. See
docs/datasets.md. Exit codes: 0 done (also --help), 1 bad data (one line naming the file),
2 usage error, 130 interrupted (no shard written).
"""
from __future__ import annotations

import logging
import os
import signal

from absl import flags

import cli.app
from cli.app import UsageError
from datasets import coco_to_tfrecords
from datasets import pascalvoc_common
from datasets import pascalvoc_to_tfrecords as converter

FLAGS = flags.FLAGS

# Names accepted for --dataset_name; they all mean "a folder in the VOC layout".
_VOC_NAMES = ("pascalvoc", "pascalvoc_2007", "pascalvoc_2012", "pascalvoc_0712", "voc", "custom")
# Names that mean "a COCO-format annotation file (--annotations_file) and its images".
_COCO_NAMES = ("coco", "coco_2014", "coco_2017")
_DATASET_NAMES = _VOC_NAMES + _COCO_NAMES

flags.DEFINE_string("dataset_name", "pascalvoc",
                    f"Dataset kind: {', '.join(_VOC_NAMES)} read a VOC-format folder "
                    "(--dataset_dir; the classes come from --labels, default the 20 VOC classes); "
                    f"{', '.join(_COCO_NAMES)} read a COCO detection JSON (--annotations_file, "
                    "--images_dir; the classes are its categories).")
flags.DEFINE_string("dataset_dir", None,
                    "VOC-format root holding Annotations/, JPEGImages/ and ImageSets/Main/ "
                    "(e.g. VOCdevkit/VOC2007), with or without a trailing '/'. Required for VOC.")
flags.DEFINE_string("annotations_file", None,
                    "COCO: the detection annotation file, e.g. annotations/instances_val2017.json "
                    "(images, annotations, categories). Required for COCO.")
flags.DEFINE_string("images_dir", None,
                    "COCO: the folder the annotation file's image file_names are relative to, "
                    "e.g. val2017/. Required for COCO.")
flags.DEFINE_string("output_name", "pascalvoc",
                    "Shard name prefix: shards are <output_dir>/<output_name>_NNN.tfrecord. Use "
                    "voc_2007_train, voc_2007_test, voc_2012_trainval..., coco_2017_train, "
                    "coco_2017_val, coco_2014_minival... to match the dataset factory's patterns. "
                    "COCO also writes <output_dir>/<output_name>_label_map.json.")
flags.DEFINE_string("output_dir", "./", "Folder for the shards (created if missing).")
flags.DEFINE_string("split", None,
                    "Convert only the ids of ImageSets/Main/<split>.txt (e.g. trainval, test), or "
                    "of the file at this path (a value with '/' or ending in .txt). Default: every XML in Annotations/, sorted by name "
                    "(the original converter's behaviour).")
flags.DEFINE_string("labels", None,
                    "Label-map file for custom datasets: one class name per line, the n-th name "
                    "gets label n (0 is the background and is not listed); blank lines and lines "
                    "starting with '#' are ignored. Default: the 20 VOC classes, 1 aeroplane ... "
                    "20 tvmonitor.")
flags.DEFINE_integer("samples_per_shard", 200, "Examples per shard (the original's 200).",
                     lower_bound=1)
flags.DEFINE_integer("num_workers", None,
                     "Processes that read and check images in parallel (default: all usable "
                     "cores). 1 = no worker processes.", lower_bound=1)
flags.DEFINE_boolean("shuffle", False, "Shuffle the image order (reproducibly, with --seed).")
flags.DEFINE_integer("seed", 4242, "Shuffling seed (the original's 4242).")
flags.DEFINE_boolean("overwrite", False,
                     "Replace existing <output_name>_NNN.tfrecord shards in --output_dir "
                     "(without it their presence is an error).")
flags.DEFINE_boolean("skip_errors", False,
                     "Skip bad examples (each logged; listed in the summary) instead of stopping "
                     "at the first one.")
flags.DEFINE_boolean("allow_empty", False,
                     "Keep images whose annotation has no <object> (negative examples); without "
                     "it such an annotation is an error. (COCO always keeps images without "
                     "annotations.)")


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    # Turns termination into an exception so the converter removes its temporary files.
    raise KeyboardInterrupt(f"signal {signum}")


def _check_flags() -> bool:
    """Usage errors of the flag combination; True for COCO, False for VOC."""
    if FLAGS.dataset_name not in _DATASET_NAMES:
        raise UsageError(f"--dataset_name={FLAGS.dataset_name} is unknown; valid names: "
                         f"{', '.join(_DATASET_NAMES)}")
    if FLAGS.dataset_name in _COCO_NAMES:
        for name in ("annotations_file", "images_dir"):
            if not getattr(FLAGS, name):
                raise UsageError(f"--{name} must have a value for --dataset_name="
                                 f"{FLAGS.dataset_name} (a COCO detection JSON and its images)")
        for name in ("dataset_dir", "split", "labels"):
            if getattr(FLAGS, name):
                raise UsageError(f"--{name} is for VOC folders; COCO takes --annotations_file "
                                 "(one file per split) and --images_dir, and its categories")
        if FLAGS.shuffle:
            raise UsageError("--shuffle is for VOC folders; COCO shards hold the images in "
                             "image-id order")
        return True
    for name in ("annotations_file", "images_dir"):
        if getattr(FLAGS, name):
            raise UsageError(f"--{name} is for COCO (--dataset_name=coco); "
                             f"--dataset_name={FLAGS.dataset_name} reads --dataset_dir")
    if not FLAGS.dataset_dir:
        raise UsageError("--dataset_dir must have a value: the VOC-format root (or pass "
                         "--dataset_name=coco with --annotations_file and --images_dir)")
    if not os.path.isdir(FLAGS.dataset_dir):
        raise UsageError(f"--dataset_dir={FLAGS.dataset_dir}: no such folder")
    return False


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    is_coco = _check_flags()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", force=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if is_coco:
            summary = coco_to_tfrecords.convert_coco(
                annotations_file=FLAGS.annotations_file, images_dir=FLAGS.images_dir,
                output_dir=FLAGS.output_dir, output_name=FLAGS.output_name,
                samples_per_shard=FLAGS.samples_per_shard, num_workers=FLAGS.num_workers,
                overwrite=FLAGS.overwrite, skip_errors=FLAGS.skip_errors)
        else:
            class_names = (pascalvoc_common.load_label_map(FLAGS.labels) if FLAGS.labels
                           else pascalvoc_common.VOC_CLASSES)
            summary = converter.convert_voc(
                dataset_dir=FLAGS.dataset_dir, output_dir=FLAGS.output_dir,
                output_name=FLAGS.output_name, class_names=class_names, split=FLAGS.split,
                samples_per_shard=FLAGS.samples_per_shard, num_workers=FLAGS.num_workers,
                shuffle=FLAGS.shuffle, seed=FLAGS.seed, overwrite=FLAGS.overwrite,
                skip_errors=FLAGS.skip_errors, allow_empty=FLAGS.allow_empty)
    except (converter.UsageError, pascalvoc_common.LabelMapError) as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        cli.app.fail("interrupted; no shard was written", cli.app.INTERRUPTED)
    # DataError (shard_writer's, for both) names the file and the problem: one line, exit 1.
    print(summary.to_text())
    return 0


if __name__ == "__main__":
    # Positional arguments are refused in main() with the message this script always gave.
    cli.app.run(main, allow_positional=True)
