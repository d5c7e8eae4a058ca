"""``wide_resnet``: the pre-activation WideResNet of the TRADES / Madry CIFAR code (WRN-34-10).

Layout for ``depth`` and widening factor ``width`` (Zagoruyko & Komodakis 2016): a 3x3 stride-1
convolution with 16 channels (``stem_conv``), three stages of ``(depth - 4) / 6`` wide basic blocks
with ``16 width``, ``32 width``, ``64 width`` channels and strides 1/2/2, then ``final_bn`` +
``final_relu``, global average pooling and a ``Dense`` named ``logits`` (no softmax).

A wide basic block computes ``conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))) + shortcut``. As in the
reference code, when the channel count (or stride) changes the shortcut is a 1x1 convolution (no
BN) of the *pre-activated* input ``relu(bn1(x))``; otherwise it is the identity on ``x``.

Layer names (a stable API):

* ``stem_conv``;
* block ``j`` of stage ``i``: ``stage{i}_block{j}_bn1``, ``_relu1``, ``_conv1``, ``_bn2``, ``_relu2``,
  ``_dropout`` (only when ``dropout > 0``), ``_conv2``, ``_shortcut_conv`` (only with a projection);
* the block's output layer (the residual addition) is ``stage{i}_block{j}_out``, except for the last
  block of a stage, whose output layer is named exactly ``stage{i}``. ``stage3``
  (``[B, 8, 8, 64 width]`` for a 32x32 input, before the final BN/ReLU) is the default internal
  representation;
* head: ``final_bn``, ``final_relu``, ``pool``, ``logits``.

Convolutions have no bias and ``he_normal`` initialisation; BN uses ``momentum=0.9, epsilon=1e-5``.
Strided 3x3 convolutions are preceded by a symmetric ``ZeroPadding2D(1)`` (``<conv name>_pad``) so
their arithmetic equals PyTorch's ``padding=1`` and PyTorch weights port exactly.
"""

from __future__ import annotations

from typing import Sequence

import keras

from ardir_tf.models.layers import BN_KW as _BN_KW
from ardir_tf.models.layers import conv as _conv
from ardir_tf.models.layers import inputs_and_normalize
from ardir_tf.models.registry import register



def _wide_block(x, filters: int, stride: int, dropout: float, prefix: str, out_name: str):
    layers = keras.layers
    pre = layers.BatchNormalization(name=f"{prefix}_bn1", **_BN_KW)(x)
    pre = layers.ReLU(name=f"{prefix}_relu1")(pre)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(pre, filters, 1, stride, f"{prefix}_shortcut_conv")
    y = _conv(pre, filters, 3, stride, f"{prefix}_conv1")
    y = layers.BatchNormalization(name=f"{prefix}_bn2", **_BN_KW)(y)
    y = layers.ReLU(name=f"{prefix}_relu2")(y)
    if dropout > 0:
        y = layers.Dropout(dropout, name=f"{prefix}_dropout")(y)
    y = _conv(y, filters, 3, 1, f"{prefix}_conv2")
    return layers.Add(name=out_name)([y, shortcut])


@register("wide_resnet")
def wide_resnet(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    depth: int = 34,
    width: int = 10,
    dropout: float = 0.0,
) -> keras.Model:
    """Builds WRN-``depth``-``width`` (default WRN-34-10, 46,160,474 trainable parameters).

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)``; made for 32x32 (ends at 8x8) but any size >= 4 works.
        normalization: optional per-channel ``(mean, std)``.
        depth: total depth; ``(depth - 4)`` must be a positive multiple of 6 (10, 16, 22, 28, 34, ...).
        width: widening factor ``k`` (stage channels ``16k``, ``32k``, ``64k``).
        dropout: dropout rate between the two convolutions of each block (0 disables it).

    Returns:
        A functional ``keras.Model`` named ``wide_resnet_{depth}_{width}``; stage outputs
        ``stage1`` .. ``stage3``, then ``final_bn``, ``final_relu``.

    Raises:
        ValueError: ``depth`` is not ``6 n + 4`` with ``n >= 1``, ``width < 1``, or a bad dropout rate.
    """
    if int(depth) != depth or depth < 10 or (int(depth) - 4) % 6 != 0:
        raise ValueError(
            "wide_resnet depth must satisfy (depth - 4) % 6 == 0 with depth >= 10 "
            f"(10, 16, 22, 28, 34, 40, ...), got depth={depth!r}"
        )
    if int(width) != width or width < 1:
        raise ValueError(f"wide_resnet width (widening factor) must be a positive integer, got {width!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    depth, width, dropout = int(depth), int(width), float(dropout)
    n_blocks = (depth - 4) // 6
    layers = keras.layers
    inputs, x = inputs_and_normalize(input_shape, normalization)
    x = _conv(x, 16, 3, 1, "stem_conv")
    for i, (channels, stride) in enumerate(((16 * width, 1), (32 * width, 2), (64 * width, 2)), start=1):
        for j in range(1, n_blocks + 1):
            out_name = f"stage{i}" if j == n_blocks else f"stage{i}_block{j}_out"
            x = _wide_block(
                x, channels, stride if j == 1 else 1, dropout, f"stage{i}_block{j}", out_name
            )
    x = layers.BatchNormalization(name="final_bn", **_BN_KW)(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"wide_resnet_{depth}_{width}")
