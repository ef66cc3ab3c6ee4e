"""10-fold verification accuracy: arcface_torch's threshold loop vs the sorted/searchsorted path.

6,000 pairs (LFW size) of 512-d float32 embeddings, half genuine. Both paths run in the same
process on the same distances; the script asserts that accuracies and thresholds are
identical, then prints times and the speed-up (goal >= 20x), for the k-fold part alone and for
the whole ``evaluate()`` (which adds normalisation, distances and the scikit-learn ROC, the
same work for both methods).

    python benchmarks/verification_speed.py [--quick] [--pairs 6000] [--dim 512]
"""

from __future__ import annotations

import argparse

import numpy as np

from nbfacelib.machine import best_time
from nbfacelib.machine import describe_machine as machine


def measure(pairs: int, dim: int = 512, seed: int = 0, rep_grid: int = 3, rep_fast: int = 30) -> dict:
    """Times (s) of the 10-fold accuracy and of the whole ``evaluate()``, grid loop vs fast, on
    ``pairs`` synthetic pairs; asserts both methods give identical results first."""
    from sklearn.preprocessing import normalize

    from nbfacelib.eval.verification import THRESHOLDS, _kfold, evaluate

    rng = np.random.default_rng(seed)
    n, d = pairs, dim
    issame = np.arange(n) % 2 == 0
    e1 = rng.standard_normal((n, d)).astype(np.float32)
    noise = rng.standard_normal((n, d)).astype(np.float32)
    # Genuine pairs share a little of their direction (cos ~ 0.14): accuracy in the 90s, not 100%.
    e2 = np.where(issame[:, None], e1 + 7.0 * noise, noise).astype(np.float32)
    dist = np.sum(np.square(normalize(e1) - normalize(e2)), 1)

    grid_k = _kfold(dist, issame, THRESHOLDS, 10, "grid")
    fast_k = _kfold(dist, issame, THRESHOLDS, 10, "fast")
    assert np.array_equal(grid_k[0], fast_k[0]), "fold accuracies differ"
    assert np.array_equal(grid_k[1], fast_k[1]), "fold thresholds differ"
    t_grid = best_time(lambda: _kfold(dist, issame, THRESHOLDS, 10, "grid"), rep_grid)
    t_fast = best_time(lambda: _kfold(dist, issame, THRESHOLDS, 10, "fast"), rep_fast)

    r_grid = evaluate(e1, e2, issame, method="grid")
    r_fast = evaluate(e1, e2, issame, method="fast")
    for k in ("accuracy", "accuracy_std", "threshold", "fold_accuracies", "fold_thresholds", "auc", "eer"):
        assert r_grid[k] == r_fast[k], k
    T_grid = best_time(lambda: evaluate(e1, e2, issame, method="grid"), rep_grid)
    T_fast = best_time(lambda: evaluate(e1, e2, issame, method="fast"), rep_fast)
    return {
        "pairs": n,
        "dim": d,
        "thresholds": len(THRESHOLDS),
        "accuracy": r_fast["accuracy"],
        "accuracy_std": r_fast["accuracy_std"],
        "threshold": r_fast["threshold"],
        "auc": r_fast["auc"],
        "kfold_grid_s": t_grid,
        "kfold_fast_s": t_fast,
        "evaluate_grid_s": T_grid,
        "evaluate_fast_s": T_fast,
        "rep_grid": rep_grid,
        "rep_fast": rep_fast,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rep_grid, rep_fast = (1, 5) if args.quick else (3, 30)
    print(machine())
    r = measure(args.pairs, args.dim, args.seed, rep_grid, rep_fast)
    print(f"{r['pairs']} pairs, {r['dim']}-d float32, {r['thresholds']} thresholds, 10 folds")
    print(f"best of {rep_grid} (grid) / {rep_fast} (fast) runs")
    print(
        f"accuracy {r['accuracy']:.6f} +- {r['accuracy_std']:.6f} (identical in both), "
        f"threshold {r['threshold']:.4f}, AUC {r['auc']:.6f}"
    )
    t_grid, t_fast, T_grid, T_fast = (
        r["kfold_grid_s"],
        r["kfold_fast_s"],
        r["evaluate_grid_s"],
        r["evaluate_fast_s"],
    )
    print(f"{'part':<22}{'grid loop':>12}{'fast':>12}{'speed-up':>11}")
    print(f"{'10-fold accuracy':<22}{t_grid * 1e3:>10.1f}ms{t_fast * 1e3:>10.2f}ms{t_grid / t_fast:>10.1f}x")
    print(f"{'whole evaluate()':<22}{T_grid * 1e3:>10.1f}ms{T_fast * 1e3:>10.2f}ms{T_grid / T_fast:>10.1f}x")
    goal = t_grid / t_fast >= 20
    print(f"goal >= 20x on the 10-fold accuracy: {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
