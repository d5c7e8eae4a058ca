"""Layers shared by the model families."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np


def inputs_and_normalize(
    input_shape: Sequence[int],
    normalization: tuple[Sequence[float], Sequence[float]] | None,
):
    """Returns ``(inputs, x)``: the [0, 1] image input and its normalised tensor.

    Normalisation lives inside the model so that every attack and every exported artifact sees
    [0, 1] pixels. ``keras.layers.Normalization`` keeps the given mean and variance in its config
    (constants in the graph), so the model saves and loads in safe mode.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if normalization is None:
        return inputs, inputs
    mean, std = normalization
    channels = input_shape[-1]
    mean = np.broadcast_to(np.asarray(mean, "float32"), (channels,))
    std = np.broadcast_to(np.asarray(std, "float32"), (channels,))
    if np.any(std <= 0):
        raise ValueError(f"normalization std must be positive, got {std.tolist()}")
    x = keras.layers.Normalization(
        axis=-1, mean=mean.tolist(), variance=(std**2).tolist(), name="normalize"
    )(inputs)
    return inputs, x


#: Batch-norm settings of every family (and ARDIR's connectors): PyTorch's defaults, so weights
#: ported from reference implementations behave the same.
BN_KW = {"momentum": 0.9, "epsilon": 1e-5}


def batch_norm(x, name: str):
    """``BatchNormalization`` with :data:`BN_KW`."""
    return keras.layers.BatchNormalization(name=name, **BN_KW)(x)


def conv(x, filters: int, kernel: int, stride: int, name: str):
    """``kernel`` x ``kernel`` convolution with PyTorch-style symmetric padding ``kernel // 2``."""
    layers = keras.layers
    pad = kernel // 2
    if stride != 1 and pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same" if pad else "valid"
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)
