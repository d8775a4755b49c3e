"""Deployment: a trained net -> SavedModel, TFLite and ONNX files with the whole detector inside,
and those files run again by the project's scripts.

``graph``: the exportable detector (the eval preprocessing, the frozen net, decoding, per-class
NMS and the mapping back to the original image) as ``tf.function``s: the SavedModel signatures,
the TFLite graph (NMS through TFLite's fused ``TFLite_Detection_PostProcess`` op) and the ONNX
graph (NMS through ONNX ``NonMaxSuppression``). ``tflite``, ``onnx_export``: the converters and
their checks. ``calibration``: int8 calibration images from TFRecords. ``export``: the export
folder (staged, renamed into place, its ``export.json``). ``runtime``: loading an exported file
(SavedModel folder, ``.tflite``, ``.onnx``) as a detector for ``detect.py`` and
``eval_ssd_network.py``. docs/deploy.md describes the files and their tensors.
"""
