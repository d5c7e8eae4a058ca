"""``resnet18``, ``preact_resnet18`` and ``fast_preact_resnet18``: the CIFAR ResNet-18 variants of
the robustness literature.

Both follow the CIFAR layout used by the ARD/RSLAD/IAD reference code: a 3x3 stride-1 stem (no
max-pool), four stages of two basic blocks with ``width``, ``2 width``, ``4 width``, ``8 width``
channels and strides 1/2/2/2, global average pooling and a ``Dense`` named ``logits`` (no softmax).

* ``resnet18``: post-activation basic blocks (He et al. 2016a):
  ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is the identity, or a 1x1
  convolution + BN when the stride or the channel count changes.
* ``preact_resnet18``: pre-activation basic blocks (He et al. 2016b, "Identity mappings"):
  ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``; a projection shortcut is a 1x1 convolution
  (no BN) applied to the pre-activated input. The stem is the bare convolution and the last stage is
  followed by ``final_bn`` + ``final_relu`` before pooling.
* ``fast_preact_resnet18``: RobustBench's ``PreActResNet18`` (the fast-AT code): as
  ``preact_resnet18``, but projection shortcuts read the raw block input and there is no
  ``final_bn``/``final_relu``.

Layer names (a stable API: attacks, IR distillation and exports refer to layers by name):

* stem: ``stem_conv`` (``stem_bn``, ``stem_relu`` for ``resnet18`` only);
* block ``j`` of stage ``i``: ``stage{i}_block{j}_conv1``, ``_bn1``, ``_relu1``, ``_conv2``, ``_bn2``
  (``resnet18``) or ``_bn1``, ``_relu1``, ``_conv1``, ``_bn2``, ``_relu2``, ``_conv2``
  (``preact_resnet18``), plus ``_shortcut_conv`` (and ``_shortcut_bn`` for ``resnet18``) where the
  shape changes, and ``_add`` for ``resnet18`` (its block output is the ReLU after the addition);
* the block's output layer is ``stage{i}_block{j}_out``, except for the last block of a stage, whose
  output layer is named exactly ``stage{i}``. ``stage4`` (``[B, 4, 4, 8 width]`` for a 32x32 input)
  is the default internal representation. In ``preact_resnet18`` the block output is the addition
  (before any BN/ReLU), and ``final_bn``/``final_relu`` follow ``stage4``;
* head: ``pool`` (global average pooling), ``logits``.

Convolutions have no bias (a BN follows), use ``he_normal`` initialisation, and BN uses
``momentum=0.9, epsilon=1e-5`` (PyTorch's defaults). Strided 3x3 convolutions are preceded by an
explicit symmetric ``ZeroPadding2D(1)`` layer (``<conv name>_pad``) so that their arithmetic equals
PyTorch's ``padding=1`` (Keras ``"same"`` pads only bottom/right when the stride is 2), which keeps
weights ported from PyTorch checkpoints exact.
"""

from __future__ import annotations

import functools

from typing import Sequence

import keras

from ardir_tf.models.layers import BN_KW as _BN_KW
from ardir_tf.models.layers import batch_norm as _bn
from ardir_tf.models.layers import conv as _conv
from ardir_tf.models.layers import inputs_and_normalize
from ardir_tf.models.registry import register

_STAGE_STRIDES = (1, 2, 2, 2)
_STAGE_MULTIPLIERS = (1, 2, 4, 8)


def _basic_block(x, filters: int, stride: int, prefix: str, out_name: str):
    """Post-activation basic block; returns the ReLU after the residual addition."""
    layers = keras.layers
    y = _conv(x, filters, 3, stride, f"{prefix}_conv1")
    y = _bn(y, f"{prefix}_bn1")
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(y, filters, 3, 1, f"{prefix}_conv2")
    y = _bn(y, f"{prefix}_bn2")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{prefix}_shortcut_conv")
        shortcut = _bn(shortcut, f"{prefix}_shortcut_bn")
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=out_name)(y)


def _preact_block(x, filters: int, stride: int, prefix: str, out_name: str, shortcut_from_input: bool = False):
    """Pre-activation basic block; returns the residual addition (not activated). A projection
    shortcut reads ``relu(bn1(x))`` (He et al. 2016b), or the raw ``x`` with ``shortcut_from_input``
    (the fast-AT code's ``PreActResNet18``)."""
    layers = keras.layers
    pre = _bn(x, f"{prefix}_bn1")
    pre = layers.ReLU(name=f"{prefix}_relu1")(pre)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x if shortcut_from_input else pre, filters, 1, stride, f"{prefix}_shortcut_conv")
    y = _conv(pre, filters, 3, stride, f"{prefix}_conv1")
    y = _bn(y, f"{prefix}_bn2")
    y = layers.ReLU(name=f"{prefix}_relu2")(y)
    y = _conv(y, filters, 3, 1, f"{prefix}_conv2")
    return layers.Add(name=out_name)([y, shortcut])


def _check_width(width: int) -> int:
    if int(width) != width or width < 1:
        raise ValueError(f"width (base channels) must be a positive integer, got {width!r}")
    return int(width)


def build_resnet(
    num_classes: int,
    input_shape: Sequence[int],
    normalization: tuple[Sequence[float], Sequence[float]] | None,
    blocks: Sequence[int],
    width: int,
    preact: bool,
    name: str,
    final_activation: bool = True,
    shortcut_from_input: bool = False,
) -> keras.Model:
    """Builds a CIFAR basic-block ResNet with ``len(blocks)`` stages (at most 4).

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)`` of the [0, 1] input images.
        normalization: optional per-channel ``(mean, std)``; becomes the ``normalize`` layer.
        blocks: number of basic blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        width: channels of the stem and the first stage; stage ``i`` has ``width * 2**(i-1)``.
        preact: pre-activation blocks (with ``final_bn``/``final_relu``) instead of post-activation.
        name: the Keras model name.
        final_activation: with ``preact``, the ``final_bn``/``final_relu`` after the last stage.
        shortcut_from_input: with ``preact``, projection shortcuts read the raw block input.

    Returns:
        A functional ``keras.Model`` mapping ``[B, H, W, C]`` images to ``[B, num_classes]`` logits.
    """
    width = _check_width(width)
    if not 1 <= len(blocks) <= len(_STAGE_STRIDES) or any(int(b) < 1 for b in blocks):
        raise ValueError(f"blocks must list 1 to 4 positive block counts, got {tuple(blocks)}")
    layers = keras.layers
    inputs, x = inputs_and_normalize(input_shape, normalization)
    x = _conv(x, width, 3, 1, "stem_conv")
    if not preact:
        x = _bn(x, "stem_bn")
        x = layers.ReLU(name="stem_relu")(x)
    block_fn = functools.partial(_preact_block, shortcut_from_input=shortcut_from_input) if preact else _basic_block
    for i, (n_blocks, stride, mult) in enumerate(
        zip(blocks, _STAGE_STRIDES, _STAGE_MULTIPLIERS), start=1
    ):
        for j in range(1, int(n_blocks) + 1):
            out_name = f"stage{i}" if j == n_blocks else f"stage{i}_block{j}_out"
            x = block_fn(x, width * mult, stride if j == 1 else 1, f"stage{i}_block{j}", out_name)
    if preact and final_activation:
        x = _bn(x, "final_bn")
        x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


@register("resnet18")
def resnet18(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    width: int = 64,
) -> keras.Model:
    """Builds the CIFAR ResNet-18 (post-activation basic blocks ``[2, 2, 2, 2]``).

    With the default ``width=64`` it has the same 11,173,962 trainable parameters as the PyTorch
    CIFAR ResNet-18 of the ARD/RSLAD/IAD code for 10 classes.

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)``; made for 32x32 (ends at 4x4) but any size >= 8 works.
        normalization: optional per-channel ``(mean, std)``.
        width: base channels (64 in the paper; small values build tiny test models).

    Returns:
        A functional ``keras.Model`` named ``resnet18``; stage outputs ``stage1`` .. ``stage4``.
    """
    return build_resnet(
        num_classes, input_shape, normalization, (2, 2, 2, 2), width, preact=False, name="resnet18"
    )


@register("preact_resnet18")
def preact_resnet18(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    width: int = 64,
) -> keras.Model:
    """Builds the CIFAR pre-activation ResNet-18 (He et al. 2016b), blocks ``[2, 2, 2, 2]``.

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)``; made for 32x32 (ends at 4x4) but any size >= 8 works.
        normalization: optional per-channel ``(mean, std)``.
        width: base channels (64 in the paper; small values build tiny test models).

    Returns:
        A functional ``keras.Model`` named ``preact_resnet18``; stage outputs ``stage1`` ..
        ``stage4`` (block outputs before activation), then ``final_bn``, ``final_relu``.
    """
    return build_resnet(
        num_classes,
        input_shape,
        normalization,
        (2, 2, 2, 2),
        width,
        preact=True,
        name="preact_resnet18",
    )


@register("fast_preact_resnet18")
def fast_preact_resnet18(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> keras.Model:
    """Builds the pre-activation ResNet-18 of the "fast adversarial training" code (Wong et al.
    2020; Andriushchenko & Flammarion 2020), RobustBench's ``PreActResNet18`` (``resnet.py``).

    It is :func:`preact_resnet18` (width 64) with two differences, kept so that those checkpoints
    port exactly: projection shortcuts (1x1 convolution, no BN) read the raw block input, and no
    BN/ReLU follows the last stage (``stage4`` goes straight to ``pool`` and ``logits``).

    Args:
        num_classes: number of logits.
        input_shape: ``(H, W, C)`` of the [0, 1] images (32x32: ends at 4x4).
        normalization: optional per-channel ``(mean, std)``.

    Returns:
        A functional ``keras.Model`` named ``fast_preact_resnet18``; stage outputs ``stage1`` ..
        ``stage4``.
    """
    return build_resnet(num_classes, input_shape, normalization, (2, 2, 2, 2), 64, preact=True,
                        name="fast_preact_resnet18", final_activation=False, shortcut_from_input=True)
