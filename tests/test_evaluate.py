"""Tests of ardir_tf.evaluate: the results schema, consistency of the numbers, float32 rebuilding
of mixed-precision models and the command-line tool."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from ardir_tf import evaluate as ev
from ardir_tf import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = 100
EPS = 0.3


@pytest.fixture(scope="module")
def eval_data(mnist5k_test):
    x, y = mnist5k_test
    return x[:EXAMPLES], y[:EXAMPLES]


@pytest.fixture(scope="module")
def results(trained_small_cnn, eval_data):
    x, y = eval_data
    return ev.evaluate(trained_small_cnn, x, y, epsilon=EPS, attacks=("fgsm", "pgd20", "cw"), batch_size=50,
                       dataset="mnist5k", verbose=0)


def test_schema_keys_and_types(results):
    assert {"schema_version", "dataset", "model", "examples", "epsilon", "norm", "natural_accuracy",
            "robust_accuracy", "per_class", "worst_class", "attacks"} <= set(results)
    assert results["schema_version"] == ev.SCHEMA_VERSION == 1
    assert results["dataset"] == "mnist5k"
    assert results["model"] == "small_cnn"
    assert results["examples"] == EXAMPLES
    assert results["epsilon"] == pytest.approx(EPS) and isinstance(results["epsilon"], float)
    assert results["norm"] == "linf"
    assert set(results["robust_accuracy"]) == {"fgsm", "pgd20", "cw", "all"}
    assert set(results["attacks"]) == {"fgsm", "pgd20", "cw"}
    for name, steps in (("fgsm", 1), ("pgd20", 20), ("cw", 30)):
        info = results["attacks"][name]
        assert info["steps"] == steps
        assert isinstance(info["seconds"], float) and info["seconds"] >= 0
    assert results["attacks"]["pgd20"]["random_start"] == "uniform"
    assert results["attacks"]["pgd20"]["step_size"] == "0.25*eps"
    assert results["attacks"]["fgsm"]["random_start"] == "none"
    per_class = results["per_class"]
    assert isinstance(per_class, list) and len(per_class) == 10
    for c, entry in enumerate(per_class):
        assert set(entry) == {"class", "name", "examples", "natural_accuracy", "robust_accuracy"}
        assert entry["class"] == c and entry["name"] == str(c)
    assert results["worst_class"] in per_class
    json.loads(json.dumps(results))  # plain JSON types only


def test_accuracies_are_consistent(results, eval_data):
    nat = results["natural_accuracy"]
    robust = results["robust_accuracy"]
    assert nat >= 0.9
    for value in (nat, *robust.values()):
        assert 0.0 <= value <= 1.0
        assert (value * EXAMPLES) == pytest.approx(round(value * EXAMPLES), abs=1e-9)  # a count / N
    assert robust["all"] <= min(robust["fgsm"], robust["pgd20"], robust["cw"], nat)
    assert robust["pgd20"] < 0.05 and robust["cw"] < 0.05  # a natural model at eps 0.3
    assert robust["pgd20"] <= robust["fgsm"]


def test_per_class_entries_add_up(results, eval_data):
    _, y = eval_data
    per_class = results["per_class"]
    counts = np.bincount(y, minlength=10)
    assert [e["examples"] for e in per_class] == counts.tolist()
    assert sum(e["examples"] for e in per_class) == EXAMPLES
    weighted_robust = sum(e["examples"] * e["robust_accuracy"] for e in per_class) / EXAMPLES
    weighted_natural = sum(e["examples"] * e["natural_accuracy"] for e in per_class) / EXAMPLES
    assert weighted_robust == pytest.approx(results["robust_accuracy"]["all"], abs=1e-9)
    assert weighted_natural == pytest.approx(results["natural_accuracy"], abs=1e-9)
    worst = min(e["robust_accuracy"] for e in per_class if e["examples"])
    assert results["worst_class"]["robust_accuracy"] == worst
    for e in per_class:
        assert e["robust_accuracy"] <= e["natural_accuracy"]


def test_natural_accuracy_and_per_class_match_a_manual_argmax(trained_small_cnn, results, eval_data):
    x, y = eval_data
    pred = np.argmax(trained_small_cnn.predict(x, verbose=0), axis=-1)
    assert results["natural_accuracy"] == pytest.approx(float(np.mean(pred == y)), abs=1e-12)
    for e in results["per_class"]:
        mask = y == e["class"]
        assert e["natural_accuracy"] == pytest.approx(float(np.mean(pred[mask] == y[mask])), abs=1e-12)


def test_per_class_robust_and_worst_class_on_an_unbalanced_subset(trained_small_cnn, mnist5k_test):
    x, y = mnist5k_test
    keep = np.flatnonzero(np.isin(y, [1, 7]))[:12]  # only two classes present
    names = [f"digit-{i}" for i in range(10)]
    r = ev.evaluate(trained_small_cnn, x[keep], y[keep], epsilon=0.02, attacks=["fgsm"], dataset="d",
                    class_names=names, verbose=0)
    present = [e for e in r["per_class"] if e["examples"]]
    assert [e["class"] for e in present] == [1, 7]
    for e in r["per_class"]:
        assert e["name"] == f"digit-{e['class']}"
        if not e["examples"]:
            assert e["natural_accuracy"] is None and e["robust_accuracy"] is None
    assert r["worst_class"]["class"] in (1, 7)
    assert r["worst_class"]["robust_accuracy"] == min(e["robust_accuracy"] for e in present)
    assert set(r["robust_accuracy"]) == {"fgsm", "all"}


def test_an_example_is_robust_only_if_also_naturally_correct():
    """A model that FGSM *fixes*: logits (s, -s) with s = 10 sin(20 mean(x)), label 0.

    At mean 0.2, s = 10 sin(4) < 0 (wrong); the CE ascent direction is -sign(cos 4) = +1, so FGSM
    with eps 0.15 moves every pixel to 0.35, where s = 10 sin(7) > 0 (right). The protocol counts the
    example as not robust: robust 'all' = 0 although the FGSM accuracy is 1.
    """
    inputs = keras.Input((2, 2, 1))
    m = keras.layers.GlobalAveragePooling2D()(inputs)
    s = keras.layers.Lambda(lambda t: 10.0 * keras.ops.sin(20.0 * t))(m)
    model = keras.Model(inputs, keras.layers.Concatenate()([s, -s]))
    x = np.full((3, 2, 2, 1), 0.2, np.float32)
    y = np.zeros(3, np.int64)
    r = ev.evaluate(model, x, y, epsilon=0.15, attacks=["fgsm"], verbose=0)
    assert r["natural_accuracy"] == 0.0
    assert r["robust_accuracy"]["fgsm"] == 1.0
    assert r["robust_accuracy"]["all"] == 0.0
    assert r["per_class"][0]["robust_accuracy"] == 0.0 and r["per_class"][1]["examples"] == 0


def test_evaluate_is_reproducible_with_a_seed(trained_small_cnn, eval_data):
    x, y = eval_data
    a = ev.evaluate(trained_small_cnn, x[:40], y[:40], epsilon=0.1, attacks=["pgd20"], seed=3, verbose=0)
    b = ev.evaluate(trained_small_cnn, x[:40], y[:40], epsilon=0.1, attacks=["pgd20"], seed=3, verbose=0)
    assert a["robust_accuracy"] == b["robust_accuracy"]
    assert a["per_class"] == b["per_class"]


def test_bad_arguments_raise_value_error(trained_small_cnn, eval_data):
    x, y = eval_data
    with pytest.raises(ValueError, match="nope"):
        ev.evaluate(trained_small_cnn, x, y, epsilon=0.3, attacks=["fgsm", "nope"], verbose=0)
    with pytest.raises(ValueError, match="epsilon"):
        ev.evaluate(trained_small_cnn, x, y, epsilon=-0.1, verbose=0)
    with pytest.raises(ValueError, match="epsilon"):
        ev.evaluate(trained_small_cnn, x, y, epsilon=1.5, verbose=0)
    with pytest.raises(ValueError):
        ev.evaluate(trained_small_cnn, x, y[:-1], epsilon=0.1, attacks=["fgsm"], verbose=0)
    with pytest.raises(ValueError):
        ev.evaluate(trained_small_cnn, x[:, :, :, 0], y, epsilon=0.1, attacks=["fgsm"], verbose=0)


def test_zero_epsilon_robust_equals_natural(trained_small_cnn, eval_data):
    x, y = eval_data
    r = ev.evaluate(trained_small_cnn, x[:20], y[:20], epsilon=0.0, attacks=["fgsm", "pgd20", "cw"], verbose=0)
    assert r["robust_accuracy"]["all"] == r["natural_accuracy"]
    for name in ("fgsm", "pgd20", "cw"):
        assert r["robust_accuracy"][name] == r["natural_accuracy"]


def test_format_table(results):
    table = ev.format_table({"m": results})
    assert "100 held-out examples" in table and "eps=0.3" in table
    assert "fgsm" in table and "pgd20" in table and "all" in table
    assert f"{100 * results['natural_accuracy']:.1f}" in table


# ---------------------------------------------------------------------------------------- float32


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def test_float32_model_of_a_mixed_bfloat16_model(restore_policy):
    keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    mixed = models.get("small_cnn", 10, (28, 28, 1), normalization=([0.13], [0.31]), width=4)
    assert any(layer.compute_dtype == "bfloat16" for layer in mixed.layers)
    keras.config.set_dtype_policy("float32")
    # make the weights differ from a fresh initialisation
    mixed.set_weights([w + 0.01 * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype)
                       for w in mixed.get_weights()])
    keras.config.set_dtype_policy("mixed_bfloat16")

    f32 = ev.float32_model(mixed)
    assert keras.config.dtype_policy().name == "mixed_bfloat16"  # the global policy is left alone
    assert f32 is not mixed
    assert all(layer.compute_dtype == "float32" for layer in f32.layers)
    assert [layer.name for layer in f32.layers] == [layer.name for layer in mixed.layers]
    assert f32.name == mixed.name
    for a, b in zip(f32.get_weights(), mixed.get_weights()):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    out32 = f32(x)
    assert out32.dtype == "float32"
    # same function as a float32 twin built by hand
    keras.config.set_dtype_policy("float32")
    twin = models.get("small_cnn", 10, (28, 28, 1), normalization=([0.13], [0.31]), width=4)
    twin.set_weights(mixed.get_weights())
    np.testing.assert_allclose(out32.numpy(), twin(x).numpy(), rtol=1e-5, atol=1e-5)
    # and close to the bfloat16 computation
    np.testing.assert_allclose(out32.numpy(), np.asarray(mixed(x), np.float32), atol=0.1)


def test_float32_model_returns_a_float32_model_itself(trained_small_cnn):
    assert ev.float32_model(trained_small_cnn) is trained_small_cnn


# ---------------------------------------------------------------------------------------- CLI


def _run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "ardir_tf.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    """stderr lines that are not TensorFlow/absl start-up logging."""
    noise = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]


def test_cli_writes_results_json(trained_small_cnn_path, tmp_path):
    out = tmp_path / "x.json"
    proc = _run_cli([f"--model={trained_small_cnn_path}", "--dataset=mnist5k", "--epsilon=0.3", "--attacks=fgsm",
                     "--examples=50", f"--output={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["schema_version"] == 1
    assert r["dataset"] == "mnist5k" and r["examples"] == 50 and r["epsilon"] == pytest.approx(0.3)
    assert set(r["robust_accuracy"]) == {"fgsm", "all"}
    assert len(r["per_class"]) == 10 and sum(e["examples"] for e in r["per_class"]) == 50
    assert r["natural_accuracy"] >= 0.85
    assert r["robust_accuracy"]["all"] <= r["robust_accuracy"]["fgsm"] <= 1
    assert str(out) in proc.stdout and "fgsm" in proc.stdout
    assert not os.path.exists(f"{out}.tmp")


def test_cli_unknown_attack_exits_2_with_one_line(trained_small_cnn_path, tmp_path):
    out = tmp_path / "x.json"
    proc = _run_cli([f"--model={trained_small_cnn_path}", "--dataset=mnist5k", "--attacks=nope", "--examples=10",
                     f"--output={out}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "nope" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("epsilon, message", [("8", "did you mean 8/255?"), ("8/0", "divides by zero")])
def test_cli_epsilon_hint_exits_2_with_one_line(trained_small_cnn_path, tmp_path, epsilon, message):
    proc = _run_cli([f"--model={trained_small_cnn_path}", f"--epsilon={epsilon}", "--examples=10"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr


def test_cli_epsilon_takes_a_fraction(trained_small_cnn_path, tmp_path):
    out = tmp_path / "x.json"
    proc = _run_cli([f"--model={trained_small_cnn_path}", "--epsilon=76/255", "--epsilons=51/255",
                     "--attacks=fgsm", "--examples=20", f"--output={out}", "--masking_check=off"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["epsilon"] == pytest.approx(76 / 255)
    assert [s["epsilon"] for s in r["sweep"]] == pytest.approx([51 / 255, 76 / 255])  # the sweep includes --epsilon
