"""The training CLI: shipped flagfiles, resume, robustness of every method on a short mnist5k run,
flags a method does not use, fractions and the epsilon hint. Bad input and non-finite losses:
test_cli_errors.py; crash safety: test_checkpoints.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

from ardir_tf import methods, train
from export import card
from train_cli import error_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
TINY = ["--model_options=width=4", "--train_examples=256", "--batch_size=64", "--attack_steps=2",
        "--val_examples=0", "--eval_examples=40", "--eval_attacks=fgsm", "--progress=none"]


def run_cli(args, cwd, module="ardir_tf.train"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=900)


def process_error_line(proc):
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_shipped_flagfiles_resolve_from_any_directory(tmp_path):
    # cifar.flags names a teacher under runs/ that this fresh directory does not have.
    line = process_error_line(run_cli(["--flagfile=cifar.flags"], tmp_path))
    assert "runs/cifar_teacher/model.keras" in line


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    teacher_dir = tmp_path / "teacher"
    # Explicit warm-up: its default depends on --epochs, which this test changes between the runs.
    common = [*TINY, "--deterministic", "--method=ardir", "--lr_schedule=constant", "--epsilon_warmup_epochs=1"]
    proc = run_cli(["--method=pgd_at", f"--workdir={teacher_dir}", "--epochs=1", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher = f"--teacher={teacher_dir / 'model.keras'}"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli([*common, teacher, f"--workdir={straight}", "--epochs=3"], tmp_path).returncode == 0
    # The same run stopped after epoch 1, then the same command again with the full epoch count.
    assert run_cli([*common, teacher, f"--workdir={resumed}", "--epochs=1"], tmp_path).returncode == 0
    first = json.loads((resumed / "checkpoint" / "state.json").read_text())["train_seconds"]
    proc = run_cli([*common, teacher, f"--workdir={resumed}", "--epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch 1" in proc.stdout
    # The training time adds up over both invocations; the results count it, then the evaluation.
    total = json.loads((resumed / "checkpoint" / "state.json").read_text())["train_seconds"]
    assert 0 < first < total
    assert json.loads((resumed / "results.json").read_text())["training"]["seconds"] >= total
    a = keras.models.load_model(straight / "model.keras").get_weights()
    b = keras.models.load_model(resumed / "model.keras").get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    with open(resumed / "history.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 3  # header + one row per epoch
    # The teacher is recorded relative to the run, so the two folders moved together still resume.
    assert json.loads((resumed / "settings.json").read_text())["teacher"] == os.path.join("..", "teacher", "model.keras")
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("teacher", "resumed"):
        os.rename(tmp_path / name, moved / name)
    proc = run_cli([*common, f"--teacher={moved / 'teacher' / 'model.keras'}", f"--workdir={moved / 'resumed'}",
                    "--epochs=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already trained for 3 epochs; reusing it" in proc.stdout


ROBUST_SETTINGS = dict(
    dataset="mnist5k", data_dir=None, model="small_cnn", model_options="width=8", epochs=2, batch_size=32,
    train_examples=1500, val_examples=0, eval_examples=300, eval_attacks=["pgd20"], optimizer="adam",
    learning_rate=1e-3, momentum=0.9, lr_schedule="constant", lr_decay_epochs=[], lr_decay_factor=0.1,
    weight_decay=0.0, weight_decay_mode="l2", epsilon=0.2, attack_steps=5, attack_step_size=0.05, norm="linf",
    random_start=None, attack_bn_training=False, eval_attack_steps=None, trades_beta=6.0, temperature=None,
    alpha=1.0, kl_reduction=None, rslad_adversarial_weight=5 / 6, iad_beta=0.1, iad_begin=1, ir_layers=[],
    ir_weights=[], gamma=1.0, ir_distance="normalized_mse", teacher_ir_input="natural", ardir_base="ard",
    attack_objective="ce", seed=0, deterministic=False, progress="none", verbose=False, epsilon_warmup_epochs=1.0,
)


@pytest.fixture(scope="module")
def robust_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    results = {"teacher": train.train_and_evaluate(dict(ROBUST_SETTINGS, method="pgd_at", epochs=3), str(root / "teacher"))}
    teacher = str(root / "teacher" / "model.keras")
    for method in ("standard", "pgd_at", "trades", "ard", "rslad", "iad", "ardir"):
        settings = dict(ROBUST_SETTINGS, method=method)
        if method == "ard":
            settings["temperature"] = 1.0  # t=30 needs the long reference schedule; this run is 2 epochs
        results[method] = train.train_and_evaluate(settings, str(root / method), teacher)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd_at", "trades", "ard", "rslad", "iad", "ardir"])
def test_adversarial_training_is_far_more_robust_than_standard(robust_runs, method):
    standard = robust_runs["standard"]["robust_accuracy"]["pgd20"]
    robust = robust_runs[method]["robust_accuracy"]["pgd20"]
    assert robust_runs["standard"]["natural_accuracy"] > 0.85
    assert robust >= standard + 0.25, (method, robust, standard)


@pytest.mark.slow
def test_results_json_schema(robust_runs, tmp_path):
    r = robust_runs["ardir"]
    assert {"natural_accuracy", "robust_accuracy", "epsilon", "norm", "examples", "dataset", "per_class"} <= set(r)
    assert r["examples"] == 300 and r["dataset"] == "mnist5k" and r["epsilon"] == pytest.approx(0.2)
    assert len(r["per_class"]) == 10 and r["training"]["method"] == "ardir"


def test_learning_rate_schedules():
    base = dict(learning_rate=0.1, epochs=10, lr_decay_epochs=[4, 8], lr_decay_factor=0.1)
    piecewise = train.learning_rate(dict(base, lr_schedule="piecewise"), steps_per_epoch=5)
    assert [float(piecewise(s)) for s in (0, 20, 21, 40, 41)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    cosine = train.learning_rate(dict(base, lr_schedule="cosine"), steps_per_epoch=5)
    assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(25)) == pytest.approx(0.05)
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-7)
    assert train.learning_rate(dict(base, lr_schedule="constant"), steps_per_epoch=5) == 0.1


def test_l2_weight_decay_is_pytorch_sgd_coupled_decay():
    """One SGD step with l2_weight_decay on a zero loss moves each weight by -lr * wd * w."""
    from ardir_tf import methods, models

    class ZeroLoss(methods.PGDAT):
        def method_loss(self, x, y, x_adv, context):
            logits = self.student(x_adv, training=True)
            return methods.base.LossOutput(loss=0.0 * tf.reduce_sum(logits), terms={}, adversarial_logits=logits)

    import tensorflow as tf

    student = models.get("small_cnn", 10, (28, 28, 1), width=4)
    trainer = ZeroLoss(student, epsilon=0.1, attack_steps=1, attack_step_size=0.1, l2_weight_decay=0.01, seed=0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [w.numpy().copy() for w in student.trainable_weights]
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    trainer.fit(x, np.arange(4), batch_size=4, epochs=1, verbose=0)
    for b, w in zip(before, student.trainable_weights):
        np.testing.assert_allclose(w.numpy(), b - 0.5 * 0.01 * b, rtol=1e-5, atol=1e-7)


def test_mixed_bfloat16_training_saves_a_float32_model(tmp_path):
    work = tmp_path / "w"
    proc = run_cli(["--method=pgd_at", f"--workdir={work}", "--epochs=1", "--precision=mixed_bfloat16", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = keras.models.load_model(work / "model.keras")
    assert {layer.compute_dtype for layer in model.layers if hasattr(layer, "compute_dtype")} == {"float32"}
    settings = json.loads((work / "settings.json").read_text())
    assert settings["precision"] == "mixed_bfloat16"



def test_a_run_from_before_a_new_flag_still_resumes(tmp_path):
    new = dict(train._FLAG_DEFAULTS)
    old = {k: v for k, v in new.items() if k != "seed"}  # settings.json written before --seed existed
    for name, requested in (("same", new), ("other", dict(new, seed=7))):
        (tmp_path / name).mkdir()
        (tmp_path / name / train.SETTINGS_FILE).write_text(json.dumps(old))
    train.check_settings(str(tmp_path / "same"), new)  # the new flag at its default: the same run
    with pytest.raises(ValueError, match=r"different settings \(seed\)"):
        train.check_settings(str(tmp_path / "other"), dict(new, seed=7))


def test_the_teacher_is_compared_as_a_file_not_as_a_spelling(tmp_path):
    (tmp_path / "teachers").mkdir()
    for name in ("a.keras", "b.keras"):
        (tmp_path / "teachers" / name).write_bytes(b"")
    os.symlink(tmp_path / "teachers", tmp_path / "link")
    run = tmp_path / "run"
    run.mkdir()
    # A run from before relative records: the teacher by an absolute path through a symbolic link.
    old = dict(train._FLAG_DEFAULTS, method="ard", teacher=str(tmp_path / "link" / "a.keras"))
    (run / train.SETTINGS_FILE).write_text(json.dumps(old))
    same = dict(old, teacher=train.teacher_record(str(tmp_path / "teachers" / "a.keras"), str(run)))
    assert same["teacher"] == os.path.join("..", "teachers", "a.keras")
    train.check_settings(str(run), same, write=False)
    other = dict(old, teacher=train.teacher_record(str(tmp_path / "teachers" / "b.keras"), str(run)))
    with pytest.raises(ValueError, match=r"different settings \(teacher\)"):
        train.check_settings(str(run), other, write=False)
    assert card.teacher_info(same, str(run))["path"] == str((tmp_path / "teachers" / "a.keras").resolve())
    assert card.teacher_info(same, str(run))["available"]


# --------------------------------------------- the command line: unused flags, fractions, epsilon
@pytest.mark.parametrize("args, expected", [
    (["--method=rslad", "--temperature=2"], "--temperature is not used by --method=rslad"),
    (["--method=pgd_at", "--kl_reduction=batchmean", "--alpha=0.5"],
     "--alpha, --kl_reduction are not used by --method=pgd_at (it has no settings of its own)"),
    (["--method=ardir", "--iad_beta=0.2"], "--iad_beta is not used by --method=ardir with --ardir_base=ard"),
    (["--method=standard", "--attack_bn_training"], "--attack_bn_training is not used by --method=standard"),
    (["--method=trades", "--teacher_method=trades"], "--teacher_method is not used by --method=trades"),
    (["--method=ard", "--teacher=t.keras", "--teacher_epochs=3"],
     "--teacher_epochs is not used by --method=ard with a given --teacher"),
])
def test_a_flag_the_method_does_not_use_is_refused(train_cli, tmp_path, args, expected):
    line = error_line(train_cli(*args, f"--workdir={tmp_path / 'w'}"))
    assert expected in line, line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("values", [
    dict(method="ardir", ardir_base="iad", iad_beta=0.2, iad_begin=3, temperature=2.0),
    dict(method="ardir", teacher="", teacher_method="trades", trades_beta=3.0),  # the teacher it trains uses it
    dict(method="rslad", kl_reduction="batchmean", rslad_adversarial_weight=0.5, random_start="uniform"),
    dict(method="iad", iad_beta=0.2, kl_reduction="batchmean", alpha=0.9),
    dict(method="standard", epsilon=0.1, attack_steps=5, eval_attack_steps=7),
])
def test_flags_the_method_uses_are_accepted(values):
    settings = dict(train.default_settings(), **values)
    train.check_settings_used(settings, sorted(values))


def test_defaults_never_count_as_set():
    # default_settings() holds every method's settings; only what the user set is checked.
    for method in train.methods.METHODS:
        train.check_settings_used(dict(train.default_settings(), method=method), [])


def test_epsilon_and_step_size_take_fractions(train_cli, tmp_path):
    # Fails later, at the unknown model: the fractions were parsed and validated first.
    line = error_line(train_cli("--method=pgd_at", "--epsilon=8/255", "--attack_step_size=2/255", "--model=nope",
                                     f"--workdir={tmp_path}"))
    assert "unknown model 'nope'" in line
    assert flags.FLAGS.epsilon == pytest.approx(8 / 255) and flags.FLAGS.attack_step_size == pytest.approx(2 / 255)


@pytest.mark.parametrize("args, expected", [
    (["--epsilon=8"], "epsilon must lie in [0, 1] for linf (>= 0 for l2), got 8 (did you mean 8/255?)"),
    (["--epsilon=16.0"], "did you mean 16/255?"),
    (["--epsilon=1.5"], "got 1.5"),
    (["--epsilon=8/0"], "divides by zero"),
    (["--epsilon=eight/255"], "not a number or a fraction"),
    (["--attack_step_size=0"], "step size must be positive"),
])
def test_a_bad_epsilon_is_one_line_with_a_hint(train_cli, tmp_path, args, expected):
    line = error_line(train_cli("--method=pgd_at", *args, f"--workdir={tmp_path / 'w'}"))
    assert expected in line, line
    assert "did you mean" not in line or "/255?" in line
    if args == ["--epsilon=1.5"]:
        assert "did you mean" not in line  # not an integer: no guess
    assert not (tmp_path / "w").exists()


def test_an_l2_radius_above_1_is_not_an_error(train_cli, tmp_path):
    line = error_line(train_cli("--method=pgd_at", "--norm=l2", "--epsilon=2", "--model=nope", f"--workdir={tmp_path}"))
    assert "unknown model 'nope'" in line


def test_build_trainer_passes_each_method_its_declared_settings():
    from ardir_tf import models

    student, teacher = (models.get("small_cnn", 10, (28, 28, 1), width=4) for _ in range(2))
    s = dict(train.default_settings(), epsilon=0.3, attack_step_size=0.1, epsilon_warmup_epochs=0.0, temperature=4.0,
             alpha=0.5, iad_beta=0.3,
             iad_begin=2, trades_beta=3.0, rslad_adversarial_weight=0.6, kl_reduction="batchmean", gamma=2.0)
    ardir = train.build_trainer(dict(s, method="ardir", ardir_base="iad"), student, teacher)
    assert ardir.output_loss == methods.IADLoss(temperature=4.0, alpha=0.5, kl_reduction="batchmean", beta=0.3, begin=2)
    assert ardir.gamma == 2.0
    ard = train.build_trainer(dict(s, method="ard"), student, teacher)
    assert ard.output_loss == methods.ARDLoss(temperature=4.0, alpha=0.5, kl_reduction="batchmean")
    rslad = train.build_trainer(dict(s, method="rslad"), student, teacher)
    assert (rslad.adversarial_weight, rslad.kl_reduction) == (0.6, "batchmean")
    assert train.build_trainer(dict(s, method="trades"), student, None).beta == 3.0
    defaults = train.build_trainer(dict(train.default_settings(), method="rslad", epsilon=0.3, attack_step_size=0.1,
                                        epsilon_warmup_epochs=0.0),
                                   student, teacher)
    assert defaults.kl_reduction == "elementmean"  # the reference's scale (issue 16)
    assert defaults.attack == methods.AttackConfig(0.3, 0.1, 10, "linf", "normal", "kl_teacher", False)


def test_fraction_flags_are_listed_in_the_train_help():
    fv = flags.FlagValues()
    train.define_flags(fv)
    key_flags = {f.name for f in fv.get_key_flags_for_module(train.__name__)}
    assert {"epsilon", "attack_step_size", "rslad_adversarial_weight", "method"} <= key_flags
    fv(["prog", "--epsilon=8/255", "--rslad_adversarial_weight=5/6"])
    assert fv.epsilon == 8 / 255 and fv.rslad_adversarial_weight == 5 / 6
