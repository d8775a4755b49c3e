"""tf_convert_data.py and datasets.pascalvoc_to_tfrecords: the script in a subprocess, every
bad-input case, atomic output (failure and interruption leave no shard), determinism."""
from __future__ import annotations

import filecmp
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from PIL import Image

from datasets import pascalvoc_to_tfrecords as converter
from datasets import tfrecords
from tests import voc_fixtures
from tests.scripts import ROOT, error_lines, run_script, script_env

SCRIPT = os.path.join(ROOT, "tf_convert_data.py")


def _run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_script("tf_convert_data.py", *args, timeout=timeout)


def _our_lines(stderr: str) -> list[str]:
    """stderr lines written by the script (TF's own start-up lines are left out)."""
    return error_lines(stderr, SCRIPT)


def _shard_names(out_dir) -> list[str]:
    return sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []


def _ids_in(files) -> list[str]:
    return [tf.train.Example.FromString(r.numpy()).features.feature["image/filename"]
            .bytes_list.value[0].decode() for r in tf.data.TFRecordDataset(sorted(files))]


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory):
    return voc_fixtures.make_voc_dataset(tmp_path_factory.mktemp("small") / "VOC2007",
                                         num_images=5, seed=11)


@pytest.mark.slow
def test_script_round_trip_and_byte_identical_rerun(small_voc, tmp_path):
    """The real script converts (1 worker, trailing '/'); the library with 2 workers and again
    with 1 worker writes byte-identical shards; the script's summary is printed."""
    out_script = tmp_path / "script"
    result = _run_script("--dataset_name=pascalvoc", f"--dataset_dir={small_voc.root}/",
                         "--output_name=voc_2007_train", f"--output_dir={out_script}",
                         "--samples_per_shard=6", "--num_workers=1")
    assert result.returncode == 0, result.stderr
    assert f"Wrote {len(small_voc.images)} images" in result.stdout
    assert "Skipped 0 image(s)." in result.stdout
    assert "<size> says" in result.stderr  # the size_mismatch warning is logged
    n_shards = (len(small_voc.images) + 5) // 6
    assert _shard_names(out_script) == [f"voc_2007_train_{i:03d}.tfrecord" for i in range(n_shards)]
    for workers in (2, 1):
        out = tmp_path / f"lib{workers}"
        converter.convert_voc(small_voc.root, str(out), "voc_2007_train", samples_per_shard=6,
                              num_workers=workers)
        assert _shard_names(out) == _shard_names(out_script)
        match, mismatch, errors = filecmp.cmpfiles(out_script, out, _shard_names(out), shallow=False)
        assert not mismatch and not errors and len(match) == n_shards
    assert _ids_in(tf.io.gfile.glob(str(out_script / "*.tfrecord"))) == small_voc.ids


@pytest.mark.slow
def test_script_data_error_exit_1_one_line(small_voc, tmp_path):
    root = tmp_path / "VOC"
    fx = voc_fixtures.make_voc_dataset(root, num_images=2, seed=2, odd_cases=False)
    bad = voc_fixtures.add_bad_example(fx.root, "xmin_ge_xmax")
    out = tmp_path / "out"
    result = _run_script(f"--dataset_dir={fx.root}", f"--output_dir={out}", "--output_name=x")
    assert result.returncode == 1, result.stderr
    lines = _our_lines(result.stderr)
    assert len(lines) == 1 and f"{bad.path}: object 1 'aeroplane': empty or inverted box" in lines[0]
    assert "Traceback" not in result.stderr
    assert _shard_names(out) == []  # the output folder is left empty, no temp folder either


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--output_name=x"], "--dataset_dir must have a value"),
    (["--dataset_dir=/nonexistent/VOC2007"], "--dataset_dir=/nonexistent/VOC2007: no such folder"),
    (["--dataset_dir={root}", "--dataset_name=imagenet"], "--dataset_name=imagenet is unknown"),
    (["--dataset_dir={root}", "--samples_per_shard=0"], "0 is not a positive integer"),
    (["--dataset_dir={root}", "extra"], "unexpected arguments: extra"),
])
def test_script_usage_errors_exit_2(small_voc, args, message):
    result = _run_script(*[a.format(root=small_voc.root) for a in args])
    assert result.returncode == 2, result.stderr
    lines = _our_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow
def test_script_help_lists_every_flag():
    result = _run_script("--help")
    assert result.returncode == 0
    for flag in ("dataset_name", "dataset_dir", "output_name", "output_dir", "split", "labels",
                 "samples_per_shard", "num_workers", "shuffle", "seed", "overwrite",
                 "skip_errors", "allow_empty"):
        assert f"--{flag}" in result.stdout or f"--[no]{flag}" in result.stdout, flag


# Each bad kind -> the problem the one-line error must state (after "<file>: ").
BAD_MESSAGES = {
    "missing_image": r"image file not found \(also tried .jpeg, .png, .JPG",
    "corrupt_image": r"corrupt or unsupported image \(cannot identify",
    "truncated_image": r"corrupt or unsupported image \(image file is truncated",
    "empty_image": r"empty image file",
    "malformed_xml": r"not valid XML \(no element found",
    "empty_xml": r"empty annotation file",
    "no_objects": r"no <object> in the annotation; pass --allow_empty",
    "missing_name": r"object 1 has no <name>",
    "missing_bndbox": r"object 1 'aeroplane' has no <bndbox>",
    "missing_coord": r"object 1 'aeroplane': <bndbox> has no <xmax>",
    "bad_number": r"object 1 'aeroplane': <ymin> is 'six', not a number",
    "unknown_class": r"object 1 'unicorn': unknown class 'unicorn' \(known: aeroplane, bicycle",
    "box_outside": r"object 1 'aeroplane': box \(xmin 5, ymin 6, xmax 74, ymax 30\) lies outside the 64x48 image",
    "xmin_ge_xmax": r"object 1 'aeroplane': empty or inverted box \(xmin 40, xmax 40",
    "bad_difficult": r"object 1 'aeroplane': <difficult> is '2', expected 0 or 1",
}


def test_every_bad_kind_has_a_message():
    assert set(BAD_MESSAGES) == set(voc_fixtures.BAD_KINDS)


@pytest.mark.parametrize("kind", voc_fixtures.BAD_KINDS)
def test_bad_input_stops_with_one_line_and_writes_nothing(tmp_path, kind):
    fx = voc_fixtures.make_voc_dataset(tmp_path / "VOC", num_images=3, seed=5, odd_cases=False)
    bad = voc_fixtures.add_bad_example(fx.root, kind, image_id="000002b")  # sorts in the middle
    out = tmp_path / "out"
    workers = 2 if kind in ("truncated_image", "unknown_class") else 1  # errors through the pool too
    with pytest.raises(converter.DataError) as info:
        converter.convert_voc(fx.root, str(out), "voc_2007_train", samples_per_shard=1,
                              num_workers=workers)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(bad.path + ": "), text
    assert re.search(BAD_MESSAGES[kind], info.value.problem), text
    assert _shard_names(out) == []  # no final shard and no temporary folder left behind


def test_skip_errors_skips_logs_and_counts(tmp_path, caplog):
    fx = voc_fixtures.make_voc_dataset(tmp_path / "VOC", num_images=4, seed=6, odd_cases=False)
    bads = [voc_fixtures.add_bad_example(fx.root, k) for k in ("truncated_image", "unknown_class")]
    out = tmp_path / "out"
    summary = converter.convert_voc(fx.root, str(out), "voc", skip_errors=True, num_workers=2)
    assert summary.num_images == 4 and len(summary.skipped) == 2
    assert sorted(s.split(": ")[0] for s in summary.skipped) == sorted(b.path for b in bads)
    assert "Skipped 2 image(s)." in summary.to_text()
    assert sum("skipping" in r.message for r in caplog.records) == 2
    assert _ids_in(tf.io.gfile.glob(str(out / "*.tfrecord"))) == fx.ids


def test_allow_empty_keeps_images_without_objects(tmp_path):
    fx = voc_fixtures.make_voc_dataset(tmp_path / "VOC", num_images=2, seed=7, odd_cases=False)
    bad = voc_fixtures.add_bad_example(fx.root, "no_objects")
    out = tmp_path / "out"
    summary = converter.convert_voc(fx.root, str(out), "voc", allow_empty=True, num_workers=1)
    assert summary.num_images == 3
    for ex in tfrecords.read_tfrecords(sorted(tf.io.gfile.glob(str(out / "*.tfrecord")))):
        if ex["filename"].numpy().decode() == bad.image_id:
            assert ex["object/bbox"].shape == (0, 4) and ex["object/label"].shape == (0,)
            assert ex["object/difficult"].shape == (0,)


def test_unsafe_xml_is_refused(tmp_path):
    fx = voc_fixtures.make_voc_dataset(tmp_path / "VOC", num_images=1, seed=8, odd_cases=False)
    xml_path = fx.images[0].xml_path
    with open(xml_path, "w") as f:  # entity expansion ("billion laughs")
        f.write('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">'
                '<!ENTITY y "&x;&x;&x;&x;">]><annotation><filename>&y;</filename></annotation>')
    with pytest.raises(converter.DataError, match=r"000001.xml: refused unsafe XML \(EntitiesForbidden\)"):
        converter.convert_voc(fx.root, str(tmp_path / "out"), "voc", num_workers=1)


def test_splits_shuffle_and_id_files(small_voc, tmp_path):
    out = tmp_path / "out"
    converter.convert_voc(small_voc.root, str(out), "voc_2007_val", split="val", num_workers=1)
    assert _ids_in(tf.io.gfile.glob(str(out / "voc_2007_val_*"))) == small_voc.splits["val"]
    converter.convert_voc(small_voc.root, str(out), "shuf", shuffle=True, seed=3, num_workers=2)
    want = list(small_voc.ids)
    random.Random(3).shuffle(want)
    assert _ids_in(tf.io.gfile.glob(str(out / "shuf_*"))) == want != small_voc.ids
    id_file = tmp_path / "mine.txt"
    id_file.write_text("000003  1\n\n000001 -1\n")  # per-class file layout: first column is the id
    converter.convert_voc(small_voc.root, str(out), "mine", split=str(id_file), num_workers=1)
    assert _ids_in(tf.io.gfile.glob(str(out / "mine_*"))) == ["000003", "000001"]
    with pytest.raises(converter.UsageError, match=r"nope.txt: split file not found \(available splits: train, trainval, val\)"):
        converter.convert_voc(small_voc.root, str(out), "x", split="nope")
    id_file.write_text("000003\n000001\n000003\n")
    with pytest.raises(converter.DataError, match=r"mine.txt: line 3: image id '000003' is listed twice \(first on line 1\)"):
        converter.convert_voc(small_voc.root, str(out), "x", split=str(id_file))
    id_file.write_text("000003\nghost\n")
    with pytest.raises(converter.DataError, match=r"Annotations/ghost.xml: cannot read annotation"):
        converter.convert_voc(small_voc.root, str(out), "x", split=str(id_file), num_workers=1)
    with pytest.raises(converter.UsageError, match="Annotations: no such folder"):
        converter.convert_voc(str(tmp_path), str(out), "x")


def test_overwrite(small_voc, tmp_path):
    out = tmp_path / "out"
    converter.convert_voc(small_voc.root, str(out), "voc_2007_train", samples_per_shard=2, num_workers=1)
    many = _shard_names(out)
    assert len(many) == (len(small_voc.images) + 1) // 2
    before = [open(out / n, "rb").read() for n in many]
    with pytest.raises(converter.UsageError, match="already exist; pass --overwrite"):
        converter.convert_voc(small_voc.root, str(out), "voc_2007_train", num_workers=1)
    assert [open(out / n, "rb").read() for n in many] == before  # untouched
    # Another name sharing the prefix is not "existing output".
    converter.convert_voc(small_voc.root, str(out), "voc_2007", num_workers=1)
    converter.convert_voc(small_voc.root, str(out), "voc_2007_train", num_workers=1, overwrite=True)
    # The new run has one shard; the old shards beyond it are gone, not left to be read.
    assert sorted(n for n in _shard_names(out) if n.startswith("voc_2007_train_")) == ["voc_2007_train_000.tfrecord"]
    assert _ids_in([str(out / "voc_2007_train_000.tfrecord")]) == small_voc.ids


@pytest.fixture
def blocked_conversion(tmp_path):
    """Starts conversions that block mid-way; kills any still running at the end of the test."""
    procs = []

    def start(workers: int):
        fx, out, proc, temp_dir = _start_blocked_conversion(tmp_path, workers, procs)
        return fx, out, proc, temp_dir

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start_blocked_conversion(tmp_path, workers: int, procs: list):
    """A conversion that blocks on a FIFO in place of the 5th image, after writing 2 shards."""
    fx = voc_fixtures.make_voc_dataset(tmp_path / "VOC", num_images=7, seed=4, odd_cases=False)
    fifo = fx.images[4].image_path
    os.remove(fifo)
    os.mkfifo(fifo)  # reading it blocks until someone writes: the run is caught mid-way
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, SCRIPT, f"--dataset_dir={fx.root}",
                             f"--output_dir={out}", "--output_name=voc_2007_train",
                             "--samples_per_shard=2", f"--num_workers={workers}"],
                            cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    procs.append(proc)
    temp_dir = out / f".voc_2007_train.tmp-{proc.pid}"
    deadline = time.monotonic() + 90
    # Shard 000 is complete and 001 open once 2 temporary files exist; the run then blocks
    # on the FIFO before it can open shard 002.
    while not (temp_dir.is_dir() and len(os.listdir(temp_dir)) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the conversion never reached the blocked image"
        time.sleep(0.05)
    return fx, out, proc, temp_dir


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_interrupted_conversion_leaves_nothing(blocked_conversion, sig, workers):
    fx, out, proc, temp_dir = blocked_conversion(workers)
    assert _shard_names(out) == [temp_dir.name]  # only the hidden temporary folder so far
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; no shard was written" in stderr and "Traceback" not in stderr
    assert _shard_names(out) == []


@pytest.mark.slow
def test_killed_conversion_leaves_no_shard_and_is_cleaned_by_the_next_run(blocked_conversion):
    fx, out, proc, temp_dir = blocked_conversion(workers=1)
    proc.kill()  # SIGKILL: no clean-up possible
    proc.communicate(timeout=60)
    # No file a training glob (<name>_*.tfrecord) would read; only the hidden folder remains.
    assert tf.io.gfile.glob(str(out / "voc_2007_train_*.tfrecord")) == []
    assert _shard_names(out) == [temp_dir.name]
    fifo = fx.images[4].image_path
    os.remove(fifo)
    Image.fromarray(fx.images[4].pixels).save(fifo, "JPEG")
    converter.convert_voc(fx.root, str(out), "voc_2007_train", samples_per_shard=2, num_workers=1)
    assert _shard_names(out) == [f"voc_2007_train_{i:03d}.tfrecord" for i in range(4)]
