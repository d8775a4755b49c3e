"""Benchmark COCO evaluation of a val2017-sized result: our path vs the COCO API alone.

Run: ``python bench/bench_coco_eval.py`` (``--num_images``, ``--detections``; ``--skip_pycocotools``
leaves out the slowest run). Generated data, seeded: 5,000 images (val2017's count and sizes up
to 640 px), about 7.3 annotations per image (val2017: 36,781), 80 categories with COCO's gapped
ids, 1% crowd regions, COCO areas below the box areas; 100 detections per image (500,000),
jittered ground truth and background boxes, scores with ties.

Each variant runs in its own process (so its peak RSS is its own; the RSS after imports is
printed beside it) and prints COCO's 12 numbers, which must agree:

1. ``ours``: what eval_ssd_network.py --metric=coco --coco_annotations_file does after the
   network: ``tf_extended.metrics.COCOEvaluator`` fed the loop's padded float32 batches (32
   images), then ``result()`` (detection rows, the annotation file, COCOeval with the
   faster_coco_eval backend, per-class AP). Timed: the annotation file's load, the updates
   and the result. Goal: <= 30 s.
2. ``ours_rebuilt``: the same without the annotation file (ground truth rebuilt from the batches).
3. ``pycocotools``: pycocotools alone on the files, as a user runs it: ``COCO(annotations)``,
   ``loadRes(detections.json)``, ``evaluate/accumulate/summarize``.
4. ``faster_coco_eval``: faster-coco-eval alone on the same files.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GOAL_SECONDS = 30.0
VARIANTS = ("ours", "ours_rebuilt", "faster_coco_eval", "pycocotools")
BATCH = 32


def _status(key: str) -> int:
    """A /proc/self/status size in bytes (VmRSS: now; VmHWM: peak of this process image, which,
    unlike getrusage's ru_maxrss, does not carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def generate(folder: str, num_images: int, detections: int, seed: int = 0) -> None:
    """annotations.json, detections.json (COCO results) and batches.npz (the loop's arrays)."""
    from datasets import coco_common
    from engine import eval_outputs
    from tf_extended import metrics

    rng = np.random.default_rng(seed)
    cats = np.array([c for c, _ in coco_common.COCO_CATEGORIES])
    widths = rng.integers(300, 641, num_images)
    heights = rng.integers(300, 641, num_images)
    ids = np.sort(rng.choice(np.arange(1, 600_000), num_images, replace=False))
    counts = rng.poisson(7.3, num_images)
    img = np.repeat(np.arange(num_images), counts)
    m = img.size
    w = rng.uniform(0.01, 0.6, m) * widths[img]
    h = rng.uniform(0.01, 0.6, m) * heights[img]
    x = rng.uniform(0, 1, m) * (widths[img] - w)
    y = rng.uniform(0, 1, m) * (heights[img] - h)
    labels = rng.integers(1, len(cats) + 1, m)
    crowd = (rng.random(m) < 0.01).astype(int)
    area = w * h * rng.uniform(0.5, 0.9, m)
    annotations = {
        "images": [{"id": int(i), "width": int(a), "height": int(b), "file_name": f"{i:012d}.jpg"}
                   for i, a, b in zip(ids, widths, heights)],
        "annotations": [{"id": k + 1, "image_id": int(ids[i]), "category_id": int(cats[l - 1]),
                         "bbox": [float(a), float(b), float(c), float(d)], "area": float(e),
                         "iscrowd": int(z)}
                        for k, (i, a, b, c, d, e, l, z) in enumerate(zip(img, x, y, w, h, area, labels, crowd))],
        "categories": [{"id": int(c), "name": n} for c, n in coco_common.COCO_CATEGORIES]}
    with open(os.path.join(folder, "annotations.json"), "w") as f:
        json.dump(annotations, f)
    # Detections: three jittered copies of each box (20% with another class), then background
    # boxes, 100 per image, normalized like the loop's, scores rounded to 3 decimals (ties).
    start = np.concatenate([[0], np.cumsum(counts)])
    k = detections
    det = np.zeros([num_images, k, 4], np.float32)
    det_labels = rng.integers(1, len(cats) + 1, [num_images, k]).astype(np.int32)
    for i in range(num_images):
        n = min(counts[i] * 3, k)
        src = start[i] + (np.arange(n) % max(counts[i], 1))
        W, H = widths[i], heights[i]
        if n:
            j = rng.normal(0, 0.1, [n, 4])
            bx = x[src] + j[:, 0] * w[src]; by = y[src] + j[:, 1] * h[src]
            bw = w[src] * (1 + j[:, 2]); bh = h[src] * (1 + j[:, 3])
            det[i, :n] = np.stack([by / H, bx / W, (by + bh) / H, (bx + bw) / W], 1)
            keep = rng.random(n) < 0.8
            det_labels[i, :n] = np.where(keep, labels[src], det_labels[i, :n])
        r = k - n
        bw = rng.uniform(0.02, 0.5, r); bh = rng.uniform(0.02, 0.5, r)
        bx = rng.uniform(0, 1, r) * (1 - bw); by = rng.uniform(0, 1, r) * (1 - bh)
        det[i, n:] = np.stack([by, bx, by + bh, bx + bw], 1)
    det = np.clip(det, 0.0, 1.0)
    scores = np.round(rng.random([num_images, k]), 3).astype(np.float32)
    g = int(counts.max())
    gt = np.zeros([num_images, g, 4], np.float32)
    gl = np.zeros([num_images, g], np.int64)
    gc = np.zeros([num_images, g], np.int64)
    ga = np.zeros([num_images, g], np.float32)
    slot = np.arange(m) - start[img]
    W, H = widths[img], heights[img]
    gt[img, slot] = np.stack([y / H, x / W, (y + h) / H, (x + w) / W], 1)
    gl[img, slot], gc[img, slot], ga[img, slot] = labels, crowd, area
    shapes = np.stack([heights, widths, np.full(num_images, 3)], 1).astype(np.int64)
    np.savez(os.path.join(folder, "batches.npz"), gt=gt, gl=gl, gc=gc, ga=ga, ng=counts.astype(np.int32),
             det=det, dl=det_labels, ds=scores, nd=np.full(num_images, k, np.int32), shapes=shapes,
             ids=ids.astype(np.int64))
    label_to_cat = {i + 1: int(c) for i, c in enumerate(cats)}
    names = {i + 1: n for i, (_, n) in enumerate(coco_common.COCO_CATEGORIES)}
    dets = eval_outputs.DetectionSet([f"{i:012d}" for i in ids], shapes, det, scores, det_labels,
                                     np.full(num_images, k, np.int32), coco_ids=ids.astype(np.int64))
    eval_outputs.write_coco_detections(os.path.join(folder, "detections.json"), dets, names,
                                       label_to_category_id=label_to_cat, box_convention="coco")
    assert metrics.COCO_BACKENDS  # imported for the same environment as the runs


def run_variant(variant: str, folder: str) -> dict:
    """One timed run; returns {'seconds', 'stats', 'rss_start', 'peak_rss'}."""
    import contextlib
    import io

    if variant.startswith("ours"):
        from datasets import coco_common
        from tf_extended import metrics
    elif variant == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    ann_path = os.path.join(folder, "annotations.json")
    det_path = os.path.join(folder, "detections.json")
    data = dict(np.load(os.path.join(folder, "batches.npz")))
    rss_start = _status("VmRSS")
    t0 = time.perf_counter()
    if variant.startswith("ours"):
        label_to_cat = {i + 1: c for i, (c, _) in enumerate(coco_common.COCO_CATEGORIES)}
        names = {i + 1: n for i, (_, n) in enumerate(coco_common.COCO_CATEGORIES)}
        annotations = metrics.load_coco_annotations(ann_path) if variant == "ours" else None
        ev = metrics.COCOEvaluator(81, names, label_to_category_id=label_to_cat,
                                   annotations=annotations, backend="faster_coco_eval")
        n = len(data["ids"])
        for lo in range(0, n, BATCH):
            s = slice(lo, lo + BATCH)
            ev.update_batch(data["gt"][s], data["gl"][s], np.zeros_like(data["gl"][s]), data["ng"][s],
                            data["det"][s], data["dl"][s], data["ds"][s], data["nd"][s],
                            image_shapes=data["shapes"][s], image_ids=data["ids"][s].tolist(),
                            gt_crowd=data["gc"][s], gt_area=data["ga"][s])
        res = ev.result()
        stats = [res[k] for k in metrics.COCO_STAT_NAMES]
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(ann_path)
            dt = gt.loadRes(det_path)
            e = COCOeval(gt, dt, "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        stats = [float(v) for v in e.stats[:12]]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "stats": stats, "rss_start": rss_start,
            "peak_rss": _status("VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--skip_pycocotools", action="store_true")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_variant(args.run, args.data)))
        return
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        generate(folder, args.num_images, args.detections)
        with open(os.path.join(folder, "annotations.json")) as f:
            num_ann = len(json.load(f)["annotations"])
        print(f"generated {args.num_images} images, {num_ann} annotations, "
              f"{args.num_images * args.detections} detections in {time.perf_counter() - t0:.1f} s "
              f"(detections.json {os.path.getsize(os.path.join(folder, 'detections.json')) / 2**20:.0f} MiB)")
        results = {}
        for variant in VARIANTS:
            if variant == "pycocotools" and args.skip_pycocotools:
                continue
            out = subprocess.run([sys.executable, __file__, "--run", variant, "--data", folder],
                                 capture_output=True, text=True, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[variant] = r
            print(f"{variant:>17}: {r['seconds']:6.1f} s, peak RSS {r['peak_rss'] / 2**20:6.0f} MiB "
                  f"(after imports {r['rss_start'] / 2**20:.0f} MiB), AP {r['stats'][0]:.6f}", flush=True)
    ref = results.get("pycocotools", results["faster_coco_eval"])["stats"]
    for variant, r in results.items():
        diff = max(abs(a - b) for a, b in zip(r["stats"], ref))
        print(f"{variant:>17}: 12 numbers differ from {'pycocotools' if 'pycocotools' in results else 'faster_coco_eval'} "
              f"by at most {diff:.1e}")
    ours = results["ours"]["seconds"]
    print(f"ours (--coco_annotations_file) {ours:.1f} s: goal <= {GOAL_SECONDS:.0f} s "
          f"{'met' if ours <= GOAL_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()
