"""Training throughput: our SSD300 (train_ssd_network.py) vs torchvision's ssd300_vgg16.

Ours: the real script in a subprocess, SSD300-VGG at 300x300, batch 8, the full Caffe
augmentation (photometric, zoom-out, IoU-constrained crops, flip) and target encoding from
real TFRecords (a shapes dataset at VOC's typical 375x500 size, written by datasets.sample_data
and converted by tf_convert_data.py), SGD momentum + weight decay. Throughput is read from the
script's own log (images per second after the first, tracing, step).

Peer: torchvision.models.detection.ssd300_vgg16 (random weights, 21 classes) in train mode,
its own matching + hard negative mining loss, SGD momentum 0.9, batch 8 of 300x300 images with
synthetic boxes (so it pays no data-loading or augmentation cost), in its own subprocess.

Both report time per image and peak resident memory (ru_maxrss of each process), in float32
and in bfloat16 mixed precision (ours: --mixed_precision=bfloat16; torch: CPU autocast to
bfloat16), and the ratio ours/torchvision of time per image at each precision (goal <= 0.8).
Run with the bench venv:

    .venv-bench/bin/python bench/bench_train.py [--steps 6] [--batch_size 8] \
        [--precisions float32,bfloat16]

On the 2-core CPU machine each side takes a few minutes; timings taken while other jobs run
are pessimistic for both.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE_RE = re.compile(r"step (\d+)/\d+: .*?, ([\d.]+) img/s")


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _make_tfrecords(workdir: str, num_images: int) -> tuple[str, str]:
    sys.path.insert(0, ROOT)
    from datasets import sample_data

    voc = os.path.join(workdir, "voc")
    sample_data.generate(voc, num_trainval=num_images, num_test=0, image_size=(375, 500))
    labels = os.path.join(voc, sample_data.LABELS_FILENAME)
    out = os.path.join(workdir, "tfrecords")
    subprocess.run([sys.executable, os.path.join(ROOT, "tf_convert_data.py"),
                    "--dataset_name=pascalvoc", f"--dataset_dir={voc}", "--output_name=train",
                    f"--output_dir={out}", f"--labels={labels}", "--split=trainval"],
                   check=True, env=_env(), capture_output=True, text=True)
    return out, labels


def _run_child(args: list[str]) -> tuple[int, str, float]:
    """Run a command; returns (exit code, stdout + stderr, its own peak RSS in MB)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read(), usage.ru_maxrss / 1024.0


def run_ours(steps: int, batch_size: int, workdir: str, dataset_dir: str, labels: str,
             precision: str) -> dict:
    train_dir = os.path.join(workdir, f"train_{precision}")
    args = [sys.executable, os.path.join(ROOT, "train_ssd_network.py"),
            f"--train_dir={train_dir}", "--dataset_name=voc", f"--dataset_dir={dataset_dir}",
            f"--labels_file={labels}", "--model_name=ssd_300_vgg", f"--batch_size={batch_size}",
            f"--max_number_of_steps={steps + 1}", "--log_every_n_steps=1",
            "--save_interval_secs=100000", "--save_summaries_secs=100000",
            "--noexport_tf1_checkpoint", "--recipe=caffe_voc"]
    if precision != "float32":
        args.append(f"--mixed_precision={precision}")
    start = time.time()
    returncode, log, rss = _run_child(args)
    wall = time.time() - start
    if returncode != 0:
        raise RuntimeError("train_ssd_network.py failed:\n" + log[-3000:])
    rates = {int(m.group(1)): float(m.group(2)) for m in RATE_RE.finditer(log)}
    if not rates:
        raise RuntimeError("no throughput in the log:\n" + log[-3000:])
    # The logged rate is cumulative since the end of step 1: the last one covers every timed step.
    images_per_sec = rates[max(rates)]
    return {"images_per_sec": images_per_sec, "sec_per_image": 1.0 / images_per_sec,
            "peak_rss_mb": rss, "wall_s": wall, "timed_steps": steps}


def torch_child(steps: int, batch_size: int, precision: str) -> None:
    """Runs in a subprocess: prints one JSON line with the torchvision figures."""
    import torch
    import torchvision
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)

    def batch():
        images = [torch.rand(3, 300, 300, generator=gen) for _ in range(batch_size)]
        targets = []
        for _ in range(batch_size):
            n = int(torch.randint(1, 4, (1,), generator=gen))
            xy = torch.rand(n, 2, generator=gen) * 200
            wh = 20 + torch.rand(n, 2, generator=gen) * 80
            targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                            "labels": torch.randint(1, 21, (n,), generator=gen)})
        return images, targets

    def step():
        images, targets = batch()
        if precision == "bfloat16":
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                losses = model(images, targets)
        else:
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_step = sum(times) / len(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"images_per_sec": batch_size / per_step,
                      "sec_per_image": per_step / batch_size, "peak_rss_mb": rss,
                      "step_times": times, "torch": torch.__version__,
                      "torchvision": torchvision.__version__,
                      "threads": torch.get_num_threads()}))


def run_torch(steps: int, batch_size: int, precision: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch_child",
                           f"--steps={steps}", f"--batch_size={batch_size}",
                           f"--precisions={precision}"],
                          env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("torchvision run failed:\n" + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma-separated: float32 and/or bfloat16 (both sides)")
    parser.add_argument("--torch_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip_torch", action="store_true", help="measure ours only")
    args = parser.parse_args()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.torch_child:
        torch_child(args.steps, args.batch_size, precisions[0])
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_train_") as workdir:
        print(f"SSD300 training, batch {args.batch_size}, {args.steps} timed steps per side, "
              f"{os.cpu_count()} CPU cores, TF {_tf_version()}", flush=True)
        dataset_dir, labels = _make_tfrecords(workdir, num_images=4 * args.batch_size)
        for precision in precisions:
            ours = run_ours(args.steps, args.batch_size, workdir, dataset_dir, labels, precision)
            print(f"[{precision}] ours, full Caffe augmentation from TFRecords: "
                  f"{ours['images_per_sec']:.2f} img/s = {ours['sec_per_image']:.3f} s/image, "
                  f"peak RSS {ours['peak_rss_mb']:.0f} MB", flush=True)
            if args.skip_torch:
                continue
            peer = run_torch(args.steps, args.batch_size, precision)
            print(f"[{precision}] torchvision ssd300_vgg16 (torch {peer['torch']}, synthetic "
                  f"data{', autocast' if precision == 'bfloat16' else ''}): "
                  f"{peer['images_per_sec']:.2f} img/s = {peer['sec_per_image']:.3f} s/image, "
                  f"peak RSS {peer['peak_rss_mb']:.0f} MB", flush=True)
            ratio = ours["sec_per_image"] / peer["sec_per_image"]
            print(f"[{precision}] time per image ours / torchvision = {ratio:.2f} (goal <= 0.80: "
                  f"{'met' if ratio <= 0.8 else 'not met'})", flush=True)
    return 0


def _tf_version() -> str:
    try:
        out = subprocess.run([sys.executable, "-c", "import tensorflow as tf; print(tf.__version__)"],
                             env=_env(), capture_output=True, text=True, timeout=120)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
