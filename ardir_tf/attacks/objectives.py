"""Objectives that an attack maximises.

An objective is any callable ``fn(outputs, labels, reference) -> [B]`` returning one float32
value per example; the attack ascends the sum. ``outputs`` is what the attacked model returns for
``x'`` (logits ``[B, C]``, or a list ``[logits, ir_1, ...]`` for a feature model), ``labels`` the
``[B]`` true labels and ``reference`` whatever fixed target the objective compares against
(natural logits for ``trades``, teacher logits for ``kl_teacher``, ``None`` otherwise). Pass your
own callable to :func:`ardir_tf.attacks.pgd` to attack a custom objective.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import tensorflow as tf

from ardir_tf import losses

Objective = Callable[[Any, tf.Tensor, Any], tf.Tensor]


def logits_of(outputs: Any) -> tf.Tensor:
    """The logits of a model output that may be ``[logits, ir_1, ...]``."""
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def ce(outputs: Any, labels: tf.Tensor, reference: Any = None) -> tf.Tensor:
    """Cross-entropy ``CE(S(x'), y)`` (PGD-AT, ARD, IAD)."""
    return losses.cross_entropy_per_example(labels, logits_of(outputs))


def margin(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """``max_{j != y} z_j - z_y`` per example (float32); positive means misclassified."""
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    true_logit = tf.reduce_sum(onehot * logits, axis=-1)
    other = tf.reduce_max(logits - 1e9 * onehot, axis=-1)
    return other - true_logit


def cw(outputs: Any, labels: tf.Tensor, reference: Any = None, kappa: float = 50.0) -> tf.Tensor:
    """Carlini-Wagner margin ``min(max_{j!=y} z_j - z_y, kappa)`` (CW-inf evaluation, kappa 50)."""
    return tf.minimum(margin(logits_of(outputs), labels), kappa)


def trades(outputs: Any, labels: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """``KL(p(S(x)) || p(S(x')))`` with the natural logits ``reference`` held fixed (TRADES)."""
    return losses.kl_per_example(tf.stop_gradient(reference), logits_of(outputs))


def kl_teacher(outputs: Any, labels: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """``KL(p(T(x)) || p(S(x')))`` with the teacher logits ``reference`` held fixed (RSLAD)."""
    return losses.kl_per_example(tf.stop_gradient(reference), logits_of(outputs))


OBJECTIVES: dict[str, Objective] = {"ce": ce, "cw": cw, "trades": trades, "kl_teacher": kl_teacher}


def get(objective: Union[str, Objective]) -> Objective:
    """Resolves an objective name (``ce``, ``cw``, ``trades``, ``kl_teacher``) or passes a callable through."""
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown attack objective {objective!r}; use one of {sorted(OBJECTIVES)} or a callable")
    return OBJECTIVES[objective]
