"""``dm_wide_resnet`` and ``dm_preact_resnet``: the WideResNet and pre-activation ResNet of
Gowal et al. 2020 ("Uncovering the limits of adversarial training", DeepMind's reference code),
as RobustBench's ``DMWideResNet`` / ``DMPreActResNet`` define them.

They are the architectures of most strong CIFAR-10 L-inf checkpoints of the RobustBench zoo
(Gowal 2020/2021, Rebuffi 2021, Rade 2021, Pang 2022, Wang 2023, Cui 2023, Bartoldson 2024).
What sets them apart from :mod:`ardir_tf.models.wide_resnet` / :mod:`ardir_tf.models.resnet`:

* the activation is ``relu`` or ``swish`` (``x * sigmoid(x)``, a.k.a. SiLU) everywhere;
* a stride-2 3x3 convolution pads by one pixel on the bottom and right only (TensorFlow's
  ``"SAME"``); the padding is an explicit ``ZeroPadding2D(((0, 1), (0, 1)))`` layer
  (``<conv name>_pad``) so it is exact for every input size;
* the input normalisation (CIFAR-10 mean/std in the zoo) is part of the source model; pass it as
  ``normalization`` and it becomes the model's ``normalize`` layer.

``dm_wide_resnet`` (depth ``6 n + 4``, widening factor ``width``): ``stem_conv`` (3x3, 16 channels),
three stages of ``n`` blocks with ``16 width``, ``32 width``, ``64 width`` channels and strides
1/2/2, ``final_bn``, ``final_act``, global average pooling, ``logits``. A block computes
``conv2(act2(bn2(conv1(pad(act1(bn1(x))))))) + shortcut``; when the channel count changes the
shortcut is a 1x1 convolution of the *pre-activated* input (``act1(bn1(x))``), else the identity.

``dm_preact_resnet`` (depth 18: blocks ``2, 2, 2, 2``; depth 34: ``3, 4, 6, 3``): ``stem_conv``
(3x3, 64 channels), four stages with 64/128/256/512 channels and strides 1/2/2/2, ``final_bn``,
``final_act``, pooling, ``logits``. A block computes ``conv2(act2(bn2(conv1(pad(act1(bn1(x)))))))
+ shortcut``; when the stride or the channel count changes the shortcut is a **3x3** convolution
(with the same padding rule) of the *raw* input ``x``.

Layer names (a stable API): block ``j`` of stage ``i`` has ``stage{i}_block{j}_bn1``, ``_act1``,
``_conv1`` (``_conv1_pad`` when strided), ``_bn2``, ``_act2``, ``_conv2``, ``_shortcut_conv`` (and
``_shortcut_conv_pad``); its output (the addition) is ``stage{i}_block{j}_out``, or exactly
``stage{i}`` for the last block of a stage. Convolutions have no bias; BN uses PyTorch's defaults
(:data:`ardir_tf.models.layers.BN_KW`).
"""

from __future__ import annotations

from typing import Sequence

import keras

from ardir_tf.models.layers import batch_norm as _bn
from ardir_tf.models.layers import inputs_and_normalize
from ardir_tf.models.registry import register

ACTIVATIONS = {"relu": "relu", "swish": "silu"}


def _activation(x, activation: str, name: str):
    return keras.layers.Activation(ACTIVATIONS[activation], name=name)(x)


def same_conv(x, filters: int, kernel: int, stride: int, name: str):
    """Convolution with TensorFlow-"SAME" padding as the DeepMind code writes it.

    Stride 1: ``kernel // 2`` on every side. Stride 2 (3x3): one pixel bottom/right only, as an
    explicit ``ZeroPadding2D`` so that odd input sizes behave as in the source too.
    """
    layers = keras.layers
    if stride == 1:
        padding = "same"
    elif kernel == 1:
        padding = "valid"
    else:
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad")(x)
        padding = "valid"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer="he_normal", name=name)(x)


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return activation


def _dm_block(x, filters: int, stride: int, activation: str, prefix: str, out_name: str, preact_resnet: bool):
    """One DeepMind block: ``conv2(act2(bn2(conv1(act1(bn1(x)))))) + shortcut``. The shortcut is the
    identity, or where the block changes the shape: in the WRN (channels change) a 1x1 convolution of
    the pre-activated input; in the pre-activation ResNet (stride or channels change) a 3x3
    convolution of the raw input."""
    pre = _bn(x, f"{prefix}_bn1")
    pre = _activation(pre, activation, f"{prefix}_act1")
    shortcut = x
    if preact_resnet and (stride != 1 or x.shape[-1] != filters):
        shortcut = same_conv(x, filters, 3, stride, f"{prefix}_shortcut_conv")
    elif not preact_resnet and x.shape[-1] != filters:
        shortcut = same_conv(pre, filters, 1, stride, f"{prefix}_shortcut_conv")
    y = same_conv(pre, filters, 3, stride, f"{prefix}_conv1")
    y = _bn(y, f"{prefix}_bn2")
    y = _activation(y, activation, f"{prefix}_act2")
    y = same_conv(y, filters, 3, 1, f"{prefix}_conv2")
    return keras.layers.Add(name=out_name)([y, shortcut])


def _dm_network(input_shape, normalization, num_classes: int, stem_channels: int,
                stages: Sequence[tuple[int, int, int]], activation: str, preact_resnet: bool,
                name: str) -> keras.Model:
    """``stem_conv``, the ``stages`` (``(blocks, channels, stride)`` each; the last block of stage
    ``i`` is named ``stage{i}``), ``final_bn``, ``final_act``, pooling and ``logits``."""
    activation = _check_activation(activation)
    inputs, x = inputs_and_normalize(input_shape, normalization)
    x = same_conv(x, stem_channels, 3, 1, "stem_conv")
    for i, (n_blocks, channels, stride) in enumerate(stages, start=1):
        for j in range(1, n_blocks + 1):
            out_name = f"stage{i}" if j == n_blocks else f"stage{i}_block{j}_out"
            x = _dm_block(x, channels, stride if j == 1 else 1, activation, f"stage{i}_block{j}", out_name,
                          preact_resnet)
    x = _bn(x, "final_bn")
    x = _activation(x, activation, "final_act")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


@register("dm_wide_resnet")
def dm_wide_resnet(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    depth: int = 28,
    width: int = 10,
    activation: str = "swish",
) -> keras.Model:
    """Builds the DeepMind WRN-``depth``-``width`` (default WRN-28-10: 36,479,194 trainable parameters).

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)`` of the [0, 1] images (32x32 in the zoo: ends at 8x8).
        normalization: optional per-channel ``(mean, std)`` (the zoo's CIFAR-10 constants).
        depth: ``6 n + 4`` with ``n >= 1`` (28, 34, 70, 82, 94, 106 in the zoo).
        width: widening factor (stage channels ``16 width``, ``32 width``, ``64 width``).
        activation: ``"relu"`` or ``"swish"``.

    Returns:
        A functional ``keras.Model`` named ``dm_wide_resnet_{depth}_{width}`` mapping
        ``[B, H, W, C]`` to ``[B, num_classes]``; stage outputs ``stage1`` .. ``stage3``.

    Raises:
        ValueError: a bad depth, width or activation.
    """
    if int(depth) != depth or depth < 10 or (int(depth) - 4) % 6:
        raise ValueError(f"dm_wide_resnet depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth!r}")
    if int(width) != width or width < 1:
        raise ValueError(f"dm_wide_resnet width must be a positive integer, got {width!r}")
    depth, width = int(depth), int(width)
    n_blocks = (depth - 4) // 6
    stages = [(n_blocks, 16 * width, 1), (n_blocks, 32 * width, 2), (n_blocks, 64 * width, 2)]
    return _dm_network(input_shape, normalization, num_classes, 16, stages, activation, False,
                       f"dm_wide_resnet_{depth}_{width}")


_PREACT_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


@register("dm_preact_resnet")
def dm_preact_resnet(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    depth: int = 18,
    activation: str = "swish",
) -> keras.Model:
    """Builds the DeepMind pre-activation ResNet-``depth`` (18: 12,548,426 trainable parameters, 10 classes).

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)`` of the [0, 1] images (32x32 in the zoo: ends at 4x4).
        normalization: optional per-channel ``(mean, std)``.
        depth: 18 or 34.
        activation: ``"relu"`` or ``"swish"``.

    Returns:
        A functional ``keras.Model`` named ``dm_preact_resnet_{depth}``; stage outputs ``stage1`` ..
        ``stage4``.

    Raises:
        ValueError: an unsupported depth or activation.
    """
    if depth not in _PREACT_BLOCKS:
        raise ValueError(f"dm_preact_resnet depth must be one of {sorted(_PREACT_BLOCKS)}, got {depth!r}")
    stages = list(zip(_PREACT_BLOCKS[depth], (64, 128, 256, 512), (1, 2, 2, 2)))
    return _dm_network(input_shape, normalization, num_classes, 64, stages, activation, True,
                       f"dm_preact_resnet_{depth}")
