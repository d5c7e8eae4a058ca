"""White-box attacks written with tf.GradientTape: FGSM, PGD (L-inf, L2) and their objectives, and
BPDA's straight-through model for classifiers without gradients (quantized files), on the shared building blocks of
:mod:`ardir_tf.attacks.primitives` (AutoAttack: :mod:`ardir_tf.attacks.autoattack`)."""

from ardir_tf.attacks import objectives, primitives
from ardir_tf.attacks.bpda import straight_through
from ardir_tf.attacks.fgsm import fgsm
from ardir_tf.attacks.pgd import NORMS, RANDOM_STARTS, pgd, project, validate

__all__ = ["NORMS", "RANDOM_STARTS", "fgsm", "objectives", "pgd", "primitives", "project", "straight_through",
           "validate"]
