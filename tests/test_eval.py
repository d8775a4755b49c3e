"""engine.evaluation (the metric loop with an injected detector, data, model settings) and
engine.eval_outputs (records, metrics files, summaries, devkit / COCO files).

The loop runs with a detector function that reads the image index planted in the pixels and
returns chosen detections, so every expected AP is known; the metrics come from the real
``tf_extended.metrics.VOCEvaluator`` and are checked against the slow reference.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from engine import eval_outputs as eo
from engine import evaluation as ev
from fileio import checkpoint_files
from nets import checkpoints, configure, nets_factory
from nets.configure import SettingsError
from tests.test_eval_reference import plant_ssd, reference_voc, softmax_score
from tf_extended import metrics
from tests.scripts import read_summaries

NAMES = {0: "background", 1: "cat", 2: "dog", 3: "bird"}


def _evaluator(num_classes=4, threshold=0.5):
    return metrics.VOCEvaluator(num_classes=num_classes, matching_threshold=threshold)


def _by_name(aps: dict) -> dict:
    """Reference per-class dict keyed like metrics records (class names, nan -> None)."""
    return {NAMES[c]: (None if math.isnan(v) else v) for c, v in aps.items()}


class _Planted:
    """Batches of numpy dicts + a detector that returns per-image planted detections."""

    def __init__(self, images: list[dict], batch_size: int, k: int = 5):
        self.images = images
        self.k = k
        self.batches = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            g = max(1, max(len(im["gt_labels"]) for im in chunk))
            b = len(chunk)
            batch = {"image": np.zeros([b, 2, 2, 3], np.float32),
                     "bbox_img": np.tile(np.array([0, 0, 1, 1], np.float32), [b, 1]),
                     "gt_bboxes": np.zeros([b, g, 4], np.float32),
                     "gt_labels": np.zeros([b, g], np.int64),
                     "gt_difficult": np.zeros([b, g], np.int64),
                     "num_gt": np.zeros([b], np.int32),
                     "shape": np.tile(np.array([100, 200, 3], np.int64), [b, 1]),
                     "filename": np.array([f"{start + i + 1:06d}".encode() for i in range(b)])}
            for i, im in enumerate(chunk):
                n = len(im["gt_labels"])
                batch["image"][i, 0, 0, 0] = start + i  # The index the detector reads back.
                batch["gt_bboxes"][i, :n] = np.reshape(im["gt_boxes"], [-1, 4])
                batch["gt_labels"][i, :n] = im["gt_labels"]
                batch["gt_difficult"][i, :n] = im["gt_difficult"]
                batch["num_gt"][i] = n
            self.batches.append(batch)
        self.calls = []

    def detect(self, images, bbox_img):
        idx = np.asarray(images)[:, 0, 0, 0].astype(int)
        self.calls.append(len(idx))
        out = {"boxes": np.zeros([len(idx), self.k, 4], np.float32),
               "scores": np.zeros([len(idx), self.k], np.float32),
               "classes": np.zeros([len(idx), self.k], np.int32),
               "num_detections": np.zeros([len(idx)], np.int32)}
        for row, i in enumerate(idx):
            im = self.images[i]
            d = len(im["det_labels"])
            out["boxes"][row, :d] = np.reshape(im["det_boxes"], [-1, 4])
            out["scores"][row, :d] = im["det_scores"]
            out["classes"][row, :d] = im["det_labels"]
            out["num_detections"][row] = d
        return out


def _img(gt=(), gl=(), gd=(), det=(), dl=(), ds=()):
    return {"gt_boxes": list(gt), "gt_labels": list(gl), "gt_difficult": list(gd) or [0] * len(gl),
            "det_boxes": list(det), "det_labels": list(dl), "det_scores": list(ds)}


A = [0.1, 0.1, 0.5, 0.5]
B = [0.5, 0.5, 0.9, 0.95]
C = [0.2, 0.6, 0.4, 0.9]


def _perfect_images():
    """7 images: perfect detections; a difficult box detected (ignored); empty images."""
    return [
        _img([A, B], [1, 2], [0, 0], [A, B], [1, 2], [0.9, 0.8]),
        _img([C], [3], [0], [C], [3], [0.7]),
        _img(),                                                      # no gt, no detection
        _img([A, C], [2, 2], [0, 1], [C, A], [2, 2], [0.95, 0.6]),   # C difficult, detected
        _img([B], [1], [1]),                                          # only a difficult box
        _img([B, A], [3, 1], [0, 0], [B, A], [3, 1], [0.5, 0.4]),
        _img([A], [2], [0], [A], [2], [0.3]),
    ]


@pytest.mark.parametrize("batch_size,overlap", [(3, True), (1, False), (8, True)])
def test_perfect_detections_give_one(batch_size, overlap):
    images = _perfect_images()
    planted = _Planted(images, batch_size)
    evaluator = _evaluator()
    stats, dets = ev.run_evaluation(planted.batches, planted.detect, evaluator,
                                    keep_detections=True, overlap=overlap)
    res = evaluator.result()
    assert res["mAP_VOC07"] == pytest.approx(1.0) and res["mAP_VOC12"] == pytest.approx(1.0)
    assert stats.num_images == 7 and len(dets) == 7
    # The smaller last batch is evaluated as it is (7 = 3 + 3 + 1).
    assert planted.calls == [min(batch_size, 7 - s) for s in range(0, 7, batch_size)]
    assert dets.image_ids == [f"{i:06d}" for i in range(1, 8)]
    record = eo.make_record("/x/ckpt-5", 5, res, NAMES, stats.num_images)
    assert record["AP_VOC07"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0),
                                  "bird": pytest.approx(1.0)}


def test_difficult_boxes_are_excluded_or_counted():
    # One image: A (dog) found, C (dog, difficult) not found.
    images = [_img([A, C], [2, 2], [0, 1], [A], [2], [0.9])]
    for remove_difficult, ap07, ap12 in ((True, 1.0, 1.0), (False, 6 / 11, 0.5)):
        planted = _Planted(images, 1)
        evaluator = _evaluator()
        ev.run_evaluation(planted.batches, planted.detect, evaluator,
                          remove_difficult=remove_difficult)
        res = evaluator.result()
        assert res["mAP_VOC07"] == pytest.approx(ap07)
        assert res["mAP_VOC12"] == pytest.approx(ap12)
        ref = reference_voc(images, 4, use_difficult_flags=remove_difficult)
        assert ref["mAP_VOC07"] == pytest.approx(ap07) and ref["mAP_VOC12"] == pytest.approx(ap12)


def test_random_detections_match_the_reference():
    rng = np.random.default_rng(7)
    images = []
    for _ in range(12):
        g = int(rng.integers(0, 4))
        gt = rng.uniform(0, 0.5, [g, 2])
        gt = np.concatenate([gt, gt + rng.uniform(0.2, 0.5, [g, 2])], 1)
        gl = rng.integers(1, 4, g)
        gd = (rng.random(g) < 0.25).astype(int)
        # Detections: jittered ground truth (some hits, some misses) plus random boxes.
        jitter = gt + rng.normal(0, 0.04, gt.shape)
        extra = rng.uniform(0, 0.5, [int(rng.integers(0, 3)), 2])
        extra = np.concatenate([extra, extra + 0.3], 1)
        det = np.concatenate([jitter, extra]) if len(extra) else jitter
        dl = np.concatenate([gl, rng.integers(1, 4, len(extra))]).astype(int)
        dl[rng.random(len(dl)) < 0.15] = 1  # A few with the wrong class.
        ds = rng.random(len(dl)).round(3)
        images.append(_img(gt.tolist(), gl.tolist(), gd.tolist(), det.tolist(), dl.tolist(),
                           ds.tolist()))
    for remove_difficult in (True, False):
        planted = _Planted(images, 5)
        evaluator = _evaluator()
        ev.run_evaluation(planted.batches, planted.detect, evaluator,
                          remove_difficult=remove_difficult)
        record = eo.make_record("c", 1, evaluator.result(), NAMES, 12)
        ref = reference_voc(images, 4, use_difficult_flags=remove_difficult)
        assert record["AP_VOC07"] == pytest.approx(_by_name(ref["AP_VOC07"]), abs=1e-6)
        assert record["AP_VOC12"] == pytest.approx(_by_name(ref["AP_VOC12"]), abs=1e-6)
        assert record["mAP_VOC07"] == pytest.approx(ref["mAP_VOC07"], abs=1e-6)
        assert 0.2 < record["mAP_VOC07"] < 0.95  # A real mix of hits and misses.


def test_detections_to_image_frame_pad_and_clip():
    # PAD_AND_RESIZE put the image in rows 0.125..0.875 of the network input.
    det = {"boxes": tf.constant([[[0.125, 0.2, 0.5, 0.6], [0.0, 0.1, 0.3, 0.3], [0.3, 0.3, 0.4, 0.4]]]),
           "scores": tf.constant([[0.9, 0.8, 0.0]]), "classes": tf.constant([[1, 2, 0]]),
           "num_detections": tf.constant([2])}
    out = ev.detections_to_image_frame(det, tf.constant([[0.125, 0.0, 0.875, 1.0]]))
    np.testing.assert_allclose(out["boxes"].numpy()[0],
                               [[0.0, 0.2, 0.5, 0.6],
                                [0.0, 0.1, 0.175 / 0.75, 0.3],  # -0.1667 clipped to 0
                                [0.0, 0.0, 0.0, 0.0]], atol=1e-6)  # padding row stays zero


def test_devkit_and_coco_files_round_trip(tmp_path):
    dets = eo.DetectionSet(
        image_ids=["000001", "img_b"], shapes=np.array([[100, 200, 3], [50, 40, 3]]),
        boxes=np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]],
                        [[0.2, 0.25, 0.6, 0.75], [0, 0, 0, 0]]], np.float32),
        scores=np.array([[0.9, 0.25], [0.5, 0.0]], np.float32),
        classes=np.array([[2, 1], [2, 0]], np.int32),
        num_detections=np.array([2, 1], np.int32))
    paths = eo.write_voc_detections(str(tmp_path), "test", dets, NAMES)
    assert sorted(os.path.basename(p) for p in paths) == [
        "comp4_det_test_bird.txt", "comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert open(tmp_path / "comp4_det_test_bird.txt").read() == ""  # Empty, but present.
    # 1-based pixels = normalized * side (how the converter stored them), clipped to [1, side],
    # at full precision (DESIGN §3: the files hold what was scored; formerly %.6f / %.2f): the
    # float32 0.9 and 0.1 * 200 as the float64 values the metric used.
    def px(value, side):
        return repr(float(np.float32(value)) * side)

    assert open(tmp_path / "comp4_det_test_dog.txt").read().splitlines() == [
        f"000001 {float(np.float32(0.9))!r} {px(0.2, 200)} {px(0.1, 100)} {px(0.6, 200)} {px(0.5, 100)}",
        f"img_b 0.5 {px(0.25, 40)} {px(0.2, 50)} {px(0.75, 40)} {px(0.6, 50)}"]
    back = eo.read_voc_detections(str(tmp_path), "test", NAMES)
    assert back == {"000001": [(1, 0.25, 1.0, 1.0, 200.0, 100.0),
                               (2, pytest.approx(0.9), pytest.approx(40.0), pytest.approx(10.0),
                                pytest.approx(120.0), 50.0)],
                    "img_b": [(2, 0.5, 10.0, pytest.approx(10.0), 30.0, pytest.approx(30.0))]}
    n = eo.write_coco_detections(str(tmp_path / "coco.json"), dets, NAMES)
    rows = json.load(open(tmp_path / "coco.json"))
    # Image ids: names stay strings unless every one is all digits (pycocotools sorts the ids:
    # a mix of ints and strings, as formerly written here, cannot be evaluated).
    assert n == 3 and rows[0] == {"image_id": "000001", "category_id": 2, "category_name": "dog",
                                  "bbox": pytest.approx([39.0, 9.0, 81.0, 41.0]),
                                  "score": pytest.approx(0.9)}
    assert rows[2]["image_id"] == "img_b"
    dets.image_ids[1] = "000002"
    eo.write_coco_detections(str(tmp_path / "coco.json"), dets, NAMES)
    assert [r["image_id"] for r in json.load(open(tmp_path / "coco.json"))] == [1, 1, 2]
    (tmp_path / "comp4_det_test_cat.txt").write_text("000001 0.5 1 2 3\n")
    with pytest.raises(ValueError, match="comp4_det_test_cat.txt:1"):
        eo.read_voc_detections(str(tmp_path), "test", NAMES)


def test_metrics_files(tmp_path):
    res = {"mAP_VOC07": 0.5, "mAP_VOC12": float("nan"), "AP_VOC07": {1: 0.25, 2: 0.75, 3: float("nan")},
           "AP_VOC12": {1: 0.2, 2: 0.7, 3: None}, "num_images": 4}
    r1 = eo.make_record(str(tmp_path / "ckpt-1"), 1, res, NAMES)
    assert tuple(r1) == eo.RECORD_KEYS
    assert r1["AP_VOC07"] == {"cat": 0.25, "dog": 0.75, "bird": None} and r1["mAP_VOC12"] is None
    r2 = dict(r1, checkpoint=str(tmp_path / "ckpt-2"), global_step=2)
    eval_dir = str(tmp_path / "eval")
    eo.write_metrics(eval_dir, r1)
    eo.write_metrics(eval_dir, r2)
    assert json.load(open(os.path.join(eval_dir, "metrics.json"))) == r2
    lines = open(os.path.join(eval_dir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(line) for line in lines] == [r1, r2]
    assert sorted(os.listdir(eval_dir)) == ["metrics.json", "metrics.jsonl"]  # No temp left.
    with open(os.path.join(eval_dir, "metrics.jsonl"), "a") as f:
        f.write('{"checkpoint": "torn')  # A crash in the middle of a line.
    assert eo.read_evaluated_checkpoints(eval_dir) == {str(tmp_path / "ckpt-1"),
                                                       str(tmp_path / "ckpt-2")}
    table = eo.format_ap_table(r1)
    assert "no gt" in table and "0.2500" in table and table.splitlines()[-1].startswith("mAP")


def test_pr_curve_data_hand_values():
    curve = eo.PRCurve(scores=np.array([0.3, 0.9, 0.8]), tp=np.array([1, 1, 0]),
                       fp=np.array([0, 0, 1]), num_gt=4)
    data = eo.pr_curve_data(curve, num_thresholds=11)
    tp, fp, tn, fn, precision, recall = data
    # Threshold 0.5 (column 5): detections 0.9 (TP) and 0.8 (FP).
    assert (tp[5], fp[5], fn[5], precision[5], recall[5]) == (1, 1, 3, 0.5, 0.25)
    # Threshold 0: all three.
    assert (tp[0], fp[0], precision[0], recall[0]) == (2, 1, pytest.approx(2 / 3), 0.5)
    # Threshold 1: none; precision defined as 1.
    assert (tp[10], fp[10], precision[10]) == (0, 0, 1.0)
    assert not tn.any()


def test_summaries(tmp_path):
    record = {"checkpoint": "c", "global_step": 42, "num_images": 3, "mAP_VOC07": 0.5,
              "mAP_VOC12": 0.4, "AP_VOC07": {"cat": 0.5, "dog": None},
              "AP_VOC12": {"cat": 0.4, "dog": None}}
    writer = tf.summary.create_file_writer(str(tmp_path))
    curve = eo.PRCurve(np.array([0.9]), np.array([1]), np.array([0]), 1)
    eo.write_summaries(writer, record, 42, {"cat": curve})
    writer.close()
    values = read_summaries(str(tmp_path))
    assert values["AP_VOC07/mAP"][0] == 42
    assert tf.make_ndarray(values["AP_VOC07/mAP"][1].tensor) == pytest.approx(0.5)
    assert tf.make_ndarray(values["AP_VOC12/cat"][1].tensor) == pytest.approx(0.4)
    assert "AP_VOC07/dog" not in values  # No ground truth: no point.
    step, pr = values["PR_VOC/cat/pr_curves"]
    assert step == 42 and pr.metadata.plugin_data.plugin_name == "pr_curves"
    assert tf.make_ndarray(pr.tensor).shape == (6, eo.PR_CURVE_NUM_THRESHOLDS)


def test_eval_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        ev.EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="nms_threshold"):
        ev.EvalConfig(nms_threshold=0.0)


# -- real data and a real network -------------------------------------------------------------

@pytest.fixture(scope="module")
def voc_records(tmp_path_factory):
    """Tiny VOC folder (3 classes, real JPEG/PNG files) converted to TFRecords."""
    from datasets import dataset_factory, pascalvoc_to_tfrecords
    from tests.voc_fixtures import make_voc_dataset, write_label_map

    root = tmp_path_factory.mktemp("voc")
    classes = ("cat", "dog", "bird")
    fx = make_voc_dataset(root / "VOC", num_images=4, seed=5, classes=classes,
                          odd_cases=["difficult", "grayscale_jpeg", "png_named_jpg"],
                          size_range=(40, 90))
    pascalvoc_to_tfrecords.convert_voc(fx.root, str(root / "records"), "test", class_names=classes,
                                       num_workers=1)
    labels = write_label_map(root / "labels.txt", classes)
    spec = dataset_factory.get_dataset("voc", "test", str(root / "records"), labels_file=labels)
    return fx, spec


def test_make_eval_dataset_keeps_original_ground_truth(voc_records):
    from preprocessing import preprocessing_factory

    fx, spec = voc_records
    pre = preprocessing_factory.get_preprocessing("ssd_300_vgg", is_training=False, resize=2)
    ds = ev.make_eval_dataset(spec.read(num_parallel_reads=1), pre, (64, 64), batch_size=3)
    batches = list(ds.as_numpy_iterator())
    assert [len(b["num_gt"]) for b in batches] == [3, 3, 1]
    seen = {}
    for b in batches:
        assert b["image"].shape[1:] == (64, 64, 3)
        for i in range(len(b["num_gt"])):
            image_id = b["filename"][i].decode()
            n = b["num_gt"][i]
            seen[image_id] = n
            im = fx.by_id[image_id]
            np.testing.assert_allclose(b["gt_bboxes"][i, :n], im.bboxes_normalized(), atol=1e-6)
            assert b["gt_labels"][i, :n].tolist() == im.labels.tolist()
            assert b["gt_difficult"][i, :n].tolist() == im.difficult.tolist()
            assert not b["gt_labels"][i, n:].any()
            assert b["shape"][i].tolist() == [im.height, im.width, 3]
            # CENTRAL_CROP (crop or pad to 64x64, centred): the original image's window.
            y0, x0, y1, x1 = b["bbox_img"][i]
            assert (y1 - y0, x1 - x0) == (pytest.approx(im.height / 64), pytest.approx(im.width / 64))
            assert y0 == pytest.approx(1 - y1, abs=1 / 64) and x0 == pytest.approx(1 - x1, abs=1 / 64)
    assert sorted(seen) == sorted(fx.ids)


def _fake_spec(records, names=NAMES):
    """A DatasetSpec stand-in over in-memory examples (already decoded dicts)."""
    class Spec:
        name, split_name, num_classes = "fake", "test", len(names)
        labels_to_names = names

        def read(self, **kwargs):
            return tf.data.Dataset.from_generator(
                lambda: iter(records),
                output_signature={"image": tf.TensorSpec([None, None, 3], tf.uint8),
                                  "shape": tf.TensorSpec([3], tf.int64),
                                  "object/bbox": tf.TensorSpec([None, 4], tf.float32),
                                  "object/label": tf.TensorSpec([None], tf.int64),
                                  "object/difficult": tf.TensorSpec([None], tf.int64),
                                  "filename": tf.TensorSpec([], tf.string)})
    return Spec()


@pytest.mark.slow
def test_checkpoint_evaluator_planted_net_is_perfect(tmp_path):
    """A real SSD300 with planted weights, a real checkpoint, the real preprocessing."""
    from preprocessing import preprocessing_factory

    boxes = [[0.1, 0.1, 0.5, 0.6], [0.3, 0.4, 0.9, 0.95], [0.05, 0.5, 0.4, 0.9]]
    classes = [1, 2, 3]
    net = plant_ssd(boxes, classes, [10.0, 9.0, 8.0], num_classes=4)
    prefix = net.save_checkpoint(str(tmp_path / "train" / "model.ckpt-300"))
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate([(40, 60), (50, 50), (30, 70)]):
        difficult = [0, 0, 1] if i == 0 else [0, 0, 0]
        records.append({"image": rng.integers(0, 255, [h, w, 3], dtype=np.uint8),
                        "shape": np.array([h, w, 3]), "object/bbox": np.array(boxes, np.float32),
                        "object/label": np.array(classes), "object/difficult": np.array(difficult),
                        "filename": f"im{i}".encode()})
    pre = preprocessing_factory.get_preprocessing("ssd_300_vgg", is_training=False)
    evaluator = ev.CheckpointEvaluator(
        model_name="ssd_300_vgg", dataset_spec=_fake_spec(records), preprocess_fn=pre,
        config=ev.EvalConfig(batch_size=2), eval_dir=str(tmp_path / "eval"),
        detections_dir=str(tmp_path / "dets"))
    record = evaluator.evaluate(str(tmp_path / "train"))  # The directory: its latest.
    evaluator.close()
    assert record["checkpoint"] == os.path.abspath(prefix) and record["global_step"] == 300
    assert record["num_images"] == 3
    assert record["mAP_VOC07"] == pytest.approx(1.0) and record["mAP_VOC12"] == pytest.approx(1.0)
    # The devkit files hold the planted boxes in each image's own pixels.
    back = eo.read_voc_detections(str(tmp_path / "dets"), "test", NAMES)
    assert sorted(back) == ["im0", "im1", "im2"]
    (label, score, x0, y0, x1, y1) = back["im0"][0]
    assert (label, x0, y0, x1, y1) == (1, pytest.approx(6.0), pytest.approx(4.0), pytest.approx(36.0),
                                        pytest.approx(20.0))
    assert score == pytest.approx(softmax_score(10.0, 4), abs=1e-6)


def test_resolve_params_from_sidecar_and_flags(tmp_path):
    """The net evaluation builds for a checkpoint (nets.configure.resolve_model, as
    CheckpointEvaluator calls it): flags, else the sidecar, else the checkpoint, else defaults."""
    net_class = nets_factory.get_network("ssd_300_vgg")
    # A checkpoint with a sidecar: trained with the coco_ft anchors, 21 classes.
    prefix = str(tmp_path / "sidecar" / "model.ckpt-1")
    os.makedirs(os.path.dirname(prefix))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["global_step"], shape_and_slices=[""],
                      tensors=[tf.constant(1, tf.int64)])
    checkpoints.write_metadata(prefix, "ssd_300_vgg",
                               net_class.default_params.with_anchor_preset("coco_ft"))

    def resolve(model_name, **kwargs):
        return configure.resolve_model(model_name, **kwargs)[1]

    params = resolve("ssd_300_vgg", checkpoint=prefix)
    assert params.anchor_preset == "coco_ft" and params.num_classes == 21
    with pytest.raises(SettingsError, match="anchor preset 'coco_ft', but --anchor_preset=voc"):
        resolve("ssd_300_vgg", anchor_preset="voc", checkpoint=prefix)
    with pytest.raises(SettingsError, match="21 classes, but --num_classes=5"):
        resolve("ssd_300_vgg", num_classes=5, checkpoint=prefix)
    with pytest.raises(SettingsError, match="ssd_300_vgg model, but --model_name=ssd_512_vgg"):
        resolve("ssd_512_vgg", checkpoint=prefix)
    # No sidecar: flags, else the dataset's class count, else the defaults.
    params = resolve("ssd_300_vgg", anchor_preset="coco_ft", default_num_classes=5)
    assert params.anchor_preset == "coco_ft" and params.num_classes == 5
    with pytest.raises(ValueError, match="Unknown network name"):
        resolve("inception_v3")
    # --eval_image_size: feature maps follow the input size.
    params = resolve("ssd_300_vgg", image_size=320)
    assert params.img_shape == (320, 320) and params.feat_shapes[0] == (40, 40)
    # A checkpoint without sidecar (the original's, Caffe's): classes from its class heads.
    net = plant_ssd([[0.1, 0.1, 0.5, 0.5]], [1], [9.0], num_classes=7)
    prefix = net.save_checkpoint(str(tmp_path / "model.ckpt"))
    os.remove(prefix + checkpoints.SIDECAR_SUFFIX)
    params = resolve("ssd_300_vgg", checkpoint=prefix, default_num_classes=21)
    assert params.num_classes == 7 and params.anchor_preset == "voc"


def test_load_weights_moving_average_tf1_names(tmp_path):
    """A TF1 checkpoint with ``<name>/ExponentialMovingAverage`` shadows (TF1 slim training)."""
    net = nets_factory.get_network("ssd_300_vgg")()
    variables = net.variables_by_checkpoint_name()
    names, tensors = [], []
    for name, var in variables.items():
        names += [name, name + "/ExponentialMovingAverage"]
        tensors += [tf.fill(var.shape, 1.0), tf.fill(var.shape, 2.0)]
    prefix = str(tmp_path / "model.ckpt-9")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    assert ev.load_weights(net, prefix, use_moving_average=False) == "weights"
    assert float(variables["ssd_300_vgg/conv1/conv1_1/weights"][0, 0, 0, 0]) == 1.0
    assert ev.load_weights(net, prefix, use_moving_average=True) == "moving_average"
    assert all(float(tf.reduce_min(v)) == 2.0 for v in variables.values())
    for f in os.listdir(tmp_path):
        os.remove(tmp_path / f)
    with pytest.raises(checkpoint_files.CheckpointUnavailableError, match="gone"):
        ev.load_weights(net, prefix)


def test_load_weights_trainer_checkpoint_with_moving_average(tmp_path):
    """The trainer's format: key 'model' = averages, 'train_model' = raw weights, 'step'."""
    net_class = nets_factory.get_network("ssd_300_vgg")
    raw, avg, net = net_class(), net_class(), net_class()
    for value, model in ((1.0, raw), (2.0, avg)):
        for var in model.variables_by_checkpoint_name().values():
            var.assign(tf.fill(var.shape, value))
    ckpt = tf.train.Checkpoint(model=avg, train_model=raw, step=tf.Variable(1234, dtype=tf.int64))
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    prefix = manager.save(checkpoint_number=1234)
    checkpoints.write_metadata(prefix, "ssd_300_vgg", net.params)
    assert checkpoint_files.read_global_step(prefix) == 1234
    first = "ssd_300_vgg/block11_box/conv_cls/biases"
    # 'model' is what to evaluate: the averages, with or without the flag (docs/training.md).
    for flag in (False, True):
        net.variables_by_checkpoint_name()[first].assign(tf.zeros([84]))
        assert ev.load_weights(net, prefix, use_moving_average=flag) == "moving_average"
        assert float(net.variables_by_checkpoint_name()[first][0]) == 2.0
