"""Losses shared by every method and attack: KL with a documented reduction, CE, IR distances.

Every function takes logits (never probabilities), computes in float32 whatever the compute
dtype of the model (mixed precision), and states its reduction (docs/methods.md):
``KL(P || Q) = sum_c P (log P - log Q)``; ``"batchmean"`` averages that sum over the batch;
``"elementmean"`` averages over ``B * C`` elements (PyTorch's default ``KLDivLoss`` reduction,
used by the ARD, IAD and RSLAD reference code), which is ``C`` times smaller. The reduction is an
argument of the KL functions here and nowhere else.
"""

from __future__ import annotations

import tensorflow as tf

KL_REDUCTIONS = ("batchmean", "elementmean", "none")
IR_DISTANCES = ("normalized_mse", "mse", "cosine", "attention")
_EPS = 1e-12


def _f32(t: tf.Tensor) -> tf.Tensor:
    return tf.cast(t, tf.float32)


def kl_per_example(
    target_logits: tf.Tensor, logits: tf.Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> tf.Tensor:
    """``KL(softmax(target/t) || softmax(logits/t))`` for each example, at the scale of ``reduction``.

    Args:
        target_logits: ``[B, C]`` logits of the target distribution P.
        logits: ``[B, C]`` logits of Q (the distribution being trained or attacked).
        temperature: softmax temperature ``t`` (> 0), applied to both.
        reduction: ``"batchmean"`` or ``"none"``: summed over classes; ``"elementmean"``: averaged
            over them. The batch mean of these values is :func:`kl_divergence` under ``reduction``,
            so a weighted mean over examples (IAD's trust weights) or a per-example attack objective
            (ARDIR's) keeps the scale of the reduction its method uses.

    Returns:
        ``[B]`` non-negative float32 divergences.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; use one of {KL_REDUCTIONS}")
    dtype = _kl_dtype()
    t = tf.constant(float(temperature), dtype)
    log_p = tf.nn.log_softmax(tf.cast(target_logits, dtype) / t, axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(logits, dtype) / t, axis=-1)
    elementwise = tf.exp(log_p) * (log_p - log_q)
    reduce = tf.reduce_mean if reduction == "elementmean" else tf.reduce_sum
    return tf.cast(reduce(elementwise, axis=-1), tf.float32)


def _kl_dtype() -> tf.DType:
    # KL between close distributions (high temperature: ARD's t=30 gives values ~1e-7) loses most
    # of its digits to cancellation in float32. The [B, C] tensors are tiny, so compute them in
    # float64 wherever it exists; TPUs have no float64 and keep float32.
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return tf.float32
    return tf.float64


def kl_divergence(
    target_logits: tf.Tensor,
    logits: tf.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> tf.Tensor:
    """``KL(P || Q)`` reduced as ``reduction``.

    ``batchmean``: summed over classes, averaged over the batch (the KL of the papers);
    ``elementmean``: averaged over all ``B*C`` elements (PyTorch's default ``KLDivLoss``, the
    scale of the ARD, IAD and RSLAD reference code), ``C`` times smaller; ``none``: the ``[B]``
    per-example sums. Scalar float32 otherwise.
    """
    per_example = kl_per_example(target_logits, logits, temperature, reduction)
    return per_example if reduction == "none" else tf.reduce_mean(per_example)


def cross_entropy_per_example(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Sparse softmax cross-entropy, ``[B]`` int labels and ``[B, C]`` logits -> ``[B]``."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=_f32(logits)
    )


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean sparse softmax cross-entropy over the batch (scalar float32)."""
    return tf.reduce_mean(cross_entropy_per_example(labels, logits))


def _flatten(t: tf.Tensor) -> tf.Tensor:
    t = _f32(t)
    return tf.reshape(t, [tf.shape(t)[0], -1])


def attention_map(features: tf.Tensor) -> tf.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: mean over channels of the squared
    activation, flattened and L2-normalised. ``[B, H, W, C]`` -> ``[B, H*W]``."""
    a = tf.reduce_mean(tf.square(_f32(features)), axis=-1)
    return tf.math.l2_normalize(_flatten(a), axis=-1, epsilon=_EPS)


def ir_distance_per_example(student: tf.Tensor, teacher: tf.Tensor, kind: str = "normalized_mse") -> tf.Tensor:
    """Distance between internal representations, one value per example.

    Args:
        student: ``[B, ...]`` student activation (already mapped by a connector if shapes differ).
        teacher: ``[B, ...]`` teacher activation of the same shape (``attention`` needs only the
            same spatial size: channels may differ).
        kind: ``normalized_mse``: each example flattened and L2-normalised, squared Euclidean
            distance, in [0, 4]; ``mse``: mean squared difference over features; ``cosine``:
            ``1 - cos``, in [0, 2]; ``attention``: squared Euclidean distance between the
            L2-normalised attention maps, in [0, 2].

    Returns:
        ``[B]`` float32 distances.
    """
    if kind == "normalized_mse":
        s = tf.math.l2_normalize(_flatten(student), axis=-1, epsilon=_EPS)
        t = tf.math.l2_normalize(_flatten(teacher), axis=-1, epsilon=_EPS)
        return tf.reduce_sum(tf.square(s - t), axis=-1)
    if kind == "mse":
        return tf.reduce_mean(tf.square(_flatten(student) - _flatten(teacher)), axis=-1)
    if kind == "cosine":
        s = tf.math.l2_normalize(_flatten(student), axis=-1, epsilon=_EPS)
        t = tf.math.l2_normalize(_flatten(teacher), axis=-1, epsilon=_EPS)
        return 1.0 - tf.reduce_sum(s * t, axis=-1)
    if kind == "attention":
        return tf.reduce_sum(tf.square(attention_map(student) - attention_map(teacher)), axis=-1)
    raise ValueError(f"unknown IR distance {kind!r}; use one of {IR_DISTANCES}")


def ir_distance(student: tf.Tensor, teacher: tf.Tensor, kind: str = "normalized_mse") -> tf.Tensor:
    """Mean over the batch of :func:`ir_distance_per_example` (scalar float32)."""
    return tf.reduce_mean(ir_distance_per_example(student, teacher, kind))
