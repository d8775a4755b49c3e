"""TensorFlow checkpoints as files: which prefix a path names, whether it is complete, which is
the latest, the ``checkpoint`` state file, the stored global step.

The one place that resolves a checkpoint path, for every script and library module. It knows
the three kinds of checkpoint this project meets, all in TF's V2 bundle format
(``<prefix>.index`` + ``<prefix>.data-NNNNN-of-MMMMM``):

- the trainer's object-based ``tf.train.CheckpointManager`` files (``ckpt-<step>``),
- TF1 ``Saver`` / TF-Slim files, e.g. the original project's (``model.ckpt-<step>`` + ``.meta``),
- single checkpoints written by ``net.save_checkpoint`` or caffe_to_tensorflow.py.

A checkpoint is *complete* when its ``.index`` and every data shard it names exist: TF writes
the data shards first and the index last, so a checkpoint still being written has no index yet
and is not listed. A rotation (``max_to_keep``) may delete a checkpoint between listing and
reading: readers raise :class:`CheckpointUnavailableError` for that.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re

import tensorflow as tf

from fileio import atomic

# Suffixes that may follow a checkpoint prefix; a user may pass any of these files.
_DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_STEP_SUFFIX_RE = re.compile(r"-(\d+)$")
_OTHER_SUFFIXES = (".index", ".meta", ".ssd.json")
STATE_FILENAME = "checkpoint"

# What TensorFlow's checkpoint reader raises for missing, truncated or corrupt files (a
# truncated data file surfaces as IndexError "Read less bytes than requested").
_READ_ERRORS = (tf.errors.OpError, ValueError, OSError, IndexError, RuntimeError)

# Variable names that hold the training step, in order of preference: the trainer's
# ``tf.train.Checkpoint(step=...)``, TF1's ``global_step``, Keras optimizer iterations.
_STEP_KEYS = (
    "step/.ATTRIBUTES/VARIABLE_VALUE",
    "global_step/.ATTRIBUTES/VARIABLE_VALUE",
    "global_step",
    "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE",
    "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",
)


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path names no complete checkpoint (the message names the path)."""


class CheckpointUnavailableError(RuntimeError):
    """A checkpoint could not be read (deleted, still being written, truncated or corrupt);
    the message names it."""


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
    path = _DATA_RE.sub("", os.fspath(path))
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
    totals, present = set(), set()
    for shard in glob.glob(glob.escape(prefix) + ".data-*-of-*"):
        match = _DATA_RE.search(shard)
        if match and shard[: match.start()] == prefix:
            present.add(int(match.group(1)))
            totals.add(int(match.group(2)))
    if len(totals) != 1:
        # No data shard yet, or shards of two different saves: not a complete checkpoint.
        return False
    return present == set(range(totals.pop()))


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


def latest_checkpoint(checkpoint_dir: str, name: str | None = None) -> str | None:
    """The newest complete checkpoint of a directory, or None.

    The ``checkpoint`` state file's choice when it is complete (and, with ``name``, is named
    ``<name>-<N>``), else the last in step order (of those named ``<name>-<N>`` with ``name``).
    """
    latest = None
    try:
        latest = tf.train.latest_checkpoint(checkpoint_dir)
    except (tf.errors.OpError, ValueError):  # Corrupt state file: fall back to listing.
        latest = None
    if latest and checkpoint_exists(latest) and (
            name is None or re.fullmatch(re.escape(name) + r"-\d+", os.path.basename(latest))):
        return os.path.abspath(latest)
    infos = list_checkpoints(checkpoint_dir)
    if name is not None:
        infos = [i for i in infos if re.fullmatch(re.escape(name) + r"-\d+",
                                                  os.path.basename(i.prefix))]
    return infos[-1].prefix if infos else None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file or directory -> the absolute checkpoint prefix to read.

    Args:
      path: a prefix (``train_dir/ckpt-1000``), one of its files (``.index``, ``.data-*``,
        ``.meta``, ``.ssd.json``), or a directory (its latest complete checkpoint: the
        ``checkpoint`` state file's choice when it is still on disk, else the last in step
        order).

    Raises:
      CheckpointNotFoundError: nothing complete there; the message names the path.
    """
    if not path:
        raise CheckpointNotFoundError("--checkpoint_path is empty: give a checkpoint file or a "
                                      "directory holding checkpoints")
    path = os.fspath(path)
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointNotFoundError(f"{path}: directory holds no checkpoint (no complete "
                                          "*.index + *.data-* files)")
        return latest
    prefix = strip_checkpoint_suffix(path)
    if checkpoint_exists(prefix):
        return os.path.abspath(prefix)
    if os.path.isfile(prefix + ".index"):
        raise CheckpointNotFoundError(f"{path}: checkpoint data files missing next to "
                                      f"{prefix}.index")
    if os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: not a TF checkpoint (no {prefix}.index next to it)")
    raise CheckpointNotFoundError(f"{path}: checkpoint not found (no such checkpoint files: "
                                  f"expected {prefix}.index and {prefix}.data-*)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def open_reader(prefix: str) -> tf.train.CheckpointReader:
    """``tf.train.load_checkpoint(prefix)`` with one clear error.

    Raises:
      CheckpointUnavailableError: the files vanished, are truncated or are not a checkpoint
        (the message names the checkpoint).
    """
    try:
        return tf.train.load_checkpoint(prefix)
    except _READ_ERRORS as err:
        raise CheckpointUnavailableError(f"{prefix}: cannot read checkpoint "
                                         f"(truncated or corrupt?): {_first_line(err)}") from None


def read_tensor(reader: tf.train.CheckpointReader, prefix: str, name: str):
    """``reader.get_tensor(name)``; a truncated data file gives CheckpointUnavailableError."""
    try:
        return reader.get_tensor(name)
    except _READ_ERRORS as err:
        raise CheckpointUnavailableError(f"{prefix}: cannot read {name} from the checkpoint "
                                         f"(truncated or corrupt?): {_first_line(err)}") from None


def read_global_step(prefix: str) -> int | None:
    """The training step stored in a checkpoint, else its ``-<N>`` name suffix, else None.

    Raises:
      CheckpointUnavailableError: the files vanished or are unreadable.
    """
    reader = open_reader(prefix)
    names = reader.get_variable_to_shape_map()
    for key in _STEP_KEYS:
        if key in names and not names[key]:  # A scalar.
            return int(read_tensor(reader, prefix, key))
    return checkpoint_number(prefix)


def write_state_file(prefix: str) -> str:
    """Make ``prefix`` the latest checkpoint of its folder in TF's ``checkpoint`` state file.

    The file is what ``tf.train.latest_checkpoint`` and TF1 tools (the original project's
    scripts given a directory) read. Complete checkpoints already in the folder stay listed.
    Returns the state file's path.
    """
    directory = os.path.dirname(os.path.abspath(prefix))
    name = os.path.basename(prefix)
    others = [os.path.basename(i.prefix) for i in list_checkpoints(directory)
              if os.path.basename(i.prefix) != name]
    lines = [f'model_checkpoint_path: "{name}"']
    lines += [f'all_model_checkpoint_paths: "{n}"' for n in others + [name]]
    return atomic.write_text(os.path.join(directory, STATE_FILENAME), "\n".join(lines) + "\n")
