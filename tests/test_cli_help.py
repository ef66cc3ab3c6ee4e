"""Every flag of every ``nbface`` sub-command says what it does (not just its own name)."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from nbfacelib.cli import build_parser

# Hidden on purpose: test hooks, not options for users.
HIDDEN = {("train", "inject_nan_steps"), ("run", "presets_file"), ("reproduce", "presets_file")}
FILLER = {"a", "an", "the", "of", "to", "in", "on", "or", "and", "default", "e", "g"}


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def help_problem(action: argparse.Action) -> str | None:
    """Why ``action``'s help is not help, or None: missing, or nothing beyond the flag's own
    words (``--lr``: "lr", ``--no-progress``: "no progress bar")."""
    if not action.help:
        return "no help"
    own = set(_words(" ".join([action.dest, *action.option_strings, str(action.metavar or "")])))
    rest = [w for w in _words(action.help) if w not in own and w not in FILLER]
    return None if len(rest) >= 3 else f"help {action.help!r} only repeats the flag"


def test_every_flag_of_every_subcommand_has_real_help():
    actions = list(_actions(build_parser()))
    commands = {path[0] for path, _ in actions if path}
    assert {"train", "eval", "pairs", "data", "synth", "run", "reproduce", "export"} <= commands
    bad = []
    for path, action in actions:
        name = " ".join(["nbface", *path, (action.option_strings or [action.dest])[-1]])
        if action.help == argparse.SUPPRESS:
            if (path[0], action.dest) not in HIDDEN:
                bad.append(f"{name}: hidden")
            continue
        problem = help_problem(action)
        if problem:
            bad.append(f"{name}: {problem}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("text", [None, "", "lr", "learning rate lr", "no progress bar"])
def test_echo_only_help_is_caught(text):
    flag = "--no-progress" if "progress" in (text or "") else "--lr"
    action = argparse.ArgumentParser().add_argument(flag, help=text)
    assert help_problem(action) is not None
    action.help = "peak learning rate after the warm-up"
    assert help_problem(action) is None


def test_every_train_config_field_is_described_where_it_is_defined():
    from nbfacelib.train.config import TrainConfig, field_help

    described = field_help()
    for f in dataclasses.fields(TrainConfig):
        assert len(_words(described.get(f.name, ""))) >= 3, f"TrainConfig.{f.name}: describe it in a comment"
