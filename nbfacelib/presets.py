"""Presets: the one loader of ``nbfacelib/presets.yaml`` and the one ``auto`` rule.

The file has two blocks::

    train:                         # TrainConfig defaults of `nbface train --preset NAME`
      smoke: {backbone: ir_tiny, steps: 30, ...}
    notebooks:
      01_arcface_margins:          # notebook file name without .ipynb
        smoke: {steps: 30, seeds: [0]}
        cpu:   {steps: 600, seeds: [0, 1, 2]}

``auto`` (:func:`resolve_preset`) is ``gpu`` where CUDA is available, else ``cpu``, for the
training presets and the notebook presets alike. The runner injects ``preset`` plus a
notebook's values (then ``-p`` overrides) into the notebook's cell tagged ``parameters``. A
notebook with no entry runs with its own defaults and only ``preset`` injected; a notebook
with an entry that lacks the requested preset is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("smoke", "cpu", "gpu", "paper")
PRESETS_FILE = Path(__file__).resolve().parent / "presets.yaml"

# PyYAML follows YAML 1.1, where "1e-3" (no dot) is a string: take it as the float it means.
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_preset(preset: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``; other names are checked."""
    if preset == "auto":
        return "gpu" if cuda_available() else "cpu"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of auto, {', '.join(PRESETS)}")
    return preset


def typed_value(text: str) -> Any:
    """A ``-p name value`` string as YAML would read it (``3`` -> int, ``[0,1]`` -> list, ...)."""
    value = yaml.safe_load(text) if text.strip() else text
    return _fix_floats(value)


def _fix_floats(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT_WITHOUT_DOT.match(value):
        return float(value)
    if isinstance(value, list):
        return [_fix_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _fix_floats(v) for k, v in value.items()}
    return value


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (an empty file: ``{}``); a syntax error is a ValueError
    naming the file. Shared by the presets and the bounds files."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc


def load_train_presets(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The ``train:`` block of a presets file: {preset: {TrainConfig field: value}}."""
    path = Path(path) if path is not None else PRESETS_FILE
    data = read_yaml(path)
    block = data.get("train") or {} if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise ValueError(f"{path}: 'train' must be a mapping of preset -> TrainConfig fields")
    return {name: {k: _fix_floats(v) for k, v in (values or {}).items()} for name, values in block.items()}


def train_preset(name: str, path: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """(resolved name, TrainConfig values) of training preset ``name`` (``auto`` resolved)."""
    name = resolve_preset(name) if name == "auto" else name
    presets = load_train_presets(path)
    if name not in presets:
        raise ValueError(
            f"unknown train preset {name!r} in {path or PRESETS_FILE}; known: {', '.join(presets)}"
        )
    return name, presets[name]


def load_notebook_presets(path: str | Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``notebooks:`` mapping of a presets file, checked for shape (errors name the file)."""
    path = Path(path) if path is not None else PRESETS_FILE
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    block = data.get("notebooks") or {}
    if not isinstance(block, dict):
        raise ValueError(f"{path}: 'notebooks' must be a mapping of notebook name -> presets")
    for name, presets in block.items():
        if not isinstance(presets, dict):
            raise ValueError(f"{path}: notebooks.{name} must be a mapping of preset -> parameters")
        for preset, params in presets.items():
            if preset not in PRESETS:
                raise ValueError(
                    f"{path}: notebooks.{name}.{preset}: unknown preset; use {', '.join(PRESETS)}"
                )
            if not isinstance(params, dict):
                raise ValueError(f"{path}: notebooks.{name}.{preset} must be a mapping of parameters")
            if "preset" in params:
                raise ValueError(f"{path}: notebooks.{name}.{preset}: 'preset' is set by the runner")
    return block


def notebook_parameters(notebook: str, preset: str, path: str | Path | None = None) -> dict[str, Any]:
    """Parameters of ``notebook`` (name without .ipynb) at ``preset`` (``auto`` resolved),
    including ``preset`` itself. In JupyterLab, to run a notebook at another preset by hand:
    ``globals().update(notebook_parameters("01_arcface_margins", "cpu"))``."""
    preset = resolve_preset(preset)
    block = load_notebook_presets(path)
    if notebook not in block:
        return {"preset": preset}
    entry = block[notebook]
    if preset not in entry:
        where = path or PRESETS_FILE
        raise ValueError(
            f"{where}: notebooks.{notebook} has no preset {preset!r} (it has: {', '.join(entry) or 'none'})"
        )
    params = {k: _fix_floats(v) for k, v in (entry[preset] or {}).items()}
    params["preset"] = preset
    return params
