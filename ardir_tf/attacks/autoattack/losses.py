"""Per-example losses of the AutoAttack ensemble (Croce & Hein 2020).

Every function maps logits ``[B, C]`` (and int labels ``[B]``) to one float32 value per example.
APGD *maximises* ``ce``, ``dlr`` and ``dlr_targeted``; Square *minimises* the margin
``z_y - max_{i != y} z_i`` (:func:`ardir_tf.attacks.primitives.margin`, re-exported here).

Let ``z`` be the logits of one example and ``pi`` the class indices sorted so that
``z_pi1 >= z_pi2 >= ...``.

``dlr`` (difference of logits ratio, untargeted)::

    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)

``dlr_targeted`` (towards the target class ``t``)::

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

Both are invariant to a shift and to a positive rescaling of the logits, which is what makes them
robust to the logit-scaling form of gradient masking. ``dlr`` needs at least 3 classes,
``dlr_targeted`` at least 4.
"""

from __future__ import annotations

import tensorflow as tf

from ardir_tf.attacks.primitives import margin
from ardir_tf.losses import cross_entropy_per_example

DLR_EPS = 1e-12


def _onehot(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=logits.dtype)


def _top(logits: tf.Tensor, k: int) -> tf.Tensor:
    if logits.shape[-1] is not None and logits.shape[-1] < k:
        raise ValueError(f"this loss needs at least {k} classes, the model has {logits.shape[-1]}")
    return tf.math.top_k(logits, k=k, sorted=True).values


def ce(logits: tf.Tensor, labels: tf.Tensor, target: tf.Tensor | None = None) -> tf.Tensor:
    """Cross-entropy ``-log softmax(z)_y`` per example."""
    return cross_entropy_per_example(labels, logits)


def dlr(logits: tf.Tensor, labels: tf.Tensor, target: tf.Tensor | None = None) -> tf.Tensor:
    """Untargeted DLR loss ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` per example."""
    logits = tf.cast(logits, tf.float32)
    top = _top(logits, 3)
    return -margin(logits, labels) / (top[:, 0] - top[:, 2] + DLR_EPS)


def dlr_targeted(logits: tf.Tensor, labels: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Targeted DLR loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` per example."""
    logits = tf.cast(logits, tf.float32)
    z_y = tf.reduce_sum(_onehot(labels, logits) * logits, axis=-1)
    z_t = tf.reduce_sum(_onehot(target, logits) * logits, axis=-1)
    top = _top(logits, 4)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS)


__all__ = ["DLR_EPS", "LOSSES", "ce", "dlr", "dlr_targeted", "margin"]

LOSSES = {"ce": ce, "dlr": dlr, "dlr_targeted": dlr_targeted}
