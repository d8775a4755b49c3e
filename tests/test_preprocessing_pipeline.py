"""preprocessing.pipeline on real TFRecords written by the datasets converter from real JPEGs."""
import numpy as np
import pytest
import tensorflow as tf

from datasets import dataset_factory
from datasets.pascalvoc_to_tfrecords import convert_voc
from preprocessing import pipeline, preprocessing_factory
from preprocessing.ssd_vgg_preprocessing import RGB_MEANS, Resize, bboxes_to_original
from tests.voc_fixtures import make_voc_dataset
from tf_extended import targets

OUT_SHAPE = (64, 64)
NO_AUGMENTATION = dict(photometric_params=None, expand=False, samplers=None, flip=False,
                       interpolations=("bilinear",))


def grid_anchors(cells=8, sizes=(0.15, 0.4)):
    """[cells * cells * len(sizes), 4] square anchors (ymin, xmin, ymax, xmax) on a grid."""
    c = (np.arange(cells) + 0.5) / cells
    cy, cx = np.meshgrid(c, c, indexing="ij")
    out = [np.stack([cy - s / 2, cx - s / 2, cy + s / 2, cx + s / 2], -1) for s in sizes]
    return np.stack(out, axis=2).reshape(-1, 4).astype(np.float32)


@pytest.fixture(scope="module")
def voc_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    fx = make_voc_dataset(root / "VOC", num_images=10, seed=3, odd_cases=False, max_objects=4)
    convert_voc(str(root / "VOC"), str(root / "records"), "train", num_workers=1, samples_per_shard=4)
    spec = dataset_factory.get_dataset("voc", "train", str(root / "records"))
    return fx, spec


def _batches(ds):
    return list(ds.as_numpy_iterator())


@pytest.mark.slow
def test_train_dataset_shapes_ids_and_determinism(voc_records):
    fx, spec = voc_records
    anchors = grid_anchors()
    fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", True)
    make = lambda seed: pipeline.train_dataset(spec.read(), fn, anchors, 4, out_shape=OUT_SHAPE, seed=seed)
    first = _batches(make(7))
    assert len(first) == 2  # 10 examples, batches of 4, remainder dropped
    images, tgt = first[0]
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.float32
    assert tgt["labels"].shape == (4, len(anchors)) and tgt["labels"].dtype == np.int64
    assert tgt["localisations"].shape == (4, len(anchors), 4) and tgt["scores"].shape == (4, len(anchors))
    assert np.all(images >= -np.array(RGB_MEANS) - 1e-4) and np.all(images <= 255 - np.array(RGB_MEANS) + 1e-4)
    ids = [f.decode() for b in first for f in b[1]["image_ids"]]
    read_order = [ex["filename"].decode() for ex in spec.read().as_numpy_iterator()][:8]
    assert ids == read_order and set(ids) <= set(fx.ids)
    assert any((b[1]["labels"] > 0).any() for b in first)
    # Same base seed -> identical batches; another seed -> different augmentation.
    again = _batches(make(7))
    for (i1, t1), (i2, t2) in zip(first, again):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(t1["labels"], t2["labels"])
        np.testing.assert_array_equal(t1["localisations"], t2["localisations"])
    other = _batches(make(8))
    assert not np.array_equal(first[0][0], other[0][0])


def test_train_targets_are_the_encoder_of_the_preprocessed_boxes(voc_records):
    _, spec = voc_records
    anchors = grid_anchors()
    fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", True, **NO_AUGMENTATION)
    batches = _batches(pipeline.train_dataset(spec.read(), fn, anchors, 5, out_shape=OUT_SHAPE,
                                              encode_options={"matching": "caffe"}))
    examples = list(spec.read().as_numpy_iterator())
    flat = [(img, {k: v[i] for k, v in tgt.items()}) for img_b, tgt in batches
            for i, img in enumerate(img_b)]
    for ex, (image, tgt) in zip(examples, flat):
        labels, locs, scores = targets.encode_targets(ex["object/label"], ex["object/bbox"], anchors)
        np.testing.assert_array_equal(tgt["labels"], labels.numpy())
        np.testing.assert_allclose(tgt["localisations"], locs.numpy(), atol=1e-4)
        np.testing.assert_allclose(tgt["scores"], scores.numpy(), atol=1e-5)
        want = tf.image.resize(ex["image"].astype(np.float32), OUT_SHAPE).numpy() - np.array(RGB_MEANS)
        np.testing.assert_allclose(image, want, atol=1e-2)


@pytest.mark.slow
def test_batched_encoding_equals_per_example(voc_records):
    _, spec = voc_records
    anchors = grid_anchors()
    fn = preprocessing_factory.get_preprocessing("ssd_512_vgg", True)
    a = _batches(pipeline.train_dataset(spec.read(), fn, anchors, 3, out_shape=OUT_SHAPE, seed=1))
    b = _batches(pipeline.train_dataset(spec.read(), fn, anchors, 3, out_shape=OUT_SHAPE, seed=1,
                                        encode_per_example=False))
    assert len(a) == len(b) == 3
    for (i1, t1), (i2, t2) in zip(a, b):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(t1["labels"], t2["labels"])
        np.testing.assert_allclose(t1["localisations"], t2["localisations"], atol=1e-5)
        np.testing.assert_array_equal(t1["image_ids"], t2["image_ids"])


def test_ignore_difficult_marks_their_anchors(voc_records):
    fx, spec = voc_records
    anchors = grid_anchors()
    fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", True, **NO_AUGMENTATION)
    batches = _batches(pipeline.train_dataset(spec.read(), fn, anchors, 10, out_shape=OUT_SHAPE,
                                              ignore_difficult=True))
    ids = [f.decode() for f in batches[0][1]["image_ids"]]
    for i, image_id in enumerate(ids):
        has_difficult = bool(fx.by_id[image_id].difficult.any())
        assert bool((batches[0][1]["labels"][i] == -1).any()) == has_difficult, image_id
    assert any(fx.by_id[i].difficult.any() for i in ids)


def test_eval_dataset_ground_truth_and_map_back(voc_records):
    fx, spec = voc_records
    fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", False, resize=Resize.PAD_AND_RESIZE)
    batches = _batches(pipeline.eval_dataset(spec.read(), fn, 4, out_shape=OUT_SHAPE))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    for images, info in batches:
        assert images.shape[1:] == (64, 64, 3)
        for i, name in enumerate(info["filename"]):
            img = fx.by_id[name.decode()]
            n = info["num_gt"][i]
            assert n == len(img.objects)
            np.testing.assert_allclose(info["bboxes"][i, :n], img.bboxes_normalized(), atol=1e-6)
            np.testing.assert_array_equal(info["labels"][i, :n], img.labels)
            np.testing.assert_array_equal(info["difficult"][i, :n], img.difficult)
            assert np.all(info["labels"][i, n:] == 0)
            np.testing.assert_array_equal(info["shape"][i], [img.height, img.width, 3])
            # The image window: aspect kept, centred, inside the output.
            y0, x0, y1, x1 = info["bbox_img"][i]
            assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
            assert abs((y1 - y0) * 64 / ((x1 - x0) * 64) - img.height / img.width) < 0.1
    # The whole network-input frame maps back to a box that covers the original image.
    back = bboxes_to_original(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), batches[0][1]["bbox_img"][:1])
    np.testing.assert_allclose(back.numpy(), [[[0, 0, 1, 1]]], atol=1e-6)


def test_eval_dataset_fixed_padding_and_too_many_boxes(voc_records):
    _, spec = voc_records
    fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", False)
    _, info = next(iter(pipeline.eval_dataset(spec.read(), fn, 3, out_shape=OUT_SHAPE, max_boxes=6)))
    assert info["labels"].shape == (3, 6) and info["bboxes"].shape == (3, 6, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_boxes"):
        _batches(pipeline.eval_dataset(spec.read(), fn, 3, out_shape=OUT_SHAPE, max_boxes=1))
