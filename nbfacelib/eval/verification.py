"""1:1 verification metrics: the arcface_torch 10-fold protocol, ROC, AUC, EER, TAR@FAR.

The 10-fold accuracy follows insightface ``arcface_torch/eval/verification.py`` to the last
digit: embeddings L2-normalised (``sklearn.preprocessing.normalize``), squared L2 distance
``d = sum((e1 - e2)**2)`` (in the embeddings' dtype), ``KFold(nfolds, shuffle=False)``
(train = test = all when ``nfolds == 1``, as its ``LFold``), thresholds
``np.arange(0, 4, 0.01)``; on the ``nfolds - 1`` training folds the threshold with the
highest accuracy is taken (first one on ties, ``np.argmax``), a pair is predicted "same" when
``d < threshold`` (strict), and accuracy is measured on the held-out fold; reported as mean
and population std (``np.std``) over the folds.

``method="grid"`` is that reference loop (one pass over the pairs per threshold);
``method="fast"`` sorts each training fold once and counts, for every threshold at once,
the pairs below it with ``np.searchsorted(..., side="left")`` (= ``#(d < t)``, the strict
comparison of the reference). Counts are integers, so the accuracies and the chosen thresholds
are bit-identical (tested). This needs numpy >= 2 (pinned in pyproject.toml and
environment.yml): under NEP 50 promotion the reference's ``np.less(float32 distances, float64
threshold)`` compares in float64, as the fast path does; numpy 1.x's value-based casting
rounded the threshold to float32 first, so a distance equal to ``float32(t)`` (just below a
grid value ``t``) would count as "same" in the fast path and not in the reference. The
reference's second loop (mean TPR/FPR over the grid per fold)
is not repeated: the ROC comes from scikit-learn on all pairs instead.

ROC / AUC / EER / TAR@FAR use ``sklearn.metrics.roc_curve`` (AUC = ``auc(fpr, tpr)``, as in
``roc_auc_score``) with the
similarity ``-d``. TAR@FAR = the highest TPR at an ROC point with FPR <= FAR (no
interpolation). It is reported only for FARs with ``n_impostor * far >= 1``: below one
impostor pair the FAR cannot be measured (FPR moves in steps of ``1 / n_impostor``).
EER is where FNR = 1 - TPR crosses FPR, linearly interpolated between ROC points.
"""

from __future__ import annotations

import numpy as np

__all__ = ["evaluate", "evaluate_scores", "FAR_TARGETS", "THRESHOLDS"]

FAR_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
THRESHOLDS = np.arange(0, 4, 0.01)  # arcface_torch's grid, squared-L2 units


def _folds(n: int, nfolds: int):
    from sklearn.model_selection import KFold

    idx = np.arange(n)
    if nfolds == 1:  # arcface_torch's LFold: train and test on everything
        return [(idx, idx)]
    return list(KFold(n_splits=nfolds, shuffle=False).split(idx))


def _accuracy(threshold, dist, issame) -> float:
    """arcface_torch ``calculate_accuracy`` (accuracy only)."""
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, issame))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame)))
    return float(tp + tn) / dist.size


def _train_accuracies_grid(thresholds, dist, issame) -> np.ndarray:
    acc = np.zeros(len(thresholds))
    for k, t in enumerate(thresholds):
        acc[k] = _accuracy(t, dist, issame)
    return acc


def _train_accuracies_fast(thresholds, dist, issame) -> np.ndarray:
    # float64 holds every float32 exactly, so the comparison is the reference's (numpy promotes
    # the float32 distances to float64 against the float64 grid).
    d = dist.astype(np.float64)
    pos = np.sort(d[issame])
    neg = np.sort(d[~issame])
    t = np.asarray(thresholds, dtype=np.float64)
    tp = np.searchsorted(pos, t, side="left")  # #(d < t) among genuine pairs
    tn = len(neg) - np.searchsorted(neg, t, side="left")  # #(d >= t) among impostors
    correct = tp + tn
    return np.array([float(c) / d.size for c in correct.tolist()])


def _kfold(dist, issame, thresholds, nfolds, method):
    if method not in ("fast", "grid"):
        raise ValueError(f"method must be 'fast' or 'grid', got {method!r}")
    train_acc = _train_accuracies_fast if method == "fast" else _train_accuracies_grid
    accs, best = [], []
    for train, test in _folds(len(dist), nfolds):
        k = int(np.argmax(train_acc(thresholds, dist[train], issame[train])))
        best.append(thresholds[k])
        accs.append(_accuracy(thresholds[k], dist[test], issame[test]))
    return np.asarray(accs), np.asarray(best)


def _roc_metrics(scores, issame, far_targets) -> dict:
    from sklearn.metrics import auc as area
    from sklearn.metrics import roc_curve

    n_pos = int(issame.sum())
    n_neg = len(issame) - n_pos
    if n_pos == 0 or n_neg == 0:
        return {"auc": float("nan"), "eer": float("nan"), "tar_at_far": {}}
    fpr, tpr, _ = roc_curve(issame, scores)
    auc = float(area(fpr, tpr))  # what roc_auc_score computes, without a second sort
    fnr = 1.0 - tpr
    k = int(np.argmax(fnr <= fpr))  # first ROC point where FNR has dropped to FPR
    if k == 0:
        eer = float(fpr[0])
    else:
        a = fnr[k - 1] - fpr[k - 1]
        b = fnr[k] - fpr[k]
        w = a / (a - b) if a != b else 0.0
        eer = float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))
    tar = {}
    for far in far_targets:
        if n_neg * far >= 1 - 1e-9:  # float tolerance: 1000 * 1e-3 is one impostor pair
            tar[float(far)] = float(tpr[fpr <= far].max())
    return {"auc": auc, "eer": eer, "tar_at_far": tar}


def _check(issame, n, nfolds) -> np.ndarray:
    issame = np.asarray(issame)
    if issame.ndim != 1 or len(issame) != n:
        raise ValueError(f"issame must have one entry per pair ({n}), got shape {issame.shape}")
    if issame.dtype != np.bool_:
        if not np.isin(issame, (0, 1)).all():
            raise ValueError("issame must be booleans (or 0/1)")
        issame = issame.astype(np.bool_)
    if n < nfolds:
        raise ValueError(f"{n} pairs cannot be split in {nfolds} folds")
    return issame


def evaluate(
    emb1,
    emb2,
    issame,
    nfolds: int = 10,
    far_targets=FAR_TARGETS,
    method: str = "fast",
) -> dict:
    """Verification metrics of pairs ``(emb1[i], emb2[i])``, arcface_torch protocol.

    Returns ``accuracy`` and ``accuracy_std`` (mean / std of the fold accuracies),
    ``fold_accuracies``, ``threshold`` (mean of the fold thresholds, squared-L2 units on
    unit vectors, so in [0, 4)), ``fold_thresholds``, ``auc``, ``eer``, ``tar_at_far``
    ({far: tar}, only FARs with ``n_impostor * far >= 1``), ``n_pairs``, ``n_same``, ``n_diff``.
    """
    from sklearn.preprocessing import normalize

    emb1, emb2 = np.asarray(emb1), np.asarray(emb2)
    if emb1.ndim != 2 or emb1.shape != emb2.shape:
        raise ValueError(f"emb1 and emb2 must be (N, D) of the same shape, got {emb1.shape}, {emb2.shape}")
    issame = _check(issame, len(emb1), nfolds)
    if not np.issubdtype(emb1.dtype, np.floating):
        emb1, emb2 = emb1.astype(np.float32), emb2.astype(np.float32)
    for name, e in (("emb1", emb1), ("emb2", emb2)):
        bad = np.flatnonzero(~np.isfinite(e).all(1))
        if len(bad):  # e.g. an fp16 overflow upstream; the ROC cannot rank NaN
            raise ValueError(f"{name} has NaN/inf in {len(bad)} rows (first: {bad[:5].tolist()})")
    diff = np.subtract(normalize(emb1), normalize(emb2))
    dist = np.sum(np.square(diff), 1)
    accs, best = _kfold(dist, issame, THRESHOLDS, nfolds, method)
    out = _summary(accs, best, issame)
    out.update(_roc_metrics(-dist.astype(np.float64), issame, far_targets))
    return out


def evaluate_scores(
    scores,
    issame,
    nfolds: int = 10,
    far_targets=FAR_TARGETS,
    method: str = "fast",
    n_thresholds: int = 400,
) -> dict:
    """As :func:`evaluate` for similarity scores (higher = more similar, e.g. PFE's MLS or a
    cosine). A pair is "same" when ``score > threshold``; the threshold grid is
    ``n_thresholds + 1`` evenly spaced values from the lowest to the highest score of all pairs
    (so as fine as arcface's 400-step grid over its range). ``threshold`` is in score units."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    issame = _check(issame, len(scores), nfolds)
    lo, hi = float(scores.min()), float(scores.max())
    grid = np.linspace(lo, hi, n_thresholds + 1) if hi > lo else np.array([lo])
    # score > t  <=>  -score < -t: reuse the distance code (strict "<") on negated values.
    accs, best = _kfold(-scores, issame, -grid, nfolds, method)
    out = _summary(accs, -best, issame)
    out.update(_roc_metrics(scores, issame, far_targets))
    return out


def _summary(accs, best, issame) -> dict:
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": float(np.mean(best)),
        "fold_accuracies": [float(a) for a in accs],
        "fold_thresholds": [float(t) for t in best],
        "n_pairs": int(len(issame)),
        "n_same": int(issame.sum()),
        "n_diff": int((~issame).sum()),
    }
