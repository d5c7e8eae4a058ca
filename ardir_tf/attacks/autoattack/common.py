"""Helpers shared by the AutoAttack members: norms, projection onto the threat ball, targets."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

NORMS = ("linf", "l2")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def batch_norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example norm ``[B]`` of a ``[B, ...]`` tensor (``"linf"`` or ``"l2"``)."""
    flat = tf.reshape(t, [tf.shape(t)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=-1)
    return tf.sqrt(tf.reduce_sum(tf.square(flat), axis=-1))


def expand(v: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes a per-example ``[B]`` vector to broadcast against ``like`` ``[B, ...]``."""
    return tf.reshape(v, tf.concat([tf.shape(v)[:1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def project(x_orig: tf.Tensor, x: tf.Tensor, epsilon: tf.Tensor, norm: str) -> tf.Tensor:
    """The point of the ``norm`` ball of radius ``epsilon`` around ``x_orig`` nearest to ``x``,
    then clipped to [0, 1] (clipping moves each pixel towards ``x_orig``, so the result stays in
    the ball)."""
    delta = x - x_orig
    if norm == "linf":
        delta = tf.clip_by_value(delta, -epsilon, epsilon)
    else:
        n = expand(batch_norm(delta, "l2"), delta)
        delta = delta * tf.minimum(1.0, epsilon / tf.maximum(n, 1e-12))
    return tf.clip_by_value(x_orig + delta, 0.0, 1.0)


def normalized_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """The steepest-ascent unit step for ``grad``: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2).
    Non-finite gradient entries count as 0."""
    grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
    if norm == "linf":
        return tf.sign(grad)
    return grad / tf.maximum(expand(batch_norm(grad, "l2"), grad), 1e-12)


def random_start(x: tf.Tensor, epsilon: tf.Tensor, norm: str, rng: tf.random.Generator) -> tf.Tensor:
    """A random point of the ball: L-inf ``x + eps * U(-1, 1)``; L2 ``x + eps * u`` with ``u`` a
    uniformly random unit direction (on the sphere); clipped to [0, 1]."""
    shape = tf.shape(x)
    if norm == "linf":
        delta = epsilon * rng.uniform(shape, -1.0, 1.0)
    else:
        g = rng.normal(shape)
        delta = epsilon * g / tf.maximum(expand(batch_norm(g, "l2"), g), 1e-12)
    return tf.clip_by_value(x + delta, 0.0, 1.0)


def target_classes(logits: np.ndarray, count: int) -> np.ndarray:
    """``[N, count]`` target classes for the targeted attacks: the classes with the 2nd, 3rd, ...,
    ``(count + 1)``-th largest logit at the natural image (ties broken by class index)."""
    order = np.argsort(-np.asarray(logits), axis=-1, kind="stable")
    return order[:, 1:count + 1]


def predictions(logits: tf.Tensor) -> tf.Tensor:
    return tf.argmax(logits, axis=-1, output_type=tf.int32)
