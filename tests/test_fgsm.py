"""Properties of ardir_tf.attacks.fgsm: any batch, norm, radius and objective stays in the ball and
in the [0, 1] box."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ardir_tf.attacks import fgsm


@st.composite
def fgsm_cases(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(2, 6)), draw(st.sampled_from([1, 3])))
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0 if norm == "linf" else 3.0,
                                                                allow_subnormal=False)))
    return shape, norm, eps, draw(st.sampled_from(["ce", "cw"])), draw(st.integers(0, 2**16))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fgsm_cases())
def test_fgsm_stays_in_the_ball_and_the_box(case):
    shape, norm, eps, objective, seed = case
    model = _any_size_model(shape[-1])
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    x[rng.uniform(size=shape) < 0.2] = 1.0
    y = rng.integers(0, 3, shape[0]).astype(np.int32)
    x_adv = fgsm(model, tf.constant(x), tf.constant(y), epsilon=eps, norm=norm, objective=objective).numpy()
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32 and np.all(np.isfinite(x_adv))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    bound = np.abs(delta).max(axis=-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
    assert np.all(bound <= eps + 1e-5)
    if eps == 0.0:
        np.testing.assert_array_equal(x_adv, x)


_MODELS: dict[int, keras.Model] = {}


def _any_size_model(channels: int) -> keras.Model:
    """conv3x3(4, tanh) -> global mean -> dense(3), for any image size."""
    if channels not in _MODELS:
        keras.utils.set_random_seed(channels)
        inputs = keras.Input((None, None, channels))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs))
        _MODELS[channels] = keras.Model(inputs, keras.layers.Dense(3)(h))
    return _MODELS[channels]
