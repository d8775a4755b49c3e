"""Writing an export folder: SavedModel, TFLite and ONNX files of one trained net.

``export(net, output_dir, formats, ...)`` builds every requested file in a staging folder
beside ``output_dir`` (``fileio.atomic.staging_directory``) and renames each into place only
when all of them converted (``fileio.atomic.move_into_place``), then writes ``export.json``
(atomically): a failed export leaves ``output_dir`` as it was. The folder layout:

    output_dir/
      saved_model/          serving_default (encoded images) + detect_images (uint8 images)
      model.tflite          float32   (model_float16.tflite, model_int8.tflite: the quantized ones)
      model.onnx
      labels.txt            class names, one per line, ids 1..C-1 (the --labels_file format)
      export.json           what is in the folder: the model, its identity, every file

A folder keeps one model: ``export.json`` holds its identity (a digest of the model name, the
net's hyper-parameters, the class names, the post-processing settings and the weights).
Exporting another model into it is refused unless ``overwrite``, which then removes the
previous model's files; the same model may add formats to its folder. A non-empty folder
without ``export.json`` is refused unless ``overwrite`` (its other files are left alone).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from deploy import onnx_export, tflite
from deploy.graph import (IMAGES_SIGNATURE, OUTPUT_KEYS, CLASS_NAMES_KEY, SERVING_SIGNATURE,
                          TFLITE_OUTPUT_KEYS, DetectorGraph, PostprocessSettings)
from deploy.runtime import METADATA_FILE, SAVED_MODEL_DIR
from fileio import atomic

FORMATS = ("saved_model", "tflite", "onnx")
LABELS_FILE = "labels.txt"
FORMAT_VERSION = 1


class ExportFolderError(ValueError):
    """The output folder cannot take this export (another model, foreign files, a file)."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class ExportedFile:
    """One file (or the SavedModel folder) written: ``format`` is one of :data:`FORMATS`."""

    format: str
    path: str
    size: int
    quantization: Optional[str] = None


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``'saved_model,tflite'`` -> the list, in :data:`FORMATS` order; ValueError naming an
    unknown one."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(FORMATS)}")
    if not items:
        raise ValueError(f"no export format given; choose from {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in items]


def model_identity(net: Any, settings: PostprocessSettings, class_names: Sequence[str]) -> str:
    """sha256 of what makes two exports the same model: name, hyper-parameters, class names,
    post-processing and every weight (by TF-Slim name)."""
    digest = hashlib.sha256()
    header = {"model_name": net.model_name, "params": dataclasses.asdict(net.params),
              "class_names": list(class_names), "postprocess": settings.as_dict()}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, variable in sorted(net.variables_by_checkpoint_name().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def read_export_metadata(output_dir: str) -> Optional[dict]:
    """``export.json`` of a folder, None when absent; ExportFolderError when unreadable."""
    path = os.path.join(output_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as err:
        raise ExportFolderError(f"{path}: unreadable export description ({err})") from None


def check_folder(output_dir: str, identity: str, overwrite: bool) -> Optional[dict]:
    """Whether ``output_dir`` may take the export of the model ``identity`` (see the module
    doc). Returns the folder's current ``export.json`` when it is kept (same model), None
    when the folder is new, empty or replaced.

    Raises:
      ExportFolderError: the folder holds another model or foreign files (without
        ``overwrite``), or is a file.
    """
    if not os.path.exists(output_dir):
        return None
    if not os.path.isdir(output_dir):
        raise ExportFolderError(f"--output_dir={output_dir}: is a file, not a folder")
    try:
        previous = read_export_metadata(output_dir)
    except ExportFolderError:
        if not overwrite:
            raise
        return None
    if previous is None:
        if os.listdir(output_dir) and not overwrite:
            raise ExportFolderError(f"{output_dir}: folder is not empty and holds no export "
                                    f"({METADATA_FILE}); choose a new folder or pass --overwrite")
        return None
    if previous.get("identity") == identity:
        return previous
    if not overwrite:
        raise ExportFolderError(
            f"{output_dir}: already holds a different model ({previous.get('model_name')} "
            f"from {previous.get('source') or 'an unknown checkpoint'}, exported "
            f"{previous.get('created', '?')}); pass --overwrite to replace it or choose "
            "another --output_dir")
    return None


def export(net: Any, output_dir: str, formats: Sequence[str], *,
           settings: PostprocessSettings, class_names: Sequence[str],
           tflite_quantization: str = "none",
           calibration: Optional[Callable[[], Sequence[np.ndarray]]] = None,
           calibration_source: Optional[str] = None,
           overwrite: bool = False, source: Optional[str] = None,
           preprocessing_name: Optional[str] = None,
           progress: Optional[Callable[[str], None]] = None) -> list[ExportedFile]:
    """Export ``net`` to ``output_dir`` (see the module doc); returns the files written.

    Args:
      net: the trained net (its current weights are exported).
      output_dir: the export folder.
      formats: a subset of :data:`FORMATS`.
      settings: the post-processing baked into every file.
      class_names: names of the classes 1..num_classes-1.
      tflite_quantization: one of ``tflite.QUANTIZATIONS``.
      calibration: for int8: a callable returning the calibration inputs (called only when
        the folder check passed, so a refused export reads no data).
      calibration_source: where the calibration images came from (recorded).
      overwrite: replace another model's export (see :func:`check_folder`).
      source: the checkpoint exported (recorded).
      preprocessing_name: the eval preprocessing (default: the model name).
      progress: called with a short line before each step.

    Raises:
      ExportFolderError, ValueError (bad arguments), tflite.TFLiteConversionError,
      onnx_export.ONNXConversionError, calibration.CalibrationError.
    """
    formats = parse_formats(formats)
    tflite.file_name(tflite_quantization)
    if "tflite" in formats and tflite_quantization == "int8" and calibration is None:
        raise ValueError("--tflite_quantization=int8 needs calibration data "
                         "(--calibration_dataset_dir)")
    say = progress or (lambda line: None)
    identity = model_identity(net, settings, class_names)
    previous = check_folder(output_dir, identity, overwrite)
    graph = DetectorGraph(net, settings, class_names, preprocessing_name)
    description = {
        "format_version": FORMAT_VERSION,
        "model_name": net.model_name,
        "num_classes": graph.num_classes,
        "class_names": list(graph.class_names),
        "img_shape": list(graph.img_shape),
        "anchor_preset": net.params.anchor_preset,
        "num_anchors": graph.num_anchors,
        "postprocess": settings.as_dict(),
        "identity": identity,
        "source": source,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    calibration_images = None
    if "tflite" in formats and tflite_quantization == "int8":
        say("reading calibration images")
        calibration_images = list(calibration())
    entries: dict[str, dict] = {}
    written: list[tuple[str, str, Optional[str]]] = []  # (format, name, quantization)
    with atomic.staging_directory(output_dir) as stage:
        assets = os.path.join(stage, ".assets")
        os.makedirs(assets)
        atomic.write_text(os.path.join(stage, LABELS_FILE), "\n".join(graph.class_names) + "\n")
        if "saved_model" in formats:
            say("SavedModel")
            atomic.write_text(os.path.join(assets, LABELS_FILE), "\n".join(graph.class_names) + "\n")
            atomic.write_json(os.path.join(assets, METADATA_FILE),
                              {**description, "format": "saved_model"})
            module, signatures = graph.saved_model_module(assets={
                "labels_file": os.path.join(assets, LABELS_FILE),
                "export_file": os.path.join(assets, METADATA_FILE)})
            tf.saved_model.save(module, os.path.join(stage, SAVED_MODEL_DIR), signatures=signatures)
            entries["saved_model"] = {"path": SAVED_MODEL_DIR, "signatures": {
                SERVING_SIGNATURE: "images: string [N], encoded JPEG/PNG/GIF/BMP",
                IMAGES_SIGNATURE: "images: uint8 [N, H, W, 3] RGB (one size per call)"},
                "outputs": list(OUTPUT_KEYS) + [CLASS_NAMES_KEY]}
            written.append(("saved_model", SAVED_MODEL_DIR, None))
        if "tflite" in formats:
            say(f"TFLite ({tflite_quantization})")
            name = tflite.file_name(tflite_quantization)
            work = os.path.join(stage, ".tflite_work")
            os.makedirs(work)
            info = {"path": name, "quantization": tflite_quantization,
                    "input": f"images: float32 [1, {graph.img_shape[0]}, {graph.img_shape[1]}, 3] "
                             "RGB 0..255, warp-resized",
                    "outputs": list(TFLITE_OUTPUT_KEYS), "class_ids": "0-based (id - 1)"}
            if calibration_images is not None:
                info["calibration"] = {"images": len(calibration_images),
                                       "source": calibration_source}
            data = tflite.convert(graph, tflite_quantization, work,
                                  representative=(lambda: calibration_images)
                                  if calibration_images is not None else None,
                                  metadata={**description, "format": "tflite", **info})
            atomic.write_bytes(os.path.join(stage, name), data)
            entries[f"tflite_{tflite_quantization}"] = info
            written.append(("tflite", name, tflite_quantization))
        if "onnx" in formats:
            say("ONNX")
            info = {"path": onnx_export.FILE_NAME, "opset": onnx_export.OPSET,
                    "input": "images: uint8 [1, H, W, 3] RGB", "outputs": list(OUTPUT_KEYS)}
            data = onnx_export.convert(graph, {**description, "format": "onnx", **info})
            atomic.write_bytes(os.path.join(stage, onnx_export.FILE_NAME), data)
            entries["onnx"] = info
            written.append(("onnx", onnx_export.FILE_NAME, None))

        # Everything converted: into place.
        os.makedirs(output_dir, exist_ok=True)
        old = {} if previous is None else dict(previous.get("files", {}))
        if previous is None and overwrite:
            for entry in (_read_quietly(output_dir) or {}).get("files", {}).values():
                _remove(os.path.join(output_dir, entry.get("path", "")), output_dir)
        for _, name, _ in written:
            atomic.move_into_place(os.path.join(stage, name), os.path.join(output_dir, name))
        atomic.move_into_place(os.path.join(stage, LABELS_FILE), os.path.join(output_dir, LABELS_FILE))
        atomic.write_json(os.path.join(output_dir, METADATA_FILE),
                          {**description, "files": {**old, **entries}})
    return [ExportedFile(fmt, os.path.join(output_dir, name),
                         _size(os.path.join(output_dir, name)), quant)
            for fmt, name, quant in written]


def _read_quietly(output_dir: str) -> Optional[dict]:
    try:
        return read_export_metadata(output_dir)
    except ExportFolderError:
        return None


def _remove(path: str, output_dir: str) -> None:
    """Remove a previous export's file or folder (only inside ``output_dir``)."""
    real = os.path.realpath(path)
    if not real.startswith(os.path.realpath(output_dir) + os.sep) or not os.path.lexists(path):
        return
    if os.path.isdir(real):
        shutil.rmtree(real, ignore_errors=True)
    else:
        os.remove(real)
