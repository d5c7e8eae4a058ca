"""Fast gradient sign method (Goodfellow et al. 2015): one PGD step of size eps, no random start."""

from __future__ import annotations

from typing import Any, Callable, Union

import tensorflow as tf

from ardir_tf.attacks.objectives import Objective
from ardir_tf.attacks.pgd import pgd


def fgsm(
    model: Callable[..., Any],
    x: tf.Tensor,
    labels: tf.Tensor,
    *,
    epsilon: Union[float, tf.Tensor],
    norm: str = "linf",
    objective: Union[str, Objective] = "ce",
    reference: Any = None,
) -> tf.Tensor:
    """``x + eps * sign(grad)`` clipped to [0, 1] (L2: a step of length eps along the gradient).

    Shapes and ranges as in :func:`ardir_tf.attacks.pgd`.
    """
    return pgd(
        model, x, labels, epsilon=epsilon, step_size=epsilon, steps=1, norm=norm,
        random_start="none", objective=objective, reference=reference,
    )
