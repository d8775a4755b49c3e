"""The sample shapes dataset: determinism, VOC format, flags, and that boxes fit the shapes."""
from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from datasets import sample_data
from tests.scripts import run_script


def _digest(folder: str) -> dict[str, str]:
    result = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return result


def _objects(root: str, image_id: str) -> list[dict]:
    tree = ET.parse(os.path.join(root, "Annotations", image_id + ".xml")).getroot()
    objects = []
    for obj in tree.findall("object"):
        box = obj.find("bndbox")
        objects.append({
            "name": obj.find("name").text,
            "truncated": int(obj.find("truncated").text),
            "difficult": int(obj.find("difficult").text),
            "box": [int(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")],
        })
    return objects


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample"))
    stats = sample_data.generate(root, num_trainval=40, num_test=12, seed=3)
    return root, stats


def test_layout_and_splits(dataset):
    root, stats = dataset
    assert stats["trainval"] == 40 and stats["test"] == 12
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt")) as f:
        trainval = f.read().split()
    with open(os.path.join(root, "ImageSets", "Main", "test.txt")) as f:
        test = f.read().split()
    assert trainval[0] == "trainval_000001" and len(trainval) == 40 and len(test) == 12
    assert not set(trainval) & set(test)
    for image_id in trainval + test:
        assert os.path.exists(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        assert os.path.exists(os.path.join(root, "Annotations", image_id + ".xml"))
    with open(os.path.join(root, "labels.txt")) as f:
        assert f.read().split() == ["circle", "square", "triangle", "star"]


def test_real_jpegs_and_valid_boxes(dataset):
    root, _ = dataset
    height, width = sample_data.DEFAULT_IMAGE_SIZE
    names, flags = set(), {"truncated": 0, "difficult": 0}
    for image_id in sample_data.image_ids("trainval", 40):
        image = Image.open(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (width, height)
        objects = _objects(root, image_id)
        assert 1 <= len(objects) <= 5
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            # VOC: 1-based inclusive pixel indices inside the image.
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height
            names.add(obj["name"])
            flags["truncated"] += obj["truncated"]
            flags["difficult"] += obj["difficult"]
            if obj["truncated"]:
                assert xmin == 1 or ymin == 1 or xmax == width or ymax == height
            if obj["difficult"]:
                assert max(xmax - xmin, ymax - ymin) < 0.1 * min(height, width)
    assert names == set(sample_data.CLASSES)
    assert flags["truncated"] > 0 and flags["difficult"] > 0


def test_boxes_enclose_the_drawn_shape():
    """Saturated pixels (shape fills; backgrounds and clutter are muted) lie inside the box of a
    lone object, and the shape reaches every side of its box."""
    checked = 0
    for i in range(40):
        image, objects = sample_data.draw_sample(np.random.default_rng([11, 0, i]))
        if len(objects) != 1 or objects[0].difficult:
            continue
        ymin, xmin, ymax, xmax = objects[0].box
        pixels = image.astype(np.float32)
        top, bottom = pixels.max(axis=-1), pixels.min(axis=-1)
        saturated = ((top - bottom) / np.maximum(top, 1) > 0.5) & (top > 110)
        ys, xs = np.nonzero(saturated)
        if len(ys) < 30:
            continue  # a pale fill; nothing to measure
        inside = (ys >= ymin - 1) & (ys <= ymax + 1) & (xs >= xmin - 1) & (xs <= xmax + 1)
        assert inside.mean() > 0.98, (i, objects[0])
        # The outline is dark, so the fill stops a few pixels short of the box.
        margin = 3 + max(ymax - ymin, xmax - xmin) / 25
        assert ys.min() <= ymin + margin and ys.max() >= ymax - margin - 1, (i, objects[0])
        assert xs.min() <= xmin + margin and xs.max() >= xmax - margin - 1, (i, objects[0])
        checked += 1
    assert checked >= 3


def test_deterministic_and_prefix_stable(tmp_path, dataset):
    root, _ = dataset
    again = str(tmp_path / "again")
    sample_data.generate(again, num_trainval=40, num_test=12, seed=3)
    assert _digest(root) == _digest(again)
    other = str(tmp_path / "other_seed")
    sample_data.generate(other, num_trainval=2, num_test=0, seed=4)
    assert _digest(other)["JPEGImages/trainval_000001.jpg"] != _digest(root)["JPEGImages/trainval_000001.jpg"]
    # More images keep the first ones as they were.
    more = str(tmp_path / "more")
    sample_data.generate(more, num_trainval=41, num_test=12, seed=3)
    first = _digest(more)
    assert all(first[k] == v for k, v in _digest(root).items() if "ImageSets" not in k)


@pytest.mark.slow
def test_module_command_line(tmp_path):
    out = tmp_path / "cli"
    proc = run_script("-m datasets.sample_data", "--output_dir", str(out), "--num_trainval", "3",
                      "--num_test", "2", "--image_height", "64", "--image_width", "96")
    assert proc.returncode == 0, proc.stderr
    assert "3 trainval + 2 test images" in proc.stdout
    assert Image.open(out / "JPEGImages" / "test_000002.jpg").size == (96, 64)
    bad = run_script("-m datasets.sample_data", "--output_dir", str(out), "--image_height", "8")
    assert bad.returncode == 2 and "too small" in bad.stderr and "Traceback" not in bad.stderr
