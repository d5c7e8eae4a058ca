"""The FAB attack, targeted (FAB-T) and untargeted (Croce & Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020), vectorised over the batch and compiled
with ``tf.function``.

FAB looks for the adversarial example of smallest norm. For the targeted version, with ``y`` the
true class and ``t`` the target, each iteration linearises ``f = z_t - z_y`` at the current iterate
``x^i`` (one forward and backward pass) and uses the hyperplane
``pi = {z : f(x^i) + <grad f(x^i), z - x^i> = 0}`` (untargeted: the ``z_j - z_y`` whose hyperplane
is nearest, see :class:`FAB`)::

    delta   = proj_p(x^i,    pi, box) - x^i        (smallest step onto pi that stays in [0, 1])
    delta_o = proj_p(x_orig, pi, box) - x_orig
    alpha   = min(||delta||_p / (||delta||_p + ||delta_o||_p), alpha_max)
    x^{i+1} = clip((1 - alpha)(x^i + eta delta) + alpha (x_orig + eta delta_o), 0, 1)

and when ``x^{i+1}`` is misclassified it is kept if it is the closest adversarial so far, and the
iterate moves back towards the original: ``x^{i+1} = (1 - beta) x_orig + beta x^{i+1}``.
Constants: ``alpha_max = 0.1``, ``eta = 1.05``, ``beta = 0.9``, 100 iterations, starting at the
natural image; a restart starts at a random point of half the radius (AutoAttack "standard" runs
FAB-T once per target, "plus" runs FAB and FAB-T 5 times).

The projection onto a hyperplane intersected with the box is exact (:func:`project_hyperplane_box`).
For evaluation at a radius ``eps``, the closest adversarial found is projected onto the
``eps``-ball and the example counts as broken if that point is misclassified; an example stops
being iterated once an adversarial within ``eps`` is found, and the loop stops when all are.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from ardir_tf.attacks import primitives

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9


def project_hyperplane_box(w: tf.Tensor, c: tf.Tensor, lower: tf.Tensor, upper: tf.Tensor, norm: str) -> tf.Tensor:
    """Smallest-norm ``delta`` with ``<w, delta> = c`` and ``lower <= delta <= upper``, per example.

    Args:
        w: ``[B, d]`` hyperplane normals.
        c: ``[B]`` required values of ``<w, delta>``.
        lower, upper: ``[B, d]`` box bounds with ``lower <= 0 <= upper`` (``-x`` and ``1 - x``).
        norm: ``"linf"`` or ``"l2"``: the norm minimised.

    Returns:
        ``[B, d]``. When no point of the box reaches ``c``, the box point that gets closest.

    With ``s = sign(c)``, every optimal ``delta`` moves each coordinate towards ``s * sign(w_i)``
    until it hits its bound ``cap_i``: L-inf ``delta_i = s sign(w_i) min(tau, cap_i)``, L2
    ``delta_i = s w_i min(lam, cap_i / |w_i|)``. So ``<w, delta> = |c|`` reads
    ``sum_i a_i min(t, b_i) = |c|`` (L-inf: ``a = |w|, b = cap``; L2: ``a = w^2, b = cap / |w|``), a
    piecewise-linear increasing function of the scalar ``t``, solved exactly after sorting ``b``.
    """
    sign_c = tf.sign(c)
    ws = w * sign_c[:, None]                       # now <ws, delta> must equal |c| >= 0
    cap = tf.where(ws > 0, upper, -lower)           # room in the direction of ws, >= 0
    abs_w = tf.abs(ws)
    nonzero = abs_w > 0
    if norm == "linf":
        a, b = abs_w, tf.where(nonzero, cap, tf.zeros_like(cap))
    else:
        a = tf.square(ws)
        b = tf.where(nonzero, cap / tf.where(nonzero, abs_w, tf.ones_like(abs_w)), tf.zeros_like(cap))
    target = tf.abs(c)
    order = tf.argsort(b, axis=-1)
    b_sorted = tf.gather(b, order, batch_dims=1)
    a_sorted = tf.gather(a, order, batch_dims=1)
    cum_ab = tf.cumsum(a_sorted * b_sorted, axis=-1)                    # sum over j <= k of a_j b_j
    rest_a = tf.reduce_sum(a_sorted, axis=-1, keepdims=True) - tf.cumsum(a_sorted, axis=-1)  # sum j > k
    h_at_b = cum_ab + b_sorted * rest_a                                 # h(b_k), non-decreasing in k
    below = tf.reduce_sum(tf.cast(h_at_b < target[:, None], tf.int32), axis=-1)  # segments passed
    d = tf.shape(b)[1]
    zero = tf.zeros_like(cum_ab[:, :1])
    cum_ab0 = tf.concat([zero, cum_ab], axis=-1)                        # value before index k
    rest_a0 = tf.concat([tf.reduce_sum(a_sorted, axis=-1, keepdims=True), rest_a], axis=-1)
    idx = tf.minimum(below, d - 1)[:, None]
    c_prev = tf.gather(cum_ab0, idx, batch_dims=1)[:, 0]
    a_rest = tf.gather(rest_a0, idx, batch_dims=1)[:, 0]
    t = (target - c_prev) / tf.maximum(a_rest, 1e-30)
    t = tf.where(below >= d, b_sorted[:, -1], t)                       # infeasible: go to the box corner
    t = tf.maximum(t, 0.0)
    if norm == "linf":
        delta = tf.sign(ws) * tf.minimum(t[:, None], cap)
    else:
        delta = ws * tf.minimum(t[:, None], b)
    return tf.where(target[:, None] > 0, delta, tf.zeros_like(delta))


class FAB:
    """FAB on a Keras classifier, compiled once and reused across batches, radii and targets.

    Targeted (FAB-T, ``targeted=True``): each iteration linearises ``z_t - z_y`` for the target
    ``t`` given at call time. Untargeted (FAB, AutoAttack "plus"): each iteration linearises every
    ``z_j - z_y`` (``j != y``; one Jacobian) and takes the hyperplane nearest to the iterate,
    ``argmin_j |f_j| / ||grad f_j||_q`` with ``q`` the dual norm (L-inf: L1; L2: L2).

    A restart (``random_start=True`` at call time) starts from ``x + eps / 2 * t / ||t||`` with
    ``t`` uniform in ``[-1, 1]`` per pixel (L-inf, scaled so that ``||t||_inf = 1``) or normal (L2)
    instead of from ``x``, clipped to [0, 1] (the reference implementation's restart).

    Args:
        model: callable ``model(x, training=False) -> logits``.
        norm: ``"linf"`` or ``"l2"``.
        targeted: FAB-T (``True``) or untargeted FAB.
        steps: iterations (100 in AutoAttack).
        alpha_max, eta, beta: the paper's constants.
        seed: seed of the random restarts.
    """

    def __init__(self, model: Callable, *, norm: str = "linf", targeted: bool = True, steps: int = 100,
                 alpha_max: float = ALPHA_MAX, eta: float = ETA, beta: float = BETA, seed: Optional[int] = 0):
        primitives.check_norm(norm)
        self.model, self.norm, self.targeted, self.steps = model, norm, bool(targeted), int(steps)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.rng = tf.random.Generator.from_seed(0 if seed is None else int(seed))
        self._compiled = primitives.BatchGeneric(self._run)

    def __call__(self, x, y, epsilon: float, target=None, *, random_start: bool = False):
        """Attacks a batch (towards ``target`` ``[B]`` when targeted). Returns ``(x_adv, broken)``
        like APGD. ``random_start``: start from a random point (a restart) instead of ``x``."""
        if self.targeted and target is None:
            raise ValueError("targeted FAB needs a target class per example")
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.convert_to_tensor(y), tf.int32)
        target = tf.zeros_like(y) if target is None else tf.cast(tf.convert_to_tensor(target), tf.int32)
        x_adv, broken = self._compiled(x, y, target, tf.constant(epsilon, tf.float32), tf.constant(bool(random_start)))
        return x_adv.numpy(), broken.numpy()

    def _linearise(self, x, y, target):
        """``f`` ``[B]`` and its input gradient ``[B, ...]``: ``f = z_t - z_y`` (targeted), or the
        ``z_j - z_y`` whose hyperplane is nearest (untargeted)."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.cast(self.model(x, training=False), tf.float32)
            num = tf.shape(logits)[-1]
            if self.targeted:
                f = tf.reduce_sum((tf.one_hot(target, num) - tf.one_hot(y, num)) * logits, axis=-1)
                total = tf.reduce_sum(f)
        if self.targeted:
            grad = tape.gradient(total, x)
        else:
            jac = tape.batch_jacobian(logits, x)                                  # [B, C, ...]
            batch = tf.shape(x)[0]
            jac = tf.reshape(jac, [batch, num, -1])                               # [B, C, d]
            onehot = tf.one_hot(y, num)
            f_all = logits - tf.reduce_sum(onehot * logits, axis=-1, keepdims=True)         # z_j - z_y
            g_all = jac - tf.reduce_sum(onehot[:, :, None] * jac, axis=1, keepdims=True)
            g_all = tf.where(tf.math.is_finite(g_all), g_all, tf.zeros_like(g_all))
            dual = tf.reduce_sum(tf.abs(g_all), -1) if self.norm == "linf" else tf.norm(g_all, axis=-1)
            dist = tf.where(onehot > 0, float("inf"), tf.abs(f_all) / (dual + 1e-12))
            nearest = tf.argmin(dist, axis=-1, output_type=tf.int32)
            f = tf.gather(f_all, nearest, batch_dims=1)
            grad = tf.reshape(tf.gather(g_all, nearest, batch_dims=1), tf.shape(x))
        grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
        return f, grad

    def _restart_point(self, x, eps):
        if self.norm == "linf":
            t = primitives.random("uniform", tf.shape(x), self.rng, minval=-1.0, maxval=1.0)
        else:
            t = primitives.random("normal", tf.shape(x), self.rng)
        scale = 0.5 * eps / tf.maximum(primitives.per_example_norm(t, self.norm), 1e-12)
        return tf.clip_by_value(x + primitives.expand(scale, t) * t, 0.0, 1.0)

    def _run(self, x, y, target, eps, random_start):
        norm = self.norm
        batch = tf.shape(x)[0]
        flat = lambda t: tf.reshape(t, [batch, -1])  # noqa: E731
        x_flat = flat(x)

        def predicted(points):
            return primitives.predictions(self.model(points, training=False))

        best_norm0 = tf.fill([batch], float("inf"))

        def cond(k, x_cur, x_best, best_norm):
            return tf.logical_and(k < self.steps, tf.logical_not(tf.reduce_all(best_norm <= eps)))

        def body(k, x_cur, x_best, best_norm):
            f, grad = self._linearise(x_cur, y, target)
            w = flat(grad)
            cur = flat(x_cur)
            delta = project_hyperplane_box(w, -f, -cur, 1.0 - cur, norm)
            c_orig = -f - tf.reduce_sum(w * (x_flat - cur), axis=-1)
            delta_o = project_hyperplane_box(w, c_orig, -x_flat, 1.0 - x_flat, norm)
            n_d = primitives.per_example_norm(delta, norm)
            n_o = primitives.per_example_norm(delta_o, norm)
            alpha = tf.minimum(tf.math.divide_no_nan(n_d, n_d + n_o), self.alpha_max)[:, None]
            nxt = tf.clip_by_value(
                (1.0 - alpha) * (cur + self.eta * delta) + alpha * (x_flat + self.eta * delta_o), 0.0, 1.0)
            x_next = tf.reshape(nxt, tf.shape(x))
            adversarial = tf.not_equal(predicted(x_next), y)
            dist = primitives.per_example_norm(nxt - x_flat, norm)
            better = tf.logical_and(adversarial, dist < best_norm)
            x_best = tf.where(primitives.expand(better, x), x_next, x_best)
            best_norm = tf.where(better, dist, best_norm)
            x_next = tf.where(primitives.expand(adversarial, x), (1.0 - self.beta) * x + self.beta * x_next, x_next)
            return k + 1, x_next, x_best, best_norm

        x_start = tf.cond(random_start, lambda: self._restart_point(x, eps), lambda: x)
        _, _, x_best, _ = tf.while_loop(cond, body, (tf.constant(0), x_start, x, best_norm0), parallel_iterations=1)
        x_adv = primitives.project_to_threat(x, x_best, eps, norm)
        broken = tf.not_equal(predicted(x_adv), y)
        return tf.stop_gradient(x_adv), broken


class FABTargeted(FAB):
    """FAB-T (:class:`FAB` with ``targeted=True``), AutoAttack "standard"'s member."""

    def __init__(self, model: Callable, **kwargs):
        super().__init__(model, targeted=True, **kwargs)
