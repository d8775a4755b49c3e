"""Detection entry point: net.detected_bboxes delegation, the detector's eval preprocessing, JSON
in pixels, detect.py run as a real subprocess on real image files and a real checkpoint (a
planted SSD300-VGG)."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from datasets import tfrecords
from fileio.checkpoint_files import resolve_checkpoint
from inference import image_files
from inference.detector import ImageDetector, detections_to_list
from nets import checkpoints, configure, nets_factory
from preprocessing import pipeline, preprocessing_factory
from tests.scripts import run_script

# VOC first anchor of SSD300's block11 (1x1 map, step 300, min size 264): centre 0.5, side
# 264/300 = 0.88 -> (0.06, 0.06, 0.94, 0.94); flat index 8728 (GOLDEN_OFFSETS in test_nets).
BLOCK11_FIRST = 8728
BLOCK11_BOX = (0.06, 0.06, 0.94, 0.94)


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
    out = detections_to_list(boxes, np.array([0.9, 0.8, 0.0]), np.array([3, 15, 0]),
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # A checkpoint without a sidecar (like the published ones): the flag builds an 81-class
    # net, and loading names the class heads that do not fit.
    bare = _without_sidecar(prefix, tmp_path / "bare")
    mismatch = run_script("detect.py", f"--checkpoint_path={bare}", "--num_classes=81",
                          f"--output_dir={tmp_path}", jpg)
    assert mismatch.returncode == 1 and "are for 21 classes, this net has 81" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr
    # With the sidecar, the flag contradicts the checkpoint: a usage error naming both.
    mismatch = run_script("detect.py", f"--checkpoint_path={prefix}", "--num_classes=81",
                          f"--output_dir={tmp_path}", jpg)
    assert mismatch.returncode == 2, mismatch.stderr
    assert "checkpoint has 21 classes, but --num_classes=81" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr


def _without_sidecar(prefix, folder):
    """A copy of checkpoint ``prefix`` without its .ssd.json sidecar; returns the new prefix."""
    os.makedirs(folder, exist_ok=True)
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(prefix + suffix, os.path.join(folder, os.path.basename(prefix) + suffix))
    return os.path.join(str(folder), os.path.basename(prefix))


def test_build_net_from_checkpoint(planted, tmp_path):
    _, prefix = planted
    # The published ssd_300_vgg.ckpt has no sidecar: --anchor_preset chooses its anchors.
    bare = _without_sidecar(prefix, tmp_path)
    net = configure.build_net(checkpoint=bare, anchor_preset="coco_ft")
    assert net.model_name == "ssd_300_vgg"
    assert net.params.anchor_preset == "coco_ft" and net.params.num_classes == 21
    assert net.params.anchor_sizes[0] == (21.0, 45.0)
    bias = net.variables_by_checkpoint_name()["ssd_300_vgg/block11_box/conv_cls/biases"].numpy()
    assert bias[3] == 10.0 and np.count_nonzero(bias) == 1


def test_detector_input_is_the_eval_pipelines(planted, tmp_path):
    """The detector runs the eval preprocessing itself: for a real JPEG, the tensor it feeds the
    net is, bit for bit, the one evaluation feeds it (TFRecord -> decode -> eval_dataset)."""
    net, _ = planted
    jpg, _ = _write_images(str(tmp_path))
    with open(jpg, "rb") as f:
        encoded = f.read()
    record = str(tmp_path / "one.tfrecord")
    with tf.io.TFRecordWriter(record) as writer:
        writer.write(tfrecords.make_example(encoded, "JPEG", 240, 320, [[0.1, 0.2, 0.5, 0.6]], [3],
                                            ["bird"], [0], [0], filename="street"))
    eval_fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", is_training=False)
    ds = pipeline.eval_dataset(tfrecords.read_tfrecords([record]), eval_fn, batch_size=1,
                               out_shape=net.params.img_shape)
    images, info = next(iter(ds))
    detector = ImageDetector(net, frozen=False)
    net_input, bbox_img = detector.preprocess(image_files.load_image(jpg))
    assert net_input.shape == (300, 300, 3) and net_input.dtype == tf.float32
    np.testing.assert_array_equal(net_input.numpy(), images[0].numpy())
    np.testing.assert_array_equal(bbox_img.numpy(), info["bbox_img"][0].numpy())
    # Not a trivial equality: the input is the resized image minus the RGB means.
    assert float(tf.reduce_min(net_input)) < -100 and float(tf.reduce_max(net_input)) > 100


def test_detector_maps_boxes_back_through_bbox_img(planted):
    """With a padding resize mode the net input is not the image: boxes come back in the
    original image's frame. PAD_AND_RESIZE of a 150x300 image into 300x300 keeps it at
    150x300 (never enlarged) centred, rows 75..225: bbox_img (0.25, 0, 0.75, 1)."""
    net, _ = planted
    detector = ImageDetector(net, frozen=False, resize=3)  # Resize.PAD_AND_RESIZE
    image = np.full((150, 300, 3), 128, np.uint8)
    _, bbox_img = detector.preprocess(image)
    np.testing.assert_allclose(bbox_img.numpy(), [0.25, 0.0, 0.75, 1.0], atol=1e-6)
    det = detector.detect([image])
    assert det["num_detections"][0] == 1 and det["classes"][0, 0] == 3
    # The anchor (0.06, 0.06, 0.94, 0.94) of the net input, in the image: y (0.06 - 0.25) / 0.5
    # = -0.38 and (0.94 - 0.25) / 0.5 = 1.38, clipped to (0, 1); x unchanged.
    np.testing.assert_allclose(det["boxes"][0, 0], [0.0, 0.06, 1.0, 0.94], atol=1e-5)


@pytest.mark.slow
def test_detect_script_help_exits_0():
    result = run_script("detect.py", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--checkpoint_path", "--model_name", "--num_classes", "--anchor_preset",
                 "--select_threshold", "--nms_threshold", "--select_top_k", "--keep_top_k",
                 "--batch_size", "--labels_file", "--output_dir", "--[no]draw",
                 "--[no]random_weights"):
        assert flag in result.stdout + result.stderr, flag


@pytest.mark.slow
def test_detect_script_names_each_unreadable_image_and_does_the_others(planted, tmp_path):
    _, prefix = planted
    folder = tmp_path / "images"
    folder.mkdir()
    _write_images(str(folder))
    rng = np.random.default_rng(1)
    good = folder / "cat.jpg"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(good, quality=90)
    # A corrupt JPEG: the first 200 bytes of a real one (the header, no image data).
    (folder / "corrupt.jpg").write_bytes(good.read_bytes()[:200])
    (folder / "empty.png").write_bytes(b"")
    out_dir = tmp_path / "det"
    result = run_script("detect.py", f"--checkpoint_path={prefix}", f"--output_dir={out_dir}",
                        "--batch_size=2", str(folder))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("detect.py: error:")]
    assert len(errors) == 2, result.stderr
    assert "corrupt.jpg: not a readable image" in errors[0]
    assert "empty.png: not a readable image" in errors[1]
    assert "Wrote 3 detection file(s)" in result.stdout
    assert sorted(os.listdir(out_dir)) == ["cat.json", "cat.png", "detections.json", "room.json",
                                           "room.png", "street.json", "street.png"]
    with open(out_dir / "detections.json") as f:
        index = json.load(f)
    assert [os.path.basename(i["image"]) for i in index["images"]] == ["cat.jpg", "room.png",
                                                                      "street.jpg"]
    with open(out_dir / "cat.json") as f:
        cat = json.load(f)
    # 60 x 80 image: the planted anchor (0.06, 0.06, 0.94, 0.94) -> (3.6, 4.8, 56.4, 75.2)
    assert cat["detections"][0]["bbox"] == pytest.approx(
        {"ymin": 3.6, "xmin": 4.8, "ymax": 56.4, "xmax": 75.2}, abs=0.02)


@pytest.mark.slow
def test_detect_script_names_a_truncated_checkpoint(planted, tmp_path):
    _, prefix = planted
    jpg, _ = _write_images(str(tmp_path))
    broken = _without_sidecar(prefix, tmp_path / "broken")
    checkpoints.write_metadata(broken, "ssd_300_vgg", planted[0].params)
    data_file = broken + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    result = run_script("detect.py", f"--checkpoint_path={broken}",
                        f"--output_dir={tmp_path / 'det'}", jpg)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("detect.py: error:")]
    assert len(errors) == 1 and resolve_checkpoint(broken) in errors[0], result.stderr
    assert not os.path.exists(tmp_path / "det" / "street.json")
