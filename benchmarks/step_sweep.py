"""The ``step_sweep`` study of :mod:`benchmarks.reproduce`: gradient masking or a weak start?

Two measurements on the main table's seed-0 students (``main/<method>/seed-0``), on the first
``examples`` held-out digits, at the training radius:

* **step sizes**: PGD-20 from a uniform start with step 0.01, 0.03, eps/4 (the protocol's) and
  eps/2 for each of :data:`METHODS`. A student that resists small steps and falls to large ones
  was not trained at the ball's corners (the sign of masking).
* **RSLAD's own attack**: PGD-10, step 0.03, on the RSLAD student, maximising cross-entropy or
  RSLAD's training objective (KL from the teacher's natural output), each from a uniform and
  from RSLAD's normal start (``x + 0.001 N(0, 1)``). If the KL attack were much stronger than CE,
  CE-PGD would understate RSLAD's weakness; if both agree, the attack is not the issue.

Each run's numbers are cached in ``WORKDIR/step_sweep.json`` (keyed by the digits, radius and
seed) and computed only when missing.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import runs

#: Students whose step-size curve the study measures (main-table runs, seed 0).
METHODS = ("rslad", "trades", "ard", "pgd_at")
#: The attack objective RSLAD trains against (KL from the teacher's natural output).
KL_OBJECTIVE = "kl_teacher"
STEPS = 20
COMPARISON_STEPS, COMPARISON_STEP_SIZE = 10, 0.03


def step_sizes(epsilon: float) -> list[float]:
    """0.01, 0.03, ``eps/4`` (the protocol's PGD-20 step) and ``eps/2``."""
    return [0.01, 0.03, epsilon / 4, epsilon / 2]


def _pgd_accuracy(model, x: np.ndarray, y: np.ndarray, *, epsilon: float, step_size: float, steps: int,
                  random_start: str, objective: str = "ce", reference: Optional[np.ndarray] = None,
                  seed: int = 0, batch_size: int = 250) -> float:
    """Accuracy of ``model`` on PGD examples of ``(x, y)`` (float in [0, 1])."""
    import tensorflow as tf

    from ardir_tf import attacks

    @tf.function(reduce_retracing=True)
    def predict_adv(xb, yb, rb, key):
        x_adv = attacks.pgd(model, xb, yb, epsilon=epsilon, step_size=step_size, steps=steps,
                            random_start=random_start, objective=objective, reference=rb, seed=key)
        return tf.argmax(model(x_adv, training=False), axis=-1, output_type=tf.int32)

    correct = 0
    for i in range(0, len(x), batch_size):
        rb = tf.constant(reference[i:i + batch_size]) if reference is not None else tf.zeros([0])
        pred = predict_adv(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]), rb,
                           tf.constant([seed, i], tf.int32))
        correct += int(np.sum(pred.numpy() == y[i:i + batch_size]))
    return correct / len(x)


def measure(workdir: str, teacher_path: str, *, epsilon: float, examples: int, seed: int = 0,
            comparison: bool = False) -> dict[str, Any]:
    """The run's step-size curve (and, with ``comparison``, the CE/KL x start comparison), cached
    in ``WORKDIR/step_sweep.json``. Accuracies in [0, 1]."""
    path = os.path.join(workdir, "step_sweep.json")
    key = {"examples": examples, "epsilon": epsilon, "seed": seed, "steps": STEPS}
    cached = runs.read_json(path) or {}
    if cached.get("key") == key and ("comparison" in cached or not comparison):
        return cached
    from ardir_tf import data

    start = time.time()
    model = runs.load_model(os.path.join(workdir, "model.keras"))
    x, y = data.load_arrays("mnist5k", "test", examples=examples)
    out: dict[str, Any] = {"key": key, "step_sizes": {}}
    for step in step_sizes(epsilon):
        out["step_sizes"][f"{step:g}"] = _pgd_accuracy(model, x, y, epsilon=epsilon, step_size=step, steps=STEPS,
                                                       random_start="uniform", seed=seed)
    if comparison:
        teacher = runs.load_model(teacher_path)
        reference = teacher.predict(x, batch_size=250, verbose=0).astype(np.float32)
        out["comparison"] = {}
        for objective in ("ce", KL_OBJECTIVE):
            for start_kind in ("uniform", "normal"):
                out["comparison"][f"{objective}/{start_kind}"] = _pgd_accuracy(
                    model, x, y, epsilon=epsilon, step_size=COMPARISON_STEP_SIZE, steps=COMPARISON_STEPS,
                    random_start=start_kind, objective=objective,
                    reference=reference if objective != "ce" else None, seed=seed)
    out["seconds"] = round(time.time() - start, 1)
    runs.write_json(path, out)
    return out


def markdown(results: dict[str, dict[str, Any]], epsilon: float, examples: int) -> str:
    """The two tables (percentages) from ``{method: measure(...)}``."""
    if not results:
        return ""
    steps = step_sizes(epsilon)
    names = {f"{epsilon / 4:g}": f"step {epsilon / 4:g} (eps/4, the protocol)"}
    head = [names.get(f"{s:g}", f"step {s:g}") for s in steps]
    lines = [f"PGD-{STEPS} from a uniform start at eps {epsilon:g}, first {examples} held-out digits, "
             "seed-0 students (accuracy %):", "",
             "| student (seed 0) | " + " | ".join(head) + " |", "|---|" + "---|" * len(steps)]
    for method, r in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{100 * r['step_sizes'][f'{s:g}']:.1f}" for s in steps) + " |")
    rslad = results.get("rslad", {}).get("comparison")
    if rslad:
        lines += ["", f"RSLAD seed-0 student, PGD-{COMPARISON_STEPS} with step {COMPARISON_STEP_SIZE:g} (accuracy %):", "",
                  "| objective | uniform start | normal start (x + 0.001 N(0, 1)) |", "|---|---|---|"]
        for objective, label in (("ce", "cross-entropy"), (KL_OBJECTIVE, "KL to the teacher (RSLAD's)")):
            uniform, normal = rslad[f"{objective}/uniform"], rslad[f"{objective}/normal"]
            lines.append(f"| {label} | {100 * uniform:.1f} | {100 * normal:.1f} |")
    return "\n".join(lines)


def run(out: str, teacher_path: str, epsilon: float, examples: int, methods: Sequence[str] = METHODS,
        report_only: bool = False) -> dict[str, dict[str, Any]]:
    """Measures (or, with ``report_only``, reads) every finished ``main/<method>/seed-0`` run of
    ``methods`` under ``out``; returns ``{method: measure(...)}``."""
    results = {}
    for method in methods:
        workdir = os.path.join(out, "main", method, "seed-0")
        if report_only:
            cached = runs.read_json(os.path.join(workdir, "step_sweep.json"))
            if cached:
                results[method] = cached
            continue
        if runs.read_row(workdir) is None:
            continue
        results[method] = measure(workdir, teacher_path, epsilon=epsilon, examples=examples,
                                  comparison=method == "rslad")
    return results
