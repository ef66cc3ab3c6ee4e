"""Where a report comes from: package version and git commit, a hash of the code, the preset and
its parameters (with the ``-p`` overrides), the machine, the wall time and the seeds.

``runner.run_notebook`` stores this as the ``provenance`` of each metrics.json entry, and
``html.notebook_to_html`` prints it at the top of the report, so that two reports can be told
apart. :func:`code_version` (a hash of the package's source files) is what ``reproduce
--resume`` compares to decide that a report is up to date: it changes with any edit, committed
or not, and needs no git.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex digits) over the package's ``.py`` and ``.yaml`` files (path + bytes)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts and path.is_file():
            h.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """``<commit>`` of the source checkout, ``+dirty`` if tracked files differ from it;
    ``"not a git checkout"`` for an installed package."""
    root = PACKAGE_DIR.parent
    if not (root / ".git").exists():
        return "not a git checkout"
    commit = _run(["git", "rev-parse", "HEAD"], root)
    if not commit:
        return "unknown (git failed)"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    return commit + ("+dirty" if dirty else "")


def package_version() -> str:
    import nbfacelib

    return getattr(nbfacelib, "__version__", "unknown")


def cpu_model() -> str:
    from nbfacelib.machine import cpu_model as model

    return f"{model()} ({os.cpu_count()} cores)"


@functools.lru_cache(maxsize=1)
def _gpus() -> dict[str, str]:
    """GPU index -> model, from ``nvidia-smi`` (no torch import in the runner); {} if none."""
    out = _run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"])
    gpus = {}
    for line in (out or "").splitlines():
        index, _, name = line.partition(",")
        if name.strip():
            gpus[index.strip()] = name.strip()
    return gpus


def gpu_model(visible: str | None = None) -> str:
    """The model of the GPU(s) a kernel with ``CUDA_VISIBLE_DEVICES=visible`` sees ("none")."""
    gpus = _gpus()
    if not gpus:
        return "none"
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        seen = [f"GPU {i}: {gpus[i]}" for i in ids if i in gpus]
        return "; ".join(seen) or "none"
    return "; ".join(f"GPU {i}: {name}" for i, name in gpus.items())


def seeds_of(parameters: dict[str, Any]) -> list[Any]:
    """The run's seeds: the ``seeds`` parameter, else ``[seed]``, else []."""
    if "seeds" in parameters:
        seeds = parameters["seeds"]
        return list(seeds) if isinstance(seeds, list | tuple) else [seeds]
    return [parameters["seed"]] if "seed" in parameters else []


def provenance(
    *,
    preset: str,
    parameters: dict[str, Any],
    overrides: dict[str, Any] | None,
    seconds: float | None,
    started: str,
    kernel_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    visible = (kernel_env or {}).get("CUDA_VISIBLE_DEVICES")
    return {
        "package": f"nbfacelib {package_version()}",
        "git_commit": git_commit(),
        "code_version": code_version(),
        "preset": preset,
        "parameters": parameters,
        "overrides": dict(overrides or {}),
        "cpu": cpu_model(),
        "gpu": gpu_model(visible),
        "python": f"{sys.version.split()[0]} on {platform.system()} {platform.machine()}",
        "started": started,
        "wall_seconds": seconds,
        "seeds": seeds_of(parameters),
    }
