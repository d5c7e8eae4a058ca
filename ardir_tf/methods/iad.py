"""``iad`` (IAD-I, Zhu et al. 2022): introspective adversarial distillation.

Trust in the teacher ``w_i = p(T(x'_i))[y_i] ** beta`` (a constant). From epoch ``begin`` on:

    L = alpha t^2 KL(p^t(T(x)) || p^t(S(x'))) + alpha mean_i[(1 - w_i) KL_i(p(S(x)) || p(S(x')))]
        + (1 - alpha) CE(S(x), y)

before ``begin`` it is ARD. ``x'`` by PGD on ``CE(S(x'), y)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Optional

import keras
import tensorflow as tf

from ardir_tf import losses
from ardir_tf.methods.ard import ARDLoss
from ardir_tf.methods.distill import OutputDistillationTrainer


def trust_weights(teacher_adversarial_logits: tf.Tensor, labels: tf.Tensor, beta: float) -> tf.Tensor:
    """``w_i = p(T(x'_i))[y_i] ** beta`` as a constant ``[B]`` float32 tensor."""
    probs = tf.nn.softmax(tf.cast(teacher_adversarial_logits, tf.float32), axis=-1)
    p_true = tf.gather(probs, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
    return tf.stop_gradient(tf.pow(p_true, beta))


@dataclasses.dataclass(frozen=True)
class IADLoss(ARDLoss):
    """IAD-I's output loss: :class:`~ardir_tf.methods.ard.ARDLoss` plus the introspection term
    from epoch ``begin`` on. A component of :class:`IAD` and of ARDIR (``base="iad"``).

    Defaults follow the reference: ``temperature=1``, ``alpha=1``, ``beta=0.1``, ``begin=60`` (of
    200 epochs), both KL terms ``elementmean`` as in the ARD code it builds on.

    Fields: those of :class:`~ardir_tf.methods.ard.ARDLoss`, and
        beta: exponent (>= 0) of the trust weights.
        begin: first epoch (0-based, as ``fit`` counts) with the introspection term.
    """

    temperature: float = 1.0
    beta: float = 0.1
    begin: int = 60

    SETTINGS: ClassVar[dict[str, str]] = {**ARDLoss.SETTINGS, "iad_beta": "beta", "iad_begin": "begin"}

    def __post_init__(self):
        super().__post_init__()
        if self.beta < 0 or self.begin < 0:
            raise ValueError(f"beta and begin must be >= 0, got beta={self.beta}, begin={self.begin}")
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "begin", int(self.begin))

    @property
    def terms(self) -> tuple[str, ...]:
        return ("kl", "introspection") + (("ce",) if self.alpha < 1 else ())

    @property
    def needs_natural(self) -> bool:
        return True  # the introspection term reads S(x) (in training mode, as the reference code)

    def __call__(self, teacher_logits: tf.Tensor, adversarial_logits: tf.Tensor, natural_logits: Optional[tf.Tensor],
                 labels: tf.Tensor, *, teacher_adversarial: Optional[Callable[[], tf.Tensor]] = None,
                 epoch: Optional[tf.Tensor] = None) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """``(loss, terms)``: ARD's terms and ``introspection`` (``alpha mean_i[(1 - w_i) KL_i]``,
        zero before ``begin``), each as it enters the loss.

        ``teacher_adversarial()`` returns ``T(x')`` and is called only from epoch ``begin`` on
        (``tf.cond``): before it the trust weights are unused and the teacher pass is skipped.
        """
        loss, terms = super().__call__(teacher_logits, adversarial_logits, natural_logits, labels)
        active = epoch >= self.begin
        teacher_adversarial_logits = tf.cond(
            active,
            lambda: tf.cast(teacher_adversarial(), tf.float32),
            lambda: tf.zeros_like(tf.cast(teacher_logits, tf.float32)),
        )
        w = trust_weights(teacher_adversarial_logits, labels, self.beta)
        per_example = losses.kl_per_example(natural_logits, adversarial_logits, reduction=self.kl_reduction)
        introspection = tf.where(active, tf.reduce_mean((1.0 - w) * per_example), 0.0)
        terms["introspection"] = self.alpha * introspection
        return loss + terms["introspection"], terms


class IAD(OutputDistillationTrainer):
    """IAD-I: :class:`IADLoss` on PGD (CE) adversarial examples.

    Like the reference code, the student's natural pass runs in training mode on every step (the
    introspection term and CE need it). The teacher's pass on ``x'`` (for the trust weights) runs
    only from ``begin`` on.

    Args:
        student: the network being trained.
        teacher: the frozen robust teacher.
        temperature, alpha, beta, begin, kl_reduction: those of :class:`IADLoss` (its defaults:
            the reference's).
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    SETTINGS = IADLoss.SETTINGS

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = IADLoss.temperature,
                 alpha: float = IADLoss.alpha, beta: float = IADLoss.beta, begin: int = IADLoss.begin,
                 kl_reduction: str = IADLoss.kl_reduction, **kwargs):
        output_loss = IADLoss(temperature=temperature, alpha=alpha, kl_reduction=kl_reduction, beta=beta, begin=begin)
        super().__init__(student, teacher, output_loss, **kwargs)
