r"""Export a trained SSD to SavedModel, TFLite and ONNX, the whole detector inside each file.

    python export_ssd_network.py --checkpoint_path=demo_output/train/export \
        --labels_file=sample_data/labels.txt --output_dir=exported \
        --formats=saved_model,tflite,onnx

    python export_ssd_network.py --checkpoint_path=logs/ssd300 --output_dir=exported \
        --formats=tflite --tflite_quantization=int8 \
        --calibration_dataset_dir=tfrecords --calibration_dataset_name=pascalvoc_2007 \
        --calibration_dataset_split_name=trainval --calibration_count=100

The model (its name, classes and anchors) comes from the checkpoint's .ssd.json sidecar,
overridable with the usual --model_name/--num_classes/--anchor_preset; the post-processing
flags are evaluation's (--select_threshold 0.01 keeps what eval scores, so
``eval_ssd_network.py --model_path`` reproduces the checkpoint's mAP).

Writes into --output_dir: saved_model/ (signatures serving_default: encoded images,
detect_images: uint8 images), model.tflite (model_float16.tflite, model_int8.tflite),
model.onnx, labels.txt and export.json; prints each file, its size and a one-line check that
it runs in its own runtime (TensorFlow, LiteRT, ONNX Runtime). Files are built aside and
renamed into place once all converted: a failed export leaves the folder as it was. A folder
holding another model is refused unless --overwrite. See docs/deploy.md.

Exit codes: 0 done (also --help); 2 usage error; 1 data error (unreadable checkpoint, missing
or empty calibration data, a folder holding another model, a failed conversion).
"""
from __future__ import annotations

import logging
import os

from absl import flags

from cli import app
from cli.flags import (check_postprocessing_flags, check_required, define_model_flags,
                       define_postprocessing_flags)
from datasets import dataset_factory, pascalvoc_common
from deploy import calibration, export, runtime, tflite
from deploy.graph import PostprocessSettings
from nets import configure

FLAGS = flags.FLAGS

define_model_flags(None, anchor_default_help="the checkpoint's sidecar, else voc",
                   num_classes_default_help="the checkpoint's sidecar, else the size of its "
                   "class heads")
define_postprocessing_flags(0.01)
flags.DEFINE_string("checkpoint_path", None,
                    "Checkpoint to export: a prefix, one of its files or a folder (its latest "
                    "checkpoint). Required.")
flags.DEFINE_string("output_dir", None, "Export folder (created). Required.")
flags.DEFINE_string("formats", ",".join(export.FORMATS),
                    f"Comma-separated formats to write: {', '.join(export.FORMATS)}.")
flags.DEFINE_enum("tflite_quantization", "none", list(tflite.QUANTIZATIONS),
                  "TFLite weights/activations: none (float32), float16 (float16 weights), int8 "
                  "(int8 weights and activations, calibrated on --calibration_* images).")
flags.DEFINE_string("labels_file", None,
                    "Class names, one per line (ids 1..N); default: VOC's for 21 classes, else "
                    "the calibration dataset's, else class_<id>.")
flags.DEFINE_string("calibration_dataset_dir", None,
                    "int8: folder of the TFRecords whose images calibrate the activations.")
flags.DEFINE_string("calibration_dataset_name", None,
                    "int8: dataset name of the calibration TFRecords (e.g. pascalvoc_2007, or "
                    "voc for a converted VOC-format folder).")
flags.DEFINE_string("calibration_dataset_split_name", "trainval",
                    "int8: split of the calibration TFRecords.")
flags.DEFINE_string("calibration_file_pattern", None,
                    "int8: glob of the calibration TFRecords ('%s' = the split), relative to "
                    "--calibration_dataset_dir; default: the dataset's.")
flags.DEFINE_integer("calibration_count", 100, "int8: number of calibration images.")
flags.DEFINE_boolean("overwrite", False,
                     "Replace an export of another model in --output_dir (or write into a "
                     "non-empty folder that holds no export).")
flags.DEFINE_boolean("check", True, "Run each written file once in its own runtime.")


def _check_flags() -> list[str]:
    check_required("checkpoint_path", "output_dir")
    check_postprocessing_flags()
    if FLAGS.nms_threshold <= 0:
        raise app.UsageError(f"--nms_threshold={FLAGS.nms_threshold}: must be > 0")
    try:
        formats = export.parse_formats(FLAGS.formats)
    except ValueError as err:
        raise app.UsageError(f"--formats={FLAGS.formats}: {err}") from None
    int8 = "tflite" in formats and FLAGS.tflite_quantization == "int8"
    if int8:
        check_required("calibration_dataset_dir", "calibration_dataset_name")
        if FLAGS.calibration_count < 1:
            raise app.UsageError(f"--calibration_count={FLAGS.calibration_count}: must be >= 1")
    elif FLAGS.calibration_dataset_dir:
        raise app.UsageError("--calibration_dataset_dir is only used with --formats=tflite and "
                             "--tflite_quantization=int8")
    return formats


def _class_names(num_classes: int, spec) -> list[str]:
    if FLAGS.labels_file:
        names = list(pascalvoc_common.load_label_map(FLAGS.labels_file))
        where = f"--labels_file={FLAGS.labels_file}"
    elif num_classes == len(pascalvoc_common.VOC_CLASSES) + 1:
        return list(pascalvoc_common.VOC_CLASSES)
    elif spec is not None:
        names, where = list(spec.class_names), f"the calibration dataset {spec.name}"
    else:
        return [f"class_{i}" for i in range(1, num_classes)]
    if len(names) != num_classes - 1:
        raise app.UsageError(f"{where}: {len(names)} class names, the model has "
                             f"{num_classes - 1} classes (without the background)")
    return names


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def main(argv: list[str]) -> int:
    formats = _check_flags()
    if FLAGS.verbosity <= 0:  # TensorFlow's saver and converters log every step at INFO.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
    net = configure.build_net(FLAGS.model_name, checkpoint=FLAGS.checkpoint_path,
                              num_classes=FLAGS.num_classes, anchor_preset=FLAGS.anchor_preset)
    spec = None
    if "tflite" in formats and FLAGS.tflite_quantization == "int8":
        try:
            spec = dataset_factory.get_dataset(
                FLAGS.calibration_dataset_name, FLAGS.calibration_dataset_split_name,
                FLAGS.calibration_dataset_dir, file_pattern=FLAGS.calibration_file_pattern,
                labels_file=FLAGS.labels_file)
        except pascalvoc_common.LabelMapError:
            raise
        except ValueError as err:
            raise calibration.CalibrationError(f"--calibration_dataset_dir="
                                               f"{FLAGS.calibration_dataset_dir}: {err}") from None
    class_names = _class_names(net.params.num_classes, spec)
    settings = PostprocessSettings(select_threshold=FLAGS.select_threshold,
                                   nms_threshold=FLAGS.nms_threshold,
                                   select_top_k=FLAGS.select_top_k, keep_top_k=FLAGS.keep_top_k)
    preprocessing_name = FLAGS.preprocessing_name or net.model_name

    def calibration_images():
        return calibration.calibration_images(spec, preprocessing_name, net.params.img_shape,
                                              FLAGS.calibration_count)

    print(f"Exporting {net.model_name} ({net.params.num_classes} classes, input "
          f"{net.params.img_shape[0]}x{net.params.img_shape[1]}) from {FLAGS.checkpoint_path} "
          f"to {FLAGS.output_dir}: {', '.join(formats)}", flush=True)
    files = export.export(
        net, FLAGS.output_dir, formats, settings=settings, class_names=class_names,
        tflite_quantization=FLAGS.tflite_quantization,
        calibration=calibration_images if spec is not None else None,
        calibration_source=(f"{spec.name}/{spec.split_name} in {FLAGS.calibration_dataset_dir}"
                            if spec is not None else None),
        overwrite=FLAGS.overwrite, source=FLAGS.checkpoint_path,
        preprocessing_name=preprocessing_name,
        progress=lambda step: print(f"  converting: {step}", flush=True))
    for f in files:
        label = f.format + (f" ({f.quantization})" if f.quantization else "")
        print(f"wrote {label}: {f.path} ({_size(f.size)})", flush=True)
        if FLAGS.check:
            model = runtime.load(f.path)
            count, ms = model.check()
            engine = {"saved_model": "TensorFlow (tf.saved_model.load)", "tflite": "LiteRT",
                      "onnx": "ONNX Runtime"}[f.format]
            print(f"  check: runs in {engine}: {count} detections on a 320x240 test image in "
                  f"{ms:.0f} ms", flush=True)
    print(f"Export in {os.path.abspath(FLAGS.output_dir)} (export.json describes it).", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
