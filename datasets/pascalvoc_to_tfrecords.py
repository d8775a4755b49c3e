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
"""
from __future__ import annotations

import collections
import dataclasses
import io
import logging
import multiprocessing
import os
import random
import re
import shutil
import signal
import time
from typing import Iterator, Mapping, Sequence

import defusedxml
import defusedxml.ElementTree as SafeET
from PIL import Image
import tensorflow as tf

from datasets import pascalvoc_common
from datasets import tfrecords

log = logging.getLogger(__name__)

# The original converter's shard size (reference §5).
DEFAULT_SAMPLES_PER_SHARD = 200
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


class ConversionError(Exception):
    """Base class of the converter's errors."""


class UsageError(ConversionError):
    """Wrong arguments or folder layout (the script exits with code 2)."""


class DataError(ConversionError):
    """Bad input data; ``str(error)`` is one line ``<file>: <problem>`` (script exit code 1)."""

    def __init__(self, path: str, problem: str):
        problem = " ".join(problem.split("\n"))  # one line, whatever a library's message holds
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self):  # picklable across worker processes despite the 2-argument init
        return (DataError, (self.path, self.problem))


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


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """Bytes to store, their format ('JPEG' or 'PNG') and the image's pixel size."""
    encoded: bytes
    image_format: str
    width: int
    height: int
    reencoded: bool


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion wrote and skipped."""
    dataset_dir: str
    output_files: list[str]
    num_images: int = 0
    num_objects: int = 0
    objects_per_class: dict[str, int] = dataclasses.field(default_factory=dict)
    difficult_per_class: dict[str, int] = dataclasses.field(default_factory=dict)
    num_reencoded: int = 0
    num_warnings: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_text(self) -> str:
        """A human-readable report: totals, a per-class table, skipped examples."""
        lines = [f"Wrote {self.num_images} images ({self.num_objects} objects) from "
                 f"{self.dataset_dir} into {len(self.output_files)} shard(s) in "
                 f"{self.seconds:.1f} s."]
        if self.output_files:
            lines.append(f"  first shard: {self.output_files[0]}")
            lines.append(f"  last shard:  {self.output_files[-1]}")
        if self.num_reencoded:
            lines.append(f"  {self.num_reencoded} image(s) (CMYK JPEG, or neither JPEG nor PNG) "
                         "were stored as lossless RGB PNG.")
        lines.append(f"  {'class':<20s} {'objects':>8s} {'difficult':>9s}")
        for name, count in self.objects_per_class.items():
            lines.append(f"  {name:<20s} {count:8d} {self.difficult_per_class.get(name, 0):9d}")
        if self.num_warnings:
            lines.append(f"  {self.num_warnings} warning(s), see the log above.")
        lines.append(f"Skipped {len(self.skipped)} image(s).")
        lines.extend(f"  skipped {message}" for message in self.skipped)
        return "\n".join(lines)


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


def load_image(path: str) -> LoadedImage:
    """Reads and fully checks one image file; returns what to store (see the module doc).

    Raises DataError for a missing, empty, truncated, corrupt or unsupported file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(path, f"cannot read image ({e.strerror})") from None
    if not data:
        raise DataError(path, "empty image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if im.format in ("JPEG", "MPO") and im.mode in ("L", "RGB"):
                # Decoding at 1/8 scale (libjpeg DCT scaling) still reads every entropy-coded
                # byte, so truncation is caught at a fraction of a full decode's cost.
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
                im.load()
                return LoadedImage(data, "JPEG", width, height, reencoded=False)
            if im.format == "PNG":
                im.load()
                return LoadedImage(data, "PNG", width, height, reencoded=False)
            # CMYK/YCCK JPEGs and other formats: not every TF decoder reads them (and CMYK
            # conversions differ between decoders), so store PIL's RGB losslessly.
            im.load()
            buffer = io.BytesIO()
            im.convert("RGB").save(buffer, format="PNG")
            return LoadedImage(buffer.getvalue(), "PNG", width, height, reencoded=True)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(path, f"corrupt or unsupported image ({e})") from None


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
class _ExampleConfig:
    dataset_dir: str
    class_to_label: dict[str, int]
    allow_empty: bool


@dataclasses.dataclass(frozen=True)
class _ExampleResult:
    image_id: str
    serialized: bytes | None
    class_names: tuple[str, ...] = ()
    difficult: tuple[int, ...] = ()
    reencoded: bool = False
    warnings: tuple[str, ...] = ()
    error: DataError | None = None


def convert_example(config: _ExampleConfig, image_id: str) -> _ExampleResult:
    """Reads, checks and serializes one image id; DataError for bad input."""
    xml_path = os.path.join(config.dataset_dir, ANNOTATIONS_DIR, image_id + ".xml")
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
    return _ExampleResult(image_id, serialized,
                          class_names=tuple(o.name for o in annotation.objects),
                          difficult=tuple(o.difficult for o in annotation.objects),
                          reencoded=image.reencoded, warnings=tuple(warnings))


_WORKER_CONFIG: _ExampleConfig | None = None


def _init_worker(config: _ExampleConfig) -> None:
    global _WORKER_CONFIG
    _WORKER_CONFIG = config
    # The parent handles Ctrl-C and termination and then terminates the pool: workers must
    # neither print their own KeyboardInterrupt nor run handlers inherited through fork.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _safe_convert(config: _ExampleConfig, image_id: str) -> _ExampleResult:
    try:
        return convert_example(config, image_id)
    except DataError as e:
        return _ExampleResult(image_id, None, error=e)
    except Exception as e:  # noqa: BLE001 - one line naming the example, never a traceback
        log.debug("unexpected error on %s", image_id, exc_info=True)
        return _ExampleResult(image_id, None, error=DataError(
            os.path.join(config.dataset_dir, ANNOTATIONS_DIR, image_id + ".xml"),
            f"unexpected {type(e).__name__} while converting this example: {e}"))


def _worker_convert(image_id: str) -> _ExampleResult:
    assert _WORKER_CONFIG is not None
    return _safe_convert(_WORKER_CONFIG, image_id)


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


def shard_path(output_dir: str, output_name: str, index: int) -> str:
    """``<output_dir>/<output_name>_NNN.tfrecord`` (the original's naming)."""
    return os.path.join(output_dir, f"{output_name}_{index:03d}.tfrecord")


def existing_shards(output_dir: str, output_name: str) -> list[str]:
    """Shards of ``output_name`` already in ``output_dir`` (exactly ``<name>_<digits>.tfrecord``)."""
    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(re.escape(output_name) + r"_\d{3,}\.tfrecord")
    return sorted(os.path.join(output_dir, n) for n in os.listdir(output_dir)
                  if pattern.fullmatch(n))


def _temp_dir_prefix(output_name: str) -> str:
    # Hidden and a folder: no glob of the form <dir>/<name>_*.tfrecord can ever match it.
    return f".{output_name}.tmp-"


def _remove_stale_temp_dirs(output_dir: str, output_name: str) -> None:
    """Removes temporary folders left by killed runs (their process no longer exists)."""
    prefix = _temp_dir_prefix(output_name)
    for name in os.listdir(output_dir):
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        log.info("removing %s, left by an interrupted conversion", os.path.join(output_dir, name))
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iter_results(config: _ExampleConfig, ids: Sequence[str],
                  num_workers: int) -> Iterator[_ExampleResult]:
    if num_workers <= 1 or len(ids) < 2:
        for image_id in ids:
            yield _safe_convert(config, image_id)
        return
    # fork: workers inherit the imported modules (no second TensorFlow import); they never
    # run TF ops, only PIL, defusedxml and protobuf. Elsewhere, spawn.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    chunksize = max(1, min(16, len(ids) // (4 * num_workers)))
    with context.Pool(num_workers, initializer=_init_worker, initargs=(config,)) as pool:
        # imap keeps the input order: the output does not depend on worker timing.
        yield from pool.imap(_worker_convert, ids, chunksize=chunksize)


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
    if not output_name or os.sep in output_name or output_name.startswith("."):
        raise UsageError(f"output_name '{output_name}' must be a plain file name prefix")
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    dataset_dir = os.path.normpath(dataset_dir)
    ids = list_image_ids(dataset_dir, split)
    if shuffle:
        random.Random(seed).shuffle(ids)

    old_shards = existing_shards(output_dir, output_name)
    if old_shards and not overwrite:
        raise UsageError(f"{old_shards[0]}: {len(old_shards)} shard(s) {output_name}_*.tfrecord "
                         "already exist; pass --overwrite to replace them")
    os.makedirs(output_dir, exist_ok=True)
    _remove_stale_temp_dirs(output_dir, output_name)
    temp_dir = os.path.join(output_dir, _temp_dir_prefix(output_name) + str(os.getpid()))
    os.makedirs(temp_dir)

    config = _ExampleConfig(dataset_dir, pascalvoc_common.names_to_labels(class_names),
                            allow_empty)
    summary = ConversionSummary(dataset_dir=dataset_dir, output_files=[])
    objects_per_class = collections.Counter()
    difficult_per_class = collections.Counter()
    temp_files: list[str] = []
    writer = None
    finished = False
    try:
        for result in _iter_results(config, ids, num_workers):
            if result.error is not None:
                if not skip_errors:
                    raise result.error
                log.warning("skipping %s", result.error)
                summary.skipped.append(str(result.error))
                continue
            for warning in result.warnings:
                log.warning("%s", warning)
            summary.num_warnings += len(result.warnings)
            if writer is None:
                temp_files.append(os.path.join(temp_dir, os.path.basename(
                    shard_path(output_dir, output_name, len(temp_files)))))
                writer = tf.io.TFRecordWriter(temp_files[-1])
                in_shard = 0
            writer.write(result.serialized)
            in_shard += 1
            if in_shard == samples_per_shard:
                writer.close()
                writer = None
            summary.num_images += 1
            summary.num_objects += len(result.class_names)
            summary.num_reencoded += int(result.reencoded)
            objects_per_class.update(result.class_names)
            difficult_per_class.update(n for n, d in zip(result.class_names, result.difficult) if d)
            if summary.num_images % 1000 == 0:
                log.info("%d / %d images", summary.num_images, len(ids))
        if writer is not None:
            writer.close()
            writer = None
        if summary.num_images == 0:
            raise DataError(dataset_dir, f"all {len(ids)} image(s) were skipped; nothing written")
        # Everything succeeded: replace old shards, then move the new ones into place.
        for path in old_shards:
            os.remove(path)
        for index, temp_file in enumerate(temp_files):
            final = shard_path(output_dir, output_name, index)
            os.replace(temp_file, final)
            summary.output_files.append(final)
        finished = True
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not finished:
            log.debug("conversion did not finish: no shard written")
    summary.objects_per_class = {n: objects_per_class[n] for n in class_names
                                 if objects_per_class[n]}
    summary.difficult_per_class = {n: difficult_per_class[n] for n in class_names
                                   if difficult_per_class[n]}
    summary.seconds = time.monotonic() - start
    return summary
