"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every write goes to a uniquely named temporary file in the target's folder (so two
processes writing into one folder never collide), is flushed and fsynced, then renamed over
the target (``os.replace``, atomic on POSIX). On any error the temporary file is removed and
the target is left as it was. The same holds for writers that need a file name
(:func:`atomic_path`) and for whole folders built aside and renamed into place
(:func:`staging_directory`, :func:`move_into_place`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import IO, Any, Iterator

# The process's umask, read once at import (os.umask can only be read by setting it): new files
# get the mode open() would give them (0666 minus the umask), not mkstemp's private 0600.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _target_mode(path: str) -> int:
    """An existing file keeps its mode; a new one gets open()'s default."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears complete on success
    (written through :func:`atomic_path`, flushed and fsynced before the rename).

    Args:
      path: the final file; its folder is created if needed.
      mode: ``'w'`` (text) or ``'wb'`` (bytes).
      encoding: for text mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


def write_json(path: str, data: Any, *, indent: int | None = 1, sort_keys: bool = False,
               allow_nan: bool = True, default: Any = None) -> str:
    """Write ``data`` as JSON (plus a final newline) to ``path`` atomically; returns ``path``."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan,
                      default=default)
    return write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """``with atomic_path('out.mp4') as tmp: writer(tmp)``: for writers that need a file name
    (OpenCV's VideoWriter, converters). ``tmp`` is a unique name in ``path``'s folder with the
    same extension (some writers pick the format from it); on success it is renamed over
    ``path``, on any error removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"{path}: nothing was written")
        os.chmod(tmp, _target_mode(path))  # the writer may have recreated it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def staging_directory(path: str) -> Iterator[str]:
    """A fresh, uniquely named folder beside ``path`` (same file system, so its entries can be
    renamed into ``path`` with :func:`move_into_place`); removed with whatever is left in it
    when the block ends, on success or error."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", suffix=".tmp",
                           dir=parent)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(src: str, dst: str) -> str:
    """Rename the file or folder ``src`` to ``dst`` (same file system), replacing what ``dst``
    was. A file replaces atomically (``os.replace``); a folder replaces an old one by moving the
    old aside first, so ``dst`` is at every moment either the old or the new complete folder
    (or, between the two renames, absent). Returns ``dst``."""
    if os.path.isdir(src) and os.path.lexists(dst):
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old.",
                                 dir=os.path.dirname(os.path.abspath(dst)))
        old = os.path.join(aside, "old")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)
            shutil.rmtree(aside, ignore_errors=True)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return dst
    if os.path.isdir(dst) and not os.path.isdir(src):
        shutil.rmtree(dst)
    os.replace(src, dst)
    return dst
