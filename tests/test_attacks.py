"""Tests of ardir_tf.attacks: PGD/FGSM invariants (hypothesis), hand-computed steps on a linear
model, objectives against NumPy, determinism, argument validation, strength on a trained MNIST
model and a cross-check against an independent implementation (ART)."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ardir_tf.attacks import fgsm, objectives, pgd, primitives, project, validate

# ------------------------------------------------------------------------------------------ helpers


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p_logits, q_logits):
    p, q = np_softmax(p_logits), np_softmax(q_logits)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model(x, training=False).numpy(), axis=-1) == np.asarray(y)))


@functools.lru_cache(maxsize=None)
def tiny_conv_model(channels: int) -> keras.Model:
    """A random conv net accepting any spatial size: conv3x3(4, tanh) -> global mean -> dense(3)."""
    keras.utils.set_random_seed(channels)
    inputs = keras.Input((None, None, channels))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def linear_model(shape=(4, 4, 2), classes=5, seed=0):
    """``logits = flatten(x) @ W + b`` with known W, b (returned as float64 NumPy arrays)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    w = rng.standard_normal((d, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(classes)])
    model.layers[-1].set_weights([w, b])
    return model, w.astype(np.float64), b.astype(np.float64)


def images(batch, shape=(4, 4, 2), seed=1):
    """Random [0, 1] images with some pixels exactly at 0 and 1 (to exercise the clipping)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, *shape))
    x[rng.uniform(size=x.shape) < 0.15] = 0.0
    x[rng.uniform(size=x.shape) < 0.15] = 1.0
    return x.astype(np.float32)


def np_ce_grad(x, y, w, b):
    """Gradient of sum_i CE(softmax(W^T x_i + b), y_i) w.r.t. x, for the linear model."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    p = np_softmax(flat @ w + b)
    p[np.arange(len(x)), y] -= 1.0
    return (p @ w.T).reshape(x.shape)


# ------------------------------------------------------------------------------------------ invariants


@st.composite
def attack_cases(draw):
    channels = draw(st.integers(1, 3))
    h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    batch = draw(st.integers(1, 4))
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, allow_subnormal=False)))
    steps = draw(st.integers(0, 5))
    step_size = draw(st.floats(1e-3, 1.0))
    random_start = draw(st.sampled_from(["uniform", "normal", "none"]))
    objective = draw(st.sampled_from(["ce", "cw", "trades"]))
    seed = draw(st.integers(0, 2**16))
    return channels, (batch, h, w, channels), norm, eps, steps, step_size, random_start, objective, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack_cases())
def test_pgd_stays_in_the_ball_and_the_box(case):
    channels, shape, norm, eps, steps, step_size, random_start, objective, seed = case
    model = tiny_conv_model(channels)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    x[rng.uniform(size=shape) < 0.2] = 1.0
    x[rng.uniform(size=shape) < 0.2] = 0.0
    y = rng.integers(0, 3, shape[0]).astype(np.int32)
    reference = model(x) if objective == "trades" else None
    x_adv = pgd(model, tf.constant(x), tf.constant(y), epsilon=eps, step_size=step_size, steps=steps, norm=norm,
                random_start=random_start, objective=objective, reference=reference,
                seed=keras.random.SeedGenerator(seed))
    assert isinstance(x_adv, tf.Tensor) and x_adv.dtype == tf.float32
    x_adv = x_adv.numpy()
    assert x_adv.shape == x.shape
    assert x_adv.shape[0] == len(y)
    assert np.all(np.isfinite(x_adv))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-6
    else:
        assert np.linalg.norm(delta, axis=-1).max() <= eps + 1e-5
    if eps == 0.0 or (steps == 0 and random_start == "none"):
        np.testing.assert_array_equal(x_adv, x)


@settings(max_examples=25, deadline=None)
@given(
    # no subnormal floats: the CPU flushes them to zero
    st.integers(1, 4), st.sampled_from(["linf", "l2"]), st.floats(0.0, 1.0, allow_subnormal=False, width=32),
    # scale 0 or >= 1e-6: tiny normal scales times N(0,1) would still produce subnormal deltas
    st.one_of(st.just(0.0), st.floats(1e-6, 3.0)), st.integers(0, 1000),
)
def test_project_lands_in_the_ball_and_keeps_inner_points(batch, norm, eps, scale, seed):
    rng = np.random.default_rng(seed)
    delta = (scale * rng.standard_normal((batch, 3, 2, 2))).astype(np.float32)
    out = project(tf.constant(delta), tf.constant(eps, tf.float32), norm).numpy()
    flat_in, flat_out = delta.reshape(batch, -1), out.reshape(batch, -1)
    if norm == "linf":
        np.testing.assert_allclose(out, np.clip(delta, -eps, eps), atol=0)
    else:
        n_in = np.linalg.norm(flat_in, axis=-1)
        n_out = np.linalg.norm(flat_out, axis=-1)
        assert np.all(n_out <= eps + 1e-5)
        inside = n_in <= eps
        np.testing.assert_allclose(flat_out[inside], flat_in[inside], rtol=1e-6)
        # outside: rescaled onto the sphere, same direction
        np.testing.assert_allclose(n_out[~inside], eps, rtol=1e-5, atol=1e-6)
        for i in np.flatnonzero(~inside & (n_out > 1e-6)):
            np.testing.assert_allclose(flat_out[i] / n_out[i], flat_in[i] / n_in[i], atol=1e-5)


def test_pgd_with_no_steps_and_no_start_returns_x_exactly():
    model = tiny_conv_model(1)
    x = images(3, (5, 5, 1))
    for norm in ("linf", "l2"):
        out = pgd(model, x, np.array([0, 1, 2]), epsilon=0.3, step_size=0.1, steps=0, norm=norm, random_start="none")
        np.testing.assert_array_equal(out.numpy(), x)


def test_pgd_with_no_steps_returns_the_random_start():
    model = tiny_conv_model(1)
    x = np.full((2, 6, 6, 1), 0.5, np.float32)
    y = np.array([0, 1])
    uniform = pgd(model, x, y, epsilon=0.2, step_size=0.1, steps=0, random_start="uniform",
                  seed=keras.random.SeedGenerator(1)).numpy()
    d = uniform - x
    assert np.abs(d).max() <= 0.2 + 1e-6
    assert np.abs(d).max() > 0.15  # 72 uniform draws in [-0.2, 0.2]
    assert abs(d.mean()) < 0.05
    normal = pgd(model, x, y, epsilon=0.2, step_size=0.1, steps=0, random_start="normal",
                 seed=keras.random.SeedGenerator(1)).numpy()
    d = normal - x
    # x + 0.001 N(0, 1): tiny, non-zero perturbation
    assert 0 < np.abs(d).max() < 0.006
    assert 0.0005 < d.std() < 0.002
    l2 = pgd(model, x, y, epsilon=0.2, step_size=0.1, steps=0, norm="l2", random_start="uniform",
             seed=keras.random.SeedGenerator(1)).numpy()
    norms = np.linalg.norm((l2 - x).reshape(2, -1), axis=-1)
    assert np.all(norms <= 0.2 + 1e-6) and np.all(norms > 0)


# ------------------------------------------------------------------------------------------ hand-computed steps


@pytest.mark.parametrize("eps", [0.03, 0.1, 0.5])
def test_fgsm_linf_equals_hand_computed_sign_step(eps):
    model, w, b = linear_model()
    x = images(6)
    y = np.array([0, 1, 2, 3, 4, 0])
    grad = np_ce_grad(x, y, w, b)
    assert np.all(np.abs(grad) > 1e-6)  # no ambiguous signs
    expected = np.clip(x + eps * np.sign(grad), 0.0, 1.0)
    got = fgsm(model, x, y, epsilon=eps).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # the same as one PGD step of size eps with no random start
    same = pgd(model, x, y, epsilon=eps, step_size=eps, steps=1, random_start="none").numpy()
    np.testing.assert_array_equal(got, same)


def test_fgsm_l2_equals_hand_computed_normalised_gradient_step():
    model, w, b = linear_model()
    x = np.full((3, 4, 4, 2), 0.5, np.float32)  # away from the box: no clipping
    y = np.array([4, 2, 0])
    eps = 0.4
    grad = np_ce_grad(x, y, w, b).reshape(3, -1)
    expected = x.reshape(3, -1) + eps * grad / np.linalg.norm(grad, axis=-1, keepdims=True)
    got = fgsm(model, x, y, epsilon=eps, norm="l2").numpy().reshape(3, -1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got - x.reshape(3, -1), axis=-1), eps, rtol=1e-5)


def test_pgd_linf_three_steps_equal_numpy_reference():
    model, w, b = linear_model(seed=3)
    x = images(4, seed=5)
    y = np.array([1, 0, 3, 2])
    eps, eta = 0.1, 0.04
    x_adv = x.astype(np.float64)
    for _ in range(3):
        x_adv = x_adv + eta * np.sign(np_ce_grad(x_adv, y, w, b))
        x_adv = np.clip(x + np.clip(x_adv - x, -eps, eps), 0.0, 1.0)
    got = pgd(model, x, y, epsilon=eps, step_size=eta, steps=3, random_start="none").numpy()
    np.testing.assert_allclose(got, x_adv, atol=1e-5)
    # three steps of 0.04 reach the eps boundary for some pixels: the projection acted
    assert np.isclose(np.abs(got - x).max(), eps, atol=1e-6)


def test_fgsm_cw_objective_follows_the_margin_gradient_and_stops_at_kappa():
    model, w, b = linear_model()
    x = np.full((1, 4, 4, 2), 0.5, np.float32)
    z = x.reshape(1, -1).astype(np.float64) @ w + b
    y = int(np.argmax(z))  # correctly classified: margin < 0 < kappa
    other = int(np.argmax(np.where(np.arange(5) == y, -np.inf, z[0])))
    direction = np.sign(w[:, other] - w[:, y]).reshape(x.shape)
    got = fgsm(model, x, np.array([y]), epsilon=0.05, objective="cw").numpy()
    np.testing.assert_allclose(got, np.clip(x + 0.05 * direction, 0, 1), atol=1e-6)
    # margin far above kappa = 50: the clipped objective is flat, the gradient zero, x unchanged
    big_b = b.copy()
    big_b[(y + 1) % 5] += 1000.0
    model.layers[-1].set_weights([w.astype(np.float32), big_b.astype(np.float32)])
    flat = fgsm(model, x, np.array([y]), epsilon=0.05, objective="cw").numpy()
    np.testing.assert_array_equal(flat, x)


def test_zero_epsilon_attacks_return_x():
    model, _, _ = linear_model()
    x = images(2)
    y = np.array([0, 1])
    np.testing.assert_array_equal(fgsm(model, x, y, epsilon=0.0).numpy(), x)
    np.testing.assert_array_equal(pgd(model, x, y, epsilon=0.0, step_size=0.0, steps=20).numpy(), x)


# ------------------------------------------------------------------------------------------ objectives


def test_ce_objective_matches_numpy_and_reads_logits_of_feature_outputs():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)).astype(np.float32) * 3
    y = np.array([0, 3, 1, 1, 2])
    expected = -np.log(np_softmax(z)[np.arange(5), y])
    np.testing.assert_allclose(objectives.ce(z, y).numpy(), expected, rtol=1e-5)
    ir = rng.standard_normal((5, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(objectives.ce([z, ir], y).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(objectives.ce((z, ir), y, None).numpy(), expected, rtol=1e-5)


def test_margin_hand_values():
    z = np.array([[1.0, 5.0, 3.0], [1.0, 5.0, 3.0], [2.0, 2.0, 0.0], [-4.0, -1.0, -9.0]], np.float32)
    y = np.array([1, 0, 0, 2])
    # z_y - max_{j!=y} z_j; y=1: 5 - 3 = 2 (correct); y=0: 1 - 5 = -4; tie: 0; y=2: -9 - (-1) = -8
    np.testing.assert_allclose(primitives.margin(z, y).numpy(), [2.0, -4.0, 0.0, -8.0], atol=1e-6)
    assert primitives.margin(tf.cast(z, tf.bfloat16), y).dtype == tf.float32


def test_cw_objective_is_the_margin_clipped_at_kappa():
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((6, 10)) * 40).astype(np.float32)
    z[0] = 0.0
    z[0, 3] = 120.0  # margin 120 for y=0: clipped to 50
    y = np.array([0, 1, 2, 3, 4, 5])
    masked = np.where(np.eye(10)[y] > 0, -np.inf, z)
    margin = masked.max(axis=-1) - z[np.arange(6), y]
    np.testing.assert_allclose(objectives.cw(z, y).numpy(), np.minimum(margin, 50.0), rtol=1e-6, atol=1e-5)
    assert float(objectives.cw(z, y)[0]) == 50.0
    np.testing.assert_allclose(objectives.cw([z], y, None, kappa=5.0).numpy(), np.minimum(margin, 5.0), atol=1e-5)


@pytest.mark.parametrize("name", ["trades", "kl_teacher"])
def test_kl_objectives_match_numpy_and_hold_the_reference_fixed(name):
    rng = np.random.default_rng(2)
    ref = tf.Variable(rng.standard_normal((4, 6)).astype(np.float32) * 2)
    z = tf.Variable(rng.standard_normal((4, 6)).astype(np.float32) * 2)
    fn = objectives.get(name)
    with tf.GradientTape(persistent=True) as tape:
        value = fn([z, tf.zeros((4, 3))], np.zeros(4, np.int32), ref)
        total = tf.reduce_sum(value)
    np.testing.assert_allclose(value.numpy(), np_kl(ref.numpy(), z.numpy()), rtol=1e-5, atol=1e-6)
    assert tape.gradient(total, ref) is None  # stop_gradient on the reference
    np.testing.assert_allclose(tape.gradient(total, z).numpy(), np_softmax(z.numpy()) - np_softmax(ref.numpy()),
                               atol=1e-6)
    # zero at the reference itself
    np.testing.assert_allclose(fn(ref, None, ref).numpy(), 0.0, atol=1e-6)


def test_objectives_get_resolves_names_and_passes_callables():
    assert objectives.get("ce") is objectives.ce
    assert objectives.get("cw") is objectives.cw
    # TRADES' and RSLAD's attack objectives are one KL function under two public names
    assert objectives.get("trades") is objectives.get("kl_teacher") is objectives.get("kl") is objectives.kl
    assert objectives.trades is objectives.kl_teacher is objectives.kl

    def mine(outputs, labels, reference):
        return tf.zeros(tf.shape(outputs)[:1])

    assert objectives.get(mine) is mine
    with pytest.raises(ValueError, match="objective"):
        objectives.get("dlr")


def test_custom_objective_is_called_with_outputs_labels_and_reference():
    model, _, _ = linear_model()
    x = images(2)
    y = np.array([3, 1])
    seen = []
    marker = object()

    def objective(outputs, labels, reference):
        seen.append((tuple(outputs.shape), reference))
        tf.debugging.assert_equal(tf.cast(labels, tf.int64), tf.constant([3, 1], tf.int64))
        # maximise logit 0 of every example: its gradient is W[:, 0]
        return outputs[:, 0]

    got = pgd(model, x, y, epsilon=0.05, step_size=0.05, steps=1, random_start="none",
              objective=objective, reference=marker).numpy()
    assert seen == [((2, 5), marker)]
    w = model.layers[-1].get_weights()[0]
    np.testing.assert_allclose(got, np.clip(x + 0.05 * np.sign(w[:, 0]).reshape(1, 4, 4, 2), 0, 1), atol=1e-6)


def test_training_flag_reaches_the_model():
    calls = []
    base, _, _ = linear_model()

    def model(x, training=None):
        calls.append(training)
        return base(x)

    x, y = images(1), np.array([0])
    pgd(model, x, y, epsilon=0.1, step_size=0.05, steps=2)
    pgd(model, x, y, epsilon=0.1, step_size=0.05, steps=2, training=True)
    assert calls == [False, False, True, True]


# ------------------------------------------------------------------------------------------ determinism


def test_graph_and_eager_give_identical_results_with_a_seed(trained_small_cnn, mnist5k_test):
    model = trained_small_cnn
    x, y = tf.constant(mnist5k_test[0][:32]), tf.constant(mnist5k_test[1][:32])
    kwargs = dict(epsilon=0.2, step_size=0.05, steps=4)

    for norm, start in (("linf", "uniform"), ("l2", "uniform"), ("linf", "normal")):
        eager = pgd(model, x, y, norm=norm, random_start=start, seed=keras.random.SeedGenerator(7), **kwargs)
        gen = keras.random.SeedGenerator(7)
        graph = tf.function(lambda a, b: pgd(model, a, b, norm=norm, random_start=start, seed=gen, **kwargs))(x, y)
        diff = np.abs(graph.numpy() - eager.numpy())
        if norm == "linf":  # sign steps: bit-for-bit up to float rounding
            assert diff.max() <= 1e-6, f"{norm} {start}: {diff.max()}"
        else:  # grad / ||grad||: graph and eager round the gradient differently (~1e-7 relative)
            assert diff.max() <= 1e-3 and diff.mean() <= 1e-6, f"{norm} {start}: {diff.max()} {diff.mean()}"
        assert not np.array_equal(eager.numpy(), x.numpy())


def test_seeded_start_noise_is_reproducible_and_unseeded_graph_noise_is_fresh():
    model = tiny_conv_model(1)
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    y = np.array([0, 1])
    start = functools.partial(pgd, model, epsilon=0.3, step_size=0.1, steps=0)
    a = start(x, y, seed=keras.random.SeedGenerator(3)).numpy()
    b = start(x, y, seed=keras.random.SeedGenerator(3)).numpy()
    np.testing.assert_array_equal(a, b)
    gen = keras.random.SeedGenerator(3)
    first, second = start(x, y, seed=gen).numpy(), start(x, y, seed=gen).numpy()
    assert not np.array_equal(first, second)  # a generator advances
    # seed=None inside a tf.function must stay stateful: a new draw on every call
    for norm, kind in (("linf", "uniform"), ("linf", "normal"), ("l2", "uniform")):
        fn = tf.function(lambda a, b: start(a, b, norm=norm, random_start=kind))
        c, d = fn(tf.constant(x), tf.constant(y)).numpy(), fn(tf.constant(x), tf.constant(y)).numpy()
        assert not np.array_equal(c, x)
        assert not np.array_equal(c, d), f"{norm} {kind}: the same noise on every call"


@pytest.mark.parametrize("norm, kind", [("linf", "uniform"), ("linf", "normal"), ("l2", "uniform")])
def test_stateless_seed_tensor_gives_the_same_noise_in_eager_and_graph(norm, kind):
    model = tiny_conv_model(1)
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    y = np.array([0, 1])
    start = functools.partial(pgd, model, epsilon=0.3, step_size=0.1, steps=0, norm=norm, random_start=kind)
    a = start(x, y, seed=tf.constant([5, 11], tf.int64)).numpy()
    b = start(x, y, seed=tf.constant([5, 11], tf.int64)).numpy()
    graph = tf.function(lambda s: start(tf.constant(x), tf.constant(y), seed=s))
    c = graph(tf.constant([5, 11], tf.int64)).numpy()
    d = graph(tf.constant([5, 12], tf.int64)).numpy()  # the trainers' [seed, step]: a new step, new noise
    assert not np.array_equal(a, x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c, a, atol=1e-7)
    assert not np.array_equal(c, d)
    assert np.abs(d - x).max() <= 0.3 + 1e-6


def test_pgd_traces_with_tensor_epsilon_and_steps():
    model = tiny_conv_model(2)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 5, 2]), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    def attack(x, y, eps, steps):
        return pgd(model, x, y, epsilon=eps, step_size=eps / 4, steps=steps)

    x = images(3, (5, 5, 2))
    for eps, steps in ((0.1, 3), (0.3, 0), (0.0, 2)):
        out = attack(x, np.array([0, 1, 2], np.int32), eps, steps).numpy()
        assert np.abs(out - x).max() <= eps + 1e-6
        assert out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=-0.1), "epsilon"),
        (dict(epsilon=1.5), "epsilon"),
        (dict(epsilon=-1.0, norm="l2"), "epsilon"),
        (dict(steps=-1), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(step_size=0.0), "step size"),
        (dict(step_size=-0.01), "step size"),
        (dict(norm="l1"), "norm"),
        (dict(norm="Linf"), "norm"),
        (dict(random_start="gaussian"), "random_start"),
        (dict(objective="dlr"), "objective"),
    ],
)
def test_invalid_settings_raise_value_error(kwargs, match):
    model, _, _ = linear_model()
    args = dict(epsilon=0.1, step_size=0.02, steps=2, norm="linf", random_start="uniform", objective="ce")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pgd(model, images(1), np.array([0]), **args)


@pytest.mark.parametrize("kwargs", [dict(epsilon=np.float32(-0.1)), dict(epsilon=np.float32(1.5)),
                                    dict(steps=np.int64(-1)), dict(step_size=np.float32(0.0))])
def test_invalid_numpy_scalar_settings_raise_value_error(kwargs):
    model, _, _ = linear_model()
    args = dict(epsilon=0.1, step_size=0.02, steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError):
        pgd(model, images(1), np.array([0]), **args)


def test_fgsm_validates_too_and_l2_accepts_large_epsilon():
    model, _, _ = linear_model()
    x, y = images(1), np.array([0])
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, epsilon=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, epsilon=2.0)
    with pytest.raises(ValueError, match="norm"):
        fgsm(model, x, y, epsilon=0.1, norm="l1")
    out = fgsm(model, x, y, epsilon=2.0, norm="l2").numpy()  # eps > 1 is a valid L2 radius
    assert np.linalg.norm(out - x) <= 2.0 + 1e-5
    # step size is irrelevant without steps
    validate(0.1, 0.0, 0, "linf", "none")
    validate(0.1, -1.0, 0, "l2", "uniform")


# ------------------------------------------------------------------------------------------ trained model


@pytest.fixture(scope="module")
def test_batch(mnist5k_test):
    x, y = mnist5k_test
    return tf.constant(x[:200]), tf.constant(y[:200])


@pytest.fixture(scope="module")
def compiled_pgd(trained_small_cnn):
    model = trained_small_cnn

    @tf.function(reduce_retracing=True)
    def run(x, y, eps, step_size, steps, norm="linf", random_start="uniform", objective="ce", reference=None):
        return pgd(model, x, y, epsilon=eps, step_size=step_size, steps=steps, norm=norm,
                   random_start=random_start, objective=objective, reference=reference)

    return run


def test_pgd20_breaks_the_naturally_trained_model(trained_small_cnn, test_batch, compiled_pgd):
    model = trained_small_cnn
    x, y = test_batch
    natural = accuracy(model, x, y)
    assert natural >= 0.90
    keras.utils.set_random_seed(0)
    fgsm_acc = accuracy(model, fgsm(model, x, y, epsilon=0.3), y)
    pgd_acc = accuracy(model, compiled_pgd(x, y, 0.3, 0.075, 20), y)
    assert pgd_acc < 0.05
    assert pgd_acc <= fgsm_acc < natural
    # a smaller ball, a weaker attack
    small = accuracy(model, compiled_pgd(x, y, 0.05, 0.0125, 20), y)
    assert pgd_acc < small < natural + 1e-9


def test_other_objectives_and_l2_lower_accuracy(trained_small_cnn, test_batch, compiled_pgd):
    model = trained_small_cnn
    x, y = test_batch
    natural = accuracy(model, x, y)
    keras.utils.set_random_seed(1)
    cw_acc = accuracy(model, compiled_pgd(x, y, 0.3, 0.075, 20, objective="cw"), y)
    assert cw_acc < 0.05
    # TRADES' KL has zero gradient at x itself: it needs the normal start
    nat_logits = model(x, training=False)
    trades_adv = compiled_pgd(x, y, 0.3, 0.075, 20, random_start="normal", objective="trades", reference=nat_logits)
    assert accuracy(model, trades_adv, y) < 0.5 * natural  # a weaker attack than CE (~0.2 here)
    assert float(tf.reduce_mean(objectives.trades(model(trades_adv), y, nat_logits))) > 1.0
    # kl_teacher against a confident "teacher" that knows the labels
    teacher = 10.0 * tf.one_hot(y, 10)
    kl_adv = compiled_pgd(x, y, 0.3, 0.075, 20, random_start="normal", objective="kl_teacher", reference=teacher)
    assert accuracy(model, kl_adv, y) < 0.1
    l2_acc = accuracy(model, compiled_pgd(x, y, 3.0, 0.75, 20, norm="l2"), y)
    assert l2_acc < natural - 0.4


def test_custom_callable_objective_is_honoured(trained_small_cnn, test_batch):
    model = trained_small_cnn
    x, y = test_batch
    natural = accuracy(model, x, y)
    calls = []

    def minus_ce(outputs, labels, reference):
        calls.append(1)
        return -objectives.ce(outputs, labels)

    helped = pgd(model, x, y, epsilon=0.15, step_size=0.04, steps=5, objective=minus_ce,
                 seed=keras.random.SeedGenerator(0))
    assert len(calls) == 5  # eagerly: one call per step
    helped_acc = accuracy(model, helped, y)
    assert helped_acc >= natural
    assert helped_acc >= 0.98
    ce_nat = float(tf.reduce_mean(objectives.ce(model(x), y)))
    assert float(tf.reduce_mean(objectives.ce(model(helped), y))) < ce_nat / 2


# ------------------------------------------------------------------------------------------ cross-check with ART


@pytest.fixture(scope="module")
def art_classifier(trained_small_cnn):
    pytest.importorskip("art")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        trained_small_cnn, nb_classes=10, input_shape=(28, 28, 1),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0),
    )


def test_fgsm_matches_art(trained_small_cnn, art_classifier, test_batch):
    from art.attacks.evasion import FastGradientMethod

    x, y = test_batch
    x_np, y_np = x.numpy()[:100], y.numpy()[:100]
    eps = 0.1
    theirs = FastGradientMethod(art_classifier, norm=np.inf, eps=eps, batch_size=100).generate(x_np, y=y_np)
    ours = fgsm(trained_small_cnn, x_np, y_np, epsilon=eps).numpy()
    # same sign step; only pixels with a vanishing gradient may differ
    assert np.mean(np.abs(ours - theirs) < 1e-6) > 0.99
    assert np.abs(ours - x_np).max() <= eps + 1e-6
    preds = lambda a: np.argmax(trained_small_cnn(a).numpy(), axis=-1)  # noqa: E731
    assert np.mean(preds(ours) == preds(theirs)) >= 0.98


def test_pgd20_at_least_as_strong_as_art(trained_small_cnn, art_classifier, test_batch, compiled_pgd):
    from art.attacks.evasion import ProjectedGradientDescent

    model = trained_small_cnn
    x, y = test_batch
    eps = 0.1  # natural ~0.93, PGD-20 ~0.5: a discriminating range on this model
    np.random.seed(0)
    attack = ProjectedGradientDescent(art_classifier, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=20,
                                      num_random_init=1, batch_size=200, verbose=False)
    theirs = attack.generate(x.numpy(), y=y.numpy())
    art_acc = accuracy(model, theirs, y)
    keras.utils.set_random_seed(0)
    ours_acc = accuracy(model, compiled_pgd(x, y, eps, eps / 4, 20), y)
    natural = accuracy(model, x, y)
    assert 0.1 < art_acc < natural - 0.2, "eps no longer discriminates on this model"
    assert ours_acc <= art_acc + 0.01


def test_attacks_share_one_set_of_primitives():
    """PGD, FGSM, the objectives and every AutoAttack member use ardir_tf.attacks.primitives:
    no module of the package re-implements a projection, a norm, a random start or the margin."""
    import importlib
    import inspect

    from ardir_tf import attacks
    from ardir_tf.attacks import autoattack

    # the package exports the functions pgd and fgsm under their modules' names
    pgd_module = importlib.import_module("ardir_tf.attacks.pgd")
    fgsm_module = importlib.import_module("ardir_tf.attacks.fgsm")
    from ardir_tf.attacks.autoattack import apgd, common, ensemble, fab, square
    from ardir_tf.attacks.autoattack import losses as aa_losses

    assert attacks.project is pgd_module.project is primitives.project
    assert aa_losses.margin is primitives.margin
    for module in (pgd_module, fgsm_module, objectives, apgd, common, ensemble, fab, square, aa_losses):
        source = inspect.getsource(module)
        for own in ("def project(", "def margin(", "def random_start(", "def _l2_norm", "def batch_norm",
                    "clip_by_value(delta, -", "tf.random.uniform(", "tf.random.normal("):
            assert own not in source, f"{module.__name__} defines its own {own!r}"
    assert "primitives" in inspect.getsource(autoattack.square) and "primitives" in inspect.getsource(pgd_module)


def test_random_start_l2_ball_and_sphere():
    x = tf.fill([64, 4, 4, 1], 0.5)  # far from the box for eps 0.3 / 16 pixels
    ball = primitives.random_start(x, 0.3, "l2", "uniform", tf.constant([1, 2]))
    sphere = primitives.random_start(x, 0.3, "l2", "uniform", tf.random.Generator.from_seed(1), l2_radius="sphere")
    ball_norm = primitives.per_example_norm(ball - x, "l2").numpy()
    assert ball_norm.max() <= 0.3 + 1e-6 and ball_norm.min() < 0.29  # inside, not all on the sphere
    np.testing.assert_allclose(primitives.per_example_norm(sphere - x, "l2").numpy(), 0.3, rtol=1e-5)
    linf = primitives.random_start(x, 0.3, "linf", "uniform", tf.constant([1, 2]))
    assert np.abs(linf - x).max() <= 0.3 + 1e-6 and np.abs(linf - x).max() > 0.25
    np.testing.assert_array_equal(primitives.random_start(x, 0.3, "linf", "none"), x)
