"""Notebook 04 (MagFace, document 002): the experiments behind claim C8, "MagFace's feature
norm tracks image quality; rejecting low-norm faces lowers error".

- :func:`head_variants`: MagFace, ArcFace (the same backbone without MagFace) and AdaFace as
  grid variants of ONE training config, each head at its paper's defaults;
- :func:`norm_rows`, :func:`spearman_bootstrap`: the feature norm of every held-out synthetic
  image against its ground-truth quality (Spearman with a bootstrap interval);
- :func:`rejection_study`: EDC and ERC (:mod:`nbfacelib.eval.quality`) for each quality measure
  (a model's norm, the ground-truth oracle) and random rejection;
- :func:`degraded_rows`: the norm of real faces (ORL) degraded at known strengths;
- :func:`pose_rows`: the norm of CFP's frontal and profile photographs (pose as the real
  nuisance), from a published protocol's pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nbfacelib.eval import quality as qe
from nbfacelib.experiments.grid import Variant
from nbfacelib.report.stats import Interval
from nbfacelib.train.config import TrainConfig

# The heads compared, each at its paper's defaults (s 64; MagFace l_a 10, u_a 110, l_m 0.45,
# u_m 0.8, lambda_g 35; ArcFace m 0.5; AdaFace m 0.4, h 0.333, t_alpha 0.01).
HEADS: dict[str, dict[str, Any]] = {"magface": {}, "arcface": {}, "adaface": {}}


def head_variants(base: TrainConfig, heads: Mapping[str, Mapping[str, Any]]) -> list[Variant]:
    """One grid variant per margin head: ``base`` with ``loss = name`` and its keywords."""
    return [
        Variant(name, base.replace(loss=name, loss_kwargs=dict(kw)), {"head": name})
        for name, kw in heads.items()
    ]


# ------------------------------------------------------------------------------ norm vs quality
def norm_rows(
    evaluations: Mapping[tuple[str, int, str], Any], evalset, name: str = "synthetic"
) -> list[dict]:
    """One row per (variant, seed, held-out image): ``norm`` (feature norm of the plain image),
    ``quality`` (ground truth), ``image``."""
    rows = []
    for (variant, seed, where), res in evaluations.items():
        if where != name:
            continue
        rows += [
            {"variant": variant, "seed": seed, "image": i, "norm": float(n), "quality": float(q)}
            for i, (n, q) in enumerate(zip(res.norms, evalset.quality, strict=True))
        ]
    return rows


def spearman_bootstrap(
    x: Sequence[float], y: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Spearman correlation of ``x`` and ``y`` with its percentile bootstrap interval over the
    (x, y) points resampled together (``scipy.stats.bootstrap``, paired)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    r = float(stats.spearmanr(x, y)[0])
    res = stats.bootstrap(
        (x, y),
        lambda a, b: stats.spearmanr(a, b)[0],
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=seed,
    )
    ci = res.confidence_interval
    return Interval(r, float(ci.low), float(ci.high), len(x), confidence)


def terciles(quality: np.ndarray) -> np.ndarray:
    """Tercile of each value (0 = lowest third) at the 1/3 and 2/3 quantiles."""
    return np.digitize(quality, np.quantile(quality, [1 / 3, 2 / 3]))


# ------------------------------------------------------------------------------ rejection
def rejection_study(
    scores: np.ndarray,
    issame: np.ndarray,
    pair_qualities: Mapping[str, np.ndarray],
    start_fnmr: float = 0.05,
    fmr: float = 1e-2,
    limit: float = 0.2,
    random_draws: int = 20,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, qe.DiscardCurve]]]:
    """EDC (threshold fixed at ``start_fnmr``, pAUC to ``limit``) and ERC (threshold re-derived
    at ``fmr``, AUC over 0-0.95) of each named pair quality, plus ``random`` (mean over
    ``random_draws`` random qualities; its curves: the first draw's EDC, the mean ERC).

    Returns (rows {quality, edc_pauc, edc_pauc_minus_best, erc_auc, edc_e0, erc_e0}, curves
    {quality: {"edc": curve, "erc": curve}})."""
    rows, curves = [], {}
    for name, q in pair_qualities.items():
        e, r = qe.edc(scores, issame, q, start_fnmr=start_fnmr), qe.erc(scores, issame, q, fmr=fmr)
        curves[name] = {"edc": e, "erc": r}
        rows.append(_row(name, [e], [r], limit))
    draws = [qe.random_quality(len(scores), seed + k) for k in range(random_draws)]
    e_rand = [qe.edc(scores, issame, q, start_fnmr=start_fnmr) for q in draws]
    r_rand = [qe.erc(scores, issame, q, fmr=fmr) for q in draws]
    mean_erc = qe.DiscardCurve(
        "erc",
        r_rand[0].discard,
        np.nanmean([c.error for c in r_rand], axis=0),
        np.nanmean([c.threshold for c in r_rand], axis=0),
        r_rand[0].kept,
        {**r_rand[0].info, "draws": random_draws},
    )
    curves["random"] = {"edc": e_rand[0], "erc": mean_erc}
    rows.append(_row("random", e_rand, r_rand, limit))
    return rows, curves


def _row(name: str, edcs: Sequence[qe.DiscardCurve], ercs: Sequence[qe.DiscardCurve], limit: float) -> dict:
    return {
        "quality": name,
        "edc_pauc": float(np.mean([c.pauc(limit) for c in edcs])),
        "edc_pauc_minus_best": float(np.mean([c.pauc(limit, subtract_best=True) for c in edcs])),
        "erc_auc": float(np.mean([c.auc() for c in ercs])),
        "edc_e0": float(edcs[0].start_error),
        "erc_e0": float(ercs[0].error[0]),
    }


def oracle_gain_fraction(random: float, measure: float, oracle: float) -> float:
    """How much of the oracle's pAUC reduction over random rejection a measure achieves:
    ``(random - measure) / (random - oracle)`` (1 = as good as the ground truth; NaN when the
    oracle does not beat random)."""
    gap = random - oracle
    return float((random - measure) / gap) if gap > 0 else float("nan")


# ------------------------------------------------------------------------------ real faces
@torch.no_grad()
def image_norms(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Feature norm of each uint8 image (no flip) under ``model`` (eval mode)."""
    from nbfacelib.eval.embed import embed

    emb = embed(model, images, batch_size=batch_size, flip=False, progress=False, normalize=False)
    return np.linalg.norm(emb, axis=1)


def degraded_rows(
    models: Mapping[str, torch.nn.Module],
    images112: torch.Tensor,
    strengths: Mapping[str, list[float]],
    input_size: int,
) -> list[dict[str, Any]]:
    """Real faces degraded at known strengths (:func:`nbfacelib.data.degrade.degraded_copies`,
    at 112 px, then resized to the model input): one row per (model, degraded image) with
    ``variant``, ``kind``, ``strength``, ``level``, ``image``, ``norm``."""
    from nbfacelib.data import transforms
    from nbfacelib.data.degrade import degraded_copies

    images, meta = degraded_copies(images112, dict(strengths))
    images = transforms.resize(images, input_size)
    rows = []
    for name, model in models.items():
        norms = image_norms(model, images)
        rows += [{**m, "variant": name, "norm": float(n)} for m, n in zip(meta, norms, strict=True)]
    return rows


def pose_rows(models: Mapping[str, torch.nn.Module], evalset) -> list[dict[str, Any]]:
    """Norms of a CFP protocol's photographs: the first image of every pair is frontal, the
    second profile (CFP-FP), so the images split by the side they appear on. One row per
    (model, image): ``variant``, ``frontal`` (1 / 0), ``norm``."""
    frontal = np.unique(evalset.idx1)
    profile = np.unique(evalset.idx2)
    if np.intersect1d(frontal, profile).size:
        raise ValueError(f"{evalset.name}: an image is first of one pair and second of another: not CFP-FP")
    rows = []
    for name, model in models.items():
        norms = image_norms(model, evalset.images)
        rows += [{"variant": name, "frontal": 1, "norm": float(norms[i])} for i in frontal]
        rows += [{"variant": name, "frontal": 0, "norm": float(norms[i])} for i in profile]
    return rows
