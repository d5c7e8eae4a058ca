"""Tests of the TensorFlow AutoAttack (ardir_tf.attacks.autoattack), its evaluate() integration and
the report.

Hand-computed values for the DLR losses, APGD's checkpoints and step-halving rule, Square's
schedule, pulse and proposals, and FAB's hyperplane projection; exactness on linear models, where
the worst case in the ball is known in closed form; the results schema; and (slow) a cross-check
against the AutoAttack of the Adversarial Robustness Toolbox on a PGD-trained small_cnn.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import evaluate as evaluate_lib
from ardir_tf import report
from ardir_tf.attacks import primitives
from ardir_tf.attacks.autoattack import (
    APGD, FAB, MEMBERS, VERSIONS, AutoAttack, FABTargeted, Square, checkpoints, halve_step, losses, p_schedule,
    project_hyperplane_box, square_side,
)
from ardir_tf.attacks.autoattack import square as square_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------- losses
def test_dlr_losses_hand_computed():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0],    # correct: -(3 - 2) / (3 - 1)
                          [1.0, 4.0, 2.0, 0.0]])   # wrong:   -(1 - 4) / (4 - 1)
    y = tf.constant([0, 0])
    np.testing.assert_allclose(losses.dlr(logits, y).numpy(), [-0.5, 1.0], rtol=1e-6)
    # targeted, t = 3 and t = 2: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    t = tf.constant([3, 2])
    np.testing.assert_allclose(losses.dlr_targeted(logits, y, t).numpy(),
                               [-(3 - 0) / (3 - 0.5), -(1 - 2) / (4 - 0.5)], rtol=1e-6)
    np.testing.assert_allclose(losses.margin(logits, y).numpy(), [1.0, -3.0], rtol=1e-6)
    np.testing.assert_allclose(losses.ce(logits, y).numpy(),
                               -np.log(np.exp([3.0, 1.0]) / np.exp(logits.numpy()).sum(-1)), rtol=1e-5)


def test_dlr_is_shift_and_scale_invariant():
    z = tf.random.stateless_normal([8, 10], seed=[1, 2])
    y = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    t = (y + 3) % 10
    for fn in (losses.dlr, lambda a, b: losses.dlr_targeted(a, b, t)):
        np.testing.assert_allclose(fn(7.5 * z + 3.0, y).numpy(), fn(z, y).numpy(), rtol=1e-4, atol=1e-5)


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="at least 4 classes"):
        losses.dlr_targeted(tf.zeros([2, 3]), tf.constant([0, 1]), tf.constant([1, 0]))


# --------------------------------------------------------------------------- APGD schedule
def test_apgd_checkpoints_hand_computed():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (intervals 22, 19, 16, 13, 10, 7, 6, 6)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1000)[:3] == [0, 220, 410]
    with pytest.raises(ValueError):
        checkpoints(0)


def test_apgd_halving_rule_hand_computed():
    b = lambda *v: tf.constant(v)  # noqa: E731
    # condition 1: fewer than 0.75 * 22 = 16.5 increases -> halve (16: yes, 17: no)
    got = halve_step(b(16, 17, 17, 17), 22, b(False, False, True, False), b(0.0, 0.0, 1.0, 1.0),
                     b(1.0, 1.0, 1.0, 1.0))
    # example 3: not reduced last time and f_max unchanged -> condition 2 -> halve;
    # example 2: f_max unchanged but the step was halved at the previous checkpoint -> keep
    np.testing.assert_array_equal(got.numpy(), [True, False, False, True])


class _ConstantModel:
    """Logits that do not depend on the input: the loss never increases."""

    def __call__(self, x, training=False):
        batch = tf.shape(x)[0]
        logits = tf.tile(tf.constant([[2.0, 1.0, 0.5, 0.0]]), [batch, 1])
        return logits + 0.0 * tf.reduce_sum(x, axis=[1, 2, 3])[:, None]


def test_apgd_halves_at_every_checkpoint_when_the_loss_is_flat():
    eps = 0.1
    attack = APGD(_ConstantModel(), loss="ce", steps=100)
    x = np.full((3, 4, 4, 1), 0.5, np.float32)
    x_adv, broken = attack(x, np.zeros(3, np.int32), eps)
    assert not broken.any()
    # eta^0 = 2 eps, halved at each of the 8 checkpoints 22 .. 99
    np.testing.assert_allclose(attack.last_step_size, 2 * eps / 2 ** 8, rtol=1e-6)
    assert np.abs(x_adv - x).max() <= eps + 1e-6


# ----------------------------------------------------------------------------- Square parts
def test_square_schedule_hand_computed():
    # 10,000 queries: halvings after 10, 50, 200, ...
    assert p_schedule(0, 10000) == 0.8 and p_schedule(10, 10000) == 0.8
    assert p_schedule(11, 10000) == 0.4 and p_schedule(50, 10000) == 0.4 and p_schedule(51, 10000) == 0.2
    assert p_schedule(9999, 10000) == pytest.approx(0.8 / 512)
    # 5,000 queries: the same schedule at twice the speed (i -> 2i)
    assert p_schedule(5, 5000) == 0.8 and p_schedule(6, 5000) == 0.4 and p_schedule(26, 5000) == 0.2
    for i in (0, 6, 26, 101, 251, 4001):
        assert float(p_schedule(tf.constant(i), 5000)) == pytest.approx(p_schedule(i, 5000))
    # side round(sqrt(p * 28 * 28)): 0.8 -> 25, 0.4 -> 18, tiny -> 1; L2 at least 3
    assert square_side(0.8, 28, 28) == 25 and square_side(0.4, 28, 28) == 18
    assert square_side(0.8 / 512, 28, 28) == 1 and square_side(0.8 / 512, 28, 28, "l2") == 3
    assert int(square_side(tf.constant(0.4), 28, 28)) == 18


def test_square_pulse_hand_computed():
    # eta^(3,3): centre 1/1 + 1/2^2, ring 1/2^2
    np.testing.assert_allclose(square_lib.pulse(3, 3).numpy(),
                               [[.25, .25, .25], [.25, 1.25, .25], [.25, .25, .25]], rtol=1e-6)
    # two-sided pulse of side 2: (eta^(2,1), -eta^(2,1)) / norm
    expected = np.array([[.25, -.25], [1.25, -1.25]]) / math.sqrt(2 * (.25 ** 2 + 1.25 ** 2))
    np.testing.assert_allclose(square_lib.two_sided_pulse(2).numpy(), expected, rtol=1e-6)


def test_square_linf_proposal_hand_computed():
    x = np.full((1, 4, 4, 1), 0.5, np.float32)
    x_best = x + 0.1 * np.array([1, -1, 1, -1], np.float32)[None, None, :, None]  # stripes
    mask = square_lib.window_mask(tf.constant([1]), tf.constant([1]), 2, 4, 4)
    cand = square_lib.linf_proposal(x, x_best, 0.1, mask, tf.ones([1, 1, 1, 1])).numpy()[0, :, :, 0]
    expected = np.tile([0.6, 0.4, 0.6, 0.4], (4, 1))
    expected[1:3, 1:3] = 0.6
    np.testing.assert_allclose(cand, expected, atol=1e-6)
    # a proposal that changes nothing is flipped: window column 0 already holds +eps
    mask0 = square_lib.window_mask(tf.constant([0]), tf.constant([0]), 1, 4, 4)
    cand = square_lib.linf_proposal(x, x_best, 0.1, mask0, tf.ones([1, 1, 1, 1])).numpy()[0, :, :, 0]
    assert cand[0, 0] == pytest.approx(0.4) and np.count_nonzero(cand != x_best[0, :, :, 0]) == 1


def test_square_l2_proposal_hand_computed():
    eps = 0.5
    x = np.full((1, 2, 4, 1), 0.5, np.float32)
    eta = np.array([[.25, -.25], [1.25, -1.25]]) / math.sqrt(3.25)
    mask1 = square_lib.window_mask(tf.constant([0]), tf.constant([0]), 2, 2, 4)
    mask2 = square_lib.window_mask(tf.constant([0]), tf.constant([2]), 2, 2, 4)
    placed = square_lib.place(square_lib.two_sided_pulse(2), tf.constant([0]), tf.constant([0]), 2, 4)
    np.testing.assert_allclose(placed.numpy()[0, :, :2, 0], eta, rtol=1e-6)
    signs = tf.ones([1, 1, 1, 1])
    expected = x[0, :, :, 0].copy()
    expected[:, :2] += eps * eta
    # (a) no perturbation yet: the whole budget eps goes into window 1 as the pulse
    got = square_lib.l2_proposal(x, x, eps, mask1, mask2, placed, signs).numpy()[0, :, :, 0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # (b) mass 0.3 in window 2 moves into window 1: sqrt(0.3^2 + (0.25 - 0.09)) = eps again
    x_best = x.copy()
    x_best[0, 0, 2, 0] += 0.3
    got = square_lib.l2_proposal(x, x_best, eps, mask1, mask2, placed, signs).numpy()[0, :, :, 0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # (c) mass 0.3 already in window 1 at (0, 0): tmp = eta + e_00, scaled to norm eps
    x_best = x.copy()
    x_best[0, 0, 0, 0] += 0.3
    tmp = eta + np.array([[1.0, 0.0], [0.0, 0.0]])
    expected = x[0, :, :, 0].copy()
    expected[:, :2] += eps * tmp / np.linalg.norm(tmp)
    got = square_lib.l2_proposal(x, x_best, eps, mask1, mask2, placed, signs).numpy()[0, :, :, 0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.linalg.norm(got - x[0, :, :, 0]) == pytest.approx(eps, rel=1e-5)


# ---------------------------------------------------------------------- FAB's projection
def test_fab_projection_hand_computed():
    wide = lambda n: (-np.ones((1, n), np.float32), np.ones((1, n), np.float32))  # noqa: E731

    def proj(w, c, lo, up, norm):
        return project_hyperplane_box(tf.constant([w], tf.float32), tf.constant([c], tf.float32),
                                      tf.constant(lo, tf.float32), tf.constant(up, tf.float32), norm).numpy()[0]

    lo, up = wide(2)
    np.testing.assert_allclose(proj([1, 1], 1, lo, up, "linf"), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(proj([1, 1], 1, lo, [[0.2, 1.0]], "linf"), [0.2, 0.8], atol=1e-6)
    np.testing.assert_allclose(proj([1, -1], -1, lo, up, "linf"), [-0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(proj([1, 0], 0.5, lo, up, "linf"), [0.5, 0.0], atol=1e-6)
    lo, up = -10 * np.ones((1, 2), np.float32), 10 * np.ones((1, 2), np.float32)
    np.testing.assert_allclose(proj([1, 2], 5, lo, up, "l2"), [1.0, 2.0], atol=1e-5)       # c w / ||w||^2
    np.testing.assert_allclose(proj([1, 2], 3.9, lo, [[1.0, 1.5]], "l2"), [0.9, 1.5], atol=1e-5)
    np.testing.assert_allclose(proj([1, 2], 5, lo, [[1.0, 1.5]], "l2"), [1.0, 1.5], atol=1e-5)  # infeasible: corner
    np.testing.assert_allclose(proj([1, 2], 0, lo, up, "l2"), [0.0, 0.0], atol=1e-7)


# --------------------------------------------------------------- exactness on linear models
def _linear_problem(norm, eps, n=24, seed=0):
    """A 4-class linear model on 4x4 images whose decision is between classes 0 and 1 (classes 2,
    3 sit far below) and the exact set of examples that are robust in the ball (L-inf)."""
    rng = np.random.RandomState(seed)
    w = rng.normal(size=16).astype(np.float32)
    x = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    flat = x.reshape(n, -1)
    bias = -float(np.median(flat @ w))
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    kernel = np.zeros((16, 4), np.float32)
    kernel[:, 0] = w
    model.layers[-1].set_weights([kernel, np.array([bias, 0.0, -100.0, -100.0], np.float32)])
    margin = flat @ w + bias                               # z_0 - z_1
    y = (margin < 0).astype(np.int32)                      # everything correctly classified
    sign = np.where(y == 0, 1.0, -1.0)                     # the attacker lowers sign * margin
    lo, hi = np.maximum(flat - eps, 0), np.minimum(flat + eps, 1)
    worst = np.sum(np.minimum(sign[:, None] * w * lo, sign[:, None] * w * hi), axis=1) + sign * bias
    keep = np.abs(worst) > 0.05                            # drop near-ties
    return model, x[keep], y[keep], worst[keep] > 0


@pytest.mark.parametrize("member", MEMBERS)
def test_members_are_exact_on_a_linear_model(member):
    model, x, y, robust = _linear_problem("linf", 0.15)
    assert 0 < robust.sum() < len(robust)
    aa = AutoAttack(model, attacks=[member], square_queries=400, apgd_steps=30, fab_steps=30)
    result = aa.run(x, y, 0.15)
    np.testing.assert_array_equal(result.robust, robust)
    broken = ~result.robust
    assert np.abs(result.x_adv - x).max() <= 0.15 + 1e-6
    np.testing.assert_array_equal(np.argmax(model.predict(result.x_adv[broken], verbose=0), -1) != y[broken], True)


@pytest.mark.parametrize("member", ["apgd-ce", "fab-t", "square"])
def test_members_l2_stay_in_the_ball_and_break_a_linear_model(member):
    model, x, y, _ = _linear_problem("l2", 1.0)
    w = model.layers[-1].get_weights()[0][:, 0]
    # the L2 distance to the decision boundary without the box is |margin| / ||w||_2: no attack
    # can break an example farther than eps; with this data the box does not block the nearer ones
    distance = np.abs(x.reshape(len(x), -1) @ w + model.layers[-1].get_weights()[1][0]) / np.linalg.norm(w)
    result = AutoAttack(model, norm="l2", attacks=[member], square_queries=400, apgd_steps=30,
                        fab_steps=30).run(x, y, 0.5)
    norms = np.linalg.norm((result.x_adv - x).reshape(len(x), -1), axis=1)
    assert norms.max() <= 0.5 + 1e-5 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert not np.any(~result.robust & (distance > 0.5))
    # gradient attacks find every example within eps; random search on 16 pixels only those that
    # need less than 40% of the budget's alignment with w
    reach = 0.5 if member != "square" else 0.2
    assert np.all(~result.robust[distance < reach])


def _one_survivor_batches(x, y, robust):
    """Index sets of 1, 2 and 5 examples, each holding exactly one robust example (the others are
    broken by the first member, so exactly one example reaches the later members)."""
    keep = int(np.flatnonzero(robust)[0])
    others = [int(i) for i in np.flatnonzero(~robust)[:4]]
    return [[keep], [keep, others[0]], [keep] + others]


@pytest.mark.parametrize("member", MEMBERS)
def test_every_member_runs_on_a_batch_of_one_and_on_a_remainder_of_one(member):
    # the first compiled call gets one example (this crashed FAB-T and Square: a (1, ...) loop
    # variable became (None, ...) inside tf.while_loop); then 2, then 5 in batches of 2 (2 + 2 + 1)
    model, x, y, robust = _linear_problem("linf", 0.15)
    aa = AutoAttack(model, attacks=[member], square_queries=300, apgd_steps=20, fab_steps=20, batch_size=2)
    for idx in [[int(np.flatnonzero(~robust)[0])], *_one_survivor_batches(x, y, robust)]:
        result = aa.run(x[idx], y[idx], 0.15)
        np.testing.assert_array_equal(result.robust, robust[idx])
        assert np.abs(result.x_adv - x[idx]).max() <= 0.15 + 1e-6


@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
def test_ensemble_runs_on_a_batch_of_one_and_when_one_example_reaches_a_member(version):
    model, x, y, robust = _linear_problem("linf", 0.15)
    aa = AutoAttack(model, version=version, square_queries=100, apgd_steps=10, fab_steps=10, batch_size=2)
    for idx in _one_survivor_batches(x, y, robust):
        result = aa.run(x[idx], y[idx], 0.15)
        np.testing.assert_array_equal(result.robust, robust[idx])
        assert [r.name for r in result.records] == list(VERSIONS[version]["attacks"])
        assert [r.attacked for r in result.records[1:]] == [1] * (len(result.records) - 1)


def test_versions_have_the_documented_budgets():
    standard, plus, rand = (AutoAttack(None, version=v).settings() for v in ("standard", "plus", "rand"))
    assert standard["version"] == "standard" and standard["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(standard["restarts"].values()) == {1} and standard["eot_samples"] == 1
    assert plus["version"] == "plus" and plus["attacks"] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus["restarts"] == {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 5, "apgd-t": 1, "fab-t": 5}
    assert (plus["square_queries"], plus["apgd_steps"], plus["fab_steps"], plus["targets"]) == (5000, 100, 100, 9)
    assert rand["version"] == "rand" and rand["attacks"] == ["apgd-ce", "apgd-dlr"] and rand["eot_samples"] == 20
    # a changed budget is not the version any more
    assert AutoAttack(None, version="plus", square_queries=100).settings()["version"] == "custom"
    assert AutoAttack(None, attacks=["square"]).settings()["version"] == "custom"
    with pytest.raises(ValueError, match="unknown AutoAttack version"):
        AutoAttack(None, version="strong")
    with pytest.raises(ValueError, match="restarts"):
        AutoAttack(None, restarts={"square": 0})


def test_restarts_rerun_a_member_on_its_survivors_and_fab_restarts_from_random_points(monkeypatch):
    model, x, y, robust = _linear_problem("linf", 0.15)
    calls = []
    original = FAB.__call__

    def spy(self, xb, yb, epsilon, target=None, *, random_start=False):
        calls.append((len(xb), target is None, random_start))
        return original(self, xb, yb, epsilon, target, random_start=random_start)

    monkeypatch.setattr(FAB, "__call__", spy)
    aa = AutoAttack(model, attacks=["fab", "fab-t"], restarts={"fab": 3, "fab-t": 2}, fab_steps=10, targets=2)
    result = aa.run(x[robust], y[robust], 0.15)  # nothing can be broken: every pass runs on every example
    n = int(robust.sum())
    assert result.robust.all() and [r.restarts for r in result.records] == [3, 2]
    assert calls == [(n, True, False), (n, True, True), (n, True, True)] + [(n, False, False), (n, False, True)] * 2


def test_fab_restart_point_lies_at_half_the_radius():
    x = tf.fill([3, 4, 4, 1], 0.5)  # far from the box: no clipping
    for norm in ("linf", "l2"):
        fab = FAB(None, norm=norm, seed=1)
        start = fab._restart_point(x, tf.constant(0.2))
        np.testing.assert_allclose(primitives.per_example_norm(start - x, norm).numpy(), 0.1, rtol=1e-5)
        assert not np.allclose(start[0], start[1])


def test_untargeted_fab_takes_the_nearest_hyperplane():
    # z = (0, 8 x_0 - 5, 2 x_1 - 2, -100); at x = 0.5 (z = (0, -1, -1, -100)) class 0 wins
    kernel = np.zeros((16, 4), np.float32)
    kernel[0, 1], kernel[1, 2] = 8.0, 2.0
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model.layers[-1].set_weights([kernel, np.array([0.0, -5.0, -2.0, -100.0], np.float32)])
    x = np.full((1, 4, 4, 1), 0.5, np.float32)   # z = (0, -1, -1, -100): class 0
    fab = FAB(model, targeted=False, steps=1)
    f, grad = fab._linearise(tf.constant(x), tf.constant([0]), tf.constant([0]))
    # distances |f_j| / ||grad f_j||_1: class 1: 1 / 8, class 2: 1 / 2 -> class 1's hyperplane
    np.testing.assert_allclose(f.numpy(), [-1.0], atol=1e-5)
    np.testing.assert_allclose(grad.numpy().reshape(-1)[:2], [8.0, 0.0], atol=1e-5)
    x_adv, broken = fab(x, [0], 0.2)
    assert broken[0] and np.argmax(model(x_adv).numpy()) == 1


def test_apgd_eot_averages_the_gradient_over_several_model_calls():
    model, x, y, robust = _linear_problem("linf", 0.15)
    counter = tf.Variable(0)

    def counting(points, training=False):
        counter.assign_add(1)
        return model(points, training=training)

    steps = 5
    for eot in (1, 4):
        counter.assign(0)
        APGD(counting, steps=steps, eot_samples=eot)(x[robust], y[robust], 0.15)  # nothing breaks: no early stop
        assert int(counter.numpy()) == (steps + 1) * eot
    with pytest.raises(ValueError, match="eot_samples"):
        APGD(None, eot_samples=0)


def test_ensemble_runs_each_member_on_the_survivors_only():
    model, x, y, robust = _linear_problem("linf", 0.15)
    result = AutoAttack(model, square_queries=200, apgd_steps=20, fab_steps=20).run(x, y, 0.15)
    assert [r.name for r in result.records] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert result.records[0].attacked == len(x)
    for prev, cur in zip(result.records[:-1], result.records[1:]):
        assert cur.attacked == prev.attacked - prev.broken
        assert cur.robust_accuracy <= prev.robust_accuracy
    assert result.robust_accuracy == pytest.approx(robust.mean())
    assert set(result.broken_by[~result.robust]) <= {"apgd-ce", "apgd-t", "fab-t", "square", "natural"}


def test_zero_epsilon_leaves_the_natural_accuracy():
    model, x, y, _ = _linear_problem("linf", 0.15)
    y = y.copy()
    y[:3] = 1 - y[:3]  # three misclassified examples
    result = AutoAttack(model).run(x, y, 0.0)
    np.testing.assert_array_equal(result.robust, np.arange(len(y)) >= 3)
    assert [r.broken for r in result.records] == [0, 0, 0, 0]


def test_seeded_runs_are_reproducible():
    model, x, y, _ = _linear_problem("linf", 0.15)
    aa = AutoAttack(model, attacks=["square"], square_queries=50, seed=3)
    a, b = aa.run(x, y, 0.15), aa.run(x, y, 0.15)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)


def test_unknown_member_and_bad_norm():
    with pytest.raises(ValueError, match="unknown AutoAttack member"):
        AutoAttack(None, attacks=["apgd-x"])
    with pytest.raises(ValueError, match="unknown norm"):
        Square(None, norm="l1")
    with pytest.raises(ValueError, match="unknown APGD loss"):
        APGD(None, loss="hinge")
    assert FABTargeted(None).steps == 100


# ------------------------------------------------------------------ evaluate() and report
def test_evaluate_autoattack_schema(trained_small_cnn, mnist5k_test):
    x, y = mnist5k_test
    results = evaluate_lib.evaluate(trained_small_cnn, x[:20], y[:20], epsilon=0.3,
                                    attacks=["pgd20", "autoattack"], verbose=0)
    ra = results["robust_accuracy"]
    members = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(ra) == ["pgd20", "autoattack"] + [f"autoattack/{m}" for m in members] + ["all"]
    cumulative = [ra[f"autoattack/{m}"] for m in members]
    assert cumulative == sorted(cumulative, reverse=True) and cumulative[-1] == ra["autoattack"]
    assert ra["all"] <= min(ra["pgd20"], ra["autoattack"])
    info = results["attacks"]["autoattack"]
    assert list(info["members"]) == members and info["seconds"] >= 0
    assert info["square_queries"] == 5000 and info["targets"] == 9 and info["version"] == "standard"
    assert results["masking_check"]["epsilon"] == 0.5
    assert isinstance(results["warnings"], list)
    json.dumps(results)


@pytest.mark.parametrize("name,version", [("autoattack_plus", "plus"), ("autoattack_rand", "rand")])
def test_evaluate_records_the_version_of_each_number(name, version):
    # at eps 0.5 APGD-CE breaks every example of the linear problem, so the later members attack none
    model, x, y, _ = _linear_problem("linf", 0.5)
    results = evaluate_lib.evaluate(model, x, y, epsilon=0.5, attacks=["autoattack", name], verbose=0,
                                    masking_check=False)
    info = results["attacks"]
    assert info["autoattack"]["version"] == "standard" and info[name]["version"] == version
    assert list(info[name]["members"]) == list(VERSIONS[version]["attacks"])
    assert info[name]["members"]["apgd-ce"]["restarts"] == (5 if version == "plus" else 1)
    ra = results["robust_accuracy"]
    assert ra[name] == ra["autoattack"] == 0.0 and f"{name}/apgd-dlr" in ra
    json.dumps(results)


def test_evaluate_single_members(trained_small_cnn, mnist5k_test):
    x, y = mnist5k_test
    results = evaluate_lib.evaluate(trained_small_cnn, x[:10], y[:10], epsilon=0.3, attacks=["apgd-ce", "apgd-t"],
                                    verbose=0)
    assert set(results["robust_accuracy"]) == {"apgd-ce", "apgd-t", "all"}
    assert "masking_check" not in results
    assert list(results["attacks"]["apgd-t"]["members"]) == ["apgd-t"]


def test_evaluate_sweep_and_report(trained_small_cnn, mnist5k_test, tmp_path):
    x, y = mnist5k_test
    results = evaluate_lib.evaluate_sweep(trained_small_cnn, x[:20], y[:20], epsilons=[0.0, 0.1, 0.2],
                                          attacks=["fgsm", "apgd-ce"], verbose=0)
    assert results["epsilon"] == 0.2
    assert [e["epsilon"] for e in results["sweep"]] == [0.0, 0.1, 0.2]
    assert results["sweep"][0]["robust_accuracy"]["all"] == results["natural_accuracy"]
    paths = report.write_report(results, str(tmp_path / "rep"))
    assert set(paths) == {"results.json", "report.md", "robust_vs_eps.png", "per_class.png"}
    for name in ("robust_vs_eps.png", "per_class.png"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(paths["report.md"]).read()
    assert "## Robust accuracy against eps" in text and "apgd-ce" in text and "Worst class" in text
    assert json.load(open(paths["results.json"]))["sweep"][1]["epsilon"] == 0.1


def _results(**robust):
    return {"examples": 100, "epsilon": 0.3, "norm": "linf", "natural_accuracy": 0.99, "robust_accuracy": robust,
            "attacks": {}, "per_class": []}


def test_masking_warnings():
    assert report.masking_warnings(_results(fgsm=0.6, pgd20=0.5, all=0.5)) == []
    assert any("FGSM" in w for w in report.masking_warnings(_results(fgsm=0.4, pgd20=0.5, all=0.4)))
    assert any("Square" in w for w in report.masking_warnings(_results(pgd20=0.5, square=0.3, all=0.3)))
    r = _results(autoattack=0.40, all=0.40)
    r["attacks"]["autoattack"] = {"members": {"square": {"broken": 3, "attacked": 45, "robust_accuracy": 0.4,
                                                         "seconds": 1.0}}}
    warnings = [w for w in report.masking_warnings(r) if "inside AutoAttack" in w]
    assert len(warnings) == 1 and "--attacks=autoattack_plus" in warnings[0] and "--epsilon=0.3" in warnings[0]
    r["model_file"] = "runs/x/model.keras"
    assert "python -m ardir_tf.evaluate --model=runs/x/model.keras" in report.masking_warnings(r)[0]
    # after the plus version the warning does not send the user to plus again
    r["attacks"] = {"autoattack_plus": {"version": "plus", "members": {
        "apgd-ce": {"broken": 50}, "fab": {"broken": 0}, "square": {"broken": 3, "attacked": 45}}}}
    (warning,) = report.masking_warnings(r)
    assert "(apgd-ce, fab)" in warning and "already the plus version" in warning and "--attacks" not in warning
    # Square alone breaking what it attacked is no masking sign
    r["attacks"] = {"square": {"version": "custom", "members": {"square": {"broken": 30, "attacked": 45}}}}
    assert report.masking_warnings(r) == []
    r = _results(pgd20=0.5, all=0.5)
    r["masking_check"] = {"epsilon": 0.5, "attack": "pgd50", "robust_accuracy": 0.3}
    assert any("eps=0.5" in w for w in report.masking_warnings(r))
    r = _results(pgd20=0.5, all=0.5)
    r["sweep"] = [{"epsilon": 0.1, "robust_accuracy": {"pgd20": 0.5, "all": 0.5}},
                  {"epsilon": 0.2, "robust_accuracy": {"pgd20": 0.6, "all": 0.6}}]
    assert any("rises" in w for w in report.masking_warnings(r))


def test_cli_autoattack_sweep_report(trained_small_cnn_path, tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "ardir_tf.evaluate", f"--model={trained_small_cnn_path}", "--examples=6",
         "--attacks=fgsm,apgd-ce", "--masking_check=on", "--epsilon=0.3", "--epsilons=0.1,0.3",
         f"--report_dir={tmp_path / 'rep'}", f"--output={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [e["epsilon"] for e in results["sweep"]] == [0.1, 0.3]
    assert set(results["robust_accuracy"]) == {"fgsm", "apgd-ce", "all"} and "masking_check" in results
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "robust_vs_eps.png").exists()
    bad = subprocess.run([sys.executable, "-m", "ardir_tf.evaluate", f"--model={trained_small_cnn_path}",
                          "--epsilons=0.1,abc"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--epsilons" in bad.stderr


# ------------------------------------------------------- cross-check against ART (slow)
CROSS_CHECK_EXAMPLES = 30


@pytest.fixture(scope="module")
def pgd_trained_small_cnn(mnist5k_train):
    """small_cnn (width 8) trained with PGD-AT at eps 0.3 (5 steps of 0.1, eps warm-up) for 3 epochs."""
    from ardir_tf import methods, models

    x, y = mnist5k_train
    keras.utils.set_random_seed(0)
    student = models.get("small_cnn", 10, (28, 28, 1), width=8)
    trainer = methods.PGDAT(student, epsilon=0.3, attack_steps=5, attack_step_size=0.1, epsilon_warmup_steps=94,
                            seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, batch_size=64, epochs=3, verbose=0)
    return student


def art_autoattack_accuracy(model, x, y, eps, *, restarts=1, square_queries=1000, deepfool=False, batch_size=64):
    """Robust accuracy under the Adversarial Robustness Toolbox's AutoAttack (L-inf).

    ART's default members (APGD-CE, APGD-DLR, DeepFool, Square), with ``restarts`` random restarts
    of each APGD and Square and ``square_queries`` Square iterations (ART's defaults: 5, 5,000 and
    DeepFool on; the CI test uses 1, 1,000 and no DeepFool, which took ~1 minute alone, to fit its
    time budget; the benchmark uses the defaults).
    """
    from art.attacks.evasion import AutoAttack as ArtAutoAttack
    from art.attacks.evasion import AutoProjectedGradientDescent, DeepFool, SquareAttack
    from art.estimators.classification import TensorFlowV2Classifier

    clf = TensorFlowV2Classifier(model=model, nb_classes=int(model.outputs[0].shape[-1]), input_shape=x.shape[1:],
                                 loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                 clip_values=(0.0, 1.0))
    np.random.seed(0)
    members = [
        AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=eps / 3, max_iter=100, targeted=False,
                                     nb_random_init=restarts, batch_size=batch_size, loss_type=loss, verbose=False)
        for loss in ("cross_entropy", "difference_logits_ratio")
    ] + ([DeepFool(clf, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=batch_size, verbose=False)]
         if deepfool else []) + [
        SquareAttack(clf, norm=np.inf, max_iter=square_queries, eps=eps, p_init=0.8, nb_restarts=restarts,
                     batch_size=batch_size, verbose=False),
    ]
    attack = ArtAutoAttack(clf, norm=np.inf, eps=eps, eps_step=eps / 3, attacks=members, batch_size=batch_size)
    x_adv = attack.generate(x=x, y=y)
    assert np.abs(x_adv - x).max() <= eps + 1e-5
    return float(np.mean(np.argmax(model.predict(x_adv, verbose=0), -1) == y))


@pytest.mark.slow
def test_cross_check_against_art_autoattack(pgd_trained_small_cnn, mnist5k_test):
    x, y = mnist5k_test
    x, y = x[:CROSS_CHECK_EXAMPLES], y[:CROSS_CHECK_EXAMPLES]
    ours = evaluate_lib.evaluate(pgd_trained_small_cnn, x, y, epsilon=0.3, attacks=["pgd20", "cw", "autoattack"],
                                 verbose=0, masking_check=False)
    ra = ours["robust_accuracy"]
    assert ours["natural_accuracy"] >= 0.8
    assert ra["pgd20"] >= 0.1, "the PGD-trained model should keep some robustness for the check to mean something"
    assert ra["autoattack"] <= ra["pgd20"] and ra["autoattack"] <= ra["cw"]
    art = art_autoattack_accuracy(pgd_trained_small_cnn, x, y, 0.3)
    assert ra["autoattack"] <= art + 0.005, f"ours {ra['autoattack']:.3f} vs ART {art:.3f}"


@pytest.mark.parametrize("member", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_members_attack_a_batch_of_one(member):
    """The last survivor of a batch reaches a member alone: a batch of one must trace and break."""
    model, x, y, robust = _linear_problem("linf", 0.15)
    i = int(np.argmin(robust))  # an example that can be broken
    result = AutoAttack(model, attacks=[member], square_queries=400, apgd_steps=30, fab_steps=30).run(
        x[i:i + 1], y[i:i + 1], 0.15)
    assert result.robust.tolist() == [False] and np.abs(result.x_adv - x[i:i + 1]).max() <= 0.15 + 1e-6
