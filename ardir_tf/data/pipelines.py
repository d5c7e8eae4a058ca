"""Input pipelines: deterministic, resumable ``tf.data`` pipelines over in-memory arrays.

Images enter as ``[N, H, W, C]`` uint8 (0..255) or float in ``[0, 1]`` arrays and leave as float32
``[B, H, W, C]`` batches in ``[0, 1]`` with int32 ``[B]`` labels.

Determinism and resuming: :func:`train_dataset` draws epoch ``e``'s order with a stateless
permutation keyed by ``(seed, e)`` and the augmentation of step ``s`` of epoch ``e`` with
stateless random ops keyed by ``(seed, e, s)``. No state is carried from one epoch to the next,
so a run restarted with ``start_epoch=k`` sees exactly the batches that the uninterrupted run
sees from epoch ``k`` on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from ardir_tf.data.sources import DatasetError

__all__ = ["AUGMENTATIONS", "CROP_PADDING", "eval_dataset", "steps_per_epoch", "train_dataset"]

AUGMENTATIONS: tuple[str | None, ...] = (None, "crop", "crop_flip")
"""Accepted values of the ``augment`` argument of :func:`train_dataset` (see :mod:`ardir_tf.data`)."""

CROP_PADDING = 4  # pixels of zero padding on each side before the random crop


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches in one epoch (``num_examples // batch_size``; the remainder is dropped).

    Raises:
      DatasetError: if ``batch_size`` is not positive or larger than ``num_examples``.
    """
    if int(batch_size) < 1:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    steps = int(num_examples) // int(batch_size)
    if steps < 1:
        raise DatasetError(
            f"batch_size {batch_size} is larger than the {num_examples} training examples; lower --batch_size"
        )
    return steps


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4:
        raise DatasetError(f"images must have shape [N, H, W, C], got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"labels must have shape [{len(x)}] to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"labels must be integer class indices, got dtype {y.dtype}")
    if x.dtype == np.uint8:
        return x, y.astype(np.int32, copy=False)
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")
    if len(x) and (float(np.min(x)) < 0.0 or float(np.max(x)) > 1.0):
        raise DatasetError(
            f"float images must lie in [0, 1], got [{float(np.min(x)):g}, {float(np.max(x)):g}]; divide 0..255 pixels by 255"
        )
    return x.astype(np.float32, copy=False), y.astype(np.int32, copy=False)


def _to_unit_float(x: tf.Tensor) -> tf.Tensor:
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0
    return tf.cast(x, tf.float32)


def _augment_batch(x: tf.Tensor, augment: str, key: tf.Tensor) -> tf.Tensor:
    """Stateless per-example random crop (zero padding CROP_PADDING) and optional horizontal flip.

    Args:
      x: float32 ``[B, H, W, C]`` in [0, 1] with a static shape.
      augment: ``"crop"`` or ``"crop_flip"``.
      key: int64 ``[2]`` stateless seed; equal keys give equal augmentations.
    """
    b, h, w, _ = x.shape
    p = CROP_PADDING
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2, alg="philox"))
    padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
    offsets = tf.random.stateless_uniform([b, 2], seed=crop_key, minval=0, maxval=2 * p + 1, dtype=tf.int32, alg="philox")
    rows = offsets[:, :1] + tf.range(h)[None, :]  # [B, H]
    cols = offsets[:, 1:] + tf.range(w)[None, :]  # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2p, C]
    out = tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]
    if augment == "crop_flip":
        flip = tf.random.stateless_uniform([b], seed=flip_key, alg="philox") < 0.5
        out = tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
    return tf.ensure_shape(out, x.shape)


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    augment: str | None = None,
    start_epoch: int = 0,
    repeat: bool = True,
) -> tf.data.Dataset:
    """Deterministic and resumable training pipeline: infinite, or one epoch per iteration.

    Epoch ``e`` (counted from 0) visits the examples in the order of a stateless permutation keyed
    by ``(seed, e)`` (``tf.random.experimental.stateless_shuffle``, Philox); its last incomplete
    batch is dropped. Augmentation of step ``s`` of epoch ``e`` is keyed by ``(seed, e, s)``.
    Hence the dataset built with ``start_epoch=k`` yields exactly the batches that the one built
    with ``start_epoch=0`` yields after ``k * steps_per_epoch(len(x), batch_size)`` batches. Use it
    with ``model.fit(..., steps_per_epoch=len(x) // batch_size)``.

    With ``repeat=False`` the dataset is finite: each iteration over it (each epoch of a plain
    ``model.fit(ds, epochs=E)``) yields one epoch of ``steps_per_epoch(len(x), batch_size)``
    batches in a new order. The orders of the successive iterations come from a seeded stream
    (``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``): the same in every run with
    the same ``seed`` (and TensorFlow global seed), but not the epochs of the repeated form and not
    resumable mid-way, so ``start_epoch`` must then be 0.

    Args:
      x: Images ``[N, H, W, C]``: uint8 (0..255, converted to float in the pipeline, which keeps
        memory low) or float in ``[0, 1]``.
      y: Integer labels ``[N]``.
      batch_size: Examples per batch.
      seed: Seed of the permutations and augmentations.
      augment: ``None``, ``"crop"`` or ``"crop_flip"`` (see the module docstring).
      start_epoch: First epoch to produce (for resuming; ``repeat=True`` only).
      repeat: ``True``: infinite (epoch after epoch); ``False``: one epoch per iteration.

    Returns:
      A ``tf.data.Dataset`` of ``(images, labels)``: float32 ``[B, H, W, C]`` in ``[0, 1]`` and
      int32 ``[B]``, prefetched.

    Raises:
      DatasetError: bad arrays, batch size, augmentation or ``start_epoch``.
    """
    x, y = _check_xy(x, y)
    if augment not in AUGMENTATIONS:
        raise DatasetError(f"unknown augmentation {augment!r}; use one of {', '.join(map(str, AUGMENTATIONS))}")
    if int(start_epoch) < 0:
        raise DatasetError(f"start_epoch must be >= 0, got {start_epoch}")
    if not repeat and int(start_epoch):
        raise DatasetError(f"start_epoch={start_epoch} needs repeat=True (a finite dataset cannot resume mid-way)")
    n = len(x)
    batch_size = int(batch_size)
    steps = steps_per_epoch(n, batch_size)
    x_t = tf.convert_to_tensor(x)
    y_t = tf.convert_to_tensor(y, dtype=tf.int32)
    seed_t = tf.constant(int(seed), dtype=tf.int64)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([seed_t, epoch])
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key, alg="philox")
        idx = tf.reshape(perm[: steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill([steps], epoch), tf.range(steps, dtype=tf.int64), idx)
        )

    def make_batch(epoch: tf.Tensor, step: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = _to_unit_float(tf.gather(x_t, idx))
        labels = tf.gather(y_t, idx)
        if augment is not None:
            key = tf.random.experimental.stateless_fold_in(tf.stack([seed_t, epoch]), step, alg="philox")
            images = _augment_batch(images, augment, key)
        return images, labels

    if repeat:
        epochs = tf.data.Dataset.counter(start=int(start_epoch), dtype=tf.int64)
    else:  # one epoch key per iteration, a new one each time the dataset is iterated again
        epochs = tf.data.Dataset.random(seed=int(seed), rerandomize_each_iteration=True).take(1)
    ds = epochs.flat_map(epoch_batches)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not repeat:  # flat_map hides the length; Keras' progress bar and epoch end use it
        ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Ordered evaluation pipeline: every example once, in order, last batch possibly smaller.

    Args:
      x: Images ``[N, H, W, C]``, uint8 (0..255) or float in ``[0, 1]``.
      y: Integer labels ``[N]``.
      batch_size: Examples per batch.

    Returns:
      A ``tf.data.Dataset`` of ``(images, labels)``: float32 ``[<=B, H, W, C]`` in ``[0, 1]`` and
      int32 ``[<=B]``, prefetched.
    """
    x, y = _check_xy(x, y)
    if int(batch_size) < 1:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(batch_size))
    ds = ds.map(lambda a, b: (_to_unit_float(a), b), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
