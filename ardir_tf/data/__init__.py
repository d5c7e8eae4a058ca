"""Datasets for ardir_tf: data sources (:mod:`ardir_tf.data.sources`: names, descriptions, whole
splits loaded into memory and validated) and input pipelines (:mod:`ardir_tf.data.pipelines`:
deterministic, resumable ``tf.data`` pipelines over those arrays). :func:`load` joins the two.

Everything outside the models sees images as ``float32`` tensors of shape ``[N, H, W, C]`` with
pixels in ``[0, 1]`` and labels as ``int32`` class indices of shape ``[N]``. Mean/std
normalisation is *not* applied here: :class:`DatasetInfo` only carries the standard statistics
so that a model can put them in its own ``normalize`` layer.
"""

from __future__ import annotations

import tensorflow as tf

from ardir_tf.data.pipelines import AUGMENTATIONS, CROP_PADDING, eval_dataset, steps_per_epoch, train_dataset
from ardir_tf.data.sources import DATASETS, SPLITS, DatasetError, DatasetInfo, get_info, load_arrays, load_raw

__all__ = [
    "AUGMENTATIONS",
    "CROP_PADDING",
    "DATASETS",
    "SPLITS",
    "DatasetError",
    "DatasetInfo",
    "eval_dataset",
    "get_info",
    "load",
    "load_arrays",
    "steps_per_epoch",
    "train_dataset",
]


def load(
    name: str,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    examples: int | None = None,
    data_dir: str | None = None,
    repeat: bool = False,
    start_epoch: int = 0,
) -> tf.data.Dataset:
    """Loads a split and wraps it in a pipeline, ready for ``keras.Model.fit``/``evaluate``.

    ``split="train"`` gives :func:`train_dataset` (shuffled, with the dataset's own augmentation
    from :class:`DatasetInfo`): by default one epoch per iteration, ``len(x) // batch_size``
    batches in a new order each time, so ``fit(ds, epochs=E)`` trains ``E`` epochs and ends;
    ``repeat=True`` makes it infinite (then pass ``steps_per_epoch`` to ``fit``).
    ``split="test"`` gives :func:`eval_dataset` (every example once, in order). tfds images are
    kept as uint8 in memory and converted to float32 ``[0, 1]`` in the pipeline. ``seed``,
    ``repeat`` and ``start_epoch`` (resuming; needs ``repeat=True``) only matter for the train split.

    Returns:
      A ``tf.data.Dataset`` of ``(images, labels)``: float32 ``[B, H, W, C]`` in ``[0, 1]`` and
      int32 ``[B]``.

    Raises:
      DatasetError: unknown name or split, data not available, or a bad ``batch_size``.
    """
    x, y, augment = load_raw(name, split, data_dir, examples)
    if split == "train":
        return train_dataset(x, y, batch_size, seed=seed, augment=augment, repeat=repeat,
                             start_epoch=start_epoch)
    return eval_dataset(x, y, batch_size)
