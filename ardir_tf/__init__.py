"""ardir-tf: adversarially robust distillation with internal representations, in Keras/TensorFlow.

Submodules load on first use (``ardir_tf.methods``, ``ardir_tf.models``, ...), so light tools such
as ``ardir_tf.cli`` start without importing TensorFlow.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("attacks", "cli", "data", "evaluate", "losses", "methods", "models", "report", "train")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"ardir_tf.{name}")
    raise AttributeError(f"module 'ardir_tf' has no attribute {name!r}")
