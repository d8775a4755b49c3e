"""Detection entry point: net.detected_bboxes delegation, JSON in pixels, detect.py run as a
real subprocess on real image files and a real checkpoint (a planted SSD300-VGG)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from nets import detection, nets_factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# VOC first anchor of SSD300's block11 (1x1 map, step 300, min size 264): centre 0.5, side
# 264/300 = 0.88 -> (0.06, 0.06, 0.94, 0.94); flat index 8728 (GOLDEN_OFFSETS in test_nets).
BLOCK11_FIRST = 8728
BLOCK11_BOX = (0.06, 0.06, 0.94, 0.94)


def run_script(*args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An SSD300 whose only confident output is class 3 ('bird') on anchor 8728.

    All weights are zero, so every feature map is zero and each head outputs its biases:
    block11's conv_cls bias gives anchor 0 a logit of 10 for class 3 (softmax
    e^10 / (e^10 + 20) = 0.999092), everything else scores 1/21; conv_loc biases are zero,
    so the box is the anchor itself.
    """
    net = nets_factory.get_network("ssd_300_vgg")()
    for v in net.weights:
        v.assign(tf.zeros_like(v))
    bias = np.zeros(4 * 21, np.float32)
    bias[0 * 21 + 3] = 10.0  # anchor 0, class 3 (anchor-major channel layout)
    net.variables_by_checkpoint_name()["ssd_300_vgg/block11_box/conv_cls/biases"].assign(bias)
    prefix = net.save_checkpoint(str(tmp_path_factory.mktemp("planted") / "planted.ckpt"))
    return net, prefix


def test_detections_to_list_pixels_and_clipping():
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [-0.1, 0.5, 1.2, 0.7], [0, 0, 0, 0]], np.float32)
    out = detection.detections_to_list(boxes, np.array([0.9, 0.8, 0.0]), np.array([3, 15, 0]),
                                       count=2, height=200, width=400,
                                       class_names={3: "bird", 15: "person"})
    assert out == [
        {"class_id": 3, "class_name": "bird", "score": 0.9,
         "bbox": {"ymin": 20.0, "xmin": 80.0, "ymax": 100.0, "xmax": 240.0}},
        {"class_id": 15, "class_name": "person", "score": 0.8,
         "bbox": {"ymin": 0.0, "xmin": 200.0, "ymax": 200.0, "xmax": 280.0}},
    ]


def test_detected_bboxes_delegates_in_anchor_order(planted):
    net, _ = planted
    anchors = net.anchors()
    np.testing.assert_allclose(anchors[BLOCK11_FIRST], BLOCK11_BOX, atol=1e-6)
    out = net(tf.zeros([2, 300, 300, 3]), training=False)
    det = net.detected_bboxes(out, select_threshold=0.5, keep_top_k=10)
    assert det["boxes"].shape == (2, 10, 4) and det["scores"].shape == (2, 10)
    np.testing.assert_array_equal(det["num_detections"], [1, 1])
    np.testing.assert_array_equal(det["classes"][:, 0], [3, 3])
    np.testing.assert_allclose(det["scores"][:, 0], np.exp(10) / (np.exp(10) + 20), rtol=1e-5)
    np.testing.assert_allclose(det["boxes"][0, 0], BLOCK11_BOX, atol=1e-5)
    # The flat view gives the same detections.
    flat = net.flat_outputs(out)
    det2 = net.detected_bboxes(flat, select_threshold=0.5, keep_top_k=10)
    np.testing.assert_array_equal(det2["boxes"], det["boxes"])


def _write_images(directory):
    rng = np.random.default_rng(0)
    jpg = os.path.join(directory, "street.jpg")
    png = os.path.join(directory, "room.png")
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(jpg, quality=90)
    Image.fromarray(rng.integers(0, 256, (100, 50, 3), dtype=np.uint8)).save(png)
    return jpg, png


def test_detect_script_writes_pixel_json(planted, tmp_path):
    _, prefix = planted
    jpg, png = _write_images(str(tmp_path))
    out_dir = str(tmp_path / "det")
    result = run_script("detect.py", f"--checkpoint_path={os.path.dirname(prefix)}",
                        f"--output_dir={out_dir}", "--select_threshold=0.5", jpg, png)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"room.json", "street.json"} <= set(os.listdir(out_dir))
    with open(os.path.join(out_dir, "street.json")) as f:
        street = json.load(f)
    assert (street["height"], street["width"]) == (240, 320)
    assert street["model_name"] == "ssd_300_vgg" and street["anchor_preset"] == "voc"
    # 0.06 * 240 = 14.4, 0.06 * 320 = 19.2, 0.94 * 240 = 225.6, 0.94 * 320 = 300.8
    assert len(street["detections"]) == 1
    d = street["detections"][0]
    assert d["class_id"] == 3 and d["class_name"] == "bird"
    assert d["score"] == pytest.approx(0.999092, abs=2e-6)
    assert d["bbox"] == pytest.approx({"ymin": 14.4, "xmin": 19.2, "ymax": 225.6, "xmax": 300.8},
                                      abs=0.02)
    with open(os.path.join(out_dir, "room.json")) as f:
        room = json.load(f)
    # 100 x 50 image: (6, 3, 94, 47)
    assert room["detections"][0]["bbox"] == pytest.approx(
        {"ymin": 6.0, "xmin": 3.0, "ymax": 94.0, "xmax": 47.0}, abs=0.02)


def test_detect_script_errors(planted, tmp_path):
    _, prefix = planted
    jpg, _ = _write_images(str(tmp_path))
    usage = run_script("detect.py", f"--checkpoint_path={prefix}")
    assert usage.returncode == 2 and "no image files given" in usage.stderr
    usage = run_script("detect.py", jpg)
    assert usage.returncode == 2 and "--checkpoint_path is required" in usage.stderr
    usage = run_script("detect.py", "--random_weights", "--model_name=ssd_301_vgg", jpg)
    assert usage.returncode == 2 and "ssd_512_vgg" in usage.stderr
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    data = run_script("detect.py", f"--checkpoint_path={prefix}", f"--output_dir={tmp_path}",
                      str(bad))
    assert data.returncode == 1 and "broken.jpg: not a readable image" in data.stderr
    assert "Traceback" not in data.stderr
    # TF's wrapping (function_node prefix, [Op:...] suffix) is dropped: a readable line.
    assert "Unknown image file format" in data.stderr
    assert "[Op:" not in data.stderr and "function_node" not in data.stderr
    mismatch = run_script("detect.py", f"--checkpoint_path={prefix}", "--num_classes=81",
                          f"--output_dir={tmp_path}", jpg)
    assert mismatch.returncode == 1 and "are for 21 classes, this net has 81" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr


def test_build_net_from_checkpoint(planted):
    _, prefix = planted
    net = detection.build_net(checkpoint_path=prefix, anchor_preset="coco_ft")
    assert net.model_name == "ssd_300_vgg"
    assert net.params.anchor_preset == "coco_ft" and net.params.num_classes == 21
    assert net.params.anchor_sizes[0] == (21.0, 45.0)
    bias = net.variables_by_checkpoint_name()["ssd_300_vgg/block11_box/conv_cls/biases"].numpy()
    assert bias[3] == 10.0 and np.count_nonzero(bias) == 1
