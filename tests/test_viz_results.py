"""viz/results.py: each figure builds headless from plain data and draws what it is given."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from nbfacelib.viz import results as vr

ROWS = [
    {"variant": v, "seed": s, "evalset": "synthetic", "metric": m, "value": base + 0.01 * s + 0.05 * q}
    for v, base in (("softmax", 0.70), ("arcface s=64", 0.75))
    for s in range(3)
    for q, m in enumerate(("accuracy", "acc_q0", "acc_q1", "acc_q2"))
]


def test_metric_figure_bars_and_seed_dots():
    fig = vr.metric_figure(ROWS, "accuracy", "synthetic")
    bars = [t for t in fig.data if t.type == "bar"]
    dots = [t for t in fig.data if t.type == "scatter"]
    assert [b.x[0] for b in bars] == ["softmax", "arcface s=64"]
    assert bars[0].y[0] == pytest.approx(0.71)
    half = 4.302652729911275 * np.std([0.70, 0.71, 0.72], ddof=1) / np.sqrt(3)
    assert bars[0].error_y.array[0] == pytest.approx(half)
    assert list(dots[1].text) == ["seed 0", "seed 1", "seed 2"]
    assert bars[1].marker.color == vr.NAMED_COLOURS["arcface"]  # by the name's first word


def test_quality_roc_curves_tables(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = vr.quality_bins_figure(ROWS, "synthetic")
    assert len(fig.axes[0].patches) == 6  # 2 variants x 3 bins
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["low", "mid", "high"]
    plt.close("all")
    roc = vr.roc_figure({"a": (np.array([0, 0.001, 0.5, 1]), np.array([0, 0.4, 0.9, 1]))})
    assert list(roc.data[0].x) == [0.001, 0.5, 1]  # FAR 0 has no place on a log axis
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "loss": 5.0 - s}) for s in (5, 10, 15)) + "\n")
    curves = vr.training_curves_figure({"arcface": path})
    assert list(curves.data[0].y) == [0.0, -5.0, -10.0] and list(curves.data[0].x) == [5, 10, 15]
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        vr.read_metrics(path)
    xy = np.random.default_rng(0).normal(size=(30, 2))
    assert len(vr.embedding_map_figure(xy, np.repeat(np.arange(3), 10), "t").data) == 3
    assert len(vr.norm_histogram_figure({"a": np.ones(5), "b": np.ones(5)}).data) == 2
    table = vr.html_table([{"a": 1.23456, "b": "<x>"}])
    assert "1.235" in table and "&lt;x&gt;" in table
    assert vr.project_2d(np.random.default_rng(0).normal(size=(20, 8)), method="pca").shape == (20, 2)
    with pytest.raises(ValueError, match="umap"):
        vr.project_2d(np.zeros((3, 2)), method="tsne")


def test_viz_never_imports_an_experiment():
    viz = Path(vr.__file__).parent
    for path in viz.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.startswith("nbfacelib.experiments")]
            assert not bad, f"{path.name} imports {bad}"
