"""COCO data end to end: the sample generator's COCO JSON, the converter (library and
tf_convert_data.py), the label map, the reader's COCO keys, the factory's COCO datasets, bad
inputs, crowd boxes through the training pipeline, the caffe_coco recipe and its anchors, and a
few training steps on the converted sample.

Everything runs on real files: JPEGs drawn by datasets.sample_data, the JSON it writes (also
loaded with pycocotools, the format's own tool), TFRecords read back with TensorFlow.
"""
from __future__ import annotations

import filecmp
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO

from datasets import coco_common, coco_to_tfrecords, dataset_factory, pascalvoc_to_tfrecords
from datasets import sample_data, shard_writer, tfrecords
from engine import recipes
from engine.train_config import TrainConfig, preprocessing_options
from nets import ssd_params
from preprocessing import pipeline, preprocessing_factory
from tests.scripts import error_lines, run_script

IMAGE_SIZE = (96, 128)
SEED = 5


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small sample in both layouts (12 trainval + 4 test images, + 1 empty image each),
    its trainval JSON converted by the library (2 workers, shards of 5)."""
    root = tmp_path_factory.mktemp("coco_sample")
    data = root / "data"
    stats = sample_data.generate(str(data), num_trainval=12, num_test=4, seed=SEED,
                                 image_size=IMAGE_SIZE, num_workers=1, coco=True)
    ann = sample_data.coco_annotations_path(str(data), "trainval")
    out = root / "records"
    summary = coco_to_tfrecords.convert_coco(ann, str(data / "JPEGImages"), str(out),
                                             "coco_sample_trainval", samples_per_shard=5,
                                             num_workers=2)
    with open(ann) as f:
        coco = json.load(f)
    return {"root": root, "data": data, "ann": ann, "out": out, "summary": summary,
            "json": coco, "stats": stats}


def _examples(files):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(sorted(files))]


def _shards(out, name="coco_sample_trainval"):
    return sorted(glob.glob(os.path.join(str(out), f"{name}_*.tfrecord")))


# ---------------------------------------------------------------------------------------
# The sample's COCO JSON
# ---------------------------------------------------------------------------------------

def test_sample_json_is_coco_with_crowd_and_empty_images(sample):
    coco = COCO(sample["ann"])  # pycocotools indexes it
    images = coco.dataset["images"]
    names = sorted(im["file_name"] for im in images)
    assert names == sorted([f"trainval_{i:06d}.jpg" for i in range(1, 13)]
                           + ["trainval_crowd_000001.jpg", "trainval_empty_000001.jpg"])
    assert sorted(c["id"] for c in coco.dataset["categories"]) == [2, 5, 6, 9]
    for im in images:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        stem = im["file_name"][:-4]
        if stem.endswith("empty_000001"):
            assert anns == []
        elif "_crowd_" in stem:
            # One crowd region (a cluster of one class), large, plus the image's other objects.
            crowd = [a for a in anns if a["iscrowd"]]
            assert len(crowd) == 1 and crowd[0]["bbox"][2] * crowd[0]["bbox"][3] > 0.1 * 96 * 128
        else:
            # The VOC image's objects; its difficult (tiny) ones are crowd regions.
            num_objects, num_difficult = _voc_objects(sample, stem)
            assert len(anns) == num_objects and sum(a["iscrowd"] for a in anns) == num_difficult
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and 0 < a["area"] <= w * h + 1e-6
            assert 0 <= x and x + w <= IMAGE_SIZE[1] + 1e-6 and 0 <= y and y + h <= IMAGE_SIZE[0] + 1e-6
    stats = sample["stats"]
    assert stats["coco_images"] == 12 + 4 + 4 and stats["empty"] == 2
    assert stats["crowd"] == stats["difficult"] + 2


def _voc_objects(sample, image_id):
    text = (sample["data"] / "Annotations" / f"{image_id}.xml").read_text()
    return text.count("<object>"), text.count("<difficult>1</difficult>")


def test_voc_files_do_not_depend_on_the_coco_option(sample, tmp_path):
    voc_only = tmp_path / "voc"
    sample_data.generate(str(voc_only), num_trainval=12, num_test=4, seed=SEED,
                         image_size=IMAGE_SIZE, num_workers=1)
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        names = sorted(os.listdir(voc_only / sub))
        _, mismatch, errors = filecmp.cmpfiles(voc_only / sub, sample["data"] / sub, names,
                                               shallow=False)
        assert not mismatch and not errors, sub
    extra = set(os.listdir(sample["data"] / "JPEGImages")) - set(os.listdir(voc_only / "JPEGImages"))
    assert extra == {"trainval_empty_000001.jpg", "test_empty_000001.jpg",
                     "trainval_crowd_000001.jpg", "test_crowd_000001.jpg"}
    assert not os.path.exists(voc_only / "annotations")


# ---------------------------------------------------------------------------------------
# Conversion and reading back
# ---------------------------------------------------------------------------------------

def test_records_hold_every_image_with_its_annotations(sample):
    coco = sample["json"]
    files = _shards(sample["out"])
    assert [os.path.basename(f) for f in files] == [f"coco_sample_trainval_{i:03d}.tfrecord"
                                                     for i in range(3)]
    examples = _examples(files)
    images = sorted(coco["images"], key=lambda im: im["id"])
    assert len(examples) == len(images)
    cat_to_label = {2: 1, 5: 2, 6: 3, 9: 4}
    for ex, im in zip(examples, images):
        f = ex.features.feature
        for key in tfrecords.ORIGINAL_KEYS + tfrecords.COCO_KEYS:
            assert key in f, key
        assert f[tfrecords.KEY_COCO_ID].int64_list.value == [im["id"]]
        assert f[tfrecords.KEY_FILENAME].bytes_list.value[0].decode() == im["file_name"]
        with open(sample["data"] / "JPEGImages" / im["file_name"], "rb") as jpg:
            assert f[tfrecords.KEY_ENCODED].bytes_list.value[0] == jpg.read()  # as is
        assert f[tfrecords.KEY_FORMAT].bytes_list.value == [b"JPEG"]
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        h, w = IMAGE_SIZE
        want = np.array([[a["bbox"][1] / h, a["bbox"][0] / w, (a["bbox"][1] + a["bbox"][3]) / h,
                          (a["bbox"][0] + a["bbox"][2]) / w] for a in anns], np.float32).reshape(-1, 4)
        got = np.stack([f[k].float_list.value for k in (tfrecords.KEY_YMIN, tfrecords.KEY_XMIN,
                                                         tfrecords.KEY_YMAX, tfrecords.KEY_XMAX)],
                       axis=1).reshape(-1, 4)
        np.testing.assert_array_equal(got, want)
        assert list(f[tfrecords.KEY_LABEL].int64_list.value) == [cat_to_label[a["category_id"]]
                                                                  for a in anns]
        names = {c["id"]: c["name"] for c in coco["categories"]}
        assert [t.decode() for t in f[tfrecords.KEY_LABEL_TEXT].bytes_list.value] == \
            [names[a["category_id"]] for a in anns]
        assert list(f[tfrecords.KEY_ISCROWD].int64_list.value) == [a["iscrowd"] for a in anns]
        np.testing.assert_array_equal(f[tfrecords.KEY_AREA].float_list.value,
                                      np.float32([a["area"] for a in anns]))
        assert list(f[tfrecords.KEY_DIFFICULT].int64_list.value) == [0] * len(anns)
        assert list(f[tfrecords.KEY_TRUNCATED].int64_list.value) == [0] * len(anns)


def test_reader_and_factory_give_the_coco_keys(sample):
    spec = dataset_factory.get_dataset("coco", "coco_sample_trainval", str(sample["out"]))
    assert spec.num_samples == 14 and spec.num_classes == 5
    assert spec.class_names == ("circle", "square", "triangle", "star")
    assert spec.label_to_category_id == {1: 2, 2: 5, 3: 6, 4: 9}
    assert spec.default_metric == "coco"
    assert spec.label_map_file == str(sample["out"] / "coco_sample_trainval_label_map.json")
    coco = sample["json"]
    by_id = {im["id"]: im for im in coco["images"]}
    seen = []
    for ex in spec.read(num_parallel_reads=1):
        coco_id = int(ex["coco_id"])
        seen.append(coco_id)
        anns = [a for a in coco["annotations"] if a["image_id"] == coco_id]
        assert ex["filename"].numpy().decode() == by_id[coco_id]["file_name"]
        assert ex["image"].shape == (*IMAGE_SIZE, 3)
        assert ex["object/iscrowd"].numpy().tolist() == [a["iscrowd"] for a in anns]
        np.testing.assert_array_equal(ex["object/area"].numpy(), np.float32([a["area"] for a in anns]))
        assert ex["object/bbox"].shape == (len(anns), 4)
    assert sorted(seen) == sorted(by_id) and len(seen) == 14
    assert min(len([a for a in coco["annotations"] if a["image_id"] == i]) for i in seen) == 0


def test_label_map_file(sample):
    path = sample["out"] / "coco_sample_trainval_label_map.json"
    assert json.loads(path.read_text()) == {"labels": [
        {"label": 1, "name": "circle", "category_id": 2},
        {"label": 2, "name": "square", "category_id": 5},
        {"label": 3, "name": "triangle", "category_id": 6},
        {"label": 4, "name": "star", "category_id": 9}]}
    assert coco_common.load_label_map_json(str(path)).label_to_category_id == {1: 2, 2: 5, 3: 6, 4: 9}
    assert str(path) in sample["summary"].extra_files
    # --labels_file may name it explicitly (another file pattern, no map beside those files).
    spec = dataset_factory.get_dataset("coco", "x", str(sample["out"]),
                                       file_pattern="coco_sample_trainval_00[01].tfrecord",
                                       labels_file=str(path))
    assert spec.num_samples == 10 and spec.label_to_category_id[4] == 9
    with pytest.raises(ValueError, match="no label map beside the shards"):
        dataset_factory.get_dataset("coco", "x", str(sample["out"]),
                                    file_pattern="coco_sample_trainval_00[01].tfrecord")
    # A pattern of the form <prefix>_*.tfrecord finds <prefix>_label_map.json.
    spec = dataset_factory.get_dataset("coco", "x", str(sample["out"]),
                                       file_pattern="coco_sample_trainval_*.tfrecord")
    assert spec.label_map_file == str(path)


def test_label_map_errors_name_the_file(tmp_path):
    cases = {
        "not json": "not valid JSON",
        '{"labels": []}': "expected",
        '{"labels": [{"label": 2, "name": "a", "category_id": 1}]}': "labels must be 1..1",
        '{"labels": [{"label": 1, "name": "a", "category_id": 1}, {"label": 2, "name": "a", '
        '"category_id": 3}]}': "name 'a' is listed twice",
        '{"labels": [{"label": 1, "name": "a"}]}': "entry 0 must have",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"m{i}.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            coco_common.load_label_map_json(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_standard_coco_datasets_and_splits(tmp_path):
    spec = dataset_factory.get_dataset("coco_2017", "val", str(tmp_path))
    assert (spec.num_samples, spec.num_classes, spec.default_metric) == (5000, 81, "coco")
    assert spec.file_pattern == str(tmp_path / "coco_2017_val_*.tfrecord")
    assert spec.labels_to_names[1] == "person" and spec.labels_to_names[80] == "toothbrush"
    assert spec.label_to_category_id[1] == 1 and spec.label_to_category_id[80] == 90
    assert spec.label_to_category_id[12] == 13  # 'stop sign': COCO has no category 12
    assert len(coco_common.COCO_CATEGORIES) == 80
    assert dataset_factory.get_dataset("coco_2017", "train", str(tmp_path)).num_samples == 118287
    sizes = {s: dataset_factory.get_dataset("coco_2014", s, str(tmp_path)).num_samples
             for s in ("train", "val", "minival", "valminusminival", "trainval35k")}
    assert sizes == {"train": 82783, "val": 40504, "minival": 5000, "valminusminival": 35504,
                     "trainval35k": 118287}
    assert sizes["trainval35k"] == sizes["train"] + sizes["valminusminival"]
    assert sizes["val"] == sizes["minival"] + sizes["valminusminival"]
    spec = dataset_factory.get_dataset("coco_2014", "trainval35k", str(tmp_path))
    assert spec.file_pattern == (str(tmp_path / "coco_2014_train_*.tfrecord"),
                                 str(tmp_path / "coco_2014_valminusminival_*.tfrecord"))
    voc = dataset_factory.get_dataset("pascalvoc_2007", "test", str(tmp_path))
    assert voc.label_to_category_id is None and voc.default_metric == "voc"


def test_trainval35k_reads_both_conversions_with_their_label_map(sample, tmp_path):
    ann = sample["ann"]
    images = str(sample["data"] / "JPEGImages")
    for name in ("coco_2014_train", "coco_2014_valminusminival"):
        coco_to_tfrecords.convert_coco(ann, images, str(tmp_path), name, num_workers=1)
    spec = dataset_factory.get_dataset("coco_2014", "trainval35k", str(tmp_path))
    assert spec.num_samples == 28 and spec.class_names[0] == "circle"  # the map beside them
    (tmp_path / "coco_2014_valminusminival_label_map.json").write_bytes(
        coco_common.STANDARD_LABEL_MAP.to_json_bytes())
    with pytest.raises(ValueError, match="are different label maps"):
        dataset_factory.get_dataset("coco_2014", "trainval35k", str(tmp_path))


def test_voc_records_read_with_default_coco_keys(sample, tmp_path):
    pascalvoc_to_tfrecords.convert_voc(str(sample["data"]), str(tmp_path), "voc",
                                       class_names=sample_data.CLASSES, split="test",
                                       num_workers=1)
    raw = _examples(glob.glob(str(tmp_path / "voc_*.tfrecord")))
    assert not any(k in ex.features.feature for ex in raw for k in tfrecords.COCO_KEYS)
    ds = tfrecords.read_tfrecords(sorted(glob.glob(str(tmp_path / "voc_*.tfrecord"))),
                                  num_parallel_reads=1)
    count = 0
    for ex in ds:
        count += 1
        n = ex["object/label"].shape[0]
        assert int(ex["coco_id"]) == -1 and ex["object/iscrowd"].numpy().tolist() == [0] * n
        b = ex["object/bbox"].numpy()
        want = (b[:, 2] - b[:, 0]) * IMAGE_SIZE[0] * (b[:, 3] - b[:, 1]) * IMAGE_SIZE[1]
        np.testing.assert_allclose(ex["object/area"].numpy(), want, rtol=1e-6)
        assert n > 0
    assert count == 4


def test_rerun_is_byte_identical_and_needs_overwrite(sample, tmp_path):
    out = tmp_path / "again"
    coco_to_tfrecords.convert_coco(sample["ann"], str(sample["data"] / "JPEGImages"), str(out),
                                   "coco_sample_trainval", samples_per_shard=5, num_workers=1)
    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(sample["out"]))
    _, mismatch, errors = filecmp.cmpfiles(out, sample["out"], names, shallow=False)
    assert not mismatch and not errors
    with pytest.raises(shard_writer.UsageError, match="already exist; pass --overwrite"):
        coco_to_tfrecords.convert_coco(sample["ann"], str(sample["data"] / "JPEGImages"),
                                       str(out), "coco_sample_trainval", num_workers=1)
    # A label map alone is existing output too.
    for path in _shards(out):
        os.remove(path)
    with pytest.raises(shard_writer.UsageError, match="label_map.json: already exists"):
        coco_to_tfrecords.convert_coco(sample["ann"], str(sample["data"] / "JPEGImages"),
                                       str(out), "coco_sample_trainval", num_workers=1)
    summary = coco_to_tfrecords.convert_coco(sample["ann"], str(sample["data"] / "JPEGImages"),
                                             str(out), "coco_sample_trainval", num_workers=1,
                                             overwrite=True)
    assert summary.num_images == 14 and len(summary.output_files) == 1
    assert sorted(os.listdir(out)) == ["coco_sample_trainval_000.tfrecord",
                                       "coco_sample_trainval_label_map.json"]
    text = summary.to_text()
    assert "crowd" in text and "Skipped 0 image(s)." in text


def test_summary_counts(sample):
    summary = sample["summary"]
    coco = sample["json"]
    assert summary.num_images == 14 and summary.num_objects == len(coco["annotations"])
    assert summary.flag_name == "crowd"
    assert sum(summary.flagged_per_class.values()) == sum(a["iscrowd"] for a in coco["annotations"])
    assert list(summary.objects_per_class) == [n for n in sample_data.CLASSES
                                               if n in summary.objects_per_class]


# ---------------------------------------------------------------------------------------
# Bad input: one line naming the image / annotation id, nothing written; --skip_errors
# ---------------------------------------------------------------------------------------

def _small_coco(sample, tmp_path, edit=None, text=None):
    """A 3-image COCO file made from the sample's first images (ids 1, 2, 3) and its images."""
    coco = json.loads(json.dumps(sample["json"]))
    images = sorted(coco["images"], key=lambda im: im["id"])[:3]
    ids = {im["id"] for im in images}
    anns = [a for a in coco["annotations"] if a["image_id"] in ids]
    data = {"images": images, "annotations": anns, "categories": coco["categories"]}
    if edit:
        edit(data)
    path = tmp_path / "instances_small.json"
    path.write_text(text if text is not None else json.dumps(data))
    return str(path), data


def _first_ann(data, image_index=0):
    image_id = sorted(im["id"] for im in data["images"])[image_index]
    return next(a for a in data["annotations"] if a["image_id"] == image_id)


BAD_CASES = {
    "missing_image": (lambda d: d["images"][1].update(file_name="nowhere.jpg"),
                      r"nowhere.jpg: image file not found \(image id {image1} of "),
    "zero_width": (lambda d: _first_ann(d, 1)["bbox"].__setitem__(2, 0),
                   r"instances_small.json: annotation id {ann1} \(image id {image1}\): box of zero "
                   r"or negative width or height \(bbox \[[\d.]+, [\d.]+, 0, [\d.]+\]"),
    "zero_height": (lambda d: _first_ann(d, 1)["bbox"].__setitem__(3, 0.0),
                    r"annotation id {ann1} \(image id {image1}\): box of zero or negative width"),
    "unknown_category": (lambda d: _first_ann(d, 1).update(category_id=77),
                         r"annotation id {ann1} \(image id {image1}\): unknown category id 77 "
                         r"\(known: 2, 5, 6, 9\)"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_image_stops_with_one_line_and_writes_nothing(sample, tmp_path, kind):
    edit, pattern = BAD_CASES[kind]
    path, data = _small_coco(sample, tmp_path, edit)
    pattern = pattern.format(image1=sorted(im["id"] for im in data["images"])[1],
                             ann1=_first_ann(data, 1)["id"])
    out = tmp_path / "out"
    images = str(sample["data"] / "JPEGImages")
    with pytest.raises(shard_writer.DataError, match=pattern) as info:
        coco_to_tfrecords.convert_coco(path, images, str(out), "bad", num_workers=2)
    assert "\n" not in str(info.value)
    assert not out.exists() or os.listdir(out) == []
    # --skip_errors: the bad image is skipped, logged and listed; the others are written.
    summary = coco_to_tfrecords.convert_coco(path, images, str(out), "bad", num_workers=2,
                                             skip_errors=True)
    assert summary.num_images == 2 and len(summary.skipped) == 1
    assert str(info.value) == summary.skipped[0]
    ids = [ex.features.feature[tfrecords.KEY_COCO_ID].int64_list.value[0]
           for ex in _examples(_shards(out, "bad"))]
    assert ids == [i for i in sorted(im["id"] for im in data["images"])
                   if i != sorted(im["id"] for im in data["images"])[1]]


FILE_CASES = {
    "malformed_json": (None, '{"images": [', r"instances_small.json: malformed JSON \(line 1 "
                                               r"column 13: Expecting value\)"),
    "bbox_of_3": (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), None,
                  r"malformed COCO file: annotation id {ann0} \(annotation 0\): 'bbox' must be "
                  r"\[x, y, width, height\] \(4 numbers\)"),
    "no_image_id": (lambda d: d["annotations"][0].pop("image_id"), None,
                    r"malformed COCO file: annotation id {ann0} \(annotation 0\): 'image_id' "
                    r"must be an integer"),
    "no_categories": (lambda d: d.pop("categories"), None,
                      r"malformed COCO file: 'categories' must be a list \(no 'categories' key\)"),
    "duplicate_image": (lambda d: d["images"].append(dict(d["images"][0])), None,
                        r"malformed COCO file: image id {image0} is listed twice"),
    "orphan_annotation": (lambda d: d["annotations"][0].update(image_id=424242), None,
                          r"annotation id {ann0} refers to image id 424242, which is not in "
                          r"'images' \(1 such annotation\(s\); --skip_errors skips them\)"),
}


@pytest.mark.parametrize("kind", sorted(FILE_CASES))
def test_bad_file_stops_with_one_line_naming_the_entry(sample, tmp_path, kind):
    edit, text, pattern = FILE_CASES[kind]
    path, data = _small_coco(sample, tmp_path, edit, text)
    pattern = pattern.format(ann0=data["annotations"][0]["id"],
                             image0=data["images"][0]["id"])
    out = tmp_path / "out"
    with pytest.raises(shard_writer.DataError, match=pattern) as info:
        coco_to_tfrecords.convert_coco(path, str(sample["data"] / "JPEGImages"), str(out), "bad",
                                       num_workers=1)
    assert str(info.value).startswith(path + ": ") and "\n" not in str(info.value)
    assert not out.exists() or os.listdir(out) == []


@pytest.mark.parametrize("text, dropped", [
    ('{"segmentation": [[1, 2.5, -3e2], [4]], "a": 1}', True),
    ('{"segmentation" :\n [ [0.5,\n 1E+3] ] , "a": [[1]]}', True),
    ('{"segmentation": {"size": [3, 4], "counts": [1, 2]}, "x": [1]}', True),
    ('{"segmentation": {"counts": "PQ8i0", "size": [3, 4]}}', True),
    ('{"segmentation": {"counts": "a\\\\b", "size": [3, 4]}}', False),  # escapes: parsed
    ('{"s": "\\"segmentation\\": [[1]]"}', False),  # inside a string: untouched
    ('{"segmentation": [[1, {"a": 2}]]}', False),       # not a mask form: parsed as is
])
def test_segmentation_masks_are_cut_before_parsing(tmp_path, text, dropped):
    path = tmp_path / "a.json"
    path.write_text(text)
    want = json.loads(text)
    if dropped:
        want["segmentation"] = 0
    assert coco_to_tfrecords.load_json(str(path)) == want
    assert coco_to_tfrecords.load_json(str(path), drop_segmentation=False) == json.loads(text)


@pytest.mark.parametrize("text", ['{"segmentation": [[1,,2]]}', '{"segmentation": [[01]]}',
                                  '{"segmentation": [[1]], "b": }', '{"a": [\n1,\n2\n',
                                  '{"segmentation": {"counts": [1], "size": [1]}, }'])
def test_malformed_json_is_reported_where_json_finds_it(tmp_path, text):
    # Cutting the masks never makes a malformed file valid (only valid mask values are cut),
    # and the error names the line and column of the original text.
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(shard_writer.DataError) as info:
        coco_to_tfrecords.load_json(str(path))
    assert str(info.value) == (f"{path}: malformed JSON (line {want.value.lineno} column "
                               f"{want.value.colno}: {want.value.msg})")


def test_orphan_annotations_are_skipped_with_skip_errors(sample, tmp_path):
    path, data = _small_coco(sample, tmp_path,
                             lambda d: d["annotations"][0].update(image_id=424242))
    summary = coco_to_tfrecords.convert_coco(path, str(sample["data"] / "JPEGImages"),
                                             str(tmp_path / "out"), "x", num_workers=1,
                                             skip_errors=True)
    assert summary.num_images == 3 and summary.num_objects == len(data["annotations"]) - 1
    assert len(summary.skipped) == 1 and "refers to image id 424242" in summary.skipped[0]


def test_image_size_mismatch_warns_and_uses_the_image(sample, tmp_path, caplog):
    path, data = _small_coco(sample, tmp_path, lambda d: d["images"][0].update(width=999))
    summary = coco_to_tfrecords.convert_coco(path, str(sample["data"] / "JPEGImages"),
                                             str(tmp_path / "out"), "x", num_workers=1)
    assert summary.num_warnings == 1
    assert f"image id {data['images'][0]['id']} is 999x96 in the JSON but" in caplog.text
    ex = _examples(_shards(tmp_path / "out", "x"))[0]
    assert ex.features.feature[tfrecords.KEY_WIDTH].int64_list.value == [IMAGE_SIZE[1]]


def test_annotations_and_categories_without_optional_fields(sample, tmp_path):
    def edit(d):
        for a in d["annotations"]:
            a.pop("area")
            a.pop("iscrowd")
            a.pop("segmentation")
        d["images"][0].pop("width")
        d["images"][0].pop("height")

    path, data = _small_coco(sample, tmp_path, edit)
    coco_to_tfrecords.convert_coco(path, str(sample["data"] / "JPEGImages"),
                                   str(tmp_path / "out"), "x", num_workers=1)
    ex = _examples(_shards(tmp_path / "out", "x"))[0].features.feature
    anns = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    np.testing.assert_array_equal(ex[tfrecords.KEY_AREA].float_list.value,
                                  np.float32([a["bbox"][2] * a["bbox"][3] for a in anns]))
    assert list(ex[tfrecords.KEY_ISCROWD].int64_list.value) == [0] * len(anns)


# ---------------------------------------------------------------------------------------
# tf_convert_data.py
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_script_converts_coco_and_reports(sample, tmp_path):
    out = tmp_path / "script"
    proc = run_script("tf_convert_data.py", "--dataset_name=coco",
                      f"--annotations_file={sample['ann']}",
                      f"--images_dir={sample['data'] / 'JPEGImages'}",
                      "--output_name=coco_sample_trainval", f"--output_dir={out}",
                      "--samples_per_shard=5", "--num_workers=1", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Wrote 14 images" in proc.stdout and "label_map.json" in proc.stdout
    names = sorted(os.listdir(out))
    _, mismatch, errors = filecmp.cmpfiles(out, sample["out"], names, shallow=False)
    assert names == sorted(os.listdir(sample["out"])) and not mismatch and not errors


@pytest.mark.slow
def test_script_errors_exit_codes_and_one_line(sample, tmp_path):
    path, data = _small_coco(sample, tmp_path, BAD_CASES["unknown_category"][0])
    images = f"--images_dir={sample['data'] / 'JPEGImages'}"
    cases = [
        ([f"--annotations_file={path}", images], 1, "unknown category id 77"),
        ([images], 2, "--annotations_file must have a value for --dataset_name=coco"),
        ([f"--annotations_file={path}"], 2, "--images_dir must have a value"),
        ([f"--annotations_file={path}", images, f"--dataset_dir={tmp_path}"], 2,
         "--dataset_dir is for VOC folders"),
        ([f"--annotations_file={tmp_path / 'none.json'}", images], 2,
         "none.json: annotation file not found"),
    ]
    for args, code, message in cases:
        proc = run_script("tf_convert_data.py", "--dataset_name=coco", "--num_workers=1",
                          f"--output_dir={tmp_path / 'out'}", "--output_name=x", *args,
                          timeout=180)
        lines = error_lines(proc.stderr, "tf_convert_data.py")
        assert proc.returncode == code, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and message in lines[0], (args, lines)
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------
# Training on COCO: crowd boxes through the pipeline, the recipe, a few steps
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_crowd_boxes_are_ignored_by_the_training_pipeline(sample):
    spec = dataset_factory.get_dataset("coco", "coco_sample_trainval", str(sample["out"]))
    params = ssd_params.ssd_160_vgg_lite_params().with_num_classes(spec.num_classes)
    anchors = ssd_params.anchors(params)
    fn = preprocessing_factory.get_preprocessing("ssd_160_vgg_lite", is_training=True,
                                                 **preprocessing_options("none"))

    def batches(**kwargs):
        ds = pipeline.train_dataset(spec.read(num_parallel_reads=1), fn, anchors, 14,
                                    out_shape=params.img_shape, drop_remainder=False, **kwargs)
        return next(iter(ds))[1]

    with_crowd, without = batches(), batches(ignore_crowd=False)
    crowd_images = [i for i, ex in enumerate(spec.read(num_parallel_reads=1))
                    if ex["object/iscrowd"].numpy().any()]
    assert crowd_images
    labels, plain = with_crowd["labels"].numpy(), without["labels"].numpy()
    large_crowd = 0
    for i in range(14):
        ignored = labels[i] == -1
        if i in crowd_images:
            # Only anchors the crowd box took as positives change: ignored (IoU >= 0.5), or
            # background (the one the bipartite step forced onto a tiny crowd box).
            changed = labels[i] != plain[i]
            assert changed.any() and (plain[i][changed] > 0).all() and (labels[i][changed] <= 0).all()
            large_crowd += int(ignored.any())
        else:
            assert not ignored.any()
            np.testing.assert_array_equal(labels[i], plain[i])
    assert large_crowd >= 1  # the crowd image's region covers anchors at IoU >= 0.5


def test_caffe_coco_recipe():
    config = TrainConfig(dataset_name="coco_2017", dataset_dir="x", recipe="caffe_coco").resolved()
    assert config.optimizer == "momentum" and config.learning_rate == 1e-3
    assert config.learning_rate_decay_type == "piecewise"
    assert config.learning_rate_boundaries == (280000, 360000)
    assert config.max_number_of_steps == 400000 and config.batch_size == 32
    assert config.weight_decay == 5e-4 and config.matching == "caffe"
    assert config.negative_mining == "per_image" and config.loss_normalization == "positives"
    assert config.augmentation == "caffe" and config.anchor_preset == "coco_ft"
    assert set(recipes.RECIPES["caffe_coco"]) == set(recipes.RECIPES["caffe_voc"])
    differs = {k for k in recipes.RECIPES["caffe_voc"]
               if recipes.RECIPES["caffe_voc"][k] != recipes.RECIPES["caffe_coco"][k]}
    assert differs == {"learning_rate_boundaries", "max_number_of_steps", "anchor_preset"}


def test_coco_anchor_sizes_by_hand():
    # SSD300 (ssd_coco.py): conv4_3 at 7% of 300, then 15%..90% in steps of floor(75 / 4) = 18.
    coco300 = ssd_params.ANCHOR_PRESETS[(300, 300)]["coco_ft"]
    assert coco300 == ((21, 45), (45, 99), (99, 153), (153, 207), (207, 261), (261, 315))
    assert ssd_params.ssd_rule_sizes(300, 6, 7, 15, 90) == coco300
    # SSD512 (the SSD paper's COCO footnote: s_min 0.1, 0.04 on conv4_3): 4% of 512, then
    # 10%..90% in steps of floor(80 / 5) = 16: 10, 26, 42, 58, 74, 90 (and 106 for the last max).
    coco512 = ssd_params.ANCHOR_PRESETS[(512, 512)]["coco_ft"]
    percents = [4, 10, 26, 42, 58, 74, 90, 106]
    assert coco512 == tuple((round(512 * a / 100, 4), round(512 * b / 100, 4))
                            for a, b in zip(percents[:-1], percents[1:]))
    assert coco512 == ((20.48, 51.2), (51.2, 133.12), (133.12, 215.04), (215.04, 296.96),
                       (296.96, 378.88), (378.88, 460.8), (460.8, 542.72))
    assert ssd_params.ssd_rule_sizes(512, 7, 4, 10, 90) == coco512
    # Caffe's PriorBox stores ints: the published SSD512 COCO model's priors.
    assert ssd_params.ANCHOR_PRESETS[(512, 512)]["coco_ft_caffe"] == (
        (20, 51), (51, 133), (133, 215), (215, 296), (296, 378), (378, 460), (460, 542))
    params = ssd_params.ssd_512_vgg_params().with_anchor_preset("coco_ft")
    anchors = ssd_params.anchors(params)
    # First anchor of conv4_3 (centre 4/512): the 20.48-pixel square.
    np.testing.assert_allclose(anchors[0] * 512, [4 - 10.24, 4 - 10.24, 4 + 10.24, 4 + 10.24],
                               rtol=1e-5)


@pytest.mark.slow
def test_a_few_training_steps_on_the_converted_coco_sample(sample, tmp_path):
    train_dir = tmp_path / "train"
    proc = run_script("train_ssd_network.py", f"--train_dir={train_dir}",
                      "--dataset_name=coco", "--dataset_split_name=coco_sample_trainval",
                      f"--dataset_dir={sample['out']}", "--model_name=ssd_160_vgg_lite",
                      "--recipe=caffe_coco", "--batch_size=4", "--max_number_of_steps=3",
                      "--warmup_steps=0", "--log_every_n_steps=1", "--num_readers=1",
                      "--num_preprocessing_threads=2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(train_dir / "config.json") as f:
        config = json.load(f)
    assert config["dataset"]["name"] == "coco" and config["dataset"]["num_classes"] == 5
    assert config["config"]["recipe"] == "caffe_coco"
    assert config["model"]["params"]["anchor_preset"] == "coco_ft"
    assert config["model"]["params"]["num_classes"] == 5
    assert "step 3/3" in proc.stderr
    assert glob.glob(str(train_dir / "ckpt-3.index"))
