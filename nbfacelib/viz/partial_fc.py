"""Figures of notebook 03 (Partial FC and F2C at scale): the classifier's memory against the
number of identities, the sampling-rate sweep as ratios to r = 1, and the identities that fit a
memory budget. Inputs are plain data (rows of dicts, mappings); each function returns a
matplotlib figure and never calls ``show``. viz never imports an experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nbfacelib.viz.results import colour


def _plt():
    import matplotlib.pyplot as plt

    return plt


def memory_figure(rows: Sequence[Mapping[str, Any]], budget_mib: float | None = None):
    """Classifier memory (MiB, log) against the number of identities (log), one line per
    ``method`` (rows ``{classes, method, MiB}``); ``budget_mib`` draws the budget line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, m in enumerate(methods):
        pts = sorted((r["classes"], r["MiB"]) for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colour(m, i), label=m)
    if budget_mib is not None:
        ax.axhline(budget_mib, color="grey", ls="--", lw=1, label=f"budget {budget_mib:,.0f} MiB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("identities (classes)")
    ax.set_ylabel("classifier memory per step (MiB)")
    ax.set_title("Classifier memory vs identities")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ratio_figure(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], x: str = "sample_rate"):
    """The sweep as ratios to r = 1: one panel per entry of ``columns`` (row key -> panel
    title), ``x`` on a log axis; a dashed line at 1."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.4), squeeze=False)
    pts = sorted(rows, key=lambda r: r[x])
    for ax, (key, title) in zip(axes[0], columns.items(), strict=True):
        xs = [r[x] for r in pts if r.get(key) is not None]
        ys = [r[key] for r in pts if r.get(key) is not None]
        ax.plot(xs, ys, "o-", color="#d62728")
        ax.axhline(1.0, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs], fontsize=8)
        ax.set_xlabel("sample rate r")
        ax.set_title(title, fontsize=10)
    axes[0][0].set_ylabel("ratio to r = 1")
    fig.tight_layout()
    return fig


def fit_figure(fits: Mapping[str, int], budget_gib: float):
    """Identities whose classifier fits in ``budget_gib`` GiB, one bar per method (log)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(fits)
    values = [max(int(fits[n]), 1) for n in names]
    bars = ax.barh(names, values, color=[colour(n, i) for i, n in enumerate(names)])
    for bar, n in zip(bars, names, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {fits[n]:,}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("identities that fit")
    ax.set_title(f"Identities whose classifier fits in {budget_gib:g} GiB")
    fig.tight_layout()
    return fig
