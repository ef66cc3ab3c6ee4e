"""Notebook 02's experiment helpers: the convergence rule and the Swin window layout read from
the model's buffers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbfacelib.experiments import facenet_swin as fs
from nbfacelib.models import build_backbone


def test_convergence_rule():
    steps = np.arange(1, 6, dtype=float)
    c = fs.convergence(steps, np.array([1.0, 0.8, 0.45, 0.3, 0.2]), fraction=0.5)
    assert c["steps_to"] == 3 and c["converged"] == 1 and c["ratio"] == pytest.approx(0.2)
    never = fs.convergence(steps, np.array([1.0, 0.9, 0.95, 0.9, 0.85]), fraction=0.5)
    assert math.isnan(never["steps_to"]) and never["converged"] == 0
    with pytest.raises(ValueError, match="logged no loss"):
        fs.convergence(np.array([]), np.array([]), 0.5)


def test_window_layout_from_the_models_buffers():
    model = build_backbone("swin_face_tiny")
    layout = fs.window_layout(model, stage=0, block=1)
    assert (layout["grid"], layout["window"], layout["shift"]) == (20, 5, 2)
    windows = layout["windows"]
    assert windows.shape == (20, 20) and len(np.unique(windows)) == 16
    assert (windows[:5, :5] == windows[0, 0]).all() and windows[0, 5] != windows[0, 0]
    # after the shift, token (2, 2) starts a window (the roll by -2 moves it to (0, 0))
    shifted = layout["shifted_windows"]
    assert shifted[2, 2] == shifted[6, 6] and shifted[2, 2] != shifted[1, 1]
    # the mask splits only the windows that wrap around the border: 7 of 16 (4 + 4 - 1)
    masked = (layout["attn_mask"] < 0).any(axis=(1, 2))
    assert masked.sum() == 7 and not masked[0]
    # the corner window holds four regions, an inner one a single region
    corner = np.unique(layout["regions"][np.isin(shifted, [15])])
    assert len(corner) == 4
    assert len(np.unique(layout["regions"][shifted == 0])) == 1
    unshifted = fs.window_layout(model, stage=0, block=0)
    assert unshifted["shift"] == 0 and unshifted["attn_mask"] is None


def test_active_fraction_at():
    d_ap, d_an = np.full(100, 0.5), np.full(100, 0.6)
    assert fs.active_fraction_at(d_ap, d_an, 0.05) == {"active": 0.0, "semi_hard": 0.0}
    assert fs.active_fraction_at(d_ap, d_an, 0.2) == {"active": 1.0, "semi_hard": 1.0}
