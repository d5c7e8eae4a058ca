"""Shared base of the distillation methods: a frozen teacher beside the student."""

from __future__ import annotations

import keras

from ardir_tf.methods.base import AdversarialTrainer


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
