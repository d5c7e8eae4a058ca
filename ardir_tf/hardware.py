"""What this machine's CPU can do fast, as far as the training precision is concerned.

TensorFlow runs bfloat16 convolutions through oneDNN only on x86 CPUs with AVX-512 (fast with the
AVX-512 BF16 instructions or AMX tiles); elsewhere it falls back to Eigen kernels that emulate
bfloat16, and their convolution gradients ran about 30x slower than float32 on a 2-core AVX2 CPU
(BUILD.md, "Speed"). :func:`precision_warning` says so before a run is started that way.
"""

from __future__ import annotations

import os
import platform
from typing import Optional

_CPUINFO = "/proc/cpuinfo"


def _cpuinfo(field: str) -> Optional[str]:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (``None`` where there is none)."""
    try:
        with open(_CPUINFO) as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` where ``/proc/cpuinfo`` is missing)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def onednn_bfloat16() -> Optional[bool]:
    """Whether TensorFlow's oneDNN kernels take bfloat16 here (x86 with AVX-512); ``None``: unknown
    (not x86, or no ``/proc/cpuinfo``)."""
    flags = cpu_flags()
    if not _x86() or not flags:
        return None
    return "avx512f" in flags


def fast_bfloat16() -> Optional[bool]:
    """Whether the CPU has bfloat16 arithmetic units (AVX-512 BF16 or AMX); ``None``: unknown."""
    flags = cpu_flags()
    if not _x86() or not flags:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags) and "avx512f" in flags


def summary() -> dict:
    """CPU model, cores, the relevant flags and the oneDNN setting, for benchmark records."""
    flags = cpu_flags()
    relevant = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": relevant,
            "onednn_bfloat16": onednn_bfloat16(), "fast_bfloat16": fast_bfloat16(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


def precision_warning(precision: str, accelerators: int = 0) -> Optional[str]:
    """A one-line warning when ``precision`` will run emulated and slowly on this CPU (``None``
    when fine or unknown). ``accelerators``: GPUs/TPUs visible (then the CPU does not matter)."""
    if precision != "mixed_bfloat16" or accelerators:
        return None
    if onednn_bfloat16() is False:
        return (f"mixed_bfloat16 on this CPU ({cpu_model()}, no AVX-512) runs on emulated bfloat16 kernels, "
                "far slower than float32 (BUILD.md, 'Speed'); use --precision=float32 here")
    return None
