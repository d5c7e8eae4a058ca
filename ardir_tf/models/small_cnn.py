"""``small_cnn``: the 4-conv MNIST network of the TRADES/MART papers.

Layers: conv32-conv32 (``stage1``) -> maxpool -> conv64-conv64 (``stage2``) -> maxpool ->
dense200 (``fc1``) -> dense200 (``fc2``) -> ``logits``. ``stage1``/``stage2`` are the ReLU outputs
of the two convolutional stages (before pooling); ``stage2`` is the default IR layer.
"""

from __future__ import annotations

from typing import Sequence

import keras

from ardir_tf.models.layers import inputs_and_normalize
from ardir_tf.models.registry import register


@register("small_cnn")
def small_cnn(
    num_classes: int,
    input_shape: Sequence[int] = (28, 28, 1),
    normalization=None,
    width: int = 32,
    dropout: float = 0.0,
) -> keras.Model:
    """Builds ``small_cnn``.

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)``; made for 28x28 but any size >= 16 works.
        normalization: optional ``(mean, std)``.
        width: channels of the first stage (the second has twice as many).
        dropout: dropout rate before the last hidden dense layer (0 disables it).
    """
    inputs, x = inputs_and_normalize(input_shape, normalization)
    L = keras.layers
    for stage, ch in ((1, width), (2, 2 * width)):
        x = L.Conv2D(ch, 3, name=f"stage{stage}_conv1")(x)
        x = L.ReLU(name=f"stage{stage}_relu1")(x)
        x = L.Conv2D(ch, 3, name=f"stage{stage}_conv2")(x)
        x = L.ReLU(name=f"stage{stage}")(x)
        x = L.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(200, activation="relu", name="fc1")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    x = L.Dense(200, activation="relu", name="fc2")(x)
    logits = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="small_cnn")
