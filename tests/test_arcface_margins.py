"""Notebook 01's package code: the C13 check, the margin geometry (against the heads and
against hand-computed values), the margin scale rule, the grid's variants and the C14/C15 rules."""

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
        am.margin_explorer(m_arc=0.3),
    ]
    assert all(len(f.axes) >= 1 for f in figs)
    plt.close("all")


# ------------------------------------------------------------------------- C14 / C15 set-up
def test_adacos_scale():
    assert am.adacos_scale(64) == pytest.approx(math.sqrt(2) * math.log(63))
    assert am.adacos_scale(85742) == pytest.approx(16.06, abs=0.01)  # MS1MV2
    with pytest.raises(ValueError, match="3 classes"):
        am.adacos_scale(2)


def test_margin_variants_change_one_base_config():
    from nbfacelib.train import TrainConfig

    base = TrainConfig(backbone="ir_tiny", steps=5, lr=0.05, data="synthetic:ids=8,per_id=2", val=[])
    vs = am.margin_variants(base, ["softmax", "cosface", "arcface"], 5.5, [64.0], small_backbone="mbf_tiny")
    names = [v.name for v in vs]
    assert names == ["softmax", "cosface", "arcface", "cosface s=64", "arcface s=64", "mbf_tiny"]
    by = {v.name: v for v in vs}
    assert by["softmax"].config.loss_kwargs == {} and by["softmax"].labels["s"] is None
    assert by["arcface"].config.loss_kwargs == {"s": 5.5} and by["cosface s=64"].config.loss_kwargs == {
        "s": 64.0
    }
    assert (by["mbf_tiny"].config.backbone, by["mbf_tiny"].config.loss) == ("mbf_tiny", "arcface")
    assert by["arcface s=64"].evalsets == ("synthetic",) and by["arcface"].evalsets is None
    # everything else is the base's
    assert all((v.config.steps, v.config.lr, v.config.data) == (5, 0.05, base.data) for v in vs)


def test_c14_and_c15_rules():
    seeds = lambda *v: dict(enumerate(v))  # noqa: E731
    data = {
        "softmax": seeds(0.70, 0.71, 0.69),
        "cosface": seeds(0.80, 0.81, 0.80),
        "arcface": seeds(0.81, 0.82, 0.81),
    }
    assert am.c14_rule().judge(data).holds is True
    assert am.c14_rule().judge({**data, "softmax": seeds(0.85, 0.86, 0.85)}).holds is False
    assert am.c14_rule().judge({**data, "arcface": seeds(0.75, 0.76, 0.75)}).holds is False
    at64 = {"cosface s=64": data["cosface"], "arcface s=64": data["arcface"], "softmax": data["softmax"]}
    assert am.c14_rule(cosface="cosface s=64", arcface="arcface s=64").judge(at64).holds is True
    c15 = am.c15_rule("small", "big")
    close = {"small": seeds(0.80, 0.81, 0.80), "big": seeds(0.81, 0.815, 0.80), "mac_ratio": 0.1}
    assert c15.judge(close).holds is True
    assert c15.judge({**close, "mac_ratio": 0.5}).holds is False
    assert c15.judge({**close, "small": seeds(0.70, 0.71, 0.70)}).holds is False
    assert c15.judge({"small": {0: 0.8}, "big": {0: 0.81}, "mac_ratio": 0.1}).holds is None


def test_head_settings_quote_the_heads():
    text = am.head_settings(["softmax", "cosface", "arcface"], {"arcface": {"s": 16, "m": 0.3}})
    assert text == "softmax s=1; cosface s=64 m3=0.4; arcface s=16 m2=0.3"
