"""notebooks/ssd_notebook.ipynb executed headless (nbclient), top to bottom.

With a planted ssd_160_vgg_lite checkpoint (the demo's net; all weights zero but one class bias), the
notebook's detection table must show the one detection known by hand; with the published
ssd_300_vgg checkpoint absent it must say where to get it and still run to the end.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from datasets import sample_data  # noqa: E402
from nets import nets_factory  # noqa: E402

pytestmark = pytest.mark.slow  # executes the notebook in a kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "ssd_notebook.ipynb")
NUM_CLASSES = 5


def _planted_checkpoint(path: str) -> str:
    """Zero weights (BatchNorm gammas included): every head outputs its biases. block10_box (1x1
    map, step 160, 'voc' min size 142.4 of 160) anchor 0 gets logit 10 for class 2 ('square'):
    score e^10 / (e^10 + 4) = 0.999818 at the anchor box (0.055, 0.055, 0.945, 0.945)."""
    cls = nets_factory.get_network("ssd_160_vgg_lite")
    net = cls(dataclasses.replace(cls.default_params, num_classes=NUM_CLASSES,
                                  no_annotation_label=NUM_CLASSES))
    for v in net.weights:
        v.assign(tf.zeros_like(v))
    bias = np.zeros(4 * NUM_CLASSES, np.float32)
    bias[2] = 10.0
    net.variables_by_checkpoint_name()["ssd_160_vgg_lite/block10_box/conv_cls/biases"].assign(bias)
    return net.save_checkpoint(path)


def _execute(env: dict, monkeypatch) -> list[str]:
    """Run the notebook in a fresh kernel (which inherits ``env``); returns its text outputs."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream":
                texts.append(output.text)
            elif "image/png" in output.get("data", {}):
                images += 1
    # The anchors of one layer and the detections are drawn.
    assert images == 2
    return texts


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nb_sample"))
    sample_data.generate(root, num_trainval=0, num_test=1, seed=2)
    checkpoint = _planted_checkpoint(os.path.join(root, "planted", "planted.ckpt"))
    return root, checkpoint


def test_notebook_runs_with_a_checkpoint(sample, monkeypatch):
    root, checkpoint = sample
    texts = "".join(_execute({
        "SSD_CHECKPOINT": os.path.dirname(checkpoint),
        "SSD_IMAGE": os.path.join(root, "JPEGImages", "test_000001.jpg"),
        "SSD_LABELS": os.path.join(root, "labels.txt"),
    }, monkeypatch))
    assert "Loaded ssd_160_vgg_lite" in texts
    assert "circle, square, triangle, star" in texts
    assert "2390 anchors in 5 feature layers" in texts  # 20x20x4 + 10x10x6 + 5x5x6 + 3x3x4 + 4
    assert "1 detections with score >= 0.5" in texts
    # 240x320 image: 0.055 * 240 = 13.2, 0.055 * 320 = 17.6, 0.945 * 240 = 226.8, 0.945 * 320 = 302.4
    assert "square       1.000  (ymin, xmin, ymax, xmax) = (13.2, 17.6, 226.8, 302.4) px" in texts


def test_notebook_says_where_to_get_the_published_checkpoint(sample, tmp_path, monkeypatch):
    root, _ = sample
    texts = "".join(_execute({
        "SSD_CHECKPOINT": str(tmp_path / "ssd_300_vgg.ckpt"),
        "SSD_IMAGE": os.path.join(root, "JPEGImages", "test_000001.jpg"),
    }, monkeypatch))
    assert "is not there" in texts and "checkpoints/README.md" in texts
    assert "randomly initialised ssd_300_vgg" in texts
    assert "8732 anchors in 6 feature layers" in texts  # the coco_ft SSD300 it would load
