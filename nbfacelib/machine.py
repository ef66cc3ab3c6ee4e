"""What machine a measurement ran on: one line for benchmarks and run logs (BENCHMARKS.md asks
every number to name its machine)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import time
from collections.abc import Callable

#: Bytes below which freed memory stays in the process for reuse (see :func:`keep_freed_memory`).
KEEP_FREED_BYTES = 1 << 30

#: The variables through which glibc's malloc takes both thresholds from the environment.
MALLOC_ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

# glibc's mallopt() parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine() -> str:
    """CPU model, cores, load, python / numpy / torch versions, torch threads and the GPU."""
    import numpy as np
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU {cpu_model()}, {os.cpu_count()} cores, load average {load:.2f}; python "
        f"{sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); GPU {gpu}"
    )


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` wall-clock runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def malloc_set_by_environment() -> bool:
    """Whether this process's environment already tells glibc's malloc what to keep (either
    variable of :data:`MALLOC_ENV_VARS`): then the user's choice stands, in this process and in
    the ones it starts."""
    return any(name in os.environ for name in MALLOC_ENV_VARS)


def keep_freed_memory_env(threshold: int = KEEP_FREED_BYTES) -> dict[str, str]:
    """The environment that makes glibc's malloc of a new process behave as
    :func:`keep_freed_memory` (glibc reads these variables at start-up; other C libraries
    ignore them)."""
    return {name: str(int(threshold)) for name in MALLOC_ENV_VARS}


def keep_freed_memory(threshold: int = KEEP_FREED_BYTES) -> bool:
    """Make this process's malloc reuse freed blocks below ``threshold`` bytes instead of giving
    them back to the kernel. Returns False (and changes nothing) where the C library is not glibc
    or :func:`malloc_set_by_environment` (the user's choice stands).

    Why: glibc serves every block over its mmap threshold (128 KiB, self-raising to at most
    32 MiB) with fresh pages from the kernel and unmaps them on free. A CPU forward pass at batch
    256 allocates such activations layer after layer, and every page of them faults in anew:
    measured (BENCHMARKS.md, "Freed memory kept"), ir_tiny at 64 px embeds 2.0-2.7x faster and the
    whole cpu suite spent a quarter of its CPU time in the kernel. The cost is a resident size
    that stays at its peak. PyTorch's CPU allocator has no such switch and no well-kept library
    wraps mallopt(3), hence ctypes. ``nbface`` calls this at start-up and gives notebook kernels
    :func:`keep_freed_memory_env`; call it yourself in a JupyterLab session.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if malloc_set_by_environment():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    threshold = int(threshold)
    mmap_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    return mmap_set and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
