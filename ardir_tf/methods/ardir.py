"""``ardir`` (Takahashi, Yamada, Yamanaka, Yamashita 2022): adversarial robust distillation with
internal representation.

    L = L_out + gamma * sum_l lambda_l * d(c_l(h_S^l(x')), h_T^{m(l)}(x))

``L_out`` is ARD's output loss (default) or IAD's, held as a component (:class:`~ardir_tf.methods.ard.ARDLoss`,
:class:`~ardir_tf.methods.iad.IADLoss`), so ``gamma=0`` is ARD (or IAD) by construction; ``h`` are
activations of named layers, ``c_l`` a trainable connector where shapes differ, ``d`` an IR
distance of :mod:`ardir_tf.losses`. The full paper text was not available: these defaults are a
documented reconstruction (docs/methods.md), each is an argument, and the ablation benchmark
compares them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

import keras
import tensorflow as tf

from ardir_tf import losses
from ardir_tf.models.features import check_layer_names, default_ir_layers, feature_model
from ardir_tf.methods.ard import ARDLoss
from ardir_tf.methods.base import LossOutput
from ardir_tf.methods.connectors import build_connector
from ardir_tf.methods.distill import OutputDistillationTrainer
from ardir_tf.methods.iad import IADLoss

LayerPairs = Union[None, str, Sequence[Union[str, tuple[str, str]]], dict]
#: ``base`` -> output loss component
OUTPUT_LOSSES = {"ard": ARDLoss, "iad": IADLoss}
BASES = tuple(OUTPUT_LOSSES)
TEACHER_IR_INPUTS = ("natural", "adversarial")
ATTACK_OBJECTIVES = ("ce", "ardir")


def parse_layer_pairs(ir_layers: LayerPairs, student: keras.Model, teacher: keras.Model) -> list[tuple[str, str]]:
    """Normalises ``ir_layers`` to ``[(student_layer, teacher_layer), ...]``.

    Accepts ``None`` (the last convolutional stage of each model), a name used on both sides, a
    ``"student:teacher"`` string, a list of those or of ``(student, teacher)`` tuples, or a dict.

    Raises:
        UnknownLayerError: a name is not in its model (the message lists the layers it has).
    """
    if ir_layers is None:
        pairs = [(default_ir_layers(student)[0], default_ir_layers(teacher)[0])]
    else:
        if isinstance(ir_layers, str):
            ir_layers = [p for p in ir_layers.split(",") if p]
        items = ir_layers.items() if isinstance(ir_layers, dict) else ir_layers
        pairs = []
        for item in items:
            if isinstance(item, str):
                s, _, t = item.partition(":")
                pairs.append((s.strip(), (t or s).strip()))
            else:
                s, t = item
                pairs.append((str(s), str(t)))
    if not pairs:
        raise ValueError("ir_layers names no layer pair")
    check_layer_names(student, [s for s, _ in pairs])
    check_layer_names(teacher, [t for _, t in pairs])
    return pairs


class ARDIR(OutputDistillationTrainer):
    """ARDIR: the teacher's outputs **and internal representations** as labels for the student
    on PGD adversarial examples.

    Args:
        student: the network being trained (functional).
        teacher: the frozen robust teacher (functional).
        ir_layers: layer pairs student -> teacher (see :func:`parse_layer_pairs`); default: the
            output of the last convolutional stage of each.
        ir_weights: ``lambda_l`` per pair (default 1 each).
        gamma: weight of the IR term.
        distance: ``normalized_mse`` (default; per-example L2-normalised, squared Euclidean, in
            [0, 4]), ``mse``, ``cosine`` or ``attention``.
        teacher_ir_input: ``"natural"`` (the teacher's IR on ``x``, default) or ``"adversarial"`` (on ``x'``).
        base: the output loss, ``"ard"`` (:class:`~ardir_tf.methods.ard.ARDLoss`, default) or
            ``"iad"`` (:class:`~ardir_tf.methods.iad.IADLoss`).
        attack_objective: ``"ce"`` (default) or ``"ardir"`` (PGD maximises the per-example ARDIR
            objective: the output loss's distillation KL plus the IR term; needs
            ``teacher_ir_input="natural"``).
        **kwargs: the output loss's options, with its defaults (``temperature``, ``alpha``,
            ``kl_reduction``; ``beta`` and ``begin`` with ``base="iad"``; ``None`` keeps the
            default), and those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.

    Raises:
        UnknownLayerError: a layer name that a model does not have (the message lists them).
        ValueError: shapes that no connector can map, or an unknown option.
    """

    extra_loss_terms = ("ir",)
    SETTINGS = {"ir_layers": "ir_layers", "ir_weights": "ir_weights", "gamma": "gamma", "ir_distance": "distance",
                "teacher_ir_input": "teacher_ir_input", "ardir_base": "base", "attack_objective": "attack_objective"}

    @classmethod
    def settings_for(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """ARDIR's own settings and those of its base's output loss."""
        base = OUTPUT_LOSSES.get(values.get("ardir_base") or "ard", ARDLoss)
        return {**cls.SETTINGS, **base.SETTINGS}

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        ir_layers: LayerPairs = None,
        ir_weights: Optional[Sequence[float]] = None,
        gamma: float = 1.0,
        distance: str = "normalized_mse",
        teacher_ir_input: str = "natural",
        base: str = "ard",
        attack_objective: str = "ce",
        **kwargs,
    ):
        for value, allowed, what in (
            (distance, losses.IR_DISTANCES, "distance"), (teacher_ir_input, TEACHER_IR_INPUTS, "teacher_ir_input"),
            (base, BASES, "base"), (attack_objective, ATTACK_OBJECTIVES, "attack_objective"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; use one of {allowed}")
        if attack_objective == "ardir" and teacher_ir_input != "natural":
            raise ValueError("attack_objective='ardir' needs teacher_ir_input='natural' (the attack holds the teacher's IR fixed)")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        output_loss = _output_loss(base, kwargs)
        pairs = parse_layer_pairs(ir_layers, student, teacher)
        weights = [1.0] * len(pairs) if ir_weights is None else [float(w) for w in ir_weights]
        if len(weights) != len(pairs):
            raise ValueError(f"ir_weights has {len(weights)} values for {len(pairs)} layer pairs")
        super().__init__(student, teacher, output_loss, **kwargs)
        self.layer_pairs, self.ir_weights, self.gamma = pairs, weights, float(gamma)
        self.distance, self.teacher_ir_input, self.base = distance, teacher_ir_input, base
        self.student_features = feature_model(student, [s for s, _ in pairs])
        self.teacher_features = feature_model(teacher, [t for _, t in pairs])
        self.connectors = []
        for i, ((s_name, t_name), s_out, t_out) in enumerate(
            zip(pairs, self.student_features.outputs[1:], self.teacher_features.outputs[1:])
        ):
            try:
                self.connectors.append(build_connector(s_out.shape[1:], t_out.shape[1:], distance, f"connector_{i}"))
            except ValueError as err:
                raise ValueError(
                    f"student layer {s_name!r} {tuple(s_out.shape[1:])} cannot be connected to teacher layer "
                    f"{t_name!r} {tuple(t_out.shape[1:])}: {err}; pick other layers"
                ) from None
        self.attack_objective = attack_objective
        if attack_objective == "ardir":
            self.attack = self.attack.replace(objective=self._ardir_objective)

    # --------------------------------------------------------------------------------- pieces
    def ir_term_per_example(self, student_irs, teacher_irs, training: bool) -> tf.Tensor:
        """``sum_l lambda_l d(c_l(h_S^l), h_T^l)`` per example, ``[B]`` float32 (before ``gamma``)."""
        total = 0.0
        for w, connector, s, t in zip(self.ir_weights, self.connectors, student_irs, teacher_irs):
            total += w * losses.ir_distance_per_example(connector(s, training=training), tf.stop_gradient(t), self.distance)
        return total

    def _ardir_objective(self, outputs, labels, reference):
        """Per-example ARDIR objective maximised by ``attack_objective="ardir"``: the output
        loss's distillation KL (:meth:`~ardir_tf.methods.ard.ARDLoss.distillation_per_example`)
        plus ``gamma`` times the IR term."""
        teacher_logits, teacher_irs = reference
        return (self.output_loss.distillation_per_example(teacher_logits, outputs[0])
                + self.gamma * self.ir_term_per_example(outputs[1:], teacher_irs, False))

    # ------------------------------------------------------------------------- trainer hooks
    def prepare(self, x, y):
        teacher = self.teacher_features(x, training=False)  # one pass: logits and IRs
        return {"teacher_logits": teacher[0], "teacher_irs": teacher[1:]}

    def attack_model(self):
        return self.student_features if self.attack_objective == "ardir" else self.student

    def attack_reference(self, context):
        return (context["teacher_logits"], context["teacher_irs"])

    def method_loss(self, x, y, x_adv, context):
        student = self.student_features(x_adv, training=True)
        adversarial, student_irs = student[0], student[1:]
        teacher_adversarial = None  # the output loss runs T(x') itself if it needs it (IAD's trust)
        if self.teacher_ir_input == "adversarial":
            teacher_adv = self.teacher_features(x_adv, training=False)
            teacher_irs = teacher_adv[1:]
            teacher_adversarial = lambda: teacher_adv[0]  # noqa: E731
        else:
            teacher_irs = context["teacher_irs"]
        loss, terms, natural = self.output_part(x, y, x_adv, adversarial, context, teacher_adversarial)
        terms["ir"] = self.gamma * tf.reduce_mean(self.ir_term_per_example(student_irs, teacher_irs, True))
        return LossOutput(loss=loss + terms["ir"], terms=terms, natural_logits=natural, adversarial_logits=adversarial)


def _output_loss(base: str, kwargs: dict[str, Any]):
    """The output loss of ``base`` from the options in ``kwargs`` (which loses them)."""
    loss_class = OUTPUT_LOSSES[base]
    own = {f.name for f in dataclasses.fields(loss_class)}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in own}
    others = sorted({f.name for c in OUTPUT_LOSSES.values() for f in dataclasses.fields(c)} - own)
    stray = [k for k in kwargs if k in others]
    if stray:
        raise ValueError(f"{', '.join(stray)}: not an option of base={base!r} (only {', '.join(sorted(own))})")
    return loss_class(**{k: v for k, v in options.items() if v is not None})
