"""Strong robust teachers from PyTorch checkpoints (the RobustBench model zoo) as Keras models.

Python::

    from ardir_tf.teachers import convert_teacher
    model, provenance = convert_teacher(model_name="Wang2023Better_WRN-28-10", model_dir="models",
                                        out="teachers/wang2023_wrn28.keras")

CLI (``python -m ardir_tf.teachers``)::

    python -m ardir_tf.teachers --model_name=Wang2023Better_WRN-28-10 --model_dir=models \\
        --out=teachers/wang2023_wrn28.keras
    python -m ardir_tf.teachers --checkpoint=trades.pt --arch=wrn-34-10 --out=trades.keras

Modules: :mod:`~ardir_tf.teachers.architectures` (``--arch`` names and the parameter-name maps),
:mod:`~ardir_tf.teachers.zoo` (the ``--model_name`` table with published numbers),
:mod:`~ardir_tf.teachers.convert` (reading, checking, copying, saving with provenance).
torch is needed only to read a checkpoint (``pip install 'ardir-tf[teachers]'``).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import keras

from ardir_tf.teachers.architectures import Architecture, parse_architecture
from ardir_tf.teachers.convert import CheckpointError, convert, read_provenance, save_teacher
from ardir_tf.teachers.zoo import ZOO, ZooEntry, checkpoint_path, download, lookup
from ardir_tf.teachers import zoo as _zoo

__all__ = [
    "Architecture",
    "CheckpointError",
    "ZOO",
    "ZooEntry",
    "convert",
    "convert_teacher",
    "parse_architecture",
    "read_provenance",
    "save_teacher",
]


def convert_teacher(
    checkpoint: Optional[str] = None,
    arch: Optional[str] = None,
    model_name: Optional[str] = None,
    model_dir: str = "models",
    out: Optional[str] = None,
    activation: Optional[str] = None,
    normalization: Any = "default",
    num_classes: int = 10,
    fetch: bool = False,
) -> tuple[keras.Model, dict[str, Any]]:
    """Converts a checkpoint given by path + architecture, or by zoo name.

    Args:
        checkpoint: the ``.pt`` file; with ``model_name`` it defaults to
            ``<model_dir>/cifar10/Linf/<model_name>.pt``.
        arch: the ``--arch`` name (required without ``model_name``; with it, must agree).
        model_name: a :data:`ZOO` name: the architecture, its options and the published numbers
            come from the table.
        model_dir: the RobustBench model folder for ``model_name``.
        out: if given, the ``.keras`` path to write (and ``<out>.json`` with the provenance).
        activation: ``relu``/``swish`` for ``dm-*`` architectures given by ``arch``.
        normalization: ``"default"``, ``None`` or ``(mean, std)`` for ``arch``.
        num_classes: logits of the source model.
        fetch: download ``model_name`` through robustbench first when the file is missing.

    Returns:
        ``(model, provenance)`` as :func:`ardir_tf.teachers.convert.convert`, the provenance
        extended with the source name and the published numbers.

    Raises:
        ValueError: bad arguments; :class:`CheckpointError` for a checkpoint that does not fit.
    """
    entry: Optional[ZooEntry] = None
    if model_name:
        entry = lookup(model_name)
        spec = parse_architecture(entry.arch, normalization=entry.normalization)
        if arch and parse_architecture(arch, activation).name != spec.name:
            raise ValueError(f"--arch={arch} contradicts the table: {model_name} is {entry.arch}")
        checkpoint = checkpoint or checkpoint_path(model_dir, model_name)
        if activation is not None or not (isinstance(normalization, str) and normalization == "default"):
            raise ValueError(f"--model_name={model_name} fixes the activation and normalisation; drop --activation/--mean/--std")
        if fetch and not os.path.isfile(checkpoint):
            checkpoint = download(model_name, model_dir)
        elif not os.path.isfile(checkpoint):
            raise ValueError(
                f"no checkpoint at {checkpoint!r}: fetch it on a networked machine (--download, or "
                f"robustbench.utils.load_model(model_name={model_name!r}, model_dir=...)) and copy the folder here"
            )
    else:
        if not checkpoint or not arch:
            raise ValueError("give --model_name, or both --checkpoint and --arch")
        spec = parse_architecture(arch, activation, normalization)
    model, provenance = convert(checkpoint, spec, num_classes=num_classes,
                                checkpoint_key=entry.checkpoint_key if entry else None)
    provenance = {
        "source": model_name or checkpoint,
        "zoo": None if entry is None else {
            "name": entry.name, "dataset": _zoo.DATASET, "threat_model": _zoo.THREAT_MODEL,
            "epsilon": _zoo.EPSILON, "paper": entry.paper,
        },
        "published": None if entry is None else {
            "clean_accuracy": entry.clean_accuracy,
            "autoattack_accuracy": entry.autoattack_accuracy,
            "source": _zoo.SOURCE,
        },
        **provenance,
    }
    if out:
        provenance["json"] = save_teacher(model, provenance, out)
    return model, provenance


