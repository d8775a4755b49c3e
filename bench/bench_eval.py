"""Benchmark the whole evaluation of SSD300 (batch 8) and the share of time outside the network.

Run: ``python bench/bench_eval.py`` (``--num_images``, ``--batch_size``, ``--repeats``).

What is timed, on the same images in the same run:

1. the whole evaluation, as eval_ssd_network.py runs it: TFRecord read, JPEG decode, eval
   preprocessing (warp resize to 300x300), the batched detector (network + post-processing
   in one tf.function), the NumPy transfer and the VOC metrics (``VOCEvaluator`` updates and
   the final ``result()``);
2. the network alone (``net.inference_function``, weights frozen as evaluation runs it) on the
   same batches held in memory;
3. the detector (network + ``detected_bboxes`` + mapping to the image) on those batches.

Share outside the network = 1 - (2) / (1). The goal is <= 10%. Because the machine may be
shared, the script also gives a within-pass estimate that a load change between passes does
not distort: (time outside the detector in pass 1) combined with (network / detector) from
per-batch interleaved timings of 2 and 3.

The images are the project's sample dataset drawn at a VOC-like 375x500 (JPEG), the network
SSD300 with random weights and 21 classes: random weights put nearly every (anchor, class)
above the 0.01 threshold, so post-processing (top-400 per class, NMS) and the metrics (200
detections per image) run at their worst case. The machine may be shared with other jobs:
figures are then pessimistic.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def build_records(workdir: str, num_images: int) -> tuple[str, str]:
    """Sample-dataset JPEGs (375x500) converted to TFRecords; returns (records dir, labels file)."""
    from datasets import pascalvoc_to_tfrecords, sample_data

    root = os.path.join(workdir, "voc")
    sample_data.generate(root, num_trainval=1, num_test=num_images, seed=0, image_size=(375, 500))
    records = os.path.join(workdir, "records")
    pascalvoc_to_tfrecords.convert_voc(root, records, "test", class_names=sample_data.CLASSES,
                                       split="test", num_workers=1)
    return records, os.path.join(root, sample_data.LABELS_FILENAME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras

    from datasets import dataset_factory
    from engine import evaluation as ev
    from nets import nets_factory
    from preprocessing import preprocessing_factory
    from tf_extended import metrics

    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as workdir:
        t0 = time.perf_counter()
        records, labels = build_records(workdir, args.num_images)
        print(f"data: {args.num_images} JPEG images 375x500 -> TFRecords in "
              f"{time.perf_counter() - t0:.1f} s (not timed below)")
        spec = dataset_factory.get_dataset("voc", "test", records, labels_file=labels)
        net = nets_factory.get_network("ssd_300_vgg")()  # 21 classes, random weights
        config = ev.EvalConfig(batch_size=args.batch_size)
        preprocess = preprocessing_factory.get_preprocessing("ssd_300_vgg", is_training=False)
        dataset = ev.make_eval_dataset(spec.read(), preprocess, net.params.img_shape,
                                       args.batch_size)
        # As eval_ssd_network.py runs it: the weights frozen into the graph (EvalConfig).
        detect = ev.make_detect_fn(net, config, frozen=config.freeze_weights)
        forward = net.inference_function(frozen=config.freeze_weights)

        # The same batches, in memory, for the network-only and detector-only timings.
        batches = list(dataset)
        for fn, inputs in ((forward, (batches[0]["image"],)),
                           (detect, (batches[0]["image"], batches[0]["bbox_img"]))):
            t0 = time.perf_counter()
            fn(*inputs)
            print(f"first call (trace + run) of {'network' if fn is forward else 'detector'}: "
                  f"{time.perf_counter() - t0:.1f} s")

        def whole(overlap: bool) -> tuple[float, float]:
            evaluator = metrics.VOCEvaluator(num_classes=net.params.num_classes)
            t0 = time.perf_counter()
            stats, _ = ev.run_evaluation(dataset, detect, evaluator, overlap=overlap)
            result = evaluator.result()
            total = time.perf_counter() - t0
            assert stats.num_images == args.num_images and result["num_images"] == args.num_images
            return total, stats.detect_secs

        def network_and_detector() -> tuple[float, float]:
            """Per batch, the network alone then the detector: interleaved, so that a change
            in the machine's load hits both alike."""
            net_s = det_s = 0.0
            for batch in batches:
                t0 = time.perf_counter()
                out = forward(batch["image"])
                np.asarray(out["predictions"][-1])
                t1 = time.perf_counter()
                det = detect(batch["image"], batch["bbox_img"])
                np.asarray(det["boxes"])
                net_s += t1 - t0
                det_s += time.perf_counter() - t1
            return net_s, det_s

        whole(True)  # Warm-up: pipeline threads, evaluator code paths.
        rounds = []
        for _ in range(args.repeats):
            total, detect_secs = whole(True)
            net_s, det_s = network_and_detector()
            rounds.append((total, detect_secs, net_s, det_s))
        serial = whole(False)[0]

    n = args.num_images
    total, in_detector, net_s, det_s = (statistics.median(r[i] for r in rounds) for i in range(4))
    print(f"\nSSD300, batch {args.batch_size}, {n} images, median of {args.repeats} rounds "
          f"(TF {tf.__version__}, {os.cpu_count()} CPUs; a shared machine makes it pessimistic)")
    print(f"  whole evaluation         {n / total:6.2f} images/s   {1000 * total / n:7.1f} ms/image")
    print(f"  network only             {n / net_s:6.2f} images/s   {1000 * net_s / n:7.1f} ms/image")
    print(f"  network + post-process   {n / det_s:6.2f} images/s   {1000 * det_s / n:7.1f} ms/image")
    print(f"  whole, metrics not overlapped with the network: {n / serial:6.2f} images/s")
    # Direct: both from medians of separate passes (sensitive to load changes between passes).
    direct = 1.0 - net_s / total
    # Within-pass: the whole pass's own share of time outside the detector, and the detector's
    # share that is not the network from interleaved per-batch timings.
    shares = [1.0 - (r[1] / r[0]) * (r[2] / r[3]) for r in rounds]
    outside_detector = statistics.median(1.0 - r[1] / r[0] for r in rounds)
    post = statistics.median(1.0 - r[2] / r[3] for r in rounds)
    print(f"  time outside the detector within the whole pass (read, preprocess, transfer, "
          f"metrics): {100 * outside_detector:.1f}%")
    print(f"  post-processing share of the detector: {100 * post:.1f}%")
    print(f"share of time outside the network: {100 * statistics.median(shares):.1f}% "
          f"(within-pass estimate; direct: {100 * direct:.1f}%; goal <= 10%)")

if __name__ == "__main__":
    main()
