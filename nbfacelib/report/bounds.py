"""Regression bounds on recorded metrics: ``notebooks/bounds.yaml``.

Format (per notebook, per preset, per metric; ``min`` and/or ``max``, inclusive)::

    01_arcface_margins:
      smoke:
        final_accuracy_synthetic: {min: 0.6}
        c13_max_abs_error: {max: 1.0e-6}

A bounded metric that the notebook did not record, or recorded as null (NaN / inf) or as a
non-number, violates its bound: a notebook that silently stops learning (or stops recording)
fails CI instead of passing unnoticed.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from nbfacelib.presets import PRESETS, read_yaml

Bounds = dict[str, dict[str, float]]  # metric -> {"min": x, "max": y}


def load_bounds(path: str | Path) -> dict[str, dict[str, Bounds]]:
    """Read and check a bounds file; a missing file means no bounds. Errors name the entry."""
    path = Path(path)
    if not path.exists():
        return {}
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping notebook -> preset -> metric -> {{min, max}}")
    for nb, presets in data.items():
        if not isinstance(presets, dict):
            raise ValueError(f"{path}: {nb}: expected a mapping preset -> metric bounds")
        for preset, metrics in presets.items():
            if preset not in PRESETS:
                raise ValueError(f"{path}: {nb}.{preset}: unknown preset; use {', '.join(PRESETS)}")
            if not isinstance(metrics, dict):
                raise ValueError(f"{path}: {nb}.{preset}: expected a mapping metric -> {{min, max}}")
            for metric, bound in metrics.items():
                where = f"{path}: {nb}.{preset}.{metric}"
                if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"}:
                    raise ValueError(f"{where}: expected {{min: x}}, {{max: y}} or {{min: x, max: y}}")
                for key, val in bound.items():
                    if isinstance(val, bool) or not isinstance(val, numbers.Real):
                        raise ValueError(f"{where}.{key}: expected a number, got {val!r}")
                if "min" in bound and "max" in bound and bound["min"] > bound["max"]:
                    raise ValueError(f"{where}: min {bound['min']} > max {bound['max']}")
    return data


def bounds_for(bounds: dict[str, dict[str, Bounds]], notebook: str, preset: str) -> Bounds:
    return dict((bounds.get(notebook) or {}).get(preset) or {})


def check_bounds(metrics: dict[str, Any], bounds: Bounds) -> list[str]:
    """Reasons why ``metrics`` violate ``bounds`` (empty list: within bounds)."""
    reasons = []
    for name, bound in bounds.items():
        want = " and ".join(f"{'>=' if k == 'min' else '<='} {v:g}" for k, v in sorted(bound.items()))
        if name not in metrics:
            reasons.append(f"{name} not recorded (bound: {want})")
            continue
        value = metrics[name]
        if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
            reasons.append(f"{name} = {value!r} is not a finite number (bound: {want})")
            continue
        if not math.isfinite(value):
            reasons.append(f"{name} = {value} is not finite (bound: {want})")
        elif "min" in bound and value < bound["min"]:
            reasons.append(f"{name} = {value:.6g} < min {bound['min']:g}")
        elif "max" in bound and value > bound["max"]:
            reasons.append(f"{name} = {value:.6g} > max {bound['max']:g}")
    return reasons
