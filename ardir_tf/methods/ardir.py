"""``ardir`` (Takahashi, Yamada, Yamanaka, Yamashita 2022): adversarial robust distillation with
internal representation.

    L = L_out + gamma * sum_l lambda_l * d(c_l(h_S^l(x')), h_T^{m(l)}(x))

``L_out`` is ARD's objective (default) or IAD's; ``h`` are activations of named layers, ``c_l`` a
trainable connector where shapes differ, ``d`` an IR distance of :mod:`ardir_tf.losses`. The full
paper text was not available: these defaults are a documented reconstruction (docs/methods.md),
each is an argument, and the ablation benchmark compares them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

from ardir_tf import losses
from ardir_tf.models.features import check_layer_names, default_ir_layers, feature_model
from ardir_tf.methods.ard import ard_output_loss, validate_distillation
from ardir_tf.methods.base import LossOutput
from ardir_tf.methods.connectors import build_connector
from ardir_tf.methods.distill import DistillationTrainer
from ardir_tf.methods.iad import iad_output_loss, teacher_logits_when

LayerPairs = Union[None, str, Sequence[Union[str, tuple[str, str]]], dict]
BASES = ("ard", "iad")
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


class ARDIR(DistillationTrainer):
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
        base: output loss, ``"ard"`` (default) or ``"iad"``.
        attack_objective: ``"ce"`` (default) or ``"ardir"`` (PGD maximises the per-example ARDIR
            objective: the ARD output KL plus the IR term; needs ``teacher_ir_input="natural"``).
        temperature: ``t``; default 30 for ``base="ard"`` and 1 for ``"iad"`` (the references').
        alpha: weight of the output distillation; ``1 - alpha`` weighs ``CE(S(x), y)``.
        kl_reduction: ``"elementmean"`` (the ARD/IAD reference scale, default) or ``"batchmean"``.
        iad_beta: IAD's trust exponent (``base="iad"``).
        iad_begin: IAD's first introspective epoch (``base="iad"``).
        **kwargs: those of :class:`~ardir_tf.methods.base.AdversarialTrainer`.

    Raises:
        UnknownLayerError: a layer name that a model does not have (the message lists them).
        ValueError: shapes that no connector can map, or an unknown option.
    """

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
        temperature: Optional[float] = None,
        alpha: float = 1.0,
        kl_reduction: str = "elementmean",
        iad_beta: float = 0.1,
        iad_begin: int = 60,
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
        temperature = float(temperature if temperature is not None else (30.0 if base == "ard" else 1.0))
        validate_distillation(temperature, alpha, kl_reduction)
        pairs = parse_layer_pairs(ir_layers, student, teacher)
        weights = [1.0] * len(pairs) if ir_weights is None else [float(w) for w in ir_weights]
        if len(weights) != len(pairs):
            raise ValueError(f"ir_weights has {len(weights)} values for {len(pairs)} layer pairs")
        self.loss_terms = ("kl", "ir") + (("introspection",) if base == "iad" else ()) + (("ce",) if alpha < 1 else ())
        super().__init__(student, teacher, **kwargs)
        self.layer_pairs, self.ir_weights, self.gamma = pairs, weights, float(gamma)
        self.distance, self.teacher_ir_input, self.base = distance, teacher_ir_input, base
        self.temperature, self.alpha, self.kl_reduction = temperature, float(alpha), kl_reduction
        self.iad_beta, self.iad_begin = float(iad_beta), int(iad_begin)
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
        if attack_objective == "ardir":
            self.attack_objective = self._ardir_objective

    # --------------------------------------------------------------------------------- pieces
    def ir_term_per_example(self, student_irs, teacher_irs, training: bool) -> tf.Tensor:
        """``sum_l lambda_l d(c_l(h_S^l), h_T^l)`` per example, ``[B]`` float32."""
        total = 0.0
        for w, connector, s, t in zip(self.ir_weights, self.connectors, student_irs, teacher_irs):
            total += w * losses.ir_distance_per_example(connector(s, training=training), tf.stop_gradient(t), self.distance)
        return total

    def _ardir_objective(self, outputs, labels, reference):
        """Per-example ARDIR objective maximised by ``attack_objective="ardir"``."""
        teacher_logits, teacher_irs = reference
        kl = losses.kl_per_example(teacher_logits, outputs[0], self.temperature)
        if self.kl_reduction == "elementmean":
            kl = kl / tf.cast(tf.shape(teacher_logits)[-1], tf.float32)
        return self.alpha * self.temperature**2 * kl + self.gamma * self.ir_term_per_example(outputs[1:], teacher_irs, False)

    # ------------------------------------------------------------------------- trainer hooks
    def prepare(self, x, y):
        teacher = self.teacher_features(x, training=False)  # one pass: logits and IRs
        return {"teacher_logits": teacher[0], "teacher_irs": teacher[1:]}

    def attack_model(self):
        return self.student_features if self.attack_objective == self._ardir_objective else self.student

    def attack_reference(self, context):
        return (context["teacher_logits"], context["teacher_irs"])

    def method_loss(self, x, y, x_adv, context):
        student = self.student_features(x_adv, training=True)
        adversarial, student_irs = student[0], student[1:]
        teacher_adv = None
        if self.teacher_ir_input == "adversarial":
            teacher_adv = self.teacher_features(x_adv, training=False)
            teacher_irs = teacher_adv[1:]
        else:
            teacher_irs = context["teacher_irs"]
        if self.base == "ard":
            natural = self.student(x, training=True) if self.alpha < 1 else None
            loss, terms = ard_output_loss(
                context["teacher_logits"], adversarial, natural, y,
                temperature=self.temperature, alpha=self.alpha, kl_reduction=self.kl_reduction,
            )
        else:
            natural = self.student(x, training=True)
            active = self.epoch >= self.iad_begin
            if teacher_adv is not None:
                teacher_adv_logits = teacher_adv[0]
            else:
                teacher_adv_logits = teacher_logits_when(active, self.teacher, x_adv, context["teacher_logits"])
            loss, terms = iad_output_loss(
                context["teacher_logits"], teacher_adv_logits, adversarial, natural, y,
                temperature=self.temperature, alpha=self.alpha, beta=self.iad_beta,
                kl_reduction=self.kl_reduction, active=active,
            )
        ir = tf.reduce_mean(self.ir_term_per_example(student_irs, teacher_irs, True))
        terms["ir"] = ir
        return LossOutput(loss=loss + self.gamma * ir, terms=terms, natural_logits=natural, adversarial_logits=adversarial)
