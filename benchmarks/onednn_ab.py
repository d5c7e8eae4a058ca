"""Interleaved A/B of one training step with TensorFlow's oneDNN kernels off and on.

``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow is imported, so the two settings need two
processes. This starts both (each builds the same training case as ``benchmarks.throughput`` and
takes one untimed step), then times one step of each in turn, alternating which goes first, and
prints the medians and the median of the per-round ratios. It is the evidence for ``ardir_tf``
setting ``TF_ENABLE_ONEDNN_OPTS=1`` by default on x86 (BUILD.md, "Speed")::

    python -m benchmarks.onednn_ab --model=resnet18 --method=pgd_at --attack_steps=2 --rounds=6
    python -m benchmarks.onednn_ab --model=small_cnn --method=pgd_at --rounds=10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(config: dict) -> None:
    """Builds the case, takes one step, prints ``ready``, then times one step per stdin line."""
    import numpy as np
    from absl import flags

    from benchmarks import throughput

    fv = flags.FlagValues()
    throughput.define_flags(fv)
    fv(["onednn_ab"])
    a = throughput.flag_values(fv)
    a.update(model=config["model"], batch_size=config["batch_size"], attack_steps=config["attack_steps"])
    from ardir_tf import train

    a["options"] = train.parse_options("")
    info = throughput._resolve_dataset(a["model"], "")
    a["flops"] = lambda model: 0  # not needed here
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4 * a["batch_size"], *info.input_shape), dtype=np.uint8)
    y = rng.integers(0, info.num_classes, size=len(x)).astype(np.int32)
    case = throughput._build_train_case(config["method"], "float32", False, info, x, y, a)
    case.run()
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        case.run()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


def _start(config: dict, onednn: str) -> subprocess.Popen:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.onednn_ab", "--worker", json.dumps(config)], cwd=ROOT,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"the worker with TF_ENABLE_ONEDNN_OPTS={onednn} failed to start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--method", default="pgd_at")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    config = {"model": args.model, "method": args.method, "batch_size": args.batch_size,
              "attack_steps": args.attack_steps}
    procs = {"0": _start(config, "0"), "1": _start(config, "1")}
    times: dict[str, list[float]] = {"0": [], "1": []}
    try:
        for r in range(args.rounds):
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
    print(f"{args.model} {args.method} batch {args.batch_size} PGD-{args.attack_steps}: median step oneDNN off {off:.2f} s, "
          f"on {on:.2f} s: {off / on:.2f}x faster with oneDNN (median per-round ratio {paired:.2f}x); "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
