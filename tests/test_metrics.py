"""tf_extended.metrics.VOCEvaluator against a plain Python VOC devkit (VOCevaldet) re-implementation."""
import math

import numpy as np
import pytest

from tf_extended import metrics

from tests.references import iou


def _nanmax(values):
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else None


def _devkit_ap(images, cls, thr=0.5):
    """VOCevaldet for one class, written from the devkit's description, one detection at a time.

    images: list of dicts with gt_boxes, gt_labels, gt_difficult, det_boxes, det_labels, det_scores.
    Returns (ap07, ap12) or None when the class has no non-difficult ground truth.
    """
    gts = []
    npos = 0
    for im in images:
        sel = [j for j in range(len(im["gt_labels"])) if im["gt_labels"][j] == cls]
        gts.append({"boxes": [im["gt_boxes"][j] for j in sel], "diff": [bool(im["gt_difficult"][j]) for j in sel],
                    "det": [False] * len(sel)})
        npos += sum(1 for j in sel if not im["gt_difficult"][j])
    dets = [(float(im["det_scores"][k]), i, im["det_boxes"][k])
            for i, im in enumerate(images) for k in range(len(im["det_labels"])) if im["det_labels"][k] == cls]
    dets = sorted(dets, key=lambda t: -t[0])  # stable: ties keep image / input order
    tp, fp = [], []
    for _, i, box in dets:
        g = gts[i]
        ovmax, jmax = -math.inf, -1
        for j, gbox in enumerate(g["boxes"]):
            ov = iou(box, gbox)
            if ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax >= thr:  # VOCevaldet.m: ovmax >= minoverlap (DESIGN §3)
            if not g["diff"][jmax]:
                if not g["det"][jmax]:
                    tp.append(1), fp.append(0)
                    g["det"][jmax] = True
                else:
                    tp.append(0), fp.append(1)  # duplicate
            else:
                tp.append(0), fp.append(0)  # difficult: ignored, but stays in the list like the devkit
        else:
            tp.append(0), fp.append(1)
    if npos == 0:
        return None
    ctp = np.cumsum(tp).tolist()
    cfp = np.cumsum(fp).tolist()
    rec = [t / npos for t in ctp]
    prec = [t / (t + f) if t + f > 0 else math.nan for t, f in zip(ctp, cfp)]  # MATLAB: 0/0 = NaN
    ap07 = 0.0
    for t in [0.0, 0.1, 0.2, 0.1 * 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]:  # MATLAB's 0:0.1:1
        p = _nanmax([p for p, r in zip(prec, rec) if r >= t])
        ap07 += (p if p is not None else 0.0) / 11
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = _nanmax([mpre[i], mpre[i + 1]])
    ap12 = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return ap07, ap12


def _random_images(rng, num_images, num_classes, grid=True):
    images = []
    for _ in range(num_images):
        g = int(rng.integers(0, 6))
        if grid:  # 1/8 grid: exact IoUs, including 0.5 exactly
            y0 = rng.integers(0, 6, g); x0 = rng.integers(0, 6, g)
            gb = np.stack([y0, x0, y0 + rng.integers(1, 3, g), x0 + rng.integers(1, 3, g)], 1) / 8.0
        else:
            yx = rng.uniform(0, 0.7, (g, 2))
            gb = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (g, 2))], 1)
        gl = rng.integers(1, num_classes, g)
        gd = rng.random(g) < 0.2
        dets_b, dets_l = [], []
        for j in range(g):  # detections near each box, with duplicates
            for _ in range(int(rng.integers(0, 4))):
                jitter = (np.round(rng.normal(0, 1, 4)) / 8.0) if grid else rng.normal(0, 0.03, 4)
                dets_b.append(gb[j] + jitter * (rng.random() < 0.7))
                dets_l.append(gl[j] if rng.random() < 0.85 else rng.integers(1, num_classes))
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            y, x = rng.uniform(0, 0.8, 2)
            dets_b.append(np.array([y, x, y + 0.2, x + 0.2]))
            dets_l.append(rng.integers(1, num_classes))
        d = len(dets_b)
        scores = np.round(rng.random(d), 1)  # ties on purpose
        images.append({"gt_boxes": gb.reshape(-1, 4), "gt_labels": gl, "gt_difficult": gd,
                       "det_boxes": np.array(dets_b).reshape(-1, 4), "det_labels": np.array(dets_l, np.int64),
                       "det_scores": scores})
    return images


def _check(images, num_classes, thr=0.5, batched=False):
    ev = metrics.VOCEvaluator(num_classes=num_classes, matching_threshold=thr)
    if batched:
        max_g = max(1, max(len(im["gt_labels"]) for im in images))
        max_d = max(1, max(len(im["det_labels"]) for im in images))
        for lo in range(0, len(images), 4):
            chunk = images[lo:lo + 4]
            b = len(chunk)
            gb, gl, gd = np.zeros([b, max_g, 4]), np.zeros([b, max_g], np.int64), np.zeros([b, max_g], bool)
            db, dl, ds = np.zeros([b, max_d, 4]), np.zeros([b, max_d], np.int64), np.zeros([b, max_d])
            for i, im in enumerate(chunk):
                g, d = len(im["gt_labels"]), len(im["det_labels"])
                gb[i, :g], gl[i, :g], gd[i, :g] = im["gt_boxes"], im["gt_labels"], im["gt_difficult"]
                db[i, :d], dl[i, :d], ds[i, :d] = im["det_boxes"], im["det_labels"], im["det_scores"]
            ev.update_batch(gb, gl, gd, [len(im["gt_labels"]) for im in chunk],
                            db, dl, ds, [len(im["det_labels"]) for im in chunk])
    else:
        for im in images:
            ev.update(im["gt_boxes"], im["gt_labels"], im["gt_difficult"],
                      im["det_boxes"], im["det_labels"], im["det_scores"])
    res = ev.result()
    assert res["num_images"] == len(images)
    want07, want12 = [], []
    for c in range(1, num_classes):
        want = _devkit_ap(images, c, thr)
        if want is None:
            assert math.isnan(res["AP_VOC07"][c]) and c in res["classes_without_gt"]
            continue
        np.testing.assert_allclose(res["AP_VOC07"][c], want[0], rtol=1e-12, atol=1e-12, err_msg=f"class {c}")
        np.testing.assert_allclose(res["AP_VOC12"][c], want[1], rtol=1e-12, atol=1e-12, err_msg=f"class {c}")
        want07.append(want[0])
        want12.append(want[1])
    np.testing.assert_allclose(res["mAP_VOC07"], np.mean(want07), rtol=1e-12)
    np.testing.assert_allclose(res["mAP_VOC12"], np.mean(want12), rtol=1e-12)
    return ev, res


@pytest.mark.parametrize("seed", range(4))
def test_random_grid_cases_against_devkit(seed):
    rng = np.random.default_rng(seed)
    images = _random_images(rng, 30, 6)
    _check(images, 6)
    _check(images, 6, thr=0.3)
    _check(images, 6, batched=True)


def test_random_continuous_cases_against_devkit():
    rng = np.random.default_rng(10)
    _check(_random_images(rng, 60, 8, grid=False), 8)


def test_hand_case():
    # Class 1: two boxes (one difficult); class 2: one box. Scores: 0.9 TP, 0.8 duplicate FP,
    # 0.7 on the difficult box (ignored), 0.6 IoU exactly 0.5 with the box already taken
    # (a duplicate: FP).
    gt = np.array([[0, 0, 4, 4], [4, 4, 8, 8], [0, 4, 4, 8]], float) / 8
    det = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 4, 2], [0, 4, 4, 8]], float) / 8
    ev = metrics.VOCEvaluator(num_classes=4, labels_to_names={1: "cat", 2: "dog", 3: "cow"})
    ev.update(gt, [1, 1, 2], [0, 1, 0], det, [1, 1, 1, 1, 2], [0.9, 0.8, 0.7, 0.6, 0.5])
    ev.update(np.zeros([0, 4]), [], [], np.zeros([0, 4]), [], [])  # an empty image is fine
    res = ev.result()
    # cat: n_gt 1; TP at rank 1 -> precision 1 at recall 1: AP 1 (07 and 12). VOC07 adds p / 11
    # eleven times, left to right, as VOCevaldet.m does (DESIGN §3): 1 up to rounding.
    assert res["AP_VOC07"]["cat"] == pytest.approx(1.0, abs=1e-15) and res["AP_VOC12"]["cat"] == 1.0
    assert res["AP_VOC07"]["dog"] == pytest.approx(1.0, abs=1e-15)
    assert math.isnan(res["AP_VOC07"]["cow"]) and res["classes_without_gt"] == ["cow"]
    assert res["mAP_VOC07"] == pytest.approx(1.0, abs=1e-15) and res["num_images"] == 2
    pr = ev.pr_data()["cat"]
    assert pr["tp"].tolist() == [True, False, False] and pr["fp"].tolist() == [False, True, True]
    np.testing.assert_allclose(pr["scores"], [0.9, 0.8, 0.6])
    assert pr["num_gt"] == 1
    curve = ev.pr_curves()["cat"]
    np.testing.assert_allclose(curve["precision"], [1, 0.5, 1 / 3])
    np.testing.assert_allclose(curve["recall"], [1, 1, 1])


def test_ap_formulas_hand_values():
    # 4 ground truths; detections TP, FP, TP, FP, TP: recall .25 .25 .5 .5 .75, precision 1 .5 .667 .5 .6
    tp = np.array([1, 0, 1, 0, 1])
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    rec, prec = ctp / 4, ctp / (ctp + cfp)
    # VOC07: t=0..0.2 -> 1 (3 points), t=0.3..0.5 -> 2/3 (3 points), t=0.6, 0.7 -> 0.6, t>=0.8 -> 0.
    np.testing.assert_allclose(metrics.voc07_ap(rec, prec), (3 * 1 + 3 * 2 / 3 + 2 * 0.6) / 11)
    # VOC12: 0.25 * 1 + 0.25 * 2/3 + 0.25 * 0.6
    np.testing.assert_allclose(metrics.voc12_ap(rec, prec), 0.25 + 0.25 * 2 / 3 + 0.25 * 0.6)
    assert metrics.voc07_ap([], []) == 0.0 and metrics.voc12_ap([], []) == 0.0
    # MATLAB's 0:0.1:1 (DESIGN §3, formerly i/10): its 0.30000000000000004 is above a recall of
    # exactly 0.3, but 0.6 and 0.7 are exact.
    np.testing.assert_allclose(metrics.voc07_ap([0.3], [1.0]), 3 / 11)
    np.testing.assert_allclose(metrics.voc07_ap([0.6], [1.0]), 7 / 11)
    np.testing.assert_allclose(metrics.voc07_ap([0.7], [1.0]), 8 / 11)


def test_no_detections_no_ground_truth_and_incremental_results():
    ev = metrics.VOCEvaluator(num_classes=3)
    assert math.isnan(ev.result()["mAP_VOC07"])
    ev.update([[0, 0, 0.5, 0.5]], [1], None, np.zeros([0, 4]), [], [])  # class 1 never detected
    res = ev.result()
    assert res["AP_VOC07"][1] == 0.0 and res["classes_without_gt"] == [2]
    ev.update(np.zeros([0, 4]), [], [], [[0, 0, 0.5, 0.5]], [2], [0.3])  # detection without any gt
    ev.update([[0, 0, 0.5, 0.5]], [1], [False], [[0, 0, 0.5, 0.5]], [1], [0.9])
    res = ev.result()
    # class 1: 2 gts, one TP at score 0.9: precision 1 up to recall 0.5.
    np.testing.assert_allclose(res["AP_VOC07"][1], 6 / 11)
    np.testing.assert_allclose(res["AP_VOC12"][1], 0.5)
    assert res["num_gt"] == {1: 2, 2: 0} and res["num_images"] == 3
    ev.reset()
    assert ev.num_images == 0


def test_bad_inputs():
    ev = metrics.VOCEvaluator(num_classes=3)
    with pytest.raises(ValueError, match="det_labels contains label 3"):
        ev.update(np.zeros([0, 4]), [], [], [[0, 0, 1, 1]], [3], [0.5])
    with pytest.raises(ValueError, match=r"gt_boxes has shape \(1, 3\)"):
        ev.update([[0, 0, 1]], [1], [0], np.zeros([0, 4]), [], [])
    with pytest.raises(ValueError, match="det_scores has 2 entries"):
        ev.update(np.zeros([0, 4]), [], [], [[0, 0, 1, 1]], [1], [0.5, 0.2])


def test_coco_evaluator_missing_pycocotools_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(metrics, "pycocotools_available", lambda: False)
    with pytest.raises(ImportError, match="pycocotools"):
        metrics.COCOEvaluator(num_classes=3)


def test_coco_evaluator_hand_values():
    pytest.importorskip("pycocotools")
    ev = metrics.COCOEvaluator(num_classes=3)
    # Image 1: one box found exactly (IoU 1: matched at every threshold .5:.95).
    ev.update([[0.0, 0.0, 0.5, 0.5]], [1], [0], [[0.0, 0.0, 0.5, 0.5]], [1], [0.9], image_shape=(100, 100))
    res = ev.result()
    assert res["AP"] == pytest.approx(1.0) and res["num_images"] == 1
    # A 0.4-wide box and a detection shifted by 0.08: IoU = 0.128 / 0.192 = 2/3, so it matches at
    # the thresholds .5 .55 .6 .65 (4 of 10) with precision 1: AP 0.4, AP50 1, AP75 0.
    ev = metrics.COCOEvaluator(num_classes=3)
    ev.update([[0.0, 0.0, 0.4, 0.4]], [2], None, [[0.0, 0.08, 0.4, 0.48]], [2], [0.8], image_shape=(200, 200))
    res = ev.result()
    assert res["AP"] == pytest.approx(0.4) and res["AP50"] == pytest.approx(1.0) and res["AP75"] == 0.0
