"""PyTorch ``state_dict`` -> Keras functional teacher, exactly or not at all.

``convert(checkpoint, arch)`` reads the checkpoint with ``torch.load(weights_only=True)`` (a pickle
that would run code is refused), strips ``module.`` / ``model.`` prefixes, checks that its keys and
shapes are exactly those of the architecture (the first missing, unexpected or misshapen key is
named in a one-line :class:`CheckpointError`), builds the model with this project's builder and
copies every parameter and batch-norm statistic (conv ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]``,
linear ``[O, I]`` -> ``[I, O]``). Only parameters the source's ``forward`` never reads are skipped
(the TRADES WideResNet's ``sub_block1``), and they are listed in the provenance.

``save_teacher`` writes the ``.keras`` file (loads with ``safe_mode=True``: no ``Lambda`` layers)
with the provenance under the ``ardir_tf_teacher`` key of its ``metadata.json``, and the same
provenance as ``<out>.json`` beside it. Nothing is written when anything fails.

torch is imported only here and only when a checkpoint is read: training and serving never need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from typing import Any, Optional

import keras
import numpy as np

from ardir_tf.models import get as build_model
from ardir_tf.teachers.architectures import Architecture, describe, normalization_dict

METADATA_KEY = "ardir_tf_teacher"
# The sources end with avg_pool2d(8) (WRNs) or avg_pool2d(4) (ResNets): global average pooling, which
# the builders use, equals it only for 32x32 inputs, the size every zoo model was trained on.
INPUT_SHAPE = (32, 32, 3)
_PREFIXES = ("module.", "model.")
# Per-channel normalisation constants some zoo models keep as buffers (Rice2020, Wong2020).
_NORM_BUFFERS = (("mu", "sigma"), ("mean", "std"))
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not fit the architecture (one line, names the key)."""


def import_torch():
    """``torch``, or a :class:`CheckpointError` saying what to install."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "reading a PyTorch checkpoint needs torch, which training and serving do not install: "
            "pip install 'ardir-tf[teachers]' (or pip install torch; the CPU build is enough)"
        ) from None
    return torch


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: str, key: Optional[str] = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reads a checkpoint as ``{name: float32 array}`` without running any pickled code.

    Returns ``(state, dtypes)``: the arrays (floating tensors cast to float32, prefixes stripped)
    and the torch dtypes the file stored (e.g. ``["float16", "int64"]``), for the provenance.

    Accepts a plain ``state_dict``, one under ``"state_dict"`` (or under ``key``), with or without
    ``module.`` / ``model.`` prefixes.

    Raises:
        CheckpointError: unreadable file, a pickle ``weights_only`` refuses, or non-tensor values.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    torch = import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line
        raise CheckpointError(
            f"torch.load(weights_only=True) refused {path!r}: {_load_failure(err)} (only tensors and plain "
            "containers are read: a pickle holding other objects could run code when loaded)"
        ) from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise CheckpointError(f"checkpoint {path!r} has no entry {key!r}")
        obj = obj[key]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state_dict")
    out: dict[str, np.ndarray] = {}
    dtypes = set()
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path!r}: entry {name!r} is a {type(value).__name__}, not a tensor "
                "(a training checkpoint? give the key of its state_dict)"
            )
        dtypes.add(str(value.dtype).replace("torch.", ""))
        clean = name
        while clean.startswith(_PREFIXES):
            clean = clean.split(".", 1)[1]
        if clean in out:
            raise CheckpointError(f"checkpoint {path!r}: key {name!r} repeats {clean!r} once its prefix is removed")
        out[clean] = value.detach().cpu().to(torch.float32).numpy() if value.is_floating_point() \
            else value.detach().cpu().numpy()
    return out, sorted(dtypes)


def _load_failure(err: Exception) -> str:
    """The informative part of torch's multi-paragraph load error, on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if m := re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S):
        return " ".join(m.group(1).split())
    lines = text.strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _layer_arrays(layer: keras.layers.Layer, prefix: str, state: dict[str, np.ndarray], arch_name: str):
    """The Keras weight list of ``layer`` from ``state`` (checks presence and shape)."""
    if isinstance(layer, keras.layers.Conv2D):
        names, to_torch = [f"{prefix}.weight"], [(3, 2, 0, 1)]
    elif isinstance(layer, keras.layers.BatchNormalization):
        names, to_torch = [f"{prefix}.{s}" for s in _BN_SUFFIXES], [(0,)] * 4
    elif isinstance(layer, keras.layers.Dense):
        names, to_torch = [f"{prefix}.weight", f"{prefix}.bias"], [(1, 0), (0,)]
    else:
        raise CheckpointError(f"layer {layer.name!r} of type {type(layer).__name__} has no PyTorch mapping")
    arrays = []
    for name, axes, variable in zip(names, to_torch, layer.weights):
        if name not in state:
            raise CheckpointError(f"checkpoint does not fit {arch_name}: missing key {name!r}")
        expected = tuple(variable.shape[a] for a in axes)
        if tuple(state[name].shape) != expected:
            raise CheckpointError(
                f"checkpoint does not fit {arch_name}: key {name!r} has shape {tuple(state[name].shape)}, "
                f"the architecture needs {expected}"
            )
        # Keras layout from PyTorch layout: the inverse permutation of `axes`.
        value = np.transpose(state[name], np.argsort(axes))
        arrays.append(value.astype(variable.dtype))
    return names, arrays


def _check_normalization(state: dict[str, np.ndarray], arch: Architecture) -> list[str]:
    """Normalisation buffers in the checkpoint must equal the architecture's constants."""
    used = []
    for mean_key, std_key in _NORM_BUFFERS:
        if mean_key not in state and std_key not in state:
            continue
        if arch.normalization is None:
            raise CheckpointError(
                f"checkpoint does not fit {arch.name}: unexpected key {mean_key!r} (the checkpoint "
                "normalises its input; give the matching --mean/--std)"
            )
        for key, expected in ((mean_key, arch.normalization[0]), (std_key, arch.normalization[1])):
            if key not in state:
                raise CheckpointError(f"checkpoint does not fit {arch.name}: missing key {key!r}")
            got = state[key].reshape(-1)
            if got.shape != (len(expected),) or not np.allclose(got, expected, rtol=0, atol=1e-6):
                raise CheckpointError(
                    f"checkpoint does not fit {arch.name}: key {key!r} = {got.tolist()} differs from the "
                    f"architecture's {list(expected)}"
                )
            used.append(key)
    return used


def convert(
    checkpoint: str,
    arch: Architecture,
    num_classes: int = 10,
    checkpoint_key: Optional[str] = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Converts a PyTorch checkpoint into a Keras functional model of ``arch``.

    Args:
        checkpoint: path of the ``.pt`` file (a ``state_dict``, see :func:`load_state_dict`).
        arch: the source architecture (:func:`ardir_tf.teachers.architectures.parse_architecture`).
        num_classes: logits of the source model.
        checkpoint_key: key of the state dict inside the file, when not the file or ``state_dict``.

    Returns:
        ``(model, provenance)``: the model maps ``[B, 32, 32, 3]`` images in [0, 1] to
        ``[B, num_classes]`` logits (normalisation inside) with stages ``stage1..stageN``; the
        provenance dict holds the architecture, the checkpoint's SHA-256 and the skipped keys.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit (missing / unexpected key,
            wrong shape); the message names the first offending key.
    """
    state, dtypes = load_state_dict(checkpoint, checkpoint_key)
    model = build_model(arch.builder, num_classes, INPUT_SHAPE, normalization=arch.normalization, **arch.options)
    used = set(_check_normalization(state, arch))
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = arch.torch_prefix(layer.name)
        names, arrays = _layer_arrays(layer, prefix, state, arch.name)
        layer.set_weights(arrays)
        used.update(names)
        if isinstance(layer, keras.layers.BatchNormalization):
            used.add(f"{prefix}.num_batches_tracked")  # a training counter: no effect in eval mode
    ignored = [k for k in state if k not in used and k.startswith(arch.ignored_prefixes)]
    unexpected = [k for k in state if k not in used and k not in ignored]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"checkpoint does not fit {arch.name}: unexpected key {unexpected[0]!r}{more}")
    provenance = {
        "architecture": arch.name,
        "architecture_detail": describe(arch),
        "builder": arch.builder,
        "builder_options": dict(arch.options),
        "normalization": normalization_dict(arch.normalization),
        "num_classes": int(num_classes),
        "input_shape": list(INPUT_SHAPE),
        "input_range": [0.0, 1.0],
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": sha256(checkpoint),
        "checkpoint_dtypes": dtypes,
        "checkpoint_keys_used": len([k for k in used if k in state]),
        "ignored_keys": ignored,
        "ignored_reason": "parameters the source model's forward() never uses" if ignored else None,
        "stages": [l.name for l in model.layers if l.name.startswith("stage") and l.name[5:].isdigit()],
    }
    return model, provenance


def save_teacher(model: keras.Model, provenance: dict[str, Any], out: str) -> str:
    """Writes ``out`` (``.keras``, provenance in its ``metadata.json``) and ``<out>.json``.

    Both files are written to temporary names first and renamed at the end: an existing file at
    ``out`` is replaced only when everything succeeded.

    Returns:
        The path of the JSON beside the model.
    """
    if not out.endswith(".keras"):
        raise ValueError(f"--out must end with .keras, got {out!r}")
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.splitext(out)[0] + ".json"
    fd, tmp_model = tempfile.mkstemp(suffix=".keras", dir=directory)
    os.close(fd)
    tmp_json = tmp_model + ".json"
    try:
        model.save(tmp_model)
        _add_metadata(tmp_model, provenance)
        with open(tmp_json, "w") as f:
            json.dump(provenance, f, indent=2)
        os.replace(tmp_model, out)
        os.replace(tmp_json, json_path)
    finally:
        for path in (tmp_model, tmp_json):
            if os.path.exists(path):
                os.remove(path)
    return json_path


def _add_metadata(path: str, provenance: dict[str, Any]) -> None:
    """Adds ``provenance`` to the ``metadata.json`` of a ``.keras`` zip (Keras ignores extra keys)."""
    rewritten = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "metadata.json":
                meta = json.loads(data)
                meta[METADATA_KEY] = provenance
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    os.replace(rewritten, path)


def read_provenance(path: str) -> Optional[dict[str, Any]]:
    """The provenance stored in a converted ``.keras`` file, or ``None`` for any other model."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("metadata.json")).get(METADATA_KEY)
