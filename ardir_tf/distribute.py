"""The same trainers on several GPUs, hosts or TPU cores, through ``tf.distribute``.

``make_strategy(name)`` builds the strategy of ``--strategy``:

- ``default``: one device (TensorFlow's default strategy).
- ``mirrored``: ``MirroredStrategy`` over every local GPU (on a machine without GPUs, every
  logical CPU device: one unless the process configured more, as the tests do).
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the hosts named in ``TF_CONFIG``.
- ``tpu``: ``TPUStrategy`` on a TPU VM (``tpu_address`` empty) or the named / ``grpc://`` TPU.

Build the student, load the teacher, build and compile the trainer under ``strategy.scope()``,
then call ``trainer.fit`` (``AdversarialTrainer.fit`` picks the loop). Keras' ``fit`` runs where
it works; under ``MultiWorkerMirroredStrategy`` it does not (keras-team/keras#20585,
tensorflow/tensorflow#72388), and :func:`custom_fit` runs instead: the trainer's own
``train_step`` / ``test_step`` per replica through ``strategy.run``, driving the same callbacks, so
progress, logs, checkpoints and ``TerminateOnNaN`` behave as under ``fit``.

What makes N replicas equal to one device with the same global batch:

- ``--batch_size`` is the global batch; each replica gets ``batch_size / N`` examples
  (:func:`check_global_batch` insists that N divides it).
- ``AdversarialTrainer.train_step`` divides each replica's mean loss by N and the gradients are
  summed over replicas, which is the gradient of the global mean.
- Every replica runs PGD on its own shard (PGD is per example, so this is exact), with its own
  random-start noise (the replica id is folded into the stateless seed; see
  ``AdversarialTrainer.step_seed``). With a random start, N replicas therefore draw other noise than
  one device: the runs are equal in distribution, not bit for bit.
- Metrics are ``keras.metrics`` whose variables are summed over replicas when read, so logs are the
  global means.
- Batch norm in training mode normalises each replica's shard with the shard's statistics, unless
  it is synchronised (:func:`synchronize_batch_norm`, ``--sync_batch_norm``): then every replica
  uses the global batch's statistics, as one device would.

Under ``multi_worker`` only the chief (:func:`is_chief`) writes into the run's directory; the other
workers write the same files into a scratch directory (:func:`worker_dir`), as TensorFlow's
multi-worker guide advises: saving may read variables through collective operations that every
worker has to join. Every worker restores from the run's directory, so it must be on a file
system all workers see.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Any, Optional

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", tpu_address: str = "") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``name`` (one of :data:`STRATEGIES`).

    Cached: a process gets one instance per ``(name, tpu_address)``, because
    ``MultiWorkerMirroredStrategy`` and TPU initialisation must happen once, at start-up, before
    any other TensorFlow operation. Call it first (``ardir_tf.train.run`` does).

    Raises:
        ValueError: for an unknown name, or ``tpu`` without a reachable TPU.
    """
    return _make_strategy(str(name), str(tpu_address or ""))


@functools.lru_cache(maxsize=None)
def _make_strategy(name: str, tpu_address: str) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "local")
            if tpu_address:
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as err:
            where = f"at {tpu_address}" if tpu_address else "on this machine"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"no TPU found {where} ({first}); pass --tpu=NAME or grpc://HOST:PORT") from None
    raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")


def uses_fit(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``AdversarialTrainer.fit`` runs Keras' ``fit`` (``True``) or :func:`custom_fit` under ``strategy``.

    Keras 3 (checked up to 3.15.1) cannot ``fit`` under ``MultiWorkerMirroredStrategy``: its eager
    ``strategy.reduce`` of the first batch raises ``ValueError: Attempt to convert a value
    (PerReplica ...)`` (keras-team/keras#20585, tensorflow/tensorflow#72388), and with that step
    skipped its reduction of the scalar logs fails next (``strategy.reduce(MEAN, axis=0)`` on a
    scalar). Every other strategy uses ``fit``.
    """
    return not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process writes the run's files: always, except on non-chief workers of a
    multi-worker cluster (the chief is task ``chief``, or ``worker`` 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_dir(strategy: Optional[tf.distribute.Strategy], path: str) -> str:
    """``path`` on the chief; on another worker, a scratch copy of it in the temporary directory
    (``$TMPDIR/ardir_tf_worker_<type><id>/<absolute path>``) that the caller deletes when done."""
    if is_chief(strategy):
        return path
    resolver = strategy.cluster_resolver
    root = os.path.join(tempfile.gettempdir(), f"ardir_tf_worker_{resolver.task_type}{resolver.task_id}")
    return os.path.join(root, os.path.abspath(path).lstrip(os.sep))


def remove_worker_dir(strategy: Optional[tf.distribute.Strategy], path: str) -> None:
    """Deletes a non-chief worker's scratch copy of ``path`` (and its parents that became empty);
    does nothing on the chief."""
    if is_chief(strategy):
        return
    scratch = worker_dir(strategy, path)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        os.removedirs(os.path.dirname(scratch))
    except OSError:  # a parent still holds another run's files
        pass


def barrier(strategy: Optional[tf.distribute.Strategy] = None) -> None:
    """Waits until every worker has reached this call (a one-number all-reduce).

    For example after the chief saved a file that the other workers read next. A no-op with a
    single worker.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    @tf.function
    def all_reduce():
        ones = strategy.run(lambda: tf.ones([]))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    all_reduce()


def check_global_batch(strategy: tf.distribute.Strategy, batch_size: int) -> None:
    """Raises ``ValueError`` unless the replicas split the global ``batch_size`` evenly (the loss
    scaling in ``train_step`` is the global mean only for equal shards)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        lower = batch_size // replicas * replicas
        options = " or ".join(str(b) for b in (lower, lower + replicas) if b > 0)
        raise ValueError(f"--batch_size is the global batch and must be a multiple of the {replicas} replicas, "
                         f"got {batch_size}; use {options}")


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every ``BatchNormalization`` layer in ``model`` (nested models and a trainer's
    sub-models included) compute its training-mode statistics over the global batch: the
    per-replica sums are all-reduced (``synchronized=True``). Returns the number of layers.

    With one replica this changes nothing but the formula of the variance
    (``E[x^2] - E[x]^2``); the flag is saved with the model and is harmless outside a strategy.
    """
    seen: set[int] = set()
    count = 0

    def visit(layer: Any) -> None:
        nonlocal count
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
        for child in getattr(layer, "layers", None) or []:
            visit(child)

    visit(model)
    return count


# ------------------------------------------------------------------------------------ training
def custom_fit(
    trainer: keras.Model,
    dataset: tf.data.Dataset,
    *,
    epochs: int = 1,
    initial_epoch: int = 0,
    steps_per_epoch: Optional[int] = None,
    validation_data: Optional[tf.data.Dataset] = None,
    callbacks: Optional[list] = None,
    verbose: int = 1,
    shuffle: bool = False,
    **unsupported,
) -> keras.callbacks.History:
    """Keras' ``fit`` loop written with ``strategy.run``: works under every strategy, including
    ``MultiWorkerMirroredStrategy``.

    Each step is one ``tf.function`` that runs ``trainer.train_step`` on every replica's shard of
    the next global batch (``strategy.experimental_distribute_dataset``) and then reads the logs
    in cross-replica context: a key naming one of ``trainer.metrics`` is that metric's result over
    all replicas, any other key the mean of the replicas' values. After each epoch, as ``fit``
    does, the metrics are reset and ``validation_data`` is evaluated with ``test_step`` (logs
    prefixed ``val_``). The callbacks get the calls and the logs ``fit`` gives them, plus a progress
    bar when ``verbose`` is non-zero (1: bar, 2: one line per epoch) and a ``History``.

    Args:
        trainer: a compiled ``keras.Model`` built under its strategy's scope.
        dataset: ``tf.data.Dataset`` of global batches.
        epochs: index of the last epoch + 1, as in ``fit``.
        initial_epoch: first epoch (resuming).
        steps_per_epoch: steps per epoch; ``None`` runs each epoch until ``dataset`` ends.
        validation_data: ``tf.data.Dataset`` of batches evaluated after every epoch.
        callbacks: ``keras.callbacks.Callback`` instances, run as given (``AdversarialTrainer.fit``
            adds the trainer's own before it calls this loop).
        verbose: 0, 1 or 2 as in ``fit``.
        shuffle: ignored, as by ``fit`` for a dataset (shuffle in the pipeline).

    Returns:
        The ``History`` callback (also ``trainer.history``).

    Raises:
        ValueError: for ``fit`` arguments this loop does not take (``y``, ``batch_size``,
            ``validation_split``, ...): pass a ``tf.data.Dataset`` of global batches instead.
    """
    strategy = trainer.distribute_strategy
    given = sorted(name for name, value in unsupported.items() if value is not None)
    if given or not isinstance(dataset, tf.data.Dataset):
        what = f"no {', '.join(given)}" if given else f"not a {type(dataset).__name__}"
        raise ValueError(f"under {type(strategy).__name__} training runs ardir_tf.distribute.custom_fit, which takes "
                         f"a tf.data.Dataset of (images, labels) global batches and {what}")
    callbacks = list(callbacks or [])
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
        steps=steps_per_epoch, model=trainer,
    )
    if not trainer.optimizer.built:  # before the first step: optimizer variables are not created per replica
        with strategy.scope():
            trainer.optimizer.build(trainer.trainable_variables)
    train_function = _distributed_function(trainer, trainer.train_step)
    train_data = strategy.experimental_distribute_dataset(_shard_by_data(dataset))
    val_data = test_function = None
    if validation_data is not None:
        val_data = strategy.experimental_distribute_dataset(_shard_by_data(validation_data))
        test_function = _distributed_function(trainer, trainer.test_step)
    iterator = iter(train_data) if steps_per_epoch else None

    trainer.stop_training = False
    callback_list.on_train_begin()
    logs: dict = {}
    epoch_logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        trainer.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        batches = iterator if steps_per_epoch else iter(train_data)
        step = 0
        while steps_per_epoch is None or step < steps_per_epoch:
            try:
                batch = next(batches)
            except (StopIteration, tf.errors.OutOfRangeError):
                if steps_per_epoch:
                    raise ValueError(f"the training dataset ended after {step} steps of epoch {epoch}; "
                                     f"steps_per_epoch={steps_per_epoch} needs a repeated dataset") from None
                break
            callback_list.on_train_batch_begin(step)
            logs = train_function(batch)
            callback_list.on_train_batch_end(step, logs)
            step += 1
            if trainer.stop_training:
                break
        epoch_logs = dict(logs)
        if val_data is not None:
            val_logs = _evaluate(trainer, test_function, val_data, callback_list)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if trainer.stop_training:
            break
    if epochs > initial_epoch:
        trainer.optimizer.finalize_variable_values(trainer.trainable_weights)
    callback_list.on_train_end(epoch_logs)
    return trainer.history


def _evaluate(trainer: keras.Model, test_function, data, callback_list: keras.callbacks.CallbackList) -> dict:
    """``test_function`` over the distributed ``data`` with fresh metrics, as ``fit``'s validation."""
    trainer.reset_metrics()
    callback_list.on_test_begin()
    logs: dict = {}
    for step, batch in enumerate(data):
        callback_list.on_test_batch_begin(step)
        logs = test_function(batch)
        callback_list.on_test_batch_end(step, logs)
    callback_list.on_test_end(logs)
    return logs


def _distributed_function(trainer: keras.Model, step_function):
    """A ``tf.function`` of a distributed batch: ``step_function`` on every replica, then the
    global logs (see :func:`custom_fit`)."""
    strategy = trainer.distribute_strategy
    if trainer.jit_compile:
        step_function = tf.function(step_function, jit_compile=True, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def run(batch):
        per_replica = strategy.run(step_function, args=(batch,))
        metrics = {metric.name: metric for metric in trainer.metrics}
        logs = {}
        for name, value in per_replica.items():
            if name in metrics:
                # Read in cross-replica context, a metric's variables are summed over replicas.
                logs[name] = metrics[name].result()
            else:
                logs[name] = strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        return logs

    return run


def _shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # The pipelines read in-memory arrays, not files: shard by element without the AUTO policy's
    # failed attempt (and warning) to shard by file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def tf_config_for(ports: list[int], index: int, host: str = "127.0.0.1") -> str:
    """The ``TF_CONFIG`` value of worker ``index`` in a cluster of ``len(ports)`` workers on
    ``host`` (a helper for local tests and examples)."""
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
