"""``tree_digest``: what a directory holds, to show that a failed command left it byte for byte intact."""

from __future__ import annotations

import os

from ardir_tf.io import sha256


def tree_digest(path: str) -> dict[str, str]:
    """``relative path -> sha256`` of every file below ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = sha256(full)
    return out
