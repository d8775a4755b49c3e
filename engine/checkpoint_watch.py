"""Finding checkpoints on disk and watching a training directory for new ones.

Handles the three kinds of checkpoint this project meets, all in TF's V2 bundle format
(``<prefix>.index`` + ``<prefix>.data-NNNNN-of-MMMMM``):

- the trainer's object-based ``tf.train.CheckpointManager`` files (``ckpt-<step>``),
- TF1 ``Saver`` files of the original project (``model.ckpt-<step>``, plus a ``.meta``),
- single converted checkpoints (``ssd_300_vgg.ckpt`` from caffe_to_tensorflow.py).

A checkpoint is *complete* when its ``.index`` and every data shard it names exist: TF
writes the data shards first and the index last (``MergeV2Checkpoints``), so a checkpoint
still being written has no index yet and is not listed. A rotation (``max_to_keep``) may
delete a listed checkpoint before it is read; :func:`watch` notices that, logs it and moves
on. A checkpoint whose files exist but cannot be read yet (a copy in progress) is retried.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import time
from typing import Callable, Iterable

import tensorflow as tf

logger = logging.getLogger(__name__)

# Suffixes that may follow a checkpoint prefix; a user may pass any of these files.
_DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_STEP_SUFFIX_RE = re.compile(r"-(\d+)$")
_OTHER_SUFFIXES = (".index", ".meta", ".ssd.json")

# Variable names that hold the training step, in order of preference: the trainer's
# ``tf.train.Checkpoint(step=...)``, TF1's ``global_step``, Keras optimizer iterations.
_STEP_KEYS = (
    "step/.ATTRIBUTES/VARIABLE_VALUE",
    "global_step/.ATTRIBUTES/VARIABLE_VALUE",
    "global_step",
    "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE",
    "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",
)


class CheckpointNotFoundError(ValueError):
    """A checkpoint path names no readable checkpoint (message names the path)."""


class CheckpointUnavailableError(RuntimeError):
    """A listed checkpoint could not be read now (deleted, or still being written)."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on disk.

    Attributes:
      prefix: absolute checkpoint prefix (no ``.index``).
      number: the ``-<N>`` suffix of its name (the step for the trainer and TF1 Saver), or None.
      mtime: modification time of its ``.index`` file.
    """

    prefix: str
    number: int | None
    mtime: float

    @property
    def sort_key(self) -> tuple:
        """Step order: numbered checkpoints by number, unnumbered ones after, by time."""
        return (self.number is None, self.number if self.number is not None else 0, self.mtime,
                self.prefix)


def strip_checkpoint_suffix(path: str) -> str:
    """``x.ckpt.index`` / ``x.ckpt.data-00000-of-00001`` / ``x.ckpt.meta`` -> ``x.ckpt``."""
    path = _DATA_RE.sub("", path)
    for suffix in _OTHER_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def checkpoint_number(prefix: str) -> int | None:
    """The trailing ``-<N>`` of a checkpoint name (``ckpt-1200`` -> 1200), or None."""
    match = _STEP_SUFFIX_RE.search(os.path.basename(prefix))
    return int(match.group(1)) if match else None


def checkpoint_exists(prefix: str) -> bool:
    """True when ``prefix.index`` and every data shard it implies are on disk."""
    if not os.path.isfile(prefix + ".index"):
        return False
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    totals = set()
    present = set()
    for shard in shards:
        match = _DATA_RE.search(shard)
        if match and shard[: match.start()] == prefix:
            present.add(int(match.group(1)))
            totals.add(int(match.group(2)))
    if len(totals) != 1:
        # No data shard yet, or shards of two different saves: not a complete checkpoint.
        return False
    total = totals.pop()
    return present == set(range(total))


def list_checkpoints(checkpoint_dir: str) -> list[CheckpointInfo]:
    """Every complete checkpoint directly in ``checkpoint_dir``, in step order (oldest first).

    Listed from the ``*.index`` files rather than the ``checkpoint`` state file, so that
    converted or copied checkpoints count too and a stale state file does not matter.
    """
    infos = []
    for index in glob.glob(os.path.join(glob.escape(checkpoint_dir), "*.index")):
        prefix = os.path.abspath(index[: -len(".index")])
        try:
            mtime = os.path.getmtime(index)
        except OSError:  # Deleted while listing.
            continue
        if checkpoint_exists(prefix):
            infos.append(CheckpointInfo(prefix, checkpoint_number(prefix), mtime))
    return sorted(infos, key=lambda info: info.sort_key)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file or directory -> the checkpoint prefix to read.

    Args:
      path: a prefix (``train_dir/ckpt-1000``), one of its files (``.index``, ``.data-*``,
        ``.meta``, ``.ssd.json``), or a directory (its latest checkpoint: the ``checkpoint``
        state file's choice when it is still on disk, else the last in step order).

    Raises:
      CheckpointNotFoundError: nothing readable there; the message names the path.
    """
    if not path:
        raise CheckpointNotFoundError("--checkpoint_path is empty: give a checkpoint file or a "
                                      "directory holding checkpoints")
    if os.path.isdir(path):
        latest = None
        try:
            latest = tf.train.latest_checkpoint(path)
        except (tf.errors.OpError, ValueError):  # Corrupt state file: fall back to listing.
            latest = None
        if latest and checkpoint_exists(latest):
            return os.path.abspath(latest)
        infos = list_checkpoints(path)
        if not infos:
            raise CheckpointNotFoundError(f"{path}: directory holds no checkpoint (no complete "
                                          "*.index + *.data-* files)")
        return infos[-1].prefix
    prefix = strip_checkpoint_suffix(path)
    if checkpoint_exists(prefix):
        return os.path.abspath(prefix)
    if os.path.isfile(prefix + ".index"):
        raise CheckpointNotFoundError(f"{path}: checkpoint data files missing next to "
                                      f"{prefix}.index")
    raise CheckpointNotFoundError(f"{path}: no such checkpoint (expected {prefix}.index and "
                                  f"{prefix}.data-*)")


def read_global_step(prefix: str) -> int | None:
    """The training step stored in a checkpoint, else its ``-<N>`` name suffix, else None.

    Raises:
      CheckpointUnavailableError: the files vanished or are unreadable.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        for key in _STEP_KEYS:
            if key in names and not names[key]:  # A scalar.
                return int(reader.get_tensor(key))
    except (tf.errors.OpError, ValueError) as err:
        raise CheckpointUnavailableError(f"{prefix}: cannot read checkpoint: "
                                         f"{str(err).splitlines()[0]}") from err
    return checkpoint_number(prefix)


@dataclasses.dataclass
class WatchStats:
    """What :func:`watch` did: prefixes evaluated, skipped as deleted, given up on."""

    evaluated: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    timed_out: bool = False


def watch(checkpoint_dir: str,
          evaluate_fn: Callable[[str], object],
          *,
          interval_secs: float = 60.0,
          timeout_secs: float | None = None,
          already_evaluated: Iterable[str] = (),
          max_retries: int = 3,
          max_evaluations: int | None = None,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> WatchStats:
    """Evaluate every new checkpoint of ``checkpoint_dir`` once, in step order.

    Polls the directory every ``interval_secs``. Each complete checkpoint not in
    ``already_evaluated`` (absolute prefixes, e.g. read back from metrics.jsonl) is passed
    to ``evaluate_fn(prefix)``, oldest first. When ``evaluate_fn`` raises
    :class:`CheckpointUnavailableError` (or a TF ``NotFoundError``/``DataLossError``) the
    checkpoint is dropped if its files are gone (rotated away) or retried at the next poll
    otherwise, at most ``max_retries`` times.

    Args:
      checkpoint_dir: the training directory to watch (need not exist yet).
      evaluate_fn: called with each checkpoint prefix.
      interval_secs: seconds between polls when nothing new is there.
      timeout_secs: stop after this many seconds without a new checkpoint (None: never).
      already_evaluated: prefixes to skip.
      max_retries: attempts on a checkpoint whose files exist but do not read.
      max_evaluations: stop after this many evaluations (None: never); for tests and tools.
      sleep, clock: injectable for tests.

    Returns:
      WatchStats.
    """
    done = {os.path.abspath(p) for p in already_evaluated}
    attempts: dict[str, int] = {}
    stats = WatchStats()
    last_new = clock()
    logger.info("Watching %s for checkpoints (every %.0f s, timeout %s).", checkpoint_dir,
                interval_secs, "none" if timeout_secs is None else f"{timeout_secs:.0f} s")
    while True:
        todo = [info for info in list_checkpoints(checkpoint_dir) if info.prefix not in done]
        progressed = False
        for info in todo:
            prefix = info.prefix
            if not checkpoint_exists(prefix):
                logger.warning("Checkpoint %s was deleted before it could be evaluated "
                               "(rotated away by the trainer); moving on.", prefix)
                stats.deleted.append(prefix)
                done.add(prefix)
                continue
            try:
                evaluate_fn(prefix)
            except (CheckpointUnavailableError, tf.errors.NotFoundError, tf.errors.DataLossError,
                    tf.errors.OutOfRangeError, FileNotFoundError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                if not checkpoint_exists(prefix):
                    logger.warning("Checkpoint %s was deleted while being read (%s); moving on.",
                                   prefix, reason)
                    stats.deleted.append(prefix)
                    done.add(prefix)
                    continue
                attempts[prefix] = attempts.get(prefix, 0) + 1
                if attempts[prefix] >= max_retries:
                    logger.error("Checkpoint %s still unreadable after %d attempts (%s); "
                                 "skipping it.", prefix, attempts[prefix], reason)
                    stats.failed.append(prefix)
                    done.add(prefix)
                else:
                    logger.warning("Checkpoint %s not readable yet (%s); will retry.", prefix,
                                   reason)
                continue
            done.add(prefix)
            stats.evaluated.append(prefix)
            progressed = True
            last_new = clock()
            if max_evaluations is not None and len(stats.evaluated) >= max_evaluations:
                return stats
        if progressed:
            continue  # More may have arrived while evaluating: look again before sleeping.
        if timeout_secs is not None and clock() - last_new >= timeout_secs:
            logger.info("No new checkpoint in %s for %.0f s: stopping.", checkpoint_dir,
                        timeout_secs)
            stats.timed_out = True
            return stats
        wait = interval_secs
        if timeout_secs is not None:
            wait = max(0.0, min(wait, timeout_secs - (clock() - last_new)))
        sleep(wait)
