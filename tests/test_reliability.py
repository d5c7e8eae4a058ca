"""Reliability (issue 9): crash safety of training, one-line errors for bad input, safe loading,
and property-based tests of the data pipelines and of the export's input validation.

Crash safety runs real ``python -m ardir_tf.train`` processes: one is killed with SIGKILL while
it trains, the files a kill inside a checkpoint save would leave are added, and the restarted
command must end with the weights of an uninterrupted run (``--deterministic``). The kill points
inside ``EpochCheckpoint.on_epoch_end`` are also visited one by one in this process.

The bad-input table runs the training CLI's own code path in this process (``cli.run(train.main)``
with ``sys.argv`` set, as ``python -m ardir_tf.train`` does after its imports): the exit status,
stderr and the absence of a traceback are those of the command, without a TensorFlow start-up per
case. ``test_train.py::test_shipped_flagfiles_resolve_from_any_directory`` checks the same in a
real process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ardir_tf import cli, data, methods, models, train
from ardir_tf.attacks import fgsm
from ardir_tf.data import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
# The cheapest complete training run: 2 steps of 32 digits per epoch, one PGD step, natural
# accuracy as the only evaluation.
TINY = ["--model_options=width=2", "--train_examples=64", "--batch_size=32", "--attack_steps=1", "--val_examples=0",
        "--eval_examples=20", "--eval_attacks=", "--progress=none"]


# ------------------------------------------------------------------------------------ helpers
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


def save_small_cnn(path, num_classes: int = 10, input_shape=(28, 28, 1)) -> str:
    models.get("small_cnn", num_classes, input_shape, width=2).save(path)
    return str(path)


def save_npz(path, drop=(), **changes) -> str:
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8), y_train=np.arange(12) % 3,
                  x_test=rng.integers(0, 256, (6, 8, 8, 1)).astype(np.uint8), y_test=np.arange(6) % 3)
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return str(path)


def _truncated_model(path) -> str:
    whole = save_small_cnn(path)
    with open(whole, "rb") as f:
        content = f.read()
    with open(whole, "wb") as f:
        f.write(content[: len(content) // 2])
    return whole


def _lambda_model(path) -> str:
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(h)).save(path)
    return str(path)


def _random_bytes(path) -> str:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return str(path)


# Files a case refers to as {name}; each is made only for the cases that use it.
FILES = {
    "teacher": lambda d: save_small_cnn(d / "teacher.keras"),
    "teacher_5_classes": lambda d: save_small_cnn(d / "t5.keras", num_classes=5),
    "teacher_rgb32": lambda d: save_small_cnn(d / "rgb.keras", input_shape=(32, 32, 3)),
    "random_bytes": lambda d: _random_bytes(d / "random.keras"),
    "truncated": lambda d: _truncated_model(d / "truncated.keras"),
    "lambda_model": lambda d: _lambda_model(d / "lambda.keras"),
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


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_checkpoint_skips_an_epoch_with_a_non_finite_log(tmp_path, bad):
    ckpt = train.EpochCheckpoint(str(tmp_path))
    ckpt.set_model(_trainer())
    ckpt.on_epoch_end(0, {"loss": bad, "natural_accuracy": 0.5})
    assert os.listdir(tmp_path) == []
    ckpt.on_epoch_end(0, {"loss": 1.0, "adversarial_accuracy": bad})
    assert os.listdir(tmp_path) == [] and ckpt.completed_epochs() == 0


# --------------------------------------------------------------------------- crash safety
EPOCHS = 5
KILL_RUN = ["--method=pgd_at", *TINY, "--train_examples=128", "--deterministic", f"--epochs={EPOCHS}"]


def _start(workdir, log) -> subprocess.Popen:
    """Starts ``python -m ardir_tf.train KILL_RUN --workdir=WORKDIR``, its output going to ``log.{out,err}``."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "ardir_tf.train", *KILL_RUN, f"--workdir={workdir}"], cwd=ROOT,
                                env=ENV, stdout=out, stderr=err)


def _finish(proc: subprocess.Popen, log) -> str:
    """Waits for ``proc`` to succeed; returns its stdout."""
    proc.wait(timeout=600)
    with open(f"{log}.err") as err:
        assert proc.returncode == 0, err.read()[-3000:]
    with open(f"{log}.out") as out:
        return out.read()


def _epochs_completed(workdir) -> int:
    try:
        with open(os.path.join(workdir, "checkpoint", "state.json")) as f:
            return json.load(f)["epochs_completed"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_gives_the_uninterrupted_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _start(straight, tmp_path / "reference")  # runs beside the other two
    victim = _start(killed, tmp_path / "victim")
    deadline = time.monotonic() + 600
    while _epochs_completed(killed) < 1:
        assert victim.poll() is None, (tmp_path / "victim.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    done = _epochs_completed(killed)
    assert 1 <= done < EPOCHS and not (killed / "model.keras").exists()  # killed while later epochs ran

    # What a kill inside a save leaves: a partly written next checkpoint that state.json does not
    # name yet, a half-written state.json.tmp, and a half-written model from save_model_atomic.
    ckpt = killed / "checkpoint"
    with open(ckpt / f"epoch-{done:04d}.weights.h5", "rb") as f:
        partial = f.read()[:3000]
    (ckpt / f"epoch-{done + 1:04d}.weights.h5").write_bytes(partial)
    (ckpt / "state.json.tmp").write_text('{"epochs_completed": ' + str(done + 1))
    (killed / "model.tmp.keras").write_bytes(partial)

    # The same command again.
    assert f"resuming after epoch {done}" in _finish(_start(killed, tmp_path / "resumed"), tmp_path / "resumed")
    _finish(reference, tmp_path / "reference")
    a = keras.models.load_model(straight / "model.keras").get_weights()
    b = keras.models.load_model(killed / "model.keras").get_weights()
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert sorted(os.listdir(ckpt)) == [f"epoch-{EPOCHS:04d}.weights.h5", "state.json"]
    assert not (killed / "model.tmp.keras").exists()


class _Killed(BaseException):
    """Stands for the process dying at this point (no handler may catch it)."""


def _trainer(seed: int = 0) -> methods.AdversarialTrainer:
    keras.utils.set_random_seed(seed)
    trainer = methods.PGDAT(models.get("small_cnn", 3, (28, 28, 1), width=2), epsilon=0.1, attack_steps=1,
                            attack_step_size=0.1, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    trainer.optimizer.build(trainer.trainable_variables)
    return trainer


def _state(trainer) -> list[np.ndarray]:
    return [v.numpy().copy() for v in trainer.student.weights] + [np.array(trainer.optimizer.iterations.numpy())]


def _kill_in_weights_write(monkeypatch, trainer):
    real = trainer.save_weights

    def partial_write(path, *a, **k):
        real(path, *a, **k)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
        raise _Killed

    monkeypatch.setattr(trainer, "save_weights", partial_write)


def _die(*args, **kwargs):
    raise _Killed


def _kill_before_state(monkeypatch, trainer):
    monkeypatch.setattr(train, "write_json_atomic", _die)


def _kill_before_rename(monkeypatch, trainer):
    real = os.replace

    def replace(src, dst):
        if str(src).endswith("state.json.tmp"):
            raise _Killed
        real(src, dst)

    monkeypatch.setattr(train.os, "replace", replace)


def _kill_before_cleanup(monkeypatch, trainer):
    monkeypatch.setattr(train.os, "remove", _die)


@pytest.mark.parametrize("kill, survives", [
    (_kill_in_weights_write, 1), (_kill_before_state, 1), (_kill_before_rename, 1), (_kill_before_cleanup, 2),
], ids=["in the weights write", "before state.json", "before the rename", "before removing the old file"])
def test_a_kill_inside_a_checkpoint_save_leaves_the_last_complete_epoch(monkeypatch, tmp_path, kill, survives):
    directory = str(tmp_path / "checkpoint")
    trainer = _trainer()
    ckpt = train.EpochCheckpoint(directory)
    ckpt.set_model(trainer)
    ckpt.on_epoch_end(0, {"loss": 1.0})
    epoch_1 = _state(trainer)
    for v in trainer.student.trainable_weights:  # "epoch 2" changes every weight
        v.assign(v + 1.0)
    trainer.optimizer.iterations.assign(7)
    epoch_2 = _state(trainer)
    with monkeypatch.context() as patch:
        kill(patch, trainer)
        with pytest.raises(_Killed):
            ckpt.on_epoch_end(1, {"loss": 1.0})

    fresh = _trainer(seed=1)  # a new process: other initial weights
    restarted = train.EpochCheckpoint(directory)
    assert restarted.restore(fresh) == survives
    for u, v in zip(_state(fresh), epoch_1 if survives == 1 else epoch_2):
        np.testing.assert_array_equal(u, v)
    restarted.set_model(fresh)  # the resumed run's next save tidies up whatever the kill left
    restarted.on_epoch_end(survives, {"loss": 1.0})
    assert sorted(os.listdir(directory)) == [f"epoch-{survives + 1:04d}.weights.h5", "state.json"]


# -------------------------------------------------------------------------------- safety
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_files_load_in_safe_mode(tmp_path, suffix):
    """A model file whose Lambda layer carries Python bytecode is refused, not executed."""
    with pytest.raises(ValueError, match="not a loadable .keras model.*arbitrary code") as err:
        train.load_model_file(_lambda_model(tmp_path / f"lambda{suffix}"), "teacher")
    assert "\n" not in str(err.value)


class _Payload:
    """Unpickling it runs ``os.mkdir(path)``: the stand-in for arbitrary code in a data file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_arrays_load_without_pickle(tmp_path):
    """An npz whose array unpickles into code is refused, and the code does not run."""
    marker = tmp_path / "payload_ran"
    path = save_npz(tmp_path / "objects.npz", x_test=np.array([_Payload(str(marker))] * 6, dtype=object))
    for load in (lambda: data.get_info(f"npz:{path}"), lambda: data.load_arrays(f"npz:{path}", "test")):
        with pytest.raises(DatasetError, match="pickled object array"):
            load()
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as unsafe:  # the control: with pickle the payload runs
        unsafe["x_test"]
    assert marker.exists()


def test_demo_launch_binds_loopback_and_never_shares(monkeypatch):
    """``python -m app --export=DIR`` with default flags: server_name 127.0.0.1, share=False."""
    import types

    import app
    from app import __main__ as app_main
    from app import runtime

    launched = {}

    class Demo:
        local_url = "http://127.0.0.1:7860/"

        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            launched.update(kwargs)

        def block_thread(self):
            launched["blocked"] = True

    class Bundle:
        def __init__(self, path):
            self.path, self.name = path, "fake"

        def warm_up(self):
            pass

    for name in ("GRADIO_ANALYTICS_ENABLED", "TF_CPP_MIN_LOG_LEVEL"):  # main() sets them; restore them after
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    fake_ui = types.SimpleNamespace(build=lambda primary, compare: Demo(), CSS="")
    monkeypatch.setattr(runtime, "check_bundle", lambda path: path)
    monkeypatch.setattr(runtime, "Bundle", Bundle)
    monkeypatch.setitem(sys.modules, "app.ui", fake_ui)
    monkeypatch.setattr(app, "ui", fake_ui, raising=False)
    assert app_main.main(["--export=/some/bundle"]) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    assert launched["inbrowser"] is False
    assert launched["quiet"] is True and launched["blocked"]  # no "set share=True" advice; serves until stopped


# -------------------------------------------------------------------- properties: data
@st.composite
def pipeline_cases(draw):
    n = draw(st.integers(1, 12))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 3])))
    return (n, shape, draw(st.sampled_from([np.uint8, np.float32, np.float64])), draw(st.integers(1, n)),
            draw(st.sampled_from(data.AUGMENTATIONS)), draw(st.integers(0, 3)), draw(st.integers(0, 2**31 - 1)))


def _images(rng, n, shape, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    x = rng.uniform(0, 1, (n, *shape))
    x.flat[0], x.flat[-1] = 0.0, 1.0
    return x.astype(dtype)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline_cases())
def test_train_dataset_property(case):
    n, shape, dtype, batch, augment, start, seed = case
    rng = np.random.default_rng(seed)
    x = _images(rng, n, shape, dtype)
    unit = x.astype(np.float32) / np.float32(255) if dtype == np.uint8 else x.astype(np.float32)
    y = np.arange(n)  # the label names the example, so every image can be traced back
    steps = data.steps_per_epoch(n, batch)
    later = data.train_dataset(x, y, batch, seed=seed, augment=augment, start_epoch=start)
    batches = [(a.numpy(), b.numpy()) for a, b in later.take(2 * steps)]
    for epoch in (batches[:steps], batches[steps:]):
        labels = np.concatenate([b for _, b in epoch])
        assert len(labels) == steps * batch and len(set(labels.tolist())) == len(labels)  # no repeats in an epoch
    for images, labels in batches:
        assert images.shape == (batch, *shape) and images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() >= 0.0 and images.max() <= 1.0
        for image, label in zip(images, labels):
            if augment is None:
                np.testing.assert_array_equal(image, unit[label])
            else:  # a shifted (and maybe mirrored) crop of the zero-padded image: no new values
                assert set(np.unique(image)) <= set(np.unique(unit[label])) | {0.0}
    # Resuming at epoch `start` yields exactly the batches of the uninterrupted pipeline.
    whole = data.train_dataset(x, y, batch, seed=seed, augment=augment).skip(start * steps).take(steps)
    for (a, b), (c, d) in zip(batches, whole):
        np.testing.assert_array_equal(a, c.numpy())
        np.testing.assert_array_equal(b, d.numpy())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline_cases(), st.integers(1, 15))
def test_eval_dataset_property(case, batch):
    n, shape, dtype, _, _, _, seed = case
    x = _images(np.random.default_rng(seed), n, shape, dtype)
    y = np.random.default_rng(seed).integers(0, 10, n)
    batches = [(a.numpy(), b.numpy()) for a, b in data.eval_dataset(x, y, batch)]
    assert [len(b) for _, b in batches] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    images = np.concatenate([a for a, _ in batches])
    expected = x.astype(np.float32) / np.float32(255) if dtype == np.uint8 else x.astype(np.float32)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), y)
    assert images.dtype == np.float32 and batches[0][1].dtype == np.int32


BAD_PIPELINE_INPUTS = ["rank3", "rank5", "labels_2d", "labels_short", "labels_float", "float_above_1",
                       "float_negative", "int64_images", "batch_zero", "batch_too_big", "augment", "start_epoch"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline_cases(), st.sampled_from(BAD_PIPELINE_INPUTS), st.sampled_from(["train", "eval"]))
def test_pipelines_refuse_bad_input_with_one_line(case, bad, pipeline):
    n, shape, dtype, batch, augment, start, seed = case
    rng = np.random.default_rng(seed)
    x, y = _images(rng, n, shape, np.float32), rng.integers(0, 10, n)
    kwargs = dict(augment=augment, start_epoch=start)
    if bad == "rank3":
        x = x[..., 0]
    elif bad == "rank5":
        x = x[..., None]
    elif bad == "labels_2d":
        y = y[:, None]
    elif bad == "labels_short":
        y = y[:-1]
    elif bad == "labels_float":
        y = y.astype(np.float32)
    elif bad == "float_above_1":
        x.flat[-1] = 1.5
    elif bad == "float_negative":
        x.flat[0] = -0.25
    elif bad == "int64_images":
        x = (x * 255).astype(np.int64)
    elif bad == "batch_zero":
        batch = 0
    elif bad == "batch_too_big":
        batch = n + 1
    elif bad == "augment":
        kwargs["augment"] = "rotate"
    else:
        kwargs["start_epoch"] = -1
    if pipeline == "eval" and bad in ("batch_too_big", "augment", "start_epoch"):
        return  # an evaluation batch may exceed the data; augmentation and epochs are training-only
    with pytest.raises(DatasetError) as err:
        if pipeline == "train":
            data.train_dataset(x, y, batch, seed=seed, **kwargs)
        else:
            data.eval_dataset(x, y, batch)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ properties: attacks
@st.composite
def fgsm_cases(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(2, 6)), draw(st.sampled_from([1, 3])))
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0 if norm == "linf" else 3.0,
                                                                allow_subnormal=False)))
    return shape, norm, eps, draw(st.sampled_from(["ce", "cw"])), draw(st.integers(0, 2**16))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fgsm_cases())
def test_fgsm_stays_in_the_ball_and_the_box(case):
    shape, norm, eps, objective, seed = case
    model = _any_size_model(shape[-1])
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    x[rng.uniform(size=shape) < 0.2] = 1.0
    y = rng.integers(0, 3, shape[0]).astype(np.int32)
    x_adv = fgsm(model, tf.constant(x), tf.constant(y), epsilon=eps, norm=norm, objective=objective).numpy()
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32 and np.all(np.isfinite(x_adv))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    bound = np.abs(delta).max(axis=-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
    assert np.all(bound <= eps + 1e-5)
    if eps == 0.0:
        np.testing.assert_array_equal(x_adv, x)


_MODELS: dict[int, keras.Model] = {}


def _any_size_model(channels: int) -> keras.Model:
    """conv3x3(4, tanh) -> global mean -> dense(3), for any image size."""
    if channels not in _MODELS:
        keras.utils.set_random_seed(channels)
        inputs = keras.Input((None, None, channels))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs))
        _MODELS[channels] = keras.Model(inputs, keras.layers.Dense(3)(h))
    return _MODELS[channels]


# ------------------------------------------------------------------- properties: export
EXPORT_SHAPE = (5, 4, 2)  # (H, W, C) of the exported test model; 3 classes


@pytest.fixture(scope="module")
def export_module():
    from export.savedmodel import ExportModule

    keras.utils.set_random_seed(0)
    inputs = keras.Input(EXPORT_SHAPE)
    h = keras.layers.Conv2D(3, 3, padding="same", name="stage1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    return ExportModule(model, EXPORT_SHAPE, ["stage1"])


@st.composite
def image_arrays(draw):
    """Image batches of any rank 1-5 whose dims are mostly right, with values in or out of [0, 1]."""
    rank = draw(st.sampled_from([4, 4, 4, 1, 2, 3, 5]))
    dims = [draw(st.integers(0, 3))] + [draw(st.sampled_from([d, d, d, d + 1, 1])) for d in EXPORT_SHAPE]
    dims = dims[:rank] if rank <= 4 else dims + [1] * (rank - 4)
    low, high = draw(st.sampled_from([(0.0, 1.0), (0.0, 1.0), (-0.5, 1.0), (0.0, 255.0)]))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).uniform(low, high, dims).astype(np.float32)
    if x.size:
        x.flat[0] = low
    return x


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_arrays())
def test_saved_model_image_checks_property(export_module, x):
    right_shape = x.ndim == 4 and x.shape[1:] == EXPORT_SHAPE
    in_range = x.size == 0 or (x.min() >= 0.0 and x.max() <= 1.0)
    for function in (export_module.serve, export_module.features):
        if right_shape and in_range:
            out = function(tf.constant(x))
            assert all(int(t.shape[0]) == len(x) for t in out.values())
            continue
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            function(tf.constant(x))
        message = "images must have shape [N, 5, 4, 2]" if not right_shape else "pixels must lie in [0, 1]"
        assert message in str(err.value)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(-1, 4), st.sampled_from([0, 0, 0, 1, -1]),
       st.sampled_from([0.0, 0.1, 0.3, 1.0, -0.1, 1.5]), st.sampled_from([0, 1, 3, -1, 1001]), st.integers(0, 2**16))
def test_saved_model_attack_checks_property(export_module, n, label_max, extra_labels, eps, steps, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *EXPORT_SHAPE)).astype(np.float32)
    labels = np.minimum(rng.integers(0, 3, n + extra_labels if n + extra_labels > 0 else 0), label_max)
    if len(labels):
        labels[0] = label_max
    valid = (len(labels) == n and label_max in range(3) and 0.0 <= eps <= 1.0 and 0 <= steps <= 1000)
    call = lambda: export_module.attack(tf.constant(x), tf.constant(labels, tf.int32), tf.constant(eps, tf.float32),
                                        tf.constant(steps, tf.int32))
    if not valid:
        with pytest.raises(tf.errors.InvalidArgumentError, match="labels must|epsilon must|steps must"):
            call()
        return
    out = call()
    x_adv = out["adversarial_images"].numpy()
    assert x_adv.shape == x.shape and out["logits"].shape == (n, 3)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0 and np.abs(x_adv - x).max() <= eps + 1e-6


@st.composite
def predict_arrays(draw):
    h, w, c = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
    layout = draw(st.sampled_from(["nhwc", "hwc", "hw", "nhwc_bad_c", "nhwc_bad_hw", "flat", "rank5"]))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int32, np.bool_]))
    span = draw(st.sampled_from(["unit", "unit", "above", "negative", "nan"]))
    n = draw(st.integers(0, 3))
    shape = {"nhwc": (n, h, w, c), "hwc": (h, w, c), "hw": (h, w), "nhwc_bad_c": (n, h, w, 4 - c),
             "nhwc_bad_hw": (n, h + 1, w, c), "flat": (h * w * c,), "rank5": (1, n, h, w, c)}[layout]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == np.uint8:
        x = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        x = rng.uniform(0, 1, shape)
        if x.size and span != "unit" and np.issubdtype(dtype, np.floating):
            x.flat[0] = {"above": 1.5, "negative": -0.1, "nan": np.nan}[span]
        x = x.astype(dtype)
    return (h, w, c), layout, x


@settings(max_examples=30, deadline=None)
@given(predict_arrays())
def test_predict_input_check_property(case):
    from export.predict import InputError, check_batch

    shape, layout, x = case
    h, w, c = shape
    numeric = x.dtype == np.uint8 or (np.issubdtype(x.dtype, np.floating)
                                      and (x.size == 0 or (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1)))
    fits = layout in ("nhwc", "hwc") or (layout == "hw" and c == 1)
    try:
        out = check_batch(x, shape)
    except InputError as err:
        assert "\n" not in str(err)
        assert not (numeric and fits), f"valid input refused: {err}"
        return
    assert numeric and fits, "invalid input accepted"
    assert out.dtype == np.float32 and out.ndim == 4 and out.shape[1:] == (h, w, c)
    assert out.size == 0 or (out.min() >= 0.0 and out.max() <= 1.0)
    expected = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)
