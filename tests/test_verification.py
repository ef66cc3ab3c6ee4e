"""Verification metrics: hand-computed cases, fast == grid == an independent transcription of
arcface_torch's loop, ROC metrics, and the flip-TTA embedding helper."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from nbfacelib.eval.embed import embed, evaluate_pair_set
from nbfacelib.eval.verification import evaluate, evaluate_scores


def arcface_reference(emb1, emb2, issame, nfolds=10):
    """arcface_torch ``calculate_roc`` (accuracy part) written out independently."""
    thresholds = np.arange(0, 4, 0.01)
    e1, e2 = normalize(emb1), normalize(emb2)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    accs, best = [], []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))):
        acc_train = np.zeros(len(thresholds))
        for k, t in enumerate(thresholds):
            pred = np.less(dist[train], t)
            tp = np.sum(np.logical_and(pred, issame[train]))
            tn = np.sum(np.logical_and(~pred, ~issame[train]))
            acc_train[k] = float(tp + tn) / dist[train].size
        b = thresholds[np.argmax(acc_train)]
        pred = np.less(dist[test], b)
        tp = np.sum(np.logical_and(pred, issame[test]))
        tn = np.sum(np.logical_and(~pred, ~issame[test]))
        accs.append(float(tp + tn) / dist[test].size)
        best.append(b)
    return np.mean(accs), np.std(accs), accs, best


def unit_pair(dist_sq, dim=2):
    """Two unit vectors at squared L2 distance ``dist_sq`` (in [0, 4])."""
    cos = 1 - dist_sq / 2
    return np.array([1.0, 0.0] + [0.0] * (dim - 2)), np.array(
        [cos, np.sqrt(max(0.0, 1 - cos**2))] + [0.0] * (dim - 2)
    )


def pairs_at(dists):
    a, b = zip(*(unit_pair(d) for d in dists))
    return np.array(a), np.array(b)


# --------------------------------------------------------------- hand-computed cases


def test_perfectly_separable():
    # 10 folds of 2 pairs: genuine at d=0.505, impostors at d=1.5 (off the 0.01 grid, so that
    # round-off in the distance cannot move it across a threshold).
    dists = [0.505, 1.5] * 10
    issame = np.array([True, False] * 10)
    e1, e2 = pairs_at(dists)
    r = evaluate(e1, e2, issame)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    assert r["auc"] == 1.0 and r["eer"] == 0.0
    # First grid value with all training pairs right: smallest t with 0.505 < t, i.e. 0.51.
    assert r["fold_thresholds"] == pytest.approx([0.51] * 10)
    assert r["threshold"] == pytest.approx(0.51)
    assert r["fold_accuracies"] == [1.0] * 10
    assert (r["n_pairs"], r["n_same"], r["n_diff"]) == (20, 10, 10)
    # 10 impostors: only FAR 0.1 is measurable (10 * 0.1 = 1); TAR there is 1.
    assert r["tar_at_far"] == {0.1: 1.0}


def test_known_threshold_and_accuracy_two_folds():
    # Distances are x.xx5, off the 0.01 grid. Fold 1 (pairs 0-3): genuine .205, .605; impostor
    # .405, 1.005. Fold 2 (4-7): genuine .305, .905; impostor .805, 1.205.
    # Training on fold 2 for fold 1: t in .31...80 gives 3/4 (only .305 same), .81...90 2/4,
    # .91...1.20 3/4, so first best = 0.31. Fold 1 at 0.31: .205 same (right), .605 not
    # (wrong), both impostors not (right): 3/4.
    # Training on fold 1 for fold 2: t in .21...40 gives 3/4, .41...60 2/4, .61...1.00 3/4,
    # first best = 0.21. Fold 2 at 0.21: nothing same: the impostors right, genuines wrong: 2/4.
    dists = [0.205, 0.605, 0.405, 1.005, 0.305, 0.905, 0.805, 1.205]
    issame = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    e1, e2 = pairs_at(dists)
    for method in ("fast", "grid"):
        r = evaluate(e1, e2, issame, nfolds=2, method=method)
        assert r["fold_accuracies"] == [0.75, 0.5]
        assert r["accuracy"] == 0.625 and r["accuracy_std"] == 0.125
        assert r["fold_thresholds"] == pytest.approx([0.31, 0.21])


def test_strict_less_than_on_ties():
    # A genuine pair exactly at a grid value is NOT predicted same at that threshold.
    # Distances of 0 (identical embeddings) vs threshold 0.0: 0 < 0 is False.
    e = np.array([[1.0, 0.0]] * 4)
    issame = np.array([True, True, True, True])
    r = evaluate(e, e, issame, nfolds=2)
    # t=0 predicts nothing same (0/2), t=0.01 everything (2/2): first best = 0.01.
    assert r["fold_thresholds"] == [0.01, 0.01] and r["accuracy"] == 1.0


def test_matches_reference_and_fast_equals_grid_with_ties():
    rng = np.random.default_rng(0)
    n = 600
    issame = rng.random(n) < 0.5
    # Quantised embeddings produce many exactly tied distances and distances on grid values.
    base = rng.integers(-2, 3, (n, 4)).astype(np.float32)
    other = np.where(issame[:, None], base + rng.integers(-1, 2, (n, 4)), rng.integers(-2, 3, (n, 4)))
    other = other.astype(np.float32)
    base[np.all(base == 0, 1)] = 1
    other[np.all(other == 0, 1)] = 1
    fast = evaluate(base, other, issame, method="fast")
    grid = evaluate(base, other, issame, method="grid")
    ref_acc, ref_std, ref_accs, ref_best = arcface_reference(base, other, issame)
    assert fast["fold_accuracies"] == grid["fold_accuracies"] == [float(a) for a in ref_accs]
    assert fast["fold_thresholds"] == grid["fold_thresholds"] == [float(t) for t in ref_best]
    assert fast["accuracy"] == grid["accuracy"] == float(ref_acc)
    assert fast["accuracy_std"] == grid["accuracy_std"] == float(ref_std)
    d = np.sum((normalize(base) - normalize(other)) ** 2, 1)
    assert len(np.unique(d)) < 0.6 * n  # the case really has many ties (and d = 0, 1, 4 exactly)
    assert {0.0, 1.0} <= set(d.tolist())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_equals_grid_random_float32(seed):
    rng = np.random.default_rng(seed)
    n, dim = 1000, 16
    issame = rng.random(n) < 0.5
    e1 = rng.standard_normal((n, dim)).astype(np.float32)
    e2 = np.where(issame[:, None], e1 + rng.standard_normal((n, dim)) * 0.8, rng.standard_normal((n, dim)))
    e2 = e2.astype(np.float32)
    fast = evaluate(e1, e2, issame, method="fast")
    grid = evaluate(e1, e2, issame, method="grid")
    for k in ("accuracy", "accuracy_std", "threshold", "fold_accuracies", "fold_thresholds", "auc", "eer"):
        assert fast[k] == grid[k], k
    ref_acc, _, _, ref_best = arcface_reference(e1, e2, issame)
    assert fast["accuracy"] == float(ref_acc) and fast["fold_thresholds"] == [float(t) for t in ref_best]


def test_normalising_halves_equals_normalising_interleaved():
    # arcface_torch normalises the interleaved (2N, D) array and then splits it; evaluate()
    # normalises emb1 and emb2 separately. Row-wise, so bit-identical: checked here.
    rng = np.random.default_rng(4)
    emb = (rng.standard_normal((2000, 512)) * rng.random((2000, 1)) * 30).astype(np.float32)
    whole = normalize(emb)
    np.testing.assert_array_equal(whole[0::2], normalize(emb[0::2]))
    np.testing.assert_array_equal(whole[1::2], normalize(emb[1::2]))


def test_one_fold_trains_and_tests_on_everything():
    # arcface_torch's LFold(1): train = test = all pairs.
    dists = [0.105, 0.305, 0.205, 0.505]  # genuine .105 .305, impostor .205 .505
    issame = np.array([1, 1, 0, 0], bool)
    e1, e2 = pairs_at(dists)
    r = evaluate(e1, e2, issame, nfolds=1)
    # t in .11..20: 3/4; .21..30: 2/4; .31..50: 3/4; first best 0.11, accuracy 0.75.
    assert r["fold_thresholds"] == pytest.approx([0.11]) and r["accuracy"] == 0.75


def test_roc_metrics_hand_computed():
    # Genuine d: 0.1, 0.5; impostor d: 0.3, 0.9, 1.1, 1.3 (similarity = -d).
    # Ranking by similarity: G(0.1) I(0.3) G(0.5) I I I → AUC = (4 + 3) / 8 = 0.875.
    dists = [0.1, 0.5, 0.3, 0.9, 1.1, 1.3]
    issame = np.array([1, 1, 0, 0, 0, 0], bool)
    e1, e2 = pairs_at(dists)
    r = evaluate(e1, e2, issame, nfolds=2)
    assert r["auc"] == pytest.approx(0.875)
    # ROC points (fpr, tpr): (0,0) (0,.5) (.25,.5) (.25,1) ... ; FNR=1-TPR crosses FPR between
    # (.25, fnr .5) and (.25, fnr 0): EER = 0.25.
    assert r["eer"] == pytest.approx(0.25)
    # 4 impostors: FAR 0.1 needs 4 * 0.1 >= 1 → not measurable; nothing reported.
    assert r["tar_at_far"] == {}


def test_tar_at_far_only_where_enough_impostors():
    rng = np.random.default_rng(0)
    n = 2000  # 1000 impostors: FARs 1e-1..1e-3 measurable, 1e-4.. not
    issame = np.arange(n) % 2 == 0
    e1 = rng.standard_normal((n, 8))
    e2 = np.where(issame[:, None], e1 + 0.5 * rng.standard_normal((n, 8)), rng.standard_normal((n, 8)))
    r = evaluate(e1, e2, issame)
    assert sorted(r["tar_at_far"]) == [1e-3, 1e-2, 1e-1]
    tars = [r["tar_at_far"][f] for f in (1e-3, 1e-2, 1e-1)]
    assert tars == sorted(tars) and 0 <= tars[0] and tars[-1] <= 1


def test_evaluate_scores_matches_distance_ranking():
    # Scores higher = more similar; separable: genuine 0.9, impostor 0.1.
    scores = np.array([0.9, 0.1] * 10)
    issame = np.array([True, False] * 10)
    r = evaluate_scores(scores, issame)
    assert r["accuracy"] == 1.0 and r["auc"] == 1.0 and r["eer"] == 0.0
    # Grid 0.1 + 0.8 k / 400; first threshold with score > t for genuines and not impostors: 0.1.
    assert r["threshold"] == pytest.approx(0.1)
    rng = np.random.default_rng(5)
    s = np.round(rng.standard_normal(500), 1)  # ties
    same = rng.random(500) < 0.5
    s[same] += 0.7
    f, g = evaluate_scores(s, same, method="fast"), evaluate_scores(s, same, method="grid")
    assert f["fold_accuracies"] == g["fold_accuracies"] and f["fold_thresholds"] == g["fold_thresholds"]


def test_bad_inputs():
    e = np.ones((20, 4))
    with pytest.raises(ValueError, match="one entry per pair"):
        evaluate(e, e, np.ones(19, bool))
    with pytest.raises(ValueError, match="same shape"):
        evaluate(e, np.ones((20, 5)), np.ones(20, bool))
    with pytest.raises(ValueError, match="method"):
        evaluate(e, e, np.ones(20, bool), method="slow")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.full(20, np.nan), np.ones(20, bool))
    e2 = e.copy()
    e2[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"emb2 has NaN/inf in 2 rows \(first: \[3, 7\]\)"):
        evaluate(e, e2, np.ones(20, bool))


# --------------------------------------------------------------- embedding helper


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3 * 4 * 5, 6, generator=g))
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return x.flatten(1) @ self.w


def test_embed_flip_matches_manual():
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (7, 3, 4, 5), dtype=torch.uint8, generator=g)
    m = Linear()
    m.train()
    out = embed(m, imgs, batch_size=3, progress=False)
    x = imgs.double() / 255 * 2 - 1
    w = m.w.detach().double()
    manual = (x.flatten(1) @ w + x.flip(3).flatten(1) @ w).numpy()
    manual /= np.linalg.norm(manual, axis=1, keepdims=True)
    assert out.shape == (7, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, manual, rtol=1e-4, atol=1e-5)
    assert m.seen_training and not any(m.seen_training)  # eval mode inside
    assert m.training  # restored
    # Without flip and without normalisation: just f(x).
    raw = embed(m, imgs, flip=False, normalize=False, progress=False)
    np.testing.assert_allclose(raw, (x.flatten(1) @ w).numpy(), rtol=1e-4, atol=1e-4)


def test_embed_accepts_dataset_of_pairs_and_loader():
    imgs = torch.randint(0, 256, (5, 3, 4, 5), dtype=torch.uint8)
    ds = torch.utils.data.TensorDataset(imgs, torch.arange(5))
    m = Linear()
    a = embed(m, imgs, progress=False)
    b = embed(m, ds, batch_size=2, progress=False)
    c = embed(m, torch.utils.data.DataLoader(ds, batch_size=4), progress=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_evaluate_pair_set_end_to_end(tmp_path):
    from nbfacelib.data.pairs import PairSet, encode_image

    # Identity k = flat colour k; a colour-mean "model" separates identities perfectly.
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (20, 3))
    imgs, same = [], []
    for i in range(20):
        a = i
        b = i if i % 2 == 0 else (i + 7) % 20
        for k in (a, b):
            arr = np.broadcast_to(colours[k][:, None, None], (3, 16, 16)).astype(np.uint8)
            imgs.append(encode_image(torch.from_numpy(arr.copy())))
        same.append(a == b)

    class Mean(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean((2, 3)), torch.ones(len(x), 1)], 1)

    ps = PairSet(imgs, np.array(same))
    r = evaluate_pair_set(Mean(), ps, size=16, progress=False, nfolds=2)
    assert r["auc"] == 1.0 and r["n_pairs"] == 20 and r["n_same"] == 10
    # The same through a file path and the explicit decode -> embed -> evaluate route.
    from nbfacelib.data.pairs import save_pairs

    path = save_pairs(tmp_path / "colours.bin", ps.images, ps.issame)
    r2 = evaluate_pair_set(Mean(), path, size=16, progress=False, nfolds=2, batch_size=7)
    emb = embed(Mean(), ps.decode(size=16), normalize=False, progress=False)
    r3 = evaluate(emb[0::2], emb[1::2], ps.issame, nfolds=2)
    assert r2 == r == r3


@pytest.mark.gpu
def test_embed_on_cuda_with_amp_matches_cpu():
    imgs = torch.randint(0, 256, (9, 3, 4, 5), dtype=torch.uint8)
    m = Linear()
    cpu = embed(m, imgs, progress=False)
    gpu = embed(m.cuda(), imgs, progress=False, amp=True)
    assert next(m.parameters()).is_cuda
    np.testing.assert_allclose(gpu, cpu, atol=5e-3)


def test_fast_equals_grid_at_float32_rounded_thresholds():
    """Distances equal to float32(t) sit just off the float64 grid value t; numpy >= 2 (NEP 50,
    pinned) compares float32 arrays with a float64 scalar in float64, as the fast path does."""
    from nbfacelib.eval.verification import THRESHOLDS, _train_accuracies_fast, _train_accuracies_grid

    d = THRESHOLDS[1:200:7].astype(np.float32)  # float32(t) != t for most grid values
    assert (d.astype(np.float64) != THRESHOLDS[1:200:7]).any()
    issame = np.arange(len(d)) % 2 == 0
    fast = _train_accuracies_fast(THRESHOLDS, d, issame)
    grid = _train_accuracies_grid(THRESHOLDS, d, issame)
    assert np.array_equal(fast, grid)


def test_numpy_2_is_required():
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    pin = next(d for d in deps["dependencies"] if d.startswith("numpy"))
    assert pin == "numpy>=2", f"pyproject pins {pin!r}; the fast 10-fold path needs numpy >= 2"
    assert int(np.__version__.split(".")[0]) >= 2
