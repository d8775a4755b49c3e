"""eval_ssd_network.py end to end, in subprocesses: real TFRecords, real checkpoints.

The network is an SSD300 with planted weights (tests/test_eval_reference.plant_ssd): it
detects the same few boxes in every image, so the expected metrics follow from the ground
truth alone, computed here by the slow reference and by ``tf_extended.metrics``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from engine import eval_outputs as eo
from engine import evaluation as ev
from tests import references
from tests.scripts import read_summaries, run_script, scalar, script_env
from tests.test_eval_reference import plant_ssd, reference_voc, softmax_score
from tf_extended import metrics

# Every test here runs eval_ssd_network.py as a subprocess.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "eval_ssd_network.py")
CLASSES = ("cat", "dog", "bird")
NAMES = {0: "background", 1: "cat", 2: "dog", 3: "bird"}
# Planted detections (normalized; warp resize keeps them in the original frame): near some
# ground-truth boxes of the fixture (seed 11), so that some images' objects are found (one
# matches a difficult box) and most are not.
BOXES = [[0.3, 0.41, 0.83, 0.77], [0.02, 0.29, 0.27, 0.97], [0.16, 0.27, 0.83, 0.89],
         [0.14, 0.42, 0.37, 0.82]]
LABELS = [1, 2, 3, 1]
LOGITS = [10.0, 9.0, 8.0, 7.0]


def _run(args, timeout=300):
    return run_script("eval_ssd_network.py", *args, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Fixture VOC folder (3 classes, difficult boxes, odd image files) -> TFRecords."""
    from datasets import pascalvoc_to_tfrecords
    from tests.voc_fixtures import make_voc_dataset, write_label_map

    root = tmp_path_factory.mktemp("evalscript")
    fx = make_voc_dataset(root / "VOC", num_images=7, seed=11, classes=CLASSES,
                          odd_cases=["difficult", "grayscale_jpeg", "png_named_jpg"],
                          size_range=(40, 90), max_objects=3)
    pascalvoc_to_tfrecords.convert_voc(fx.root, str(root / "records"), "test",
                                       class_names=CLASSES, num_workers=1, samples_per_shard=4)
    labels = write_label_map(root / "labels.txt", CLASSES)
    flags = ["--dataset_name=voc", f"--labels_file={labels}", "--dataset_split_name=test",
             f"--dataset_dir={root / 'records'}"]
    return root, fx, flags


def _expected(fx, order, boxes=BOXES, labels=LABELS, logits=LOGITS, remove_difficult=True):
    """Reference metrics when every image gets the planted detections.

    Every image's detections have the same scores: the tie between them is broken by the
    evaluation order (``order``, image ids), as the VOC devkit's stable sort does.
    """
    scores = [softmax_score(l, 4) for l in logits]
    by_id = fx.by_id
    images = [{"gt_boxes": by_id[i].bboxes_normalized().tolist(), "gt_labels": by_id[i].labels.tolist(),
               "gt_difficult": by_id[i].difficult.tolist(), "det_boxes": boxes, "det_labels": labels,
               "det_scores": scores} for i in order]
    return reference_voc(images, 4, use_difficult_flags=remove_difficult)


def _devkit_expected(fx, dets_dir, names=NAMES):
    """VOCevaldet.m (tests/references.py) on the comp4 files of ``dets_dir`` and the fixture's
    XML annotations, for the images in the files: {'AP_VOC07': {name: ap}, 'AP_VOC12': ...}."""
    files = {name: references.read_comp4(os.path.join(dets_dir, f"comp4_det_test_{name}.txt"))
             for label, name in names.items() if label > 0}
    gt = {im.image_id: references.read_voc_xml(im.xml_path) for im in fx.images}
    out = {"AP_VOC07": {}, "AP_VOC12": {}}
    for name, lines in files.items():
        ref = references.vocevaldet(gt, lines, name)
        no_gt = ref["npos"] == 0
        out["AP_VOC07"][name] = None if no_gt else ref["ap07"]
        out["AP_VOC12"][name] = None if no_gt else ref["ap12"]
    return out


def _close(record_aps, ref_aps):
    expected = {NAMES[c]: (None if np.isnan(v) else pytest.approx(v, abs=1e-6))
                for c, v in ref_aps.items()}
    return record_aps == expected


def test_end_to_end_metrics_devkit_and_summaries(data, tmp_path):
    root, fx, flags = data
    net = plant_ssd(BOXES, LABELS, LOGITS, num_classes=4)
    prefix = net.save_checkpoint(str(tmp_path / "train" / "model.ckpt-500"))
    eval_dir, dets_dir = tmp_path / "eval", tmp_path / "dets"
    result = _run(flags + [f"--checkpoint_path={prefix}.index", f"--eval_dir={eval_dir}",
                           f"--detections_dir={dets_dir}", "--batch_size=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.load(open(eval_dir / "metrics.json"))
    assert tuple(record) == eo.RECORD_KEYS
    assert record["checkpoint"] == os.path.abspath(prefix) and record["global_step"] == 500
    assert record["num_images"] == len(fx.images) == 10
    # Evaluation order = the order of the lines of a devkit file (every image has a cat).
    order = list(dict.fromkeys(line.split()[0] for line in open(dets_dir / "comp4_det_test_cat.txt")))
    assert sorted(order) == sorted(fx.ids)
    # The printed AP is VOCevaldet.m's on the comp4 files this run wrote (DESIGN §3), exactly.
    devkit = _devkit_expected(fx, str(dets_dir))
    assert record["AP_VOC07"] == devkit["AP_VOC07"] and record["AP_VOC12"] == devkit["AP_VOC12"]
    # The former normalized metric (no +1) is --voc_metric=normalized; close here, not equal.
    ref = _expected(fx, order)
    assert record["mAP_VOC07"] == pytest.approx(ref["mAP_VOC07"], abs=0.1)
    assert 0.05 < record["mAP_VOC07"] < 0.95  # Some hits, some misses: a real test.
    assert [json.loads(l) for l in open(eval_dir / "metrics.jsonl")] == [record]
    # The table on stdout.
    assert "AP_VOC07" in result.stdout and f"{record['mAP_VOC07']:8.4f}" in result.stdout

    # The devkit files parse back to the planted detections, in each image's pixels, and
    # VOCEvaluator (normalized mode) on them gives --voc_metric=normalized's metrics.json.
    back = eo.read_voc_detections(str(dets_dir), "test", NAMES)
    assert sorted(back) == sorted(fx.ids)
    evaluator = metrics.VOCEvaluator(num_classes=4, matching_threshold=0.5)
    for im in (fx.by_id[i] for i in order):
        rows = sorted(back[im.image_id], key=lambda r: -r[1])
        assert [r[0] for r in rows] == LABELS
        pixels = np.array([r[2:] for r in rows])
        w, h = im.width, im.height
        expected = np.clip(np.array(BOXES)[:, [1, 0, 3, 2]] * [w, h, w, h], 1, [w, h, w, h])
        np.testing.assert_allclose(pixels, expected, atol=0.006)
        det = pixels[:, [1, 0, 3, 2]] / [h, w, h, w]
        evaluator.update(im.bboxes_normalized(), im.labels, im.difficult, det,
                         np.array(LABELS), np.array([r[1] for r in rows]))
    res = eo.make_record(record["checkpoint"], 500, evaluator.result(), NAMES)
    normalized = _run(flags + [f"--checkpoint_path={prefix}.index", f"--eval_dir={tmp_path / 'n'}",
                               "--batch_size=3", "--voc_metric=normalized"])
    assert normalized.returncode == 0, normalized.stderr[-3000:]
    record_n = json.load(open(tmp_path / "n" / "metrics.json"))
    assert res["mAP_VOC07"] == pytest.approx(record_n["mAP_VOC07"], abs=1e-6)
    assert res["AP_VOC12"] == pytest.approx(record_n["AP_VOC12"], abs=1e-6)
    assert _close(record_n["AP_VOC07"], ref["AP_VOC07"]) and _close(record_n["AP_VOC12"], ref["AP_VOC12"])
    coco = json.load(open(dets_dir / "detections_test_coco.json"))
    assert len(coco) == 4 * len(fx.images)

    # TensorBoard: the mAP at the checkpoint's step.
    tags = {tag: (step, scalar(value))
            for tag, (step, value) in read_summaries(str(eval_dir)).items()}
    assert tags["AP_VOC07/mAP"] == (500, pytest.approx(record["mAP_VOC07"], abs=1e-6))
    assert tags["AP_VOC12/mAP"][0] == 500


def test_mixed_precision_bfloat16_gives_the_same_metrics(data, tmp_path):
    """--mixed_precision=bfloat16 builds a mixed_bfloat16 net; the planted detections survive
    bfloat16 (logits 10..7 are exact, box offsets round by < 0.4%): same metrics as the reference."""
    root, fx, flags = data
    net = plant_ssd(BOXES, LABELS, LOGITS, num_classes=4)
    prefix = net.save_checkpoint(str(tmp_path / "train" / "model.ckpt-7"))
    eval_dir, dets_dir = tmp_path / "eval_bf16", tmp_path / "dets_bf16"
    result = _run(flags + [f"--checkpoint_path={prefix}", f"--eval_dir={eval_dir}",
                           f"--detections_dir={dets_dir}", "--batch_size=4",
                           "--mixed_precision=bfloat16"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixed_bfloat16" in result.stderr
    record = json.load(open(eval_dir / "metrics.json"))
    devkit = _devkit_expected(fx, str(dets_dir))
    assert record["AP_VOC07"] == devkit["AP_VOC07"] and record["AP_VOC12"] == devkit["AP_VOC12"]
    bad = _run(flags + [f"--checkpoint_path={prefix}", "--mixed_precision=float64"])
    assert bad.returncode != 0 and "mixed_precision" in bad.stderr


def test_bad_input_gives_one_line_and_exit_code(data, tmp_path):
    root, fx, flags = data
    result = _run(flags + [f"--checkpoint_path={tmp_path / 'missing.ckpt'}"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("eval_ssd_network.py: error: ")
    assert "missing.ckpt" in result.stderr and "Traceback" not in result.stderr
    result = _run(["--dataset_dir=x", "--checkpoint_path=x"])  # --dataset_name missing.
    assert result.returncode == 2 and "dataset_name" in result.stderr
    result = _run(flags + ["--batch_size=0"])
    assert result.returncode == 2 and "--batch_size=0" in result.stderr
    # eval_resize NONE with images that are not 300x300: one line naming the image.
    net = plant_ssd(BOXES, LABELS, LOGITS, num_classes=4)
    prefix = net.save_checkpoint(str(tmp_path / "model.ckpt-1"))
    result = _run(flags + [f"--checkpoint_path={prefix}", "--eval_resize=1",
                           f"--eval_dir={tmp_path / 'eval'}"])
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "eval_resize NONE" in last and "function_node" not in last
    assert any(image_id in last for image_id in fx.ids)
    # Flags that contradict the checkpoint's sidecar: a usage error.
    result = _run(flags + [f"--checkpoint_path={prefix}", "--anchor_preset=coco_ft",
                           f"--eval_dir={tmp_path / 'eval'}"])
    assert result.returncode == 2 and "anchor preset 'voc'" in result.stderr


def test_help_exits_zero_and_lists_every_net():
    from nets import nets_factory

    result = _run(["--help"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "--checkpoint_path" in text and "--dataset_dir" in text and "Traceback" not in text
    model_help = text[text.index("\n  --model_name:"):].split("\n  --", 2)[1]
    assert all(name in model_help for name in nets_factory.network_names())


def test_truncated_checkpoint_gives_one_line_naming_it(data, tmp_path):
    root, fx, flags = data
    net = plant_ssd(BOXES, LABELS, LOGITS, num_classes=4)
    prefix = net.save_checkpoint(str(tmp_path / "train" / "model.ckpt-3"))
    data_file = prefix + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    eval_dir = tmp_path / "eval"
    result = _run(flags + [f"--checkpoint_path={prefix}", f"--eval_dir={eval_dir}"])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("eval_ssd_network.py: error:")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert os.path.abspath(prefix) in errors[0]
    assert not os.path.exists(eval_dir / "metrics.json")  # Nothing half-written.


def _wait_for_lines(path, n, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and len(open(path).read().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"evaluator exited early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


def test_wait_for_checkpoints_evaluates_new_ones_then_times_out(data, tmp_path):
    from nets import checkpoints

    root, fx, flags = data
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    os.makedirs(train_dir)
    # A checkpoint still being written (data, no index yet): never evaluated.
    open(train_dir / "ckpt-7.data-00000-of-00001", "wb").write(b"partial")
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *flags, f"--checkpoint_path={train_dir}", f"--eval_dir={eval_dir}",
         "--wait_for_checkpoints", "--eval_interval_secs=0.5", "--eval_timeout=10",
         "--batch_size=4", "--max_num_batches=2", "--num_threads=2"],
        cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # 1: a TF1-named checkpoint (the original project's / exported format).
        first = plant_ssd(BOXES, LABELS, LOGITS, num_classes=4)
        first.save_checkpoint(str(train_dir / "model.ckpt-100"))
        _wait_for_lines(eval_dir / "metrics.jsonl", 1, proc)
        # 2: the trainer's format (object-based, CheckpointManager, sidecar, step variable),
        # other planted boxes, so the result must differ.
        second = plant_ssd(BOXES[:2], [2, 3], [9.0, 8.0], num_classes=4)
        ckpt = tf.train.Checkpoint(model=second, step=tf.Variable(2000, dtype=tf.int64))
        manager = tf.train.CheckpointManager(ckpt, str(train_dir), max_to_keep=3)
        checkpoints.write_metadata(str(train_dir / "ckpt-200"), "ssd_300_vgg", second.params)
        manager.save(checkpoint_number=200)
        _wait_for_lines(eval_dir / "metrics.jsonl", 2, proc)
        out, err = proc.communicate(timeout=120)  # Stops by itself after 10 s without news.
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    records = [json.loads(l) for l in open(eval_dir / "metrics.jsonl")]
    assert [os.path.basename(r["checkpoint"]) for r in records] == ["model.ckpt-100", "ckpt-200"]
    assert [r["global_step"] for r in records] == [100, 2000]
    assert all(r["num_images"] == 8 for r in records)  # --max_num_batches=2 x 4
    assert json.load(open(eval_dir / "metrics.json")) == records[-1]
    assert records[0]["mAP_VOC07"] != records[1]["mAP_VOC07"]
    assert "Evaluated 2 checkpoint(s)" in out


def test_restart_skips_checkpoints_already_in_metrics_jsonl(tmp_path):
    """evaluate_as_trained resumes from metrics.jsonl (a stand-in evaluator, no network)."""
    from tests.test_eval_checkpoint_watch import _write_tf2

    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    os.makedirs(train_dir)
    prefixes = [_write_tf2(str(train_dir / f"ckpt-{s}"), step=s) for s in (1, 2, 3)]

    class Stub:
        def __init__(self):
            self.eval_dir = str(eval_dir)
            self.seen = []

        def evaluate(self, prefix):
            self.seen.append(os.path.basename(prefix))
            record = {"checkpoint": prefix, "global_step": 0, "num_images": 0, "mAP_VOC07": None,
                      "mAP_VOC12": None, "AP_VOC07": {}, "AP_VOC12": {}}
            eo.write_metrics(self.eval_dir, record)
            return record

    first = Stub()
    ev.evaluate_as_trained(first, str(train_dir), interval_secs=0.01, timeout_secs=0,
                           max_evaluations=2)
    assert first.seen == ["ckpt-1", "ckpt-2"]
    again = Stub()
    stats = ev.evaluate_as_trained(again, str(train_dir), interval_secs=0.01, timeout_secs=0.05)
    assert again.seen == ["ckpt-3"] and stats.timed_out
    assert len(open(eval_dir / "metrics.jsonl").read().splitlines()) == 3
    assert os.path.abspath(prefixes[2]) in eo.read_evaluated_checkpoints(str(eval_dir))
