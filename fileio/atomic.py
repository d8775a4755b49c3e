"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every write goes to a uniquely named temporary file in the target's folder (so two
processes writing into one folder never collide), is flushed and fsynced, then renamed over
the target (``os.replace``, atomic on POSIX). On any error the temporary file is removed and
the target is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears complete on success.

    Args:
      path: the final file; its folder is created if needed.
      mode: ``'w'`` (text) or ``'wb'`` (bytes).
      encoding: for text mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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
