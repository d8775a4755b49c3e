"""COCO metrics: tf_extended.metrics.COCOEvaluator against pycocotools run directly on the files.

The ground truth is an annotation JSON made here (gapped category ids, crowd regions, images
without objects, small / medium / large objects whose 'area' is not the box's, tied scores).
The evaluator is fed what the evaluation loop feeds it (float32 normalized boxes as the
TFRecords hold them, COCO ids, crowd flags, areas); its numbers must equal pycocotools'
``COCOeval`` on the detection JSON that engine.eval_outputs writes and on the original
annotation file (``annotations=``) or the rebuilt ground truth it writes.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from engine import eval_outputs as eo
from tf_extended import metrics
from tests.scripts import read_summaries, scalar

CATEGORIES = [(3, "car"), (7, "train"), (12, "sign")]  # COCO-style ids with gaps
LABEL_TO_CAT = {1: 3, 2: 7, 3: 12}
NAMES = {0: "background", 1: "car", 2: "train", 3: "sign"}


def make_coco(seed: int = 0, num_images: int = 14) -> tuple[dict, list[dict]]:
    """(annotation dict, per-image detections [{'boxes' xywh, 'labels', 'scores'}])."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for i in range(num_images):
        image_id = 1000 + 37 * i
        width, height = int(rng.integers(260, 640)), int(rng.integers(260, 480))
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width,
                       "height": height})
        n = 0 if i in (2, 9) else int(rng.integers(1, 6))  # two images without objects
        boxes, labels = [], []
        for k in range(n):
            side = float(rng.choice([rng.uniform(8, 30), rng.uniform(35, 90), rng.uniform(100, 190)]))
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            label = int(rng.integers(1, 4))
            crowd = int(k == 0 and i % 4 == 1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": LABEL_TO_CAT[label], "bbox": [x, y, w, h],
                                "area": w * h * float(rng.uniform(0.4, 0.95)), "iscrowd": crowd})
            boxes.append([x, y, w, h])
            labels.append(label)
        det_boxes, det_labels = [], []
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):
                x, y, w, h = box
                j = rng.normal(0, 0.12, 4)
                det_boxes.append([x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3])])
                det_labels.append(label if rng.random() < 0.85 else int(rng.integers(1, 4)))
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            w, h = rng.uniform(10, 120, 2)
            det_boxes.append([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])
            det_labels.append(int(rng.integers(1, 4)))
        # Clip to the image as the evaluation loop does; ties on purpose.
        db = np.array(det_boxes, np.float64).reshape(-1, 4)
        x0 = np.clip(db[:, 0], 0, width); y0 = np.clip(db[:, 1], 0, height)
        x1 = np.clip(db[:, 0] + db[:, 2], 0, width); y1 = np.clip(db[:, 1] + db[:, 3], 0, height)
        keep = (x1 > x0) & (y1 > y0)
        detections.append({"boxes": np.stack([x0, y0, x1 - x0, y1 - y0], 1)[keep],
                           "labels": np.array(det_labels, np.int64)[keep],
                           "scores": np.round(rng.random(int(keep.sum())), 1).astype(np.float32)})
    return ({"images": images, "annotations": annotations,
             "categories": [{"id": c, "name": n} for c, n in CATEGORIES]}, detections)


def as_batches(coco: dict, detections: list[dict], batch_size: int = 4):
    """What run_evaluation gives the evaluators: padded float32 normalized arrays per batch."""
    cat_to_label = {c: l for l, c in LABEL_TO_CAT.items()}
    by_image = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for start in range(0, len(coco["images"]), batch_size):
        chunk = coco["images"][start:start + batch_size]
        b = len(chunk)
        g = max(1, max(len(by_image[img["id"]]) for img in chunk))
        k = max(1, max(len(detections[start + i]["labels"]) for i in range(b)))
        out = {"gt_bboxes": np.zeros([b, g, 4], np.float32), "gt_labels": np.zeros([b, g], np.int64),
               "gt_difficult": np.zeros([b, g], np.int64), "gt_iscrowd": np.zeros([b, g], np.int64),
               "gt_area": np.zeros([b, g], np.float32), "num_gt": np.zeros([b], np.int32),
               "shape": np.zeros([b, 3], np.int64), "coco_id": np.zeros([b], np.int64),
               "boxes": np.zeros([b, k, 4], np.float32), "scores": np.zeros([b, k], np.float32),
               "classes": np.zeros([b, k], np.int32), "num_detections": np.zeros([b], np.int32),
               "filename": np.array([img["file_name"].encode() for img in chunk])}
        for i, img in enumerate(chunk):
            W, H = img["width"], img["height"]
            anns = by_image[img["id"]]
            for j, ann in enumerate(anns):  # the COCO converter's normalization
                x, y, w, h = ann["bbox"]
                out["gt_bboxes"][i, j] = [y / H, x / W, (y + h) / H, (x + w) / W]
                out["gt_labels"][i, j] = cat_to_label[ann["category_id"]]
                out["gt_iscrowd"][i, j] = ann["iscrowd"]
                out["gt_area"][i, j] = ann["area"]
            out["num_gt"][i] = len(anns)
            out["shape"][i] = [H, W, 3]
            out["coco_id"][i] = img["id"]
            det = detections[start + i]
            d = len(det["labels"])
            x, y, w, h = det["boxes"].T
            out["boxes"][i, :d] = np.stack([y / H, x / W, (y + h) / H, (x + w) / W], 1)
            out["scores"][i, :d] = det["scores"]
            out["classes"][i, :d] = det["labels"]
            out["num_detections"][i] = d
        yield out


def feed(evaluator, batches):
    for b in batches:
        evaluator.update_batch(b["gt_bboxes"], b["gt_labels"], b["gt_difficult"], b["num_gt"],
                               b["boxes"], b["classes"], b["scores"], b["num_detections"],
                               image_shapes=b["shape"], image_ids=b["coco_id"].tolist(),
                               gt_crowd=b["gt_iscrowd"], gt_area=b["gt_area"])
    return evaluator


def detection_set(batches) -> eo.DetectionSet:
    """The loop's DetectionSet of the same batches."""
    bs = list(batches)
    k = max(b["boxes"].shape[1] for b in bs)

    def pad(a, last):
        shape = list(a.shape)
        shape[1] = k
        out = np.zeros(shape, a.dtype)
        out[:, :a.shape[1]] = a
        return out
    return eo.DetectionSet(
        [os.path.splitext(f.decode())[0] for b in bs for f in b["filename"]],
        np.concatenate([b["shape"] for b in bs]), np.concatenate([pad(b["boxes"], 4) for b in bs]),
        np.concatenate([pad(b["scores"], 0) for b in bs]),
        np.concatenate([pad(b["classes"], 0) for b in bs]),
        np.concatenate([b["num_detections"] for b in bs]),
        coco_ids=np.concatenate([b["coco_id"] for b in bs]))


def pycocotools_eval(gt_path: str, det_path: str, img_ids=None):
    """pycocotools on two files, as a user runs it: (stats, {category name: AP@[.5:.95]})."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(det_path)
        e = COCOeval(gt, dt, "bbox")
        if img_ids is not None:
            e.params.imgIds = img_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    per_class = {}
    for k, cat in enumerate(e.params.catIds):
        p = e.eval["precision"][:, :, k, 0, -1]
        p = p[p > -1]
        per_class[gt.cats[cat]["name"]] = float(p.mean()) if p.size else float("nan")
    return e.stats.tolist(), per_class


def _same(result, stats, per_class):
    """Our numbers vs pycocotools': bit for bit with the pycocotools backend; faster-coco-eval
    may differ in the last bit (pycocotools divides by tp + fp + np.spacing(1))."""
    tol = 0.0 if result["backend"] == "pycocotools" else 1e-15
    ours = [result[n] for n in metrics.COCO_STAT_NAMES]
    assert ours == pytest.approx(stats, abs=tol, rel=0) and len(ours) == 12
    assert result["AP_per_class"].keys() == per_class.keys()
    for name, ap in per_class.items():
        assert (math.isnan(ap) and math.isnan(result["AP_per_class"][name])) or \
            result["AP_per_class"][name] == pytest.approx(ap, abs=tol, rel=0), name


@pytest.fixture(scope="module")
def coco_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    coco, detections = make_coco()
    gt_path = str(root / "instances_val.json")
    json.dump(coco, open(gt_path, "w"))
    det_path = str(root / "detections.json")
    n = eo.write_coco_detections(det_path, detection_set(as_batches(coco, detections)), NAMES,
                                 label_to_category_id=LABEL_TO_CAT, box_convention="coco")
    assert n == sum(len(d["labels"]) for d in detections)
    return coco, detections, gt_path, det_path, root


@pytest.mark.parametrize("backend", metrics.COCO_BACKENDS)
def test_original_annotations_equal_pycocotools_on_the_files(coco_case, backend):
    coco, detections, gt_path, det_path, _ = coco_case
    ev = feed(metrics.COCOEvaluator(4, NAMES, label_to_category_id=LABEL_TO_CAT,
                                    annotations=gt_path, backend=backend),
              as_batches(coco, detections))
    res = ev.result()
    stats, per_class = pycocotools_eval(gt_path, det_path)
    _same(res, stats, per_class)
    # A real case: crowd regions, all three sizes, some found, some not.
    assert 0.1 < res["AP"] < 0.9 and min(res["AP_small"], res["AP_medium"], res["AP_large"]) > 0
    assert res["num_images"] == len(coco["images"]) and res["backend"] == backend
    # What it evaluated is what was written.
    assert ev.detection_rows() == [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")}
                                   for r in json.load(open(det_path))]


@pytest.mark.parametrize("backend", metrics.COCO_BACKENDS)
def test_rebuilt_ground_truth_equals_pycocotools_on_the_files(coco_case, backend, tmp_path):
    coco, detections, gt_path, det_path, _ = coco_case
    ev = feed(metrics.COCOEvaluator(4, NAMES, label_to_category_id=LABEL_TO_CAT, backend=backend),
              as_batches(coco, detections))
    rebuilt = str(tmp_path / "groundtruth.json")
    eo.write_coco_ground_truth(rebuilt, ev.ground_truth())
    res = ev.result()
    _same(res, *pycocotools_eval(rebuilt, det_path))
    # The rebuilt file: the same images, crowd flags and areas (COCO's, not the boxes'), boxes
    # to float32 precision; so the numbers are the original file's (up to that precision).
    back = json.load(open(rebuilt))
    assert [i["id"] for i in back["images"]] == [i["id"] for i in coco["images"]]
    assert [a["iscrowd"] for a in back["annotations"]] == [a["iscrowd"] for a in coco["annotations"]]
    np.testing.assert_allclose([a["area"] for a in back["annotations"]],
                               [a["area"] for a in coco["annotations"]], rtol=1e-6)
    np.testing.assert_allclose([a["bbox"] for a in back["annotations"]],
                               [a["bbox"] for a in coco["annotations"]], atol=1e-3)
    original, _ = pycocotools_eval(gt_path, det_path)
    np.testing.assert_allclose([res[n] for n in metrics.COCO_STAT_NAMES], original, atol=1e-9)


def test_backends_agree_and_ties_keep_the_file_order(tmp_path):
    # Two detections with one score on one box: the first listed is the match (pycocotools'
    # stable sorts); swapping them changes AP75, in both backends and in pycocotools alike.
    gt = {"images": [{"id": 5, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 10, 50, 50],
                           "area": 2500.0, "iscrowd": 0}],
          "categories": [{"id": 3, "name": "car"}]}
    path = str(tmp_path / "gt.json")
    json.dump(gt, open(path, "w"))
    exact = [0.1, 0.1, 0.6, 0.6]
    loose = [0.1, 0.1, 0.6, 0.52]  # IoU 0.84: misses at IoU 0.85 and above
    results = []
    for order in ([exact, loose], [loose, exact]):
        per_backend = []
        for backend in metrics.COCO_BACKENDS:
            ev = metrics.COCOEvaluator(2, {1: "car"}, label_to_category_id={1: 3}, annotations=path,
                                       backend=backend)
            ev.update(np.zeros([0, 4]), [], None, order, [1, 1], [0.5, 0.5], image_shape=(100, 100),
                      image_id=5)
            per_backend.append(ev.result())
            rows = str(tmp_path / "dets.json")
            json.dump(ev.detection_rows(), open(rows, "w"))
            _same(per_backend[-1], *pycocotools_eval(path, rows))
        assert per_backend[0]["AP"] == pytest.approx(per_backend[1]["AP"], abs=1e-15)
        results.append(per_backend[0]["AP"])
    assert results[0] > results[1]


def test_no_detections_and_bad_ids(tmp_path):
    coco, _ = make_coco(num_images=3)
    empty = [{"boxes": np.zeros([0, 4]), "labels": np.zeros([0], np.int64),
              "scores": np.zeros([0], np.float32)}] * 3
    ev = feed(metrics.COCOEvaluator(4, NAMES, label_to_category_id=LABEL_TO_CAT, annotations=coco),
              as_batches(coco, empty))
    res = ev.result()
    assert res["AP"] == 0.0 and res["num_detections"] == 0
    path = str(tmp_path / "other.json")
    json.dump(dict(coco, images=coco["images"][1:]), open(path, "w"))
    ev = feed(metrics.COCOEvaluator(4, NAMES, label_to_category_id=LABEL_TO_CAT, annotations=path),
              as_batches(coco, empty))
    with pytest.raises(ValueError, match=f"other.json: no image with id {coco['images'][0]['id']}"):
        ev.result()
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json: not a COCO annotation file"):
        metrics.load_coco_annotations(str(tmp_path / "list.json"))
    with pytest.raises(ValueError, match="both have COCO image id 1"):
        metrics.coco_image_ids(["1", "001"])


def test_record_table_and_summaries(coco_case, tmp_path):
    coco, detections, gt_path, _, _ = coco_case
    ev = feed(metrics.COCOEvaluator(4, NAMES, label_to_category_id=LABEL_TO_CAT, annotations=gt_path),
              as_batches(coco, detections))
    block = eo.coco_record(ev.result(), gt_path)
    voc = {"mAP_VOC07": 0.5, "mAP_VOC12": 0.5, "AP_VOC07": {1: 0.5}, "AP_VOC12": {1: 0.5},
           "num_images": 14}
    record = eo.make_record("ckpt-9", 9, voc, NAMES, 14, coco=block)
    assert tuple(record) == eo.RECORD_KEYS + ("coco",)  # every DESIGN §6 key, plus the block
    assert set(block) == set(metrics.COCO_STAT_NAMES) | {"AP_per_class", "num_detections",
                                                         "backend", "annotations_file"}
    assert block["annotations_file"] == os.path.abspath(gt_path)
    eval_dir = str(tmp_path / "eval")
    eo.write_metrics(eval_dir, record)
    assert json.load(open(os.path.join(eval_dir, "metrics.json")))["coco"] == block
    table = eo.format_coco_table(record)
    lines = table.splitlines()
    assert f"maxDets=100 ] = {block['AP']:6.3f}   AP" in lines[1]
    assert any(line.startswith("sign ") and f"{block['AP_per_class']['sign']:6.3f}" in line
               for line in lines)
    assert sum("Average Precision" in l for l in lines) == 6 and sum("Average Recall" in l for l in lines) == 6
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    eo.write_summaries(writer, record, 9)
    writer.close()
    tags = {tag: scalar(value) for tag, (_, value) in read_summaries(str(tmp_path / "tb")).items()}
    assert tags["COCO/AP"] == pytest.approx(block["AP"]) and "COCO/AR_large" in tags
    assert tags["COCO_AP/car"] == pytest.approx(block["AP_per_class"]["car"])
