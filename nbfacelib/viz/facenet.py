"""Figures of notebook 02 (FaceNet with Swin): the window partition and the shifted-window
attention mask (from a layout the model's own buffers produced), the triplet distance
histograms with the margin, and the convergence table's curve marks. Inputs are plain data;
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


def _boundaries(ax, labels: np.ndarray, colour: str = "black") -> None:
    """Draw lines between neighbouring cells with different labels (token units)."""
    g = labels.shape[0]
    for i in range(g):
        for j in range(g):
            if j + 1 < g and labels[i, j] != labels[i, j + 1]:
                ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color=colour, lw=1.2)
            if i + 1 < g and labels[i, j] != labels[i + 1, j]:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color=colour, lw=1.2)


def _shuffled_colours(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered in a fixed scrambled order, so neighbouring windows get distinct colours."""
    uniq, inv = np.unique(labels, return_inverse=True)
    perm = np.random.default_rng(0).permutation(len(uniq))
    return perm[inv].reshape(labels.shape)


def window_figure(layout: Mapping[str, Any], image: np.ndarray | None = None):
    """Three panels over the token grid of one Swin block: the regular window partition
    (W-MSA), the shifted partition (SW-MSA: the windows after timm's cyclic shift, shown at the
    tokens' own positions), and the sub-regions the attention mask keeps apart inside the
    shifted windows. ``image``: an (H, W, 3) face drawn under the first panel (token = patch
    pixels)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    g, ws, shift = layout["grid"], layout["window"], layout["shift"]
    panels = [
        ("windows", f"W-MSA: {g}x{g} tokens, {ws}x{ws} windows"),
        ("shifted_windows", f"SW-MSA: shift {shift}, windows after the roll"),
        ("regions", "attention-mask regions in the shifted windows"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        labels = np.asarray(layout[key])
        if image is not None and key == "windows":
            ax.imshow(image, extent=(-0.5, g - 0.5, g - 0.5, -0.5))
            ax.imshow(_shuffled_colours(labels), cmap="tab20", alpha=0.25, interpolation="nearest")
        else:
            ax.imshow(_shuffled_colours(labels), cmap="tab20", interpolation="nearest")
        _boundaries(ax, labels)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"one token = {layout['patch']}x{layout['patch']} pixels", fontsize=9)
    fig.tight_layout()
    return fig


def mask_figure(attn_mask: np.ndarray, windows: Sequence[int] | None = None):
    """The (N x N) additive attention masks of a few shifted windows, as the block stores them
    (0: may attend, -100: masked): the first window (no wrap), a bottom-edge window, a
    right-edge window and the corner window."""
    plt = _plt()
    n_w = attn_mask.shape[0]
    side = int(round(np.sqrt(n_w)))
    if windows is None:
        windows = sorted({0, n_w - side, side - 1, n_w - 1})
    fig, axes = plt.subplots(1, len(windows), figsize=(3.2 * len(windows), 3.2))
    axes = np.atleast_1d(axes)
    for ax, w in zip(axes, windows, strict=True):
        ax.imshow(attn_mask[w] < 0, cmap="Greys", interpolation="nearest")
        ax.set_title(f"window {w}: {int((attn_mask[w] < 0).sum())} masked pairs", fontsize=9)
        ax.set_xlabel("key token")
        ax.set_ylabel("query token")
    fig.tight_layout()
    return fig


def distance_histogram(d_ap: np.ndarray, d_an: np.ndarray, margin: float, fractions: Mapping[str, float]):
    """Histograms of anchor-positive and anchor-negative distances (unit embeddings, so 0..2)
    with the triplet rule's band: a triplet is active when d(a,n) < d(a,p) + margin; the title
    gives the fractions of active and semi-hard triplets at this margin."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(0, 2, 61)
    ax.hist(d_ap, bins=bins, alpha=0.6, density=True, label="d(a, p): same identity")
    ax.hist(d_an, bins=bins, alpha=0.6, density=True, label="d(a, n): different identities")
    med = float(np.median(d_ap))
    ax.axvline(med, color="C0", ls="--", lw=1)
    ax.axvspan(med, med + margin, color="grey", alpha=0.2, label=f"median d(a,p) .. + alpha ({margin:g})")
    ax.set_xlabel("Euclidean distance between unit embeddings")
    ax.set_title(
        f"alpha = {margin:g}: active {fractions['active']:.1%}, "
        f"semi-hard {fractions['semi_hard']:.1%} of triplets",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def margin_sweep_figure(rows: Sequence[Mapping[str, Any]], x: str = "margin"):
    """Per margin: final / first training loss and held-out accuracy (mean over seeds, each
    seed a dot)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in (
        (axes[0], "loss_ratio", "final / first loss"),
        (axes[1], "accuracy", "held-out accuracy"),
    ):
        xs = sorted({r[x] for r in rows})
        means = [np.mean([r[key] for r in rows if r[x] == v]) for v in xs]
        ax.plot(xs, means, marker="o")
        ax.scatter([r[x] for r in rows], [r[key] for r in rows], s=10, alpha=0.5, color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("triplet margin alpha")
        ax.set_ylabel(label)
    fig.tight_layout()
    return fig
