"""The main job on bundled sample data (``make demo``): data -> TFRecords -> train -> eval -> detect.

Runs the project's own scripts, as a user would, one after the other:

1. ``python -m datasets.sample_data``: a VOC-format dataset of coloured shapes (generated once,
   then reused from ``sample_data/``);
2. ``tf_convert_data.py``: its trainval and test splits -> TFRecords;
3. ``train_ssd_network.py``: trains the light ``ssd_160_vgg_lite`` (a BatchNorm VGG at 160x160
   input) from scratch on trainval;
4. ``eval_ssd_network.py``: VOC07/VOC12 mAP on the test split (``metrics.json``);
5. ``detect.py``: detections on test images, drawn into PNGs, with JSON in image pixels.

Everything goes under ``demo_output/`` (and ``sample_data/``); each stage's full output is in
``demo_output/logs/<stage>.log``. The goal on a 2-core CPU is 10 minutes or less in all and a
VOC07 mAP of 0.8 or more (measured: 0.96 in about 4 minutes; docs/demo.md).
``--quick`` is a smoke run of under two minutes (small data, 150 steps).
Exit codes: 0 done, 1 a stage failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

from fileio import atomic

ROOT = os.path.dirname(os.path.abspath(__file__))
MODEL_NAME = "ssd_160_vgg_lite"
TARGET_MAP = 0.8
# The settings of the full demo and of --quick: data size, training length and recipe.
# Measured (docs/demo.md): more generated images beat augmentation for a short training from
# scratch (600 images overfit), and the trainer's augmentation chains slow the learning down;
# so: 3,000 images, no augmentation. ssd_160_vgg_lite reaches ~0.96 test mAP in 1,000 steps.
FULL = {"num_trainval": 3000, "num_test": 200, "steps": 1000, "batch_size": 16,
        "learning_rate": 2e-3, "augmentation": "none", "num_detect": 8}
QUICK = {"num_trainval": 400, "num_test": 40, "steps": 150, "batch_size": 16,
         "learning_rate": 2e-3, "augmentation": "none", "num_detect": 4}
SEED = 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and evaluate a light SSD on generated sample data, then draw its "
                    "detections (the README's first command).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output", help="where every result goes")
    parser.add_argument("--data_dir", default="sample_data",
                        help="the generated VOC-format dataset (reused when already there)")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: %s" % ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 1000, quick: 150)")
    parser.add_argument("--batch_size", type=int, default=None, help="training batch size (default 16)")
    parser.add_argument("--num_trainval", type=int, default=None, help="trainval images to generate")
    parser.add_argument("--num_test", type=int, default=None, help="test images to generate")
    parser.add_argument("--augmentation", choices=("caffe", "original", "none"), default=None,
                        help="training augmentation (default: none)")
    parser.add_argument("--verbose", action="store_true", help="show every line the scripts print")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.augmentation:
        settings["augmentation"] = args.augmentation
    for key in ("steps", "batch_size", "num_trainval", "num_test"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                parser.error(f"--{key} must be >= 1, got {value}")
            settings[key] = value
    args.settings = settings
    return args


class StageError(RuntimeError):
    """A script exited with an error; the message says which and where its log is."""


def run_stage(name: str, command: list[str], log_dir: str, verbose: bool,
              show: Sequence[str] = ()) -> float:
    """Run one script as a subprocess, its output into ``<log_dir>/<name>.log``.

    Lines containing one of ``show`` (or all lines with ``verbose``) are echoed. Returns the
    wall time in seconds; raises StageError when the script fails.
    """
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    start = time.time()
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-15:]
            if verbose or any(key in line for key in show):
                # absl prefixes (I1122 18:00:00.0 123 file.py:10]) are noise on the console.
                text = line.rstrip()
                if "] " in text[:80] and text[:1] in "IWEF":
                    text = text.split("] ", 1)[1]
                print(f"    {text}", flush=True)
        code = proc.wait()
    if code != 0:
        raise StageError(f"{name} failed (exit code {code}); last lines of {log_path}:\n"
                         + "\n".join("    " + t for t in tail))
    return time.time() - start


def data_is_current(data_dir: str, spec: dict) -> bool:
    """True when ``data_dir`` already holds the sample data generated with ``spec``."""
    marker = os.path.join(data_dir, "demo_spec.json")
    try:
        with open(marker, encoding="utf-8") as f:
            return json.load(f) == spec
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    s = args.settings
    python = sys.executable
    out = os.path.abspath(args.output_dir)
    data_dir = os.path.abspath(args.data_dir)
    logs = os.path.join(out, "logs")
    tfrecords = os.path.join(out, "tfrecords")
    train_dir = os.path.join(out, "train")
    eval_dir = os.path.join(out, "eval")
    detections = os.path.join(out, "detections")
    labels = os.path.join(data_dir, "labels.txt")
    times: dict[str, float] = {}
    start = time.time()
    print(f"SSD demo: {MODEL_NAME} on generated shapes ({s['num_trainval']} trainval / "
          f"{s['num_test']} test images, {s['steps']} steps of {s['batch_size']})", flush=True)
    try:
        # 1. Sample data, generated once per spec.
        spec = {"num_trainval": s["num_trainval"], "num_test": s["num_test"], "seed": SEED}
        print(f"[1/5] sample data -> {data_dir}", flush=True)
        if data_is_current(data_dir, spec):
            print("    (already there, reused)")
        else:
            times["data"] = run_stage("sample_data", [
                python, "-m", "datasets.sample_data", f"--output_dir={data_dir}",
                f"--num_trainval={s['num_trainval']}", f"--num_test={s['num_test']}", f"--seed={SEED}"],
                logs, args.verbose, show=("wrote ",))
            atomic.write_json(os.path.join(data_dir, "demo_spec.json"), spec, indent=None)

        # 2. TFRecords, one set of shards per split (names <split>_NNN.tfrecord for dataset 'voc').
        print(f"[2/5] tf_convert_data.py -> {tfrecords}", flush=True)
        shutil.rmtree(tfrecords, ignore_errors=True)
        for split in ("trainval", "test"):
            times[f"convert_{split}"] = run_stage(f"convert_{split}", [
                python, os.path.join(ROOT, "tf_convert_data.py"), "--dataset_name=voc",
                f"--dataset_dir={data_dir}", f"--split={split}", f"--labels={labels}",
                f"--output_name={split}", f"--output_dir={tfrecords}"], logs, args.verbose)

        # 3. Training from scratch (a fresh train_dir: the trainer would resume from an old one).
        print(f"[3/5] train_ssd_network.py -> {train_dir}", flush=True)
        shutil.rmtree(train_dir, ignore_errors=True)
        warmup = max(1, s["steps"] // 20)
        times["train"] = run_stage("train", [
            python, os.path.join(ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
            f"--dataset_dir={tfrecords}", "--dataset_name=voc", f"--labels_file={labels}",
            "--dataset_split_name=trainval", f"--model_name={MODEL_NAME}",
            "--preprocessing_name=ssd_300_vgg",  # the SSD chain; out_shape comes from the net
            f"--augmentation={s['augmentation']}", "--optimizer=adam", f"--learning_rate={s['learning_rate']}",
            "--learning_rate_decay_type=cosine",
            f"--end_learning_rate={s['learning_rate'] / 50}", f"--warmup_steps={warmup}",
            "--weight_decay=4e-5", "--nodecay_l2norm_scale", "--bias_lr_mult=1",
            f"--batch_size={s['batch_size']}", f"--max_number_of_steps={s['steps']}",
            f"--seed={SEED}", "--log_every_n_steps=50", "--save_interval_secs=100000",
            "--save_summaries_secs=100000"],
            logs, args.verbose, show=("loss ", "img/s"))

        # 4. Evaluation on the test split.
        print(f"[4/5] eval_ssd_network.py -> {eval_dir}", flush=True)
        shutil.rmtree(eval_dir, ignore_errors=True)
        times["eval"] = run_stage("eval", [
            python, os.path.join(ROOT, "eval_ssd_network.py"), f"--eval_dir={eval_dir}",
            f"--dataset_dir={tfrecords}", "--dataset_name=voc", f"--labels_file={labels}",
            "--dataset_split_name=test", f"--model_name={MODEL_NAME}",
            "--preprocessing_name=ssd_300_vgg", f"--checkpoint_path={train_dir}", "--batch_size=16"],
            logs, args.verbose)
        with open(os.path.join(eval_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)

        # 5. Detections drawn on a few test images.
        print(f"[5/5] detect.py -> {detections}", flush=True)
        shutil.rmtree(detections, ignore_errors=True)
        with open(os.path.join(data_dir, "ImageSets", "Main", "test.txt"), encoding="utf-8") as f:
            ids = f.read().split()[:s["num_detect"]]
        images = [os.path.join(data_dir, "JPEGImages", i + ".jpg") for i in ids]
        times["detect"] = run_stage("detect", [
            python, os.path.join(ROOT, "detect.py"), f"--checkpoint_path={train_dir}",
            f"--labels_file={labels}", f"--output_dir={detections}", "--select_threshold=0.3",
            *images], logs, args.verbose)
    except StageError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1

    total = time.time() - start
    mean_ap = float(metrics["mAP_VOC07"])
    print("\nDone in %.0f s (%s)." % (total, ", ".join(f"{k} {v:.0f} s" for k, v in times.items())))
    print(f"  sample data      {data_dir}  (VOC layout, labels.txt)")
    print(f"  TFRecords        {tfrecords}")
    print(f"  checkpoints      {train_dir}  (TF-Slim-named export in {os.path.join(train_dir, 'export')})")
    print(f"  metrics          {os.path.join(eval_dir, 'metrics.json')}")
    print(f"  detections       {detections}  (PNG with boxes drawn + JSON in image pixels)")
    print(f"  logs             {logs}")
    print("  per-class AP (VOC07): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["AP_VOC07"].items()))
    print(f"Test mAP (VOC07): {mean_ap:.3f}   (VOC12: {float(metrics['mAP_VOC12']):.3f}; "
          f"{metrics['num_images']} test images)")
    if not args.quick and mean_ap < TARGET_MAP:
        print(f"Note: below the {TARGET_MAP} target of this demo (more --steps help; see docs/demo.md).")
    print("Next: open notebooks/ssd_notebook.ipynb (it loads this checkpoint), or run "
          f"python detect.py --checkpoint_path={os.path.relpath(train_dir, ROOT)} "
          f"--labels_file={os.path.relpath(labels, ROOT)} --output_dir=detections YOUR_IMAGES")
    return 0


if __name__ == "__main__":
    sys.exit(main())
