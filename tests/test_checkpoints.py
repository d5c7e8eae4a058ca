"""Crash safety of training (``ardir_tf.train.EpochCheckpoint``): a run killed at any moment
resumes from its last complete epoch, to the weights of an uninterrupted run.

A real ``python -m ardir_tf.train`` process is killed with SIGKILL while it trains, the files a
kill inside a checkpoint save would leave are added, and the restarted command must end with the
weights of an uninterrupted run (``--deterministic``). The kill points inside
``EpochCheckpoint.on_epoch_end`` are also visited one by one in this process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from ardir_tf import methods, models, train
from bad_files import ENV, ROOT, TINY



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
