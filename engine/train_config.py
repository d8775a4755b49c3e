"""The settings of a training run: :class:`TrainConfig`, its checks, the optimizer and
learning-rate parts, the meaning of ``--augmentation``, and the record of a run in
``train_dir/config.json``.

Nothing here reads absl flags: train_ssd_network.py builds a :class:`TrainConfig` from its
flags (``cli.flags.config_from_flags``) and :func:`engine.training.train` runs it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import keras
import tensorflow as tf

from engine import optimizers as opt_lib
from engine import recipes
from engine.devices import MIXED_PRECISION_MODES
from engine.errors import UsageError
from fileio import atomic
from nets import ssd_params as ssd_params_lib
from tf_extended.losses import MINING_MODES, NORMALIZATIONS
from tf_extended.targets import MATCHING_MODES

CONFIG_FILENAME = "config.json"
# --augmentation: the preprocessing chain of that name ('caffe', 'original'), or 'none'
# (warp resize only, deterministic: for tests and debugging). See preprocessing_options().
AUGMENTATIONS = ("caffe", "original", "none")

_OPT = opt_lib.OptimizerSettings()
_LR = opt_lib.LearningRateSettings()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; names follow the original flags.

    ``None`` in a recipe-controlled field means "take it from ``recipe``"
    (:func:`engine.recipes.apply_recipe`). See train_ssd_network.py --help for each meaning.
    """

    # Data and model.
    dataset_name: str = ""
    dataset_dir: str = ""
    dataset_split_name: str = "train"
    file_pattern: Optional[str] = None
    labels_file: Optional[str] = None
    num_samples: Optional[int] = None
    num_classes: Optional[int] = None
    labels_offset: int = 0
    model_name: str = "ssd_300_vgg"
    preprocessing_name: Optional[str] = None
    train_image_size: Optional[int] = None
    anchor_preset: Optional[str] = None
    augmentation: Optional[str] = None
    num_readers: int = 4
    num_preprocessing_threads: int = 4
    overfit_one_batch: bool = False
    # SSD loss and matching.
    loss_alpha: float = 1.0
    negative_ratio: float = 3.0
    match_threshold: float = 0.5
    label_smoothing: float = 0.0
    matching: Optional[str] = None
    negative_mining: Optional[str] = None
    loss_normalization: Optional[str] = None
    # Optimization.
    optimizer: Optional[str] = None
    weight_decay: Optional[float] = None
    bias_lr_mult: Optional[float] = None
    decay_l2norm_scale: Optional[bool] = None
    # The optimizers' own hyper-parameters: defaults from OptimizerSettings (one place).
    momentum: float = _OPT.momentum
    adam_beta1: float = _OPT.adam_beta1
    adam_beta2: float = _OPT.adam_beta2
    opt_epsilon: float = _OPT.opt_epsilon
    adadelta_rho: float = _OPT.adadelta_rho
    adagrad_initial_accumulator_value: float = _OPT.adagrad_initial_accumulator_value
    ftrl_learning_rate_power: float = _OPT.ftrl_learning_rate_power
    ftrl_initial_accumulator_value: float = _OPT.ftrl_initial_accumulator_value
    ftrl_l1: float = _OPT.ftrl_l1
    ftrl_l2: float = _OPT.ftrl_l2
    rmsprop_momentum: float = _OPT.rmsprop_momentum
    rmsprop_decay: float = _OPT.rmsprop_decay
    moving_average_decay: Optional[float] = None
    # Learning rate.
    learning_rate_decay_type: Optional[str] = None
    learning_rate: Optional[float] = None
    end_learning_rate: float = _LR.end_learning_rate
    learning_rate_decay_factor: float = _LR.decay_factor
    num_epochs_per_decay: float = _LR.num_epochs_per_decay
    learning_rate_boundaries: Optional[tuple[int, ...]] = None
    learning_rate_values: Optional[tuple[float, ...]] = None
    warmup_steps: Optional[int] = None
    batch_size: Optional[int] = None
    max_number_of_steps: Optional[int] = None
    # Fine-tuning.
    checkpoint_path: Optional[str] = None
    checkpoint_model_scope: Optional[str] = None
    checkpoint_exclude_scopes: Optional[str] = None
    trainable_scopes: Optional[str] = None
    ignore_missing_vars: bool = False
    # Run.
    train_dir: str = "/tmp/tfmodel/"
    recipe: str = "caffe_voc"
    num_clones: int = 1
    clone_on_cpu: bool = False
    gpu_memory_fraction: Optional[float] = None
    mixed_precision: Optional[str] = None
    jit_compile: bool = False
    seed: int = 0
    log_every_n_steps: int = 10
    save_summaries_secs: float = 600.0
    save_interval_secs: float = 600.0
    keep_checkpoint_max: int = 5
    export_tf1_checkpoint: bool = True

    def resolved(self) -> "TrainConfig":
        """This config with the recipe's values filled into the unset fields."""
        try:
            return recipes.apply_recipe(self)
        except ValueError as err:
            raise UsageError(str(err)) from None

    def to_json(self) -> dict:
        """Plain-JSON dict of the settings."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def _not_a_choice(flag: str, value: Any, valid: tuple) -> UsageError:
    return UsageError(f"--{flag}={value!r} is not recognized; valid: {', '.join(valid)}.")


def validate(config: TrainConfig) -> None:
    """Check a resolved config; raises UsageError naming the flag."""
    c = config

    def need(cond: bool, message: str) -> None:
        if not cond:
            raise UsageError(message)

    need(bool(c.dataset_name), "--dataset_name is required (the original defaulted to "
                               "'imagenet', which is not a detection dataset).")
    need(bool(c.dataset_dir), "--dataset_dir is required: the folder of the TFRecord files.")
    need(bool(c.train_dir), "--train_dir is required.")
    need(c.batch_size is not None and c.batch_size >= 1,
         f"--batch_size must be >= 1, got {c.batch_size}.")
    need(c.num_clones >= 1, f"--num_clones must be >= 1, got {c.num_clones}.")
    need(c.labels_offset == 0, f"--labels_offset={c.labels_offset}: only 0 is supported (label 0 "
                               "is the SSD background; the original accepted the flag but never "
                               "used it).")
    for flag, value, valid in (
            ("optimizer", c.optimizer, opt_lib.OPTIMIZERS),
            ("learning_rate_decay_type", c.learning_rate_decay_type, opt_lib.DECAY_TYPES),
            ("matching", c.matching, MATCHING_MODES),
            ("negative_mining", c.negative_mining, MINING_MODES),
            ("loss_normalization", c.loss_normalization, NORMALIZATIONS),
            ("augmentation", c.augmentation, AUGMENTATIONS)):
        if value not in valid:
            raise _not_a_choice(flag, value, valid)
    need(c.mixed_precision in (None, "", "float32") + MIXED_PRECISION_MODES,
         f"--mixed_precision={c.mixed_precision!r}; valid: "
         f"{', '.join(MIXED_PRECISION_MODES)} (or empty).")
    need(c.learning_rate is not None and c.learning_rate > 0,
         f"--learning_rate must be > 0, got {c.learning_rate}.")
    need(c.weight_decay is not None and c.weight_decay >= 0,
         f"--weight_decay must be >= 0, got {c.weight_decay}.")
    need(c.warmup_steps is not None and c.warmup_steps >= 0,
         f"--warmup_steps must be >= 0, got {c.warmup_steps}.")
    need(c.max_number_of_steps is None or c.max_number_of_steps >= 0,
         f"--max_number_of_steps must be >= 0, got {c.max_number_of_steps}.")
    need(c.keep_checkpoint_max >= 1, f"--keep_checkpoint_max must be >= 1, got "
                                     f"{c.keep_checkpoint_max}.")
    need(c.log_every_n_steps >= 1, f"--log_every_n_steps must be >= 1, got {c.log_every_n_steps}.")
    need(c.moving_average_decay is None or 0.0 < c.moving_average_decay < 1.0,
         f"--moving_average_decay must be in (0, 1), got {c.moving_average_decay}.")
    need(c.gpu_memory_fraction is None or 0.0 < c.gpu_memory_fraction <= 1.0,
         f"--gpu_memory_fraction must be in (0, 1], got {c.gpu_memory_fraction}.")
    need(c.label_smoothing == 0.0,
         f"--label_smoothing={c.label_smoothing}: not implemented (the original accepted this "
         "flag and silently ignored it); leave it at 0.")
    if c.learning_rate_decay_type == "piecewise":
        need(bool(c.learning_rate_boundaries),
             "--learning_rate_decay_type=piecewise needs --learning_rate_boundaries "
             "(e.g. 80000,100000).")
        need(not c.learning_rate_values
             or len(c.learning_rate_values) == len(c.learning_rate_boundaries) + 1,
             f"--learning_rate_values needs {len(c.learning_rate_boundaries) + 1} values for "
             f"{len(c.learning_rate_boundaries)} boundaries, got {len(c.learning_rate_values)}.")
    if c.learning_rate_decay_type == "cosine":
        need(bool(c.max_number_of_steps), "--learning_rate_decay_type=cosine needs "
                                          "--max_number_of_steps.")
    if c.train_image_size is not None:
        need(c.train_image_size >= 32, f"--train_image_size must be >= 32, got "
                                       f"{c.train_image_size}.")


def dtype_policy_name(c: TrainConfig) -> Optional[str]:
    """``--mixed_precision`` as :func:`engine.devices.dtype_policy` takes it (None: float32)."""
    return c.mixed_precision if c.mixed_precision in MIXED_PRECISION_MODES else None


def optimizer_settings(c: TrainConfig) -> opt_lib.OptimizerSettings:
    """The optimizer part of a resolved config."""
    return opt_lib.OptimizerSettings(
        name=c.optimizer, momentum=c.momentum, adam_beta1=c.adam_beta1,
        adam_beta2=c.adam_beta2, opt_epsilon=c.opt_epsilon, adadelta_rho=c.adadelta_rho,
        adagrad_initial_accumulator_value=c.adagrad_initial_accumulator_value,
        ftrl_learning_rate_power=c.ftrl_learning_rate_power,
        ftrl_initial_accumulator_value=c.ftrl_initial_accumulator_value,
        ftrl_l1=c.ftrl_l1, ftrl_l2=c.ftrl_l2, rmsprop_momentum=c.rmsprop_momentum,
        rmsprop_decay=c.rmsprop_decay, weight_decay=c.weight_decay or 0.0)


def learning_rate_settings(c: TrainConfig) -> opt_lib.LearningRateSettings:
    """The learning-rate part of a resolved config."""
    return opt_lib.LearningRateSettings(
        decay_type=c.learning_rate_decay_type, learning_rate=c.learning_rate,
        end_learning_rate=c.end_learning_rate, decay_factor=c.learning_rate_decay_factor,
        num_epochs_per_decay=c.num_epochs_per_decay,
        boundaries=tuple(c.learning_rate_boundaries or ()),
        values=tuple(c.learning_rate_values or ()), warmup_steps=int(c.warmup_steps or 0))


def preprocessing_options(augmentation: str) -> dict:
    """Options of ``preprocessing_factory.get_preprocessing`` for ``--augmentation``
    (one of :data:`AUGMENTATIONS`)."""
    if augmentation in ("caffe", "original"):
        return {"chain": augmentation}
    if augmentation == "none":
        # Warp resize only (deterministic): for tests and debugging.
        return {"chain": "caffe", "photometric_params": None, "expand": False, "samplers": None,
                "flip": False, "interpolations": ("bilinear",)}
    raise _not_a_choice("augmentation", augmentation, AUGMENTATIONS)


# ---------------------------------------------------------------------------------------
# The record of a run: train_dir/config.json
# ---------------------------------------------------------------------------------------

def write_run_config(config: TrainConfig, spec: Any, net: Any, strategy: tf.distribute.Strategy,
                     signature: dict, start_step: int, initialized_from: str) -> str:
    """Write ``train_dir/config.json`` (atomically): the resolved settings, the dataset, the
    net's params, the strategy, the optimizer signature (see :func:`read_signature`), where
    the weights came from and the TF/Keras versions. Returns its path."""
    data = {
        "config": config.to_json(),
        "dataset": {"name": spec.name, "split_name": spec.split_name,
                    "num_samples": spec.num_samples, "num_classes": spec.num_classes,
                    "file_pattern": spec.file_pattern,
                    "labels_to_names": {str(k): v for k, v in spec.labels_to_names.items()}},
        "model": {"model_name": net.model_name,
                  "params": ssd_params_lib.params_to_json(net.params),
                  "num_anchors": int(len(net.anchors()))},
        "strategy": {"type": type(strategy).__name__,
                     "num_replicas": strategy.num_replicas_in_sync},
        "optimizer_signature": signature,
        "start_step": start_step,
        "initialized_from": initialized_from,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    return atomic.write_json(os.path.join(config.train_dir, CONFIG_FILENAME), data,
                             sort_keys=True, default=str)


def read_signature(train_dir: str) -> Optional[dict]:
    """The optimizer signature (optimizer, mixed precision, trainable variables, moving
    average) of the run that last wrote ``train_dir/config.json``, or None."""
    try:
        with open(os.path.join(train_dir, CONFIG_FILENAME), encoding="utf-8") as f:
            return json.load(f).get("optimizer_signature")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
