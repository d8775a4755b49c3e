"""The TFRecord format of the project (the original project's keys) and its reader.

One ``tf.train.Example`` per image, keys as in DESIGN §5 / reference §5 (the original
converter's), plus ``image/filename`` (the image id; readers of the original ignore it):

====================================  =========  ==============================================
key                                   type       value
====================================  =========  ==============================================
image/encoded                         bytes      the image file's bytes (JPEG or PNG, as is)
image/format                          bytes      b'JPEG' or b'PNG'
image/filename                        bytes      the image id, e.g. b'000005' (ours only)
image/height, image/width             int64      pixel size, read from the image itself
image/channels                        int64      3: the reader always yields RGB
image/shape                           int64[3]   (height, width, 3)
image/object/bbox/ymin|xmin|ymax|xmax float[n]   box corners divided by height/width (the
                                                 original's and Caffe SSD's convention, no -1)
image/object/bbox/label               int64[n]   1..num_classes-1 (VOC: 1 aeroplane..20 tvmonitor)
image/object/bbox/label_text          bytes[n]   class names
image/object/bbox/difficult           int64[n]   0/1 from the XML
image/object/bbox/truncated           int64[n]   0/1 from the XML
====================================  =========  ==============================================

COCO records (``datasets.coco_to_tfrecords``) carry three more keys; VOC records do not have
them (their writer leaves them out, so VOC shards are what they always were):

====================================  =========  ==============================================
image/coco_id                         int64      the COCO image id
image/object/bbox/iscrowd             int64[n]   COCO's iscrowd (1: a crowd region)
image/object/area                     float[n]   COCO's annotation 'area' (pixels; the
                                                 segmentation's area, not the box's)
====================================  =========  ==============================================

TFRecords written by the original converter read too: it has no ``image/filename`` and its
difficult/truncated are all 0 (or absent in hand-made files, which reads as 0). Records
without the COCO keys read as ``coco_id`` -1, ``object/iscrowd`` zeros and ``object/area``
the box areas in pixels of the decoded image.
"""
from __future__ import annotations

import os
import struct
from typing import Iterable, Sequence

import tensorflow as tf

KEY_ENCODED = "image/encoded"
KEY_FORMAT = "image/format"
KEY_FILENAME = "image/filename"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
KEY_SHAPE = "image/shape"
KEY_XMIN = "image/object/bbox/xmin"
KEY_YMIN = "image/object/bbox/ymin"
KEY_XMAX = "image/object/bbox/xmax"
KEY_YMAX = "image/object/bbox/ymax"
KEY_LABEL = "image/object/bbox/label"
KEY_LABEL_TEXT = "image/object/bbox/label_text"
KEY_DIFFICULT = "image/object/bbox/difficult"
KEY_TRUNCATED = "image/object/bbox/truncated"
# COCO records only.
KEY_COCO_ID = "image/coco_id"
KEY_ISCROWD = "image/object/bbox/iscrowd"
KEY_AREA = "image/object/area"
COCO_KEYS: tuple[str, ...] = (KEY_COCO_ID, KEY_ISCROWD, KEY_AREA)

# Every key the original project's decoder reads (reference §5): ours must carry all of them.
ORIGINAL_KEYS: tuple[str, ...] = (
    KEY_ENCODED, KEY_FORMAT, KEY_HEIGHT, KEY_WIDTH, KEY_CHANNELS, KEY_SHAPE,
    KEY_XMIN, KEY_YMIN, KEY_XMAX, KEY_YMAX, KEY_LABEL, KEY_LABEL_TEXT, KEY_DIFFICULT,
    KEY_TRUNCATED,
)

# Examples are shuffled as serialized strings (before decoding) to keep the buffer small.
DEFAULT_SHUFFLE_BUFFER = 1024
# A fixed interleave width when the caller asks for AUTOTUNE: the order of an unshuffled
# read then does not depend on the machine's core count.
_DEFAULT_CYCLE_LENGTH = 8


def _int64(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float(values: Iterable[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes(values: Iterable[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def make_example(
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    bboxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    label_texts: Sequence[str],
    difficult: Sequence[int],
    truncated: Sequence[int],
    filename: str = "",
    coco_id: int | None = None,
    iscrowd: Sequence[int] | None = None,
    area: Sequence[float] | None = None,
) -> bytes:
    """Serializes one image and its objects into a ``tf.train.Example`` (deterministic bytes).

    Args:
      encoded: the image file's bytes; image_format: 'JPEG' or 'PNG'.
      height, width: the image's pixel size (of the image itself, not of an XML).
      bboxes: [n] boxes (ymin, xmin, ymax, xmax) normalized to [0, 1].
      labels, label_texts, difficult, truncated: [n] per object.
      filename: the image id, stored as ``image/filename``.
      coco_id, iscrowd ([n]), area ([n]): the COCO keys; each is written only when given.
    Returns the serialized Example. Map keys are serialized in sorted order, so equal inputs
    give equal bytes (re-runs of the converter are byte-identical).
    """
    n = len(labels)
    if not (len(bboxes) == len(label_texts) == len(difficult) == len(truncated) == n):
        raise ValueError(f"per-object lists differ in length: {len(bboxes)} boxes, {n} labels, "
                         f"{len(label_texts)} names, {len(difficult)} difficult, {len(truncated)} truncated")
    for name, values in (("iscrowd", iscrowd), ("area", area)):
        if values is not None and len(values) != n:
            raise ValueError(f"per-object lists differ in length: {n} labels, {len(values)} {name}")
    feature = {
        KEY_ENCODED: _bytes([encoded]),
        KEY_FORMAT: _bytes([image_format.encode("ascii")]),
        KEY_FILENAME: _bytes([filename.encode("utf-8")]),
        KEY_HEIGHT: _int64([height]),
        KEY_WIDTH: _int64([width]),
        KEY_CHANNELS: _int64([3]),
        KEY_SHAPE: _int64([height, width, 3]),
        KEY_YMIN: _float(b[0] for b in bboxes),
        KEY_XMIN: _float(b[1] for b in bboxes),
        KEY_YMAX: _float(b[2] for b in bboxes),
        KEY_XMAX: _float(b[3] for b in bboxes),
        KEY_LABEL: _int64(labels),
        KEY_LABEL_TEXT: _bytes(t.encode("utf-8") for t in label_texts),
        KEY_DIFFICULT: _int64(difficult),
        KEY_TRUNCATED: _int64(truncated),
    }
    if coco_id is not None:
        feature[KEY_COCO_ID] = _int64([int(coco_id)])
    if iscrowd is not None:
        feature[KEY_ISCROWD] = _int64(iscrowd)
    if area is not None:
        feature[KEY_AREA] = _float(area)
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


# RaggedFeature without partitions parses to a dense 1-D tensor; a missing key gives [0].
_FEATURES = {
    KEY_ENCODED: tf.io.FixedLenFeature((), tf.string),
    KEY_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
    KEY_YMIN: tf.io.RaggedFeature(tf.float32),
    KEY_XMIN: tf.io.RaggedFeature(tf.float32),
    KEY_YMAX: tf.io.RaggedFeature(tf.float32),
    KEY_XMAX: tf.io.RaggedFeature(tf.float32),
    KEY_LABEL: tf.io.RaggedFeature(tf.int64),
    KEY_DIFFICULT: tf.io.RaggedFeature(tf.int64),
    KEY_TRUNCATED: tf.io.RaggedFeature(tf.int64),
    KEY_COCO_ID: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    KEY_ISCROWD: tf.io.RaggedFeature(tf.int64),
    KEY_AREA: tf.io.RaggedFeature(tf.float32),
}


def _per_object_or_zeros(values: tf.Tensor, num_objects: tf.Tensor) -> tf.Tensor:
    # The original converter's records may lack difficult/truncated (hand-made files) or
    # carry them: either way [n] comes out, zeros when the key is absent or mis-sized.
    return tf.cond(tf.size(values) == num_objects, lambda: values,
                   lambda: tf.zeros([num_objects], tf.int64))


def _areas_or_box_areas(values: tf.Tensor, bboxes: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    # COCO's 'area' when the record has one per object; else the boxes' areas in pixels of
    # the decoded image (VOC records: no +1, the normalized boxes times the image size).
    hw = tf.cast(shape[:2], tf.float32)
    box_areas = ((bboxes[:, 2] - bboxes[:, 0]) * hw[0]) * ((bboxes[:, 3] - bboxes[:, 1]) * hw[1])
    return tf.cond(tf.size(values) == tf.shape(bboxes)[0], lambda: values, lambda: box_areas)


def decode_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses and decodes one serialized Example (ours or the original converter's).

    Returns a dict: ``image`` uint8 [H, W, 3] RGB (grayscale, RGBA, palette and CMYK images
    all come out as 3-channel RGB; alpha is dropped), ``shape`` int64 [3] of the decoded
    image, ``object/bbox`` float32 [n, 4] (ymin, xmin, ymax, xmax) normalized,
    ``object/label`` int64 [n], ``object/difficult`` int64 [n], ``object/truncated`` int64 [n],
    ``filename`` string (``image/filename``, '' in the original's records), and the COCO
    keys: ``coco_id`` int64 scalar (-1 when absent), ``object/iscrowd`` int64 [n] (zeros when
    absent), ``object/area`` float32 [n] (COCO's 'area'; when absent, the box areas in pixels).
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    image = tf.io.decode_image(parsed[KEY_ENCODED], channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    labels = parsed[KEY_LABEL]
    num_objects = tf.size(labels)
    bboxes = tf.stack([parsed[KEY_YMIN], parsed[KEY_XMIN], parsed[KEY_YMAX], parsed[KEY_XMAX]],
                      axis=1)
    shape = tf.shape(image, out_type=tf.int64)
    return {
        "image": image,
        "shape": shape,
        "object/bbox": bboxes,
        "object/label": labels,
        "object/difficult": _per_object_or_zeros(parsed[KEY_DIFFICULT], num_objects),
        "object/truncated": _per_object_or_zeros(parsed[KEY_TRUNCATED], num_objects),
        "filename": parsed[KEY_FILENAME],
        "coco_id": parsed[KEY_COCO_ID],
        "object/iscrowd": _per_object_or_zeros(parsed[KEY_ISCROWD], num_objects),
        "object/area": _areas_or_box_areas(parsed[KEY_AREA], bboxes, shape),
    }


def match_files(file_patterns: str | Sequence[str]) -> list[str]:
    """Sorted, de-duplicated files matching one or several glob patterns."""
    if isinstance(file_patterns, str):
        file_patterns = [file_patterns]
    files: set[str] = set()
    for pattern in file_patterns:
        files.update(tf.io.gfile.glob(pattern))
    return sorted(files)


def read_tfrecords(
    files: Sequence[str],
    shuffle: bool = False,
    seed: int | None = None,
    num_parallel_reads: int = tf.data.AUTOTUNE,
    repeat: bool = False,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """A dataset of decoded examples (dicts of ``decode_example``) from TFRecord files.

    Shards are read in parallel (interleave, ``num_parallel_reads`` at a time; AUTOTUNE
    means min(8, number of files)), parsed and decoded in parallel, and prefetched.
    Unshuffled reads have a fixed order: round-robin, one record at a time, over the files
    in sorted order, ``num_parallel_reads`` files at a time (1 gives plain file order).
    Shuffled reads shuffle the files and then the serialized examples (``shuffle_buffer``);
    they are reproducible when ``seed`` is given and reshuffle at every repetition.
    """
    files = list(files)
    if not files:
        raise FileNotFoundError("no TFRecord files to read")
    cycle_length = (min(len(files), _DEFAULT_CYCLE_LENGTH)
                    if num_parallel_reads == tf.data.AUTOTUNE else max(1, int(num_parallel_reads)))
    deterministic = (not shuffle) or seed is not None
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(decode_example, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def count_records(files: Sequence[str]) -> int:
    """Number of records in uncompressed TFRecord files, read from the record headers only.

    Each record is an 8-byte little-endian length, a 4-byte CRC, the data and a 4-byte CRC,
    so counting needs one small read and one seek per record, not reading the data.
    Raises ValueError naming the file when a file is truncated or is not a TFRecord file.
    """
    total = 0
    for path in files:
        total += _count_file(path)
    return total


def _count_file(path: str) -> int:
    size = tf.io.gfile.stat(path).length
    count = 0
    opener = open if "://" not in path else tf.io.gfile.GFile
    with opener(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord file (record {count} header is cut)")
            (length,) = struct.unpack("<Q", header[:8])
            pos += 12 + length + 4
            if pos > size:
                raise ValueError(f"{path}: truncated or not a TFRecord file (record {count} claims "
                                 f"{length} bytes past the end of the file)")
            f.seek(pos, os.SEEK_SET)
            count += 1
    return count
