"""Shared plumbing of the command-line tools: flag parsing with exit status 2 on bad input,
flagfiles shipped with the package, and one-line errors."""

from __future__ import annotations

import os
import sys
import traceback
from importlib import resources
from typing import Callable, Sequence

from absl import app, flags

FLAGFILE_DIR = "flags"
# Flags that helpers here define (define_fraction) belong to the module that calls them: its --help lists them.
flags.disclaim_key_flags()


class UsageError(ValueError):
    """Bad user input detected after flag parsing (printed as one line, exit status 2)."""


def packaged_flagfile(name: str) -> str | None:
    """Path of a flagfile shipped in ``ardir_tf/flags/`` (``cifar.flags``), or ``None``."""
    candidate = resources.files("ardir_tf").joinpath(FLAGFILE_DIR, name)
    return str(candidate) if candidate.is_file() else None


def shipped_flagfiles() -> list[str]:
    return sorted(p.name for p in resources.files("ardir_tf").joinpath(FLAGFILE_DIR).iterdir() if p.name.endswith(".flags"))


def resolve_flagfiles(argv: Sequence[str]) -> list[str]:
    """Rewrites ``--flagfile=NAME`` to the packaged file when NAME is a bare name not found locally."""
    out = []
    for arg in argv:
        if arg.startswith("--flagfile="):
            name = arg.split("=", 1)[1]
            if not os.path.exists(name):
                packaged = packaged_flagfile(name) if os.sep not in name else None
                if packaged is None:
                    _fail(f"flagfile {name!r} not found here nor among the shipped ones: {', '.join(shipped_flagfiles())}")
                arg = f"--flagfile={packaged}"
        out.append(arg)
    return out


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing that exits with status 2 and a one-line message on bad flags."""
    try:
        return flags.FLAGS(resolve_flagfiles(argv))
    except flags.Error as err:
        _fail(str(err).splitlines()[0])
    return []


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run`` with :func:`parse_flags`; ``ValueError``/``OSError`` from ``main`` become a
    one-line message and exit status 2 (``--verbose`` prints the traceback too)."""

    def wrapped(argv):
        try:
            main(argv)
        except (ValueError, OSError) as err:
            if flags.FLAGS.is_parsed() and "verbose" in flags.FLAGS and flags.FLAGS.verbose:
                traceback.print_exc()
            message = " ".join(str(err).split()) or type(err).__name__
            _fail(message)

    app.run(wrapped, flags_parser=parse_flags)


class FractionParser(flags.FloatParser):
    """A float flag that also takes a fraction ``a/b`` (``--epsilon=8/255``)."""

    syntactic_help = "a number or a fraction a/b"

    def convert(self, argument):
        if isinstance(argument, str) and "/" in argument:
            numerator, _, denominator = argument.partition("/")
            try:
                numerator, denominator = float(numerator), float(denominator)
            except ValueError:
                raise ValueError(f"{argument!r} is not a number or a fraction a/b") from None
            if denominator == 0:
                raise ValueError(f"{argument!r} divides by zero")
            return numerator / denominator
        return super().convert(argument)


def define_fraction(name: str, default: float | None, help: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines a float flag ``name`` that also accepts a fraction ``a/b`` (:class:`FractionParser`)."""
    flags.DEFINE(FractionParser(), name, default, help, serializer=flags.ArgumentSerializer(),
                 flag_values=flag_values)
