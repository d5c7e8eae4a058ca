"""``iad`` (IAD-I, Zhu et al. 2022): introspective adversarial distillation.

Trust in the teacher ``w_i = p(T(x'_i))[y_i] ** beta`` (a constant). From epoch ``begin`` on:

    L = alpha t^2 KL(p^t(T(x)) || p^t(S(x'))) + alpha mean_i[(1 - w_i) KL_i(p(S(x)) || p(S(x')))]
        + (1 - alpha) CE(S(x), y)

before ``begin`` it is ARD. ``x'`` by PGD on ``CE(S(x'), y)``.
"""

from __future__ import annotations

import tensorflow as tf

from ardir_tf import losses
from ardir_tf.methods.ard import ard_output_loss, validate_distillation
from ardir_tf.methods.base import LossOutput
from ardir_tf.methods.distill import DistillationTrainer


def trust_weights(teacher_adversarial_logits: tf.Tensor, labels: tf.Tensor, beta: float) -> tf.Tensor:
    """``w_i = p(T(x'_i))[y_i] ** beta`` as a constant ``[B]`` float32 tensor."""
    probs = tf.nn.softmax(tf.cast(teacher_adversarial_logits, tf.float32), axis=-1)
    p_true = tf.gather(probs, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
    return tf.stop_gradient(tf.pow(p_true, beta))


def teacher_logits_when(active: tf.Tensor, teacher, x_adv: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``T(x')`` as float32 when ``active`` (epoch >= begin), else zeros shaped like ``like``:
    before ``begin`` the trust weights are unused, so the teacher pass is skipped (``tf.cond``)."""
    return tf.cond(
        active,
        lambda: tf.cast(teacher(x_adv, training=False), tf.float32),
        lambda: tf.zeros_like(tf.cast(like, tf.float32)),
    )


def iad_output_loss(
    teacher_logits: tf.Tensor,
    teacher_adversarial_logits: tf.Tensor,
    adversarial_logits: tf.Tensor,
    natural_logits: tf.Tensor,
    labels: tf.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    kl_reduction: str,
    active: tf.Tensor,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """IAD-I's objective and terms (``kl``, ``introspection``, ``ce`` when ``alpha < 1``).

    ``active`` (bool scalar) switches the introspection term on (epoch >= begin). Both KL terms use
    ``kl_reduction``; for ``elementmean`` the per-example introspection KL is divided by ``C`` too.
    ``teacher_adversarial_logits`` is only read when ``active``: :func:`teacher_logits_when`
    computes it without a teacher pass before ``begin``.
    """
    loss, terms = ard_output_loss(
        teacher_logits, adversarial_logits, natural_logits, labels,
        temperature=temperature, alpha=alpha, kl_reduction=kl_reduction,
    )
    w = trust_weights(teacher_adversarial_logits, labels, beta)
    per_example = losses.kl_per_example(natural_logits, adversarial_logits)
    introspection = tf.reduce_mean((1.0 - w) * per_example)
    if kl_reduction == "elementmean":
        introspection = introspection / tf.cast(tf.shape(natural_logits)[-1], tf.float32)
    introspection = tf.where(active, introspection, 0.0)
    terms["introspection"] = introspection
    return loss + alpha * introspection, terms


class IAD(DistillationTrainer):
    """IAD-I.

    Defaults follow the reference: ``temperature=1``, ``alpha=1``, ``beta=0.1``, ``begin=60`` (of
    200 epochs), KL ``elementmean`` as in the ARD code it builds on. Like that code, the student's
    natural pass runs in training mode on every step (the introspection term and CE need it).
    The teacher's pass on ``x'`` (for the trust weights) runs only from ``begin`` on.

    Args:
        student: the network being trained.
        teacher: the frozen robust teacher.
        temperature: ``t`` of the distillation term.
        alpha: weight of the distillation and introspection terms; ``1 - alpha`` weighs CE.
        beta: exponent of the trust weights.
        begin: first epoch (0-based, as ``fit`` counts) with the introspection term.
        kl_reduction: ``"elementmean"`` (reference) or ``"batchmean"``.
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    def __init__(self, student, teacher, temperature: float = 1.0, alpha: float = 1.0, beta: float = 0.1,
                 begin: int = 60, kl_reduction: str = "elementmean", **kwargs):
        validate_distillation(temperature, alpha, kl_reduction)
        if beta < 0 or begin < 0:
            raise ValueError(f"beta and begin must be >= 0, got beta={beta}, begin={begin}")
        self.loss_terms = ("kl", "introspection") + (("ce",) if alpha < 1 else ())
        super().__init__(student, teacher, **kwargs)
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.begin, self.kl_reduction = int(begin), kl_reduction

    def prepare(self, x, y):
        return {"teacher_logits": self.teacher(x, training=False)}

    def introspection_active(self) -> tf.Tensor:
        return self.epoch >= self.begin

    def method_loss(self, x, y, x_adv, context):
        adversarial = self.student(x_adv, training=True)
        natural = self.student(x, training=True)
        loss, terms = iad_output_loss(
            context["teacher_logits"],
            teacher_logits_when(self.introspection_active(), self.teacher, x_adv, context["teacher_logits"]),
            adversarial, natural, y,
            temperature=self.temperature, alpha=self.alpha, beta=self.beta,
            kl_reduction=self.kl_reduction, active=self.introspection_active(),
        )
        return LossOutput(loss=loss, terms=terms, natural_logits=natural, adversarial_logits=adversarial)
