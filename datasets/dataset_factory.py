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
- ``coco_2014``: files ``coco_2014_<split>_*.tfrecord``; splits train 82783 (train2014), val
  40504 (val2014), minival 5000, valminusminival 35504, and trainval35k 118287 = the shards of
  ``train`` and ``valminusminival`` together (convert ``instances_train2014.json`` as
  ``coco_2014_train`` and ``instances_valminusminival2014.json`` as
  ``coco_2014_valminusminival``: no third copy is written).
- ``coco_2017``: ``coco_2017_<split>_*.tfrecord``; train 118287 (train2017), val 5000 (val2017).
- ``coco``: any COCO-format dataset converted by tf_convert_data.py, files
  ``<split>_*.tfrecord`` unless ``file_pattern`` says otherwise.

Labels of the COCO names: the label map ``<prefix>_label_map.json`` that the converter wrote
beside the shards (``<prefix>`` = the file pattern without ``_*.tfrecord``, e.g.
``coco_2017_val``), or ``labels_file`` (a ``.json`` label map; a ``.txt`` one for VOC names).
Without either, ``coco_2014``/``coco_2017`` use COCO's 80 categories
(``datasets.coco_common.COCO_CATEGORIES``) and ``coco`` is an error. The spec's
``label_to_category_id`` maps labels back to COCO category ids (None for VOC names) and
``default_metric`` is 'coco' for the COCO names, 'voc' otherwise. Sizes count the images
without annotations, which the converter keeps.

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

from datasets import coco_common
from datasets import pascalvoc_common
from datasets import tfrecords

log = logging.getLogger(__name__)

# Split sizes of the original project (reference §11), plus 2012's detection trainval set.
_VOC_SPLIT_SIZES = {
    "pascalvoc_2007": {"train": 5011, "trainval": 5011, "test": 4952},
    "pascalvoc_2012": {"train": 17125, "trainval": 11540},
    # COCO: every image of the annotation file, with or without annotations.
    "coco_2014": {"train": 82783, "val": 40504, "minival": 5000, "valminusminival": 35504,
                  "trainval35k": 118287},
    "coco_2017": {"train": 118287, "val": 5000},
}
_VOC_PATTERNS = {
    "pascalvoc_2007": ("voc_2007_%s_*.tfrecord",),
    "pascalvoc_2012": ("voc_2012_%s_*.tfrecord",),
    "pascalvoc_0712": ("voc_2007_%s_*.tfrecord", "voc_2012_%s_*.tfrecord"),
}
_COCO_PATTERNS = {
    "coco_2014": ("coco_2014_%s_*.tfrecord",),
    "coco_2017": ("coco_2017_%s_*.tfrecord",),
}
# Splits made of other splits' shards.
_COMPOSITE_SPLITS = {
    ("coco_2014", "trainval35k"): ("coco_2014_train_*.tfrecord",
                                   "coco_2014_valminusminival_*.tfrecord"),
}
_CUSTOM_NAMES = ("voc", "custom")
_CUSTOM_PATTERN = "%s_*.tfrecord"
_COCO_CUSTOM_NAMES = ("coco",)
COCO_NAMES: tuple[str, ...] = tuple(_COCO_PATTERNS) + _COCO_CUSTOM_NAMES
DATASET_NAMES: tuple[str, ...] = tuple(_VOC_PATTERNS) + _CUSTOM_NAMES + COCO_NAMES
METRICS = ("voc", "coco")
_SHARD_SUFFIX = "_*.tfrecord"


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
      label_to_category_id: {label: COCO category id} for COCO datasets, None for VOC.
      default_metric: 'coco' for COCO datasets, 'voc' otherwise (one of METRICS).
      label_map_file: the label-map file the classes came from (None: built-in classes).
    """
    name: str
    split_name: str
    file_pattern: str | tuple[str, ...]
    num_samples: int
    num_classes: int
    labels_to_names: dict[int, str]
    class_names: tuple[str, ...]
    label_to_category_id: dict[int, int] | None = None
    default_metric: str = "voc"
    label_map_file: str | None = None

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


def _label_map_beside(patterns: Sequence[str]) -> tuple[str, coco_common.CocoLabelMap] | None:
    """The converter's label map beside the shards of ``patterns`` (``<prefix>_*.tfrecord`` ->
    ``<prefix>_label_map.json``), or None. Several that disagree: ValueError."""
    found: list[tuple[str, coco_common.CocoLabelMap]] = []
    for pattern in patterns:
        if not pattern.endswith(_SHARD_SUFFIX) or "://" in pattern:
            continue
        path = pattern[:-len(_SHARD_SUFFIX)] + coco_common.LABEL_MAP_SUFFIX
        if os.path.isfile(path):
            found.append((path, coco_common.load_label_map_json(path)))
    for path, label_map in found[1:]:
        if label_map != found[0][1]:
            raise ValueError(f"{path} and {found[0][0]} are different label maps; these shards "
                             "cannot be read as one dataset")
    return found[0] if found else None


def _labels(name: str, patterns: Sequence[str], labels_file: str | None
            ) -> tuple[tuple[str, ...], dict[int, int] | None, str | None]:
    """(class names, label -> category id or None, the label-map file or None)."""
    is_coco = name in COCO_NAMES
    if labels_file:
        if labels_file.endswith(".json"):
            label_map = coco_common.load_label_map_json(labels_file)
            return label_map.class_names, label_map.label_to_category_id, labels_file
        if is_coco:
            raise pascalvoc_common.LabelMapError(
                f"{labels_file}: a COCO dataset needs the converter's label map JSON "
                "(<output_name>_label_map.json), which records the COCO category ids")
        return pascalvoc_common.load_label_map(labels_file), None, labels_file
    if not is_coco:
        return pascalvoc_common.VOC_CLASSES, None, None
    beside = _label_map_beside(patterns)
    if beside is not None:
        path, label_map = beside
        return label_map.class_names, label_map.label_to_category_id, path
    if name in _COCO_PATTERNS:
        standard = coco_common.STANDARD_LABEL_MAP
        return standard.class_names, standard.label_to_category_id, None
    wanted = [p[:-len(_SHARD_SUFFIX)] + coco_common.LABEL_MAP_SUFFIX for p in patterns
              if p.endswith(_SHARD_SUFFIX)]
    raise pascalvoc_common.LabelMapError(
        f"{' or '.join(wanted) or 'the shards'}: no label map beside the shards of dataset "
        f"{name}; convert with tf_convert_data.py --dataset_name=coco (it writes one) or pass "
        "labels_file (--labels_file)")


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
      labels_file: a label-map file: one class name per line (ids 1..N), or the COCO
        converter's ``.json``; default: VOC's 20 classes, or for COCO names the label map
        beside the shards (see the module doc).
      num_samples: overrides the counted / standard number of examples.
    Raises ValueError for an unknown name (listing the valid ones), a bad or missing label map
    (``pascalvoc_common.LabelMapError``), or when num_samples cannot be known (no files and no
    standard size).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name '{name}'; valid names: {', '.join(DATASET_NAMES)}")
    if file_pattern is None:
        if (name, split_name) in _COMPOSITE_SPLITS:
            patterns: Sequence[str] = _COMPOSITE_SPLITS[(name, split_name)]
        elif name in _CUSTOM_NAMES + _COCO_CUSTOM_NAMES:
            patterns = (_CUSTOM_PATTERN,)
        else:
            patterns = {**_VOC_PATTERNS, **_COCO_PATTERNS}[name]
    else:
        patterns = (file_pattern,) if isinstance(file_pattern, str) else tuple(file_pattern)
    resolved = _resolve_patterns(patterns, split_name, dataset_dir)

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
    class_names, label_to_category_id, label_map_file = _labels(name, resolved, labels_file)
    return DatasetSpec(
        name=name, split_name=split_name,
        file_pattern=resolved[0] if len(resolved) == 1 else resolved,
        num_samples=int(num_samples), num_classes=len(class_names) + 1,
        labels_to_names=pascalvoc_common.labels_to_names(class_names),
        class_names=tuple(class_names), label_to_category_id=label_to_category_id,
        default_metric="coco" if name in COCO_NAMES else "voc", label_map_file=label_map_file)
