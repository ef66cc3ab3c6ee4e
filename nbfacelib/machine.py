"""What machine a measurement ran on: one line for benchmarks and run logs (BENCHMARKS.md asks
every number to name its machine)."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable


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
