"""Figures of notebook 08 (TopoFR): persistence diagrams, feature counts vs sample count,
discrepancy histograms and trends, training curves, the GUM posterior, and the interactive
diagram explorer. Inputs are plain data (rows, arrays, tensors); each function returns a
matplotlib figure and never calls ``show``. viz never imports an experiment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DIM_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, 0.0
    from scipy import stats

    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def diagram_axes(ax, diagrams: Sequence[np.ndarray], cap: float | None = None, title: str = "") -> None:
    """Draw persistence diagrams (one array per dimension) on ``ax``; infinite or capped deaths
    are drawn on a dashed line at ``cap``."""
    finite = [d[np.isfinite(d[:, 1]), 1] for d in diagrams if len(d)]
    top = cap if cap is not None else max([float(f.max()) for f in finite if len(f)] + [1e-9])
    for k, d in enumerate(diagrams):
        if not len(d):
            continue
        deaths = np.where(np.isfinite(d[:, 1]), d[:, 1], top)
        ax.scatter(
            d[:, 0],
            np.minimum(deaths, top),
            s=10,
            alpha=0.7,
            color=DIM_COLOURS[k % 4],
            label=f"H{k} ({len(d)})",
        )
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.axhline(top, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("birth")
    ax.set_ylabel("death")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")


def diagrams_figure(diagrams: Mapping[int, Sequence[np.ndarray]], cap: float):
    """One persistence diagram (H0..Hk) per sample count n, filtration stopped at ``cap``."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(diagrams), figsize=(3.4 * len(diagrams), 3.4), squeeze=False)
    for ax, (n, dg) in zip(axes[0], diagrams.items(), strict=True):
        diagram_axes(ax, dg, cap, f"n = {n}")
    fig.tight_layout()
    return fig


def topology_counts_figure(rows: Sequence[Mapping[str, Any]], dims: Sequence[int] = (1, 2)):
    """Number and total persistence of H_k features vs sample count n."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for k in dims:
        sel = sorted((r for r in rows if r["dim"] == k), key=lambda r: r["n"])
        ns = [r["n"] for r in sel]
        a.plot(ns, [r["count"] for r in sel], "o-", color=DIM_COLOURS[k % 4], label=f"H{k}")
        b.plot(ns, [r["total_persistence"] for r in sel], "o-", color=DIM_COLOURS[k % 4], label=f"H{k}")
    for ax, what in ((a, "number of features"), (b, "total persistence")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sample count n")
        ax.set_ylabel(what)
        ax.legend()
    fig.tight_layout()
    return fig


def discrepancy_figure(
    rows: Sequence[Mapping[str, Any]], by: str, value: str = "discrepancy", xlabel: str = ""
):
    """Histograms of ``value`` per group ``by`` (left) and the mean with its 95% t-interval (right)."""
    plt = _plt()
    groups = sorted({r[by] for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    means, halves = [], []
    for i, g in enumerate(groups):
        vals = np.array([r[value] for r in rows if r[by] == g], dtype=float)
        a.hist(vals, bins=12, alpha=0.5, color=DIM_COLOURS[i % 4] if i < 4 else None, label=f"{by} = {g}")
        m, h = _mean_ci(vals)
        means.append(m)
        halves.append(h)
    a.set_xlabel(value)
    a.set_ylabel("batches")
    a.legend(fontsize=8)
    b.errorbar(groups, means, yerr=halves, fmt="o-", capsize=4)
    b.set_xlabel(xlabel or by)
    b.set_ylabel(f"mean {value} (95% interval)")
    fig.tight_layout()
    return fig


def curves_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], ylabel: str = "ISA loss (training batches)"
):
    """Logged training curves, one line per name (log scale)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (name, (steps, values)) in enumerate(curves.items()):
        if len(steps):
            ax.plot(steps, values, color=DIM_COLOURS[i % 4], alpha=0.8, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def posterior_figure(hard: np.ndarray, misclassified: np.ndarray, auc: float):
    """Distribution of the GUM hard posterior h for correctly vs wrongly classified samples."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 21)
    ax.hist(
        hard[~misclassified], bins=bins, alpha=0.6, density=True, label=f"correct ({(~misclassified).sum()})"
    )
    ax.hist(
        hard[misclassified],
        bins=bins,
        alpha=0.6,
        density=True,
        label=f"misclassified ({misclassified.sum()})",
    )
    ax.set_xlabel("hard-sample posterior h")
    ax.set_ylabel("density")
    ax.set_title(f"AUC of h as a misclassification detector: {auc:.3f}")
    ax.legend()
    fig.tight_layout()
    return fig


def weights_figure(paper: np.ndarray, official: np.ndarray):
    """SDE sample weights, the paper's vs the official code's, per sample."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.scatter(paper, official, s=8, alpha=0.6)
    top = float(max(paper.max(), official.max(), 1.0))
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("paper: (1 + h) (1 - p_gt)")
    ax.set_ylabel("official: (1 + h') (1 - trunc p_gt)")
    fig.tight_layout()
    return fig


def diagram_explorer(images, embeddings, batch_size: int = 64, seed: int = 0):
    """H0 diagrams of the first ``batch_size`` images of a (seeded) shuffle, in input space and
    in the latent space of their embeddings, each scaled by its mean distance: the figure the
    notebook's batch-size slider redraws."""
    import torch

    from nbfacelib.topology import h0_pairs, input_distances, pairwise_distances

    plt = _plt()
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:batch_size]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, (name, dist) in zip(
        axes,
        [("input", input_distances(images[idx])), ("latent", pairwise_distances(embeddings[idx].float()))],
        strict=True,
    ):
        d = dist.double()
        d = d / (d.sum() / (len(idx) * (len(idx) - 1)))
        diagram_axes(ax, [h0_pairs(d).diagram()], None, f"{name} space, B = {len(idx)} (distances / mean)")
    fig.tight_layout()
    return fig
