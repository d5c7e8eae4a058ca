"""``python -m benchmarks.reproduce``: does ARDIR beat the others? The offline benchmark on mnist5k.

Trains one PGD-AT ``small_cnn`` teacher, then ``small_cnn`` students with every method of
:data:`METHODS` under one training budget, ``--seeds`` seeds each, and evaluates every student on
the held-out digits: natural accuracy, FGSM, PGD-20, CW and AutoAttack at ``--epsilon``, and
PGD-20 / CW at ``--second_epsilon``. Then (``--studies``):

* ``ablation``: ARDIR with one setting changed at a time (layers, distance, gamma, teacher IR
  input, attack objective, base loss), ``--ablation_seeds`` seeds each;
* ``controls``: RSLAD and TRADES from a uniform random start (:data:`CONTROLS`), the main seeds,
  AutoAttack as in the main table;
* ``precision``: ARDIR trained under ``mixed_bfloat16`` with the main seeds, beside float32;
* ``step_sweep``: PGD-20 with several step sizes against the seed-0 students of RSLAD, TRADES,
  ARD and PGD-AT, and RSLAD's own attack against CE-PGD (:mod:`benchmarks.step_sweep`);
* ``capacity``: a larger teacher (a ResNet-18 or a wide ``small_cnn``, picked on validation)
  distilled into ``small_cnn`` students by every method, choices made on a validation split
  (:mod:`benchmarks.capacity`); not in the default ``--studies`` (5.7 hours on 2 cores in its own run). Its report
  replaces the capacity section of ``--capacity_docs`` (``docs/results.md``) and its small result files are kept in
  ``--capacity_results_dir`` (``benchmarks/results/capacity``), from which ``--report_only``
  rebuilds that section anywhere.

Every run lives in its own directory under ``--output_dir`` (``main/<method>/seed-<n>``,
``ablation/<name>/seed-<n>``, ...) and is reused when the command runs again, so an interrupted
benchmark continues where it stopped. ``summary.json`` holds every run's numbers and the
aggregated table (mean and sample standard deviation over seeds); ``results.md`` the tables in
Markdown and ``robustness.png`` a bar chart. ``--quick`` shrinks everything to a CI smoke run.

Usage::

    python -m benchmarks.reproduce --output_dir=runs/reproduce            # about 2 h on 2 cores
    python -m benchmarks.reproduce --output_dir=/tmp/r --quick           # about a minute
    python -m benchmarks.reproduce --output_dir=runs/reproduce --studies=capacity   # about 4 h
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

from absl import flags

from benchmarks import capacity, capacity_report, runs, step_sweep

FLAGS = flags.FLAGS
METHODS = ("standard", "pgd_at", "trades", "ard", "rslad", "iad", "ardir")
STUDIES = ("main", "ablation", "controls", "precision", "step_sweep", "capacity")
DEFAULT_STUDIES = ("main", "ablation", "controls", "precision", "step_sweep")
# The studies that share the main table's small_cnn teacher.
SHARED_TEACHER_STUDIES = ("main", "ablation", "controls", "precision", "step_sweep")
# One setting changed at a time from ARDIR's defaults (the main table's ``ardir`` row).
ABLATION: dict[str, dict[str, Any]] = {
    "layers=stage1": {"ir_layers": ["stage1"]},
    "layers=stage1+stage2": {"ir_layers": ["stage1", "stage2"]},
    "distance=mse": {"ir_distance": "mse"},
    "distance=cosine": {"ir_distance": "cosine"},
    "distance=attention": {"ir_distance": "attention"},
    "gamma=0.3": {"gamma": 0.3},
    "gamma=3": {"gamma": 3.0},
    "gamma=10": {"gamma": 10.0},
    "teacher_ir=adversarial": {"teacher_ir_input": "adversarial"},
    "objective=ardir": {"attack_objective": "ardir"},
    "base=iad": {"ardir_base": "iad"},
}
# Checks of a main-table row with one training setting changed (``controls/<name>``): RSLAD's
# reference start (x + 0.001 N(0, 1)) with K=10 steps of eps/10 seldom reaches the ball's corners,
# which the evaluation's larger steps (eps/4) do; the same method from a uniform start tells
# whether that start, not the loss, is what leaves RSLAD weak at eps 0.3.
CONTROLS: dict[str, dict[str, Any]] = {
    "rslad/random_start=uniform": {"method": "rslad", "random_start": "uniform"},
    "trades/random_start=uniform": {"method": "trades", "random_start": "uniform"},
}
ROBUST_KEYS = ("fgsm", "pgd20", "cw", "autoattack")


def define_flags() -> None:
    flags.DEFINE_string("output_dir", None, "Directory of the runs and the summary (required).")
    flags.DEFINE_bool("quick", False, "A CI smoke run: 256 training digits, 1 epoch, 2 attack steps, 1 seed, "
                      "64 evaluation digits, AutoAttack on 8, the first and last ablation variants.")
    flags.DEFINE_list("studies", list(DEFAULT_STUDIES), f"Which parts to run: {', '.join(STUDIES)} (capacity only "
                      "when named).")
    flags.DEFINE_list("methods", list(METHODS), "Methods of the main table.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the main table and the precision study.")
    flags.DEFINE_list("ablation_seeds", ["0"], "Seeds of each ablation variant.")
    flags.DEFINE_list("ablation", list(ABLATION), "Ablation variants to run.")
    flags.DEFINE_string("model", "small_cnn", "Architecture of the teacher and every student.")
    flags.DEFINE_integer("epochs", 4, "Training epochs of every student.")
    flags.DEFINE_integer("teacher_epochs", 8, "Training epochs of the PGD-AT teacher.")
    flags.DEFINE_integer("attack_steps", 10, "PGD steps K of every training attack.")
    flags.DEFINE_float("epsilon", 0.3, "L-inf radius of training and of the main evaluation.")
    flags.DEFINE_float("second_epsilon", 0.2, "A second evaluation radius (PGD-20 and CW); 0 skips it.")
    flags.DEFINE_integer("eval_examples", 1000, "Held-out digits of the evaluation.")
    flags.DEFINE_integer("autoattack_examples", 200, "The first N held-out digits that AutoAttack attacks (all 1,000 "
                         "cost over 10 minutes per model here, mostly Square's 5,000 queries).")
    flags.DEFINE_list("autoattack_seeds", ["0"], "Seeds whose students AutoAttack evaluates (a robust small_cnn takes "
                      "about 5 minutes for 200 digits on 2 idle cores).")
    flags.DEFINE_integer("ablation_autoattack_examples", 0, "AutoAttack digits of the ablation runs (0: none).")
    flags.DEFINE_bool("report_only", False, "Train nothing: write the summary and tables of the runs finished so "
                      "far (e.g. while the benchmark runs).")
    flags.DEFINE_enum("progress", "epoch", ["bar", "epoch", "none"], "Progress output of each training run.")
    flags.DEFINE_integer("step_sweep_examples", 500, "Held-out digits of the step_sweep study (--quick: 64).")
    flags.DEFINE_string("capacity_teacher_model", "resnet18", "capacity: the architecture of the teacher recipes "
                        "that name none.")
    flags.DEFINE_string("capacity_teacher_options", "width=24", "capacity: its options (--quick: every teacher "
                        "candidate has width=8).")
    flags.DEFINE_integer("capacity_teacher_epochs", 6, "capacity: training epochs of the teacher (--quick: 2).")
    flags.DEFINE_integer("capacity_select_epochs", 2, "capacity: epochs of each teacher candidate before the choice; "
                         "the chosen one continues to --capacity_teacher_epochs (--quick: 1).")
    flags.DEFINE_list("capacity_teacher_recipes", list(capacity.TEACHER_RECIPES),
                      f"capacity: teacher candidates, any of {', '.join(capacity.TEACHER_RECIPES)}.")
    flags.DEFINE_string("capacity_student_model", "small_cnn", "capacity: the students' architecture.")
    flags.DEFINE_string("capacity_student_options", "", "capacity: the students' architecture options.")
    flags.DEFINE_list("capacity_methods", list(capacity.STUDENTS), "capacity: the students' methods.")
    flags.DEFINE_integer("capacity_val_examples", 500, "capacity: training digits held out for every choice "
                         "(the last ones of the training split; --quick: 64).")
    flags.DEFINE_string("capacity_results_dir", "", "capacity: where the small result files go and --report_only "
                        "reads them (default: benchmarks/results/capacity; --quick: OUTPUT_DIR/results/capacity).")
    flags.DEFINE_string("capacity_docs", "", "capacity: the Markdown file whose capacity section the report "
                        "replaces (default: docs/results.md; --quick: OUTPUT_DIR/capacity.md).")


def plot(table: dict[str, dict[str, Any]], path: str, epsilon: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("natural", "pgd20", "cw", "autoattack") if all(k in a for a in table.values())]
    names = list(table)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.6))
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * table[n][k]["mean"] for n in names], width, yerr=[100 * table[n][k]["std"] for n in names],
               capsize=2, label=k if k == "natural" else f"{k} @{epsilon:g}")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(keys), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce(f) -> dict[str, Any]:
    """Runs the studies that ``f`` (this program's flags) asks for; returns the summary dict."""
    out = os.path.abspath(f.output_dir)
    summary: dict[str, Any] = {}
    md: list[str] = []
    if any(s in SHARED_TEACHER_STUDIES for s in f.studies):
        summary, md = shared_teacher_studies(f, out)
    if "capacity" in f.studies:
        summary["capacity"] = capacity_study(f, out)
    if md:
        with open(os.path.join(out, "results.md"), "w") as fh:
            fh.write("\n".join(md) + "\n")
        print("\n".join(md))
    return summary


def capacity_study(f, out: str) -> dict[str, Any]:
    """Runs (or reads) the capacity study and writes its report; returns its summary."""
    summary = capacity.run(f)
    docs = f.capacity_docs or (os.path.join(out, "capacity.md") if f.quick else
                               os.path.join(capacity.ROOT, "docs", "results.md"))
    plot_path = os.path.join(os.path.dirname(os.path.abspath(docs)), "capacity.png")
    text = capacity_report.report(summary, docs, plot_path)
    print(text)
    return summary


def shared_teacher_studies(f, out: str) -> tuple[dict[str, Any], list[str]]:
    """The studies that share one ``small_cnn`` teacher (main, ablation, controls, precision,
    step_sweep); returns their summary (also written to ``OUTPUT_DIR/summary.json``) and the
    Markdown of ``OUTPUT_DIR/results.md``."""
    import keras
    import tensorflow as tf

    from ardir_tf import methods

    seeds = [int(x) for x in f.seeds][: 1 if f.quick else None]
    ablation_seeds = [int(x) for x in f.ablation_seeds]
    base = runs.budget(f)
    aa_examples = 8 if f.quick else f.autoattack_examples
    ablation_aa = min(8, f.ablation_autoattack_examples) if f.quick else f.ablation_autoattack_examples
    start = time.time()
    finished: dict[str, list[dict[str, Any]]] = {}

    def study(name: str, settings: dict[str, Any], run_seeds: Sequence[int], teacher: str, aa: int) -> None:
        for seed in run_seeds:
            workdir = os.path.join(out, name, f"seed-{seed}")
            if f.report_only:
                row = runs.read_row(workdir)
                if row is not None:
                    finished.setdefault(name, []).append({"seed": seed, **row})
                continue
            print(f"[{time.time() - start:7.0f}s] {name} seed {seed}", flush=True)
            row = runs.run_one({**settings, "seed": seed}, workdir, teacher, aa, f.second_epsilon)
            finished.setdefault(name, []).append({"seed": seed, **row})
            keras.backend.clear_session()

    teacher_settings = {**base, "method": "pgd_at", "epochs": 1 if f.quick else f.teacher_epochs}
    study("teacher", teacher_settings, [0], "", aa_examples)
    teacher = os.path.join(out, "teacher", "seed-0", "model.keras")
    distill = lambda m: teacher if m in methods.DISTILLATION_METHODS else ""  # noqa: E731
    main_methods = list(f.methods) if "main" in f.studies else []
    if "step_sweep" in f.studies:  # the sweep attacks the main table's seed-0 students
        main_methods += [m for m in step_sweep.METHODS if m not in main_methods]
    # Seed-major order, AutoAttack last: an interrupted benchmark has whole seeds of the table.
    for seed in seeds:
        for m in main_methods:
            if m in f.methods and "main" in f.studies or seed == seeds[0]:
                study(f"main/{m}", {**base, "method": m}, [seed], distill(m), 0)
        if "controls" in f.studies:
            for name, change in CONTROLS.items():
                study(f"controls/{name}", {**base, **change}, [seed], distill(change["method"]), 0)
        if "precision" in f.studies:
            study("precision/ardir-mixed_bfloat16", {**base, "method": "ardir", "precision": "mixed_bfloat16"},
                  [seed], teacher, 0)
    # AutoAttack of the main table's and the controls' runs of --autoattack_seeds.
    attacked = {f"main/{m}": {**base, "method": m} for m in f.methods} if "main" in f.studies else {}
    if "controls" in f.studies:
        attacked.update({f"controls/{name}": {**base, **change} for name, change in CONTROLS.items()})
    aa_seeds = [s for s in seeds if f.quick or str(s) in f.autoattack_seeds]
    for name, settings in attacked.items():
        finished[name] = [r for r in finished.get(name, []) if r["seed"] not in aa_seeds]
        study(name, settings, aa_seeds, distill(settings["method"]), aa_examples)
        finished[name].sort(key=lambda r: r["seed"])
    finished = {k: v for k, v in finished.items() if v}
    if "ablation" in f.studies:
        variants = f.ablation[:: max(1, len(f.ablation) - 1)] if f.quick else f.ablation
        for name in variants:
            study(f"ablation/{name}", {**base, "method": "ardir", **ABLATION[name]}, ablation_seeds, teacher, ablation_aa)
    sweep = {}
    if "step_sweep" in f.studies:
        if not f.report_only:
            print(f"[{time.time() - start:7.0f}s] step_sweep", flush=True)
        sweep = step_sweep.run(out, teacher, f.epsilon, 64 if f.quick else f.step_sweep_examples,
                               report_only=f.report_only)

    table = {name: runs.aggregate(rows) for name, rows in finished.items()}
    summary = {
        "settings": {k: v for k, v in base.items() if k not in ("workdir", "teacher", "progress", "verbose")},
        "quick": f.quick, "seconds": round(time.time() - start, 1),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "hardware": f"{os.cpu_count()} CPU cores, {tf.config.list_physical_devices()}",
        "runs": finished, "table": table, "step_sweep": sweep,
    }
    runs.write_json(os.path.join(out, "summary.json"), summary)
    main = {k.split("/", 1)[-1]: v for k, v in table.items() if k == "teacher" or k.startswith("main/")}
    md = [f"# mnist5k benchmark ({'quick' if f.quick else 'full'})", "",
          runs.markdown_table(main, f.second_epsilon, f.epsilon)]
    if any(k.startswith("ablation/") for k in table):
        ablation = {"ardir (defaults)": table["main/ardir"]} if "main/ardir" in table else {}
        ablation.update({k.split("/", 1)[1]: v for k, v in table.items() if k.startswith("ablation/")})
        md += ["", "## ARDIR ablation", "", runs.markdown_table(ablation, f.second_epsilon, f.epsilon)]
    if any(k.startswith("controls/") for k in table):
        controls = {k.split("/", 1)[1]: v for k, v in table.items()
                    if k.startswith("controls/") or k in ("main/rslad", "main/trades")}
        md += ["", "## Controls", "", runs.markdown_table(controls, f.second_epsilon, f.epsilon)]
    if sweep:
        md += ["", "## Step sizes and RSLAD's attack", "",
               step_sweep.markdown(sweep, f.epsilon, 64 if f.quick else f.step_sweep_examples)]
    if any(k.startswith("precision/") for k in table):
        prec = {k.split("/", 1)[-1]: v for k, v in table.items() if k in ("main/ardir",) or k.startswith("precision/")}
        md += ["", "## Precision", "", runs.markdown_table(prec, f.second_epsilon, f.epsilon)]
    trained = sum(r["train_seconds"] for rows in finished.values() for r in rows) / 60
    md += ["", f"Training and evaluation of these runs: {trained:.0f} min (their own timers); this command: "
           f"{summary['seconds'] / 60:.1f} min."]
    if main:
        plot(main, os.path.join(out, "robustness.png"), f.epsilon)
    return summary, md


def main(argv) -> None:
    del argv
    if not FLAGS.output_dir:
        raise ValueError("--output_dir is required")
    if not math.isfinite(FLAGS.epsilon) or not 0 < FLAGS.epsilon <= 1:
        raise ValueError(f"--epsilon must be in (0, 1], got {FLAGS.epsilon}")
    unknown = [m for m in FLAGS.methods if m not in METHODS]
    unknown += [a for a in FLAGS.ablation if a not in ABLATION] + [s for s in FLAGS.studies if s not in STUDIES]
    unknown += [m for m in FLAGS.capacity_methods if m not in capacity.STUDENTS]
    unknown += [r for r in FLAGS.capacity_teacher_recipes if r not in capacity.TEACHER_RECIPES]
    if unknown:
        raise ValueError(f"unknown method, ablation variant, study or teacher recipe: {', '.join(unknown)}")
    reproduce(FLAGS)


if __name__ == "__main__":
    from ardir_tf import cli

    define_flags()
    cli.run(main)
