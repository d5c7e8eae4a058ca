"""The command-line tools start quietly: no TensorFlow start-up log unless ``--verbose``, real
errors still shown (``ardir_tf.cli.quiet_start``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from ardir_tf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines a new user saw at every start (TensorFlow 2.21, a CPU-only machine with CUDA libraries).
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796138530.150684    5799 port.cc:153] oneDNN custom operations are on. You may see slightly",
    "I0000 00:00:1796138530.151059    5799 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1796138530.203276    5799 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild",
    "E0000 00:00:1796138536.632292    5799 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]
REAL = ["E0000 00:00:1796138536.632292    5799 some_kernel.cc:52] an error that matters",
        "Traceback (most recent call last):"]


def test_filtered_stderr_drops_the_start_up_lines_and_keeps_the_rest(capfd):
    with cli.filtered_stderr():
        os.write(2, "\n".join(NOISE[:3] + REAL[:1] + NOISE[3:] + REAL[1:]).encode() + b"\n")
    assert capfd.readouterr().err.splitlines() == REAL


def test_wants_verbose_reads_the_raw_command_line():
    assert cli.wants_verbose(["--workdir=x", "--verbose"])
    assert cli.wants_verbose(["--verbose=true"]) and not cli.wants_verbose(["--verbose=false"])
    assert not cli.wants_verbose(["--verbose", "--noverbose"]) and not cli.wants_verbose(["--workdir=verbose"])


def test_only_the_projects_tools_start_quietly():
    assert cli.started_tool(["python", "-m", "ardir_tf.train", "--verbose"]) == ("ardir_tf.train", ["--verbose"])
    assert cli.started_tool(["python", "-X", "dev", "-m", "export", "--out=d"]) == ("export", ["--out=d"])
    assert cli.started_tool(["python", "-m", "benchmarks.throughput"]) == ("benchmarks.throughput", [])
    assert cli.started_tool(["python", "-m", "pytest", "-q"]) is None
    assert cli.started_tool(["python", "script.py"]) is None


def _run(*args: str, module: str = "ardir_tf.train") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def _only_the_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_train_starts_quietly_and_still_shows_errors_and_verbose_brings_the_log_back():
    quiet = _run("--no_such_flag=1")  # TensorFlow is imported (train.py imports it) before the flags fail
    assert "no_such_flag" in _only_the_error_line(quiet)
    verbose = _run("--no_such_flag=1", "--verbose")
    assert verbose.returncode == 2 and "no_such_flag" in verbose.stderr
    if platform.machine().lower() in ("x86_64", "amd64"):  # oneDNN is on there, and TensorFlow says so
        assert "oneDNN custom operations are on" in verbose.stderr, verbose.stderr


def test_evaluate_and_export_start_quietly(tmp_path):
    """Both load TensorFlow, then fail on a file that is not a model: one error line, nothing else."""
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    line = _only_the_error_line(_run(f"--model={bad}", module="ardir_tf.evaluate"))
    assert "not a loadable .keras model" in line
    line = _only_the_error_line(_run(f"--model={bad}", f"--out={tmp_path / 'out'}", module="export"))
    assert "not a loadable .keras model" in line
