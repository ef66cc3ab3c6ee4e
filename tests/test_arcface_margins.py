"""Notebook 01's package code: the C13 check, the margin geometry (against the heads and
against hand-computed values), the verdict rules, and the experiment on a tiny config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nbfacelib.experiments import arcface_margins as am


# --------------------------------------------------------------------------------------- C13
def test_unit_distance_check_float32_and_float64():
    c32 = am.unit_distance_check(n=2000, dim=64, seed=0)
    c64 = am.unit_distance_check(n=2000, dim=64, seed=0, dtype=torch.float64)
    # rounding only: a few float32 ulps of numbers <= 4, far below 1e-5
    assert 0 < c32["max_abs_err"] < 1e-5
    assert c64["max_abs_err"] < 1e-13
    assert c32["max_norm_err"] < 1e-6
    # the pairs cover the whole cosine range, not just cos ~ 0
    assert c32["cos"].min() < -0.95 and c32["cos"].max() > 0.95
    np.testing.assert_allclose(c32["d2"], 2 - 2 * c32["cos"], atol=1e-5)
    v = am.c13_verdict(c32)
    assert v["holds"] is True and v["measured"]["max_abs_err"] == c32["max_abs_err"]


def test_c13_verdict_fails_when_error_is_large():
    fake = {"max_abs_err": 1e-3, "mean_abs_err": 1e-4, "n": 10, "dim": 3, "dtype": "float16"}
    assert am.c13_verdict(fake, tol=1e-5)["holds"] is False


# ------------------------------------------------------------------------- margin geometry
def test_target_logits_match_hand_computed_values():
    heads = am.geometry_heads(m_sphere=1.35, m_cos=0.4, m_arc=0.5, m_comb=(1.0, 0.3, 0.2))
    theta = np.array([0.0, 30.0, 60.0, 90.0, 150.0, 170.0])
    curves = am.target_logits(heads, theta)
    t = np.deg2rad(theta)
    np.testing.assert_allclose(curves["softmax"], np.cos(t), atol=1e-12)
    np.testing.assert_allclose(curves["CosFace m3=0.4"], np.cos(t) - 0.4, atol=1e-12)
    arc = curves["ArcFace m2=0.5"]
    # inside theta + m <= pi: cos(theta + m); past it (170 deg): cos(theta) - m sin(m)
    np.testing.assert_allclose(arc[:5], np.cos(t[:5] + 0.5), atol=1e-7)
    np.testing.assert_allclose(arc[5], math.cos(t[5]) - 0.5 * math.sin(0.5), atol=1e-7)
    # SphereFace cos(1.35 theta) up to theta = pi / 1.35 (133 deg)
    np.testing.assert_allclose(curves["SphereFace m1=1.35"][:4], np.cos(1.35 * t[:4]), atol=1e-7)
    np.testing.assert_allclose(curves["combined (1, 0.3, 0.2)"][:4], np.cos(t[:4] + 0.3) - 0.2, atol=1e-7)
    # every margin logit is monotone non-increasing in theta (the fallback's purpose)
    full = am.target_logits(heads)
    for name, y in full.items():
        if name != "theta_deg":
            assert np.all(np.diff(y) <= 1e-9), name


def test_target_logits_are_the_heads_own_output():
    """The curves come from apply_margin: a head with a changed target_logit changes the curve."""
    heads = am.geometry_heads()
    arc = heads["ArcFace m2=0.5"]
    cos = torch.tensor([[0.3], [-0.2]], dtype=torch.float64)
    expected = arc.apply_margin(cos, torch.zeros(2, dtype=torch.long))[:, 0] / arc.s
    got = am.target_logits({"a": arc}, np.rad2deg(np.arccos([0.3, -0.2])))["a"]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-9)


def test_decision_regions_binary_boundaries():
    heads = am.geometry_heads()
    reg = am.decision_regions(heads, n=181, max_deg=180.0)  # 1-degree grid
    theta = reg["theta_deg"]
    soft1, soft2 = reg["softmax"]
    # softmax: class 1 wins exactly below the diagonal (theta1 < theta2), rows are theta2
    i, j = 100, 40  # theta2 = 100 deg, theta1 = 40 deg
    assert theta[i] == 100 and theta[j] == 40
    assert soft1[i, j] > 0 and soft2[i, j] < 0
    np.testing.assert_allclose(soft1, -soft2, atol=1e-12)
    # ArcFace: accepted as class 1 iff theta1 + 0.5 rad < theta2 (inside [0, pi - m])
    arc1, arc2 = reg["ArcFace m2=0.5"]
    m_deg = math.degrees(0.5)
    for t1, t2 in [(20, 40), (20, 60), (60, 100), (90, 120)]:
        assert (arc1[t2, t1] > 0) == (t1 + m_deg < t2), (t1, t2)
    # margin region (neither accepted) is non-empty for ArcFace, empty for softmax off-diagonal
    assert ((arc1 <= 0) & (arc2 <= 0)).any()
    off_diag = ~np.eye(len(theta), dtype=bool)
    assert not (((soft1 <= 0) & (soft2 <= 0)) & off_diag).any()
    # CosFace: class 1 iff cos(theta1) - 0.4 > cos(theta2)
    cos1, _ = reg["CosFace m3=0.4"]
    t1, t2 = np.deg2rad(30), np.deg2rad(80)
    assert (cos1[80, 30] > 0) == (math.cos(t1) - 0.4 > math.cos(t2))


def test_document_arcface_formula_matches_our_head():
    # the document's ArcMarginModel (threshold cos(pi - m), fallback cos - sin(pi - m) m)
    assert am.compare_with_document(0.5) < 1e-6
    assert am.compare_with_document(0.3) < 1e-6
    # easy_margin keeps cos(theta) for cos <= 0 (not what the heads do)
    doc = am.document_arcface_logit(np.array([-0.5, 0.5]), 0.5, easy_margin=True)
    assert doc[0] == -0.5 and doc[1] == pytest.approx(math.cos(math.acos(0.5) + 0.5))


def test_complexity_table_reference_numbers():
    rows = {r["backbone"]: r for r in am.complexity_table(["mbf", "r50"], input_size=112)}
    # REFERENCE.md: r50 43.59M params, 6.3 GMACs; mbf ~2.06M, 0.45 GMACs
    assert rows["r50"]["params_m"] == pytest.approx(43.59, abs=0.01)
    assert rows["r50"]["gmacs"] == pytest.approx(6.3, abs=0.05)
    assert rows["mbf"]["params_m"] == pytest.approx(2.06, abs=0.01)
    assert rows["mbf"]["gmacs"] == pytest.approx(0.44, abs=0.02)


# ---------------------------------------------------------------------------------- verdicts
def _runs(acc: dict[tuple[str, str], list[float]]) -> list[dict]:
    return [
        {"backbone": b, "loss": loss, "seed": s, "synthetic": {"accuracy": a}}
        for (b, loss), values in acc.items()
        for s, a in enumerate(values)
    ]


def test_paired_difference_interval():
    d = am.paired_difference(np.array([0.8, 0.82, 0.81]), np.array([0.7, 0.71, 0.72]))
    diffs = np.array([0.1, 0.11, 0.09])
    half = 4.302652729911275 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert d["mean"] == pytest.approx(0.1)
    assert d["lo"] == pytest.approx(0.1 - half) and d["hi"] == pytest.approx(0.1 + half)
    one = am.paired_difference(np.array([0.8]), np.array([0.7]))
    assert one["lo"] == -math.inf and one["hi"] == math.inf


def _c14(soft, cos, arc, b="ir_tiny"):
    return am.c14_verdict(_runs({(b, "softmax"): soft, (b, "cosface"): cos, (b, "arcface"): arc}), b)


def test_c14_verdict_rules():
    assert _c14([0.70, 0.71, 0.69], [0.80, 0.81, 0.80], [0.81, 0.82, 0.81])["holds"] is True
    # softmax clearly better than CosFace: not held
    assert _c14([0.85, 0.86, 0.85], [0.80, 0.81, 0.80], [0.81, 0.81, 0.80])["holds"] is False
    # ArcFace clearly worse than CosFace by more than the 0.005 tolerance: not held
    assert _c14([0.70, 0.71, 0.69], [0.80, 0.81, 0.80], [0.75, 0.76, 0.75])["holds"] is False
    # differences inside the seed spread: inconclusive
    assert _c14([0.70, 0.80, 0.60], [0.75, 0.70, 0.72], [0.76, 0.71, 0.70])["holds"] is None
    v = _c14([0.70], [0.80], [0.81])
    assert v["holds"] is None and v["measured"]["seeds"] == 1
    with pytest.raises(ValueError, match="softmax, cosface and arcface"):
        am.c14_verdict(_runs({("ir_tiny", "arcface"): [0.8]}), "ir_tiny")


def test_c15_verdict_rules():
    cx = [
        {"backbone": "small", "params_m": 0.1, "gmacs": 0.01},
        {"backbone": "big", "params_m": 1.0, "gmacs": 0.1},
    ]
    close = _runs({("small", "arcface"): [0.80, 0.81, 0.80], ("big", "arcface"): [0.81, 0.815, 0.80]})
    v = am.c15_verdict(close, "small", "big", cx)
    assert v["holds"] is True and v["measured"]["mac_ratio"] == pytest.approx(0.1)
    far = _runs({("small", "arcface"): [0.70, 0.71, 0.70], ("big", "arcface"): [0.80, 0.81, 0.80]})
    assert am.c15_verdict(far, "small", "big", cx)["holds"] is False
    not_small = [dict(cx[0], gmacs=0.05), cx[1]]
    assert am.c15_verdict(close, "small", "big", not_small)["holds"] is False
    one = _runs({("small", "arcface"): [0.80], ("big", "arcface"): [0.81]})
    assert am.c15_verdict(one, "small", "big", cx)["holds"] is None


def test_quality_terciles():
    q = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.95])
    i1, i2 = np.array([0, 1, 2, 4, 5, 1]), np.array([1, 2, 3, 5, 4, 5])
    t, edges = am.quality_terciles(q, i1, i2)  # pair quality: .1 .5 .2 .8 .8 .9
    assert list(t) == [0, 1, 0, 2, 2, 2]  # edges 0.4, 0.8 (linear quantiles)
    assert edges[0] <= edges[1]
    assert np.bincount(t, minlength=3).min() >= 1


# ------------------------------------------------------------------------ tiny experiment
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:sample_pairs:UserWarning")  # 6-10 identities: folds share them
def test_run_experiments_tiny(tmp_path):
    setup = am.Setup(
        backbone="ir_tiny",
        small_backbone="mbf_tiny",
        losses=("softmax", "arcface"),
        seeds=(0,),
        train_ids=8,
        per_id=4,
        steps=3,
        batch_size=8,
        warmup_steps=1,
        input_size=48,
        embedding_size=32,
        eval_ids=6,
        eval_per_id=4,
        eval_pairs=40,
        orl_pairs=40,
        orl_people=range(1, 11),
        out_dir=str(tmp_path),
    )
    assert setup.runs() == [("ir_tiny", "softmax", 0), ("ir_tiny", "arcface", 0), ("mbf_tiny", "arcface", 0)]
    res = am.run_experiments(setup, log=None)
    assert len(res["runs"]) == 3
    for run in res["runs"]:
        assert 0.0 <= run["synthetic"]["accuracy"] <= 1.0
        assert {"acc_q0", "acc_q1", "acc_q2", "auc", "eer"} <= set(run["synthetic"])
        assert 0.0 <= run["orl"]["accuracy"] <= 1.0
        assert math.isfinite(run["final_loss"])
        assert (tmp_path / f"{run['backbone']}-{run['loss']}-seed0" / "model.safetensors").is_file()
    # every run trained on the same pre-rendered images (8 ids x 4, one folder per identity)
    assert len(list((tmp_path / "train_images").iterdir())) == 8
    emb = res["embeddings"][("ir_tiny", "arcface")]
    assert emb["embeddings"].shape == (24, 32)
    np.testing.assert_allclose(np.linalg.norm(emb["embeddings"], axis=1), 1.0, atol=1e-5)
    assert emb["norms"].shape == (24,) and (emb["norms"] > 0).all()
    es = res["eval"]["synthetic"]
    assert es.images.shape == (24, 3, 48, 48) and es.quality is not None
    assert set(es.labels.tolist()) == set(range(6))
    orl = res["eval"]["orl"]
    assert orl.images.shape == (100, 3, 48, 48) and set(orl.labels.tolist()) == set(range(10))
    for name in ("synthetic", "orl"):  # eigenfaces on the same pairs
        assert 0.0 <= res["baseline"][name]["accuracy"] <= 1.0
    assert {"acc_q0", "acc_q2"} <= set(res["baseline"]["synthetic"])
    table = am.summary_table(res["runs"], ["accuracy"])
    assert [(r["backbone"], r["loss"], r["n"]) for r in table] == [
        ("ir_tiny", "softmax", 1),
        ("ir_tiny", "arcface", 1),
        ("mbf_tiny", "arcface", 1),
    ]


def test_figures_build_headless():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nbfacelib.viz import margins as mv

    check = am.unit_distance_check(n=500, dim=16)
    heads = am.geometry_heads()
    figs = [
        mv.unit_distance_figure(check),
        mv.target_logit_figure(am.target_logits(heads), naive_arcface=0.5),
        mv.decision_boundary_figure(am.decision_regions(heads, n=41)),
        mv.margin_explorer(m_arc=0.3),
    ]
    assert all(len(f.axes) >= 1 for f in figs)
    plt.close("all")
    runs = [
        {
            "backbone": "b",
            "loss": loss,
            "seed": s,
            "synthetic": {"accuracy": 0.7 + 0.01 * s, **{f"acc_q{t}": 0.6 + 0.1 * t for t in range(3)}},
        }  # fmt: skip
        for loss in ("softmax", "arcface")
        for s in range(2)
    ]
    assert len(mv.accuracy_by_loss_figure(runs, "b").data) == 4
    mv.quality_tercile_figure(runs, [("b", "softmax"), ("b", "arcface")])
    plt.close("all")
    xy = np.random.default_rng(0).normal(size=(30, 2))
    assert len(mv.embedding_map_figure(xy, np.repeat(np.arange(3), 10), "t").data) == 3
    assert len(mv.norm_histogram_figure({"a": np.ones(5), "b": np.ones(5)}).data) == 2
    assert "<table" in mv.html_table([{"a": 1.23456, "b": "x"}])
    assert am.project_2d(np.random.default_rng(0).normal(size=(20, 8)), method="pca").shape == (20, 2)
    with pytest.raises(ValueError, match="umap"):
        am.project_2d(np.zeros((3, 2)), method="tsne")


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:sample_pairs:UserWarning")
def test_run_experiments_without_out_dir_cleans_up(tmp_path, monkeypatch):
    import tempfile

    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kw):  # ours lands under tmp_path and is remembered
        if kw.get("prefix") == "nbface01-":
            made.append(real_mkdtemp(*args, **{**kw, "dir": tmp_path}))
            return made[-1]
        return real_mkdtemp(*args, **kw)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    setup = am.Setup(
        small_backbone=None,
        losses=("cosface",),
        seeds=(1,),
        train_ids=4,
        per_id=3,
        steps=1,
        batch_size=4,
        warmup_steps=0,
        input_size=48,
        embedding_size=16,
        eval_ids=4,
        eval_per_id=3,
        eval_pairs=20,
        orl_pairs=0,
        pre_render=False,  # the engine renders each batch (the gpu preset's path)
    )
    res = am.run_experiments(setup, log=None)
    assert [(r["backbone"], r["loss"], r["seed"]) for r in res["runs"]] == [("ir_tiny", "cosface", 1)]
    assert "orl" not in res["runs"][0] and res["eval"]["orl"] is None
    assert res["setup"]["out_dir"] is None
    # the run directory (checkpoints, rendered images) is gone
    assert len(made) == 1 and made[0].startswith(str(tmp_path / "nbface01-"))
    assert not any(tmp_path.iterdir())


def test_head_settings_and_c14_statement_quote_the_heads():
    text = am.head_settings(["softmax", "cosface", "arcface"], {"arcface": {"s": 16, "m": 0.3}})
    assert text == "softmax s=1; cosface s=64 m3=0.4; arcface s=16 m2=0.3"
    runs = _runs({("b", "softmax"): [0.7], ("b", "cosface"): [0.8], ("b", "arcface"): [0.8]})
    assert am.c14_verdict(runs, "b", setting=text)["statement"].endswith("heads: " + text)
