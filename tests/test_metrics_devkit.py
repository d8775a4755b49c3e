"""VOCEvaluator in the devkit's mode against VOCevaldet.m transcribed (tests/references.py).

Equality is exact (``==``): the evaluator follows the devkit operation for operation (float64
IoU with +1, stable score order, MATLAB's 0:0.1:1, left-to-right sums). The hand cases sit
where the devkit's rules matter: IoU exactly 0.5 (``>=``, ``+1``), score ties (stable sort),
recall exactly 0.3 / 0.6 / 0.7 (MATLAB's thresholds). The last test runs the real evaluation
loop on converted VOC files and checks the printed AP against the reference run on the comp4
files it wrote and the XML annotations.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from engine import eval_outputs as eo
from engine import evaluation as ev
from tests import references
from tf_extended import metrics

CLASSES = ("cat", "dog")


def _devkit(images, num_classes=3, threshold=0.5):
    """Our devkit-mode evaluator on pixel boxes ``(xmin, ymin, xmax, ymax)`` per image."""
    evaluator = metrics.VOCEvaluator(num_classes, threshold, box_mode="devkit")
    for im in images:
        def yx(b):
            return np.asarray(b, np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]]
        evaluator.update(yx(im["gt"]), im["gt_labels"], im.get("difficult"), yx(im["det"]),
                         im["det_labels"], im["scores"])
    return evaluator.result()


def _reference(images, num_classes=3, threshold=0.5):
    """vocevaldet on the same images: results 'file' lines in image order, then input order."""
    gt = {f"im{i}": [(l, tuple(b), bool(d)) for l, b, d in
                     zip(im["gt_labels"], im["gt"], im.get("difficult") or [0] * len(im["gt"]))]
          for i, im in enumerate(images)}
    out = {}
    for c in range(1, num_classes):
        lines = [(f"im{i}", s, tuple(b)) for i, im in enumerate(images)
                 for b, l, s in zip(im["det"], im["det_labels"], im["scores"]) if l == c]
        out[c] = references.vocevaldet(gt, lines, c, threshold)
    return out


def _check_equal(images, num_classes=3, threshold=0.5):
    res = _devkit(images, num_classes, threshold)
    ref = _reference(images, num_classes, threshold)
    for c in range(1, num_classes):
        if ref[c]["npos"] == 0:
            assert math.isnan(res["AP_VOC07"][c])
            continue
        assert res["AP_VOC07"][c] == ref[c]["ap07"], c
        assert res["AP_VOC12"][c] == ref[c]["ap12"], c
    return res, ref


def _one(gt, det, scores=None, labels=None):
    n = len(det)
    return {"gt": [gt], "gt_labels": [1], "det": det, "det_labels": labels or [1] * n,
            "scores": scores or [0.9 - 0.1 * k for k in range(n)]}


# -- IoU exactly at 0.5: +1 and >= ---------------------------------------------------------

def test_iou_exactly_half_with_plus_one_is_a_match():
    # Ground truth x 1..10, y 1..10 (100 pixels with +1); detection y 1..5 (50 pixels): IoU is
    # exactly 50 / 100 = 0.5 with the devkit's +1 (a TP, >=), 36 / 81 without (a miss).
    images = [_one([1, 1, 10, 10], [[1, 1, 10, 5]])]
    res, ref = _check_equal(images)
    assert res["AP_VOC07"][1] == ref[1]["ap07"] and ref[1]["ap12"] == 1.0
    normalized = metrics.VOCEvaluator(3, box_mode="normalized")
    normalized.update([[1, 1, 10, 10]], [1], None, [[1, 1, 5, 10]], [1], [0.9])
    assert normalized.result()["AP_VOC12"][1] == 0.0  # 36/81 < 0.5: the +1 matters


@pytest.mark.parametrize("ymax,hit", [(5.0, True), (5.000001, True), (4.999999, False)])
def test_near_half(ymax, hit):
    res, ref = _check_equal([_one([1, 1, 10, 10], [[1, 1, 10, ymax]])])
    assert ref[1]["ap12"] == (1.0 if hit else 0.0)


def test_iou_half_on_a_taken_box_is_a_duplicate_and_on_a_difficult_box_ignored():
    images = [{"gt": [[1, 1, 10, 10], [21, 21, 30, 30]], "gt_labels": [1, 1], "difficult": [0, 1],
               "det": [[1, 1, 10, 10], [1, 1, 10, 5], [21, 21, 30, 25], [50, 50, 60, 60]],
               "det_labels": [1, 1, 1, 1], "scores": [0.9, 0.8, 0.7, 0.6]}]
    _, ref = _check_equal(images)
    # TP, duplicate FP, ignored (difficult), FP: precision 1, 1/2, 1/2, 1/3.
    assert ref[1]["prec"][:2] == [1.0, 0.5] and ref[1]["npos"] == 1


# -- score ties: the stable order ------------------------------------------------------------

def test_score_ties_keep_the_file_order():
    hit = {"gt": [[1, 1, 10, 10]], "gt_labels": [1], "det": [[1, 1, 10, 10]], "det_labels": [1],
           "scores": [0.5]}
    miss = {"gt": [[1, 1, 10, 10]], "gt_labels": [1], "det": [[40, 40, 50, 50]], "det_labels": [1],
            "scores": [0.5]}
    first, _ = _check_equal([hit, miss])
    second, _ = _check_equal([miss, hit])
    # Same scores, other order: TP first gives precision 1 at recall 1/2, FP first 0 then 1/2.
    assert first["AP_VOC12"][1] == 0.5 and second["AP_VOC12"][1] == 0.25
    # Within one image: two equal-score detections of one box, the first listed takes it.
    tie = {"gt": [[1, 1, 10, 10]], "gt_labels": [1], "det": [[1, 1, 10, 9], [1, 1, 10, 10]],
           "det_labels": [1, 1], "scores": [0.5, 0.5]}
    _check_equal([tie])
    _check_equal([dict(tie, det=tie["det"][::-1])])


# -- recall exactly 0.3, 0.6, 0.7: MATLAB's 0:0.1:1 ------------------------------------------------

@pytest.mark.parametrize("found,expected", [(3, 3 / 11), (6, 7 / 11), (7, 8 / 11)])
def test_recall_exactly_at_a_threshold(found, expected):
    # 10 boxes, the first `found` of them detected (precision 1): recall ends at found / 10.
    # MATLAB's t = 0.30000000000000004 lies above 3/10 (so t = 0.3 finds nothing), but its 0.6
    # and 0.7 are exact (np.arange's 0.6000000000000001 and 0.7000000000000001 are not).
    boxes = [[1 + 20 * k, 1, 10 + 20 * k, 10] for k in range(10)]
    images = [{"gt": boxes, "gt_labels": [1] * 10, "det": boxes[:found], "det_labels": [1] * found,
               "scores": [0.9] * found}]
    res, ref = _check_equal(images)
    assert ref[1]["rec"][-1] == found / 10
    assert res["AP_VOC07"][1] == pytest.approx(expected, abs=1e-15)
    assert references.matlab_0_to_1_by_tenths() == metrics.VOC07_THRESHOLDS.tolist()
    assert metrics.VOC07_THRESHOLDS.tolist()[3] == 0.30000000000000004
    assert metrics.VOC07_THRESHOLDS.tolist()[6:8] == [0.6, 0.7]


# -- random cases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_random_pixel_cases(seed):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(25):
        g = int(rng.integers(0, 5))
        x0, y0 = rng.integers(1, 60, g), rng.integers(1, 60, g)
        gt = np.stack([x0, y0, x0 + rng.integers(1, 30, g), y0 + rng.integers(1, 30, g)], 1)
        labels = rng.integers(1, 3, g).tolist()
        det, det_labels = [], []
        for j in range(g):
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.integers(-3, 4, 4) if rng.random() < 0.5 else rng.normal(0, 2, 4)
                det.append((gt[j] + jitter).tolist())
                det_labels.append(labels[j] if rng.random() < 0.85 else int(rng.integers(1, 3)))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(1, 80, 2)
            det.append([x, y, x + 15, y + 15])
            det_labels.append(int(rng.integers(1, 3)))
        scores = np.round(rng.random(len(det)), 1).tolist()  # ties on purpose
        images.append({"gt": gt.tolist(), "gt_labels": labels,
                       "difficult": (rng.random(g) < 0.2).astype(int).tolist(),
                       "det": det, "det_labels": det_labels, "scores": scores})
    _check_equal(images)
    _check_equal(images, threshold=0.3)


def test_every_detection_on_difficult_boxes_the_one_difference():
    # Every detection of class 1 hits a difficult box: the devkit's precision is all NaN
    # (0/0), so its VOC07 AP is NaN (max of NaNs); ours is 0. VOC12 agrees (0).
    images = [{"gt": [[1, 1, 10, 10], [30, 30, 40, 40]], "gt_labels": [1, 1], "difficult": [1, 0],
               "det": [[1, 1, 10, 10]], "det_labels": [1], "scores": [0.9]}]
    res = _devkit(images)
    ref = _reference(images)
    assert math.isnan(ref[1]["ap07"]) and res["AP_VOC07"][1] == 0.0
    assert ref[1]["ap12"] == res["AP_VOC12"][1] == 0.0


# -- the mapping of the TFRecords' boxes to the devkit's pixels ---------------------------------------

def test_xml_integers_are_recovered_exactly_from_float32():
    for side in (1, 2, 3, 7, 100, 333, 375, 500, 512, 1000, 4096):
        x = np.arange(0, side + 1, dtype=np.float64)
        stored = (x / side).astype(np.float32)  # what the converter writes
        assert np.array_equal(metrics.devkit_gt_boxes(
            np.stack([stored] * 4, 1), [side, side])[:, 0], x), side


# -- the evaluation loop on converted VOC files, against the devkit on the files it writes --------------

@pytest.fixture(scope="module")
def voc_records(tmp_path_factory):
    from datasets import dataset_factory, pascalvoc_to_tfrecords
    from tests.voc_fixtures import make_voc_dataset, write_label_map

    root = tmp_path_factory.mktemp("devkit")
    fx = make_voc_dataset(root / "VOC", num_images=12, seed=3, classes=CLASSES,
                          odd_cases=["difficult"], size_range=(40, 90), max_objects=3)
    pascalvoc_to_tfrecords.convert_voc(fx.root, str(root / "records"), "test", class_names=CLASSES,
                                       num_workers=1)
    spec = dataset_factory.get_dataset("voc", "test", str(root / "records"),
                                       labels_file=write_label_map(root / "labels.txt", CLASSES))
    return fx, spec


def test_loop_equals_the_devkit_on_its_comp4_files(voc_records, tmp_path):
    from preprocessing import preprocessing_factory

    fx, spec = voc_records
    names = {0: "background", 1: "cat", 2: "dog"}
    # A detector that, image after image in evaluation order, returns each ground-truth box
    # moved by a few pixels (IoUs on both sides of 0.5), a duplicate and a box across the
    # image, with tied scores.
    order = [r["filename"].decode() for r in spec.read(num_parallel_reads=1).as_numpy_iterator()]
    rng = np.random.default_rng(0)
    planted = []
    for image_id in order:
        im = fx.by_id[image_id]
        gt = im.bboxes_normalized().astype(np.float64)
        shift = rng.integers(-4, 5, gt.shape) / np.array([im.height, im.width] * 2)
        det = np.concatenate([gt + shift, gt[:1] + 2 * shift[:1], [[0.1, 0.1, 0.9, 0.9]]])
        cls = np.concatenate([im.labels, im.labels[:1], [1]]).astype(np.int32)
        sc = np.round(rng.random(len(det)), 1).astype(np.float32)
        planted.append((det.astype(np.float32), cls, sc))
    calls = []

    def detect(images, bbox_img):
        n = int(images.shape[0])
        chunk = planted[len(calls):len(calls) + n]
        calls.extend(chunk)
        k = max(len(p[0]) for p in chunk)
        out = {"boxes": np.zeros([n, k, 4], np.float32), "scores": np.zeros([n, k], np.float32),
               "classes": np.zeros([n, k], np.int32), "num_detections": np.zeros([n], np.int32)}
        for i, (det, cls, sc) in enumerate(chunk):
            d = len(det)
            out["boxes"][i, :d], out["classes"][i, :d], out["scores"][i, :d] = det, cls, sc
            out["num_detections"][i] = d
        return out

    pre = preprocessing_factory.get_preprocessing("ssd_300_vgg", is_training=False)
    batches = ev.make_eval_dataset(spec.read(num_parallel_reads=1), pre, (64, 64), batch_size=5)
    evaluator = ev.default_evaluator_factory(3, 0.5, names)  # box_mode devkit
    stats, dets = ev.run_evaluation(batches, detect, evaluator, keep_detections=True)
    res = evaluator.result()
    eo.write_voc_detections(str(tmp_path), "test", dets, names)
    gt = {image_id: references.read_voc_xml(fx.by_id[image_id].xml_path) for image_id in dets.image_ids}
    hits = 0
    for label, name in ((1, "cat"), (2, "dog")):
        lines = references.read_comp4(os.path.join(tmp_path, f"comp4_det_test_{name}.txt"))
        ref = references.vocevaldet(gt, lines, name)
        assert res["AP_VOC07"][label] == ref["ap07"] and res["AP_VOC12"][label] == ref["ap12"]
        hits += 0.0 < ref["ap12"] < 1.0
    assert hits == 2  # real mixes of hits and misses
    # The printed table rounds the same numbers.
    record = eo.make_record("ckpt", 1, res, names, stats.num_images)
    assert f"{record['AP_VOC07']['cat']:8.4f}" in eo.format_ap_table(record)
