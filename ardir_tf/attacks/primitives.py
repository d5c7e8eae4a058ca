"""The building blocks every attack of the package uses: norms, projection onto the threat ball,
steepest-ascent directions, random starts, the margin of a classifier and batch-generic compilation.

PGD and FGSM (:mod:`ardir_tf.attacks.pgd`), the AutoAttack members
(:mod:`ardir_tf.attacks.autoattack`) and the exported attack signatures all call these, so that a
projection or a random start means the same thing everywhere. Images are ``[B, H, W, C]`` float32
in [0, 1]; per-example quantities are ``[B]``.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "normal", "none")
NORMAL_START_STD = 0.001  # TRADES/RSLAD: x + 0.001 * N(0, 1)


def check_norm(norm: str) -> None:
    """Raises ``ValueError`` (one line) unless ``norm`` is ``"linf"`` or ``"l2"``."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def logits_of(outputs: Any) -> tf.Tensor:
    """The logits of a model output that may be ``[logits, ir_1, ...]`` (a feature model)."""
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def per_example_norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example norm ``[B]`` of a ``[B, ...]`` tensor (``"linf"`` or ``"l2"``)."""
    flat = tf.reshape(t, [tf.shape(t)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=-1)
    return tf.sqrt(tf.reduce_sum(tf.square(flat), axis=-1))


def expand(v: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes a per-example ``[B]`` vector to broadcast against ``like`` ``[B, ...]``."""
    return tf.reshape(v, tf.concat([tf.shape(v)[:1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def project(delta: tf.Tensor, epsilon: tf.Tensor, norm: str) -> tf.Tensor:
    """Projects a perturbation ``[B, ...]`` onto the ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return tf.clip_by_value(delta, -epsilon, epsilon)
    n = expand(per_example_norm(delta, "l2"), delta)
    return delta * tf.minimum(1.0, epsilon / tf.maximum(n, 1e-12))


def project_to_threat(x_orig: tf.Tensor, x: tf.Tensor, epsilon: tf.Tensor, norm: str) -> tf.Tensor:
    """The point of the ``norm`` ball of radius ``epsilon`` around ``x_orig`` nearest to ``x``,
    then clipped to [0, 1] (clipping moves each pixel towards ``x_orig``, so it stays in the ball)."""
    return tf.clip_by_value(x_orig + project(x - x_orig, epsilon, norm), 0.0, 1.0)


def ascent_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """The steepest-ascent unit step for ``grad``: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2).
    Non-finite gradient entries count as 0."""
    grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
    if norm == "linf":
        return tf.sign(grad)
    return grad / tf.maximum(expand(per_example_norm(grad, "l2"), grad), 1e-12)


def random(kind: str, shape, seed: Any = None, salt: int = 0, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
    """float32 ``"uniform"`` (in ``[minval, maxval)``) or ``"normal"`` noise of ``shape``.

    ``seed``: ``None`` (a stateful TF op: fresh noise on every call, also inside a traced graph), a
    ``tf.random.Generator``, a ``keras.random.SeedGenerator``, or a stateless ``[2]`` integer seed
    tensor (folded with ``salt`` so that different draws of one step differ).
    """
    if seed is None:
        if kind == "uniform":
            return tf.random.uniform(shape, minval, maxval, dtype=tf.float32)
        return tf.random.normal(shape, dtype=tf.float32)
    if isinstance(seed, tf.random.Generator):
        if kind == "uniform":
            return seed.uniform(shape, minval, maxval)
        return seed.normal(shape)
    if isinstance(seed, keras.random.SeedGenerator):
        if kind == "uniform":
            return keras.random.uniform(shape, minval, maxval, dtype="float32", seed=seed)
        return keras.random.normal(shape, dtype="float32", seed=seed)
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)
    if kind == "uniform":
        return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=tf.float32)
    return tf.random.stateless_normal(shape, seed, dtype=tf.float32)


def random_start(x: tf.Tensor, epsilon: tf.Tensor, norm: str, kind: str = "uniform", seed: Any = None,
                 l2_radius: str = "ball") -> tf.Tensor:
    """An attack's first iterate: ``x`` plus start noise, inside the ball and [0, 1].

    ``kind``: ``"uniform"`` (L-inf ``eps * U(-1, 1)`` per pixel; L2 a uniformly random direction
    of length ``eps * u^(1/d)``, i.e. uniform in the ball, or exactly ``eps`` with
    ``l2_radius="sphere"``, APGD's start), ``"normal"`` (``0.001 N(0, 1)``, TRADES/RSLAD) or
    ``"none"`` (``x`` itself). ``seed`` as in :func:`random`.
    """
    if kind == "none":
        return x
    shape = tf.shape(x)
    if kind == "normal":
        delta = NORMAL_START_STD * random("normal", shape, seed, 0)
    elif norm == "linf":
        delta = random("uniform", shape, seed, 1, minval=-1.0, maxval=1.0) * epsilon
    else:
        direction = random("normal", shape, seed, 2)
        direction = direction / tf.maximum(expand(per_example_norm(direction, "l2"), direction), 1e-12)
        if l2_radius == "sphere":
            delta = direction * epsilon
        else:  # uniform in the L2 ball: radius eps * u^(1/d)
            dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
            u = random("uniform", tf.concat([shape[:1], tf.ones_like(shape[1:])], 0), seed, 3)
            delta = direction * epsilon * tf.pow(u, 1.0 / dims)
    return tf.clip_by_value(x + project(delta, epsilon, norm), 0.0, 1.0)


def margin(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """``z_y - max_{j != y} z_j`` per example (float32 ``[B]``): negative exactly when the example
    is misclassified. The CW loss is its negation capped at kappa; Square minimises it; DLR divides
    its negation by a logit spread."""
    logits = tf.cast(logits, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=tf.float32)
    z_y = tf.reduce_sum(onehot * logits, axis=-1)
    z_other = tf.reduce_max(tf.where(onehot > 0, tf.constant(-float("inf")), logits), axis=-1)
    return z_y - z_other


def numpy_model(classifier: Callable[[np.ndarray], np.ndarray], num_classes: int) -> Callable:
    """Wraps a NumPy classifier (``images [B, H, W, C] -> logits [B, K]``, e.g. a LiteRT or ONNX
    file's runtime) as ``model(x, training=False) -> logits`` usable inside ``tf.function``
    (through ``tf.numpy_function``): what the score-based attacks (Square) call. No gradients."""

    def call(x, training=False):
        del training
        out = tf.numpy_function(lambda b: np.asarray(classifier(b), np.float32), [x], tf.float32, stateful=True)
        return tf.reshape(out, [tf.shape(x)[0], num_classes])

    return call


def predictions(logits: tf.Tensor) -> tf.Tensor:
    """``argmax`` class ``[B]`` int32 of logits ``[B, C]``."""
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


class BatchGeneric:
    """A ``tf.function`` of batch tensors traced with an unknown batch size.

    Every argument of rank >= 1 is traced as ``[None, ...]`` (its first axis is the batch), scalars
    as scalars. One trace serves every batch size, so a batch of one (whose static shape ``(1, ...)``
    broadcast against a dynamic one inside a ``tf.while_loop`` would change the loop variables'
    shapes) and the remainder of the last batch both run on the trace of the first call.
    """

    def __init__(self, fn: Callable):
        self._function = tf.function(fn)
        self._traces: dict = {}

    def __call__(self, *args):
        args = [tf.convert_to_tensor(a) for a in args]
        key = tuple((tuple(a.shape[1:]), a.dtype, a.shape.rank) for a in args)
        if key not in self._traces:
            specs = [tf.TensorSpec([None, *a.shape[1:]] if a.shape.rank else [], a.dtype) for a in args]
            self._traces[key] = self._function.get_concrete_function(*specs)
        return self._traces[key](*args)
