"""``rslad`` (Zi et al. 2021): robust soft label adversarial distillation.

``L = 5/6 KL(p(T(x)) || p(S(x'))) + 1/6 KL(p(T(x)) || p(S(x)))``, ``x'`` by PGD on
``KL(p(T(x)) || p(S(x')))`` from a normal random start; no temperature, no hard labels.
"""

from __future__ import annotations

from ardir_tf import losses
from ardir_tf.methods.base import LossOutput
from ardir_tf.methods.distill import DistillationTrainer


class RSLAD(DistillationTrainer):
    """RSLAD. KL reduction ``batchmean`` (the reference sums over classes, averages over the batch).

    Args:
        student: the network being trained.
        teacher: the frozen robust teacher.
        adversarial_weight: weight of the adversarial term (5/6); the natural one gets ``1 - w``.
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    loss_terms = ("kl_adversarial", "kl_natural")
    attack_objective = "kl_teacher"
    default_random_start = "normal"

    def __init__(self, student, teacher, adversarial_weight: float = 5.0 / 6.0, **kwargs):
        if not 0 <= adversarial_weight <= 1:
            raise ValueError(f"adversarial_weight must lie in [0, 1], got {adversarial_weight}")
        super().__init__(student, teacher, **kwargs)
        self.adversarial_weight = float(adversarial_weight)

    def prepare(self, x, y):
        return {"teacher_logits": self.teacher(x, training=False)}

    def attack_reference(self, context):
        return context["teacher_logits"]

    def method_loss(self, x, y, x_adv, context):
        teacher = context["teacher_logits"]
        adversarial = self.student(x_adv, training=True)
        natural = self.student(x, training=True)
        kl_adv = losses.kl_divergence(teacher, adversarial, reduction="batchmean")
        kl_nat = losses.kl_divergence(teacher, natural, reduction="batchmean")
        w = self.adversarial_weight
        return LossOutput(
            loss=w * kl_adv + (1.0 - w) * kl_nat,
            terms={"kl_adversarial": kl_adv, "kl_natural": kl_nat},
            natural_logits=natural, adversarial_logits=adversarial,
        )
