"""``trades`` (Zhang et al. 2019): ``L = CE(S(x), y) + beta * KL(p(S(x)) || p(S(x')))``."""

from __future__ import annotations

from ardir_tf import losses
from ardir_tf.methods.base import AdversarialTrainer, LossOutput


class TRADES(AdversarialTrainer):
    """TRADES.

    The attack maximises ``KL(p(S(x)) || p(S(x')))`` from a normal random start, with the natural
    logits computed once in inference mode and held fixed (as the reference code does); the loss
    then runs the student in training mode on ``x`` and ``x'``. KL reduction: ``batchmean``
    (the reference sums over classes and divides by the batch size).

    Args:
        student: the network being trained.
        beta: weight of the robustness term (6 in the paper's CIFAR setting); the ``kl`` metric is
            ``beta KL``, as it enters the loss.
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    loss_terms = ("ce", "kl")
    attack_objective = "trades"
    default_random_start = "normal"
    SETTINGS = {"trades_beta": "beta"}

    def __init__(self, student, beta: float = 6.0, **kwargs):
        super().__init__(student, **kwargs)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def prepare(self, x, y):
        return {"natural_logits": self.student(x, training=False)}

    def attack_reference(self, context):
        return context["natural_logits"]

    def method_loss(self, x, y, x_adv, context):
        natural = self.student(x, training=True)
        adversarial = self.student(x_adv, training=True)
        terms = {"ce": losses.cross_entropy(y, natural),
                 "kl": self.beta * losses.kl_divergence(natural, adversarial, reduction="batchmean")}
        return LossOutput(loss=terms["ce"] + terms["kl"], terms=terms, natural_logits=natural,
                          adversarial_logits=adversarial)
