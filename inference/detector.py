"""The detector: images of any size -> the eval preprocessing -> the net -> post-processing ->
boxes in the original image.

It runs the very preprocessing function that evaluation runs
(``preprocessing_factory.get_preprocessing(name, is_training=False)``, WARP_RESIZE by default:
bilinear warp to the net's input, RGB minus ``tf_extended.images.RGB_MEANS``), and maps the
detections back with that function's ``bbox_img``
(``ssd_vgg_preprocessing.bboxes_to_original``), so what ``detect.py``, the demo and the
notebook show is what ``eval_ssd_network.py`` scores.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from preprocessing import preprocessing_factory
from preprocessing.ssd_vgg_preprocessing import Resize, bboxes_to_original

# The window of the network input in its own coordinates (detections are clipped to it).
_UNIT_WINDOW = (0.0, 0.0, 1.0, 1.0)


def detections_to_list(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, count: int,
                       height: int, width: int,
                       class_names: Optional[Mapping[int, str]] = None) -> list[dict[str, Any]]:
    """One image's detections as JSON-ready dicts, best first.

    Args:
      boxes: [K, 4] ``(ymin, xmin, ymax, xmax)`` normalized to the original image (what
        :meth:`ImageDetector.detect` returns).
      scores, classes: [K]; count: how many of the K rows are real.
      height, width: of the original image, in pixels.

    Returns:
      ``[{'class_id', 'class_name' (when known), 'score', 'bbox': {'ymin','xmin','ymax','xmax'}
      in pixels of the original image, clipped to it}]``.
    """
    scale = np.array([height, width, height, width], np.float64)
    pixels = np.clip(boxes[:count].astype(np.float64), 0.0, 1.0) * scale
    result = []
    for box, score, cls in zip(pixels, scores[:count], classes[:count]):
        item: dict[str, Any] = {"class_id": int(cls)}
        if class_names and int(cls) in class_names:
            item["class_name"] = class_names[int(cls)]
        item["score"] = round(float(score), 6)
        item["bbox"] = {k: round(float(v), 2) for k, v in zip(("ymin", "xmin", "ymax", "xmax"), box)}
        result.append(item)
    return result


class ImageDetector:
    """Runs the eval preprocessing, a net and its post-processing on images.

    Args:
      net: an SSD net (DESIGN.md §3).
      select_threshold, nms_threshold, select_top_k, keep_top_k: see ``net.detected_bboxes``.
      frozen: snapshot the net's current weights as graph constants (faster on CPU, see
        ``net.inference_function``); make a new detector after changing the weights.
      preprocessing_name: the eval preprocessing to run (default: the net's ``model_name``,
        as in ``eval_ssd_network.py``).
      resize: the eval resize mode (``eval_ssd_network.py --eval_resize``), WARP_RESIZE by default.
    """

    def __init__(self, net, select_threshold: float = 0.5, nms_threshold: float = 0.45,
                 select_top_k: int = 400, keep_top_k: int = 200, frozen: bool = True,
                 preprocessing_name: Optional[str] = None,
                 resize: Resize | int = Resize.WARP_RESIZE):
        self.net = net
        self.options = dict(select_threshold=select_threshold, nms_threshold=nms_threshold,
                            select_top_k=select_top_k, keep_top_k=keep_top_k)
        self.resize = Resize(int(resize))
        img_shape = tuple(int(s) for s in net.params.img_shape)
        eval_fn = preprocessing_factory.get_preprocessing(
            preprocessing_name or net.model_name, is_training=False, resize=self.resize)

        # One trace for every image size (the pipeline's tf.data map is a graph too).
        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def preprocess(image):
            net_input, _, _, bbox_img = eval_fn(image, tf.zeros([0], tf.int64),
                                                tf.zeros([0, 4], tf.float32), img_shape)
            return net_input, bbox_img

        forward = net.inference_function(frozen=frozen)

        @tf.function(input_signature=[tf.TensorSpec([None, *img_shape, 3], tf.float32)])
        def run(images):
            out = forward(images)
            return net.detected_bboxes(out, clip_window=_UNIT_WINDOW, **self.options)

        self._preprocess = preprocess
        self._run = run

    @property
    def num_classes(self) -> int:
        """Number of classes with the background."""
        return int(self.net.params.num_classes)

    def preprocess(self, image: np.ndarray | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """uint8 [H, W, 3] RGB -> ``(net input float32 [h, w, 3], bbox_img float32 [4])``: the
        eval preprocessing (``bbox_img``: the original image's extent in net-input units)."""
        return self._preprocess(tf.convert_to_tensor(image, tf.uint8))

    def __call__(self, images: np.ndarray | tf.Tensor) -> dict[str, np.ndarray]:
        """Preprocessed images float32 [N, h, w, 3] -> detections as NumPy arrays, boxes
        ``(ymin, xmin, ymax, xmax)`` normalized to the net input (see ``net.detected_bboxes``)."""
        return {k: v.numpy() for k, v in self._run(tf.convert_to_tensor(images, tf.float32)).items()}

    def detect(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Images (uint8 [H, W, 3] RGB, any sizes, one batch) -> detections.

        Returns:
          ``{'boxes': [N, K, 4] (ymin, xmin, ymax, xmax) normalized to each original image and
          clipped to it, 'scores': [N, K], 'classes': [N, K], 'num_detections': [N]}``, NumPy,
          K = keep_top_k, best first.
        """
        inputs, windows = zip(*(self.preprocess(image) for image in images))
        det = self(tf.stack(inputs))
        det["boxes"] = bboxes_to_original(tf.constant(det["boxes"]), tf.stack(windows)).numpy()
        return det
