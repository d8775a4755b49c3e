"""A minimal caffe.proto, built at import time, and readers for .caffemodel / .prototxt files.

No Caffe install and no protoc are needed: the schema below is declared in Python as a
``FileDescriptorProto``, added to a private ``DescriptorPool`` (so it never clashes with a real
``caffe_pb2`` imported in the same process) and turned into message classes with
``message_factory.GetMessageClass``.

Only the messages and fields this project reads are declared. Every field number is the one of
Caffe's ``src/caffe/proto/caffe.proto`` (BVLC Caffe; the SSD-only messages ``PriorBoxParameter``
and ``NormalizeParameter`` and their ``LayerParameter`` slots 203/206 from Wei Liu's SSD fork),
so real files parse: binary parsing keeps undeclared fields as unknown fields, and text parsing
skips them (``allow_unknown_field=True``).

Both layouts of ``NetParameter`` are read: ``layer`` (``LayerParameter``, field 100, the form
every published SSD model uses) and the deprecated ``layers`` (``V1LayerParameter``, field 2,
whose layer type is an enum). Blobs may carry their shape in ``shape`` or in the legacy
``num/channels/height/width`` fields, and their values in ``data`` (float) or ``double_data``.

This module needs only NumPy and protobuf (no TensorFlow).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format

__all__ = [
    "CaffeFormatError",
    "CaffeLayer",
    "BlobShape",
    "BlobProto",
    "NetParameter",
    "LayerParameter",
    "V1LayerParameter",
    "PriorBoxParameter",
    "NormalizeParameter",
    "blob_to_array",
    "array_to_blob",
    "parse_caffemodel",
    "parse_prototxt",
    "net_layers",
    "net_input_shape",
    "read_caffemodel",
    "write_caffemodel",
]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_SCALAR_TYPES = {
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
}

# V1LayerParameter.LayerType, numbers from caffe.proto. Only the ones with weights matter for
# conversion, but all are declared so that any V1 prototxt parses.
_V1_LAYER_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6,
    "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8,
    "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18,
    "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}
# The V2 type string of the V1 enum values (what Caffe's upgrade_proto.cpp produces).
_V1_TYPE_NAMES = {
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "INNER_PRODUCT": "InnerProduct", "POOLING": "Pooling", "RELU": "ReLU", "DATA": "Data",
    "CONCAT": "Concat", "FLATTEN": "Flatten", "SOFTMAX": "Softmax", "DROPOUT": "Dropout",
}

# (message name, [(field name, number, label, type, extra)]) where type is a scalar type name,
# a message name (".caffe.X"), or "enum:.caffe.X"; extra holds "packed" and/or a default.
_MESSAGES: list[tuple[str, list[tuple]]] = [
    ("BlobShape", [("dim", 1, _REP, "int64", {"packed": True})]),
    ("BlobProto", [
        ("shape", 7, _OPT, ".caffe.BlobShape", {}),
        ("data", 5, _REP, "float", {"packed": True}),
        ("diff", 6, _REP, "float", {"packed": True}),
        ("double_data", 8, _REP, "double", {"packed": True}),
        ("double_diff", 9, _REP, "double", {"packed": True}),
        # 4-D legacy shape, deprecated in Caffe in favour of `shape`.
        ("num", 1, _OPT, "int32", {}),
        ("channels", 2, _OPT, "int32", {}),
        ("height", 3, _OPT, "int32", {}),
        ("width", 4, _OPT, "int32", {}),
    ]),
    ("NetParameter", [
        ("name", 1, _OPT, "string", {}),
        ("input", 3, _REP, "string", {}),
        ("input_shape", 8, _REP, ".caffe.BlobShape", {}),
        ("input_dim", 4, _REP, "int32", {}),
        ("layer", 100, _REP, ".caffe.LayerParameter", {}),
        ("layers", 2, _REP, ".caffe.V1LayerParameter", {}),
    ]),
    ("LayerParameter", [
        ("name", 1, _OPT, "string", {}),
        ("type", 2, _OPT, "string", {}),
        ("bottom", 3, _REP, "string", {}),
        ("top", 4, _REP, "string", {}),
        ("blobs", 7, _REP, ".caffe.BlobProto", {}),
        ("convolution_param", 106, _OPT, ".caffe.ConvolutionParameter", {}),
        ("input_param", 143, _OPT, ".caffe.InputParameter", {}),
        # SSD fork (weiliu89/caffe, branch ssd).
        ("prior_box_param", 203, _OPT, ".caffe.PriorBoxParameter", {}),
        ("norm_param", 206, _OPT, ".caffe.NormalizeParameter", {}),
    ]),
    ("V1LayerParameter", [
        ("bottom", 2, _REP, "string", {}),
        ("top", 3, _REP, "string", {}),
        ("name", 4, _OPT, "string", {}),
        ("type", 5, _OPT, "enum:.caffe.V1LayerParameter.LayerType", {}),
        ("blobs", 6, _REP, ".caffe.BlobProto", {}),
        ("convolution_param", 10, _OPT, ".caffe.ConvolutionParameter", {}),
    ]),
    ("InputParameter", [("shape", 1, _REP, ".caffe.BlobShape", {})]),
    ("ConvolutionParameter", [
        ("num_output", 1, _OPT, "uint32", {}),
        ("bias_term", 2, _OPT, "bool", {"default": "true"}),
        ("pad", 3, _REP, "uint32", {}),
        ("kernel_size", 4, _REP, "uint32", {}),
        ("stride", 6, _REP, "uint32", {}),
        ("dilation", 18, _REP, "uint32", {}),
        ("pad_h", 9, _OPT, "uint32", {}),
        ("pad_w", 10, _OPT, "uint32", {}),
        ("kernel_h", 11, _OPT, "uint32", {}),
        ("kernel_w", 12, _OPT, "uint32", {}),
        ("stride_h", 13, _OPT, "uint32", {}),
        ("stride_w", 14, _OPT, "uint32", {}),
        ("group", 5, _OPT, "uint32", {"default": "1"}),
    ]),
    ("PriorBoxParameter", [
        # Sizes in pixels of the network input. Declared float, but Caffe's PriorBox layer
        # casts them to int when it builds the boxes (see caffe_convert/convert.py).
        ("min_size", 1, _REP, "float", {}),
        ("max_size", 2, _REP, "float", {}),
        ("aspect_ratio", 3, _REP, "float", {}),
        ("flip", 4, _OPT, "bool", {"default": "true"}),
        ("clip", 5, _OPT, "bool", {"default": "false"}),
        ("variance", 6, _REP, "float", {}),
        ("img_size", 7, _OPT, "uint32", {}),
        ("img_h", 8, _OPT, "uint32", {}),
        ("img_w", 9, _OPT, "uint32", {}),
        ("step", 10, _OPT, "float", {}),
        ("step_h", 11, _OPT, "float", {}),
        ("step_w", 12, _OPT, "float", {}),
        ("offset", 13, _OPT, "float", {"default": "0.5"}),
    ]),
    ("NormalizeParameter", [
        ("across_spatial", 1, _OPT, "bool", {"default": "true"}),
        ("channel_shared", 3, _OPT, "bool", {"default": "true"}),
        ("eps", 4, _OPT, "float", {"default": "1e-10"}),
    ]),
]


def _build_pool() -> descriptor_pool.DescriptorPool:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="ssd_tf2/caffe_minimal.proto", package="caffe", syntax="proto2")
    for msg_name, fields in _MESSAGES:
        msg = fdp.message_type.add(name=msg_name)
        if msg_name == "V1LayerParameter":
            enum = msg.enum_type.add(name="LayerType")
            for value_name, number in _V1_LAYER_TYPES.items():
                enum.value.add(name=value_name, number=number)
        for name, number, label, ftype, extra in fields:
            field = msg.field.add(name=name, number=number, label=label)
            if ftype in _SCALAR_TYPES:
                field.type = _SCALAR_TYPES[ftype]
            elif ftype.startswith("enum:"):
                field.type = _F.TYPE_ENUM
                field.type_name = ftype[len("enum:"):]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = ftype
            if extra.get("packed"):
                field.options.packed = True
            if "default" in extra:
                field.default_value = extra["default"]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool


_POOL = _build_pool()


def _message_class(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"caffe.{name}"))


BlobShape = _message_class("BlobShape")
BlobProto = _message_class("BlobProto")
NetParameter = _message_class("NetParameter")
LayerParameter = _message_class("LayerParameter")
V1LayerParameter = _message_class("V1LayerParameter")
ConvolutionParameter = _message_class("ConvolutionParameter")
PriorBoxParameter = _message_class("PriorBoxParameter")
NormalizeParameter = _message_class("NormalizeParameter")


class CaffeFormatError(ValueError):
    """A Caffe file that cannot be read (the message names the file and the problem)."""


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
    """One layer of a Caffe net, the same for the `layer` and the V1 `layers` forms.

    Attributes:
      name: the layer name (what conversion maps by).
      type: the V2 type string, e.g. "Convolution", "Normalize", "PriorBox" (V1 enum values are
        translated: CONVOLUTION -> "Convolution").
      bottom, top: blob names.
      blobs: the learned parameters as float32 arrays in Caffe's own shapes (a convolution's
        weights are (out, in, kh, kw), i.e. OIHW).
      param: the underlying LayerParameter / V1LayerParameter message (for type-specific
        parameters such as ``prior_box_param``).
      v1: True when the layer came from the deprecated ``layers`` field.
    """

    name: str
    type: str
    bottom: tuple[str, ...]
    top: tuple[str, ...]
    blobs: tuple[np.ndarray, ...]
    param: Any
    v1: bool = False


def blob_to_array(blob: Any, where: str = "blob") -> np.ndarray:
    """Return a BlobProto's values as a float32 array of the blob's Caffe shape.

    The shape comes from ``shape.dim`` when present, else from the legacy 4-D
    ``(num, channels, height, width)``; the values from ``data`` or else ``double_data``.
    ``where`` names the blob in error messages.
    """
    if blob.HasField("shape"):
        dims = tuple(int(d) for d in blob.shape.dim)
    else:
        dims = (blob.num, blob.channels, blob.height, blob.width)
    if len(blob.data):
        values = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.zeros((0,), np.float32)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if any(d < 0 for d in dims):
        raise CaffeFormatError(f"{where}: negative dimension in shape {list(dims)}")
    if values.size != count:
        raise CaffeFormatError(
            f"{where}: shape {list(dims)} needs {count} values but the blob holds {values.size}")
    return values.reshape(dims)


def array_to_blob(array: np.ndarray, legacy_shape: bool = False, double: bool = False) -> Any:
    """Make a BlobProto from an array (Caffe's own shape, e.g. OIHW weights).

    ``legacy_shape`` writes num/channels/height/width (the array is left-padded to 4-D with
    ones, as old Caffe did for biases: (1, 1, 1, n)) instead of ``shape``; ``double`` writes
    ``double_data`` instead of ``data``. Used by tests and benchmarks to make caffemodels.
    """
    array = np.asarray(array)
    blob = BlobProto()
    if legacy_shape:
        if array.ndim > 4:
            raise ValueError(f"a legacy blob shape has at most 4 dims, got {array.shape}")
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(int(d) for d in array.shape)
    # Append the values as one packed field in wire format (tag, length, little-endian
    # values): the same bytes Caffe writes, and ~20x faster than extending the repeated
    # field from a Python list for 100 MB models.
    number, dtype = (8, "<f8") if double else (5, "<f4")
    payload = np.ascontiguousarray(array, dtype=dtype).tobytes()
    if payload:
        blob.MergeFromString(_varint(number << 3 | 2) + _varint(len(payload)) + payload)
    return blob


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _check_readable(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeFormatError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CaffeFormatError(f"{path}: is a directory, expected a file")
    return path


def parse_caffemodel(path: str | os.PathLike) -> Any:
    """Parse a binary .caffemodel into a NetParameter message.

    Raises CaffeFormatError (naming the file) when the file is missing, is not a binary
    NetParameter, or holds no layers at all.
    """
    path = _check_readable(path)
    with open(path, "rb") as f:
        data = f.read()
    net = NetParameter()
    try:
        net.ParseFromString(data)
    except message.DecodeError as e:
        hint = " (this looks like a text .prototxt)" if data[:200].lstrip().startswith(
            (b"name", b"layer", b"input", b"#")) else ""
        raise CaffeFormatError(f"{path}: not a binary Caffe NetParameter (.caffemodel)"
                               f"{hint or ' (truncated or corrupt?)'}: {e}") from None
    if not net.layer and not net.layers:
        raise CaffeFormatError(f"{path}: a NetParameter without any layer; not a .caffemodel?")
    return net


def parse_prototxt(path: str | os.PathLike) -> Any:
    """Parse a text .prototxt (e.g. a model's deploy.prototxt) into a NetParameter message.

    Fields this minimal schema does not declare (pooling_param, detection_output_param, ...)
    are skipped.
    """
    path = _check_readable(path)
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    net = NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise CaffeFormatError(f"{path}: not a valid Caffe .prototxt: {e}") from None
    if not net.layer and not net.layers:
        raise CaffeFormatError(f"{path}: a NetParameter without any layer; not a .prototxt?")
    return net


def _v1_type_name(enum_value: int) -> str:
    enum = _POOL.FindEnumTypeByName("caffe.V1LayerParameter.LayerType")
    value = enum.values_by_number.get(enum_value)
    if value is None:
        return f"V1_TYPE_{enum_value}"
    return _V1_TYPE_NAMES.get(value.name, value.name)


def net_layers(net: Any, source: str = "net", with_blobs: bool = True) -> list[CaffeLayer]:
    """All layers of a NetParameter, the ``layer`` field first, then the V1 ``layers``.

    A file normally uses one of the two forms; both are accepted together because the V1 form
    has no type for SSD's Normalize/PriorBox layers. ``source`` names the file in errors.
    With ``with_blobs=False`` the blobs are not converted (faster when only parameters are read).
    """
    layers: list[CaffeLayer] = []
    for v1, entries in ((False, net.layer), (True, net.layers)):
        for index, layer in enumerate(entries):
            name = layer.name or f"<unnamed {'V1 ' if v1 else ''}layer #{index}>"
            type_name = _v1_type_name(layer.type) if v1 else layer.type
            blobs: tuple[np.ndarray, ...] = ()
            if with_blobs:
                blobs = tuple(
                    blob_to_array(b, where=f"{source}: layer '{name}' blob {i}")
                    for i, b in enumerate(layer.blobs))
            layers.append(CaffeLayer(name=name, type=type_name, bottom=tuple(layer.bottom),
                                     top=tuple(layer.top), blobs=blobs, param=layer, v1=v1))
    return layers


def net_input_shape(net: Any) -> tuple[int, ...] | None:
    """The (N, C, H, W) of the net's first input, from ``input_shape``, ``input_dim`` or an
    ``Input`` layer; None when the net does not say (e.g. a caffemodel with a data layer)."""
    if net.input_shape:
        return tuple(int(d) for d in net.input_shape[0].dim)
    if len(net.input_dim) >= 4:
        return tuple(int(d) for d in net.input_dim[:4])
    for layer in net.layer:
        if layer.type == "Input" and layer.input_param.shape:
            return tuple(int(d) for d in layer.input_param.shape[0].dim)
    return None


def read_caffemodel(path: str | os.PathLike) -> tuple[Any, list[CaffeLayer]]:
    """Parse a .caffemodel and return ``(net_parameter, layers)`` (see ``net_layers``)."""
    net = parse_caffemodel(path)
    return net, net_layers(net, source=os.fspath(path))


def _layer_type_to_v1(type_name: str) -> int:
    inverse = {v: k for k, v in _V1_TYPE_NAMES.items()}
    key = inverse.get(type_name, type_name.upper())
    if key not in _V1_LAYER_TYPES:
        raise ValueError(f"layer type {type_name!r} has no V1 (`layers`) form")
    return _V1_LAYER_TYPES[key]


def write_caffemodel(path: str | os.PathLike,
                     layers: Iterable[tuple[str, str, Sequence[np.ndarray]]],
                     name: str = "",
                     v1: bool | Iterable[str] = False,
                     legacy_shape: bool = False,
                     double: bool = False,
                     extra_layers: Sequence[Any] = ()) -> None:
    """Write a binary .caffemodel from ``(layer name, type, [blobs in Caffe shapes])``.

    ``v1=True`` writes every layer in the V1 ``layers`` form (types must have a V1 enum);
    an iterable of type names writes only layers of those types in V1 form (the rest, e.g.
    Normalize, which V1 cannot express, go to ``layer``). ``extra_layers`` are LayerParameter
    messages appended as is (e.g. PriorBox layers). For tests and benchmarks.
    """
    net = NetParameter(name=name)
    v1_types = None if isinstance(v1, bool) else set(v1)
    for layer_name, type_name, blobs in layers:
        as_v1 = v1 if v1_types is None else type_name in v1_types
        if as_v1:
            layer = net.layers.add(name=layer_name, type=_layer_type_to_v1(type_name))
        else:
            layer = net.layer.add(name=layer_name, type=type_name)
        for array in blobs:
            layer.blobs.append(array_to_blob(array, legacy_shape=legacy_shape, double=double))
    for extra in extra_layers:
        net.layer.append(extra)
    with open(os.fspath(path), "wb") as f:
        f.write(net.SerializeToString())
