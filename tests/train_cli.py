"""The training CLI run in this process: the ``train_cli`` fixture (registered in conftest.py) and
:func:`error_line`.

``train_cli(*args)`` runs ``python -m ardir_tf.train ARGS`` as ``cli.run(train.main)`` with
``sys.argv`` set, as the module does after its imports: the exit status, stdout, stderr and the
absence of a traceback are those of the command, without a TensorFlow start-up per case. Never pass
``--deterministic`` here: op determinism cannot be switched off again in a process.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import pytest
from absl import flags


class Outcome(NamedTuple):
    status: int
    out: str
    err: str


@pytest.fixture
def train_cli(monkeypatch, capsys):
    from ardir_tf import cli, train

    if "method" not in flags.FLAGS:
        train.define_flags()

    def run(*args: str) -> Outcome:
        flags.FLAGS.unparse_flags()
        monkeypatch.setattr(sys, "argv", ["ardir_tf.train", *args])
        with pytest.raises(SystemExit) as stop:
            cli.run(train.main)
        captured = capsys.readouterr()
        return Outcome(stop.value.code or 0, captured.out, captured.err)

    yield run
    flags.FLAGS.unparse_flags()


def error_line(outcome: Outcome) -> str:
    """The single ``error:`` line of a failed command (exit status 2, no traceback)."""
    lines = [line for line in outcome.err.strip().splitlines() if line.startswith("error:")]
    assert outcome.status == 2, outcome.err[-2000:]
    assert len(lines) == 1, outcome.err[-2000:]
    assert "Traceback" not in outcome.err, outcome.err[-2000:]
    return lines[0]
