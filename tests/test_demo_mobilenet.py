"""SSDLite-MobileNetV2 (nets/ssd_mobilenet.py): registry, shapes, names, input scaling, checkpoints."""
from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import checkpoints, nets_factory, ssd_mobilenet, ssd_params
from tests import net_checks

NUM_CLASSES = 5  # background + the 4 sample shapes


@pytest.fixture(scope="module")
def net():
    cls = nets_factory.get_network("ssd_160_mobilenet_v2")
    params = dataclasses.replace(cls.default_params, num_classes=NUM_CLASSES,
                                 no_annotation_label=NUM_CLASSES)
    keras.utils.set_random_seed(1)
    return cls(params)


def test_registered_with_the_vgg_nets():
    names = nets_factory.network_names()
    assert {"ssd_300_mobilenet_v2", "ssd_160_mobilenet_v2", "ssd_300_vgg"} <= set(names)
    assert nets_factory.get_network("ssd_300_mobilenet_v2").model_name == "ssd_300_mobilenet_v2"


def test_ssd_rule_reproduces_the_ssd300_presets():
    # Caffe ssd_pascal.py's rule, checked against the SSD300 preset table (DESIGN.md §7).
    assert ssd_params.ssd_rule_sizes(300, 6, 10, 20, 90) == ssd_params.ANCHOR_PRESETS[(300, 300)]["voc"]
    assert ssd_params.ssd_rule_sizes(300, 6, 7, 15, 90) == ssd_params.ANCHOR_PRESETS[(300, 300)]["coco_ft"]
    # 160, 5 layers: 10% first, then 20 + 23k percent (step floor(70 / 3) = 23).
    assert ssd_params.ANCHOR_PRESETS[(160, 160)]["voc"] == (
        (16.0, 32.0), (32.0, 68.8), (68.8, 105.6), (105.6, 142.4), (142.4, 179.2))
    assert ssd_params.ANCHOR_PRESETS[(160, 160)]["voc_caffe"][1] == (32.0, 68.0)
    params = nets_factory.get_network("ssd_160_mobilenet_v2").default_params.with_anchor_preset("coco_ft")
    assert params.anchor_sizes[0] == (11.2, 24.0)


@pytest.mark.parametrize("name, shapes, num_anchors", [
    ("ssd_300_mobilenet_v2", [19, 10, 5, 3, 2, 1], 19 * 19 * 4 + 100 * 6 + 25 * 6 + 9 * 6 + 4 * 4 + 4),
    ("ssd_160_mobilenet_v2", [10, 5, 3, 2, 1], 100 * 4 + 25 * 6 + 9 * 6 + 4 * 4 + 4),
])
def test_output_shapes_and_anchor_order(name, shapes, num_anchors):
    cls = nets_factory.get_network(name)
    params = dataclasses.replace(cls.default_params, num_classes=NUM_CLASSES, no_annotation_label=NUM_CLASSES)
    model = cls(params)
    images = tf.zeros([2, *params.img_shape, 3])
    out = model(images, training=False)
    assert [t.shape[1] for t in out["logits"]] == shapes
    assert [t.shape[-1] for t in out["logits"]] == [NUM_CLASSES] * len(shapes)
    assert [tuple(t.shape[3:]) for t in out["localisations"]] == [(a, 4) for a in params.num_anchors_per_location]
    flat = model.flat_outputs(out)
    assert flat["logits"].shape == (2, num_anchors, NUM_CLASSES)
    assert model.anchors().shape == (num_anchors, 4) == (params.num_anchors, 4)
    np.testing.assert_allclose(tf.reduce_sum(flat["predictions"], -1), 1.0, rtol=1e-5)
    # First anchor: the 'min' square of the top-left cell of the first layer (Caffe order).
    step = params.anchor_steps[0]
    size = params.anchor_sizes[0][0]
    centre = 0.5 * step / params.img_shape[0]
    side = size / params.img_shape[0]
    np.testing.assert_allclose(model.anchors()[0], [centre - side / 2, centre - side / 2,
                                                    centre + side / 2, centre + side / 2], atol=1e-6)


def test_checkpoint_names_follow_tf_slim_mobilenet_v2(net):
    names = net.variables_by_checkpoint_name()
    assert len(names) == len(net.weights)
    scope = "ssd_160_mobilenet_v2"
    for expected in [
        "Conv/weights", "Conv/BatchNorm/gamma", "Conv/BatchNorm/moving_variance",
        "expanded_conv/depthwise/depthwise_weights", "expanded_conv/project/weights",
        "expanded_conv_1/expand/weights", "expanded_conv_16/project/BatchNorm/beta",
        "Conv_1/weights", "extra1/conv1x1/weights", "extra1/depthwise/depthwise_weights",
        "extra3/project/BatchNorm/moving_mean",
        "expanded_conv_13_expansion_box/conv_loc/depthwise/depthwise_weights",
        "expanded_conv_13_expansion_box/conv_cls/weights", "Conv_1_box/conv_cls/biases",
    ]:
        assert f"{scope}/{expected}" in names, expected
    assert tuple(names[f"{scope}/Conv_1_box/conv_cls/weights"].shape) == (1, 1, 1280, 6 * NUM_CLASSES)
    assert tuple(names[f"{scope}/expanded_conv/depthwise/depthwise_weights"].shape) == (3, 3, 32, 1)
    decayed = {v.path for v in net.weight_decay_variables()}
    assert names[f"{scope}/Conv/weights"].path in decayed
    assert names[f"{scope}/Conv/BatchNorm/gamma"].path not in decayed
    assert names[f"{scope}/expanded_conv/depthwise/depthwise_weights"].path not in decayed


def test_input_is_mean_subtracted_rgb(net):
    """The net maps DESIGN §5 inputs (RGB minus 123, 117, 104) to MobileNetV2's [-1, 1]."""
    layer = net._graph.get_layer("to_unit_range")
    means = np.array([123.0, 117.0, 104.0], np.float32)
    black = layer(np.zeros([1, 1, 1, 3], np.float32) - means)
    white = layer(np.full([1, 1, 1, 3], 255.0, np.float32) - means)
    np.testing.assert_allclose(black, -1.0, atol=1e-6)
    np.testing.assert_allclose(white, 1.0, atol=1e-6)


def test_batch_norm_updates_in_training(net):
    """Training mode moves the BatchNorm statistics (momentum 0.99, not MobileNetV2's 0.999)."""
    bn = net._graph.get_layer("bn_Conv1")
    assert bn.momentum == ssd_mobilenet.BATCH_NORM_MOMENTUM
    fresh = type(net)(net.params)
    before = fresh._graph.get_layer("bn_Conv1").moving_mean.numpy()
    fresh(tf.random.uniform([2, 160, 160, 3], -100, 100), training=True)
    after = fresh._graph.get_layer("bn_Conv1").moving_mean.numpy()
    assert np.abs(after - before).max() > 0


def test_save_load_round_trip_and_sidecar(net, tmp_path):
    images = tf.random.uniform([1, 160, 160, 3], -120, 130, seed=2)
    expected = net.flat_outputs(net(images))
    prefix = net.save_checkpoint(str(tmp_path / "model.ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    assert shapes["ssd_160_mobilenet_v2/Conv/BatchNorm/moving_mean"] == [32]
    meta = checkpoints.read_metadata(prefix)
    assert meta["model_name"] == "ssd_160_mobilenet_v2" and meta["num_classes"] == NUM_CLASSES
    assert meta["anchor_preset"] == "voc" and meta["img_shape"] == [160, 160]
    twin, got = net_checks.assert_reloads_identically(net, prefix, images, expected)
    det = twin.detected_bboxes(got, select_threshold=0.01)
    assert det["boxes"].shape == (1, 200, 4) and det["classes"].dtype == tf.int32


def test_tf_slim_imagenet_checkpoint_scope(net, tmp_path):
    """A TF-Slim mobilenet_v2 checkpoint (scope MobilenetV2) loads into the trunk by name."""
    variables = net.variables_by_checkpoint_name()
    trunk = {n: v for n, v in variables.items() if n.split("/")[1] in net.trunk_scopes}
    rng = np.random.default_rng(0)
    values = {n.replace("ssd_160_mobilenet_v2/", "MobilenetV2/", 1):
              rng.normal(size=v.shape).astype(np.float32) for n, v in trunk.items()}
    values["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] = np.zeros([1, 1, 1280, 1001], np.float32)
    prefix = str(tmp_path / "mobilenet_v2_1.0_224.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(values), shape_and_slices=[""] * len(values),
                      tensors=[tf.constant(v) for v in values.values()])
    twin = type(net)(net.params)
    with pytest.raises(checkpoints.CheckpointMismatchError):
        twin.load_checkpoint(prefix, model_scope="MobilenetV2")  # heads are missing
    report = twin.load_checkpoint(prefix, model_scope="MobilenetV2", ignore_missing_vars=True)
    assert len(report["loaded"]) == len(trunk)
    twin_vars = twin.variables_by_checkpoint_name()
    name = "ssd_160_mobilenet_v2/expanded_conv_5/expand/weights"
    np.testing.assert_array_equal(twin_vars[name], values[name.replace("ssd_160_mobilenet_v2", "MobilenetV2")])


@pytest.mark.slow
def test_keras_imagenet_weights_file(net, tmp_path):
    """A Keras MobileNetV2 weights file (what keras.applications downloads) fills the trunk."""
    keras.utils.set_random_seed(7)
    reference = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights=None)
    path = str(tmp_path / "mobilenet_v2_no_top.weights.h5")
    reference.save_weights(path)
    twin = type(net)(net.params, imagenet_weights=path)
    np.testing.assert_array_equal(twin._trunk.get_layer("block_7_project").kernel,
                                  reference.get_layer("block_7_project").kernel)
    np.testing.assert_array_equal(twin._trunk.get_layer("Conv_1_bn").moving_variance,
                                  reference.get_layer("Conv_1_bn").moving_variance)
    with pytest.raises(FileNotFoundError):
        twin.load_checkpoint(str(tmp_path / "absent.h5"))


def test_other_input_size_for_train_image_size():
    """--train_image_size works for the MobileNet nets: 224 -> stride 16: 14, stride 32: 7, then
    the extra blocks (pad 1, 3x3, stride 2) 4, 2, 1; the built net has those maps."""
    from nets import configure

    default = nets_factory.get_network("ssd_160_mobilenet_v2").default_params
    _, params = configure.resolve_model("ssd_160_mobilenet_v2", num_classes=NUM_CLASSES,
                                        image_size=224, drop_empty_layers=True)
    assert params.img_shape == (224, 224)
    assert params.feat_shapes == ((14, 14), (7, 7), (4, 4), (2, 2), (1, 1))
    assert params.anchor_sizes == default.anchor_sizes  # kept in pixels
    net = nets_factory.get_network("ssd_160_mobilenet_v2")(params)
    out = net(tf.zeros([1, 224, 224, 3]))
    assert [tuple(t.shape[1:3]) for t in out["logits"]] == list(params.feat_shapes)
    assert net.anchors().shape[0] == params.num_anchors
