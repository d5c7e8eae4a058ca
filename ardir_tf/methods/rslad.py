"""``rslad`` (Zi et al. 2021): robust soft label adversarial distillation.

``L = 5/6 KL(p(T(x)) || p(S(x'))) + 1/6 KL(p(T(x)) || p(S(x)))``, ``x'`` by PGD on
``KL(p(T(x)) || p(S(x')))`` from a normal random start; no temperature, no hard labels.
"""

from __future__ import annotations

import keras

from ardir_tf import losses
from ardir_tf.methods.ard import DISTILLATION_KL_REDUCTIONS
from ardir_tf.methods.base import LossOutput
from ardir_tf.methods.distill import DistillationTrainer


class RSLAD(DistillationTrainer):
    """RSLAD.

    KL reduction ``elementmean`` by default, as the reference code (``resnet18_rslad_cifar10.py``
    of zibojia/RSLAD): it forms the element-wise KL matrix ``[B, C]`` and takes ``torch.mean`` over
    all ``B*C`` elements, ``C`` times smaller than ``batchmean`` (the scale of ARD's and IAD's
    reference code too). Its matrix is ``b (log(b + 1e-5) - log q)`` with ``b`` the teacher's
    probabilities: the ``1e-5`` shifts the value by a constant of the teacher alone (no gradient),
    which this exact KL leaves out.

    Args:
        student: the network being trained.
        teacher: the frozen robust teacher.
        adversarial_weight: weight of the adversarial term (5/6); the natural one gets ``1 - w``.
        kl_reduction: ``"elementmean"`` (reference) or ``"batchmean"`` (``C`` times larger; the
            scale this library used before it matched the reference).
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    loss_terms = ("kl_adversarial", "kl_natural")
    attack_objective = "kl_teacher"
    default_random_start = "normal"
    SETTINGS = {"rslad_adversarial_weight": "adversarial_weight", "kl_reduction": "kl_reduction"}

    def __init__(self, student: keras.Model, teacher: keras.Model, adversarial_weight: float = 5.0 / 6.0,
                 kl_reduction: str = "elementmean", **kwargs):
        if not 0 <= adversarial_weight <= 1:
            raise ValueError(f"adversarial_weight must lie in [0, 1], got {adversarial_weight}")
        if kl_reduction not in DISTILLATION_KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be 'batchmean' or 'elementmean', got {kl_reduction!r}")
        super().__init__(student, teacher, **kwargs)
        self.adversarial_weight, self.kl_reduction = float(adversarial_weight), kl_reduction

    def prepare(self, x, y):
        return {"teacher_logits": self.teacher(x, training=False)}

    def attack_reference(self, context):
        return context["teacher_logits"]

    def method_loss(self, x, y, x_adv, context):
        teacher = context["teacher_logits"]
        adversarial = self.student(x_adv, training=True)
        natural = self.student(x, training=True)
        w = self.adversarial_weight
        terms = {"kl_adversarial": w * losses.kl_divergence(teacher, adversarial, reduction=self.kl_reduction),
                 "kl_natural": (1.0 - w) * losses.kl_divergence(teacher, natural, reduction=self.kl_reduction)}
        return LossOutput(loss=terms["kl_adversarial"] + terms["kl_natural"], terms=terms,
                          natural_logits=natural, adversarial_logits=adversarial)
