"""Training and evaluation throughput of every method, with FLOP accounting and a matmul peak.

Usage (from the repository root)::

    python -m benchmarks.throughput --model=resnet18 --batch_size=128 \\
        --methods=pgd_at,ard,rslad,iad,ardir --precision=float32,mixed_bfloat16 --output=bench.json
    python -m benchmarks.throughput --model=small_cnn --batch_size=128 --output=bench_mnist.json

What is timed
    The real training path: the trainer that ``ardir_tf.train.build_trainer`` builds from the
    training flags' defaults (PGD-``K`` attack, ``K = --attack_steps``), compiled as
    ``ardir_tf.train`` compiles it, stepped by Keras' own compiled train function
    (``trainer.make_train_function()``, what ``fit`` calls) on the library's input pipeline
    (``ardir_tf.data.train_dataset``: shuffling, the dataset's augmentation, prefetch) over synthetic
    uint8 images of the dataset's shape (``resnet18``: CIFAR-10 32x32x3, 10 classes, crop+flip;
    ``small_cnn``: MNIST 28x28x1). Models have random weights: speed does not depend on them. The
    teacher of the distillation methods has the student's architecture and computes in float32,
    as a teacher loaded from its ``.keras`` file does in training (``--teacher_precision=training``
    times a teacher cast to the training precision instead). ``iad`` is timed in its introspective
    phase (``iad_begin=0``: the extra teacher pass on ``x'`` included), its more expensive one.

bfloat16 without hardware support
    TensorFlow runs bfloat16 through oneDNN only on x86 CPUs with AVX-512; elsewhere its Eigen
    fallback emulates it and convolution gradients run some 30x slower than float32, so a
    ResNet-18 step would take tens of minutes. On such a CPU (:mod:`ardir_tf.hardware`) the
    mixed_bfloat16 training cases are skipped unless ``--emulated_bf16=run``; a ``bf16_probe`` row
    (one 3x3 convolution layer's forward + both gradients, float32 vs bfloat16, at the benchmark's
    batch) measures the slowdown instead, and the bfloat16 target row carries that estimate with
    ``measured: false``.

Noise
    The machine may be shared. After one (or ``--warmup_steps``) untimed steps per case (the first
    traces and compiles), the timed steps run **round-robin**: each round times ``--steps_per_round``
    steps of every case, and a large float32/bfloat16 matmul, in an order that alternates between
    rounds, so background load hits every case alike. Every ratio below comes from this one run.
    Step times are medians over the ``--steps`` rounds.

FLOPs (the convention)
    ``F`` = forward FLOPs of one example, counted by TensorFlow's profiler (``float_ops`` of the
    frozen graph of ``model(x, training=False)`` at batch 1: a multiply-add counts 2, elementwise
    ops with registered statistics count too; see :func:`forward_flops`). A step of a method costs,
    per example, the sum over its passes of: an inference forward ``F``; a PGD step ``2F`` (forward
    and the backward to the input only, which needs activation gradients but no weight gradients);
    a training pass ``3F`` (forward and the backward to activations and weights). Teacher passes
    count the teacher's ``F``; ARDIR's connectors count their own FLOPs (identity: 0). Optimizer
    updates, losses and the attack's projections are not counted (they are O(parameters) or
    O(pixels), under 1% here). Achieved FLOP/s = FLOPs per example x examples per second; its
    ``peak_fraction`` is relative to the matmul peak of the same precision measured in this run
    (``--matmul_size``, the median over rounds).

Evaluation rows: PGD-20 (the protocol's attack, compiled as ``ardir_tf.evaluate`` compiles it, one
batch of ``--eval_examples``) joins the rounds; AutoAttack standard runs once after them on
``--autoattack_examples`` examples, float32 as evaluation always is. With random weights an attack
breaks every example at once and AutoAttack would skip its later members, so the AutoAttack row
labels each example with the model's own prediction and attacks at ``--autoattack_epsilon``
(default 1e-4, where nothing breaks): every member then runs in full on every example, the cost of
evaluating a perfectly robust model, an upper bound.

Output: a table on stdout and, with ``--output``, a JSON list of rows. Every row has ``kind``
(``train``, ``eval``, ``input_pipeline``, ``matmul``, ``target``, ``environment``); training and
evaluation rows have ``method``, ``precision``, ``model``, ``batch_size``, ``examples_per_second``,
``step_seconds`` (median), ``step_seconds_all``, ``first_step_seconds`` (tracing included),
``flops_per_example``, ``achieved_tflops``, ``peak_tflops``, ``peak_fraction``, ``jit_compile``;
``target`` rows have ``target``, ``value``, ``threshold``, ``comparison`` and ``passed``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
from absl import flags

import ardir_tf  # noqa: F401  (first: its oneDNN default must precede TensorFlow's import)
from ardir_tf import hardware

FLAGS = flags.FLAGS

#: Issue 7's targets: ARDIR's step at most 1.10x PGD-AT's; mixed_bfloat16 at least 3x float32's
#: throughput; float32 training at least half the float32 matmul peak.
ARDIR_OVER_PGD_AT_MAX = 1.10
BF16_SPEEDUP_MIN = 3.0
FLOAT32_PEAK_FRACTION_MIN = 0.5
TRAIN_METHODS = ("standard", "pgd_at", "trades", "ard", "rslad", "iad", "ardir")
_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_MATMUL_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    D = lambda kind, *a, **k: getattr(flags, f"DEFINE_{kind}")(*a, flag_values=fv, **k)  # noqa: E731
    D("string", "model", "resnet18", "Student (and teacher) architecture.")
    D("string", "model_options", "", "Architecture options, e.g. 'width=16'.")
    D("string", "dataset", "", "Dataset whose shape, classes, normalisation and augmentation to use "
      "(default: mnist for small_cnn, cifar10 otherwise). No data is read.")
    D("integer", "batch_size", 128, "Training batch size.")
    D("list", "methods", ["pgd_at", "ard", "rslad", "iad", "ardir"], f"Methods: any of {', '.join(TRAIN_METHODS)}.")
    D("list", "precision", ["float32", "mixed_bfloat16"], f"Precisions: any of {', '.join(_PRECISIONS)}.")
    D("list", "jit_compile", ["false"], "XLA settings to compare: 'false', 'true' or 'false,true'.")
    D("integer", "attack_steps", 10, "PGD steps K of the training attack.")
    D("integer", "warmup_steps", 2, "Untimed steps per case before the rounds (the first traces the step).")
    D("integer", "steps", 3, "Timed rounds (each times --steps_per_round steps of every case).")
    D("integer", "steps_per_round", 1, "Steps of one case per round.")
    D("list", "eval_attacks", ["pgd20", "autoattack"], "Evaluation rows: pgd20, autoattack (empty: none).")
    D("integer", "eval_examples", 0, "Examples of the PGD-20 batch (0: --batch_size).")
    D("integer", "autoattack_examples", 8, "Examples of the AutoAttack row (it is slow: keep it small).")
    D("float", "autoattack_epsilon", 1e-4, "AutoAttack's radius (tiny: nothing breaks, every member runs in full).")
    D("bool", "autoattack_warmup", True, "Run AutoAttack once untimed first (tracing); off: the row includes tracing.")
    D("integer", "matmul_size", 4096, "N of the N x N x N matmul that measures the peak.")
    D("integer", "matmul_repeats", 3, "Matmuls per round and dtype.")
    D("enum", "teacher_precision", "float32", ["float32", "training"],
      "Teacher compute precision: 'float32' (the training path: a teacher loaded from .keras computes in float32) "
      "or 'training' (a copy cast to the training precision).")
    D("enum", "emulated_bf16", "skip", ["skip", "run"],
      "mixed_bfloat16 training cases on a CPU without AVX-512 (emulated, ~30x slower gradients): skip them "
      "(a one-layer probe estimates the ratio) or run them anyway.")
    D("integer", "seed", 0, "Seed of the weights and the synthetic data.")
    D("string", "output", "", "Write the rows as JSON here.")
    D("bool", "verbose", False, "Show the traceback of an error.")


# ------------------------------------------------------------------------------------- FLOPs
def graph_flops(fn: Callable, *specs) -> int:
    """Float operations of one call of ``fn`` on inputs of ``specs`` (``tf.TensorSpec``), as
    counted by TensorFlow's profiler on the frozen graph (variables folded into constants)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2_as_graph

    concrete = tf.function(fn).get_concrete_function(*specs)
    _, graph_def = convert_variables_to_constants_v2_as_graph(concrete)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        builder = tf.compat.v1.profiler.ProfileOptionBuilder
        options = builder(builder.float_operation()).with_empty_output().build()
        profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                                options=options)
    return int(profile.total_float_ops)


def forward_flops(model, input_shape: Optional[Sequence[int]] = None) -> int:
    """Forward FLOPs of one example through ``model`` in inference mode (TF profiler count)."""
    import tensorflow as tf

    shape = tuple(input_shape) if input_shape is not None else tuple(model.inputs[0].shape[1:])
    return graph_flops(lambda x: model(x, training=False), tf.TensorSpec((1, *shape), tf.float32))


def pass_counts(trainer) -> dict[str, int]:
    """The passes one training step of ``trainer`` runs, per example (the structure
    ``tests/test_methods.py`` pins by counting model calls).

    Keys: ``student_pgd`` (attack steps: forward + input gradient), ``student_train`` (training
    passes: forward + weight gradients), ``student_forward`` (inference passes: TRADES' natural
    reference, the natural-accuracy monitor), ``teacher_forward``, ``connector_train``.
    """
    from ardir_tf import methods

    name = type(trainer).__name__
    K = trainer.attack.steps if trainer.adversarial else 0
    c = {"student_pgd": K, "student_train": 0, "student_forward": 0, "teacher_forward": 0, "connector_train": 0}
    has_natural = False  # the loss computes S(x) itself
    if isinstance(trainer, methods.Standard):
        c["student_train"], has_natural = 1, True
    elif isinstance(trainer, methods.TRADES):
        c["student_forward"] += 1  # natural logits, the attack's reference
        c["student_train"], has_natural = 2, True
    elif isinstance(trainer, methods.PGDAT):
        c["student_train"] = 1
    elif isinstance(trainer, methods.RSLAD):
        c["teacher_forward"], c["student_train"], has_natural = 1, 2, True
    elif isinstance(trainer, methods.OutputDistillationTrainer):  # ARD, IAD, ARDIR: the output loss's passes
        output = trainer.output_loss
        has_natural = output.needs_natural
        c["student_train"] = 1 + int(has_natural)
        c["teacher_forward"] = 1
        adversarial_teacher_ir = isinstance(trainer, methods.ARDIR) and trainer.teacher_ir_input == "adversarial"
        if adversarial_teacher_ir:
            c["teacher_forward"] += 1  # T(x') for the IRs (IAD's trust weights reuse it)
        elif isinstance(output, methods.IADLoss) and int(trainer.epoch.numpy()) >= output.begin:
            c["teacher_forward"] += 1  # T(x') for IAD's trust weights
        if isinstance(trainer, methods.ARDIR):
            c["connector_train"] = 1
    else:
        raise ValueError(f"no pass structure known for {name}")
    if not has_natural and trainer.monitor_natural_accuracy:
        c["student_forward"] += 1
    return c


def step_flops_per_example(counts: dict[str, int], student: int, teacher: int = 0, connectors: int = 0) -> int:
    """FLOPs per example of one step with ``counts`` passes (convention of the module docstring)."""
    return (2 * counts["student_pgd"] * student + 3 * counts["student_train"] * student
            + counts["student_forward"] * student + counts["teacher_forward"] * teacher
            + 3 * counts["connector_train"] * connectors)


def connector_flops(trainer) -> int:
    """Forward FLOPs per example of ARDIR's connectors (0 for identities and other methods)."""
    import tensorflow as tf

    connectors = getattr(trainer, "connectors", [])
    if not connectors:
        return 0
    total = 0
    for connector, out in zip(connectors, trainer.student_features.outputs[1:]):
        if connector.weights:
            total += graph_flops(lambda t, c=connector: c(t, training=False),
                                 tf.TensorSpec((1, *out.shape[1:]), tf.float32))
    return total


# ------------------------------------------------------------------------------- timing helpers
def _sync(value) -> None:
    import tensorflow as tf

    for t in tf.nest.flatten(value):
        if hasattr(t, "numpy"):
            t.numpy()


class Case:
    """One timed thing: ``run()`` does one unit of work and returns the examples it processed."""

    def __init__(self, row: dict, run: Callable[[], int]):
        self.row, self.run = row, run
        self.times: list[float] = []
        self.examples = 0

    def time_once(self, repeats: int) -> float:
        start = time.perf_counter()
        n = 0
        for _ in range(repeats):
            n += self.run()
        seconds = (time.perf_counter() - start) / repeats
        self.times.append(seconds)
        self.examples = n // repeats
        return seconds


def _matmul_case(dtype: str, n: int) -> Case:
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32, seed=1)
    b = tf.random.normal([n, n], dtype=tf.float32, seed=2)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    matmul(a, b).numpy()  # warm-up

    def run():
        matmul(a, b).numpy()
        return 0

    return Case({"kind": "matmul", "method": "matmul", "precision": dtype, "matmul_size": n,
                 "flops": 2 * n ** 3}, run)


def _median(xs: Sequence[float]) -> Optional[float]:
    return float(statistics.median(xs)) if xs else None


# ----------------------------------------------------------------------------------- building
def _resolve_dataset(model: str, dataset: str) -> Any:
    """The dataset whose shapes the synthetic data takes (its metadata only: nothing is read)."""
    from ardir_tf import data

    return data.get_info(dataset or ("mnist" if model == "small_cnn" else "cifar10"))


def _settings(method: str, info, K: int, batch_size: int, seed: int) -> dict:
    """The training flags' defaults for ``method`` on ``info`` (what ``python -m ardir_tf.train`` uses)."""
    from ardir_tf import train

    values = train.default_settings()
    values.update(method=method, attack_steps=K, batch_size=batch_size, seed=seed, epsilon_warmup_epochs=0.0,
                  iad_begin=0)
    return train.resolve_settings(values, info)


def with_precision(model, precision: str):
    """``model`` itself for float32, else a copy with the same weights computing in ``precision``."""
    from ardir_tf import evaluate

    return model if precision == "float32" else evaluate.with_dtype_policy(model, precision)


def bf16_probe(batch_size: int, size: int = 32, channels: int = 64, repeats: int = 2) -> dict:
    """Seconds of one 3x3 convolution layer's forward + input and filter gradients at ``batch_size``
    in float32 and bfloat16 (best of ``repeats`` after a warm-up), and their ratio."""
    import tensorflow as tf

    out = {"kind": "bf16_probe", "method": "conv3x3_fwd_bwd", "batch_size": batch_size,
           "shape": [batch_size, size, size, channels]}
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(tf.random.normal([batch_size, size, size, channels], seed=1), dtype)
        w = tf.cast(tf.random.normal([3, 3, channels, channels], seed=2) * 0.05, dtype)

        @tf.function
        def step(x, w):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = tf.nn.conv2d(x, w, 1, "SAME")
                loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
            gx, gw = tape.gradient(loss, [x, w])
            return tf.reduce_sum(tf.cast(gx, tf.float32)) + tf.reduce_sum(tf.cast(gw, tf.float32))

        step(x, w).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step(x, w).numpy()
            times.append(time.perf_counter() - start)
        out[f"{dtype}_seconds"] = min(times)
    out["bf16_speedup"] = out["float32_seconds"] / out["bfloat16_seconds"]
    return out


def _build_train_case(method: str, precision: str, jit: bool, info, x, y, a) -> Case:
    """A training case on the real path: build_trainer + compile + Keras' compiled train function."""
    import keras

    from ardir_tf import data, methods, models, train

    s = _settings(method, info, a["attack_steps"], a["batch_size"], a["seed"])
    normalization = (info.mean, info.std) if info.mean is not None else None
    keras.utils.set_random_seed(a["seed"])
    teacher = None
    if method in methods.DISTILLATION_METHODS:
        teacher = models.get(a["model"], info.num_classes, info.input_shape, normalization=normalization,
                             **a["options"])  # float32, as a loaded .keras teacher is
        if a["teacher_precision"] == "training":
            teacher = with_precision(teacher, precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        student = models.get(a["model"], info.num_classes, info.input_shape, normalization=normalization,
                             **a["options"])
        steps = data.steps_per_epoch(len(x), a["batch_size"])
        trainer = train.build_trainer(s, student, teacher, steps)
        trainer.compile(optimizer=train.make_optimizer(s, steps), jit_compile=jit)
    finally:
        keras.config.set_dtype_policy(previous)
    iterator = iter(data.train_dataset(x, y, a["batch_size"], seed=a["seed"], augment=info.augment))
    trainer.make_train_function()
    train_fn = trainer.train_function

    def run():
        logs = train_fn(iterator)
        _sync(logs["loss"])
        return a["batch_size"]

    counts = pass_counts(trainer)
    f_student = a["flops"](student)
    f_teacher = a["flops"](teacher) if teacher is not None else 0
    f_conn = connector_flops(trainer)
    row = {
        "kind": "train", "method": method, "precision": precision, "model": a["model"],
        "dataset": info.name, "batch_size": a["batch_size"], "attack_steps": a["attack_steps"],
        "jit_compile": jit, "teacher_precision": (a["teacher_precision"] if teacher is not None else None),
        "passes": counts, "forward_flops": f_student, "teacher_forward_flops": f_teacher or None,
        "flops_per_example": step_flops_per_example(counts, f_student, f_teacher, f_conn),
    }
    case = Case(row, run)
    case.trainer = trainer  # keeps it alive
    return case


def train_case(method: str, model: str = "resnet18", batch_size: int = 128, attack_steps: int = 10, *,
               precision: str = "float32", jit_compile: bool = False, model_options: str = "", dataset: str = "",
               seed: int = 0, count_flops: bool = True) -> Case:
    """One training step of ``method`` on synthetic data, built as :func:`run` builds its training
    cases (the real training path, random weights); ``case.time_once(n)`` times ``n`` steps. Build
    a case, run it once untimed (the first step traces), then time it."""
    from ardir_tf import train

    info = _resolve_dataset(model, dataset)
    a = {"model": model, "batch_size": batch_size, "attack_steps": attack_steps, "seed": seed,
         "options": train.parse_options(model_options), "teacher_precision": "float32",
         "flops": forward_flops if count_flops else (lambda m: 0)}
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(4 * batch_size, *info.input_shape), dtype=np.uint8)
    y = rng.integers(0, info.num_classes, size=len(x)).astype(np.int32)
    return _build_train_case(method, precision, jit_compile, info, x, y, a)


def _build_pgd20_case(info, x, y, a) -> Case:
    import keras
    import tensorflow as tf

    from ardir_tf import evaluate, models

    spec = evaluate.ATTACKS["pgd20"]
    normalization = (info.mean, info.std) if info.mean is not None else None
    keras.utils.set_random_seed(a["seed"] + 1)
    model = models.get(a["model"], info.num_classes, info.input_shape, normalization=normalization, **a["options"])
    eps = 0.3 if info.input_shape[-1] == 1 else 8 / 255
    fn = evaluate._pgd_fn(model, eps, "linf", spec.steps, spec.step_fraction, spec.random_start, spec.objective)
    n = a["eval_examples"]
    xb = tf.constant(x[:n].astype(np.float32) / 255.0)
    yb = tf.constant(y[:n])

    def run():
        fn(xb, yb).numpy()
        return n

    f = a["flops"](model)
    row = {"kind": "eval", "method": "pgd20", "precision": "float32", "model": a["model"], "dataset": info.name,
           "batch_size": n, "attack_steps": spec.steps, "jit_compile": False, "forward_flops": f,
           "flops_per_example": (2 * spec.steps + 1) * f}
    return Case(row, run)


def _autoattack_row(info, x, a, progress: Callable[[str], None]) -> dict:
    import keras
    import tensorflow as tf

    from ardir_tf import models
    from ardir_tf.attacks.autoattack import AutoAttack

    normalization = (info.mean, info.std) if info.mean is not None else None
    keras.utils.set_random_seed(a["seed"] + 2)
    model = models.get(a["model"], info.num_classes, info.input_shape, normalization=normalization, **a["options"])
    n = a["autoattack_examples"]
    xb = x[:n].astype(np.float32) / 255.0
    yb = np.argmax(model(tf.constant(xb), training=False).numpy(), -1)  # every example starts correct
    aa = AutoAttack(model, norm="linf", batch_size=n, seed=a["seed"])
    first = None
    if a["autoattack_warmup"]:
        progress(f"AutoAttack warm-up on {n} examples (tracing every member)")
        start = time.perf_counter()
        aa.run(xb, yb, a["autoattack_epsilon"])
        first = time.perf_counter() - start
    progress(f"AutoAttack timed on {n} examples")
    start = time.perf_counter()
    result = aa.run(xb, yb, a["autoattack_epsilon"])
    seconds = time.perf_counter() - start
    return {"kind": "eval", "method": "autoattack", "precision": "float32", "model": a["model"], "dataset": info.name,
            "batch_size": n, "jit_compile": False, "epsilon": a["autoattack_epsilon"],
            "examples_per_second": n / seconds, "step_seconds": seconds, "step_seconds_all": [seconds],
            "first_step_seconds": first, "robust_accuracy": result.robust_accuracy,
            "members": {r.name: {"seconds": r.seconds, "attacked": r.attacked, "broken": r.broken}
                        for r in result.records},
            "flops_per_example": None, "achieved_tflops": None, "peak_tflops": None, "peak_fraction": None}


def _input_pipeline_row(info, x, y, a, batches: int = 50) -> dict:
    from ardir_tf import data

    it = iter(data.train_dataset(x, y, a["batch_size"], seed=a["seed"], augment=info.augment))
    _sync(next(it))
    start = time.perf_counter()
    for _ in range(batches):
        _sync(next(it))
    seconds = (time.perf_counter() - start) / batches
    return {"kind": "input_pipeline", "method": "input_pipeline", "precision": "float32", "model": a["model"],
            "dataset": info.name, "batch_size": a["batch_size"], "augment": info.augment,
            "examples_per_second": a["batch_size"] / seconds, "step_seconds": seconds}


# -------------------------------------------------------------------------------------- targets
def _find(rows, **match) -> Optional[dict]:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _paired_ratio(a: Case, b: Case) -> Optional[float]:
    pairs = [x / y for x, y in zip(a.times, b.times) if y > 0]
    return _median(pairs)


def targets(rows: list[dict], cases: dict, model: str, batch_size: int) -> list[dict]:
    """The issue's targets as rows (``passed``: a bool, ``None`` when the run lacks the cases)."""
    out = []
    jits = sorted({r["jit_compile"] for r in rows if r.get("kind") == "train"})
    precisions = [p for p in _PRECISIONS if _find(rows, kind="train", precision=p)]
    for jit in jits:
        for p in precisions:
            ardir, pgd = _find(rows, kind="train", method="ardir", precision=p, jit_compile=jit), \
                _find(rows, kind="train", method="pgd_at", precision=p, jit_compile=jit)
            if ardir and pgd:
                value = ardir["step_seconds"] / pgd["step_seconds"]
                out.append({"kind": "target", "target": "ardir_step_over_pgd_at_step", "precision": p,
                            "jit_compile": jit, "model": model, "batch_size": batch_size, "value": value,
                            "paired_round_median": _paired_ratio(cases[("ardir", p, jit)], cases[("pgd_at", p, jit)]),
                            "threshold": ARDIR_OVER_PGD_AT_MAX, "comparison": "<=",
                            "passed": bool(value <= ARDIR_OVER_PGD_AT_MAX)})
        for method in TRAIN_METHODS:
            fp32 = _find(rows, kind="train", method=method, precision="float32", jit_compile=jit)
            bf16 = _find(rows, kind="train", method=method, precision="mixed_bfloat16", jit_compile=jit)
            if fp32 and bf16:
                value = bf16["examples_per_second"] / fp32["examples_per_second"]
                out.append({"kind": "target", "target": "bf16_over_float32_throughput", "method": method,
                            "jit_compile": jit, "model": model, "batch_size": batch_size, "value": value,
                            "paired_round_median": _paired_ratio(cases[(method, "float32", jit)],
                                                                 cases[(method, "mixed_bfloat16", jit)]),
                            "threshold": BF16_SPEEDUP_MIN, "comparison": ">=", "measured": True,
                            "passed": bool(value >= BF16_SPEEDUP_MIN)})
            if fp32 and fp32.get("peak_fraction") is not None:
                value = fp32["peak_fraction"]
                out.append({"kind": "target", "target": "float32_fraction_of_matmul_peak", "method": method,
                            "jit_compile": jit, "model": model, "batch_size": batch_size, "value": value,
                            "threshold": FLOAT32_PEAK_FRACTION_MIN, "comparison": ">=",
                            "passed": bool(value >= FLOAT32_PEAK_FRACTION_MIN)})
    probe = _find(rows, kind="bf16_probe", skipped_training_cases=True)
    if probe:  # the training cases were skipped: the one-layer probe stands in for them
        out.append({"kind": "target", "target": "bf16_over_float32_throughput", "method": "conv3x3_probe",
                    "jit_compile": False, "model": model, "batch_size": batch_size, "value": probe["bf16_speedup"],
                    "paired_round_median": None, "threshold": BF16_SPEEDUP_MIN, "comparison": ">=",
                    "measured": False, "passed": bool(probe["bf16_speedup"] >= BF16_SPEEDUP_MIN),
                    "note": "mixed_bfloat16 training cases skipped: no AVX-512, bfloat16 is emulated on this CPU"})
    return out


# ------------------------------------------------------------------------------------------ run
def _check(a: dict) -> None:
    unknown = [m for m in a["methods"] if m not in TRAIN_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; use any of {', '.join(TRAIN_METHODS)}")
    unknown = [p for p in a["precision"] if p not in _PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision(s) {', '.join(unknown)}; use any of {', '.join(_PRECISIONS)}")
    bad = [j for j in a["jit_compile"] if j.lower() not in ("true", "false")]
    if bad:
        raise ValueError(f"--jit_compile takes 'false', 'true' or both, got {', '.join(bad)}")
    unknown = [e for e in a["eval_attacks"] if e not in ("pgd20", "autoattack")]
    if unknown:
        raise ValueError(f"unknown evaluation row(s) {', '.join(unknown)}; use pgd20, autoattack")
    for key in ("batch_size", "steps", "steps_per_round", "matmul_size", "matmul_repeats"):
        if a[key] < 1:
            raise ValueError(f"--{key} must be >= 1, got {a[key]}")
    if a["warmup_steps"] < 1:
        raise ValueError("--warmup_steps must be >= 1 (the first step traces and compiles)")


def run(a: dict, log: Callable[[str], None] = print) -> list[dict]:
    """Runs the benchmark described by the flag values ``a`` (a dict); returns the rows."""
    _check(a)
    import tensorflow as tf

    from ardir_tf import train

    tf.get_logger().setLevel("ERROR")  # one tf.function per case: TF's retracing warnings are expected here
    a = dict(a)
    a["options"] = train.parse_options(a.get("model_options", ""))
    a["eval_examples"] = a.get("eval_examples") or a["batch_size"]
    info = _resolve_dataset(a["model"], a.get("dataset", ""))
    flops_cache: dict = {}

    def flops_of(model):
        key = (model.name, tuple(model.inputs[0].shape[1:]), len(model.weights))
        if key not in flops_cache:
            flops_cache[key] = forward_flops(model)
        return flops_cache[key]

    a["flops"] = flops_of
    rng = np.random.default_rng(a["seed"])
    n = max(4 * a["batch_size"], a["eval_examples"], a.get("autoattack_examples", 0))
    x = rng.integers(0, 256, size=(n, *info.input_shape), dtype=np.uint8)
    y = rng.integers(0, info.num_classes, size=n).astype(np.int32)
    started = time.time()
    env = {"kind": "environment", "model": a["model"], "dataset": info.name, **hardware.summary(),
           "load_average_start": list(os.getloadavg()), "tensorflow": tf.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "settings": {k: v for k, v in a.items() if k not in ("flops", "options")}}
    log(f"throughput: {a['model']} on {info.name}-shaped synthetic data, batch {a['batch_size']}, PGD-{a['attack_steps']}; "
        f"{env['cpu']}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    extra_rows: list[dict] = []
    precisions = list(a["precision"])
    if "mixed_bfloat16" in precisions:
        probe = bf16_probe(min(a["batch_size"], 32))
        probe["onednn_bfloat16"] = hardware.onednn_bfloat16()
        extra_rows.append(probe)
        log(f"  bf16 probe (3x3 conv fwd+bwd): float32 {probe['float32_seconds']:.3f} s, bfloat16 "
            f"{probe['bfloat16_seconds']:.3f} s: bfloat16 {probe['bf16_speedup']:.2f}x float32's speed")
        if hardware.onednn_bfloat16() is False and a["emulated_bf16"] == "skip":
            precisions.remove("mixed_bfloat16")
            probe["skipped_training_cases"] = True
            log("  skipping the mixed_bfloat16 training cases: this CPU has no AVX-512, TensorFlow emulates bfloat16 "
                "(--emulated_bf16=run runs them anyway)")

    cases: dict = {}
    jits = [j.lower() == "true" for j in a["jit_compile"]]
    for precision in precisions:
        for jit in jits:
            for method in a["methods"]:
                log(f"  building {method} {precision}{' xla' if jit else ''} ...")
                case = _build_train_case(method, precision, jit, info, x, y, a)
                start = time.perf_counter()
                case.run()
                case.row["first_step_seconds"] = time.perf_counter() - start
                for _ in range(a["warmup_steps"] - 1):
                    case.run()
                log(f"    first step (tracing included) {case.row['first_step_seconds']:.1f} s, "
                    f"{case.row['flops_per_example'] / 1e9:.2f} GFLOP/example")
                cases[(method, precision, jit)] = case
    if "pgd20" in a["eval_attacks"]:
        log("  building pgd20 evaluation ...")
        case = _build_pgd20_case(info, x, y, a)
        start = time.perf_counter()
        case.run()
        case.row["first_step_seconds"] = time.perf_counter() - start
        cases[("pgd20", "float32", False)] = case
    matmuls = {}
    for precision in precisions:
        dtype = _MATMUL_DTYPES[precision]
        if dtype not in matmuls:
            matmuls[dtype] = _matmul_case(dtype, a["matmul_size"])

    order = list(cases.values()) + list(matmuls.values())
    for r in range(a["steps"]):
        sequence = order if r % 2 == 0 else order[::-1]
        for case in sequence:
            repeats = a["matmul_repeats"] if case.row["kind"] == "matmul" else a["steps_per_round"]
            case.time_once(repeats)
        log(f"  round {r + 1}/{a['steps']}: " + ", ".join(
            f"{c.row['method']}/{c.row['precision']}{'/xla' if c.row.get('jit_compile') else ''} {c.times[-1]:.2f}s"
            for c in order))

    rows: list[dict] = []
    peaks = {}
    for dtype, case in matmuls.items():
        med = _median(case.times)
        peaks[dtype] = case.row["flops"] / med / 1e12
        rows.append({**case.row, "seconds": med, "seconds_all": case.times, "tflops": peaks[dtype],
                     "tflops_best": case.row["flops"] / min(case.times) / 1e12})
    for key, case in cases.items():
        step = _median(case.times)
        eps = case.examples / step
        achieved = case.row["flops_per_example"] * eps / 1e12
        dtype = "float32" if case.row["kind"] == "eval" else _MATMUL_DTYPES[case.row["precision"]]
        peak = peaks.get(dtype)
        rows.append({**case.row, "examples_per_second": eps, "step_seconds": step, "step_seconds_all": case.times,
                     "achieved_tflops": achieved, "peak_tflops": peak,
                     "peak_fraction": achieved / peak if peak else None})
    rows.extend(extra_rows)
    rows.append(_input_pipeline_row(info, x, y, a))
    if "autoattack" in a["eval_attacks"]:
        row = _autoattack_row(info, x, a, lambda m: log("  " + m))
        rows.append(row)
    rows.extend(targets(rows, cases, a["model"], a["batch_size"]))
    env["load_average_end"] = list(os.getloadavg())
    env["seconds"] = time.time() - started
    rows.insert(0, env)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table (then the targets)."""
    lines = [f"{'case':34s} {'examples/s':>10s} {'step s':>8s} {'GFLOP/ex':>9s} {'TFLOP/s':>8s} {'of peak':>8s}"]
    for r in rows:
        if r["kind"] == "matmul":
            lines.append(f"{'matmul ' + r['precision'] + ' ' + str(r['matmul_size']) + '^3':34s} {'':>10s} "
                         f"{r['seconds']:8.3f} {'':>9s} {r['tflops']:8.3f} {'':>8s}")
        elif r["kind"] in ("train", "eval", "input_pipeline"):
            name = f"{r['kind']} {r['method']} {r['precision']}" + (" xla" if r.get("jit_compile") else "")
            gf = f"{r['flops_per_example'] / 1e9:9.3f}" if r.get("flops_per_example") else f"{'':>9s}"
            tf_ = f"{r['achieved_tflops']:8.3f}" if r.get("achieved_tflops") is not None else f"{'':>8s}"
            pk = f"{100 * r['peak_fraction']:7.1f}%" if r.get("peak_fraction") is not None else f"{'':>8s}"
            lines.append(f"{name:34s} {r['examples_per_second']:10.1f} {r['step_seconds']:8.3f} {gf} {tf_} {pk}")
    for r in rows:
        if r["kind"] == "bf16_probe":
            lines.append(f"bf16 probe (3x3 conv fwd+bwd, batch {r['batch_size']}): float32 {r['float32_seconds']:.3f} s, "
                         f"bfloat16 {r['bfloat16_seconds']:.3f} s"
                         + ("; mixed_bfloat16 training cases skipped (emulated bfloat16)" if r.get("skipped_training_cases") else ""))
    lines.append("targets:")
    for r in rows:
        if r["kind"] == "target":
            what = r.get("method") or r.get("precision")
            paired = f" (per-round median {r['paired_round_median']:.3f})" if r.get("paired_round_median") else ""
            lines.append(f"  {r['target']} [{what}{', xla' if r['jit_compile'] else ''}]: {r['value']:.3f}{paired} "
                         f"{r['comparison']} {r['threshold']}: {'PASS' if r['passed'] else 'FAIL'}"
                         + ("" if r.get("measured", True) else " (estimated from the probe)"))
    env = rows[0] if rows and rows[0]["kind"] == "environment" else None
    if env:
        lines.append(f"{env['cpu']} ({env['cpu_count']} cores; {' '.join(env['cpu_flags'])}); TF_ENABLE_ONEDNN_OPTS="
                     f"{env['TF_ENABLE_ONEDNN_OPTS']}; load average {env['load_average_start'][0]:.1f} at start, "
                     f"{env['load_average_end'][0]:.1f} at end; {env['seconds']:.0f} s in all")
    return "\n".join(lines)


def flag_values(fv: flags.FlagValues = FLAGS) -> dict:
    names = ["model", "model_options", "dataset", "batch_size", "methods", "precision", "jit_compile",
             "attack_steps", "warmup_steps", "steps", "steps_per_round", "eval_attacks", "eval_examples",
             "autoattack_examples", "autoattack_epsilon", "autoattack_warmup", "matmul_size", "matmul_repeats",
             "teacher_precision", "emulated_bf16", "seed", "output"]
    return {name: fv[name].value for name in names}


def main(argv, fv: flags.FlagValues = FLAGS) -> list[dict]:
    """Runs the benchmark from parsed flags ``fv``: prints progress and the table, writes ``--output``."""
    del argv
    a = flag_values(fv)
    rows = run(a, log=lambda m: print(m, flush=True))
    print(format_table(rows))
    if a["output"]:
        directory = os.path.dirname(os.path.abspath(a["output"]))
        os.makedirs(directory, exist_ok=True)
        with open(a["output"], "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        print(f"wrote {len(rows)} rows to {a['output']}")
    return rows


if __name__ == "__main__":
    from ardir_tf import cli

    define_flags()
    cli.run(main)
