"""tf.distribute: N replicas train like one device with the same global batch.

Logical CPU devices and a multi-worker cluster must be configured before TensorFlow initialises,
so the distributed runs are separate processes (tests/distribute_worker.py):

- one device, Keras ``fit`` (in the test process);
- ``MirroredStrategy`` over two logical CPU devices, Keras ``fit``;
- ``MultiWorkerMirroredStrategy`` with two worker processes on 127.0.0.1, ``distribute.custom_fit``.

Each trains PGD-AT on a tiny CNN with one synchronised batch-norm layer, 6 steps of global batch 16
(SGD with momentum, the attack with ``random_start="none"``). Equality is expected up to float
rounding: the per-replica losses divided by N and summed are the global mean, PGD is per example,
the synchronised batch norm sees the global batch's statistics, and no random noise is drawn (with a
random start, each replica draws its own noise; see ``AdversarialTrainer.step_seed``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

import distribute_worker  # tests/ is on sys.path under pytest
from ardir_tf import distribute, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distribute_worker.py")
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("TF_CONFIG", None)
TIMEOUT = 900
# Float rounding differs between one sum and two partial sums; weights are O(1).
WEIGHT_TOLERANCE = 1e-5


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(args: list[str], cwd, **env) -> subprocess.Popen:
    """``python tests/distribute_worker.py ARGS`` in the background."""
    return subprocess.Popen([sys.executable, WORKER, *args], cwd=cwd, env={**ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_workers(args: list[str], cwd, **env) -> list[subprocess.Popen]:
    ports = free_ports(2)
    return [start(args, cwd, TF_CONFIG=distribute.tf_config_for(ports, i), **env) for i in range(2)]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process; returns their stdouts; fails with the stderr of one that failed."""
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


def weights(run: dict, loop: str) -> list[np.ndarray]:
    return [run[f"{loop}/weight{i}"] for i in range(len([k for k in run if k.startswith(f"{loop}/weight")]))]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [w.shape for w in a] == [w.shape for w in b]
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def train_history(run: dict, loop: str) -> dict:
    history = json.loads(str(run[f"{loop}/history"]))
    return {k: v for k, v in history.items() if not k.startswith("val_")}  # validation draws random starts


CLI_COMMON = ["--method=pgd_at", "--model_options=width=4", "--train_examples=64", "--batch_size=32",
              "--attack_steps=2", "--val_examples=32", "--eval_examples=40", "--eval_attacks=fgsm",
              "--progress=epoch", "--optimizer=sgd", "--learning_rate=0.05", "--random_start=none",
              "--epsilon_warmup_epochs=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two waves (three processes: TensorFlow's import is most of a tiny run's cost).

    1. A process with two logical CPUs: the Keras-API run under ``MirroredStrategy``, then
       ``ardir_tf.train --strategy=mirrored --epochs=1`` into ``w``. Meanwhile, in this process:
       the one-device Keras-API run and a straight two-epoch ``ardir_tf.train`` run into ``straight``.
    2. Two worker processes: the Keras-API run under ``MultiWorkerMirroredStrategy``, then
       ``ardir_tf.train --strategy=multi_worker --epochs=2`` into ``w``, resuming it.
    """
    tmp = tmp_path_factory.mktemp("distribute")
    work, straight, scratch = tmp / "w", tmp / "straight", tmp / "scratch"
    scratch.mkdir()
    mirrored = start(["--cpus=2", "--strategy=mirrored", f"--out={tmp / 'mirrored.npz'}", "--",
                      "--strategy=mirrored", *CLI_COMMON, "--epochs=1", f"--workdir={work}"], tmp)
    try:
        single = distribute_worker.api_run("default", "fit")
        values = flags.FlagValues()
        train.define_flags(values)
        values(["train", *CLI_COMMON, "--progress=none", "--epochs=2", f"--workdir={straight}"])
        train.run(train.settings_from_flags(values))
    finally:
        (after_epoch_1,) = finish([mirrored])
    epoch_1_state = json.loads((work / "checkpoint" / "state.json").read_text())
    outputs = finish(start_workers(["--strategy=multi_worker", "--loops=custom", f"--out={tmp / 'worker{task}.npz'}",
                                    "--", "--strategy=multi_worker", *CLI_COMMON, "--epochs=2", f"--workdir={work}"],
                                   tmp, TMPDIR=str(scratch)))
    return {"single": single, **{name: dict(np.load(tmp / f"{name}.npz")) for name in ("mirrored", "worker0", "worker1")},
            "work": work, "straight": straight, "scratch": scratch, "epoch_1_state": epoch_1_state,
            "after_epoch_1": after_epoch_1, "worker_outputs": outputs}


@pytest.mark.slow
def test_two_mirrored_devices_train_like_one(runs):
    single, mirrored = runs["single"], runs["mirrored"]
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    assert int(mirrored["fit/iterations"]) == 6
    assert max_difference(weights(single, "fit"), weights(mirrored, "fit")) < WEIGHT_TOLERANCE
    # Metrics aggregate over replicas: the logs are those of the whole global batch.
    a, b = train_history(single, "fit"), train_history(mirrored, "fit")
    assert set(a) == set(b) == {"loss", "natural_accuracy", "adversarial_accuracy"}
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_two_workers_train_like_one_device_and_agree(runs):
    single, w0, w1 = runs["single"], runs["worker0"], runs["worker1"]
    assert int(w0["replicas"]) == int(w1["replicas"]) == 2
    assert int(w0["custom/iterations"]) == 6
    assert all(np.array_equal(u, v) for u, v in zip(weights(w0, "custom"), weights(w1, "custom")))
    assert max_difference(weights(single, "fit"), weights(w0, "custom")) < WEIGHT_TOLERANCE
    a, b = train_history(single, "fit"), train_history(w0, "custom")
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    assert set(json.loads(str(w0["custom/history"]))) >= {"val_loss", "val_adversarial_accuracy"}


@pytest.mark.slow
def test_each_replica_draws_its_own_attack_noise(runs):
    (single_seed,) = runs["single"]["fit/seeds"]
    assert single_seed.tolist() == [0, 6]  # [seed, optimizer step]: unchanged on one device
    replica_seeds = runs["mirrored"]["fit/seeds"]
    assert len(replica_seeds) == 2 and not np.array_equal(replica_seeds[0], replica_seeds[1])


@pytest.mark.slow
def test_cli_mirrored_checkpoint_resumes_on_two_workers(runs):
    """``--strategy=mirrored`` (two logical CPUs) trains and checkpoints epoch 1; the same command
    with ``--strategy=multi_worker`` on two processes resumes it on both and ends with the weights
    of a straight two-epoch run on one device (so both workers restored: the chief's update
    averages both workers' gradients). Only the chief writes the run's files."""
    work = runs["work"]
    assert runs["epoch_1_state"]["epochs_completed"] == 1
    assert all("resuming after epoch 1" in out for out in runs["worker_outputs"])
    assert json.loads((work / "checkpoint" / "state.json").read_text())["epochs_completed"] == 2
    assert len((work / "history.csv").read_text().strip().splitlines()) == 1 + 2
    assert (work / "results.json").exists()
    assert not list(runs["scratch"].rglob("*"))  # the other worker's scratch copy is gone
    a = keras.models.load_model(runs["straight"] / "model.keras").get_weights()
    b = keras.models.load_model(work / "model.keras").get_weights()
    assert max_difference(a, b) < WEIGHT_TOLERANCE


# ------------------------------------------------------------------------------- in-process units
def test_strategy_names_and_single_process_defaults(tmp_path):
    import tensorflow as tf

    strategy = distribute.make_strategy("default")
    assert strategy is tf.distribute.get_strategy() and distribute.uses_fit(strategy)
    assert distribute.is_chief(strategy) and distribute.worker_dir(strategy, str(tmp_path)) == str(tmp_path)
    distribute.remove_worker_dir(strategy, str(tmp_path))
    assert tmp_path.exists()
    distribute.barrier(strategy)
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.make_strategy("nope")


def test_global_batch_must_split_evenly():
    class EightReplicas:
        num_replicas_in_sync = 8

    distribute.check_global_batch(EightReplicas(), 128)
    with pytest.raises(ValueError, match="multiple of the 8 replicas, got 100; use 96 or 104"):
        distribute.check_global_batch(EightReplicas(), 100)
    with pytest.raises(ValueError, match="got 4; use 8$"):
        distribute.check_global_batch(EightReplicas(), 4)


def test_custom_fit_takes_a_dataset_of_global_batches():
    from ardir_tf import methods, models

    trainer = methods.PGDAT(models.get("small_cnn", 10, (28, 28, 1), width=4), epsilon=0.1, attack_steps=1,
                            attack_step_size=0.1, seed=0)
    trainer.compile(optimizer="sgd")
    x, y = np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int32")
    with pytest.raises(ValueError, match="tf.data.Dataset .* not a ndarray"):
        distribute.custom_fit(trainer, x)
    import tensorflow as tf

    with pytest.raises(ValueError, match="and no batch_size"):
        distribute.custom_fit(trainer, tf.data.Dataset.from_tensor_slices((x, y)).batch(2), batch_size=2)


def test_synchronize_batch_norm_reaches_nested_models():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization()(inner(inputs))
    model = keras.Model(inputs, outputs)
    assert distribute.synchronize_batch_norm(model) == 2
    assert all(layer.synchronized for layer in [inner.layers[-1], model.layers[-1]])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    assert np.all(np.isfinite(model(x, training=True)))  # no strategy: local statistics


def test_learning_rate_warmup():
    base = dict(learning_rate=0.4, epochs=10, lr_decay_epochs=[4], lr_decay_factor=0.1, lr_warmup_epochs=2)
    schedule = train.learning_rate(dict(base, lr_schedule="piecewise"), steps_per_epoch=5)
    got = [float(schedule(s)) for s in (0, 4, 9, 10, 20, 21)]
    assert got == pytest.approx([0.04, 0.2, 0.4, 0.4, 0.4, 0.04])
    constant = train.learning_rate(dict(base, lr_schedule="constant"), steps_per_epoch=5)
    assert float(constant(0)) == pytest.approx(0.04) and float(constant(50)) == pytest.approx(0.4)
    assert train.learning_rate(dict(base, lr_schedule="constant", lr_warmup_epochs=0), steps_per_epoch=5) == 0.4
