"""preprocessing: rendering, photometric ops, train/eval chains, factory (CPU, tiny images)."""
import numpy as np
import pytest
import tensorflow as tf

from preprocessing import geometry, photometric, preprocessing_factory
from preprocessing import ssd_vgg_preprocessing as ssd_pre
from preprocessing.ssd_vgg_preprocessing import RGB_MEANS, Resize

MEANS = np.array(RGB_MEANS, np.float32)


# ----------------------------------------------------------------------------- references

def np_sample_positions(window_lo, window_hi, size, out):
    """Normalized sample positions of output pixels: (j + 0.5) / out inside the window."""
    return window_lo + (np.arange(out) + 0.5) * (window_hi - window_lo) / out


def np_render(image, window, out_shape, flip=False, method="bilinear", crop_first=True):
    """Slow reference of geometry.render_window: half-pixel sampling, clamped at the border.

    A whole-pixel window inside the image is cropped first and the crop resized (Caffe's
    crop-then-resize: samples clamp at the crop border); any other window samples the image
    itself. Returns (pixels float64 [h, w, C], inside bool [h, w]).
    """
    img = image.astype(np.float64)
    h_in, w_in = img.shape[:2]
    edges = np.array(window, np.float64) * [h_in, w_in, h_in, w_in]
    on_grid = np.all(np.abs(edges - np.round(edges)) < 1e-3)
    if crop_first and on_grid and min(window[:2]) >= 0 and max(window[2:]) <= 1:
        y0, x0, y1, x1 = np.round(edges).astype(int)
        return np_render(image[y0:y1, x0:x1], [0.0, 0.0, 1.0, 1.0], out_shape, flip, method, False)
    ys = np_sample_positions(window[0], window[2], h_in, out_shape[0])
    xs = np_sample_positions(window[1], window[3], w_in, out_shape[1])
    if flip:
        xs = xs[::-1]
    out = np.zeros((out_shape[0], out_shape[1], img.shape[2]))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            py = min(max(y * h_in - 0.5, 0.0), h_in - 1.0)  # pixel-centre coordinates, clamped
            px = min(max(x * w_in - 0.5, 0.0), w_in - 1.0)
            if method == "nearest":
                out[i, j] = img[int(np.floor(py + 0.5)), int(np.floor(px + 0.5))]
                continue
            y0, x0 = int(np.floor(py)), int(np.floor(px))
            y1, x1 = min(y0 + 1, h_in - 1), min(x0 + 1, w_in - 1)
            dy, dx = py - y0, px - x0
            top = img[y0, x0] * (1 - dx) + img[y0, x1] * dx
            bottom = img[y1, x0] * (1 - dx) + img[y1, x1] * dx
            out[i, j] = top * (1 - dy) + bottom * dy
    inside = ((ys >= 0) & (ys <= 1))[:, None] & ((xs >= 0) & (xs <= 1))[None, :]
    return out, inside


def white_rectangle(h=40, w=56, box=(8, 12, 30, 40)):
    """Black uint8 image with a white rectangle of rows box[0]:box[2], cols box[1]:box[3]."""
    img = np.zeros((h, w, 3), np.uint8)
    img[box[0]:box[2], box[1]:box[3]] = 255
    bbox = np.array([[box[0] / h, box[1] / w, box[2] / h, box[3] / w]], np.float32)
    return img, bbox


def white_extent(mask):
    """(first row, first col, last row + 1, last col + 1) of True pixels, or None."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)


# ----------------------------------------------------------------------------- rendering

def test_render_unit_window_equals_tf_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, 3)).astype(np.uint8)
    for out_shape in ((31, 29), (9, 11), (17, 23)):
        got, inside_y, inside_x = geometry.render_window(img, tf.constant(geometry.UNIT_WINDOW), out_shape)
        want = tf.image.resize(img.astype(np.float32), out_shape, method="bilinear").numpy()
        np.testing.assert_allclose(got.numpy(), want, atol=1e-2)
        assert inside_y.numpy().all() and inside_x.numpy().all()


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("flip", [False, True])
def test_render_matches_numpy_reference(method, flip):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (13, 19, 3)).astype(np.uint8)
    # Windows inside, straddling and around the image (the expand canvas).
    for window in ([0.1, 0.2, 0.7, 0.9], [-0.3, -0.5, 1.2, 0.8], [-1.0, -1.5, 2.0, 2.5], [0.0, 0.0, 1.0, 1.0]):
        got, inside_y, inside_x = geometry.render_window(img, tf.constant(window, tf.float32), (21, 17), flip, method)
        want, want_inside = np_render(img, window, (21, 17), flip, method)
        inside = inside_y.numpy()[:, None] & inside_x.numpy()[None, :]
        np.testing.assert_array_equal(inside, want_inside)
        np.testing.assert_allclose(got.numpy()[want_inside], want[want_inside], atol=1e-2)


def test_render_flip_is_mirror():
    img = np.random.default_rng(2).integers(0, 256, (10, 14, 3)).astype(np.uint8)
    window = tf.constant([-0.2, 0.1, 0.9, 1.4])
    a, ay, ax = geometry.render_window(img, window, (12, 15), False)
    b, by, bx = geometry.render_window(img, window, (12, 15), True)
    np.testing.assert_allclose(a.numpy()[:, ::-1], b.numpy(), atol=1e-2)
    np.testing.assert_array_equal(ay.numpy(), by.numpy())
    np.testing.assert_array_equal(ax.numpy()[::-1], bx.numpy())


def test_render_in_place_and_padded_paths_agree():
    # A window well inside the image, shrinking: read in place; the same window enlarged
    # (small output step) near the border needs the padded copy. Both match the reference.
    img = np.random.default_rng(11).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    for window, out_shape in (([0.2, 0.2, 0.8, 0.9], (9, 13)), ([0.0, 0.0, 0.3, 0.25], (40, 37))):
        got, _, _ = geometry.render_window(img, tf.constant(window), out_shape)
        want, _ = np_render(img, window, out_shape)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-2)


# ----------------------------------------------------------------------------- photometric

def test_xla_tail_equals_op_by_op():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    bboxes = np.array([[0.1, 0.2, 0.7, 0.6]], np.float32)
    for chain in ("caffe", "original"):
        for s in range(6):
            a = ssd_pre.preprocess_for_train(img, [1], bboxes, (32, 32), seed=[s, 1], chain=chain)[0]
            b = ssd_pre.preprocess_for_train(img, [1], bboxes, (32, 32), seed=[s, 1], chain=chain,
                                             jit_compile=False)[0]
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=0.05)


def test_caffe_contrast_is_a_scale_and_brightness_a_shift():
    img = tf.constant(np.random.default_rng(4).uniform(0, 200, (8, 8, 3)).astype(np.float32))
    only_contrast = photometric.PhotometricParams(
        brightness_prob=0, contrast_prob=1, contrast_lower=1.2, contrast_upper=1.2,
        hue_prob=0, saturation_prob=0)
    out = photometric.caffe_distort(img, tf.constant([1, 2]), only_contrast).numpy()
    np.testing.assert_allclose(out, np.clip(img.numpy() * 1.2, 0, 255), rtol=1e-6)
    only_brightness = photometric.PhotometricParams(
        brightness_prob=1, contrast_prob=0, hue_prob=0, saturation_prob=0)
    for s in range(5):
        out = photometric.caffe_distort(img, tf.constant([s, 0]), only_brightness).numpy()
        diff = out - img.numpy()
        unclipped = (out > 0) & (out < 255)
        delta = diff[unclipped]
        assert np.ptp(delta) < 1e-3 and abs(delta[0]) <= 32.0


def test_caffe_hue_delta_units():
    # A saturated colour: hue shifts by at most 18/180 of the circle (Caffe's 0..180 scale).
    img = tf.constant(np.tile(np.array([200.0, 40.0, 40.0], np.float32), (4, 4, 1)))
    only_hue = photometric.PhotometricParams(brightness_prob=0, contrast_prob=0, hue_prob=1, saturation_prob=0)
    h0 = tf.image.rgb_to_hsv(img / 255.0).numpy()[0, 0, 0]
    shifts = []
    for s in range(40):
        out = photometric.caffe_distort(img, tf.constant([s, 7]), only_hue)
        h = tf.image.rgb_to_hsv(out / 255.0).numpy()[0, 0, 0]
        shifts.append((h - h0 + 0.5) % 1.0 - 0.5)
    shifts = np.abs(shifts)
    assert shifts.max() <= 0.1 + 1e-4 and shifts.max() > 0.07


def test_caffe_distort_keeps_range_and_is_deterministic():
    img = tf.constant(np.random.default_rng(5).uniform(0, 255, (16, 16, 3)).astype(np.float32))
    a = photometric.caffe_distort(img, tf.constant([3, 9]))
    b = photometric.caffe_distort(img, tf.constant([3, 9]))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    outs = [photometric.caffe_distort(img, tf.constant([s, 1])).numpy() for s in range(20)]
    assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
    assert sum(not np.array_equal(o, img.numpy()) for o in outs) >= 15  # P(no op) = 1/16


# ----------------------------------------------------------------------------- train chain

def _window_for(seed, image_shape, bboxes, chain="caffe"):
    """The crop window preprocess_for_train uses for ``seed`` (same seed derivation)."""
    seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), num=6)
    if chain == "caffe":
        canvas = geometry.sample_expand(tf.constant(image_shape), seeds[0])
        return geometry.sample_batch_crop(tf.constant(bboxes), seeds[1], canvas)[0].numpy()
    return geometry.sample_original_crop(tf.constant(image_shape), tf.constant(bboxes), seeds[1]).numpy()


def _run_many(fn, img, bbox, out_shape, seeds, **kwargs):
    """Run the train fn inside tf.data.map for many seeds at once (fast)."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64))
    ds = ds.map(lambda s: fn(img, tf.constant([1], tf.int64), bbox, out_shape, seed=s, **kwargs),
                num_parallel_calls=tf.data.AUTOTUNE)
    return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("photometric_on", [False, True])
@pytest.mark.slow
def test_white_rectangle_caffe_chain_200_seeds(photometric_on):
    img, bbox = white_rectangle()
    out_shape = (48, 48)
    seeds = [[s, 11] for s in range(200)]
    kwargs = {} if photometric_on else {"photometric_params": None}
    results = _run_many(ssd_pre.preprocess_for_train, img, bbox, out_shape, seeds, **kwargs)
    kept = 0
    for seed, (out, labels, bboxes) in zip(seeds, results):
        assert out.dtype == np.float32 and out.shape == (48, 48, 3)
        gray = (out + MEANS)[..., 0]  # black and white stay gray under every distortion
        fill = np.all(out == 0.0, axis=-1)  # the expand fill is exactly the mean
        levels = gray[~fill]
        if levels.size and np.ptp(levels) > 10:
            # Brightness/contrast move both levels: threshold half-way between them.
            white = (gray > (levels.max() + levels.min()) / 2) & ~fill
        else:  # one level only: the crop lies inside the rectangle or outside it
            white = ~fill if labels.size and levels.size else np.zeros_like(fill)
        extent = white_extent(white)
        if labels.size:
            kept += 1
            assert extent is not None, seed
            want = bboxes[0] * np.array([48, 48, 48, 48])
            np.testing.assert_allclose(extent, want, atol=1.0, err_msg=f"seed {seed}")
        else:
            # Dropped only when the rectangle's centre is outside the crop window.
            window = _window_for(seed, img.shape, bbox)
            cy, cx = (bbox[0, 0] + bbox[0, 2]) / 2, (bbox[0, 1] + bbox[0, 3]) / 2
            assert not (window[0] <= cy <= window[2] and window[1] <= cx <= window[3]), seed
    assert 100 < kept < 200  # some crops lose the box, most keep it


def test_white_rectangle_original_chain_200_seeds():
    img, bbox = white_rectangle()
    seeds = [[s, 5] for s in range(200)]
    results = _run_many(ssd_pre.preprocess_for_train, img, bbox, (48, 48), seeds,
                        chain="original", color_distortion=False)
    for seed, (out, labels, bboxes) in zip(seeds, results):
        white = np.all(out + MEANS > 127.5, axis=-1)
        window = _window_for(seed, img.shape, bbox, chain="original")
        # Crops are whole pixels inside the image, covering >= 0.25 of the box.
        assert np.all(window >= -1e-6) and np.all(window <= 1 + 1e-6)
        if labels.size:
            extent = white_extent(white)
            want = np.clip(bboxes[0], 0, 1) * 48  # the original does not clip; we compare clipped
            np.testing.assert_allclose(extent, want, atol=1.0, err_msg=f"seed {seed}")
        else:
            projected = (bbox[0] - window[[0, 1, 0, 1]]) / (window[[2, 3, 2, 3]] - window[[0, 1, 0, 1]])
            inter = np.prod(np.clip(np.minimum(projected[2:], 1) - np.maximum(projected[:2], 0), 0, None))
            assert inter <= 0.5 * np.prod(projected[2:] - projected[:2]) + 1e-6, seed


def test_expand_fill_is_exactly_the_mean_even_with_photometric():
    img = np.full((20, 20, 3), 200, np.uint8)
    bbox = np.array([[0.2, 0.2, 0.8, 0.8]], np.float32)
    fill_seen = 0
    for s in range(12):
        out, _, _ = ssd_pre.preprocess_for_train(img, [1], bbox, (32, 32), seed=[s, 0],
                                                 expand_prob=1.0, samplers=None)
        out = out.numpy()
        fill = np.all(out == 0.0, axis=-1)
        fill_seen += fill.sum()
        # The image part is one colour (flat input, per-pixel distortions), never the mean.
        img_part = out[~fill]
        assert np.ptp(img_part, axis=0).max() < 1e-3
    assert fill_seen > 0


@pytest.mark.slow
def test_train_output_contract_and_determinism():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    bboxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.3, 0.5, 0.9, 0.95], [0.0, 0.0, 1.0, 1.0]], np.float32)
    labels = np.array([3, 7, 12], np.int64)
    fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", True)
    for s in range(30):
        out, l, b = fn(img, labels, bboxes, (64, 64), seed=[s, 42])
        assert out.dtype == tf.float32 and out.shape == (64, 64, 3)
        assert np.all(out.numpy() >= -MEANS - 1e-4) and np.all(out.numpy() <= 255 - MEANS + 1e-4)
        assert l.dtype == tf.int64 and b.shape[0] == l.shape[0]
        bn = b.numpy()
        assert np.all(bn >= 0) and np.all(bn <= 1)
        assert np.all(bn[:, 2] > bn[:, 0]) and np.all(bn[:, 3] > bn[:, 1])
        assert set(l.numpy()) <= set(labels)
        out2, l2, b2 = fn(img, labels, bboxes, (64, 64), seed=[s, 42])
        np.testing.assert_array_equal(out.numpy(), out2.numpy())
        np.testing.assert_array_equal(b.numpy(), b2.numpy())
    a = fn(img, labels, bboxes, (64, 64), seed=[1, 2])[0].numpy()
    c = fn(img, labels, bboxes, (64, 64), seed=[2, 2])[0].numpy()
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_eager_equals_tf_data_map():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    bboxes = np.array([[0.1, 0.2, 0.6, 0.7], [0.5, 0.5, 0.9, 0.8]], np.float32)
    labels = np.array([1, 2], np.int64)
    for chain in ("caffe", "original"):
        fn = preprocessing_factory.get_preprocessing("ssd_512_vgg", True, chain=chain)
        seeds = [[s, 3] for s in range(8)]
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64))
        ds = ds.map(lambda s: fn(img, labels, bboxes, (24, 24), seed=s), num_parallel_calls=4)
        for seed, (out, l, b) in zip(seeds, ds.as_numpy_iterator()):
            e_out, e_l, e_b = fn(img, labels, bboxes, (24, 24), seed=seed)
            np.testing.assert_allclose(out, e_out.numpy(), atol=1e-3)
            np.testing.assert_array_equal(l, e_l.numpy())
            np.testing.assert_allclose(b, e_b.numpy(), atol=1e-6)


@pytest.mark.parametrize("chain", ["caffe", "original"])
def test_image_without_boxes_passes(chain):
    img = np.random.default_rng(8).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    for s in range(10):
        out, l, b = ssd_pre.preprocess_for_train(img, tf.zeros([0], tf.int64), tf.zeros([0, 4]),
                                                 (32, 32), seed=[s, 0], chain=chain)
        assert out.shape == (32, 32, 3) and l.shape == (0,) and b.shape == (0, 4)
        assert np.isfinite(out.numpy()).all()
    out, l, b, bbox_img = ssd_pre.preprocess_for_eval(img, tf.zeros([0], tf.int64), tf.zeros([0, 4]), (32, 32))
    assert out.shape == (32, 32, 3) and b.shape == (0, 4)


def test_difficult_kept_by_default_dropped_by_option():
    img = np.zeros((40, 40, 3), np.uint8)
    bboxes = np.array([[0.1, 0.1, 0.9, 0.9], [0.2, 0.2, 0.8, 0.8]], np.float32)
    labels = np.array([4, 5], np.int64)
    difficult = np.array([0, 1], np.int64)
    switch_off = dict(photometric_params=None, expand=False, samplers=None, flip=False)
    _, l, _ = ssd_pre.preprocess_for_train(img, labels, bboxes, (16, 16), difficult, seed=[0, 0], **switch_off)
    np.testing.assert_array_equal(l.numpy(), [4, 5])
    _, l, _, d = ssd_pre.preprocess_for_train(img, labels, bboxes, (16, 16), difficult, seed=[0, 0],
                                              drop_difficult=True, return_difficult=True, **switch_off)
    np.testing.assert_array_equal(l.numpy(), [4])
    np.testing.assert_array_equal(d.numpy(), [0])


def test_all_steps_off_is_a_plain_warp_resize():
    img = np.random.default_rng(9).integers(0, 256, (30, 50, 3)).astype(np.uint8)
    bboxes = np.array([[0.1, 0.2, 0.6, 0.7]], np.float32)
    out, l, b = ssd_pre.preprocess_for_train(img, [1], bboxes, (20, 24), seed=[0, 0],
                                             photometric_params=None, expand=False, samplers=None,
                                             flip=False, interpolations=("bilinear",))
    want = tf.image.resize(img.astype(np.float32), (20, 24)).numpy() - MEANS
    np.testing.assert_allclose(out.numpy(), want, atol=1e-2)
    np.testing.assert_allclose(b.numpy(), bboxes, atol=1e-6)


def test_flip_mirrors_boxes():
    img, bbox = white_rectangle()
    flipped = 0
    for s in range(10):
        out, _, b = ssd_pre.preprocess_for_train(img, [1], bbox, (40, 56), seed=[s, 0], photometric_params=None,
                                                 expand=False, samplers=None)
        b = b.numpy()[0]
        if abs(b[1] - (1 - bbox[0, 3])) < 1e-6:
            flipped += 1
            np.testing.assert_allclose(b, [bbox[0, 0], 1 - bbox[0, 3], bbox[0, 2], 1 - bbox[0, 1]], atol=1e-6)
        else:
            np.testing.assert_allclose(b, bbox[0], atol=1e-6)
    assert 0 < flipped < 10


def test_bad_options_raise():
    img, bbox = white_rectangle()
    with pytest.raises(ValueError, match="chain"):
        ssd_pre.preprocess_for_train(img, [1], bbox, (8, 8), chain="yolo")
    with pytest.raises(ValueError, match="interpolation"):
        ssd_pre.preprocess_for_train(img, [1], bbox, (8, 8), interpolations=("bicubic",))
    with pytest.raises(ValueError, match="out_shape"):
        ssd_pre.preprocess_for_train(img, [1], bbox, (8,))


# ----------------------------------------------------------------------------- eval

def test_eval_modes_golden_windows_and_map_back():
    img, bbox = white_rectangle(h=40, w=60, box=(10, 15, 30, 45))
    # (mode, out_shape, expected bbox_img, expected output shape)
    cases = [
        (Resize.NONE, (30, 30), [0, 0, 1, 1], (40, 60, 3)),
        (Resize.WARP_RESIZE, (30, 30), [0, 0, 1, 1], (30, 30, 3)),
        # central crop 40x60 -> 30x30: offsets 5 and 15 -> image spans [-5/30, -15/30, 35/30, 45/30].
        (Resize.CENTRAL_CROP, (30, 30), [-5 / 30, -0.5, 35 / 30, 1.5], (30, 30, 3)),
        # pad and resize: factor 0.5 -> 20x30, padded by 5 rows: [5/30, 0, 25/30, 1].
        (Resize.PAD_AND_RESIZE, (30, 30), [5 / 30, 0, 25 / 30, 1], (30, 30, 3)),
        # smaller than out_shape: never enlarged, padded: 40x60 in 50x80 at offsets 5, 10.
        (Resize.PAD_AND_RESIZE, (50, 80), [0.1, 0.125, 0.9, 0.875], (50, 80, 3)),
    ]
    for mode, out_shape, want_img, want_shape in cases:
        fn = preprocessing_factory.get_preprocessing("ssd_300_vgg", False, resize=mode)
        out, labels, b, bbox_img = fn(img, [2], bbox, out_shape)
        assert out.shape == want_shape and out.dtype == tf.float32, mode
        np.testing.assert_allclose(bbox_img.numpy(), want_img, atol=1e-6, err_msg=str(mode))
        np.testing.assert_allclose(ssd_pre.bboxes_to_original(b, bbox_img, clip=False).numpy(), bbox,
                                   atol=1e-6, err_msg=str(mode))
        # The white pixels sit where the returned (output-unit) box says, within a pixel.
        white = np.all(out.numpy() + MEANS > 127.5, axis=-1)
        hw = np.array(tuple(out.shape[:2]) * 2, np.float64)
        want = np.clip(b.numpy()[0], 0, 1) * hw
        np.testing.assert_allclose(white_extent(white), want, atol=1.0, err_msg=str(mode))
        # Padding is the mean (0 after subtraction).
        if mode == Resize.PAD_AND_RESIZE:
            assert np.all(out.numpy()[:4] == 0.0)


def test_eval_exact_pixels_for_central_crop():
    img = np.random.default_rng(10).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    out, _, _, _ = ssd_pre.preprocess_for_eval(img, [1], [[0, 0, 1, 1]], (30, 30), resize=Resize.CENTRAL_CROP)
    np.testing.assert_array_equal(out.numpy(), img[5:35, 15:45].astype(np.float32) - MEANS)


# ----------------------------------------------------------------------------- factory

def test_factory_names_patterns_and_errors():
    assert callable(preprocessing_factory.get_preprocessing("ssd_300_vgg", True))
    assert callable(preprocessing_factory.get_preprocessing("ssd_512_vgg", False))
    assert callable(preprocessing_factory.get_preprocessing("ssd_300_vgg_caffe", True))  # pattern
    with pytest.raises(ValueError, match="ssd_300_vgg.*ssd_512_vgg"):
        preprocessing_factory.get_preprocessing("yolo_v3", True)
    with pytest.raises(ValueError, match="expandd"):
        preprocessing_factory.get_preprocessing("ssd_300_vgg", True, expandd=False)
    preprocessing_factory.register_preprocessing("my_ssd", ssd_pre)
    assert preprocessing_factory.get_preprocessing("my_ssd", False).func is ssd_pre.preprocess_for_eval
    with pytest.raises(ValueError, match="preprocess_for_train"):
        preprocessing_factory.register_preprocessing("broken", np)
