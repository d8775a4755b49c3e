"""The exportable detector: what goes inside the SavedModel, the TFLite file and the ONNX file.

One :class:`DetectorGraph` per trained net. Every graph runs the pieces the project's own
evaluation runs, taken from their homes, not copied:

* preprocessing: ``preprocessing_factory.get_preprocessing(name, is_training=False)`` with the
  eval resize (WARP_RESIZE: bilinear warp to the net input, RGB minus
  ``tf_extended.images.RGB_MEANS``), one image at a time, so any image size works;
* the net with its weights frozen as constants (``net.inference_function(frozen=True)``);
* decoding and per-class NMS: ``tf_extended.postprocess`` (Caffe SSD's DetectionOutput);
* boxes mapped back to the original image: ``ssd_vgg_preprocessing.bboxes_to_original``.

Outputs follow the TF Object Detection API: ``detection_boxes`` [N, K, 4] ``(ymin, xmin,
ymax, xmax)`` normalized to the original image and clipped to it, ``detection_scores``
[N, K], ``detection_classes`` [N, K] (the 1-based ids of evaluation, as float32 like the OD
API), ``num_detections`` [N] (float32); rows past ``num_detections`` are zeros. The
SavedModel adds ``detection_class_names`` [N, K] (string, '' for padding).

The three graphs differ only in where the NMS runs:

* SavedModel: :func:`tf_extended.postprocess.detected_bboxes`, the evaluation's own;
* ONNX: :func:`tf_extended.postprocess.detected_bboxes_shared_boxes` (the same detections
  written with one box per anchor, which tf2onnx turns into ``NonMaxSuppression``);
* TFLite: the fused ``TFLite_Detection_PostProcess`` op (see :meth:`DetectorGraph.tflite_function`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from preprocessing import preprocessing_factory
from preprocessing.ssd_vgg_preprocessing import Resize, bboxes_to_original
from tf_extended import boxes as tfe_boxes
from tf_extended import postprocess

# Signature names and output keys (docs/deploy.md).
SERVING_SIGNATURE = "serving_default"  # encoded images (JPEG/PNG/GIF/BMP bytes), string [N]
IMAGES_SIGNATURE = "detect_images"     # uint8 images [N, H, W, 3] RGB
INPUT_NAME = "images"
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
CLASS_NAMES_KEY = "detection_class_names"
# The output order of the Object Detection API's TFLite SSD models: locations, classes, scores,
# number of detections (TFLite's TFLite_Detection_PostProcess outputs 0..3).
TFLITE_OUTPUT_KEYS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
TFLITE_POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# Caffe (x, y, w, h) offsets -> TFLite's (y, x, h, w).
_XYWH_TO_YXHW = (1, 0, 3, 2)
# Distance between the squares of two classes in the TFLite graph (normalized image units):
# boxes up to 1.5 images beyond the image, or 3 images tall, stay in their square.
CLASS_SPACING = 4.0
# Fixed-point precision of the TFLite graph's anchor table (anchor_table).
ANCHOR_BITS = 24


@dataclasses.dataclass(frozen=True)
class PostprocessSettings:
    """The post-processing baked into an export (the eval flags; Caffe SSD's test values).

    ``select_threshold`` 0.01 keeps what evaluation scores, so an exported model reproduces the
    checkpoint's mAP; applications keep the detections above their own minimum score.
    """

    select_threshold: float = 0.01
    nms_threshold: float = 0.45
    select_top_k: int = 400
    keep_top_k: int = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.select_threshold < 1.0:
            raise ValueError(f"select_threshold is {self.select_threshold}, must be in [0, 1).")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold is {self.nms_threshold}, must be in (0, 1].")
        if self.select_top_k < 1 or self.keep_top_k < 1:
            raise ValueError(f"select_top_k ({self.select_top_k}) and keep_top_k "
                             f"({self.keep_top_k}) must be >= 1.")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def class_grid(num_classes: int) -> int:
    """Side of the square grid that lays the classes out (:func:`class_offsets`)."""
    return max(1, math.ceil(math.sqrt(num_classes - 1)))


def class_offsets(num_classes: int) -> np.ndarray:
    """float32 [num_classes - 1, 2]: the ``(y, x)`` offset of each foreground class's square in
    the TFLite graph: ``(row, column) * CLASS_SPACING`` on a grid of :func:`class_grid` side."""
    grid = class_grid(num_classes)
    classes = np.arange(int(num_classes) - 1)
    return (np.stack([classes // grid, classes % grid], axis=-1) * CLASS_SPACING).astype(np.float32)


def anchor_table(anchors: np.ndarray) -> np.ndarray:
    """The anchors as TFLite's post-process op reads them, ``(y, x, h, w)`` centre and size, in
    int32 units of ``2**-ANCHOR_BITS``.

    Stored as integers, the table is left alone by float16 conversion (which rounds every float
    constant to 11 bits) and by int8 quantization; the graph gathers the candidates' rows, adds
    their class offsets (integers too) and scales them back: within float32 rounding of the
    result (a float32 anchor in [0.5, 1) is a multiple of 2**-24 already).
    """
    centre = np.stack([np.asarray(t, np.float64) for t in tfe_boxes.to_center(
        tf.constant(anchors, tf.float32))], axis=-1)  # (cy, cx, h, w)
    if np.abs(centre).max() >= 2.0 ** (31 - ANCHOR_BITS):
        raise ValueError("anchors too large for the int32 anchor table")
    return np.rint(centre * 2.0 ** ANCHOR_BITS).astype(np.int32)


def tflite_postprocess_attributes(settings: PostprocessSettings,
                                  prior_scaling: Sequence[float]) -> dict[str, Any]:
    """The attributes of TFLite's ``TFLite_Detection_PostProcess`` that, on the inputs of
    :meth:`DetectorGraph.tflite_function`, reproduce :func:`tf_extended.postprocess.detected_bboxes`.

    Why not the op's per-class ("regular") NMS: LiteRT's multi-threaded version of it (every
    ai-edge-litert release up to 2.3.0) never processes class ``num_threads`` when the
    interpreter runs with 2 <= num_threads < num_classes (its shared column counter is
    pre-incremented past that class), so a model would lose a class depending on the
    application's thread count. The graph instead gives the op the ``select_top_k`` best
    anchors of each class as candidates, class-major, each with its class's anchor moved to
    the class's own square of the plane (:func:`class_offsets`), under one score column
    (``num_classes`` 1): the op's single-threaded "fast" NMS over them is then exactly
    per-class greedy NMS (boxes of different classes never overlap), its first
    ``max_detections`` survivors in score order are the best ``keep_top_k`` of the image, and
    its stable sort over the class-major candidates breaks ties by class then anchor, as
    :func:`tf_extended.postprocess.detected_bboxes` does.

    * ``nms_score_threshold``: the op keeps scores ``>=`` it, ours ``>`` ``select_threshold``:
      the next float32 above it.
    * ``y_scale, x_scale, h_scale, w_scale``: the op decodes ``y / y_scale * anchor_h +
      anchor_y`` ...; ours multiplies by Caffe's prior variances ``(x, y, w, h)``: their inverses.
    """
    threshold = float(np.nextafter(np.float32(settings.select_threshold), np.float32(np.inf)))
    sx, sy, sw, sh = (float(v) for v in prior_scaling)
    return {
        "max_detections": int(settings.keep_top_k),
        "max_classes_per_detection": 1,
        "use_regular_nms": False,
        "nms_score_threshold": threshold,
        "nms_iou_threshold": float(settings.nms_threshold),
        "y_scale": 1.0 / sy, "x_scale": 1.0 / sx, "h_scale": 1.0 / sh, "w_scale": 1.0 / sw,
        "num_classes": 1,
    }


def implements_signature(name: str, attributes: Mapping[str, Any]) -> str:
    """The ``experimental_implements`` text (a NameAttrList proto) that the TFLite converter
    fuses into the custom op ``name`` with these attributes."""
    parts = [f'name: "{name}"']
    for key, value in attributes.items():
        if isinstance(value, bool):
            field = f"b: {str(value).lower()}"
        elif isinstance(value, int):
            field = f"i: {value}"
        elif isinstance(value, float):
            field = f"f: {value!r}"
        else:
            raise TypeError(f"attribute {key}: unsupported value {value!r}")
        parts.append(f'attr {{ key: "{key}" value {{ {field} }} }}')
    return " ".join(parts)


class DetectorGraph:
    """The exportable detector of one net (see the module doc).

    Args:
      net: an SSD net of ``nets_factory`` with its trained weights (they are frozen into the
        graphs now: build a new DetectorGraph after loading others).
      settings: the post-processing baked in.
      class_names: names of the classes 1..num_classes-1, in id order.
      preprocessing_name: the eval preprocessing (default: the net's model name, as eval).
    """

    def __init__(self, net: Any, settings: PostprocessSettings, class_names: Sequence[str],
                 preprocessing_name: str | None = None):
        self.model_name = net.model_name
        self.params = net.params
        self.settings = settings
        self.num_classes = int(net.params.num_classes)
        self.class_names = tuple(str(n) for n in class_names)
        if len(self.class_names) != self.num_classes - 1:
            raise ValueError(f"{len(self.class_names)} class names for a net with "
                             f"{self.num_classes - 1} classes (without the background).")
        self.img_shape = tuple(int(s) for s in net.params.img_shape)
        self.anchors = np.asarray(net.anchors(), np.float32)
        self.num_anchors = int(self.anchors.shape[0])
        self.prior_scaling = tuple(float(v) for v in net.params.prior_scaling)
        self._flatten = net.flat_outputs
        self._forward = net.inference_function(frozen=True)
        name = preprocessing_name or net.model_name
        self._eval_fn = preprocessing_factory.get_preprocessing(
            name, is_training=False, resize=Resize.WARP_RESIZE)
        # An image already at the net's size: the same function without the resize.
        self._at_size_fn = preprocessing_factory.get_preprocessing(
            name, is_training=False, resize=Resize.NONE)
        self._names_table = tf.constant(("",) + self.class_names)

    # -- the pieces ------------------------------------------------------------------------

    def _preprocess(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """uint8 [H, W, 3] -> (net input float32 [h, w, 3], bbox_img [4]): the eval preprocessing."""
        net_input, _, _, bbox_img = self._eval_fn(image, tf.zeros([0], tf.int64),
                                                  tf.zeros([0, 4], tf.float32), self.img_shape)
        return net_input, bbox_img

    def _preprocess_batch(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        h, w = self.img_shape
        return tf.map_fn(self._preprocess, images, fn_output_signature=(
            tf.TensorSpec([h, w, 3], tf.float32), tf.TensorSpec([4], tf.float32)))

    def _decode_batch(self, encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def one(data):
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
            return self._preprocess(tf.ensure_shape(image, [None, None, 3]))

        h, w = self.img_shape
        return tf.map_fn(one, encoded, fn_output_signature=(
            tf.TensorSpec([h, w, 3], tf.float32), tf.TensorSpec([4], tf.float32)))

    def _flat(self, net_input: tf.Tensor) -> dict[str, tf.Tensor]:
        flat = dict(self._flatten(self._forward(net_input)))
        flat["predictions"] = tf.ensure_shape(flat["predictions"],
                                              [None, self.num_anchors, self.num_classes])
        flat["localisations"] = tf.ensure_shape(flat["localisations"], [None, self.num_anchors, 4])
        return flat

    def _postprocess_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return dict(select_threshold=s.select_threshold, nms_threshold=s.nms_threshold,
                    select_top_k=s.select_top_k, keep_top_k=s.keep_top_k)

    def _outputs(self, det: Mapping[str, tf.Tensor], bbox_img: tf.Tensor,
                 with_names: bool) -> dict[str, tf.Tensor]:
        """Detections in the net input -> the OD API outputs in the original image."""
        boxes = bboxes_to_original(det["boxes"], bbox_img)
        num = tf.cast(det["num_detections"], tf.int32)
        live = tf.range(tf.shape(boxes)[1])[None, :] < num[:, None]
        out = {"detection_boxes": tf.where(live[..., None], boxes, 0.0),
               "detection_scores": det["scores"],
               "detection_classes": tf.cast(det["classes"], tf.float32),
               "num_detections": tf.cast(num, tf.float32)}
        if with_names:
            out[CLASS_NAMES_KEY] = tf.gather(self._names_table, det["classes"])
        return out

    def detect_preprocessed(self, net_input: tf.Tensor, bbox_img: tf.Tensor, *,
                            shared_boxes: bool = False, with_names: bool = True) -> dict:
        """Net input [N, h, w, 3] (the eval preprocessing's output) + bbox_img [N, 4] -> outputs.

        ``shared_boxes`` uses the ONNX-convertible NMS formulation."""
        flat = self._flat(net_input)
        nms = (postprocess.detected_bboxes_shared_boxes if shared_boxes
               else postprocess.detected_bboxes)
        det = nms(flat["predictions"], flat["localisations"], self.anchors, self.prior_scaling,
                  **self._postprocess_kwargs())
        return self._outputs(det, bbox_img, with_names)

    # -- SavedModel ------------------------------------------------------------------------

    def saved_model_module(self, assets: Mapping[str, str] | None = None
                           ) -> tuple[tf.Module, dict[str, Any]]:
        """``(module, signatures)`` for ``tf.saved_model.save``.

        Signatures: ``serving_default`` (``images``: string [N], encoded JPEG/PNG/GIF/BMP of
        any sizes) and ``detect_images`` (``images``: uint8 [N, H, W, 3] RGB, any H, W);
        outputs: :data:`OUTPUT_KEYS` + :data:`CLASS_NAMES_KEY`. ``assets``: {attribute: file}
        copied into the SavedModel's assets (e.g. the labels file).
        """
        module = tf.Module()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
        def detect_encoded(images):
            net_input, bbox_img = self._decode_batch(images)
            return self.detect_preprocessed(net_input, bbox_img)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                    name=INPUT_NAME)])
        def detect_images(images):
            net_input, bbox_img = self._preprocess_batch(images)
            return self.detect_preprocessed(net_input, bbox_img)

        module.detect_encoded = detect_encoded
        module.detect_images = detect_images
        for attr, path in (assets or {}).items():
            setattr(module, attr, tf.saved_model.Asset(path))
        signatures = {SERVING_SIGNATURE: detect_encoded.get_concrete_function(),
                      IMAGES_SIGNATURE: detect_images.get_concrete_function()}
        return module, signatures

    # -- ONNX ------------------------------------------------------------------------------

    def onnx_function(self) -> tf.types.experimental.GenericFunction:
        """``images`` uint8 [1, H, W, 3] RGB (any H, W) -> :data:`OUTPUT_KEYS`, for tf2onnx.

        One image per call: a batch dimension would need a loop over the images (their
        preprocessing is per image), which tf2onnx writes as an ONNX ``Loop`` that OpenVINO
        cannot read; the images of a batch would have to share one size anyway.
        """
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8,
                                                    name=INPUT_NAME)])
        def detect(images):
            net_input, bbox_img = self._preprocess(images[0])
            return self.detect_preprocessed(net_input[tf.newaxis], bbox_img[tf.newaxis],
                                            shared_boxes=True, with_names=False)

        return detect

    # -- TFLite ----------------------------------------------------------------------------

    def tflite_function(self) -> tf.types.experimental.GenericFunction:
        """``images`` float32 [1, h, w, 3] RGB 0..255, already resized to the net input ->
        :data:`TFLITE_OUTPUT_KEYS`, NMS through TFLite's ``TFLite_Detection_PostProcess``.

        The caller resizes (the eval warp resize: :func:`make_tflite_input_fn`); the graph runs
        the rest of the eval preprocessing (the means), the net, the per-class top-k
        pre-selection (``select_top_k`` candidates per class, gathered), and a placeholder
        function whose ``experimental_implements`` the converter replaces by the fused op
        (:func:`tflite_postprocess_attributes`). Its inputs: the candidates' box encodings in
        TFLite's ``(y, x, h, w)`` order (ours are Caffe's ``(x, y, w, h)``), their scores (one
        column), their anchors as ``(y, x, h, w)`` centres and sizes moved to their class's
        square (:func:`class_offsets`, from the integer :func:`anchor_table`). After the op the
        square gives the class back and the boxes move home. Outputs (the OD API's TFLite SSD
        convention and order): boxes [1, K, 4] ``(ymin, xmin, ymax, xmax)`` normalized to the
        net input (= the original image for the warp resize), not clipped; classes [1, K]
        0-based float (our id - 1); scores [1, K]; count [1]; rows past the count are zeros.
        """
        attributes = tflite_postprocess_attributes(self.settings, self.prior_scaling)
        table = anchor_table(self.anchors)
        grid = class_grid(self.num_classes)
        num_fg = self.num_classes - 1
        top_k = min(int(self.settings.select_top_k), self.num_anchors)
        # Each candidate's class offset, class-major, in the table's units: [num_fg * top_k, 4]
        # (y, x, 0, 0). Integers too: only the scale 2**-ANCHOR_BITS (exact in float16) is float.
        offsets = np.repeat(np.pad(class_offsets(self.num_classes), [[0, 0], [0, 2]]), top_k,
                            axis=0).astype(np.int64) * 2 ** ANCHOR_BITS
        if np.abs(offsets).max() + np.abs(table).max() >= 2 ** 31:
            raise ValueError(f"{self.num_classes} classes are too many for the TFLite graph")
        offsets = offsets.astype(np.int32)

        @tf.function(experimental_implements=implements_signature(TFLITE_POSTPROCESS_OP,
                                                                  attributes))
        def fused_postprocess(box_encodings, class_predictions, anchors):
            # Replaced by the fused op in the converted model; run as TensorFlow it returns
            # no detection, in the op's output shapes.
            k = int(self.settings.keep_top_k)
            return (tf.zeros([1, k, 4]), tf.zeros([1, k]), tf.zeros([1, k]), tf.zeros([1]))

        height, width = self.img_shape

        @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32,
                                                    name=INPUT_NAME)])
        def detect(images):
            net_input, _, _, _ = self._at_size_fn(images[0], tf.zeros([0], tf.int64),
                                                  tf.zeros([0, 4], tf.float32), self.img_shape)
            flat = self._flat(net_input[tf.newaxis])
            # The select_top_k best anchors of each class (top_k: equal scores, lower anchor
            # first), one candidate each, class-major: [num_fg * top_k].
            best = tf.math.top_k(tf.transpose(flat["predictions"][0, :, 1:]), k=top_k)
            index = tf.reshape(best.indices, [-1])
            scores = tf.reshape(best.values, [1, num_fg * top_k, 1])
            encodings = tf.gather(flat["localisations"][0], index)
            encodings = tf.gather(encodings, _XYWH_TO_YXHW, axis=-1)[tf.newaxis]
            anchors = tf.gather(tf.constant(table), index) + tf.constant(offsets)
            anchors = tf.cast(anchors, tf.float32) * (2.0 ** -ANCHOR_BITS)
            boxes, _, det_scores, count = fused_postprocess(encodings, scores, anchors)
            # Each class's boxes were decoded in their own square of the plane: the square
            # gives the class, and moving it back gives the box.
            centre = (boxes[:, :, 0:2] + boxes[:, :, 2:4]) * 0.5  # (cy, cx) [1, K, 2]
            square = tf.floor((centre + (0.5 * CLASS_SPACING - 0.5)) / CLASS_SPACING)
            live = tf.range(tf.shape(boxes)[1], dtype=tf.float32)[None, :] < count[:, None]
            classes = tf.where(live, tf.reduce_sum(square * tf.constant([grid, 1.0]), axis=-1), 0.0)
            shift = tf.concat([square, square], axis=-1) * CLASS_SPACING
            boxes = tf.where(live[..., None], boxes - shift, 0.0)
            return dict(zip(TFLITE_OUTPUT_KEYS, (boxes, classes, det_scores, count)))

        return detect


def make_tflite_input_fn(preprocessing_name: str, img_shape: Sequence[int]):
    """``fn(image uint8 [H, W, 3]) -> (float32 [h, w, 3] RGB 0..255, bbox_img [4])``: the eval
    preprocessing (warp resize) without the mean subtraction, which the TFLite graph does. The
    bilinear weights sum to one, so this equals the eval preprocessing's output plus the
    means up to float rounding."""
    eval_fn = preprocessing_factory.get_preprocessing(
        preprocessing_name, is_training=False, resize=Resize.WARP_RESIZE, means=(0.0, 0.0, 0.0))
    shape = tuple(int(s) for s in img_shape)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def resize(image):
        net_input, _, _, bbox_img = eval_fn(image, tf.zeros([0], tf.int64),
                                            tf.zeros([0, 4], tf.float32), shape)
        return net_input, bbox_img

    return resize
