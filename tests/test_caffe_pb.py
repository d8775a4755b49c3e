"""caffe_convert/caffe_pb.py: the minimal caffe.proto and the .caffemodel / .prototxt readers.

The field numbers are checked against bytes encoded by hand here (protobuf wire format:
tag = field_number << 3 | wire_type), not against the schema itself, so a wrong number in
the schema fails these tests.
"""
import struct

import numpy as np
import pytest

from caffe_convert import caffe_pb


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def _floats(values, fmt="<f") -> bytes:
    return b"".join(struct.pack(fmt, v) for v in values)


def test_varint_helper_golden():
    # protobuf documentation example: 300 = 0xAC 0x02; layer field 100 -> tag 802 = 0xA2 0x06.
    assert _varint(300) == b"\xac\x02"
    assert _varint(100 << 3 | 2) == b"\xa2\x06"


def test_blob_with_shape_and_packed_data_v2_layer(tmp_path):
    values = [1.5, -2.0, 3.25, 0.0, 7.0, -0.5]
    shape = _len_field(1, _varint(2) + _varint(3))              # BlobShape.dim = 1, packed
    blob = _len_field(7, shape) + _len_field(5, _floats(values))  # BlobProto.shape=7, data=5
    layer = (_len_field(1, b"conv1_1") + _len_field(2, b"Convolution")  # name=1, type=2
             + _len_field(3, b"data") + _len_field(4, b"conv1_1")        # bottom=3, top=4
             + _len_field(7, blob))                                       # blobs=7
    net = _len_field(1, b"tiny") + _len_field(100, layer)        # NetParameter.name=1, layer=100
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(net)

    param, layers = caffe_pb.read_caffemodel(path)
    assert param.name == "tiny"
    assert len(layers) == 1
    layer0 = layers[0]
    assert (layer0.name, layer0.type, layer0.bottom, layer0.top, layer0.v1) == (
        "conv1_1", "Convolution", ("data",), ("conv1_1",), False)
    assert layer0.blobs[0].dtype == np.float32
    np.testing.assert_array_equal(layer0.blobs[0], np.array(values, np.float32).reshape(2, 3))


def test_v1_layer_legacy_shape_and_double_data(tmp_path):
    values = [0.125, 2.5, -4.0, 8.0]
    blob = (_varint_field(1, 1) + _varint_field(2, 2) + _varint_field(3, 1)   # num, channels,
            + _varint_field(4, 2)                                            # height, width
            + _len_field(8, _floats(values, "<d")))                          # double_data = 8
    layer = (_len_field(4, b"fc7") + _varint_field(5, 4)        # V1: name=4, type=5 CONVOLUTION=4
             + _len_field(6, blob))                             # blobs=6
    net = _len_field(2, layer)                                  # NetParameter.layers = 2
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net)

    _, layers = caffe_pb.read_caffemodel(path)
    assert [(l.name, l.type, l.v1) for l in layers] == [("fc7", "Convolution", True)]
    np.testing.assert_array_equal(layers[0].blobs[0],
                                  np.array(values, np.float32).reshape(1, 2, 1, 2))


def test_prior_box_and_normalize_params_binary_field_numbers(tmp_path):
    # PriorBoxParameter: min_size=1, max_size=2, aspect_ratio=3 (floats, wire type 5),
    # flip=4, clip=5, variance=6, step=10, offset=13; LayerParameter.prior_box_param = 203,
    # norm_param = 206 (NormalizeParameter.across_spatial=1, channel_shared=3).
    def f32(number, v):
        return _varint(number << 3 | 5) + struct.pack("<f", v)

    prior = (f32(1, 35.84) + f32(2, 76.8) + f32(3, 2.0) + _varint_field(4, 1)
             + _varint_field(5, 0) + f32(6, 0.1) + f32(6, 0.1) + f32(6, 0.2) + f32(6, 0.2)
             + f32(10, 8.0) + f32(13, 0.5))
    norm = _varint_field(1, 0) + _varint_field(3, 0)
    layers = (_len_field(100, _len_field(1, b"p") + _len_field(2, b"PriorBox")
                         + _len_field(3, b"conv4_3_norm") + _len_field(203, prior))
              + _len_field(100, _len_field(1, b"conv4_3_norm") + _len_field(2, b"Normalize")
                           + _len_field(206, norm)))
    path = tmp_path / "p.caffemodel"
    path.write_bytes(layers)
    net = caffe_pb.parse_caffemodel(path)
    p = net.layer[0].prior_box_param
    assert list(p.min_size) == pytest.approx([35.84]) and list(p.max_size) == pytest.approx([76.8])
    assert list(p.aspect_ratio) == [2.0] and p.flip and not p.clip
    assert list(p.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert p.step == 8.0 and p.offset == 0.5
    n = net.layer[1].norm_param
    assert n.HasField("across_spatial") and not n.across_spatial and not n.channel_shared


def test_unknown_fields_are_skipped_in_binary(tmp_path):
    # A field this schema does not declare (LayerParameter.pooling_param = 121) must not stop
    # the parse, and the declared fields after it must still be read.
    layer = (_len_field(1, b"pool1") + _len_field(121, _varint_field(1, 0) + _varint_field(2, 2))
             + _len_field(2, b"Pooling"))
    path = tmp_path / "u.caffemodel"
    path.write_bytes(_len_field(100, layer))
    _, layers = caffe_pb.read_caffemodel(path)
    assert [(l.name, l.type, l.blobs) for l in layers] == [("pool1", "Pooling", ())]


def test_writer_round_trip_all_forms(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal(8).astype(np.float32)
    for v1, legacy, double in [(False, False, False), ({"Convolution"}, True, False),
                               (True, False, True)]:
        path = tmp_path / f"rt_{bool(v1)}_{legacy}_{double}.caffemodel"
        specs = [("conv1_1", "Convolution", [w, b])]
        if v1 is not True:
            specs.append(("conv4_3_norm", "Normalize", [g]))
        caffe_pb.write_caffemodel(path, specs, v1=v1, legacy_shape=legacy, double=double)
        _, layers = caffe_pb.read_caffemodel(path)
        by_name = {l.name: l for l in layers}
        assert by_name["conv1_1"].v1 == bool(v1)
        np.testing.assert_array_equal(by_name["conv1_1"].blobs[0], w)
        np.testing.assert_array_equal(by_name["conv1_1"].blobs[1].reshape(-1), b)
        if legacy:
            assert by_name["conv1_1"].blobs[1].shape == (1, 1, 1, 4)
        if v1 is not True:
            assert by_name["conv4_3_norm"].type == "Normalize"
            assert not by_name["conv4_3_norm"].v1
            np.testing.assert_array_equal(by_name["conv4_3_norm"].blobs[0].reshape(-1), g)


DEPLOY_SNIPPET = """
# A part of an SSD deploy.prototxt, with parameters the minimal schema does not declare.
name: "VGG_VOC0712_SSD_300x300_deploy"
input: "data"
input_shape { dim: 1 dim: 3 dim: 300 dim: 300 }
layer {
  name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param { num_output: 64 pad: 1 kernel_size: 3
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } }
}
layer { name: "pool1" type: "Pooling" bottom: "conv1_1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "Convolution" bottom: "pool5" top: "fc6"
        convolution_param { num_output: 1024 pad: 6 kernel_size: 3 dilation: 6 } }
layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 }
               channel_shared: false } }
layer { name: "conv4_3_norm_mbox_priorbox" type: "PriorBox"
  bottom: "conv4_3_norm" bottom: "data" top: "conv4_3_norm_mbox_priorbox"
  prior_box_param { min_size: 30.0 max_size: 60.0 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" top: "detection_out"
  include { phase: TEST }
  detection_output_param { num_classes: 21 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 }
    save_output_param { label_map_file: "data/VOC0712/labelmap_voc.prototxt" }
    code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01 } }
"""


def test_prototxt_parse_skips_unknown_fields(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(DEPLOY_SNIPPET)
    net = caffe_pb.parse_prototxt(path)
    assert caffe_pb.net_input_shape(net) == (1, 3, 300, 300)
    layers = caffe_pb.net_layers(net, with_blobs=False)
    assert [(l.name, l.type) for l in layers] == [
        ("conv1_1", "Convolution"), ("pool1", "Pooling"), ("fc6", "Convolution"),
        ("conv4_3_norm", "Normalize"), ("conv4_3_norm_mbox_priorbox", "PriorBox"),
        ("detection_out", "DetectionOutput")]
    conv = net.layer[2].convolution_param
    assert (conv.num_output, list(conv.pad), list(conv.kernel_size), list(conv.dilation)) == (
        1024, [6], [3], [6])
    assert not net.layer[3].norm_param.channel_shared
    p = net.layer[4].prior_box_param
    assert (list(p.min_size), list(p.max_size), list(p.aspect_ratio), p.step) == (
        [30.0], [60.0], [2.0], 8.0)


def test_prototxt_v1_layers_form(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text('name: "old" input: "data" input_dim: 1 input_dim: 3 input_dim: 512 '
                    'input_dim: 512\nlayers { name: "conv1_1" type: CONVOLUTION bottom: "data" '
                    'top: "conv1_1" blobs_lr: 1 convolution_param { num_output: 64 } }\n'
                    'layers { name: "relu1_1" type: RELU bottom: "conv1_1" top: "conv1_1" }\n')
    net = caffe_pb.parse_prototxt(path)
    assert caffe_pb.net_input_shape(net) == (1, 3, 512, 512)
    assert [(l.name, l.type, l.v1) for l in caffe_pb.net_layers(net)] == [
        ("conv1_1", "Convolution", True), ("relu1_1", "ReLU", True)]


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.caffemodel"
    with pytest.raises(caffe_pb.CaffeFormatError, match="nope.caffemodel: no such file"):
        caffe_pb.read_caffemodel(missing)

    text = tmp_path / "deploy.prototxt"
    text.write_text(DEPLOY_SNIPPET)
    with pytest.raises(caffe_pb.CaffeFormatError, match=r"deploy.prototxt: not a binary .*prototxt"):
        caffe_pb.read_caffemodel(text)

    garbage = tmp_path / "junk.caffemodel"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(caffe_pb.CaffeFormatError, match="junk.caffemodel: not a binary"):
        caffe_pb.read_caffemodel(garbage)

    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(caffe_pb.CaffeFormatError, match="empty.caffemodel: .*without any layer"):
        caffe_pb.read_caffemodel(empty)

    bad_text = tmp_path / "bad.prototxt"
    bad_text.write_text("layer { name: 'x' ")
    with pytest.raises(caffe_pb.CaffeFormatError, match="bad.prototxt: not a valid"):
        caffe_pb.parse_prototxt(bad_text)


def test_blob_count_mismatch_names_layer(tmp_path):
    blob = _len_field(7, _len_field(1, _varint(2) + _varint(3))) + _len_field(5, _floats([1.0] * 5))
    layer = _len_field(1, b"conv2_1") + _len_field(2, b"Convolution") + _len_field(7, blob)
    path = tmp_path / "short.caffemodel"
    path.write_bytes(_len_field(100, layer))
    with pytest.raises(caffe_pb.CaffeFormatError,
                       match=r"short.caffemodel: layer 'conv2_1' blob 0: shape \[2, 3\] needs 6 "
                             r"values but the blob holds 5"):
        caffe_pb.read_caffemodel(path)


def test_schema_is_private_pool():
    # The schema must not register 'caffe.NetParameter' in the default pool, where a real
    # caffe_pb2 imported by the user would collide with it.
    from google.protobuf import descriptor_pool
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("caffe.NetParameter")
