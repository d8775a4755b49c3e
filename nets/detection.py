"""Detection on image files: load -> warp-resize + mean subtraction -> net -> detected_bboxes
-> JSON in original-image pixels. The library side of ``detect.py`` and ``demo.py``.

The preprocessing here is deliberately the minimal eval chain of the original (WARP_RESIZE,
bilinear, RGB minus the means); ``preprocessing/`` owns the full train/eval chains.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from nets import checkpoints, nets_factory
from tf_extended.errors import describe_error

logger = logging.getLogger(__name__)

# ImageNet RGB means used by Caffe SSD / VGG-16 (DESIGN.md §5): images enter the net as
# RGB float minus these.
RGB_MEANS = (123.0, 117.0, 104.0)


def load_image(path: str) -> np.ndarray:
    """Read an image file (JPEG, PNG, BMP, GIF first frame) -> uint8 [H, W, 3] RGB.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a decodable image (the message names it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file not found.")
    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        raise ValueError(f"{path}: not a readable image ({describe_error(err)}).") from None
    return image.numpy()


def preprocess_image(image: np.ndarray | tf.Tensor, img_shape: Sequence[int]) -> tf.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [h, w, 3]: warp (bilinear) resize to ``img_shape``,
    then minus :data:`RGB_MEANS` (the original's eval WARP_RESIZE)."""
    image = tf.image.resize(tf.cast(image, tf.float32), img_shape, method="bilinear")
    return image - tf.constant(RGB_MEANS, tf.float32)


def detections_to_list(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, count: int,
                       height: int, width: int,
                       class_names: Optional[Mapping[int, str]] = None) -> list[dict[str, Any]]:
    """One image's detections as JSON-ready dicts, best first.

    Args:
      boxes: [K, 4] ``(ymin, xmin, ymax, xmax)`` normalized to the image (warp resize keeps
        normalized coordinates, so they map straight back to the original image).
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
    """Runs a net and its post-processing in one ``tf.function`` on batches of images.

    Args:
      net: an SSD net (DESIGN.md §3).
      select_threshold, nms_threshold, select_top_k, keep_top_k: see ``net.detected_bboxes``.
      frozen: snapshot the net's current weights as graph constants (faster on CPU, see
        ``net.inference_function``); make a new detector after changing the weights.
    """

    def __init__(self, net, select_threshold: float = 0.5, nms_threshold: float = 0.45,
                 select_top_k: int = 400, keep_top_k: int = 200, frozen: bool = True):
        self.net = net
        self.options = dict(select_threshold=select_threshold, nms_threshold=nms_threshold,
                            select_top_k=select_top_k, keep_top_k=keep_top_k)
        img_h, img_w = net.params.img_shape
        spec = tf.TensorSpec([None, img_h, img_w, 3], tf.float32)
        forward = net.inference_function(frozen=frozen)

        @tf.function(input_signature=[spec])
        def run(images):
            out = forward(images)
            return net.detected_bboxes(out, clip_window=(0.0, 0.0, 1.0, 1.0), **self.options)

        self._run = run

    def __call__(self, images: np.ndarray | tf.Tensor) -> dict[str, np.ndarray]:
        """Preprocessed images float32 [N, h, w, 3] -> detections as NumPy arrays."""
        return {k: v.numpy() for k, v in self._run(tf.convert_to_tensor(images, tf.float32)).items()}

    def detect_files(self, paths: Sequence[str], batch_size: int = 4,
                     class_names: Optional[Mapping[int, str]] = None) -> list[dict[str, Any]]:
        """Detect objects in image files.

        Returns:
          One dict per path: ``{'image', 'height', 'width', 'detections': [...]}`` (see
          :func:`detections_to_list`; coordinates in the original image's pixels).
        """
        img_shape = self.net.params.img_shape
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [load_image(p) for p in chunk]
            batch = tf.stack([preprocess_image(im, img_shape) for im in images])
            det = self(batch)
            for i, (path, image) in enumerate(zip(chunk, images)):
                height, width = image.shape[:2]
                results.append({
                    "image": path, "height": int(height), "width": int(width),
                    "detections": detections_to_list(
                        det["boxes"][i], det["scores"][i], det["classes"][i],
                        int(det["num_detections"][i]), height, width, class_names),
                })
        return results


def build_net(model_name: Optional[str] = None, checkpoint_path: Optional[str] = None,
              num_classes: Optional[int] = None, anchor_preset: Optional[str] = None,
              dtype_policy: Any = None):
    """A net ready for detection: its params from the checkpoint's sidecar (or the checkpoint's
    variables, or the network defaults; the arguments override), its weights from the
    checkpoint. Without a checkpoint the weights are random (demo and tests only)."""
    if checkpoint_path:
        model_name, params = checkpoints.checkpoint_params(
            checkpoint_path, model_name=model_name, num_classes=num_classes,
            anchor_preset=anchor_preset)
    else:
        model_name = model_name or "ssd_300_vgg"
        params = nets_factory.get_network(model_name).default_params
        if num_classes is not None:
            params = params.with_num_classes(num_classes)
        if anchor_preset is not None:
            params = params.with_anchor_preset(anchor_preset)
    net = nets_factory.get_network(model_name)(params, dtype_policy=dtype_policy)
    if checkpoint_path:
        net.load_checkpoint(checkpoint_path)
    else:
        logger.warning("No checkpoint: %s has random weights, detections are meaningless.",
                       model_name)
    return net


def write_results(results: Sequence[Mapping[str, Any]], output_dir: str,
                  extra: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Write one ``<output_dir>/<image stem>.json`` per result (``extra`` keys added to each,
    e.g. model name and thresholds); stems used twice get ``_1``, ``_2`` ... Returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    taken: set[str] = set()
    paths = []
    for result in results:
        stem = os.path.splitext(os.path.basename(result["image"]))[0] or "image"
        name, n = f"{stem}.json", 0
        while name in taken:
            n += 1
            name = f"{stem}_{n}.json"
        taken.add(name)
        path = os.path.join(output_dir, name)
        payload = dict(result)
        payload.update(extra or {})
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        paths.append(path)
    return paths
