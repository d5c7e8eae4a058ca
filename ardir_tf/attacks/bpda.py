"""BPDA: white-box attacks on a classifier that has no gradients, such as an int8 LiteRT or ONNX
file, through a differentiable stand-in (Backward Pass Differentiable Approximation; Athalye,
Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018).

:func:`straight_through` joins the two into one model that any gradient attack of the package
(PGD, APGD, AutoAttack) can run on:

    forward:  z(x) = s(x) + stop_gradient(t(x) - s(x))  = t(x), the target's own logits
    backward: dz/dx = J_s(x), the surrogate's Jacobian

so the attack's losses, its choice of the best iterate and its success are all computed on the
target's exact outputs, and only the direction of each step comes from the surrogate (the float
model, or a fake-quantized copy of it). A transferred attack stops where the *surrogate's*
decision changes; an attack on the straight-through model goes on until the *target's* does, and,
being gradient-based, it does not stall where the target's quantized logits are flat, as a
score-based search can.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import primitives


def straight_through(target: Callable[[np.ndarray], np.ndarray], surrogate: Callable, num_classes: int) -> Callable:
    """The BPDA model of ``target`` with ``surrogate``'s gradients.

    Args:
        target: ``images [B, H, W, C] float32 in [0, 1] -> logits [B, K]``, NumPy in and out (e.g.
            :func:`export.runtimes.load` of a quantized file); called once per forward pass.
        surrogate: a differentiable ``model(x, training=False) -> logits [B, K]`` (or a feature
            model's list, logits first) approximating ``target``.
        num_classes: ``K``.

    Returns:
        ``model(x, training=False) -> logits [B, K]`` (float32) whose value is ``target``'s logits
        and whose gradient with respect to ``x`` is ``surrogate``'s; usable inside ``tf.function``.
    """
    exact = primitives.numpy_model(target, num_classes)

    def call(x, training=False):
        del training
        approx = tf.cast(primitives.logits_of(surrogate(x, training=False)), tf.float32)
        return approx + tf.stop_gradient(exact(x) - approx)

    return call
