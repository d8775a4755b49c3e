"""Benchmark the exported formats: batch-1 CPU latency and sample test mAP of each, against
the float32 frozen TensorFlow graph that evaluation runs, with OpenVINO running the same
exported ONNX file as the peer.

Run: ``python bench/bench_export.py`` (``--demo_dir``, ``--models``, ``--repeats``,
``--num_threads``). Needs ai-edge-litert, onnxruntime and openvino (requirements-bench.txt).

For each model (``demo``: the trained ``ssd_160_vgg_lite`` of ``make demo``, read from
``--demo_dir``, run first when missing; ``ssd_300_vgg``: SSD300 with random weights and the
VOC classes, since no trained SSD300 exists offline) the script exports, with the project's
own ``deploy`` package, a SavedModel, TFLite float32 / float16 / int8 (calibrated on 100
sample trainval images) and ONNX, then times one image at a time, the median of
``--repeats`` calls after warm-up, every runtime on ``--num_threads`` threads:

* frozen TF graph: evaluation's detector (``engine.evaluation.make_detect_fn(frozen=True)``:
  the net with its weights as constants, the NMS, the mapping to the image) on the
  preprocessed image;
* SavedModel: its ``detect_images`` signature (``tf.saved_model.load``) on the uint8 image;
* TFLite: the LiteRT interpreter (XNNPACK) on the warp-resized image;
* ONNX Runtime (CPU provider) and OpenVINO (CPU, f32 inference precision) on the uint8 image.

The image is a sample test image warped to the net's input size, so the formats that resize
inside do an identity-size resize (well under 1 ms). mAP: VOC07 on the sample test split
through the evaluation loop (``eval_ssd_network.py --model_path``'s path), for the trained
demo net; SSD300's random weights have no meaningful mAP, and they keep nearly every
(anchor, class) above the 0.01 threshold, so its post-processing runs at its worst case.
Goals (issue 14): int8 TFLite SSD300 >= 2x faster than the frozen graph with <= 1 point of
mAP lost; every float format within 0.001 of the checkpoint's mAP.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from datasets import dataset_factory, pascalvoc_common  # noqa: E402
from deploy import calibration, export, runtime  # noqa: E402
from deploy.graph import INPUT_NAME, PostprocessSettings, make_tflite_input_fn  # noqa: E402
from engine import evaluation  # noqa: E402
from nets import configure, nets_factory  # noqa: E402
from preprocessing import preprocessing_factory  # noqa: E402
from preprocessing.ssd_vgg_preprocessing import Resize  # noqa: E402

TFLITE_VARIANTS = (("TFLite float32", "model.tflite", "none"),
                   ("TFLite float16", "model_float16.tflite", "float16"),
                   ("TFLite int8", "model_int8.tflite", "int8"))


class OpenVINODetector(runtime.ExportedDetector):
    """The peer: OpenVINO's CPU plugin running the exported ONNX file (f32 precision, so that it
    computes what the other float formats compute)."""

    format = "openvino"

    def __init__(self, path: str, num_threads: int):
        import openvino

        session = runtime.ONNXDetector(path)  # for the metadata only
        super().__init__(path, session.metadata)
        core = openvino.Core()
        self._model = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(num_threads)})
        self._names = [o.get_any_name() for o in self._model.outputs]

    def _run_images(self, images):
        parts = []
        for image in images:
            result = self._model([image[np.newaxis]])
            values = {name: result[out] for name, out in zip(self._names, self._model.outputs)}
            parts.append(runtime.as_detections(
                values["detection_boxes"], values["detection_scores"],
                values["detection_classes"], values["num_detections"]))
        return runtime.concat_detections(parts)


@dataclasses.dataclass
class Row:
    name: str
    ms: float
    size_mb: float | None = None
    map07: float | None = None


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def ensure_demo(demo_dir: str) -> None:
    if os.path.isdir(os.path.join(demo_dir, "train", "export")):
        return
    print(f"{demo_dir}: no trained demo net; running demo.py (about 4 minutes)...", flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), f"--output_dir={demo_dir}"],
                   check=True, cwd=ROOT)


def evaluate(spec, model=None, net=None, checkpoint=None, num_threads=None) -> float:
    """VOC07 mAP on the split through the evaluation loop (a checkpoint or an exported model)."""
    with tempfile.TemporaryDirectory() as eval_dir:
        if model is not None:
            resize = Resize.NONE if model.input_size is None else Resize.WARP_RESIZE
            config = evaluation.EvalConfig(batch_size=1 if model.input_size is None else 8,
                                           **{k: v for k, v in model.metadata["postprocess"].items()})
            evaluator = evaluation.CheckpointEvaluator(
                model_name=model.model_name, dataset_spec=spec,
                preprocess_fn=preprocessing_factory.get_preprocessing(
                    model.model_name, is_training=False, resize=resize),
                config=config, eval_dir=eval_dir, write_tensorboard=False,
                num_threads=num_threads)
            return evaluator.evaluate_model(model)["mAP_VOC07"]
        evaluator = evaluation.CheckpointEvaluator(
            model_name=net.model_name, dataset_spec=spec,
            preprocess_fn=preprocessing_factory.get_preprocessing(net.model_name,
                                                                  is_training=False),
            config=evaluation.EvalConfig(batch_size=8), eval_dir=eval_dir,
            write_tensorboard=False, net=net, num_threads=num_threads)
        return evaluator.evaluate(checkpoint)["mAP_VOC07"]


def bench_model(label: str, net, checkpoint: str | None, class_names, records: str,
                labels_file: str, work: str, args) -> list[Row]:
    out = os.path.join(work, label)
    settings = PostprocessSettings()
    trainval = dataset_factory.get_dataset("voc", "trainval", records, labels_file=labels_file)
    test = dataset_factory.get_dataset("voc", "test", records, labels_file=labels_file)
    cal = calibration.calibration_images(trainval, net.model_name, net.params.img_shape, 100)
    start = time.perf_counter()
    export.export(net, out, ["saved_model", "tflite", "onnx"], settings=settings,
                  class_names=class_names, overwrite=True)
    for _, _, quantization in TFLITE_VARIANTS[1:]:
        export.export(net, out, ["tflite"], settings=settings, class_names=class_names,
                      tflite_quantization=quantization, calibration=lambda: cal)
    print(f"[{label}] exported in {time.perf_counter() - start:.0f} s", flush=True)

    h, w = (int(s) for s in net.params.img_shape)
    image = next(iter(test.read().take(1)))["image"]
    image = tf.cast(tf.image.resize(image, [h, w], antialias=True), tf.uint8).numpy()
    eval_fn = preprocessing_factory.get_preprocessing(net.model_name, is_training=False)
    x, _, _, bbox = eval_fn(image, tf.zeros([0], tf.int64), tf.zeros([0, 4]), (h, w))
    x, bbox = x[tf.newaxis], bbox[tf.newaxis]
    resized = make_tflite_input_fn(net.model_name, (h, w))(image)[0].numpy()[np.newaxis]
    do_map = checkpoint is not None
    rows = []

    detect_fn = evaluation.make_detect_fn(net, evaluation.EvalConfig(), frozen=True)
    rows.append(Row("frozen TF graph (float32)", median_ms(lambda: detect_fn(x, bbox)["scores"]
                                                           .numpy(), args.repeats),
                    map07=evaluate(test, net=net, checkpoint=checkpoint) if do_map else None))
    saved = runtime.load(os.path.join(out, "saved_model"), num_threads=args.num_threads)
    fn = saved._fn  # noqa: SLF001  (the signature itself, without the per-call wrapping)
    batch = tf.constant(image[np.newaxis])
    rows.append(Row("SavedModel", median_ms(lambda: fn(**{INPUT_NAME: batch})["num_detections"]
                                            .numpy(), args.repeats),
                    export._size(os.path.join(out, "saved_model")) / 1e6,  # noqa: SLF001
                    evaluate(test, model=saved) if do_map else None))
    for name, file_name, _ in TFLITE_VARIANTS:
        model = runtime.load(os.path.join(out, file_name), num_threads=args.num_threads)
        rows.append(Row(name + " (XNNPACK)", median_ms(lambda: model._run_inputs(resized),  # noqa: SLF001
                                                       args.repeats),
                        os.path.getsize(os.path.join(out, file_name)) / 1e6,
                        evaluate(test, model=model) if do_map else None))
    onnx_path = os.path.join(out, "model.onnx")
    ort = runtime.load(onnx_path, num_threads=args.num_threads)
    rows.append(Row("ONNX Runtime", median_ms(lambda: ort._run_images([image]), args.repeats),  # noqa: SLF001
                    os.path.getsize(onnx_path) / 1e6, evaluate(test, model=ort) if do_map else None))
    ov = OpenVINODetector(onnx_path, args.num_threads)
    rows.append(Row("OpenVINO (same ONNX, peer)",
                    median_ms(lambda: ov._run_images([image]), args.repeats),  # noqa: SLF001
                    os.path.getsize(onnx_path) / 1e6, evaluate(test, model=ov) if do_map else None))
    return rows


def print_table(label: str, rows: list[Row]) -> None:
    base = rows[0]
    print(f"\n{label}: batch 1, median of the timed calls")
    print(f"| format | ms / image | speed-up vs frozen graph | size MB | test mAP VOC07 | "
          f"mAP - checkpoint |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        size = "-" if row.size_mb is None else f"{row.size_mb:.1f}"
        if row.map07 is None:
            score, delta = "n/a", "n/a"
        else:
            score = f"{row.map07:.4f}"
            delta = "-" if row is base else f"{row.map07 - base.map07:+.4f}"
        print(f"| {row.name} | {row.ms:.1f} | {base.ms / row.ms:.2f}x | {size} | {score} | "
              f"{delta} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo_dir", default=os.path.join(ROOT, "demo_output"),
                        help="the demo's output (train/export, tfrecords); run when missing")
    parser.add_argument("--labels_file", default=os.path.join(ROOT, "sample_data", "labels.txt"))
    parser.add_argument("--models", default="demo,ssd_300_vgg")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--num_threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    ensure_demo(args.demo_dir)
    records = os.path.join(args.demo_dir, "tfrecords")
    class_names = pascalvoc_common.load_label_map(args.labels_file)
    tf.config.threading.set_intra_op_parallelism_threads(args.num_threads)
    print(f"CPU threads: {args.num_threads}; TensorFlow {tf.__version__}", flush=True)
    tables = []
    with tempfile.TemporaryDirectory() as work:
        for label in args.models.split(","):
            if label == "demo":
                checkpoint = os.path.join(args.demo_dir, "train", "export")
                net = configure.build_net(checkpoint=checkpoint)
                names = class_names
                title = f"demo net {net.model_name} (trained, {net.params.num_classes - 1} classes)"
            else:
                cls = nets_factory.get_network(label)
                net = cls(cls.default_params.with_num_classes(21))
                checkpoint, names = None, pascalvoc_common.VOC_CLASSES
                title = f"{label} (random weights, 20 VOC classes)"
            rows = bench_model(label, net, checkpoint, names, records, args.labels_file, work, args)
            tables.append((title, rows))
            print_table(title, rows)
    print("\nSummary")
    for title, rows in tables:
        int8 = next(r for r in rows if r.name.startswith("TFLite int8"))
        line = f"  {title}: int8 TFLite {rows[0].ms / int8.ms:.2f}x the frozen graph"
        if rows[0].map07 is not None:
            floats = [r for r in rows[1:] if r.map07 is not None and "int8" not in r.name]
            worst = max(abs(r.map07 - rows[0].map07) for r in floats)
            line += (f"; int8 mAP {int8.map07 - rows[0].map07:+.4f}; float formats within "
                     f"{worst:.4f} of the checkpoint")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
