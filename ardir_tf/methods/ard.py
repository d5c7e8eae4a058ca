"""``ard`` (Goldblum et al. 2020): adversarially robust distillation.

``L = alpha t^2 KL(p^t(T(x)) || p^t(S(x'))) + (1 - alpha) CE(S(x), y)``, ``x'`` by PGD on
``CE(S(x'), y)``, the teacher on the natural image.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Optional

import keras
import tensorflow as tf

from ardir_tf import losses
from ardir_tf.methods.distill import OutputDistillationTrainer

DISTILLATION_KL_REDUCTIONS = ("batchmean", "elementmean")


@dataclasses.dataclass(frozen=True)
class ARDLoss:
    """ARD's output loss, a component of :class:`ARD` and of ARDIR (``base="ard"``).

    Defaults reproduce the reference code: ``temperature=30``, ``alpha=1`` and the KL averaged over
    ``B*C`` elements (``kl_reduction="elementmean"``, PyTorch's default ``KLDivLoss``), ``C`` times
    smaller than ``batchmean``; keep it with the reference learning rate.

    Fields:
        temperature: ``t`` (> 0) of the softmax on both sides.
        alpha: weight in [0, 1] of the distillation term; ``1 - alpha`` weighs ``CE(S(x), y)``.
        kl_reduction: ``"elementmean"`` (reference) or ``"batchmean"``.

    Raises:
        ValueError: a value no distillation loss can use (one line).
    """

    temperature: float = 30.0
    alpha: float = 1.0
    kl_reduction: str = "elementmean"

    #: setting name (``python -m ardir_tf.train`` flag) -> field
    SETTINGS: ClassVar[dict[str, str]] = {"temperature": "temperature", "alpha": "alpha",
                                          "kl_reduction": "kl_reduction"}

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.kl_reduction not in DISTILLATION_KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be 'batchmean' or 'elementmean', got {self.kl_reduction!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the terms :meth:`__call__` reports."""
        return ("kl",) + (("ce",) if self.alpha < 1 else ())

    @property
    def needs_natural(self) -> bool:
        """Whether the loss reads ``S(x)`` (the CE term, ``alpha < 1``)."""
        return self.alpha < 1

    def distillation_per_example(self, teacher_logits: tf.Tensor, adversarial_logits: tf.Tensor) -> tf.Tensor:
        """``alpha t^2 KL_i(p^t(T(x)) || p^t(S(x')))`` at the scale of ``kl_reduction``, ``[B]``
        float32 (its batch mean is the ``kl`` term; ARDIR's attack objective maximises it)."""
        scale = self.alpha * self.temperature**2
        return scale * losses.kl_per_example(teacher_logits, adversarial_logits, self.temperature, self.kl_reduction)

    def __call__(self, teacher_logits: tf.Tensor, adversarial_logits: tf.Tensor, natural_logits: Optional[tf.Tensor],
                 labels: tf.Tensor, *, teacher_adversarial: Optional[Callable[[], tf.Tensor]] = None,
                 epoch: Optional[tf.Tensor] = None) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """``(loss, terms)``: ``kl`` is ``alpha t^2 KL`` and ``ce`` is ``(1 - alpha) CE`` (when
        ``alpha < 1``), each as it enters the loss, so they sum to it.

        Shapes: logits ``[B, C]``, labels ``[B]``; ``natural_logits`` may be ``None`` when
        ``alpha == 1``. ``teacher_adversarial`` and ``epoch`` are unused (IAD reads them).
        """
        kl = self.alpha * self.temperature**2 * losses.kl_divergence(
            teacher_logits, adversarial_logits, self.temperature, self.kl_reduction)
        terms = {"kl": kl}
        if self.alpha < 1:
            terms["ce"] = (1.0 - self.alpha) * losses.cross_entropy(labels, natural_logits)
        return sum(terms.values()), terms


class ARD(OutputDistillationTrainer):
    """Adversarially robust distillation: :class:`ARDLoss` on PGD (CE) adversarial examples.

    Args:
        student: the network being trained.
        teacher: the frozen robust teacher.
        temperature, alpha, kl_reduction: those of :class:`ARDLoss` (its defaults: the reference's).
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    SETTINGS = ARDLoss.SETTINGS

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = ARDLoss.temperature,
                 alpha: float = ARDLoss.alpha, kl_reduction: str = ARDLoss.kl_reduction, **kwargs):
        output_loss = ARDLoss(temperature=temperature, alpha=alpha, kl_reduction=kl_reduction)
        super().__init__(student, teacher, output_loss, **kwargs)
