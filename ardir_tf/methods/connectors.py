"""Trainable connectors that map a student activation onto its teacher's shape (ARDIR)."""

from __future__ import annotations

from typing import Sequence

import keras

from ardir_tf.models.layers import BN_KW


def build_connector(
    student_shape: Sequence[int | None],
    teacher_shape: Sequence[int | None],
    distance: str,
    name: str,
) -> keras.layers.Layer:
    """A layer mapping ``[B, *student_shape]`` to ``[B, *teacher_shape]``.

    Equal shapes (or, for the ``attention`` distance, equal spatial sizes) need nothing: an
    ``Identity`` layer. Otherwise 4-D activations get a 1x1 convolution to the teacher's channels,
    batch norm and, if the student map is larger, average pooling by the integer ratio; 2-D ones a
    dense layer and batch norm. The connector trains with the student and is never exported.

    Raises:
        ValueError: the shapes cannot be connected (different ranks, a student map smaller than
            the teacher's, or a non-integer spatial ratio).
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if s == t or (distance == "attention" and len(s) == len(t) == 3 and s[:2] == t[:2]):
        return keras.layers.Identity(name=name)
    if len(s) == len(t) == 3:
        (hs, ws, _), (ht, wt, ct) = s, t
        if None in (hs, ws, ht, wt) or hs < ht or ws < wt or hs % ht or ws % wt:
            raise ValueError(f"cannot pool a {s} student map onto a {t} teacher map (needs an integer ratio >= 1)")
        layers = [keras.Input(s), keras.layers.Conv2D(ct, 1, use_bias=False, name=f"{name}_conv"),
                  keras.layers.BatchNormalization(name=f"{name}_bn", **BN_KW)]
        if (hs, ws) != (ht, wt):
            layers.append(keras.layers.AveragePooling2D((hs // ht, ws // wt), name=f"{name}_pool"))
        return keras.Sequential(layers, name=name)
    if len(s) == len(t) == 1:
        return keras.Sequential(
            [keras.Input(s), keras.layers.Dense(t[0], use_bias=False, name=f"{name}_dense"),
             keras.layers.BatchNormalization(name=f"{name}_bn", **BN_KW)],
            name=name,
        )
    raise ValueError(f"cannot connect a student activation of shape {s} to a teacher activation of shape {t}")
