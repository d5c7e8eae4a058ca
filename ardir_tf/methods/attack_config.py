"""The attack a trainer runs, as one typed value validated when it is made."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import tensorflow as tf

from ardir_tf.attacks import objectives as objectives_lib
from ardir_tf.attacks.pgd import pgd, validate


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A PGD attack: radius, step size, steps, norm, random start, objective and batch-norm mode.

    Construction validates every field with :func:`ardir_tf.attacks.pgd.validate` (the one place
    the rules live: an epsilon in [0, 1] for ``linf``, a positive step size, ...), so a trainer
    holding one never re-checks it. Fields:

        epsilon: radius of the ball (``linf``: pixel units of [0, 1]).
        step_size: ``eta`` of each step.
        steps: ``K >= 0``.
        norm: ``"linf"`` or ``"l2"``.
        random_start: ``"uniform"``, ``"normal"`` (``x + 0.001 N(0, 1)``) or ``"none"``.
        objective: a name in :mod:`ardir_tf.attacks.objectives` or a callable
            ``fn(outputs, labels, reference) -> [B]``.
        bn_training: call the model in training mode during the attack (updates BN statistics,
            as the ARD/IAD reference code does); ``False``: inference mode.

    Raises:
        ValueError: a field no attack can use (one line).
    """

    epsilon: float
    step_size: float
    steps: int
    norm: str = "linf"
    random_start: str = "uniform"
    objective: Union[str, Callable[..., tf.Tensor]] = "ce"
    bn_training: bool = False

    def __post_init__(self):
        validate(self.epsilon, self.step_size, self.steps, self.norm, self.random_start)
        objectives_lib.get(self.objective)  # an unknown name fails here, not inside a traced step
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "step_size", float(self.step_size))
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "bn_training", bool(self.bn_training))

    def replace(self, **changes: Any) -> "AttackConfig":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def __call__(self, model: Callable[..., Any], x: tf.Tensor, labels: tf.Tensor, *, reference: Any = None,
                 seed: Any = None, scale: Union[float, tf.Tensor] = 1.0) -> tf.Tensor:
        """``x'`` by :func:`ardir_tf.attacks.pgd` with these settings.

        ``scale`` multiplies epsilon and the step size (a warm-up ramp in [0, 1]); ``seed`` is that
        of :func:`~ardir_tf.attacks.pgd`. Returns ``[B, H, W, C]`` float32 images in [0, 1].
        """
        return pgd(
            model, x, labels, epsilon=self.epsilon * scale, step_size=self.step_size * scale, steps=self.steps,
            norm=self.norm, random_start=self.random_start, objective=self.objective, reference=reference,
            training=self.bn_training, seed=seed,
        )
