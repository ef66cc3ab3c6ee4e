"""Wall time of one notebook at a preset, two checkouts side by side (e.g. before/after a rewrite).

    python benchmarks/notebook_wall_time.py --before main --notebook 01_arcface_margins \\
        --preset smoke --rounds 2

``--before REF`` is a git ref of this repository, extracted with ``git archive`` into a
scratch folder; "after" is this working tree. The two run ALTERNATELY (before, after, before,
after, ...), each through ``nbface run`` in a fresh process whose ``PYTHONPATH`` is that
checkout (so the CLI, the kernel and the notebook are all of that version), so a change of
machine load hits both alike; the script prints each run's time as the runner measured it
(kernel start to last cell), the per-round ratio after / before, and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_once(checkout: Path, notebook: str, preset: str, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "nbfacelib", "run", str(checkout / "notebooks" / f"{notebook}.ipynb")]
    cmd += ["--preset", preset, "--out", str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    metrics = out / preset / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(
            f"{' '.join(cmd)} wrote no metrics.json:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    entry = json.loads(metrics.read_text())[notebook]
    return {"status": entry["status"], "seconds": float(entry["seconds"])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--before", required=True, help="git ref of the 'before' version (e.g. main or a commit id)"
    )
    p.add_argument("--notebook", default="01_arcface_margins", help="notebook name without .ipynb")
    p.add_argument("--preset", default="smoke", help="preset to run both at")
    p.add_argument("--rounds", type=int, default=2, help="before/after pairs to run, alternating")
    args, extra = p.parse_known_args(argv)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; load average at start {load[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nbwall-") as tmp:
        before = extract(args.before, Path(tmp) / "before")
        ratios = []
        for r in range(args.rounds):
            b = run_once(before, args.notebook, args.preset, Path(tmp) / f"b{r}", extra)
            a = run_once(REPO, args.notebook, args.preset, Path(tmp) / f"a{r}", extra)
            ratios.append(a["seconds"] / b["seconds"])
            print(
                f"round {r + 1}: before {b['seconds']:.1f} s ({b['status']}), after {a['seconds']:.1f} s "
                f"({a['status']}), after/before {ratios[-1]:.2f}; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print(f"median after/before over {len(ratios)} rounds: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
