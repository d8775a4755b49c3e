"""detect.py on generated sample images: annotated PNGs and JSON boxes in original-image pixels.

The checkpoint is planted: an ssd_160_mobilenet_v2 whose weights are all zero except one class
bias, so its only confident detection is known by hand (see ``planted``).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from datasets import sample_data
from inference import drawing
from nets import nets_factory
from tests.scripts import run_script

NUM_CLASSES = 5
# The last feature layer (extra3, 1x1 map, step 160, offset 0.5) has its first anchor centred at
# 0.5 with side 142.4 / 160 = 0.89 ('voc' preset): (0.055, 0.055, 0.945, 0.945), normalized.
PLANTED_BOX = (0.055, 0.055, 0.945, 0.945)
PLANTED_CLASS = 2  # 'square' in the sample label map


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Zero weights make every feature map 0 (BatchNorm: gamma 0, beta 0), so each head outputs
    its biases: extra3_box's conv_cls bias gives anchor 0 a logit of 10 for class 2, i.e. a
    softmax score e^10 / (e^10 + 4) = 0.999818; all other anchors score 1/5 everywhere."""
    cls = nets_factory.get_network("ssd_160_mobilenet_v2")
    params = dataclasses.replace(cls.default_params, num_classes=NUM_CLASSES,
                                 no_annotation_label=NUM_CLASSES)
    net = cls(params)
    for v in net.weights:
        v.assign(tf.zeros_like(v))
    bias = np.zeros(4 * NUM_CLASSES, np.float32)
    bias[0 * NUM_CLASSES + PLANTED_CLASS] = 10.0  # anchor 0, anchor-major channels
    net.variables_by_checkpoint_name()["ssd_160_mobilenet_v2/extra3_box/conv_cls/biases"].assign(bias)
    prefix = net.save_checkpoint(str(tmp_path_factory.mktemp("planted") / "planted.ckpt"))
    return prefix


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Sample images of two sizes: 240x320 (the default) and 64x96."""
    root = tmp_path_factory.mktemp("images")
    sample_data.generate(str(root / "big"), num_trainval=0, num_test=3, seed=5)
    sample_data.generate(str(root / "small"), num_trainval=1, num_test=0, seed=5, image_size=(64, 96))
    return str(root / "big" / "JPEGImages"), str(root / "small" / "JPEGImages" / "trainval_000001.jpg")


def _expected_pixels(height, width):
    ymin, xmin, ymax, xmax = PLANTED_BOX
    return {"ymin": ymin * height, "xmin": xmin * width, "ymax": ymax * height, "xmax": xmax * width}


@pytest.mark.slow
def test_folder_and_file_give_json_and_png_in_original_pixels(planted, images, tmp_path):
    folder, small = images
    labels = os.path.join(os.path.dirname(folder), "labels.txt")
    out = str(tmp_path / "det")
    result = run_script("detect.py", f"--checkpoint_path={planted}", f"--labels_file={labels}",
                        f"--output_dir={out}", "--batch_size=2", folder, small)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wrote 4 detection file(s) and annotated PNG" in result.stdout
    assert "100%" in result.stderr and "4/4" in result.stderr  # the folder's progress bar
    names = sorted(os.listdir(out))
    assert names == ["detections.json", "test_000001.json", "test_000001.png", "test_000002.json",
                     "test_000002.png", "test_000003.json", "test_000003.png",
                     "trainval_000001.json", "trainval_000001.png"]
    for stem, (height, width) in [("test_000002", (240, 320)), ("trainval_000001", (64, 96))]:
        with open(os.path.join(out, stem + ".json")) as f:
            payload = json.load(f)
        assert (payload["height"], payload["width"]) == (height, width)
        assert payload["model_name"] == "ssd_160_mobilenet_v2"
        assert len(payload["detections"]) == 1
        det = payload["detections"][0]
        assert det["class_id"] == PLANTED_CLASS and det["class_name"] == "square"
        assert det["score"] == pytest.approx(np.exp(10) / (np.exp(10) + 4), abs=2e-6)
        # 240x320: (13.2, 17.6, 226.8, 302.4); 64x96: (3.52, 5.28, 60.48, 90.72).
        assert det["bbox"] == pytest.approx(_expected_pixels(height, width), abs=0.02)
        png = np.asarray(Image.open(os.path.join(out, stem + ".png")))
        assert png.shape == (height, width, 3)
        # The box outline, in the class colour, runs down the left edge of the box.
        color = np.array(drawing.class_colors(NUM_CLASSES)[PLANTED_CLASS])
        row = int(height * 0.7)
        xmin = int(round(det["bbox"]["xmin"]))
        assert any(np.array_equal(png[row, x], color) for x in range(xmin - 1, xmin + 2))
        original = np.asarray(Image.open(os.path.join(folder, stem + ".jpg"))) if stem.startswith("test") else None
        if original is not None:  # away from the drawing, the PNG is the original image
            # (up to JPEG decoders: TensorFlow's and PIL's differ by a few levels)
            np.testing.assert_allclose(png[row, 2], original[row, 2], atol=6)
    with open(os.path.join(out, "detections.json")) as f:
        index = json.load(f)
    assert [os.path.basename(i["image"]) for i in index["images"]] == [
        "test_000001.jpg", "test_000002.jpg", "test_000003.jpg", "trainval_000001.jpg"]


@pytest.mark.slow
def test_nodraw_and_bad_inputs(planted, images, tmp_path):
    folder, _ = images
    out = str(tmp_path / "nodraw")
    result = run_script("detect.py", f"--checkpoint_path={planted}", f"--output_dir={out}",
                        "--nodraw", os.path.join(folder, "test_000001.jpg"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["detections.json", "test_000001.json"]
    missing = run_script("detect.py", f"--checkpoint_path={planted}", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope: image file or folder not found" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_script("detect.py", f"--checkpoint_path={planted}", str(empty))
    assert result.returncode == 1 and "folder holds no image file" in result.stderr
    assert "Traceback" not in missing.stderr + result.stderr


def test_drawing_draws_each_class_in_its_colour():
    image = np.zeros((50, 80, 3), np.uint8)
    drawn = drawing.draw_bboxes(image, [[0.2, 0.25, 0.8, 0.75]], [3], [0.5], thickness=1,
                                class_names={3: "triangle"}, num_classes=5)
    color = np.array(drawing.class_colors(5)[3])
    # Left edge x = 0.25 * 80 = 20, rows 10..40; the label sits above the box.
    np.testing.assert_array_equal(drawn[30, 20], color)
    np.testing.assert_array_equal(drawn[30, 40], [0, 0, 0])
    colors = drawing.class_colors(21)
    assert len(set(colors)) == 21
    assert drawing.box_label(3, 0.876, {3: "triangle"}) == "triangle 0.88"
    assert drawing.box_label(7, None, ["bg", "a"]) == "7"
