"""README.md's "From Keras code" block runs as written (extracted from README.md itself, so the
README cannot drift from the library)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(section: str, language: str = "python") -> str:
    """The first ```language block under the ``## section`` heading of README.md."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no section {section!r}"
    block = re.search(rf"^```{language}\n(.*?)^```", match.group(1), re.S | re.M)
    assert block, f"README.md's section {section!r} has no {language} block"
    return block.group(1)


def test_the_keras_block_is_the_offline_mnist5k_one():
    code = readme_block("From Keras code")
    assert 'ardir_tf.data.load("mnist5k", "train"' in code and "student.save(" in code


@pytest.mark.slow
def test_readme_keras_code_runs_as_written(tmp_path):
    code = readme_block("From Keras code")
    # Run the block unchanged, then check what it did: both fits ended after their 2 epochs and
    # the saved student is a classifier of the digits.
    check = """
assert len(pgd_at.history.history["loss"]) == 2 and len(trainer.history.history["loss"]) == 2
assert int(trainer.optimizer.iterations.numpy()) == 2 * 32
assert "val_adversarial_accuracy" in trainer.history.history
loaded = keras.models.load_model("student.keras")
x, y = ardir_tf.data.load_arrays("mnist5k", "test", examples=200)
accuracy = float((loaded.predict(x, verbose=0).argmax(-1) == y).mean())
print(f"README student: natural accuracy {accuracy:.3f} on 200 held-out digits")
assert accuracy > 0.5, accuracy  # chance is 0.1; 0.76 measured
"""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "student.keras").is_file()
    print(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", ["runs/quickstart/model.keras", "deploy/mnist/model.onnx", "report/report.md",
                                  "r.json", "results.json", "student.keras"])
def test_what_the_readme_commands_write_is_ignored_by_git(path):
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
