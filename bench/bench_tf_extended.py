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

from tf_extended import metrics, postprocess, targets  # noqa: E402

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


CPU_TIMES: list[float] = []  # process CPU seconds of the last median_time call's runs


def median_time(fn, reps: int) -> float:
    """Median wall seconds of ``fn()`` over ``reps`` runs (after one warm-up run).

    Also records the median process CPU seconds (all threads) in ``CPU_TIMES[-1]``: on a
    shared, overloaded machine wall time mostly measures the other processes.
    """
    fn()  # warm-up / trace
    ts, cs = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    CPU_TIMES.append(float(np.median(cs)))
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
            c1 = CPU_TIMES[-1]
            # Through tf.data.map (2 parallel calls), 64 images batched, as an input pipeline runs it.
            ds = tf.data.Dataset.from_tensors((labels, bboxes)).repeat(64)
            ds = ds.map(lambda l, b: targets.encode_targets(l, b, anchors), num_parallel_calls=2).batch(64)
            t2 = median_time(lambda: [None for _ in ds], reps) / 64
            c2 = CPU_TIMES[-1] / 64
            # Batched: 32 images padded to `num` boxes, one call.
            bl = np.tile(labels, (32, 1))
            bb = np.tile(bboxes, (32, 1, 1))
            bfn = tf.function(lambda l, b: targets.batch_encode_targets(l, b, anchors))
            t3 = median_time(lambda: bfn(bl, bb)[0].numpy(), reps) / 32
            c3 = CPU_TIMES[-1] / 32
            print(f"encode_targets {name} ({anchors.shape[0]} anchors), {num:2d} boxes, ms/image wall (cpu): "
                  f"tf.function {t1 * 1e3:5.2f} ({c1 * 1e3:5.2f}), tf.data.map x2 {t2 * 1e3:5.2f} ({c2 * 1e3:5.2f}), "
                  f"batch of 32 {t3 * 1e3:5.2f} ({c3 * 1e3:5.2f})")


def ssd_like_outputs(rng: np.random.Generator, batch: int, anchors: np.ndarray, num_classes: int = 21):
    """Softmax scores and offsets shaped like a trained SSD300's: mostly background.

    Background logit +6 everywhere except ~1% of anchors (objects) where one class gets +8;
    on average ~200 (anchor, class) pairs per class and image score above 0.01.
    """
    num_anchors = anchors.shape[0]
    logits = rng.normal(0.0, 1.0, (batch, num_anchors, num_classes)).astype(np.float32)
    logits[..., 0] += 6.0
    obj = rng.random((batch, num_anchors)) < 0.01
    cls = rng.integers(1, num_classes, (batch, num_anchors))
    logits[obj, cls[obj]] += 8.0
    predictions = tf.nn.softmax(logits).numpy()
    localisations = (rng.normal(0.0, 0.5, (batch, num_anchors, 4))).astype(np.float32)
    return predictions, localisations


def bench_postprocess(reps: int) -> None:
    rng = np.random.default_rng(1)
    anchors = ssd_anchors(SSD300)
    pred, loc = ssd_like_outputs(rng, 8, anchors)
    cands = float(np.mean(np.sum(pred[..., 1:] > 0.01, axis=1)))
    fn = tf.function(lambda p, l: postprocess.detected_bboxes(p, l, anchors, select_threshold=0.01,
                                                              nms_threshold=0.45, select_top_k=400,
                                                              keep_top_k=200))
    t = median_time(lambda: fn(pred, loc)["scores"].numpy(), reps * 2) / 8
    c = CPU_TIMES[-1] / 8
    num = fn(pred, loc)["num_detections"].numpy()
    print(f"detected_bboxes SSD300 batch 8 (8732 anchors, 21 classes, {cands:.0f} candidates > 0.01 "
          f"per class and image): {t * 1e3:.2f} ms/image wall ({c * 1e3:.2f} cpu), "
          f"mean {num.mean():.0f} detections kept")
    # A harder score distribution: thousands of candidates per class (an untrained net).
    logits = rng.normal(0.0, 1.5, (8, anchors.shape[0], 21)).astype(np.float32)
    logits[..., 0] += 4.0
    pred2 = tf.nn.softmax(logits).numpy()
    cands = float(np.mean(np.sum(pred2[..., 1:] > 0.01, axis=1)))
    t = median_time(lambda: fn(pred2, loc)["scores"].numpy(), reps * 2) / 8
    c = CPU_TIMES[-1] / 8
    print(f"detected_bboxes SSD300 batch 8, {cands:.0f} candidates per class and image (untrained-like): "
          f"{t * 1e3:.2f} ms/image wall ({c * 1e3:.2f} cpu)")


def voc_like_eval_data(rng: np.random.Generator, num_images: int = 4952, num_det: int = 200):
    """Padded arrays of a VOC07-test-sized result: ~2.4 boxes per image (12,032 objects in
    VOC07 test), 20 classes, 200 detections per image (a third near a box, the rest random)."""
    num_gt = rng.integers(1, 5, num_images)
    max_g = int(num_gt.max())
    c = rng.uniform(0.1, 0.9, (num_images, max_g, 2))
    s = rng.uniform(0.05, 0.6, (num_images, max_g, 2))
    gt_boxes = np.concatenate([c - s / 2, c + s / 2], -1)
    gt_labels = rng.integers(1, 21, (num_images, max_g))
    gt_difficult = rng.random((num_images, max_g)) < 0.1
    near = rng.integers(0, max_g, (num_images, num_det)) % np.maximum(num_gt[:, None], 1)
    base = np.take_along_axis(gt_boxes, near[..., None], axis=1)
    jitter = rng.normal(0, 0.05, (num_images, num_det, 4))
    rand_c = rng.uniform(0.1, 0.9, (num_images, num_det, 2))
    rand_s = rng.uniform(0.05, 0.6, (num_images, num_det, 2))
    rand_b = np.concatenate([rand_c - rand_s / 2, rand_c + rand_s / 2], -1)
    is_near = rng.random((num_images, num_det)) < 0.33
    det_boxes = np.where(is_near[..., None], base + jitter, rand_b).astype(np.float32)
    det_labels = np.where(is_near & (rng.random((num_images, num_det)) < 0.8),
                          np.take_along_axis(gt_labels, near, axis=1), rng.integers(1, 21, (num_images, num_det)))
    det_scores = np.sort(rng.random((num_images, num_det)).astype(np.float32), axis=1)[:, ::-1]
    return (gt_boxes.astype(np.float32), gt_labels, gt_difficult, num_gt,
            det_boxes, det_labels.astype(np.int32), det_scores, np.full(num_images, num_det))


def bench_voc(reps: int) -> None:
    rng = np.random.default_rng(2)
    data = voc_like_eval_data(rng)
    gb, gl, gd, ng, db, dl, ds, nd = data
    n = gb.shape[0]

    def per_image():
        ev = metrics.VOCEvaluator(num_classes=21)
        for i in range(n):
            ev.update(gb[i, :ng[i]], gl[i, :ng[i]], gd[i, :ng[i]], db[i], dl[i], ds[i])
        return ev.result()

    def batched():
        ev = metrics.VOCEvaluator(num_classes=21)
        for lo in range(0, n, 32):
            sl = slice(lo, lo + 32)
            ev.update_batch(gb[sl], gl[sl], gd[sl], ng[sl], db[sl], dl[sl], ds[sl], nd[sl])
        return ev.result()

    t1 = median_time(per_image, max(1, reps // 3))
    c1 = CPU_TIMES[-1]
    t2 = median_time(batched, max(1, reps // 3))
    c2 = CPU_TIMES[-1]
    res = batched()
    print(f"VOCEvaluator {n} images x 200 detections x 20 classes ({int(nd.sum())} detections), whole "
          f"evaluation: {t1:.2f} s wall ({c1:.2f} cpu) with update() per image, {t2:.2f} s ({c2:.2f} cpu) "
          f"with update_batch(32) (mAP07 {res['mAP_VOC07']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=("encode", "postprocess", "voc"), default=None)
    args = parser.parse_args()
    reps = 3 if args.quick else 10
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs (shared machine: figures are pessimistic)")
    if args.only in (None, "encode"):
        bench_encoding(reps)
    if args.only in (None, "postprocess"):
        bench_postprocess(reps)
    if args.only in (None, "voc"):
        bench_voc(reps)


if __name__ == "__main__":
    main()
