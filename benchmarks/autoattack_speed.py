"""Speed of this library's AutoAttack against the Adversarial Robustness Toolbox's, same model, same examples.

Trains (or loads) a PGD-trained ``small_cnn`` on mnist5k, then on the first ``--examples`` held-out
digits at L-inf eps 0.3 runs

* ours: ``AutoAttack`` standard (APGD-CE, APGD-T x 9 targets, FAB-T x 9 targets, Square 5,000
  queries), timed twice: cold (tracing and compilation included) and warm;
* ART 1.20's ``AutoAttack`` with its default members and settings (APGD-CE and APGD-DLR with 5
  restarts each, DeepFool, Square with 5,000 iterations and 5 restarts), through
  ``TensorFlowV2Classifier``.

It prints both robust accuracies, the per-member times of ours, and the ratio ART / ours. ART's
AutoAttack needs the ``multiprocess`` package. Usage::

    python -m benchmarks.autoattack_speed --examples=40 [--model=m.keras] [--output=r.json]

ART's default run takes about 10 minutes for 40 MNIST digits on the 2-core CPU.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import flags

import ardir_tf  # noqa: F401  (first: its quiet start and oneDNN default precede TensorFlow's import)
from ardir_tf import cli
from ardir_tf.io import write_json_atomic

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined only when it runs: autoattack_versions imports :func:`_train`)."""
    flags.DEFINE_string("model", None, "A .keras classifier of mnist5k digits (default: train one).")
    flags.DEFINE_integer("width", 8, "small_cnn width when training.", lower_bound=1)
    flags.DEFINE_integer("epochs", 3, "PGD-AT epochs when training.", lower_bound=1)
    flags.DEFINE_integer("examples", 40, "The first N held-out digits.", lower_bound=1)
    flags.DEFINE_float("epsilon", 0.3, "L-inf radius.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("art_restarts", 5, "ART's APGD/Square restarts (its default 5).", lower_bound=1)
    flags.DEFINE_integer("art_square_queries", 5000, "ART's Square iterations (its default 5000).", lower_bound=1)
    flags.DEFINE_bool("art_no_deepfool", False, "Drop DeepFool from ART's members.")
    flags.DEFINE_bool("skip_art", False, "Time only ours.")
    flags.DEFINE_string("output", None, "Write the numbers as JSON here.")


def _train(width: int, epochs: int):
    import keras

    from ardir_tf import data, methods, models

    x, y = data.load_arrays("mnist5k", "train")
    keras.utils.set_random_seed(0)
    student = models.get("small_cnn", 10, (28, 28, 1), width=width)
    steps = int(np.ceil(len(x) / 64))
    trainer = methods.PGDAT(student, epsilon=0.3, attack_steps=5, attack_step_size=0.1,
                            epsilon_warmup_steps=steps * epochs // 2, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return student


def main(argv) -> None:
    del argv
    args = FLAGS
    import keras

    from ardir_tf import data
    from ardir_tf.attacks.autoattack import AutoAttack

    if args.model:
        model = keras.models.load_model(args.model, compile=False)
    else:
        start = time.perf_counter()
        model = _train(args.width, args.epochs)
        print(f"trained small_cnn (width {args.width}) with PGD-AT for {args.epochs} epochs in "
              f"{time.perf_counter() - start:.0f} s")
    x, y = data.load_arrays("mnist5k", "test", examples=args.examples)
    natural = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))

    aa = AutoAttack(model, norm="linf", batch_size=500, seed=0)
    start = time.perf_counter()
    ours = aa.run(x, y, args.epsilon)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    ours_warm = aa.run(x, y, args.epsilon)
    warm = time.perf_counter() - start
    out = {"examples": len(x), "epsilon": args.epsilon, "natural_accuracy": natural,
           "ours": {"robust_accuracy": ours.robust_accuracy, "seconds_cold": round(cold, 2),
                    "seconds_warm": round(warm, 2),
                    "members": {r.name: {"seconds": r.seconds, "robust_accuracy": r.robust_accuracy}
                                for r in ours_warm.records}}}
    print(f"natural accuracy {100 * natural:.1f}% on {len(x)} examples, eps {args.epsilon:g}")
    print(f"ours: robust {100 * ours.robust_accuracy:.1f}%  {cold:.1f} s cold, {warm:.1f} s warm  "
          + ", ".join(f"{r.name} {r.seconds:.1f} s -> {100 * r.robust_accuracy:.1f}%" for r in ours_warm.records))
    if not args.skip_art:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from test_autoattack import art_autoattack_accuracy

        start = time.perf_counter()
        art = art_autoattack_accuracy(model, x, y, args.epsilon, restarts=args.art_restarts,
                                      square_queries=args.art_square_queries, deepfool=not args.art_no_deepfool,
                                      batch_size=len(x))
        art_seconds = time.perf_counter() - start
        out["art"] = {"robust_accuracy": art, "seconds": round(art_seconds, 2), "restarts": args.art_restarts,
                      "square_queries": args.art_square_queries, "deepfool": not args.art_no_deepfool}
        out["speedup_cold"] = round(art_seconds / cold, 2)
        out["speedup_warm"] = round(art_seconds / warm, 2)
        print(f"ART:  robust {100 * art:.1f}%  {art_seconds:.1f} s")
        print(f"speed-up (ART time / ours): {out['speedup_cold']:.1f}x cold, {out['speedup_warm']:.1f}x warm; "
              f"ours - ART = {100 * (ours.robust_accuracy - art):+.1f} points")
    if args.output:
        write_json_atomic(args.output, out)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
