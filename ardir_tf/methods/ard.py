"""``ard`` (Goldblum et al. 2020): adversarially robust distillation.

``L = alpha t^2 KL(p^t(T(x)) || p^t(S(x'))) + (1 - alpha) CE(S(x), y)``, ``x'`` by PGD on
``CE(S(x'), y)``, the teacher on the natural image.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from ardir_tf import losses
from ardir_tf.methods.base import LossOutput
from ardir_tf.methods.distill import DistillationTrainer


def ard_output_loss(
    teacher_logits: tf.Tensor,
    adversarial_logits: tf.Tensor,
    natural_logits: Optional[tf.Tensor],
    labels: tf.Tensor,
    *,
    temperature: float,
    alpha: float,
    kl_reduction: str,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """ARD's objective and its terms (``kl``: the unscaled KL; ``ce`` when ``alpha < 1``).

    Shapes: logits ``[B, C]``, labels ``[B]``. ``natural_logits`` may be ``None`` when ``alpha == 1``.
    """
    kl = losses.kl_divergence(teacher_logits, adversarial_logits, temperature, kl_reduction)
    loss = alpha * temperature**2 * kl
    terms = {"kl": kl}
    if alpha < 1:
        ce = losses.cross_entropy(labels, natural_logits)
        loss = loss + (1.0 - alpha) * ce
        terms["ce"] = ce
    return loss, terms


class ARD(DistillationTrainer):
    """Adversarially robust distillation.

    Defaults reproduce the reference code: ``temperature=30``, ``alpha=1`` and the KL averaged over
    ``B*C`` elements (``kl_reduction="elementmean"``, PyTorch's default ``KLDivLoss``), which is
    ``C`` times smaller than ``batchmean``; keep it with the reference learning rate.

    Args:
        student: the network being trained.
        teacher: the frozen robust teacher.
        temperature: ``t`` of the softmax on both sides.
        alpha: weight of the distillation term; ``1 - alpha`` weighs ``CE(S(x), y)``.
        kl_reduction: ``"elementmean"`` (reference) or ``"batchmean"``.
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    def __init__(self, student, teacher, temperature: float = 30.0, alpha: float = 1.0,
                 kl_reduction: str = "elementmean", **kwargs):
        validate_distillation(temperature, alpha, kl_reduction)
        self.loss_terms = ("kl",) + (("ce",) if alpha < 1 else ())
        super().__init__(student, teacher, **kwargs)
        self.temperature, self.alpha, self.kl_reduction = float(temperature), float(alpha), kl_reduction

    def prepare(self, x, y):
        return {"teacher_logits": self.teacher(x, training=False)}

    def method_loss(self, x, y, x_adv, context):
        adversarial = self.student(x_adv, training=True)
        natural = self.student(x, training=True) if self.alpha < 1 else None
        loss, terms = ard_output_loss(
            context["teacher_logits"], adversarial, natural, y,
            temperature=self.temperature, alpha=self.alpha, kl_reduction=self.kl_reduction,
        )
        return LossOutput(loss=loss, terms=terms, natural_logits=natural, adversarial_logits=adversarial)


def validate_distillation(temperature: float, alpha: float, kl_reduction: str) -> None:
    """One-line ``ValueError`` for settings no distillation loss can use."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if kl_reduction not in ("batchmean", "elementmean"):
        raise ValueError(f"kl_reduction must be 'batchmean' or 'elementmean', got {kl_reduction!r}")
