"""Convert a Caffe SSD model (.caffemodel) into this project's TF1-format checkpoint.

No Caffe install is needed. Weights are matched by Caffe layer name (docs/caffe.md has the
table); anchors come from the model's PriorBox layers and are recorded next to the checkpoint
(``X.ckpt.ssd.json``), so eval_ssd_network.py and the notebook rebuild the same net.

    python caffe_to_tensorflow.py --model_name=ssd_300_vgg --num_classes=21 \\
        --caffemodel_path=VGG_VOC0712_SSD_300x300_iter_120000.caffemodel \\
        --prototxt=deploy.prototxt

writes ``VGG_VOC0712_SSD_300x300_iter_120000.ckpt.{index,data-00000-of-00001,ssd.json}``.
``--verify=ref.npz`` then runs the converted net on the input saved from Caffe and prints the
largest difference to Caffe's outputs (see docs/caffe.md for making ref.npz with pycaffe).

Exit codes: 0 done, 2 usage error (bad or missing flag, file not found), 1 data error
(an unreadable or non-matching Caffe file).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model_name", "ssd_300_vgg",
                    "Network to build: ssd_300_vgg (SSD300 Caffe models) or ssd_512_vgg (SSD512).")
flags.DEFINE_integer("num_classes", None,
                     "Number of classes including background (21 for VOC, 81 for COCO). "
                     "Default: read from the caffemodel's first _mbox_conf layer; when given "
                     "it must agree with it.")
flags.DEFINE_string("caffemodel_path", None, "The binary .caffemodel file to convert (required).")
flags.DEFINE_string("output_path", None,
                    "Checkpoint prefix to write. Default: X.ckpt next to X.caffemodel.")
flags.DEFINE_string("prototxt", None,
                    "The model's deploy.prototxt (optional): its PriorBox layers set the "
                    "anchors (min/max size, aspect ratios, flip, step, offset, variance). "
                    "Without it the PriorBox layers stored in the caffemodel are used.")
flags.DEFINE_string("verify", None,
                    "Optional .npz of blobs saved from Caffe for one input: 'data' (the input "
                    "blob, [N,3,H,W] BGR mean-subtracted) and any of 'mbox_loc', 'mbox_conf', "
                    "'mbox_conf_flatten', 'mbox_priorbox'. After converting, runs the TF net "
                    "on 'data' and prints the largest difference for each blob.")

_PROG = os.path.basename(__file__)


def _usage_error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: {message} (see --help)\n")
    sys.exit(2)


def _data_error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: {message}\n")
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag is a usage error (exit 2), not a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _usage_error(str(e))
    return []


def _check_file(flag: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "no such file"
        _usage_error(f"--{flag}={path}: {what}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.caffemodel_path:
        _usage_error("--caffemodel_path is required")
    if FLAGS.num_classes is not None and FLAGS.num_classes < 2:
        _usage_error(f"--num_classes={FLAGS.num_classes}: must be >= 2 (background + classes)")
    _check_file("caffemodel_path", FLAGS.caffemodel_path)
    _check_file("prototxt", FLAGS.prototxt)
    _check_file("verify", FLAGS.verify)

    # Imported here so that --help and usage errors do not pay TensorFlow's import time.
    from nets import caffe_model, caffe_pb

    if FLAGS.model_name not in caffe_model.SUPPORTED_MODELS:
        _usage_error(f"--model_name={FLAGS.model_name}: not a Caffe SSD network; valid names: "
                     f"{', '.join(caffe_model.SUPPORTED_MODELS)}")
    try:
        net, report = caffe_model.convert_caffemodel(
            FLAGS.model_name, FLAGS.caffemodel_path, output_path=FLAGS.output_path,
            num_classes=FLAGS.num_classes, prototxt_path=FLAGS.prototxt)
    except (caffe_pb.CaffeFormatError, caffe_model.CaffeConversionError) as e:
        _data_error(str(e))
    except OSError as e:
        _data_error(f"cannot write {FLAGS.output_path or 'the checkpoint'}: {e}")
    params = report.params
    print(f"Converted {FLAGS.caffemodel_path} -> {report.output_path}: {report.num_variables} "
          f"variables from {report.num_layers} Caffe layers; {FLAGS.model_name}, "
          f"{params.num_classes} classes, anchor preset '{params.anchor_preset}' from "
          f"{report.anchor_source}")
    print(f"  anchor sizes {[tuple(s) for s in params.anchor_sizes]}, steps "
          f"{list(params.anchor_steps)}, offset {params.anchor_offset}")
    if report.warnings:
        print(f"  {len(report.warnings)} warning(s): " + "; ".join(report.warnings))
    if FLAGS.verify:
        try:
            diffs = caffe_model.verify_against_caffe(net, FLAGS.verify)
        except caffe_model.CaffeConversionError as e:
            _data_error(str(e))
        print(f"Verification against {FLAGS.verify}:")
        for blob, (diff, scale) in diffs.items():
            print(f"  {blob:18s} largest |TF - Caffe| = {diff:.3g}  (largest |Caffe| = {scale:.3g})")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main, flags_parser=_parse_flags)
