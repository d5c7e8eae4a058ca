"""Each method's loss against a NumPy hand computation, forward-pass counts, and ARDIR options."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import methods, models
from ardir_tf.models.features import UnknownLayerError

SHAPE = (28, 28, 1)
KW = dict(epsilon=0.3, attack_steps=3, attack_step_size=0.1, seed=0)


def np_softmax(z, t=1.0):
    z = np.asarray(z, np.float64) / t
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kl(p_logits, q_logits, t=1.0):
    """Per-example KL(softmax(p/t) || softmax(q/t)), summed over classes."""
    p, q = np_softmax(p_logits, t), np_softmax(q_logits, t)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def np_ce(labels, logits):
    return -np.log(np_softmax(logits)[np.arange(len(labels)), labels]).mean()


def np_normalized_mse(s, t):
    s = s.reshape(len(s), -1).astype(np.float64)
    t = t.reshape(len(t), -1).astype(np.float64)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return ((s - t) ** 2).sum(1)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, *SHAPE)).astype("float32")
    x_adv = np.clip(x + rng.uniform(-0.3, 0.3, size=x.shape), 0, 1).astype("float32")
    y = rng.integers(0, 10, size=6).astype("int32")
    return tf.constant(x), tf.constant(y), tf.constant(x_adv)


def small(width=8, seed=1):
    keras.utils.set_random_seed(seed)
    return models.get("small_cnn", 10, SHAPE, width=width)


def np_out(model, x):
    return model(x, training=False).numpy().astype(np.float64)


def loss_of(trainer, batch):
    x, y, x_adv = batch
    return trainer.method_loss(x, y, x_adv, trainer.prepare(x, y))


def test_pgd_at_and_trades_losses(batch):
    x, y, x_adv = batch
    s = small()
    out = loss_of(methods.PGDAT(s, **KW), batch)
    np.testing.assert_allclose(out["loss"], np_ce(y.numpy(), np_out(s, x_adv)), rtol=1e-5)
    out = loss_of(methods.TRADES(s, beta=6.0, **KW), batch)
    nat, adv = np_out(s, x), np_out(s, x_adv)
    expected = np_ce(y.numpy(), nat) + 6.0 * np_kl(nat, adv).mean()  # batchmean
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("reduction,divisor", [("elementmean", 10.0), ("batchmean", 1.0)])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 30.0])
def test_ard_loss_temperature_and_reduction(batch, reduction, divisor, temperature):
    x, y, x_adv = batch
    s, t = small(), small(16, seed=2)
    trainer = methods.ARD(s, t, temperature=temperature, alpha=0.75, kl_reduction=reduction, **KW)
    out = loss_of(trainer, batch)
    kl = np_kl(np_out(t, x), np_out(s, x_adv), t=temperature).mean() / divisor
    expected = 0.75 * temperature**2 * kl + 0.25 * np_ce(y.numpy(), np_out(s, x))
    np.testing.assert_allclose(out["terms"]["kl"], kl, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5, atol=1e-5)


def test_ard_defaults_are_the_reference():
    trainer = methods.ARD(small(), small(16), **KW)
    assert (trainer.temperature, trainer.alpha, trainer.kl_reduction) == (30.0, 1.0, "elementmean")
    assert trainer.random_start == "uniform" and trainer.attack_objective == "ce"


def test_rslad_loss(batch):
    x, y, x_adv = batch
    s, t = small(), small(16, seed=2)
    out = loss_of(methods.RSLAD(s, t, **KW), batch)
    tl = np_out(t, x)
    expected = 5 / 6 * np_kl(tl, np_out(s, x_adv)).mean() + 1 / 6 * np_kl(tl, np_out(s, x)).mean()
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
    trainer = methods.RSLAD(s, t, **KW)
    assert trainer.random_start == "normal" and trainer.attack_objective == "kl_teacher"


@pytest.mark.parametrize("epoch,begin", [(0, 1), (3, 1)])
def test_iad_loss_switches_on_at_begin(batch, epoch, begin):
    x, y, x_adv = batch
    s, t = small(), small(16, seed=2)
    trainer = methods.IAD(s, t, temperature=2.0, alpha=0.8, beta=0.5, begin=begin, kl_reduction="batchmean", **KW)
    trainer.epoch.assign(epoch)
    out = loss_of(trainer, batch)
    nat, adv, tl, tadv = np_out(s, x), np_out(s, x_adv), np_out(t, x), np_out(t, x_adv)
    expected = 0.8 * 4.0 * np_kl(tl, adv, t=2.0).mean() + 0.2 * np_ce(y.numpy(), nat)
    w = np_softmax(tadv)[np.arange(6), y.numpy()] ** 0.5
    intro = ((1 - w) * np_kl(nat, adv)).mean()
    if epoch >= begin:
        expected += 0.8 * intro
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["terms"]["introspection"], intro if epoch >= begin else 0.0, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("ir_input", ["natural", "adversarial"])
def test_ardir_loss(batch, ir_input):
    x, y, x_adv = batch
    s, t = small(8), small(8, seed=2)  # same architecture: no connector
    trainer = methods.ARDIR(s, t, ir_layers=["stage1", "stage2"], ir_weights=[0.5, 2.0], gamma=3.0,
                            teacher_ir_input=ir_input, **KW)
    out = loss_of(trainer, batch)
    fs = models.feature_model(s, ["stage1", "stage2"])(x_adv)
    ft = models.feature_model(t, ["stage1", "stage2"])(x if ir_input == "natural" else x_adv)
    ir = (0.5 * np_normalized_mse(fs[1].numpy(), ft[1].numpy()) + 2.0 * np_normalized_mse(fs[2].numpy(), ft[2].numpy())).mean()
    kl = np_kl(np_out(t, x), np_out(s, x_adv), t=30.0).mean() / 10.0
    np.testing.assert_allclose(out["terms"]["ir"], ir, rtol=1e-5)
    np.testing.assert_allclose(out["loss"], 900.0 * kl + 3.0 * ir, rtol=1e-5)


def test_ardir_default_layers_and_connectors(batch):
    s, t = small(8), small(16, seed=2)
    trainer = methods.ARDIR(s, t, **KW)
    assert trainer.layer_pairs == [("stage2", "stage2")]
    assert isinstance(trainer.connectors[0], keras.Sequential)  # 16 -> 32 channels needs a 1x1 conv
    before = {v.path: v.numpy().copy() for v in trainer.connectors[0].trainable_variables}
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y, _ = batch
    trainer.fit(x, y, batch_size=6, epochs=1, verbose=0)
    after = {v.path: v.numpy() for v in trainer.connectors[0].trainable_variables}
    assert any(not np.allclose(before[k], after[k]) for k in before), "the connector did not train"
    assert not any("connector" in w.path for w in s.weights), "the connector leaked into the student"


def test_ardir_bad_layers_and_shapes():
    s, t = small(8), small(16, seed=2)
    with pytest.raises(UnknownLayerError, match="available layers: .*stage1"):
        methods.ARDIR(s, t, ir_layers=["nope"], **KW)
    with pytest.raises(ValueError, match="cannot be connected"):
        methods.ARDIR(s, t, ir_layers=["stage2:stage1"], **KW)  # 8x8 student map vs 24x24 teacher map
    with pytest.raises(ValueError, match="ir_weights"):
        methods.ARDIR(s, t, ir_layers=["stage1", "stage2"], ir_weights=[1.0], **KW)
    other = models.get("small_cnn", 7, SHAPE, width=8)
    with pytest.raises(ValueError, match="classes"):
        methods.ARD(s, other, **KW)


def test_ardir_attack_objective_maximises_the_ardir_loss(batch):
    x, y, _ = batch
    s, t = small(8), small(8, seed=2)
    trainer = methods.ARDIR(s, t, attack_objective="ardir", gamma=1.0, **KW)
    context = trainer.prepare(x, y)
    x_adv = trainer.adversarial_examples(x, y, context)
    start = trainer.method_loss(x, y, x, context)["loss"]
    assert float(trainer.method_loss(x, y, x_adv, context)["loss"]) > float(start)


# ------------------------------------------------------------------------------ pass counting
class _CallCounter:
    """Counts ``keras.Model.__call__`` per model object during one eager ``train_step``."""

    def __init__(self, monkeypatch):
        self.counts: dict[int, int] = {}
        original = keras.Model.__call__

        def counting(model, *args, **kwargs):
            self.counts[id(model)] = self.counts.get(id(model), 0) + 1
            return original(model, *args, **kwargs)

        monkeypatch.setattr(keras.Model, "__call__", counting)

    def of(self, *models_):
        return sum(self.counts.get(id(m), 0) for m in models_)


def _step(trainer, batch):
    x, y, _ = batch
    trainer.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True)
    trainer.optimizer.build(trainer.trainable_variables)
    trainer.train_step((x, y))


@pytest.mark.parametrize(
    "name,student_calls,teacher_calls",
    [("pgd_at", 3 + 1 + 1, 0), ("trades", 1 + 3 + 2, 0), ("ard", 3 + 1 + 1, 1), ("rslad", 3 + 2, 1),
     ("iad", 3 + 2, 2), ("ardir", 3 + 1 + 1, 1)],
)
def test_forward_passes_per_step(monkeypatch, batch, name, student_calls, teacher_calls):
    """K attack passes, the loss's own passes, one inference pass for natural accuracy only when
    the loss has none, and one teacher pass per input the method needs."""
    s, t = small(8), small(8, seed=2)
    cls = methods.get(name)
    trainer = cls(s, t, **KW) if name in methods.DISTILLATION_METHODS else cls(s, **KW)
    if name == "iad":
        trainer = methods.IAD(s, t, begin=0, **KW)
    counter = _CallCounter(monkeypatch)
    _step(trainer, batch)
    student_models = [s] + ([trainer.student_features] if name == "ardir" else [])
    teacher_models = [t] + ([trainer.teacher_features] if name == "ardir" else [])
    assert counter.of(*student_models) == student_calls
    assert counter.of(*teacher_models) == teacher_calls


def test_iad_skips_the_adversarial_teacher_pass_before_begin(monkeypatch, batch):
    s, t = small(8), small(8, seed=2)
    trainer = methods.IAD(s, t, begin=5, **KW)
    counter = _CallCounter(monkeypatch)
    _step(trainer, batch)
    assert counter.of(t) == 1


def test_only_student_weights_change(batch):
    x, y, _ = batch
    s, t = small(8), small(8, seed=2)
    teacher_before = [w.numpy().copy() for w in t.weights]
    student_before = [w.numpy().copy() for w in s.weights]
    trainer = methods.ARDIR(s, t, **KW)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    history = trainer.fit(x, y, batch_size=6, epochs=1, verbose=0)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(teacher_before, t.weights))
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(student_before, s.weights))
    assert {"loss", "kl", "ir", "natural_accuracy", "adversarial_accuracy"} <= set(history.history)


def test_bad_settings_raise():
    s = small(8)
    for kwargs in (dict(epsilon=-0.1), dict(epsilon=1.5), dict(attack_steps=0), dict(attack_step_size=0.0),
                   dict(random_start="gauss"), dict(norm="l1")):
        with pytest.raises(ValueError):
            methods.PGDAT(s, **{**KW, **kwargs})
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("nope")
