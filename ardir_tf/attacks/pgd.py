"""Projected gradient descent (Madry et al. 2018) in the L-inf or L2 ball, clipped to [0, 1].

Written with ``tf.GradientTape`` and ``tf.while_loop`` so that the same function runs eagerly,
inside a trainer's compiled ``train_step``, in a ``tf.function`` for evaluation and inside an
exported SavedModel signature (``steps`` and ``epsilon`` may be tensors there).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Union

import keras
import numpy as np
import tensorflow as tf

from ardir_tf.attacks import objectives as objectives_lib

NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "normal", "none")
_NORMAL_START_STD = 0.001  # TRADES/RSLAD: x + 0.001 * N(0, 1)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def validate(epsilon: Any, step_size: Any, steps: Any, norm: str, random_start: str) -> None:
    """Raises ``ValueError`` with a one-line message for settings no attack can use."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
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


def _random(kind: str, shape, seed, salt: int, **kw) -> tf.Tensor:
    """Uniform or normal noise from ``seed``: ``None`` (stateful TF op), a
    ``keras.random.SeedGenerator``, or a stateless ``[2]`` integer seed tensor."""
    if seed is None:  # fresh noise on every call, also inside a traced graph
        if kind == "uniform":
            return tf.random.uniform(shape, kw["minval"], kw["maxval"], dtype=tf.float32)
        return tf.random.normal(shape, dtype=tf.float32)
    if isinstance(seed, keras.random.SeedGenerator):
        if kind == "uniform":
            return keras.random.uniform(shape, kw["minval"], kw["maxval"], dtype="float32", seed=seed)
        return keras.random.normal(shape, dtype="float32", seed=seed)
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)
    if kind == "uniform":
        return tf.random.stateless_uniform(shape, seed, kw["minval"], kw["maxval"], dtype=tf.float32)
    return tf.random.stateless_normal(shape, seed, dtype=tf.float32)


def _l2_norm(t: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    axes = tf.range(1, tf.rank(t))
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))


def project(delta: tf.Tensor, epsilon: tf.Tensor, norm: str) -> tf.Tensor:
    """Projects a perturbation onto the ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return tf.clip_by_value(delta, -epsilon, epsilon)
    n = _l2_norm(delta)
    return delta * tf.minimum(1.0, epsilon / tf.maximum(n, 1e-12))


def random_start_point(x: tf.Tensor, epsilon: tf.Tensor, norm: str, random_start: str, seed=None) -> tf.Tensor:
    """The attack's first iterate: ``x`` plus the chosen start noise, inside the ball and [0, 1]."""
    if random_start == "none":
        return x
    shape = tf.shape(x)
    if random_start == "normal":
        delta = _NORMAL_START_STD * _random("normal", shape, seed, 0)
    elif norm == "linf":
        delta = _random("uniform", shape, seed, 1, minval=-1.0, maxval=1.0) * epsilon
    else:  # uniform in the L2 ball: uniform direction, radius eps * u^(1/d)
        direction = _random("normal", shape, seed, 2)
        direction = direction / tf.maximum(_l2_norm(direction), 1e-12)
        dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
        u = _random("uniform", tf.concat([shape[:1], tf.ones_like(shape[1:])], 0), seed, 3, minval=0.0, maxval=1.0)
        delta = direction * epsilon * tf.pow(u, 1.0 / dims)
    return tf.clip_by_value(x + project(delta, epsilon, norm), 0.0, 1.0)


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
        if norm == "linf":
            x_next = x_adv + eta * tf.sign(grad)
        else:
            x_next = x_adv + eta * grad / tf.maximum(_l2_norm(grad), 1e-12)
        x_next = tf.clip_by_value(x + project(x_next - x, eps, norm), 0.0, 1.0)
        return i + 1, tf.stop_gradient(x_next)

    _, x_adv = tf.while_loop(
        lambda i, _: i < tf.cast(steps, tf.int32), step, (tf.constant(0), x_adv), parallel_iterations=1
    )
    return tf.stop_gradient(x_adv)
