"""``pgd_at`` (Madry et al. 2018): ``x'`` by PGD on ``CE``, ``L = CE(S(x'), y)``."""

from __future__ import annotations

from ardir_tf import losses
from ardir_tf.methods.base import AdversarialTrainer, LossOutput


class PGDAT(AdversarialTrainer):
    """PGD adversarial training. Args: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`."""

    def method_loss(self, x, y, x_adv, context):
        logits = self.student(x_adv, training=True)
        return LossOutput(loss=losses.cross_entropy(y, logits), terms={}, adversarial_logits=logits)
