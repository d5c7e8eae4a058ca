"""Every trainer's loss on one fixed batch, pinned to 1e-6 (relative).

The numbers were recorded from the code before the design pass of issue 18 (one KL reduction
argument, ARDIR holding ARD's or IAD's output loss, a typed attack configuration) so that the
refactor is proven to change no number. Two values per case: the loss at a fixed ``x'`` (the
method's loss alone) and the loss at the trainer's own training attack (its PGD, random start,
objective and seed as well). RSLAD is the one intended change: its KL is now averaged over the
``B*C`` elements as its reference code does, so its pinned values are the old ones over ``C``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import methods, models

SHAPE = (28, 28, 1)
NUM_CLASSES = 10
KW = dict(epsilon=0.3, attack_steps=3, attack_step_size=0.1, seed=0)


def small(width: int = 8, seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return models.get("small_cnn", NUM_CLASSES, SHAPE, width=width)


def fixed_batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, *SHAPE)).astype("float32")
    x_adv = np.clip(x + rng.uniform(-0.3, 0.3, size=x.shape), 0, 1).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=6).astype("int32")
    return tf.constant(x), tf.constant(y), tf.constant(x_adv)


def build(case: str):
    """The trainer of ``case``: fixed student/teacher weights (and connector weights, seed 3)."""
    student, teacher = small(8), small(8, seed=2)
    wide_teacher = small(16, seed=2)
    keras.utils.set_random_seed(3)
    if case == "standard":
        return methods.Standard(student, **KW)
    if case == "pgd_at":
        return methods.PGDAT(student, **KW)
    if case == "trades":
        return methods.TRADES(student, beta=6.0, **KW)
    if case == "ard":
        return methods.ARD(student, teacher, **KW)
    if case == "ard_alpha_batchmean":
        return methods.ARD(student, teacher, temperature=4.0, alpha=0.75, kl_reduction="batchmean", **KW)
    if case == "rslad":
        return methods.RSLAD(student, teacher, **KW)
    if case == "iad":
        return methods.IAD(student, teacher, begin=0, **KW)
    if case == "iad_alpha":
        return methods.IAD(student, teacher, temperature=2.0, alpha=0.8, beta=0.5, begin=0, **KW)
    if case == "iad_before_begin":
        return methods.IAD(student, teacher, **KW)
    if case == "ardir":
        return methods.ARDIR(student, teacher, **KW)
    if case == "ardir_iad":
        return methods.ARDIR(student, teacher, base="iad", **{**KW, **_ARDIR_IAD})
    if case == "ardir_layers":
        return methods.ARDIR(student, wide_teacher, ir_layers=["stage1", "stage2"], ir_weights=[0.5, 2.0], gamma=3.0,
                             **KW)
    if case == "ardir_adversarial_ir_alpha":
        return methods.ARDIR(student, teacher, teacher_ir_input="adversarial", alpha=0.5, temperature=2.0, **KW)
    if case == "ardir_attention_objective":
        return methods.ARDIR(student, wide_teacher, ir_layers=["stage2"], distance="attention",
                             attack_objective="ardir", gamma=2.0, **KW)
    raise ValueError(case)


_ARDIR_IAD = {"begin": 0}


def losses_of(case: str) -> tuple[float, float]:
    """(loss at the fixed x', loss at the trainer's own attack) of ``case``."""
    x, y, x_adv = fixed_batch()
    trainer = build(case)
    context = trainer.prepare(x, y)
    fixed = float(trainer.method_loss(x, y, x_adv, context)["loss"])
    own_adv = trainer.adversarial_examples(x, y, context)
    attacked = float(trainer.method_loss(x, y, own_adv, context)["loss"])
    return fixed, attacked


# Recorded from the code before the refactor (commit 384fd95).
PINNED: dict[str, tuple[float, float]] = {
    "standard": (2.286402463912964, 2.286402463912964),
    "pgd_at": (2.2894604206085205, 2.381382703781128),
    "trades": (2.2867064476013184, 2.2972946166992188),
    "ard": (0.00016150398005265743, 0.0002577910490799695),
    "ard_alpha_batchmean": (0.5728090405464172, 0.5735296010971069),
    # before the fix (batchmean): (0.0015711815794929862, 0.007045608479529619); now elementmean, / C
    "rslad": (0.0015711815794929862 / NUM_CLASSES, 0.007045608479529619 / NUM_CLASSES),
    "iad": (0.00016087490075733513, 0.00026917026843875647),
    "iad_alpha": (0.4574117958545685, 0.45752301812171936),
    "iad_before_begin": (0.00015983614139258862, 0.0002551486832089722),
    "ardir": (1.1175971031188965, 1.1474647521972656),
    "ardir_iad": (1.1175965070724487, 1.147476077079773),
    "ardir_layers": (14.895814895629883, 14.90601634979248),
    "ardir_adversarial_ir_alpha": (2.2674975395202637, 2.27366304397583),
    "ardir_attention_objective": (0.2657274603843689, 1.3791030645370483),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_loss_is_pinned(case):
    np.testing.assert_allclose(losses_of(case), PINNED[case], rtol=1e-6, atol=0)


if __name__ == "__main__":  # prints the table above from the current code
    for name in ("standard", "pgd_at", "trades", "ard", "ard_alpha_batchmean", "rslad", "iad", "iad_alpha",
                 "iad_before_begin", "ardir", "ardir_iad", "ardir_layers", "ardir_adversarial_ir_alpha",
                 "ardir_attention_objective"):
        print(f"    {name!r}: {tuple(float(v) for v in losses_of(name))!r},")
