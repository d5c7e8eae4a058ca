"""The exported TensorFlow SavedModel: one ``tf.Module`` with six signatures.

``serving_default(images) -> {logits, probabilities}``
    ``images``: float32 ``[N, H, W, C]`` with pixels in [0, 1]; ``logits``/``probabilities``:
    float32 ``[N, num_classes]``.
``features(images) -> {<layer name>: activation, ...}``
    The internal representations the model was distilled on (ARDIR's IR layers; the last
    convolutional stage for other models), one output per layer, keyed by the layer name.
``attack(images, labels, epsilon, steps) -> {adversarial_images, logits}``
    PGD (Madry et al. 2018) on the cross-entropy of the true labels in the model's threat-model
    norm: uniform random start in the ball, ``steps`` steps of size ``epsilon / 4`` (the step size
    of the evaluation protocol's PGD-20), projection onto the ball and clipping to [0, 1] after
    every step, model in inference mode. ``labels``: int32 ``[N]``; ``epsilon``: float32 scalar;
    ``steps``: int32 scalar in ``[0, MAX_ATTACK_STEPS]``. ``logits`` are the model's logits on the
    adversarial images.
``fgsm(images, labels, epsilon) -> {adversarial_images, logits}``
    FGSM (Goodfellow et al. 2015): one step of size ``epsilon`` along the sign (L-inf) or the
    direction (L2) of the cross-entropy gradient, no random start; the evaluation protocol's
    ``fgsm``.
``pgd(images, labels, epsilon, step_size, steps, seed) -> {adversarial_images, logits}``
    PGD on the cross-entropy as ``attack``, with the step size a float32 scalar ``>= 0`` and the
    uniform random start drawn from ``seed`` (int64 ``[2]``, a stateless seed): the same inputs
    and seed give the same images. ``steps=20, step_size=epsilon/4`` is the protocol's ``pgd20``.
``cw(images, labels, epsilon, step_size, steps, seed) -> {adversarial_images, logits}``
    The same PGD on the Carlini-Wagner margin ``min(max_{j != y} z_j - z_y, 50)``; ``steps=30,
    step_size=epsilon/4`` is the protocol's ``cw``.

All four attack signatures are the library's own attacks (:func:`ardir_tf.attacks.fgsm.fgsm`,
:func:`ardir_tf.attacks.pgd.pgd` with the objectives ``ce`` and ``cw``) traced at export time on
the model in inference mode, in the card's threat-model norm, pixels clipped to [0, 1]: the demo
(``python -m app``) calls ``fgsm``, ``pgd`` and ``cw`` instead of carrying attack code of its
own.

Every signature checks its inputs in the graph before the model runs and fails with a
``tf.errors.InvalidArgumentError`` whose message names the expected shape: wrong rank, wrong
height/width/channels, pixels outside [0, 1], labels of the wrong length or out of range, an
epsilon outside the allowed range, a negative or too large step count, a negative step size, a
seed that is not two numbers. A wrong dtype is refused by
TensorFlow itself when the signature is called (``... was expected to be a float tensor but is a
uint8 tensor``). The image input is declared with an unknown shape precisely so that a wrong rank
reaches these checks instead of failing deep inside a convolution.

The module also keeps ``serve``, ``features`` and the attacks as restored ``tf.function``
attributes: ``tf.saved_model.load(path).serve(x)`` accepts NumPy arrays.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from ardir_tf.attacks.fgsm import fgsm
from ardir_tf.attacks.pgd import pgd
from ardir_tf.models import feature_model

#: Largest ``steps`` the attack signatures accept (a guard against a runaway request).
MAX_ATTACK_STEPS = 1000
#: The ``attack`` signature's step size as a fraction of epsilon.
ATTACK_STEP_FRACTION = 0.25
#: The attack signatures the demo (``python -m app``) calls; a bundle without them predates them.
ATTACK_SIGNATURES = ("fgsm", "pgd", "cw")
SIGNATURES = ("serving_default", "features", "attack", *ATTACK_SIGNATURES)


def _checked_images(images: tf.Tensor, input_shape: Sequence[int]) -> tf.Tensor:
    """Runtime checks of an image batch; returns it with the static shape ``[None, H, W, C]``."""
    h, w, c = (int(d) for d in input_shape)
    expected = f"[N, {h}, {w}, {c}] (N images of {h}x{w} pixels with {c} channel{'s' if c != 1 else ''})"
    # Padding the shape to 4 entries keeps the comparison valid for a lower rank.
    shape = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], 0)[:4]
    ok_shape = tf.reduce_all(tf.stack([tf.equal(tf.rank(images), 4), tf.equal(shape[1], h),
                                       tf.equal(shape[2], w), tf.equal(shape[3], c)]))
    checks = [
        tf.debugging.Assert(ok_shape, [f"images must have shape {expected}; got shape", tf.shape(images)],
                            summarize=16, name="check_image_shape")
    ]
    with tf.control_dependencies(checks):
        pixels = tf.reshape(images, [-1])
        low = tf.reduce_min(pixels)
        high = tf.reduce_max(pixels)
        in_range = tf.logical_or(tf.equal(tf.size(images), 0),
                                 tf.logical_and(tf.greater_equal(low, 0.0), tf.less_equal(high, 1.0)))
        checks.append(
            tf.debugging.Assert(
                in_range,
                ["image pixels must lie in [0, 1] (divide 0..255 pixels by 255); got min", low, "max", high],
                name="check_image_range",
            )
        )
    with tf.control_dependencies(checks):
        images = tf.identity(images)
    # Not tf.ensure_shape: grappler propagates its rank-4 shape back to the input, folds the rank
    # check to true, and a rank-5 [N, H, W, C, 1] batch then fails with an unrelated message.
    return tf.reshape(images, [-1, h, w, c])


class ExportModule(tf.Module):
    """Wraps a Keras classifier into the exported signatures (:data:`SIGNATURES`).

    Args:
        model: a float32 functional Keras classifier ``[N, H, W, C] -> logits [N, K]``.
        input_shape: ``(H, W, C)`` of one image.
        ir_layers: names of the layers the ``features`` signature returns.
        norm: threat-model norm of the attack signatures, ``"linf"`` or ``"l2"``.
    """

    def __init__(self, model: keras.Model, input_shape: Sequence[int], ir_layers: Sequence[str], norm: str = "linf"):
        super().__init__(name="ardir_export")
        if norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {norm!r}; use linf or l2")
        self._model = model
        self._features_model = feature_model(model, list(ir_layers))
        self._ir_layers = list(ir_layers)
        self._input_shape = tuple(int(d) for d in input_shape)
        self._norm = norm
        self._num_classes = int(model.outputs[0].shape[-1])
        # Explicit tracking so every weight is saved whatever Keras' own tracking does.
        self._weights = list(model.variables)

        image_spec = tf.TensorSpec(shape=None, dtype=tf.float32, name="images")
        self.serve = tf.function(self._serve, input_signature=[image_spec])
        self.features = tf.function(self._features, input_signature=[image_spec])
        labels = tf.TensorSpec(shape=None, dtype=tf.int32, name="labels")
        epsilon = tf.TensorSpec(shape=None, dtype=tf.float32, name="epsilon")
        steps = tf.TensorSpec(shape=None, dtype=tf.int32, name="steps")
        iterative = [image_spec, labels, epsilon, tf.TensorSpec(shape=None, dtype=tf.float32, name="step_size"),
                     steps, tf.TensorSpec(shape=None, dtype=tf.int64, name="seed")]
        self.attack = tf.function(self._attack, input_signature=[image_spec, labels, epsilon, steps])
        self.fgsm = tf.function(self._fgsm, input_signature=[image_spec, labels, epsilon])
        self.pgd = tf.function(self._pgd, input_signature=iterative)
        self.cw = tf.function(self._cw, input_signature=iterative)

    # The wrapped functions -------------------------------------------------------------------
    def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = _checked_images(images, self._input_shape)
        logits = tf.cast(self._model(x, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    def _features(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = _checked_images(images, self._input_shape)
        outputs = self._features_model(x, training=False)
        return {name: tf.cast(t, tf.float32) for name, t in zip(self._ir_layers, outputs[1:])}

    def _checked_attack_inputs(self, images: tf.Tensor, labels: tf.Tensor, epsilon: tf.Tensor,
                               steps: tf.Tensor | None = None, step_size: tf.Tensor | None = None,
                               seed: tf.Tensor | None = None) -> tuple[tf.Tensor, ...]:
        """In-graph checks of an attack signature's inputs; returns ``(x, labels, epsilon, steps,
        step_size, seed)`` reshaped to their static ranks (``None`` for an input not given)."""
        x = _checked_images(images, self._input_shape)
        n = tf.shape(x)[0]
        k = self._num_classes
        eps_max = 1.0 if self._norm == "linf" else float("inf")

        def scalar(t, what):
            return tf.debugging.Assert(tf.equal(tf.rank(t), 0), [f"{what}; got shape", tf.shape(t)],
                                       name=f"check_{what.split()[0]}_rank")

        checks = [
            tf.debugging.Assert(tf.equal(tf.rank(labels), 1),
                                ["labels must be int32 class indices of shape [N]; got shape", tf.shape(labels)],
                                name="check_labels_rank"),
            scalar(epsilon, "epsilon must be a float32 scalar"),
        ]
        if steps is not None:
            checks.append(scalar(steps, "steps must be an int32 scalar"))
        if step_size is not None:
            checks.append(scalar(step_size, "step_size must be a float32 scalar"))
        if seed is not None:
            checks.append(tf.debugging.Assert(
                tf.logical_and(tf.equal(tf.rank(seed), 1), tf.equal(tf.size(seed), 2)),
                ["seed must be two int64 numbers, shape [2]; got shape", tf.shape(seed)], name="check_seed_shape"))
        with tf.control_dependencies(checks):
            labels = tf.reshape(labels, [-1])
            epsilon = tf.reshape(epsilon, [])
            checks += [
                tf.debugging.Assert(tf.equal(tf.size(labels), n),
                                    ["labels must hold one label per image; got", tf.size(labels), "labels for", n,
                                     "images"], name="check_labels_count"),
                tf.debugging.Assert(
                    tf.logical_or(tf.equal(tf.size(labels), 0),
                                  tf.logical_and(tf.reduce_min(labels) >= 0, tf.reduce_max(labels) < k)),
                    [f"labels must be class indices in [0, {k}); got min", tf.reduce_min(labels), "max",
                     tf.reduce_max(labels)], name="check_labels_range"),
                tf.debugging.Assert(
                    tf.logical_and(tf.greater_equal(epsilon, 0.0), tf.less_equal(epsilon, eps_max)),
                    [f"epsilon must lie in [0, {eps_max:g}] ({self._norm} radius in [0, 1] pixel units); got",
                     epsilon], name="check_epsilon"),
            ]
            if steps is not None:
                steps = tf.reshape(steps, [])
                checks.append(tf.debugging.Assert(
                    tf.logical_and(steps >= 0, steps <= MAX_ATTACK_STEPS),
                    [f"steps must lie in [0, {MAX_ATTACK_STEPS}]; got", steps], name="check_steps"))
            if step_size is not None:
                step_size = tf.reshape(step_size, [])
                checks.append(tf.debugging.Assert(
                    tf.logical_and(tf.greater_equal(step_size, 0.0), tf.math.is_finite(step_size)),
                    ["step_size must be a finite number >= 0 (pixel units of [0, 1] images); got", step_size],
                    name="check_step_size"))
            if seed is not None:
                seed = tf.reshape(seed, [2])
        with tf.control_dependencies(checks):
            x = tf.identity(x)
        return x, labels, epsilon, steps, step_size, seed

    def _adversarial(self, x_adv: tf.Tensor) -> dict[str, tf.Tensor]:
        x_adv = tf.ensure_shape(x_adv, [None, *self._input_shape])
        logits = tf.cast(self._model(x_adv, training=False), tf.float32)
        return {"adversarial_images": x_adv, "logits": logits}

    def _attack(self, images: tf.Tensor, labels: tf.Tensor, epsilon: tf.Tensor, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        x, labels, epsilon, steps, _, _ = self._checked_attack_inputs(images, labels, epsilon, steps)
        return self._adversarial(pgd(
            self._model, x, labels, epsilon=epsilon, step_size=ATTACK_STEP_FRACTION * epsilon, steps=steps,
            norm=self._norm, random_start="uniform", objective="ce", training=False,
        ))

    def _fgsm(self, images: tf.Tensor, labels: tf.Tensor, epsilon: tf.Tensor) -> dict[str, tf.Tensor]:
        x, labels, epsilon, _, _, _ = self._checked_attack_inputs(images, labels, epsilon)
        return self._adversarial(fgsm(self._model, x, labels, epsilon=epsilon, norm=self._norm))

    def _iterative(self, objective: str, images: tf.Tensor, labels: tf.Tensor, epsilon: tf.Tensor,
                   step_size: tf.Tensor, steps: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        x, labels, epsilon, steps, step_size, seed = self._checked_attack_inputs(
            images, labels, epsilon, steps, step_size, seed)
        return self._adversarial(pgd(
            self._model, x, labels, epsilon=epsilon, step_size=step_size, steps=steps, norm=self._norm,
            random_start="uniform", objective=objective, training=False, seed=seed,
        ))

    def _pgd(self, images: tf.Tensor, labels: tf.Tensor, epsilon: tf.Tensor, step_size: tf.Tensor,
             steps: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._iterative("ce", images, labels, epsilon, step_size, steps, seed)

    def _cw(self, images: tf.Tensor, labels: tf.Tensor, epsilon: tf.Tensor, step_size: tf.Tensor,
            steps: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._iterative("cw", images, labels, epsilon, step_size, steps, seed)

    # Saving -------------------------------------------------------------------------------------
    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The concrete functions saved as the SavedModel's signatures."""
        return {
            "serving_default": self.serve.get_concrete_function(),
            "features": self.features.get_concrete_function(),
            "attack": self.attack.get_concrete_function(),
            "fgsm": self.fgsm.get_concrete_function(),
            "pgd": self.pgd.get_concrete_function(),
            "cw": self.cw.get_concrete_function(),
        }


def save(model: keras.Model, path: str, input_shape: Sequence[int], ir_layers: Sequence[str], norm: str = "linf") -> None:
    """Writes the SavedModel of ``model`` with its signatures (:data:`SIGNATURES`) to directory ``path``.

    Args:
        model: a float32 functional Keras classifier taking [0, 1] images.
        path: the SavedModel directory to create.
        input_shape: ``(H, W, C)``.
        ir_layers: layer names of the ``features`` signature.
        norm: threat-model norm of the attack signatures.
    """
    module = ExportModule(model, input_shape, ir_layers, norm)
    tf.saved_model.save(module, path, signatures=module.signatures())
