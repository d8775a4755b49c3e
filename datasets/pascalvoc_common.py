"""Pascal VOC label map and label-map files for VOC-format custom datasets.

Label ids follow the original project (reference §11): 0 is the background (no object),
then the 20 VOC classes in alphabetical order, 1 aeroplane ... 20 tvmonitor.

A label-map file (``--labels`` of ``tf_convert_data.py``, ``labels_file`` of
``dataset_factory.get_dataset``) lists one class name per line; the n-th name gets id n
(1-based), id 0 is always the background and is never written in the file. Blank lines and
lines starting with ``#`` are ignored; surrounding whitespace is stripped.
"""
from __future__ import annotations

import os
from typing import Sequence

# The 20 Pascal VOC classes; position + 1 is the label id (reference §11).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The original's VOC_LABELS: name -> (label id, super-category). Kept for users of the old API.
VOC_LABELS: dict[str, tuple[int, str]] = {
    "none": (0, "Background"),
    "aeroplane": (1, "Vehicle"), "bicycle": (2, "Vehicle"), "bird": (3, "Animal"),
    "boat": (4, "Vehicle"), "bottle": (5, "Indoor"), "bus": (6, "Vehicle"), "car": (7, "Vehicle"),
    "cat": (8, "Animal"), "chair": (9, "Indoor"), "cow": (10, "Animal"),
    "diningtable": (11, "Indoor"), "dog": (12, "Animal"), "horse": (13, "Animal"),
    "motorbike": (14, "Vehicle"), "person": (15, "Person"), "pottedplant": (16, "Indoor"),
    "sheep": (17, "Animal"), "sofa": (18, "Indoor"), "train": (19, "Vehicle"),
    "tvmonitor": (20, "Indoor"),
}

BACKGROUND_NAME = "background"
# Names that would silently shift every id by one if listed in a label-map file.
_RESERVED_NAMES = ("background", "none", "__background__")


class LabelMapError(ValueError):
    """A label-map file that cannot be used; the message names the file and the line."""


def load_label_map(path: str) -> tuple[str, ...]:
    """Reads a label-map file (one class name per line) -> class names, id = index + 1.

    Raises LabelMapError (naming the file and line) for a missing or empty file, a duplicate
    name, or a background name ("background"/"none": id 0 is implicit).
    """
    if not os.path.isfile(path):
        raise LabelMapError(f"{path}: label-map file not found")
    names: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name.lower() in _RESERVED_NAMES:
                raise LabelMapError(
                    f"{path}:{line_no}: '{name}' is the background, which is always id 0 and must "
                    "not be listed (the first name listed gets id 1)")
            if name in seen:
                raise LabelMapError(
                    f"{path}:{line_no}: duplicate class name '{name}' (first on line {seen[name]})")
            seen[name] = line_no
            names.append(name)
    if not names:
        raise LabelMapError(f"{path}: no class names (expected one name per line)")
    return tuple(names)


def names_to_labels(class_names: Sequence[str]) -> dict[str, int]:
    """Class names (ids 1..N in order) -> {name: id}."""
    return {name: i + 1 for i, name in enumerate(class_names)}


def labels_to_names(class_names: Sequence[str]) -> dict[int, str]:
    """Class names (ids 1..N in order) -> {id: name}, with 0 -> 'background'."""
    mapping: dict[int, str] = {0: BACKGROUND_NAME}
    mapping.update({i + 1: name for i, name in enumerate(class_names)})
    return mapping

