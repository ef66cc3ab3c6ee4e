"""Notebook 05's experiment module (nbfacelib.experiments.pfe_uncertainty)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nbfacelib.eval.evalsets import EvalSet
from nbfacelib.experiments import pfe_uncertainty as pu
from nbfacelib.models import build_backbone
from nbfacelib.train.config import TrainConfig


def test_pfe_variant_on_a_base_run():
    base = TrainConfig(steps=5, val=[], batch_size=32, lr=0.1, warmup_steps=2)
    v = pu.pfe_variant(base, "/runs/base", steps=7, lr=0.01)
    cfg = v.config
    assert (cfg.backbone, cfg.loss, cfg.steps, cfg.lr, cfg.warmup_steps) == ("pfe", "pfe_mls", 7, 0.01, 0)
    assert cfg.backbone_kwargs == {"base_run": "/runs/base"} and cfg.images_per_identity == 4
    assert base.images_per_identity == 1  # the base model trains on independent draws


def test_harmonic_sigma2_and_scores():
    s2 = np.array([[1.0, 1.0], [1.0, 3.0]])
    np.testing.assert_allclose(pu.harmonic_sigma2(s2), [1.0, 2 / (1 + 1 / 3)])
    mu = np.array([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    sc = pu.score_pairs(mu, np.full((3, 2), 0.5), np.array([0, 0]), np.array([1, 2]))
    np.testing.assert_allclose(sc["cosine"], [0.0, math.sqrt(0.5)])
    # MLS with sigma^2 = 0.5 everywhere: -1/2 (|mu1 - mu2|^2 / 1 + 2 log 1) - log(2 pi)
    d2 = np.array([2.0, 2 - 2 * math.sqrt(0.5)])
    np.testing.assert_allclose(sc["mls"], -0.5 * d2 - math.log(2 * math.pi))


def test_verification_by_tercile_rows():
    rng = np.random.default_rng(0)
    n = 120
    same = np.arange(n) % 2 == 0
    q = rng.random(n)
    scores = {"a": same + rng.normal(size=n) * (1.5 - q), "b": rng.normal(size=n)}
    assert [r["tercile"] for r in pu.verification_by_tercile(scores, same, None)] == ["all", "all"]
    rows = pu.verification_by_tercile(scores, same, q)
    assert [(r["tercile"], r["score"]) for r in rows[:4]] == [("all", "a"), ("all", "b"), (0, "a"), (0, "b")]
    assert sum(r["pairs"] for r in rows if r["score"] == "a" and r["tercile"] != "all") == n
    by = {(r["tercile"], r["score"]): r for r in rows}
    assert by[("all", "a")]["auc"] > by[("all", "b")]["auc"]
    assert by[(2, "a")]["auc"] > by[(0, "a")]["auc"]  # the high-quality pairs are the easy ones


def test_template_study_fusion_helps_when_variance_marks_the_noisy_images():
    rng = np.random.default_rng(1)
    ids, per, d = 10, 10, 16
    centres = rng.normal(size=(ids, d))
    labels = np.repeat(np.arange(ids), per)
    noisy = rng.random(len(labels)) < 0.5
    mu = centres[labels] + rng.normal(size=(len(labels), d)) * np.where(noisy, 3.0, 0.3)[:, None]
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    sigma2 = np.where(noisy, 1.0, 0.01)[:, None].repeat(d, 1)
    rows = pu.template_study(mu, sigma2, labels, [1, 5], n_impostor=3)
    by = {(r["k"], r["score"]): r["auc"] for r in rows}
    assert set(by) == {(k, s) for k in (1, 5) for s in ("pfe_paper", "pfe_official", "average")}
    assert by[(5, "pfe_paper")] >= by[(5, "average")]
    assert all(r["pairs"] == 10 + 10 * 3 for r in rows)


def test_heldout_nuisances_match_the_renderer():
    # labels of a synthetic_heldout set of 2 identities x 2 images after 5 training ids (offset 6)
    es = EvalSet("synthetic", torch.zeros(4, 3, 8, 8), np.array([0, 0, 1, 1]), [0, 2], [1, 3], [True, True])
    from nbfacelib.data.synthetic import SyntheticFaces

    ds = SyntheticFaces(2, 2, identity_offset=6)
    n = pu.heldout_nuisances(es, train_ids=5)
    for i in range(4):
        ref = ds.nuisances(i)
        assert n["noise_sigma"][i] == pytest.approx(ref["noise_sigma"])
        assert n["|yaw|"][i] == pytest.approx(abs(ref["yaw"]))
        assert n["jpeg (100 - quality)"][i] == pytest.approx(100 - ref["jpeg_quality"])
    rows = pu.nuisance_rows(np.arange(4.0), n)
    assert {r["nuisance"] for r in rows} == set(pu.NUISANCES)


def test_gaussian_embedding_probe_and_degraded_rows():
    torch.manual_seed(0)
    model = build_backbone("pfe", embedding_size=8, input_size=32).eval()
    images = (torch.rand(3, 3, 112, 112) * 255).to(torch.uint8)
    from nbfacelib.data import transforms

    mu, s2 = pu.embed_gaussian(model, transforms.resize(images, 32))
    assert mu.shape == s2.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), 1.0, rtol=1e-5)
    assert (s2 > 0).all()
    rows = pu.degraded_rows(model, images, {"blur_sigma": [0, 2]}, 32)
    assert len(rows) == 6 and {"sigma2", "norm", "level", "kind"} <= set(rows[0])
    p = pu.probe(model, images[0], "jpeg_quality", 1.0, 32)
    assert p["strength"] == 5.0 and p["image"].shape == (3, 112, 112) and p["sigma2"] > 0
    with pytest.raises(ValueError, match="returns no log_sigma2"):
        pu.embed_gaussian(
            build_backbone("ir_tiny", embedding_size=8, input_size=32), transforms.resize(images, 32)
        )


def test_logged_loss_drop(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": -10.0}\n{"step": 4, "eval": 1}\n{"step": 6, "loss": -25.5}\n')
    assert pu.logged_loss_drop(path) == 15.5
    path.write_text('{"step": 2, "loss": -10.0}\n')
    with pytest.raises(ValueError, match="fewer than two logged losses"):
        pu.logged_loss_drop(path)
