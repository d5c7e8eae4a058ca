"""Shared bases of the distillation methods: a frozen teacher beside the student, and a trainer
whose loss is an output-loss component (ARD's or IAD's) on the teacher's natural logits."""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import keras
import tensorflow as tf

from ardir_tf.methods.base import AdversarialTrainer, LossOutput


class DistillationTrainer(AdversarialTrainer):
    """An :class:`AdversarialTrainer` with a frozen teacher, always called in inference mode.

    Args:
        student: the network being trained.
        teacher: a trained classifier with the same input shape and number of classes; frozen
            (``trainable = False``), never updated.
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.

    Raises:
        ValueError: the teacher's input shape or class count differs from the student's.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, **kwargs):
        check_compatible(student, teacher)
        super().__init__(student, **kwargs)
        teacher.trainable = False
        self.teacher = teacher


def check_compatible(student: keras.Model, teacher: keras.Model) -> None:
    """Raises ``ValueError`` if teacher and student differ in input shape or class count."""
    s_in, t_in = tuple(student.inputs[0].shape[1:]), tuple(teacher.inputs[0].shape[1:])
    if s_in != t_in:
        raise ValueError(f"teacher input shape {t_in} differs from the student's {s_in}")
    s_out, t_out = student.outputs[0].shape[-1], teacher.outputs[0].shape[-1]
    if s_out != t_out:
        raise ValueError(f"teacher has {t_out} classes but the student has {s_out}")


class OutputLoss(Protocol):
    """What :class:`OutputDistillationTrainer` needs of an output loss (:class:`~ardir_tf.methods.ard.ARDLoss`,
    :class:`~ardir_tf.methods.iad.IADLoss`)."""

    terms: tuple[str, ...]
    needs_natural: bool

    def __call__(self, teacher_logits: tf.Tensor, adversarial_logits: tf.Tensor, natural_logits: Optional[tf.Tensor],
                 labels: tf.Tensor, *, teacher_adversarial: Callable[[], tf.Tensor],
                 epoch: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]: ...


class OutputDistillationTrainer(DistillationTrainer):
    """A distillation trainer whose loss is ``output_loss`` on the teacher's logits of ``x``.

    ARD and IAD are this trainer with their output loss; ARDIR holds the same component and adds
    its IR term, so ARDIR with ``gamma=0`` is ARD (or IAD) by construction.

    Args:
        student, teacher: as :class:`DistillationTrainer`.
        output_loss: the component (its ``terms`` become metrics).
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.
    """

    #: terms a subclass adds to the output loss's (ARDIR: ``ir``)
    extra_loss_terms: tuple[str, ...] = ()

    def __init__(self, student: keras.Model, teacher: keras.Model, output_loss: OutputLoss, **kwargs):
        self.output_loss = output_loss
        self.loss_terms = tuple(output_loss.terms) + self.extra_loss_terms
        super().__init__(student, teacher, **kwargs)

    def prepare(self, x, y):
        return {"teacher_logits": self.teacher(x, training=False)}

    def output_part(self, x: tf.Tensor, y: tf.Tensor, x_adv: tf.Tensor, adversarial_logits: tf.Tensor,
                    context: dict[str, Any], teacher_adversarial: Optional[Callable[[], tf.Tensor]] = None):
        """``(loss, terms, natural_logits)`` of the output loss; runs ``S(x)`` in training mode
        only when the loss needs it. ``teacher_adversarial`` returns ``T(x')`` (default: a teacher
        pass, which the loss runs only when it needs it)."""
        natural = self.student(x, training=True) if self.output_loss.needs_natural else None
        if teacher_adversarial is None:
            teacher_adversarial = lambda: self.teacher(x_adv, training=False)  # noqa: E731
        loss, terms = self.output_loss(context["teacher_logits"], adversarial_logits, natural, y,
                                       teacher_adversarial=teacher_adversarial, epoch=self.epoch)
        return loss, terms, natural

    def method_loss(self, x, y, x_adv, context):
        adversarial = self.student(x_adv, training=True)
        loss, terms, natural = self.output_part(x, y, x_adv, adversarial, context)
        return LossOutput(loss=loss, terms=terms, natural_logits=natural, adversarial_logits=adversarial)
