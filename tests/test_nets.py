"""nets: SSDParams, anchors, SSD300/SSD512-VGG structure and Caffe semantics (NumPy reference).

Golden values are written out by hand (see the comments); the Caffe reference below is a slow,
literal NumPy transcription of Caffe's Convolution / Pooling (ceil mode) / Normalize layers.
"""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory, ssd_params
from nets.ssd_params import ExtraBlock, SSDParams
from tests.references import caffe_conv, caffe_max_pool, caffe_normalize

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")


@pytest.fixture(scope="module")
def ssd300():
    return nets_factory.get_network("ssd_300_vgg")()


@pytest.fixture(scope="module")
def ssd512():
    return nets_factory.get_network("ssd_512_vgg")()


# -- factory and params --------------------------------------------------------------------

def test_factory_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        nets_factory.get_network("ssd_301_vgg")
    message = str(err.value)
    assert "ssd_301_vgg" in message and "ssd_300_vgg" in message and "ssd_512_vgg" in message


def test_factory_classes_carry_name_and_default_params():
    for name, size in (("ssd_300_vgg", 300), ("ssd_512_vgg", 512)):
        cls = nets_factory.get_network(name)
        assert cls.model_name == name
        assert cls.default_params.img_shape == (size, size)
        assert cls.default_params.anchor_preset == "voc"


def test_params_are_frozen_and_validated():
    params = nets_factory.get_network("ssd_300_vgg").default_params
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.num_classes = 3
    # A preset name that does not match the sizes is refused (the classic ft/non-ft mix-up).
    with pytest.raises(ValueError, match="with_anchor_preset"):
        dataclasses.replace(params, anchor_preset="coco_ft")
    with pytest.raises(ValueError, match="feat_layers has 6"):
        dataclasses.replace(params, anchor_steps=(8, 16))
    with pytest.raises(ValueError, match="No anchor preset 'vocc'.*coco_ft"):
        params.with_anchor_preset("vocc")
    with pytest.raises(ValueError, match="Unknown anchor preset"):
        dataclasses.replace(params, anchor_preset="vocc")
    assert params.with_anchor_preset("coco_ft").anchor_sizes[0] == (21.0, 45.0)
    assert dataclasses.replace(params, num_classes=81).num_classes == 81


def test_anchor_counts():
    p300 = nets_factory.get_network("ssd_300_vgg").default_params
    p512 = nets_factory.get_network("ssd_512_vgg").default_params
    # 38*38*4 + 19*19*6 + 10*10*6 + 5*5*6 + 3*3*4 + 1*1*4 = 5776+2166+600+150+36+4
    assert p300.num_anchors == 8732
    # 64*64*4 + 32*32*6 + 16*16*6 + 8*8*6 + 4*4*6 + 2*2*4 + 1*1*4
    assert p512.num_anchors == 24564
    assert p300.num_anchors_per_location == (4, 6, 6, 6, 4, 4)
    assert p512.num_anchors_per_location == (4, 6, 6, 6, 6, 4, 4)
    assert ssd_params.compute_feat_shapes((300, 300), p300.feat_layers, p300.extra_blocks) == \
        ((38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1))
    assert ssd_params.compute_feat_shapes((512, 512), p512.feat_layers, p512.extra_blocks) == \
        ((64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1))


# -- anchors: golden values by hand --------------------------------------------------------
# Per layer: (step, feature side, [(h, w) in pixels of each anchor at one location]).
# Sides: min x min; sqrt(min*max) squared; then ratio 2: h = min/sqrt(2), w = min*sqrt(2);
# ratio 1/2 swapped; ratio 3: h = min/sqrt(3), w = min*sqrt(3); ratio 1/3 swapped.
# E.g. SSD300 voc conv4_3: min 30, max 60: sqrt(1800) = 42.42641, 30/1.41421 = 21.2132.
# The first centre is 0.5 * step / image side (Caffe: (0 + offset) * step).
GOLDEN_ANCHORS = {
    ('ssd_300_vgg', 'voc'): [
        (8, 38, [(30, 30), (42.42641, 42.42641), (21.2132, 42.42641), (42.42641, 21.2132)]),
        (16, 19, [(60, 60), (81.60882, 81.60882), (42.42641, 84.85281), (84.85281, 42.42641), (34.64102, 103.92305), (103.92305, 34.64102)]),
        (32, 10, [(111, 111), (134.09698, 134.09698), (78.48885, 156.97771), (156.97771, 78.48885), (64.08588, 192.25764), (192.25764, 64.08588)]),
        (64, 5, [(162, 162), (185.75791, 185.75791), (114.5513, 229.1026), (229.1026, 114.5513), (93.53074, 280.59223), (280.59223, 93.53074)]),
        (100, 3, [(213, 213), (237.13287, 237.13287), (150.61374, 301.22749), (301.22749, 150.61374)]),
        (300, 1, [(264, 264), (288.37476, 288.37476), (186.67619, 373.35238), (373.35238, 186.67619)]),
    ],
    ('ssd_300_vgg', 'coco_ft'): [
        (8, 38, [(21, 21), (30.74085, 30.74085), (14.84924, 29.69848), (29.69848, 14.84924)]),
        (16, 19, [(45, 45), (66.74579, 66.74579), (31.81981, 63.63961), (63.63961, 31.81981), (25.98076, 77.94229), (77.94229, 25.98076)]),
        (32, 10, [(99, 99), (123.07315, 123.07315), (70.00357, 140.00714), (140.00714, 70.00357), (57.15768, 171.47303), (171.47303, 57.15768)]),
        (64, 5, [(153, 153), (177.96348, 177.96348), (108.18734, 216.37468), (216.37468, 108.18734), (88.33459, 265.00377), (265.00377, 88.33459)]),
        (100, 3, [(207, 207), (232.43709, 232.43709), (146.3711, 292.74221), (292.74221, 146.3711)]),
        (300, 1, [(261, 261), (286.73158, 286.73158), (184.55487, 369.10974), (369.10974, 184.55487)]),
    ],
    ('ssd_512_vgg', 'voc'): [
        (8, 64, [(35.84, 35.84), (52.46439, 52.46439), (25.34271, 50.68541), (50.68541, 25.34271)]),
        (16, 32, [(76.8, 76.8), (108.6116, 108.6116), (54.3058, 108.6116), (108.6116, 54.3058), (44.3405, 133.0215), (133.0215, 44.3405)]),
        (32, 16, [(153.6, 153.6), (188.12081, 188.12081), (108.6116, 217.2232), (217.2232, 108.6116), (88.681, 266.043), (266.043, 88.681)]),
        (64, 8, [(230.4, 230.4), (266.043, 266.043), (162.9174, 325.8348), (325.8348, 162.9174), (133.0215, 399.06451), (399.06451, 133.0215)]),
        (128, 4, [(307.2, 307.2), (343.46004, 343.46004), (217.2232, 434.44641), (434.44641, 217.2232), (177.362, 532.08601), (532.08601, 177.362)]),
        (256, 2, [(384, 384), (420.65092, 420.65092), (271.529, 543.05801), (543.05801, 271.529)]),
        (512, 1, [(460.8, 460.8), (497.72089, 497.72089), (325.8348, 651.66961), (651.66961, 325.8348)]),
    ],
    ('ssd_512_vgg', 'voc_caffe'): [
        (8, 64, [(35, 35), (51.57519, 51.57519), (24.74874, 49.49747), (49.49747, 24.74874)]),
        (16, 32, [(76, 76), (107.8332, 107.8332), (53.74012, 107.48023), (107.48023, 53.74012), (43.87862, 131.63586), (131.63586, 43.87862)]),
        (32, 16, [(153, 153), (187.58998, 187.58998), (108.18734, 216.37468), (216.37468, 108.18734), (88.33459, 265.00377), (265.00377, 88.33459)]),
        (64, 8, [(230, 230), (265.72542, 265.72542), (162.63456, 325.26912), (325.26912, 162.63456), (132.79056, 398.37169), (398.37169, 132.79056)]),
        (128, 4, [(307, 307), (343.34822, 343.34822), (217.08178, 434.16356), (434.16356, 217.08178), (177.24653, 531.7396), (531.7396, 177.24653)]),
        (256, 2, [(384, 384), (420.28562, 420.28562), (271.529, 543.05801), (543.05801, 271.529)]),
        (512, 1, [(460, 460), (497.01107, 497.01107), (325.26912, 650.53824), (650.53824, 325.26912)]),
    ],
    ('ssd_512_vgg', 'coco_ft'): [
        (8, 64, [(20.48, 20.48), (32.38172, 32.38172), (14.48155, 28.96309), (28.96309, 14.48155)]),
        (16, 32, [(51.2, 51.2), (82.55752, 82.55752), (36.20387, 72.40773), (72.40773, 36.20387), (29.56033, 88.681), (88.681, 29.56033)]),
        (32, 16, [(133.12, 133.12), (169.19257, 169.19257), (94.13005, 188.26011), (188.26011, 94.13005), (76.85687, 230.5706), (230.5706, 76.85687)]),
        (64, 8, [(215.04, 215.04), (252.70196, 252.70196), (152.05624, 304.11248), (304.11248, 152.05624), (124.1534, 372.46021), (372.46021, 124.1534)]),
        (128, 4, [(296.96, 296.96), (335.42839, 335.42839), (209.98243, 419.96486), (419.96486, 209.98243), (171.44994, 514.34981), (514.34981, 171.44994)]),
        (256, 2, [(378.88, 378.88), (417.83717, 417.83717), (267.90862, 535.81723), (535.81723, 267.90862)]),
        (512, 1, [(460.8, 460.8), (500.08537, 500.08537), (325.8348, 651.66961), (651.66961, 325.8348)]),
    ],
}
# Start of each layer in the flat anchor list: running sums of h*w*A.
GOLDEN_OFFSETS = {
    "ssd_300_vgg": [0, 5776, 7942, 8542, 8692, 8728],      # +38*38*4, +19*19*6, +600, +150, +36
    "ssd_512_vgg": [0, 16384, 22528, 24064, 24448, 24544, 24560],  # +64*64*4, +32*32*6, ...
}


@pytest.mark.parametrize("model_name,preset", list(GOLDEN_ANCHORS))
def test_anchor_golden_values(model_name, preset):
    params = nets_factory.get_network(model_name).default_params.with_anchor_preset(preset)
    anchors = ssd_params.anchors(params)
    assert anchors.dtype == np.float32 and anchors.shape == (params.num_anchors, 4)
    img = float(params.img_shape[0])
    for layer, (step, side, sizes) in enumerate(GOLDEN_ANCHORS[(model_name, preset)]):
        start = GOLDEN_OFFSETS[model_name][layer]
        num = len(sizes)
        c = 0.5 * step / img
        hw = np.array(sizes) / img
        expected = np.stack([c - hw[:, 0] / 2, c - hw[:, 1] / 2, c + hw[:, 0] / 2,
                             c + hw[:, 1] / 2], axis=1)
        np.testing.assert_allclose(anchors[start:start + num], expected, atol=2e-6,
                                   err_msg=f"{model_name} {preset} layer {layer}")
        # Next column: x moves by one step, y stays; next row: y moves by one step.
        if side > 1:
            np.testing.assert_allclose(anchors[start + num, [0, 2]], expected[0, [0, 2]], atol=2e-6)
            np.testing.assert_allclose(anchors[start + num, [1, 3]],
                                       expected[0, [1, 3]] + step / img, atol=2e-6)
            row = start + side * num
            np.testing.assert_allclose(anchors[row, [0, 2]], expected[0, [0, 2]] + step / img,
                                       atol=2e-6)
        # Last location of the layer: centre (side - 0.5) * step / img (not clipped).
        last = anchors[start + (side * side - 1) * num]
        centre = (side - 0.5) * step / img
        np.testing.assert_allclose((last[0] + last[2]) / 2, centre, atol=2e-6)
        np.testing.assert_allclose((last[1] + last[3]) / 2, centre, atol=2e-6)


def test_anchors_are_not_clipped(ssd300):
    anchors = ssd300.anchors()
    # SSD300 block8: 10 cells of step 32 -> last centre 9.5 * 32 / 300 = 1.01333 (Caffe quirk).
    block8_last = anchors[8542 - 6]
    np.testing.assert_allclose((block8_last[0] + block8_last[2]) / 2, 1.0133333, atol=1e-6)
    assert anchors.min() < 0 and anchors.max() > 1
    assert not anchors.flags.writeable


def test_caffe_presets_truncate_sizes():
    table = ssd_params.ANCHOR_PRESETS
    assert table[(300, 300)]["voc_caffe"] == table[(300, 300)]["voc"]  # already whole numbers
    assert table[(512, 512)]["voc_caffe"][0] == (35.0, 76.0)            # 35.84 -> 35, 76.8 -> 76
    assert table[(512, 512)]["voc_caffe"][-1] == (460.0, 537.0)         # 460.8, 537.6
    assert table[(512, 512)]["coco_ft_caffe"][0] == (20.0, 51.0)        # 20.48, 51.2


# -- structure -------------------------------------------------------------------------------

def _read_golden(name):
    with open(os.path.join(GOLDEN_DIR, f"{name}_variables.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("model_name", ["ssd_300_vgg", "ssd_512_vgg"])
def test_variable_names_and_shapes_golden(model_name, request):
    net = request.getfixturevalue(model_name.replace("_vgg", "").replace("ssd_", "ssd"))
    got = sorted(f"{name} {list(v.shape)}".replace(", ", ",")
                 for name, v in net.variables_by_checkpoint_name().items())
    assert got == _read_golden(model_name)
    # The map is one-to-one and covers every weight.
    name_map = net.checkpoint_name_map()
    assert len(set(name_map.values())) == len(name_map) == len(net.weights)
    assert name_map["conv1_1/kernel"] == f"{model_name}/conv1/conv1_1/weights"
    assert name_map["block4_box_l2norm/gamma"] == f"{model_name}/block4_box/L2Normalization/gamma"


def test_parameter_counts(ssd300, ssd512):
    assert ssd300.count_params() == 26_285_486   # = torchvision ssd300_vgg16(num_classes=21)
    assert ssd512.count_params() == 27_188_676
    p81 = dataclasses.replace(ssd300.params, num_classes=81, no_annotation_label=81)
    net81 = nets_factory.get_network("ssd_300_vgg")(p81)
    # 60 more classes on (4+6+6+6+4+4)-anchor heads: 3*3*C_in*A*60 + A*60 per head.
    extra = sum(60 * a * (9 * c + 1) for a, c in zip((4, 6, 6, 6, 4, 4),
                                                     (512, 1024, 512, 256, 256, 256)))
    assert net81.count_params() == 26_285_486 + extra


@pytest.mark.parametrize("model_name", ["ssd_300_vgg", "ssd_512_vgg"])
def test_output_shapes_and_flat_view(model_name, request):
    net = request.getfixturevalue(model_name.replace("_vgg", "").replace("ssd_", "ssd"))
    params = net.params
    size = params.img_shape[0]
    images = tf.random.stateless_normal([1, size, size, 3], seed=(1, 2)) * 50.0
    out = net.inference(images)
    assert len(out["logits"]) == len(params.feat_layers)
    for i, (h, w) in enumerate(params.feat_shapes):
        a = params.num_anchors_per_location[i]
        assert out["logits"][i].shape == (1, h, w, a, 21)
        assert out["predictions"][i].shape == (1, h, w, a, 21)
        assert out["localisations"][i].shape == (1, h, w, a, 4)
        np.testing.assert_allclose(tf.reduce_sum(out["predictions"][i], -1), 1.0, atol=1e-5)
    flat = net.flat_outputs(out)
    num = params.num_anchors
    assert flat["logits"].shape == (1, num, 21) and flat["localisations"].shape == (1, num, 4)
    # Flat row of (layer 1, row 2, col 3, anchor 4) = offset + (2 * w + 3) * A + 4.
    h, w = params.feat_shapes[1]
    row = GOLDEN_OFFSETS[model_name][1] + (2 * w + 3) * 6 + 4
    np.testing.assert_array_equal(flat["logits"][0, row], out["logits"][1][0, 2, 3, 4])
    np.testing.assert_array_equal(flat["localisations"][0, row], out["localisations"][1][0, 2, 3, 4])
    # The eager call and the tf.function give the same numbers.
    eager = net(images, training=False)
    np.testing.assert_allclose(eager["logits"][0], out["logits"][0], rtol=1e-4, atol=1e-4)


def test_l2_scale_starts_at_20_and_no_dropout(ssd300):
    gamma = ssd300.variables_by_checkpoint_name()["ssd_300_vgg/block4_box/L2Normalization/gamma"]
    np.testing.assert_array_equal(gamma.numpy(), np.full([512], 20.0, np.float32))
    images = tf.random.stateless_normal([1, 300, 300, 3], seed=(3, 4)) * 50.0
    # No dropout: training=True gives the same forward pass.
    a = ssd300(images, training=False)["logits"][2]
    b = ssd300(images, training=True)["logits"][2]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_weight_decay_variables_are_the_conv_kernels(ssd300):
    names = {v.path for v in ssd300.weight_decay_variables()}
    assert len(names) == 35  # 13 VGG + 2 (conv6/7) + 8 extra + 12 head convs
    assert all(n.endswith("/kernel") for n in names)


# -- Caffe semantics against a NumPy reference (tests/references.py) ----------------------------

def _rel_close(actual, expected, tol=1e-4):
    actual = np.asarray(actual, np.float64)
    scale = np.abs(expected).max() + 1e-12
    assert np.abs(actual - expected).max() / scale < tol, np.abs(actual - expected).max() / scale


def test_pool3_75_to_38_matches_caffe_ceil_mode(ssd300):
    layer = ssd300._graph.get_layer("pool3")
    x = np.random.default_rng(0).standard_normal((1, 75, 75, 8)).astype(np.float32)
    y = layer(x).numpy()
    assert y.shape == (1, 38, 38, 8)
    np.testing.assert_array_equal(y, caffe_max_pool(x, 2, 2))
    # pool5: 3x3 stride 1 pad 1 keeps 19x19.
    x = np.random.default_rng(1).standard_normal((1, 19, 19, 4)).astype(np.float32)
    y = ssd300._graph.get_layer("pool5")(x).numpy()
    np.testing.assert_array_equal(y, caffe_max_pool(x, 3, 1, pad=1))


def test_stride2_padding_dilation_and_l2norm_match_caffe(ssd300, ssd512):
    rng = np.random.default_rng(2)
    graph = ssd300._graph

    def run(names, x):
        for name in names:
            x = graph.get_layer(name)(x)
        return x.numpy()

    def weights(layer_name, graph=graph):
        layer = graph.get_layer(layer_name)
        return layer.kernel.numpy(), layer.bias.numpy()

    # block8 conv3x3: explicit pad 1 + VALID stride 2 = Caffe pad 1 stride 2: 19 -> 10.
    x = rng.standard_normal((1, 19, 19, 256)).astype(np.float32)
    y = run(["block8_pad", "block8_conv3x3"], x)
    assert y.shape == (1, 10, 10, 512)
    _rel_close(y, caffe_conv(x, *weights("block8_conv3x3"), pad=1, stride=2))
    # Even input: 10 -> 5 (block9), where TF's SAME would pad asymmetrically (0 top, 1 bottom).
    x = rng.standard_normal((1, 10, 10, 128)).astype(np.float32)
    y = run(["block9_pad", "block9_conv3x3"], x)
    assert y.shape == (1, 5, 5, 256)
    _rel_close(y, caffe_conv(x, *weights("block9_conv3x3"), pad=1, stride=2))
    # block10 (SSD300): 3x3, pad 0, stride 1: 5 -> 3.
    x = rng.standard_normal((1, 5, 5, 128)).astype(np.float32)
    _rel_close(run(["block10_conv3x3"], x), caffe_conv(x, *weights("block10_conv3x3")))
    # conv6: 3x3 dilation 6, Caffe pad 6, on 19x19.
    x = rng.standard_normal((1, 19, 19, 512)).astype(np.float32)
    y = run(["conv6"], x)
    assert y.shape == (1, 19, 19, 1024)
    _rel_close(y, caffe_conv(x, *weights("conv6"), pad=6, dilation=6))
    # SSD512 block12: pad 1 + 4x4 VALID: 2 -> 1.
    g512 = ssd512._graph
    x = rng.standard_normal((1, 2, 2, 128)).astype(np.float32)
    y = g512.get_layer("block12_conv4x4")(g512.get_layer("block12_pad")(x)).numpy()
    assert y.shape == (1, 1, 1, 256)
    _rel_close(y, caffe_conv(x, *weights("block12_conv4x4", g512), pad=1))
    # conv4_3 L2 normalization with the learned scale (set per channel here).
    norm = graph.get_layer("block4_box_l2norm")
    x = rng.standard_normal((1, 4, 4, 512)).astype(np.float32)
    old = norm.gamma.numpy()
    try:
        scale = rng.uniform(5, 25, 512).astype(np.float32)
        norm.gamma.assign(scale)
        _rel_close(norm(x).numpy(), caffe_normalize(x, scale), tol=1e-6)
        zeros = np.zeros((1, 2, 2, 512), np.float32)
        np.testing.assert_array_equal(norm(zeros).numpy(), zeros)  # eps: no NaN on zeros
    finally:
        norm.gamma.assign(old)


# A small net with every kind of Caffe layer of SSD: 150x150 input exercises odd pooling
# (75 -> 38, 19 -> 10), and the extra blocks cover pad+stride 2, pad 0 stride 1 and 4x4.
SMALL_EXTRA_BLOCKS = (
    ExtraBlock("block8", 32, 64, 3, 2, 1),     # 10 -> 5
    ExtraBlock("block9", 16, 32, 3, 1, 0),     # 5 -> 3
    ExtraBlock("block10", 16, 32, 3, 2, 1),    # 3 -> 2
    ExtraBlock("block11", 16, 32, 4, 1, 1),    # 2 -> 1
)


def small_params(num_classes=5):
    base = nets_factory.get_network("ssd_300_vgg").default_params
    params = dataclasses.replace(
        base, extra_blocks=SMALL_EXTRA_BLOCKS, num_classes=num_classes,
        no_annotation_label=num_classes, anchor_preset="custom")
    return params.with_img_shape((150, 150))


def caffe_ssd_forward(weights, params, model_name, images):
    """SSD-VGG forward in NumPy from TF-Slim-named weights, Caffe layer by layer."""
    def conv(x, scope, **kw):
        return caffe_conv(x, weights[f"{model_name}/{scope}/weights"],
                          weights[f"{model_name}/{scope}/biases"], **kw)

    x, ends = images.astype(np.float64), {}
    for b, n in enumerate((2, 2, 3, 3, 3), start=1):
        for c in range(1, n + 1):
            x = conv(x, f"conv{b}/conv{b}_{c}", pad=1)
        ends[f"block{b}"] = x
        x = caffe_max_pool(x, 2, 2) if b < 5 else caffe_max_pool(x, 3, 1, pad=1)
    x = conv(x, "conv6", pad=6, dilation=6)
    x = ends["block7"] = conv(x, "conv7")
    for blk in params.extra_blocks:
        x = conv(x, f"{blk.name}/conv1x1")
        x = ends[blk.name] = conv(x, f"{blk.name}/{blk.conv_scope}", pad=blk.padding,
                                  stride=blk.stride)
    logits, locs = [], []
    for i, layer in enumerate(params.feat_layers):
        x = ends[layer]
        if params.normalizations[i] > 0:
            x = caffe_normalize(x, weights[f"{model_name}/{layer}_box/L2Normalization/gamma"])
        a = params.num_anchors_per_location[i]
        loc = conv(x, f"{layer}_box/conv_loc", pad=1, relu=False)
        cls = conv(x, f"{layer}_box/conv_cls", pad=1, relu=False)
        locs.append(loc.reshape(loc.shape[:3] + (a, 4)))
        logits.append(cls.reshape(cls.shape[:3] + (a, params.num_classes)))
    return logits, locs


def test_whole_net_matches_caffe_reference(tmp_path):
    params = small_params()
    assert params.feat_shapes == ((19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1))
    net = nets_factory.get_network("ssd_300_vgg")(params)
    # Non-trivial biases and scale, so that every variable matters.
    rng = np.random.default_rng(3)
    for name, var in net.variables_by_checkpoint_name().items():
        if name.endswith("/biases"):
            var.assign(rng.uniform(-0.1, 0.1, var.shape).astype(np.float32))
        if name.endswith("/gamma"):
            var.assign(rng.uniform(10, 30, var.shape).astype(np.float32))
    # The reference reads the weights by TF-Slim name from a checkpoint file on disk.
    prefix = net.save_checkpoint(str(tmp_path / "small.ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    weights = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    images = rng.uniform(-120, 130, (1, 150, 150, 3)).astype(np.float32)
    out = net.inference(images)
    logits, locs = caffe_ssd_forward(weights, params, "ssd_300_vgg", images)
    for i in range(len(params.feat_layers)):
        _rel_close(out["logits"][i], logits[i], tol=2e-4)
        _rel_close(out["localisations"][i], locs[i], tol=2e-4)


def test_feature_shapes_must_match_img_shape():
    base = nets_factory.get_network("ssd_300_vgg").default_params
    wrong = dataclasses.replace(base, img_shape=(320, 320), anchor_preset="custom")
    with pytest.raises(ValueError, match=r"feat_shapes\[0\] is \(38, 38\), but block4 is \(40, 40\)"):
        nets_factory.get_network("ssd_300_vgg")(wrong)
    assert base.with_img_shape((320, 320)).feat_shapes[:2] == ((40, 40), (20, 20))
    with pytest.raises(ValueError, match="too small"):
        base.with_img_shape((200, 200))  # block11 would be empty (SSD300 needs >= 257 pixels)
