"""Tests of ardir_tf.losses against hand computations in NumPy (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import losses

RNG = np.random.default_rng(0)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(z))


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_c p (log p - log q) per example, for probability rows."""
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def logits(b=5, c=7, scale=3.0):
    return (scale * RNG.standard_normal((b, c))).astype(np.float32)


# ---------------------------------------------------------------------------------------- KL


def test_kl_per_example_matches_numpy():
    a, b = logits(), logits()
    expected = np_kl(np_softmax(a), np_softmax(b))
    got = losses.kl_per_example(a, b).numpy()
    assert got.shape == (5,)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_kl_hand_computed_two_classes():
    # P = softmax([0, 0]) = (1/2, 1/2); Q = softmax([log 3, 0]) = (3/4, 1/4).
    # KL(P || Q) = 1/2 log(2/3) + 1/2 log(2) = 1/2 log(4/3).
    p = np.array([[0.0, 0.0]], np.float32)
    q = np.array([[np.log(3.0), 0.0]], np.float32)
    got = float(losses.kl_divergence(p, q, reduction="batchmean"))
    assert got == pytest.approx(0.5 * np.log(4.0 / 3.0), rel=1e-6)
    # KL is not symmetric: KL(Q || P) = 3/4 log(3/2) + 1/4 log(1/2).
    got_rev = float(losses.kl_divergence(q, p, reduction="batchmean"))
    assert got_rev == pytest.approx(0.75 * np.log(1.5) + 0.25 * np.log(0.5), rel=1e-6)


def test_kl_reductions_match_numpy():
    a, b = logits(b=6, c=10), logits(b=6, c=10)
    per = np_kl(np_softmax(a), np_softmax(b))
    none = losses.kl_divergence(a, b, reduction="none").numpy()
    batchmean = float(losses.kl_divergence(a, b, reduction="batchmean"))
    elementmean = float(losses.kl_divergence(a, b, reduction="elementmean"))
    np.testing.assert_allclose(none, per, rtol=1e-5, atol=1e-6)
    assert batchmean == pytest.approx(per.sum() / 6, rel=1e-5)
    # PyTorch KLDivLoss(reduction="mean"): mean over all B * C elements of p (log p - log q).
    p, q = np_softmax(a), np_softmax(b)
    assert elementmean == pytest.approx(np.mean(p * (np.log(p) - np.log(q))), rel=1e-5)


def test_kl_default_reduction_is_batchmean():
    a, b = logits(), logits()
    assert float(losses.kl_divergence(a, b)) == float(losses.kl_divergence(a, b, reduction="batchmean"))


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_kl_elementmean_is_batchmean_over_num_classes(num_classes):
    """The scale of docs/methods.md: elementmean == batchmean / C (C times smaller)."""
    a, b = logits(b=4, c=num_classes), logits(b=4, c=num_classes)
    batchmean = losses.kl_divergence(a, b, temperature=2.0, reduction="batchmean").numpy()
    elementmean = losses.kl_divergence(a, b, temperature=2.0, reduction="elementmean").numpy()
    assert elementmean == pytest.approx(batchmean / num_classes, rel=1e-6)
    assert elementmean * num_classes == pytest.approx(batchmean, rel=1e-6)
    assert batchmean > 0


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0, 30.0])
def test_kl_temperature_softens_both_sides_without_t_squared(t):
    a, b = logits(scale=5.0), logits(scale=5.0)
    expected = np_kl(np_softmax(a / t), np_softmax(b / t))
    got = losses.kl_divergence(a, b, temperature=t, reduction="none").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    # The t^2 factor of Hinton et al. belongs to the methods, not to losses.kl_*.
    mean = float(losses.kl_divergence(a, b, temperature=t))
    assert mean == pytest.approx(expected.mean(), rel=1e-4, abs=1e-7)
    if t != 1.0:
        assert mean != pytest.approx(t * t * expected.mean(), rel=1e-2)


def test_kl_keeps_its_digits_for_close_distributions_at_high_temperature():
    # ARD's t = 30 between a teacher and a close student: KL ~ 1e-7, where a float32 computation
    # loses most digits to cancellation. Compare with float64 NumPy to 1e-3 relative.
    a = logits(b=8, c=10, scale=2.0)
    b = a + 0.05 * RNG.standard_normal(a.shape).astype(np.float32)
    expected = np_kl(np_softmax(a / 30.0), np_softmax(b / 30.0))
    assert expected.max() < 1e-5
    got = losses.kl_divergence(a, b, temperature=30.0, reduction="none").numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-3)
    assert np.all(got > 0)


def test_kl_high_temperature_goes_to_zero():
    a, b = logits(scale=5.0), logits(scale=5.0)
    kl1 = float(losses.kl_divergence(a, b, temperature=1.0))
    kl30 = float(losses.kl_divergence(a, b, temperature=30.0))
    assert 0 <= kl30 < kl1 / 50


def test_kl_is_zero_for_equal_logits_and_shift_invariant():
    a = logits()
    np.testing.assert_allclose(losses.kl_divergence(a, a, reduction="none").numpy(), 0.0, atol=1e-6)
    # Softmax is invariant to adding a constant per row.
    shifted = a + np.arange(5, dtype=np.float32)[:, None] * 10.0
    np.testing.assert_allclose(losses.kl_divergence(a, shifted, reduction="none").numpy(), 0.0, atol=1e-5)


def test_kl_is_stable_for_extreme_logits():
    a = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    b = np.array([[0.0, 1000.0, -1000.0]], np.float32)
    got = losses.kl_divergence(a, b, reduction="none").numpy()
    assert np.all(np.isfinite(got))
    assert got[0] == pytest.approx(1000.0, rel=1e-5)  # P = e_0, log q_0 = -1000


def test_kl_computes_in_float32_for_low_precision_inputs():
    a, b = logits(), logits()
    got = losses.kl_divergence(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16), reduction="none")
    assert got.dtype == tf.float32
    ref = np_kl(np_softmax(tf.cast(tf.cast(a, tf.bfloat16), tf.float32).numpy()),
                np_softmax(tf.cast(tf.cast(b, tf.bfloat16), tf.float32).numpy()))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_kl_gradient_matches_softmax_difference():
    # d/dz_q KL(p || softmax(z_q)) = softmax(z_q) - p (per example; batchmean divides by B).
    a, b = logits(b=3, c=4), logits(b=3, c=4)
    zq = tf.Variable(b)
    with tf.GradientTape() as tape:
        loss = losses.kl_divergence(a, zq, reduction="batchmean")
    grad = tape.gradient(loss, zq).numpy()
    np.testing.assert_allclose(grad, (np_softmax(b) - np_softmax(a)) / 3, atol=1e-6)


def test_kl_elementmean_gradient_is_the_reference_one():
    # PyTorch's mean over B*C of p (log p - log_softmax(z)): gradient (softmax(z) - p) / (B*C).
    a, b = logits(b=3, c=4), logits(b=3, c=4)
    zq = tf.Variable(b)
    with tf.GradientTape() as tape:
        loss = losses.kl_divergence(a, zq, reduction="elementmean")
    np.testing.assert_allclose(tape.gradient(loss, zq).numpy(), (np_softmax(b) - np_softmax(a)) / 12, atol=1e-7)


@pytest.mark.parametrize("reduction,divisor", [("batchmean", 1), ("none", 1), ("elementmean", 7)])
def test_kl_per_example_has_the_scale_of_its_reduction(reduction, divisor):
    """A weighted mean of per-example values (IAD's trust weights) keeps the reduction's scale:
    the one place where elementmean divides by C."""
    a, b = logits(), logits()
    per = np_kl(np_softmax(a), np_softmax(b)) / divisor
    got = losses.kl_per_example(a, b, reduction=reduction).numpy()
    np.testing.assert_allclose(got, per, rtol=1e-5, atol=1e-7)
    w = RNG.uniform(size=5)
    np.testing.assert_allclose(np.mean(w * got), np.mean(w * per), rtol=1e-5)
    if reduction != "none":
        assert float(losses.kl_divergence(a, b, reduction=reduction)) == pytest.approx(per.mean(), rel=1e-5)


def test_unknown_kl_reduction_raises():
    a = logits()
    with pytest.raises(ValueError, match="reduction"):
        losses.kl_divergence(a, a, reduction="mean")
    with pytest.raises(ValueError):
        losses.kl_divergence(a, a, reduction="sum")
    with pytest.raises(ValueError, match="reduction"):
        losses.kl_per_example(a, a, reduction="mean")


# ---------------------------------------------------------------------------------------- CE


def test_cross_entropy_matches_numpy():
    z = logits(b=6, c=10)
    y = np.array([0, 3, 9, 2, 2, 7], np.int64)
    expected = -np_log_softmax(z)[np.arange(6), y]
    per = losses.cross_entropy_per_example(y, z).numpy()
    assert per.shape == (6,) and per.dtype == np.float32
    np.testing.assert_allclose(per, expected, rtol=1e-5, atol=1e-6)
    assert float(losses.cross_entropy(y, z)) == pytest.approx(expected.mean(), rel=1e-5)


def test_cross_entropy_hand_values():
    # Uniform logits over C classes: CE = log C for any label.
    z = np.zeros((2, 4), np.float32)
    np.testing.assert_allclose(losses.cross_entropy_per_example([1, 3], z).numpy(), np.log(4.0), rtol=1e-6)
    # logits (log 1, log 3) -> p = (1/4, 3/4): CE(y=1) = log(4/3), CE(y=0) = log 4.
    z = np.log(np.array([[1.0, 3.0], [1.0, 3.0]], np.float32))
    np.testing.assert_allclose(losses.cross_entropy_per_example([1, 0], z).numpy(),
                               [np.log(4 / 3), np.log(4.0)], rtol=1e-5)


def test_cross_entropy_accepts_float_labels_and_low_precision_logits():
    z = logits(b=3, c=5)
    y = np.array([4, 0, 1], np.float32)
    got = losses.cross_entropy_per_example(y, tf.cast(z, tf.float16))
    assert got.dtype == tf.float32
    zf = tf.cast(tf.cast(z, tf.float16), tf.float32).numpy()
    np.testing.assert_allclose(got.numpy(), -np_log_softmax(zf)[np.arange(3), [4, 0, 1]], rtol=1e-5)


# ---------------------------------------------------------------------------------------- IR distances


def features(shape=(3, 4, 5, 6), positive=False):
    f = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(f) if positive else f


def np_unit_rows(t: np.ndarray) -> np.ndarray:
    flat = np.asarray(t, np.float64).reshape(len(t), -1)
    return flat / np.linalg.norm(flat, axis=-1, keepdims=True)


def np_attention(t: np.ndarray) -> np.ndarray:
    a = np.mean(np.square(np.asarray(t, np.float64)), axis=-1)  # [B, H, W]
    return np_unit_rows(a)


def np_cos(s, t):
    return np.sum(np_unit_rows(s) * np_unit_rows(t), axis=-1)


def test_normalized_mse_matches_numpy_and_equals_two_minus_two_cos():
    s, t = features(), features()
    expected = np.sum(np.square(np_unit_rows(s) - np_unit_rows(t)), axis=-1)
    got = losses.ir_distance_per_example(s, t, "normalized_mse").numpy()
    assert got.shape == (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got, 2.0 - 2.0 * np_cos(s, t), atol=1e-5)
    # the default kind is normalized_mse
    np.testing.assert_allclose(losses.ir_distance_per_example(s, t).numpy(), got, atol=0)


def test_normalized_mse_bounds_are_reached():
    s = features((2, 3, 3, 2))
    np.testing.assert_allclose(losses.ir_distance_per_example(s, -s, "normalized_mse").numpy(), 4.0, atol=1e-5)
    np.testing.assert_allclose(losses.ir_distance_per_example(s, 7.5 * s, "normalized_mse").numpy(), 0.0, atol=1e-5)
    # orthogonal examples: distance 2
    a = np.zeros((1, 2, 2, 1), np.float32)
    b = np.zeros((1, 2, 2, 1), np.float32)
    a[0, 0, 0, 0], b[0, 1, 1, 0] = 3.0, 0.5
    assert float(losses.ir_distance_per_example(a, b, "normalized_mse")[0]) == pytest.approx(2.0, abs=1e-6)


def test_normalized_mse_is_in_zero_four_and_scale_invariant():
    for _ in range(5):
        s, t = features((8, 2, 2, 3)), features((8, 2, 2, 3))
        d = losses.ir_distance_per_example(s, t, "normalized_mse").numpy()
        assert np.all(d >= -1e-6) and np.all(d <= 4 + 1e-5)
        d_scaled = losses.ir_distance_per_example(100.0 * s, 0.01 * t, "normalized_mse").numpy()
        np.testing.assert_allclose(d_scaled, d, atol=1e-5)


def test_cosine_matches_numpy():
    s, t = features(), features()
    got = losses.ir_distance_per_example(s, t, "cosine").numpy()
    np.testing.assert_allclose(got, 1.0 - np_cos(s, t), atol=1e-5)
    np.testing.assert_allclose(got, losses.ir_distance_per_example(s, t, "normalized_mse").numpy() / 2, atol=1e-5)
    np.testing.assert_allclose(losses.ir_distance_per_example(s, -s, "cosine").numpy(), 2.0, atol=1e-5)


def test_mse_matches_numpy():
    s, t = features(), features()
    expected = np.mean(np.square(s.astype(np.float64) - t), axis=(1, 2, 3))
    got = losses.ir_distance_per_example(s, t, "mse").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # not scale invariant: 2x the difference, 4x the distance
    np.testing.assert_allclose(losses.ir_distance_per_example(2 * s, 2 * t, "mse").numpy(), 4 * expected, rtol=1e-5)


def test_mse_hand_value():
    s = np.zeros((1, 2, 1, 2), np.float32)
    t = np.array([[[[1.0, 2.0]], [[0.0, -3.0]]]], np.float32)
    # (1 + 4 + 0 + 9) / 4 elements
    assert float(losses.ir_distance_per_example(s, t, "mse")[0]) == pytest.approx(3.5)


def test_attention_map_is_mean_over_channels_of_squares_l2_normalised():
    f = features((2, 3, 4, 5))
    got = losses.attention_map(f).numpy()
    assert got.shape == (2, 12)
    np.testing.assert_allclose(got, np_attention(f), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
    # hand value: one example, 1x2 spatial, 2 channels: squares mean (1+9)/2=5 and (4+0)/2=2
    f = np.array([[[[1.0, 3.0], [2.0, 0.0]]]], np.float32)
    np.testing.assert_allclose(losses.attention_map(f).numpy(), [[5 / np.sqrt(29), 2 / np.sqrt(29)]], atol=1e-6)


def test_attention_distance_matches_numpy_and_allows_different_channels():
    s, t = features((3, 4, 4, 6)), features((3, 4, 4, 16))
    expected = np.sum(np.square(np_attention(s) - np_attention(t)), axis=-1)
    got = losses.ir_distance_per_example(s, t, "attention").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # attention maps are non-negative unit vectors: distance in [0, 2]
    assert np.all(got >= 0) and np.all(got <= 2 + 1e-5)
    # sign of activations does not matter (squares)
    np.testing.assert_allclose(losses.ir_distance_per_example(s, -s, "attention").numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("kind", losses.IR_DISTANCES)
def test_ir_distance_is_zero_for_identical_inputs(kind):
    s = features((4, 3, 3, 5))
    np.testing.assert_allclose(losses.ir_distance_per_example(s, s, kind).numpy(), 0.0, atol=1e-6)
    assert abs(float(losses.ir_distance(s, s, kind))) < 1e-6


@pytest.mark.parametrize("kind", losses.IR_DISTANCES)
def test_ir_distance_is_batch_mean_of_per_example(kind):
    s, t = features((5, 2, 3, 4)), features((5, 2, 3, 4))
    per = losses.ir_distance_per_example(s, t, kind).numpy()
    assert float(losses.ir_distance(s, t, kind)) == pytest.approx(per.mean(), rel=1e-6)
    assert losses.ir_distance(s, t, kind).dtype == tf.float32


@pytest.mark.parametrize("kind", losses.IR_DISTANCES)
def test_ir_distance_per_example_is_independent_of_batch_mates(kind):
    s, t = features((4, 3, 3, 2)), features((4, 3, 3, 2))
    full = losses.ir_distance_per_example(s, t, kind).numpy()
    single = np.array([float(losses.ir_distance_per_example(s[i:i + 1], t[i:i + 1], kind)[0]) for i in range(4)])
    np.testing.assert_allclose(full, single, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", losses.IR_DISTANCES)
def test_ir_distance_accepts_low_precision_and_flat_tensors(kind):
    s, t = features((3, 2, 2, 4)), features((3, 2, 2, 4))
    ref = losses.ir_distance_per_example(s, t, kind).numpy()
    got = losses.ir_distance_per_example(tf.cast(s, tf.bfloat16), tf.cast(t, tf.bfloat16), kind)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=0.05, atol=0.02)
    if kind != "attention":  # the other kinds only flatten: a [B, N] tensor gives the same distance
        flat = losses.ir_distance_per_example(s.reshape(3, -1), t.reshape(3, -1), kind).numpy()
        np.testing.assert_allclose(flat, ref, rtol=1e-6, atol=1e-7)


def test_unknown_ir_distance_raises():
    s = features()
    with pytest.raises(ValueError, match="IR distance"):
        losses.ir_distance_per_example(s, s, "l1")
    with pytest.raises(ValueError):
        losses.ir_distance(s, s, "Normalized_MSE")
