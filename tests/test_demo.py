"""demo.py --quick as a real subprocess: every stage's outputs, and an mAP well above chance.

A random detector scores a VOC07 mAP of about 0.003 on the sample test split (measured with
an untrained net); the quick run (150 steps of ssd_160_vgg_lite, measured 0.43) must clearly
beat that.
"""
from __future__ import annotations

import glob
import json
import os
import re

import pytest

import demo
from tests.scripts import run_script

pytestmark = pytest.mark.slow  # runs demo.py (data, training, evaluation, detection)

CHANCE_MAP = 0.003
QUICK_MIN_MAP = 0.2  # > 60x chance; measured 0.43


@pytest.fixture(scope="module")
def quick_run(quick_demo):
    # The session's one quick demo run (tests/conftest.py), shared with tests/test_export.py.
    return quick_demo


def test_quick_demo_stage_outputs(quick_run):
    proc, out, data = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    quick = demo.QUICK
    # 1. sample data
    assert len(glob.glob(os.path.join(data, "JPEGImages", "*.jpg"))) == quick["num_trainval"] + quick["num_test"]
    with open(os.path.join(data, "labels.txt")) as f:
        assert f.read().split() == ["circle", "square", "triangle", "star"]
    # 2. TFRecords, one set of shards per split
    assert os.path.exists(os.path.join(out, "tfrecords", "trainval_000.tfrecord"))
    assert os.path.exists(os.path.join(out, "tfrecords", "test_000.tfrecord"))
    # 3. training checkpoints (object-based + TF-Slim export, both with the sidecar)
    train = os.path.join(out, "train")
    steps = quick["steps"]
    assert os.path.exists(os.path.join(train, f"ckpt-{steps}.index"))
    with open(os.path.join(train, f"ckpt-{steps}.ssd.json")) as f:
        sidecar = json.load(f)
    assert sidecar["model_name"] == demo.MODEL_NAME == "ssd_160_vgg_lite" and sidecar["num_classes"] == 5
    assert os.path.exists(os.path.join(train, "export", f"model.ckpt-{steps}.index"))
    # 4. evaluation
    with open(os.path.join(out, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_images"] == quick["num_test"] and metrics["global_step"] == steps
    assert set(metrics["AP_VOC07"]) == {"circle", "square", "triangle", "star"}
    # 5. detections: PNG + JSON per image, boxes in original-image pixels
    detections = os.path.join(out, "detections")
    pngs = sorted(os.listdir(detections))
    assert [p for p in pngs if p.endswith(".png")] == [f"test_{i:06d}.png" for i in range(1, quick["num_detect"] + 1)]
    with open(os.path.join(detections, "test_000001.json")) as f:
        first = json.load(f)
    assert (first["height"], first["width"]) == (240, 320)
    for d in first["detections"]:
        box = d["bbox"]
        assert 0 <= box["ymin"] <= box["ymax"] <= 240 and 0 <= box["xmin"] <= box["xmax"] <= 320
    for stage in ("sample_data", "convert_trainval", "convert_test", "train", "eval", "detect"):
        assert os.path.getsize(os.path.join(out, "logs", f"{stage}.log")) > 0
    # The summary names every place and the mAP it read from metrics.json.
    printed = re.search(r"Test mAP \(VOC07\): ([0-9.]+)", proc.stdout)
    assert printed and float(printed.group(1)) == pytest.approx(metrics["mAP_VOC07"], abs=5e-4)
    for where in ("metrics.json", "detections", "checkpoints", "logs"):
        assert where in proc.stdout


def test_quick_demo_learns(quick_run):
    proc, out, _ = quick_run
    assert proc.returncode == 0
    with open(os.path.join(out, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["mAP_VOC07"] > QUICK_MIN_MAP > 10 * CHANCE_MAP


def test_sample_data_cache_and_bad_arguments(tmp_path):
    spec = {"num_trainval": 2, "num_test": 1, "seed": 0}
    assert not demo.data_is_current(str(tmp_path), spec)
    (tmp_path / "demo_spec.json").write_text(json.dumps(spec))
    assert demo.data_is_current(str(tmp_path), spec)
    assert not demo.data_is_current(str(tmp_path), dict(spec, num_test=2))
    bad = run_script("demo.py", "--steps=0", cwd=str(tmp_path))
    assert bad.returncode == 2 and "--steps must be >= 1" in bad.stderr
