"""The target classes of AutoAttack's targeted members (APGD-T, FAB-T).

Norms, projections, random starts and the margin live in :mod:`ardir_tf.attacks.primitives`.
"""

from __future__ import annotations

import numpy as np


def target_classes(logits: np.ndarray, count: int) -> np.ndarray:
    """``[N, count]`` target classes for the targeted attacks: the classes with the 2nd, 3rd, ...,
    ``(count + 1)``-th largest logit at the natural image (ties broken by class index)."""
    order = np.argsort(-np.asarray(logits), axis=-1, kind="stable")
    return order[:, 1:count + 1]
