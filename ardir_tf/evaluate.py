"""Robustness evaluation: one call takes a model and data and returns numbers in a fixed schema.

``evaluate(model, x, y, epsilon=...)`` runs each attack on the examples in inference mode and
float32 and returns a dict (written as ``results.json`` by training and by this module's CLI):

``dataset``, ``model``, ``examples``, ``epsilon``, ``norm``, ``natural_accuracy``,
``robust_accuracy`` (attack name -> accuracy, plus ``all``: the examples that survive every
attack, the evaluation protocol's robust accuracy), ``per_class`` (a list, one entry per class:
``class``, ``name``, ``examples``, ``natural_accuracy``, ``robust_accuracy`` under all attacks),
``worst_class`` (the entry with the lowest robust accuracy), ``attacks`` (attack name -> its
settings and seconds), ``schema_version``.

CLI::

    python -m ardir_tf.evaluate --model=runs/x/model.keras --dataset=mnist5k --epsilon=0.3 \\
        --attacks=fgsm,pgd20,cw --examples=1000 --output=results.json
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from ardir_tf.attacks.objectives import cw as cw_objective
from ardir_tf.attacks.pgd import pgd

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """A named evaluation attack: PGD with ``steps`` steps of ``step_fraction * eps``."""

    name: str
    steps: int
    step_fraction: float
    random_start: str
    objective: object = "ce"

    def settings(self) -> dict:
        obj = self.objective if isinstance(self.objective, str) else "cw_margin_kappa50"
        return {"steps": self.steps, "step_size": f"{self.step_fraction:g}*eps", "random_start": self.random_start,
                "objective": obj}


#: The protocol's attacks (shared/method.md): FGSM; PGD-20 (uniform start, eta = eps/4);
#: CW-inf = PGD on the margin loss with kappa 50, 30 steps (uniform start, eta = eps/4).
ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("fgsm", 1, 1.0, "none"),
    "pgd20": AttackSpec("pgd20", 20, 0.25, "uniform"),
    "cw": AttackSpec("cw", 30, 0.25, "uniform", cw_objective),
}
DEFAULT_ATTACKS = ("fgsm", "pgd20", "cw")


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself if it computes in float32, else a float32 copy with the same weights.

    Evaluation is always float32: a model trained under a mixed-precision policy is rebuilt with
    float32 layers before it is attacked.
    """
    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in model.layers):
        return model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        config = model.get_config()
        for layer in config.get("layers", []):
            layer.get("config", {}).pop("dtype", None)
        clone = model.__class__.from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def _batched_predictions(fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int, progress) -> np.ndarray:
    preds = []
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size])
        yb = tf.constant(y[start:start + batch_size])
        preds.append(fn(xb, yb).numpy())
        if progress is not None:
            progress.add(len(xb))
    return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def evaluate(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    norm: str = "linf",
    batch_size: int = 200,
    dataset: str = "",
    class_names: Optional[Sequence[str]] = None,
    seed: int = 0,
    verbose: int = 1,
) -> dict:
    """Natural and robust accuracy of ``model`` on ``(x, y)`` in the documented schema.

    Args:
        model: a Keras classifier mapping ``[B, H, W, C]`` [0, 1] images to logits.
        x: ``[N, H, W, C]`` float32 images in [0, 1].
        y: ``[N]`` int labels.
        epsilon: radius of the threat model (L-inf: pixel units of [0, 1]).
        attacks: names in :data:`ATTACKS` (``fgsm``, ``pgd20``, ``cw``).
        norm: ``"linf"`` or ``"l2"``.
        batch_size: examples per attack batch.
        dataset: name recorded in the result.
        class_names: names recorded per class (default ``"0"..``).
        seed: seed of the attacks' random starts.
        verbose: 1 shows a progress bar per attack.

    Returns:
        The results dict described in this module's docstring.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; use any of {', '.join(ATTACKS)}")
    if not 0 <= epsilon <= (1 if norm == "linf" else np.inf):
        raise ValueError(f"epsilon must lie in [0, 1] for linf (>= 0 for l2), got {epsilon}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"expected images [N, H, W, C] and N labels, got {x.shape} and {y.shape}")
    model = float32_model(model)
    num_classes = int(model.outputs[0].shape[-1])
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    keras.utils.set_random_seed(seed)

    @tf.function(reduce_retracing=True)
    def natural_fn(xb, yb):
        return tf.argmax(model(xb, training=False), axis=-1)

    def progress(title):
        if not verbose:
            return None
        print(f"{title}:")
        return keras.utils.Progbar(len(x), unit_name="example")

    correct = {"natural": _batched_predictions(natural_fn, x, y, batch_size, progress("natural")) == y}
    timings = {}
    for name in attacks:
        spec = ATTACKS[name]

        @tf.function(reduce_retracing=True)
        def attack_fn(xb, yb, spec=spec):
            x_adv = pgd(model, xb, yb, epsilon=epsilon, step_size=spec.step_fraction * epsilon, steps=spec.steps,
                        norm=norm, random_start=spec.random_start, objective=spec.objective, training=False)
            return tf.argmax(model(x_adv, training=False), axis=-1)

        start = time.perf_counter()
        correct[name] = _batched_predictions(attack_fn, x, y, batch_size, progress(name)) == y
        timings[name] = {**spec.settings(), "seconds": round(time.perf_counter() - start, 3)}

    robust_all = np.logical_and.reduce([correct[a] for a in ("natural", *attacks)])
    per_class = []
    for c in range(num_classes):
        mask = y == c
        n = int(mask.sum())
        per_class.append({
            "class": c, "name": names[c] if c < len(names) else str(c), "examples": n,
            "natural_accuracy": float(correct["natural"][mask].mean()) if n else None,
            "robust_accuracy": float(robust_all[mask].mean()) if n else None,
        })
    present = [e for e in per_class if e["examples"]]
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "model": model.name,
        "examples": int(len(x)),
        "epsilon": float(epsilon),
        "norm": norm,
        "natural_accuracy": float(correct["natural"].mean()),
        "robust_accuracy": {**{a: float(correct[a].mean()) for a in attacks}, "all": float(robust_all.mean())},
        "per_class": per_class,
        "worst_class": min(present, key=lambda e: e["robust_accuracy"]) if present else None,
        "attacks": timings,
    }


def write_json(results: dict, path: str) -> None:
    """Writes ``results`` atomically (a temporary file renamed into place)."""
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def format_table(rows: dict[str, dict]) -> str:
    """A small text table ``name | natural | attack... | all`` from results dicts."""
    attacks = []
    for r in rows.values():
        attacks += [a for a in r["robust_accuracy"] if a not in attacks]
    header = ["model", "natural"] + attacks
    lines = [header] + [[name, f"{100 * r['natural_accuracy']:.1f}"] +
                        [f"{100 * r['robust_accuracy'][a]:.1f}" if a in r["robust_accuracy"] else "-" for a in attacks]
                        for name, r in rows.items()]
    widths = [max(len(l[i]) for l in lines) for i in range(len(header))]
    out = [" | ".join(v.ljust(w) for v, w in zip(l, widths)) for l in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    eps = next(iter(rows.values()))
    return f"accuracy (%) on {eps['examples']} held-out examples, {eps['norm']} eps={eps['epsilon']:g}\n" + "\n".join(out)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "Path of a .keras classifier.", required=True)
    flags.DEFINE_string("dataset", "mnist5k", "Dataset name (see ardir_tf.data) or npz:PATH.")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    flags.DEFINE_float("epsilon", 0.3, "Radius of the threat model.")
    flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Norm of the threat model.")
    flags.DEFINE_list("attacks", list(DEFAULT_ATTACKS), f"Attacks, any of {', '.join(ATTACKS)}.")
    flags.DEFINE_integer("examples", 1000, "Held-out examples to evaluate (the first N of the test split).")
    flags.DEFINE_integer("batch_size", 200, "Examples per attack batch.")
    flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.")
    flags.DEFINE_string("output", None, "Write the results JSON here.")
    flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.")


def main(argv) -> None:
    from absl import flags

    from ardir_tf import data
    from ardir_tf.train import load_model_file

    FLAGS = flags.FLAGS
    model = load_model_file(FLAGS.model)
    info = data.get_info(FLAGS.dataset, FLAGS.data_dir)
    x, y = data.load_arrays(FLAGS.dataset, "test", FLAGS.data_dir, examples=FLAGS.examples)
    results = evaluate(model, x, y, epsilon=FLAGS.epsilon, attacks=FLAGS.attacks, norm=FLAGS.norm,
                       batch_size=FLAGS.batch_size, dataset=info.name, class_names=info.class_names, seed=FLAGS.seed)
    print(format_table({model.name: results}))
    if FLAGS.output:
        write_json(results, FLAGS.output)
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    from ardir_tf import cli

    _define_flags()
    cli.run(main)
