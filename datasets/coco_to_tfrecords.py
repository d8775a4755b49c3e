"""COCO detection JSON (``instances_<split>.json``) -> TFRecord shards.

Input: a COCO-format annotation file (``images``, ``annotations``, ``categories``) and the
folder of its images (``file_name`` is relative to it). Output: shards
``<output_dir>/<output_name>_NNN.tfrecord`` in the format of ``datasets.tfrecords`` (the
original keys plus ``image/coco_id``, ``image/object/bbox/iscrowd``, ``image/object/area``)
and the label map ``<output_dir>/<output_name>_label_map.json`` (``datasets.coco_common``):
category ids in ascending order -> labels 1..N.

- Images are written in ascending image-id order, each with its annotations in file order;
  images without annotations are kept (no objects).
- Boxes: COCO's ``bbox`` is ``[x, y, width, height]`` in pixels (0-based, continuous); stored
  as ``(y / H, x / W, (y + height) / H, (x + width) / W)`` with the image's own size, not
  clipped. ``area`` is COCO's (the segmentation's area); an annotation without one gets
  ``width * height``. ``iscrowd`` defaults to 0. ``difficult`` and ``truncated`` are 0 (COCO
  has neither). ``image/filename`` is the image's ``file_name``.
- Image bytes: as the VOC converter (``shard_writer.load_image``): JPEG and PNG as is, any
  other format re-encoded as lossless PNG; every image fully read once.
- Errors, one line each: malformed JSON or a malformed field (the file, the annotation index
  and id), a missing image file (naming the image id), a box of zero (or negative) width or
  height and an unknown category (naming the annotation id and its image id). A bad image
  stops the run; ``skip_errors`` skips it (and annotations of image ids not in ``images``).
  Warnings (logged, counted): an image whose size differs from the JSON's, a box that extends
  past its image by more than a pixel.
- The shard writing is ``datasets.shard_writer``'s (atomic shards, parallel workers,
  byte-identical re-runs, stale temporary folders removed, ``overwrite``).

Annotation indexing (:func:`index_annotations`) is :func:`load_json` (``json.loads`` of the
file with its segmentation masks cut out first) and then NumPy (:func:`build_index`): each
field is read once into an array, annotations are grouped per image with one stable argsort,
category ids and image ids are looked up with ``searchsorted``; only bad annotations are
visited one by one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from typing import Any, Mapping, Sequence

import numpy as np

from datasets import coco_common
from datasets import shard_writer
from datasets import tfrecords
from datasets.shard_writer import ConversionSummary, DataError, UsageError

log = logging.getLogger(__name__)

DEFAULT_SAMPLES_PER_SHARD = shard_writer.DEFAULT_SAMPLES_PER_SHARD
# A box may extend this many pixels past its image before a warning (COCO's float boxes
# sometimes overshoot by a fraction of a pixel).
_OUTSIDE_TOLERANCE = 1.0


@dataclasses.dataclass
class CocoIndex:
    """The annotations of a COCO file, grouped per image (images in ascending id order).

    Per image i: ``image_ids[i]``, ``file_names[i]``, the JSON's ``widths[i]``/``heights[i]``
    (0 when absent), and its annotations ``ann_start[i]:ann_start[i + 1]`` of the per-object
    arrays ``ann_ids``, ``labels`` (1..N), ``category_ids``, ``bboxes`` (float64 [M, 4] COCO
    ``[x, y, w, h]``), ``iscrowd``, ``areas``. ``image_errors`` maps an image index to the
    first problem of its annotations (the image is bad); ``orphans`` lists annotations whose
    image id is not in ``images`` (one problem line each, without the file name).
    """
    path: str
    label_map: coco_common.CocoLabelMap
    image_ids: np.ndarray
    file_names: list[str]
    widths: np.ndarray
    heights: np.ndarray
    ann_start: np.ndarray
    ann_ids: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    bboxes: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray
    image_errors: dict[int, str]
    orphans: list[str]

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_ids)


# A value of the key "segmentation" in the COCO forms (polygons: a list of lists of numbers;
# RLE: {"counts": string or list of ints, "size": [h, w]}), matched strictly: every span it
# replaces is itself valid JSON, so dropping it changes neither the validity of the file nor
# any value the converter reads. Possessive quantifiers (Python 3.11) keep it linear.
_S = rb"\s*+"
_NUM = rb"-?+(?:0|[1-9]\d*+)(?:\.\d++)?+(?:[eE][-+]?+\d++)?+"
_INT = rb"(?:0|[1-9]\d*+)"
_NUMS = rb"\[" + _S + rb"(?:" + _NUM + rb"(?:" + _S + rb"," + _S + _NUM + rb")*+)?" + _S + rb"\]"
_POLYGONS = rb"\[" + _S + rb"(?:" + _NUMS + rb"(?:" + _S + rb"," + _S + _NUMS + rb")*+)?" + _S + rb"\]"
_COUNTS = (rb'"counts"' + _S + rb":" + _S + rb'(?:"[^"\\]*+"|\[' + _S + rb"(?:" + _INT + rb"(?:"
           + _S + rb"," + _S + _INT + rb")*+)?" + _S + rb"\])")
_SIZE = rb'"size"' + _S + rb":" + _S + rb"\[" + _S + _INT + _S + rb"," + _S + _INT + _S + rb"\]"
_RLE = (rb"\{" + _S + rb"(?:" + _COUNTS + _S + rb"," + _S + _SIZE + rb"|" + _SIZE + _S + rb","
        + _S + _COUNTS + rb")" + _S + rb"\}")
_SEGMENTATION = re.compile(rb'"segmentation"' + _S + rb":" + _S + rb"(?:" + _POLYGONS + rb"|"
                           + _RLE + rb")")


def load_json(path: str, drop_segmentation: bool = True) -> Any:
    """Reads an annotation file; DataError naming it when unreadable or malformed.

    With ``drop_segmentation`` (the converter's), every ``"segmentation"`` value is replaced by
    0 in the file's bytes before parsing (one C-speed regular-expression pass): the masks are
    most of a COCO file (449 -> 142 MiB for bench/bench_coco_data.py's train2017-sized file)
    and the converter never reads them, so parsing is about 3x faster and needs a fraction of
    the memory (docs/datasets.md has the figures). Malformed JSON is reported as ``json`` reports it on the original text.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read the annotation file ({e.strerror})") from None
    try:
        if drop_segmentation:
            data = _SEGMENTATION.sub(b'"segmentation":0', data)
        return json.loads(data)
    except json.JSONDecodeError:
        if not drop_segmentation:
            raise _malformed(path, data) from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"malformed JSON (not UTF-8: {e.reason})") from None
    # The error's line and column in the original text (the substitution moved them).
    del data
    return load_json(path, drop_segmentation=False)


def _malformed(path: str, data: bytes) -> DataError:
    try:
        json.loads(data)
    except json.JSONDecodeError as e:
        return DataError(path, f"malformed JSON (line {e.lineno} column {e.colno}: {e.msg})")
    except UnicodeDecodeError as e:
        return DataError(path, f"malformed JSON (not UTF-8: {e.reason})")
    return DataError(path, "malformed JSON")


def _list_field(data: Mapping, key: str, path: str, required: bool = True) -> list:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise DataError(path, f"malformed COCO file: '{key}' must be a list"
                              + ("" if key in data else f" (no '{key}' key)"))
    return value


def _describe(entry: Any) -> str:
    text = json.dumps(entry, default=str) if isinstance(entry, dict) else repr(entry)
    return text if len(text) <= 120 else text[:117] + "..."


def _entry_name(kind: str, index: int, entry: Any) -> str:
    if isinstance(entry, dict) and "id" in entry:
        return f"{kind} id {entry['id']!r} ({kind} {index})"
    return f"{kind} {index}"


def _check_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_bad(entries: list, check, path: str, kind: str, problem: str):
    """The slow path: find the first entry failing ``check`` and raise a DataError naming it."""
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not check(entry):
            raise DataError(path, f"malformed COCO file: {_entry_name(kind, index, entry)}: "
                                  f"{problem}, got {_describe(entry)}")
    raise DataError(path, f"malformed COCO file: {kind}s: {problem}")


def _ints(entries: list, key: str, path: str, kind: str, default: int | None = None) -> np.ndarray:
    """``entry[key]`` of every entry as int64 (``default`` when absent, if given)."""
    try:
        if default is None:
            values = [e[key] for e in entries]
        else:
            values = [e.get(key, default) for e in entries]
        if set(map(type, values)) - {int}:  # bools, floats, strings, None: not ids
            raise TypeError
        return np.fromiter(values, np.int64, len(values))
    except (KeyError, TypeError, AttributeError, OverflowError):
        check = ((lambda e: _check_int(e.get(key, default))) if default is not None
                 else (lambda e: _check_int(e.get(key))))
        _first_bad(entries, check, path, kind, f"'{key}' must be an integer")
        raise AssertionError("unreachable") from None


def _numbers(entries: list, key: str, path: str, kind: str) -> np.ndarray:
    """``entry[key]`` (a number, or absent: NaN) of every entry as float64."""
    try:
        values = [e.get(key) for e in entries]
        return np.array([math.nan if v is None else v for v in values], np.float64)
    except (TypeError, ValueError, AttributeError):
        _first_bad(entries, lambda e: e.get(key) is None or _check_number(e.get(key)), path,
                   kind, f"'{key}' must be a number")
        raise AssertionError("unreachable") from None


def _boxes(annotations: list, path: str) -> np.ndarray:
    def ok(e):
        box = e.get("bbox")
        return isinstance(box, list) and len(box) == 4 and all(_check_number(v) for v in box)

    if not annotations:
        return np.zeros((0, 4), np.float64)
    try:
        boxes = np.array([a["bbox"] for a in annotations], np.float64)
        if boxes.shape != (len(annotations), 4) or not np.isfinite(boxes).all():
            raise ValueError
        return boxes.reshape(len(annotations), 4)
    except (KeyError, TypeError, ValueError, AttributeError):
        _first_bad(annotations, ok, path, "annotation",
                   "'bbox' must be [x, y, width, height] (4 numbers)")
        raise AssertionError("unreachable") from None


def _categories(data: Mapping, path: str) -> coco_common.CocoLabelMap:
    categories = _list_field(data, "categories", path)
    if not categories:
        raise DataError(path, "malformed COCO file: 'categories' is empty")
    pairs = []
    seen: dict[int, int] = {}
    for index, cat in enumerate(categories):
        if not (isinstance(cat, dict) and _check_int(cat.get("id"))
                and isinstance(cat.get("name"), str) and cat.get("name")):
            raise DataError(path, f"malformed COCO file: {_entry_name('category', index, cat)}: "
                                  f"needs an integer 'id' and a non-empty 'name', got {_describe(cat)}")
        if cat["id"] in seen:
            raise DataError(path, f"malformed COCO file: category id {cat['id']} is listed twice "
                                  f"(categories {seen[cat['id']]} and {index})")
        seen[cat["id"]] = index
        pairs.append((cat["id"], cat["name"]))
    return coco_common.CocoLabelMap.from_categories(pairs)


def build_index(data: Any, path: str) -> CocoIndex:
    """Indexes a loaded COCO detection file (see :class:`CocoIndex`).

    Raises DataError naming ``path`` (and the entry) for a file that is not a COCO detection
    file: a missing list, an entry without a required field or with a field of the wrong type,
    a duplicate image or category id. Problems of single annotations (unknown category, empty
    box) do not raise: they mark their image bad (``image_errors``).
    """
    if not isinstance(data, dict):
        raise DataError(path, "malformed COCO file: the top level must be an object with "
                              "'images', 'annotations' and 'categories'")
    label_map = _categories(data, path)
    images = _list_field(data, "images", path)
    annotations = _list_field(data, "annotations", path, required="annotations" in data)

    # -- images, in ascending id order
    image_ids = _ints(images, "id", path, "image")
    order = np.argsort(image_ids, kind="stable")
    image_ids = image_ids[order]
    duplicate = np.flatnonzero(image_ids[1:] == image_ids[:-1])
    if len(duplicate):
        raise DataError(path, f"malformed COCO file: image id {image_ids[duplicate[0]]} is listed "
                              "twice in 'images'")
    try:
        file_names = [images[i]["file_name"] for i in order]
        if not all(isinstance(n, str) and n for n in file_names):
            raise TypeError
    except (KeyError, TypeError):
        _first_bad(images, lambda e: isinstance(e.get("file_name"), str) and e["file_name"],
                   path, "image", "'file_name' must be a non-empty string")
        raise AssertionError("unreachable") from None
    widths = _ints(images, "width", path, "image", default=0)[order]
    heights = _ints(images, "height", path, "image", default=0)[order]

    # -- annotations: one array per field
    ann_ids = _ints(annotations, "id", path, "annotation")
    ann_images = _ints(annotations, "image_id", path, "annotation")
    category_ids = _ints(annotations, "category_id", path, "annotation")
    bboxes = _boxes(annotations, path)
    iscrowd = _ints(annotations, "iscrowd", path, "annotation", default=0)
    areas = _numbers(annotations, "area", path, "annotation")
    missing_area = np.isnan(areas)
    areas[missing_area] = bboxes[missing_area, 2] * bboxes[missing_area, 3]

    # -- group by image (stable: file order within an image)
    position = np.searchsorted(image_ids, ann_images)
    known_image = position < len(image_ids)
    known_image[known_image] = image_ids[position[known_image]] == ann_images[known_image]
    orphans = [f"annotation id {ann_ids[k]} refers to image id {ann_images[k]}, which is not "
               "in 'images'" for k in np.flatnonzero(~known_image)]
    keep = np.flatnonzero(known_image)
    keep = keep[np.argsort(position[keep], kind="stable")]
    ann_ids, ann_images, category_ids = ann_ids[keep], ann_images[keep], category_ids[keep]
    bboxes, iscrowd, areas = bboxes[keep], iscrowd[keep], areas[keep]
    owner = position[keep]
    ann_start = np.searchsorted(owner, np.arange(len(image_ids) + 1), side="left")

    # -- labels and per-annotation checks
    known_ids = np.asarray(label_map.category_ids, np.int64)
    slot = np.minimum(np.searchsorted(known_ids, category_ids), len(known_ids) - 1)
    known_category = known_ids[slot] == category_ids
    labels = np.where(known_category, slot + 1, 0).astype(np.int64)
    empty_box = ~(bboxes[:, 2] > 0) | ~(bboxes[:, 3] > 0)
    image_errors: dict[int, str] = {}
    for k in np.flatnonzero(~known_category | empty_box):
        image = int(owner[k])
        if image in image_errors:
            continue
        where = f"annotation id {ann_ids[k]} (image id {ann_images[k]})"
        if not known_category[k]:
            known = ", ".join(str(c) for c in label_map.category_ids[:20])
            more = f", ... ({len(known_ids)} categories)" if len(known_ids) > 20 else ""
            image_errors[image] = (f"{where}: unknown category id {category_ids[k]} (known: "
                                   f"{known}{more})")
        else:
            x, y, w, h = (float(v) for v in bboxes[k])
            image_errors[image] = (f"{where}: box of zero or negative width or height (bbox "
                                   f"[{x:g}, {y:g}, {w:g}, {h:g}] is [x, y, width, height])")
    return CocoIndex(path=path, label_map=label_map, image_ids=image_ids, file_names=file_names,
                     widths=widths, heights=heights, ann_start=ann_start, ann_ids=ann_ids,
                     labels=labels, category_ids=category_ids, bboxes=bboxes,
                     iscrowd=iscrowd, areas=areas, image_errors=image_errors, orphans=orphans)


def index_annotations(path: str) -> CocoIndex:
    """Loads and indexes an annotation file (:func:`load_json` + :func:`build_index`)."""
    data = load_json(path)
    try:
        return build_index(data, path)
    finally:
        del data


# ----------------------------------------------------------------------------- one example


@dataclasses.dataclass(frozen=True)
class CocoExamples:
    """The images of a :class:`CocoIndex` (a ``shard_writer.ExampleSource``: keys are the
    image positions in the index)."""
    index: CocoIndex
    images_dir: str

    def location(self, key: int) -> str:
        return os.path.join(self.images_dir, self.index.file_names[key])

    def convert(self, key: int) -> shard_writer.ExampleResult:
        return convert_example(self, key)


def convert_example(source: CocoExamples, key: int) -> shard_writer.ExampleResult:
    """Reads, checks and serializes image ``key`` of the index; DataError for bad input."""
    index = source.index
    image_id = int(index.image_ids[key])
    if key in index.image_errors:
        raise DataError(index.path, index.image_errors[key])
    image_path = source.location(key)
    if not os.path.isfile(image_path):
        raise DataError(image_path, f"image file not found (image id {image_id} of {index.path})")
    image = shard_writer.load_image(image_path)
    warnings = []
    json_size = (int(index.widths[key]), int(index.heights[key]))
    if json_size != (0, 0) and json_size != (image.width, image.height):
        warnings.append(f"{index.path}: image id {image_id} is {json_size[0]}x{json_size[1]} in "
                        f"the JSON but {image_path} is {image.width}x{image.height}; using the "
                        "image's size")
    start, end = int(index.ann_start[key]), int(index.ann_start[key + 1])
    boxes = index.bboxes[start:end]
    x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    outside = ((x < -_OUTSIDE_TOLERANCE) | (y < -_OUTSIDE_TOLERANCE)
               | (x + w > image.width + _OUTSIDE_TOLERANCE)
               | (y + h > image.height + _OUTSIDE_TOLERANCE))
    for k in np.flatnonzero(outside):
        warnings.append(f"{index.path}: annotation id {index.ann_ids[start + k]} (image id "
                        f"{image_id}): box [{x[k]:g}, {y[k]:g}, {w[k]:g}, {h[k]:g}] extends past "
                        f"the {image.width}x{image.height} image; kept as is")
    normalized = np.stack([y / image.height, x / image.width,
                           (y + h) / image.height, (x + w) / image.width], axis=1)
    labels = index.labels[start:end].tolist()
    names = tuple(index.label_map.class_names[label - 1] for label in labels)
    crowd = index.iscrowd[start:end].tolist()
    serialized = tfrecords.make_example(
        encoded=image.encoded, image_format=image.image_format, height=image.height,
        width=image.width, bboxes=normalized.tolist(), labels=labels, label_texts=names,
        difficult=[0] * len(labels), truncated=[0] * len(labels),
        filename=index.file_names[key], coco_id=image_id, iscrowd=crowd,
        area=index.areas[start:end].tolist())
    return shard_writer.ExampleResult(key, serialized, class_names=names, flags=tuple(crowd),
                                      reencoded=image.reencoded, warnings=tuple(warnings))


# ----------------------------------------------------------------------------- the run


def convert_coco(
    annotations_file: str,
    images_dir: str,
    output_dir: str,
    output_name: str,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    num_workers: int | None = None,
    overwrite: bool = False,
    skip_errors: bool = False,
) -> ConversionSummary:
    """Converts a COCO annotation file and its images into shards and a label map.

    Args:
      annotations_file: e.g. ``annotations/instances_val2017.json``.
      images_dir: the folder its ``file_name``s are relative to, e.g. ``val2017/``.
      output_dir: where the shards and ``<output_name>_label_map.json`` go (created if missing).
      output_name: shard name prefix, e.g. 'coco_2017_val' to match the factory's patterns.
      samples_per_shard, num_workers, overwrite, skip_errors: as for the VOC converter
        (``datasets.shard_writer.write_shards``); the label map is part of the output.

    Returns a ConversionSummary (``flag_name`` 'crowd'). Raises UsageError for bad arguments
    and DataError (one line naming the file and the image or annotation id) for bad data; in
    both cases nothing final is written.
    """
    start = time.monotonic()
    if samples_per_shard < 1:
        raise UsageError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    shard_writer.check_output_name(output_name)
    if not os.path.isfile(annotations_file):
        raise UsageError(f"{annotations_file}: annotation file not found (--annotations_file, "
                         "e.g. annotations/instances_val2017.json)")
    if not os.path.isdir(images_dir):
        raise UsageError(f"{images_dir}: no such folder (--images_dir: the folder of the "
                         "annotation file's images, e.g. val2017/)")
    index = index_annotations(annotations_file)
    log.info("%s: %d images, %d annotations, %d categories indexed in %.1f s",
             annotations_file, index.num_images, index.num_annotations,
             len(index.label_map.class_names), time.monotonic() - start)
    orphans = [f"{annotations_file}: {problem}" for problem in index.orphans]
    if orphans and not skip_errors:
        raise DataError(annotations_file, f"{index.orphans[0]} ({len(orphans)} such "
                                          "annotation(s); --skip_errors skips them)")
    for line in orphans:
        log.warning("skipping %s", line)
    if index.num_images == 0:
        raise DataError(annotations_file, "no images in 'images'; nothing to convert")
    extra = {os.path.basename(coco_common.label_map_path(output_dir, output_name)):
             index.label_map.to_json_bytes()}
    return shard_writer.write_shards(
        CocoExamples(index, os.path.normpath(images_dir)), list(range(index.num_images)),
        output_dir, output_name, dataset_dir=annotations_file,
        class_names=index.label_map.class_names, flag_name="crowd",
        samples_per_shard=samples_per_shard, num_workers=num_workers, overwrite=overwrite,
        skip_errors=skip_errors, extra_files=extra, skipped=orphans,
        start_time=start)
