"""The SSD training loop behind train_ssd_network.py.

``train(TrainConfig(...))`` runs the whole job: devices and ``tf.distribute``
(:mod:`engine.devices`), dataset, network (:mod:`nets.configure`), optimizer
(:mod:`engine.optimizers`), checkpoint restore or initialisation and saving
(:mod:`engine.checkpoint_keeper`), the step (:mod:`engine.train_step`), and here the loop:
signals, logging, TensorBoard summaries, guard rails and the :class:`TrainResult`. The script
only turns flags into a :class:`~engine.train_config.TrainConfig`; nothing here reads absl
flags or prints.

What train_dir holds: :mod:`engine.checkpoint_keeper` (checkpoints, sidecars, export),
:mod:`engine.train_config` (``config.json``), and the TensorBoard ``events.out.tfevents.*``
written here (docs/training.md describes them all).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from datasets import dataset_factory
from engine import checkpoint_keeper, devices, train_step
from engine import optimizers as opt_lib
from engine.errors import DataError, NonFiniteLossError, UsageError
from engine.train_config import (TrainConfig, dtype_policy_name, learning_rate_settings,
                                 optimizer_settings, validate, write_run_config)
from nets import configure, nets_factory
from tf_extended import boxes as tfe_boxes
from tf_extended.images import RGB_MEANS

logger = logging.getLogger(__name__)

# Images per summary (a few training images with their matched boxes drawn).
_SUMMARY_IMAGES = 3


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


def _dataset_spec(config: TrainConfig) -> Any:
    """The dataset to train on; its files must exist and its class count match."""
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
    if config.num_classes and config.num_classes != spec.num_classes:
        raise UsageError(f"--num_classes={config.num_classes} but dataset {spec.name} has "
                         f"{spec.num_classes} classes including the background "
                         f"({spec.num_classes - 1} object classes); drop --num_classes or fix "
                         "--labels_file.")
    return spec


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
    checkpoint_keeper.prepare_train_dir(config.train_dir)
    hooks = dict(hooks or {})
    multi_worker = devices.cluster_spec_from_env() is not None
    devices.configure_devices(gpu_memory_fraction=config.gpu_memory_fraction,
                              num_clones=config.num_clones, clone_on_cpu=config.clone_on_cpu,
                              multi_worker=multi_worker)
    strategy = devices.make_strategy(config.num_clones, config.clone_on_cpu)
    is_chief, task_id = devices.task_info(strategy)
    num_replicas = strategy.num_replicas_in_sync
    global_batch = int(config.batch_size)
    if global_batch % num_replicas:
        raise UsageError(f"--batch_size={global_batch} (the global batch) must be a multiple of "
                         f"the number of replicas ({num_replicas}).")
    if config.seed is not None:
        keras.utils.set_random_seed(int(config.seed))
    logger.info("Strategy: %s, %d replica(s), global batch %d (%d per replica)%s.",
                type(strategy).__name__, num_replicas, global_batch, global_batch // num_replicas,
                "" if not multi_worker else f", worker {task_id}{' (chief)' if is_chief else ''}")

    # -- dataset and network ----------------------------------------------------------------
    spec = _dataset_spec(config)
    num_classes = spec.num_classes
    try:
        model_name, params = configure.resolve_model(
            config.model_name, num_classes=num_classes, anchor_preset=config.anchor_preset,
            image_size=config.train_image_size, drop_empty_layers=True)
    except configure.SettingsError as err:
        raise UsageError(str(err)) from None
    net_cls = nets_factory.get_network(model_name)
    policy = devices.dtype_policy(dtype_policy_name(config))
    use_ema = config.moving_average_decay is not None

    schedule = opt_lib.build_learning_rate(
        learning_rate_settings(config), num_samples_per_epoch=spec.num_samples,
        global_batch_size=global_batch, max_steps=config.max_number_of_steps or None)

    with strategy.scope():
        net = net_cls(params, dtype_policy=policy)
        named = net.variables_by_checkpoint_name()
        trainable_names = train_step.select_trainable(named, config.trainable_scopes)
        trainable = [named[n] for n in trainable_names]
        decay_names = set(train_step.weight_decay_names(net, named,
                                                        bool(config.decay_l2norm_scale)))
        bias_ids = {id(named[n]) for n in trainable_names if n.endswith("/biases")}
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

    # The net eval should use: the moving average when there is one.
    eval_net = ema_net if use_ema else net
    checkpoint = checkpoint_keeper.training_checkpoint(
        eval_net, step_var, optimizer, train_model=net if use_ema else None)
    keeper = checkpoint_keeper.CheckpointKeeper(
        config.train_dir, checkpoint, step_var, config.keep_checkpoint_max, is_chief, task_id,
        net=net)

    signature = {"optimizer": config.optimizer, "mixed_precision": config.mixed_precision or "",
                 "trainable": trainable_names, "moving_average": use_ema}
    initialized_from = checkpoint_keeper.restore_or_initialize(config, keeper, net, ema,
                                                               step_var, signature)
    start_step = int(step_var.numpy())
    if is_chief:
        write_run_config(config, spec, net, strategy, signature, start_step, initialized_from)

    max_steps = config.max_number_of_steps or None
    if max_steps is not None and start_step >= max_steps:
        logger.info("Already at step %d >= --max_number_of_steps=%d: nothing to train.",
                    start_step, max_steps)
        if is_chief and config.export_tf1_checkpoint:
            checkpoint_keeper.export_tf1(config.train_dir, eval_net, start_step)
        keeper.close()
        return TrainResult(start_step, start_step, {}, keeper.latest_in_train_dir(), None,
                           initialized_from)

    # -- input and step function ------------------------------------------------------------
    anchors = net.anchors()
    dataset_fn = train_step.make_dataset_fn(config, spec, params, anchors, global_batch,
                                            seed=int(config.seed) + start_step)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step_fn = train_step.make_train_step(config, strategy, net, optimizer, trainable, l2_vars,
                                         bias_ids, ema, step_var, num_replicas)

    # -- the loop ---------------------------------------------------------------------------
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
                lr = float(np.asarray(optimizer.learning_rate))
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
            checkpoint_keeper.export_tf1(config.train_dir, eval_net, step)
        if multi_worker:
            _barrier(strategy)
    if stopped_by:
        logger.warning("Stopped by %s at step %d; checkpoint %s.", stopped_by, step,
                       last_checkpoint)
    else:
        logger.info("Done: step %d, checkpoint %s.", step, last_checkpoint)
    return TrainResult(step, start_step, losses, last_checkpoint, stopped_by, initialized_from)


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------

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


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """All workers meet here (a one-number all-reduce), so that none exits while another
    still works: a worker that leaves early makes the others log heartbeat errors."""

    @tf.function
    def meet():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.ones([])))

    meet()


# ---------------------------------------------------------------------------------------
# Guard rails
# ---------------------------------------------------------------------------------------

def _batch_image_ids(strategy: tf.distribute.Strategy, batch: Any) -> list[str]:
    _, _, ids = train_step.unpack_batch(batch)
    if ids is None:
        return ["(image ids not available)"]
    out = []
    for part in strategy.experimental_local_results(ids):
        for value in np.asarray(part).reshape(-1):
            out.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return out


def _check_first_batch(strategy: tf.distribute.Strategy, batch: Any, num_classes: int) -> None:
    """Labels of the first batch must fit the net's classes (before any step runs)."""
    _, targets, _ = train_step.unpack_batch(batch)
    for labels in strategy.experimental_local_results(targets["labels"]):
        top = int(tf.reduce_max(labels))
        if top >= num_classes:
            raise DataError(f"training labels go up to {top}, but the net has {num_classes} "
                            f"classes (0..{num_classes - 1}): the dataset's label map and the "
                            "records disagree; check --labels_file / --num_classes.")


# ---------------------------------------------------------------------------------------
# Logging and summaries
# ---------------------------------------------------------------------------------------

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


def summary_images(images: tf.Tensor, labels: tf.Tensor, localisations: tf.Tensor,
                   anchors: np.ndarray, prior_scaling: Sequence[float],
                   max_images: int = _SUMMARY_IMAGES) -> tf.Tensor:
    """A few training images with the boxes of their positive anchors drawn.

    The boxes are decoded from the encoded targets (Caffe ``(x, y, w, h)`` offsets) of the
    positive anchors, so they show what the loss actually trains on after augmentation.
    Returns float32 [n, H, W, 3] in [0, 1].
    """
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


def _write_summaries(writer, step: int, losses: Mapping[str, float], lr: float,
                     throughput: float, strategy: tf.distribute.Strategy, batch: Any,
                     anchors: np.ndarray, prior_scaling: Sequence[float]) -> None:
    with writer.as_default(step=step):
        for name, value in losses.items():
            tf.summary.scalar(f"losses/{name}", value)
        tf.summary.scalar("learning_rate", lr)
        if math.isfinite(throughput):
            tf.summary.scalar("images_per_second", throughput)
        images, targets, _ = train_step.unpack_batch(batch)
        images = strategy.experimental_local_results(images)[0]
        labels = strategy.experimental_local_results(targets["labels"])[0]
        locs = strategy.experimental_local_results(targets["localisations"])[0]
        tf.summary.image("training_images", summary_images(images, labels, locs, anchors,
                                                          prior_scaling),
                         max_outputs=_SUMMARY_IMAGES)
    writer.flush()
