"""Training speed of the light SSD nets on this CPU (goal >= 20 img/s), and the whole demo
(goal: 10 minutes or less in all, test mAP_VOC07 >= 0.8).

    python bench/bench_demo.py [--steps 40] [--batch_size 16] [--models ssd_160_vgg_lite,...] [--demo]

For each model two figures, both from real runs:

* ``script``: train_ssd_network.py in a subprocess, exactly as demo.py runs it (sample shapes
  data converted with tf_convert_data.py, no augmentation as in the demo, target encoding, Adam),
  images per second read from the script's own log over the steps after the first (tracing) one;
* ``step``: one compiled training step in this process (forward, SSD losses with hard negative
  mining, backward, Adam update) on a fixed batch with encoded targets: the network's share.

On a shared machine (other jobs running) both are pessimistic; the demo's own log
(demo_output/logs/train.log) shows the speed of a real run.

``--demo`` also runs ``demo.py`` (all five stages, sample data generated afresh) in a temporary
folder and prints its wall time and the test mAP it reached, against the goals.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def make_tfrecords(workdir: str, num_images: int) -> tuple[str, str]:
    from datasets import sample_data

    data = os.path.join(workdir, "data")
    sample_data.generate(data, num_trainval=num_images, num_test=0, seed=0)
    records = os.path.join(workdir, "tfrecords")
    subprocess.run([sys.executable, os.path.join(ROOT, "tf_convert_data.py"), "--dataset_name=voc",
                    f"--dataset_dir={data}", "--split=trainval", f"--labels={data}/labels.txt",
                    "--output_name=trainval", f"--output_dir={records}"],
                   check=True, env=_env(), capture_output=True)
    return records, os.path.join(data, "labels.txt")


def script_speed(model: str, steps: int, batch_size: int, records: str, labels: str,
                 workdir: str) -> float:
    """Images/s of train_ssd_network.py after its first step (from its log lines)."""
    train_dir = os.path.join(workdir, f"train_{model}")
    cmd = [sys.executable, os.path.join(ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
           f"--dataset_dir={records}", "--dataset_name=voc", f"--labels_file={labels}",
           "--dataset_split_name=trainval", f"--model_name={model}", "--augmentation=none",
           "--optimizer=adam", "--learning_rate=1e-3", "--warmup_steps=0",
           "--learning_rate_decay_type=fixed", "--weight_decay=4e-5", "--nodecay_l2norm_scale",
           f"--batch_size={batch_size}", f"--max_number_of_steps={steps}",
           f"--log_every_n_steps={max(steps // 4, 1)}", "--save_interval_secs=100000",
           "--save_summaries_secs=100000", "--noexport_tf1_checkpoint"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{model}: train_ssd_network.py failed:\n{proc.stderr[-2000:]}")
    speeds = [float(m) for m in re.findall(r"([0-9.]+) img/s", proc.stderr + proc.stdout)]
    if not speeds:
        raise RuntimeError(f"{model}: no img/s in the training log")
    return speeds[-1]


def step_speed(model: str, batch_size: int, rounds: int) -> float:
    """Images/s of one compiled training step (net + losses + Adam) on a fixed batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from nets import nets_factory
    from tf_extended import losses, targets

    cls = nets_factory.get_network(model)
    params = dataclasses.replace(cls.default_params, num_classes=5, no_annotation_label=5)
    net = cls(params)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-120, 130, (batch_size, *params.img_shape, 3)), tf.float32)
    centres = rng.uniform(0.2, 0.8, (batch_size, 3, 2))
    sides = rng.uniform(0.1, 0.5, (batch_size, 3, 2))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)
    labels = rng.integers(1, 5, (batch_size, 3))
    gt_labels, gt_locs, gt_scores = targets.batch_encode_targets(
        tf.constant(labels), tf.constant(boxes), net.anchors())
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            flat = net.flat_outputs(net(images, training=True))
            loss = losses.ssd_losses(flat["logits"], flat["localisations"], gt_labels, gt_locs,
                                     gt_scores)["total"]
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    step()  # trace
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    return batch_size / min(times), batch_size / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps of the script run")
    parser.add_argument("--batch_size", type=int, default=16, help="the demo's batch size")
    parser.add_argument("--rounds", type=int, default=5, help="timed compiled steps")
    parser.add_argument("--models", default="ssd_160_vgg_lite,ssd_160_mobilenet_v2,ssd_300_mobilenet_v2")
    parser.add_argument("--demo", action="store_true",
                        help="also run demo.py end to end and print its time and test mAP")
    parser.add_argument("--skip_script", action="store_true", help="only the in-process step")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} "
          "(timings on a busy machine are pessimistic)")
    with tempfile.TemporaryDirectory() as workdir:
        if not args.skip_script:
            records, labels = make_tfrecords(workdir, 256)
        for model in models:
            best, median = step_speed(model, args.batch_size, args.rounds)
            print(f"{model:24s} step   (net+loss+Adam, batch {args.batch_size}): "
                  f"{best:6.1f} img/s best, {median:6.1f} median")
            if not args.skip_script:
                speed = script_speed(model, args.steps, args.batch_size, records, labels, workdir)
                print(f"{model:24s} script (train_ssd_network.py, demo settings): {speed:6.1f} img/s"
                      f"   goal >= 20: {'met' if speed >= 20 else 'NOT met'}")
        if args.demo:
            run_demo(workdir)
    return 0


def run_demo(workdir: str) -> None:
    """demo.py end to end (fresh sample data): wall time and test mAP against the goals."""
    out, data = os.path.join(workdir, "demo_output"), os.path.join(workdir, "sample_data")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), f"--output_dir={out}",
                           f"--data_dir={data}"], env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"demo.py failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with open(os.path.join(out, "eval", "metrics.json"), encoding="utf-8") as f:
        mean_ap = json.load(f)["mAP_VOC07"]
    stages = re.search(r"Done in .*", proc.stdout)
    print(f"demo.py end to end: {seconds:.0f} s (goal <= 600: {'met' if seconds <= 600 else 'NOT met'}), "
          f"test mAP_VOC07 {mean_ap:.3f} (goal >= 0.8: {'met' if mean_ap >= 0.8 else 'NOT met'})")
    if stages:
        print("    " + stages.group(0))


if __name__ == "__main__":
    sys.exit(main())
