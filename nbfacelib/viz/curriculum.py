"""Figures of notebook 06 (CurricularFace and VarGFaceNet distillation): the t curve and the
negative-logit histograms of one probe batch at several checkpoints. Inputs are plain data;
each function returns a matplotlib figure and never calls ``show``. viz never imports an
experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def t_curve_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], marks: Sequence[int] = ()):
    """CurricularFace's t per logged step, one line per run; dashed lines at ``marks`` (the
    checkpoints whose probe histograms follow)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for label, (steps, t) in curves.items():
        ax.plot(steps, t, label=label)
    for k in marks:
        ax.axvline(k, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("t (EMA of the mean target cosine)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def negatives_figure(rows: Sequence[Mapping[str, Any]]):
    """One panel per checkpoint: histogram of the probe batch's negative logits after the
    curriculum (cos for easy negatives, cos (t + cos) for hard ones), the hard ones stacked
    in red; the title gives t, the fraction of hard negatives and their mean weight t + cos."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    lo = min(float(np.min(r["modulated"])) for r in rows)
    hi = max(float(np.max(r["modulated"])) for r in rows)
    bins = np.linspace(lo, hi, 50)
    for ax, r in zip(axes, rows, strict=True):
        mod, hard = np.asarray(r["modulated"]), np.asarray(r["hard"], bool)
        ax.hist(
            [mod[~hard], mod[hard]],
            bins=bins,
            stacked=True,
            color=["#1f77b4", "#d62728"],
            label=["easy: cos", "hard: cos (t + cos)"],
        )
        ax.set_yscale("log")
        ax.set_title(
            f"step {r['step']}: t = {r['t']:.3f}\n"
            f"hard {r['hard_fraction']:.2%}, weight {r['hard_weight']:.3f}",
            fontsize=9,
        )
        ax.set_xlabel("negative logit / s")
    axes[0].set_ylabel("negatives of the probe batch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
