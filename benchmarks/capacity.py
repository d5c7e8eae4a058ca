"""The ``capacity`` study of :mod:`benchmarks.reproduce`: a larger, more robust teacher distilled
into a small student, the setting robust distillation is for.

Parts, in order (each run is reused when the command runs again):

1. **Validation carve-out.** The last ``--capacity_val_examples`` digits of mnist5k's training
   split (its order is random, so they are close to class-balanced) are held out; every choice
   below reads robust accuracy on them and nothing else: a digit counts as robust when neither
   APGD-CE (white-box) nor Square (black-box, :data:`VAL_SQUARE_QUERIES` queries) breaks it, so
   that a model whose gradients are masked (high PGD accuracy, low black-box accuracy) is not
   chosen. The 1,000 held-out test digits are only ever reported.
2. **Teacher.** One candidate per recipe of ``--capacity_teacher_recipes`` (:data:`TEACHER_RECIPES`:
   a training method and, where given, an architecture; else ``--capacity_teacher_model``), trained
   for ``--capacity_select_epochs`` on the rest of the training split; the one with the highest
   validation robust accuracy (then natural accuracy) continues to ``--capacity_teacher_epochs``
   (constant learning rate, so the continuation is the same run as one trained that long from the
   start) and is the teacher.
3. **ARDIR's layers and gamma.** ARDIR students (seed 0, same training digits) with each variant
   of :data:`ARDIR_CANDIDATES` and the chosen teacher; the best on validation robust accuracy is
   ARDIR's setting in the table. The student's and the teacher's maps differ in channels and size, so
   ARDIR maps them with its trainable connector (1x1 convolution, batch norm, average pooling).
4. **Students.** ``--capacity_student_model`` by every method of :data:`STUDENTS`, one budget
   (the main table's: ``--epochs``, ``--attack_steps``, ...), ``--seeds`` seeds, on the whole
   training split; natural, FGSM, PGD-20 and CW accuracy at ``--epsilon`` on the
   ``--eval_examples`` held-out digits.
5. **AutoAttack** (standard) on the held-out digits ``[0, 200)`` for every student and seed, and
   ``[200, 500)`` as well for the teacher and seed 0 of each method, run in those two parts so
   that every seed has the same first 200 digits (for paired differences) and seed 0 also has
   all 500.

Runs live under ``OUTPUT_DIR/capacity/``; their small JSON files (results, validation,
AutoAttack parts; no weights) are mirrored into ``--capacity_results_dir`` and a summary written
there, from which ``--report_only`` rebuilds the report anywhere
(:mod:`benchmarks.capacity_report`).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Any, Callable, Optional

from benchmarks import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results", "capacity")

#: Teacher recipes (training settings over the budget, and an architecture where given); TRADES
#: from a uniform start (the references' x + 0.001 N(0, 1) start seldom reaches the ball's corners
#: with K = 10 steps of eps/10). The wide ``small_cnn`` (width 100: 4.2x the student's parameters,
#: about 9x its FLOPs) is the plain CNN of the MNIST robustness literature, made larger: a first
#: run of this study, choosing on PGD-20 alone, picked a ResNet-18 teacher with 76% PGD-20 but
#: 27% AutoAttack accuracy (masked gradients; docs/results.md).
TEACHER_RECIPES: dict[str, dict[str, Any]] = {
    "pgd_at": {"method": "pgd_at"},
    "trades_uniform": {"method": "trades", "random_start": "uniform"},
    "pgd_at_wide_cnn": {"method": "pgd_at", "model": "small_cnn", "model_options": "width=100"},
}
#: Square's queries per digit in the validation attack (--quick: 100); AutoAttack's are 5,000.
VAL_SQUARE_QUERIES = 1000
#: --quick: every teacher candidate this narrow (a smoke run of the pipeline, not a 4x teacher).
QUICK_TEACHER_OPTIONS = "width=8"
#: The students of the table: each method with its own defaults, TRADES from a uniform start.
STUDENTS: dict[str, dict[str, Any]] = {
    "pgd_at": {"method": "pgd_at"},
    "trades": {"method": "trades", "random_start": "uniform"},
    "ard": {"method": "ard"},
    "rslad": {"method": "rslad"},
    "iad": {"method": "iad"},
    "ardir": {"method": "ardir"},
}
NON_DISTILLED = ("pgd_at", "trades")
#: ARDIR variants picked between on the validation digits. ``{teacher}`` is the teacher's last
#: stage (ARDIR's default teacher layer); the student's stages are ``small_cnn``'s. Gamma 0.3 was
#: added after the first attempt, whose ARDIR students ended training with the IR term at five
#: times the KL term (docs/results.md).
ARDIR_CANDIDATES: dict[str, dict[str, Any]] = {
    "stage2:last, gamma 1": {},
    "stage2:last, gamma 3": {"gamma": 3.0},
    "stage1+stage2:last, gamma 1": {"ir_layers": ["stage1:{teacher}", "stage2:{teacher}"]},
    "stage2:last, gamma 0.3": {"gamma": 0.3},
}
#: AutoAttack digit ranges: every run gets the first; the teacher and seed 0 get them all. The later
#: ranges are small so that an interrupted study loses little (the teacher takes over 20 minutes
#: per 100 digits here).
AA_PARTS = ((0, 200), (200, 300), (300, 400), (400, 500))
RUN_FILES = ("results.json", "extra.json", "validation.json")


def _slug(name: str) -> str:
    return name.replace(", ", "_").replace(" ", "").replace(":", "-").replace("+", "_")


def settings(f) -> dict[str, Any]:
    """The study's settings from the benchmark's flags ``f``: the budget of every student, the
    teacher's, the digits of validation and AutoAttack, and where results go."""
    base = runs.budget(f)
    base.update(model=f.capacity_student_model, model_options=f.capacity_student_options)
    quick = f.quick
    train_digits = base["train_examples"] or _num_train()
    val = 64 if quick else f.capacity_val_examples
    if not 0 < val < train_digits:
        raise ValueError(f"--capacity_val_examples must be in (0, {train_digits}), got {val}")
    teacher_epochs = 2 if quick else f.capacity_teacher_epochs
    select_epochs = 1 if quick else f.capacity_select_epochs
    if not 1 <= select_epochs <= teacher_epochs:
        raise ValueError(f"--capacity_select_epochs must be in [1, --capacity_teacher_epochs], got {select_epochs}")
    teacher = {**base, "model": f.capacity_teacher_model,
               "model_options": QUICK_TEACHER_OPTIONS if quick else f.capacity_teacher_options, "epochs": teacher_epochs,
               # Fixed, not derived from the epochs: the selection run and its continuation share it.
               "epsilon_warmup_epochs": min(1.0, select_epochs / 2)}
    return {
        "student": base, "teacher": teacher, "select_epochs": select_epochs,
        "train_digits": train_digits, "val_examples": val, "selection_train_examples": train_digits - val,
        "teacher_recipes": list(f.capacity_teacher_recipes), "methods": list(f.capacity_methods),
        "ardir_candidates": list(ARDIR_CANDIDATES)[:: 2 if quick else 1],
        "val_square_queries": 100 if quick else VAL_SQUARE_QUERIES, "quick": quick,
        "seeds": [int(s) for s in f.seeds][: 1 if quick else None],
        "aa_parts": [(0, 8)] if quick else [list(p) for p in AA_PARTS],
        "results_dir": f.capacity_results_dir or (os.path.join(os.path.abspath(f.output_dir), "results", "capacity")
                                                  if quick else DEFAULT_RESULTS_DIR),
    }


# ------------------------------------------------------------------------------------ helpers
def teacher_settings(cfg: dict[str, Any], recipe: str) -> dict[str, Any]:
    """The teacher's settings under ``recipe`` (its architecture, if the recipe names one,
    replaces ``--capacity_teacher_model``; ``--quick`` keeps every teacher narrow)."""
    r = dict(TEACHER_RECIPES[recipe])
    if cfg["quick"] and "model_options" in r:
        r["model_options"] = QUICK_TEACHER_OPTIONS
    return {**cfg["teacher"], **r}


def validation_arrays(train_digits: int, val: int):
    """The validation digits: the last ``val`` of the first ``train_digits`` of the training split."""
    from ardir_tf import data

    x, y = data.load_arrays("mnist5k", "train", examples=train_digits)
    return x[train_digits - val:], y[train_digits - val:]


def validate(workdir: str, s: dict[str, Any], x_val, y_val, square_queries: int = VAL_SQUARE_QUERIES) -> dict[str, Any]:
    """Accuracy of the run's model on the validation digits, cached in ``WORKDIR/validation.json``:
    ``natural``, ``pgd20`` (for the record) and ``robust``, the choice's criterion: the digits that
    neither APGD-CE nor Square (``square_queries`` per digit) breaks, each run on the digits the
    previous left (AutoAttack's members, with a smaller Square budget).

    Raises:
        ValueError: the cache lacks ``robust`` (a run validated by an older version) and the run
            has trained past its validation epochs, so its validated weights are gone.
    """
    path = os.path.join(workdir, "validation.json")
    cached = runs.read_json(path)
    if cached and cached.get("examples") == len(x_val) and cached.get("square_queries") == square_queries:
        return cached
    trained = runs.read_json(os.path.join(workdir, "results.json"))["training"]
    if trained["epochs"] != s["epochs"]:
        raise ValueError(f"{workdir} was validated with another attack and has trained on to {trained['epochs']} "
                         f"epochs since (validation is at {s['epochs']}): delete it to retrain and validate it")
    from ardir_tf import evaluate
    from ardir_tf.attacks.autoattack import AutoAttack

    start = time.time()
    model = runs.load_model(os.path.join(workdir, "model.keras"))
    r = evaluate.evaluate(model, x_val, y_val, epsilon=s["epsilon"], attacks=["pgd20"], seed=s["seed"], verbose=0)
    attack = AutoAttack(model, attacks=("apgd-ce", "square"), square_queries=square_queries, seed=s["seed"])
    robust = attack.run(x_val, y_val, s["epsilon"])
    out = {"examples": len(x_val), "split": "train[-val:]", "natural": r["natural_accuracy"],
           "pgd20": r["robust_accuracy"]["pgd20"], "robust": float(robust.robust.mean()),
           **{rec.name: rec.robust_accuracy for rec in robust.records}, "square_queries": square_queries,
           "seconds": round(time.time() - start, 1), "epochs": trained["epochs"], "train_seconds": trained["seconds"]}
    runs.write_json(path, out)
    return out


def pick(candidates: dict[str, dict[str, Any]]) -> str:
    """The candidate with the highest validation robust accuracy (APGD-CE and Square), then
    natural accuracy, then the first listed (``candidates``: name -> :func:`validate` result)."""
    order = list(candidates)
    return max(order, key=lambda n: (candidates[n]["robust"], candidates[n]["natural"], -order.index(n)))


def autoattack_parts(workdir: str, s: dict[str, Any], parts,
                     on_saved: Optional[Callable[[], None]] = None) -> dict[str, Any]:
    """AutoAttack (standard) at eps on each held-out digit range ``[a, b)`` of ``parts``, cached
    per part in ``WORKDIR/extra.json`` under ``autoattack_parts`` (``"a:b"`` -> accuracy, seconds);
    ``on_saved()`` is called after each part is written."""
    path = os.path.join(workdir, "extra.json")
    extra = runs.read_json(path) or {}
    done = extra.setdefault("autoattack_parts", {})
    todo = missing_parts(parts, done)
    if not todo:
        return extra
    from ardir_tf import data, evaluate

    model = runs.load_model(os.path.join(workdir, "model.keras"))
    x, y = data.load_arrays("mnist5k", "test", examples=max(b for _, b in todo))
    verbose = 0 if s.get("progress") == "none" else 1  # a part takes up to 25 minutes on 2 cores
    for a, b in todo:
        r = evaluate.evaluate(model, x[a:b], y[a:b], epsilon=s["epsilon"], attacks=["autoattack"], seed=s["seed"],
                              verbose=verbose, masking_check=False)
        part = done[f"{a}:{b}"] = {"examples": b - a, "accuracy": r["robust_accuracy"]["autoattack"],
                                   "seconds": r["attacks"]["autoattack"]["seconds"]}
        runs.write_json(path, extra)  # each part saved as soon as it is done
        if on_saved is not None:
            on_saved()
        if verbose:
            print(f"AutoAttack on digits [{a}, {b}): {100 * part['accuracy']:.1f}% in {part['seconds']:.0f} s",
                  flush=True)
    return extra


def missing_parts(parts, done) -> list[tuple[int, int]]:
    """The ranges ``[a, b)`` of ``parts`` not covered by the ``done`` ranges (keys ``"a:b"``), which
    may be cut differently (a study resumed after :data:`AA_PARTS` changed)."""
    ranges = [tuple(int(v) for v in k.split(":")) for k in done]
    return [(a, b) for a, b in parts if not all(any(c <= i < d for c, d in ranges) for i in range(a, b))]


def read_row(workdir: str) -> Optional[dict[str, Any]]:
    """:func:`benchmarks.runs.read_row` plus the AutoAttack parts: ``aa200`` (the first part's
    accuracy), ``autoattack`` / ``autoattack_examples`` (all parts that start at 0 and join up)
    and their seconds; the validation numbers as ``val_robust`` (where measured), ``val_pgd20`` and
    ``val_natural``."""
    row = runs.read_row(workdir)
    if row is None:
        return None
    extra = runs.read_json(os.path.join(workdir, "extra.json")) or {}
    parts = sorted(((int(k.split(":")[0]), int(k.split(":")[1]), v) for k, v in extra.get("autoattack_parts", {}).items()))
    if parts and parts[0][0] == 0:
        row["aa200"] = parts[0][2]["accuracy"]
        row["aa200_examples"] = parts[0][1]
        end, correct, seconds = 0, 0.0, 0.0
        for a, b, v in parts:
            if a != end:
                break
            end, correct, seconds = b, correct + v["accuracy"] * (b - a), seconds + v["seconds"]
        row["autoattack"], row["autoattack_examples"] = correct / end, end
        row["autoattack_seconds"] = round(sum(v["seconds"] for *_, v in parts), 1)
    val = runs.read_json(os.path.join(workdir, "validation.json"))
    if val:
        row["val_pgd20"], row["val_natural"], row["val_seconds"] = val["pgd20"], val["natural"], val["seconds"]
        if "robust" in val:
            row["val_robust"] = val["robust"]
        training = runs.read_json(os.path.join(workdir, "results.json"))["training"]
        epochs = training.get("epochs")
        if epochs and val.get("epochs") and epochs > val["epochs"] and "train_seconds" not in training:
            # continued after its validation (the chosen teacher) by a version of the trainer that
            # timed only the last invocation: the validated epochs' seconds too
            row["train_seconds"] += val["train_seconds"]
    return row


def mirror(workdir: str, out: str, results_dir: str) -> None:
    """Copies the run's small JSON files into the same relative place under ``results_dir``."""
    target = os.path.join(results_dir, os.path.relpath(workdir, out))
    os.makedirs(target, exist_ok=True)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copyfile(os.path.join(workdir, name), os.path.join(target, name))


def sizes(student_settings: dict[str, Any], teacher_path: str) -> dict[str, Any]:
    """Parameters and forward FLOPs per example (TensorFlow profiler count) of the student
    architecture and the teacher, and their ratios."""
    from ardir_tf import models, train
    from benchmarks.throughput import forward_flops

    student = models.get(student_settings["model"], 10, (28, 28, 1),
                         **train.parse_options(student_settings["model_options"]))
    teacher = runs.load_model(teacher_path)
    out = {"student": {"model": student_settings["model"], "options": student_settings["model_options"],
                       "parameters": student.count_params(), "flops": forward_flops(student)},
           "teacher": {"model": teacher.name, "parameters": teacher.count_params(), "flops": forward_flops(teacher)}}
    out["parameter_ratio"] = out["teacher"]["parameters"] / out["student"]["parameters"]
    out["flop_ratio"] = out["teacher"]["flops"] / out["student"]["flops"]
    return out


# ---------------------------------------------------------------------------------------- run
def run(f) -> dict[str, Any]:
    """Runs (or, with ``--report_only``, reads) the study; returns its summary (also written to
    ``RESULTS_DIR/summary.json`` unless reporting only)."""
    import keras

    from ardir_tf import methods

    cfg = settings(f)
    out = os.path.join(os.path.abspath(f.output_dir), "capacity")
    results_dir = cfg["results_dir"]
    if f.report_only:
        return read_summary(results_dir)
    start = time.time()
    x_val, y_val = validation_arrays(cfg["train_digits"], cfg["val_examples"])
    # Selection runs train without the validation digits and are judged on them alone: their
    # held-out evaluation (train_and_evaluate always runs one) is cut to one digit and no attack.
    select = {"train_examples": cfg["selection_train_examples"], "eval_examples": 1, "eval_attacks": []}
    summary: dict[str, Any] = {
        "quick": f.quick, "epsilon": f.epsilon, "seeds": cfg["seeds"], "methods": cfg["methods"],
        "settings": {"student": _public(cfg["student"]), "teacher": _public(cfg["teacher"]),
                     "teacher_select_epochs": cfg["select_epochs"],
                     "teacher_recipes": {r: TEACHER_RECIPES[r] for r in cfg["teacher_recipes"]},
                     "students": {m: STUDENTS[m] for m in cfg["methods"]},
                     "ardir_candidates": {n: ARDIR_CANDIDATES[n] for n in cfg["ardir_candidates"]}},
        "validation": {"examples": cfg["val_examples"], "selection_train_examples": cfg["selection_train_examples"],
                       "digits": f"training split [{cfg['selection_train_examples']}, {cfg['train_digits']})"},
        "aa_parts": cfg["aa_parts"],
    }

    def save(**parts) -> None:  # the summary so far: a report of an interrupted study has what is known
        summary.update(parts, environment=_environment())  # the machine and its load at each save
        runs.write_json(os.path.join(results_dir, "summary.json"), summary)

    def train(name: str, s: dict[str, Any], teacher: str = "") -> str:
        workdir = os.path.join(out, name)
        print(f"[{time.time() - start:7.0f}s] capacity/{name}", flush=True)
        runs.train_run(s, workdir, teacher)
        keras.backend.clear_session()
        return workdir

    # 1-2. Teacher candidates on the training digits minus validation; pick on validation; the
    # chosen one continues to the full epochs (a resumption of the same run).
    teacher_val = {}
    for recipe in cfg["teacher_recipes"]:
        s = {**teacher_settings(cfg, recipe), **select, "seed": 0, "epochs": cfg["select_epochs"]}
        workdir = train(f"teacher/{recipe}", s)
        teacher_val[recipe] = validate(workdir, s, x_val, y_val, cfg["val_square_queries"])
        mirror(workdir, out, results_dir)
    chosen_teacher = pick(teacher_val)
    chosen = teacher_settings(cfg, chosen_teacher)
    teacher_dir = train(f"teacher/{chosen_teacher}", {**chosen, **select, "eval_examples": chosen["eval_examples"],
                                                      "eval_attacks": chosen["eval_attacks"], "seed": 0})
    mirror(teacher_dir, out, results_dir)
    teacher_path = os.path.join(teacher_dir, "model.keras")
    teacher_last = _last_stage(teacher_path)
    save(teacher_selection={"candidates": teacher_val, "chosen": chosen_teacher, "settings": _public(chosen)},
         sizes=sizes(cfg["student"], teacher_path))

    # 3. ARDIR's layer pair and gamma, on validation (seed 0, the training digits minus validation).
    ardir_val = {}
    for name in cfg["ardir_candidates"]:
        s = {**cfg["student"], **STUDENTS["ardir"], **ardir_change(name, teacher_last), **select, "seed": 0}
        workdir = train(f"select_ardir/{_slug(name)}", s, teacher_path)
        ardir_val[name] = validate(workdir, s, x_val, y_val, cfg["val_square_queries"])
        mirror(workdir, out, results_dir)
    chosen_ardir = pick(ardir_val)
    save(ardir_selection={"candidates": ardir_val, "chosen": chosen_ardir,
                          "settings": ardir_change(chosen_ardir, teacher_last)})

    # 4. Students, seed-major (an interrupted study has whole seeds).
    def student_settings(method: str, seed: int) -> dict[str, Any]:
        change = ardir_change(chosen_ardir, teacher_last) if method == "ardir" else {}
        return {**cfg["student"], **STUDENTS[method], **change, "seed": seed}

    for seed in cfg["seeds"]:
        for method in cfg["methods"]:
            teacher = teacher_path if STUDENTS[method]["method"] in methods.DISTILLATION_METHODS else ""
            mirror(train(f"{method}/seed-{seed}", student_settings(method, seed), teacher), out, results_dir)

    # 5. AutoAttack: the first part for every run, the rest for the teacher and seed 0.
    aa_runs = [(teacher_dir, {**chosen, "seed": 0}, cfg["aa_parts"])]
    for seed in cfg["seeds"]:
        for method in cfg["methods"]:
            parts = cfg["aa_parts"] if seed == cfg["seeds"][0] else cfg["aa_parts"][:1]
            aa_runs.append((os.path.join(out, method, f"seed-{seed}"), student_settings(method, seed), parts))
    for parts_first in (True, False):  # every run's first part before any second part
        for workdir, s, parts in aa_runs:
            done = (runs.read_json(os.path.join(workdir, "extra.json")) or {}).get("autoattack_parts", {})
            todo = missing_parts(parts[:1] if parts_first else parts, done)
            if todo:
                print(f"[{time.time() - start:7.0f}s] capacity/{os.path.relpath(workdir, out)} AutoAttack on held-out "
                      f"digits {', '.join(f'[{a}, {b})' for a, b in todo)}", flush=True)
            # Each part reaches the result files as soon as it is done; a run attacked by an earlier
            # invocation is mirrored once (its files may not be there yet).
            autoattack_parts(workdir, s, todo, on_saved=functools.partial(mirror, workdir, out, results_dir))
            if not todo:
                mirror(workdir, out, results_dir)

    save(command_seconds=round(time.time() - start, 1),
         wall_seconds={k: round(v, 1) for k, v in wall_times(read_summary(results_dir)).items()})
    return read_summary(results_dir)


def ardir_change(name: str, teacher_last: str) -> dict[str, Any]:
    """The ARDIR settings of candidate ``name`` with the teacher's last stage filled in."""
    change = dict(ARDIR_CANDIDATES[name])
    if "ir_layers" in change:
        change["ir_layers"] = [p.format(teacher=teacher_last) for p in change["ir_layers"]]
    return change


def _num_train() -> int:
    from ardir_tf import data

    return data.get_info("mnist5k").num_train


def _last_stage(model_path: str) -> str:
    from ardir_tf.models.features import default_ir_layers

    return default_ir_layers(runs.load_model(model_path))[0]


def _public(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k not in ("workdir", "teacher", "progress", "verbose", "data_dir", "tpu")}


def _environment() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from ardir_tf import hardware

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "cpu": hardware.summary().get("cpu"),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}


def wall_times(summary: dict[str, Any]) -> dict[str, float]:
    """Seconds per part from the runs' own timers (training + held-out evaluation, validation,
    AutoAttack), so that a study run across sessions adds up correctly."""
    parts = {"teacher candidates": 0.0, "ARDIR selection": 0.0, "students": 0.0, "AutoAttack": 0.0}
    for name, row in summary.get("runs", {}).items():
        if row is None:
            continue
        part = ("teacher candidates" if name.startswith("teacher/") else
                "ARDIR selection" if name.startswith("select_ardir/") else "students")
        parts[part] += row["train_seconds"] + row.get("val_seconds", 0.0)
        parts["AutoAttack"] += row.get("autoattack_seconds", 0.0)
    return parts


def read_summary(results_dir: str) -> dict[str, Any]:
    """The summary and every finished run's row under ``results_dir`` (``runs``: run name, e.g.
    ``ardir/seed-0`` or ``teacher/pgd_at``, -> row)."""
    summary = runs.read_json(os.path.join(results_dir, "summary.json")) or {}
    rows = {}
    if os.path.isdir(results_dir):
        for dirpath, _, files in sorted(os.walk(results_dir)):
            if "results.json" in files:
                rows[os.path.relpath(dirpath, results_dir)] = read_row(dirpath)
    return {**summary, "runs": rows}
