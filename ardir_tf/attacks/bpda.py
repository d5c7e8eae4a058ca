"""BPDA: a white-box attack on a classifier that has no gradients, such as an int8 LiteRT or ONNX
file, through a differentiable stand-in (Backward Pass Differentiable Approximation; Athalye,
Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018).

The forward pass is the target's own computation: its logits ``z`` choose the direction and judge
success. The backward pass is the surrogate's (the float model, or a fake-quantized copy of it):
each step follows the gradient of the margin loss ``z_j - z_y`` (``j`` the target's strongest
wrong class) taken through the surrogate's Jacobian at the current image,

    g = J_s(x)^T (e_j - e_y),

then the norm's steepest-ascent step, projection on the ball and clipping to [0, 1]. The step size
starts at ``eps / 4`` (the evaluation protocol's PGD-20 step) and halves at 1/2 and 3/4 of the
steps. An example counts as broken as soon as the target misclassifies an iterate, and that
iterate is kept. Unlike a transferred attack, which stops where the *surrogate's* decision
boundary lies, this one keeps going until the *target's* decision changes; unlike a score-based
attack it does not stall where the target's quantized logits are flat.

Restarts: the first from the clean image, each further one from a uniform random point of the ball.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import primitives

STEPS = 100
RESTARTS = 2


def describe(norm: str, steps: int = STEPS, restarts: int = RESTARTS, seed: int = 0) -> dict:
    """The settings of a :class:`BPDA` attack, as recorded in reports and model cards."""
    return {"attack": "BPDA: margin loss of the target's logits, the surrogate's gradients", "norm": norm,
            "steps": int(steps), "restarts": int(restarts),
            "step_size": "eps/4, halved at 1/2 and 3/4 of the steps", "seed": int(seed)}


def _step_size(epsilon: float, step: int, steps: int) -> float:
    return epsilon / 4 / 2 ** ((step >= steps // 2) + (step >= 3 * steps // 4))


class BPDA:
    """BPDA attack on ``target`` with ``surrogate``'s gradients (see the module docstring).

    Args:
        target: ``images [B, H, W, C] float32 in [0, 1] -> logits [B, K]`` (NumPy in and out), e.g.
            :func:`export.runtimes.load` of a quantized file. Only its outputs are used.
        surrogate: a differentiable ``model(x, training=False) -> logits [B, K]`` (or a feature
            model's list, logits first) that approximates ``target``.
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart (the target is queried ``steps + 1`` times per restart
            and example still correct).
        restarts: runs per example; the first from the clean image, the others from uniform
            random starts.
        seed: seed of the random starts.
        batch_size: images per surrogate / target call.
    """

    def __init__(self, target: Callable[[np.ndarray], np.ndarray], surrogate: Callable, *, norm: str = "linf",
                 steps: int = STEPS, restarts: int = RESTARTS, seed: int = 0, batch_size: int = 256):
        primitives.check_norm(norm)
        if steps < 1 or restarts < 1:
            raise ValueError(f"BPDA needs steps >= 1 and restarts >= 1, got {steps} and {restarts}")
        self.target, self.surrogate, self.norm = target, surrogate, norm
        self.steps, self.restarts, self.seed, self.batch_size = int(steps), int(restarts), int(seed), int(batch_size)
        self._direction = primitives.BatchGeneric(self._ascent)

    def _ascent(self, x, weights):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.cast(primitives.logits_of(self.surrogate(x, training=False)), tf.float32)
            objective = tf.reduce_sum(logits * weights)
        return primitives.ascent_direction(tape.gradient(objective, x), self.norm)

    def settings(self) -> dict:
        return describe(self.norm, self.steps, self.restarts, self.seed)

    def __call__(self, x: np.ndarray, y: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
        """Attacks images ``x`` ``[N, H, W, C]`` (float32 in [0, 1]) with labels ``y`` ``[N]`` at
        radius ``epsilon``. Returns ``(x_adv, broken)``: ``x_adv`` ``[N, H, W, C]`` holds the first
        iterate the target misclassified (the clean image where none was found; also where the
        target misclassifies the clean image, which counts as broken), ``broken`` ``[N]`` bool."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y).astype(np.int64)
        x_adv, broken = x.copy(), np.zeros(len(x), bool)
        for i in range(0, len(x), self.batch_size):
            sl = slice(i, i + self.batch_size)
            x_adv[sl], broken[sl] = self._batch(x[sl], y[sl], float(epsilon))
        return x_adv, broken

    def _batch(self, x, y, epsilon):
        x_adv, broken = x.copy(), np.zeros(len(x), bool)
        eps = tf.constant(epsilon, tf.float32)
        for restart in range(self.restarts):
            idx = np.flatnonzero(~broken)
            if not len(idx):
                break
            current = x[idx]
            if restart:
                current = primitives.random_start(tf.constant(current), eps, self.norm, "uniform",
                                                  seed=tf.constant([self.seed, restart], tf.int64)).numpy()
            for step in range(self.steps + 1):
                logits = np.asarray(self.target(current), np.float32)
                wrong = logits.argmax(-1) != y[idx]
                x_adv[idx[wrong]], broken[idx[wrong]] = current[wrong], True
                idx, current, logits = idx[~wrong], current[~wrong], logits[~wrong]
                if step == self.steps or not len(idx):
                    break
                others = np.where(np.arange(logits.shape[-1]) == y[idx, None], -np.inf, logits)
                weights = (np.eye(logits.shape[-1], dtype=np.float32)[others.argmax(-1)]
                           - np.eye(logits.shape[-1], dtype=np.float32)[y[idx]])
                direction = self._direction(tf.constant(current), tf.constant(weights))
                moved = tf.constant(current) + _step_size(epsilon, step, self.steps) * direction
                current = primitives.project_to_threat(tf.constant(x[idx]), moved, eps, self.norm).numpy()
        return x_adv, broken
