"""COCO categories and the label-map JSON written beside COCO shards.

COCO numbers its 80 detection categories 1..90 with gaps. An SSD needs contiguous labels, so
the converter maps the categories of an annotation file, in ascending category-id order, to
labels 1..N (0 is the background) and writes the map beside the shards as
``<output_dir>/<output_name>_label_map.json``::

    {"labels": [{"label": 1, "name": "person", "category_id": 1},
                {"label": 2, "name": "bicycle", "category_id": 2}, ...]}

Every script reads it through ``datasets.dataset_factory`` (found beside the shards, or named
by ``--labels_file``); evaluation uses ``category_id`` to write results in COCO's ids.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from datasets.pascalvoc_common import LabelMapError

LABEL_MAP_SUFFIX = "_label_map.json"

# The 80 categories of COCO 2014/2017 detection (instances_*.json): (category id, name).
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)


@dataclasses.dataclass(frozen=True)
class CocoLabelMap:
    """Contiguous labels 1..N for COCO categories.

    Attributes:
      class_names: names of labels 1..N in order.
      category_ids: the COCO category id of labels 1..N in order (ascending).
    """
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]

    @classmethod
    def from_categories(cls, categories: Sequence[tuple[int, str]]) -> "CocoLabelMap":
        """Labels 1..N in ascending category-id order."""
        ordered = sorted(categories)
        return cls(tuple(n for _, n in ordered), tuple(int(c) for c, _ in ordered))

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """{label: COCO category id}."""
        return {i + 1: c for i, c in enumerate(self.category_ids)}

    @property
    def category_id_to_label(self) -> dict[int, int]:
        """{COCO category id: label}."""
        return {c: i + 1 for i, c in enumerate(self.category_ids)}

    def to_json_bytes(self) -> bytes:
        """The label-map file's bytes (deterministic: same map, same bytes)."""
        entries = [{"label": i + 1, "name": n, "category_id": c}
                   for i, (n, c) in enumerate(zip(self.class_names, self.category_ids))]
        lines = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
        return ('{"labels": [\n' + lines + "\n]}\n").encode("utf-8")


STANDARD_LABEL_MAP = CocoLabelMap.from_categories(COCO_CATEGORIES)


def label_map_path(directory: str, prefix: str) -> str:
    """``<directory>/<prefix>_label_map.json``."""
    return os.path.join(directory, prefix + LABEL_MAP_SUFFIX)


def load_label_map_json(path: str) -> CocoLabelMap:
    """Reads a label-map JSON (module doc). Raises LabelMapError naming the file for a missing
    or malformed file, labels that are not exactly 1..N, or duplicate names or category ids."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise LabelMapError(f"{path}: label-map file not found") from None
    except OSError as e:
        raise LabelMapError(f"{path}: cannot read the label map ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelMapError(f"{path}: not valid JSON ({e})") from None
    entries = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise LabelMapError(f'{path}: expected {{"labels": [{{"label": 1, "name": ..., '
                            '"category_id": ...}, ...]}')
    by_label: dict[int, tuple[str, int]] = {}
    for index, entry in enumerate(entries):
        ok = (isinstance(entry, dict) and isinstance(entry.get("label"), int)
              and isinstance(entry.get("name"), str) and entry.get("name")
              and isinstance(entry.get("category_id"), int)
              and not isinstance(entry.get("label"), bool))
        if not ok:
            raise LabelMapError(f"{path}: entry {index} must have an int 'label', a non-empty "
                                f"'name' and an int 'category_id', got {entry!r}")
        if entry["label"] in by_label:
            raise LabelMapError(f"{path}: label {entry['label']} is listed twice")
        by_label[entry["label"]] = (entry["name"], entry["category_id"])
    if sorted(by_label) != list(range(1, len(by_label) + 1)):
        raise LabelMapError(f"{path}: labels must be 1..{len(by_label)} (0 is the background), "
                            f"got {sorted(by_label)[:10]}...")
    names = tuple(by_label[i][0] for i in range(1, len(by_label) + 1))
    ids = tuple(by_label[i][1] for i in range(1, len(by_label) + 1))
    for what, values in (("name", names), ("category_id", ids)):
        seen = set()
        for v in values:
            if v in seen:
                raise LabelMapError(f"{path}: {what} {v!r} is listed twice")
            seen.add(v)
    return CocoLabelMap(names, ids)
