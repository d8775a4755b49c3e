"""Benchmark: Caffe SSD -> TF checkpoint conversion time for real-size models.

Makes an SSD300 and an SSD512 .caffemodel of the published size (VOC, 21 classes, random
weights, ~100 MB each, with their PriorBox layers as Caffe stores them) under a temporary
directory, then times

  * ``caffe_convert.convert.convert_caffemodel`` in-process (read + parse, build the net, map and
    assign the weights, write the TF1 checkpoint and its sidecar), median of 3 runs, with a
    breakdown of the first run;
  * the whole script ``caffe_to_tensorflow.py`` as a user runs it (a fresh Python process,
    TensorFlow's import included), once.

Goal (issue 8): 10 s or less per model. Run: ``python bench/bench_caffe.py``.
"""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from caffe_convert import caffe_pb, convert  # noqa: E402
from nets import nets_factory  # noqa: E402

GOAL_S = 10.0


def make_caffemodel(model_name: str, path: str, seed: int = 0) -> float:
    """Write a random-weight caffemodel with the real layer names and shapes; returns MB."""
    net = nets_factory.get_network(model_name)()
    params = net.params
    shapes = {k: tuple(v.shape) for k, v in net.variables_by_checkpoint_name().items()}
    rng = np.random.default_rng(seed)
    layers = []
    for name, blob_shapes in convert.caffe_blob_shapes(shapes, model_name).items():
        kind = "Normalize" if name.endswith("_norm") else "Convolution"
        layers.append((name, kind, [rng.standard_normal(s, dtype=np.float32) * 0.01
                                    for s in blob_shapes]))
    # PriorBox layers as in the published models (Caffe keeps them in the .caffemodel).
    sources = {"block4": "conv4_3_norm", "block7": "fc7"}
    priors = []
    for i, block in enumerate(params.feat_layers):
        source = sources.get(block, f"conv{int(block[5:]) - 2}_2")
        layer = caffe_pb.LayerParameter(name=f"{source}_mbox_priorbox", type="PriorBox",
                                        bottom=[source, "data"])
        p = layer.prior_box_param
        p.min_size.append(params.anchor_sizes[i][0])
        p.max_size.append(params.anchor_sizes[i][1])
        p.aspect_ratio.extend(r for r in params.anchor_ratios[i] if r > 1)
        p.variance.extend(params.prior_scaling)
        p.step = params.anchor_steps[i]
        priors.append(layer)
    caffe_pb.write_caffemodel(path, layers, extra_layers=priors)
    return os.path.getsize(path) / 1e6


def time_in_process(model_name: str, path: str,
                    repeats: int = 3) -> tuple[list[float], list[float], dict]:
    """Wall times and CPU times (user + sys, all threads) of convert_caffemodel, and stages."""
    times, cpu_times, breakdown = [], [], {}
    for r in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        net, report = convert.convert_caffemodel(model_name, path,
                                                     output_path=f"{path[:-11]}_{r}.ckpt")
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        assert report.num_variables == len(net.variables_by_checkpoint_name())
    # Breakdown of the stages (separate run).
    t0 = time.perf_counter()
    caffe_net, layers = caffe_pb.read_caffemodel(path)
    t1 = time.perf_counter()
    params, _ = convert.build_params(model_name, caffe_net, layers, caffemodel_path=path)
    net = nets_factory.get_network(model_name)(params)
    t2 = time.perf_counter()
    variables = net.variables_by_checkpoint_name()
    values = convert.convert_weights(layers, {k: tuple(v.shape) for k, v in variables.items()},
                                         model_name)
    for name, var in variables.items():
        var.assign(values[name])
    t3 = time.perf_counter()
    net.save_checkpoint(f"{path[:-11]}_b.ckpt")
    t4 = time.perf_counter()
    breakdown = {"read+parse": t1 - t0, "build net": t2 - t1, "map+assign": t3 - t2,
                 "save": t4 - t3}
    return times, cpu_times, breakdown


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_script(model_name: str, path: str) -> tuple[float, float]:
    """Wall time and CPU time (user + sys) of one run of the script in a new process."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "caffe_to_tensorflow.py"),
                           f"--model_name={model_name}", f"--caffemodel_path={path}",
                           f"--output_path={path[:-11]}_script.ckpt"],
                          capture_output=True, text=True, cwd=ROOT)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return elapsed, cpu


def main() -> None:
    print(f"bench_caffe: Caffe -> TF conversion ({os.cpu_count()} CPUs; goal <= {GOAL_S:.0f} s "
          f"per model)")
    tmp = tempfile.mkdtemp(prefix="bench_caffe_")
    try:
        for model_name in ("ssd_300_vgg", "ssd_512_vgg"):
            path = os.path.join(tmp, f"{model_name}.caffemodel")
            t0 = time.perf_counter()
            size = make_caffemodel(model_name, path)
            made = time.perf_counter() - t0
            times, cpu_times, breakdown = time_in_process(model_name, path)
            script, script_cpu = time_script(model_name, path)
            median = statistics.median(times)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items())
            print(f"{model_name}: caffemodel {size:.1f} MB (made in {made:.1f} s)")
            print(f"  convert_caffemodel in-process: median {median:.2f} s wall, "
                  f"{statistics.median(cpu_times):.2f} s CPU "
                  f"(runs {', '.join(f'{t:.2f}' for t in times)}) "
                  f"[{'OK' if median <= GOAL_S else 'OVER GOAL'}]")
            print(f"    stages (s, wall): {stages}")
            print(f"  caffe_to_tensorflow.py end to end (new process, TF import included): "
                  f"{script:.2f} s wall, {script_cpu:.2f} s CPU "
                  f"[{'OK' if script <= GOAL_S else 'OVER GOAL'}]")
        print(f"(load average at the end: {os.getloadavg()[0]:.1f}; other processes on the "
              f"machine make wall times pessimistic, CPU times less so)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
