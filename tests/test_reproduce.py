"""``python -m benchmarks.reproduce``: the quick mode end to end, resumption and the aggregation."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from ardir_tf import train
from benchmarks import capacity, capacity_report, reproduce, runs, step_sweep

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
    agg = runs.aggregate(rows)
    assert agg["seeds"] == 3
    assert agg["natural"]["mean"] == pytest.approx(0.8) and agg["natural"]["std"] == pytest.approx(0.1)
    assert agg["pgd20"]["mean"] == pytest.approx(0.6) and agg["pgd20"]["std"] == pytest.approx(0.1)
    assert runs.aggregate(rows[:1])["pgd20"] == {"mean": 0.5, "std": 0.0, "n": 1}
    rows[0]["autoattack"] = 0.4  # evaluated on one seed only
    agg = runs.aggregate(rows)
    assert agg["autoattack"] == {"mean": 0.4, "std": 0.0, "n": 1} and "seed" not in agg
    assert "40.0†" in runs.markdown_table({"ardir": agg}, 0.2, 0.3)


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
    (["--output_dir=x", "--methods=pgd_at,nope"], "unknown method, ablation variant, study or teacher recipe: nope"),
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
    strip = lambda rs: {k: [{m: v for m, v in r.items() if m != "seconds"} for r in rows] for k, rows in rs.items()}  # noqa: E731
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


# ------------------------------------------------------------------------------------ capacity
def test_paired_differences_by_seed_and_their_verdict():
    ardir = [{"seed": 0, "pgd20": 0.70}, {"seed": 1, "pgd20": 0.66}, {"seed": 2, "pgd20": 0.69}]
    ard = [{"seed": 0, "pgd20": 0.65}, {"seed": 1, "pgd20": 0.64}, {"seed": 2, "pgd20": 0.70}]
    p = capacity_report.paired(ardir, ard, "pgd20")
    assert p["by_seed"] == pytest.approx({0: 5.0, 1: 2.0, 2: -1.0})
    assert p["mean"] == pytest.approx(2.0) and p["std"] == pytest.approx(3.0)  # sample std of 5, 2, -1
    assert (p["min"], p["max"], p["positive"], p["n"]) == (pytest.approx(-1.0), pytest.approx(5.0), 2, 3)
    assert capacity_report.verdict(p) == "not separable from seed noise (2 of 3 seeds higher)"
    assert capacity_report.verdict(capacity_report.paired(ardir[:2], ard[:2], "pgd20")) == "higher on all 2 seeds"
    assert capacity_report.verdict(capacity_report.paired(ard[:2], ardir[:2], "pgd20")) == "lower on all 2 seeds"
    assert capacity_report.paired(ardir, [{"seed": 5, "pgd20": 0.1}], "pgd20") is None  # no common seed
    students = {"pgd_at": [{"seed": 0, "pgd20": 0.6}], "trades": [{"seed": 0, "pgd20": 0.7}], "ard": ard}
    assert capacity_report.best_non_distilled(students, "pgd20", ("pgd_at", "trades")) == "trades"


def test_choices_are_the_best_validation_robust_accuracy_then_natural_then_first():
    # PGD-20 does not choose: "a" has the higher PGD-20 but loses to Square (masked gradients).
    a = {"pgd20": 0.8, "robust": 0.3, "natural": 0.9}
    assert capacity.pick({"a": a, "b": {"pgd20": 0.6, "robust": 0.5, "natural": 0.8}}) == "b"
    assert capacity.pick({"a": {"robust": 0.6, "natural": 0.8}, "b": {"robust": 0.6, "natural": 0.9}}) == "b"
    assert capacity.pick({"a": {"robust": 0.6, "natural": 0.9}, "b": {"robust": 0.6, "natural": 0.9}}) == "a"


def test_validation_counts_a_digit_only_if_apgd_and_square_both_fail(tmp_path):
    """A model with masked gradients (logits scaled by 10^4: the softmax saturates and the
    cross-entropy gradient is zero in float32) keeps its PGD-20 accuracy, but Square, which reads
    only the logits' order, breaks it on the validation digits."""
    import keras

    from ardir_tf import data, models

    x, y = data.load_arrays("mnist5k", "train", examples=4000)
    x_val, y_val = x[-64:], y[-64:]
    inner = models.get("small_cnn", 10, (28, 28, 1), width=4)
    inner.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    inner.fit(x[:2000], y[:2000], epochs=2, batch_size=64, verbose=0)
    inputs = keras.Input((28, 28, 1))
    logits = inner(inputs)
    masked = keras.Model(inputs, keras.layers.Rescaling(1e4)(logits))
    work = tmp_path / "run"
    work.mkdir()
    masked.save(work / "model.keras")
    (work / "results.json").write_text(json.dumps({"training": {"epochs": 2, "seconds": 1.0}}))
    v = capacity.validate(str(work), {"epsilon": 0.3, "seed": 0, "epochs": 2}, x_val, y_val, square_queries=300)
    assert v["natural"] > 0.7 and v["pgd20"] > 0.5, v  # the gradient attack sees nothing
    assert v["robust"] <= v["apgd-ce"] and v["robust"] < v["pgd20"] - 0.3, v  # Square does
    assert json.loads((work / "validation.json").read_text())["robust"] == v["robust"]  # cached


def test_validation_digits_are_the_end_of_the_training_split_not_held_out_digits():
    from ardir_tf import data

    x_val, y_val = capacity.validation_arrays(4000, 500)
    x_train, _ = data.load_arrays("mnist5k", "train")
    x_test, _ = data.load_arrays("mnist5k", "test")
    assert x_val.shape == (500, 28, 28, 1) and (x_val == x_train[3500:]).all()
    assert len(set(y_val.tolist())) == 10  # every class present
    test_images = {t.tobytes() for t in x_test}
    assert not any(v.tobytes() in test_images for v in x_val)


def _finished(root, run, natural, pgd20, aa_parts=None, val=None):
    os.makedirs(root / run, exist_ok=True)
    results = {"natural_accuracy": natural, "robust_accuracy": {"fgsm": pgd20 + 0.1, "pgd20": pgd20, "cw": pgd20 - 0.01},
               "training": {"seconds": 120.0}}
    (root / run / "results.json").write_text(json.dumps(results))
    if aa_parts:
        parts = {f"{a}:{b}": {"examples": b - a, "accuracy": acc, "seconds": 30.0} for (a, b), acc in aa_parts.items()}
        (root / run / "extra.json").write_text(json.dumps({"autoattack_parts": parts}))
    if val:
        (root / run / "validation.json").write_text(json.dumps({"examples": 500, "seconds": 6.0, **val}))


def test_autoattack_parts_join_into_the_first_200_and_all_500(tmp_path):
    _finished(tmp_path, "ardir/seed-0", 0.97, 0.7, {(0, 200): 0.6, (200, 500): 0.7})
    row = capacity.read_row(str(tmp_path / "ardir/seed-0"))
    assert row["aa200"] == 0.6 and row["aa200_examples"] == 200
    assert row["autoattack"] == pytest.approx((200 * 0.6 + 300 * 0.7) / 500) and row["autoattack_examples"] == 500
    assert row["autoattack_seconds"] == 60.0
    _finished(tmp_path, "ardir/seed-1", 0.97, 0.7, {(0, 200): 0.55})
    row = capacity.read_row(str(tmp_path / "ardir/seed-1"))
    assert row["aa200"] == row["autoattack"] == 0.55 and row["autoattack_examples"] == 200
    # Smaller later parts join the same way; an interrupted study has a shorter prefix.
    _finished(tmp_path, "ardir/seed-2", 0.97, 0.7, {(0, 200): 0.6, (200, 300): 0.7, (300, 400): 0.8})
    row = capacity.read_row(str(tmp_path / "ardir/seed-2"))
    assert row["autoattack"] == pytest.approx((120 + 70 + 80) / 400) and row["autoattack_examples"] == 400


def test_parts_done_under_another_cut_are_not_attacked_again():
    done = {"0:200": {}, "200:500": {}}
    assert capacity.missing_parts(capacity.AA_PARTS, done) == []
    assert capacity.missing_parts([(0, 200), (200, 300), (300, 400)], {"0:200": {}, "200:300": {}}) == [(300, 400)]
    assert capacity.missing_parts([(0, 200), (200, 500)], {"0:200": {}, "200:300": {}}) == [(200, 500)]


def test_autoattack_parts_are_saved_one_by_one_and_not_attacked_again(tmp_path, trained_small_cnn_path, capsys):
    """Each part reaches extra.json with its accuracy and time and a result line; a later call
    whose ranges the saved parts cover attacks nothing (the naturally trained model breaks)."""
    import shutil

    shutil.copy(trained_small_cnn_path, tmp_path / "model.keras")
    s = {"epsilon": 0.3, "seed": 0, "progress": "epoch"}
    seen = []  # what extra.json holds each time a part is reported saved
    extra = capacity.autoattack_parts(str(tmp_path), s, [(0, 8), (8, 16)], on_saved=lambda: seen.append(
        sorted(json.loads((tmp_path / "extra.json").read_text())["autoattack_parts"])))
    assert seen == [["0:8"], ["0:8", "8:16"]]
    saved = json.loads((tmp_path / "extra.json").read_text())["autoattack_parts"]
    assert saved == extra["autoattack_parts"] and sorted(saved) == ["0:8", "8:16"]
    assert all(p["examples"] == 8 and p["accuracy"] <= 0.25 and p["seconds"] > 0 for p in saved.values())
    out = capsys.readouterr().out
    assert "AutoAttack on digits [0, 8): " in out and "AutoAttack on digits [8, 16): " in out
    capacity.autoattack_parts(str(tmp_path), {**s, "progress": "none"}, [(0, 16)], on_saved=lambda: seen.append(1))
    assert capsys.readouterr().out == "" and len(seen) == 2
    assert json.loads((tmp_path / "extra.json").read_text())["autoattack_parts"] == saved


def test_report_only_writes_the_capacity_section_from_result_files(tmp_path):
    results = tmp_path / "results"
    summary = {"epsilon": 0.3, "methods": ["pgd_at", "trades", "ard", "ardir"], "seeds": [0, 1],
               "settings": {"teacher": {"model_options": "width=32", "epochs": 12}},
               "validation": {"examples": 500, "digits": "training split [3500, 4000)"},
               "teacher_selection": {"chosen": "trades_uniform", "candidates": {
                   "pgd_at": {"pgd20": 0.90, "robust": 0.3, "natural": 0.98, "square_queries": 1000},
                   "trades_uniform": {"pgd20": 0.80, "robust": 0.75, "natural": 0.97, "square_queries": 1000}}},
               "ardir_selection": {"chosen": "stage2:last, gamma 1", "candidates": {
                   "stage2:last, gamma 1": {"pgd20": 0.7, "natural": 0.97}}},
               "sizes": {"student": {"model": "small_cnn", "options": "", "parameters": 312202, "flops": 19978298},
                         "teacher": {"model": "resnet18", "parameters": 2801834, "flops": 228723274},
                         "parameter_ratio": 8.97, "flop_ratio": 11.46}}
    results.mkdir()
    (results / "summary.json").write_text(json.dumps(summary))
    _finished(results, "teacher/trades_uniform", 0.98, 0.82, {(0, 200): 0.75, (200, 500): 0.8}, {"pgd20": 0.8, "natural": 0.97})
    _finished(results, "teacher/pgd_at", 0.98, 0.72, val={"pgd20": 0.7, "natural": 0.98})
    for seed, (pgd_at, trades, ard, ardir) in enumerate([(0.60, 0.70, 0.62, 0.66), (0.62, 0.72, 0.60, 0.67)]):
        parts = {(0, 200): 0.5} if seed else {(0, 200): 0.5, (200, 500): 0.5}
        for method, value in (("pgd_at", pgd_at), ("trades", trades), ("ard", ard), ("ardir", ardir)):
            _finished(results, f"{method}/seed-{seed}", 0.95, value, {k: value - 0.1 for k in parts})
    docs = tmp_path / "results.md"
    docs.write_text(f"# Results\n\nintro\n\n{capacity_report.BEGIN}\nold text\n{capacity_report.END}\n\n## Main table\nkept\n")
    proc = cli(f"--output_dir={tmp_path / 'out'}", "--studies=capacity", "--report_only",
               f"--capacity_results_dir={results}", f"--capacity_docs={docs}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = docs.read_text()
    assert text.startswith("# Results\n\nintro\n\n" + capacity_report.BEGIN) and "old text" not in text
    assert text.endswith(f"{capacity_report.END}\n\n## Main table\nkept\n")
    assert "| teacher (trades_uniform) | 1 | 98.0 | 92.0 | 82.0 | 81.0 | 75.0 | 78.0 |" in text  # 500 = (200*.75+300*.8)/500
    assert "| ardir | 2 | 95.0 ± 0.0 | 76.5 ± 0.7 | 66.5 ± 0.7 | 65.5 ± 0.7 | 56.5 ± 0.7 | 56.0† |" in text
    assert "† seed 0 only (the other seeds were attacked on the first 200 digits only)." in text
    # ARDIR - ARD on PGD-20 by seed: +4.0, +7.0; against the best non-distilled (trades): -4.0, -5.0
    assert "| PGD-20 | ARD | 0: +4.0, 1: +7.0 | +5.5 ± 2.1 | +4.0 to +7.0 | higher on all 2 seeds |" in text
    assert "| PGD-20 | best non-distilled (trades) | 0: -4.0, 1: -5.0 | -4.5 ± 0.7 | -5.0 to -4.0 | lower on all 2 seeds |" in text
    assert "chosen: **trades_uniform**" in text and "(9.0x)" in text and "(11.5x)" in text
    assert "pgd_at 30.0% (PGD-20 90.0%), trades_uniform 75.0% (PGD-20 80.0%)" in text
    assert "nor Square with 1,000 queries breaks it" in text
    assert "above that of every non-distilled student on the same digits" in text
    assert "students 16 min" in text  # 8 student runs x 120 s
    assert (tmp_path / "capacity.png").stat().st_size > 1000
    assert "\ntraining " not in "\n" + proc.stdout  # nothing trained


def test_capacity_section_says_not_yet_run_without_results(tmp_path):
    text = capacity_report.section({"runs": {}})
    assert "Implemented, not yet run" in text and capacity_report.COMMAND in text and "%" not in text


def test_capacity_section_of_an_unfinished_study_shows_what_finished(tmp_path):
    """A study stopped after its teacher (no student yet, no command_seconds): the section says
    it is in progress, shows the teacher's choice and row, and compares nothing."""
    summary = {"epsilon": 0.3, "methods": ["pgd_at", "ardir"], "seeds": [0, 1, 2],
               "settings": {"teacher": {"model_options": "width=24", "epochs": 6}},
               "validation": {"examples": 500, "digits": "training split [3500, 4000)"},
               "teacher_selection": {"chosen": "pgd_at", "candidates": {
                   "pgd_at": {"pgd20": 0.59, "natural": 0.97}, "trades_uniform": {"pgd20": 0.42, "natural": 0.94}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    _finished(tmp_path, "teacher/pgd_at", 0.98, 0.72, val={"pgd20": 0.59, "natural": 0.97})
    text = capacity_report.section(capacity.read_summary(str(tmp_path)))
    assert "In progress" in text and "0 of 6 students" in text and "not yet run" not in text
    assert "chosen: **pgd_at**" in text and "| teacher (pgd_at) | 1 | 98.0 |" in text
    assert "No student has finished yet" in text and "capacity.png" not in text and "ARDIR vs" not in text


def test_step_sweep_tables():
    r = {"step_sizes": {"0.01": 0.82, "0.03": 0.43, "0.075": 0.29, "0.15": 0.28},
         "comparison": {"ce/uniform": 0.72, "ce/normal": 0.77, "kl_teacher/uniform": 0.75, "kl_teacher/normal": 0.79}}
    md = step_sweep.markdown({"rslad": r}, 0.3, 500)
    assert "| rslad | 82.0 | 43.0 | 29.0 | 28.0 |" in md and "step 0.075 (eps/4, the protocol)" in md
    assert "| cross-entropy | 72.0 | 77.0 |" in md and "| KL to the teacher (RSLAD's) | 75.0 | 79.0 |" in md


@pytest.mark.slow
def test_quick_capacity_study_end_to_end_and_resumed(tmp_path):
    out = tmp_path / "r"
    args = [f"--output_dir={out}", "--quick", "--studies=capacity", "--capacity_methods=pgd_at,ardir", "--progress=none"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = out / "results" / "capacity"
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["teacher_selection"]["candidates"]) == set(capacity.TEACHER_RECIPES)
    assert summary["teacher_selection"]["chosen"] == capacity.pick(summary["teacher_selection"]["candidates"])
    assert summary["validation"]["examples"] == 64 and summary["validation"]["selection_train_examples"] == 192
    sizes = summary["sizes"]
    chosen = summary["teacher_selection"]["chosen"]
    assert sizes["teacher"]["model"] == capacity.TEACHER_RECIPES[chosen].get("model", "resnet18")
    assert all(0 <= v["robust"] <= v["pgd20"] + 0.2 and v["square_queries"] == 100
               for v in summary["teacher_selection"]["candidates"].values())
    assert sizes["parameter_ratio"] == pytest.approx(
        sizes["teacher"]["parameters"] / sizes["student"]["parameters"])
    assert summary["ardir_selection"]["chosen"] in capacity.ARDIR_CANDIDATES
    assert set(summary["wall_seconds"]) == {"teacher candidates", "ARDIR selection", "students", "AutoAttack"}
    assert all(v > 0 for v in summary["wall_seconds"].values()), summary["wall_seconds"]
    for run in ("pgd_at/seed-0", "ardir/seed-0", f"teacher/{summary['teacher_selection']['chosen']}"):
        row = capacity.read_row(str(results / run))  # the mirrored small files alone give the row
        assert 0 <= row["pgd20"] <= row["natural"] <= 1 and row["autoattack_examples"] == 8, run
        assert 0 <= row["autoattack"] <= 1 and row["autoattack_seconds"] > 0  # (on 8 of the 64 digits)
        assert not list((results / run).glob("*.keras"))
    text = (out / "capacity.md").read_text()
    assert "| ardir | 1 |" in text and "| pgd_at | 1 |" in text and "Wall time" in text
    again = cli(*args)  # finished runs are reused, nothing retrained or re-attacked
    assert again.returncode == 0, again.stderr[-3000:]
    assert "\ntraining " not in "\n" + again.stdout and "AutoAttack on" not in again.stdout, again.stdout


@pytest.mark.slow
def test_quick_step_sweep(tmp_path):
    proc = cli(f"--output_dir={tmp_path}", "--quick", "--studies=step_sweep", "--progress=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["step_sweep"]) == set(step_sweep.METHODS)
    for method, r in summary["step_sweep"].items():
        natural = summary["runs"][f"main/{method}"][0]["natural"]
        assert all(0 <= v <= natural for v in r["step_sizes"].values()), method
    assert set(summary["step_sweep"]["rslad"]["comparison"]) == {"ce/uniform", "ce/normal", "kl_teacher/uniform",
                                                                 "kl_teacher/normal"}
    assert "## Step sizes and RSLAD's attack" in (tmp_path / "results.md").read_text()


def test_reading_says_plainly_when_a_non_distilled_student_matches_the_teacher():
    teacher = {"autoattack": 0.70, "autoattack_examples": 500, "aa200": 0.70, "aa200_examples": 200}
    students = {"pgd_at": [{"seed": 0, "autoattack": 0.60, "autoattack_examples": 500, "aa200": 0.6},
                           {"seed": 1, "autoattack": 0.71, "autoattack_examples": 200, "aa200": 0.71}],
                "trades": [{"seed": 0, "autoattack": 0.65, "autoattack_examples": 500, "aa200": 0.65}]}
    lines = capacity_report.reading({}, students, teacher, [], ("pgd_at", "trades"))
    assert "**not** above that of pgd_at seed 1 (first 200)" in lines[0]
    students["pgd_at"][1].update(aa200=0.69, autoattack=0.69)
    line = capacity_report.reading({}, students, teacher, [], ("pgd_at", "trades"))[0]
    assert "(70.0% on 500 digits, 70.0% on the first 200 digits) is above that of every non-distilled student" in line
    teacher.update(autoattack_examples=200)  # the later parts not attacked yet: one number, said once
    line = capacity_report.reading({}, students, teacher, [], ("pgd_at", "trades"))[0]
    assert "(70.0% on the first 200 digits) is above" in line


def test_a_continued_teacher_counts_both_training_parts(tmp_path):
    _finished(tmp_path, "teacher/trades_uniform", 0.98, 0.8, val={"pgd20": 0.8, "natural": 0.97})
    results = json.loads((tmp_path / "teacher/trades_uniform/results.json").read_text())
    results["training"]["epochs"] = 6  # continued from its 2-epoch validation
    (tmp_path / "teacher/trades_uniform/results.json").write_text(json.dumps(results))
    val = json.loads((tmp_path / "teacher/trades_uniform/validation.json").read_text())
    (tmp_path / "teacher/trades_uniform/validation.json").write_text(json.dumps({**val, "epochs": 2,
                                                                                 "train_seconds": 50.0}))
    row = capacity.read_row(str(tmp_path / "teacher/trades_uniform"))
    assert row["train_seconds"] == 170.0 and row["val_seconds"] == 6.0
    times = capacity.wall_times({"runs": {"teacher/trades_uniform": row}})
    assert times["teacher candidates"] == 176.0
    # The trainer now times every invocation of a resumed run itself: nothing is added twice.
    results["training"].update(seconds=175.0, train_seconds=170.0)
    (tmp_path / "teacher/trades_uniform/results.json").write_text(json.dumps(results))
    assert capacity.read_row(str(tmp_path / "teacher/trades_uniform"))["train_seconds"] == 175.0
