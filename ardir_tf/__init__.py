"""ardir-tf: adversarially robust distillation with internal representations, in Keras/TensorFlow.

Submodules load on first use (``ardir_tf.methods``, ``ardir_tf.models``, ...), so light tools such
as ``ardir_tf.cli`` start without importing TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512; on a 2-core AVX2
# CPU they made a ResNet-18 PGD-AT training step 1.6-1.8x and a small_cnn step 1.2-1.4x faster than the
# default Eigen kernels (BUILD.md, "Speed"). The variable is read when TensorFlow is first imported,
# so this takes effect when ardir_tf is imported before TensorFlow (as the command-line tools do);
# set TF_ENABLE_ONEDNN_OPTS=0 to keep TensorFlow's default.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# `python -m ardir_tf.train` (or another of the project's tools) starts without TensorFlow's
# start-up log unless --verbose is given; importing ardir_tf from Python code changes nothing.
if "-m" in getattr(sys, "orig_argv", [])[1:]:
    from ardir_tf import cli as _cli

    _tool = _cli.started_tool(sys.orig_argv)
    if _tool is not None:
        _cli.quiet_start(_tool[1])

__version__ = "0.1.0"

_SUBMODULES = ("attacks", "cli", "data", "evaluate", "hardware", "io", "losses", "methods", "models", "report",
               "train")
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"ardir_tf.{name}")
    raise AttributeError(f"module 'ardir_tf' has no attribute {name!r}")
