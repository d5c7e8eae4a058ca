"""``python -m benchmarks.reproduce``: does ARDIR beat the others? The offline benchmark on mnist5k.

Trains one PGD-AT ``small_cnn`` teacher, then ``small_cnn`` students with every method of
:data:`METHODS` under one training budget, ``--seeds`` seeds each, and evaluates every student on
the held-out digits: natural accuracy, FGSM, PGD-20, CW and AutoAttack at ``--epsilon``, and
PGD-20 / CW at ``--second_epsilon``. Then (``--studies``):

* ``ablation``: ARDIR with one setting changed at a time (layers, distance, gamma, teacher IR
  input, attack objective, base loss), ``--ablation_seeds`` seeds each;
* ``controls``: RSLAD and TRADES from a uniform random start (:data:`CONTROLS`), the main seeds,
  AutoAttack as in the main table;
* ``precision``: ARDIR trained under ``mixed_bfloat16`` with the main seeds, beside float32.

Every run lives in its own directory under ``--output_dir`` (``main/<method>/seed-<n>``,
``ablation/<name>/seed-<n>``, ...) and is reused when the command runs again, so an interrupted
benchmark continues where it stopped. ``summary.json`` holds every run's numbers and the
aggregated table (mean and sample standard deviation over seeds); ``results.md`` the tables in
Markdown and ``robustness.png`` a bar chart. ``--quick`` shrinks everything to a CI smoke run.

Usage::

    python -m benchmarks.reproduce --output_dir=runs/reproduce            # about 2 h on 2 cores
    python -m benchmarks.reproduce --output_dir=/tmp/r --quick           # about a minute
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Any, Optional, Sequence

from absl import flags

from ardir_tf.io import load_model_file, write_json_atomic

FLAGS = flags.FLAGS
METHODS = ("standard", "pgd_at", "trades", "ard", "rslad", "iad", "ardir")
STUDIES = ("main", "ablation", "controls", "precision")
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
    flags.DEFINE_list("studies", list(STUDIES), f"Which parts to run: {', '.join(STUDIES)}.")
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


def budget(f) -> dict[str, Any]:
    """The settings every run shares (one training budget), from this program's flags ``f``."""
    from ardir_tf import train

    s = train.default_settings()
    s.update(dataset="mnist5k", model=f.model, epochs=f.epochs, attack_steps=f.attack_steps, epsilon=f.epsilon,
             val_examples=0, eval_examples=f.eval_examples,
             eval_attacks=["fgsm", "pgd20", "cw"], progress=f.progress, deterministic=False,
             # IAD's reference begins its introspection at 30% of training (epoch 60 of 200).
             iad_begin=max(1, round(0.3 * f.epochs)))
    if f.quick:
        s.update(train_examples=256, epochs=1, attack_steps=2, attack_step_size=f.epsilon / 2, iad_begin=0,
                 eval_examples=64)
    return s


def _evaluate_extra(workdir: str, s: dict[str, Any], autoattack_examples: int, second_epsilon: float) -> dict:
    """AutoAttack on the first ``autoattack_examples`` digits at eps (0: none), PGD-20/CW at the
    second eps; each part cached in ``WORKDIR/extra.json`` and computed only when missing."""
    path = os.path.join(workdir, "extra.json")
    extra: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            extra = json.load(f)
    n = min(autoattack_examples, s["eval_examples"])
    want_aa = n and extra.get("autoattack", {}).get("examples") != n
    want_second = second_epsilon and extra.get("second_epsilon", {}).get("epsilon") != second_epsilon
    if not (want_aa or want_second):
        return extra
    from ardir_tf import data, evaluate

    model = load_model_file(os.path.join(workdir, "model.keras"))
    x, y = data.load_arrays("mnist5k", "test", examples=s["eval_examples"])
    if want_aa:
        r = evaluate.evaluate(model, x[:n], y[:n], epsilon=s["epsilon"], attacks=["autoattack"], seed=s["seed"],
                              verbose=0, masking_check=False)
        extra["autoattack"] = {"examples": n, "accuracy": r["robust_accuracy"]["autoattack"],
                               "seconds": r["attacks"]["autoattack"]["seconds"]}
    if want_second:
        r = evaluate.evaluate(model, x, y, epsilon=second_epsilon, attacks=["pgd20", "cw"], seed=s["seed"], verbose=0)
        extra["second_epsilon"] = {"epsilon": second_epsilon, **r["robust_accuracy"]}
    write_json_atomic(path, extra)
    return extra


def run_one(s: dict[str, Any], workdir: str, teacher: str, autoattack_examples: int,
            second_epsilon: float) -> dict[str, Any]:
    """Trains (or reuses) one run and returns its row (:func:`read_row`)."""
    from ardir_tf import train

    train.train_and_evaluate(s, workdir, teacher)
    _evaluate_extra(workdir, s, autoattack_examples, second_epsilon)
    return read_row(workdir)


def read_row(workdir: str) -> Optional[dict[str, Any]]:
    """A finished run's row (accuracies in [0, 1], training seconds), ``None`` if it has not finished."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    extra: dict[str, Any] = {}
    if os.path.exists(os.path.join(workdir, "extra.json")):
        with open(os.path.join(workdir, "extra.json")) as f:
            extra = json.load(f)
    row = {"natural": results["natural_accuracy"], **{k: results["robust_accuracy"][k] for k in ("fgsm", "pgd20", "cw")},
           "train_seconds": results["training"]["seconds"]}
    if "autoattack" in extra:
        row["autoattack"] = extra["autoattack"]["accuracy"]
        row["autoattack_examples"] = extra["autoattack"]["examples"]
    if "second_epsilon" in extra:
        row["pgd20@2"] = extra["second_epsilon"]["pgd20"]
        row["cw@2"] = extra["second_epsilon"]["cw"]
    return row


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and count ``n`` of every numeric key over
    the ``rows`` that have it (AutoAttack runs on some seeds only)."""
    out: dict[str, Any] = {"seeds": len(rows)}
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "seed"))
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "n": len(values)}
    return out


def markdown_table(table: dict[str, dict[str, Any]], second_epsilon: float, epsilon: float) -> str:
    cols = [("natural", "natural"), ("fgsm", "FGSM"), ("pgd20", "PGD-20"), ("cw", "CW"), ("autoattack", "AutoAttack"),
            ("pgd20@2", f"PGD-20 @{second_epsilon:g}"), ("cw@2", f"CW @{second_epsilon:g}")]
    cols = [(k, name) for k, name in cols if any(k in agg for agg in table.values())]
    lines = [f"| run | seeds | " + " | ".join(n if "@" in n else f"{n} @{epsilon:g}" if k != "natural" else n
                                           for k, n in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    partial = False
    for name, agg in table.items():
        cells = []
        for k, _ in cols:
            if k not in agg:
                cells.append("-")
                continue
            m, sd, n = 100 * agg[k]["mean"], 100 * agg[k]["std"], agg[k]["n"]
            cells.append(f"{m:.1f} ± {sd:.1f}" if n > 1 else f"{m:.1f}" + ("†" if agg["seeds"] > 1 else ""))
            partial |= n < agg["seeds"]
        lines.append(f"| {name} | {agg['seeds']} | " + " | ".join(cells) + " |")
    if partial:
        lines += ["", "† one seed only (the others were not evaluated with that attack)."]
    return "\n".join(lines)


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
    import keras
    import tensorflow as tf

    from ardir_tf import methods

    seeds = [int(x) for x in f.seeds][: 1 if f.quick else None]
    ablation_seeds = [int(x) for x in f.ablation_seeds]
    base = budget(f)
    aa_examples = 8 if f.quick else f.autoattack_examples
    ablation_aa = min(8, f.ablation_autoattack_examples) if f.quick else f.ablation_autoattack_examples
    out = os.path.abspath(f.output_dir)
    start = time.time()
    runs: dict[str, list[dict[str, Any]]] = {}

    def study(name: str, settings: dict[str, Any], run_seeds: Sequence[int], teacher: str, aa: int) -> None:
        for seed in run_seeds:
            workdir = os.path.join(out, name, f"seed-{seed}")
            if f.report_only:
                row = read_row(workdir)
                if row is not None:
                    runs.setdefault(name, []).append({"seed": seed, **row})
                continue
            print(f"[{time.time() - start:7.0f}s] {name} seed {seed}", flush=True)
            row = run_one({**settings, "seed": seed}, workdir, teacher, aa, f.second_epsilon)
            runs.setdefault(name, []).append({"seed": seed, **row})
            keras.backend.clear_session()

    teacher_settings = {**base, "method": "pgd_at", "epochs": 1 if f.quick else f.teacher_epochs}
    study("teacher", teacher_settings, [0], "", aa_examples)
    teacher = os.path.join(out, "teacher", "seed-0", "model.keras")
    distill = lambda m: teacher if m in methods.DISTILLATION_METHODS else ""  # noqa: E731
    # Seed-major order, AutoAttack last: an interrupted benchmark has whole seeds of the table.
    for seed in seeds:
        if "main" in f.studies:
            for m in f.methods:
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
        runs[name] = [r for r in runs.get(name, []) if r["seed"] not in aa_seeds]
        study(name, settings, aa_seeds, distill(settings["method"]), aa_examples)
        runs[name].sort(key=lambda r: r["seed"])
    runs = {k: v for k, v in runs.items() if v}
    if "ablation" in f.studies:
        variants = f.ablation[:: max(1, len(f.ablation) - 1)] if f.quick else f.ablation
        for name in variants:
            study(f"ablation/{name}", {**base, "method": "ardir", **ABLATION[name]}, ablation_seeds, teacher, ablation_aa)

    table = {name: aggregate(rows) for name, rows in runs.items()}
    summary = {
        "settings": {k: v for k, v in base.items() if k not in ("workdir", "teacher", "progress", "verbose")},
        "quick": f.quick, "seconds": round(time.time() - start, 1),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "hardware": f"{os.cpu_count()} CPU cores, {tf.config.list_physical_devices()}",
        "runs": runs, "table": table,
    }
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    main = {k.split("/", 1)[-1]: v for k, v in table.items() if k == "teacher" or k.startswith("main/")}
    md = [f"# mnist5k benchmark ({'quick' if f.quick else 'full'})", "",
          markdown_table(main, f.second_epsilon, f.epsilon)]
    if any(k.startswith("ablation/") for k in table):
        ablation = {"ardir (defaults)": table["main/ardir"]} if "main/ardir" in table else {}
        ablation.update({k.split("/", 1)[1]: v for k, v in table.items() if k.startswith("ablation/")})
        md += ["", "## ARDIR ablation", "", markdown_table(ablation, f.second_epsilon, f.epsilon)]
    if any(k.startswith("controls/") for k in table):
        controls = {k.split("/", 1)[1]: v for k, v in table.items()
                    if k.startswith("controls/") or k in ("main/rslad", "main/trades")}
        md += ["", "## Controls", "", markdown_table(controls, f.second_epsilon, f.epsilon)]
    if any(k.startswith("precision/") for k in table):
        prec = {k.split("/", 1)[-1]: v for k, v in table.items() if k in ("main/ardir",) or k.startswith("precision/")}
        md += ["", "## Precision", "", markdown_table(prec, f.second_epsilon, f.epsilon)]
    trained = sum(r["train_seconds"] for rows in runs.values() for r in rows) / 60
    md += ["", f"Training and evaluation of these runs: {trained:.0f} min (their own timers); this command: "
           f"{summary['seconds'] / 60:.1f} min."]
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    if main:
        plot(main, os.path.join(out, "robustness.png"), f.epsilon)
    print("\n".join(md))
    return summary


def main(argv) -> None:
    del argv
    if not FLAGS.output_dir:
        raise ValueError("--output_dir is required")
    if not math.isfinite(FLAGS.epsilon) or not 0 < FLAGS.epsilon <= 1:
        raise ValueError(f"--epsilon must be in (0, 1], got {FLAGS.epsilon}")
    unknown = [m for m in FLAGS.methods if m not in METHODS]
    unknown += [a for a in FLAGS.ablation if a not in ABLATION] + [s for s in FLAGS.studies if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown method, ablation variant or study: {', '.join(unknown)}")
    reproduce(FLAGS)


if __name__ == "__main__":
    from ardir_tf import cli

    define_flags()
    cli.run(main)
