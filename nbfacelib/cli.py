"""The ``nbface`` command.

Each sub-command lives in its own module under ``nbfacelib.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returning an exit code). Command modules import heavy libraries inside ``func``
so that ``nbface --help`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nbfacelib.machine import keep_freed_memory

# Order is the order of ``nbface --help``.
COMMAND_MODULES: list[str] = [
    # each helper module adds itself here, e.g. "nbfacelib.commands.synth"
    "nbfacelib.commands.run",
    "nbfacelib.commands.reproduce",
    "nbfacelib.commands.pairs",
    "nbfacelib.commands.train",
    "nbfacelib.commands.eval",
    "nbfacelib.commands.export",
    "nbfacelib.commands.data",
    "nbfacelib.commands.synth",
]


class UserError(Exception):
    """An error caused by bad input; the CLI prints its message without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from nbfacelib import __version__

    parser = argparse.ArgumentParser(prog="nbface", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nbfacelib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # a command is a process of its own: reuse freed tensors (machine.py says why)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"nbface {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
