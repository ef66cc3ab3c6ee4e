"""report/stats.py: seed pairing, t-intervals (against a hand computation), each comparison
rule's three outcomes, and claim() taking a Verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbfacelib.report import stats
from nbfacelib.report.record import claim, claims, reset

T975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom


def test_mean_interval_matches_hand_computation():
    d = np.array([0.1, 0.11, 0.09])
    iv = stats.mean_interval(d)
    half = T975_2 * d.std(ddof=1) / math.sqrt(3)
    assert iv.estimate == pytest.approx(0.1)
    assert (iv.lo, iv.hi) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    one = stats.mean_interval([0.3])
    assert (one.lo, one.hi, one.n) == (-math.inf, math.inf, 1)
    with pytest.raises(ValueError, match="finite"):
        stats.mean_interval([0.1, float("nan")])


def test_pairing_is_by_seed_value_not_position():
    # the same runs, listed in different orders: seed 0 must meet seed 0
    a = {0: 0.80, 1: 0.90, 2: 0.70}
    b = {2: 0.69, 0: 0.79, 1: 0.89}
    iv = stats.paired_difference(a, b)
    assert iv.estimate == pytest.approx(0.01)
    assert iv.hi - iv.lo == pytest.approx(0.0, abs=1e-12)  # every difference is 0.01
    # by position the differences would be 0.11, 0.01, -0.19: a wide interval
    seeds, va, vb = stats.pair_by_seed(a, {7: 1.0, 2: 0.5, 0: 0.1})
    assert seeds == [0, 2] and va.tolist() == [0.8, 0.7] and vb.tolist() == [0.1, 0.5]
    with pytest.raises(TypeError, match="seed value"):
        stats.pair_by_seed([0.8, 0.9], [0.7, 0.8])
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_difference({0: 1.0}, {1: 1.0})


def _seeds(*values):
    return dict(enumerate(values))


def test_greater_three_outcomes():
    rule = stats.Greater("cos", "soft")
    assert "cos > soft" in rule.text
    up = rule.judge({"cos": _seeds(0.80, 0.81, 0.80), "soft": _seeds(0.70, 0.71, 0.69)})
    assert up.holds is True and up.measured["cos-soft"] == pytest.approx(0.1037, abs=1e-3)
    assert up.measured["seeds"] == [0, 1, 2] and up.rule == rule.text
    down = rule.judge({"cos": _seeds(0.70, 0.71, 0.69), "soft": _seeds(0.80, 0.81, 0.80)})
    assert down.holds is False
    mixed = rule.judge({"cos": _seeds(0.75, 0.70, 0.72), "soft": _seeds(0.70, 0.80, 0.60)})
    assert mixed.holds is None
    single = rule.judge({"cos": {0: 0.9}, "soft": {0: 0.1}})
    assert single.holds is None  # one seed: an infinite interval decides nothing


def test_at_least_is_non_inferiority():
    rule = stats.AtLeast("arc", "cos", tol=0.005)
    # arc 0.002 worse on every seed: inside the tolerance
    held = rule.judge({"arc": _seeds(0.798, 0.808, 0.818), "cos": _seeds(0.80, 0.81, 0.82)})
    assert held.holds is True
    worse = rule.judge({"arc": _seeds(0.75, 0.76, 0.75), "cos": _seeds(0.80, 0.81, 0.80)})
    assert worse.holds is False
    unsure = rule.judge({"arc": _seeds(0.80, 0.78, 0.81), "cos": _seeds(0.80, 0.81, 0.80)})
    assert unsure.holds is None


def test_within_is_equivalence():
    rule = stats.Within("mbf", "r50", tol=0.02)
    assert rule.judge({"mbf": _seeds(0.80, 0.81, 0.82), "r50": _seeds(0.805, 0.815, 0.825)}).holds is True
    assert rule.judge({"mbf": _seeds(0.70, 0.71, 0.72), "r50": _seeds(0.80, 0.81, 0.82)}).holds is False
    assert rule.judge({"mbf": _seeds(0.70, 0.85, 0.72), "r50": _seeds(0.80, 0.81, 0.82)}).holds is None


def test_correlated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    rule = stats.Correlated("norm", "quality")
    assert rule.judge({"norm": x, "quality": x + 0.5 * rng.normal(size=200)}).holds is True
    assert rule.judge({"norm": x, "quality": -x + 0.5 * rng.normal(size=200)}).holds is False
    assert rule.judge({"norm": x, "quality": rng.normal(size=200)}).holds is None
    assert rule.judge({"norm": x[:3], "quality": x[:3]}).holds is None  # n < 4
    assert rule.judge({"norm": x, "quality": np.ones(200)}).holds is None  # constant: no correlation
    # Pearson's interval is Fisher's z with se 1/sqrt(n - 3)
    y = x + rng.normal(size=200)
    iv = stats.correlation_interval(x, y, method="pearson")
    r = np.corrcoef(x, y)[0, 1]
    assert iv.lo == pytest.approx(math.tanh(math.atanh(r) - 1.959963984540054 / math.sqrt(197)))


def test_below_and_all_of():
    assert stats.Below("err", 1e-5).judge({"err": 1e-7}).holds is True
    assert stats.Below("err", 1e-5).judge({"err": 1e-3}).holds is False
    rule = stats.AllOf(stats.Greater("cos", "soft"), stats.AtLeast("arc", "cos", tol=0.005))
    assert " and " in rule.text
    data = {"soft": _seeds(0.70, 0.71, 0.69), "cos": _seeds(0.80, 0.81, 0.80)}
    data["arc"] = _seeds(0.81, 0.82, 0.81)
    v = rule.judge(data)
    assert v.holds is True and len(v.parts) == 2
    assert {"cos-soft", "arc-cos", "cos_mean"} <= set(v.measured)
    assert rule.judge({**data, "arc": _seeds(0.70, 0.70, 0.71)}).holds is False
    assert rule.judge({**data, "soft": _seeds(0.70, 0.90, 0.69)}).holds is None
    with pytest.raises(KeyError, match="no data for 'arc'"):
        rule.judge({"soft": data["soft"], "cos": data["cos"]})


def test_claim_accepts_a_verdict():
    reset()
    v = stats.Greater("cosface", "softmax").judge(
        {"cosface": _seeds(0.80, 0.81, 0.80), "softmax": _seeds(0.70, 0.71, 0.69)}
    )
    claim("C14", v, context="accuracy, ir_tiny: ")
    got = claims()[-1]
    assert got["holds"] is True and got["statement"] == "accuracy, ir_tiny: " + v.rule
    assert got["measured"]["seeds"] == [0, 1, 2]
    with pytest.raises(TypeError, match="carries"):
        claim("C14", v, {"x": 1}, True)
    with pytest.raises(TypeError, match="give holds"):
        claim("C14", "a statement", {"x": 1})
    reset()


def test_rules_name_the_data_they_read():
    rule = stats.AllOf(
        stats.Greater("a", "b"),
        stats.AtLeast("a", "c", tol=0.01),
        stats.Below("err", 1e-5),
        stats.Correlated("x", "y"),
    )
    assert rule.names == ("a", "b", "c", "err", "x", "y")  # in order, each once
    assert stats.Within("p", "q", tol=0.1).names == ("p", "q")
    # every name it lists is one judge() cannot do without
    data = {
        "a": {0: 0.9, 1: 0.8},
        "b": {0: 0.5, 1: 0.4},
        "c": {0: 0.5, 1: 0.4},
        "err": 0.0,
        "x": [1, 2, 3, 4, 5],
        "y": [1, 3, 2, 5, 4],
    }
    rule.judge(data)
    for name in rule.names:
        with pytest.raises(KeyError, match=f"no data for '{name}'"):
            rule.judge({k: v for k, v in data.items() if k != name})
