"""Helpers of the tests of bad input and crash safety: the cheapest training flags and the bad
files (broken models, malformed npz) the tests hand to the command-line tools.

Use from a test module with ``from bad_files import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from ardir_tf import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
# The cheapest complete training run: 2 steps of 32 digits per epoch, one PGD step, natural
# accuracy as the only evaluation.
TINY = ["--model_options=width=2", "--train_examples=64", "--batch_size=32", "--attack_steps=1", "--val_examples=0",
        "--eval_examples=20", "--eval_attacks=", "--progress=none"]


def save_small_cnn(path, num_classes: int = 10, input_shape=(28, 28, 1)) -> str:
    models.get("small_cnn", num_classes, input_shape, width=2).save(path)
    return str(path)


def save_npz(path, drop=(), **changes) -> str:
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8), y_train=np.arange(12) % 3,
                  x_test=rng.integers(0, 256, (6, 8, 8, 1)).astype(np.uint8), y_test=np.arange(6) % 3)
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return str(path)


def truncated_model(path) -> str:
    whole = save_small_cnn(path)
    with open(whole, "rb") as f:
        content = f.read()
    with open(whole, "wb") as f:
        f.write(content[: len(content) // 2])
    return whole


def lambda_model(path) -> str:
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(h)).save(path)
    return str(path)


def random_bytes(path) -> str:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return str(path)
