"""Internal representations: one forward pass that returns logits and inner activations."""

from __future__ import annotations

import re
from typing import Sequence

import keras

_STAGE = re.compile(r"^stage(\d+)$")


class UnknownLayerError(ValueError):
    """A requested layer name is not in the model; the message lists the names that are."""


def layer_names(model: keras.Model) -> list[str]:
    """Names of the model's layers whose output can serve as an internal representation."""
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def stage_names(model: keras.Model) -> list[str]:
    """The ``stage1``, ``stage2``, ... layer names of a model built by this library, in order."""
    found = [(int(m.group(1)), layer.name) for layer in model.layers if (m := _STAGE.match(layer.name))]
    return [name for _, name in sorted(found)]


def default_ir_layers(model: keras.Model) -> list[str]:
    """The default IR layer: the output of the model's last convolutional stage.

    For this library's models that is the highest ``stageN``; for any other functional CNN it is
    the last layer with a 4-D (``[B, H, W, C]``) output.
    """
    stages = stage_names(model)
    if stages:
        return [stages[-1]]
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4:
            return [layer.name]
    raise UnknownLayerError(
        f"model {model.name!r} has no 4-D layer output to use as internal representation; "
        f"name one of: {', '.join(layer_names(model))}"
    )


def check_layer_names(model: keras.Model, names: Sequence[str]) -> None:
    """Raises :class:`UnknownLayerError` naming the layers that exist if any name is missing."""
    known = layer_names(model)
    missing = [n for n in names if n not in known]
    if missing:
        raise UnknownLayerError(
            f"model {model.name!r} has no layer named {', '.join(map(repr, missing))}; "
            f"available layers: {', '.join(known)}"
        )


def feature_model(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """Wraps a functional classifier into one model returning ``[logits, ir_1, ..., ir_n]``.

    The returned model shares its layers (and so its weights) with ``model``: training one
    trains the other, and one forward pass yields logits and every requested activation.

    Args:
        model: a functional (or Sequential) Keras classifier with a single logits output.
        names: layer names whose outputs become ``ir_1 .. ir_n``.

    Returns:
        A functional model ``x -> [logits [B, C], ir_1, ..., ir_n]``.

    Raises:
        UnknownLayerError: a name is not a layer of ``model``.
        ValueError: ``model`` is not functional (a subclassed model has no graph to tap).
    """
    if not hasattr(model, "inputs") or not model.inputs or not hasattr(model, "outputs"):
        raise ValueError(
            f"model {model.name!r} is not a functional Keras model; internal representations "
            "need a layer graph (build it with keras.Model(inputs, outputs))"
        )
    names = list(names)
    check_layer_names(model, names)
    outputs = [model.outputs[0]] + [model.get_layer(n).output for n in names]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_features")
