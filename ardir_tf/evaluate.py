"""Robustness evaluation: one call takes a model and data and returns numbers in a fixed schema.

``evaluate(model, x, y, epsilon=...)`` runs each attack on the examples in inference mode and
float32 and returns a dict (written as ``results.json`` by training and by this module's CLI):

``dataset``, ``model``, ``examples``, ``epsilon``, ``norm``, ``natural_accuracy``,
``robust_accuracy`` (attack name -> accuracy, plus ``all``: the examples that survive every
attack, the evaluation protocol's robust accuracy), ``per_class`` (a list, one entry per class:
``class``, ``name``, ``examples``, ``natural_accuracy``, ``robust_accuracy`` under all attacks),
``worst_class`` (the entry with the lowest robust accuracy), ``attacks`` (attack name -> its
settings and seconds), ``warnings`` (a list of one-line signs of gradient masking, see
:func:`ardir_tf.report.masking_warnings`), ``schema_version``; from the CLI also ``model_file``.

Attacks (:data:`ATTACKS`): ``fgsm``, ``pgd20``, ``cw`` (PGD on the CW margin) and the AutoAttack
family written in TensorFlow (:mod:`ardir_tf.attacks.autoattack`): ``autoattack`` (the "standard"
ensemble: APGD-CE, APGD-T, FAB-T, Square; an example is robust only if it survives all four),
``autoattack_plus`` (the "plus" budget: APGD-CE and APGD-DLR, FAB, Square and FAB-T with 5
restarts, APGD-T), ``autoattack_rand`` (APGD-CE and APGD-DLR with gradients averaged over 20 model
calls, for randomised models) and the members alone: ``apgd-ce``, ``apgd-t``, ``fab-t``,
``square``. For an ensemble ``robust_accuracy`` also holds ``<name>/<member>``: the accuracy after
each member (cumulative); ``attacks[<name>]`` records the ``version`` that produced the number
(``standard``, ``plus``, ``rand``; ``custom`` for a lone member), the budget and each member's
seconds. With ``masking_check`` (on by default when an AutoAttack ensemble runs) the result also
holds ``masking_check``: PGD's accuracy at a radius where it must be ~0.

A sweep over radii (:func:`evaluate_sweep`, CLI ``--epsilons``) adds ``sweep``: one entry per
radius with ``epsilon``, ``natural_accuracy``, ``robust_accuracy`` and ``per_class``.

CLI::

    python -m ardir_tf.evaluate --model=runs/x/model.keras --dataset=mnist5k --epsilon=0.3 \\
        --attacks=fgsm,pgd20,cw,autoattack --examples=1000 --output=results.json \\
        --epsilons=0.1,0.2,0.3,0.4 --report_dir=report/
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from ardir_tf import report
from ardir_tf.attacks.objectives import cw as cw_objective
from ardir_tf.attacks.pgd import pgd, validate
from ardir_tf.io import load_model_file, write_json_atomic

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


@dataclasses.dataclass(frozen=True)
class AutoAttackSpec:
    """A named attack of the AutoAttack family: the ``version``'s members (or ``members``) run in
    order, each on the examples that survived the previous ones
    (:class:`ardir_tf.attacks.autoattack.AutoAttack`)."""

    name: str
    version: str = "standard"
    members: Optional[tuple] = None

    def build(self, model, **kwargs):
        from ardir_tf.attacks.autoattack import AutoAttack

        return AutoAttack(model, version=self.version, attacks=self.members, **kwargs)

    def settings(self) -> dict:
        return self.build(None).settings()

    @property
    def is_ensemble(self) -> bool:
        return self.members is None


#: The protocol's attacks (docs/methods.md): FGSM; PGD-20 (uniform start, eta = eps/4);
#: CW-inf = PGD on the margin loss with kappa 50, 30 steps (uniform start, eta = eps/4);
#: AutoAttack "standard", "plus" and "rand", and the members alone.
ATTACKS: dict[str, Union[AttackSpec, AutoAttackSpec]] = {
    "fgsm": AttackSpec("fgsm", 1, 1.0, "none"),
    "pgd20": AttackSpec("pgd20", 20, 0.25, "uniform"),
    "cw": AttackSpec("cw", 30, 0.25, "uniform", cw_objective),
    "autoattack": AutoAttackSpec("autoattack", "standard"),
    "autoattack_plus": AutoAttackSpec("autoattack_plus", "plus"),
    "autoattack_rand": AutoAttackSpec("autoattack_rand", "rand"),
    "apgd-ce": AutoAttackSpec("apgd-ce", members=("apgd-ce",)),
    "apgd-t": AutoAttackSpec("apgd-t", members=("apgd-t",)),
    "fab-t": AutoAttackSpec("fab-t", members=("fab-t",)),
    "square": AutoAttackSpec("square", members=("square",)),
}
DEFAULT_ATTACKS = ("fgsm", "pgd20", "cw")

#: The gradient-masking check: PGD with 50 steps of eps/10 at a radius where the all-0.5 gray image
#: lies in every example's ball (L-inf 0.5, L2 0.5 * sqrt(pixels)), so accuracy must fall to ~0.
MASKING_CHECK_STEPS = 50


def masking_check_epsilon(norm: str, input_shape: Sequence[int]) -> float:
    """The radius of the masking check: 0.5 (L-inf) or ``0.5 * sqrt(H * W * C)`` (L2)."""
    if norm == "linf":
        return 0.5
    return 0.5 * math.sqrt(float(np.prod(input_shape)))


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself if it computes in float32, else a float32 copy with the same weights.

    Evaluation is always float32: a model trained under a mixed-precision policy is rebuilt with
    float32 layers before it is attacked.
    """
    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in model.layers):
        return model
    return with_dtype_policy(model, "float32")


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of the functional ``model`` with the same weights whose layers use the Keras dtype
    policy ``policy`` (``float32``, ``mixed_bfloat16``, ...)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
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


def _pgd_fn(model, epsilon, norm, steps, step_fraction, random_start, objective, cache=None, key=None):
    """A compiled ``(x, y) -> predictions at the PGD point``; the trace is shared across radii
    through ``cache[key]`` (the radius is a tensor argument)."""
    if cache is None or key not in cache:
        @tf.function(reduce_retracing=True, autograph=False)  # explicit tf.while_loop inside
        def attack_fn(xb, yb, eps):
            x_adv = pgd(model, xb, yb, epsilon=eps, step_size=step_fraction * eps, steps=steps,
                        norm=norm, random_start=random_start, objective=objective, training=False)
            return tf.argmax(model(x_adv, training=False), axis=-1)

        if cache is None:
            cache = {}
        cache[key] = attack_fn
    compiled = cache[key]
    eps_t = tf.constant(epsilon, tf.float32)
    return lambda xb, yb: compiled(xb, yb, eps_t)


class _AutoAttackProgress:
    """One Keras progress bar per AutoAttack member."""

    def __init__(self, title: str, verbose: int):
        self.title, self.verbose, self.bars = title, verbose, {}

    def __call__(self, member: str, done: int, total: int):
        if not self.verbose:
            return
        if member not in self.bars:
            print(f"{self.title}: {member}" if self.title != member else member + ":")
            self.bars[member] = keras.utils.Progbar(max(total, 1), unit_name="example")
        self.bars[member].update(min(done, total))


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
    masking_check: Optional[bool] = None,
) -> dict:
    """Natural and robust accuracy of ``model`` on ``(x, y)`` in the documented schema.

    Args:
        model: a Keras classifier mapping ``[B, H, W, C]`` [0, 1] images to logits.
        x: ``[N, H, W, C]`` float32 images in [0, 1].
        y: ``[N]`` int labels.
        epsilon: radius of the threat model (L-inf: pixel units of [0, 1]).
        attacks: names in :data:`ATTACKS` (``fgsm``, ``pgd20``, ``cw``, ``autoattack``,
            ``autoattack_plus``, ``autoattack_rand``, ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``).
        norm: ``"linf"`` or ``"l2"``.
        batch_size: examples per attack batch.
        dataset: name recorded in the result.
        class_names: names recorded per class (default ``"0"..``).
        seed: seed of the attacks' random starts.
        verbose: 1 shows a progress bar per attack (per member for AutoAttack).
        masking_check: also run PGD at a radius where accuracy must reach ~0
            (:func:`masking_check_epsilon`); ``None``: only when an AutoAttack ensemble is run.

    Returns:
        The results dict described in this module's docstring.
    """
    return _evaluate(model, x, y, epsilon=epsilon, attacks=attacks, norm=norm, batch_size=batch_size,
                     dataset=dataset, class_names=class_names, seed=seed, verbose=verbose,
                     masking_check=masking_check, cache={})


def _check_inputs(attacks, epsilon, norm, x, y):
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; use any of {', '.join(ATTACKS)}")
    validate(epsilon, None, None, norm, "none")
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"expected images [N, H, W, C] and N labels, got {x.shape} and {y.shape}")
    return x, y


def _evaluate(model, x, y, *, epsilon, attacks, norm, batch_size, dataset, class_names, seed, verbose,
              masking_check, cache) -> dict:

    attacks = list(dict.fromkeys(attacks))
    x, y = _check_inputs(attacks, epsilon, norm, x, y)
    model = float32_model(model)
    num_classes = int(model.outputs[0].shape[-1])
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    keras.utils.set_random_seed(seed)

    @tf.function(reduce_retracing=True, autograph=False)  # explicit tf.while_loop inside
    def natural_fn(xb, yb):
        return tf.argmax(model(xb, training=False), axis=-1)

    def progress(title):
        if not verbose:
            return None
        print(f"{title}:")
        return keras.utils.Progbar(len(x), unit_name="example")

    correct = {"natural": _batched_predictions(natural_fn, x, y, batch_size, progress("natural")) == y}
    timings, member_accuracy = {}, {}
    for name in attacks:
        spec = ATTACKS[name]
        start = time.perf_counter()
        if isinstance(spec, AttackSpec):
            fn = _pgd_fn(model, epsilon, norm, spec.steps, spec.step_fraction, spec.random_start, spec.objective,
                         cache, ("pgd", name, norm))
            correct[name] = _batched_predictions(fn, x, y, batch_size, progress(name)) == y
            timings[name] = {**spec.settings(), "seconds": round(time.perf_counter() - start, 3)}
            continue
        key = ("autoattack", norm, spec.version, spec.members, batch_size, seed)
        if key not in cache:
            cache[key] = spec.build(model, norm=norm, batch_size=batch_size, seed=seed)
        result = cache[key].run(x, y, epsilon, progress=_AutoAttackProgress(name, verbose))
        correct[name] = result.robust
        timings[name] = {**cache[key].settings(), "seconds": round(time.perf_counter() - start, 3),
                         "members": {r.name: {"robust_accuracy": r.robust_accuracy, "seconds": r.seconds,
                                              "attacked": r.attacked, "broken": r.broken, "restarts": r.restarts}
                                          for r in result.records}}
        if spec.is_ensemble:
            member_accuracy[name] = {f"{name}/{r.name}": r.robust_accuracy for r in result.records}

    robust_all = np.logical_and.reduce([correct[a] for a in ("natural", *attacks)])
    per_class = _per_class(y, correct["natural"], robust_all, num_classes, names)
    present = [e for e in per_class if e["examples"]]
    robust_accuracy = {}
    for a in attacks:
        robust_accuracy[a] = float(correct[a].mean())
        robust_accuracy.update(member_accuracy.get(a, {}))
    robust_accuracy["all"] = float(robust_all.mean())
    results = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "model": model.name,
        "examples": int(len(x)),
        "epsilon": float(epsilon),
        "norm": norm,
        "natural_accuracy": float(correct["natural"].mean()),
        "robust_accuracy": robust_accuracy,
        "per_class": per_class,
        "worst_class": min(present, key=lambda e: e["robust_accuracy"]) if present else None,
        "attacks": timings,
    }
    ensembles = [a for a in attacks if isinstance(ATTACKS[a], AutoAttackSpec) and ATTACKS[a].is_ensemble]
    if masking_check or (masking_check is None and ensembles):
        big = masking_check_epsilon(norm, x.shape[1:])
        start = time.perf_counter()
        fn = _pgd_fn(model, big, norm, MASKING_CHECK_STEPS, 0.1, "uniform", "ce", cache, ("pgd", "check", norm))
        survived = (_batched_predictions(fn, x, y, batch_size, progress(f"masking check (PGD-50 at eps={big:g})"))
                    == y) & correct["natural"]
        results["masking_check"] = {"epsilon": big, "attack": "pgd50", "step_size": "0.1*eps",
                                    "robust_accuracy": float(survived.mean()),
                                    "seconds": round(time.perf_counter() - start, 3)}
    results["warnings"] = report.masking_warnings(results)
    return results


def _per_class(y, natural, robust, num_classes, names) -> list:
    per_class = []
    for c in range(num_classes):
        mask = y == c
        n = int(mask.sum())
        per_class.append({
            "class": c, "name": names[c] if c < len(names) else str(c), "examples": n,
            "natural_accuracy": float(natural[mask].mean()) if n else None,
            "robust_accuracy": float(robust[mask].mean()) if n else None,
        })
    return per_class


def evaluate_sweep(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilons: Sequence[float],
    epsilon: Optional[float] = None,
    masking_check: Optional[bool] = None,
    **kwargs,
) -> dict:
    """:func:`evaluate` at ``epsilon`` (default: the largest of ``epsilons``) plus ``sweep``: the
    natural, robust and per-class accuracies at every radius of ``epsilons`` (and ``epsilon``),
    in increasing order. ``kwargs`` are those of :func:`evaluate`; the compiled attacks are shared
    across radii. The warnings also look at the sweep (accuracy rising with eps, not ~0 at the end).
    """

    radii = sorted({float(e) for e in epsilons} | ({float(epsilon)} if epsilon is not None else set()))
    if not radii:
        raise ValueError("epsilons is empty")
    main_eps = float(epsilon) if epsilon is not None else radii[-1]
    kwargs.setdefault("attacks", DEFAULT_ATTACKS)
    for key, default in (("norm", "linf"), ("batch_size", 200), ("dataset", ""), ("class_names", None),
                         ("seed", 0), ("verbose", 1)):
        kwargs.setdefault(key, default)
    for e in radii:  # validate every radius before any attack runs
        _check_inputs(list(kwargs["attacks"]), e, kwargs["norm"], x, y)
    cache: dict = {}
    main, sweep = None, []
    for e in radii:
        if kwargs["verbose"]:
            print(f"== eps {e:g}")
        r = _evaluate(model, x, y, epsilon=e, masking_check=masking_check if e == main_eps else False,
                      cache=cache, **kwargs)
        sweep.append({"epsilon": e, "natural_accuracy": r["natural_accuracy"],
                      "robust_accuracy": r["robust_accuracy"], "per_class": r["per_class"],
                      "seconds": round(sum(a["seconds"] for a in r["attacks"].values()), 3)})
        if e == main_eps:
            main = r
    main["sweep"] = sweep
    main["warnings"] = report.masking_warnings(main)
    return main


#: Widest line of :func:`format_table`: a terminal of 100 columns shows the table unwrapped.
TABLE_WIDTH = 100


def format_table(rows: dict[str, dict], width: int = TABLE_WIDTH) -> str:
    """A text table ``name | natural | attack... | all`` (accuracy %) from results dicts, for the terminal.

    AutoAttack's members (``autoattack/apgd-ce``, ...) are left out: they stay in the results JSON
    and the report. Columns that would make a line wider than ``width`` characters continue in a
    further block (each block starts with the model names), so no line exceeds ``width`` unless a
    single column does.
    """
    attacks = []
    for r in rows.values():
        attacks += [a for a in r["robust_accuracy"] if a not in attacks and "/" not in a]
    header = ["model", "natural"] + attacks
    lines = [header] + [[name, f"{100 * r['natural_accuracy']:.1f}"] +
                        [f"{100 * r['robust_accuracy'][a]:.1f}" if a in r["robust_accuracy"] else "-" for a in attacks]
                        for name, r in rows.items()]
    widths = [max(len(l[i]) for l in lines) for i in range(len(header))]
    blocks, current = [], []
    for i in range(1, len(header)):  # column 0 (the model) starts every block
        if current and sum(widths[c] + 3 for c in [0, *current, i]) - 3 > width:
            blocks.append(current)
            current = []
        current.append(i)
    blocks.append(current)
    out = []
    for block in blocks:
        cols = [0, *block]
        table = [" | ".join(l[c].ljust(widths[c]) for c in cols).rstrip() for l in lines]
        table.insert(1, "-+-".join("-" * widths[c] for c in cols))
        out += ([""] if out else []) + table
    eps = next(iter(rows.values()))
    title = f"accuracy (%) on {eps['examples']} held-out examples, {eps['norm']} eps={eps['epsilon']:g}"
    if any("/" in a for r in rows.values() for a in r["robust_accuracy"]):
        out.append("(AutoAttack's members: in the results JSON and the report)")
    return title + "\n" + "\n".join(out)


def _define_flags() -> None:
    from absl import flags

    from ardir_tf import cli

    flags.DEFINE_string("model", None, "Path of a .keras classifier.", required=True)
    flags.DEFINE_string("dataset", "mnist5k", "Dataset name (see ardir_tf.data) or npz:PATH.")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    cli.define_fraction("epsilon", 0.3, "Radius of the threat model, a number or a fraction such as 8/255.")
    flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Norm of the threat model.")
    flags.DEFINE_list("attacks", list(DEFAULT_ATTACKS), f"Attacks, any of {', '.join(ATTACKS)} (autoattack: the "
                      "standard version; autoattack_plus: the stronger, slower one; autoattack_rand: for "
                      "randomised models).")
    flags.DEFINE_integer("examples", 1000, "Held-out examples to evaluate (the first N of the test split).")
    flags.DEFINE_integer("batch_size", 200, "Examples per attack batch.")
    flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.")
    flags.DEFINE_string("output", None, "Write the results JSON here.")
    flags.DEFINE_list("epsilons", [], "Also evaluate at these radii (a sweep, e.g. 0.1,0.2,0.3,0.4 or 4/255,8/255); "
                      "the results gain 'sweep' and the report a robust-accuracy-vs-eps plot.")
    flags.DEFINE_string("report_dir", None, "Write results.json, report.md and PNG plots into this directory.")
    flags.DEFINE_enum("masking_check", "auto", ["auto", "on", "off"],
                      "Run PGD at a radius where accuracy must be ~0 (auto: when an AutoAttack ensemble runs).")
    flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.")


def _parse_epsilons(values: Sequence[str]) -> list[float]:
    from ardir_tf.cli import FractionParser

    out = []
    for v in values:
        try:
            out.append(FractionParser().parse(v))
        except ValueError:
            raise ValueError(f"--epsilons takes numbers or fractions a/b, got {v!r}") from None
    return out


def main(argv) -> None:
    from absl import flags

    from ardir_tf import data

    FLAGS = flags.FLAGS
    epsilons = _parse_epsilons(FLAGS.epsilons)
    _check_inputs(FLAGS.attacks, FLAGS.epsilon, FLAGS.norm, np.zeros((1, 1, 1, 1)), np.zeros(1))
    for e in epsilons:
        _check_inputs(FLAGS.attacks, e, FLAGS.norm, np.zeros((1, 1, 1, 1)), np.zeros(1))
    model = load_model_file(FLAGS.model)
    info = data.get_info(FLAGS.dataset, FLAGS.data_dir)
    x, y = data.load_arrays(FLAGS.dataset, "test", FLAGS.data_dir, examples=FLAGS.examples)
    masking = {"auto": None, "on": True, "off": False}[FLAGS.masking_check]
    kwargs = dict(attacks=FLAGS.attacks, norm=FLAGS.norm, batch_size=FLAGS.batch_size, dataset=info.name,
                  class_names=info.class_names, seed=FLAGS.seed, masking_check=masking)
    if epsilons:
        results = evaluate_sweep(model, x, y, epsilons=epsilons, epsilon=FLAGS.epsilon, **kwargs)
    else:
        results = evaluate(model, x, y, epsilon=FLAGS.epsilon, **kwargs)
    results["model_file"] = FLAGS.model
    results["warnings"] = report.masking_warnings(results)  # again, now naming the model file in its commands
    print(format_table({model.name: results}))
    for warning in results.get("warnings", []):
        print(f"WARNING: {warning}")
    if FLAGS.output:
        write_json_atomic(FLAGS.output, results)
        print(f"wrote {FLAGS.output}")
    if FLAGS.report_dir:
        paths = report.write_report(results, FLAGS.report_dir)
        print(f"wrote the report into {FLAGS.report_dir}: {', '.join(sorted(paths))}")


if __name__ == "__main__":
    from ardir_tf import cli

    _define_flags()
    cli.run(main)
