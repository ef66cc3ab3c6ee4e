"""Face-quality evaluation: two "error versus reject" protocols, named apart.

The face-quality literature draws two different curves under one name. Both discard the
comparisons of lowest pair quality (a pair's quality is the LOWER of its two images'
qualities, :func:`pair_quality`) and plot an error against the fraction discarded; they differ
in when the decision threshold is set and how ties are handled:

- :func:`edc` -- **EDC**, "error versus discard" (Schlett et al., arXiv 2303.13294; ISO/IEC
  29794-1). The threshold is fixed ONCE, before anything is discarded, on all comparisons,
  from a starting error: a target FNMR (``start_fnmr``, a quantile of the mated scores) or the
  threshold at a target FMR (``fmr``, from the non-mated scores). Mated comparisons are then
  discarded in ascending pair quality, comparisons of equal quality together (one step of the
  curve per distinct quality), and the error is FNMR among the mated comparisons kept.
  :meth:`DiscardCurve.pauc`: the stepwise area up to a discard limit (default 0.20), and
  optionally minus the theoretical best area ``integral of max(0, e0 - x)`` (a perfect
  quality measure discards exactly the errors first).
- :func:`erc` -- **ERC** as in MagFace's and CR-FIQA's research code (e.g. CR-FIQA
  ``ERC/erc.py``): discard 0, 5, ..., 95% of ALL comparisons by pair quality, RE-DERIVE the
  threshold on the comparisons kept so that FMR stays at ``fmr`` (1e-2, 1e-3, 1e-4), and plot
  FNMR; :meth:`DiscardCurve.auc` is the trapezoid area over 0-0.95. The research code names
  its function "FixedTH", but the threshold moves with the discard rate.

A random-rejection baseline (:func:`random_quality`, random pair qualities) and an oracle
(the ground-truth quality of the synthetic faces) are passed as just another quality array.

Scores are similarities: higher = more alike (a cosine, or PFE's MLS). A comparison is
accepted as "same" when ``score > threshold`` (strict, everywhere here).

Why hand-written: neither scikit-learn nor any maintained package implements EDC or ERC
(the reference implementations live in research repositories); the ROC parts that do exist
(sorting, quantiles) come from numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DiscardCurve",
    "edc",
    "erc",
    "pair_quality",
    "pair_scores",
    "random_quality",
    "ERC_DISCARD",
]

ERC_DISCARD = np.round(np.arange(0.0, 0.951, 0.05), 2)  # MagFace / CR-FIQA: 0-95% in 5% steps


@dataclass
class DiscardCurve:
    """An error-versus-discard curve.

    ``protocol``: ``"edc"`` or ``"erc"``; ``discard`` (K,) fractions discarded (ascending,
    starting at 0); ``error`` (K,) the error on the comparisons kept (FNMR); ``threshold``
    (K,) the threshold used at each point (constant for EDC); ``kept`` (K,) comparisons kept
    (mated ones for EDC, all for ERC); ``info``: the settings (start error, FMR...)."""

    protocol: str
    discard: np.ndarray
    error: np.ndarray
    threshold: np.ndarray
    kept: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def start_error(self) -> float:
        """The error before any discard (``e0``)."""
        return float(self.error[0])

    def error_at(self, x: float) -> float:
        """The error of the step containing discard fraction ``x`` (right-continuous steps)."""
        k = int(np.searchsorted(self.discard, x, side="right")) - 1
        return float(self.error[max(k, 0)])

    def pauc(self, limit: float = 0.20, subtract_best: bool = False) -> float:
        """EDC's partial area: the integral of the step curve (each error holds from its discard
        fraction to the next) from 0 to ``limit``; beyond the last point the last error holds.
        ``subtract_best``: minus the theoretical best area ``int_0^limit max(0, e0 - x) dx``."""
        limit = _check_limit(limit)
        x = np.append(self.discard, math.inf)
        width = np.clip(np.minimum(x[1:], limit) - x[:-1], 0.0, None)
        area = float(np.sum(width * self.error))
        if subtract_best:
            area -= best_area(self.start_error, limit)
        return area

    def auc(self, upto: float | None = None) -> float:
        """ERC's area: trapezoid rule over the curve's points (0-0.95 for :func:`erc`), up to
        ``upto`` (default: the whole curve)."""
        keep = np.ones(len(self.discard), bool) if upto is None else self.discard <= upto + 1e-12
        if keep.sum() < 2:
            return 0.0
        return float(np.trapezoid(self.error[keep], self.discard[keep]))


def best_area(e0: float, limit: float) -> float:
    """``int_0^limit max(0, e0 - x) dx``: a quality measure that discards the errors first."""
    return e0 * limit - limit**2 / 2 if limit <= e0 else e0**2 / 2


# ------------------------------------------------------------------------------ inputs
def pair_quality(quality: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    """The quality of each comparison: the lower of its two images' qualities (MagFace,
    ISO/IEC 29794-1). ``quality`` (N,) per image; ``idx1``, ``idx2`` (P,) image indices."""
    quality = np.asarray(quality, float)
    idx1, idx2 = np.asarray(idx1), np.asarray(idx2)
    if quality.ndim != 1:
        raise ValueError(f"pair_quality: quality must be 1-D (one value per image), got {quality.shape}")
    if idx1.shape != idx2.shape:
        raise ValueError(f"pair_quality: idx1 {idx1.shape} and idx2 {idx2.shape} differ")
    if len(idx1) and max(idx1.max(), idx2.max()) >= len(quality):
        raise ValueError(
            f"pair_quality: a pair index ({max(idx1.max(), idx2.max())}) is outside the "
            f"{len(quality)} per-image qualities (quality array of the wrong length?)"
        )
    return np.minimum(quality[idx1], quality[idx2])


def pair_scores(embeddings: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of (not necessarily normalised) embeddings (N, D)."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    return np.einsum("ij,ij->i", e[idx1], e[idx2])


def random_quality(n: int, seed: int = 0) -> np.ndarray:
    """Random pair qualities (uniform, distinct with probability 1): the random-rejection
    baseline of either protocol."""
    return np.random.default_rng(seed).random(int(n))


def _check_limit(limit: float) -> float:
    limit = float(limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"discard limit must be in (0, 1], got {limit}")
    return limit


def _check(scores, issame, quality) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64)
    issame = np.asarray(issame)
    quality = np.asarray(quality, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per comparison), got shape {scores.shape}")
    if issame.shape != scores.shape:
        raise ValueError(f"issame has {issame.shape} entries for {scores.shape} scores")
    if quality.shape != scores.shape:
        raise ValueError(
            f"quality has {quality.shape[0] if quality.ndim else 0} entries for {len(scores)} "
            f"comparisons: give one pair quality per comparison (pair_quality())"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(
            f"scores contain NaN or infinity at {len(bad)} comparisons (first: {bad[:5].tolist()})"
        )
    bad = np.flatnonzero(~np.isfinite(quality))
    if len(bad):
        raise ValueError(
            f"quality contains NaN or infinity at {len(bad)} comparisons (first: {bad[:5].tolist()})"
        )
    if issame.dtype != np.bool_:
        if not np.isin(issame, (0, 1)).all():
            raise ValueError("issame must be booleans (or 0/1)")
        issame = issame.astype(bool)
    return scores, issame, quality


def threshold_at_fmr(impostor: np.ndarray, fmr: float) -> float:
    """The threshold ``t`` with ``#(impostor > t) <= fmr * n`` and as low as the sample allows:
    the ``(k + 1)``-th highest impostor score, ``k = floor(fmr * n)`` (ties may accept fewer).
    Below one impostor per ``1/fmr`` this is the highest impostor score (FMR 0)."""
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    if len(impostor) == 0:
        raise ValueError("threshold_at_fmr: no non-mated comparison to set a threshold on")
    k = int(math.floor(fmr * len(impostor) + 1e-9))
    return float(np.sort(impostor)[::-1][min(k, len(impostor) - 1)])


# ------------------------------------------------------------------------------ EDC
def edc(
    scores: np.ndarray,
    issame: np.ndarray,
    quality: np.ndarray,
    start_fnmr: float | None = 0.05,
    fmr: float | None = None,
) -> DiscardCurve:
    """EDC (Schlett et al.; ISO/IEC 29794-1) of FNMR against the fraction of mated comparisons
    discarded, in ascending pair ``quality``, ties discarded together.

    The threshold is fixed once on all comparisons: with ``fmr`` given, the threshold at that
    FMR on the non-mated comparisons (:func:`threshold_at_fmr`); otherwise the one that rejects
    ``round(start_fnmr * n)`` of the ``n`` mated comparisons (the lowest scores; with tied
    scores the starting FNMR is what the ties allow, ``curve.start_error``).

    Points: ``discard[0] = 0``, then after each distinct quality value the fraction of mated
    comparisons with quality <= it; the point where nothing would be left is omitted."""
    scores, issame, quality = _check(scores, issame, quality)
    gen, gq = scores[issame], quality[issame]
    n = len(gen)
    if n == 0:
        raise ValueError("edc: no mated comparison (issame is all False)")
    if fmr is not None:
        t = threshold_at_fmr(scores[~issame], fmr)
        info: dict[str, Any] = {"fmr": float(fmr)}
    else:
        if start_fnmr is None or not 0.0 <= start_fnmr < 1.0:
            raise ValueError(f"edc: start_fnmr must be in [0, 1), got {start_fnmr}")
        k = int(round(start_fnmr * n))
        t = float(np.sort(gen)[k - 1]) if k > 0 else -math.inf  # reject the k lowest: score <= t
        info = {"start_fnmr": float(start_fnmr)}
    wrong = gen <= t  # a false non-match: a mated comparison not accepted (score > t)
    order = np.argsort(gq, kind="stable")
    q_sorted, wrong_sorted = gq[order], wrong[order]
    values, counts = np.unique(q_sorted, return_counts=True)
    gone = np.concatenate([[0], np.cumsum(counts)])  # discarded after 0, 1, ... distinct values
    err_cum = np.concatenate([[0], np.cumsum(wrong_sorted)])
    gone = gone[gone < n]  # at least one comparison kept
    kept = n - gone
    error = (err_cum[-1] - err_cum[gone]) / kept
    info["threshold"] = t
    return DiscardCurve("edc", gone / n, error, np.full(len(gone), t), kept, info)


# ------------------------------------------------------------------------------ ERC
def erc(
    scores: np.ndarray,
    issame: np.ndarray,
    quality: np.ndarray,
    fmr: float = 1e-3,
    discard: np.ndarray | None = None,
) -> DiscardCurve:
    """ERC as in MagFace's / CR-FIQA's research code: for each discard rate ``u`` in
    ``discard`` (default 0, 0.05, ..., 0.95) keep the comparisons whose pair quality is at or
    above the ``100 u``-th percentile of all pair qualities (``np.percentile``, linear; ties
    with the percentile are kept), re-derive the threshold at ``fmr`` on the non-mated
    comparisons kept (:func:`threshold_at_fmr`), and report FNMR on the mated ones kept.

    ``discard`` holds the nominal rates (what the research code plots, ties make the actual
    fraction smaller; ``info["actual_discard"]`` has them). A point with no mated or no
    non-mated comparison left is NaN."""
    scores, issame, quality = _check(scores, issame, quality)
    rates = ERC_DISCARD if discard is None else np.asarray(discard, float)
    if rates.ndim != 1 or len(rates) == 0 or rates.min() < 0 or rates.max() >= 1:
        raise ValueError(f"erc: discard rates must be a non-empty 1-D sequence in [0, 1), got {rates}")
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"erc: fmr must be in (0, 1), got {fmr}")
    errors, thresholds, kept, actual = [], [], [], []
    for u in rates:
        keep = quality >= np.percentile(quality, 100 * u)
        gen, imp = scores[keep & issame], scores[keep & ~issame]
        kept.append(int(keep.sum()))
        actual.append(1.0 - keep.mean())
        if len(gen) == 0 or len(imp) == 0:
            errors.append(math.nan)
            thresholds.append(math.nan)
            continue
        t = threshold_at_fmr(imp, fmr)
        thresholds.append(t)
        errors.append(float(np.mean(gen <= t)))
    info = {"fmr": float(fmr), "actual_discard": np.asarray(actual)}
    errors_, thresholds_ = np.asarray(errors), np.asarray(thresholds)
    return DiscardCurve("erc", rates.copy(), errors_, thresholds_, np.asarray(kept), info)
