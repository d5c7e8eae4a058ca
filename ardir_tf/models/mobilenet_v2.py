"""``mobilenet_v2``: MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The seven bottleneck sequences of the paper's Table 2 become ``stage1`` .. ``stage7``:

=====  =========  ==============  ======  ======  =========================
stage  expansion  channels (a=1)  blocks  stride  output for a 32x32 input
=====  =========  ==============  ======  ======  =========================
1      1          16              1       1       32x32
2      6          24              2       1 (*)   32x32
3      6          32              3       2       16x16
4      6          64              4       2       8x8
5      6          96              3       1       8x8
6      6          160             3       2       4x4
7      6          320             1       1       4x4
=====  =========  ==============  ======  ======  =========================

CIFAR variant (as in the common PyTorch CIFAR MobileNetV2): the stem is a 3x3 **stride-1**
convolution with 32 channels and stage 2 has stride 1 (*) instead of 2, so a 32x32 input ends at 4x4
(ImageNet: 224 -> 7). The head is a 1x1 convolution to 1280 channels + BN + ReLU6, global average
pooling and a ``Dense`` named ``logits`` (no softmax).

An inverted residual block: 1x1 expansion conv (skipped when the expansion is 1) + BN + ReLU6, 3x3
depthwise conv + BN + ReLU6, 1x1 linear projection conv + BN; the input is added when the stride is 1
and the channel count is unchanged (the paper's rule; no projection shortcuts).

Width multiplier ``alpha`` scales every channel count, rounded to a multiple of 8 as in the paper's
code (never below 8 nor 10% under the exact value); the head's 1280 channels are scaled only when
``alpha > 1``.

Layer names (a stable API):

* stem: ``stem_conv``, ``stem_bn``, ``stem_relu``;
* block ``j`` of stage ``i``: ``stage{i}_block{j}_expand_conv``, ``_expand_bn``, ``_expand_relu``
  (only when the expansion is not 1), ``_dw_conv``, ``_dw_bn``, ``_dw_relu``, ``_project_conv``,
  ``_project_bn``; then the block's output layer, named ``stage{i}_block{j}_out`` except for the
  last block of a stage, whose output layer is named exactly ``stage{i}``. The output layer is the
  residual ``Add`` when the block has a residual connection, otherwise it *is* the projection BN
  (which then carries the output name instead of ``_project_bn``);
* head: ``head_conv``, ``head_bn``, ``head_relu``, ``pool``, ``logits``.

``stage7`` (``[B, 4, 4, 320 alpha]`` for a 32x32 input, before the 1280-channel head) is the default
internal representation.

Convolutions have no bias; BN uses ``momentum=0.9, epsilon=1e-5``. Pointwise convolutions use
``he_normal``; depthwise kernels use the same He-normal variance computed on their true fan-in (9),
which Keras expresses as ``VarianceScaling(2, "fan_out")`` for a depthwise kernel. Strided
depthwise convolutions are preceded by a symmetric ``ZeroPadding2D(1)`` (``<name>_dw_conv_pad``),
matching PyTorch's ``padding=1``.
"""

from __future__ import annotations

from typing import Sequence

import keras

from ardir_tf.models.layers import BN_KW as _BN_KW
from ardir_tf.models.layers import inputs_and_normalize
from ardir_tf.models.registry import register


# (expansion, output channels at alpha=1, blocks, stride of the first block); CIFAR strides.
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds ``value`` to the nearest multiple of ``divisor``, at least ``divisor`` and >= 90%.

    Args:
        value: the exact (scaled) channel count.
        divisor: the multiple to round to.

    Returns:
        The rounded channel count.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _inverted_residual(x, expansion: int, filters: int, stride: int, prefix: str, out_name: str):
    layers = keras.layers
    in_channels = x.shape[-1]
    residual = stride == 1 and in_channels == filters
    y = x
    if expansion != 1:
        y = layers.Conv2D(
            in_channels * expansion,
            1,
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"{prefix}_expand_conv",
        )(y)
        y = layers.BatchNormalization(name=f"{prefix}_expand_bn", **_BN_KW)(y)
        y = layers.ReLU(6.0, name=f"{prefix}_expand_relu")(y)
    if stride != 1:
        y = layers.ZeroPadding2D(1, name=f"{prefix}_dw_conv_pad")(y)
    y = layers.DepthwiseConv2D(
        3,
        strides=stride,
        padding="same" if stride == 1 else "valid",
        use_bias=False,
        depthwise_initializer=keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_out", distribution="truncated_normal"
        ),
        name=f"{prefix}_dw_conv",
    )(y)
    y = layers.BatchNormalization(name=f"{prefix}_dw_bn", **_BN_KW)(y)
    y = layers.ReLU(6.0, name=f"{prefix}_dw_relu")(y)
    y = layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{prefix}_project_conv"
    )(y)
    y = layers.BatchNormalization(
        name=f"{prefix}_project_bn" if residual else out_name, **_BN_KW
    )(y)
    if residual:
        y = layers.Add(name=out_name)([x, y])
    return y


@register("mobilenet_v2")
def mobilenet_v2(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    alpha: float = 1.0,
    expansion: int = 6,
) -> keras.Model:
    """Builds the CIFAR MobileNetV2.

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)``; made for 32x32 (ends at 4x4) but any size >= 8 works.
        normalization: optional per-channel ``(mean, std)``.
        alpha: width multiplier (1.0 in the paper; 0.25 builds a tiny test model).
        expansion: expansion factor of stages 2-7 (stage 1 always uses 1, as in the paper).

    Returns:
        A functional ``keras.Model`` named ``mobilenet_v2``; stage outputs ``stage1`` .. ``stage7``.

    Raises:
        ValueError: ``alpha <= 0`` or ``expansion < 1``.
    """
    if not float(alpha) > 0:
        raise ValueError(f"alpha (width multiplier) must be positive, got {alpha!r}")
    if int(expansion) != expansion or expansion < 1:
        raise ValueError(f"expansion must be a positive integer, got {expansion!r}")
    alpha, expansion = float(alpha), int(expansion)
    layers = keras.layers
    inputs, x = inputs_and_normalize(input_shape, normalization)
    x = layers.Conv2D(
        make_divisible(32 * alpha),
        3,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name="stem_conv",
    )(x)
    x = layers.BatchNormalization(name="stem_bn", **_BN_KW)(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (t, channels, n_blocks, stride) in enumerate(_STAGES, start=1):
        t = 1 if t == 1 else expansion
        filters = make_divisible(channels * alpha)
        for j in range(1, n_blocks + 1):
            out_name = f"stage{i}" if j == n_blocks else f"stage{i}_block{j}_out"
            x = _inverted_residual(
                x, t, filters, stride if j == 1 else 1, f"stage{i}_block{j}", out_name
            )
    head_channels = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = layers.Conv2D(
        head_channels, 1, use_bias=False, kernel_initializer="he_normal", name="head_conv"
    )(x)
    x = layers.BatchNormalization(name="head_bn", **_BN_KW)(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="mobilenet_v2")
