"""Tests of ardir_tf.io (atomic writes, safe model loading) and of the module structure it allows:
no import cycles between the package's modules."""

from __future__ import annotations

import ast
import json
import os

import pytest

from ardir_tf import io
from bad_files import lambda_model

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ardir_tf")


def test_write_json_atomic_replaces_the_file_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    io.write_json_atomic(path, {"epochs_completed": 1})
    assert json.loads(open(path).read()) == {"epochs_completed": 1} and open(path).read().endswith("\n")

    def crash(src, dst):  # the process dies between writing the new content and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_json_atomic(path, {"epochs_completed": 2})
    assert json.loads(open(path).read()) == {"epochs_completed": 1}  # the old file, whole


def test_missing_and_broken_model_files_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^teacher file '.*nope.keras' does not exist$"):
        io.load_model_file(str(tmp_path / "nope.keras"), "teacher")
    (tmp_path / "bad.keras").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a loadable .keras model") as err:
        io.load_model_file(str(tmp_path / "bad.keras"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_files_load_in_safe_mode(tmp_path, suffix):
    """A model file whose Lambda layer carries Python bytecode is refused, not executed."""
    with pytest.raises(ValueError, match="not a loadable .keras model.*arbitrary code") as err:
        io.load_model_file(lambda_model(tmp_path / f"lambda{suffix}"), "teacher")
    assert "\n" not in str(err.value)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, modules: set[str]) -> set[str]:
    """The ardir_tf modules ``path`` imports anywhere (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in modules}
    return out


def test_no_import_cycles_between_modules():
    """Cycles hidden by imports inside functions (train <-> evaluate, evaluate <-> report,
    methods.base <-> distribute) are gone. A package's ``__init__`` importing its own submodules
    (and they the package's siblings) is the package, not a cycle, so those edges are left out."""
    files = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                files[_module_name(os.path.join(root, name))] = os.path.join(root, name)
    graph = {}
    for module, path in files.items():
        # Left out: a package's own modules (package -> its module) and a module's parent packages.
        graph[module] = {t for t in _imports(path, set(files))
                         if t != module and not t.startswith(module + ".") and not module.startswith(t + ".")}
    cycles = []

    def visit(node, stack):
        for nxt in graph[node]:
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles
