"""``nbface run``: execute one notebook with papermill at a preset and write its reports.

    nbface run 01_arcface_margins --preset smoke
    nbface run notebooks/01_arcface_margins.ipynb --preset cpu -p seeds "[0, 1, 2]" -p steps 300

Parameters injected into the cell tagged ``parameters``: the notebook's entry in
``nbfacelib/presets.yaml`` at the preset, then each ``-p NAME VALUE`` (VALUE read as YAML:
``3`` int, ``0.1`` / ``1e-3`` float, ``true`` bool, ``[0, 1]`` list, anything else a string),
then ``preset``. Writes REPORTS/<preset>/: NAME.ipynb (executed), NAME.html, metrics.json,
index.html. Exit code 0 only if the notebook ran and its recorded metrics are inside the
bounds of ``<notebook dir>/bounds.yaml``.
"""

from __future__ import annotations

import argparse
import sys


def add_common(p: argparse.ArgumentParser, preset_default: str) -> None:
    p.add_argument(
        "--preset",
        default=preset_default,
        help="size of the run: smoke, cpu, gpu, paper or auto (gpu if CUDA, else cpu); "
        f"default: {preset_default}",
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        default=[],
        help="override a notebook parameter (VALUE parsed as YAML); repeatable",
    )
    p.add_argument(
        "--out",
        default="reports",
        help="folder the HTML reports and metrics go to, one sub-folder per preset (default: reports)",
    )
    p.add_argument(
        "--bounds",
        default=None,
        help="YAML file of metric bounds per preset (default: <notebook dir>/bounds.yaml)",
    )
    p.add_argument("--presets-file", default=None, help=argparse.SUPPRESS)  # tests
    p.add_argument(
        "--cell-timeout", type=float, default=None, help="seconds allowed per cell (default: no limit)"
    )


def overrides(pairs: list[list[str]]) -> dict:
    from nbfacelib.presets import typed_value

    return {name: typed_value(value) for name, value in pairs}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="execute one notebook at a preset (papermill) and render its report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("notebook", help="notebook path, or its name in ./notebooks (e.g. 01_arcface_margins)")
    add_common(p, "auto")
    p.add_argument("--log-output", action="store_true", help="stream the cells' output to the terminal")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress while it runs")
    p.set_defaults(func=run)


def run(args) -> int:
    from nbfacelib.report.progress import NotebookProgress
    from nbfacelib.report.runner import describe, resolve_notebook, run_notebook

    notebook = resolve_notebook(args.notebook)
    # --log-output prints the cells' output itself: a progress line would interleave with it
    progress = None if (args.no_progress or args.log_output) else NotebookProgress(notebook.stem)
    try:
        entry = run_notebook(
            notebook,
            args.preset,
            overrides(args.parameter),
            args.out,
            presets_file=args.presets_file,
            bounds_file=args.bounds,
            cell_timeout=args.cell_timeout,
            log_output=args.log_output,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    print(describe(notebook.stem, entry), file=sys.stderr)
    print(f"report: {args.out}/{entry['preset']}/{entry.get('report') or '(none)'}", file=sys.stderr)
    return 0 if entry["status"] == "ok" else 1
