"""``nbface reproduce``: run the notebooks at a preset and render the reports.

    nbface reproduce                      # preset auto: gpu if CUDA is available, else cpu
    nbface reproduce --preset smoke --only 01,02_facenet_swin_triplet
    nbface reproduce --jobs 4 --gpus 0,1,2,3   # four notebooks at once, one GPU each
    nbface reproduce --skip 08 --resume   # rerun only what changed since the last run

Notebooks are chosen by name or by number (``03`` = the notebook whose name starts with 03).
Each notebook shows the cell it is running out of the total, the elapsed time and its own
progress bars (redrawn in place on a terminal; plain lines when the output goes to a file).
With ``--jobs N`` notebooks run N at a time, each in its own kernel and files; on a CPU the
threads are divided between the jobs, with ``--gpus`` job k runs on GPU k (mod the list).
``--resume`` skips a notebook whose last report is ok and was made with the same parameters,
notebook file and code version. A notebook that fails (or records metrics outside
``notebooks/bounds.yaml``) is reported with its failing cell and error; the others still run;
the exit code is then 1. Reports go to REPORTS/<preset>/ (index.html and metrics.json,
written once at the end; one .ipynb and .html per notebook).
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
    p.add_argument("--only", default=None, help="comma-separated notebook names or numbers (default: all)")
    p.add_argument("--skip", default=None, help="comma-separated notebook names or numbers to leave out")
    p.add_argument(
        "--jobs", type=int, default=None, help="notebooks run at once (default: 1, or one per --gpus)"
    )
    p.add_argument(
        "--gpus", default=None, help="comma-separated GPU ids; job k gets CUDA_VISIBLE_DEVICES=id k"
    )
    p.add_argument("--resume", action="store_true", help="skip notebooks whose report is up to date")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress, one line per notebook")
    p.add_argument(
        "--notebooks", default=None, help="folder holding the .ipynb files to run (default: ./notebooks)"
    )
    p.set_defaults(func=reproduce)


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def reproduce(args) -> int:
    from nbfacelib.report.runner import reproduce as run_all

    gpus = _names(args.gpus)
    jobs = args.jobs if args.jobs is not None else (len(gpus) if gpus else 1)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    code, _ = run_all(
        args.preset,
        _names(args.only),
        args.out,
        skip=_names(args.skip),
        jobs=jobs,
        gpus=gpus,
        resume=args.resume,
        notebooks_dir=args.notebooks,
        presets_file=args.presets_file,
        bounds_file=args.bounds,
        overrides=overrides(args.parameter),
        cell_timeout=args.cell_timeout,
        progress=not args.no_progress,
    )
    return code
