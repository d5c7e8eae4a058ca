"""``standard``: natural training, ``L = CE(S(x), y)``."""

from __future__ import annotations

from ardir_tf import losses
from ardir_tf.methods.base import AdversarialTrainer, LossOutput


class Standard(AdversarialTrainer):
    """Natural (non-adversarial) training; ``test_step`` still reports PGD accuracy.

    Args: those of :class:`~ardir_tf.methods.base.AdversarialTrainer` (the attack settings only
    shape the evaluation attack).
    """

    adversarial = False

    def method_loss(self, x, y, x_adv, context):
        logits = self.student(x, training=True)
        return LossOutput(loss=losses.cross_entropy(y, logits), terms={}, natural_logits=logits)
