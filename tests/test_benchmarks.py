"""The throughput benchmark (benchmarks/throughput.py): its main path on tiny settings, the JSON
schema, and the FLOP accounting against hand counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest
from absl import flags

from benchmarks import throughput

TRAIN_KEYS = {"method", "precision", "model", "batch_size", "examples_per_second", "step_seconds",
              "flops_per_example", "achieved_tflops", "peak_fraction", "step_seconds_all", "first_step_seconds"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    fv = flags.FlagValues()
    throughput.define_flags(fv)
    fv(["throughput", "--model=small_cnn", "--model_options=width=8", "--batch_size=8", "--methods=pgd_at,ardir",
        "--precision=float32", "--attack_steps=1", "--warmup_steps=1", "--steps=2", "--eval_attacks=pgd20", "--eval_examples=4",
        "--matmul_size=256", "--matmul_repeats=1", f"--output={out}"])
    rows = throughput.main([], fv)
    return rows, json.loads(out.read_text())


def test_main_writes_the_documented_rows(run):
    rows, written = run
    assert written == json.loads(json.dumps(rows))
    train = [r for r in written if r["kind"] == "train"]
    assert {(r["method"], r["precision"]) for r in train} == {("pgd_at", "float32"), ("ardir", "float32")}
    for r in train:
        assert TRAIN_KEYS <= set(r)
        assert r["model"] == "small_cnn" and r["batch_size"] == 8 and len(r["step_seconds_all"]) == 2
        for key in ("examples_per_second", "step_seconds", "flops_per_example", "achieved_tflops", "peak_fraction"):
            assert r[key] > 0, key
    pgd20 = [r for r in written if r["kind"] == "eval" and r["method"] == "pgd20"]
    assert len(pgd20) == 1 and pgd20[0]["examples_per_second"] > 0
    matmul = [r for r in written if r["kind"] == "matmul"]
    assert [m["precision"] for m in matmul] == ["float32"] and matmul[0]["tflops"] > 0
    targets = {r["target"]: r for r in written if r["kind"] == "target"}
    assert isinstance(targets["ardir_step_over_pgd_at_step"]["passed"], bool)
    assert isinstance(targets["float32_fraction_of_matmul_peak"]["passed"], bool)
    assert written[0]["kind"] == "environment" and written[0]["cpu_count"] >= 1
    table = throughput.format_table(rows)
    assert "train ardir float32" in table and "ardir_step_over_pgd_at_step" in table


def test_flops_of_ardir_exceed_pgd_at_and_a_forward_pass(run):
    rows, _ = run
    by = {r["method"]: r for r in rows if r["kind"] == "train"}
    forward = by["pgd_at"]["forward_flops"]
    # K=1: pgd_at = 2 F (attack step) + 3 F (training pass) + F (natural-accuracy monitor) = 6 F;
    # ardir adds one teacher forward (same architecture: no connector) = 7 F.
    assert by["pgd_at"]["flops_per_example"] == 6 * forward
    assert by["ardir"]["flops_per_example"] == 7 * forward
    assert by["ardir"]["flops_per_example"] > by["pgd_at"]["flops_per_example"] > forward


def test_forward_flops_of_known_layers():
    inputs = keras.Input((784,))
    dense = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    assert throughput.forward_flops(dense) == 2 * 784 * 10 + 10  # matmul multiply-adds + bias
    inputs = keras.Input((8, 8, 3))
    conv = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs))
    assert throughput.forward_flops(conv) == 2 * (8 * 8 * 4) * (3 * 3 * 3)


def test_pass_counts_match_the_model_calls_of_a_step():
    """The FLOP structure agrees with what tests/test_methods.py counts (K attack passes + the
    loss's passes + the monitor; one teacher pass per input)."""
    from ardir_tf import methods, models

    s = models.get("small_cnn", 10, (28, 28, 1), width=4)
    t = models.get("small_cnn", 10, (28, 28, 1), width=4)
    kw = dict(epsilon=0.3, attack_steps=3, attack_step_size=0.1, seed=0)
    expected = {"pgd_at": (3, 1, 1, 0), "trades": (3, 2, 1, 0), "ard": (3, 1, 1, 1), "rslad": (3, 2, 0, 1),
                "ardir": (3, 1, 1, 1)}
    for name, (pgd, train, fwd, teacher) in expected.items():
        cls = methods.get(name)
        trainer = cls(s, t, **kw) if name in methods.DISTILLATION_METHODS else cls(s, **kw)
        c = throughput.pass_counts(trainer)
        assert (c["student_pgd"], c["student_train"], c["student_forward"], c["teacher_forward"]) == \
            (pgd, train, fwd, teacher), name
    iad = methods.IAD(s, t, begin=0, **kw)
    assert throughput.pass_counts(iad)["teacher_forward"] == 2
    assert throughput.pass_counts(methods.IAD(s, t, begin=5, **kw))["teacher_forward"] == 1


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="unknown method"):
        throughput.run({"methods": ["nope"], "precision": ["float32"], "jit_compile": ["false"], "eval_attacks": [],
                        "batch_size": 8, "steps": 1, "steps_per_round": 1, "matmul_size": 8, "matmul_repeats": 1,
                        "warmup_steps": 1, "model": "small_cnn"})


def test_emulated_bfloat16_is_detected_and_warned(monkeypatch):
    from ardir_tf import hardware

    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"fma", "avx", "avx2"}))
    assert hardware.onednn_bfloat16() is False and hardware.fast_bfloat16() is False
    assert "emulated" in hardware.precision_warning("mixed_bfloat16")
    assert hardware.precision_warning("mixed_bfloat16", accelerators=1) is None
    assert hardware.precision_warning("float32") is None
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    assert hardware.fast_bfloat16() is True and hardware.precision_warning("mixed_bfloat16") is None


def test_train_case_times_real_training_steps():
    """throughput's step timer, as benchmarks/onednn_ab.py uses it: each timed step trains (the
    student's weights change) and is recorded."""
    case = throughput.train_case("pgd_at", "small_cnn", batch_size=8, attack_steps=1, model_options="width=4",
                                 count_flops=False)
    assert case.run() == 8  # the untimed first step (tracing)
    weights = [w.numpy().copy() for w in case.trainer.student.trainable_weights]
    seconds = case.time_once(2)
    assert seconds > 0 and case.times == [seconds] and case.examples == 8
    after = case.trainer.student.trainable_weights
    assert any(not (a == b.numpy()).all() for a, b in zip(weights, after))
    assert case.row["method"] == "pgd_at" and case.row["batch_size"] == 8


def _onednn_ab(*args):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "benchmarks.onednn_ab", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("args, message", [
    (["--method=nope"], "unknown method 'nope'"),
    (["--rounds=0"], "rounds"),
    (["--no_such_flag"], "no_such_flag"),
])
def test_onednn_ab_bad_input_is_one_line_and_exit_2(args, message):
    proc = _onednn_ab(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.mark.slow
def test_onednn_ab_times_both_settings_in_rounds():
    proc = _onednn_ab("--model=small_cnn", "--batch_size=8", "--attack_steps=1", "--rounds=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2 and all("oneDNN off" in r and ", on " in r for r in rounds)
    assert "x faster with oneDNN" in proc.stdout.splitlines()[-1]


def _module(name: str, *args: str) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", name, *args], cwd=root, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_autoattack_speed_writes_its_numbers_and_refuses_bad_flags(tmp_path):
    out = tmp_path / "speed.json"
    proc = _module("benchmarks.autoattack_speed", "--examples=3", "--epochs=1", "--skip_art", f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    numbers = json.loads(out.read_text())
    assert numbers["examples"] == 3 and set(numbers["ours"]["members"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert 0 <= numbers["ours"]["robust_accuracy"] <= numbers["natural_accuracy"]
    bad = _module("benchmarks.autoattack_speed", "--examples=0")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "examples" in lines[0], bad.stderr
    # autoattack_versions imports its trainer: the two define no flag twice
    both = subprocess.run([sys.executable, "-c", "import benchmarks.autoattack_versions, benchmarks.autoattack_speed"],
                          cwd=os.path.dirname(out), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert both.returncode == 0, both.stderr[-2000:]
