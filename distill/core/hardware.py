"""What a benchmark ran on: CPU model, ISA flags that matter for int8, threads, library versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16",
             "amx_bf16", "neon", "asimd", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16 / AMX, Arm's BFloat16 extension


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    return model, flags


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (otherwise torch emulates it, slower than fp32)."""
    return any(flag in _cpuinfo()[1] for flag in BF16_FLAGS)


def hardware(threads: int | None = None) -> dict:
    """The `hardware` block of report.json."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "threads": threads or os.cpu_count(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
    }
