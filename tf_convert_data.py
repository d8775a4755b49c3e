"""Converts a Pascal VOC-format folder into TFRecord shards.

    python tf_convert_data.py --dataset_name=pascalvoc --dataset_dir=VOC2007/ \\
        --output_name=voc_2007_train --output_dir=tfrecords

writes tfrecords/voc_2007_train_000.tfrecord, _001, ... (200 examples each), the files
`dataset_factory.get_dataset('pascalvoc_2007', 'train', 'tfrecords')` reads. See
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
from datasets import pascalvoc_common
from datasets import pascalvoc_to_tfrecords as converter

FLAGS = flags.FLAGS

# Names accepted for --dataset_name; they all mean "a folder in the VOC layout".
_DATASET_NAMES = ("pascalvoc", "pascalvoc_2007", "pascalvoc_2012", "pascalvoc_0712", "voc",
                  "custom")

flags.DEFINE_string("dataset_name", "pascalvoc",
                    f"Dataset kind, one of {', '.join(_DATASET_NAMES)}: all read a VOC-format "
                    "folder; the classes come from --labels (default: the 20 VOC classes).")
flags.DEFINE_string("dataset_dir", None,
                    "VOC-format root holding Annotations/, JPEGImages/ and ImageSets/Main/ "
                    "(e.g. VOCdevkit/VOC2007), with or without a trailing '/'.")
flags.DEFINE_string("output_name", "pascalvoc",
                    "Shard name prefix: shards are <output_dir>/<output_name>_NNN.tfrecord. Use "
                    "voc_2007_train, voc_2007_test, voc_2012_trainval... to match the dataset "
                    "factory's patterns.")
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
                     "it such an annotation is an error.")

flags.mark_flag_as_required("dataset_dir")


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    # Turns termination into an exception so the converter removes its temporary files.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.dataset_name not in _DATASET_NAMES:
        raise UsageError(f"--dataset_name={FLAGS.dataset_name} is unknown; valid names: "
                         f"{', '.join(_DATASET_NAMES)}")
    if not os.path.isdir(FLAGS.dataset_dir):
        raise UsageError(f"--dataset_dir={FLAGS.dataset_dir}: no such folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", force=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
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
    # converter.DataError names the file and the problem: one line, exit 1 (cli.app).
    print(summary.to_text())
    return 0


if __name__ == "__main__":
    # Positional arguments are refused in main() with the message this script always gave.
    cli.app.run(main, allow_positional=True)
