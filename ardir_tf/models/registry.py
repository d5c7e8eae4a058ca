"""Model registry: build any shipped architecture by name.

Every builder returns a Keras **functional** classifier that

* takes images of shape ``input_shape`` with pixels in [0, 1],
* normalises them with a layer named ``normalize`` inside the model (when a mean/std is given),
* names the output of each convolutional stage ``stage1``, ``stage2``, ... (KerasHub's
  ``pyramid_outputs`` idea: the stable handles for internal representations),
* returns logits (no softmax) from a final ``Dense`` layer named ``logits``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import keras

Builder = Callable[..., keras.Model]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder ``fn(num_classes, input_shape, normalization, **kw)``.

    The shipped families register themselves when ``ardir_tf.models`` imports them (a package's
    ``__init__`` runs before any of its modules), so this module imports none of them."""

    def wrap(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    """Names accepted by :func:`get`, sorted."""
    return sorted(_REGISTRY)


def get(
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    **kwargs,
) -> keras.Model:
    """Builds the model ``name``.

    Args:
        name: one of :func:`available` (``small_cnn``, ``resnet18``, ``preact_resnet18``,
            ``wide_resnet``, ``mobilenet_v2``, and the RobustBench architectures ``dm_wide_resnet``,
            ``dm_preact_resnet``, ``fast_preact_resnet18``).
        num_classes: number of output logits.
        input_shape: ``(H, W, C)`` of the [0, 1] input images.
        normalization: optional ``(mean, std)`` per channel; becomes the model's first layer.
        **kwargs: family-specific options (e.g. ``depth``/``width`` for ``wide_resnet``).

    Returns:
        An unbuilt-weights functional ``keras.Model`` mapping ``[B, H, W, C]`` -> ``[B, num_classes]``.

    Raises:
        ValueError: unknown name or option (the message lists the known ones) or bad sizes.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
    options = _options(_REGISTRY[name])
    unknown = sorted(set(kwargs) - set(options)) if options is not None else []
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(options) or 'none'}")
    return _REGISTRY[name](
        num_classes=int(num_classes),
        input_shape=tuple(int(d) for d in input_shape),
        normalization=normalization,
        **kwargs,
    )


def _options(builder: Builder) -> list[str] | None:
    """The keyword options of ``builder`` beyond the common three (``None``: it takes ``**kwargs``)."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("num_classes", "input_shape", "normalization")]
