"""Interleaved A/B of one training step with TensorFlow's oneDNN kernels off and on.

``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow is imported, so the two settings need two
processes. This starts both (each a worker of this module, ``--worker``, building the training
case of ``benchmarks.throughput`` and taking one untimed step), then has each time one step in
turn (throughput's step timer, ``Case.time_once``), alternating which goes first, and prints the
medians and the median of the per-round ratios. It is the evidence for ``ardir_tf`` setting
``TF_ENABLE_ONEDNN_OPTS=1`` by default on x86 (BUILD.md, "Speed")::

    python -m benchmarks.onednn_ab --model=resnet18 --method=pgd_at --attack_steps=2 --rounds=6
    python -m benchmarks.onednn_ab --model=small_cnn --method=pgd_at --rounds=10
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from absl import flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CASE_FLAGS = ("model", "method", "batch_size", "attack_steps")


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    D = lambda kind, *a, **k: getattr(flags, f"DEFINE_{kind}")(*a, flag_values=fv, **k)  # noqa: E731
    D("string", "model", "resnet18", "Architecture of the training case.")
    D("string", "method", "pgd_at", "Training method of the case.")
    D("integer", "batch_size", 128, "Training batch size.", lower_bound=1)
    D("integer", "attack_steps", 10, "PGD steps K of the training attack.", lower_bound=1)
    D("integer", "rounds", 6, "Timed rounds (one step of each setting per round).", lower_bound=1)
    D("bool", "worker", False, "Internal: run as one setting's worker (reads one line per step to time).")


def worker(fv: flags.FlagValues = FLAGS) -> None:
    """Builds the case, takes one step, prints ``ready``, then times one step per stdin line and
    prints its seconds."""
    from benchmarks import throughput

    case = throughput.train_case(fv.method, fv.model, fv.batch_size, fv.attack_steps, count_flops=False)
    case.run()
    print("ready", flush=True)
    for _ in sys.stdin:
        print(f"{case.time_once(1):.6f}", flush=True)


def _start(fv: flags.FlagValues, onednn: str) -> subprocess.Popen:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [f"--{name}={fv[name].value}" for name in _CASE_FLAGS]
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.onednn_ab", "--worker", *args], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"the worker with TF_ENABLE_ONEDNN_OPTS={onednn} failed to start")


def compare(fv: flags.FlagValues = FLAGS) -> dict[str, float]:
    """Runs the A/B; returns the median step seconds with oneDNN ``off`` and ``on`` and the median
    per-round ratio ``paired`` (off / on)."""
    procs = {"0": _start(fv, "0"), "1": _start(fv, "1")}
    times: dict[str, list[float]] = {"0": [], "1": []}
    try:
        for r in range(fv.rounds):
            for key in (("0", "1") if r % 2 == 0 else ("1", "0")):
                procs[key].stdin.write("go\n")
                procs[key].stdin.flush()
                times[key].append(float(procs[key].stdout.readline()))
            print(f"round {r + 1}: oneDNN off {times['0'][-1]:.2f} s, on {times['1'][-1]:.2f} s", flush=True)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    off, on = statistics.median(times["0"]), statistics.median(times["1"])
    paired = statistics.median(a / b for a, b in zip(times["0"], times["1"]))
    print(f"{fv.model} {fv.method} batch {fv.batch_size} PGD-{fv.attack_steps}: median step oneDNN off {off:.2f} s, "
          f"on {on:.2f} s: {off / on:.2f}x faster with oneDNN (median per-round ratio {paired:.2f}x); "
          f"load average {os.getloadavg()[0]:.1f}")
    return {"off": off, "on": on, "paired": paired}


def main(argv) -> None:
    del argv
    from benchmarks import throughput

    if FLAGS.method not in throughput.TRAIN_METHODS:
        raise ValueError(f"unknown method {FLAGS.method!r}; use any of {', '.join(throughput.TRAIN_METHODS)}")
    if FLAGS.worker:
        worker()
    else:
        compare()


if __name__ == "__main__":
    from ardir_tf import cli

    define_flags()
    cli.run(main)
