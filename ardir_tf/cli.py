"""Shared plumbing of the command-line tools: a quiet start, flag parsing with exit status 2 on
bad input, flagfiles shipped with the package, and one-line errors."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import traceback
from importlib import resources
from typing import Callable, Iterator, Sequence

from absl import app, flags

FLAGFILE_DIR = "flags"
# Flags that helpers here define (define_fraction) belong to the module that calls them: its --help lists them.
flags.disclaim_key_flags()

#: Packages whose ``python -m`` tools start quietly (see :func:`quiet_start`).
TOOL_PACKAGES = ("ardir_tf", "export", "benchmarks")

# TensorFlow's start-up messages on stderr that say nothing is wrong: absl's notice, the oneDNN
# note, CUDA's absence (and, on a CPU-only machine with CUDA libraries, cuInit's "error" 303),
# the CPU-instructions notice and the duplicate-registration warnings of the CUDA plug-ins.
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\]"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cuda_(diagnostics|executor)\.cc:\d+\]"
    r"|cpu_feature_guard\.cc:\d+\]|^To enable the following instructions:"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc:\d+\]|TF-TRT Warning"
)


def wants_verbose(argv: Sequence[str]) -> bool:
    """Whether the raw command line ``argv`` sets ``--verbose`` (also ``--verbose=true``/``1``)."""
    on = False
    for arg in argv:
        if arg in ("--verbose", "-verbose"):
            on = True
        elif arg in ("--noverbose", "-noverbose"):
            on = False
        elif arg.lstrip("-").startswith("verbose="):
            on = arg.split("=", 1)[1].lower() in ("1", "true", "t", "yes", "y")
    return on


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = _START_UP_NOISE) -> Iterator[None]:
    """Catches everything written to file descriptor 2 (C++ logs included) in the block, then
    writes back every line that ``noise`` does not match: real errors are kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the import of ``tensorflow`` and the listing of its devices (where CUDA starts and
    logs) inside :func:`filtered_stderr`; the module and its loader are TensorFlow's own."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with filtered_stderr():
                run(module)
                # Lists the physical devices only: a multi-worker strategy or TPU can still be set up.
                module.config.list_physical_devices()

        spec.loader.exec_module = exec_module
        return spec


def quiet_start(argv: Sequence[str]) -> None:
    """Starts a command-line tool without TensorFlow's start-up log, unless ``argv`` has ``--verbose``.

    Must run before ``tensorflow`` is imported: ``ardir_tf/__init__.py`` calls it when the process
    is ``python -m`` one of :data:`TOOL_PACKAGES`' modules, and the demo (``app/__main__.py``)
    calls it itself. It sets ``TF_CPP_MIN_LOG_LEVEL=1``
    (TensorFlow's C++ INFO lines off, warnings and errors kept; a value set by the user wins) and
    filters the lines that TensorFlow writes before its logging honours that level: at import and
    at CUDA's start. Anything else on stderr in those moments is written out unchanged.
    """
    if wants_verbose(argv) or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def started_tool(orig_argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(module, arguments)`` when ``orig_argv`` (``sys.orig_argv``) is ``python -m MODULE ...``
    with MODULE in one of :data:`TOOL_PACKAGES`, else ``None``."""
    argv = list(orig_argv)
    if "-m" not in argv[1:-1]:
        return None
    i = argv.index("-m", 1)
    module = argv[i + 1]
    if module.split(".")[0] not in TOOL_PACKAGES:
        return None
    return module, argv[i + 2:]


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
