"""Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based random search,
L-inf and L2, vectorised over the batch and compiled with ``tf.function``.

It minimises the margin ``z_y - max_{i != y} z_i`` (:func:`ardir_tf.attacks.primitives.margin`)
using only the model's outputs: each query proposes a change of the current perturbation inside a random square window
and keeps it if the margin decreases (with ``accept_ties``: if it does not increase). An example is
broken as soon as its margin is negative.

Ties: the paper and the reference keep a proposal only if the margin strictly decreases. On a
quantized model (an int8 LiteRT or ONNX file) the logits move in steps of the output's
quantization scale, so most small proposals leave the margin exactly unchanged and would all be
rejected: the search stalls on the plateau and the model only looks robust. ``accept_ties=True``
keeps such proposals too, so the search walks across plateaus (on a float model ties are rare and
it changes little).

Window size: at query ``i`` of ``N`` a fraction ``p_i`` of the pixels is changed, with
``p_i = p_init / 2^m`` where ``m`` counts the thresholds ``{10, 50, 200, 500, 1000, 2000, 4000,
6000, 8000}`` below ``i * 10000 / N`` (the paper's halving schedule, written for 10,000 queries and
rescaled to ``N``); the side is ``h_i = round(sqrt(p_i * H * W))`` clipped to ``[1, min(H, W) - 1]``
(L2: at least 3). AutoAttack: ``p_init = 0.8``, 5,000 queries (the initial point is the first).

L-inf (paper, Algorithm 2): start from vertical stripes ``x + eps * s[w, c]``, ``s`` uniform in
{-1, 1} per column and channel; a proposal sets the whole window of channel ``c`` to
``x + eps * s_c`` with ``s_c`` uniform in {-1, 1}. A proposal that would not change the image
(the window already holds those values) is replaced by its sign flip, so no query is wasted (the
reference resamples instead).

L2 (paper, Algorithm 3): start from a grid of ``H // 5``-sized tiles, each the single-sign pulse
``eta^{(s, s)}`` (below) times a random sign per channel, scaled to ``||delta||_2 = eps``. A
proposal takes two windows ``W1``, ``W2`` of side ``h``, and for each channel ``c`` moves the mass of
``W1 u W2`` plus an equal share ``(eps^2 - ||delta||^2) / C`` of the unused budget into ``W1``::

    tmp = rho_c eta* + delta_{W1,c} / ||delta_{W1,c}||_2,   rho_c uniform in {-1, 1}
    delta_{W2,c} = 0;  delta_{W1,c} = tmp / ||tmp||_2 * sqrt(||delta_{W1 u W2,c}||^2 + (eps^2 - ||delta||^2) / C)

where ``eta*`` is the unit-norm two-signed pulse ``(eta^{(h, k)}, -eta^{(h, h - k)})``,
``k = floor(h / 2)``, transposed with probability 1/2, and
``eta^{(h1, h2)}_{r, s} = sum_{j=0}^{M(r, s)} 1 / (n + 1 - j)^2``, ``n = floor(h1 / 2)``,
``M(r, s) = n - max(|r - floor(h1 / 2) - 1|, |s - floor(h2 / 2) - 1|)`` (1-based ``r, s``).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import primitives

P_INIT = 0.8
QUERIES = 5000
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
L2_MIN_SIDE = 3


def p_schedule(i, queries: int, p_init: float = P_INIT):
    """The fraction of pixels changed at query ``i`` of ``queries`` (Python or tensor ``i``)."""
    if isinstance(i, (int, np.integer)):
        scaled = int(i * 10000 / queries)
        return p_init / 2 ** sum(scaled > t for t in _HALVINGS)
    scaled = tf.cast(tf.cast(i, tf.float64) * 10000.0 / queries, tf.int32)
    halvings = tf.reduce_sum(tf.cast(scaled > tf.constant(_HALVINGS), tf.float32))
    return p_init / tf.pow(2.0, halvings)


def square_side(p, height: int, width: int, norm: str = "linf"):
    """Window side ``round(sqrt(p * H * W))`` clipped to ``[1 (L2: 3), min(H, W) - 1]``."""
    lo = L2_MIN_SIDE if norm == "l2" else 1
    hi = max(min(height, width) - 1, 1)
    if isinstance(p, float):
        return int(min(max(round(np.sqrt(p * height * width)), lo), hi))
    side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
    return tf.clip_by_value(side, min(lo, hi), hi)


_INV_SQ_CUMSUM = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 1025, dtype=np.float64) ** 2)])


def pulse(h1, h2) -> tf.Tensor:
    """The single-sign pulse ``eta^{(h1, h2)}`` ``[h1, h2]`` (float32; works for tensor sizes).

    ``sum_{j=0}^{M} 1 / (n + 1 - j)^2 = P(n + 1) - P(n - M)`` with ``P(t) = sum_{q <= t} 1 / q^2``.
    """
    h1 = tf.cast(h1, tf.int32)
    h2 = tf.cast(h2, tf.int32)
    n = h1 // 2
    r = tf.range(1, h1 + 1)[:, None]
    s = tf.range(1, h2 + 1)[None, :]
    m = n - tf.maximum(tf.abs(r - h1 // 2 - 1), tf.abs(s - h2 // 2 - 1))
    table = tf.constant(_INV_SQ_CUMSUM, tf.float32)
    value = tf.gather(table, n + 1) - tf.gather(table, tf.maximum(n - m, 0))
    return tf.where(m >= 0, value, 0.0)


def two_sided_pulse(h) -> tf.Tensor:
    """``(eta^{(h, k)}, -eta^{(h, h - k)})`` with ``k = floor(h / 2)``, scaled to unit L2 norm, ``[h, h]``."""
    h = tf.cast(h, tf.int32)
    k = h // 2
    eta = tf.concat([pulse(h, k), -pulse(h, h - k)], axis=1)
    return eta / tf.maximum(tf.norm(eta), 1e-12)


def window_mask(r, s, h, height: int, width: int) -> tf.Tensor:
    """``[B, H, W, 1]`` float mask of the ``h x h`` windows with top-left corners ``(r_b, s_b)``."""
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    r = tf.cast(r, tf.int32)[:, None, None]
    s = tf.cast(s, tf.int32)[:, None, None]
    inside = (rows >= r) & (rows < r + h) & (cols >= s) & (cols < s + h)
    return tf.cast(inside, tf.float32)[..., None]


def place(pattern: tf.Tensor, r, s, height: int, width: int, transpose=None) -> tf.Tensor:
    """Writes the ``[h, h]`` pattern at corners ``(r_b, s_b)`` of zero images ``[B, H, W, 1]``
    (transposed where ``transpose[b]``)."""
    h = tf.shape(pattern)[0]
    lr = tf.range(height)[None, :, None] - tf.cast(r, tf.int32)[:, None, None]
    lc = tf.range(width)[None, None, :] - tf.cast(s, tf.int32)[:, None, None]
    inside = (lr >= 0) & (lr < h) & (lc >= 0) & (lc < h)
    lr_c = tf.clip_by_value(lr, 0, h - 1)
    lc_c = tf.clip_by_value(lc, 0, h - 1)
    idx = lr_c * h + lc_c
    if transpose is not None:
        idx = tf.where(tf.cast(transpose, tf.bool)[:, None, None], lc_c * h + lr_c, idx)
    values = tf.gather(tf.reshape(pattern, [-1]), idx)
    return tf.where(inside, values, 0.0)[..., None]


def linf_proposal(x, x_best, eps, mask, signs) -> tf.Tensor:
    """L-inf proposal: inside ``mask`` ``[B, H, W, 1]`` each channel becomes ``x + eps * signs``
    (``signs`` ``[B, 1, 1, C]``); clipped to [0, 1]. Where that leaves the image unchanged, the
    signs are flipped."""
    cand = tf.clip_by_value(tf.where(mask > 0, x + eps * signs, x_best), 0.0, 1.0)
    same = tf.reduce_all(tf.equal(cand, x_best), axis=[1, 2, 3])
    flipped = tf.clip_by_value(tf.where(mask > 0, x - eps * signs, x_best), 0.0, 1.0)
    return tf.where(primitives.expand(same, x), flipped, cand)


def l2_proposal(x, x_best, eps, mask1, mask2, eta_placed, signs) -> tf.Tensor:
    """L2 proposal (Algorithm 3 of the paper) for windows ``mask1``/``mask2`` ``[B, H, W, 1]``,
    the unit pulse already placed in window 1 ``eta_placed`` ``[B, H, W, 1]`` and per-channel signs
    ``[B, 1, 1, C]``; clipped to [0, 1]."""
    delta = x_best - x
    channels = tf.cast(tf.shape(x)[-1], tf.float32)
    sq = tf.square(delta)
    unused = tf.maximum(tf.square(eps) - tf.reduce_sum(sq, axis=[1, 2, 3]), 0.0)       # [B]
    union = tf.maximum(mask1, mask2)
    norm_w1 = tf.sqrt(tf.reduce_sum(sq * mask1, axis=[1, 2], keepdims=True))            # [B,1,1,C]
    mass_union = tf.reduce_sum(sq * union, axis=[1, 2], keepdims=True)                   # [B,1,1,C]
    tmp = signs * eta_placed + mask1 * delta / tf.maximum(norm_w1, 1e-12)
    tmp_norm = tf.sqrt(tf.reduce_sum(tf.square(tmp), axis=[1, 2], keepdims=True))
    avail = tf.sqrt(mass_union + primitives.expand(unused, x) / channels)
    new_w1 = tmp / tf.maximum(tmp_norm, 1e-12) * avail
    new_delta = tf.where(mask2 > 0, 0.0, delta)
    new_delta = tf.where(mask1 > 0, new_w1, new_delta)
    return tf.clip_by_value(x + new_delta, 0.0, 1.0)


def l2_initial(x, eps, rng: tf.random.Generator) -> tf.Tensor:
    """The L2 starting point: a grid of ``H // 5`` tiles of single-sign pulses with random signs,
    scaled to norm ``eps``."""
    batch, height, width = tf.shape(x)[0], int(x.shape[1]), int(x.shape[2])
    ch = int(x.shape[3])
    tile = max(int(x.shape[1]) // 5, 1)
    pat = pulse(tile, tile)
    reps_h, reps_w = int(x.shape[1]) // tile, int(x.shape[2]) // tile
    signs = tf.sign(rng.uniform([batch, reps_h, reps_w, ch], -1.0, 1.0))
    signs = tf.where(signs == 0, 1.0, signs)
    grid = tf.repeat(tf.repeat(signs, tile, axis=1), tile, axis=2) * tf.tile(pat, [reps_h, reps_w])[None, :, :, None]
    grid = tf.pad(grid, [[0, 0], [0, height - reps_h * tile], [0, width - reps_w * tile], [0, 0]])
    delta = grid * primitives.expand(eps / tf.maximum(primitives.per_example_norm(grid, "l2"), 1e-12), grid)
    return tf.clip_by_value(x + delta, 0.0, 1.0)


class Square:
    """Square attack on a Keras classifier (compiled once; reused across batches and radii).

    Args:
        model: callable ``model(x, training=False) -> logits``.
        norm: ``"linf"`` or ``"l2"``.
        queries: model queries per example, the initial point included (5,000 in AutoAttack).
        p_init: initial fraction of changed pixels (0.8 in AutoAttack).
        chunk: queries per compiled call; between calls the examples already broken are dropped.
        seed: seed of the random search.
        accept_ties: keep proposals that leave the margin unchanged, not only those that lower it
            (for models with quantized outputs; the paper's rule is ``False``).
    """

    def __init__(self, model: Callable, *, norm: str = "linf", queries: int = QUERIES, p_init: float = P_INIT,
                 chunk: int = 500, seed: Optional[int] = 0, accept_ties: bool = False):
        primitives.check_norm(norm)
        if queries < 1:
            raise ValueError(f"Square needs at least 1 query, got {queries}")
        self.model, self.norm, self.queries, self.p_init = model, norm, int(queries), float(p_init)
        self.chunk = int(chunk)
        self.accept_ties = bool(accept_ties)
        self.rng = tf.random.Generator.from_seed(0 if seed is None else int(seed))
        self._init = primitives.BatchGeneric(self._initial)
        self._steps = primitives.BatchGeneric(self._iterate)

    def _margin(self, points, y):
        return primitives.margin(self.model(points, training=False), y)

    def _initial(self, x, y, eps):
        if self.norm == "linf":
            shape = tf.shape(x)
            stripes = tf.sign(self.rng.uniform([shape[0], 1, shape[2], int(x.shape[3])], -1.0, 1.0))
            stripes = tf.where(stripes == 0, 1.0, stripes)
            x0 = tf.clip_by_value(x + eps * stripes, 0.0, 1.0)
        else:
            x0 = l2_initial(x, eps, self.rng)
        return x0, self._margin(x0, y)

    def _iterate(self, x, y, eps, x_best, margin_best, start, stop):
        height, width = int(x.shape[1]), int(x.shape[2])
        batch, ch = tf.shape(x)[0], int(x.shape[3])

        def corner(h, size):  # uniform in {0, ..., size - h}
            return tf.minimum(tf.cast(tf.floor(self.rng.uniform([batch]) * tf.cast(size - h + 1, tf.float32)),
                                      tf.int32), size - h)

        def body(i, x_best, margin_best):
            side = square_side(p_schedule(i, self.queries, self.p_init), height, width, self.norm)
            signs = tf.sign(self.rng.uniform([batch, 1, 1, ch], -1.0, 1.0))
            signs = tf.where(signs == 0, 1.0, signs)
            r1, s1 = corner(side, height), corner(side, width)
            mask1 = window_mask(r1, s1, side, height, width)
            if self.norm == "linf":
                cand = linf_proposal(x, x_best, eps, mask1, signs)
            else:
                r2, s2 = corner(side, height), corner(side, width)
                mask2 = window_mask(r2, s2, side, height, width)
                transpose = self.rng.uniform([batch]) < 0.5
                eta = place(two_sided_pulse(side), r1, s1, height, width, transpose)
                cand = l2_proposal(x, x_best, eps, mask1, mask2, eta, signs)
            active = margin_best >= 0.0
            m = self._margin(cand, y)
            better = m <= margin_best if self.accept_ties else m < margin_best
            accept = tf.logical_and(active, better)
            x_best = tf.where(primitives.expand(accept, x), cand, x_best)
            margin_best = tf.where(accept, m, margin_best)
            return i + 1, x_best, margin_best

        def cond(i, x_best, margin_best):
            return tf.logical_and(i < stop, tf.reduce_any(margin_best >= 0.0))

        _, x_best, margin_best = tf.while_loop(cond, body, (start, x_best, margin_best), parallel_iterations=1)
        return x_best, margin_best

    def __call__(self, x, y, epsilon: float, target=None, progress: Optional[Callable[[int], None]] = None):
        """Attacks a batch. Returns ``(x_adv, broken)`` like APGD. ``progress(q)`` is called after
        each chunk with the number of queries done."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y).astype(np.int32)
        eps = tf.constant(epsilon, tf.float32)
        x_best, margin = self._init(tf.constant(x), tf.constant(y), eps)
        x_best, margin = x_best.numpy(), margin.numpy()
        done = 1
        while done < self.queries and np.any(margin >= 0):
            idx = np.flatnonzero(margin >= 0)
            stop = min(done + self.chunk, self.queries)
            xb, mb = self._steps(tf.constant(x[idx]), tf.constant(y[idx]), eps, tf.constant(x_best[idx]),
                                 tf.constant(margin[idx]), tf.constant(done - 1), tf.constant(stop - 1))
            x_best[idx], margin[idx] = xb.numpy(), mb.numpy()
            done = stop
            if progress is not None:
                progress(done)
        return x_best, margin < 0
