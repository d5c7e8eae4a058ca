"""File input/output shared by training, evaluation, reports and export: atomic writes and safe
model loading, file digests. It imports no other ``ardir_tf`` module, so every module may import it."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["RESULTS_FILE", "SETTINGS_FILE", "load_model_file", "resolve_teacher", "sha256", "teacher_record",
           "write_json_atomic", "write_text_atomic"]

#: a run's workdir holds its settings and its evaluation under these names
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.json"


def teacher_record(teacher_path: str, workdir: str) -> str:
    """How a run's ``settings.json`` records its teacher: the path relative to the run's workdir
    (``""`` for none), so that a study's output directory can move as a whole and still resume."""
    return os.path.relpath(os.path.abspath(teacher_path), os.path.abspath(workdir)) if teacher_path else ""


def resolve_teacher(record: str, workdir: str) -> str:
    """The teacher file a ``settings.json`` record names, as an absolute path without symbolic
    links (``""`` for none). Older runs recorded absolute paths; those are taken as they are."""
    if not record:
        return ""
    return os.path.realpath(os.path.join(os.path.abspath(workdir), record))


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` all or nothing: a temporary ``PATH.tmp``, flushed to disk, then
    renamed over ``path``. An interruption leaves either the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256(path: str) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (with a final newline) to ``path``, atomically
    (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def load_model_file(path: str, what: str = "model"):
    """Loads a ``.keras`` (or ``.h5``) file in Keras safe mode, uncompiled.

    Args:
        path: the model file.
        what: how the error message names the file (``"teacher"``, ``"model"``).

    Returns:
        The ``keras.Model``.

    Raises:
        ValueError: one line, for a missing file, a file that is not a model, or a model holding
            Python code (a ``Lambda`` layer), which safe mode refuses.
    """
    import keras  # here: writing JSON must not need TensorFlow

    if not path or not os.path.isfile(path):
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a bad archive
        if "safe_mode" in str(err):
            # Keras' own advice (safe_mode=False) is not an option of this program, and not a safe one.
            raise ValueError(f"{what} file {path!r} is not a loadable .keras model: it holds Python code (a Lambda "
                             "layer) that could run arbitrary code, which Keras safe mode refuses; save the model "
                             "without Lambda layers") from None
        raise ValueError(f"{what} file {path!r} is not a loadable .keras model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
