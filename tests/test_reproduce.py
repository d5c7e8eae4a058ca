"""``python -m benchmarks.reproduce``: the quick mode end to end, resumption and the aggregation."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from ardir_tf import train
from benchmarks import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
# The quick mode, cut further for CI time: the teacher, one student and one ablation variant.
QUICK = ["--quick", "--methods=ardir", "--studies=main,ablation", "--ablation=distance=cosine", "--progress=none"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.reproduce", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=1200)


def test_aggregate_is_mean_and_sample_std():
    rows = [{"seed": 0, "natural": 0.9, "pgd20": 0.5}, {"seed": 1, "natural": 0.8, "pgd20": 0.7},
            {"seed": 2, "natural": 0.7, "pgd20": 0.6}]
    agg = reproduce.aggregate(rows)
    assert agg["seeds"] == 3
    assert agg["natural"]["mean"] == pytest.approx(0.8) and agg["natural"]["std"] == pytest.approx(0.1)
    assert agg["pgd20"]["mean"] == pytest.approx(0.6) and agg["pgd20"]["std"] == pytest.approx(0.1)
    assert reproduce.aggregate(rows[:1])["pgd20"] == {"mean": 0.5, "std": 0.0, "n": 1}
    rows[0]["autoattack"] = 0.4  # evaluated on one seed only
    agg = reproduce.aggregate(rows)
    assert agg["autoattack"] == {"mean": 0.4, "std": 0.0, "n": 1} and "seed" not in agg
    assert "40.0†" in reproduce.markdown_table({"ardir": agg}, 0.2, 0.3)


def test_every_ablation_variant_changes_one_valid_training_setting():
    defaults = train.default_settings()
    for name, change in reproduce.ABLATION.items():
        assert len(change) == 1 and set(change) <= set(defaults), name
        assert defaults[next(iter(change))] != next(iter(change.values())), f"{name} is the default"


def test_every_control_is_a_main_method_with_one_other_valid_setting():
    from ardir_tf import methods

    defaults = train.default_settings()
    for name, change in reproduce.CONTROLS.items():
        method = change["method"]
        rest = {k: v for k, v in change.items() if k != "method"}
        assert method in reproduce.METHODS and len(rest) == 1 and set(rest) <= set(defaults), name
        # the changed setting is not what the main table's run of that method uses
        assert methods.get(method).default_random_start != rest["random_start"], name


@pytest.mark.parametrize("args, message", [
    (["--output_dir=x", "--methods=pgd_at,nope"], "unknown method, ablation variant or study: nope"),
    (["--output_dir=x", "--epsilon=2"], "--epsilon must be in (0, 1]"),
    ([], "--output_dir is required"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.mark.slow
def test_quick_mode_writes_every_run_and_the_tables(tmp_path):
    out = tmp_path / "r"
    proc = cli(f"--output_dir={out}", *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "summary.json") as f:
        summary = json.load(f)
    names = {"teacher", "main/ardir", "ablation/distance=cosine"}
    assert set(summary["runs"]) == names
    for name, rows in summary["runs"].items():
        assert [r["seed"] for r in rows] == [0]
        for key in ("natural", "fgsm", "pgd20", "cw", "pgd20@2", "cw@2"):
            assert 0.0 <= rows[0][key] <= 1.0, (name, key)
        # an attack never raises accuracy above the natural one
        assert rows[0]["pgd20"] <= rows[0]["natural"]
        assert summary["table"][name]["pgd20"]["mean"] == pytest.approx(statistics.fmean(r["pgd20"] for r in rows))
    assert summary["runs"]["main/ardir"][0]["autoattack_examples"] == 8
    assert summary["settings"]["train_examples"] == 256 and summary["settings"]["epochs"] == 1
    md = (out / "results.md").read_text()
    assert "| ardir | 1 |" in md and "## ARDIR ablation" in md and "| distance=cosine | 1 |" in md
    assert (out / "robustness.png").stat().st_size > 1000
    for run in ("main/ardir/seed-0", "teacher/seed-0"):
        assert (out / run / "model.keras").exists() and (out / run / "extra.json").exists()

    again = cli(f"--output_dir={out}", *QUICK)  # an interrupted or finished benchmark is reused, not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training " not in again.stdout and again.stdout.count("reusing it") >= len(names), again.stdout
    with open(out / "summary.json") as f:
        rerun = json.load(f)["runs"]
    strip = lambda runs: {k: [{m: v for m, v in r.items() if m != "seconds"} for r in rows] for k, rows in runs.items()}  # noqa: E731
    assert strip(rerun) == strip(summary["runs"])


def test_report_only_tabulates_the_controls_beside_their_main_rows(tmp_path):
    def finished(run, pgd20):
        os.makedirs(tmp_path / run)
        results = {"natural_accuracy": 0.9, "robust_accuracy": {"fgsm": 0.8, "pgd20": pgd20, "cw": pgd20},
                   "training": {"seconds": 60.0}}
        (tmp_path / run / "results.json").write_text(json.dumps(results))

    finished("main/rslad/seed-0", 0.25)
    finished("main/rslad/seed-1", 0.35)
    finished("controls/rslad/random_start=uniform/seed-0", 0.6)
    proc = cli(f"--output_dir={tmp_path}", "--report_only", "--studies=main,controls", "--methods=rslad",
               "--seeds=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["runs"]) == {"main/rslad", "controls/rslad/random_start=uniform"}
    assert summary["table"]["main/rslad"]["pgd20"]["mean"] == pytest.approx(0.3)
    controls = (tmp_path / "results.md").read_text().split("## Controls", 1)[1]
    assert "| rslad | 2 | 90.0 ± 0.0 | 80.0 ± 0.0 | 30.0 ± 7.1 |" in controls
    assert "| rslad/random_start=uniform | 1 | 90.0 | 80.0 | 60.0 |" in controls
    assert "training " not in proc.stdout
