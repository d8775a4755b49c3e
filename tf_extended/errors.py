"""Readable one-line messages for TensorFlow errors (for the scripts' error lines)."""
from __future__ import annotations

import re

import tensorflow as tf


def describe_error(err: BaseException) -> str:
    """One readable message for a failure (TF errors: their first line, without the op trace).

    TF wraps messages as ``{{function_node ...}} Error in user-defined function passed to ...:
    assertion failed: [what we said]`` and ends eager ones with `` [Op:DecodeImage] name:``;
    both wrappings are dropped.
    """
    if isinstance(err, tf.errors.OpError):
        text = (err.message or "").strip()
        lines = [line for line in text.splitlines() if line.strip()]
        line = lines[0] if lines else type(err).__name__
        line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)
        line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
        if "assertion failed:" in line:
            line = line.split("assertion failed:", 1)[1].strip()
        return line or type(err).__name__
    text = str(err).strip()
    return text or type(err).__name__
