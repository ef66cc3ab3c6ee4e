"""Notebook 08's experiment module and figures on tiny inputs (the notebook itself runs in
test_notebooks at the smoke preset)."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from nbfacelib.experiments import topofr as tf
from nbfacelib.experiments.grid import Run
from nbfacelib.train.config import TrainConfig

matplotlib.use("Agg")


def test_input_topology_rows_and_fixed_scale():
    rows, diagrams, r = tf.input_topology([12, 24], input_size=32, max_dim=2, scale_quantile=0.5)
    assert r > 0 and set(diagrams) == {12, 24} and all(len(d) == 3 for d in diagrams.values())
    assert {(x["n"], x["dim"]) for x in rows} == {(n, k) for n in (12, 24) for k in range(3)}
    for x in rows:  # lifetimes are cut at the scale r
        assert 0 <= x["max_persistence"] <= r + 1e-12 and x["total_persistence"] >= x["max_persistence"]
    h0 = {x["n"]: x["count"] for x in rows if x["dim"] == 0}
    assert h0[24] > h0[12]


def test_discrepancy_is_scale_free_and_zero_for_a_scaled_copy():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 3, 8, 8, generator=g) * 2 - 1
    assert tf.discrepancy(images, 3.0 * images.flatten(1)) == pytest.approx(0.0, abs=1e-6)  # float32 inputs
    other = torch.randn(20, 16, generator=g)
    assert tf.discrepancy(images, other) > 0.01
    assert tf.discrepancy(images, other) == pytest.approx(tf.discrepancy(images, 5 * other), rel=1e-6)
    rows = tf.discrepancy_by_batch_size(images, other, [5, 10], n_batches=3)
    assert [(r["batch_size"], r["batch"]) for r in rows] == [(b, k) for b in (5, 10) for k in range(3)]
    assert all(r["isa"] > 0 for r in rows)
    with pytest.raises(ValueError, match="larger than the pool"):
        tf.discrepancy_by_batch_size(images, other, [21], 1)


def test_ablation_and_depth_variants():
    base = TrainConfig(steps=3)
    rows = tf.ablation_variants(base, alpha=0.05, s=16.0)
    assert [v.name for v in rows] == list(tf.ABLATION)
    assert all(v.config.loss == "topofr" for v in rows)
    assert rows[0].config.loss_kwargs == {"alpha": 0.0, "s": 16.0, "rsp_p": 0.0, "sde": False}
    assert rows[-1].config.loss_kwargs == {"alpha": 0.05, "s": 16.0}
    with pytest.raises(ValueError, match="unknown ablation rows"):
        tf.ablation_variants(base, ["+sde"])
    deep = tf.depth_variants(base.replace(loss_kwargs={"s": 16.0}), [[1, 1, 1, 1], [2, 3, 4, 2]])
    assert [v.labels["blocks"] for v in deep] == [4, 11]
    assert deep[1].config.backbone == "iresnet" and deep[1].config.backbone_kwargs["layers"] == [2, 3, 4, 2]
    assert deep[0].config.loss_kwargs == {"s": 16.0, **tf.ABLATION["arcface"]}


def test_training_curve_reads_metrics_jsonl(tmp_path):
    lines = [{"step": 1, "loss": 2.0, "isa": 5.0}, {"step": 2, "loss": 1.5}, {"step": 3, "isa": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    run = Run("x", 0, TrainConfig(), Path(tmp_path), {}, 0.0, True)
    steps, values = tf.training_curve(run, "isa")
    assert steps.tolist() == [1, 3] and values.tolist() == [5.0, 4.0]
    assert len(tf.training_curve(run, "nothing")[0]) == 0


def test_hard_posterior_on_a_tiny_model():
    from nbfacelib.losses import build_objective
    from nbfacelib.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("ir_tiny", input_size=32, embedding_size=16)
    obj = build_objective("topofr", embedding_size=16, num_classes=4, s=8.0)
    images = torch.rand(24, 3, 32, 32) * 2 - 1
    labels = torch.arange(24) % 4
    out = tf.hard_posterior(model, obj, images, labels, batch_size=8)
    assert out["hard"].shape == (24,) and out["misclassified"].dtype == bool
    assert np.all((out["hard"] >= 0) & (out["hard"] <= 1))
    assert not np.allclose(out["weights_paper"], out["weights_official"])
    assert np.isnan(out["auc"]) or 0 <= out["auc"] <= 1
    assert tf.by_seed([{"seed": 0, "v": 1.0}, {"seed": 0, "v": 3.0}, {"seed": 1, "v": 5.0}], "v") == {
        0: 2.0,
        1: 5.0,
    }


def test_figures_build():
    from nbfacelib.viz import topology as tv

    rows, diagrams, r = tf.input_topology([10, 20], input_size=32, scale_quantile=0.5)
    figs = [
        tv.diagrams_figure(diagrams, r),
        tv.topology_counts_figure(rows),
        tv.discrepancy_figure([{"b": b, "discrepancy": float(v)} for b in (1, 2) for v in range(3)], "b"),
        tv.curves_figure({"a": (np.arange(3), np.array([3.0, 2.0, 1.0]))}),
        tv.posterior_figure(np.linspace(0, 1, 10), np.arange(10) % 3 == 0, 0.7),
        tv.weights_figure(np.ones(5), np.linspace(1, 2, 5)),
        tv.diagram_explorer(torch.rand(30, 3, 8, 8) * 2 - 1, torch.randn(30, 4), batch_size=12),
    ]
    assert all(hasattr(f, "savefig") for f in figs)
