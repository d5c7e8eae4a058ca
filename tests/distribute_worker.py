"""One process of the tf.distribute tests (tests/test_distribute.py starts it in a subprocess).

Logical CPU devices and a multi-worker strategy have to be configured before TensorFlow
initialises, so every scenario runs in a fresh process, and one process runs both scenarios
(TensorFlow's import alone costs ~7 s of CPU):

``python tests/distribute_worker.py --cpus=N --strategy=S --loops=fit,custom --out=F.npz [-- ARGS...]``

1. with ``--out``: trains a tiny batch-norm CNN with PGD-AT through the Keras API (built and
   compiled under ``strategy.scope()``) for 2 epochs of 3 steps, global batch 16, once per loop
   (Keras ``fit`` or ``ardir_tf.distribute.custom_fit``), and saves the final weights, the training
   history and each replica's attack seed to ``F.npz`` (``{task}`` in ``F``: the worker's index in
   ``TF_CONFIG``);
2. with ``ARGS``: then runs ``python -m ardir_tf.train ARGS...``.

``--cpus=N`` gives the process ``N`` logical CPU devices: the test-only way to give
``--strategy=mirrored`` two replicas on a CPU-only machine. A multi-worker process reads its place
in the cluster from ``TF_CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 16
STEPS_PER_EPOCH = 3
EPOCHS = 2


def configure_cpus(n: int) -> None:
    import tensorflow as tf

    if n > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def tiny_bn_model():
    import keras

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn", momentum=0.9, epsilon=1e-5)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="tiny_bn")


def api_run(strategy_name: str, loops: str = "fit") -> dict:
    """Trains the tiny model once per loop in ``loops`` (``fit``, ``custom``) under the strategy
    ``strategy_name``; returns the arrays that ``--out`` saves."""
    import keras
    import numpy as np

    from ardir_tf import data, distribute, methods

    strategy = distribute.make_strategy(strategy_name)  # first: a multi-worker strategy must precede other ops
    x, y = data.load_arrays("mnist5k", "train", examples=GLOBAL_BATCH * STEPS_PER_EPOCH * EPOCHS)
    x_val, y_val = data.load_arrays("mnist5k", "test", examples=24)  # batches of 16 and 8: a partial last batch
    out = {"replicas": np.array(strategy.num_replicas_in_sync)}
    for loop in loops.split(","):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            trainer = methods.PGDAT(tiny_bn_model(), epsilon=0.3, attack_steps=2, attack_step_size=0.1,
                                    random_start="none", eval_attack_steps=1, seed=0)
            assert distribute.synchronize_batch_norm(trainer) == 1
            trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        train = data.train_dataset(x, y, GLOBAL_BATCH, seed=0)
        val = data.eval_dataset(x_val, y_val, GLOBAL_BATCH)
        # Under multi_worker, trainer.fit runs custom_fit too: "custom" calls it explicitly everywhere.
        run = trainer.fit if loop == "fit" else lambda *a, **k: distribute.custom_fit(trainer, *a, **k)
        history = run(train, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, validation_data=val, verbose=0,
                      shuffle=False)
        for i, w in enumerate(trainer.student.get_weights()):
            out[f"{loop}/weight{i}"] = w
        out[f"{loop}/history"] = np.array(json.dumps(history.history))
        out[f"{loop}/iterations"] = np.array(int(trainer.optimizer.iterations.numpy()))
        seeds = strategy.experimental_local_results(strategy.run(trainer.step_seed))
        out[f"{loop}/seeds"] = np.stack([s.numpy() for s in seeds])
    return out


def cli(rest: list[str]) -> None:
    sys.argv = ["ardir_tf.train", *rest]
    runpy.run_module("ardir_tf.train", run_name="__main__", alter_sys=True)


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--loops", default="fit")
    parser.add_argument("--out")
    args, rest = parser.parse_known_args()
    configure_cpus(args.cpus)
    if args.out:
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
        np.savez(args.out.format(task=task), **api_run(args.strategy, args.loops))
    rest = [a for a in rest if a != "--"]
    if rest:
        cli(rest)


if __name__ == "__main__":
    main()
