"""The ONNX file: :meth:`deploy.graph.DetectorGraph.onnx_function` through tf2onnx.

tf2onnx (pinned in requirements.txt; 1.17.0 converts TensorFlow 2.21 graphs) turns the
eval preprocessing (``Resize``; one image per call, any size), the net, and the NMS written
with one box per anchor (``combined_non_max_suppression`` over shared boxes) into ONNX ops,
the NMS into ONNX's own ``NonMaxSuppression``. The model runs in ONNX Runtime and OpenVINO. The export's metadata JSON is stored in the
model's ``metadata_props`` under :data:`METADATA_KEY`.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from deploy.graph import DetectorGraph

OPSET = 17
FILE_NAME = "model.onnx"
METADATA_KEY = "ssd_tf2_export"


class ONNXConversionError(RuntimeError):
    """tf2onnx failed, or its model lacks the NMS."""

    exit_code = 1


def convert(graph: DetectorGraph, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The ONNX model of ``graph`` (serialized ModelProto)."""
    import tf2onnx  # Slow to import and only needed here.

    function = graph.onnx_function()
    quiet = logging.getLogger("tf2onnx")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # tf2onnx logs every folding step at INFO
    try:
        model, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                                 opset=OPSET)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ONNXConversionError(f"ONNX conversion failed: {first}") from err
    finally:
        quiet.setLevel(level)
    ops = {node.op_type for node in model.graph.node}
    if "NonMaxSuppression" not in ops:
        raise ONNXConversionError("the ONNX model has no NonMaxSuppression: tf2onnx did not "
                                  "convert the NMS")
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(dict(metadata or {}), sort_keys=True)
    model.producer_name = "ssd-tensorflow-2 export_ssd_network.py"
    return model.SerializeToString()


def read_metadata(model: Any) -> dict[str, Any]:
    """The export metadata of an ``onnxruntime.InferenceSession`` ({} when there is none)."""
    props = model.get_modelmeta().custom_metadata_map
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
