"""Benchmark tf_extended: target encoding, post-processing and the VOC evaluator.

Run: ``python bench/bench_tf_extended.py`` (add ``--quick`` for fewer repetitions).
Prints median wall times; the machine may be shared, so figures are pessimistic.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_extended import postprocess, targets  # noqa: E402

# Caffe SSD VOC priors (docs/DESIGN.md §7): feature map sizes, steps, min/max sizes, ratios.
SSD300 = dict(img=300, feats=(38, 19, 10, 5, 3, 1), steps=(8, 16, 32, 64, 100, 300),
              sizes=((30, 60), (60, 111), (111, 162), (162, 213), (213, 264), (264, 315)),
              ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))
SSD512 = dict(img=512, feats=(64, 32, 16, 8, 4, 2, 1), steps=(8, 16, 32, 64, 128, 256, 512),
              sizes=((35.84, 76.8), (76.8, 153.6), (153.6, 230.4), (230.4, 307.2), (307.2, 384.0),
                     (384.0, 460.8), (460.8, 537.6)),
              ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)))


def ssd_anchors(spec: dict) -> np.ndarray:
    """Caffe-style SSD anchors [A, 4] (ymin, xmin, ymax, xmax), normalized, unclipped.

    Order (layer, row, column, anchor); per location: min square, sqrt(min*max) square,
    then r and 1/r for each ratio.
    """
    out = []
    img = spec["img"]
    for fs, step, (smin, smax), ratios in zip(spec["feats"], spec["steps"], spec["sizes"], spec["ratios"]):
        hw = [(smin, smin), (np.sqrt(smin * smax),) * 2]
        for r in ratios:
            hw += [(smin / np.sqrt(r), smin * np.sqrt(r)), (smin * np.sqrt(r), smin / np.sqrt(r))]
        hw = np.array(hw) / img  # [k, 2]
        c = (np.arange(fs) + 0.5) * step / img
        cy, cx = np.meshgrid(c, c, indexing="ij")
        cy = cy[:, :, None]
        cx = cx[:, :, None]
        h, w = hw[:, 0], hw[:, 1]
        out.append(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def random_gt(rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
    """VOC-like boxes: centres uniform, sides 0.05-0.9 of the image, clipped."""
    c = rng.uniform(0.1, 0.9, (num, 2))
    s = rng.uniform(0.05, 0.9, (num, 2))
    b = np.clip(np.concatenate([c - s / 2, c + s / 2], 1), 0.0, 1.0).astype(np.float32)
    return rng.integers(1, 21, num).astype(np.int64), b


def median_time(fn, reps: int) -> float:
    fn()  # warm-up / trace
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_encoding(reps: int) -> None:
    rng = np.random.default_rng(0)
    for name, spec in (("SSD300", SSD300), ("SSD512", SSD512)):
        anchors = tf.constant(ssd_anchors(spec))
        for num in (10, 50):
            labels, bboxes = random_gt(rng, num)
            # Per image, as the input pipeline runs it (tf.function with an unknown box count).
            fn = tf.function(lambda l, b: targets.encode_targets(l, b, anchors),
                             input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32)])
            t1 = median_time(lambda: fn(labels, bboxes)[0].numpy(), reps * 5)
            # Through tf.data.map, parallel, 64 images: wall time per image.
            ds = tf.data.Dataset.from_tensors((labels, bboxes)).repeat(64)
            ds = ds.map(lambda l, b: targets.encode_targets(l, b, anchors), num_parallel_calls=2).prefetch(4)
            t2 = median_time(lambda: [None for _ in ds], reps) / 64
            # Batched: 32 images padded to `num` boxes, one call.
            bl = np.tile(labels, (32, 1))
            bb = np.tile(bboxes, (32, 1, 1))
            bfn = tf.function(lambda l, b: targets.batch_encode_targets(l, b, anchors))
            t3 = median_time(lambda: bfn(bl, bb)[0].numpy(), reps) / 32
            print(f"encode_targets {name} ({anchors.shape[0]} anchors), {num:2d} boxes: "
                  f"{t1 * 1e3:6.2f} ms/image (tf.function), {t2 * 1e3:6.2f} ms/image (tf.data.map x2), "
                  f"{t3 * 1e3:6.2f} ms/image (batch of 32)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=("encode", "postprocess", "voc"), default=None)
    args = parser.parse_args()
    reps = 3 if args.quick else 10
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs (shared machine: figures are pessimistic)")
    if args.only in (None, "encode"):
        bench_encoding(reps)


if __name__ == "__main__":
    main()
