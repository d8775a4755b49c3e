"""Watching a training directory for new checkpoints and evaluating each once.

What a checkpoint is on disk (complete = ``.index`` + every data shard; still being written =
no index yet; the latest; the step it holds) is :mod:`fileio.checkpoint_files`, the one home
of checkpoint paths. This module only polls: a rotation (``max_to_keep``) may delete a listed
checkpoint before it is read; :func:`watch` notices that, logs it and moves on. A checkpoint
whose files exist but cannot be read yet (a copy in progress) is retried.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Iterable

import tensorflow as tf

from fileio.checkpoint_files import (CheckpointUnavailableError, checkpoint_exists,
                                     list_checkpoints)

logger = logging.getLogger(__name__)


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
