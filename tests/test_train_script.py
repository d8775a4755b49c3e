"""train_ssd_network.py end to end: real subprocesses on real TFRecords.

A tiny VOC-format dataset of shapes (datasets.sample_data, 96x96 JPEGs) is converted with the
real tf_convert_data.py, then trained with the real script at a 64x64 input (SSD300-VGG
truncated to the feature layers that fit: block4, block7, block8, block9), batch 2.

Runs (each a fresh process):
  A   30 steps on one repeated batch (Adam): the loss falls; logs, config, checkpoint,
      sidecar, export and summaries are checked on its train_dir.
  M   the same with --num_clones=2 (MirroredStrategy on 2 logical CPUs), 3 steps: the same
      losses as A, step by step.
  B1  checkpoints every step, killed with SIGKILL once a checkpoint exists;
  B2  the same command: resumes at that checkpoint's step; SIGTERM after a few steps:
      exit 143 with a checkpoint at the step it stopped;
  B3  the same command again: resumes and finishes; every step's loss equals A's (weights,
      Adam's moments and step counter all restored).
  F   fine-tuning from a written ssd_300_vgg-format (TF1, TF-Slim names) checkpoint with
      21-class heads: refused without --checkpoint_exclude_scopes, then trained with the heads
      excluded and only the heads trainable; the trunk stays bit-identical.
  W   two MultiWorkerMirroredStrategy workers on localhost: the same losses as A.
  N   a learning rate of 1e10: stops with exit 1 at the first non-finite loss, naming the step
      and the batch's image ids.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from nets import configure
from tests.scripts import ROOT, error_lines, run_script, script_env

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, "train_ssd_network.py")
STEP_RE = re.compile(
    r"step (\d+)(?:/\d+)?: loss ([-\d.]+|nan|inf) \(cross_entropy_pos ([-\d.]+) "
    r"cross_entropy_neg ([-\d.]+) localization ([-\d.]+) regularization ([-\d.]+)\), "
    r"lr ([-\d.e+]+), (\S+) img/s")
BOX_SCOPES = ",".join(f"ssd_300_vgg/{b}_box" for b in ("block4", "block7", "block8", "block9"))


def _run(args: list[str], timeout: float = 240, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    return run_script("train_ssd_network.py", *args, timeout=timeout, env=env)


def _train_params(num_classes: int, image_size: int):
    """The SSDParams train_ssd_network.py builds for --model_name=ssd_300_vgg."""
    return configure.resolve_model("ssd_300_vgg", num_classes=num_classes,
                                   image_size=image_size, drop_empty_layers=True)[1]


def _steps(log: str) -> dict[int, dict]:
    """step -> {'total', 'pos', 'neg', 'loc', 'reg', 'lr', 'rate'} from the log lines."""
    out = {}
    for m in STEP_RE.finditer(log):
        step = int(m.group(1))
        out[step] = {"total": float(m.group(2)), "pos": float(m.group(3)),
                     "neg": float(m.group(4)), "loc": float(m.group(5)),
                     "reg": float(m.group(6)), "lr": float(m.group(7)), "rate": m.group(8)}
        out[step]["detection"] = out[step]["pos"] + out[step]["neg"] + out[step]["loc"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 shape images (4 classes) in VOC layout, converted by the real tf_convert_data.py."""
    from datasets import sample_data

    root = tmp_path_factory.mktemp("train_data")
    voc = root / "voc"
    sample_data.generate(str(voc), num_trainval=8, num_test=0, image_size=(96, 96), seed=3)
    labels = str(voc / sample_data.LABELS_FILENAME)
    proc = run_script("tf_convert_data.py", "--dataset_name=pascalvoc",
                      f"--dataset_dir={voc}", "--output_name=train",
                      f"--output_dir={root / 'tfr'}", f"--labels={labels}", "--split=trainval",
                      "--num_workers=1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert glob.glob(str(root / "tfr" / "train_*.tfrecord"))
    return {"dataset_dir": str(root / "tfr"), "labels_file": labels, "root": root}


def _args(data: dict, train_dir, **overrides) -> list[str]:
    values = {
        "train_dir": str(train_dir), "dataset_name": "voc", "dataset_dir": data["dataset_dir"],
        "labels_file": data["labels_file"], "model_name": "ssd_300_vgg",
        "train_image_size": 64, "batch_size": 2, "log_every_n_steps": 1,
        "augmentation": "none", "optimizer": "adam", "learning_rate": 1e-4,
        "warmup_steps": 0, "max_number_of_steps": 30, "overfit_one_batch": True,
    }
    values.update(overrides)
    args = []
    for key, value in values.items():
        if value is True:
            args.append(f"--{key}")
        elif value is False:
            args.append(f"--no{key}")
        elif value is not None:
            args.append(f"--{key}={value}")
    return args


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory):
    train_dir = tmp_path_factory.mktemp("run_a")
    proc = _run(_args(data, train_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": str(train_dir), "log": proc.stderr, "steps": _steps(proc.stderr)}


# ---------------------------------------------------------------------------------------
# A: one repeated batch
# ---------------------------------------------------------------------------------------

def test_loss_falls_over_30_steps_on_one_repeated_batch(run_a):
    steps = run_a["steps"]
    assert sorted(steps) == list(range(1, 31)), sorted(steps)
    first = steps[1]["detection"]
    last = np.mean([steps[s]["detection"] for s in range(26, 31)])
    # Overfitting one batch: the detection loss (cross-entropies + smooth L1) must drop a lot.
    assert last < 0.3 * first, (first, last)
    assert steps[30]["loc"] < steps[1]["loc"]
    # Caffe L2 decay on (0.5 * 5e-4 * sum w^2) is in the total and positive.
    for s in steps.values():
        assert s["reg"] > 0
        assert abs(s["total"] - s["detection"] - s["reg"]) < 1e-3 + 1e-4 * s["total"]


def test_log_lines_have_lr_throughput_and_eta(run_a):
    lines = [line for line in run_a["log"].splitlines() if "step 12/30:" in line]
    assert len(lines) == 1
    assert re.search(r"lr 0\.0001, [\d.]+ img/s, ETA \d+", lines[0]), lines[0]
    assert "No checkpoint in" in run_a["log"] and "training from scratch" in run_a["log"]
    assert "First step took" in run_a["log"]


def test_train_dir_holds_config_checkpoint_sidecar_export_and_summaries(run_a):
    d = run_a["dir"]
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    c = config["config"]
    # Explicit flags win over the recipe; unset ones come from it (caffe_voc).
    assert c["recipe"] == "caffe_voc" and c["optimizer"] == "adam"
    assert c["weight_decay"] == 5e-4 and c["matching"] == "caffe"
    assert c["negative_mining"] == "per_image" and c["loss_normalization"] == "positives"
    assert c["bias_lr_mult"] == 2.0 and c["opt_epsilon"] == 1e-8
    assert config["dataset"]["num_classes"] == 5 and config["dataset"]["num_samples"] == 8
    assert config["model"]["params"]["feat_layers"] == ["block4", "block7", "block8", "block9"]
    assert config["initialized_from"] == "scratch"

    assert os.path.exists(os.path.join(d, "ckpt-30.index"))
    with open(os.path.join(d, "ckpt-30.ssd.json")) as f:
        sidecar = json.load(f)
    assert sidecar["model_name"] == "ssd_300_vgg" and sidecar["num_classes"] == 5
    assert sidecar["img_shape"] == [64, 64]
    import tensorflow as tf
    assert tf.train.latest_checkpoint(d).endswith("ckpt-30")
    names = dict(tf.train.list_variables(os.path.join(d, "export", "model.ckpt-30")))
    assert names["ssd_300_vgg/conv1/conv1_1/weights"] == [3, 3, 3, 64]
    assert names["ssd_300_vgg/block4_box/conv_cls/biases"] == [4 * 5]
    assert "ssd_300_vgg/block4_box/L2Normalization/gamma" in names

    tags = set()
    for path in glob.glob(os.path.join(d, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    assert {"losses/total", "losses/localization", "learning_rate",
            "training_images"} <= tags, tags


def test_export_folder_has_the_state_file_tf1_tools_read(run_a):
    """Given the export folder, tf.train.latest_checkpoint (and TF1 tools, the original's
    scripts) find the exported checkpoint: net.save_checkpoint writes the state file."""
    import tensorflow as tf

    export = os.path.join(run_a["dir"], "export")
    assert tf.train.latest_checkpoint(export) == os.path.join(export, "model.ckpt-30")
    assert os.path.exists(os.path.join(export, "model.ckpt-30.ssd.json"))


def test_training_checkpoint_loads_into_a_net_and_equals_the_export(run_a):
    import tensorflow as tf
    from nets import nets_factory

    net = nets_factory.get_network("ssd_300_vgg")(_train_params(5, 64))
    report = net.load_checkpoint(run_a["dir"])  # the directory: its latest, ckpt-30
    assert not report["missing"]
    reader = tf.train.load_checkpoint(os.path.join(run_a["dir"], "export", "model.ckpt-30"))
    for name, var in net.variables_by_checkpoint_name().items():
        np.testing.assert_array_equal(np.asarray(var), reader.get_tensor(name), err_msg=name)


# ---------------------------------------------------------------------------------------
# M: MirroredStrategy on 2 logical CPUs == one device, same global batch
# ---------------------------------------------------------------------------------------

def test_mirrored_two_cpu_replicas_match_one_device(data, run_a, tmp_path):
    proc = _run(_args(data, tmp_path / "m", num_clones=2, max_number_of_steps=3,
                      export_tf1_checkpoint=False))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy, 2 replica(s), global batch 2 (1 per replica)" in proc.stderr
    steps = _steps(proc.stderr)
    assert sorted(steps) == [1, 2, 3]
    for s in (1, 2, 3):
        for key in ("pos", "neg", "loc", "reg"):
            assert steps[s][key] == pytest.approx(run_a["steps"][s][key], rel=2e-3, abs=2e-3), \
                (s, key, steps[s], run_a["steps"][s])


# ---------------------------------------------------------------------------------------
# B: kill -9, resume, SIGTERM, resume
# ---------------------------------------------------------------------------------------

def _latest_step(train_dir: str) -> int | None:
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(train_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else None


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def test_kill9_resume_sigterm_resume_continues_exactly(data, run_a, tmp_path):
    train_dir = str(tmp_path / "b")
    args = [sys.executable, SCRIPT, *_args(data, train_dir, max_number_of_steps=12,
                                           save_interval_secs=0, export_tf1_checkpoint=False)]
    # B1: killed with SIGKILL as soon as a checkpoint is on disk.
    log1 = tmp_path / "b1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=script_env(), stdout=out,
                                stderr=subprocess.STDOUT)
        _wait_for(lambda: (_latest_step(train_dir) or 0) >= 2, proc, 240, "a checkpoint")
        proc.kill()
        proc.wait(30)
    killed_at = _latest_step(train_dir)
    assert killed_at is not None and killed_at < 12

    # B2: same command; resumes there; SIGTERM after two more steps -> checkpoint + exit 143.
    log2 = tmp_path / "b2.log"
    with open(log2, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=script_env(), stdout=out,
                                stderr=subprocess.STDOUT)
        _wait_for(lambda: any(s >= killed_at + 2 for s in _steps(log2.read_text())), proc, 240,
                  "two steps after resuming")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    text2 = log2.read_text()
    assert f"Resuming from {os.path.join(train_dir, f'ckpt-{killed_at}')} at step {killed_at}" \
        in text2
    assert min(_steps(text2)) == killed_at + 1
    assert rc == 128 + signal.SIGTERM, text2[-2000:]
    stopped = max(_steps(text2))
    assert "SIGTERM received" in text2 and f"Stopped by SIGTERM at step {stopped}" in text2
    assert _latest_step(train_dir) == stopped

    # B3: same command again: resumes at the SIGTERM checkpoint and finishes.
    proc3 = subprocess.run(args, cwd=ROOT, env=script_env(), capture_output=True, text=True,
                           timeout=240)
    assert proc3.returncode == 0, proc3.stderr[-3000:]
    assert f"at step {stopped}." in proc3.stderr
    steps3 = _steps(proc3.stderr)
    assert sorted(steps3) == list(range(stopped + 1, 13))
    assert _latest_step(train_dir) == 12

    # Every resumed step has the loss of the uninterrupted run A: the weights, Adam's
    # moments and iteration count (bias correction) all came back.
    resumed = {**_steps(text2), **steps3}
    for s, values in resumed.items():
        for key in ("pos", "neg", "loc", "reg"):
            assert values[key] == pytest.approx(run_a["steps"][s][key], rel=2e-3, abs=2e-3), \
                (s, key, values, run_a["steps"][s])

    # Rotation keeps 5 checkpoints, each with its sidecar, no orphan sidecar.
    indexes = sorted(glob.glob(os.path.join(train_dir, "ckpt-*.index")))
    sidecars = sorted(glob.glob(os.path.join(train_dir, "ckpt-*.ssd.json")))
    assert len(indexes) == 5
    assert [p[:-len(".index")] for p in indexes] == [p[:-len(".ssd.json")] for p in sidecars]


# ---------------------------------------------------------------------------------------
# F: fine-tuning from an ssd_300_vgg-format checkpoint
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc21_checkpoint(tmp_path_factory):
    """A TF1 checkpoint with TF-Slim names of the same (64x64) SSD300 with 21-class heads."""
    from nets import nets_factory

    net = nets_factory.get_network("ssd_300_vgg")(_train_params(21, 64))
    prefix = str(tmp_path_factory.mktemp("pretrained") / "ssd_300_vgg.ckpt")
    net.save_checkpoint(prefix)
    return prefix


def test_finetune_needs_exclude_scopes_for_other_class_heads(data, voc21_checkpoint, tmp_path):
    proc = _run(_args(data, tmp_path / "f0", checkpoint_path=voc21_checkpoint,
                      max_number_of_steps=1))
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_ssd_network.py: error: --checkpoint_path:"), last
    assert "does not match ssd_300_vgg" in last
    assert "--checkpoint_exclude_scopes=ssd_300_vgg/block4_box" in proc.stderr
    assert not glob.glob(str(tmp_path / "f0" / "ckpt-*"))


def test_finetune_from_ssd_checkpoint_with_exclude_scopes(data, voc21_checkpoint, tmp_path):
    import tensorflow as tf

    train_dir = tmp_path / "f1"
    proc = _run(_args(data, train_dir, checkpoint_path=voc21_checkpoint,
                      checkpoint_exclude_scopes=BOX_SCOPES, trainable_scopes=BOX_SCOPES,
                      checkpoint_model_scope="vgg_16",  # the README's stage-2 slip: ignored
                      max_number_of_steps=2, optimizer="momentum", learning_rate=1e-2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--checkpoint_model_scope=vgg_16 ignored" in proc.stderr
    assert f"Initialised from checkpoint {voc21_checkpoint}" in proc.stderr
    exported = tf.train.load_checkpoint(str(train_dir / "export" / "model.ckpt-2"))
    source = tf.train.load_checkpoint(voc21_checkpoint)
    shapes = exported.get_variable_to_shape_map()
    trunk = [n for n in shapes if "_box/" not in n]
    assert len(trunk) == 2 * (13 + 2 + 2 * 2)  # VGG conv1..5, conv6, conv7, block8, block9
    for name in trunk:  # frozen and loaded: bit-identical to the source checkpoint
        np.testing.assert_array_equal(exported.get_tensor(name), source.get_tensor(name), name)
    assert shapes["ssd_300_vgg/block4_box/conv_cls/biases"] == [4 * 5]
    # The (trained) heads moved away from zero biases.
    assert np.abs(exported.get_tensor("ssd_300_vgg/block4_box/conv_cls/biases")).max() > 0
    # Stage 2 in the same train_dir (every layer trainable now): resumes the weights and the
    # step, not --checkpoint_path; the optimizer starts afresh because its variables changed.
    again = _run(_args(data, train_dir, checkpoint_path=voc21_checkpoint,
                       checkpoint_exclude_scopes=BOX_SCOPES, max_number_of_steps=3,
                       optimizer="momentum", learning_rate=1e-2), timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"--checkpoint_path={voc21_checkpoint} not used" in again.stderr
    assert re.search(r"Training set-up changed .*trainable: 17 variables -> 55 variables",
                     again.stderr)
    assert f"Resuming from {train_dir / 'ckpt-2'} at step 2." in again.stderr
    assert sorted(_steps(again.stderr)) == [3]


# ---------------------------------------------------------------------------------------
# W: MultiWorkerMirroredStrategy, 2 workers on localhost
# ---------------------------------------------------------------------------------------

def test_two_worker_multi_worker_mirrored_run(data, run_a, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    train_dir = tmp_path / "w"
    procs, logs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"w{index}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, SCRIPT, *_args(data, train_dir, max_number_of_steps=3,
                                            export_tf1_checkpoint=False)],
            cwd=ROOT, env=script_env({"TF_CONFIG": tf_config}), stdout=log,
            stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    texts = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [t[-2000:] for t in texts]
    assert "worker 0 (chief)" in texts[0] and "2 replica(s), global batch 2" in texts[1]
    steps = [_steps(t) for t in texts]
    assert sorted(steps[0]) == sorted(steps[1]) == [1, 2, 3]
    for s in (1, 2, 3):
        for key in ("pos", "neg", "loc", "reg"):
            assert steps[0][s][key] == steps[1][s][key]
            assert steps[0][s][key] == pytest.approx(run_a["steps"][s][key], rel=2e-3, abs=2e-3)
    # Only the chief writes train_dir.
    assert os.path.exists(train_dir / "ckpt-3.index")
    assert os.path.exists(train_dir / "ckpt-3.ssd.json")


# ---------------------------------------------------------------------------------------
# N: guard rails
# ---------------------------------------------------------------------------------------

def test_nonfinite_loss_stops_with_step_and_image_ids(data, tmp_path):
    proc = _run(_args(data, tmp_path / "n", optimizer="sgd", learning_rate=1e10,
                      max_number_of_steps=20, overfit_one_batch=False))
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    m = re.match(r"train_ssd_network\.py: error: non-finite loss at step (\d+) .*images of the "
                 r"batch: \[(trainval_\d+), (trainval_\d+)\]", last)
    assert m, last
    assert not glob.glob(str(tmp_path / "n" / "ckpt-*.index"))


def test_class_count_mismatch_is_a_usage_error_before_training(data, tmp_path):
    proc = _run(_args(data, tmp_path / "c", num_classes=21), timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "--num_classes=21 but dataset voc has 5 classes including the background" in last
    assert "step 1" not in proc.stderr


def test_usage_errors_exit_2_with_one_line(data, tmp_path):
    proc = _run(["--optimizer=nadam", f"--dataset_dir={data['dataset_dir']}"], timeout=60)
    assert proc.returncode == 2
    assert "usage error" in proc.stderr and "optimizer" in proc.stderr
    proc = _run([f"--train_dir={tmp_path}", f"--dataset_dir={data['dataset_dir']}"], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "train_ssd_network.py: error: --dataset_name is required")


def test_train_dir_that_is_a_file_is_one_line(data, tmp_path):
    afile = tmp_path / "run.txt"
    afile.write_text("not a directory")
    proc = _run(_args(data, afile, max_number_of_steps=1), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr, SCRIPT) == [
        f"train_ssd_network.py: error: --train_dir={afile} is a file, not a directory: give a "
        "new or an existing training directory."]
    assert "Traceback" not in proc.stderr
    assert afile.read_text() == "not a directory"


# Every flag of balancap/SSD-Tensorflow's train_ssd_network.py (reference §8).
ORIGINAL_FLAGS = (
    "loss_alpha negative_ratio match_threshold train_dir num_clones clone_on_cpu num_readers "
    "num_preprocessing_threads log_every_n_steps save_summaries_secs save_interval_secs "
    "gpu_memory_fraction weight_decay optimizer adadelta_rho adagrad_initial_accumulator_value "
    "adam_beta1 adam_beta2 opt_epsilon ftrl_learning_rate_power ftrl_initial_accumulator_value "
    "ftrl_l1 ftrl_l2 momentum rmsprop_momentum rmsprop_decay learning_rate_decay_type "
    "learning_rate end_learning_rate label_smoothing learning_rate_decay_factor "
    "num_epochs_per_decay moving_average_decay dataset_name num_classes dataset_split_name "
    "dataset_dir labels_offset model_name preprocessing_name batch_size train_image_size "
    "max_number_of_steps checkpoint_path checkpoint_model_scope checkpoint_exclude_scopes "
    "trainable_scopes ignore_missing_vars").split()
EXTRA_FLAGS = ("recipe mixed_precision jit_compile keep_checkpoint_max warmup_steps "
               "learning_rate_boundaries learning_rate_values matching negative_mining "
               "anchor_preset seed").split()


def test_help_documents_every_original_and_new_flag():
    proc = _run(["--helpfull"], timeout=60)
    assert proc.returncode == 0
    text = proc.stdout + proc.stderr
    for flag in ORIGINAL_FLAGS + EXTRA_FLAGS:
        assert re.search(rf"--(\[no\])?{flag}:", text), flag
    short = _run(["--help"], timeout=60)
    assert short.returncode == 0
    for flag in ORIGINAL_FLAGS + EXTRA_FLAGS:  # the shared groups are listed too
        assert re.search(rf"--(\[no\])?{flag}:", short.stdout + short.stderr), flag


# ---------------------------------------------------------------------------------------
# Mixed precision (float16 loss scaling) + moving average, through the engine in-process
# ---------------------------------------------------------------------------------------

def _float16_dilated_conv_gradients_run() -> bool:
    """Whether this machine computes the gradient of a dilated float16 convolution (SSD300's
    conv6). TensorFlow's CPU kernel for it is oneDNN's, which needs AVX512-FP16; without it
    the step fails with "Current CPU implementations do not yet support dilation rates larger
    than 1" (TensorFlow's limit, not the trainer's)."""
    import tensorflow as tf

    x = tf.Variable(tf.zeros([1, 8, 8, 1], tf.float16))
    with tf.GradientTape() as tape:
        y = tf.nn.conv2d(x, tf.zeros([3, 3, 1, 1], tf.float16), 1, "SAME", dilations=2)
    try:
        tape.gradient(y, x)
    except tf.errors.InvalidArgumentError:
        return False
    return True


def test_float16_with_moving_average_checkpoints_the_average_as_model(data, tmp_path):
    import tensorflow as tf
    from engine import training
    from engine.train_config import TrainConfig

    if not _float16_dilated_conv_gradients_run():
        pytest.skip("TensorFlow on this CPU has no float16 gradient for dilated convolutions "
                    "(needs AVX512-FP16)")

    train_dir = str(tmp_path / "mp")
    config = TrainConfig(
        train_dir=train_dir, dataset_name="voc", dataset_dir=data["dataset_dir"],
        labels_file=data["labels_file"], model_name="ssd_300_vgg", train_image_size=64,
        batch_size=2, max_number_of_steps=5, augmentation="none", overfit_one_batch=True,
        optimizer="adam", learning_rate=1e-3, warmup_steps=0, mixed_precision="float16",
        moving_average_decay=0.5, log_every_n_steps=1)
    result = training.train(config)
    assert result.step == 5 and result.initialized_from == "scratch"
    assert all(np.isfinite(v) for v in result.losses.values())
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "ckpt-5"))
    names = reader.get_variable_to_shape_map()
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    scale = [n for n in names if n.endswith("optimizer/dynamic_scale" + suffix)]
    assert len(scale) == 1 and 0 < reader.get_tensor(scale[0]) <= 2.0 ** 15
    # Steps with overflowing float16 gradients are skipped (and the scale halved), not applied.
    skipped = np.log2(2.0 ** 15 / reader.get_tensor(scale[0]))
    applied = [n for n in names if n.endswith("inner_optimizer/_iterations" + suffix)]
    assert len(applied) == 1 and reader.get_tensor(applied[0]) == 5 - skipped >= 1
    kernel = "model/_graph/_operations/1/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    averaged = reader.get_tensor(kernel)
    trained = reader.get_tensor(kernel.replace("model/", "train_model/", 1))
    assert np.abs(averaged - trained).max() > 0  # the average lags the trained weights
    exported = tf.train.load_checkpoint(os.path.join(train_dir, "export", "model.ckpt-5"))
    np.testing.assert_array_equal(exported.get_tensor("ssd_300_vgg/conv1/conv1_1/weights"),
                                  averaged)


def test_moving_average_checkpoints_the_average_as_model_and_exports_it(data, tmp_path):
    """The moving-average layout in float32 (runs on every CPU): 'model' holds the average,
    'train_model' the trained weights, the export the average."""
    import tensorflow as tf
    from engine import training
    from engine.train_config import TrainConfig

    train_dir = str(tmp_path / "ema")
    config = TrainConfig(
        train_dir=train_dir, dataset_name="voc", dataset_dir=data["dataset_dir"],
        labels_file=data["labels_file"], model_name="ssd_300_vgg", train_image_size=64,
        batch_size=2, max_number_of_steps=3, augmentation="none", overfit_one_batch=True,
        optimizer="adam", learning_rate=1e-3, warmup_steps=0, moving_average_decay=0.5,
        log_every_n_steps=1)
    result = training.train(config)
    assert result.step == 3 and result.checkpoint == os.path.join(train_dir, "ckpt-3")
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "ckpt-3"))
    kernel = "model/_graph/_operations/1/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    averaged = reader.get_tensor(kernel)
    trained = reader.get_tensor(kernel.replace("model/", "train_model/", 1))
    assert np.abs(averaged - trained).max() > 0
    exported = tf.train.load_checkpoint(os.path.join(train_dir, "export", "model.ckpt-3"))
    np.testing.assert_array_equal(exported.get_tensor("ssd_300_vgg/conv1/conv1_1/weights"),
                                  averaged)
    # Run again: already at --max_number_of_steps, nothing trained, the same checkpoint.
    again = training.train(config)
    assert (again.step, again.start_step, again.losses) == (3, 3, {})
    assert again.checkpoint == result.checkpoint and again.initialized_from.startswith("resume:")
