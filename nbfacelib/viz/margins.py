"""Figures of notebook 01 (ArcFace and the margin family): matplotlib for static figures,
plotly where hovering or zooming helps. Each function takes what
:mod:`nbfacelib.experiments.arcface_margins` returns and returns a figure (it never calls
``show``), so a notebook cell is one line and a test can build every figure headless.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

# One colour per head / loss, the same in every figure of the notebook.
PALETTE = ["#4c4c4c", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
LOSS_COLOURS = {
    "softmax": "#4c4c4c",
    "sphereface": "#1f77b4",
    "cosface": "#2ca02c",
    "arcface": "#d62728",
    "combined": "#9467bd",
}


def _colour(name: str, i: int) -> str:
    key = name.split()[0].lower()
    return LOSS_COLOURS.get(key, PALETTE[i % len(PALETTE)])


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
        ax.plot(theta, y, color=_colour(name, i), lw=2, label=name)
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
            go.Scatter(x=curves["theta_deg"], y=y, mode="lines", name=name, line={"color": _colour(name, i)})
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
        colour = _colour(name, i)
        ax.contour(theta, theta, f1, levels=[0], colors=[colour], linewidths=2)
        ax.contour(theta, theta, f2, levels=[0], colors=[colour], linewidths=2, linestyles="--")
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


def margin_explorer(m_sphere: float = 1.35, m_cos: float = 0.4, m_arc: float = 0.5, m_comb2: float = 0.3,
                    m_comb3: float = 0.2):  # fmt: skip
    """The figure behind the notebook's margin sliders: target logits (left) and the decision
    boundaries (right) of heads built with these margins (SphereFace m1, CosFace m3 cosine
    units, ArcFace m2 radians, combined (1, m_comb2, m_comb3))."""
    import matplotlib.pyplot as plt

    from nbfacelib.experiments.arcface_margins import decision_regions, geometry_heads, target_logits

    heads = geometry_heads(m_sphere, m_cos, m_arc, (1.0, m_comb2, m_comb3))
    fig = plt.figure(figsize=(13, 4.4))
    grid = fig.add_gridspec(2, 5, width_ratios=[2.2, 1, 1, 1, 0.05])
    target_logit_figure(target_logits(heads), ax=fig.add_subplot(grid[:, 0]))
    names = list(heads)[1:]  # softmax's boundary is the diagonal drawn in every panel
    axes = [fig.add_subplot(grid[r, c]) for r in range(2) for c in (1, 2)]
    regions = decision_regions({k: heads[k] for k in names}, n=121)
    decision_boundary_figure(regions, axes=axes)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ experiment results


def accuracy_by_loss_figure(
    runs: list[dict], backbone: str, metric: str = "accuracy", split: str = "synthetic"
):
    """Per-seed ``metric`` (dots) and mean +- std (bar) of each loss on ``backbone`` (plotly)."""
    import plotly.graph_objects as go

    from nbfacelib.experiments.arcface_margins import metric_values, select

    sel = select(runs, backbone=backbone)
    losses = list(dict.fromkeys(r["loss"] for r in sel))
    fig = go.Figure()
    for i, loss in enumerate(losses):
        v = metric_values(select(sel, loss=loss), metric, split)
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        fig.add_trace(
            go.Bar(
                x=[loss],
                y=[v.mean()],
                error_y={"type": "data", "array": [sd]},
                name=loss,
                marker_color=_colour(loss, i),
                opacity=0.6,
            )  # fmt: skip
        )
        seeds = [r["seed"] for r in select(sel, loss=loss)]
        fig.add_trace(
            go.Scatter(
                x=[loss] * len(v),
                y=v,
                mode="markers",
                marker={"color": "black", "size": 7},
                text=[f"seed {s}" for s in seeds],
                showlegend=False,
                name=f"{loss} seeds",
            )  # fmt: skip
        )
    lo = min(float(np.nanmin(metric_values(sel, metric, split))) - 0.05, 0.5)
    fig.update_layout(
        title=f"{split} {metric} on {backbone}: mean ± std over seeds (dots: seeds)",
        yaxis={"title": metric, "range": [lo, 1.0]},
        height=400,
        showlegend=False,
    )
    return fig


def quality_tercile_figure(runs: list[dict], groups: Sequence[tuple[str, str]]):
    """Accuracy by tercile of pair quality (lower of the two images) for (backbone, loss) groups,
    mean +- std over seeds (matplotlib)."""
    import matplotlib.pyplot as plt

    from nbfacelib.experiments.arcface_margins import metric_values, select

    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(1, len(groups))
    first_backbone = groups[0][0] if groups else None
    for i, (backbone, loss) in enumerate(groups):
        sel = select(runs, backbone=backbone, loss=loss)
        means = [metric_values(sel, f"acc_q{t}").mean() for t in range(3)]
        stds = [metric_values(sel, f"acc_q{t}").std(ddof=1) if len(sel) > 1 else 0 for t in range(3)]
        # colour = loss; a second backbone with the same loss is hatched and lighter
        other = backbone != first_backbone
        ax.bar(
            np.arange(3) + (i - (len(groups) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=f"{loss} / {backbone}",
            color=_colour(loss, i),
            alpha=0.45 if other else 1.0,
            hatch="//" if other else None,
            edgecolor="black" if other else None,
        )
    ax.set_xticks(range(3), ["low", "mid", "high"])
    ax.set_xlabel("tercile of pair quality (min of the two images)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("held-out synthetic pairs by quality")
    fig.tight_layout()
    return fig


def embedding_map_figure(xy: np.ndarray, labels: np.ndarray, title: str, max_identities: int = 20):
    """2-d map of embeddings (UMAP or PCA) coloured by identity, first ``max_identities``
    identities (plotly; hover names the identity)."""
    import plotly.graph_objects as go

    ids = list(dict.fromkeys(labels.tolist()))[:max_identities]
    fig = go.Figure()
    for i in ids:
        m = labels == i
        fig.add_trace(go.Scatter(x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"id {i}", marker={"size": 7}))
    fig.update_layout(
        title=title, height=450, xaxis={"showticklabels": False}, yaxis={"showticklabels": False}
    )
    return fig


def norm_histogram_figure(norms: dict[str, np.ndarray]):
    """Distribution of the embeddings' L2 norms (before normalisation) per model (plotly)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, v) in enumerate(norms.items()):
        fig.add_trace(go.Histogram(x=v, name=name, opacity=0.6, nbinsx=40, marker_color=_colour(name, i)))
    fig.update_layout(barmode="overlay", title="feature norm ||f(x)|| on held-out synthetic faces",
                      xaxis_title="L2 norm of the embedding", yaxis_title="images", height=380)  # fmt: skip
    return fig


# --------------------------------------------------------------------------------- tables


def html_table(rows: list[dict], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A small HTML table from a list of dicts (no pandas in the environment): floats with
    ``digits`` significant digits, anything else as ``str`` (HTML-escaped)."""
    columns = list(columns or (rows[0].keys() if rows else []))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return html.escape(str(v))

    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 8px'>{fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return (
        f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
