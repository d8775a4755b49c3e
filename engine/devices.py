"""Devices and tf.distribute: GPU memory, CPU threads, logical CPUs, the strategy, the task.

Everything here must run before TensorFlow initialises its devices (the first op).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from typing import Optional

import tensorflow as tf

from engine.errors import UsageError

logger = logging.getLogger(__name__)

# Keras mixed-precision policies a run may use (``mixed_<mode>``).
MIXED_PRECISION_MODES = ("bfloat16", "float16")


def dtype_policy(mixed_precision: Optional[str]) -> Optional[str]:
    """The Keras dtype policy for ``--mixed_precision`` (None: the global float32 one)."""
    if not mixed_precision:
        return None
    if mixed_precision not in MIXED_PRECISION_MODES:
        raise UsageError(f"--mixed_precision={mixed_precision}: valid values are "
                         f"{', '.join(MIXED_PRECISION_MODES)}")
    return f"mixed_{mixed_precision}"


def gpu_total_memory_mb() -> list[int]:
    """Total memory of each GPU in MiB from nvidia-smi (TF tells it only once in use); []
    when it is not available."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
        return [int(float(x)) for x in out.split() if x.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def configure_devices(*, gpu_memory_fraction: Optional[float] = None,
                      num_threads: Optional[int] = None, num_clones: int = 1,
                      clone_on_cpu: bool = False, multi_worker: bool = False) -> None:
    """Set up devices before TensorFlow initialises them.

    - GPUs: memory growth (so several jobs, e.g. training and evaluation, share a GPU) unless
      ``gpu_memory_fraction`` is given, which caps each GPU at that fraction of its memory
      (the original's meaning).
    - ``num_threads``: intra-op threads (inter-op: up to 2), for evaluating beside training
      on one machine's CPU; None leaves TensorFlow's defaults (all cores).
    - CPU only (or ``clone_on_cpu``) with ``num_clones > 1``: the CPU is split into
      ``num_clones`` logical devices so MirroredStrategy has one replica per clone (the
      replicas then share the cores: useful for tests, not for speed).
    """
    try:
        if num_threads:
            tf.config.threading.set_intra_op_parallelism_threads(int(num_threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(num_threads)))
        gpus = tf.config.list_physical_devices("GPU")
        totals = gpu_total_memory_mb() if gpus and gpu_memory_fraction else []
        for i, gpu in enumerate(gpus):
            if gpu_memory_fraction and i < len(totals):
                limit = int(totals[i] * gpu_memory_fraction)
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
                logger.info("GPU %d: using %d of %d MiB.", i, limit, totals[i])
                continue
            if gpu_memory_fraction:
                logger.warning("--gpu_memory_fraction: cannot read the size of GPU %d "
                               "(nvidia-smi); growing memory on demand instead.", i)
            tf.config.experimental.set_memory_growth(gpu, True)
        if (clone_on_cpu or not gpus) and num_clones > 1 and not multi_worker:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_clones)])
    except RuntimeError as err:
        # Devices already initialised (a second run in the same process).
        logger.warning("Device configuration left as it is (%s).", str(err).splitlines()[0])


def cluster_spec_from_env() -> Optional[dict]:
    """The parsed ``TF_CONFIG`` when it describes a cluster of more than one task, else None."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UsageError(f"TF_CONFIG is not valid JSON: {err}") from None
    cluster = tf_config.get("cluster") or {}
    num_tasks = sum(len(v) for v in cluster.values() if isinstance(v, list))
    return tf_config if num_tasks > 1 else None


def make_strategy(num_clones: int, clone_on_cpu: bool) -> tf.distribute.Strategy:
    """The distribution strategy for this process.

    - ``TF_CONFIG`` naming more than one task: MultiWorkerMirroredStrategy (every worker
      runs this same command; ``--batch_size`` is the global batch over all workers).
    - ``num_clones > 1``: MirroredStrategy over ``num_clones`` GPUs (or logical CPUs with
      ``--clone_on_cpu`` or when there is no GPU).
    - otherwise the default strategy (one device: the first GPU if any, else the CPU).
    """
    if cluster_spec_from_env() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if num_clones <= 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and not clone_on_cpu:
        if num_clones > len(gpus):
            raise UsageError(f"--num_clones={num_clones} but only {len(gpus)} GPU(s) are visible.")
        return tf.distribute.MirroredStrategy([d.name for d in gpus[:num_clones]])
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < num_clones:
        raise UsageError(f"--num_clones={num_clones} on the CPU needs {num_clones} logical CPU "
                         f"devices, but TensorFlow was already initialised with {len(cpus)}.")
    return tf.distribute.MirroredStrategy(
        [d.name for d in cpus[:num_clones]],
        cross_device_ops=tf.distribute.ReductionToOneDevice(reduce_to_device=cpus[0].name))


def task_info(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, task_id) of this process; single-process runs are the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    jobs = resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return True, task_id
    return (task_type == "worker" and task_id == 0 and "chief" not in jobs), task_id
