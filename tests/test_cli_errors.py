"""The training CLI's answer to bad input: one ``error:`` line and exit status 2, never a
traceback (``--verbose`` shows it), a refused workdir of another run, and a stop at a non-finite
loss that keeps the last good checkpoint.

The cases run the training CLI's own code path in this process (``cli.run(train.main)`` with
``sys.argv`` set, as ``python -m ardir_tf.train`` does after its imports): the exit status,
stderr and the absence of a traceback are those of the command, without a TensorFlow start-up per
case. ``test_train.py::test_shipped_flagfiles_resolve_from_any_directory`` checks the same in a
real process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from absl import flags

from ardir_tf import cli, train
from bad_files import TINY, lambda_model, random_bytes, save_npz, save_small_cnn, truncated_model


class Outcome(NamedTuple):
    status: int
    out: str
    err: str


@pytest.fixture
def train_cli(monkeypatch, capsys):
    """Runs ``python -m ardir_tf.train ARGS`` in this process and returns its :class:`Outcome`.

    Never pass ``--deterministic`` here: op determinism cannot be switched off again in a process.
    """
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


# Files a case refers to as {name}; each is made only for the cases that use it.
FILES = {
    "teacher": lambda d: save_small_cnn(d / "teacher.keras"),
    "teacher_5_classes": lambda d: save_small_cnn(d / "t5.keras", num_classes=5),
    "teacher_rgb32": lambda d: save_small_cnn(d / "rgb.keras", input_shape=(32, 32, 3)),
    "random_bytes": lambda d: random_bytes(d / "random.keras"),
    "truncated": lambda d: truncated_model(d / "truncated.keras"),
    "lambda_model": lambda d: lambda_model(d / "lambda.keras"),
    "empty_dir": lambda d: str(d / "tfds"),
    "npz_missing": lambda d: save_npz(d / "missing.npz", drop=("y_test",)),
    "npz_shape": lambda d: save_npz(d / "shape.npz", x_train=np.zeros((12, 64), np.uint8)),
    "npz_labels": lambda d: save_npz(d / "labels.npz", y_test=np.array([0, 1, 2, -1, 0, 1])),
    "npz_pixels": lambda d: save_npz(d / "pixels.npz", x_test=np.full((6, 8, 8, 1), 300.0, np.float32)),
    "npz_object": lambda d: save_npz(d / "object.npz", y_train=np.array([0, "a", None] * 4, dtype=object)),
}

DISTIL = ["--method=ardir", *TINY]
BAD_INPUT = [
    # (case, arguments, substrings of the error line)
    ("unknown method", ["--method=nope"], ["--method", "pgd_at"]),
    ("unknown model", ["--method=pgd_at", "--model=nope"], ["unknown model 'nope'", "small_cnn"]),
    ("unknown dataset", ["--method=pgd_at", "--dataset=nope"], ["unknown dataset 'nope'", "mnist5k"]),
    ("unknown flagfile", ["--flagfile=nope.flags"], ["nope.flags", "cifar.flags"]),
    ("eps negative", ["--method=pgd_at", "--epsilon=-0.5"], ["epsilon must lie in [0, 1]"]),
    ("eps above 1", ["--method=pgd_at", "--epsilon=1.5"], ["epsilon must lie in [0, 1]"]),
    ("step size zero", ["--method=pgd_at", "--attack_step_size=0"], ["step size must be positive"]),
    ("step size negative", ["--method=pgd_at", "--attack_step_size=-0.1"], ["step size must be positive"]),
    ("steps zero", ["--method=pgd_at", "--attack_steps=0"], ["--attack_steps must be positive"]),
    ("steps negative", ["--method=pgd_at", "--attack_steps=-3"], ["--attack_steps must be positive"]),
    ("unknown eval attack", ["--method=pgd_at", "--eval_attacks=fgsm,nope"], ["nope", "pgd20"]),
    ("unknown model option", ["--method=pgd_at", "--model_options=widht=4"], ["no option 'widht'", "options: width"]),
    ("unknown layer", [*DISTIL, "--teacher={teacher}", "--ir_layers=nope"], ["'nope'", "stage1", "stage2", "logits"]),
    ("teacher class count", [*DISTIL, "--teacher={teacher_5_classes}"], ["teacher has 5 classes but the student has 10"]),
    ("teacher input shape", [*DISTIL, "--teacher={teacher_rgb32}"],
     ["teacher input shape (32, 32, 3) differs from the student's (28, 28, 1)"]),
    ("teacher missing", [*DISTIL, "--teacher=/does/not/exist.keras"], ["does not exist"]),
    ("teacher not a model", [*DISTIL, "--teacher={random_bytes}"], ["not a loadable .keras model"]),
    ("teacher truncated", [*DISTIL, "--teacher={truncated}"], ["not a loadable .keras model"]),
    ("teacher runs code", [*DISTIL, "--teacher={lambda_model}"], ["not a loadable .keras model", "arbitrary code"]),
    ("dataset not offline", ["--method=pgd_at", "--dataset=cifar10", "--data_dir={empty_dir}"],
     ["not downloaded", "--data_dir"]),
    ("npz missing array", ["--method=pgd_at", "--dataset=npz:{npz_missing}"], ["lacks array(s) y_test"]),
    ("npz wrong shape", ["--method=pgd_at", "--dataset=npz:{npz_shape}"], ["'x_train'", "has shape (12, 64)"]),
    ("npz labels out of range", ["--method=pgd_at", "--dataset=npz:{npz_labels}"], ["class indices >= 0"]),
    ("npz pixels out of range", ["--method=pgd_at", "--dataset=npz:{npz_pixels}"], ["[0, 1] (float) or [0, 255]"]),
    ("npz pickled objects", ["--method=pgd_at", "--dataset=npz:{npz_object}"], ["object array", "not loaded"]),
]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, expected", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(train_cli, tmp_path, args, expected):
    made = {}
    for name, make in FILES.items():
        if any("{" + name + "}" in a for a in args):
            made[name] = make(tmp_path)
    args = [a.format(**made) for a in args]
    start = time.monotonic()
    line = error_line(train_cli(*args, f"--workdir={tmp_path / 'w'}"))
    for text in expected:
        assert text in line, line
    assert time.monotonic() - start < 20  # fails fast: no download retries, no training
    assert not (tmp_path / "w" / "settings.json").exists()  # a failed start leaves no run behind


def test_verbose_shows_the_traceback(train_cli, tmp_path):
    outcome = train_cli("--method=pgd_at", "--model=nope", "--verbose", f"--workdir={tmp_path}")
    assert outcome.status == 2 and "Traceback" in outcome.err
    assert outcome.err.strip().splitlines()[-1].startswith("error: unknown model")


def test_workdir_of_another_run_is_refused_and_a_failed_start_does_not_count(train_cli, tmp_path):
    work = f"--workdir={tmp_path / 'w'}"
    # A start that fails on bad input must not claim the workdir for its settings.
    error_line(train_cli("--method=pgd_at", "--epochs=1", "--model=nope", work, *TINY))
    outcome = train_cli("--method=pgd_at", "--epochs=1", work, *TINY)
    assert outcome.status == 0, outcome.err[-2000:]
    line = error_line(train_cli("--method=pgd_at", "--epochs=1", work, *TINY, "--seed=7", "--epsilon=0.2"))
    assert "different settings (epsilon, seed)" in line and "another --workdir" in line and "start fresh" in line
    outcome = train_cli("--method=pgd_at", "--epochs=1", work, *TINY)  # the same settings: reused
    assert outcome.status == 0 and "already trained" in outcome.out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(train_cli, tmp_path):
    work = tmp_path / "w"
    # Epoch 1 at a sane rate, then the rate jumps by 1e30: a later epoch's loss is not finite.
    args = ["--method=pgd_at", "--epochs=4", "--optimizer=sgd", "--learning_rate=0.01", "--lr_schedule=piecewise",
            "--lr_decay_epochs=1", "--lr_decay_factor=1e30", f"--workdir={work}", *TINY]
    line = error_line(train_cli(*args))
    state = json.loads((work / "checkpoint" / "state.json").read_text())
    good = state["epochs_completed"]
    assert 1 <= good < 4 and state["weights"] == f"epoch-{good:04d}.weights.h5"
    assert f"non-finite loss in epoch {good + 1}" in line and f"({good} epochs)" in line
    assert str(work / "checkpoint") in line and "another --workdir" in line
    assert sorted(os.listdir(work / "checkpoint")) == [state["weights"], "state.json"]
    arrays = []
    with h5py.File(work / "checkpoint" / state["weights"], "r") as f:
        f.visititems(lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert len(arrays) > 10 and all(np.all(np.isfinite(a)) for a in arrays if np.issubdtype(a.dtype, np.number))
    assert not (work / "model.keras").exists() and not (work / "results.json").exists()
