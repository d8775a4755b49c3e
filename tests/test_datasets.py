"""datasets: round trip of generated VOC folders through the converter and the factory's reader.

Every test works on real files: generated JPEG/PNG images and XML (tests/voc_fixtures.py),
real TFRecord shards, read back through tf.data.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from datasets import dataset_factory
from datasets import pascalvoc_common
from datasets import pascalvoc_to_tfrecords as converter
from datasets import tfrecords
from tests import voc_fixtures


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """6 regular images + one per odd case, converted once (2 workers, 4 per shard)."""
    base = tmp_path_factory.mktemp("voc")
    fx = voc_fixtures.make_voc_dataset(base / "VOC2007", num_images=6, seed=3)
    out = str(base / "tfrecords")
    summary = converter.convert_voc(fx.root + "/", out, "voc_2007_train", samples_per_shard=4,
                                    num_workers=2)
    return fx, out, summary


def _records(files):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _feature(example, key):
    f = example.features.feature[key]
    kind = f.WhichOneof("kind")
    return list(getattr(f, kind).value) if kind else []


def test_summary_and_shards(voc):
    fx, out, summary = voc
    n = len(fx.images)
    assert summary.num_images == n and not summary.skipped
    assert summary.num_objects == sum(len(im.objects) for im in fx.images)
    # 20 images at 4 per shard -> 5 shards named like the original (_%03d).
    assert sorted(os.listdir(out)) == [f"voc_2007_train_{i:03d}.tfrecord" for i in range((n + 3) // 4)]
    per_class = {}
    for im in fx.images:
        for o in im.objects:
            per_class[o.name] = per_class.get(o.name, 0) + 1
    assert summary.objects_per_class == per_class
    assert summary.num_warnings == 1  # the size_mismatch image
    assert summary.num_reencoded == 1  # the CMYK JPEG


def test_every_stored_field(voc):
    """Raw Example fields: the original keys, values from the XML and the image itself."""
    fx, out, _ = voc
    examples = _records(sorted(tf.io.gfile.glob(os.path.join(out, "*.tfrecord"))))
    assert [e.features.feature["image/filename"].bytes_list.value[0].decode() for e in examples] == fx.ids
    for ex in examples:
        im = fx.by_id[_feature(ex, "image/filename")[0].decode()]
        assert set(tfrecords.ORIGINAL_KEYS) <= set(ex.features.feature)
        encoded = _feature(ex, "image/encoded")[0]
        assert _feature(ex, "image/format") == [im.stored_format.encode()]
        if "cmyk_jpeg" in im.cases:
            # Re-encoded: a PNG of PIL's RGB conversion, pixel for pixel.
            assert encoded.startswith(b"\x89PNG")
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))),
                                          im.pixels)
        else:
            with open(im.image_path, "rb") as f:
                assert encoded == f.read(), im.cases  # the original bytes, as is
        # Sizes from the image (the size_mismatch XML says otherwise).
        assert _feature(ex, "image/height") == [im.height]
        assert _feature(ex, "image/width") == [im.width]
        assert _feature(ex, "image/channels") == [3]
        assert _feature(ex, "image/shape") == [im.height, im.width, 3]
        want = im.bboxes_normalized()
        for col, key in enumerate(("ymin", "xmin", "ymax", "xmax")):
            np.testing.assert_array_equal(
                np.array(_feature(ex, f"image/object/bbox/{key}"), np.float32), want[:, col])
        assert _feature(ex, "image/object/bbox/label") == list(im.labels)
        assert _feature(ex, "image/object/bbox/label_text") == [o.name.encode() for o in im.objects]
        assert _feature(ex, "image/object/bbox/difficult") == list(im.difficult)
        assert _feature(ex, "image/object/bbox/truncated") == list(im.truncated)


def test_odd_cases_hand_values(voc):
    """The odd cases carry what the fixture wrote, checked by hand-readable values."""
    fx, _, _ = voc
    assert fx.by_id[fx.ids_with_case("difficult")[0]].difficult.tolist() == [1, 0]
    assert fx.by_id[fx.ids_with_case("truncated")[0]].truncated.tolist() == [0, 1]
    odd = fx.by_id[fx.ids_with_case("odd_whitespace")[0]]
    assert (odd.difficult.tolist(), odd.truncated.tolist()) == ([1, 0], [0, 1])
    border = fx.by_id[fx.ids_with_case("border_boxes")[0]]
    # (1, 1, W, H) / size and (0, 0, W//2, H) / size: touching the borders is valid.
    np.testing.assert_allclose(border.bboxes_normalized()[:, 2:], [[1.0, 1.0], [1.0, (border.width // 2) / border.width]])
    assert fx.by_id[fx.ids_with_case("grayscale_jpeg")[0]].file_format == "JPEG"
    assert fx.by_id[fx.ids_with_case("png_named_jpg")[0]].image_path.endswith(".jpg")
    assert fx.by_id[fx.ids_with_case("cmyk_jpeg")[0]].file_format == "JPEG/CMYK"
    parts = fx.by_id[fx.ids_with_case("person_parts")[0]]
    assert parts.objects[0].name == "person" and len(parts.objects) == 2


def test_reader_yields_every_field(voc):
    """dataset_factory -> .read(): every field equals what the fixture wrote."""
    fx, out, _ = voc
    spec = dataset_factory.get_dataset("pascalvoc_2007", "train", out)
    assert spec.num_samples == len(fx.images)  # counted from the files
    assert spec.num_classes == 21 and spec.labels_to_names[1] == "aeroplane"
    assert spec.labels_to_names[20] == "tvmonitor" and spec.labels_to_names[0] == "background"
    seen = []
    for ex in spec.read(num_parallel_reads=1):  # 1 reader: plain file order
        image_id = ex["filename"].numpy().decode()
        seen.append(image_id)
        im = fx.by_id[image_id]
        image = ex["image"].numpy()
        assert image.dtype == np.uint8 and image.shape == (im.height, im.width, 3), im.cases
        np.testing.assert_array_equal(ex["shape"].numpy(), [im.height, im.width, 3])
        if im.exact_pixels:  # PNG (RGB, RGBA, palette) and re-encoded CMYK: lossless
            np.testing.assert_array_equal(image, im.pixels, err_msg=str(im.cases))
        else:  # JPEG: TF's and PIL's decoders differ by a few levels at most
            diff = np.abs(image.astype(int) - im.pixels.astype(int))
            assert diff.max() <= 12 and diff.mean() < 2.0, (im.cases, diff.max(), diff.mean())
            with open(im.image_path, "rb") as f:
                np.testing.assert_array_equal(image, tf.io.decode_jpeg(f.read(), channels=3).numpy())
        if "grayscale_jpeg" in im.cases:
            assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
        assert ex["object/bbox"].dtype == tf.float32
        np.testing.assert_array_equal(ex["object/bbox"].numpy(), im.bboxes_normalized())
        np.testing.assert_array_equal(ex["object/label"].numpy(), im.labels)
        np.testing.assert_array_equal(ex["object/difficult"].numpy(), im.difficult)
        np.testing.assert_array_equal(ex["object/truncated"].numpy(), im.truncated)
    assert seen == fx.ids


def test_parallel_read_order_shuffle_and_repeat(voc):
    fx, out, _ = voc
    spec = dataset_factory.get_dataset("pascalvoc_2007", "train", out)

    def ids(ds):
        return [ex["filename"].numpy().decode() for ex in ds]

    parallel = ids(spec.read())  # interleaved over 5 shards: every example once, fixed order
    assert sorted(parallel) == fx.ids and parallel == ids(spec.read())
    # Round-robin one record at a time over the 5 shards of 4: 1st of each shard, then 2nd...
    shards = [fx.ids[i:i + 4] for i in range(0, len(fx.ids), 4)]
    assert parallel[:5] == [s[0] for s in shards]
    a, b = ids(spec.read(shuffle=True, seed=7)), ids(spec.read(shuffle=True, seed=7))
    assert a == b and sorted(a) == fx.ids and a != fx.ids
    twice = ids(spec.read(repeat=True).take(2 * len(fx.ids)))
    assert sorted(twice) == sorted(fx.ids * 2)


def test_original_converter_records_read(tmp_path):
    """Records shaped like the original converter's: no image/filename, XML sizes, difficult 0,
    and a hand-made one without difficult/truncated at all: they read, difficult as zeros."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    bboxes = [(0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 1.0)]

    def original_example(with_flags):
        f = {
            "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[30])),
            "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[40])),
            "image/channels": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
            "image/shape": tf.train.Feature(int64_list=tf.train.Int64List(value=[30, 40, 3])),
            "image/object/bbox/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[12, 15])),
            "image/object/bbox/label_text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"dog", b"person"])),
            "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        }
        for i, key in enumerate(("ymin", "xmin", "ymax", "xmax")):
            f[f"image/object/bbox/{key}"] = tf.train.Feature(
                float_list=tf.train.FloatList(value=[b[i] for b in bboxes]))
        if with_flags:
            for key in ("difficult", "truncated"):
                f[f"image/object/bbox/{key}"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[0, 0]))
        return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

    path = str(tmp_path / "voc_2007_test_000.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(original_example(True))
        w.write(original_example(False))
    spec = dataset_factory.get_dataset("pascalvoc_2007", "test", str(tmp_path))
    assert spec.num_samples == 2
    for ex in spec.read(num_parallel_reads=1):
        np.testing.assert_array_equal(ex["image"].numpy(), tf.io.decode_jpeg(jpeg).numpy())
        np.testing.assert_allclose(ex["object/bbox"].numpy(), bboxes)
        np.testing.assert_array_equal(ex["object/label"].numpy(), [12, 15])
        np.testing.assert_array_equal(ex["object/difficult"].numpy(), [0, 0])
        np.testing.assert_array_equal(ex["object/truncated"].numpy(), [0, 0])
        assert ex["filename"].numpy() == b""


def test_our_records_parse_with_the_original_decoder_spec(voc):
    """The original's keys_to_features (pascalvoc_common.get_split): fixed-size image fields
    and VarLen object fields. Our records must parse with it, values intact."""
    fx, out, _ = voc
    original_spec = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
        "image/height": tf.io.FixedLenFeature([1], tf.int64),
        "image/width": tf.io.FixedLenFeature([1], tf.int64),
        "image/channels": tf.io.FixedLenFeature([1], tf.int64),
        "image/shape": tf.io.FixedLenFeature([3], tf.int64),
        "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/label": tf.io.VarLenFeature(tf.int64),
        "image/object/bbox/difficult": tf.io.VarLenFeature(tf.int64),
        "image/object/bbox/truncated": tf.io.VarLenFeature(tf.int64),
    }
    files = sorted(tf.io.gfile.glob(os.path.join(out, "*.tfrecord")))
    for serialized, im in zip(tf.data.TFRecordDataset(files), fx.images):
        parsed = tf.io.parse_single_example(serialized, original_spec)
        assert parsed["image/shape"].numpy().tolist() == [im.height, im.width, 3]
        np.testing.assert_array_equal(tf.sparse.to_dense(parsed["image/object/bbox/label"]).numpy(), im.labels)
        np.testing.assert_array_equal(tf.sparse.to_dense(parsed["image/object/bbox/difficult"]).numpy(), im.difficult)
        # The original decodes with decode_jpeg for JPEG and sniffs other formats (PNG).
        image = tf.io.decode_image(parsed["image/encoded"], channels=3)
        assert image.shape == (im.height, im.width, 3)


def test_factory_names_patterns_and_sizes(tmp_path, voc):
    fx, out, _ = voc
    with pytest.raises(ValueError, match="pascalvoc_2007, pascalvoc_2012, pascalvoc_0712, voc"):
        dataset_factory.get_dataset("imagenet", "train", out)
    # No files: the original's split sizes; read() names the pattern.
    empty = str(tmp_path / "none")
    assert dataset_factory.get_dataset("pascalvoc_2007", "train", empty).num_samples == 5011
    assert dataset_factory.get_dataset("pascalvoc_2007", "test", empty).num_samples == 4952
    assert dataset_factory.get_dataset("pascalvoc_2012", "train", empty).num_samples == 17125
    assert dataset_factory.get_dataset("pascalvoc_0712", "trainval", empty).num_samples == 5011 + 11540
    spec = dataset_factory.get_dataset("pascalvoc_2007", "test", empty)
    assert spec.file_pattern == os.path.join(empty, "voc_2007_test_*.tfrecord")
    with pytest.raises(FileNotFoundError, match="voc_2007_test_"):
        spec.read()
    with pytest.raises(ValueError, match="pass num_samples"):
        dataset_factory.get_dataset("voc", "train", empty)
    assert dataset_factory.get_dataset("voc", "train", empty, num_samples=7).num_samples == 7
    # An explicit pattern with %s, relative to dataset_dir.
    spec = dataset_factory.get_dataset("pascalvoc_2007", "train", out, file_pattern="voc_2007_%s_00[01].tfrecord")
    assert spec.num_samples == 8 and len(spec.files()) == 2


def test_voc0712_reads_both_patterns(tmp_path, voc):
    fx, out, _ = voc
    fx12 = voc_fixtures.make_voc_dataset(tmp_path / "VOC2012", num_images=3, seed=9, odd_cases=False)
    converter.convert_voc(fx.root, str(tmp_path), "voc_2007_trainval", num_workers=1)
    converter.convert_voc(fx12.root, str(tmp_path), "voc_2012_trainval", num_workers=1)
    spec = dataset_factory.get_dataset("pascalvoc_0712", "trainval", str(tmp_path))
    assert spec.file_patterns == (os.path.join(str(tmp_path), "voc_2007_trainval_*.tfrecord"),
                                  os.path.join(str(tmp_path), "voc_2012_trainval_*.tfrecord"))
    assert spec.num_samples == len(fx.images) + 3
    names = sorted(ex["filename"].numpy().decode() for ex in spec.read())
    assert names == sorted(fx.ids + fx12.ids)


def test_custom_dataset_with_label_map(tmp_path):
    classes = ("apple", "banana", "cherry")
    fx = voc_fixtures.make_voc_dataset(tmp_path / "fruit", num_images=5, seed=1, classes=classes,
                                       odd_cases=["difficult", "png_named_jpg"])
    labels = voc_fixtures.write_label_map(tmp_path / "labels.txt", classes)
    assert pascalvoc_common.load_label_map(labels) == classes
    out = str(tmp_path / "records")
    converter.convert_voc(fx.root, out, "fruit_train", class_names=classes, num_workers=1)
    spec = dataset_factory.get_dataset("voc", "train", out, file_pattern="fruit_%s_*.tfrecord",
                                       labels_file=labels)
    assert spec.num_samples == 7 and spec.num_classes == 4
    assert spec.labels_to_names == {0: "background", 1: "apple", 2: "banana", 3: "cherry"}
    got = {ex["filename"].numpy().decode(): ex["object/label"].numpy().tolist() for ex in spec.read()}
    assert got == {im.image_id: im.labels.tolist() for im in fx.images}
    # A VOC class in a fruit dataset is an unknown class.
    with pytest.raises(converter.DataError, match=r"000001.xml: object 1 '\w+': unknown class '(apple|banana|cherry)'"):
        converter.convert_voc(fx.root, str(tmp_path / "x"), "voc", num_workers=1)


@pytest.mark.parametrize("content, message", [
    ("cat\ndog\ncat\n", r"labels.txt:3: duplicate class name 'cat' \(first on line 1\)"),
    ("background\ncat\n", r"labels.txt:1: 'background' is the background"),
    ("# only a comment\n\n", "no class names"),
])
def test_label_map_errors(tmp_path, content, message):
    path = tmp_path / "labels.txt"
    path.write_text(content)
    with pytest.raises(pascalvoc_common.LabelMapError, match=message):
        pascalvoc_common.load_label_map(str(path))
    with pytest.raises(pascalvoc_common.LabelMapError, match="not found"):
        pascalvoc_common.load_label_map(str(tmp_path / "missing.txt"))


def test_label_map_format(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\ufeff# comment\n  cat \n\nhot dog\n")
    assert pascalvoc_common.load_label_map(str(path)) == ("cat", "hot dog")
    assert pascalvoc_common.names_to_labels(pascalvoc_common.VOC_CLASSES)["tvmonitor"] == 20
    assert pascalvoc_common.VOC_LABELS["person"][0] == 15 == pascalvoc_common.VOC_CLASSES.index("person") + 1


def test_count_records_matches_tf_and_rejects_truncated(tmp_path, voc):
    _, out, _ = voc
    files = sorted(tf.io.gfile.glob(os.path.join(out, "*.tfrecord")))
    for path in files:
        assert tfrecords.count_records([path]) == sum(1 for _ in tf.data.TFRecordDataset(path))
    cut = tmp_path / "cut.tfrecord"
    data = open(files[0], "rb").read()
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="cut.tfrecord: truncated"):
        tfrecords.count_records([str(cut)])
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    assert tfrecords.count_records([str(empty)]) == 0


def test_decode_example_in_tf_function_and_graph_map(voc):
    """decode_example runs eagerly and inside tf.function with unknown shapes."""
    _, out, _ = voc
    files = sorted(tf.io.gfile.glob(os.path.join(out, "*.tfrecord")))
    serialized = next(iter(tf.data.TFRecordDataset(files[0])))
    eager = tfrecords.decode_example(serialized)
    graph = tf.function(tfrecords.decode_example)(serialized)
    for key in eager:
        np.testing.assert_array_equal(eager[key].numpy(), graph[key].numpy())
