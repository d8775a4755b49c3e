"""Exported files run again: a SavedModel folder, a ``.tflite`` or an ``.onnx`` file as a
detector for ``detect.py`` and ``eval_ssd_network.py``, each in its own runtime.

* SavedModel: ``tf.saved_model.load`` and its ``detect_images`` signature (uint8 images of any
  size; the preprocessing is inside);
* TFLite: the standalone LiteRT interpreter (``ai-edge-litert``; XNNPACK on CPUs). The model
  takes the warp-resized image, so the runtime first runs the project's eval preprocessing
  (:func:`deploy.graph.make_tflite_input_fn`) and maps the boxes back;
* ONNX: ONNX Runtime's CPU provider (uint8 images of any size, preprocessing inside).

:func:`load` picks the format from the path. Every model answers :meth:`ExportedDetector.detect`
(images -> detections normalized to each original image, like
``inference.detector.ImageDetector.detect``) and :meth:`ExportedDetector.eval_detect_fn`
(the detector function of ``engine.evaluation.run_evaluation``: the one evaluation loop runs
exported models too). LiteRT and ONNX Runtime are imported only when such a file is loaded.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from deploy import onnx_export, tflite
from deploy.graph import IMAGES_SIGNATURE, INPUT_NAME, TFLITE_OUTPUT_KEYS, make_tflite_input_fn
from preprocessing.ssd_vgg_preprocessing import bboxes_to_original
from tf_extended.images import RGB_MEANS

FORMATS = ("saved_model", "tflite", "onnx")
SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "export.json"
LITERT_REQUIREMENT = "ai-edge-litert==2.3.0"
ONNXRUNTIME_REQUIREMENT = "onnxruntime==1.31.1"


class ExportedModelError(ValueError):
    """A path that is no exported model this project can run (names it and says why)."""

    exit_code = 1


def model_format(path: str) -> str:
    """'saved_model', 'tflite' or 'onnx' for ``path`` (an export folder means its SavedModel).

    Raises:
      ExportedModelError: missing path or unknown format.
    """
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "saved_model"
        raise ExportedModelError(f"{path}: folder holds no saved_model.pb (a SavedModel folder, "
                                 "a .tflite or an .onnx file is needed)")
    if not os.path.exists(path):
        raise ExportedModelError(f"{path}: exported model not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".tflite":
        return "tflite"
    if ext == ".onnx":
        return "onnx"
    raise ExportedModelError(f"{path}: unknown model format {ext or '(no extension)'!r}: give a "
                             "SavedModel folder, a .tflite or an .onnx file")


def resolve_model_path(path: str) -> str:
    """An export folder (``export_ssd_network.py --output_dir``) -> its SavedModel folder;
    anything else as given."""
    inner = os.path.join(path, SAVED_MODEL_DIR)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")) \
            and os.path.isfile(os.path.join(inner, "saved_model.pb")):
        return inner
    return path


def load(path: str, num_threads: Optional[int] = None) -> "ExportedDetector":
    """The exported model at ``path`` as a detector (see the module doc).

    Raises:
      ExportedModelError: unknown format, unreadable file, runtime not installed.
    """
    path = resolve_model_path(path)
    fmt = model_format(path)
    cls = {"saved_model": SavedModelDetector, "tflite": TFLiteDetector,
           "onnx": ONNXDetector}[fmt]
    return cls(path, num_threads=num_threads)


def as_detections(boxes, scores, classes, counts) -> dict[str, np.ndarray]:
    """OD API outputs -> the project's detection dict (int classes, padding rows zeroed)."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    counts = np.asarray(counts).reshape(-1).astype(np.int32)
    live = np.arange(scores.shape[1])[None, :] < counts[:, None]
    return {"boxes": np.where(live[..., None], boxes, 0.0).astype(np.float32),
            "scores": np.where(live, scores, 0.0).astype(np.float32),
            "classes": np.where(live, np.rint(np.asarray(classes)), 0).astype(np.int32),
            "num_detections": counts}


def map_to_original(det: Mapping[str, np.ndarray], bbox_img) -> dict[str, np.ndarray]:
    """Boxes from the frame the model saw to the original image (clipped), padding kept zero:
    ``ssd_vgg_preprocessing.bboxes_to_original`` with the eval preprocessing's ``bbox_img``."""
    out = dict(det)
    boxes = bboxes_to_original(tf.constant(det["boxes"]), tf.constant(bbox_img, tf.float32)).numpy()
    live = np.arange(boxes.shape[1])[None, :] < det["num_detections"][:, None]
    out["boxes"] = np.where(live[..., None], boxes, 0.0).astype(np.float32)
    return out


def keep_above(det: Mapping[str, np.ndarray], min_score: float) -> dict[str, np.ndarray]:
    """Only the detections scoring above ``min_score`` (rows are sorted by score, so the
    count shrinks and the rest becomes padding)."""
    counts = np.minimum(det["num_detections"], (det["scores"] > min_score).sum(axis=1))
    return as_detections(det["boxes"], det["scores"], det["classes"], counts)


def concat_detections(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class ExportedDetector:
    """An exported model with the interface of ``inference.detector.ImageDetector``.

    Attributes:
      path, format: the file and its format.
      metadata: the export's description (``export.json``; {} for a foreign file).
      input_size: (h, w) when the model takes warp-resized images (TFLite), None when it
        takes original images of any size (SavedModel, ONNX).
      num_classes: with the background (None when the file does not say).
      class_names: {id: name} (ids 1..num_classes-1), {} when unknown.
      min_score: :meth:`detect` keeps only the detections scoring above it (None: all the
        model returns, i.e. above the export's ``select_threshold``).
    """

    format = ""

    def __init__(self, path: str, metadata: Mapping[str, Any]):
        self.path = path
        self.metadata = dict(metadata)
        self.num_classes = self.metadata.get("num_classes")
        names = self.metadata.get("class_names") or []
        self.class_names = {i + 1: str(n) for i, n in enumerate(names)}
        self.model_name = self.metadata.get("model_name")
        self.input_size: Optional[tuple[int, int]] = None
        self.min_score: Optional[float] = None

    @property
    def select_threshold(self) -> Optional[float]:
        """The ``select_threshold`` baked into the export (None when the file does not say)."""
        return (self.metadata.get("postprocess") or {}).get("select_threshold")

    # -- what a format implements ----------------------------------------------------------

    def _run_images(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 [H, W, 3] images (any sizes) -> detections in each image's frame."""
        raise NotImplementedError

    def _run_inputs(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, h, w, 3] RGB 0..255 at ``input_size`` -> detections in that frame."""
        raise NotImplementedError

    # -- the detector ----------------------------------------------------------------------

    def detect(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Images (uint8 [H, W, 3] RGB, any sizes) -> ``{'boxes': [N, K, 4] (ymin, xmin, ymax,
        xmax) normalized to each original image and clipped, 'scores', 'classes' (1-based
        int), 'num_detections'}``, as ``ImageDetector.detect``."""
        if not len(images):
            raise ValueError("detect: no images")
        if self.input_size is None:
            det = self._run_images([np.asarray(im, np.uint8) for im in images])
        else:
            resize = self._resizer()
            pairs = [resize(tf.convert_to_tensor(np.asarray(im, np.uint8))) for im in images]
            inputs = np.stack([p[0].numpy() for p in pairs])
            windows = np.stack([p[1].numpy() for p in pairs])
            det = map_to_original(self._run_inputs(inputs), windows)
        return det if self.min_score is None else keep_above(det, self.min_score)

    def eval_detect_fn(self, images, bbox_img) -> dict[str, np.ndarray]:
        """The detector function of ``engine.evaluation.run_evaluation``.

        Args:
          images: float32 [B, H, W, 3], the eval pipeline's output (RGB minus the means):
            warp-resized to ``input_size`` for fixed-size models, the original images (eval
            resize NONE) for the others.
          bbox_img: [B, 4] the original image's window in ``images``.
        """
        pixels = np.asarray(images, np.float32) + np.asarray(RGB_MEANS, np.float32)
        if self.input_size is None:
            det = self._run_images([np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in pixels])
        else:
            det = self._run_inputs(pixels)
        return map_to_original(det, np.asarray(bbox_img, np.float32))

    def _resizer(self):
        if getattr(self, "_resize_fn", None) is None:
            self._resize_fn = make_tflite_input_fn(self.model_name or "ssd_300_vgg", self.input_size)
        return self._resize_fn

    def describe(self) -> str:
        size = ("any size" if self.input_size is None
                else f"{self.input_size[0]}x{self.input_size[1]} input")
        return f"{self.format} {self.path} ({self.model_name or 'unknown model'}, {size})"

    def check(self, image: Optional[np.ndarray] = None) -> tuple[int, float]:
        """Run once on ``image`` (default: a 240x320 gradient): (detections, milliseconds)."""
        if image is None:
            yy, xx = np.mgrid[0:240, 0:320]
            image = np.stack([xx * 255 // 319, yy * 255 // 239, (xx + yy) % 256], -1).astype(np.uint8)
        start = time.perf_counter()
        det = self.detect([image])
        return int(det["num_detections"][0]), 1000.0 * (time.perf_counter() - start)


class SavedModelDetector(ExportedDetector):
    format = "saved_model"

    def __init__(self, path: str, num_threads: Optional[int] = None):
        metadata = {}
        meta_path = os.path.join(path, "assets", METADATA_FILE)
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                metadata = json.load(f)
        super().__init__(path, metadata)
        try:
            loaded = tf.saved_model.load(path)
        except Exception as err:  # TF's loader errors: corrupt or foreign folder.
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ExportedModelError(f"{path}: not a loadable SavedModel ({first})") from None
        if IMAGES_SIGNATURE not in loaded.signatures:
            raise ExportedModelError(f"{path}: SavedModel has no {IMAGES_SIGNATURE!r} signature "
                                     "(not exported by export_ssd_network.py)")
        self._loaded = loaded
        self._fn = loaded.signatures[IMAGES_SIGNATURE]

    def _run_images(self, images):
        parts = []
        for image in images:
            out = self._fn(**{INPUT_NAME: tf.constant(image[np.newaxis])})
            parts.append(as_detections(out["detection_boxes"].numpy(),
                                        out["detection_scores"].numpy(),
                                        out["detection_classes"].numpy(),
                                        out["num_detections"].numpy()))
        return concat_detections(parts)


class TFLiteDetector(ExportedDetector):
    format = "tflite"

    def __init__(self, path: str, num_threads: Optional[int] = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ExportedModelError(f"{path}: running .tflite files needs LiteRT: pip install "
                                     f"{LITERT_REQUIREMENT} (requirements-test.txt)") from None
        try:
            metadata = tflite.read_metadata(path)
        except ValueError as err:
            raise ExportedModelError(str(err)) from None
        super().__init__(path, metadata)
        try:
            self._interpreter = Interpreter(model_path=path,
                                            num_threads=num_threads or os.cpu_count())
            self._runner = self._interpreter.get_signature_runner("serving_default")
        except (ValueError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ExportedModelError(f"{path}: LiteRT cannot load it ({first})") from None
        shape = self._runner.get_input_details()[INPUT_NAME]["shape"]
        self.input_size = (int(shape[1]), int(shape[2]))

    def _run_inputs(self, inputs):
        parts = []
        for x in np.asarray(inputs, np.float32):
            out = self._runner(**{INPUT_NAME: x[np.newaxis]})
            boxes, classes, scores, count = (out[k] for k in TFLITE_OUTPUT_KEYS)
            # TFLite's post-process op numbers the classes from 0 (our id - 1).
            parts.append(as_detections(boxes, scores, classes + 1.0, count))
        return concat_detections(parts)


class ONNXDetector(ExportedDetector):
    format = "onnx"

    def __init__(self, path: str, num_threads: Optional[int] = None):
        try:
            import onnxruntime
        except ImportError:
            raise ExportedModelError(f"{path}: running .onnx files needs ONNX Runtime: pip "
                                     f"install {ONNXRUNTIME_REQUIREMENT} (requirements-test.txt)"
                                     ) from None
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        try:
            self._session = onnxruntime.InferenceSession(path, options,
                                                         providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types: a corrupt file.
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ExportedModelError(f"{path}: ONNX Runtime cannot load it ({first})") from None
        super().__init__(path, onnx_export.read_metadata(self._session))
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _run_images(self, images):
        parts = []
        for image in images:
            values = dict(zip(self._outputs,
                              self._session.run(None, {INPUT_NAME: image[np.newaxis]})))
            parts.append(as_detections(values["detection_boxes"], values["detection_scores"],
                                        values["detection_classes"], values["num_detections"]))
        return concat_detections(parts)
