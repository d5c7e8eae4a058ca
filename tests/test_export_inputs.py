"""Properties of the export's input validation: the SavedModel's serving, feature and attack
signatures and ``export.predict``'s check of image arrays refuse bad input with a clear message and
pass good input through unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


EXPORT_SHAPE = (5, 4, 2)  # (H, W, C) of the exported test model; 3 classes


@pytest.fixture(scope="module")
def export_module():
    from export.savedmodel import ExportModule

    keras.utils.set_random_seed(0)
    inputs = keras.Input(EXPORT_SHAPE)
    h = keras.layers.Conv2D(3, 3, padding="same", name="stage1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    return ExportModule(model, EXPORT_SHAPE, ["stage1"])


@st.composite
def image_arrays(draw):
    """Image batches of any rank 1-5 whose dims are mostly right, with values in or out of [0, 1]."""
    rank = draw(st.sampled_from([4, 4, 4, 1, 2, 3, 5]))
    dims = [draw(st.integers(0, 3))] + [draw(st.sampled_from([d, d, d, d + 1, 1])) for d in EXPORT_SHAPE]
    dims = dims[:rank] if rank <= 4 else dims + [1] * (rank - 4)
    low, high = draw(st.sampled_from([(0.0, 1.0), (0.0, 1.0), (-0.5, 1.0), (0.0, 255.0)]))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).uniform(low, high, dims).astype(np.float32)
    if x.size:
        x.flat[0] = low
    return x


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_arrays())
def test_saved_model_image_checks_property(export_module, x):
    right_shape = x.ndim == 4 and x.shape[1:] == EXPORT_SHAPE
    in_range = x.size == 0 or (x.min() >= 0.0 and x.max() <= 1.0)
    for function in (export_module.serve, export_module.features):
        if right_shape and in_range:
            out = function(tf.constant(x))
            assert all(int(t.shape[0]) == len(x) for t in out.values())
            continue
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            function(tf.constant(x))
        message = "images must have shape [N, 5, 4, 2]" if not right_shape else "pixels must lie in [0, 1]"
        assert message in str(err.value)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(-1, 4), st.sampled_from([0, 0, 0, 1, -1]),
       st.sampled_from([0.0, 0.1, 0.3, 1.0, -0.1, 1.5]), st.sampled_from([0, 1, 3, -1, 1001]), st.integers(0, 2**16))
def test_saved_model_attack_checks_property(export_module, n, label_max, extra_labels, eps, steps, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *EXPORT_SHAPE)).astype(np.float32)
    labels = np.minimum(rng.integers(0, 3, n + extra_labels if n + extra_labels > 0 else 0), label_max)
    if len(labels):
        labels[0] = label_max
    valid = (len(labels) == n and label_max in range(3) and 0.0 <= eps <= 1.0 and 0 <= steps <= 1000)
    call = lambda: export_module.attack(tf.constant(x), tf.constant(labels, tf.int32), tf.constant(eps, tf.float32),
                                        tf.constant(steps, tf.int32))
    if not valid:
        with pytest.raises(tf.errors.InvalidArgumentError, match="labels must|epsilon must|steps must"):
            call()
        return
    out = call()
    x_adv = out["adversarial_images"].numpy()
    assert x_adv.shape == x.shape and out["logits"].shape == (n, 3)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0 and np.abs(x_adv - x).max() <= eps + 1e-6


@st.composite
def predict_arrays(draw):
    h, w, c = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
    layout = draw(st.sampled_from(["nhwc", "hwc", "hw", "nhwc_bad_c", "nhwc_bad_hw", "flat", "rank5"]))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int32, np.bool_]))
    span = draw(st.sampled_from(["unit", "unit", "above", "negative", "nan"]))
    n = draw(st.integers(0, 3))
    shape = {"nhwc": (n, h, w, c), "hwc": (h, w, c), "hw": (h, w), "nhwc_bad_c": (n, h, w, 4 - c),
             "nhwc_bad_hw": (n, h + 1, w, c), "flat": (h * w * c,), "rank5": (1, n, h, w, c)}[layout]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == np.uint8:
        x = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        x = rng.uniform(0, 1, shape)
        if x.size and span != "unit" and np.issubdtype(dtype, np.floating):
            x.flat[0] = {"above": 1.5, "negative": -0.1, "nan": np.nan}[span]
        x = x.astype(dtype)
    return (h, w, c), layout, x


@settings(max_examples=30, deadline=None)
@given(predict_arrays())
def test_predict_input_check_property(case):
    from export.predict import InputError, check_batch

    shape, layout, x = case
    h, w, c = shape
    numeric = x.dtype == np.uint8 or (np.issubdtype(x.dtype, np.floating)
                                      and (x.size == 0 or (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1)))
    fits = layout in ("nhwc", "hwc") or (layout == "hw" and c == 1)
    try:
        out = check_batch(x, shape)
    except InputError as err:
        assert "\n" not in str(err)
        assert not (numeric and fits), f"valid input refused: {err}"
        return
    assert numeric and fits, "invalid input accepted"
    assert out.dtype == np.float32 and out.ndim == 4 and out.shape[1:] == (h, w, c)
    assert out.size == 0 or (out.min() >= 0.0 and out.max() <= 1.0)
    expected = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)
