"""One benchmark run of :mod:`benchmarks.reproduce`: train (or reuse), evaluate, read back, aggregate.

Every study trains through :func:`train_run` and reads results through :func:`read_row`, so the
benchmarks use the training API (``ardir_tf.train``) in this one module only.

A run is a directory holding ``model.keras``, ``results.json`` (the schema of
:mod:`ardir_tf.evaluate`: natural, FGSM, PGD-20 and CW accuracy on the held-out digits) and
``extra.json`` (the evaluations added by the benchmark: AutoAttack, a second radius, ...). Each
part is computed only when missing, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Optional, Sequence


def default_settings() -> dict[str, Any]:
    """Every training flag of ``python -m ardir_tf.train`` at its default."""
    from ardir_tf import train

    return train.default_settings()


def budget(f) -> dict[str, Any]:
    """The settings every run of the main studies shares (one training budget), from the
    benchmark's flags ``f`` (``model``, ``epochs``, ``attack_steps``, ``epsilon``,
    ``eval_examples``, ``progress``, ``quick``)."""
    s = default_settings()
    s.update(dataset="mnist5k", model=f.model, epochs=f.epochs, attack_steps=f.attack_steps, epsilon=f.epsilon,
             val_examples=0, eval_examples=f.eval_examples,
             eval_attacks=["fgsm", "pgd20", "cw"], progress=f.progress, deterministic=False,
             # IAD's reference begins its introspection at 30% of training (epoch 60 of 200).
             iad_begin=max(1, round(0.3 * f.epochs)))
    if f.quick:
        s.update(train_examples=256, epochs=1, attack_steps=2, attack_step_size=f.epsilon / 2, iad_begin=0,
                 eval_examples=64)
    return s


def train_run(s: dict[str, Any], workdir: str, teacher: str = "") -> dict[str, Any]:
    """Trains ``s`` into ``workdir`` (or reuses the finished run there) and evaluates it on the
    held-out digits; returns the evaluation results."""
    from ardir_tf import train

    return train.train_and_evaluate(s, workdir, teacher)


def load_model(path: str):
    """The ``.keras`` model at ``path`` (float32, inference mode)."""
    from ardir_tf.io import load_model_file

    return load_model_file(path)


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
    from ardir_tf.io import write_json_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, obj)


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluate_extra(workdir: str, s: dict[str, Any], autoattack_examples: int, second_epsilon: float) -> dict:
    """AutoAttack on the first ``autoattack_examples`` digits at eps (0: none), PGD-20/CW at the
    second eps; each part cached in ``WORKDIR/extra.json`` and computed only when missing."""
    path = os.path.join(workdir, "extra.json")
    extra: dict[str, Any] = read_json(path) or {}
    n = min(autoattack_examples, s["eval_examples"])
    want_aa = n and extra.get("autoattack", {}).get("examples") != n
    want_second = second_epsilon and extra.get("second_epsilon", {}).get("epsilon") != second_epsilon
    if not (want_aa or want_second):
        return extra
    from ardir_tf import data, evaluate

    model = load_model(os.path.join(workdir, "model.keras"))
    x, y = data.load_arrays("mnist5k", "test", examples=s["eval_examples"])
    if want_aa:
        r = evaluate.evaluate(model, x[:n], y[:n], epsilon=s["epsilon"], attacks=["autoattack"], seed=s["seed"],
                              verbose=0, masking_check=False)
        extra["autoattack"] = {"examples": n, "accuracy": r["robust_accuracy"]["autoattack"],
                               "seconds": r["attacks"]["autoattack"]["seconds"]}
    if want_second:
        r = evaluate.evaluate(model, x, y, epsilon=second_epsilon, attacks=["pgd20", "cw"], seed=s["seed"], verbose=0)
        extra["second_epsilon"] = {"epsilon": second_epsilon, **r["robust_accuracy"]}
    write_json(path, extra)
    return extra


def run_one(s: dict[str, Any], workdir: str, teacher: str, autoattack_examples: int,
            second_epsilon: float) -> dict[str, Any]:
    """Trains (or reuses) one run and returns its row (:func:`read_row`)."""
    train_run(s, workdir, teacher)
    evaluate_extra(workdir, s, autoattack_examples, second_epsilon)
    return read_row(workdir)


def read_row(workdir: str) -> Optional[dict[str, Any]]:
    """A finished run's row (accuracies in [0, 1], training seconds), ``None`` if it has not finished."""
    results = read_json(os.path.join(workdir, "results.json"))
    if results is None:
        return None
    extra = read_json(os.path.join(workdir, "extra.json")) or {}
    robust = results["robust_accuracy"]
    row = {"natural": results["natural_accuracy"], **{k: robust[k] for k in ("fgsm", "pgd20", "cw") if k in robust},
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
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if values:
            out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "n": len(values)}
    return out


def markdown_table(table: dict[str, dict[str, Any]], second_epsilon: float, epsilon: float,
                   cols: Optional[Sequence[tuple[str, str]]] = None,
                   partial_note: str = "one seed only (the others were not evaluated with that attack)") -> str:
    """``table`` (name -> :func:`aggregate`) as a Markdown table of percentages, ``mean ± std``
    over seeds; a cell measured on one seed of several is marked † and ``partial_note`` explains
    it below the table. ``cols``: ``(key, header)`` pairs (default: natural, FGSM, PGD-20, CW,
    AutoAttack and the second radius's columns)."""
    if cols is None:
        cols = [("natural", "natural"), ("fgsm", f"FGSM @{epsilon:g}"), ("pgd20", f"PGD-20 @{epsilon:g}"),
                ("cw", f"CW @{epsilon:g}"), ("autoattack", f"AutoAttack @{epsilon:g}"),
                ("pgd20@2", f"PGD-20 @{second_epsilon:g}"), ("cw@2", f"CW @{second_epsilon:g}")]
    cols = [(k, name) for k, name in cols if any(k in agg for agg in table.values())]
    lines = ["| run | seeds | " + " | ".join(n for _, n in cols) + " |", "|---|---|" + "---|" * len(cols)]
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
        lines += ["", f"† {partial_note}."]
    return "\n".join(lines)
