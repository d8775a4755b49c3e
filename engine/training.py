"""The SSD training engine behind train_ssd_network.py.

``train(TrainConfig(...))`` runs the whole job: device and ``tf.distribute`` set-up, dataset,
network, optimizer, checkpoint restore or initialisation, the training loop with logging,
TensorBoard summaries, periodic checkpoints, signal handling and guard rails. The script only
turns flags into a :class:`TrainConfig`; nothing here reads absl flags or prints.

Files written in ``train_dir`` (see docs/training.md for the full description):

- ``ckpt-<step>.index`` / ``.data-*``: object-based ``tf.train.Checkpoint`` managed by
  ``tf.train.CheckpointManager`` (atomic: TF writes the data, then the index, then the
  ``checkpoint`` state file). Keys: ``model`` = the net eval should use (the moving-average
  weights when ``--moving_average_decay`` is set, else the trained weights), ``train_model`` =
  the trained weights (only with a moving average), ``train_state/state/slots/optimizer``
  (nested so that the weights are saved under ``model/``, see :func:`_deep_holder`),
  ``step``. This is the format ``nets.checkpoints.load_checkpoint`` and eval_ssd_network.py
  read (key ``model``).
- ``ckpt-<step>.ssd.json``: the network sidecar (``nets.checkpoints.write_metadata``), written
  before the checkpoint itself so a reader never sees a checkpoint without it.
- ``config.json``: the resolved configuration (atomic write).
- ``events.out.tfevents.*``: TensorBoard summaries.
- ``export/model.ckpt-<step>``: at the end of training, a TF1 name-based checkpoint with
  TF-Slim names (what the original project and TF-Slim tools read), weights as in ``model``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from engine import optimizers as opt_lib
from engine import recipes

logger = logging.getLogger(__name__)

MIXED_PRECISION_MODES = ("bfloat16", "float16")
NEGATIVE_MINING_MODES = ("per_image", "batch")
MATCHING_MODES = ("caffe", "original")
LOSS_NORMALIZATIONS = ("positives", "batch_size")
AUGMENTATIONS = ("caffe", "original", "none")
CHECKPOINT_NAME = "ckpt"
CONFIG_FILENAME = "config.json"
EXPORT_DIRNAME = "export"
# Images per summary (a few training images with their matched boxes drawn).
_SUMMARY_IMAGES = 3


# ---------------------------------------------------------------------------------------
# Errors (the script maps them to exit codes: usage 2, data 1)
# ---------------------------------------------------------------------------------------

class TrainingError(Exception):
    """A failure with a one-line message for the user."""

    exit_code = 1


class UsageError(TrainingError):
    """Bad flags or an inconsistent configuration (exit code 2)."""

    exit_code = 2


class DataError(TrainingError):
    """Bad or missing data or checkpoint files (exit code 1)."""

    exit_code = 1


class NonFiniteLossError(DataError):
    """The loss became NaN or inf; names the step and the batch's images."""

    def __init__(self, step: int, losses: Mapping[str, float], image_ids: Sequence[str]):
        self.step = step
        self.losses = dict(losses)
        self.image_ids = list(image_ids)
        shown = ", ".join(self.image_ids[:16]) + (" ..." if len(self.image_ids) > 16 else "")
        values = ", ".join(f"{k}={v:.4g}" for k, v in self.losses.items())
        super().__init__(
            f"non-finite loss at step {step} ({values}); images of the batch: [{shown}]. "
            "Lower --learning_rate (or add --warmup_steps) or check these images' boxes; "
            "the last checkpoint in train_dir is from before this step.")


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------

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
    need(c.optimizer in opt_lib.OPTIMIZERS,
         f"--optimizer={c.optimizer!r} is not recognized; valid: {', '.join(opt_lib.OPTIMIZERS)}.")
    need(c.learning_rate_decay_type in opt_lib.DECAY_TYPES,
         f"--learning_rate_decay_type={c.learning_rate_decay_type!r} is not recognized; valid: "
         f"{', '.join(opt_lib.DECAY_TYPES)}.")
    need(c.matching in MATCHING_MODES,
         f"--matching={c.matching!r}; valid: {', '.join(MATCHING_MODES)}.")
    need(c.negative_mining in NEGATIVE_MINING_MODES,
         f"--negative_mining={c.negative_mining!r}; valid: {', '.join(NEGATIVE_MINING_MODES)}.")
    need(c.loss_normalization in LOSS_NORMALIZATIONS,
         f"--loss_normalization={c.loss_normalization!r}; valid: {', '.join(LOSS_NORMALIZATIONS)}.")
    need(c.augmentation in AUGMENTATIONS,
         f"--augmentation={c.augmentation!r}; valid: {', '.join(AUGMENTATIONS)}.")
    need(c.mixed_precision in (None, "", "float32") + MIXED_PRECISION_MODES,
         f"--mixed_precision={c.mixed_precision!r}; valid: bfloat16, float16 (or empty).")
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


# ---------------------------------------------------------------------------------------
# Devices and tf.distribute
# ---------------------------------------------------------------------------------------

def cluster_spec_from_env() -> Optional[dict]:
    """The parsed ``TF_CONFIG`` when it describes a cluster of more than one task, else None."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UsageError(f"TF_CONFIG is not valid JSON: {err}") from None
    cluster = tf_config.get("cluster") or {}
    num_tasks = sum(len(v) for v in cluster.values() if isinstance(v, list))
    return tf_config if num_tasks > 1 else None


def _gpu_total_memory_mb() -> list[int]:
    """Total memory of each GPU in MiB from nvidia-smi, [] when it is not available."""
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
        return [int(float(x)) for x in out.split() if x.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def configure_devices(num_clones: int, clone_on_cpu: bool,
                      gpu_memory_fraction: Optional[float], multi_worker: bool) -> None:
    """Set up devices before TensorFlow initialises them.

    - GPUs: memory growth (so several jobs can share a GPU) unless ``gpu_memory_fraction``
      is given, which caps each GPU at that fraction of its memory (the original's meaning).
    - CPU only (or ``clone_on_cpu``) with ``num_clones > 1``: the CPU is split into
      ``num_clones`` logical devices so MirroredStrategy has one replica per clone (the
      replicas then share the cores: useful for tests, not for speed).
    """
    gpus = tf.config.list_physical_devices("GPU")
    try:
        for i, gpu in enumerate(gpus):
            if gpu_memory_fraction:
                totals = _gpu_total_memory_mb()
                if i < len(totals):
                    limit = int(totals[i] * gpu_memory_fraction)
                    tf.config.set_logical_device_configuration(
                        gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
                    continue
                logger.warning("--gpu_memory_fraction: cannot read the GPU memory size "
                               "(nvidia-smi); using memory growth instead.")
            tf.config.experimental.set_memory_growth(gpu, True)
        if (clone_on_cpu or not gpus) and num_clones > 1 and not multi_worker:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_clones)])
    except RuntimeError as err:
        # Devices already initialised (a second train() in the same process).
        logger.warning("Device configuration left as it is (%s).", str(err).splitlines()[0])


def make_strategy(num_clones: int, clone_on_cpu: bool) -> tf.distribute.Strategy:
    """The distribution strategy for this process.

    - ``TF_CONFIG`` naming more than one task: MultiWorkerMirroredStrategy (every worker
      runs this same command; ``--batch_size`` is the global batch over all workers).
    - ``num_clones > 1``: MirroredStrategy over ``num_clones`` GPUs (or logical CPUs with
      ``--clone_on_cpu`` or when there is no GPU).
    - otherwise the default strategy (one device: the first GPU if any, else the CPU).
    """
    if cluster_spec_from_env() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if num_clones <= 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and not clone_on_cpu:
        if num_clones > len(gpus):
            raise UsageError(f"--num_clones={num_clones} but only {len(gpus)} GPU(s) are visible.")
        return tf.distribute.MirroredStrategy([d.name for d in gpus[:num_clones]])
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < num_clones:
        raise UsageError(f"--num_clones={num_clones} on the CPU needs {num_clones} logical CPU "
                         f"devices, but TensorFlow was already initialised with {len(cpus)}.")
    return tf.distribute.MirroredStrategy(
        [d.name for d in cpus[:num_clones]],
        cross_device_ops=tf.distribute.ReductionToOneDevice(reduce_to_device=cpus[0].name))


def task_info(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, task_id) of this process; single-process runs are the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    jobs = resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return True, task_id
    return (task_type == "worker" and task_id == 0 and "chief" not in jobs), task_id


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------

def net_params_for(default_params: Any, num_classes: int, image_size: Optional[int],
                   anchor_preset: Optional[str]) -> Any:
    """The SSDParams to train: class count, input size and anchor preset applied.

    A ``train_image_size`` too small for every extra block (SSD300 needs about 260 pixels)
    drops the trailing feature layers that would be empty, so tiny inputs (tests) still work;
    anchor sizes and steps stay in pixels of the original size.
    """
    from nets import ssd_params as ssd_params_lib

    params = dataclasses.replace(default_params, num_classes=int(num_classes),
                                 no_annotation_label=int(num_classes))
    if anchor_preset:
        try:
            params = params.with_anchor_preset(anchor_preset)
        except ValueError as err:
            raise UsageError(f"--anchor_preset: {err}") from None
    if image_size and tuple(params.img_shape) != (image_size, image_size):
        shape = (int(image_size), int(image_size))
        try:
            params = params.with_img_shape(shape)
        except ValueError:
            keep = len(params.feat_layers)
            while keep > 1:
                keep -= 1
                layers = params.feat_layers[:keep]
                blocks = tuple(b for b in params.extra_blocks
                               if b.name in layers or _block_index(b.name) < _block_index(layers[-1]))
                try:
                    feat_shapes = ssd_params_lib.compute_feat_shapes(shape, layers, blocks)
                except ValueError:
                    continue
                params = dataclasses.replace(
                    params, img_shape=shape, feat_layers=layers, feat_shapes=feat_shapes,
                    anchor_sizes=params.anchor_sizes[:keep],
                    anchor_ratios=params.anchor_ratios[:keep],
                    anchor_steps=params.anchor_steps[:keep],
                    normalizations=params.normalizations[:keep], extra_blocks=blocks,
                    anchor_preset=ssd_params_lib.CUSTOM_PRESET)
                logger.warning("--train_image_size=%d is too small for every feature layer: "
                               "training with %s only.", image_size, ", ".join(layers))
                break
            else:
                raise UsageError(f"--train_image_size={image_size} is too small for this "
                                 "network.") from None
    return params


def _block_index(name: str) -> int:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


def split_scopes(scopes: Optional[str | Sequence[str]]) -> list[str]:
    """Comma-separated TF-Slim scopes -> list (blank entries and trailing '/' dropped)."""
    if not scopes:
        return []
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    return [s.strip().rstrip("/") for s in scopes if s and s.strip()]


def in_scopes(name: str, scopes: Iterable[str]) -> bool:
    """True when the TF-Slim ``name`` is inside one of ``scopes`` (whole path components:
    ``ssd_300_vgg/block1`` holds ``ssd_300_vgg/block1/...`` but not ``.../block10/...``)."""
    return any(name == s or name.startswith(s + "/") for s in scopes)


def select_trainable(named: Mapping[str, Any], trainable_scopes: Optional[str]) -> list[str]:
    """Names of the variables to train: all trainable ones (not e.g. batch-norm moving
    statistics), or those under ``--trainable_scopes``.

    A scope that matches nothing is logged as a warning (listing the net's scopes).

    Raises:
      UsageError: no scope matches any variable (the message lists the net's scopes).
    """
    named = {n: v for n, v in named.items() if getattr(v, "trainable", True)}
    scopes = split_scopes(trainable_scopes)
    if not scopes:
        return list(named)
    tops = sorted({"/".join(n.split("/")[:2]) for n in named})
    selected = [n for n in named if in_scopes(n, scopes)]
    if not selected:
        raise UsageError(f"--trainable_scopes: {','.join(scopes)} matches no variable; this "
                         f"net's scopes are {', '.join(tops)}.")
    for scope in scopes:
        if not any(in_scopes(n, [scope]) for n in named):
            # E.g. block10/block11 of a net cut down by a small --train_image_size.
            logger.warning("--trainable_scopes: %r matches no variable of this net (scopes: "
                           "%s).", scope, ", ".join(tops))
    return selected


def weight_decay_names(net: Any, named: Mapping[str, Any], include_l2norm_scale: bool
                       ) -> list[str]:
    """TF-Slim names that get L2 weight decay: the net's ``weight_decay_variables()`` (conv
    kernels, what TF-Slim's ``l2_regularizer`` covered), plus the conv4_3 L2Normalization
    scale (``.../L2Normalization/gamma``) when ``include_l2norm_scale`` (Caffe decays it)."""
    decayed = {id(v) for v in net.weight_decay_variables()}
    return [n for n, v in named.items() if id(v) in decayed
            or (include_l2norm_scale and n.endswith("L2Normalization/gamma"))]


# ---------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------

def preprocessing_options(augmentation: str) -> dict:
    """Options of ``preprocessing_factory.get_preprocessing`` for ``--augmentation``."""
    if augmentation == "caffe":
        return {"chain": "caffe"}
    if augmentation == "original":
        return {"chain": "original"}
    # 'none': warp resize only (deterministic): for tests and debugging.
    return {"chain": "caffe", "photometric_params": None, "expand": False, "samplers": None,
            "flip": False, "interpolations": ("bilinear",)}


def unpack_batch(batch: Any) -> tuple[tf.Tensor, dict, Optional[tf.Tensor]]:
    """A training batch -> (images, targets dict, image ids or None).

    Accepts ``(images, targets)`` (ids in ``targets['filename']``, as
    ``preprocessing.pipeline.train_dataset`` gives them), ``(images, targets, ids)`` or a dict
    with ``images``.
    """
    if isinstance(batch, Mapping):
        images = batch["images"] if "images" in batch else batch["image"]
        targets = {k: batch[k] for k in ("labels", "localisations", "scores")}
        ids = batch.get("image_ids", batch.get("ids", batch.get("filename")))
        return images, targets, ids
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    images, targets = batch
    ids = None
    if isinstance(targets, Mapping):
        ids = next((targets[k] for k in ("filename", "image_ids", "ids") if k in targets), None)
    return images, targets, ids


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------

def atomic_write_json(path: str, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file + rename (never half-written)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class _SignalCatcher:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step.

    A second SIGINT while stopping restores Python's default (KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_SignalCatcher":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.signal_name = name
        logger.warning("%s received: stopping after this step and saving a checkpoint.", name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

class CheckpointKeeper:
    """Training checkpoints in ``train_dir``: save, rotate, restore; sidecars and export.

    Non-chief workers of a multi-worker run must save too (saving is collective); they
    write to a private temporary directory that is removed at the end.
    """

    def __init__(self, train_dir: str, checkpoint: tf.train.Checkpoint, step: tf.Variable,
                 keep: int, is_chief: bool, task_id: int, sidecar_fn: Callable[[str], None]):
        self.train_dir = train_dir
        self.is_chief = is_chief
        self._sidecar_fn = sidecar_fn
        self._step = step
        self._tmp_dir = None
        directory = train_dir
        if not is_chief:
            self._tmp_dir = tempfile.mkdtemp(prefix=f"ssd_worker{task_id}_")
            directory = self._tmp_dir
        self.checkpoint = checkpoint
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep,
                                                  checkpoint_name=CHECKPOINT_NAME)
        self.last_saved_step: Optional[int] = None

    def latest_in_train_dir(self) -> Optional[str]:
        """The newest training checkpoint of ``train_dir`` (the chief's), or None."""
        latest = tf.train.latest_checkpoint(self.train_dir)
        if latest and os.path.basename(latest).startswith(CHECKPOINT_NAME + "-") \
                and os.path.exists(latest + ".index"):
            return latest
        # A state file lost or pointing elsewhere: fall back to the highest-numbered ckpt-N.
        found = []
        for index in glob.glob(os.path.join(glob.escape(self.train_dir),
                                            f"{CHECKPOINT_NAME}-*.index")):
            suffix = os.path.basename(index)[len(CHECKPOINT_NAME) + 1:-len(".index")]
            if suffix.isdigit():
                found.append((int(suffix), index[:-len(".index")]))
        return max(found)[1] if found else None

    def save(self) -> Optional[str]:
        """Save at the current step (sidecar first, then the checkpoint); returns its prefix."""
        step = int(self._step.numpy())
        if self.last_saved_step == step:
            return None
        prefix = os.path.join(self.manager.directory, f"{CHECKPOINT_NAME}-{step}")
        if self.is_chief:
            self._sidecar_fn(prefix)
        start = time.time()
        path = self.manager.save(checkpoint_number=step)
        self.last_saved_step = step
        if not self.is_chief:
            # This worker's copy is throw-away; the chief's is the checkpoint.
            return os.path.join(self.train_dir, f"{CHECKPOINT_NAME}-{step}")
        self._remove_orphan_sidecars()
        logger.info("Saved checkpoint %s (%.1f s).", path, time.time() - start)
        return path

    def _remove_orphan_sidecars(self) -> None:
        from nets.checkpoints import SIDECAR_SUFFIX

        pattern = os.path.join(glob.escape(self.train_dir), f"{CHECKPOINT_NAME}-*{SIDECAR_SUFFIX}")
        for sidecar in glob.glob(pattern):
            prefix = sidecar[: -len(SIDECAR_SUFFIX)]
            if not os.path.exists(prefix + ".index"):
                with contextlib.suppress(OSError):
                    os.remove(sidecar)

    def close(self) -> None:
        if self._tmp_dir:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)


def _checkpoint_scopes(prefix: str) -> tuple[bool, list[str]]:
    """(is object-based, top-level scopes of its variable names)."""
    names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in names:
        return True, []
    tops: dict[str, int] = {}
    for name in names:
        tops[name.split("/", 1)[0]] = tops.get(name.split("/", 1)[0], 0) + 1
    return False, sorted(tops, key=lambda t: -tops[t])


def resolve_model_scope(prefix: str, model_name: str, given: Optional[str]) -> Optional[str]:
    """The ``model_scope`` to load ``prefix`` with.

    - Not given: the net's own scope when the checkpoint has it; ``vgg_16`` for TF-Slim's
      ImageNet VGG-16 checkpoint (the Caffe recipe's initialisation); else None.
    - Given but absent from a checkpoint that holds the net's own scope (the original
      README's second fine-tuning command keeps ``--checkpoint_model_scope=vgg_16`` on an SSD
      checkpoint): ignored, with a warning.
    """
    object_based, scopes = _checkpoint_scopes(prefix)
    if object_based:
        if given and given != model_name:
            logger.warning("--checkpoint_model_scope=%s ignored: %s is a training checkpoint of "
                           "this project (variables are matched by object, not by scope).",
                           given, prefix)
        return None
    if given:
        if given not in scopes and model_name in scopes:
            logger.warning("--checkpoint_model_scope=%s ignored: %s has no variable under "
                           "'%s/' but has the net's own scope '%s/'.", given, prefix, given,
                           model_name)
            return None
        return given
    if model_name in scopes:
        return None
    if "vgg_16" in scopes:
        logger.info("%s is TF-Slim's ImageNet VGG-16: loading the trunk from it "
                    "(--checkpoint_model_scope=vgg_16; fc6/fc7 decimated into conv6/conv7).",
                    prefix)
        return "vgg_16"
    return None


# ---------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------

def summary_images(images: tf.Tensor, labels: tf.Tensor, localisations: tf.Tensor,
                   anchors: np.ndarray, prior_scaling: Sequence[float],
                   max_images: int = _SUMMARY_IMAGES) -> tf.Tensor:
    """A few training images with the boxes of their positive anchors drawn.

    The boxes are decoded from the encoded targets (Caffe ``(x, y, w, h)`` offsets) of the
    positive anchors, so they show what the loss actually trains on after augmentation.
    Returns float32 [n, H, W, 3] in [0, 1].
    """
    from preprocessing.ssd_vgg_preprocessing import RGB_MEANS
    from tf_extended import boxes as tfe_boxes

    n = min(max_images, int(images.shape[0]))
    images = tf.cast(images[:n], tf.float32) + tf.constant(RGB_MEANS, tf.float32)
    images = tf.clip_by_value(images / 255.0, 0.0, 1.0)
    anchors_t = tf.constant(anchors, tf.float32)
    decoded = tfe_boxes.decode(tf.cast(localisations[:n], tf.float32), anchors_t[None],
                               prior_scaling)
    positive = labels[:n] > 0
    bboxes = tf.where(positive[..., None], decoded, tf.zeros_like(decoded))
    colors = tf.constant([[1.0, 0.2, 0.2, 1.0]])
    return tf.image.draw_bounding_boxes(images, bboxes, colors)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
      step: global step at the end.
      start_step: global step at the start (0, or the resumed step).
      losses: the last step's losses (global batch).
      checkpoint: the last saved checkpoint prefix (None if none was saved).
      stopped_by: signal name when stopped by SIGTERM/SIGINT, else None.
      initialized_from: what the weights came from ('resume:<prefix>', 'checkpoint:<prefix>',
        or 'scratch').
    """

    step: int
    start_step: int
    losses: dict
    checkpoint: Optional[str]
    stopped_by: Optional[str]
    initialized_from: str


def train(config: TrainConfig, *, hooks: Optional[Mapping[str, Callable]] = None) -> TrainResult:
    """Run a training job described by ``config`` (see the module docstring).

    Args:
      config: the settings (unset recipe fields are resolved here).
      hooks: optional callbacks for tests/tools: ``after_step(step, losses)``.

    Raises:
      UsageError, DataError, NonFiniteLossError: with a one-line message.
    """
    config = config.resolved()
    validate(config)
    hooks = dict(hooks or {})
    multi_worker = cluster_spec_from_env() is not None
    configure_devices(config.num_clones, config.clone_on_cpu, config.gpu_memory_fraction,
                      multi_worker)
    strategy = make_strategy(config.num_clones, config.clone_on_cpu)
    is_chief, task_id = task_info(strategy)
    num_replicas = strategy.num_replicas_in_sync
    global_batch = int(config.batch_size)
    if global_batch % num_replicas:
        raise UsageError(f"--batch_size={global_batch} (the global batch) must be a multiple of "
                         f"the number of replicas ({num_replicas}).")
    per_replica_batch = global_batch // num_replicas
    if config.seed is not None:
        keras.utils.set_random_seed(int(config.seed))
    logger.info("Strategy: %s, %d replica(s), global batch %d (%d per replica)%s.",
                type(strategy).__name__, num_replicas, global_batch, per_replica_batch,
                "" if not multi_worker else f", worker {task_id}{' (chief)' if is_chief else ''}")
    os.makedirs(config.train_dir, exist_ok=True)

    # -- dataset ----------------------------------------------------------------------------
    from datasets import dataset_factory

    try:
        spec = dataset_factory.get_dataset(config.dataset_name, config.dataset_split_name,
                                           config.dataset_dir, file_pattern=config.file_pattern,
                                           labels_file=config.labels_file,
                                           num_samples=config.num_samples)
    except ValueError as err:
        raise (UsageError if "unknown dataset name" in str(err) else DataError)(
            f"dataset: {err}") from None
    if not spec.files():
        raise DataError(f"--dataset_dir={config.dataset_dir}: no TFRecord files match "
                        f"{' or '.join(spec.file_patterns)} (convert the data with "
                        "tf_convert_data.py).")
    num_classes = config.num_classes or spec.num_classes
    if num_classes != spec.num_classes:
        raise UsageError(f"--num_classes={config.num_classes} but dataset {spec.name} has "
                         f"{spec.num_classes} classes including the background "
                         f"({spec.num_classes - 1} object classes); drop --num_classes or fix "
                         "--labels_file.")

    # -- network ----------------------------------------------------------------------------
    from nets import nets_factory
    from nets import checkpoints as ckpt_lib

    try:
        net_cls = nets_factory.get_network(config.model_name)
    except ValueError as err:
        raise UsageError(f"--model_name: {err}") from None
    params = net_params_for(net_cls.default_params, num_classes, config.train_image_size,
                            config.anchor_preset)
    policy = f"mixed_{config.mixed_precision}" if config.mixed_precision in \
        MIXED_PRECISION_MODES else None
    use_ema = config.moving_average_decay is not None

    schedule = opt_lib.build_learning_rate(
        learning_rate_settings(config), num_samples_per_epoch=spec.num_samples,
        global_batch_size=global_batch, max_steps=config.max_number_of_steps or None)

    with strategy.scope():
        net = net_cls(params, dtype_policy=policy)
        named = net.variables_by_checkpoint_name()
        trainable_names = select_trainable(named, config.trainable_scopes)
        trainable = [named[n] for n in trainable_names]
        decay_names = set(weight_decay_names(net, named, bool(config.decay_l2norm_scale)))
        bias_names = {n for n in trainable_names if n.endswith("/biases")}
        # adamw decays inside the optimizer (decoupled); the others through the loss.
        l2_vars = [named[n] for n in trainable_names
                   if n in decay_names] if config.optimizer != "adamw" else []
        optimizer = opt_lib.build_optimizer(optimizer_settings(config), schedule)
        if config.optimizer == "adamw":
            optimizer.exclude_from_weight_decay(
                var_list=[named[n] for n in trainable_names if n not in decay_names])
        if config.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(trainable)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        ema = ema_net = None
        if use_ema:
            ema_net = net_cls(params, dtype_policy=policy)
            ema_named = ema_net.variables_by_checkpoint_name()
            ema = opt_lib.ExponentialMovingAverage(
                [named[n] for n in named], config.moving_average_decay,
                shadows=[ema_named[n] for n in named])

    objects = {"model": ema_net if use_ema else net, "step": step_var,
               "train_state": _deep_holder(optimizer)}
    if use_ema:
        objects["train_model"] = net
    checkpoint = tf.train.Checkpoint(**objects)
    keeper = CheckpointKeeper(
        config.train_dir, checkpoint, step_var, config.keep_checkpoint_max, is_chief, task_id,
        sidecar_fn=lambda prefix: ckpt_lib.write_metadata(prefix, net.model_name, net.params))

    signature = {"optimizer": config.optimizer, "mixed_precision": config.mixed_precision or "",
                 "trainable": trainable_names, "moving_average": use_ema}
    initialized_from = _restore_or_initialize(config, keeper, net, ema, step_var, signature,
                                              named)
    start_step = int(step_var.numpy())
    if is_chief:
        _write_config(config, spec, net, strategy, signature, start_step, initialized_from)

    max_steps = config.max_number_of_steps or None
    if max_steps is not None and start_step >= max_steps:
        logger.info("Already at step %d >= --max_number_of_steps=%d: nothing to train.",
                    start_step, max_steps)
        if is_chief and config.export_tf1_checkpoint:
            _export_tf1(config.train_dir, objects["model"], start_step)
        keeper.close()
        return TrainResult(start_step, start_step, {}, keeper.latest_in_train_dir(), None,
                           initialized_from)

    # -- input ------------------------------------------------------------------------------
    anchors = net.anchors()
    dataset_fn = _make_dataset_fn(config, spec, params, anchors, global_batch,
                                  seed=int(config.seed) + start_step)
    dist_dataset = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dist_dataset)

    # -- step function ----------------------------------------------------------------------
    step_fn = _make_train_step(config, strategy, net, optimizer, trainable, l2_vars,
                               {id(named[n]) for n in bias_names}, ema, step_var,
                               num_classes, global_batch, num_replicas)

    writer = tf.summary.create_file_writer(config.train_dir) if is_chief else None
    losses: dict = {}
    stopped_by = None
    last_checkpoint = None
    images_seen_window = 0
    window_start = time.time()
    last_save = time.time()
    last_summary = -math.inf
    throughput = float("nan")
    step = start_step
    logger.info("Training from step %d%s.", start_step,
                f" to {max_steps}" if max_steps else " until stopped")
    with _SignalCatcher() as signals, contextlib.ExitStack() as cleanup:
        cleanup.callback(keeper.close)
        try:
            first = True
            while max_steps is None or step < max_steps:
                batch = next(iterator)
                if first:
                    _check_first_batch(strategy, batch, num_classes)
                want_save = (time.time() - last_save) >= config.save_interval_secs
                control = tf.constant([float(want_save), float(signals.signal_name is not None)],
                                      tf.float32)
                t0 = time.time()
                out_losses, out_control = step_fn(batch, control)
                losses = {k: float(v) for k, v in out_losses.items()}
                control_values = out_control.numpy()
                step = int(step_var.numpy())
                if first:
                    logger.info("First step took %.1f s (includes tracing and graph building).",
                                time.time() - t0)
                    window_start = time.time()
                    images_seen_window = 0
                    first = False
                else:
                    images_seen_window += global_batch
                if not all(math.isfinite(v) for v in losses.values()):
                    raise NonFiniteLossError(step, losses, _batch_image_ids(strategy, batch))
                if "after_step" in hooks:
                    hooks["after_step"](step, losses)
                elapsed = time.time() - window_start
                if images_seen_window and elapsed > 0:
                    throughput = images_seen_window / elapsed
                lr = float(_current_lr(optimizer))
                if step % config.log_every_n_steps == 0 or step == start_step + 1:
                    _log_step(step, max_steps, losses, lr, throughput, global_batch)
                if writer is not None and time.time() - last_summary >= config.save_summaries_secs:
                    _write_summaries(writer, step, losses, lr, throughput, strategy, batch,
                                     anchors, params.prior_scaling)
                    last_summary = time.time()
                if control_values[1] > 0:
                    stopped_by = signals.signal_name or "a signal on another worker"
                    last_checkpoint = keeper.save() or last_checkpoint
                    break
                if control_values[0] > 0:
                    last_checkpoint = keeper.save() or last_checkpoint
                    last_save = time.time()
            else:
                last_checkpoint = keeper.save() or last_checkpoint
        finally:
            if writer is not None:
                writer.flush()
        if is_chief and config.export_tf1_checkpoint and stopped_by is None:
            _export_tf1(config.train_dir, objects["model"], step)
        if multi_worker:
            _barrier(strategy)
    if stopped_by:
        logger.warning("Stopped by %s at step %d; checkpoint %s.", stopped_by, step,
                       last_checkpoint)
    else:
        logger.info("Done: step %d, checkpoint %s.", step, last_checkpoint)
    return TrainResult(step, start_step, losses, last_checkpoint, stopped_by, initialized_from)


def _deep_holder(optimizer) -> tf.train.Checkpoint:
    """The optimizer, four object levels below the checkpoint root.

    A variable is saved under its shortest path in the object graph. The optimizer refers to
    the model's variables too (``optimizer/_trainable_variables/0``: 3 levels, where the net's
    own path ``model/_graph/_operations/1/kernel`` has 5); kept this deep, the weights are
    saved under ``model/...``, where ``nets.checkpoints`` (and so eval) looks for them.
    """
    return tf.train.Checkpoint(
        state=tf.train.Checkpoint(slots=tf.train.Checkpoint(optimizer=optimizer)))


def _barrier(strategy) -> None:
    """All workers meet here (a one-number all-reduce), so that none exits while another
    still works: a worker that leaves early makes the others log heartbeat errors."""

    @tf.function
    def meet():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.ones([])))

    meet()


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(np.asarray(lr))


def _log_step(step: int, max_steps: Optional[int], losses: Mapping[str, float], lr: float,
              throughput: float, global_batch: int) -> None:
    parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "total")
    eta = ""
    if max_steps and throughput and math.isfinite(throughput):
        eta = f", ETA {_format_duration((max_steps - step) * global_batch / throughput)}"
    rate = f"{throughput:.2f} img/s" if math.isfinite(throughput) else "- img/s"
    logger.info("step %d%s: loss %.4f (%s), lr %.3g, %s%s", step,
                f"/{max_steps}" if max_steps else "", losses.get("total", float("nan")), parts,
                lr, rate, eta)


def _write_summaries(writer, step: int, losses: Mapping[str, float], lr: float,
                     throughput: float, strategy, batch, anchors, prior_scaling) -> None:
    with writer.as_default(step=step):
        for name, value in losses.items():
            tf.summary.scalar(f"losses/{name}", value)
        tf.summary.scalar("learning_rate", lr)
        if math.isfinite(throughput):
            tf.summary.scalar("images_per_second", throughput)
        images, targets, _ = unpack_batch(batch)
        images = strategy.experimental_local_results(images)[0]
        labels = strategy.experimental_local_results(targets["labels"])[0]
        locs = strategy.experimental_local_results(targets["localisations"])[0]
        tf.summary.image("training_images", summary_images(images, labels, locs, anchors,
                                                          prior_scaling),
                         max_outputs=_SUMMARY_IMAGES)
    writer.flush()


def _batch_image_ids(strategy, batch) -> list[str]:
    _, _, ids = unpack_batch(batch)
    if ids is None:
        return ["(image ids not available)"]
    out = []
    for part in strategy.experimental_local_results(ids):
        for value in np.asarray(part).reshape(-1):
            out.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return out


def _check_first_batch(strategy, batch, num_classes: int) -> None:
    """Labels of the first batch must fit the net's classes (before any step runs)."""
    _, targets, _ = unpack_batch(batch)
    for labels in strategy.experimental_local_results(targets["labels"]):
        top = int(tf.reduce_max(labels))
        if top >= num_classes:
            raise DataError(f"training labels go up to {top}, but the net has {num_classes} "
                            f"classes (0..{num_classes - 1}): the dataset's label map and the "
                            "records disagree; check --labels_file / --num_classes.")


def _write_config(config: TrainConfig, spec, net, strategy, signature, start_step,
                  initialized_from) -> None:
    from nets import ssd_params as ssd_params_lib

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
    atomic_write_json(os.path.join(config.train_dir, CONFIG_FILENAME), data)


def _read_previous_signature(train_dir: str) -> Optional[dict]:
    path = os.path.join(train_dir, CONFIG_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("optimizer_signature")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _restore_or_initialize(config: TrainConfig, keeper: CheckpointKeeper, net, ema, step_var,
                           signature: dict, named) -> str:
    """Resume from train_dir, else initialise from --checkpoint_path, else start fresh."""
    latest = keeper.latest_in_train_dir()
    if latest:
        previous = _read_previous_signature(config.train_dir)
        try:
            if previous is None or previous == signature:
                keeper.checkpoint.restore(latest).assert_existing_objects_matched()
            else:
                # Another optimizer / trainable set (e.g. the README's second stage run in the
                # same train_dir): keep the weights and the step, start a fresh optimizer.
                changes = []
                for key in sorted(set(previous) | set(signature)):
                    before, after = previous.get(key), signature.get(key)
                    if before != after:
                        if key == "trainable":
                            before = f"{len(before or [])} variables"
                            after = f"{len(after or [])} variables"
                        changes.append(f"{key}: {before} -> {after}")
                logger.warning("Training set-up changed since %s was written (%s): restoring "
                               "the weights and the step only; the optimizer and its schedule "
                               "start afresh.", latest, "; ".join(changes))
                # The trained weights are under 'train_model' when the checkpoint was written
                # with a moving average ('model' then holds the average), else under 'model'.
                partial = {"step": step_var,
                           "train_model" if previous.get("moving_average") else "model": net}
                tf.train.Checkpoint(**partial).restore(latest).expect_partial()
                if ema is not None:
                    ema.reset()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise DataError(f"{latest}: cannot resume from this checkpoint "
                            f"({str(err).strip().splitlines()[0]}); use another --train_dir "
                            "or remove it.") from None
        step = int(step_var.numpy())
        logger.info("Resuming from %s at step %d.", latest, step)
        if config.checkpoint_path:
            logger.info("--checkpoint_path=%s not used: %s already holds a checkpoint.",
                        config.checkpoint_path, config.train_dir)
        return f"resume:{latest}"
    if config.checkpoint_path:
        from nets import checkpoints as ckpt_lib

        try:
            prefix = ckpt_lib.resolve_checkpoint(config.checkpoint_path)
        except FileNotFoundError as err:
            raise DataError(f"--checkpoint_path: {err}") from None
        scope = resolve_model_scope(prefix, net.model_name, config.checkpoint_model_scope)
        excludes = split_scopes(config.checkpoint_exclude_scopes)
        try:
            try:
                report = net.load_checkpoint(prefix, model_scope=scope, exclude_scopes=excludes,
                                             ignore_missing_vars=config.ignore_missing_vars)
            except ckpt_lib.CheckpointMismatchError as err:
                if not _only_excluded_fc_layers(err, scope, net.model_name, excludes):
                    raise
                # The original README excludes conv6/conv7 when starting from vgg_16.ckpt: its
                # fc6/fc7 are then simply not used (they are the source of conv6/conv7).
                logger.info("vgg_16 fc6/fc7 not loaded: conv6/conv7 are in "
                            "--checkpoint_exclude_scopes.")
                report = net.load_checkpoint(prefix, model_scope=scope, exclude_scopes=excludes,
                                             ignore_missing_vars=True)
        except ckpt_lib.CheckpointMismatchError as err:
            lines = str(err).splitlines()
            for line in lines[1:]:
                logger.error("%s", line)
            raise DataError(f"--checkpoint_path: {lines[0]} (details above)") from None
        except (ValueError, tf.errors.OpError) as err:
            raise DataError(f"--checkpoint_path: {str(err).splitlines()[0]}") from None
        if ema is not None:
            ema.reset()
        logger.info("Initialised from checkpoint %s%s: %d variables loaded, %d excluded, "
                    "%d missing (kept at their initial values).", prefix,
                    f" (model scope {scope})" if scope else "", len(report["loaded"]),
                    len(report["excluded"]), len(report["missing"]))
        return f"checkpoint:{prefix}"
    logger.info("No checkpoint in %s and no --checkpoint_path: training from scratch "
                "(random initialisation).", config.train_dir)
    return "scratch"


def _only_excluded_fc_layers(err, scope: Optional[str], model_name: str,
                             excludes: Sequence[str]) -> bool:
    """True when a vgg_16 load failed only on fc6/fc7 whose targets conv6/conv7 are excluded."""
    if scope != "vgg_16" or err.missing or err.wrong_shape or not err.unexpected:
        return False
    unused = [f"vgg_16/fc{i}" for i in (6, 7) if in_scopes(f"{model_name}/conv{i}", excludes)]
    return bool(unused) and all(in_scopes(name, unused) for name in err.unexpected)


def _export_tf1(train_dir: str, model, step: int) -> Optional[str]:
    """Write ``export/model.ckpt-<step>`` (TF-Slim names + sidecar) from ``model``."""
    prefix = os.path.join(train_dir, EXPORT_DIRNAME, f"model.ckpt-{step}")
    try:
        model.save_checkpoint(prefix)
    except (OSError, tf.errors.OpError) as err:
        logger.warning("Could not export %s: %s", prefix, err)
        return None
    logger.info("Exported TF1 (TF-Slim names) checkpoint %s.", prefix)
    return prefix


# ---------------------------------------------------------------------------------------
# Dataset and step functions
# ---------------------------------------------------------------------------------------

def _make_dataset_fn(config: TrainConfig, spec, params, anchors: np.ndarray, global_batch: int,
                     seed: int) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """``dataset_fn(input_context)`` for ``strategy.distribute_datasets_from_function``."""
    from preprocessing import preprocessing_factory
    from preprocessing import pipeline

    name = config.preprocessing_name or config.model_name
    options = preprocessing_options(config.augmentation)
    try:
        preprocess_fn = preprocessing_factory.get_preprocessing(name, is_training=True, **options)
    except ValueError as err:
        if config.preprocessing_name:
            raise UsageError(f"--preprocessing_name: {err}") from None
        # Every SSD net here takes the same input (RGB minus the means, DESIGN §5).
        logger.info("No preprocessing registered for %s: using ssd_300_vgg's.", name)
        preprocess_fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", is_training=True,
                                                                **options)
    out_shape = tuple(int(s) for s in params.img_shape)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(global_batch)
        ds = spec.read(shuffle=not config.overfit_one_batch, seed=seed,
                       num_parallel_reads=config.num_readers, repeat=not config.overfit_one_batch)
        if ctx.num_input_pipelines > 1:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        if config.overfit_one_batch:
            local = global_batch // ctx.num_input_pipelines
            ds = ds.repeat().take(local)
        # Each input pipeline draws its own augmentations: with one seed for all, the k-th
        # example of every pipeline would get the same crop, flip and colour draws.
        pipeline_seed = seed + 7919 * ctx.input_pipeline_id
        ds = pipeline.train_dataset(
            ds, preprocess_fn, anchors, batch, out_shape=out_shape, seed=pipeline_seed,
            encode_options={"matching": config.matching,
                            "match_threshold": config.match_threshold,
                            "prior_scaling": tuple(params.prior_scaling)},
            num_parallel_calls=config.num_preprocessing_threads, drop_remainder=True)
        if config.overfit_one_batch:
            ds = ds.take(max(1, (global_batch // ctx.num_input_pipelines) // batch)).cache().repeat()
        return ds

    return dataset_fn


def _make_train_step(config: TrainConfig, strategy, net, optimizer, trainable, l2_vars,
                     bias_ids: set, ema, step_var, num_classes: int, global_batch: int,
                     num_replicas: int):
    """The distributed training step: ``step_fn(batch, control) -> (losses, control)``.

    ``losses`` are the global-batch values (per-replica contributions summed); ``control``
    holds [save requested, stop requested] summed over all replicas, so every worker of a
    multi-worker run takes the same decision after the same step.
    """
    from tf_extended import losses as losses_lib

    bias_mult = float(config.bias_lr_mult or 1.0)
    float16 = config.mixed_precision == "float16"
    weight_decay = float(config.weight_decay or 0.0)
    loss_kwargs = dict(negative_ratio=config.negative_ratio, alpha=config.loss_alpha,
                       mining=config.negative_mining, match_threshold=config.match_threshold,
                       normalization=config.loss_normalization)

    def compute(images, targets, normalizer_local, normalizer_global):
        with tf.GradientTape() as tape:
            out = net(images, training=True)
            flat = net.flat_outputs(out)
            det = losses_lib.ssd_losses(
                flat["logits"], flat["localisations"], targets["labels"],
                targets["localisations"], targets["scores"], **loss_kwargs)
            # ssd_losses normalizes by this replica's count; rescale so that summing the
            # replicas' contributions gives the loss of the global batch.
            scale = normalizer_local / normalizer_global
            contrib = {k: tf.cast(v, tf.float32) * scale for k, v in det.items()
                       if k in ("cross_entropy_pos", "cross_entropy_neg", "localization")}
            detection = tf.add_n(list(contrib.values()))
            reg = opt_lib.l2_regularization(l2_vars, weight_decay) / float(num_replicas)
            total = detection + reg
            objective = optimizer.scale_loss(total) if float16 else total
        grads = tape.gradient(objective, trainable)
        contrib["regularization"] = reg
        contrib["total"] = total
        return contrib, grads

    compute_fn = tf.function(compute, jit_compile=True) if config.jit_compile else compute

    def replica_step(images, targets, control):
        ctx = tf.distribute.get_replica_context()
        labels = targets["labels"]
        local_batch = tf.cast(tf.shape(labels)[0], tf.float32)
        if config.loss_normalization == "positives":
            count = tf.reduce_sum(tf.cast(labels > 0, tf.float32))
            local = tf.maximum(count, 1.0)
            global_ = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, count), 1.0)
        else:
            local = local_batch
            global_ = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_batch)
        contrib, grads = compute_fn(images, targets, local, global_)
        if bias_mult != 1.0:
            # Caffe lr_mult 2 on biases: with plain/momentum SGD, scaling the gradient is
            # exactly a doubled learning rate for these variables.
            grads = [g * bias_mult if id(v) in bias_ids and g is not None else g
                     for g, v in zip(grads, trainable)]
        if float16 and num_replicas > 1:
            # LossScaleOptimizer checks the first replica's local gradients only; make a
            # non-finite gradient anywhere visible to every replica.
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads
                                    if g is not None])
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
            factor = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(1.0))
            grads = [g * factor if g is not None else g for g in grads]
        optimizer.apply(grads, trainable)
        # tf.identity: a per-replica copy (all_reduce rejects a tensor shared by replicas).
        control = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(control))
        return contrib, control

    @tf.function
    def step_fn(batch, control):
        images, targets, _ = unpack_batch(batch)
        targets = {k: targets[k] for k in ("labels", "localisations", "scores")}
        contrib, ctl = strategy.run(replica_step, args=(images, targets, control))
        if ema is not None:
            ema.update(step_var)
        step_var.assign_add(1)
        losses = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                  for k, v in contrib.items()}
        ctl = strategy.experimental_local_results(ctl)[0]
        return losses, ctl

    return step_fn
