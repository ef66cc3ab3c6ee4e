"""EDC and ERC (nbfacelib.eval.quality) on hand-made comparisons whose curves are worked out
on paper in the comments, ties included, and the two protocols told apart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbfacelib.eval.quality import (
    DiscardCurve,
    best_area,
    edc,
    erc,
    pair_quality,
    pair_scores,
    random_quality,
    threshold_at_fmr,
)

# EDC example: 8 mated comparisons (and 2 non-mated, which EDC's FNMR ignores).
EDC_SCORES = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95, 0.05])
EDC_SAME = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
EDC_Q = np.array([0.1, 0.1, 0.3, 0.5, 0.5, 0.7, 0.8, 0.9, 0.0, 1.0])


def test_edc_worked_example_with_ties():
    # start FNMR 0.25 of 8 mated -> reject the 2 lowest scores: threshold 0.2, errors at the
    # comparisons scored 0.1 (quality 0.1) and 0.2 (quality 0.3).
    # Distinct qualities 0.1 (x2, one error, one not: discarded together), 0.3, 0.5 (x2), 0.7,
    # 0.8, 0.9 -> discarded 0, 2, 3, 5, 6, 7 of 8 (8 would leave nothing: omitted).
    # errors left: 2/8, 1/6, 0/5, 0/3, 0/2, 0/1.
    c = edc(EDC_SCORES, EDC_SAME, EDC_Q, start_fnmr=0.25)
    assert c.protocol == "edc"
    np.testing.assert_allclose(c.discard, [0, 2 / 8, 3 / 8, 5 / 8, 6 / 8, 7 / 8])
    np.testing.assert_allclose(c.error, [2 / 8, 1 / 6, 0, 0, 0, 0])
    np.testing.assert_array_equal(c.kept, [8, 6, 5, 3, 2, 1])
    assert c.info["threshold"] == 0.2 and np.all(c.threshold == 0.2)
    assert c.start_error == 0.25
    # pAUC to 0.2: the first step only, 0.25 * 0.2. To 0.5: 0.25 * 0.25 + 1/6 * 0.125.
    assert c.pauc(0.2) == pytest.approx(0.05)
    assert c.pauc(0.5) == pytest.approx(0.0625 + 0.125 / 6)
    # theoretical best to 0.5 with e0 = 0.25: int max(0, 0.25 - x) = 0.25^2 / 2
    assert c.pauc(0.5, subtract_best=True) == pytest.approx(0.0625 + 0.125 / 6 - 0.03125)
    # to 0.2 (< e0): 0.25 * 0.2 - 0.2^2 / 2 = 0.03 subtracted
    assert c.pauc(0.2, subtract_best=True) == pytest.approx(0.05 - 0.03)
    # the whole curve: the last error (0) holds to 1
    assert c.pauc(1.0) == pytest.approx(0.0625 + 0.125 / 6)
    assert c.error_at(0.3) == pytest.approx(1 / 6) and c.error_at(0.0) == 0.25


def test_edc_threshold_from_fmr_is_fixed_once():
    # non-mated scores 0.95 and 0.05; FMR 0.5 -> k = 1 -> threshold = 2nd highest = 0.05: no
    # mated comparison is at or below it, FNMR 0 everywhere
    c = edc(EDC_SCORES, EDC_SAME, EDC_Q, fmr=0.5)
    assert c.info == {"fmr": 0.5, "threshold": 0.05}
    assert np.all(c.error == 0)
    # FMR 0.1 of 2 impostors -> k = 0 -> the highest impostor, 0.95: every mated comparison fails
    c = edc(EDC_SCORES, EDC_SAME, EDC_Q, fmr=0.1)
    assert np.all(c.error == 1.0)


def test_best_area():
    assert best_area(0.05, 0.2) == pytest.approx(0.05**2 / 2)
    assert best_area(0.3, 0.2) == pytest.approx(0.3 * 0.2 - 0.02)


# ERC example: 10 comparisons, distinct qualities 0.1 .. 1.0.
ERC_SCORES = np.array([0.9, 0.1, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.1, 0.5])
ERC_SAME = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1], bool)
ERC_Q = np.round(np.arange(1, 11) / 10, 1)


def test_erc_worked_example():
    # u = 0: impostors 0.9 0.3 0.2 0.4 0.1, FMR 0.2 -> k = 1 -> threshold 0.4 (2nd highest);
    #   mated 0.1 0.8 0.7 0.6 0.5 -> one at or below 0.4: FNMR 0.2.
    # u = 0.2: 20th percentile of 0.1..1.0 = 0.28 -> the two lowest dropped (impostor 0.9 and
    #   mated 0.1); impostors 0.3 0.2 0.4 0.1, k = floor(0.8) = 0 -> threshold 0.4; FNMR 0.
    # u = 0.4: percentile 0.46 -> qualities 0.5.. kept; impostors 0.2 0.4 0.1 -> 0.4; FNMR 0.
    c = erc(ERC_SCORES, ERC_SAME, ERC_Q, fmr=0.2, discard=[0.0, 0.2, 0.4])
    assert c.protocol == "erc"
    np.testing.assert_allclose(c.error, [0.2, 0.0, 0.0])
    np.testing.assert_allclose(c.threshold, [0.4, 0.4, 0.4])
    np.testing.assert_array_equal(c.kept, [10, 8, 6])
    np.testing.assert_allclose(c.info["actual_discard"], [0.0, 0.2, 0.4])
    assert c.auc() == pytest.approx(0.5 * 0.2 * 0.2)  # trapezoid over (0, 0.2, 0.4)


def test_erc_default_rates_and_ties():
    c = erc(ERC_SCORES, ERC_SAME, ERC_Q, fmr=0.2)
    np.testing.assert_allclose(c.discard, np.arange(20) * 0.05)
    # all qualities equal: the percentile equals every value, nothing is discarded at any rate
    flat = erc(ERC_SCORES, ERC_SAME, np.ones(10), fmr=0.2, discard=[0.0, 0.5])
    np.testing.assert_array_equal(flat.kept, [10, 10])
    np.testing.assert_allclose(flat.error, [0.2, 0.2])
    np.testing.assert_allclose(flat.info["actual_discard"], [0.0, 0.0])


def test_edc_and_erc_differ_where_the_threshold_moves():
    # four low-quality impostors score 0.9, four high-quality ones 0.1; four mated score 0.5.
    scores = np.array([0.9] * 4 + [0.1] * 4 + [0.5] * 4)
    same = np.array([0] * 8 + [1] * 4, bool)
    q = np.array([0.1] * 4 + [0.9] * 4 + [0.8] * 4)
    # FMR 0.25 of 8 -> k = 2 -> threshold 0.9 on all: every mated comparison fails
    fixed = edc(scores, same, q, fmr=0.25)
    assert np.all(fixed.error == 1.0)  # EDC: the threshold stays; discarding mated ones changes nothing
    moving = erc(scores, same, q, fmr=0.25, discard=[0.0, 0.5])
    # ERC at 50%: the low-quality impostors are gone, the threshold drops to 0.1: FNMR 0
    np.testing.assert_allclose(moving.error, [1.0, 0.0])
    np.testing.assert_allclose(moving.threshold, [0.9, 0.1])


def test_random_rejection_keeps_the_error_flat_on_average():
    rng = np.random.default_rng(0)
    n = 2000
    same = np.arange(n) % 2 == 0
    scores = np.where(same, rng.normal(1, 1, n), rng.normal(-1, 1, n))
    e0, mid = [], []
    for seed in range(20):
        c = edc(scores, same, random_quality(n, seed), start_fnmr=0.1)
        e0.append(c.start_error)
        mid.append(c.error_at(0.5))
    assert np.mean(e0) == pytest.approx(0.1)
    assert np.mean(mid) == pytest.approx(0.1, abs=0.01)
    # a quality that knows the errors (low for the low-scoring mated ones) drops it to 0
    oracle = edc(scores, same, scores, start_fnmr=0.1)
    assert oracle.error_at(0.1) == 0.0
    assert oracle.pauc(0.2, subtract_best=True) == pytest.approx(0.0, abs=1e-3)


def test_threshold_at_fmr():
    imp = np.array([0.1, 0.5, 0.3, 0.9])
    assert threshold_at_fmr(imp, 0.25) == 0.5  # k = 1: one impostor (0.9) above
    assert threshold_at_fmr(imp, 0.1) == 0.9  # k = 0: none above
    with pytest.raises(ValueError, match="fmr must be in"):
        threshold_at_fmr(imp, 0.0)


def test_pair_quality_and_scores():
    q = np.array([0.9, 0.2, 0.5])
    np.testing.assert_allclose(pair_quality(q, [0, 0, 2], [1, 2, 2]), [0.2, 0.5, 0.5])
    emb = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    np.testing.assert_allclose(pair_scores(emb, [0, 0], [1, 2]), [0.0, math.sqrt(0.5)])


def test_bad_input_errors():
    with pytest.raises(ValueError, match="quality has 9 entries for 10 comparisons"):
        edc(EDC_SCORES, EDC_SAME, EDC_Q[:9])
    with pytest.raises(ValueError, match="quality has 3 entries for 10 comparisons"):
        erc(ERC_SCORES, ERC_SAME, ERC_Q[:3])
    nan = EDC_SCORES.copy()
    nan[3] = np.nan
    with pytest.raises(ValueError, match=r"scores contain NaN or infinity at 1 comparisons \(first: \[3\]\)"):
        edc(nan, EDC_SAME, EDC_Q)
    with pytest.raises(ValueError, match="scores contain NaN"):
        erc(nan, EDC_SAME, EDC_Q)
    with pytest.raises(ValueError, match="quality contains NaN"):
        edc(EDC_SCORES, EDC_SAME, np.where(EDC_Q > 0.5, np.nan, EDC_Q))
    c = edc(EDC_SCORES, EDC_SAME, EDC_Q)
    for limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"discard limit must be in \(0, 1\]"):
            c.pauc(limit)
    with pytest.raises(ValueError, match="outside the 3 per-image qualities"):
        pair_quality(np.ones(3), [0, 3], [1, 2])
    with pytest.raises(ValueError, match="start_fnmr must be in"):
        edc(EDC_SCORES, EDC_SAME, EDC_Q, start_fnmr=1.0)
    with pytest.raises(ValueError, match="discard rates"):
        erc(ERC_SCORES, ERC_SAME, ERC_Q, discard=[0.0, 1.0])
    assert isinstance(c, DiscardCurve)
