"""Finding checkpoints and reading their step (fileio.checkpoint_files), watching a train_dir
(engine.checkpoint_watch).

Real checkpoint files on disk (TF2 object-based and TF1-named), a fake clock for the watcher.
"""
import os
import shutil

import pytest
import tensorflow as tf

from engine import checkpoint_watch as cw
from fileio import checkpoint_files as cf


def _write_tf2(prefix: str, step: int | None = None) -> str:
    """An object-based checkpoint like the trainer's (``step`` variable when given)."""
    objects = {"v": tf.Variable([1.0, 2.0])}
    if step is not None:
        objects["step"] = tf.Variable(step, dtype=tf.int64)
    return tf.train.Checkpoint(**objects).write(prefix)


def _write_tf1(prefix: str, global_step: int | None = None) -> str:
    """A TF1-named checkpoint (tensor names as TF-Slim wrote them)."""
    names = ["ssd_300_vgg/conv1/conv1_1/biases"]
    tensors = [tf.zeros([4])]
    if global_step is not None:
        names.append("global_step")
        tensors.append(tf.constant(global_step, tf.int64))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    return prefix


def _write_state(directory: str, latest: str, all_paths: list) -> None:
    """The 'checkpoint' state file (a text proto) as CheckpointManager / Saver write it."""
    lines = [f'model_checkpoint_path: "{latest}"']
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in all_paths]
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_strip_suffix_and_number():
    assert cf.strip_checkpoint_suffix("/a/model.ckpt-12.index") == "/a/model.ckpt-12"
    assert cf.strip_checkpoint_suffix("/a/ckpt-3.data-00000-of-00001") == "/a/ckpt-3"
    assert cf.strip_checkpoint_suffix("/a/ssd_300_vgg.ckpt.meta") == "/a/ssd_300_vgg.ckpt"
    assert cf.strip_checkpoint_suffix("/a/ssd_300_vgg.ckpt.ssd.json") == "/a/ssd_300_vgg.ckpt"
    assert cf.strip_checkpoint_suffix("/a/ssd_300_vgg.ckpt") == "/a/ssd_300_vgg.ckpt"
    assert cf.checkpoint_number("/a/model.ckpt-1200") == 1200
    assert cf.checkpoint_number("/a/ckpt-7") == 7
    assert cf.checkpoint_number("/a/ssd_300_vgg.ckpt") is None


def test_resolve_file_forms_and_directory(tmp_path):
    d = str(tmp_path)
    p5 = _write_tf2(os.path.join(d, "ckpt-5"), step=5)
    p10 = _write_tf2(os.path.join(d, "ckpt-10"), step=10)
    # No 'checkpoint' state file: the directory's latest is the highest number, not 'ckpt-5'
    # (which would sort last as a string).
    assert cf.resolve_checkpoint(d) == os.path.abspath(p10)
    for form in (p5, p5 + ".index", p5 + ".data-00000-of-00001"):
        assert cf.resolve_checkpoint(form) == os.path.abspath(p5)
    # With a state file its choice wins (here deliberately the older one).
    _write_state(d, "ckpt-5", ["ckpt-5", "ckpt-10"])
    assert cf.resolve_checkpoint(d) == os.path.abspath(p5)
    # A state file pointing at a rotated-away checkpoint falls back to listing.
    _write_state(d, "ckpt-99", ["ckpt-99"])
    assert cf.resolve_checkpoint(d) == os.path.abspath(p10)


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(cf.CheckpointNotFoundError, match="no such checkpoint"):
        cf.resolve_checkpoint(str(tmp_path / "nope.ckpt"))
    with pytest.raises(cf.CheckpointNotFoundError, match="holds no checkpoint"):
        cf.resolve_checkpoint(str(tmp_path))
    p = _write_tf2(str(tmp_path / "ckpt-1"))
    os.remove(p + ".data-00000-of-00001")
    with pytest.raises(cf.CheckpointNotFoundError, match="data files missing"):
        cf.resolve_checkpoint(p)
    with pytest.raises(cf.CheckpointNotFoundError, match="empty"):
        cf.resolve_checkpoint("")


def test_incomplete_checkpoints_are_not_listed(tmp_path):
    d = str(tmp_path)
    _write_tf2(os.path.join(d, "ckpt-2"), step=2)
    done = _write_tf2(os.path.join(d, "ckpt-1"), step=1)
    # ckpt-3 being written: data there, no index yet.
    p3 = _write_tf2(os.path.join(d, "ckpt-3"), step=3)
    index3 = open(p3 + ".index", "rb").read()
    os.remove(p3 + ".index")
    # ckpt-4 of two shards, one missing.
    p4 = _write_tf2(os.path.join(d, "ckpt-4"), step=4)
    os.rename(p4 + ".data-00000-of-00001", p4 + ".data-00000-of-00002")
    infos = cf.list_checkpoints(d)
    assert [i.number for i in infos] == [1, 2]
    assert infos[0].prefix == os.path.abspath(done)
    open(p3 + ".index", "wb").write(index3)
    assert [i.number for i in cf.list_checkpoints(d)] == [1, 2, 3]


def test_read_global_step(tmp_path):
    assert cf.read_global_step(_write_tf2(str(tmp_path / "ckpt-3"), step=1234)) == 1234
    assert cf.read_global_step(_write_tf1(str(tmp_path / "model.ckpt-50"), global_step=77)) == 77
    # No step variable: the name's number (TF1 Saver names files by global step), else None.
    assert cf.read_global_step(_write_tf1(str(tmp_path / "model.ckpt-50b-8"))) == 8
    assert cf.read_global_step(_write_tf1(str(tmp_path / "ssd_300_vgg.ckpt"))) is None
    with pytest.raises(cf.CheckpointUnavailableError, match="ckpt-404"):
        cf.read_global_step(str(tmp_path / "ckpt-404"))


class _FakeTime:
    """A clock advanced only by ``sleep``; ``on_sleep`` lets a test act 'while' it sleeps."""

    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.on_sleep = on_sleep
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, secs):
        self.sleeps.append(secs)
        self.now += secs
        if self.on_sleep:
            self.on_sleep(self.now)


def test_watch_order_rotation_retry_and_timeout(tmp_path):
    d = str(tmp_path / "train")
    os.makedirs(d)
    _write_tf2(os.path.join(d, "ckpt-20"), step=20)
    _write_tf2(os.path.join(d, "ckpt-10"), step=10)
    flaky = _write_tf2(os.path.join(d, "ckpt-30"), step=30)
    seen = []
    failures = {"ckpt-30": 1}

    def evaluate(prefix):
        name = os.path.basename(prefix)
        if name == "ckpt-10":
            # Rotation deletes ckpt-20 while ckpt-10 is being evaluated.
            for f in os.listdir(d):
                if f.startswith("ckpt-20."):
                    os.remove(os.path.join(d, f))
        if failures.get(name):
            failures[name] -= 1
            raise cf.CheckpointUnavailableError(f"{prefix}: truncated data")
        seen.append(name)

    def later(now):
        if now == 60.0:  # A new checkpoint arrives during the first sleep.
            _write_tf2(os.path.join(d, "ckpt-40"), step=40)

    fake = _FakeTime(later)
    stats = cw.watch(d, evaluate, interval_secs=60, timeout_secs=150, sleep=fake.sleep,
                     clock=fake.clock)
    assert seen == ["ckpt-10", "ckpt-30", "ckpt-40"]
    assert stats.deleted == [os.path.join(os.path.abspath(d), "ckpt-20")]
    absd = os.path.abspath(d)
    assert stats.evaluated == [os.path.join(absd, n) for n in ("ckpt-10", "ckpt-30", "ckpt-40")]
    assert os.path.abspath(flaky) == os.path.join(absd, "ckpt-30")
    assert stats.timed_out and not stats.failed
    # ckpt-30 failed once and was retried at once (progress was made); ckpt-40 came at t=60,
    # then 150 s passed without a new checkpoint.
    assert fake.now == pytest.approx(60 + 150)


def test_watch_skips_already_evaluated_and_gives_up(tmp_path):
    d = str(tmp_path)
    p1 = _write_tf2(os.path.join(d, "ckpt-1"), step=1)
    p2 = _write_tf2(os.path.join(d, "ckpt-2"), step=2)
    calls = []

    def evaluate(prefix):
        calls.append(os.path.basename(prefix))
        raise tf.errors.DataLossError(None, None, "corrupt record")

    fake = _FakeTime()
    stats = cw.watch(d, evaluate, interval_secs=5, timeout_secs=12, already_evaluated=[p1],
                     max_retries=2, sleep=fake.sleep, clock=fake.clock)
    assert calls == ["ckpt-2", "ckpt-2"]
    assert stats.failed == [os.path.abspath(p2)] and stats.timed_out


def test_watch_waits_for_missing_directory(tmp_path):
    d = str(tmp_path / "later")

    def later(now):
        if now >= 10 and not os.path.isdir(d):
            os.makedirs(d)
            _write_tf2(os.path.join(d, "ckpt-1"), step=1)

    fake = _FakeTime(later)
    seen = []
    stats = cw.watch(d, seen.append, interval_secs=10, timeout_secs=25, sleep=fake.sleep,
                     clock=fake.clock)
    assert [os.path.basename(p) for p in seen] == ["ckpt-1"] and stats.timed_out
    shutil.rmtree(d)
