"""Each method's loss against a NumPy hand computation, forward-pass counts, and ARDIR options."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ardir_tf import losses, methods, models
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
    ce = np_ce(y.numpy(), np_out(s, x))
    # Each term as it enters the loss (issue 19): the kl metric carries alpha t^2.
    np.testing.assert_allclose(out["terms"]["kl"], 0.75 * temperature**2 * kl, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(out["terms"]["ce"], 0.25 * ce, rtol=1e-5)
    np.testing.assert_allclose(out["loss"], 0.75 * temperature**2 * kl + 0.25 * ce, rtol=1e-5, atol=1e-5)


def test_ard_defaults_are_the_reference():
    trainer = methods.ARD(small(), small(16), **KW)
    assert trainer.output_loss == methods.ARDLoss(temperature=30.0, alpha=1.0, kl_reduction="elementmean")
    assert trainer.attack.random_start == "uniform" and trainer.attack.objective == "ce"
    iad = methods.IAD(small(), small(16), **KW)
    assert iad.output_loss == methods.IADLoss(temperature=1.0, alpha=1.0, beta=0.1, begin=60, kl_reduction="elementmean")


def rslad_reference_loss(teacher_logits, adversarial_logits, natural_logits):
    """The training loss of zibojia/RSLAD ``resnet18_rslad_cifar10.py`` transcribed to NumPy:
    ``kl_loss(a, b) = -a*b + log(b + 1e-5)*b`` with ``a = log_softmax(S)``, ``b = softmax(T)``,
    ``torch.mean`` over the ``[B, C]`` matrix, ``5/6`` adversarial + ``1/6`` natural."""
    b = np_softmax(teacher_logits)

    def kl_loss(student_logits):
        a = np.log(np_softmax(student_logits))
        return np.mean(-a * b + np.log(b + 1e-5) * b)

    return 5 / 6.0 * kl_loss(adversarial_logits) + 1 / 6.0 * kl_loss(natural_logits)


def test_rslad_loss_is_the_reference_formula(batch):
    """Issue 16: the reference averages the element-wise KL over all B*C elements (elementmean).
    Its ``+1e-5`` inside the log adds ``mean(b log((b + 1e-5) / b))``, a constant of the teacher
    alone (no gradient): the exact KL here equals the reference minus that constant."""
    x, y, x_adv = batch
    s, t = small(), small(16, seed=2)
    out = loss_of(methods.RSLAD(s, t, **KW), batch)
    tl, adv, nat = np_out(t, x), np_out(s, x_adv), np_out(s, x)
    b = np_softmax(tl)
    offset = np.mean(b * (np.log(b + 1e-5) - np.log(b)))
    reference = rslad_reference_loss(tl, adv, nat)
    np.testing.assert_allclose(float(out["loss"]), reference - offset, rtol=1e-5)
    # The old batch-mean scale is C = 10 times the reference: far outside the tolerance.
    batchmean = 5 / 6 * np_kl(tl, adv).mean() + 1 / 6 * np_kl(tl, nat).mean()
    np.testing.assert_allclose(batchmean, 10 * (reference - offset), rtol=1e-5)
    old = loss_of(methods.RSLAD(s, t, kl_reduction="batchmean", **KW), batch)
    np.testing.assert_allclose(float(old["loss"]), batchmean, rtol=1e-5)
    trainer = methods.RSLAD(s, t, **KW)
    assert trainer.attack.random_start == "normal" and trainer.attack.objective == "kl_teacher"


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
    np.testing.assert_allclose(out["terms"]["introspection"], 0.8 * intro if epoch >= begin else 0.0, rtol=1e-5,
                               atol=1e-8)


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
    np.testing.assert_allclose(out["terms"]["ir"], 3.0 * ir, rtol=1e-5)
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


def _ardir_objective_step_agreement(trainer, batch, step_size=0.01):
    """Share of pixels where one PGD step of ``trainer``'s training attack (no random start) moves
    along ``sign(grad J)``, ``J`` the per-example ARDIR objective written out here from the loss's
    pieces: ``alpha t^2 KL_i(p^t(T(x)) || p^t(S(x')))`` at the element-mean scale plus
    ``gamma * d(S_ir(x'), T_ir(x))``, with the student in inference mode (as the attack)."""
    x, y, _ = batch
    context = trainer.prepare(x, y)
    attack = trainer.attack.replace(steps=1, step_size=step_size, random_start="none")
    x_adv = attack(trainer.attack_model(), x, y, reference=trainer.attack_reference(context))
    student_features = models.feature_model(trainer.student, [s for s, _ in trainer.layer_pairs])
    teacher_features = models.feature_model(trainer.teacher, [t for _, t in trainer.layer_pairs])
    teacher = teacher_features(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(x)
        student = student_features(x, training=False)
        kl = losses.kl_divergence(teacher[0], student[0], temperature=30.0, reduction="none") / 10.0
        ir = losses.ir_distance_per_example(student[1], teacher[1])
        objective = tf.reduce_sum(900.0 * kl + trainer.gamma * ir)
    direction = np.sign(tape.gradient(objective, x).numpy())
    moved = np.sign(np.round((x_adv.numpy() - x.numpy()) / step_size))
    inside = (x.numpy() > step_size) & (x.numpy() < 1 - step_size) & (direction != 0)  # no clipping at 0 or 1
    return float(np.mean(moved[inside] == direction[inside]))


def test_ardir_attack_objective_maximises_the_ardir_loss(batch):
    """The ``ardir`` attack steps along the gradient of the ARDIR objective, pixel by pixel; a CE
    attack (the default) does not, so this test fails for one."""
    s, t = small(8), small(8, seed=2)
    ardir_attack = methods.ARDIR(s, t, attack_objective="ardir", gamma=1.0, **KW)
    assert _ardir_objective_step_agreement(ardir_attack, batch) > 0.99
    ce_attack = methods.ARDIR(s, t, attack_objective="ce", gamma=1.0, **KW)
    assert _ardir_objective_step_agreement(ce_attack, batch) < 0.8


def _loss_and_gradients(trainer, batch):
    x, y, x_adv = batch
    context = trainer.prepare(x, y)
    with tf.GradientTape() as tape:
        out = trainer.method_loss(x, y, x_adv, context)
    weights = trainer.student.trainable_weights
    return float(out["loss"]), [g.numpy() for g in tape.gradient(out["loss"], weights)]


@pytest.mark.parametrize("base,options", [("ard", {}), ("ard", dict(alpha=0.5, temperature=4.0)),
                                          ("iad", dict(begin=0)), ("iad", dict(begin=0, alpha=0.7, beta=0.5))])
def test_ardir_with_gamma_0_is_its_base(batch, base, options):
    """Issue 18: ARDIR holds ARD's (or IAD's) output loss; with gamma = 0 it is that method: the
    same loss and the same gradients for every student weight on a fixed batch."""
    s, t = small(8), small(8, seed=2)
    reference = (methods.ARD if base == "ard" else methods.IAD)(s, t, **options, **KW)
    ardir = methods.ARDIR(s, t, gamma=0.0, base=base, **options, **KW)
    assert ardir.output_loss == reference.output_loss
    loss, grads = _loss_and_gradients(reference, batch)
    ardir_loss, ardir_grads = _loss_and_gradients(ardir, batch)
    assert loss > 0
    np.testing.assert_allclose(ardir_loss, loss, rtol=1e-6)
    for g, h in zip(grads, ardir_grads):
        np.testing.assert_allclose(h, g, rtol=1e-5, atol=1e-9)
    # gamma > 0 changes both: the IR term is really added
    with_ir, ir_grads = _loss_and_gradients(methods.ARDIR(s, t, gamma=1.0, base=base, **options, **KW), batch)
    assert with_ir > loss + 1e-3 and any(not np.allclose(g, h) for g, h in zip(grads, ir_grads))


def test_ardir_rejects_an_option_of_the_other_base():
    s, t = small(8), small(8, seed=2)
    with pytest.raises(ValueError, match="beta: not an option of base='ard'"):
        methods.ARDIR(s, t, beta=0.2, **KW)
    assert methods.ARDIR(s, t, base="iad", beta=0.2, **KW).output_loss.beta == 0.2


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_terms_are_reported_as_they_enter_the_loss(batch, name):
    """Issue 19: every term metric carries its weight (and t^2), so the terms sum to the loss, and
    each trainer reports exactly the terms it declares."""
    s, t = small(8), small(8, seed=2)
    cls = methods.get(name)
    options = {"alpha": 0.6} if name in ("ard", "iad", "ardir") else {}
    if name == "iad":
        options["begin"] = 0
    trainer = cls(s, t, **options, **KW) if name in methods.DISTILLATION_METHODS else cls(s, **KW)
    out = loss_of(trainer, batch)
    assert set(out["terms"]) == set(trainer.loss_terms)
    if out["terms"]:
        np.testing.assert_allclose(sum(float(v) for v in out["terms"].values()), float(out["loss"]), rtol=1e-6)
        assert all(float(v) > 0 for v in out["terms"].values()), out["terms"]


def test_ard_kl_metric_has_the_scale_of_the_loss(batch):
    """The quick start's complaint: at t = 30 the raw KL is ~1e-5 while the loss is ~0.1; the
    reported term is the loss itself when alpha = 1."""
    x, y, _ = batch
    s, t = small(8), small(8, seed=2)
    trainer = methods.ARD(s, t, **KW)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = trainer.train_step((x, y))
    np.testing.assert_allclose(float(logs["kl"]), float(logs["loss"]), rtol=1e-6)


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
    for kwargs, message in ((dict(epsilon=-0.1), "epsilon must lie in"), (dict(epsilon=1.5), "epsilon must lie in"),
                            (dict(epsilon=8), "did you mean 8/255"), (dict(attack_steps=0), "attack_steps must be"),
                            (dict(attack_step_size=0.0), "step size must be positive"),
                            (dict(random_start="gauss"), "random_start"), (dict(norm="l1"), "norm")):
        with pytest.raises(ValueError, match=message):
            methods.PGDAT(s, **{**KW, **kwargs})
    methods.PGDAT(s, **{**KW, "epsilon": 2.0, "norm": "l2"})  # an L2 radius above 1 is fine
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("nope")
