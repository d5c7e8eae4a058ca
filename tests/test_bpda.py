"""Tests of the attacks on classifiers without gradients (quantized files): BPDA
(``ardir_tf.attacks.BPDA``) and Square's acceptance of ties.

On a linear model the worst point of the L-inf ball is a known corner, so what an attack must
find is known exactly; a copy of that model whose logits are rounded to a coarse grid stands in for
a quantized file (flat logits, no gradients, decisions a monotone function of the float margin).
"""

from __future__ import annotations

import numpy as np
import pytest

from ardir_tf.attacks import BPDA, primitives
from ardir_tf.attacks.autoattack import Square
from test_autoattack import _linear_problem

EPS = 0.15
GRID = 1.0  # logit step of the stand-in "quantized" model


def _problem():
    model, x, y, _ = _linear_problem("linf", EPS, n=64, seed=1)
    kernel, bias = model.layers[-1].get_weights()

    def logits(a):
        return np.asarray(a, np.float32).reshape(len(a), -1) @ kernel + bias

    def rounded(a):  # flat between grid lines: most small changes leave the output unchanged
        return (GRID * np.round(logits(a) / GRID)).astype(np.float32)

    flat = x.reshape(len(x), -1)
    sign = np.where(y == 0, 1.0, -1.0)[:, None]  # class 0 wants a large w.x, class 1 a small one
    w = kernel[:, 0]
    corner = np.where(sign * w > 0, np.maximum(flat - EPS, 0), np.minimum(flat + EPS, 1)).reshape(x.shape)
    return model, logits, rounded, x, y, corner.astype(np.float32)


def test_bpda_finds_exactly_the_breakable_examples_of_a_linear_model():
    model, logits, _, x, y, corner = _problem()
    breakable = logits(corner).argmax(-1) != y
    assert 0 < breakable.sum() < len(y)
    x_adv, broken = BPDA(logits, model, steps=20)(x, y, EPS)
    np.testing.assert_array_equal(broken, breakable)
    assert np.abs(x_adv - x).max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    np.testing.assert_array_equal(logits(x_adv).argmax(-1) != y, broken)  # the kept iterate fools it
    np.testing.assert_array_equal(x_adv[~broken], x[~broken])             # else the clean image


def test_bpda_on_flat_logits_reaches_the_targets_own_decision_where_square_stalls():
    """The stand-in file answers only in steps of GRID: BPDA (surrogate gradients, the file's
    decisions) breaks exactly the examples whose worst corner the file misclassifies; Square with
    the paper's strict acceptance stalls on the plateaus, and accepting ties recovers most of it."""
    model, _, rounded, x, y, corner = _problem()
    breakable = rounded(corner).argmax(-1) != y
    clean_wrong = rounded(x).argmax(-1) != y
    assert breakable.sum() > clean_wrong.sum() + 5
    _, broken = BPDA(rounded, model, steps=20)(x, y, EPS)
    np.testing.assert_array_equal(broken, breakable)
    target = primitives.numpy_model(rounded, 4)
    strict = Square(target, queries=200, seed=0)(x, y, EPS)[1]
    ties = Square(target, queries=200, seed=0, accept_ties=True)(x, y, EPS)[1]
    assert not np.any((strict | ties) & ~breakable)  # no attack breaks what cannot be broken
    # measured: 56 breakable, 10 wrong clean, strict 19, ties 47 (the seeds are fixed)
    assert ties.sum() > strict.sum() + 10, (ties.sum(), strict.sum(), breakable.sum())


def test_bpda_restarts_only_the_survivors_and_rejects_bad_settings():
    model, logits, _, x, y, _ = _problem()
    calls = []

    def counting(a):
        calls.append(len(a))
        return logits(a)

    BPDA(counting, model, steps=3, restarts=2)(x, y, 0.0)  # eps 0: nothing breaks, every step queries all
    assert calls == [len(x)] * 8
    with pytest.raises(ValueError, match="steps >= 1"):
        BPDA(logits, model, steps=0)
    with pytest.raises(ValueError):
        BPDA(logits, model, norm="l1")
