"""``fast_preact_resnet18``: the pre-activation ResNet-18 of the "fast adversarial training" code
(Wong et al. 2020, "Fast is better than free"; Andriushchenko & Flammarion 2020), the
``PreActResNet18`` of RobustBench's ``resnet.py``.

It differs from :func:`ardir_tf.models.resnet.preact_resnet18` in two places, both kept so that
those checkpoints port exactly:

* a projection shortcut (1x1 convolution, no BN) reads the *raw* block input ``x``, not
  ``relu(bn1(x))``;
* there is no BN/ReLU after the last stage: ``stage4`` goes straight to pooling and ``logits``.

Layer names as in :mod:`ardir_tf.models.resnet`: ``stem_conv``; block ``j`` of stage ``i``:
``stage{i}_block{j}_bn1``, ``_relu1``, ``_conv1``, ``_bn2``, ``_relu2``, ``_conv2``,
``_shortcut_conv``; block outputs ``stage{i}_block{j}_out`` / ``stage{i}``; ``pool``, ``logits``.
Strided 3x3 convolutions pad one pixel on every side (PyTorch ``padding=1``).
"""

from __future__ import annotations

from typing import Sequence

import keras

from ardir_tf.models.layers import batch_norm as _bn
from ardir_tf.models.layers import conv as _conv
from ardir_tf.models.layers import inputs_and_normalize
from ardir_tf.models.registry import register


def _block(x, filters: int, stride: int, prefix: str, out_name: str):
    layers = keras.layers
    pre = _bn(x, f"{prefix}_bn1")
    pre = layers.ReLU(name=f"{prefix}_relu1")(pre)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{prefix}_shortcut_conv")
    y = _conv(pre, filters, 3, stride, f"{prefix}_conv1")
    y = _bn(y, f"{prefix}_bn2")
    y = layers.ReLU(name=f"{prefix}_relu2")(y)
    y = _conv(y, filters, 3, 1, f"{prefix}_conv2")
    return layers.Add(name=out_name)([y, shortcut])


@register("fast_preact_resnet18")
def fast_preact_resnet18(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> keras.Model:
    """Builds the fast-AT PreActResNet-18 (blocks ``2, 2, 2, 2``, 64..512 channels).

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)`` of the [0, 1] images (32x32: ends at 4x4).
        normalization: optional per-channel ``(mean, std)``.

    Returns:
        A functional ``keras.Model`` named ``fast_preact_resnet18``; stage outputs ``stage1`` ..
        ``stage4``.
    """
    inputs, x = inputs_and_normalize(input_shape, normalization)
    x = _conv(x, 64, 3, 1, "stem_conv")
    for i, (channels, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        for j in (1, 2):
            out_name = f"stage{i}" if j == 2 else f"stage{i}_block{j}_out"
            x = _block(x, channels, stride if j == 1 else 1, f"stage{i}_block{j}", out_name)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="fast_preact_resnet18")
