"""``python -m ardir_tf.train``: train a teacher, a baseline or a distilled robust student.

With no flags it is the quick start: on the offline ``mnist5k`` digits it trains a PGD-AT
``small_cnn`` teacher (or reuses the one already in ``WORKDIR/teacher``), distils an ARDIR
student from it, evaluates both on the 1,000 held-out digits and prints natural / FGSM / PGD-20 /
CW accuracy. ``--flagfile=cifar.flags`` (a bare name) uses a flagfile shipped with the package.

A workdir receives ``model.keras`` (the trained network alone, loadable without this library's
training code), ``history.csv``, TensorBoard logs in ``logs/``, ``results.json`` (the schema of
:mod:`ardir_tf.evaluate`), ``settings.json`` and ``checkpoint/``. Running the same command again
continues from the last completed epoch.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import sys
import time
from typing import Any, Optional

import keras
import tensorflow as tf
from absl import flags

from ardir_tf import cli, data, distribute, evaluate as evaluate_lib, hardware, methods, models
from ardir_tf.io import SETTINGS_FILE, load_model_file, resolve_teacher, teacher_record, write_json_atomic

FLAGS = flags.FLAGS
_PROGRESS = {"bar": 1, "epoch": 2, "none": 0}
# Settings that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("epochs", "verbose", "progress", "workdir", "eval_examples", "eval_attacks", "teacher_epochs",
                      "strategy", "tpu")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the training flags in ``flag_values`` (the CLI calls it, so importing this module
    defines no flags)."""
    D = _Definer(flag_values)
    D.DEFINE_enum("method", "ardir", list(methods.METHODS), "Training method.")
    D.DEFINE_string("dataset", "mnist5k", "Dataset: cifar10, cifar100, svhn_cropped, mnist, fashion_mnist, mnist5k or npz:PATH.")
    D.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    D.DEFINE_string("model", "small_cnn", f"Student architecture: {', '.join(models.available())}.")
    D.DEFINE_string("model_options", "", "Architecture options, e.g. 'width=16' or 'depth=28,width=10'.")
    D.DEFINE_string("teacher", "", "Path of the teacher's .keras file. Empty with a distillation method: train one "
                    "with --teacher_method in WORKDIR/teacher (or reuse it).")
    D.DEFINE_enum("teacher_method", "pgd_at", ["standard", "pgd_at", "trades"], "Method of an auto-trained teacher.")
    D.DEFINE_string("teacher_model", "", "Architecture of an auto-trained teacher (default: --model).")
    D.DEFINE_integer("teacher_epochs", 0, "Epochs of an auto-trained teacher (0: --epochs).")
    D.DEFINE_string("workdir", "runs/quickstart", "Output directory of the run.")
    D.DEFINE_integer("epochs", 4, "Training epochs.")
    D.DEFINE_integer("batch_size", 64, "Global batch size.")
    D.DEFINE_integer("train_examples", 0, "Use only the first N training examples (0: all).")
    D.DEFINE_integer("val_examples", 500, "Held-out examples for the per-epoch natural/PGD check (0: none).")
    D.DEFINE_integer("eval_examples", 1000, "Held-out examples of the final evaluation.")
    D.DEFINE_list("eval_attacks", list(evaluate_lib.DEFAULT_ATTACKS), "Attacks of the final evaluation.")
    D.DEFINE_enum("optimizer", "adam", ["sgd", "adam"], "Optimizer (the CIFAR flagfiles use the references' SGD).")
    D.DEFINE_float("learning_rate", 0.001, "Initial learning rate.")
    D.DEFINE_float("momentum", 0.9, "SGD momentum.")
    D.DEFINE_enum("lr_schedule", "piecewise", ["piecewise", "cosine", "constant"], "Learning-rate schedule.")
    D.DEFINE_list("lr_decay_epochs", [], "Piecewise: epochs at which the rate is multiplied by --lr_decay_factor.")
    D.DEFINE_float("lr_decay_factor", 0.1, "Piecewise decay factor.")
    D.DEFINE_float("weight_decay", 0.0, "Weight decay coefficient.")
    D.DEFINE_enum("weight_decay_mode", "l2", ["l2", "decoupled"], "l2: PyTorch-SGD-style coupled decay (gradient "
                  "wd*w, the references'); decoupled: the optimizer's own weight_decay.")
    cli.define_fraction("epsilon", None, "Attack radius, a number or a fraction such as 8/255 (default: 0.3 for "
                        "MNIST-like data, 8/255 otherwise).", flag_values)
    D.DEFINE_integer("attack_steps", 10, "PGD steps K of the training attack.")
    cli.define_fraction("attack_step_size", None, "PGD step size, a number or a fraction such as 2/255 (default: "
                        "0.03 for MNIST-like data, 2/255 otherwise).", flag_values)
    D.DEFINE_float("epsilon_warmup_epochs", None, "Ramp the training attack's epsilon linearly from 0 over this many "
                   "epochs (default: half the epochs, at most 2, for MNIST-like data; 0 otherwise).")
    D.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat model norm.")
    D.DEFINE_enum("random_start", None, ["uniform", "normal", "none"], "Random start (default: the method's reference).")
    D.DEFINE_bool("attack_bn_training", False, "Attack with the student's BN in training mode (ARD/IAD reference code).")
    D.DEFINE_integer("eval_attack_steps", None, "PGD steps of the per-epoch check (default: --attack_steps).")
    D.DEFINE_float("trades_beta", 6.0, "TRADES beta.")
    D.DEFINE_float("temperature", None, "Distillation temperature (default: the method's reference: ARD 30, IAD 1).")
    D.DEFINE_float("alpha", 1.0, "Weight of the distillation term (1 - alpha weighs CE(S(x), y)).")
    D.DEFINE_enum("kl_reduction", None, ["batchmean", "elementmean"], "KL reduction of ARD, IAD, RSLAD and ARDIR "
                  "(default: the method's reference, elementmean for all four).")
    cli.define_fraction("rslad_adversarial_weight", 5 / 6, "RSLAD weight of the adversarial KL term (a number or a "
                        "fraction such as 5/6).", flag_values)
    D.DEFINE_float("iad_beta", 0.1, "IAD trust exponent (also ARDIR with --ardir_base=iad).")
    D.DEFINE_integer("iad_begin", 60, "IAD first introspective epoch, 0-based (also ARDIR with --ardir_base=iad).")
    D.DEFINE_list("ir_layers", [], "ARDIR layer pairs 'student:teacher' (or a name on both sides); default: the last "
                  "convolutional stage of each.")
    D.DEFINE_list("ir_weights", [], "ARDIR weight per layer pair (default 1 each).")
    D.DEFINE_float("gamma", 1.0, "ARDIR weight of the IR term.")
    D.DEFINE_enum("ir_distance", "normalized_mse", ["normalized_mse", "mse", "cosine", "attention"], "ARDIR IR distance.")
    D.DEFINE_enum("teacher_ir_input", "natural", ["natural", "adversarial"], "ARDIR: the teacher's IR on x or on x'.")
    D.DEFINE_enum("ardir_base", "ard", ["ard", "iad"], "ARDIR output loss.")
    D.DEFINE_enum("attack_objective", "ce", ["ce", "ardir"], "ARDIR training attack objective.")
    D.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Training precision: mixed_bfloat16 uses CPU matrix units (AMX) and TPUs (on x86 CPUs without AVX-512 "
                  "it is emulated and slower than float32); mixed_float16 is for GPUs "
                  "(with loss scaling). The saved model and every evaluation are float32.")
    D.DEFINE_integer("seed", 0, "Seed of initialisation, data order and attack noise.")
    D.DEFINE_bool("deterministic", False, "Enable TensorFlow's deterministic ops (bitwise-reproducible, slower).")
    D.DEFINE_enum("strategy", "default", list(distribute.STRATEGIES), "tf.distribute strategy: default (one device), "
                  "mirrored (all local GPUs), multi_worker (the hosts in TF_CONFIG) or tpu. --batch_size stays the "
                  "global batch (see BUILD.md, Distributed training).")
    D.DEFINE_string("tpu", "", "With --strategy=tpu: the TPU's name or grpc:// address (empty: this TPU VM).")
    D.DEFINE_bool("sync_batch_norm", False, "Batch norm statistics over the global batch, not each replica's shard.")
    D.DEFINE_float("lr_warmup_epochs", 0.0, "Ramp the learning rate linearly from 0 over this many epochs (for a "
                   "large global batch with a linearly scaled --learning_rate).")
    D.DEFINE_enum("progress", "bar", list(_PROGRESS), "Progress output: a Keras progress bar, one line per epoch, or none.")
    D.DEFINE_bool("verbose", False, "Show the traceback of an error, not just its one-line message.")


class _Definer:
    """``flags.DEFINE_*`` bound to one ``FlagValues`` (so tests can parse flagfiles in isolation)."""

    def __init__(self, flag_values: flags.FlagValues):
        self._fv = flag_values

    def __getattr__(self, name):
        define = getattr(flags, name)
        return lambda *a, **k: define(*a, flag_values=self._fv, **k)


def default_settings() -> dict[str, Any]:
    """Every training flag at its default, in the form :func:`run` takes (a fresh copy)."""
    return copy.deepcopy(_FLAG_DEFAULTS)


def settings_from_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
    """The parsed training flags as a plain dict (the form :func:`run` takes)."""
    return {name: flag_values[name].value for name in _FLAG_NAMES}


#: settings only a distillation method reads (the last three only to train its teacher)
TEACHER_SETTINGS = ("teacher", "teacher_method", "teacher_model", "teacher_epochs")


def settings_used(values: dict[str, Any]) -> set[str]:
    """Names of the settings that a run of ``values["method"]`` reads.

    Every method reads the shared ones (data, model, optimizer, evaluation, attack radius); of the
    methods' own settings (``AdversarialTrainer.SETTINGS``) only its own; the training attack's
    start and BN mode only if it trains on adversarial examples; the teacher settings only a
    distillation method, and those that train a teacher (with the teacher method's settings) only
    when ``teacher`` is empty.
    """
    own = set().union(*(cls.SETTINGS for cls in methods.METHODS.values()))
    attack_only = set(methods.AdversarialTrainer.TRAINING_ATTACK_SETTINGS)
    used = set(_FLAG_NAMES) - own - attack_only - set(TEACHER_SETTINGS)

    def add(cls):
        used.update(cls.settings_for(values))
        if cls.adversarial:
            used.update(attack_only)

    add(methods.get(values["method"]))
    if values["method"] in methods.DISTILLATION_METHODS:
        used.add("teacher")
        if not values.get("teacher"):
            used.update(TEACHER_SETTINGS)
            add(methods.get(values["teacher_method"]))
    return used


def check_settings_used(values: dict[str, Any], explicit: list[str]) -> None:
    """Raises a one-line ``ValueError`` naming the settings in ``explicit`` (set by the user, on
    the command line or in a flagfile) that the run of ``values`` would ignore."""
    unused = [name for name in explicit if name not in settings_used(values)]
    if not unused:
        return
    method = values["method"]
    context = f" with --ardir_base={values.get('ardir_base')}" if method == "ardir" else ""
    if method in methods.DISTILLATION_METHODS and values.get("teacher"):
        context += " and a given --teacher" if context else " with a given --teacher"
    names = ", ".join(f"--{n}" for n in unused)
    own = ", ".join(f"--{n}" for n in methods.get(method).settings_for(values))
    own = f"its own settings: {own}" if own else "it has no settings of its own"
    raise ValueError(f"{names} {'is' if len(unused) == 1 else 'are'} not used by --method={method}{context} "
                     f"({own}); remove {'it' if len(unused) == 1 else 'them'}")


# --------------------------------------------------------------------------------------- helpers
def parse_options(text: str) -> dict[str, Any]:
    """``"depth=28,width=10"`` -> ``{"depth": 28, "width": 10}`` (ints, floats or strings)."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"bad model option {item!r}; use key=value")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def mnist_like(info: data.DatasetInfo) -> bool:
    return info.input_shape[-1] == 1


def resolve_settings(values: dict[str, Any], info: data.DatasetInfo) -> dict[str, Any]:
    """Fills dataset-dependent defaults and validates the values no flag type can check."""
    s = dict(values)
    if s["epsilon"] is None:
        s["epsilon"] = 0.3 if mnist_like(info) else 8 / 255
    if s.get("epsilon_warmup_epochs") is None:
        s["epsilon_warmup_epochs"] = min(2.0, s["epochs"] / 2) if mnist_like(info) else 0.0
    if s["attack_step_size"] is None:
        s["attack_step_size"] = 0.03 if mnist_like(info) else 2 / 255
    checks = [
        (s["epochs"] >= 1, f"--epochs must be >= 1, got {s['epochs']}"),
        (s["batch_size"] >= 1, f"--batch_size must be >= 1, got {s['batch_size']}"),
        (s["learning_rate"] > 0, f"--learning_rate must be positive, got {s['learning_rate']}"),
        (s["weight_decay"] >= 0, f"--weight_decay must be >= 0, got {s['weight_decay']}"),
        (s["attack_steps"] >= 1, f"--attack_steps must be positive, got {s['attack_steps']}"),
        (s.get("epsilon_warmup_epochs", 0) >= 0, "--epsilon_warmup_epochs must be >= 0"),
        (s.get("lr_warmup_epochs", 0) >= 0, f"--lr_warmup_epochs must be >= 0, got {s.get('lr_warmup_epochs')}"),
        (s["train_examples"] >= 0, f"--train_examples must be >= 0, got {s['train_examples']}"),
        (s["val_examples"] >= 0, f"--val_examples must be >= 0, got {s['val_examples']}"),
        (s["eval_examples"] >= 1, f"--eval_examples must be >= 1, got {s['eval_examples']}"),
    ]
    unknown = [a for a in s["eval_attacks"] if a not in evaluate_lib.ATTACKS]
    if unknown:
        checks.append((False, f"unknown --eval_attacks {', '.join(unknown)}; use any of {', '.join(evaluate_lib.ATTACKS)}"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    training_attack(s)  # epsilon, step size, norm: validated where the attack configuration is made
    s["lr_decay_epochs"] = [int(e) for e in s["lr_decay_epochs"]]
    s["ir_weights"] = [float(w) for w in s["ir_weights"]]
    return s


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step) * min(1, (step + 1) / warmup_steps)``: the gradual warm-up of Goyal et al.
    (2017) that makes a learning rate scaled up with the global batch usable from the first step."""

    def __init__(self, schedule, warmup_steps: int):
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        base = self.schedule(step) if callable(self.schedule) else self.schedule
        return base * keras.ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps}


def learning_rate(s: dict[str, Any], steps_per_epoch: int):
    """The schedule in optimizer steps (so it resumes with the optimizer's iteration count)."""
    lr = s["learning_rate"]
    if s["lr_schedule"] == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=s["epochs"] * steps_per_epoch)
    elif s["lr_schedule"] == "piecewise" and s["lr_decay_epochs"]:
        boundaries = [e * steps_per_epoch for e in sorted(s["lr_decay_epochs"])]
        values = [lr * s["lr_decay_factor"] ** i for i in range(len(boundaries) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        schedule = lr
    warmup_steps = int(round(s.get("lr_warmup_epochs", 0.0) * steps_per_epoch))
    return LinearWarmup(schedule, warmup_steps) if warmup_steps > 0 else schedule


def make_optimizer(s: dict[str, Any], steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(s, steps_per_epoch)
    decay = s["weight_decay"] if s["weight_decay_mode"] == "decoupled" and s["weight_decay"] else None
    if s["optimizer"] == "adam":
        return keras.optimizers.Adam(lr, weight_decay=decay)
    return keras.optimizers.SGD(lr, momentum=s["momentum"], weight_decay=decay)


def training_attack(s: dict[str, Any]) -> methods.AttackConfig:
    """The training attack of resolved settings ``s`` (raises ``ValueError`` for values no
    attack can use, such as ``--epsilon=8`` under ``linf``)."""
    cls = methods.get(s["method"])
    return methods.AttackConfig(s["epsilon"], s["attack_step_size"], s["attack_steps"], s["norm"],
                                s["random_start"] or cls.default_random_start, objective=cls.attack_objective,
                                bn_training=s["attack_bn_training"])


def method_options(s: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of ``s["method"]`` from the settings it declares
    (``AdversarialTrainer.settings_for``); an unset setting (``None``, ``[]``) keeps the method's default."""
    options = {}
    for name, argument in methods.get(s["method"]).settings_for(s).items():
        if s.get(name) is not None and s.get(name) != []:
            options[argument] = s[name]
    return options


def build_trainer(s: dict[str, Any], student: keras.Model, teacher: Optional[keras.Model],
                  steps_per_epoch: int = 1) -> methods.AdversarialTrainer:
    """The method's trainer from resolved settings ``s``."""
    common = dict(
        epsilon_warmup_steps=int(round(s.get("epsilon_warmup_epochs", 0.0) * steps_per_epoch)),
        epsilon=s["epsilon"], attack_steps=s["attack_steps"], attack_step_size=s["attack_step_size"], norm=s["norm"],
        random_start=s["random_start"], attack_bn_training=s["attack_bn_training"],
        eval_attack_steps=s["eval_attack_steps"], seed=s["seed"],
        l2_weight_decay=s["weight_decay"] if s["weight_decay_mode"] == "l2" else 0.0,
    )
    cls = methods.get(s["method"])
    models_ = (student, teacher) if s["method"] in methods.DISTILLATION_METHODS else (student,)
    return cls(*models_, **method_options(s), **common)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole training state (student, connectors, optimizer, attack RNG, epoch) after
    every epoch. The weights go to a new file first and ``state.json`` is replaced atomically
    afterwards, so an interruption at any moment leaves the previous complete checkpoint usable.

    ``state.json`` also keeps ``train_seconds``: the time spent on the completed epochs, summed
    over every invocation that trained them (an epoch cut short by an interruption is not counted).
    """

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.on_train_begin()  # fit() calls it again; an epoch end outside fit() needs the clock too

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, "state.json")

    def completed_epochs(self) -> int:
        state = self.read_state()
        return state["epochs_completed"] if state else 0

    def read_state(self) -> Optional[dict]:
        if not os.path.exists(self.state_path):
            return None
        with open(self.state_path) as f:
            return json.load(f)

    def train_seconds(self) -> float:
        """Seconds spent on the completed epochs (0 for checkpoints written before this was kept)."""
        return float((self.read_state() or {}).get("train_seconds", 0.0))

    def on_train_begin(self, logs=None):
        self._begin, self._before = time.monotonic(), self.train_seconds()

    def restore(self, trainer: keras.Model) -> int:
        """Loads the last complete checkpoint into ``trainer``; returns the epochs it completed."""
        state = self.read_state()
        if not state:
            return 0
        if not trainer.optimizer.built:
            with trainer.distribute_strategy.scope():  # the optimizer's variables as the trainer's: mirrored
                trainer.optimizer.build(trainer.trainable_variables)
        trainer.load_weights(os.path.join(self.directory, state["weights"]))
        return state["epochs_completed"]

    def on_epoch_end(self, epoch, logs=None):
        if any(isinstance(v, numbers.Real) and not math.isfinite(v) for v in (logs or {}).values()):
            return  # a non-finite loss (TerminateOnNaN): keep the last good checkpoint
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(os.path.join(self.directory, name))
        write_json_atomic(self.state_path, {"epochs_completed": epoch + 1, "weights": name,
                                            "train_seconds": round(self._before + time.monotonic() - self._begin, 1)})
        for old in os.listdir(self.directory):
            if old.endswith(".weights.h5") and old != name:
                os.remove(os.path.join(self.directory, old))


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Saves a float32 copy of ``model`` to ``path`` via a temporary file and a rename."""
    tmp = path[: -len(".keras")] + ".tmp.keras"
    evaluate_lib.float32_model(model).save(tmp)
    os.replace(tmp, path)


def check_settings(workdir: str, s: dict[str, Any], write: bool = True) -> None:
    """Refuses to mix runs: a workdir that holds a run with other settings is an error.

    With ``write``, ``s`` becomes the workdir's settings (``False``: only compare).
    """
    path = os.path.join(workdir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        # A setting missing on one side (a run from an older version) counts as its flag default.
        diff = sorted(k for k in set(old) | set(s) if k not in _RESUMABLE_CHANGES
                      and old.get(k, _FLAG_DEFAULTS.get(k)) != s.get(k, _FLAG_DEFAULTS.get(k)))
        # The teacher is the same file however its path is spelled (relative, absolute, through a link).
        if "teacher" in diff and (resolve_teacher(old.get("teacher") or "", workdir)
                                  == resolve_teacher(s.get("teacher") or "", workdir)):
            diff.remove("teacher")
        if diff:
            raise ValueError(
                f"workdir {workdir!r} holds a run with different settings ({', '.join(diff)}); "
                "use another --workdir, or delete that one to start fresh"
            )
    if write:
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(path, s)


# ----------------------------------------------------------------------------------------- runs
def train_and_evaluate(s: dict[str, Any], workdir: str, teacher_path: str = "") -> dict:
    """Trains ``s["method"]`` into ``workdir`` (resuming if possible), saves and evaluates it.

    Returns the results dict (also written to ``WORKDIR/results.json``).
    """
    info = data.get_info(s["dataset"], s["data_dir"])
    requested = {**s, "teacher": teacher_record(teacher_path, workdir)}
    s = resolve_settings(s, info)
    strategy = distribute.make_strategy(s.get("strategy", "default"), s.get("tpu", ""))
    chief = distribute.is_chief(strategy)  # only the chief writes into workdir (multi_worker)
    distribute.check_global_batch(strategy, s["batch_size"])
    teacher = None
    if s["method"] in methods.DISTILLATION_METHODS:
        with strategy.scope():  # the teacher's variables on every replica's device
            teacher = load_model_file(teacher_path, "teacher")
    # Compare what the user asked for: defaults derived from --epochs may change on resumption.
    # The settings are written once the trainer is built, so a start that fails on bad input
    # does not claim the workdir.
    check_settings(workdir, requested, write=False)
    model_path = os.path.join(workdir, "model.keras")
    ckpt = EpochCheckpoint(os.path.join(workdir, "checkpoint"))
    results_path = os.path.join(workdir, "results.json")
    if ckpt.completed_epochs() >= s["epochs"] and os.path.exists(model_path) and os.path.exists(results_path):
        print(f"{workdir}: already trained for {s['epochs']} epochs; reusing it")
        with open(results_path) as f:
            return json.load(f)

    keras.utils.set_random_seed(s["seed"])
    if s["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    x_train, y_train = data.load_arrays(s["dataset"], "train", s["data_dir"], examples=s["train_examples"] or None)
    x_test, y_test = data.load_arrays(s["dataset"], "test", s["data_dir"], examples=s["eval_examples"])
    normalization = (info.mean, info.std) if info.mean is not None else None
    accelerators = len(tf.config.list_physical_devices("GPU")) + len(tf.config.list_physical_devices("TPU"))
    slow = hardware.precision_warning(s.get("precision", "float32"), accelerators)
    if slow:
        print(f"warning: {slow}", file=sys.stderr)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(s.get("precision", "float32"))
    try:
        with strategy.scope():
            student = models.get(s["model"], info.num_classes, info.input_shape, normalization=normalization,
                                 **parse_options(s["model_options"]))
            steps = data.steps_per_epoch(len(x_train), s["batch_size"])
            trainer = build_trainer(s, student, teacher, steps)
            if s.get("sync_batch_norm"):
                distribute.synchronize_batch_norm(trainer)
            trainer.compile(optimizer=make_optimizer(s, steps))  # mixed_float16: Keras adds loss scaling
    finally:
        keras.config.set_dtype_policy(previous_policy)
    check_settings(workdir, requested, write=chief)
    initial_epoch = ckpt.restore(trainer)
    if initial_epoch:
        print(f"{workdir}: resuming after epoch {initial_epoch}")
    train_ds = data.train_dataset(x_train, y_train, s["batch_size"], seed=s["seed"], augment=info.augment,
                                  start_epoch=initial_epoch)
    val = None
    if s["val_examples"]:
        n = min(s["val_examples"], len(x_test))
        val = data.eval_dataset(x_test[:n], y_test[:n], s["batch_size"])
    # Every worker saves (saving may join collective operations); the others into a scratch copy.
    out = distribute.worker_dir(strategy, workdir)
    writer = ckpt if chief else EpochCheckpoint(os.path.join(out, "checkpoint"))
    callbacks = [
        writer,
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=initial_epoch > 0),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        keras.callbacks.TerminateOnNaN(),
    ]
    print(f"training {s['method']} {s['model']} on {info.name} for {s['epochs']} epochs into {workdir}")
    trainer.fit(train_ds, epochs=s["epochs"], initial_epoch=initial_epoch, steps_per_epoch=steps,
                validation_data=val, callbacks=callbacks, verbose=_PROGRESS[s["progress"]], shuffle=False)
    if writer.completed_epochs() < s["epochs"]:
        done = writer.completed_epochs()
        raise ValueError(f"training stopped at a non-finite loss in epoch {done + 1}; the last good checkpoint ({done} "
                         f"epochs) is kept in {ckpt.directory}: run the same command to retry from it, or start "
                         "fresh in another --workdir with a lower --learning_rate")
    evaluation_start = time.monotonic()
    own_model_path = os.path.join(out, "model.keras")
    save_model_atomic(student, own_model_path)
    distribute.barrier(strategy)  # the other workers may read WORKDIR/model.keras next (a student's teacher)
    results = evaluate_lib.evaluate(
        load_model_file(own_model_path), x_test, y_test, epsilon=s["epsilon"], attacks=s["eval_attacks"],
        norm=s["norm"], dataset=info.name, class_names=info.class_names, seed=s["seed"],
        verbose=int(s["progress"] == "bar"),
    )
    results["training"] = {"method": s["method"], "model": s["model"], "epochs": s["epochs"],
                           # every invocation's training (a resumed run's too), then this evaluation
                           "seconds": round(writer.train_seconds() + time.monotonic() - evaluation_start, 1),
                           "train_seconds": writer.train_seconds(), "teacher": teacher_path or None}
    write_json_atomic(os.path.join(out, "results.json"), results)
    distribute.remove_worker_dir(strategy, workdir)
    return results


def run(values: dict[str, Any]) -> dict[str, dict]:
    """Runs what the flags ask for; returns ``{row name: results}`` (teacher first when trained).

    A distillation method without ``teacher`` trains one with ``teacher_method`` in
    ``WORKDIR/teacher`` (or reuses it) first.
    """
    values = dict(values)
    # First: a multi-worker strategy or a TPU must be set up before any other TensorFlow operation.
    distribute.make_strategy(values.get("strategy", "default"), values.get("tpu", ""))
    workdir = values.pop("workdir")
    teacher_path = values.pop("teacher")
    teacher_method = values.pop("teacher_method")
    rows = {}
    if values["method"] in methods.DISTILLATION_METHODS and not teacher_path:
        teacher_values = dict(values, method=teacher_method, model=values["teacher_model"] or values["model"],
                              epochs=values["teacher_epochs"] or values["epochs"])
        teacher_dir = os.path.join(workdir, "teacher")
        rows["teacher"] = train_and_evaluate(teacher_values, teacher_dir)
        teacher_path = os.path.join(teacher_dir, "model.keras")
    rows[values["method"]] = train_and_evaluate(values, workdir, teacher_path)
    return rows


def main(argv) -> None:
    del argv
    values = settings_from_flags()
    check_settings_used(values, [name for name in _FLAG_NAMES if FLAGS[name].present])
    print(evaluate_lib.format_table(run(values)))


def _defaults() -> dict[str, Any]:
    scratch = flags.FlagValues()
    define_flags(scratch)
    return {name: scratch[name].default for name in scratch}


_FLAG_DEFAULTS = _defaults()
_FLAG_NAMES = list(_FLAG_DEFAULTS)

if __name__ == "__main__":
    define_flags()
    cli.run(main)
