"""Verdict statistics: runs paired by seed value, Student-t intervals, and comparison rules.

A notebook writes its rules BEFORE the run (a cell of rule objects whose ``text`` states the
test), then judges them on the numbers the run produced::

    rules = {"C14": AllOf(Greater("cosface", "softmax"), AtLeast("arcface", "cosface", tol=0.005))}
    ...  # training
    verdict = rules["C14"].judge({"softmax": {0: .80, 1: .81}, "cosface": {...}, "arcface": {...}})
    claim("C14", verdict)

The four comparisons of the project are written here once:

===================  ==============================  ===============  =====================
rule                 statistic                        holds            not held
===================  ==============================  ===============  =====================
``A > B``            t-interval of A - B (paired)     lo > 0           hi < 0
``A >= B - tol``     t-interval of A - B (paired)     lo > -tol        hi < -tol
``|A - B| <= tol``   t-interval of A - B (paired)     -tol < lo, hi <  lo > tol or hi < -tol
                                                      tol
``corr(x, y) > 0``   Fisher-z interval of the         lo > 0           hi < 0
                     correlation
===================  ==============================  ===============  =====================

Anything else (the interval straddles the line, or fewer than 2 seeds, so the interval is
infinite) is inconclusive: ``holds is None``. :class:`Below` is the exact comparison of one
measured number with a bound (C13's rounding error, C15's MAC ratio): never inconclusive.

Pairing is by seed VALUE: run ``A`` with seed 3 is compared with run ``B`` with seed 3 (same
initialisation and batch sequence), whatever order the runs finished in; seeds present on one
side only are left out and the verdict says which seeds it used.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AllOf",
    "AtLeast",
    "Below",
    "Correlated",
    "Greater",
    "Interval",
    "Rule",
    "Verdict",
    "Within",
    "correlation_interval",
    "mean_interval",
    "pair_by_seed",
    "paired_difference",
]

SeedValues = Mapping[int, float]


# --------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided ``confidence`` interval ``[lo, hi]`` from ``n``
    observations (``lo = -inf, hi = inf`` when ``n`` is too small to say anything)."""

    estimate: float
    lo: float
    hi: float
    n: int
    confidence: float = 0.95

    def as_list(self) -> list[float]:
        return [self.lo, self.hi]


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of ``values`` and its Student-t interval (n - 1 degrees of freedom, sample std).
    With fewer than 2 values the interval is infinite."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"mean_interval: need a non-empty 1-d sequence, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"mean_interval: values must be finite, got {v.tolist()}")
    mean, n = float(v.mean()), len(v)
    if n < 2:
        return Interval(mean, -math.inf, math.inf, n, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, confidence)


def pair_by_seed(a: SeedValues, b: SeedValues) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(seeds present in both, values of ``a``, values of ``b``) in ascending seed order.
    ``a`` and ``b`` map seed value -> measured number."""
    for name, side in (("a", a), ("b", b)):
        if not isinstance(side, Mapping):
            raise TypeError(
                f"pair_by_seed: {name} must map seed -> value (runs are paired by seed value, "
                f"not by position), got {type(side).__name__}"
            )
    seeds = sorted(set(a) & set(b))
    return seeds, np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)


def paired_difference(a: SeedValues, b: SeedValues, confidence: float = 0.95) -> Interval:
    """Mean of the per-seed differences ``a[s] - b[s]`` over the seeds both have, with its
    Student-t interval (paired t-test's interval)."""
    seeds, va, vb = pair_by_seed(a, b)
    if not seeds:
        raise ValueError(f"paired_difference: no seed in common ({sorted(a)} vs {sorted(b)})")
    return mean_interval(va - vb, confidence)


def correlation_interval(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    method: str = "spearman",
    confidence=0.95,
) -> Interval:
    """Correlation of ``x`` and ``y`` (``spearman`` rank or ``pearson``) and its interval from
    Fisher's z = atanh(r) with standard error 1/sqrt(n - 3) (Pearson) or
    sqrt((1 + r^2/2) / (n - 3)) (Spearman; Bonett & Wright 2000). Infinite below n = 4."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"correlation_interval: x and y must be 1-d of one length, got {x.shape}, {y.shape}")
    if method not in ("spearman", "pearson"):
        raise ValueError(f"correlation_interval: method must be 'spearman' or 'pearson', got {method!r}")
    n = len(x)
    r = float("nan")
    if n >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:  # a constant input has no correlation
        r = float(stats.spearmanr(x, y)[0]) if method == "spearman" else float(np.corrcoef(x, y)[0, 1])
    if n < 4 or not math.isfinite(r):
        return Interval(r, -math.inf, math.inf, n, confidence)
    se = math.sqrt((1 + r * r / 2) / (n - 3)) if method == "spearman" else 1 / math.sqrt(n - 3)
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    q = float(stats.norm.ppf(0.5 + confidence / 2))
    return Interval(r, math.tanh(z - q * se), math.tanh(z + q * se), n, confidence)


# --------------------------------------------------------------------------- verdicts
@dataclass
class Verdict:
    """The outcome of a :class:`Rule` on measured numbers.

    ``rule``: the rule's text, as stated before the run. ``holds``: True (held), False (not
    held), None (inconclusive at this scale). ``measured``: the numbers it rests on (names ->
    number or list of numbers; what :func:`nbfacelib.report.record.claim` stores).
    ``interval``: the interval the decision was read from (None for exact rules and for
    :class:`AllOf`). ``parts``: the verdicts an :class:`AllOf` combined."""

    rule: str
    holds: bool | None
    measured: dict[str, Any]
    interval: Interval | None = None
    parts: tuple[Verdict, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return {True: "held", False: "not held", None: "inconclusive"}[self.holds]

    def __str__(self) -> str:
        return f"{self.label}: {self.rule}"


def _decide(interval: Interval, holds_if: bool, fails_if: bool) -> bool | None:
    if not (math.isfinite(interval.lo) and math.isfinite(interval.hi)):
        return None
    if holds_if:
        return True
    if fails_if:
        return False
    return None


class Rule(abc.ABC):
    """A comparison stated before the run; :meth:`judge` reads it on the run's numbers.
    ``data`` maps the names the rule mentions to ``{seed: value}`` (paired rules), to a
    sequence (correlations) or to a number (:class:`Below`)."""

    text: str

    @abc.abstractmethod
    def judge(self, data: Mapping[str, Any]) -> Verdict:
        """The verdict of this rule on ``data``."""

    @property
    @abc.abstractmethod
    def names(self) -> tuple[str, ...]:
        """The names this rule reads from ``data`` (a notebook whose run left one out, e.g. a
        shorter list of ablation rows, can say so instead of judging)."""

    def __str__(self) -> str:
        return self.text

    def _get(self, data: Mapping[str, Any], name: str) -> Any:
        if name not in data:
            raise KeyError(f"rule {self.text!r}: no data for {name!r} (have {sorted(map(str, data))})")
        return data[name]


@dataclass(frozen=True)
class _Paired(Rule):
    a: str
    b: str
    confidence: float = 0.95

    @property
    def names(self) -> tuple[str, ...]:
        return (self.a, self.b)

    def _interval(self, data) -> tuple[Interval, dict[str, Any]]:
        sa, sb = self._get(data, self.a), self._get(data, self.b)
        seeds, va, vb = pair_by_seed(sa, sb)
        if not seeds:
            raise ValueError(f"rule {self.text!r}: {self.a} and {self.b} share no seed")
        d = mean_interval(va - vb, self.confidence)
        measured = {
            f"{self.a}_mean": float(va.mean()),
            f"{self.b}_mean": float(vb.mean()),
            f"{self.a}-{self.b}": d.estimate,
            f"{self.a}-{self.b}_ci": d.as_list(),
            "seeds": list(seeds),
        }
        return d, measured


@dataclass(frozen=True)
class Greater(_Paired):
    """``A > B``: holds when the paired t-interval of A - B lies above 0, not held when it lies
    below 0, inconclusive otherwise."""

    @property
    def text(self) -> str:  # type: ignore[override]
        return f"{self.a} > {self.b} (paired {self.confidence:.0%} t-interval of {self.a} - {self.b} above 0)"

    def judge(self, data):
        d, measured = self._interval(data)
        return Verdict(self.text, _decide(d, d.lo > 0, d.hi < 0), measured, d)


@dataclass(frozen=True)
class AtLeast(_Paired):
    """``A >= B - tol`` (non-inferiority: A at most ``tol`` worse than B): holds when the paired
    t-interval of A - B lies above -tol, not held when it lies below -tol."""

    tol: float = 0.0

    @property
    def text(self) -> str:  # type: ignore[override]
        return (
            f"{self.a} >= {self.b} - {self.tol:g} (paired {self.confidence:.0%} t-interval of "
            f"{self.a} - {self.b} above -{self.tol:g})"
        )

    def judge(self, data):
        d, measured = self._interval(data)
        return Verdict(self.text, _decide(d, d.lo > -self.tol, d.hi < -self.tol), measured, d)


@dataclass(frozen=True)
class Within(_Paired):
    """``|A - B| <= tol`` (equivalence): holds when the paired t-interval of A - B lies inside
    (-tol, tol), not held when it lies wholly outside it."""

    tol: float = 0.0

    @property
    def text(self) -> str:  # type: ignore[override]
        return (
            f"|{self.a} - {self.b}| <= {self.tol:g} (paired {self.confidence:.0%} t-interval of "
            f"{self.a} - {self.b} inside +-{self.tol:g})"
        )

    def judge(self, data):
        d, measured = self._interval(data)
        inside = d.lo > -self.tol and d.hi < self.tol
        outside = d.lo > self.tol or d.hi < -self.tol
        return Verdict(self.text, _decide(d, inside, outside), measured, d)


@dataclass(frozen=True)
class Correlated(Rule):
    """``corr(x, y) > 0``: holds when the Fisher-z interval of the correlation lies above 0,
    not held when it lies below 0. ``method``: ``spearman`` (rank) or ``pearson``."""

    x: str
    y: str
    method: str = "spearman"
    confidence: float = 0.95

    @property
    def names(self) -> tuple[str, ...]:
        return (self.x, self.y)

    @property
    def text(self) -> str:  # type: ignore[override]
        return (
            f"{self.method} correlation({self.x}, {self.y}) > 0 "
            f"({self.confidence:.0%} Fisher-z interval above 0)"
        )

    def judge(self, data):
        r = correlation_interval(
            self._get(data, self.x), self._get(data, self.y), self.method, self.confidence
        )
        measured = {"r": r.estimate, "r_ci": r.as_list(), "n": r.n}
        return Verdict(self.text, _decide(r, r.lo > 0, r.hi < 0), measured, r)


@dataclass(frozen=True)
class Below(Rule):
    """``X < bound``, an exact comparison of one measured number (a worst-case rounding error,
    a MAC ratio): holds or not, never inconclusive."""

    name: str
    bound: float

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def text(self) -> str:  # type: ignore[override]
        return f"{self.name} < {self.bound:g}"

    def judge(self, data):
        value = float(self._get(data, self.name))
        return Verdict(self.text, bool(value < self.bound), {self.name: value, "bound": float(self.bound)})


class AllOf(Rule):
    """Every part holds. Not held when any part is not held; held when all hold; otherwise
    inconclusive. ``measured`` joins the parts' numbers (prefixed with the part number when
    two parts name a number alike)."""

    def __init__(self, *rules: Rule):
        if not rules:
            raise ValueError("AllOf needs at least one rule")
        self.rules = rules

    @property
    def text(self) -> str:  # type: ignore[override]
        return " and ".join(r.text for r in self.rules)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for r in self.rules for n in r.names))

    def judge(self, data):
        parts = tuple(r.judge(data) for r in self.rules)
        if any(p.holds is False for p in parts):
            holds: bool | None = False
        elif all(p.holds is True for p in parts):
            holds = True
        else:
            holds = None
        measured: dict[str, Any] = {}
        for i, p in enumerate(parts, 1):
            for k, v in p.measured.items():
                if k in measured and measured[k] != v:
                    k = f"{i}:{k}"
                measured[k] = v
        return Verdict(self.text, holds, measured, None, parts)
