"""nets: ssd_160_vgg_lite, the BatchNorm VGG of the demo, built by the shared VGG builder.

Checked against hand-computed sizes, counts and anchors, and a NumPy reference of its first
two blocks (conv -> BatchNorm with the moving statistics -> ReLU -> 2x2 max-pool -> ...).
"""
import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory, ssd_params, ssd_vgg
from tests import net_checks

NAME = "ssd_160_vgg_lite"
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def net():
    params = nets_factory.get_network(NAME).default_params.with_num_classes(NUM_CLASSES)
    return nets_factory.get_network(NAME)(params)


def test_registered_with_feature_maps_and_anchors():
    cls = nets_factory.get_network(NAME)
    assert NAME in nets_factory.network_names()
    p = cls.default_params
    # 160 -> pools 80, 40, 20 (block4), 10 (block5..7); extras 10 -> 5 -> 3 -> 1.
    assert p.feat_layers == ("block4", "block7", "block8", "block9", "block10")
    assert p.feat_shapes == ((20, 20), (10, 10), (5, 5), (3, 3), (1, 1))
    assert p.feat_shapes == ssd_params.compute_feat_shapes((160, 160), p.feat_layers, p.extra_blocks)
    assert p.num_anchors_per_location == (4, 6, 6, 4, 4)
    assert p.num_anchors == 20 * 20 * 4 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 4 + 1 * 1 * 4 == 2390
    # Caffe's rule at 160: first layer 10% (16 px) with max 20% (32 px), then 20% .. 88% in
    # steps of floor(70 / 3) = 23%: 32, 68.8, 105.6, 142.4, 179.2 px.
    assert p.anchor_sizes == ((16.0, 32.0), (32.0, 68.8), (68.8, 105.6), (105.6, 142.4), (142.4, 179.2))
    anchors = ssd_params.anchors(p)
    assert anchors.shape == (2390, 4)
    # First anchor: cell (0, 0) of the 20x20 map (step 8: centre 4 px = 0.025), 16 px square.
    np.testing.assert_allclose(anchors[0], [-0.025, -0.025, 0.075, 0.075], atol=1e-6)
    # Second: the sqrt(16 * 32) px square at the same centre.
    half = np.sqrt(16 * 32) / 2 / 160
    np.testing.assert_allclose(anchors[1], [0.025 - half] * 2 + [0.025 + half] * 2, atol=1e-6)
    # The last anchor is the 1x1 map's (centre 0.5), ratio 1/2: w = 142.4 / sqrt(2), h = 142.4 * sqrt(2).
    w, h = 142.4 / np.sqrt(2) / 160, 142.4 * np.sqrt(2) / 160
    np.testing.assert_allclose(anchors[-1], [0.5 - h / 2, 0.5 - w / 2, 0.5 + h / 2, 0.5 + w / 2], atol=1e-6)


def test_variable_names_batch_norm_and_parameter_count(net):
    names = net.variables_by_checkpoint_name()
    scope = NAME + "/"
    # The trunk and extra blocks: conv without bias + TF-Slim batch_norm variables.
    for conv in ("conv1/conv1_1", "conv3/conv3_2", "conv5/conv5_2", "conv6", "conv7",
                 "block8/conv1x1", "block10/conv3x3"):
        assert scope + conv + "/weights" in names
        assert scope + conv + "/biases" not in names
        for v in ("gamma", "beta", "moving_mean", "moving_variance"):
            assert scope + f"{conv}/BatchNorm/{v}" in names
    # The heads keep their biases and have no BatchNorm; no L2 normalization anywhere.
    assert scope + "block4_box/conv_cls/biases" in names
    assert not any("box/BatchNorm" in n or "L2Normalization" in n for n in names)
    assert tuple(names[scope + "block4_box/conv_cls/weights"].shape) == (3, 3, 128, 4 * NUM_CLASSES)
    assert tuple(names[scope + "conv6/weights"].shape) == (3, 3, 128, 256)
    # Parameters by hand: 3x3 convs (no bias) + 4 BN vectors each, 1x1 convs, heads with bias.
    convs = [(3, 16), (16, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 128),
             (128, 256)]
    count = sum(9 * i * o + 4 * o for i, o in convs)
    count += 256 * 256 + 4 * 256                                      # conv7
    for i in (256, 256, 256):                                         # block8..10: 1x1 128, 3x3 256
        count += i * 128 + 4 * 128 + 9 * 128 * 256 + 4 * 256
    for c, a in ((128, 4), (256, 6), (256, 6), (256, 4), (256, 4)):   # loc + cls heads
        count += 9 * c * a * 4 + a * 4 + 9 * c * a * NUM_CLASSES + a * NUM_CLASSES
    assert net.count_params() == count
    # Weight decay: the conv kernels only (not BatchNorm, not biases).
    decayed = {id(v) for v in net.weight_decay_variables()}
    assert decayed == {id(v) for n, v in names.items() if n.endswith("/weights")}


def test_first_blocks_match_numpy_reference(net):
    """Inference mode uses the moving statistics: relu(gamma * (conv - mean) / sqrt(var + eps) + beta)."""
    rng = np.random.default_rng(0)
    names = net.variables_by_checkpoint_name()
    originals = {n: v.numpy() for n, v in names.items()}
    try:
        for conv in ("conv1/conv1_1", "conv2/conv2_1"):
            for v, (lo, hi) in (("gamma", (0.5, 1.5)), ("beta", (-0.5, 0.5)),
                                ("moving_mean", (-1.0, 1.0)), ("moving_variance", (0.5, 2.0))):
                var = names[f"{NAME}/{conv}/BatchNorm/{v}"]
                var.assign(rng.uniform(lo, hi, var.shape).astype(np.float32))
        image = rng.uniform(-100, 100, (1, 160, 160, 3)).astype(np.float32)
        got = net.end_points(image, training=False)

        def conv_bn_relu(x, conv):
            w = originals[f"{NAME}/{conv}/weights"]
            bn = {v: names[f"{NAME}/{conv}/BatchNorm/{v}"].numpy()
                  for v in ("gamma", "beta", "moving_mean", "moving_variance")}
            padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
            h, wd = x.shape[:2]
            y = np.zeros((h, wd, w.shape[3]), np.float64)
            for dy in range(3):
                for dx in range(3):
                    y += padded[dy:dy + h, dx:dx + wd] @ w[dy, dx].astype(np.float64)
            y = bn["gamma"] * (y - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) + bn["beta"]
            return np.maximum(y, 0.0)

        block1 = conv_bn_relu(image[0].astype(np.float64), "conv1/conv1_1")
        np.testing.assert_allclose(got["block1"][0], block1, rtol=1e-4, atol=1e-3)
        pooled = block1.reshape(80, 2, 80, 2, 16).max(axis=(1, 3))
        block2 = conv_bn_relu(pooled, "conv2/conv2_1")
        np.testing.assert_allclose(got["block2"][0], block2, rtol=1e-4, atol=1e-3)
    finally:
        for n, v in names.items():
            v.assign(originals[n])


def test_batch_norm_trains_with_pytorch_momentum(net):
    bn = net._graph.get_layer("conv1_1_bn")
    assert bn.momentum == ssd_vgg.BATCH_NORM_MOMENTUM == 0.9
    fresh = type(net)(net.params)
    before = fresh._graph.get_layer("conv1_1_bn").moving_mean.numpy()
    images = tf.random.uniform([2, 160, 160, 3], 0, 100, seed=1)
    fresh(images, training=True)
    after = fresh._graph.get_layer("conv1_1_bn").moving_mean.numpy()
    # One training step moves the statistics 10% of the way to the batch's (Keras 0.99: 1%).
    kernel = fresh.variables_by_checkpoint_name()[f"{NAME}/conv1/conv1_1/weights"]
    batch_mean = tf.reduce_mean(tf.nn.conv2d(images, kernel, 1, "SAME"), axis=(0, 1, 2)).numpy()
    np.testing.assert_allclose(after, 0.9 * before + 0.1 * batch_mean, rtol=1e-4, atol=1e-4)
    assert np.abs(after - before).max() > 0.1


def test_save_load_round_trip_and_other_input_size(net, tmp_path):
    images = tf.random.uniform([1, 160, 160, 3], -120, 130, seed=2)
    expected = net.flat_outputs(net(images))
    prefix = net.save_checkpoint(str(tmp_path / "model.ckpt"))
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert shapes[f"{NAME}/conv4/conv4_2/BatchNorm/moving_variance"] == [128]
    net_checks.assert_reloads_identically(net, prefix, images, expected)
    # Another input size (--train_image_size): feature maps follow compute_feat_shapes.
    big = type(net)(net.params.with_img_shape((192, 192)))
    assert big.params.feat_shapes == ((24, 24), (12, 12), (6, 6), (3, 3), (1, 1))
    out = big(tf.zeros([1, 192, 192, 3]))
    assert [tuple(t.shape[1:3]) for t in out["logits"]] == list(big.params.feat_shapes)


def test_vgg16_trunk_is_unchanged():
    """The light trunk is data: SSD300 keeps Caffe's conv + bias + ReLU without BatchNorm."""
    assert ssd_vgg.SSD300VGG.trunk == ssd_vgg.VGG16_TRUNK and not ssd_vgg.VGG16_TRUNK.batch_norm
    assert ssd_vgg.VGG16_TRUNK.blocks == ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
    assert ssd_vgg.VGG16_TRUNK.conv6 == (1024, 3, 6) and ssd_vgg.VGG16_TRUNK.conv7 == 1024
