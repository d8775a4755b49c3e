"""fileio: atomic writes (unique temporary, fsync, cleanup) and checkpoint files."""
import json
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

from fileio import atomic
from fileio import checkpoint_files as cf


def _save_tf1(prefix, step=None):
    names = ["w"] + (["global_step"] if step is not None else [])
    tensors = [tf.constant(np.arange(6, dtype=np.float32))]
    if step is not None:
        tensors.append(tf.constant(step, tf.int64))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    return prefix


def test_atomic_writes_leave_only_the_target(tmp_path):
    path = str(tmp_path / "sub" / "out.json")
    atomic.write_json(path, {"a": 1, "b": [1.5]})
    assert json.load(open(path)) == {"a": 1, "b": [1.5]}
    assert open(path).read().endswith("\n")
    atomic.write_text(path, "new")
    atomic.write_bytes(str(tmp_path / "b.bin"), b"\x00\x01")
    assert open(path).read() == "new"
    assert sorted(os.listdir(tmp_path / "sub")) == ["out.json"]
    assert open(tmp_path / "b.bin", "rb").read() == b"\x00\x01"


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """Not mkstemp's private 0600: label maps and metrics are shared files."""
    umask = os.umask(0o022)
    os.umask(umask)
    plain, atomic_path = str(tmp_path / "plain.txt"), str(tmp_path / "atomic.txt")
    open(plain, "w").close()
    atomic.write_text(atomic_path, "x")
    assert os.stat(atomic_path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    os.chmod(atomic_path, 0o640)
    atomic.write_text(atomic_path, "y")  # a rewrite keeps the file's mode
    assert os.stat(atomic_path).st_mode & 0o777 == 0o640


def test_atomic_write_error_keeps_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "metrics.json")
    atomic.write_text(path, "old")
    with pytest.raises(TypeError):
        atomic.write_json(path, {"x": object()})  # not JSON-serializable: fails mid-way
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("crash while writing")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_concurrent_writers_into_one_folder_do_not_collide(tmp_path):
    """Two writers of one file (two detect.py runs into one folder): each write is whole."""
    path = str(tmp_path / "detections.json")
    errors = []

    def writer(value):
        try:
            for _ in range(50):
                atomic.write_json(path, {"v": value, "pad": "x" * 20000})
        except Exception as err:  # pragma: no cover - the failure we test against
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(v,)) for v in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.load(open(path))["v"] in (0, 1)
    assert os.listdir(tmp_path) == ["detections.json"]


def test_resolve_partly_written_and_rotated_checkpoints(tmp_path):
    d = str(tmp_path)
    p5 = _save_tf1(os.path.join(d, "model.ckpt-5"), 5)
    p10 = _save_tf1(os.path.join(d, "model.ckpt-10"), 10)
    assert cf.latest_checkpoint(d) == os.path.abspath(p10)
    # Partly written: the index of step 20 exists but its data shard does not yet.
    open(os.path.join(d, "model.ckpt-20.index"), "wb").close()
    assert cf.resolve_checkpoint(d) == os.path.abspath(p10)
    with pytest.raises(cf.CheckpointNotFoundError, match="data files missing"):
        cf.resolve_checkpoint(os.path.join(d, "model.ckpt-20"))
    # Rotated away: the state file names a deleted checkpoint; the listing decides.
    cf.write_state_file(p10)
    for name in os.listdir(d):
        if name.startswith("model.ckpt-10."):
            os.remove(os.path.join(d, name))
    assert cf.resolve_checkpoint(d) == os.path.abspath(p5)
    assert cf.latest_checkpoint(d, name="ckpt") is None
    assert cf.latest_checkpoint(d, name="model.ckpt") == os.path.abspath(p5)


def test_state_file_is_read_by_tensorflow(tmp_path):
    d = str(tmp_path)
    p1 = _save_tf1(os.path.join(d, "a.ckpt"))
    p2 = _save_tf1(os.path.join(d, "b.ckpt"))
    cf.write_state_file(p1)
    assert tf.train.latest_checkpoint(d) == p1
    cf.write_state_file(p2)
    assert tf.train.latest_checkpoint(d) == p2
    state = tf.train.get_checkpoint_state(d)
    assert sorted(os.path.basename(p) for p in state.all_model_checkpoint_paths) == ["a.ckpt", "b.ckpt"]


def test_truncated_checkpoint_is_one_error_naming_it(tmp_path):
    prefix = _save_tf1(str(tmp_path / "model.ckpt-3"), 3)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(4)
    with pytest.raises(cf.CheckpointUnavailableError, match="model.ckpt-3") as err:
        reader = cf.open_reader(prefix)
        cf.read_tensor(reader, prefix, "w")
    assert "\n" not in str(err.value)
    with open(prefix + ".index", "wb") as f:
        f.write(b"not an index")
    with pytest.raises(cf.CheckpointUnavailableError, match="model.ckpt-3: cannot read"):
        cf.read_global_step(prefix)


def test_atomic_path_for_writers_that_need_a_name(tmp_path):
    target = str(tmp_path / "out" / "clip.mp4")
    with atomic.atomic_path(target) as tmp:
        assert tmp.endswith(".mp4") and os.path.dirname(tmp) == os.path.dirname(target)
        with open(tmp, "wb") as f:
            f.write(b"video")
        assert not os.path.exists(target)
    assert open(target, "rb").read() == b"video"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("writer failed")
    assert open(target, "rb").read() == b"video"  # untouched
    assert sorted(os.listdir(tmp_path / "out")) == ["clip.mp4"]  # no temporary left


def test_staging_directory_and_move_into_place(tmp_path):
    dst = str(tmp_path / "export")
    with atomic.staging_directory(dst) as stage:
        assert os.path.dirname(stage) == str(tmp_path) and os.path.isdir(stage)
        os.makedirs(os.path.join(stage, "model"))
        open(os.path.join(stage, "model", "a"), "w").write("1")
        open(os.path.join(stage, "file.txt"), "w").write("new")
        os.makedirs(dst)
        os.makedirs(os.path.join(dst, "model"))
        open(os.path.join(dst, "model", "old"), "w").write("0")
        atomic.move_into_place(os.path.join(stage, "model"), os.path.join(dst, "model"))
        atomic.move_into_place(os.path.join(stage, "file.txt"), os.path.join(dst, "file.txt"))
        left = stage
    assert not os.path.exists(left)  # the staging folder is gone
    assert sorted(os.listdir(os.path.join(dst, "model"))) == ["a"]  # replaced, not merged
    assert open(os.path.join(dst, "file.txt")).read() == "new"
    assert sorted(os.listdir(tmp_path)) == ["export"]  # nothing aside left behind
    with pytest.raises(ValueError):
        with atomic.staging_directory(dst) as stage:
            raise ValueError("conversion failed")
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_atomic_path_gives_new_files_the_usual_mode(tmp_path):
    target = str(tmp_path / "clip.avi")
    with atomic.atomic_path(target) as tmp:
        open(tmp, "wb").write(b"x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
