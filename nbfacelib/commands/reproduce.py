"""``nbface reproduce``: run every notebook at a preset, in name order, and render the reports.

    nbface reproduce                      # preset auto: gpu if CUDA is available, else cpu
    nbface reproduce --preset smoke --only 01_arcface_margins,02_facenet_swin_triplet

A notebook that fails (or records metrics outside ``notebooks/bounds.yaml``) is reported with
its failing cell and error; the others still run; the exit code is then 1. Reports go to
REPORTS/<preset>/ (index.html, metrics.json, one .ipynb and .html per notebook).
"""

from __future__ import annotations

import argparse

from nbfacelib.commands.run import add_common, overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run all notebooks at a preset and render index.html + metrics.json",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, "auto")
    p.add_argument("--only", default=None, help="comma-separated notebook names to run (default: all)")
    p.add_argument(
        "--notebooks", default=None, help="folder holding the .ipynb files to run (default: ./notebooks)"
    )
    p.set_defaults(func=reproduce)


def reproduce(args) -> int:
    from nbfacelib.report.runner import reproduce as run_all

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    code, _ = run_all(
        args.preset,
        only,
        args.out,
        notebooks_dir=args.notebooks,
        presets_file=args.presets_file,
        bounds_file=args.bounds,
        overrides=overrides(args.parameter),
        cell_timeout=args.cell_timeout,
    )
    return code
