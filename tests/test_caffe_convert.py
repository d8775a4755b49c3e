"""Caffe SSD -> TF conversion (caffe_convert/convert.py, caffe_to_tensorflow.py).

The Caffe side is written out here by hand, independently of the converter: the layer names
and blob shapes of Wei Liu's SSD300 / SSD512 models (as in their deploy.prototxt files), a
deploy.prototxt generator with the published PriorBox parameters, and a slow NumPy
implementation of Caffe's forward pass (NCHW, BGR input, Caffe's ceil-mode pooling and
Normalize layer, PriorBox with its int sizes). The converted TF net must reproduce it.
"""
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from caffe_convert import caffe_pb, convert
from nets import checkpoints, configure, nets_factory
from tests.references import caffe_conv, caffe_max_pool, caffe_normalize, nchw
from tests.scripts import run_script as run_project_script


# ---------------------------------------------------------------------------------------
# The Caffe models, by hand
# ---------------------------------------------------------------------------------------

VGG_CONVS = [  # (name, out, in, k): VGG-16 conv1_1 .. conv5_3, then SSD's reduced fc6/fc7.
    ("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3),
    ("conv2_1", 128, 64, 3), ("conv2_2", 128, 128, 3),
    ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3),
    ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3),
    ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3", 512, 512, 3),
    ("fc6", 1024, 512, 3), ("fc7", 1024, 1024, 1),
]
# name, out, in, kernel, stride, pad (Caffe ssd_pascal.py AddExtraLayers).
SSD300_EXTRAS = [
    ("conv6_1", 256, 1024, 1, 1, 0), ("conv6_2", 512, 256, 3, 2, 1),
    ("conv7_1", 128, 512, 1, 1, 0), ("conv7_2", 256, 128, 3, 2, 1),
    ("conv8_1", 128, 256, 1, 1, 0), ("conv8_2", 256, 128, 3, 1, 0),
    ("conv9_1", 128, 256, 1, 1, 0), ("conv9_2", 256, 128, 3, 1, 0),
]
SSD512_EXTRAS = SSD300_EXTRAS[:4] + [
    ("conv8_1", 128, 256, 1, 1, 0), ("conv8_2", 256, 128, 3, 2, 1),
    ("conv9_1", 128, 256, 1, 1, 0), ("conv9_2", 256, 128, 3, 2, 1),
    ("conv10_1", 128, 256, 1, 1, 0), ("conv10_2", 256, 128, 4, 1, 1),
]
# (source blob, its channels, anchors per location) of the multibox heads.
SSD300_SOURCES = [("conv4_3_norm", 512, 4), ("fc7", 1024, 6), ("conv6_2", 512, 6),
                  ("conv7_2", 256, 6), ("conv8_2", 256, 4), ("conv9_2", 256, 4)]
SSD512_SOURCES = [("conv4_3_norm", 512, 4), ("fc7", 1024, 6), ("conv6_2", 512, 6),
                  ("conv7_2", 256, 6), ("conv8_2", 256, 6), ("conv9_2", 256, 4),
                  ("conv10_2", 256, 4)]
# Published PriorBox parameters (ssd_pascal.py / ssd_pascal_512.py, VOC0712 models).
SSD300_PRIORS = dict(min=[30, 60, 111, 162, 213, 264], max=[60, 111, 162, 213, 264, 315],
                     ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                     steps=[8, 16, 32, 64, 100, 300])
SSD512_PRIORS = dict(min=[35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
                     max=[76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
                     ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
                     steps=[8, 16, 32, 64, 128, 256, 512])


def caffe_blob_table(model: str, num_classes: int) -> dict[str, list[tuple[int, ...]]]:
    """Caffe layer name -> blob shapes (OIHW weights, bias), written out from the SSD models."""
    extras = SSD512_EXTRAS if model == "ssd_512_vgg" else SSD300_EXTRAS
    sources = SSD512_SOURCES if model == "ssd_512_vgg" else SSD300_SOURCES
    table = {}
    for name, out, cin, k in VGG_CONVS:
        table[name] = [(out, cin, k, k), (out,)]
    for name, out, cin, k, _, _ in extras:
        table[name] = [(out, cin, k, k), (out,)]
    table["conv4_3_norm"] = [(512,)]
    for source, channels, anchors in sources:
        table[source + "_mbox_loc"] = [(anchors * 4, channels, 3, 3), (anchors * 4,)]
        table[source + "_mbox_conf"] = [(anchors * num_classes, channels, 3, 3),
                                        (anchors * num_classes,)]
    return table


def random_caffe_weights(model: str, num_classes: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """He-scaled random weights (activations stay O(input) through the ReLUs), random biases,
    a Normalize scale around 20 (Caffe's scale_filler) that differs per channel."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shapes in caffe_blob_table(model, num_classes).items():
        if name == "conv4_3_norm":
            weights[name] = [(20.0 + rng.standard_normal(512)).astype(np.float32)]
            continue
        w_shape, b_shape = shapes
        fan_in = w_shape[1] * w_shape[2] * w_shape[3]
        gain = 1.0 if "mbox" in name else 2.0
        w = rng.standard_normal(w_shape, dtype=np.float32) * np.float32(math.sqrt(gain / fan_in))
        b = rng.standard_normal(b_shape, dtype=np.float32) * np.float32(0.1)
        weights[name] = [w, b]
    return weights


def layer_type(name: str) -> str:
    return "Normalize" if name == "conv4_3_norm" else "Convolution"


def write_model(path, weights, **kwargs) -> None:
    caffe_pb.write_caffemodel(path, [(n, layer_type(n), b) for n, b in weights.items()], **kwargs)


def deploy_prototxt(model: str, num_classes: int, priors=None, img=None) -> str:
    """A deploy.prototxt in the published form: input_shape, conv/pool/relu layers with their
    params, Normalize, and per source loc/conf/permute/flatten/PriorBox, concat, detection."""
    img = img or (512 if model == "ssd_512_vgg" else 300)
    extras = SSD512_EXTRAS if model == "ssd_512_vgg" else SSD300_EXTRAS
    sources = SSD512_SOURCES if model == "ssd_512_vgg" else SSD300_SOURCES
    priors = priors or (SSD512_PRIORS if model == "ssd_512_vgg" else SSD300_PRIORS)
    lines = [f'name: "VGG_VOC0712_SSD_{img}x{img}_deploy"', 'input: "data"',
             f"input_shape {{ dim: 1 dim: 3 dim: {img} dim: {img} }}"]

    def conv(name, bottom, out, k, stride=1, pad=0, dilation=1):
        extra = f" dilation: {dilation}" if dilation > 1 else ""
        lines.append(
            f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }} '
            f'convolution_param {{ num_output: {out} pad: {pad} kernel_size: {k} '
            f'stride: {stride}{extra} weight_filler {{ type: "xavier" }} '
            f'bias_filler {{ type: "constant" value: 0 }} }} }}')

    def relu(name):
        lines.append(f'layer {{ name: "relu{name[4:]}" type: "ReLU" bottom: "{name}" '
                     f'top: "{name}" }}')

    bottom = "data"
    for name, out, _, k in VGG_CONVS:
        if name == "fc6":
            conv(name, bottom, out, 3, pad=6, dilation=6)
        else:
            conv(name, bottom, out, k, pad=1 if k == 3 else 0)
        relu(name)
        bottom = name
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            block = name[4]
            k, s, p = (3, 1, 1) if block == "5" else (2, 2, 0)
            lines.append(f'layer {{ name: "pool{block}" type: "Pooling" bottom: "{name}" '
                         f'top: "pool{block}" pooling_param {{ pool: MAX kernel_size: {k} '
                         f'stride: {s} pad: {p} }} }}')
            bottom = f"pool{block}"
    for name, out, _, k, stride, pad in extras:
        conv(name, bottom, out, k, stride, pad)
        relu(name)
        bottom = name
    lines.append('layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" '
                 'top: "conv4_3_norm" norm_param { across_spatial: false scale_filler { '
                 'type: "constant" value: 20 } channel_shared: false } }')
    for i, (source, _, anchors) in enumerate(sources):
        conv(source + "_mbox_loc", source, anchors * 4, 3, pad=1)
        conv(source + "_mbox_conf", source, anchors * num_classes, 3, pad=1)
        for head in ("loc", "conf"):
            lines.append(f'layer {{ name: "{source}_mbox_{head}_perm" type: "Permute" '
                         f'bottom: "{source}_mbox_{head}" top: "{source}_mbox_{head}_perm" '
                         f'permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}')
        ratios = " ".join(f"aspect_ratio: {r}" for r in priors["ratios"][i])
        lines.append(
            f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" '
            f'bottom: "data" top: "{source}_mbox_priorbox" prior_box_param {{ '
            f'min_size: {priors["min"][i]} max_size: {priors["max"][i]} {ratios} flip: true '
            f'clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 '
            f'step: {priors["steps"][i]} offset: 0.5 }} }}')
    lines.append('layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" '
                 f'top: "mbox_conf_reshape" reshape_param {{ shape {{ dim: 0 dim: -1 '
                 f'dim: {num_classes} }} }} }}')
    lines.append('layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" '
                 'top: "detection_out" include { phase: TEST } detection_output_param { '
                 f'num_classes: {num_classes} share_location: true background_label_id: 0 '
                 'nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE '
                 'keep_top_k: 200 confidence_threshold: 0.01 } }')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Caffe's forward pass in NumPy (batch of 1, NCHW, slow and plain)
# ---------------------------------------------------------------------------------------

def np_conv(x, w, b, relu=True, **kwargs):
    """Caffe Convolution (+ ReLU) on a blob: x [C, H, W], w [O, C, kh, kw] -> [O, Ho, Wo]."""
    return nchw(caffe_conv, x, w, b, relu=relu, **kwargs)


def np_prior_boxes(min_size, max_size, ratios, step, feat, img, offset=0.5):
    """Caffe PriorBoxLayer::Forward_cpu: [feat*feat*A, 4] (xmin, ymin, xmax, ymax) normalized.

    Note the int casts of min_size and max_size (``int min_size_ = min_sizes_[s]``)."""
    expanded = [1.0]
    for r in ratios:
        if all(abs(r - e) > 1e-6 for e in expanded):
            expanded += [float(r), 1.0 / r]
    out = []
    for hh in range(feat):
        for ww in range(feat):
            cx, cy = (ww + offset) * step, (hh + offset) * step
            mn, mx = int(min_size), int(max_size)
            boxes = [(mn, mn), (math.sqrt(mn * mx),) * 2]
            boxes += [(mn * math.sqrt(r), mn / math.sqrt(r)) for r in expanded[1:]]
            for bw, bh in boxes:
                out.append([(cx - bw / 2) / img, (cy - bh / 2) / img,
                            (cx + bw / 2) / img, (cy + bh / 2) / img])
    return np.asarray(out, np.float32)


def caffe_forward_ssd300(weights, data, num_classes):
    """Caffe SSD300 forward on data [1, 3, 300, 300] (BGR): the mbox_loc / mbox_conf blobs,
    plus conv1_1 and conv1_2 (after ReLU)."""
    blobs = {}
    x = data[0].astype(np.float32)
    for name, _, _, k in VGG_CONVS:
        w, b = weights[name]
        if name == "fc6":
            x = np_conv(x, w, b, pad=6, dilation=6)
        else:
            x = np_conv(x, w, b, pad=1 if k == 3 else 0)
        blobs[name] = x
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
            x = nchw(caffe_max_pool, x, kernel=2, stride=2)
        elif name == "conv5_3":
            x = nchw(caffe_max_pool, x, kernel=3, stride=1, pad=1)
    for name, _, _, _, stride, pad in SSD300_EXTRAS:
        x = np_conv(x, *weights[name], stride=stride, pad=pad)
        blobs[name] = x
    blobs["conv4_3_norm"] = nchw(caffe_normalize, blobs["conv4_3"], weights["conv4_3_norm"][0])
    locs, confs = [], []
    for source, _, _ in SSD300_SOURCES:
        for head, store in (("loc", locs), ("conf", confs)):
            y = np_conv(blobs[source], *weights[f"{source}_mbox_{head}"], relu=False, pad=1)
            store.append(y.transpose(1, 2, 0).reshape(-1))  # Permute 0,2,3,1 then Flatten
    return {"conv1_1": blobs["conv1_1"], "conv1_2": blobs["conv1_2"],
            "mbox_loc": np.concatenate(locs)[None], "mbox_conf": np.concatenate(confs)[None]}


def np_softmax_rows(logits, num_classes):
    z = logits.reshape(-1, num_classes).astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32).reshape(1, -1)


def run_script(*args):
    return run_project_script("caffe_to_tensorflow.py", *args)


def expected_tf_value(blob: np.ndarray, layer: str) -> np.ndarray:
    if blob.ndim == 4:
        value = blob.transpose(2, 3, 1, 0)
        return value[:, :, ::-1, :] if layer == "conv1_1" else value
    return blob.reshape(-1)


# ---------------------------------------------------------------------------------------
# Names and shapes
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def var_shapes():
    """TF-Slim name -> shape for both nets (num_classes 21), from the real nets."""
    shapes = {}
    for model in ("ssd_300_vgg", "ssd_512_vgg"):
        net = nets_factory.get_network(model)()
        shapes[model] = {k: tuple(v.shape) for k, v in net.variables_by_checkpoint_name().items()}
    return shapes


@pytest.mark.parametrize("slim, caffe", [
    ("ssd_300_vgg/conv1/conv1_1/weights", ("conv1_1", 0)),
    ("ssd_300_vgg/conv5/conv5_3/biases", ("conv5_3", 1)),
    ("ssd_300_vgg/conv6/weights", ("fc6", 0)),
    ("ssd_300_vgg/conv7/biases", ("fc7", 1)),
    ("ssd_300_vgg/block8/conv1x1/weights", ("conv6_1", 0)),
    ("ssd_300_vgg/block8/conv3x3/weights", ("conv6_2", 0)),
    ("ssd_300_vgg/block11/conv3x3/biases", ("conv9_2", 1)),
    ("ssd_512_vgg/block12/conv1x1/weights", ("conv10_1", 0)),
    ("ssd_512_vgg/block12/conv4x4/weights", ("conv10_2", 0)),
    ("ssd_300_vgg/block4_box/L2Normalization/gamma", ("conv4_3_norm", 0)),
    ("ssd_300_vgg/block4_box/conv_loc/weights", ("conv4_3_norm_mbox_loc", 0)),
    ("ssd_300_vgg/block4_box/conv_cls/biases", ("conv4_3_norm_mbox_conf", 1)),
    ("ssd_300_vgg/block7_box/conv_cls/weights", ("fc7_mbox_conf", 0)),
    ("ssd_300_vgg/block9_box/conv_loc/weights", ("conv7_2_mbox_loc", 0)),
    ("ssd_512_vgg/block12_box/conv_cls/weights", ("conv10_2_mbox_conf", 0)),
])
def test_caffe_source_of_golden(slim, caffe):
    assert convert.caffe_source_of(slim, slim.split("/")[0]) == caffe


def test_caffe_source_of_rejects_unknown_names():
    for bad in ("ssd_300_vgg/conv6/kernel", "ssd_300_vgg/block5/conv1x1/weights",
                "ssd_300_vgg/logits/weights", "other/conv1/conv1_1/weights"):
        with pytest.raises(convert.CaffeConversionError):
            convert.caffe_source_of(bad, "ssd_300_vgg")


@pytest.mark.parametrize("model", ["ssd_300_vgg", "ssd_512_vgg"])
def test_net_needs_exactly_the_published_caffe_layers(var_shapes, model):
    # Every TF variable maps to a layer of the hand-written Caffe table with the right
    # shape, and every Caffe blob of the table is needed by some TF variable.
    got = convert.caffe_blob_shapes(var_shapes[model], model)
    assert got == caffe_blob_table(model, 21)


# ---------------------------------------------------------------------------------------
# The whole conversion through the script (SSD300, 21 classes, real size), shared by tests
# ---------------------------------------------------------------------------------------

NUM_CLASSES_300 = 21


@pytest.fixture(scope="module")
def ssd300(tmp_path_factory):
    """A real-size SSD300 caffemodel with random weights, its deploy.prototxt, a Caffe
    reference computed in NumPy, and one run of the script with --prototxt and --verify."""
    tmp = tmp_path_factory.mktemp("caffe300")
    weights = random_caffe_weights("ssd_300_vgg", NUM_CLASSES_300, seed=1)
    model_path = tmp / "VGG_VOC0712_SSD_300x300_iter_120000.caffemodel"
    write_model(model_path, weights)
    prototxt = tmp / "deploy.prototxt"
    prototxt.write_text(deploy_prototxt("ssd_300_vgg", NUM_CLASSES_300))

    rng = np.random.default_rng(7)
    # A BGR, mean-subtracted input whose three channels differ (so a channel swap shows).
    yy, xx = np.mgrid[0:300, 0:300].astype(np.float32) / 300.0
    data = np.stack([100 * xx - 50, 80 * yy - 40, 60 * np.sin(9 * xx * yy)])[None]
    data = (data + rng.normal(0, 20, size=data.shape)).astype(np.float32)
    ref = caffe_forward_ssd300(weights, data, NUM_CLASSES_300)
    feats = [38, 19, 10, 5, 3, 1]
    priors = np.concatenate([
        np_prior_boxes(SSD300_PRIORS["min"][i], SSD300_PRIORS["max"][i],
                       SSD300_PRIORS["ratios"][i], SSD300_PRIORS["steps"][i], feats[i], 300)
        for i in range(6)])
    variances = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), len(priors))
    npz = tmp / "ref.npz"
    np.savez(npz, data=data, mbox_loc=ref["mbox_loc"], mbox_conf=ref["mbox_conf"],
             mbox_conf_flatten=np_softmax_rows(ref["mbox_conf"], NUM_CLASSES_300),
             mbox_priorbox=np.stack([priors.reshape(-1), variances])[None])
    proc = run_script("--model_name=ssd_300_vgg", f"--num_classes={NUM_CLASSES_300}",
                      f"--caffemodel_path={model_path}", f"--prototxt={prototxt}",
                      f"--verify={npz}")
    return dict(weights=weights, model_path=model_path, prototxt=prototxt, data=data, ref=ref,
                npz=npz, proc=proc, ckpt=str(model_path).replace(".caffemodel", ".ckpt"))


@pytest.mark.slow
def test_script_writes_checkpoint_next_to_caffemodel(ssd300):
    proc = ssd300["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = ssd300["ckpt"]
    for suffix in (".index", ".data-00000-of-00001", ".ssd.json"):
        assert os.path.exists(ckpt + suffix), suffix
    assert "71 variables from 36 Caffe layers" in proc.stdout
    assert "anchor preset 'voc'" in proc.stdout and "deploy.prototxt" in proc.stdout
    assert "warning" not in proc.stdout  # the prototxt's geometry matches the TF net


@pytest.mark.slow
def test_every_tf_variable_equals_its_transposed_caffe_blob(ssd300):
    reader = tf.train.load_checkpoint(ssd300["ckpt"])
    names = reader.get_variable_to_shape_map()
    assert len(names) == 71
    layers_seen = set()
    for name in names:
        layer, index = convert.caffe_source_of(name, "ssd_300_vgg")
        layers_seen.add(layer)
        blob = ssd300["weights"][layer][index]
        np.testing.assert_array_equal(reader.get_tensor(name), expected_tf_value(blob, layer),
                                      err_msg=name)
    assert layers_seen == set(ssd300["weights"])
    # Axis order spelled out on single elements: TF [h, w, in, out] = Caffe [out, in, h, w].
    w = reader.get_tensor("ssd_300_vgg/block8/conv3x3/weights")
    blob = ssd300["weights"]["conv6_2"][0]
    assert w[2, 0, 17, 300] == blob[300, 17, 2, 0]
    assert w[0, 1, 255, 5] == blob[5, 255, 0, 1]


@pytest.mark.slow
def test_conv1_1_input_channels_reversed(ssd300):
    reader = tf.train.load_checkpoint(ssd300["ckpt"])
    w = reader.get_tensor("ssd_300_vgg/conv1/conv1_1/weights")   # [3, 3, RGB, 64]
    blob = ssd300["weights"]["conv1_1"][0]                        # [64, BGR, 3, 3]
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        np.testing.assert_array_equal(w[:, :, rgb, :], blob[:, bgr, :, :].transpose(1, 2, 0))
    # conv1_2 is not reversed.
    w2 = reader.get_tensor("ssd_300_vgg/conv1/conv1_2/weights")
    np.testing.assert_array_equal(w2[:, :, 0, :], ssd300["weights"]["conv1_2"][0][:, 0].transpose(1, 2, 0))


@pytest.mark.slow
def test_sidecar_records_the_prototxt_anchors(ssd300):
    meta = json.loads(open(ssd300["ckpt"] + ".ssd.json").read())
    assert meta["model_name"] == "ssd_300_vgg" and meta["num_classes"] == 21
    assert meta["anchor_preset"] == "voc"
    assert meta["anchor_sizes"] == [[30, 60], [60, 111], [111, 162], [162, 213], [213, 264],
                                    [264, 315]]
    assert meta["anchor_steps"] == [8, 16, 32, 64, 100, 300] and meta["anchor_offset"] == 0.5
    assert meta["anchor_ratios"][0] == [2, 0.5]
    assert meta["anchor_ratios"][1] == pytest.approx([2, 0.5, 3, 1 / 3])
    # What eval / the notebook do: rebuild the net from the checkpoint alone.
    model_name, params = configure.resolve_model(checkpoint=ssd300["ckpt"])
    assert model_name == "ssd_300_vgg" and params.anchor_preset == "voc"
    assert params.num_classes == 21


@pytest.mark.slow
def test_first_layers_match_numpy_caffe_on_bgr(ssd300):
    # Load the converted checkpoint as eval does, feed RGB; NumPy Caffe got BGR.
    model_name, params = configure.resolve_model(checkpoint=ssd300["ckpt"])
    net = nets_factory.get_network(model_name)(params)
    net.load_checkpoint(ssd300["ckpt"])
    rgb = convert.caffe_input_to_tf(ssd300["data"])
    np.testing.assert_array_equal(rgb[0, 5, 7], ssd300["data"][0, ::-1, 5, 7])
    block1 = net.end_points(rgb)["block1"].numpy()[0]       # conv1_2 after ReLU, [H, W, C]
    expected = ssd300["ref"]["conv1_2"].transpose(1, 2, 0)
    np.testing.assert_allclose(block1, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    # conv1_1 alone with the converted weights (the first layer of the net).
    reader = tf.train.load_checkpoint(ssd300["ckpt"])
    conv1_1 = tf.nn.relu(tf.nn.conv2d(rgb, reader.get_tensor("ssd_300_vgg/conv1/conv1_1/weights"),
                                      1, "SAME")
                         + reader.get_tensor("ssd_300_vgg/conv1/conv1_1/biases")).numpy()[0]
    np.testing.assert_allclose(conv1_1, ssd300["ref"]["conv1_1"].transpose(1, 2, 0),
                               rtol=1e-4, atol=1e-3)
    # And the swap matters: the same weights on the unreversed (BGR) input do not match.
    wrong = net.end_points(np.ascontiguousarray(ssd300["data"].transpose(0, 2, 3, 1)))
    assert np.abs(wrong["block1"].numpy()[0] - expected).max() > 100 * np.abs(block1 - expected).max()


@pytest.mark.slow
def test_whole_net_matches_numpy_caffe_and_verify_reports_it(ssd300):
    out = ssd300["proc"].stdout
    diffs = {}
    for line in out.splitlines():
        if "largest |TF - Caffe|" in line:
            parts = line.split()
            diffs[parts[0]] = (float(line.split("= ")[1].split()[0]),
                               float(line.rsplit("= ", 1)[1].rstrip(")")))
    assert set(diffs) == {"mbox_loc", "mbox_conf", "mbox_conf_flatten", "mbox_priorbox"}, out
    for blob in ("mbox_loc", "mbox_conf"):
        diff, scale = diffs[blob]
        # float32 sums over up to 9,216 products in another order: a few 1e-6 relative.
        assert diff <= 2e-5 * scale, (blob, diff, scale, out)
    # Probabilities: a logit difference d moves a softmax output by at most about d / 4.
    assert diffs["mbox_conf_flatten"][0] <= 1e-3 and diffs["mbox_conf_flatten"][1] <= 1.0
    assert diffs["mbox_priorbox"][0] <= 1e-6, out
    # The outputs are not trivially small (random He weights keep them O(input)).
    assert diffs["mbox_conf"][1] > 1.0 and diffs["mbox_loc"][1] > 1.0


# ---------------------------------------------------------------------------------------
# SSD512: V1 `layers` form, legacy shapes, anchors from the caffemodel's own PriorBox layers
# ---------------------------------------------------------------------------------------

def prior_box_layers(model, priors):
    sources = SSD512_SOURCES if model == "ssd_512_vgg" else SSD300_SOURCES
    layers = []
    for i, (source, _, _) in enumerate(sources):
        layer = caffe_pb.LayerParameter(name=f"{source}_mbox_priorbox", type="PriorBox",
                                        bottom=[source, "data"])
        p = layer.prior_box_param
        p.min_size.append(priors["min"][i])
        p.max_size.append(priors["max"][i])
        p.aspect_ratio.extend(priors["ratios"][i])
        p.variance.extend([0.1, 0.1, 0.2, 0.2])
        p.step = priors["steps"][i]
        layers.append(layer)
    return layers


@pytest.mark.slow
def test_ssd512_v1_form_legacy_shapes_and_truncated_priors(tmp_path):
    num_classes = 5
    weights = random_caffe_weights("ssd_512_vgg", num_classes, seed=2)
    path = tmp_path / "ssd512_v1.caffemodel"
    # Convolutions in the V1 `layers` form (type enum CONVOLUTION) with legacy 4-D blob
    # shapes; Normalize and PriorBox (no V1 type) in `layer`.
    write_model(path, weights, v1={"Convolution"}, legacy_shape=True,
                extra_layers=prior_box_layers("ssd_512_vgg", SSD512_PRIORS))
    net_param, layers = caffe_pb.read_caffemodel(path)
    assert (len(net_param.layers), len(net_param.layer)) == (39, 1 + 7)
    net, report = convert.convert_caffemodel("ssd_512_vgg", path)
    assert report.output_path == str(tmp_path / "ssd512_v1.ckpt")
    params = report.params
    assert params.num_classes == 5                     # inferred from conv4_3_norm_mbox_conf
    # Caffe casts min/max sizes to int: 35.84 -> 35, 76.8 -> 76, ...
    assert params.anchor_sizes == ((35, 76), (76, 153), (153, 230), (230, 307), (307, 384),
                                   (384, 460), (460, 537))
    assert params.anchor_preset == "voc_caffe"
    assert params.anchor_steps == (8, 16, 32, 64, 128, 256, 512)
    reader = tf.train.load_checkpoint(report.output_path)
    assert len(reader.get_variable_to_shape_map()) == 79
    for name in reader.get_variable_to_shape_map():
        layer, index = convert.caffe_source_of(name, "ssd_512_vgg")
        np.testing.assert_array_equal(reader.get_tensor(name),
                                      expected_tf_value(weights[layer][index], layer),
                                      err_msg=name)
    # The net's anchors are Caffe's priors (int sizes), in (ymin, xmin, ymax, xmax).
    feats = [64, 32, 16, 8, 4, 2, 1]
    caffe_priors = np.concatenate([
        np_prior_boxes(SSD512_PRIORS["min"][i], SSD512_PRIORS["max"][i],
                       SSD512_PRIORS["ratios"][i], SSD512_PRIORS["steps"][i], feats[i], 512)
        for i in range(7)])
    assert len(caffe_priors) == 24564
    np.testing.assert_allclose(net.anchors(), caffe_priors[:, [1, 0, 3, 2]], atol=1e-6)
    meta = checkpoints.read_metadata(report.output_path)
    assert meta["anchor_preset"] == "voc_caffe" and meta["num_classes"] == 5


# ---------------------------------------------------------------------------------------
# Errors, each naming the layer
# ---------------------------------------------------------------------------------------

def as_layers(weights):
    return [caffe_pb.CaffeLayer(name=n, type=layer_type(n), bottom=(), top=(), blobs=tuple(b),
                                param=None) for n, b in weights.items()]


@pytest.fixture(scope="module")
def zero_weights_300():
    """Real SSD300 shapes filled with zeros (cheap), for the error tests."""
    return {n: [np.zeros(s, np.float32) for s in shapes]
            for n, shapes in caffe_blob_table("ssd_300_vgg", 21).items()}


def convert_error(weights, shapes, model="ssd_300_vgg"):
    with pytest.raises(convert.CaffeConversionError) as info:
        convert.convert_weights(as_layers(weights), shapes, model, source="m.caffemodel")
    return str(info.value)


def test_zero_weights_convert(zero_weights_300, var_shapes):
    values = convert.convert_weights(as_layers(zero_weights_300), var_shapes["ssd_300_vgg"],
                                         "ssd_300_vgg")
    assert set(values) == set(var_shapes["ssd_300_vgg"])
    assert all(values[k].shape == var_shapes["ssd_300_vgg"][k] for k in values)


def test_wrong_shape_names_layer(zero_weights_300, var_shapes):
    weights = dict(zero_weights_300)
    weights["conv5_1"] = [np.zeros((512, 256, 3, 3), np.float32), np.zeros(512, np.float32)]
    msg = convert_error(weights, var_shapes["ssd_300_vgg"])
    assert msg == ("m.caffemodel: layer 'conv5_1' blob 0 has shape [512, 256, 3, 3], but "
                   "ssd_300_vgg/conv5/conv5_1/weights needs [512, 512, 3, 3] (OIHW; TF HWIO "
                   "[3, 3, 512, 512])")
    weights = dict(zero_weights_300)
    weights["conv4_3_norm"] = [np.zeros(1, np.float32)]   # channel_shared: true
    msg = convert_error(weights, var_shapes["ssd_300_vgg"])
    assert "layer 'conv4_3_norm' blob 0 has shape [1], but " \
           "ssd_300_vgg/block4_box/L2Normalization/gamma needs [512]" in msg


def test_missing_unused_duplicate_and_biasless_layers(zero_weights_300, var_shapes):
    weights = dict(zero_weights_300)
    del weights["conv9_2_mbox_conf"]
    msg = convert_error(weights, var_shapes["ssd_300_vgg"])
    assert msg == ("m.caffemodel: missing layer 'conv9_2_mbox_conf' (blobs [84, 256, 3, 3], "
                   "[84]) for ssd_300_vgg/block11_box/conv_cls")

    weights = dict(zero_weights_300)
    weights["conv_extra"] = [np.zeros((8, 4, 1, 1), np.float32)]
    msg = convert_error(weights, var_shapes["ssd_300_vgg"])
    assert msg == ("m.caffemodel: layer 'conv_extra' (Convolution, blobs [8, 4, 1, 1]) has "
                   "weights but no counterpart in ssd_300_vgg")

    layers = as_layers(zero_weights_300) + as_layers({"fc7": zero_weights_300["fc7"]})
    with pytest.raises(convert.CaffeConversionError, match="layer 'fc7' appears twice"):
        convert.convert_weights(layers, var_shapes["ssd_300_vgg"], "ssd_300_vgg")

    weights = dict(zero_weights_300)
    weights["conv4_3_norm"] = weights["conv4_3_norm"] * 2
    assert convert_error(weights, var_shapes["ssd_300_vgg"]) == (
        "m.caffemodel: layer 'conv4_3_norm' has 2 blobs, but the TF net uses 1 "
        "(ssd_300_vgg/block4_box/L2Normalization/gamma)")

    weights = dict(zero_weights_300)
    weights["conv2_1"] = weights["conv2_1"][:1]
    msg = convert_error(weights, var_shapes["ssd_300_vgg"])
    assert "layer 'conv2_1' has 1 blob(s), but ssd_300_vgg/conv2/conv2_1/biases needs blob 1" in msg


def test_other_ssd_size_is_named(var_shapes):
    zeros512 = {n: [np.zeros(s, np.float32) for s in shapes]
                for n, shapes in caffe_blob_table("ssd_512_vgg", 21).items()}
    msg = convert_error(zeros512, var_shapes["ssd_300_vgg"])
    assert msg.startswith("m.caffemodel: looks like an SSD512 model (it has layer conv10_2), "
                          "not ssd_300_vgg; ")
    assert "layer 'conv10_2' (Convolution, blobs [256, 128, 4, 4], [256]) has weights" in msg


def test_legacy_bias_shape_accepted_but_not_a_matrix(zero_weights_300, var_shapes):
    weights = dict(zero_weights_300)
    weights["fc7"] = [weights["fc7"][0], np.arange(1024, dtype=np.float32).reshape(1, 1, 1, 1024)]
    values = convert.convert_weights(as_layers(weights), var_shapes["ssd_300_vgg"],
                                         "ssd_300_vgg")
    np.testing.assert_array_equal(values["ssd_300_vgg/conv7/biases"], np.arange(1024))
    weights["fc7"] = [weights["fc7"][0], np.zeros((2, 512), np.float32)]
    assert "layer 'fc7' blob 1 has shape [2, 512]" in convert_error(weights,
                                                                     var_shapes["ssd_300_vgg"])


@pytest.mark.slow
def test_script_errors_are_one_line_with_exit_codes(tmp_path):
    bad = tmp_path / "bad.caffemodel"
    caffe_pb.write_caffemodel(bad, [("conv1_1", "Convolution",
                                     [np.zeros((64, 4, 3, 3), np.float32), np.zeros(64)])])
    proc = run_script("--model_name=ssd_300_vgg", f"--caffemodel_path={bad}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"caffe_to_tensorflow.py: error: {bad}: ")
    assert "layer 'conv1_1' blob 0 has shape [64, 4, 3, 3]" in last
    assert "missing 35 layers: conv1_2, conv2_1, " in last and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "bad.ckpt.index")

    text = tmp_path / "deploy.prototxt"
    text.write_text(deploy_prototxt("ssd_300_vgg", 21))
    proc = run_script(f"--caffemodel_path={text}")
    assert proc.returncode == 1 and "not a binary Caffe NetParameter" in proc.stderr

    for args, needle in [
        ([], "--caffemodel_path is required"),
        ([f"--caffemodel_path={tmp_path / 'none.caffemodel'}"], "none.caffemodel: no such file"),
        ([f"--caffemodel_path={bad}", "--model_name=ssd_999"], "--model_name=ssd_999: not a Caffe "
                                                               "SSD network; valid names: "
                                                               "ssd_300_vgg, ssd_512_vgg"),
        ([f"--caffemodel_path={bad}", "--num_classes=1"], "--num_classes=1: must be >= 2"),
        ([f"--caffemodel_path={bad}", "--num_classes=x"], "--num_classes=x"),
        ([f"--caffemodel_path={bad}", "--verify=/no/such.npz"], "--verify=/no/such.npz: no such"),
    ]:
        proc = run_script(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


@pytest.mark.slow
def test_script_help_exits_0():
    proc = run_script("--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for flag in ("--caffemodel_path", "--model_name", "--num_classes", "--output_path",
                 "--prototxt", "--verify"):
        assert flag in out, flag
    assert "Traceback" not in out


# ---------------------------------------------------------------------------------------
# PriorBox parameters -> anchors
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratios, flip, expected", [
    ([2], True, (2.0, 0.5)),
    ([2, 3], True, (2.0, 0.5, 3.0, 1 / 3)),
    ([2], False, (2.0,)),
    ([1, 2, 2.0000001, 0.5], True, (2.0, 0.5)),   # 1 and near-duplicates are skipped
    ([], True, ()),
])
def test_aspect_ratio_expansion(ratios, flip, expected):
    assert convert._expand_aspect_ratios(ratios, flip) == pytest.approx(expected)


def parse_text(tmp_path, text, name="deploy.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return caffe_pb.parse_prototxt(path)


@pytest.mark.parametrize("model, priors, preset, sizes", [
    ("ssd_300_vgg", SSD300_PRIORS, "voc",
     ((30, 60), (60, 111), (111, 162), (162, 213), (213, 264), (264, 315))),
    ("ssd_300_vgg", dict(SSD300_PRIORS, min=[21, 45, 99, 153, 207, 261],
                         max=[45, 99, 153, 207, 261, 315]), "coco_ft",
     ((21, 45), (45, 99), (99, 153), (153, 207), (207, 261), (261, 315))),
    ("ssd_300_vgg", dict(SSD300_PRIORS, min=[30.9, 60, 111, 162, 213, 264]), "voc",
     ((30, 60), (60, 111), (111, 162), (162, 213), (213, 264), (264, 315))),
    ("ssd_300_vgg", dict(SSD300_PRIORS, min=[25, 60, 111, 162, 213, 264]), "custom",
     ((25, 60), (60, 111), (111, 162), (162, 213), (213, 264), (264, 315))),
    ("ssd_512_vgg", SSD512_PRIORS, "voc_caffe",
     ((35, 76), (76, 153), (153, 230), (230, 307), (307, 384), (384, 460), (460, 537))),
    # The SSD512 COCO model's priors (4%, then 10%..90% of 512), truncated by Caffe.
    ("ssd_512_vgg", dict(SSD512_PRIORS, min=[20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8],
                         max=[51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]),
     "coco_ft_caffe",
     ((20, 51), (51, 133), (133, 215), (215, 296), (296, 378), (378, 460), (460, 542))),
])
def test_prototxt_priorboxes_to_params(tmp_path, model, priors, preset, sizes):
    net_param = parse_text(tmp_path, deploy_prototxt(model, 21, priors=priors))
    base = nets_factory.get_network(model).default_params
    specs = convert.prior_box_specs(net_param, source="deploy.prototxt")
    params = convert.anchor_params_from_prior_boxes(base, specs)
    assert params.anchor_sizes == sizes and params.anchor_preset == preset
    assert params.anchor_steps == tuple(priors["steps"])
    assert params.anchor_ratios == base.anchor_ratios
    assert params.anchor_offset == 0.5 and params.prior_scaling == (0.1, 0.1, 0.2, 0.2)
    # The net built from these params has Caffe's priors.
    feats = [s[0] for s in params.feat_shapes]
    img = params.img_shape[0]
    caffe_priors = np.concatenate([
        np_prior_boxes(priors["min"][i], priors["max"][i], priors["ratios"][i],
                       priors["steps"][i], feats[i], img) for i in range(len(feats))])
    from nets import ssd_params
    np.testing.assert_allclose(ssd_params.anchors(params), caffe_priors[:, [1, 0, 3, 2]],
                               atol=1e-6)


def test_priorbox_errors_name_the_layer(tmp_path):
    base = nets_factory.get_network("ssd_300_vgg").default_params

    def params_for(text):
        specs = convert.prior_box_specs(parse_text(tmp_path, text), source="d.prototxt")
        return convert.anchor_params_from_prior_boxes(base, specs, source="d.prototxt")

    good = deploy_prototxt("ssd_300_vgg", 21)
    missing = "\n".join(l for l in good.splitlines() if "conv8_2_mbox_priorbox" not in l)
    with pytest.raises(convert.CaffeConversionError,
                       match=r"d.prototxt: no PriorBox layer reads 'conv8_2' \(feature layer "
                             r"block10\)"):
        params_for(missing)
    two_min = good.replace("min_size: 60 max_size: 111", "min_size: 60 min_size: 70 max_size: 111")
    with pytest.raises(convert.CaffeConversionError,
                       match="PriorBox layer 'fc7_mbox_priorbox' has 2 min_size and 1 max_size"):
        params_for(two_min)
    img512 = good.replace("step: 8 ", "step: 8 img_size: 512 ")
    with pytest.raises(convert.CaffeConversionError,
                       match="'conv4_3_norm_mbox_priorbox' is for 512x512 images, the model for "
                             "300x300"):
        params_for(img512)
    offsets = good.replace("step: 300 offset: 0.5", "step: 300 offset: 0.25")
    with pytest.raises(convert.CaffeConversionError, match="offsets differ"):
        params_for(offsets)


def test_prototxt_for_other_input_size_and_class_count_mismatch(tmp_path, zero_weights_300):
    net_param = caffe_pb.NetParameter()
    layers = as_layers(zero_weights_300)
    proto512 = parse_text(tmp_path, deploy_prototxt("ssd_512_vgg", 21))
    with pytest.raises(convert.CaffeConversionError,
                       match="deploy.prototxt: input is 512x512, but ssd_300_vgg takes 300x300"):
        convert.build_params("ssd_300_vgg", net_param, layers, prototxt_net=proto512,
                                 prototxt_path="deploy.prototxt")
    with pytest.raises(convert.CaffeConversionError,
                       match="num_classes is 81, but layer 'conv4_3_norm_mbox_conf' has 84 "
                             "outputs = 4 anchors x 21 classes"):
        convert.build_params("ssd_300_vgg", net_param, layers, num_classes=81)
    params, source = convert.build_params("ssd_300_vgg", net_param, layers)
    assert params.num_classes == 21 and "defaults" in source


def test_geometry_check_flags_a_different_dilation(tmp_path):
    base = nets_factory.get_network("ssd_300_vgg").default_params
    good = parse_text(tmp_path, deploy_prototxt("ssd_300_vgg", 21))
    assert convert.check_conv_geometry(caffe_pb.net_layers(good), base) == []
    bad = parse_text(tmp_path, deploy_prototxt("ssd_300_vgg", 21).replace(
        "pad: 6 kernel_size: 3 stride: 1 dilation: 6", "pad: 3 kernel_size: 3 stride: 1 "
        "dilation: 3"), name="bad.prototxt")
    issues = convert.check_conv_geometry(caffe_pb.net_layers(bad), base, source="bad")
    assert issues == ["bad: layer 'fc6' has stride 1, pad 3, dilation 3; the TF net uses 1, 6, 6"]


def test_prototxt_wins_over_stored_priorboxes_with_a_warning(tmp_path, zero_weights_300, caplog):
    layers = as_layers(zero_weights_300)
    coco = dict(SSD300_PRIORS, min=[21, 45, 99, 153, 207, 261], max=[45, 99, 153, 207, 261, 315])
    stored = caffe_pb.NetParameter()
    stored.layer.extend(prior_box_layers("ssd_300_vgg", coco))
    # Without a prototxt the caffemodel's own PriorBox layers are used, silently.
    params, source = convert.build_params("ssd_300_vgg", stored, layers,
                                              caffemodel_path="m.caffemodel")
    assert params.anchor_preset == "coco_ft" and source == "m.caffemodel (its PriorBox layers)"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # A prototxt with other priors wins, and the disagreement is logged.
    proto = parse_text(tmp_path, deploy_prototxt("ssd_300_vgg", 21))
    params, source = convert.build_params("ssd_300_vgg", stored, layers, prototxt_net=proto,
                                              caffemodel_path="m.caffemodel",
                                              prototxt_path="deploy.prototxt")
    assert params.anchor_preset == "voc" and source == "deploy.prototxt"
    assert any("differ from those stored in m.caffemodel" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------
# The published COCO models: 81 classes, COCO priors (ssd_coco.py: 7%, then 15%..90%)
# ---------------------------------------------------------------------------------------

SSD300_COCO_PRIORS = dict(SSD300_PRIORS, min=[21, 45, 99, 153, 207, 261],
                          max=[45, 99, 153, 207, 261, 315])


@pytest.mark.slow
def test_coco_model_converts_with_81_classes_and_its_priors(tmp_path):
    num_classes = 81
    weights = random_caffe_weights("ssd_300_vgg", num_classes, seed=5)
    model_path = tmp_path / "VGG_coco_SSD_300x300_iter_400000.caffemodel"
    write_model(model_path, weights)
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(deploy_prototxt("ssd_300_vgg", num_classes, priors=SSD300_COCO_PRIORS))
    proc = run_script("--model_name=ssd_300_vgg", "--num_classes=81",
                      f"--caffemodel_path={model_path}", f"--prototxt={prototxt}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = str(model_path).replace(".caffemodel", ".ckpt")
    meta = json.loads(open(ckpt + ".ssd.json").read())
    assert meta["model_name"] == "ssd_300_vgg" and meta["num_classes"] == 81
    assert meta["anchor_preset"] == "coco_ft"
    assert meta["anchor_sizes"] == [[21, 45], [45, 99], [99, 153], [153, 207], [207, 261],
                                    [261, 315]]
    assert meta["anchor_steps"] == [8, 16, 32, 64, 100, 300]
    reader = tf.train.load_checkpoint(ckpt)
    conf = reader.get_tensor("ssd_300_vgg/block4_box/conv_cls/weights")
    assert conf.shape == (3, 3, 512, 4 * 81)
    np.testing.assert_array_equal(
        conf, expected_tf_value(weights["conv4_3_norm_mbox_conf"][0], "conv4_3_norm_mbox_conf"))
    # Rebuilt from the checkpoint alone (what eval does): 81 classes, the COCO anchors.
    model_name, params = configure.resolve_model(checkpoint=ckpt)
    assert params.num_classes == 81 and params.anchor_preset == "coco_ft"
    net = nets_factory.get_network(model_name)(params)
    net.load_checkpoint(ckpt)
    feats = [38, 19, 10, 5, 3, 1]
    caffe_priors = np.concatenate([
        np_prior_boxes(SSD300_COCO_PRIORS["min"][i], SSD300_COCO_PRIORS["max"][i],
                       SSD300_COCO_PRIORS["ratios"][i], SSD300_COCO_PRIORS["steps"][i],
                       feats[i], 300) for i in range(6)])
    np.testing.assert_allclose(net.anchors(), caffe_priors[:, [1, 0, 3, 2]], atol=1e-6)
    # A wrong --num_classes is refused with one line naming the layer.
    bad = run_script("--model_name=ssd_300_vgg", "--num_classes=21",
                     f"--caffemodel_path={model_path}", f"--prototxt={prototxt}",
                     f"--output_path={tmp_path / 'bad.ckpt'}")
    assert bad.returncode != 0 and "conv4_3_norm_mbox_conf" in bad.stderr
    assert "Traceback" not in bad.stderr
