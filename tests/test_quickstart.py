"""The README's main job end to end: `python -m ardir_tf.train` with no flags, then a standard run
for contrast (issue: the standard model is accurate but not robust, the PGD-AT one keeps more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}


def train(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "ardir_tf.train", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def results(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("quickstart")
    return cwd, train(["--progress=epoch"], cwd)


@pytest.mark.slow
def test_quickstart_trains_teacher_and_ardir_student(quickstart):
    cwd, out = quickstart
    assert "teacher " in out and "ardir " in out and "pgd20" in out  # the printed table
    teacher = results(cwd / "runs/quickstart/teacher/results.json")
    student = results(cwd / "runs/quickstart/results.json")
    for r in (teacher, student):
        assert r["dataset"] == "mnist5k" and r["examples"] == 1000 and r["epsilon"] == pytest.approx(0.3)
        assert r["natural_accuracy"] >= 0.90
        assert r["robust_accuracy"]["pgd20"] >= 0.40, r["robust_accuracy"]
    assert student["training"]["teacher"].endswith("runs/quickstart/teacher/model.keras")
    for name in ("model.keras", "history.csv", "settings.json", "logs"):
        assert (cwd / "runs/quickstart" / name).exists()


@pytest.mark.slow
def test_quickstart_again_reuses_the_finished_runs(quickstart):
    cwd, _ = quickstart
    out = train(["--progress=none"], cwd)
    assert out.count("reusing it") == 2


@pytest.mark.slow
def test_standard_model_is_accurate_but_not_robust(quickstart):
    cwd, _ = quickstart
    train(["--method=standard", "--workdir=runs/standard", "--progress=none", "--eval_attacks=pgd20"], cwd)
    standard = results(cwd / "runs/standard/results.json")
    pgd_at = results(cwd / "runs/quickstart/teacher/results.json")
    assert standard["natural_accuracy"] >= 0.95
    assert standard["robust_accuracy"]["pgd20"] < 0.05
    assert pgd_at["robust_accuracy"]["pgd20"] > standard["robust_accuracy"]["pgd20"] + 0.30
