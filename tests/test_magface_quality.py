"""Notebook 04's experiment module (nbfacelib.experiments.magface_quality), the named
degradations it applies to real faces, and the quality figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbfacelib.data.degrade import DEGRADATIONS, degrade, degraded_copies
from nbfacelib.eval.evalsets import EvalSet
from nbfacelib.experiments import magface_quality as mq
from nbfacelib.train.config import TrainConfig


def _faces(n=4, size=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def test_degrade_identity_values_and_strength():
    x = _faces()
    for kind, (identity, _) in DEGRADATIONS.items():
        assert torch.equal(degrade(x, kind, identity), x), kind
    # stronger blur removes more of the pixel noise: lower variance of the image
    v = [degrade(x, "blur_sigma", s).float().var().item() for s in (0.0, 1.0, 3.0)]
    assert v[0] > v[1] > v[2]
    noisy = degrade(x, "noise_sigma", 20.0, seed=1)
    assert torch.equal(noisy, degrade(x, "noise_sigma", 20.0, seed=1))  # seeded
    assert not torch.equal(noisy, degrade(x, "noise_sigma", 20.0, seed=2))
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        degrade(x, "fog", 1.0)
    with pytest.raises(ValueError, match="expected uint8"):
        degrade(x.float(), "blur_sigma", 1.0)


def test_degraded_copies_rows():
    x = _faces(3)
    images, rows = degraded_copies(x, {"blur_sigma": [0, 2], "jpeg_quality": [100, 20, 5]})
    assert images.shape == (15, 3, 112, 112) and len(rows) == 15
    assert rows[0] == {"kind": "blur_sigma", "strength": 0.0, "level": 0, "image": 0}
    assert rows[-1] == {"kind": "jpeg_quality", "strength": 5.0, "level": 2, "image": 2}
    assert torch.equal(images[:3], x) and torch.equal(images[6:9], x)  # the identity levels
    with pytest.raises(ValueError, match="at least one degradation"):
        degraded_copies(x, {})


def test_head_variants_change_only_the_loss():
    base = TrainConfig(steps=2, val=[])
    vs = mq.head_variants(base, {"magface": {}, "adaface": {"m": 0.3}})
    assert [v.name for v in vs] == ["magface", "adaface"]
    assert vs[1].config.loss == "adaface" and vs[1].config.loss_kwargs == {"m": 0.3}
    assert vs[1].config.replace(loss="arcface", loss_kwargs={}) == base.replace(loss="arcface")


def test_spearman_bootstrap_and_terciles():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    iv = mq.spearman_bootstrap(x, x + rng.normal(size=300), n_resamples=200)
    assert 0.5 < iv.lo < iv.estimate < iv.hi < 0.9 and iv.n == 300
    flat = mq.spearman_bootstrap(x, rng.normal(size=300), n_resamples=200)
    assert flat.lo < 0 < flat.hi
    t = mq.terciles(np.arange(9.0))
    assert t.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_rejection_study_orders_oracle_random_and_a_useless_measure():
    rng = np.random.default_rng(1)
    n = 1000
    same = np.arange(n) % 2 == 0
    quality = rng.random(n)
    # low-quality comparisons are noisy: the quality predicts the errors
    scores = np.where(same, 1.0, -1.0) + rng.normal(size=n) * (2.0 - 1.8 * quality)
    rows, curves = mq.rejection_study(
        scores, same, {"oracle": quality, "inverse": -quality}, start_fnmr=0.1, fmr=1e-2, random_draws=5
    )
    by = {r["quality"]: r for r in rows}
    assert set(by) == {"oracle", "inverse", "random"} and set(curves["random"]) == {"edc", "erc"}
    assert by["oracle"]["edc_pauc"] < by["random"]["edc_pauc"] < by["inverse"]["edc_pauc"]
    assert by["oracle"]["erc_auc"] < by["random"]["erc_auc"] < by["inverse"]["erc_auc"]
    assert by["oracle"]["edc_e0"] == by["random"]["edc_e0"] == pytest.approx(0.1)
    assert mq.oracle_gain_fraction(0.02, 0.015, 0.01) == pytest.approx(0.5)
    assert np.isnan(mq.oracle_gain_fraction(0.02, 0.015, 0.03))


class _Norm(torch.nn.Module):
    """A 'model' whose embedding norm is the mean pixel value of the image."""

    def forward(self, x):
        return (x.mean((1, 2, 3)) + 2).unsqueeze(1).repeat(1, 4)


def test_pose_rows_split_frontal_and_profile():
    images = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (200, 210, 20, 30)])
    es = EvalSet("cfp", images, None, [0, 1, 0], [2, 3, 3], [True, True, False])
    rows = mq.pose_rows({"m": _Norm()}, es)
    front = [r["norm"] for r in rows if r["frontal"] == 1]
    side = [r["norm"] for r in rows if r["frontal"] == 0]
    assert len(front) == len(side) == 2 and min(front) > max(side)
    bad = EvalSet("x", images, None, [0, 1], [1, 2], [True, False])
    with pytest.raises(ValueError, match="first of one pair and second of another"):
        mq.pose_rows({"m": _Norm()}, bad)


def test_quality_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    from nbfacelib.viz import quality as qv

    rng = np.random.default_rng(0)
    q, m = rng.random(30), rng.random(30) + 10
    qv.measure_vs_quality_figure({"a": (q, m)}, titles={"a": "rho"})
    qv.tercile_histograms_figure({"a": m}, mq.terciles(q))
    qv.gallery_figure(_faces(5, 16).numpy(), m[:5], q[:5], n=3)
    same = np.arange(30) % 2 == 0
    _, curves = mq.rejection_study(rng.normal(size=30) + same, same, {"n": m}, fmr=0.1, random_draws=2)
    qv.discard_curves_figure(curves, 0.2, 0.1)
    rows = [
        {"kind": k, "strength": float(s), "level": i, "variant": "a", "norm": 10.0 - i, "image": 0}
        for k in ("blur_sigma", "jpeg_quality")
        for i, s in enumerate((0, 2))
    ]
    qv.strength_figure(rows)
    qv.pose_figure([{"variant": "a", "frontal": f, "norm": 10.0 + f} for f in (0, 1, 0, 1)])
