"""Pascal VOC-format folders -> TFRecord shards (the library behind ``tf_convert_data.py``).

Input: a VOC root (``VOC2007/``, or any folder in the VOC layout) with ``Annotations/<id>.xml``,
``JPEGImages/<id>.jpg`` and optionally ``ImageSets/Main/<split>.txt``. Output: shards
``<output_dir>/<output_name>_NNN.tfrecord`` of ``samples_per_shard`` examples each, in the
format of ``datasets.tfrecords`` (the original project's keys).

What it guarantees (the original converter's bugs, reference §5 and §12, fixed):
- difficult and truncated are read from the XML (default 0 when an object has no such field);
- images are read as bytes; JPEG (gray or RGB) and PNG files are stored byte for byte with
  ``image/format`` b'JPEG' / b'PNG' (whatever the file's extension says); any other image
  (CMYK JPEG, GIF, BMP, TIFF, WebP...) is converted to RGB and stored as a lossless PNG;
- image sizes come from the image itself; an XML ``<size>`` that disagrees gives a warning;
- every image is fully read once (JPEGs at 1/8 scale, which still reads the whole
  compressed stream) so that a truncated or corrupt file is caught here, not in training;
- bad input stops the run with one line ``<file>: <problem>`` (or, with ``skip_errors``, is
  skipped, logged and counted); shards are written under a hidden temporary folder and
  renamed only when everything succeeded, so a failed or interrupted run leaves no shard
  where training would read it;
- the same input and options give byte-identical shards (sorted order, no timestamps).

The shard writing (workers, temporary folder, overwrite, skip_errors, summary) and the image
check are ``datasets.shard_writer``'s, shared with the COCO converter.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from typing import Mapping, Sequence

import defusedxml
import defusedxml.ElementTree as SafeET

from datasets import pascalvoc_common
from datasets import shard_writer
from datasets import tfrecords
# The shared pieces, under the names this module always had.
from datasets.shard_writer import (  # noqa: F401 - re-exported
    ConversionError, ConversionSummary, DataError, LoadedImage, UsageError, existing_shards,
    load_image, shard_path)

log = logging.getLogger(__name__)

# The original converter's shard size (reference §5).
DEFAULT_SAMPLES_PER_SHARD = shard_writer.DEFAULT_SAMPLES_PER_SHARD
# The original converter's (unused) shuffling seed (reference §5).
DEFAULT_SEED = 4242

ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "JPEGImages"
SPLITS_DIR = os.path.join("ImageSets", "Main")
# Image file names tried for an id when JPEGImages/<id>.jpg (the VOC name) does not exist,
# after the XML's <filename>.
_OTHER_EXTENSIONS = (".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".gif", ".tif", ".tiff",
                     ".webp")
_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


@dataclasses.dataclass(frozen=True)
class VocObject:
    """One annotated object; bbox is (xmin, ymin, xmax, ymax) in the XML's pixel units."""
    name: str
    label: int
    bbox: tuple[float, float, float, float]
    difficult: int
    truncated: int


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
    """A parsed annotation file. ``size`` is the XML's (width, height), None if absent."""
    filename: str
    size: tuple[int, int] | None
    objects: tuple[VocObject, ...]


# ----------------------------------------------------------------------------- parsing


def _child_text(element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _parse_flag(obj, tag: str, where: str, xml_path: str) -> int:
    text = _child_text(obj, tag)
    if text is None or text == "":
        return 0  # VOC2012 has objects without <truncated>/<difficult>: absent means 0.
    try:
        value = int(float(text))
    except ValueError:
        raise DataError(xml_path, f"{where}: <{tag}> is '{text}', expected 0 or 1") from None
    if value not in (0, 1) or float(text) != value:
        raise DataError(xml_path, f"{where}: <{tag}> is '{text}', expected 0 or 1")
    return value


def parse_annotation(xml_bytes: bytes, xml_path: str,
                     class_to_label: Mapping[str, int]) -> VocAnnotation:
    """Parses one VOC XML annotation (with defusedxml) and checks every required field.

    Required per object: ``<name>`` (a class of ``class_to_label``; surrounding whitespace is
    ignored, case is not) and ``<bndbox>`` with numeric xmin, ymin, xmax, ymax. Optional:
    ``<difficult>``, ``<truncated>`` (0 when absent), ``<filename>``, ``<size>``. Only direct
    children of ``<object>`` are read, so the ``<part>`` boxes of VOC person layouts are
    ignored. Raises DataError naming ``xml_path`` and the object.
    """
    if not xml_bytes.strip():
        raise DataError(xml_path, "empty annotation file")
    try:
        root = SafeET.fromstring(xml_bytes)
    except SafeET.ParseError as e:
        raise DataError(xml_path, f"not valid XML ({e})") from None
    except defusedxml.DefusedXmlException as e:
        raise DataError(xml_path, f"refused unsafe XML ({type(e).__name__})") from None
    if root.tag != "annotation":
        raise DataError(xml_path, f"root element is <{root.tag}>, expected <annotation>")

    size = None
    size_el = root.find("size")
    if size_el is not None:
        try:
            size = (int(float(_child_text(size_el, "width") or "")),
                    int(float(_child_text(size_el, "height") or "")))
        except ValueError:
            size = None

    objects = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = _child_text(obj, "name")
        if not name:
            raise DataError(xml_path, f"object {index} has no <name>")
        where = f"object {index} '{name}'"
        if name not in class_to_label:
            names = list(class_to_label)
            known = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20 else "")
            raise DataError(xml_path, f"{where}: unknown class '{name}' (known: {known}); "
                                      "fix the XML or add the class to the label map (--labels)")
        box_el = obj.find("bndbox")
        if box_el is None:
            raise DataError(xml_path, f"{where} has no <bndbox>")
        coords = []
        for tag in _BOX_TAGS:
            text = _child_text(box_el, tag)
            if text is None or text == "":
                raise DataError(xml_path, f"{where}: <bndbox> has no <{tag}>")
            try:
                coords.append(float(text))
            except ValueError:
                raise DataError(xml_path, f"{where}: <{tag}> is '{text}', not a number") from None
        objects.append(VocObject(
            name=name, label=class_to_label[name], bbox=tuple(coords),
            difficult=_parse_flag(obj, "difficult", where, xml_path),
            truncated=_parse_flag(obj, "truncated", where, xml_path)))
    return VocAnnotation(filename=_child_text(root, "filename") or "", size=size,
                         objects=tuple(objects))


def check_boxes(annotation: VocAnnotation, width: int, height: int, xml_path: str) -> None:
    """Raises DataError unless 0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height.

    VOC pixel coordinates are 1-based and a box may touch the border (xmax == width).
    """
    for index, obj in enumerate(annotation.objects, start=1):
        xmin, ymin, xmax, ymax = obj.bbox
        where = f"object {index} '{obj.name}'"
        if xmin >= xmax or ymin >= ymax:
            raise DataError(xml_path, f"{where}: empty or inverted box (xmin {xmin:g}, "
                                      f"xmax {xmax:g}, ymin {ymin:g}, ymax {ymax:g}); need "
                                      "xmin < xmax and ymin < ymax")
        if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
            raise DataError(xml_path, f"{where}: box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, "
                                      f"ymax {ymax:g}) lies outside the {width}x{height} image")


def find_image(dataset_dir: str, image_id: str, xml_filename: str) -> str:
    """The image file of an id: JPEGImages/<id>.jpg, else the XML's <filename>, else
    <id> with another common extension. Raises DataError listing what was tried."""
    images_dir = os.path.join(dataset_dir, IMAGES_DIR)
    candidates = [image_id + ".jpg"]
    if xml_filename:
        candidates.append(os.path.basename(xml_filename))
    candidates.extend(image_id + ext for ext in _OTHER_EXTENSIONS)
    for name in candidates:
        path = os.path.join(images_dir, name)
        if os.path.exists(path):
            return path
    also = ", ".join(_OTHER_EXTENSIONS)
    if xml_filename and os.path.basename(xml_filename) != image_id + ".jpg":
        also = f"the XML's <filename> '{os.path.basename(xml_filename)}', {also}"
    raise DataError(os.path.join(images_dir, image_id + ".jpg"),
                    f"image file not found (also tried {also})")


# ----------------------------------------------------------------------------- one example


@dataclasses.dataclass(frozen=True)
class VocExamples:
    """The examples of a VOC folder (a ``shard_writer.ExampleSource``: keys are image ids)."""
    dataset_dir: str
    class_to_label: dict[str, int]
    allow_empty: bool

    def location(self, image_id: str) -> str:
        return os.path.join(self.dataset_dir, ANNOTATIONS_DIR, image_id + ".xml")

    def convert(self, image_id: str) -> shard_writer.ExampleResult:
        return convert_example(self, image_id)


def convert_example(config: VocExamples, image_id: str) -> shard_writer.ExampleResult:
    """Reads, checks and serializes one image id; DataError for bad input."""
    xml_path = config.location(image_id)
    try:
        with open(xml_path, "rb") as f:
            xml_bytes = f.read()
    except OSError as e:
        raise DataError(xml_path, f"cannot read annotation ({e.strerror})") from None
    annotation = parse_annotation(xml_bytes, xml_path, config.class_to_label)
    if not annotation.objects and not config.allow_empty:
        raise DataError(xml_path, "no <object> in the annotation; pass --allow_empty to keep "
                                  "images without objects")
    image_path = find_image(config.dataset_dir, image_id, annotation.filename)
    image = load_image(image_path)
    warnings = []
    if annotation.size is not None and annotation.size != (image.width, image.height):
        warnings.append(f"{xml_path}: <size> says {annotation.size[0]}x{annotation.size[1]} but "
                        f"{image_path} is {image.width}x{image.height}; using the image's size")
    check_boxes(annotation, image.width, image.height, xml_path)
    bboxes = [(o.bbox[1] / image.height, o.bbox[0] / image.width,
               o.bbox[3] / image.height, o.bbox[2] / image.width) for o in annotation.objects]
    serialized = tfrecords.make_example(
        encoded=image.encoded, image_format=image.image_format, height=image.height,
        width=image.width, bboxes=bboxes,
        labels=[o.label for o in annotation.objects],
        label_texts=[o.name for o in annotation.objects],
        difficult=[o.difficult for o in annotation.objects],
        truncated=[o.truncated for o in annotation.objects],
        filename=image_id)
    return shard_writer.ExampleResult(image_id, serialized,
                                      class_names=tuple(o.name for o in annotation.objects),
                                      flags=tuple(o.difficult for o in annotation.objects),
                                      reencoded=image.reencoded, warnings=tuple(warnings))


# ----------------------------------------------------------------------------- the run


def list_image_ids(dataset_dir: str, split: str | None = None) -> list[str]:
    """Image ids to convert: every ``Annotations/*.xml`` sorted by file name (the original's
    order) when split is None; else the ids listed in ``ImageSets/Main/<split>.txt`` (or in
    the file ``split`` if it has a '/' or ends in .txt), in file order; the first column of
    each line is the id. Raises UsageError / DataError."""
    annotations_dir = os.path.join(dataset_dir, ANNOTATIONS_DIR)
    if not os.path.isdir(annotations_dir):
        raise UsageError(f"{annotations_dir}: no such folder; --dataset_dir must be a VOC-format "
                         "root with Annotations/ and JPEGImages/ (e.g. VOCdevkit/VOC2007)")
    if split is None:
        ids = sorted(name[:-4] for name in os.listdir(annotations_dir)
                     if name.endswith(".xml") and not name.startswith("."))
        if not ids:
            raise UsageError(f"{annotations_dir}: no .xml annotation files")
        return ids
    # A split with a '/' or ending in .txt is a path to an id file; else a name in ImageSets/Main.
    is_path = os.sep in split or "/" in split or split.endswith(".txt")
    split_path = split if is_path else os.path.join(dataset_dir, SPLITS_DIR, split + ".txt")
    if not os.path.isfile(split_path):
        splits_dir = os.path.join(dataset_dir, SPLITS_DIR)
        available = (sorted(n[:-4] for n in os.listdir(splits_dir)
                            if n.endswith(".txt") and "_" not in n)
                     if os.path.isdir(splits_dir) else [])
        raise UsageError(f"{split_path}: split file not found (available splits: "
                         f"{', '.join(available) or 'none'})")
    ids = []
    first_line: dict[str, int] = {}
    with open(split_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            image_id = fields[0]
            if image_id in first_line:
                raise DataError(split_path, f"line {line_no}: image id '{image_id}' is listed "
                                            f"twice (first on line {first_line[image_id]})")
            first_line[image_id] = line_no
            ids.append(image_id)
    if not ids:
        raise UsageError(f"{split_path}: the split file lists no image ids")
    return ids


def convert_voc(
    dataset_dir: str,
    output_dir: str,
    output_name: str,
    class_names: Sequence[str] = pascalvoc_common.VOC_CLASSES,
    split: str | None = None,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    num_workers: int | None = None,
    shuffle: bool = False,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    skip_errors: bool = False,
    allow_empty: bool = False,
) -> ConversionSummary:
    """Converts a VOC-format folder into ``<output_dir>/<output_name>_NNN.tfrecord`` shards.

    Args:
      dataset_dir: VOC root (Annotations/, JPEGImages/, ImageSets/Main/), trailing '/' or not.
      output_dir: where the shards go (created if missing).
      output_name: shard name prefix, e.g. 'voc_2007_train' to match the factory's patterns.
      class_names: the label map, ids 1..N in order (default: the 20 VOC classes).
      split: None for every annotation (sorted), else a split name of ImageSets/Main or a
        path to a file of ids (recognised by a '/' or a .txt ending).
      samples_per_shard: examples per shard (the last shard holds the rest).
      num_workers: processes reading and checking images (default: the usable cores).
      shuffle, seed: shuffle the ids (random.Random(seed)) before writing.
      overwrite: replace existing ``<output_name>_NNN.tfrecord`` shards (all of them, also
        ones beyond the new shard count); otherwise their presence is a UsageError.
      skip_errors: skip bad examples (logged, listed in the summary) instead of stopping.
      allow_empty: keep images whose annotation has no object (else a DataError).

    Returns a ConversionSummary. Raises UsageError for bad arguments or layout and DataError
    (one line naming the file) for bad data; in both cases nothing final is written.
    """
    start = time.monotonic()
    if samples_per_shard < 1:
        raise UsageError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    shard_writer.check_output_name(output_name)
    dataset_dir = os.path.normpath(dataset_dir)
    ids = list_image_ids(dataset_dir, split)
    if shuffle:
        random.Random(seed).shuffle(ids)
    source = VocExamples(dataset_dir, pascalvoc_common.names_to_labels(class_names), allow_empty)
    return shard_writer.write_shards(
        source, ids, output_dir, output_name, dataset_dir=dataset_dir, class_names=class_names,
        flag_name="difficult", samples_per_shard=samples_per_shard, num_workers=num_workers,
        overwrite=overwrite, skip_errors=skip_errors, start_time=start)
