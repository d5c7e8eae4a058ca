"""Shared fixtures: MNIST-5k arrays and one small CNN trained once per test session.

``trained_small_cnn`` is a ``small_cnn`` (width 8) trained with plain Keras (Adam 1e-3,
sparse CE on logits, batch 64) for 2 epochs on the 4,000 mnist5k training digits: about 7 s on
the 2-core CPU, ~94% natural accuracy on the 1,000 held-out digits. It is saved once to a
session temporary directory (``trained_small_cnn_path``, for the CLI tests) and every test gets
the same in-memory model, which tests must not modify.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from train_cli import train_cli  # noqa: F401  (a fixture: the training CLI in this process)

NATURAL_ACCURACY_FLOOR = 0.90


@pytest.fixture(scope="session")
def mnist5k_train():
    from ardir_tf import data

    return data.load_arrays("mnist5k", "train")


@pytest.fixture(scope="session")
def mnist5k_test():
    """The 1,000 held-out mnist5k digits: float32 [N, 28, 28, 1] in [0, 1], int32 labels."""
    from ardir_tf import data

    return data.load_arrays("mnist5k", "test")


@pytest.fixture(scope="session")
def trained_small_cnn_path(tmp_path_factory, mnist5k_train, mnist5k_test):
    """Path of a ``.keras`` file of the trained small CNN (natural test accuracy asserted >= 90%)."""
    from ardir_tf import models

    x_train, y_train = mnist5k_train
    x_test, y_test = mnist5k_test
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn", 10, (28, 28, 1), width=8)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=64, epochs=2, shuffle=True, verbose=0)
    logits = model.predict(x_test, batch_size=500, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_test))
    assert accuracy >= NATURAL_ACCURACY_FLOOR, f"fixture model reached only {accuracy:.3f} natural accuracy"
    path = tmp_path_factory.mktemp("trained_small_cnn") / "small_cnn.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="session")
def trained_small_cnn(trained_small_cnn_path):
    """The trained small CNN (Keras functional model returning logits); do not modify it."""
    return keras.models.load_model(trained_small_cnn_path, compile=False)
