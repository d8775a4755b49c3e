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

from absl import flags

import cli.app
from caffe_convert import convert
from cli.app import UsageError
from cli.flags import check_required

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


def _check_file(flag: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "no such file"
        raise UsageError(f"--{flag}={path}: {what}")


def main(argv: list[str]) -> int:
    check_required("caffemodel_path")
    if FLAGS.num_classes is not None and FLAGS.num_classes < 2:
        raise UsageError(f"--num_classes={FLAGS.num_classes}: must be >= 2 (background + classes)")
    _check_file("caffemodel_path", FLAGS.caffemodel_path)
    _check_file("prototxt", FLAGS.prototxt)
    _check_file("verify", FLAGS.verify)
    if FLAGS.model_name not in convert.SUPPORTED_MODELS:
        raise UsageError(f"--model_name={FLAGS.model_name}: not a Caffe SSD network; valid names: "
                         f"{', '.join(convert.SUPPORTED_MODELS)}")
    # caffe_pb.CaffeFormatError / convert.CaffeConversionError name the file and the layer:
    # cli.app prints them as one line, exit 1.
    try:
        net, report = convert.convert_caffemodel(
            FLAGS.model_name, FLAGS.caffemodel_path, output_path=FLAGS.output_path,
            num_classes=FLAGS.num_classes, prototxt_path=FLAGS.prototxt)
    except OSError as e:
        cli.app.fail(f"cannot write {FLAGS.output_path or 'the checkpoint'}: {e}")
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
        diffs = convert.verify_against_caffe(net, FLAGS.verify)
        print(f"Verification against {FLAGS.verify}:")
        for blob, (diff, scale) in diffs.items():
            print(f"  {blob:18s} largest |TF - Caffe| = {diff:.3g}  (largest |Caffe| = {scale:.3g})")
    return 0


if __name__ == "__main__":
    cli.app.run(main)
