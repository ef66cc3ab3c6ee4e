"""Figures of face quality and uncertainty (notebooks 04 and 05): a per-image measure (feature
norm, PFE's sigma^2) against the ground-truth quality, per-tercile histograms, an image gallery
sorted by the measure, error-versus-discard curves (EDC and ERC), the measure against a
degradation's strength and on frontal vs profile faces.

Inputs are plain data (arrays, tidy rows, :class:`~nbfacelib.eval.quality.DiscardCurve`);
every function returns a matplotlib figure and never calls ``show``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbfacelib.viz.results import colour

TERCILES = ("low", "mid", "high")
FIXED = {"oracle": "#000000", "random": "#999999"}


def _colour(name: str, i: int) -> str:
    return FIXED.get(name, colour(name, i))


def measure_vs_quality_figure(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ylabel: str = "feature norm",
    titles: Mapping[str, str] | None = None,
):
    """One scatter per name of ``(quality, measure)`` arrays; ``titles`` add a line (e.g. the
    Spearman interval) under each name."""
    import matplotlib.pyplot as plt

    n = len(points)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for i, (ax, (name, (q, m))) in enumerate(zip(axes[0], points.items(), strict=True)):
        ax.scatter(q, m, s=6, alpha=0.5, color=_colour(name, i))
        ax.set_xlabel("ground-truth quality")
        ax.set_ylabel(ylabel if i == 0 else "")
        ax.set_title(name + (f"\n{titles[name]}" if titles and name in titles else ""), fontsize=9)
    fig.tight_layout()
    return fig


def tercile_histograms_figure(
    measures: Mapping[str, np.ndarray], tercile: np.ndarray, xlabel: str = "feature norm"
):
    """Histogram of each named measure per quality tercile (``tercile`` 0/1/2 per image)."""
    import matplotlib.pyplot as plt

    n = len(measures)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    shades = ("#d62728", "#ff7f0e", "#2ca02c")
    for ax, (name, m) in zip(axes[0], measures.items(), strict=True):
        bins = np.histogram_bin_edges(m, bins=20)
        for t, label in enumerate(TERCILES):
            ax.hist(m[tercile == t], bins=bins, alpha=0.5, color=shades[t], label=f"{label} quality")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def gallery_figure(
    images: np.ndarray, measure: np.ndarray, quality: np.ndarray | None, n: int = 12, label: str = "norm"
):
    """``n`` images evenly spaced along the ranking by ``measure`` (lowest first), each titled
    with its measure and, when given, its ground-truth quality. ``images`` uint8 (N, 3, H, W)."""
    import matplotlib.pyplot as plt

    order = np.argsort(measure)
    pick = order[np.linspace(0, len(order) - 1, num=min(n, len(order))).round().astype(int)]
    fig, axes = plt.subplots(1, len(pick), figsize=(1.2 * len(pick), 1.7), squeeze=False)
    for ax, i in zip(axes[0], pick, strict=True):
        ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
        ax.set_axis_off()
        text = f"{label} {measure[i]:.3g}" + (f"\nq {quality[i]:.2f}" if quality is not None else "")
        ax.set_title(text, fontsize=6)
    fig.suptitle(f"sorted by {label}, lowest left", fontsize=8)
    return fig


def discard_curves_figure(curves: Mapping[str, Mapping[str, Any]], limit: float, erc_fmr: float):
    """EDC (left; threshold fixed once, the pAUC limit dashed) and ERC (right; threshold
    re-derived at ``erc_fmr``) of each named quality measure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, c) in enumerate(curves.items()):
        style = {"color": _colour(name, i), "lw": 1.2 if name not in FIXED else 1.8}
        a.step(c["edc"].discard, c["edc"].error, where="post", label=name, **style)
        b.plot(c["erc"].discard, c["erc"].error, marker=".", label=name, **style)
    a.axvline(limit, ls="--", color="#bbbbbb")
    a.set(
        xlabel="fraction of mated comparisons discarded",
        ylabel="FNMR (threshold fixed)",
        title="EDC",
        xlim=(0, 1),
    )
    b.set(
        xlabel="fraction of comparisons discarded",
        ylabel=f"FNMR at FMR {erc_fmr:g}",
        title="ERC (MagFace / CR-FIQA code)",
    )
    a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def strength_figure(rows: Sequence[Mapping[str, Any]], measure: str = "norm", relative: bool = True):
    """Mean ``measure`` per strength for each degradation kind (one panel each) and variant;
    ``relative``: divided by the variant's mean at the kind's first strength (the clean images)."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.0), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, v in enumerate(variants):
            sel = [r for r in rows if r["kind"] == kind and r["variant"] == v]
            xs = sorted(
                {r["strength"] for r in sel}, key=lambda s: [r["level"] for r in sel if r["strength"] == s][0]
            )
            ys = np.array([np.mean([r[measure] for r in sel if r["strength"] == s]) for s in xs])
            if relative and len(ys):
                ys = ys / ys[0]
            ax.plot(range(len(xs)), ys, marker="o", color=_colour(v, i), label=v)
            ax.set_xticks(range(len(xs)), [f"{s:g}" for s in xs])
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("strength")
    axes[0][0].set_ylabel(f"mean {measure}" + (" / clean" if relative else ""))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def pose_figure(rows: Sequence[Mapping[str, Any]], measure: str = "norm"):
    """Histogram of ``measure`` on frontal vs profile photographs, one panel per variant."""
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(variants), figsize=(3.4 * len(variants), 2.8), squeeze=False)
    for ax, v in zip(axes[0], variants, strict=True):
        vals = np.array([r[measure] for r in rows if r["variant"] == v])
        bins = np.histogram_bin_edges(vals, bins=30)
        for f, label, c in ((1, "frontal", "#2ca02c"), (0, "profile", "#d62728")):
            ax.hist(
                [r[measure] for r in rows if r["variant"] == v and r["frontal"] == f],
                bins=bins,
                alpha=0.5,
                color=c,
                label=label,
            )
        ax.set_title(v, fontsize=9)
        ax.set_xlabel(measure)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def probe_figure(image: np.ndarray, title: str):
    """One face (uint8 (3, H, W)) with a title line (its degradation, norm and sigma^2)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6, 2.9))
    ax.imshow(np.asarray(image).transpose(1, 2, 0))
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    return fig
