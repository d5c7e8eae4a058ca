"""All-or-nothing output directories (no TensorFlow import: the CLI checks ``--out`` first).

An export is built in a temporary sibling ``DIR.tmp-XXXX`` and renamed into place only once it
has been verified. An existing ``DIR`` is replaced only with ``--overwrite``, and only if it looks
like an export (it holds ``model_card.json``) or is empty: the old directory is renamed aside, the
new one renamed in, then the old one deleted. A failure at any point deletes the temporary
directory and leaves an existing ``DIR`` untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile

MARKER = "model_card.json"


def check_destination(out: str, overwrite: bool) -> str:
    """Validates the output directory before any work; returns its absolute path.

    Raises:
        ValueError: ``out`` exists and ``overwrite`` is false, is a file, or is a non-empty
            directory that is not an export (which ``--overwrite`` will not delete).
    """
    if not out:
        raise ValueError("--out must name the output directory")
    out = os.path.abspath(out)
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise ValueError(f"--out {out!r} exists and is not a directory")
        if not overwrite:
            raise ValueError(f"--out {out!r} already exists; pass --overwrite to replace it")
        if os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER)):
            raise ValueError(f"--out {out!r} is a non-empty directory without {MARKER}; --overwrite only "
                             "replaces a previous export, so remove it yourself or pick another --out")
    parent = os.path.dirname(out)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"the parent of --out, {parent!r}, is not a directory")
    return out


def make_temporary(out: str) -> str:
    """Creates and returns the temporary sibling directory ``OUT.tmp-XXXX`` of ``out``."""
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{os.path.basename(out)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the bundle gets the usual permissions
    return tmp


def publish(tmp: str, out: str, overwrite: bool) -> None:
    """Renames the finished ``tmp`` to ``out`` (replacing a previous export if ``overwrite``).

    Raises:
        ValueError: ``out`` appeared meanwhile and may not be replaced.
    """
    check_destination(out, overwrite)
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    aside = tempfile.mkdtemp(prefix=f"{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(aside)
    os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def discard(tmp: str | None) -> None:
    """Deletes a temporary directory (ignoring one that is already gone)."""
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
