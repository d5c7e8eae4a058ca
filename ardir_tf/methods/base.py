"""The shared trainer: a ``keras.Model`` that runs an attack inside ``train_step``.

Each method subclasses :class:`AdversarialTrainer` and supplies little more than its loss
(``method_loss``) and the inputs of its attack. The trainer updates only its own trainable
variables: the student's (and, for ARDIR, its connectors'); a teacher is frozen. Every loss
term is a metric, so ``fit`` shows them and callbacks see them, and the step is distribution-ready
(the loss is divided by the number of replicas, metrics aggregate across them).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from ardir_tf import distribute, losses
from ardir_tf.methods.attack_config import AttackConfig


class LossOutput(dict):
    """What ``method_loss`` returns: ``loss`` (scalar), ``terms`` (name -> scalar), and the
    student's ``natural_logits`` / ``adversarial_logits`` when it computed them (else ``None``)."""


class _EpochSync(keras.callbacks.Callback):
    """Keeps ``trainer.epoch`` equal to the epoch ``fit`` is in (IAD's schedule reads it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(epoch)


class AdversarialTrainer(keras.Model):
    """Base class of every training method.

    The training attack's settings become :attr:`attack` and the per-epoch check's
    :attr:`eval_attack`, two :class:`~ardir_tf.methods.attack_config.AttackConfig` validated once here.

    Args:
        student: the functional classifier being trained (``[B,H,W,C]`` in [0, 1] -> logits).
        epsilon: radius of the training attack's ball (L-inf: pixel units of [0, 1]).
        attack_steps: ``K``, the training attack's PGD steps.
        attack_step_size: ``eta``, the PGD step size.
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: ``"uniform"``, ``"normal"`` or ``"none"``; ``None`` takes the method's
            reference choice (``default_random_start``).
        attack_bn_training: call the student in training mode during the attack (updates BN
            statistics, as ARD/IAD reference code does). Default ``False``: inference mode.
        eval_attack_steps: PGD steps of ``test_step`` (default: ``attack_steps``).
        eval_attack_step_size: its step size (default: ``attack_step_size``).
        l2_weight_decay: coefficient ``wd`` of an L2 penalty ``wd/2 * sum ||w||^2`` over the
            trainable weights, whose gradient ``wd * w`` is PyTorch SGD's coupled weight decay.
            For decoupled decay, use the optimizer's own ``weight_decay`` instead.
        monitor_natural_accuracy: when the loss does not need ``S(x)``, run one extra
            inference-mode forward pass per step to report natural training accuracy.
        epsilon_warmup_steps: ramp the training attack's ``epsilon`` and step size linearly from
            0 to their values over this many optimizer steps (0: off). Adversarial training at a
            large radius (MNIST eps 0.3) can stall at chance level for epochs without it.
        seed: seed of the training attack's random start. The noise of step ``i`` is a stateless
            function of ``(seed, i)``, so a resumed run draws exactly the noise of an uninterrupted one.
    """

    #: names of the loss terms this method reports as metrics (besides ``loss``); each is reported
    #: as it enters the loss (with its weight and temperature factor), so they sum to ``loss``
    loss_terms: tuple[str, ...] = ()
    #: objective of the training attack (a name in :mod:`ardir_tf.attacks.objectives`)
    attack_objective: str = "ce"
    default_random_start: str = "uniform"
    #: whether this method trains on adversarial examples at all
    adversarial: bool = True
    #: the method's own settings: name in ``python -m ardir_tf.train``'s flags (and settings.json)
    #: -> argument of the constructor. The attack and optimizer settings are everyone's.
    SETTINGS: ClassVar[Mapping[str, str]] = {}
    #: settings that shape only the training attack (unused by a method without one)
    TRAINING_ATTACK_SETTINGS: ClassVar[tuple[str, ...]] = (
        "random_start", "attack_bn_training", "epsilon_warmup_epochs")

    def __init__(
        self,
        student: keras.Model,
        *,
        epsilon: float = 8 / 255,
        attack_steps: int = 10,
        attack_step_size: float = 2 / 255,
        norm: str = "linf",
        random_start: Optional[str] = None,
        attack_bn_training: bool = False,
        eval_attack_steps: Optional[int] = None,
        eval_attack_step_size: Optional[float] = None,
        l2_weight_decay: float = 0.0,
        monitor_natural_accuracy: bool = True,
        epsilon_warmup_steps: int = 0,
        seed: Optional[int] = None,
        name: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(name=name or type(self).__name__.lower(), **kwargs)
        self.attack = AttackConfig(
            epsilon, attack_step_size, attack_steps, norm, random_start or self.default_random_start,
            objective=self.attack_objective, bn_training=attack_bn_training,
        )
        if self.adversarial and self.attack.steps < 1:
            raise ValueError(f"attack_steps must be positive for {type(self).__name__}, got {attack_steps}")
        self.eval_attack = AttackConfig(
            epsilon, attack_step_size if eval_attack_step_size is None else eval_attack_step_size,
            attack_steps if eval_attack_steps is None else eval_attack_steps, norm, "uniform",
        )
        if l2_weight_decay < 0:
            raise ValueError(f"l2_weight_decay must be >= 0, got {l2_weight_decay}")
        self.student = student
        self.l2_weight_decay = float(l2_weight_decay)
        self.monitor_natural_accuracy = bool(monitor_natural_accuracy)
        if epsilon_warmup_steps < 0:
            raise ValueError(f"epsilon_warmup_steps must be >= 0, got {epsilon_warmup_steps}")
        self.epsilon_warmup_steps = int(epsilon_warmup_steps)
        self.seed = int(seed) if seed is not None else int(np.random.randint(0, 2**31 - 1))
        self.seed_generator = keras.random.SeedGenerator(self.seed)  # evaluation noise only
        self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="epoch")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss",) + tuple(self.loss_terms)}
        self.natural_accuracy = keras.metrics.SparseCategoricalAccuracy(name="natural_accuracy")
        self.adversarial_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adversarial_accuracy")
        self.built = True  # every sub-model is a built functional model; nothing is created lazily

    @classmethod
    def settings_for(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """The method's settings (see :attr:`SETTINGS`) given the values of all settings
        (ARDIR's depend on its ``ardir_base``)."""
        return dict(cls.SETTINGS)

    # ----------------------------------------------------------------- what a method overrides
    def prepare(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, Any]:
        """Forward passes needed before the attack and outside the tape (teacher outputs,
        reference logits). Returns a context dict handed to the attack and the loss."""
        return {}

    def attack_model(self):
        """The callable the training attack differentiates (the student by default)."""
        return self.student

    def attack_reference(self, context: dict[str, Any]) -> Any:
        """The ``reference`` argument of the training attack's objective."""
        return None

    def adversarial_examples(self, x: tf.Tensor, y: tf.Tensor, context: dict[str, Any]) -> Optional[tf.Tensor]:
        """``x'`` for this batch by the method's PGD (``None`` for non-adversarial methods)."""
        if not self.adversarial:
            return None
        return self.attack(self.attack_model(), x, y, reference=self.attack_reference(context), seed=self.step_seed(),
                           scale=self.warmup_fraction())

    def step_seed(self) -> tf.Tensor:
        """Stateless seed ``[seed, optimizer step]`` of this step's attack noise.

        Under ``N > 1`` replicas in sync, the replica's id is folded in: each replica attacks its own
        shard of the global batch, and with one seed every shard would start from the same noise
        pattern. So ``N`` replicas draw other (independent) noise than one device does: equal in
        distribution, not bit for bit (``random_start="none"`` makes them equal to float tolerance).
        """
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self._step(), tf.int64)])
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
        return seed

    def _step(self):
        optimizer = getattr(self, "optimizer", None)
        return optimizer.iterations if optimizer is not None else tf.constant(0, tf.int64)

    def warmup_fraction(self):
        """``min(1, (step + 1) / epsilon_warmup_steps)`` (a tensor), or 1.0 without warm-up."""
        if not self.epsilon_warmup_steps:
            return 1.0
        step = tf.cast(self._step() + 1, tf.float32)
        return tf.minimum(1.0, step / float(self.epsilon_warmup_steps))

    def method_loss(self, x: tf.Tensor, y: tf.Tensor, x_adv: Optional[tf.Tensor], context: dict[str, Any]) -> LossOutput:
        """The method's loss, computed under the tape with the student in training mode."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- Keras plumbing
    def call(self, x, training=False):
        return self.student(x, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values()) + [self.natural_accuracy, self.adversarial_accuracy]

    def compile(self, optimizer="sgd", jit_compile=False, **kwargs):
        """Like ``keras.Model.compile`` with no loss argument (the method defines it).

        ``jit_compile`` defaults to ``False``: XLA measured slower than TF's oneDNN kernels for
        these steps on CPU (see BUILD.md); pass ``True`` to try it on a GPU/TPU.
        """
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def fit(self, *args, callbacks=None, shuffle=False, **kwargs):
        """``keras.Model.fit``; under a strategy whose ``fit`` Keras cannot run
        (``MultiWorkerMirroredStrategy``), :func:`ardir_tf.distribute.custom_fit`, which takes a
        ``tf.data.Dataset`` of global batches and the same callbacks. ``shuffle`` defaults to
        ``False``: a ``tf.data`` pipeline shuffles itself (``ardir_tf.data``), and Keras warns
        about ``shuffle=True`` with one."""
        kwargs["shuffle"] = shuffle
        callbacks = list(callbacks or [])
        if not any(isinstance(c, _EpochSync) for c in callbacks):
            callbacks.append(_EpochSync())
        if not distribute.uses_fit(self.distribute_strategy):
            return distribute.custom_fit(self, *args, callbacks=callbacks, **kwargs)
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _penalty(self) -> tf.Tensor:
        if not self.l2_weight_decay:
            return tf.constant(0.0)
        return 0.5 * self.l2_weight_decay * tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(w, tf.float32))) for w in self.trainable_weights]
        )

    def train_step(self, data):
        x, y = data[0], data[1]
        x = tf.cast(x, tf.float32)
        context = self.prepare(x, y)
        x_adv = self.adversarial_examples(x, y, context)
        with tf.GradientTape() as tape:
            out = self.method_loss(x, y, x_adv, context)
            loss = out["loss"] + self._penalty()
            # Gradients are summed over replicas: scale so the update is that of the global mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / tf.cast(replicas, loss.dtype))
        weights = self.trainable_weights
        grads = tape.gradient(scaled, weights)
        self.optimizer.apply(grads, weights)

        self._trackers["loss"].update_state(loss)
        for name, value in out["terms"].items():
            self._trackers[name].update_state(value)
        natural = out.get("natural_logits")
        if natural is None and self.monitor_natural_accuracy:
            natural = self.student(x, training=False)
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        if natural is not None:
            self.natural_accuracy.update_state(y, tf.cast(natural, tf.float32))
            logs["natural_accuracy"] = self.natural_accuracy.result()
        if out.get("adversarial_logits") is not None:
            self.adversarial_accuracy.update_state(y, tf.cast(out["adversarial_logits"], tf.float32))
            logs["adversarial_accuracy"] = self.adversarial_accuracy.result()
        return logs

    def test_step(self, data):
        """Natural accuracy and PGD accuracy (``ce``, uniform start, inference mode) on held-out data."""
        x, y = data[0], data[1]
        x = tf.cast(x, tf.float32)
        natural = self.student(x, training=False)
        x_adv = self.eval_attack(self.student, x, y, seed=self.seed_generator)
        adversarial = self.student(x_adv, training=False)
        # Per example: the mean stays exact when replicas get unequal (or empty) shards of a last batch.
        self._trackers["loss"].update_state(losses.cross_entropy_per_example(y, adversarial))
        self.natural_accuracy.update_state(y, tf.cast(natural, tf.float32))
        self.adversarial_accuracy.update_state(y, tf.cast(adversarial, tf.float32))
        return {
            "loss": self._trackers["loss"].result(),
            "natural_accuracy": self.natural_accuracy.result(),
            "adversarial_accuracy": self.adversarial_accuracy.result(),
        }

    def get_config(self):
        # Trainers are not saved as models: save ``trainer.student`` (see ardir_tf.train).
        raise NotImplementedError(
            f"{type(self).__name__} wraps a student for training and is not saved itself; "
            "save trainer.student (keras.Model.save) instead"
        )

