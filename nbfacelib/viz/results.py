"""Result figures any notebook uses: metric per variant with its interval over seeds, ROC with
TAR@FAR, accuracy per pair-quality bin, training curves from ``metrics.jsonl``, embedding
maps, feature-norm histograms and small HTML tables.

Inputs are plain data: tidy rows (any iterable of dicts with ``variant``, ``seed``,
``evalset``, ``metric``, ``value``, such as :class:`nbfacelib.experiments.grid.Table`),
``(fpr, tpr)`` arrays, paths. viz never imports an experiment. Each function returns a figure
(matplotlib or plotly) and never calls ``show``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# One colour per loss / head name, the same in every figure; other names cycle the palette.
PALETTE = ["#4c4c4c", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
NAMED_COLOURS = {
    "softmax": "#4c4c4c",
    "sphereface": "#1f77b4",
    "cosface": "#2ca02c",
    "arcface": "#d62728",
    "combined": "#9467bd",
}


def colour(name: str, i: int) -> str:
    """The colour of ``name`` (by its first word, e.g. ``"arcface s=64"`` -> arcface's), else
    the ``i``-th palette colour."""
    key = str(name).replace("-", " ").split()[0].lower() if str(name).strip() else ""
    return NAMED_COLOURS.get(key, PALETTE[i % len(PALETTE)])


def _select(rows: Iterable[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _interval(values: np.ndarray, confidence: float) -> float:
    """Half-width of the Student-t interval of the mean (0 for one value: nothing to draw)."""
    if len(values) < 2:
        return 0.0
    from scipy import stats

    return float(
        stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    )


# --------------------------------------------------------------------------- per variant
def metric_figure(
    rows: Iterable[Mapping[str, Any]],
    metric: str = "accuracy",
    evalset: str = "synthetic",
    variants: Sequence[str] | None = None,
    confidence: float = 0.95,
    title: str | None = None,
):
    """``metric`` on ``evalset`` per variant (plotly): bar = mean over seeds with its Student-t
    ``confidence`` interval, dots = seeds (hover names the seed)."""
    import plotly.graph_objects as go

    sel = _select(rows, metric=metric, evalset=evalset)
    names = list(variants) if variants is not None else list(dict.fromkeys(r["variant"] for r in sel))
    fig = go.Figure()
    lows = []
    for i, name in enumerate(names):
        part = _select(sel, variant=name)
        if not part:
            continue
        v = np.array([float(r["value"]) for r in part])
        lows.append(v.min())
        fig.add_trace(
            go.Bar(
                x=[name],
                y=[v.mean()],
                error_y={"type": "data", "array": [_interval(v, confidence)]},
                marker_color=colour(name, i),
                opacity=0.6,
                name=name,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[name] * len(v),
                y=v,
                mode="markers",
                marker={"color": "black", "size": 7},
                text=[f"seed {r['seed']}" for r in part],
                name=f"{name} seeds",
            )
        )
    lo = min([*lows, 0.55]) - 0.05
    fig.update_layout(
        title=title
        or f"{metric} on {evalset}: mean and {confidence:.0%} t-interval over seeds (dots: seeds)",
        yaxis={"title": metric, "range": [lo, 1.0] if metric.startswith(("acc", "auc", "tar")) else None},
        height=400,
        showlegend=False,
    )
    return fig


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], fars: Sequence[float] = (1e-3, 1e-2, 1e-1)
):
    """ROC curves (TAR against FAR, log FAR axis, plotly), one per name, with the FARs of
    ``fars`` marked: the TAR@FAR of each curve is where it crosses those lines."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        keep = fpr > 0  # a log axis has no 0
        fig.add_trace(
            go.Scatter(x=fpr[keep], y=tpr[keep], mode="lines", name=name, line={"color": colour(name, i)})
        )
    for far in fars:
        fig.add_vline(x=far, line={"dash": "dot", "width": 1, "color": "grey"})
    fig.update_layout(
        title="ROC: true accepts against false accepts (dotted: the FARs of TAR@FAR)",
        xaxis={"title": "FAR (false accept rate)", "type": "log"},
        yaxis={"title": "TAR (true accept rate)", "range": [0, 1.02]},
        height=420,
    )
    return fig


def quality_bins_figure(
    rows: Iterable[Mapping[str, Any]],
    evalset: str = "synthetic",
    variants: Sequence[str] | None = None,
    confidence: float = 0.95,
    bin_names: Sequence[str] | None = None,
):
    """Accuracy per pair-quality bin (metrics ``acc_q0``, ``acc_q1``, ...: the pair's quality
    is the lower of its two images') per variant, mean and t-interval over seeds
    (matplotlib)."""
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.get("evalset") == evalset and str(r.get("metric", "")).startswith("acc_q")]
    bins = sorted({int(r["metric"][5:]) for r in sel})
    names = list(variants) if variants is not None else list(dict.fromkeys(r["variant"] for r in sel))
    labels = (
        list(bin_names)
        if bin_names
        else (["low", "mid", "high"] if len(bins) == 3 else [str(b) for b in bins])
    )
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        means, errs = [], []
        for b in bins:
            v = np.array(
                [float(r["value"]) for r in sel if r["variant"] == name and r["metric"] == f"acc_q{b}"]
            )
            means.append(v.mean() if len(v) else np.nan)
            errs.append(_interval(v, confidence))
        x = np.arange(len(bins)) + (i - (len(names) - 1) / 2) * width
        ax.bar(x, means, width, yerr=errs, capsize=3, label=name, color=colour(name, i))
    ax.set_xticks(range(len(bins)), labels)
    ax.set_xlabel("bin of pair quality (the lower of the two images')")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"{evalset} pairs by quality (mean, {confidence:.0%} t-interval over seeds)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training
def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (one JSON object per line)."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {n}: not JSON: {exc}") from exc
    return out


def training_curves_figure(runs: Mapping[str, str | Path], key: str = "loss", x: str = "step"):
    """``key`` against ``x`` from each run's ``metrics.jsonl`` (plotly), one line per name."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, path) in enumerate(runs.items()):
        recs = [r for r in read_metrics(path) if r.get(key) is not None]
        fig.add_trace(
            go.Scatter(
                x=[r[x] for r in recs],
                y=[r[key] for r in recs],
                mode="lines+markers",
                name=name,
                line={"color": colour(name, i)},
            )
        )
    fig.update_layout(title=f"training {key}", xaxis_title=x, yaxis_title=key, height=380)
    return fig


# --------------------------------------------------------------------------- embeddings
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


def norm_histogram_figure(norms: Mapping[str, np.ndarray]):
    """Distribution of the embeddings' L2 norms (before normalisation) per model (plotly)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, v) in enumerate(norms.items()):
        fig.add_trace(go.Histogram(x=v, name=name, opacity=0.6, nbinsx=40, marker_color=colour(name, i)))
    fig.update_layout(
        barmode="overlay",
        title="feature norm ||f(x)|| before normalisation",
        xaxis_title="L2 norm of the embedding",
        yaxis_title="images",
        height=380,
    )
    return fig


def project_2d(embeddings: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-d map of embeddings: ``umap`` (umap-learn, cosine metric, as faces are compared by
    angle) or ``pca`` (scikit-learn; fast, for smoke runs)."""
    if method == "umap":
        import umap

        reducer = umap.UMAP(
            n_components=2, metric="cosine", random_state=seed, n_neighbors=15, min_dist=0.1, n_jobs=1
        )  # a random_state makes UMAP single-threaded anyway; saying so avoids its warning
        return reducer.fit_transform(embeddings)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    raise ValueError(f"project_2d: method must be 'umap' or 'pca', got {method!r}")


# --------------------------------------------------------------------------- tables
def html_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4
) -> str:
    """A small HTML table from a list of dicts: floats with ``digits`` significant digits,
    anything else as ``str`` (HTML-escaped)."""
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
