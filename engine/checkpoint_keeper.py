"""The trainer's checkpoints: the train_dir itself, what a checkpoint holds, saving and
rotating ``ckpt-<step>`` (with sidecars), resuming or initialising the weights, and the TF1
export.

Files (docs/training.md, "What train_dir holds"):

- ``ckpt-<step>.index`` / ``.data-*``: object-based ``tf.train.Checkpoint`` managed by
  ``tf.train.CheckpointManager`` (atomic: TF writes the data, then the index, then the
  ``checkpoint`` state file). Keys: ``model`` = the net eval should use (the moving-average
  weights when ``--moving_average_decay`` is set, else the trained weights), ``train_model`` =
  the trained weights (only with a moving average), ``train_state/state/slots/optimizer``
  (nested so that the weights are saved under ``model/``, see :func:`training_checkpoint`),
  ``step``. This is the format ``nets.checkpoints.load_checkpoint`` and eval_ssd_network.py
  read (key ``model``).
- ``ckpt-<step>.ssd.json``: the network sidecar (``nets.checkpoints.write_metadata``), written
  before the checkpoint itself so a reader never sees a checkpoint without it.
- ``export/model.ckpt-<step>``: at the end of training, a TF1 name-based checkpoint with
  TF-Slim names (what the original project and TF-Slim tools read), weights as in ``model``,
  plus the export folder's ``checkpoint`` state file (``net.save_checkpoint`` writes it).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Optional

import tensorflow as tf

from engine.errors import DataError, UsageError
from engine.train_config import TrainConfig, read_signature
from fileio.checkpoint_files import (CheckpointUnavailableError, latest_checkpoint,
                                     resolve_checkpoint)
from nets import checkpoints as ckpt_lib

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ckpt"
EXPORT_DIRNAME = "export"


def prepare_train_dir(train_dir: str) -> None:
    """Create ``train_dir`` (and its parents) if needed.

    Raises:
      UsageError: ``train_dir`` is an existing file.
      DataError: it cannot be created (a parent is a file, no permission, ...).
    """
    if os.path.exists(train_dir) and not os.path.isdir(train_dir):
        raise UsageError(f"--train_dir={train_dir} is a file, not a directory: give a new or "
                         "an existing training directory.")
    try:
        os.makedirs(train_dir, exist_ok=True)
    except OSError as err:
        raise DataError(f"--train_dir={train_dir}: cannot create the directory "
                        f"({err.strerror or err}).") from None


def training_checkpoint(model: Any, step: tf.Variable, optimizer: Any,
                        train_model: Any = None) -> tf.train.Checkpoint:
    """The object-based checkpoint of a run: ``model`` (what eval reads), ``step``, the
    optimizer, and ``train_model`` (the trained weights when ``model`` is their average).

    The optimizer sits four object levels below the root. A variable is saved under its
    shortest path in the object graph, and the optimizer refers to the model's variables too
    (``optimizer/_trainable_variables/0``: 3 levels, where the net's own path
    ``model/_graph/_operations/1/kernel`` has 5); kept this deep, the weights are saved under
    ``model/...``, where ``nets.checkpoints`` (and so eval) looks for them.
    """
    objects = {ckpt_lib.TRAINING_CHECKPOINT_KEY: model, "step": step,
               "train_state": tf.train.Checkpoint(state=tf.train.Checkpoint(
                   slots=tf.train.Checkpoint(optimizer=optimizer)))}
    if train_model is not None:
        objects[ckpt_lib.TRAINING_RAW_WEIGHTS_KEY] = train_model
    return tf.train.Checkpoint(**objects)


class CheckpointKeeper:
    """Training checkpoints in ``train_dir``: save (sidecar first), rotate, find the latest.

    Non-chief workers of a multi-worker run must save too (saving is collective); they
    write to a private temporary directory that is removed by :meth:`close`.
    """

    def __init__(self, train_dir: str, checkpoint: tf.train.Checkpoint, step: tf.Variable,
                 keep: int, is_chief: bool, task_id: int, net: Any):
        """``net``: its ``model_name`` and ``params`` go into each checkpoint's sidecar."""
        self.train_dir = train_dir
        self.is_chief = is_chief
        self.checkpoint = checkpoint
        self._net = net
        self._step = step
        self._tmp_dir = None
        directory = train_dir
        if not is_chief:
            self._tmp_dir = tempfile.mkdtemp(prefix=f"ssd_worker{task_id}_")
            directory = self._tmp_dir
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep,
                                                  checkpoint_name=CHECKPOINT_NAME)
        self.last_saved_step: Optional[int] = None

    def latest_in_train_dir(self) -> Optional[str]:
        """The newest complete ``ckpt-<N>`` of ``train_dir`` (the chief's), or None."""
        return latest_checkpoint(self.train_dir, name=CHECKPOINT_NAME)

    def save(self) -> Optional[str]:
        """Save at the current step (sidecar first, then the checkpoint); returns its prefix,
        or None when this step is already saved."""
        step = int(self._step.numpy())
        if self.last_saved_step == step:
            return None
        prefix = os.path.join(self.manager.directory, f"{CHECKPOINT_NAME}-{step}")
        if self.is_chief:
            ckpt_lib.write_metadata(prefix, self._net.model_name, self._net.params)
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
        """Sidecars of checkpoints the manager rotated away."""
        suffix = ckpt_lib.SIDECAR_SUFFIX
        pattern = os.path.join(glob.escape(self.train_dir), f"{CHECKPOINT_NAME}-*{suffix}")
        for sidecar in glob.glob(pattern):
            if not os.path.exists(sidecar[: -len(suffix)] + ".index"):
                with contextlib.suppress(OSError):
                    os.remove(sidecar)

    def close(self) -> None:
        if self._tmp_dir:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def restore_or_initialize(config: TrainConfig, keeper: CheckpointKeeper, net: Any,
                          ema: Any, step_var: tf.Variable, signature: dict) -> str:
    """Resume from train_dir, else initialise from --checkpoint_path, else start fresh.

    Args:
      signature: this run's optimizer set-up (optimizer, mixed precision, trainable names,
        moving average); when it differs from the one in ``config.json``, only the weights
        and the step are resumed and the optimizer starts afresh.

    Returns:
      What the weights came from: ``'resume:<prefix>'``, ``'checkpoint:<prefix>'`` or
      ``'scratch'``.

    Raises:
      DataError: the checkpoint cannot be read or does not match the net (one line; a
        mismatch's per-variable details are logged first).
    """
    latest = keeper.latest_in_train_dir()
    if latest:
        _resume(config, keeper, latest, net, ema, step_var, signature)
        return f"resume:{latest}"
    if config.checkpoint_path:
        return f"checkpoint:{_initialize(config, net, ema)}"
    logger.info("No checkpoint in %s and no --checkpoint_path: training from scratch "
                "(random initialisation).", config.train_dir)
    return "scratch"


def _resume(config: TrainConfig, keeper: CheckpointKeeper, latest: str, net: Any, ema: Any,
            step_var: tf.Variable, signature: dict) -> None:
    previous = read_signature(config.train_dir)
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
            key = (ckpt_lib.TRAINING_RAW_WEIGHTS_KEY if previous.get("moving_average")
                   else ckpt_lib.TRAINING_CHECKPOINT_KEY)
            partial = {"step": step_var, key: net}
            tf.train.Checkpoint(**partial).restore(latest).expect_partial()
            if ema is not None:
                ema.reset()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise DataError(f"{latest}: cannot resume from this checkpoint "
                        f"({_first_line(err)}); use another --train_dir or remove it.") from None
    logger.info("Resuming from %s at step %d.", latest, int(step_var.numpy()))
    if config.checkpoint_path:
        logger.info("--checkpoint_path=%s not used: %s already holds a checkpoint.",
                    config.checkpoint_path, config.train_dir)


def _initialize(config: TrainConfig, net: Any, ema: Any) -> str:
    """Load --checkpoint_path into ``net`` (scope detected, excludes applied); its prefix."""
    try:
        prefix = resolve_checkpoint(config.checkpoint_path)
        scope = ckpt_lib.resolve_model_scope(prefix, net.model_name,
                                             config.checkpoint_model_scope)
    except (FileNotFoundError, CheckpointUnavailableError) as err:
        raise DataError(f"--checkpoint_path: {err}") from None
    excludes = ckpt_lib.split_scopes(config.checkpoint_exclude_scopes)
    try:
        try:
            report = net.load_checkpoint(prefix, model_scope=scope, exclude_scopes=excludes,
                                         ignore_missing_vars=config.ignore_missing_vars)
        except ckpt_lib.CheckpointMismatchError as err:
            if not ckpt_lib.only_excluded_fc_layers(err, scope, net.model_name, excludes):
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
    except (ValueError, tf.errors.OpError, FileNotFoundError,
            CheckpointUnavailableError) as err:
        raise DataError(f"--checkpoint_path: {_first_line(err)}") from None
    if ema is not None:
        ema.reset()
    logger.info("Initialised from checkpoint %s%s: %d variables loaded, %d excluded, "
                "%d missing (kept at their initial values).", prefix,
                f" (model scope {scope})" if scope else "", len(report["loaded"]),
                len(report["excluded"]), len(report["missing"]))
    return prefix


def export_tf1(train_dir: str, model: Any, step: int) -> Optional[str]:
    """Write ``train_dir/export/model.ckpt-<step>`` (TF-Slim names + sidecar, and the export
    folder's ``checkpoint`` state file) from ``model``; its prefix, or None if it failed
    (logged: the training checkpoints are what matters)."""
    prefix = os.path.join(train_dir, EXPORT_DIRNAME, f"model.ckpt-{step}")
    try:
        model.save_checkpoint(prefix)
    except (OSError, tf.errors.OpError) as err:
        logger.warning("Could not export %s: %s", prefix, err)
        return None
    logger.info("Exported TF1 (TF-Slim names) checkpoint %s.", prefix)
    return prefix
