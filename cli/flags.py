"""Flag groups shared by the scripts, each defined once, and flags -> library arguments.

A script calls the groups it needs (a default may differ per script: the split evaluated is
``test``, the one trained ``train``), then its own flags. Choice lists come from the library
that owns them, so a flag never offers a value the library refuses.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

from absl import flags

from cli.app import UsageError
from engine.devices import MIXED_PRECISION_MODES
from nets import nets_factory, ssd_params

FLAGS = flags.FLAGS
# The groups' flags belong to the script that calls them: they show in its --help.
flags.disclaim_key_flags()

DATASET_NAMES_HELP = ("pascalvoc_2007, pascalvoc_2012, pascalvoc_0712, or voc/custom for any "
                      "converted VOC-format dataset; coco_2014, coco_2017, or coco for any "
                      "converted COCO-format dataset")


def _names(values: Iterable[str]) -> str:
    return ", ".join(values)


def define_dataset_flags(split_default: str) -> None:
    """--dataset_name, --dataset_split_name, --dataset_dir, --file_pattern, --labels_file."""
    flags.DEFINE_string("dataset_name", None, f"Dataset name (required): {DATASET_NAMES_HELP}.")
    flags.DEFINE_string("dataset_split_name", split_default, "The split to read.")
    flags.DEFINE_string("dataset_dir", None, "Folder of the TFRecord files (required).")
    flags.DEFINE_string("file_pattern", None,
                        "Glob of the TFRecord files ('%s' = the split), relative to dataset_dir; "
                        "default: the dataset's.")
    flags.DEFINE_string("labels_file", None,
                        "Label map of a custom dataset: one class name per line (ids 1..N), or "
                        "the COCO converter's <name>_label_map.json (COCO datasets find theirs "
                        "beside the shards).")


def define_model_flags(model_default: Optional[str], *, with_preprocessing: bool = True,
                       anchor_default_help: str = "the checkpoint's sidecar, else the model "
                       "default 'voc'",
                       num_classes_default_help: str = "the checkpoint's sidecar, else its "
                       "class heads, else the dataset's; 21 for VOC") -> None:
    """--model_name, --num_classes, --anchor_preset (and --preprocessing_name)."""
    default = f"Default: {model_default}." if model_default else (
        "Default: the checkpoint's .ssd.json sidecar, else its variable scope, else ssd_300_vgg.")
    flags.DEFINE_string("model_name", model_default,
                        f"Network: {_names(nets_factory.network_names())}. {default}")
    flags.DEFINE_integer("num_classes", None,
                         "Number of classes including the background (default: "
                         f"{num_classes_default_help}).")
    flags.DEFINE_string("anchor_preset", None,
                        f"Anchor sizes: {_names(ssd_params.anchor_preset_names())} (default: "
                        f"{anchor_default_help}). The original's published ssd_300_vgg.ckpt "
                        "needs coco_ft.")
    if with_preprocessing:
        flags.DEFINE_string("preprocessing_name", None,
                            "Preprocessing (default: --model_name's).")


def define_postprocessing_flags(select_threshold: float) -> None:
    """--select_threshold, --select_top_k, --nms_threshold, --keep_top_k (Caffe SSD's test
    net: 0.01, 400, 0.45, 200)."""
    flags.DEFINE_float("select_threshold", select_threshold,
                       "Minimum class score of a detection candidate.")
    flags.DEFINE_integer("select_top_k", 400, "Candidates per class kept before NMS.")
    flags.DEFINE_float("nms_threshold", 0.45, "Per-class non-maximum suppression IoU threshold.")
    flags.DEFINE_integer("keep_top_k", 200, "Detections kept per image after NMS (all classes).")


def define_device_flags(mixed_precision_help: str) -> None:
    """--gpu_memory_fraction, --mixed_precision."""
    flags.DEFINE_float("gpu_memory_fraction", None,
                       "Fraction of each GPU's memory TensorFlow may take (default: grow as "
                       "needed, so that evaluation can run beside training).")
    flags.DEFINE_enum("mixed_precision", None, list(MIXED_PRECISION_MODES), mixed_precision_help)


def check_postprocessing_flags() -> None:
    """Ranges of the post-processing flags (usage errors name the flag)."""
    for name in ("select_threshold", "nms_threshold"):
        if not 0.0 <= getattr(FLAGS, name) <= 1.0:
            raise UsageError(f"--{name}={getattr(FLAGS, name)}: must be in [0, 1]")
    for name in ("select_top_k", "keep_top_k"):
        if getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name}={getattr(FLAGS, name)}: must be >= 1")


def check_required(*names: str) -> None:
    """Usage error naming the first of ``names`` that was not given."""
    for name in names:
        if getattr(FLAGS, name) in (None, ""):
            raise UsageError(f"--{name} is required (see --help)")


def config_from_flags(config_cls: type, **overrides: Any) -> Any:
    """A dataclass ``config_cls`` built from the flags of the same names (plus ``overrides``).

    Fields without a flag of their name keep their defaults; ``overrides`` win over flags.
    """
    values = {}
    for field in dataclasses.fields(config_cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.name in FLAGS:
            values[field.name] = getattr(FLAGS, field.name)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}")
    return config_cls(**values)
