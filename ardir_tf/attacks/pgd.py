"""Projected gradient descent (Madry et al. 2018) in the L-inf or L2 ball, clipped to [0, 1].

Written with ``tf.GradientTape`` and ``tf.while_loop`` so that the same function runs eagerly,
inside a trainer's compiled ``train_step``, in a ``tf.function`` for evaluation and inside an
exported SavedModel signature (``steps`` and ``epsilon`` may be tensors there).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Union

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import objectives as objectives_lib
from ardir_tf.attacks import primitives
from ardir_tf.attacks.primitives import NORMS, RANDOM_STARTS, project

__all__ = ["NORMS", "RANDOM_STARTS", "pgd", "project", "random_start_point", "validate"]


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def validate(epsilon: Any, step_size: Any, steps: Any, norm: str, random_start: str) -> None:
    """Raises ``ValueError`` with a one-line message for settings no attack can use."""
    primitives.check_norm(norm)
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"unknown random_start {random_start!r}; use one of {RANDOM_STARTS}")
    if _is_number(epsilon) and (epsilon < 0 or (norm == "linf" and epsilon > 1)):
        # An integer above 1 is almost always a radius in 0..255 pixel units (8 meant as 8/255).
        hint = f" (did you mean {int(epsilon)}/255?)" if epsilon > 1 and float(epsilon).is_integer() else ""
        raise ValueError(f"epsilon must lie in [0, 1] for linf (>= 0 for l2), got {epsilon:g}{hint}")
    if _is_number(steps) and (int(steps) != steps or steps < 0):
        raise ValueError(f"attack steps must be a non-negative integer, got {steps}")
    zero_ball = _is_number(epsilon) and epsilon == 0
    if _is_number(step_size) and _is_number(steps) and steps > 0 and step_size <= 0 and not zero_ball:
        raise ValueError(f"attack step size must be positive, got {step_size}")


def random_start_point(x: tf.Tensor, epsilon: tf.Tensor, norm: str, random_start: str, seed=None) -> tf.Tensor:
    """The attack's first iterate: ``x`` plus the chosen start noise, inside the ball and [0, 1]
    (:func:`ardir_tf.attacks.primitives.random_start`)."""
    return primitives.random_start(x, epsilon, norm, random_start, seed)


def pgd(
    model: Callable[..., Any],
    x: tf.Tensor,
    labels: tf.Tensor | None = None,
    *,
    epsilon: Union[float, tf.Tensor],
    step_size: Union[float, tf.Tensor],
    steps: Union[int, tf.Tensor],
    norm: str = "linf",
    random_start: str = "uniform",
    objective: Union[str, objectives_lib.Objective] = "ce",
    reference: Any = None,
    training: bool = False,
    seed: Any = None,
) -> tf.Tensor:
    """Maximises ``objective`` by ``steps`` projected gradient steps around ``x``.

    Args:
        model: callable ``model(x, training=...)`` returning logits ``[B, C]`` or a list
            ``[logits, ir_1, ...]`` (a feature model); inputs are [0, 1] pixels.
        x: ``[B, H, W, C]`` float32 natural images in [0, 1].
        labels: ``[B]`` int labels (needed by ``ce`` and ``cw``).
        epsilon: radius of the ball (L-inf: in pixel units of [0, 1]).
        step_size: ``eta``; L-inf steps along ``sign(grad)``, L2 along ``grad / ||grad||_2``.
        steps: ``K`` >= 0; 0 returns the random start.
        norm: ``"linf"`` or ``"l2"``.
        random_start: ``"uniform"`` (in the ball; Madry/ARD/IAD), ``"normal"`` (``x + 0.001 N(0,1)``;
            TRADES/RSLAD) or ``"none"``.
        objective: a name of :mod:`ardir_tf.attacks.objectives` or a callable
            ``fn(outputs, labels, reference) -> [B]``.
        reference: the fixed target the objective compares against (see objectives).
        training: the mode the model is called in: ``False`` (inference, BN statistics frozen) is
            the default; ``True`` reproduces ARD/IAD reference code (updates BN moving stats).
        seed: ``None`` (fresh noise each call), a ``keras.random.SeedGenerator``, or a stateless
            ``[2]`` integer seed tensor (the trainers use ``[seed, step]``, so a resumed run draws
            exactly the noise of an uninterrupted one).

    Returns:
        ``[B, H, W, C]`` float32 adversarial images, inside the ball around ``x`` and in [0, 1],
        with no gradient attached.
    """
    validate(epsilon, step_size, steps, norm, random_start)
    objective_fn = objectives_lib.get(objective)
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    eps = tf.cast(epsilon, tf.float32)
    eta = tf.cast(step_size, tf.float32)
    x_adv = random_start_point(x, eps, norm, random_start, seed)

    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(objective_fn(model(x_adv, training=training), labels, reference))
        grad = tf.cast(tape.gradient(loss, x_adv), tf.float32)
        x_next = primitives.project_to_threat(x, x_adv + eta * primitives.ascent_direction(grad, norm), eps, norm)
        return i + 1, tf.stop_gradient(x_next)

    _, x_adv = tf.while_loop(
        lambda i, _: i < tf.cast(steps, tf.int32), step, (tf.constant(0), x_adv), parallel_iterations=1
    )
    return tf.stop_gradient(x_adv)
