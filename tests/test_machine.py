"""nbfacelib.machine.keep_freed_memory: freed blocks reused instead of refaulted (glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

from nbfacelib.machine import KEEP_FREED_BYTES, MALLOC_ENV_VARS, keep_freed_memory_env

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# 40 allocations of 64 MiB, each written and freed: above glibc's 32 MiB ceiling of the mmap
# threshold, so by default each one is fresh pages from the kernel (16,384 faults apiece).
# torch, not numpy: numpy asks for huge pages (madvise), which hides the faults
_CHURN = """
import resource, sys
import torch
from nbfacelib.machine import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(1 << 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    a = torch.ones(1 << 24)
    del a
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.fixture(scope="module")
def default_faults() -> int:
    return _churn("default")[1]


def test_freed_memory_is_reused_not_refaulted(default_faults):
    kept, kept_faults = _churn("keep")
    assert kept == "True"
    assert default_faults > 40 * 16_000  # the premise: every 64 MiB block faults in anew
    assert kept_faults < default_faults / 4  # the first blocks' pages, then reuse


def test_the_environment_gives_a_new_process_the_same_and_the_users_setting_stands(default_faults):
    env = keep_freed_memory_env()
    kept = str(KEEP_FREED_BYTES)
    assert env == {"MALLOC_MMAP_THRESHOLD_": kept, "MALLOC_TRIM_THRESHOLD_": kept}
    _, faults = _churn("default", **env)
    assert faults < default_faults / 4
    # a user's own MALLOC_MMAP_THRESHOLD_ is left alone: keep_freed_memory() declines
    kept, faults = _churn("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert kept == "False" and faults > 40 * 16_000


def test_either_variable_counts_as_the_users_setting(monkeypatch):
    from nbfacelib.machine import malloc_set_by_environment

    for name in MALLOC_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not malloc_set_by_environment()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert malloc_set_by_environment()
