"""Objectives that an attack maximises.

An objective is any callable ``fn(outputs, labels, reference) -> [B]`` returning one float32
value per example; the attack ascends the sum. ``outputs`` is what the attacked model returns for
``x'`` (logits ``[B, C]``, or a list ``[logits, ir_1, ...]`` for a feature model), ``labels`` the
``[B]`` true labels and ``reference`` whatever fixed target the objective compares against
(natural logits for ``trades``, teacher logits for ``kl_teacher``, both :func:`kl`; ``None``
otherwise). Pass your own callable to :func:`ardir_tf.attacks.pgd` to attack a custom objective.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import tensorflow as tf

from ardir_tf import losses
from ardir_tf.attacks.primitives import logits_of, margin

Objective = Callable[[Any, tf.Tensor, Any], tf.Tensor]


def ce(outputs: Any, labels: tf.Tensor, reference: Any = None) -> tf.Tensor:
    """Cross-entropy ``CE(S(x'), y)`` (PGD-AT, ARD, IAD)."""
    return losses.cross_entropy_per_example(labels, logits_of(outputs))


def cw(outputs: Any, labels: tf.Tensor, reference: Any = None, kappa: float = 50.0) -> tf.Tensor:
    """Carlini-Wagner margin ``min(max_{j!=y} z_j - z_y, kappa)`` (CW-inf evaluation, kappa 50):
    the negated :func:`ardir_tf.attacks.primitives.margin`, capped."""
    return tf.minimum(-margin(logits_of(outputs), labels), kappa)


def kl(outputs: Any, labels: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """``KL(p(reference) || p(S(x')))`` with the logits ``reference`` held fixed: the natural
    logits for TRADES, the teacher's for RSLAD (names ``"trades"`` and ``"kl_teacher"``)."""
    return losses.kl_per_example(tf.stop_gradient(reference), logits_of(outputs))


#: the TRADES and RSLAD names of :func:`kl` (kept as public aliases)
trades = kl_teacher = kl

OBJECTIVES: dict[str, Objective] = {"ce": ce, "cw": cw, "kl": kl, "trades": kl, "kl_teacher": kl}


def get(objective: Union[str, Objective]) -> Objective:
    """Resolves an objective name (``ce``, ``cw``, ``kl``, or its aliases ``trades`` and ``kl_teacher``)
    or passes a callable through."""
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown attack objective {objective!r}; use one of {sorted(OBJECTIVES)} or a callable")
    return OBJECTIVES[objective]
