"""Dataset factory: a dataset name + split -> a DatasetSpec that reads its TFRecords.

Names (``DATASET_NAMES``):

- ``pascalvoc_2007``: files ``voc_2007_<split>_*.tfrecord``; the original's sizes:
  train 5011 (the VOC2007 trainval set, converted as ``voc_2007_train``), test 4952.
- ``pascalvoc_2012``: ``voc_2012_<split>_*.tfrecord``; train 17125 (the original's: every XML
  of the 2012 trainval folder), trainval 11540 (the detection trainval split).
- ``pascalvoc_0712``: VOC07+12, both ``voc_2007_<split>_*`` and ``voc_2012_<split>_*`` in
  dataset_dir; the usual "07+12 trainval" is split ``trainval`` (5011 + 11540 = 16551) when
  2007 trainval was written as voc_2007_trainval and 2012 with --split=trainval.
- ``voc`` (alias ``custom``): any VOC-format dataset converted by tf_convert_data.py; label
  map from ``labels_file`` (default: the 20 VOC classes), files ``<split>_*.tfrecord`` unless
  ``file_pattern`` says otherwise.

``num_samples``: the argument if given; otherwise the number of records in the matching
files, counted from the record headers (a seek per record, no data read); otherwise (no
files yet) the standard size of a VOC split. A count that differs from the standard size
is logged as a warning and the count is used.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import tensorflow as tf

from datasets import pascalvoc_common
from datasets import tfrecords

log = logging.getLogger(__name__)

# Split sizes of the original project (reference §11), plus 2012's detection trainval set.
_VOC_SPLIT_SIZES = {
    "pascalvoc_2007": {"train": 5011, "trainval": 5011, "test": 4952},
    "pascalvoc_2012": {"train": 17125, "trainval": 11540},
}
_VOC_PATTERNS = {
    "pascalvoc_2007": ("voc_2007_%s_*.tfrecord",),
    "pascalvoc_2012": ("voc_2012_%s_*.tfrecord",),
    "pascalvoc_0712": ("voc_2007_%s_*.tfrecord", "voc_2012_%s_*.tfrecord"),
}
_CUSTOM_NAMES = ("voc", "custom")
_CUSTOM_PATTERN = "%s_*.tfrecord"
DATASET_NAMES: tuple[str, ...] = tuple(_VOC_PATTERNS) + _CUSTOM_NAMES


def _standard_size(name: str, split_name: str) -> int | None:
    if name == "pascalvoc_0712":
        parts = [_VOC_SPLIT_SIZES[n].get(split_name) for n in ("pascalvoc_2007", "pascalvoc_2012")]
        return None if None in parts else sum(parts)
    return _VOC_SPLIT_SIZES.get(name, {}).get(split_name)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset split stored as TFRecords (DESIGN §8).

    Attributes:
      name, split_name: as given to get_dataset.
      file_pattern: the glob pattern of its files, or a tuple of patterns (pascalvoc_0712).
      num_samples: number of examples (see the module doc).
      num_classes: number of classes including the background (VOC: 21).
      labels_to_names: {0: 'background', 1: first class, ...}.
      class_names: the class names, ids 1..num_classes-1 in order.
    """
    name: str
    split_name: str
    file_pattern: str | tuple[str, ...]
    num_samples: int
    num_classes: int
    labels_to_names: dict[int, str]
    class_names: tuple[str, ...]

    @property
    def file_patterns(self) -> tuple[str, ...]:
        """file_pattern as a tuple."""
        p = self.file_pattern
        return (p,) if isinstance(p, str) else tuple(p)

    def files(self) -> list[str]:
        """The matching TFRecord files, sorted."""
        return tfrecords.match_files(self.file_patterns)

    def read(self, shuffle: bool = False, seed: int | None = None,
             num_parallel_reads: int = tf.data.AUTOTUNE, repeat: bool = False,
             **kwargs) -> tf.data.Dataset:
        """A tf.data.Dataset of decoded examples (dicts, see ``tfrecords.decode_example``).

        Parallel interleave over the shards, parallel parse+decode, prefetch. Extra keyword
        arguments (``shuffle_buffer``, ``num_parallel_calls``) go to ``tfrecords.read_tfrecords``.
        Raises FileNotFoundError naming the pattern when no file matches.
        """
        files = self.files()
        if not files:
            raise FileNotFoundError(f"no TFRecord files match {' or '.join(self.file_patterns)} "
                                    f"(dataset {self.name}, split {self.split_name}); "
                                    "write them with tf_convert_data.py")
        return tfrecords.read_tfrecords(files, shuffle=shuffle, seed=seed,
                                        num_parallel_reads=num_parallel_reads, repeat=repeat,
                                        **kwargs)


def _resolve_patterns(patterns: Sequence[str], split_name: str, dataset_dir: str | None
                      ) -> tuple[str, ...]:
    resolved = []
    for pattern in patterns:
        if "%s" in pattern:
            pattern = pattern % split_name
        if dataset_dir and not os.path.isabs(pattern) and "://" not in pattern:
            pattern = os.path.join(dataset_dir, pattern)
        resolved.append(pattern)
    return tuple(resolved)


def get_dataset(name: str, split_name: str, dataset_dir: str | None,
                file_pattern: str | Sequence[str] | None = None,
                labels_file: str | None = None,
                num_samples: int | None = None) -> DatasetSpec:
    """Returns the DatasetSpec of ``name`` / ``split_name`` with files in ``dataset_dir``.

    Args:
      name: one of DATASET_NAMES.
      split_name: e.g. 'train', 'test', 'trainval'; fills the '%s' of the file pattern.
      dataset_dir: folder of the TFRecord files (relative patterns are joined to it).
      file_pattern: a glob (or several), '%s' is replaced by split_name; default per name.
      labels_file: a label-map file (one class name per line, ids 1..N); default VOC's 20.
      num_samples: overrides the counted / standard number of examples.
    Raises ValueError for an unknown name (listing the valid ones), a bad label-map file, or
    when num_samples cannot be known (no files and no standard size).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name '{name}'; valid names: {', '.join(DATASET_NAMES)}")
    if file_pattern is None:
        patterns: Sequence[str] = (_CUSTOM_PATTERN,) if name in _CUSTOM_NAMES else _VOC_PATTERNS[name]
    else:
        patterns = (file_pattern,) if isinstance(file_pattern, str) else tuple(file_pattern)
    resolved = _resolve_patterns(patterns, split_name, dataset_dir)

    class_names = (pascalvoc_common.load_label_map(labels_file) if labels_file
                   else pascalvoc_common.VOC_CLASSES)
    standard = _standard_size(name, split_name)
    if num_samples is None:
        files = tfrecords.match_files(resolved)
        if files:
            num_samples = tfrecords.count_records(files)
            if standard is not None and num_samples != standard:
                log.warning("%s: %d examples in %d file(s), the standard %s split has %d; "
                            "using %d", " or ".join(resolved), num_samples, len(files), split_name,
                            standard, num_samples)
        elif standard is not None:
            num_samples = standard
        else:
            raise ValueError(f"no files match {' or '.join(resolved)}: cannot count the examples "
                             f"of {name}/{split_name}; convert the data first, fix dataset_dir / "
                             "file_pattern, or pass num_samples")
    return DatasetSpec(
        name=name, split_name=split_name,
        file_pattern=resolved[0] if len(resolved) == 1 else resolved,
        num_samples=int(num_samples), num_classes=len(class_names) + 1,
        labels_to_names=pascalvoc_common.labels_to_names(class_names),
        class_names=tuple(class_names))
