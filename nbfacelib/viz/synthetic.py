"""Figures of notebook 00 (the synthetic faces): faces side by side, the contact sheet, the
quality distribution and its factors, the raw-pixel calibration by quality tercile. Each
function takes plain data (what :mod:`nbfacelib.experiments.synthetic_faces` computes) and
returns a matplotlib figure (it never calls ``show``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _show(ax, image) -> None:
    ax.imshow(np.asarray(image).transpose(1, 2, 0) if np.asarray(image).shape[0] == 3 else image)
    ax.set_xticks([])
    ax.set_yticks([])


def faces_figure(faces: Mapping[str, tuple[Any, float]], title: str = ""):
    """One face per entry: {label: (uint8 (3, S, S) image, quality)}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(faces), figsize=(2.6 * len(faces), 2.9), squeeze=False)
    for ax, (label, (img, q)) in zip(axes[0], faces.items()):
        _show(ax, img.numpy() if hasattr(img, "numpy") else img)
        ax.set_title(f"{label}: quality {q:.2f}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def contact_sheet_figure(sheet: Mapping[str, Any]):
    """Rows = identities, columns = samples; each tile captioned with quality, yaw and the
    occluder (and grey / shadow for the shaded styles)."""
    import matplotlib.pyplot as plt

    rows, cols = sheet["rows"], sheet["cols"]
    images, n = sheet["images"], sheet["nuisances"]
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.6 * rows), squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        _show(ax, images[k].numpy())
        bits = [f"q{n['quality'][k]:.2f} y{n['yaw'][k]:+.0f}"]
        if n["occluder"][k] > 0:
            bits.append(f"occ{100 * n['occluded'][k]:.0f}%")
        if "shadow_fraction" in n and n["shadow_fraction"][k] > 0.01:
            bits.append(f"sh{100 * n['shadow_fraction'][k]:.0f}%")
        ax.set_xlabel(" ".join(bits), fontsize=6.5)
        if k % cols == 0:
            ident = sheet["identities"][k // cols]
            twin = " (twin)" if ident in sheet["twin"] else ""
            ax.set_ylabel(f"id {ident}{twin}", fontsize=7)
    fig.suptitle(f"style {sheet['style']}: {rows} identities x {cols} samples", fontsize=10)
    fig.tight_layout()
    return fig


def quality_figure(quality: Mapping[str, np.ndarray], factors: Mapping[str, np.ndarray]):
    """Left: the ground-truth quality's histogram per style. Right: the mean of each factor of
    the formula (1 = no cost) for the first style, the factors that cost most at the top."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    bins = np.linspace(0, 1, 41)
    for style, q in quality.items():
        a1.hist(q, bins=bins, alpha=0.55, label=f"{style} (median {np.median(q):.2f})")
    a1.set_xlabel("ground-truth quality")
    a1.set_ylabel("images")
    a1.legend()
    names = sorted(factors, key=lambda k: -float(np.mean(factors[k])))
    a2.barh(names, [1 - float(np.mean(factors[k])) for k in names], color="#d62728")
    a2.set_xlabel("mean cost 1 - factor (0: no cost)")
    a2.set_title("what lowers quality", fontsize=10)
    fig.tight_layout()
    return fig


def calibration_figure(calibrations: Mapping[str, Mapping[str, Any]]):
    """Raw-pixel (eigenfaces) accuracy by pair-quality tercile, one group of bars per style."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / max(1, len(calibrations))
    for i, (style, cal) in enumerate(calibrations.items()):
        x = np.arange(3) + i * width
        ax.bar(x, cal["tercile_accuracy"], width, label=f"{style}: all pairs {cal['accuracy']:.3f}")
    ax.set_xticks(np.arange(3) + width * (len(calibrations) - 1) / 2, ["low", "mid", "high"])
    ax.set_xlabel("pair-quality tercile")
    ax.set_ylabel("raw-pixel accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.axhspan(0.6, 0.75, color="#2ca02c", alpha=0.08, label="target 60-75% (all pairs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
