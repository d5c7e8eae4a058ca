"""Cost of AutoAttack "plus" relative to "standard" on the same model and examples.

Loads (or trains, as ``benchmarks/autoattack_speed.py`` does) a PGD-trained ``small_cnn`` on
mnist5k, compiles both versions on the first two held-out digits (so tracing is not timed), then
runs each version on the first ``--examples`` digits at L-inf ``--epsilon`` and prints, per
version, the robust accuracy, the seconds, each member's seconds / attacked / broken, the ratio
plus / standard, the examples only plus broke, the CPU model and the load average (the machine
may be shared). Usage::

    PYTHONPATH=. python benchmarks/autoattack_versions.py --examples=40 [--model=m.keras] [--output=r.json]
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("model", None, "A .keras classifier of mnist5k digits (default: train one).")
flags.DEFINE_integer("examples", 40, "The first N held-out digits.")
flags.DEFINE_float("epsilon", 0.3, "L-inf radius.")
flags.DEFINE_list("versions", ["standard", "plus"], "AutoAttack versions to time, in order.")
flags.DEFINE_integer("seed", 0, "Seed of the attacks.")
flags.DEFINE_string("output", None, "Write the numbers as JSON here.")
FLAGS = flags.FLAGS


def _cpu() -> str:
    from ardir_tf import hardware

    try:
        return hardware.cpu_model()
    except Exception:  # noqa: BLE001 - a name for the record only
        return "unknown"


def main(argv) -> None:
    import keras

    from ardir_tf import data
    from ardir_tf.attacks.autoattack import AutoAttack

    if FLAGS.model:
        model = keras.models.load_model(FLAGS.model)
    else:
        from benchmarks.autoattack_speed import _train

        model = _train(8, 3)
    x, y = data.load_arrays("mnist5k", "test", examples=FLAGS.examples)
    natural = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    out = {"examples": int(len(x)), "epsilon": FLAGS.epsilon, "natural_accuracy": natural, "cpu": _cpu(),
           "cpus": os.cpu_count(), "load_before": list(os.getloadavg()), "versions": {}}
    robust = {}
    for version in FLAGS.versions:
        aa = AutoAttack(model, version=version, seed=FLAGS.seed)
        aa.run(x[:2], y[:2], FLAGS.epsilon)  # compile every member (not timed)
        start = time.perf_counter()
        result = aa.run(x, y, FLAGS.epsilon)
        seconds = time.perf_counter() - start
        robust[version] = result.robust
        out["versions"][version] = {
            "settings": aa.settings(), "robust_accuracy": result.robust_accuracy, "seconds": round(seconds, 1),
            "members": {r.name: {"seconds": r.seconds, "attacked": r.attacked, "broken": r.broken,
                                 "restarts": r.restarts} for r in result.records},
        }
        print(f"{version}: robust {100 * result.robust_accuracy:.1f}% in {seconds:.1f} s; "
              + ", ".join(f"{r.name} {r.seconds:.1f} s ({r.broken}/{r.attacked} broken)" for r in result.records),
              flush=True)
    out["load_after"] = list(os.getloadavg())
    if {"standard", "plus"} <= set(robust):
        seconds = {v: out["versions"][v]["seconds"] for v in ("standard", "plus")}
        out["plus_over_standard"] = round(seconds["plus"] / seconds["standard"], 2)
        out["only_plus_broke"] = [int(i) for i in np.flatnonzero(robust["standard"] & ~robust["plus"])]
        out["only_standard_broke"] = [int(i) for i in np.flatnonzero(robust["plus"] & ~robust["standard"])]
        print(f"plus / standard time: {out['plus_over_standard']}x; examples only plus broke: "
              f"{out['only_plus_broke']}; only standard broke: {out['only_standard_broke']}")
    print(f"CPU: {out['cpu']} ({out['cpus']} cores); load average before {out['load_before']}, "
          f"after {out['load_after']}")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    app.run(main)
