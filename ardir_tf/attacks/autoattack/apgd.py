"""Auto-PGD (APGD, Croce & Hein, ICML 2020), vectorised over the batch and compiled with ``tf.function``.

The algorithm, as in the paper (Algorithm 1), for each example independently:

* ``x^0`` a random point of the ball (:func:`ardir_tf.attacks.primitives.random_start`; L2: on the
  sphere), step size ``eta^0 = 2 eps``.
* ``x^1 = P(x^0 + eta^0 * dir(grad f(x^0)))`` (no momentum on the first step), then for ``k >= 1``::

      z^{k+1} = P(x^k + eta^k * dir(grad f(x^k)))
      x^{k+1} = P(x^k + alpha (z^{k+1} - x^k) + (1 - alpha)(x^k - x^{k-1})),   alpha = 0.75

  where ``dir`` is ``sign`` (L-inf) or ``g / ||g||_2`` (L2) and ``P`` the projection onto the ball
  intersected with [0, 1].
* ``f_max`` / ``x_max``: the best loss value and point seen so far.
* At the checkpoints ``w_j = ceil(p_j N)`` (``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; for N = 100: 22, 41, 57, 70, 80, 87, 93, 99) the
  step size is halved, and the iterate restarts from ``x_max`` (with its gradient), when

  1. fewer than ``rho = 0.75`` of the steps since the previous checkpoint increased the loss
     (``sum_{i=w_{j-1}}^{w_j - 1} [f(x^{i+1}) > f(x^i)] < rho (w_j - w_{j-1})``), or
  2. neither the step size nor ``f_max`` changed since the previous checkpoint.

  After a restart, the next loss comparison and momentum term use the restored point.

Every iterate is checked: an example counts as broken as soon as one iterate is misclassified,
and the first misclassified iterate is returned for it (the point of largest loss otherwise). The
loop stops early once every example of the batch is broken.

Losses: ``ce`` (APGD-CE), ``dlr`` and ``dlr_targeted`` (APGD-T; :mod:`.losses`).
"""

from __future__ import annotations

import fractions
import math
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import primitives
from ardir_tf.attacks.autoattack import losses as losses_lib

#: the paper's constants
P1 = fractions.Fraction(22, 100)
P_DECREASE = fractions.Fraction(3, 100)
P_MIN_INTERVAL = fractions.Fraction(6, 100)
RHO = 0.75
MOMENTUM = 0.75
INITIAL_STEP = 2.0  # eta^0 = 2 * eps


def checkpoints(steps: int) -> list[int]:
    """The checkpoint iterations ``w_0 = 0 < w_1 < ... <= steps`` of an ``steps``-iteration run.

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (exact rational arithmetic, so that
    ``0.22 * 100`` is 22 and not 23).
    """
    if steps < 1:
        raise ValueError(f"APGD needs at least 1 iteration, got {steps}")
    ps = [fractions.Fraction(0), P1]
    while True:
        nxt = ps[-1] + max(ps[-1] - ps[-2] - P_DECREASE, P_MIN_INTERVAL)
        if nxt > 1:
            break
        ps.append(nxt)
    out = []
    for p in ps:
        w = math.ceil(p * steps)
        if w <= steps and (not out or w > out[-1]):
            out.append(w)
    return out


def halve_step(
    increases: tf.Tensor, interval: tf.Tensor, reduced_at_last: tf.Tensor, best_at_last: tf.Tensor,
    best_now: tf.Tensor, rho: float = RHO,
) -> tf.Tensor:
    """APGD's checkpoint rule: ``True`` where the step size is halved (and the iterate restarted).

    Args:
        increases: ``[B]`` number of steps since the previous checkpoint that increased the loss.
        interval: the number of steps since the previous checkpoint, ``w_j - w_{j-1}``.
        reduced_at_last: ``[B]`` bool, whether the step was halved at the previous checkpoint.
        best_at_last: ``[B]`` ``f_max`` at the previous checkpoint.
        best_now: ``[B]`` ``f_max`` now.
    """
    condition1 = tf.cast(increases, tf.float32) < rho * tf.cast(interval, tf.float32)
    condition2 = tf.logical_and(tf.logical_not(reduced_at_last), best_now <= best_at_last)
    return tf.logical_or(condition1, condition2)


class APGD:
    """APGD on a Keras classifier, compiled once and reused across batches, radii and targets.

    Args:
        model: callable ``model(x, training=False) -> logits``; inputs are [0, 1] pixels.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"``, ``"dlr"`` or ``"dlr_targeted"`` (the latter needs ``target`` at call time).
        steps: iterations ``N`` (100 in AutoAttack).
        rho, momentum: the paper's ``rho`` and ``alpha`` (0.75 each).
        eot_samples: model calls averaged per gradient (1; 20 in AutoAttack "rand").
        seed: seed of the random starts.
    """

    def __init__(self, model: Callable, *, norm: str = "linf", loss: str = "ce", steps: int = 100,
                 rho: float = RHO, momentum: float = MOMENTUM, eot_samples: int = 1, seed: Optional[int] = 0):
        primitives.check_norm(norm)
        if loss not in losses_lib.LOSSES:
            raise ValueError(f"unknown APGD loss {loss!r}; use one of {sorted(losses_lib.LOSSES)}")
        self.model, self.norm, self.loss_name, self.steps = model, norm, loss, int(steps)
        self.loss_fn = losses_lib.LOSSES[loss]
        self.rho, self.momentum = float(rho), float(momentum)
        if int(eot_samples) < 1:
            raise ValueError(f"eot_samples must be at least 1, got {eot_samples}")
        self.eot_samples = int(eot_samples)
        marks = checkpoints(self.steps)
        interval = np.zeros(self.steps + 1, np.int32)
        for prev, cur in zip(marks[:-1], marks[1:]):
            interval[cur] = cur - prev
        self._interval = tf.constant(interval)
        self.rng = tf.random.Generator.from_seed(0 if seed is None else int(seed))
        self._compiled = primitives.BatchGeneric(self._run)

    def __call__(self, x, y, epsilon: float, target=None):
        """Attacks a batch. Returns ``(x_adv, broken)``: ``[B, ...]`` float32 points of the ball and
        ``[B]`` bool, ``True`` where ``x_adv`` is misclassified."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.convert_to_tensor(y), tf.int32)
        target = tf.zeros_like(y) if target is None else tf.cast(tf.convert_to_tensor(target), tf.int32)
        x_adv, broken, step = self._compiled(x, y, target, tf.constant(epsilon, tf.float32))
        self.last_step_size = step.numpy()  # [B] final step sizes (for tests and diagnostics)
        return x_adv.numpy(), broken.numpy()

    def _loss_grad(self, x, y, target):
        """Loss ``[B]``, its input gradient and the predictions at ``x``. With ``eot_samples`` > 1
        the gradient is the mean over that many model calls (expectation over transformation, for
        randomised models); loss and predictions are those of the last call, as in the reference."""
        def sample():
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = self.model(x, training=False)
                loss = self.loss_fn(logits, y, target)
                total = tf.reduce_sum(loss)
            grad = tape.gradient(total, x)
            return tf.cast(loss, tf.float32), tf.cast(grad, tf.float32), primitives.predictions(logits)

        loss, grad, pred = sample()
        if self.eot_samples == 1:
            return loss, grad, pred

        def body(i, grad_sum, loss, pred):
            loss, grad, pred = sample()
            return i + 1, grad_sum + grad, loss, pred

        _, grad_sum, loss, pred = tf.while_loop(lambda i, *_: i < self.eot_samples, body,
                                                (tf.constant(1), grad, loss, pred), parallel_iterations=1)
        return loss, grad_sum / float(self.eot_samples), pred

    def _run(self, x, y, target, eps):
        norm = self.norm

        def where(mask, a, b):
            return tf.where(primitives.expand(mask, a) if a.shape.rank > 1 else mask, a, b)

        x0 = primitives.random_start(x, eps, norm, "uniform", self.rng, l2_radius="sphere")
        loss0, grad0, pred0 = self._loss_grad(x0, y, target)
        broken0 = tf.not_equal(pred0, y)
        batch = tf.shape(x)[0]
        step0 = tf.fill([batch], INITIAL_STEP) * eps
        zeros_i = tf.zeros([batch], tf.int32)
        state = dict(
            k=tf.constant(1), x_cur=x0, x_prev=x0, grad=grad0, loss=loss0,
            x_best=x0, grad_best=grad0, loss_best=loss0, step=step0, increases=zeros_i,
            best_at_last=loss0, reduced_at_last=tf.zeros([batch], tf.bool), x_adv=x0, broken=broken0,
        )

        def cond(s):
            return tf.logical_and(s["k"] <= self.steps, tf.logical_not(tf.reduce_all(s["broken"])))

        def body(s):
            k = s["k"]
            alpha = tf.where(k == 1, 1.0, self.momentum)
            step = primitives.expand(s["step"], x)
            z = primitives.project_to_threat(
                x, s["x_cur"] + step * primitives.ascent_direction(s["grad"], norm), eps, norm)
            x_new = primitives.project_to_threat(
                x, s["x_cur"] + alpha * (z - s["x_cur"]) + (1.0 - alpha) * (s["x_cur"] - s["x_prev"]), eps, norm)
            loss, grad, pred = self._loss_grad(x_new, y, target)
            newly = tf.logical_and(tf.not_equal(pred, y), tf.logical_not(s["broken"]))
            x_adv = where(newly, x_new, s["x_adv"])
            broken = tf.logical_or(s["broken"], newly)
            increases = s["increases"] + tf.cast(loss > s["loss"], tf.int32)
            improved = loss > s["loss_best"]
            x_best = where(improved, x_new, s["x_best"])
            grad_best = where(improved, grad, s["grad_best"])
            loss_best = tf.where(improved, loss, s["loss_best"])

            interval = self._interval[k]
            at_check = interval > 0
            halve = tf.logical_and(at_check, halve_step(
                increases, interval, s["reduced_at_last"], s["best_at_last"], loss_best, self.rho))
            return (dict(
                k=k + 1, x_prev=s["x_cur"], step=tf.where(halve, s["step"] / 2.0, s["step"]),
                x_cur=where(halve, x_best, x_new), grad=where(halve, grad_best, grad),
                loss=tf.where(halve, loss_best, loss),
                x_best=x_best, grad_best=grad_best, loss_best=loss_best,
                increases=tf.where(at_check, tf.zeros_like(increases), increases),
                best_at_last=tf.where(at_check, loss_best, s["best_at_last"]),
                reduced_at_last=tf.where(at_check, halve, s["reduced_at_last"]),
                x_adv=x_adv, broken=broken,
            ),)

        (final,) = tf.while_loop(cond, body, (state,), parallel_iterations=1)
        x_adv = where(final["broken"], final["x_adv"], final["x_best"])
        return tf.stop_gradient(x_adv), final["broken"], final["step"]
