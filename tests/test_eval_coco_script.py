"""eval_ssd_network.py --metric=coco end to end (subprocesses): COCO JSON -> TFRecords (the
COCO converter) -> a planted SSD300 checkpoint -> metrics.json's coco block, which must equal
pycocotools run directly on the detection JSON the run wrote, with the original annotation
file (--coco_annotations_file) or with the rebuilt ground truth the run wrote."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from engine import eval_outputs as eo
from tests.scripts import read_summaries, run_script, scalar
from tests.test_eval_reference import plant_ssd
from tests.test_metrics_coco import _same, make_coco, pycocotools_eval
from tf_extended import metrics

pytestmark = pytest.mark.slow

BOXES = [[0.2, 0.2, 0.7, 0.6]]
LOGITS = [10.0, 9.0, 8.0, 8.0]  # a tie between the last two


@pytest.fixture(scope="module")
def coco_records(tmp_path_factory):
    from datasets import coco_to_tfrecords

    root = tmp_path_factory.mktemp("cocoeval")
    coco, _ = make_coco(seed=4, num_images=9)
    rng = np.random.default_rng(1)
    os.makedirs(root / "images")
    for img in coco["images"]:
        pixels = rng.integers(0, 255, [img["height"], img["width"], 3], dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / img["file_name"], quality=90)
    gt_path = str(root / "instances_val.json")
    json.dump(coco, open(gt_path, "w"))
    coco_to_tfrecords.convert_coco(gt_path, str(root / "images"), str(root / "records"), "val",
                                   num_workers=1)
    # Plant the boxes of the first image with objects (found there, missed elsewhere) and a
    # box over the middle; two tied scores.
    first = next(i for i in coco["images"] if sum(a["image_id"] == i["id"] and not a["iscrowd"]
                                                  for a in coco["annotations"]) >= 2)
    anns = [a for a in coco["annotations"] if a["image_id"] == first["id"] and not a["iscrowd"]][:3]
    cat_to_label = {3: 1, 7: 2, 12: 3}
    boxes = [[a["bbox"][1] / first["height"], a["bbox"][0] / first["width"],
              (a["bbox"][1] + a["bbox"][3]) / first["height"],
              (a["bbox"][0] + a["bbox"][2]) / first["width"]] for a in anns] + [BOXES[0]]
    labels = [cat_to_label[a["category_id"]] for a in anns] + [1]
    net = plant_ssd(boxes, labels, LOGITS[:len(boxes)], num_classes=4)
    prefix = net.save_checkpoint(str(root / "train" / "model.ckpt-700"))
    flags = ["--dataset_name=coco", "--dataset_split_name=val", f"--dataset_dir={root / 'records'}",
             f"--checkpoint_path={prefix}", "--batch_size=4"]
    return root, coco, gt_path, flags


def test_coco_metric_equals_pycocotools_on_the_written_files(coco_records, tmp_path):
    root, coco, gt_path, flags = coco_records
    eval_dir, dets_dir = tmp_path / "eval", tmp_path / "dets"
    result = run_script("eval_ssd_network.py", *flags, f"--eval_dir={eval_dir}",
                        f"--detections_dir={dets_dir}", f"--coco_annotations_file={gt_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.load(open(eval_dir / "metrics.json"))
    assert tuple(record) == eo.RECORD_KEYS + ("coco",) and record["global_step"] == 700
    block = record["coco"]
    assert block["backend"] == "faster_coco_eval" and block["annotations_file"] == gt_path
    det_path = str(dets_dir / "detections_val_coco.json")
    rows = json.load(open(det_path))
    assert {r["image_id"] for r in rows} == {i["id"] for i in coco["images"]}  # COCO ids
    assert {r["category_id"] for r in rows} <= {3, 7, 12}  # COCO category ids
    stats, per_class = pycocotools_eval(gt_path, det_path)
    block_result = dict(block, AP_per_class={k: (np.nan if v is None else v)
                                             for k, v in block["AP_per_class"].items()})
    _same(block_result, stats, per_class)
    assert 0.0 < block["AP50"] < 1.0 and block["num_detections"] == len(rows) == 4 * len(coco["images"])
    # The table on stdout, TensorBoard, metrics.jsonl.
    assert f"maxDets=100 ] = {block['AP']:6.3f}   AP" in result.stdout
    assert [json.loads(line) for line in open(eval_dir / "metrics.jsonl")] == [record]
    tags = {tag: (step, scalar(value))
            for tag, (step, value) in read_summaries(str(eval_dir)).items()}
    assert tags["COCO/AP"] == (700, pytest.approx(block["AP"]))

    # Without the annotation file: the ground truth rebuilt from the TFRecords (written beside
    # the detections), here through pycocotools itself.
    eval2, dets2 = tmp_path / "eval2", tmp_path / "dets2"
    result = run_script("eval_ssd_network.py", *flags, f"--eval_dir={eval2}",
                        f"--detections_dir={dets2}", "--coco_backend=pycocotools")
    assert result.returncode == 0, result.stderr[-3000:]
    block2 = json.load(open(eval2 / "metrics.json"))["coco"]
    assert block2["annotations_file"] is None and block2["backend"] == "pycocotools"
    stats2, per_class2 = pycocotools_eval(str(dets2 / "groundtruth_val_coco.json"),
                                          str(dets2 / "detections_val_coco.json"))
    assert [block2[n] for n in metrics.COCO_STAT_NAMES] == stats2
    np.testing.assert_allclose(stats2, stats, atol=1e-9)  # float32 boxes: the same numbers here


def test_metric_flags(coco_records, tmp_path):
    root, coco, gt_path, flags = coco_records
    result = run_script("eval_ssd_network.py", *flags, "--metric=voc",
                        f"--coco_annotations_file={gt_path}")
    assert result.returncode == 2 and "--coco_annotations_file" in result.stderr
    result = run_script("eval_ssd_network.py", *flags, f"--eval_dir={tmp_path / 'e'}",
                        f"--coco_annotations_file={tmp_path / 'missing.json'}")
    assert result.returncode == 1 and "missing.json" in result.stderr.strip().splitlines()[-1]
    # --metric=voc on COCO data: the VOC table (normalized boxes: not the devkit's pixel grid).
    result = run_script("eval_ssd_network.py", *flags, f"--eval_dir={tmp_path / 'v'}", "--metric=voc")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.load(open(tmp_path / "v" / "metrics.json"))
    assert tuple(record) == eo.RECORD_KEYS and "AP_VOC07" in result.stdout
