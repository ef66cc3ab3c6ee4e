"""Figures of notebook 01 (ArcFace and the margin family): the C13 check and the margin
geometry; matplotlib for static figures, plotly where hovering or zooming helps. Each
function takes plain data (the dicts :mod:`nbfacelib.experiments.arcface_margins` computes)
and returns a figure (it never calls ``show``). Result figures (accuracy per variant, quality
bins, ROC, training curves, embedding maps) are in :mod:`nbfacelib.viz.results`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbfacelib.viz.results import colour  # one colour per loss name in every figure

# ---------------------------------------------------------------------------------- C13


def unit_distance_figure(check: dict[str, Any], max_points: int = 3000):
    """Two panels: ``||a-b||^2`` against ``2 - 2cos`` (a subsample, on the identity line), and
    the distribution of the absolute error (log scale) with machine epsilon marked."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    step = max(1, len(check["cos"]) // max_points)
    ax1.scatter(2 - 2 * check["cos"][::step], check["d2"][::step], s=3, alpha=0.5, label="random pairs")
    ax1.plot([0, 4], [0, 4], "k--", lw=1, label="y = x")
    ax1.set_xlabel("2 - 2 cos(a, b)")
    ax1.set_ylabel("||a - b||²")
    ax1.set_title(f"{check['n']:,} unit-vector pairs in {check['dim']}-d ({check['dtype']})")
    ax1.legend(loc="upper left")
    err = check["abs_err"]
    positive = err[err > 0]
    if len(positive):
        bins = np.logspace(np.log10(positive.min()), np.log10(max(positive.max(), positive.min() * 10)), 50)
        ax2.hist(positive, bins=bins, color="#1f77b4")
        ax2.set_xscale("log")
    ax2.axvline(check["eps"], color="k", ls=":", label=f"eps = {check['eps']:.2g}")
    ax2.axvline(check["max_abs_err"], color="#d62728", ls="--", label=f"max = {check['max_abs_err']:.2g}")
    ax2.set_xlabel("| ||a - b||² - (2 - 2cos) |")
    ax2.set_ylabel("pairs")
    ax2.set_title(f"rounding error ({(err == 0).mean():.0%} exactly 0)")
    ax2.legend()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- margin geometry


def target_logit_figure(curves: dict[str, Any], ax=None, naive_arcface: float | None = None):
    """Target logit (cosine units) against theta_y in degrees for each head (matplotlib).
    ``naive_arcface``: also draw ``cos(theta + m)`` for that m without the fallback, to show
    why the heads switch to ``cos(theta) - m sin(m)`` past ``pi - m``."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    theta = curves["theta_deg"]
    for i, (name, y) in enumerate((k, v) for k, v in curves.items() if k != "theta_deg"):
        ax.plot(theta, y, color=colour(name, i), lw=2, label=name)
    if naive_arcface is not None:
        ax.plot(theta, np.cos(np.deg2rad(theta) + naive_arcface), color="#d62728", ls=":", lw=1.2,
                label=f"cos(θ+{naive_arcface:g}) without fallback")  # fmt: skip
    ax.set_xlabel("θ_y: angle to the own class centre (degrees)")
    ax.set_ylabel("target logit / s")
    ax.set_xlim(theta[0], theta[-1])
    ax.axhline(0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("target logit vs angle (from apply_margin)")
    return fig if fig is not None else ax.figure


def target_logit_plotly(curves: dict[str, Any]):
    """The same curves as :func:`target_logit_figure`, interactive (hover gives exact values)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, y) in enumerate((k, v) for k, v in curves.items() if k != "theta_deg"):
        fig.add_trace(
            go.Scatter(x=curves["theta_deg"], y=y, mode="lines", name=name, line={"color": colour(name, i)})
        )
    fig.update_layout(
        title="target logit / s vs θ_y (hover for values)",
        xaxis_title="θ_y (degrees)",
        yaxis_title="target logit / s",
        height=420,
    )
    return fig


def decision_boundary_figure(regions: dict[str, Any], axes=None, ncols: int | None = None):
    """Binary decision boundaries in the (θ1, θ2) plane, one panel per head: the two boundaries
    (class 1 accepted below/right of its line, class 2 of the other) and, shaded, the decision
    margin where neither class clears its margin (ArcFace paper, Fig. 5)."""
    import matplotlib.pyplot as plt

    names = [k for k in regions if k != "theta_deg"]
    fig = None
    if axes is None:
        ncols = ncols or len(names)
        nrows = -(-len(names) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.7 * ncols, 2.8 * nrows), squeeze=False)
        axes = axes.ravel()
    theta = regions["theta_deg"]
    for i, name in enumerate(names):
        ax = axes[i]
        f1, f2 = regions[name]
        margin = ((f1 <= 0) & (f2 <= 0)).astype(float)
        ax.contourf(theta, theta, margin, levels=[0.5, 1.5], colors=["#cccccc"])
        line_colour = colour(name, i)
        ax.contour(theta, theta, f1, levels=[0], colors=[line_colour], linewidths=2)
        ax.contour(theta, theta, f2, levels=[0], colors=[line_colour], linewidths=2, linestyles="--")
        ax.plot([theta[0], theta[-1]], [theta[0], theta[-1]], color="k", lw=0.5, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("θ1 (deg)", fontsize=8)
        ax.set_ylabel("θ2 (deg)", fontsize=8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    for ax in list(axes)[len(names) :]:
        ax.set_visible(False)
    if fig is not None:
        fig.suptitle("decision boundaries, binary case (grey: decision margin)", fontsize=10)
        fig.tight_layout()
    return fig if fig is not None else axes[0].figure
