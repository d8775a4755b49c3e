"""Benchmark of COCO data: annotation indexing of a train2017-sized JSON, and images converted
per second by the COCO path next to the VOC path on the same images.

    python bench/bench_coco_data.py [--workers 2] [--num_sample 400] [--cache_dir /tmp/...]

1. Generates (once, cached) a COCO detection JSON the size of ``instances_train2017.json``:
   118,287 images, 860,001 annotations over COCO's 80 category ids, about 1% crowd, each
   annotation with a 24-point polygon (a crowd one with an RLE), so the file is about as big as
   the real one (448 MB). Then, in a fresh process, ``coco_to_tfrecords.index_annotations``
   (``json.load`` + the vectorized index) is timed; its memory is reported as the process's
   peak RSS during the first indexing (``resource.getrusage``, with the RSS before it, i.e.
   Python + NumPy + TensorFlow imported, next to it) and as tracemalloc's peak of the
   Python/NumPy allocations of a second indexing.
   Goals: <= 30 s and < 2 GB.
2. Writes the sample dataset (``datasets.sample_data``, 240x320 JPEGs, with ``--coco``) and
   converts its trainval split both ways in the same run (VOC: ``convert_voc``, COCO:
   ``convert_coco``, same workers, alternating, best of 2). Goal: COCO at the VOC path's speed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

NUM_IMAGES = 118_287
NUM_ANNOTATIONS = 860_001
GOAL_SECONDS = 30.0
GOAL_BYTES = 2 * 2**30
POLYGON_POINTS = 24


def generate_train2017_sized(path: str, seed: int = 0) -> None:
    """Writes the JSON streaming (constant memory), numbers drawn with NumPy."""
    from datasets import coco_common

    rng = np.random.default_rng(seed)
    image_ids = np.sort(rng.choice(600_000, NUM_IMAGES, replace=False)) + 1
    widths = rng.choice([640, 640, 640, 480, 500, 427], NUM_IMAGES)
    heights = rng.choice([480, 480, 427, 640, 375, 333], NUM_IMAGES)
    # ~1% images without annotations, as in train2017 (117,266 of 118,287 annotated).
    annotated = np.flatnonzero(rng.random(NUM_IMAGES) > 0.0086)
    owner = np.sort(rng.choice(annotated, NUM_ANNOTATIONS))
    order = rng.permutation(NUM_ANNOTATIONS)  # the file lists annotations out of image order
    category_ids = np.array([c for c, _ in coco_common.COCO_CATEGORIES])[
        rng.integers(0, 80, NUM_ANNOTATIONS)]
    w = np.maximum(1.0, widths[owner] * rng.uniform(0.02, 0.9, NUM_ANNOTATIONS))
    h = np.maximum(1.0, heights[owner] * rng.uniform(0.02, 0.9, NUM_ANNOTATIONS))
    x = rng.uniform(0, 1, NUM_ANNOTATIONS) * (widths[owner] - w)
    y = rng.uniform(0, 1, NUM_ANNOTATIONS) * (heights[owner] - h)
    crowd = rng.random(NUM_ANNOTATIONS) < 0.0105
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "train2017-sized synthetic"}, "licenses": [], '
                '"images": [')
        for i in range(NUM_IMAGES):
            f.write(("," if i else "") + json.dumps({
                "license": 1, "file_name": f"{image_ids[i]:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/train2017/{image_ids[i]:012d}.jpg",
                "height": int(heights[i]), "width": int(widths[i]),
                "date_captured": "2013-11-14 11:18:45", "id": int(image_ids[i])}))
        f.write('], "annotations": [')
        angles = np.linspace(0, 2 * np.pi, POLYGON_POINTS, endpoint=False)
        for n, k in enumerate(order):
            if crowd[k]:
                counts = rng.integers(1, 400, 90).tolist()
                segmentation = {"counts": counts, "size": [int(heights[owner[k]]),
                                                          int(widths[owner[k]])]}
            else:
                cx, cy = x[k] + w[k] / 2, y[k] + h[k] / 2
                px = np.round(cx + w[k] / 2 * np.cos(angles), 2)
                py = np.round(cy + h[k] / 2 * np.sin(angles), 2)
                segmentation = [np.stack([px, py], 1).reshape(-1).tolist()]
            f.write(("," if n else "") + json.dumps({
                "segmentation": segmentation, "area": round(float(w[k] * h[k] * 0.6), 4),
                "iscrowd": int(crowd[k]), "image_id": int(image_ids[owner[k]]),
                "bbox": [round(float(x[k]), 2), round(float(y[k]), 2), round(float(w[k]), 2),
                         round(float(h[k]), 2)],
                "category_id": int(category_ids[k]), "id": int(k + 1)}))
        f.write('], "categories": ' + json.dumps([
            {"supercategory": "thing", "id": c, "name": name}
            for c, name in coco_common.COCO_CATEGORIES]) + "}\n")
    os.replace(tmp, path)


def _index_in_this_process(path: str) -> None:
    """Child: import, index, print one JSON line of figures."""
    import tracemalloc

    from datasets import coco_to_tfrecords

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    index = coco_to_tfrecords.index_annotations(path)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_start = time.perf_counter()
    coco_to_tfrecords.load_json(path)
    load_seconds = time.perf_counter() - load_start
    del index
    # Then once more under tracemalloc (slower: it hooks every allocation): the peak of the
    # Python and NumPy allocations of the indexing alone.
    tracemalloc.start()
    index = coco_to_tfrecords.index_annotations(path)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({
        "images": index.num_images, "annotations": index.num_annotations,
        "crowd": int(index.iscrowd.sum()), "categories": len(index.label_map.class_names),
        "empty_images": int(np.sum(np.diff(index.ann_start) == 0)),
        "seconds": seconds, "cpu_seconds": cpu, "json_load_seconds": load_seconds,
        "traced_peak": traced_peak, "rss_before": rss_before, "peak_rss": peak_rss}))


def bench_index(path: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_index", path],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_conversion(cache_dir: str, num_sample: int, workers: int) -> dict:
    from datasets import coco_to_tfrecords, pascalvoc_to_tfrecords, sample_data

    root = os.path.join(cache_dir, f"sample_{num_sample}")
    sample_data.generate(root, num_trainval=num_sample, num_test=0, seed=0, coco=True,
                         num_workers=workers)
    ann = sample_data.coco_annotations_path(root, "trainval")
    rates = {"voc": [], "coco": []}
    counts = {}
    for _ in range(2):
        for kind in ("voc", "coco"):
            out = tempfile.mkdtemp(prefix=f"bench_{kind}_")
            try:
                start = time.perf_counter()
                if kind == "voc":
                    summary = pascalvoc_to_tfrecords.convert_voc(
                        root, out, "voc", class_names=sample_data.CLASSES, split="trainval",
                        num_workers=workers)
                else:
                    summary = coco_to_tfrecords.convert_coco(ann, os.path.join(root, "JPEGImages"),
                                                             out, "coco", num_workers=workers)
                rates[kind].append(summary.num_images / (time.perf_counter() - start))
                counts[kind] = summary.num_images
            finally:
                shutil.rmtree(out, ignore_errors=True)
    return {"rates": rates, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num_sample", type=int, default=400)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(),
                                                            "ssd_bench_coco"))
    parser.add_argument("--_index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._index:
        _index_in_this_process(args._index)
        return
    logging.getLogger("datasets").setLevel(logging.ERROR)
    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, "instances_train2017_sized.json")
    if not os.path.exists(path):
        start = time.perf_counter()
        generate_train2017_sized(path)
        print(f"generated {path} in {time.perf_counter() - start:.0f} s")
    size_mb = os.path.getsize(path) / 2**20
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]

    r = bench_index(path)
    mib = 2**20
    ok_time = r["seconds"] <= GOAL_SECONDS
    ok_mem = r["peak_rss"] < GOAL_BYTES
    print(f"annotation file: {size_mb:.0f} MiB, {r['images']} images ({r['empty_images']} without "
          f"annotations), {r['annotations']} annotations ({r['crowd']} crowd), "
          f"{r['categories']} categories; {cores} CPU cores, load average {load:.1f}")
    print(f"indexing (load_json without the masks + vectorized index): {r['seconds']:.1f} s wall "
          f"(of which load_json {r['json_load_seconds']:.1f} s; {r['cpu_seconds']:.1f} CPU-s); "
          f"goal <= {GOAL_SECONDS:.0f} s "
          f"{'OK' if ok_time else 'BELOW GOAL'}")
    print(f"memory: peak RSS {r['peak_rss'] / mib:.0f} MiB (of which {r['rss_before'] / mib:.0f} "
          f"MiB before indexing: Python, NumPy, TensorFlow imported); tracemalloc peak of the "
          f"indexing {r['traced_peak'] / mib:.0f} MiB; goal < {GOAL_BYTES / mib:.0f} MiB "
          f"{'OK' if ok_mem else 'BELOW GOAL'}")

    c = bench_conversion(args.cache_dir, args.num_sample, args.workers)
    voc, coco = max(c["rates"]["voc"]), max(c["rates"]["coco"])
    print(f"conversion of the sample's trainval split (240x320 JPEGs, {args.workers} workers, "
          f"best of 2, alternating): VOC {voc:.0f} images/s ({c['counts']['voc']} images; runs "
          f"{', '.join(f'{v:.0f}' for v in c['rates']['voc'])}), COCO {coco:.0f} images/s "
          f"({c['counts']['coco']} images; runs {', '.join(f'{v:.0f}' for v in c['rates']['coco'])})"
          f"; COCO / VOC = {coco / voc:.2f} {'OK' if coco >= 0.9 * voc else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
