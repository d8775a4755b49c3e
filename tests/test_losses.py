"""tf_extended.losses.ssd_losses against a slow NumPy implementation of the same formulas."""
import numpy as np
import pytest
import tensorflow as tf

from tf_extended import losses


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _smooth_l1(d):
    a = np.abs(d)
    return np.where(a < 1, 0.5 * d * d, a - 0.5)


def _reference(logits, locs, labels, glocs, scores, ratio=3.0, alpha=1.0, thr=0.5, mining="per_image"):
    """Slow float64 reference, one anchor at a time."""
    logits = logits.astype(np.float64)
    n, a, _ = logits.shape
    logp = _log_softmax(logits)
    ce_pos = ce_neg = loc = 0.0
    num_pos_total = 0
    cands = []  # (value used for ranking, background loss, image, anchor)
    for i in range(n):
        num_pos = 0
        image_cands = []
        for j in range(a):
            if labels[i, j] > 0:
                num_pos += 1
                ce_pos += -logp[i, j, labels[i, j]]
                loc += alpha * _smooth_l1(locs[i, j].astype(np.float64) - glocs[i, j]).sum()
            elif labels[i, j] == 0 and scores[i, j] < thr:
                image_cands.append((-logp[i, j, 0], j))
        num_pos_total += num_pos
        if mining == "per_image":
            image_cands.sort(key=lambda t: (-t[0], t[1]))  # largest background loss first
            take = min(int(num_pos * ratio), len(image_cands))
            ce_neg += sum(v for v, _ in image_cands[:take])
        else:
            cands += [(np.exp(logp[i, j, 0]), v) for v, j in image_cands]
    if mining == "batch":
        # The original: p_bg of candidates, 1 elsewhere; k-th smallest; keep candidates strictly below.
        values = sorted([p for p, _ in cands] + [1.0] * (n * a - len(cands)))
        k = min(int(num_pos_total * ratio) + n, len(cands) + 1, n * a)
        kth = values[k - 1]
        ce_neg = sum(v for p, v in cands if p < kth)
        norm = n
    else:
        norm = max(num_pos_total, 1)
    return {"cross_entropy_pos": ce_pos / norm, "cross_entropy_neg": ce_neg / norm,
            "localization": loc / norm, "total": (ce_pos + ce_neg + loc) / norm}


def _random_batch(rng, n=3, a=200, c=6, pos_frac=0.05):
    logits = rng.normal(size=(n, a, c)).astype(np.float32) * 2
    labels = np.where(rng.random((n, a)) < pos_frac, rng.integers(1, c, (n, a)), 0)
    labels[rng.random((n, a)) < 0.03] = -1
    scores = np.where(labels > 0, rng.uniform(0.5, 1, (n, a)), rng.uniform(0, 0.7, (n, a))).astype(np.float32)
    locs = rng.normal(size=(n, a, 4)).astype(np.float32)
    glocs = rng.normal(size=(n, a, 4)).astype(np.float32)
    return logits, locs, labels, glocs, scores


def _assert_close(got, want, rtol=1e-5):
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == tf.float32 and got[key].shape == ()
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=rtol, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("mining", ["per_image", "batch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_against_numpy(mining, seed):
    rng = np.random.default_rng(seed)
    batch = _random_batch(rng)
    for ratio, alpha in ((3.0, 1.0), (1.5, 2.0)):
        got = losses.ssd_losses(*batch, negative_ratio=ratio, alpha=alpha, mining=mining)
        _assert_close(got, _reference(*batch, ratio=ratio, alpha=alpha, mining=mining))


def test_cap_when_few_candidates_and_many_positives():
    rng = np.random.default_rng(5)
    logits, locs, labels, glocs, scores = _random_batch(rng, pos_frac=0.6)  # 3 * pos > candidates
    for mining in ("per_image", "batch"):
        got = losses.ssd_losses(logits, locs, labels, glocs, scores, mining=mining)
        _assert_close(got, _reference(logits, locs, labels, glocs, scores, mining=mining))


def test_negative_count_is_ratio_times_positives():
    # Every candidate has the same background loss L, so cross_entropy_neg * normalizer / L counts them.
    n, a, c = 2, 100, 4
    logits = np.zeros([n, a, c], np.float32)  # background loss log(4) everywhere
    labels = np.zeros([n, a], np.int64)
    labels[0, :5] = 2  # image 0: 5 positives -> 15 negatives
    labels[1, :40] = 1  # image 1: 40 positives -> min(120, 60 candidates) = 60 negatives
    labels[1, 40:45] = -1  # ignored: not candidates -> 55 candidates
    scores = np.zeros([n, a], np.float32)
    scores[0, 90:] = 0.5  # not below the threshold: not candidates either
    zeros = np.zeros([n, a, 4], np.float32)
    got = losses.ssd_losses(logits, zeros, labels, zeros, scores)
    count = got["cross_entropy_neg"].numpy() * 45 / np.log(4.0)
    assert round(float(count)) == 15 + 55 and abs(count - 70) < 1e-3
    np.testing.assert_allclose(got["cross_entropy_pos"].numpy(), np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(got["localization"].numpy(), 0.0)
    got = losses.ssd_losses(logits, zeros, labels, zeros, scores, negative_ratio=0.5)
    count = got["cross_entropy_neg"].numpy() * 45 / np.log(4.0)
    assert round(float(count)) == 2 + 20  # int(2.5) + int(20)


def test_hard_negatives_are_the_highest_background_losses():
    # One image, one positive, ratio 2: the two candidates with the lowest background logit win.
    logits = np.zeros([1, 6, 2], np.float32)
    logits[0, :, 0] = [5.0, 0.0, -1.0, 3.0, -2.0, 0.0]
    labels = np.array([[1, 0, 0, 0, 0, 0]])
    zeros = np.zeros([1, 6, 4], np.float32)
    got = losses.ssd_losses(logits, zeros, labels, zeros, np.zeros([1, 6], np.float32), negative_ratio=2.0)
    bg = lambda z: np.log1p(np.exp(-z))  # -log sigmoid(z): background loss with logits (z, 0)
    np.testing.assert_allclose(got["cross_entropy_neg"].numpy(), bg(-2.0) + bg(-1.0), rtol=1e-6)
    np.testing.assert_allclose(got["cross_entropy_pos"].numpy(), np.log1p(np.exp(5.0)), rtol=1e-6)


def test_no_positives_is_finite_with_finite_gradients():
    rng = np.random.default_rng(2)
    logits, locs, _, glocs, scores = _random_batch(rng)
    labels = np.zeros(scores.shape, np.int64)
    logits = tf.Variable(logits)
    for mining in ("per_image", "batch"):
        with tf.GradientTape() as tape:
            got = losses.ssd_losses(logits, locs, labels, glocs, scores, mining=mining)
        grad = tape.gradient(got["total"], logits)
        assert all(np.isfinite(v.numpy()) for v in got.values())
        assert np.all(np.isfinite(grad.numpy()))
        _assert_close(got, _reference(logits.numpy(), locs, labels, glocs, scores, mining=mining))
    assert got["cross_entropy_pos"].numpy() == 0.0


def test_gradient_matches_finite_difference_direction():
    # The loss is differentiable through the mined negatives: compare with the NumPy reference.
    rng = np.random.default_rng(3)
    logits, locs, labels, glocs, scores = _random_batch(rng, n=1, a=40, c=3, pos_frac=0.2)
    var = tf.Variable(logits.astype(np.float64))
    with tf.GradientTape() as tape:
        total = losses.ssd_losses(var, locs, labels, glocs, scores)["total"]
    grad = tape.gradient(total, var).numpy()
    eps = 1e-3
    for idx in [(0, 0, 0), (0, 5, 1), (0, 17, 2), (0, 39, 0)]:
        up, down = logits.astype(np.float64).copy(), logits.astype(np.float64).copy()
        up[idx] += eps
        down[idx] -= eps
        fd = (_reference(up, locs, labels, glocs, scores)["total"]
              - _reference(down, locs, labels, glocs, scores)["total"]) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_mixed_precision_inputs_give_float32_losses(dtype):
    rng = np.random.default_rng(4)
    logits, locs, labels, glocs, scores = _random_batch(rng)
    low = tf.cast(logits, dtype)
    got = tf.function(losses.ssd_losses)(low, tf.cast(locs, dtype), labels, glocs, scores)
    # Same as float32 on the rounded inputs: nothing is computed in low precision.
    want = _reference(tf.cast(low, tf.float32).numpy(), tf.cast(tf.cast(locs, dtype), tf.float32).numpy(),
                      labels, glocs, scores)
    _assert_close(got, want)


def test_bad_options():
    z = np.zeros([1, 2, 3], np.float32)
    with pytest.raises(ValueError, match="per_image, batch"):
        losses.ssd_losses(z, z[..., :2], [[0, 0]], z[..., :2], [[0.0, 0.0]], mining="global")
    with pytest.raises(ValueError, match="positives, batch_size"):
        losses.ssd_losses(z, z[..., :2], [[0, 0]], z[..., :2], [[0.0, 0.0]], normalization="images")


def test_compiles_with_xla():
    rng = np.random.default_rng(6)
    batch = _random_batch(rng, n=2, a=50, c=4)
    for mining in ("per_image", "batch"):
        fn = tf.function(lambda *b: losses.ssd_losses(*b, mining=mining), jit_compile=True)
        _assert_close(fn(*batch), _reference(*batch, mining=mining), rtol=1e-4)
