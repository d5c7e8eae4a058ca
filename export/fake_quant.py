"""A differentiable stand-in for an int8 file: the float model with int8-rounded weights and
activations, gradients passed straight through the rounding.

:func:`fake_quantized_copy` clones a functional Keras classifier and

- rounds every ``kernel`` to int8 per output channel, symmetric (scale ``max |w| / 127``), as
  LiteRT and onnxruntime quantize convolution and dense weights;
- follows every layer's output with :class:`FakeQuant`: asymmetric 8-bit rounding over the range
  the layer's output takes on the calibration images (widened to include 0), with the
  straight-through estimator (the forward pass rounds, the gradient is the identity).

It approximates the int8 file's computation (the file fuses activations into the preceding
layer and may round intermediate sums differently), so white-box attacks made on it are a
*transfer* attack on the file, from a closer surrogate than the float model: the copy's top-1
agreement with the file is reported beside the result.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class FakeQuant(keras.layers.Layer):
    """``x -> round((x - lo) / s) * s + lo`` clipped to ``[lo, hi]``, ``s = (hi - lo) / 255``,
    with ``lo`` nudged to a multiple of ``s`` so that 0 is exactly representable (an integer zero
    point, as the int8 runtimes use); the gradient passes through unchanged (straight-through)."""

    def __init__(self, lo: float, hi: float, **kwargs):
        super().__init__(**kwargs)
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        self.scale = max((hi - lo) / 255.0, 1e-12)
        self.lo = -round(-lo / self.scale) * self.scale
        self.hi = self.lo + 255.0 * self.scale

    def call(self, x):
        q = ops.round((ops.clip(x, self.lo, self.hi) - self.lo) / self.scale) * self.scale + self.lo
        return x + ops.stop_gradient(q - x)


def fake_quantized_copy(model: keras.Model, calibration: np.ndarray, batch_size: int = 256) -> keras.Model:
    """The fake-quantized copy of ``model`` (see the module docstring).

    Args:
        model: a float32 functional Keras classifier.
        calibration: images ``[N, H, W, C]`` in [0, 1] giving the activation ranges.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs[0], [layer.output for layer in layers])
    ranges: dict[str, list[float]] = {}
    for i in range(0, len(calibration), batch_size):
        outs = probe(calibration[i:i + batch_size], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for layer, out in zip(layers, outs):
            lo, hi = float(ops.min(out)), float(ops.max(out))
            old = ranges.get(layer.name, [0.0, 0.0])
            ranges[layer.name] = [min(old[0], lo), max(old[1], hi)]

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if layer.name in ranges:
            out = FakeQuant(*ranges[layer.name], name=f"{layer.name}_fake_quant")(out)
        return out

    copy = keras.models.clone_model(model, call_function=call_function)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        k = np.asarray(kernel.numpy(), np.float64)
        axes = tuple(range(k.ndim - 1))  # the last axis holds the output channels
        scale = np.maximum(np.max(np.abs(k), axis=axes, keepdims=True) / 127.0, 1e-12)
        kernel.assign((np.clip(np.round(k / scale), -127, 127) * scale).astype(np.float32))
    return copy
