"""The TFLite file: conversion (float32, float16 weights, int8), the finishing touches and the
checks that it runs on the built-in ops alone.

The converter reads a SavedModel of :meth:`deploy.graph.DetectorGraph.tflite_function` (the
path on which it fuses the ``experimental_implements`` function into
``TFLite_Detection_PostProcess``; the concrete-function path inlines it). Select TF ops
(Flex) are never enabled: a graph that needs one fails to convert instead of producing a file
that LiteRT cannot run. After conversion the outputs are put in the Object Detection API's
order (boxes, classes, scores, count) with its tensor names, and the export's metadata JSON is
stored in the model's ``metadata`` table under :data:`METADATA_NAME`.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as lite_convert
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from deploy.graph import TFLITE_OUTPUT_KEYS, TFLITE_POSTPROCESS_OP, DetectorGraph

QUANTIZATIONS = ("none", "float16", "int8")
METADATA_NAME = "ssd_tf2_export"
# The tensor names of the OD API's TFLite SSD outputs.
_OUTPUT_TENSOR_NAMES = (TFLITE_POSTPROCESS_OP, f"{TFLITE_POSTPROCESS_OP}:1",
                        f"{TFLITE_POSTPROCESS_OP}:2", f"{TFLITE_POSTPROCESS_OP}:3")


class TFLiteConversionError(RuntimeError):
    """The converter failed, or its result needs an op outside TFLite's built-ins."""

    exit_code = 1


def file_name(quantization: str) -> str:
    """``model.tflite`` (float32), ``model_float16.tflite``, ``model_int8.tflite``."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown TFLite quantization {quantization!r}; choose from "
                         f"{', '.join(QUANTIZATIONS)}")
    return "model.tflite" if quantization == "none" else f"model_{quantization}.tflite"


def convert(graph: DetectorGraph, quantization: str, work_dir: str, *,
            representative: Optional[Callable[[], Iterable[np.ndarray]]] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> bytes:
    """The TFLite model of ``graph``, as bytes.

    Args:
      graph: the detector.
      quantization: 'none' (float32), 'float16' (float16 weights, float32 compute on CPUs),
        'int8' (int8 weights and activations; needs ``representative``).
      work_dir: an empty scratch folder (gets the intermediate SavedModel).
      representative: for int8: a callable returning an iterable of float32 [1, h, w, 3] model
        inputs (RGB 0..255, warp-resized: :mod:`deploy.calibration`).
      metadata: JSON-able dict stored in the model (the export's description).

    Raises:
      TFLiteConversionError: the converter failed or the model needs non-built-in ops.
      ValueError: bad quantization, or int8 without representative data.
    """
    file_name(quantization)
    if quantization == "int8" and representative is None:
        raise ValueError("int8 quantization needs representative (calibration) images.")
    function = graph.tflite_function()
    module = tf.Module()
    module.detect = function
    saved = os.path.join(work_dir, "tflite_graph")
    tf.saved_model.save(module, saved,
                        signatures={"serving_default": function.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # int8 kernels wherever they exist; an op without one stays float (input and output
        # stay float32, so applications feed the same tensor to every variant).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]

        def dataset():
            for image in representative():
                yield {"images": np.asarray(image, np.float32)}

        converter.representative_dataset = dataset
    try:
        if quantization == "int8":
            # Calibrate, then quantize everything but the anchors of the post-process op and the
            # graph after it: boxes moved by their class offsets (up to tens of units) must not
            # go through int8. The converter's own int8 path is these two steps without the
            # denylist (TFLiteConverter._quantize).
            converter._experimental_calibrate_only = True  # pylint: disable=protected-access
            with warnings.catch_warnings():  # The calibrator runs TF's deprecated Interpreter.
                warnings.simplefilter("ignore", UserWarning)
                calibrated = converter.convert()
            data = lite_convert.mlir_quantize(
                calibrated, converter._experimental_disable_per_channel,  # pylint: disable=protected-access
                denylisted_nodes=_kept_float(calibrated))
        else:
            data = converter.convert()
    except TFLiteConversionError:
        raise
    except Exception as err:  # The converter's errors are long MLIR dumps: keep the gist.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TFLiteConversionError(f"TFLite conversion ({quantization}) failed: {first}") from err
    return finish(data, metadata or {})


def check_ops(model: Any) -> list[str]:
    """The op names of a model (object API); raises TFLiteConversionError for a Flex (TF) op
    or a custom op other than ``TFLite_Detection_PostProcess``."""
    names = []
    for index, code in enumerate(model.operatorCodes):
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if builtin == schema_fb.BuiltinOperator.CUSTOM:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            if custom != TFLITE_POSTPROCESS_OP:
                raise TFLiteConversionError(f"the TFLite model needs the custom op {custom!r} "
                                            "(not a TFLite built-in; Flex ops are not allowed)")
            names.append(custom)
        else:
            names.append(flatbuffer_utils.opcode_to_name(model, index))
    if TFLITE_POSTPROCESS_OP not in names:
        raise TFLiteConversionError(f"the converter did not fuse {TFLITE_POSTPROCESS_OP}")
    return names


def _postprocess_op(model: Any) -> Any:
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        if name == TFLITE_POSTPROCESS_OP:
            return op
    raise TFLiteConversionError(f"the converter did not fuse {TFLITE_POSTPROCESS_OP}")


def _float_paths(model: Any) -> list[int]:
    """Tensor indices that must stay float32: the post-process op's anchors and the float
    tensors they are computed from (back to integer or constant tensors), and every tensor
    computed from the op's outputs."""
    subgraph = model.subgraphs[0]
    producer = {int(t): op for op in subgraph.operators for t in op.outputs}
    op = _postprocess_op(model)
    kept: list[int] = []
    pending = [int(op.inputs[2])]
    while pending:
        t = pending.pop()
        if t in kept or t not in producer or \
                subgraph.tensors[t].type != schema_fb.TensorType.FLOAT32:
            continue
        kept.append(t)
        pending.extend(int(i) for i in producer[t].inputs if int(i) >= 0)
    reached = {int(t) for t in op.outputs}
    for later in subgraph.operators:  # Operators are stored in execution order.
        if any(int(t) in reached for t in later.inputs):
            for t in later.outputs:
                reached.add(int(t))
                kept.append(int(t))
    return kept


def _kept_float(data: bytes) -> list[str]:
    """Names of the tensors of :func:`_float_paths` (the int8 quantizer's denylist)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    names = []
    for t in _float_paths(model):
        name = model.subgraphs[0].tensors[t].name
        names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def finish(data: bytes, metadata: Mapping[str, Any]) -> bytes:
    """Outputs in the OD API order and names, metadata stored, ops and precision checked."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    check_ops(model)
    subgraph = model.subgraphs[0]
    # The anchors and the boxes after the op are float32 (see convert): anything else would
    # lose the boxes' precision.
    op = _postprocess_op(model)
    if subgraph.tensors[int(op.inputs[2])].type != schema_fb.TensorType.FLOAT32 or any(
            subgraph.tensors[t].type in (schema_fb.TensorType.INT8, schema_fb.TensorType.UINT8,
                                         schema_fb.TensorType.FLOAT16)
            for t in _float_paths(model)):
        raise TFLiteConversionError("the anchors or the graph after the post-process op were "
                                    "quantized; the boxes would lose their precision")
    signature = model.signatureDefs[0]
    by_name = {(o.name.decode() if isinstance(o.name, bytes) else o.name): o
               for o in signature.outputs}
    missing = [k for k in TFLITE_OUTPUT_KEYS if k not in by_name]
    if missing:
        raise TFLiteConversionError(f"the converted model lacks the outputs {missing}")
    ordered = [by_name[k] for k in TFLITE_OUTPUT_KEYS]
    signature.outputs = ordered
    subgraph.outputs = np.array([o.tensorIndex for o in ordered], np.int32)
    for entry, name in zip(ordered, _OUTPUT_TENSOR_NAMES):
        subgraph.tensors[entry.tensorIndex].name = name.encode()
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(dict(metadata), sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: str) -> dict[str, Any]:
    """The export metadata stored in a ``.tflite`` file ({} when there is none)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        model = schema_fb.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() and entry.Name().decode() == METADATA_NAME:
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode())
    except Exception as err:  # A truncated or foreign file.
        raise ValueError(f"{path}: not a readable TFLite model ({err})") from None
    return {}
