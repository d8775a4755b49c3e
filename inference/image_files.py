"""Detection on image files: find and read the images, run an :class:`ImageDetector`, write
one JSON (and an annotated PNG) per image plus an index. The library side of ``detect.py``.

Every file is written atomically (``fileio.atomic``): two runs into one folder never leave a
half-written file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from fileio import atomic
from inference import drawing
from inference.detector import ImageDetector, detections_to_list
from tf_extended.errors import describe_error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
INDEX_FILENAME = "detections.json"


def load_image(path: str) -> np.ndarray:
    """Read an image file (JPEG, PNG, BMP, GIF first frame) -> uint8 [H, W, 3] RGB.

    Decoded like the TFRecord reader decodes ``image/encoded`` (``tf.io.decode_image``, 3
    channels), so a file gives the pixels evaluation sees.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a decodable image (the message names it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file not found.")
    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        raise ValueError(f"{path}: not a readable image ({describe_error(err)}).") from None
    return image.numpy()


def list_images(inputs: Sequence[str]) -> list[str]:
    """Image files named by ``inputs``: files as given, folders expanded (sorted, not recursive,
    extensions :data:`IMAGE_EXTENSIONS`). Raises FileNotFoundError for a missing path and
    ValueError for a folder without images."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, name)))
            if not found:
                raise ValueError(f"{item}: folder holds no image file ({', '.join(IMAGE_EXTENSIONS)}).")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: image file or folder not found.")
    return paths


def unique_stems(paths: Sequence[str]) -> list[str]:
    """Output names: the file stem, with ``_1``, ``_2`` ... for stems seen before."""
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = stem, 0
        while name in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add(name)
        stems.append(name)
    return stems


@dataclasses.dataclass
class DetectionRun:
    """What :func:`detect_images` did.

    Attributes:
      results: one dict per image read, in input order: ``{'image', 'height', 'width',
        'detections', 'json', 'png' (when drawn)}``, boxes ``(ymin, xmin, ymax, xmax)`` in
        pixels of the original image (see :func:`inference.detector.detections_to_list`).
      failed: one message per image that could not be read, naming it (those images have
        no output file).
      index: the path of the index file (every result in one JSON).
    """

    results: list[dict[str, Any]]
    failed: list[str]
    index: str


def detect_images(detector: ImageDetector, paths: Sequence[str], output_dir: str, *,
                  class_names: Optional[Mapping[int, str]] = None, batch_size: int = 4,
                  draw: bool = True, extra: Optional[Mapping[str, Any]] = None,
                  progress: bool = False) -> DetectionRun:
    """Run ``detector`` over image files and write JSON (+ annotated PNG) files.

    An image that cannot be read is skipped and listed in ``DetectionRun.failed``; the others
    are processed.

    Args:
      detector: an :class:`inference.detector.ImageDetector`, or any object with its
        ``detect(images)`` and ``num_classes`` (an exported model: ``deploy.runtime``).
      paths: image files.
      output_dir: created if needed; gets ``<stem>.json``, ``<stem>.png`` and
        :data:`INDEX_FILENAME` (every result; written also when no image could be read).
      class_names: {class id: name} for the JSON and the drawings.
      batch_size: images per forward pass.
      draw: write the annotated PNGs.
      extra: keys added to every per-image JSON and to the index (model name, thresholds...).
      progress: show a tqdm progress bar (on stderr).
    """
    os.makedirs(output_dir, exist_ok=True)
    stems = unique_stems(paths)
    num_classes = detector.num_classes
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    pending: list[tuple[str, str, np.ndarray]] = []  # (path, stem, image) of the next batch

    with tqdm(total=len(paths), desc="detect", unit="image", disable=not progress) as bar:
        def flush() -> None:
            det = detector.detect([image for _, _, image in pending])
            for i, (path, stem, image) in enumerate(pending):
                height, width = image.shape[:2]
                result = {"image": path, "height": int(height), "width": int(width),
                          "detections": detections_to_list(
                              det["boxes"][i], det["scores"][i], det["classes"][i],
                              int(det["num_detections"][i]), height, width, class_names)}
                json_path = os.path.join(output_dir, stem + ".json")
                atomic.write_json(json_path, {**result, **(extra or {})})
                result["json"] = json_path
                if draw:
                    annotated = drawing.draw_detections(image, result["detections"], class_names,
                                                        num_classes)
                    result["png"] = drawing.save_png(annotated, os.path.join(output_dir, stem + ".png"))
                results.append(result)
            bar.update(len(pending))
            pending.clear()

        for path, stem in zip(paths, stems):
            try:
                pending.append((path, stem, load_image(path)))
            except (FileNotFoundError, ValueError) as err:
                failed.append(str(err))
                bar.update(1)
                continue
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    index = atomic.write_json(os.path.join(output_dir, INDEX_FILENAME),
                              {**(extra or {}), "images": results})
    return DetectionRun(results=results, failed=failed, index=index)
