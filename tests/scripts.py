"""Running the project's scripts as a user would: a subprocess from the project root.

The one subprocess runner of the suite. ``run_script('eval_ssd_network.py', '--flag=x')``
returns the ``CompletedProcess`` (text stdout/stderr); TensorFlow's C++ start-up noise is
turned down, ``TF_CONFIG`` is removed (a test must not join a cluster by accident) and the
project root is importable.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(extra: Optional[Mapping[str, str]] = None) -> dict:
    """The environment the scripts run in (see the module docstring), plus ``extra``."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra or {})
    return env


def run_script(script: str, *args: str, timeout: float = 300, cwd: str = ROOT,
               env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>``; ``script`` is relative to the project root, or
    ``-m module`` style when it starts with ``-m``."""
    command = [sys.executable]
    if script.startswith("-m "):
        command += ["-m", script[3:]]
    else:
        command.append(os.path.join(ROOT, script))
    return subprocess.run(command + list(args), cwd=cwd, env=script_env(env),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str, script: str) -> list[str]:
    """The lines a script wrote itself on stderr (``<script>: ...``), TF's own left out."""
    name = os.path.basename(script)
    return [line for line in stderr.splitlines() if line.startswith(f"{name}:")]


def read_summaries(folder: str) -> dict:
    """TensorBoard summaries a run wrote in ``folder``: ``{tag: (step, Summary.Value)}``
    (the last event of each tag); ``scalar(value)`` reads a scalar's number."""
    import tensorflow as tf  # the runner itself needs no TensorFlow

    values = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for raw in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                values[value.tag] = (event.step, value)
    return values


def scalar(value) -> float:
    """The number of a scalar ``Summary.Value`` from :func:`read_summaries`."""
    import tensorflow as tf

    return float(tf.make_ndarray(value.tensor).ravel()[0])
