"""What every converter to TFRecords shares: errors, image checks, and the shard writing.

A converter (``datasets.pascalvoc_to_tfrecords``, ``datasets.coco_to_tfrecords``) lists its
items (image ids, or indices into an annotation index) and gives :func:`write_shards` an
:class:`ExampleSource`: an object whose ``convert(key)`` reads, checks and serializes one item
into an :class:`ExampleResult` (raising :class:`DataError` for bad input) and whose
``location(key)`` names the file an unexpected error is reported against. This module then
guarantees, for every converter:

- items are converted in parallel worker processes (``fork``, so a large annotation index is
  inherited, never pickled) and written in the listed order, whatever the worker timing, so the
  same input and options give byte-identical shards;
- shards ``<output_dir>/<output_name>_NNN.tfrecord`` are written under a hidden temporary folder
  ``.<output_name>.tmp-<pid>`` and moved into place only when everything succeeded: a failed or
  interrupted run leaves no shard where training would read it; folders left by killed runs
  are removed by the next run;
- existing output (the shards, and the converter's extra files such as a label map) is an
  error unless ``overwrite`` is set, and then every old shard is replaced, also those beyond
  the new count;
- bad input stops the run with one line ``<file>: <problem>`` (:class:`DataError`), or with
  ``skip_errors`` is skipped, logged and listed in the :class:`ConversionSummary`.

:func:`load_image` is the one image check of the converters: JPEG (gray or RGB) and PNG bytes
are stored as is; anything else (CMYK JPEG, GIF, BMP, TIFF, WebP...) is converted to RGB and
stored as a lossless PNG; every image is fully read once so that a truncated file is caught here.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import logging
import multiprocessing
import os
import re
import shutil
import signal
import time
from typing import Any, Iterator, Mapping, Protocol, Sequence

from PIL import Image
import tensorflow as tf

from fileio import atomic

log = logging.getLogger(__name__)

# The original converter's shard size (reference §5).
DEFAULT_SAMPLES_PER_SHARD = 200


class ConversionError(Exception):
    """Base class of the converters' errors."""


class UsageError(ConversionError):
    """Wrong arguments or folder layout (the script exits with code 2)."""


class DataError(ConversionError):
    """Bad input data; ``str(error)`` is one line ``<file>: <problem>`` (script exit code 1)."""

    def __init__(self, path: str, problem: str):
        problem = " ".join(problem.split("\n"))  # one line, whatever a library's message holds
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self):  # picklable across worker processes despite the 2-argument init
        return (DataError, (self.path, self.problem))


# ----------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """Bytes to store, their format ('JPEG' or 'PNG') and the image's pixel size."""
    encoded: bytes
    image_format: str
    width: int
    height: int
    reencoded: bool


def load_image(path: str) -> LoadedImage:
    """Reads and fully checks one image file; returns what to store (see the module doc).

    Raises DataError for a missing, empty, truncated, corrupt or unsupported file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(path, f"cannot read image ({e.strerror})") from None
    if not data:
        raise DataError(path, "empty image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if im.format in ("JPEG", "MPO") and im.mode in ("L", "RGB"):
                # Decoding at 1/8 scale (libjpeg DCT scaling) still reads every entropy-coded
                # byte, so truncation is caught at a fraction of a full decode's cost.
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
                im.load()
                return LoadedImage(data, "JPEG", width, height, reencoded=False)
            if im.format == "PNG":
                im.load()
                return LoadedImage(data, "PNG", width, height, reencoded=False)
            # CMYK/YCCK JPEGs and other formats: not every TF decoder reads them (and CMYK
            # conversions differ between decoders), so store PIL's RGB losslessly.
            im.load()
            buffer = io.BytesIO()
            im.convert("RGB").save(buffer, format="PNG")
            return LoadedImage(buffer.getvalue(), "PNG", width, height, reencoded=True)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(path, f"corrupt or unsupported image ({e})") from None


# ----------------------------------------------------------------------------- one example


@dataclasses.dataclass(frozen=True)
class ExampleResult:
    """One converted item: its serialized Example, or the error that stopped it.

    ``class_names`` and ``flags`` (per object) feed the summary's per-class table; ``flags``
    is the converter's per-object 0/1 column (VOC: difficult, COCO: crowd).
    """
    key: Any
    serialized: bytes | None
    class_names: tuple[str, ...] = ()
    flags: tuple[int, ...] = ()
    reencoded: bool = False
    warnings: tuple[str, ...] = ()
    error: DataError | None = None


class ExampleSource(Protocol):
    """What a converter gives :func:`write_shards` (picklable; inherited by the workers)."""

    def convert(self, key: Any) -> ExampleResult:
        """Reads, checks and serializes one item; raises DataError for bad input."""

    def location(self, key: Any) -> str:
        """The file an unexpected error while converting ``key`` is reported against."""


def _safe_convert(source: ExampleSource, key: Any) -> ExampleResult:
    try:
        return source.convert(key)
    except DataError as e:
        return ExampleResult(key, None, error=e)
    except Exception as e:  # noqa: BLE001 - one line naming the example, never a traceback
        log.debug("unexpected error on %s", key, exc_info=True)
        return ExampleResult(key, None, error=DataError(
            source.location(key),
            f"unexpected {type(e).__name__} while converting this example: {e}"))


_WORKER_SOURCE: ExampleSource | None = None


def _init_worker(source: ExampleSource) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    # The parent handles Ctrl-C and termination and then terminates the pool: workers must
    # neither print their own KeyboardInterrupt nor run handlers inherited through fork.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_convert(key: Any) -> ExampleResult:
    assert _WORKER_SOURCE is not None
    return _safe_convert(_WORKER_SOURCE, key)


def _iter_results(source: ExampleSource, keys: Sequence[Any],
                  num_workers: int) -> Iterator[ExampleResult]:
    if num_workers <= 1 or len(keys) < 2:
        for key in keys:
            yield _safe_convert(source, key)
        return
    # fork: workers inherit the imported modules (no second TensorFlow import) and the source
    # (a large annotation index is not pickled); they never run TF ops, only PIL and protobuf.
    # Elsewhere, spawn.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    chunksize = max(1, min(16, len(keys) // (4 * num_workers)))
    with context.Pool(num_workers, initializer=_init_worker, initargs=(source,)) as pool:
        # imap keeps the input order: the output does not depend on worker timing.
        yield from pool.imap(_worker_convert, keys, chunksize=chunksize)


def default_num_workers() -> int:
    """The usable cores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ----------------------------------------------------------------------------- summary


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion wrote and skipped.

    ``flag_name`` names the per-object column counted in ``flagged_per_class`` ('difficult'
    for VOC, 'crowd' for COCO).
    """
    dataset_dir: str
    output_files: list[str]
    num_images: int = 0
    num_objects: int = 0
    objects_per_class: dict[str, int] = dataclasses.field(default_factory=dict)
    flagged_per_class: dict[str, int] = dataclasses.field(default_factory=dict)
    flag_name: str = "difficult"
    num_reencoded: int = 0
    num_warnings: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    extra_files: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def difficult_per_class(self) -> dict[str, int]:
        """``flagged_per_class`` under its VOC name."""
        return self.flagged_per_class

    def to_text(self) -> str:
        """A human-readable report: totals, a per-class table, skipped examples."""
        lines = [f"Wrote {self.num_images} images ({self.num_objects} objects) from "
                 f"{self.dataset_dir} into {len(self.output_files)} shard(s) in "
                 f"{self.seconds:.1f} s."]
        if self.output_files:
            lines.append(f"  first shard: {self.output_files[0]}")
            lines.append(f"  last shard:  {self.output_files[-1]}")
        for path in self.extra_files:
            lines.append(f"  also wrote:  {path}")
        if self.num_reencoded:
            lines.append(f"  {self.num_reencoded} image(s) (CMYK JPEG, or neither JPEG nor PNG) "
                         "were stored as lossless RGB PNG.")
        lines.append(f"  {'class':<20s} {'objects':>8s} {self.flag_name:>9s}")
        for name, count in self.objects_per_class.items():
            lines.append(f"  {name:<20s} {count:8d} {self.flagged_per_class.get(name, 0):9d}")
        if self.num_warnings:
            lines.append(f"  {self.num_warnings} warning(s), see the log above.")
        lines.append(f"Skipped {len(self.skipped)} image(s).")
        lines.extend(f"  skipped {message}" for message in self.skipped)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- shards


def shard_path(output_dir: str, output_name: str, index: int) -> str:
    """``<output_dir>/<output_name>_NNN.tfrecord`` (the original's naming)."""
    return os.path.join(output_dir, f"{output_name}_{index:03d}.tfrecord")


def existing_shards(output_dir: str, output_name: str) -> list[str]:
    """Shards of ``output_name`` already in ``output_dir`` (exactly ``<name>_<digits>.tfrecord``)."""
    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(re.escape(output_name) + r"_\d{3,}\.tfrecord")
    return sorted(os.path.join(output_dir, n) for n in os.listdir(output_dir)
                  if pattern.fullmatch(n))


def _temp_dir_prefix(output_name: str) -> str:
    # Hidden and a folder: no glob of the form <dir>/<name>_*.tfrecord can ever match it.
    return f".{output_name}.tmp-"


def _remove_stale_temp_dirs(output_dir: str, output_name: str) -> None:
    """Removes temporary folders left by killed runs (their process no longer exists)."""
    prefix = _temp_dir_prefix(output_name)
    for name in os.listdir(output_dir):
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        log.info("removing %s, left by an interrupted conversion", os.path.join(output_dir, name))
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_name(output_name: str) -> None:
    """UsageError unless ``output_name`` is a plain file-name prefix."""
    if not output_name or os.sep in output_name or "/" in output_name \
            or output_name.startswith("."):
        raise UsageError(f"output_name '{output_name}' must be a plain file name prefix")


def write_shards(
    source: ExampleSource,
    keys: Sequence[Any],
    output_dir: str,
    output_name: str,
    *,
    dataset_dir: str,
    class_names: Sequence[str] = (),
    flag_name: str = "difficult",
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    num_workers: int | None = None,
    overwrite: bool = False,
    skip_errors: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
    skipped: Sequence[str] = (),
    num_warnings: int = 0,
    start_time: float | None = None,
) -> ConversionSummary:
    """Converts ``keys`` with ``source`` and writes ``<output_dir>/<output_name>_NNN.tfrecord``.

    Args:
      source: an :class:`ExampleSource`.
      keys: the items, in output order.
      output_dir: where the shards go (created if missing).
      output_name: shard name prefix.
      dataset_dir: what the summary and the "all skipped" error name as the input.
      class_names: the label map's names, the order of the summary's per-class table.
      flag_name: the summary's name of ``ExampleResult.flags``.
      samples_per_shard: examples per shard (the last shard holds the rest).
      num_workers: processes converting items (default: the usable cores; 1 = none).
      overwrite: replace existing output; otherwise its presence is a UsageError.
      skip_errors: skip bad items (logged, listed in the summary) instead of stopping.
      extra_files: ``{file name: bytes}`` written into ``output_dir`` (atomically, with
        ``fileio.atomic``) once every shard is complete, just before the shards move into
        place; existing ones count as existing output.
      skipped, num_warnings: what the converter already skipped / warned about before the
        items (e.g. while indexing annotations), carried into the summary.
      start_time: ``time.monotonic()`` when the converter started (for the summary's time).

    Returns a ConversionSummary. Raises UsageError / DataError; then nothing final is written.
    """
    start = time.monotonic() if start_time is None else start_time
    if samples_per_shard < 1:
        raise UsageError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    check_output_name(output_name)
    if num_workers is None:
        num_workers = default_num_workers()
    extra_files = dict(extra_files or {})

    old_shards = existing_shards(output_dir, output_name)
    old_extra = [os.path.join(output_dir, n) for n in extra_files
                 if os.path.exists(os.path.join(output_dir, n))]
    if (old_shards or old_extra) and not overwrite:
        if old_shards:
            raise UsageError(f"{old_shards[0]}: {len(old_shards)} shard(s) {output_name}_*.tfrecord "
                             "already exist; pass --overwrite to replace them")
        raise UsageError(f"{old_extra[0]}: already exists; pass --overwrite to replace it")
    os.makedirs(output_dir, exist_ok=True)
    _remove_stale_temp_dirs(output_dir, output_name)
    temp_dir = os.path.join(output_dir, _temp_dir_prefix(output_name) + str(os.getpid()))
    os.makedirs(temp_dir)

    summary = ConversionSummary(dataset_dir=dataset_dir, output_files=[], flag_name=flag_name,
                                skipped=list(skipped), num_warnings=num_warnings)
    objects_per_class = collections.Counter()
    flagged_per_class = collections.Counter()
    temp_files: list[str] = []
    writer = None
    finished = False
    in_shard = 0
    try:
        for result in _iter_results(source, keys, num_workers):
            if result.error is not None:
                if not skip_errors:
                    raise result.error
                log.warning("skipping %s", result.error)
                summary.skipped.append(str(result.error))
                continue
            for warning in result.warnings:
                log.warning("%s", warning)
            summary.num_warnings += len(result.warnings)
            if writer is None:
                temp_files.append(os.path.join(temp_dir, os.path.basename(
                    shard_path(output_dir, output_name, len(temp_files)))))
                writer = tf.io.TFRecordWriter(temp_files[-1])
                in_shard = 0
            writer.write(result.serialized)
            in_shard += 1
            if in_shard == samples_per_shard:
                writer.close()
                writer = None
            summary.num_images += 1
            summary.num_objects += len(result.class_names)
            summary.num_reencoded += int(result.reencoded)
            objects_per_class.update(result.class_names)
            flagged_per_class.update(n for n, f in zip(result.class_names, result.flags) if f)
            if summary.num_images % 1000 == 0:
                log.info("%d / %d images", summary.num_images, len(keys))
        if writer is not None:
            writer.close()
            writer = None
        if summary.num_images == 0:
            raise DataError(dataset_dir, f"all {len(keys)} image(s) were skipped; nothing written")
        # Everything succeeded: the extra files, then replace old shards with the new ones.
        for name, data in extra_files.items():
            summary.extra_files.append(atomic.write_bytes(os.path.join(output_dir, name), data))
        for path in old_shards:
            os.remove(path)
        for index, temp_file in enumerate(temp_files):
            final = shard_path(output_dir, output_name, index)
            os.replace(temp_file, final)
            summary.output_files.append(final)
        finished = True
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not finished:
            log.debug("conversion did not finish: no shard written")
    order = list(class_names) + sorted(set(objects_per_class) - set(class_names))
    summary.objects_per_class = {n: objects_per_class[n] for n in order if objects_per_class[n]}
    summary.flagged_per_class = {n: flagged_per_class[n] for n in order if flagged_per_class[n]}
    summary.seconds = time.monotonic() - start
    return summary
