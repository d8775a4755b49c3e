"""preprocessing.geometry: Caffe's expand and batch samplers vs a literal loop reference."""
import numpy as np
import pytest
import tensorflow as tf

from preprocessing import geometry
from preprocessing.geometry import CAFFE_BATCH_SAMPLERS, BatchSampler

from tests.references import iou


def caffe_generate_batch_samples(bboxes, canvas, samplers, uniforms):
    """Caffe's GenerateBatchSamples + random pick, written as its loops (sampler.cpp).

    ``uniforms`` [S, T, 5] supplies the random numbers in the order (pick, scale, aspect, x, y).
    Returns (window in image units, sampler index or -1, found list).
    """
    sampled, owners, found = [], [], []
    for s, sampler in enumerate(samplers):
        got = False
        for t in range(sampler.max_trials):  # max_sample 1: stop at the first accepted trial
            u = uniforms[s, t]
            scale = sampler.min_scale + (sampler.max_scale - sampler.min_scale) * u[1]
            aspect = sampler.min_aspect_ratio + (sampler.max_aspect_ratio - sampler.min_aspect_ratio) * u[2]
            aspect = max(aspect, scale ** 2)
            aspect = min(aspect, 1 / scale ** 2)
            w, h = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
            x0, y0 = u[3] * (1 - w), u[4] * (1 - h)
            # LocateBBox: canvas units -> image units.
            ch, cw = canvas[2] - canvas[0], canvas[3] - canvas[1]
            box = [canvas[0] + y0 * ch, canvas[1] + x0 * cw, canvas[0] + (y0 + h) * ch, canvas[1] + (x0 + w) * cw]
            constrained = sampler.min_jaccard_overlap is not None or sampler.max_jaccard_overlap is not None
            ok = not constrained
            for gt in bboxes:  # SatisfySampleConstraint
                j = iou(box, gt)
                if sampler.min_jaccard_overlap is not None and j < sampler.min_jaccard_overlap:
                    continue
                if sampler.max_jaccard_overlap is not None and j > sampler.max_jaccard_overlap:
                    continue
                ok = True
                break
            if ok:
                sampled.append(box)
                owners.append(s)
                got = True
                break
        found.append(got)
    if not sampled:
        return np.array(canvas), -1, found
    k = min(int(np.floor(uniforms[0, 0, 0] * len(sampled))), len(sampled) - 1)
    return np.array(sampled[k]), owners[k], found


@pytest.mark.parametrize("num_boxes", [0, 1, 4])
def test_vectorized_samplers_equal_caffe_loops(num_boxes):
    rng = np.random.default_rng(num_boxes)
    samplers = CAFFE_BATCH_SAMPLERS
    for trial in range(40):
        yx = rng.uniform(0, 0.7, (num_boxes, 2))
        hw = rng.uniform(0.05, 0.6, (num_boxes, 2))
        bboxes = np.concatenate([yx, np.minimum(yx + hw, 1.0)], axis=1).astype(np.float32)
        ratio = rng.uniform(1, 4) if trial % 2 else 1.0
        off = rng.uniform(0, ratio - 1, 2)
        canvas = np.array([-off[0], -off[1], ratio - off[0], ratio - off[1]], np.float32)
        uniforms = rng.uniform(0, 1, (len(samplers), 50, 5)).astype(np.float32)
        window, index, found = geometry.sample_batch_crop(
            bboxes, tf.constant([0, 0]), canvas, samplers, uniforms=tf.constant(uniforms))
        want_window, want_index, want_found = caffe_generate_batch_samples(
            bboxes.astype(np.float64), canvas.astype(np.float64), samplers, uniforms.astype(np.float64))
        np.testing.assert_array_equal(found.numpy(), want_found)
        assert int(index) == want_index
        np.testing.assert_allclose(window.numpy(), want_window, atol=1e-5)


def test_sampler_constraints_hold_over_many_seeds():
    bboxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.3, 0.95, 0.9], [0.2, 0.6, 0.35, 0.7]], np.float32)
    seeds = tf.constant([[s, 1] for s in range(300)], tf.int64)

    def sample(seed):
        canvas = geometry.sample_expand(tf.constant([50, 70, 3]), seed)
        window, index, found = geometry.sample_batch_crop(bboxes, seed[::-1], canvas)
        return canvas, window, index, found

    results = list(tf.data.Dataset.from_tensor_slices(seeds).map(sample).as_numpy_iterator())
    picked = np.zeros(len(CAFFE_BATCH_SAMPLERS), int)
    for canvas, window, index, found in results:
        assert found[0]  # the whole-image sampler always succeeds
        assert 0 <= index < len(CAFFE_BATCH_SAMPLERS) and found[index]
        picked[index] += 1
        sampler = CAFFE_BATCH_SAMPLERS[index]
        # Canvas: contains the image, same ratio on both sides, 1..4.
        ratio = canvas[2] - canvas[0]
        assert 1 - 1e-6 <= ratio <= 4 + 1e-6 and abs((canvas[3] - canvas[1]) - ratio) < 1e-5
        assert canvas[0] <= 1e-6 and canvas[1] <= 1e-6 and canvas[2] >= 1 - 1e-6 and canvas[3] >= 1 - 1e-6
        # The crop in canvas units: inside it, scale and aspect within Caffe's ranges.
        rel = (window - canvas[[0, 1, 0, 1]]) / ratio
        assert np.all(rel >= -1e-5) and np.all(rel <= 1 + 1e-5)
        h, w = rel[2] - rel[0], rel[3] - rel[1]
        scale = np.sqrt(h * w)
        assert sampler.min_scale - 1e-4 <= scale <= sampler.max_scale + 1e-4
        assert sampler.min_aspect_ratio - 1e-4 <= w / h <= sampler.max_aspect_ratio + 1e-4
        overlaps = [iou(window, b) for b in bboxes]
        if sampler.min_jaccard_overlap is not None:
            assert max(overlaps) >= sampler.min_jaccard_overlap - 1e-6
    # Every sampler gets picked sometimes (uniform among the successful ones); min IoU 0.9 is
    # rarely reachable for these boxes in 50 trials (as in Caffe), see the next test.
    assert np.all(np.delete(picked, 5) > 10), picked


def test_min_iou_09_sampler_finds_near_whole_image_crops():
    # With a box = the whole image, IoU = crop area: >= 0.9 needs scale >= 0.949, 7% per trial.
    found_09 = 0
    for s in range(20):
        window, index, found = geometry.sample_batch_crop(tf.constant([[0.0, 0.0, 1.0, 1.0]]), tf.constant([s, 3]))
        found_09 += bool(found[5])
        assert bool(found[6]) and bool(found[1])
    assert found_09 >= 15


def test_no_boxes_only_whole_image_sampler():
    for s in range(20):
        window, index, found = geometry.sample_batch_crop(tf.zeros([0, 4]), tf.constant([s, 0]),
                                                          tf.constant([-0.5, -1.0, 1.5, 1.0]))
        np.testing.assert_array_equal(found.numpy(), [True] + [False] * 6)
        assert int(index) == 0
        np.testing.assert_allclose(window.numpy(), [-0.5, -1.0, 1.5, 1.0])


def test_custom_unconstrained_sampler_works_without_boxes():
    samplers = (BatchSampler(0.3, 1.0, 0.5, 2.0, max_trials=5),)
    window, index, found = geometry.sample_batch_crop(tf.zeros([0, 4]), tf.constant([1, 2]), geometry.UNIT_WINDOW, samplers)
    assert bool(found[0]) and int(index) == 0
    assert 0.3 ** 2 - 1e-5 <= float((window[2] - window[0]) * (window[3] - window[1])) <= 1.0


def test_expand_golden_and_probability():
    never = geometry.sample_expand(tf.constant([10, 20, 3]), tf.constant([1, 1]), prob=0.0)
    np.testing.assert_allclose(never.numpy(), [0, 0, 1, 1])
    ratios = []
    for s in range(200):
        canvas = geometry.sample_expand(tf.constant([10, 20, 3]), tf.constant([s, 9])).numpy()
        ratios.append(canvas[2] - canvas[0])
        # Whole-pixel offsets (Caffe floors h_off, w_off).
        np.testing.assert_allclose(canvas[0] * 10, np.round(canvas[0] * 10), atol=1e-4)
        np.testing.assert_allclose(canvas[1] * 20, np.round(canvas[1] * 20), atol=1e-4)
    expanded = np.mean(np.array(ratios) > 1.0)
    assert 0.35 < expanded < 0.65  # p = 0.5
    assert max(ratios) <= 4.0 + 1e-6


def test_keep_by_centre_and_clip():
    bboxes = tf.constant([[0.1, 0.1, 0.3, 0.3],    # centre (0.2, 0.2): outside the window
                          [0.2, 0.2, 0.6, 0.6],    # centre (0.4, 0.4): inside, clipped
                          [0.5, 0.5, 0.7, 0.7]])   # inside entirely
    window = tf.constant([0.25, 0.25, 0.75, 0.75])
    projected, keep = geometry.boxes_in_window_caffe(bboxes, window)
    np.testing.assert_array_equal(keep.numpy(), [False, True, True])
    np.testing.assert_allclose(projected.numpy()[1:], [[0, 0, 0.7, 0.7], [0.5, 0.5, 0.9, 0.9]], atol=1e-6)
    # The original's rule: keep when > 0.5 of the box area is inside, boxes not clipped.
    projected, keep = geometry.boxes_in_window_original(bboxes, window)
    # Box 2: [0.2,0.6]^2 has (0.35/0.4)^2 = 0.766 inside; box 1 has (0.05/0.2)^2 = 0.0625.
    np.testing.assert_array_equal(keep.numpy(), [False, True, True])
    np.testing.assert_allclose(projected.numpy()[1], [-0.1, -0.1, 0.7, 0.7], atol=1e-6)


def test_bad_sampler_config():
    with pytest.raises(ValueError, match="min_scale"):
        BatchSampler(min_scale=0.0)
    with pytest.raises(ValueError, match="max_trials"):
        BatchSampler(max_trials=0)
