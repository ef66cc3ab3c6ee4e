"""Raw-pixel baseline on synthetic faces: how hard is the data before any learning?

Eigenfaces (Turk & Pentland, 1991): PCA of pixel vectors fitted on training identities, then
cosine similarity of the projections of held-out identities' images, scored with the
10-fold verification protocol (:func:`nbfacelib.eval.verification.evaluate`). It calibrates
:mod:`nbfacelib.data.synthetic`: at ``medium`` it should land well above chance and well
below saturation, and pairs of low ground-truth quality should be harder than high-quality
ones (pair quality = the lower of its two images', as in MagFace's error-versus-reject).

Pixels: the image is area-averaged to ``pixels x pixels`` (default 28: PCA on 112x112 RGB
would only add dimensions of texture the eigenfaces do not use) and each vector is
standardised (zero mean, unit norm), the usual eigenface pre-processing against exposure.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["pixel_features", "calibrate"]


def pixel_features(images: torch.Tensor, pixels: int = 28) -> np.ndarray:
    """uint8 (B, 3, H, W) -> float32 (B, 3*pixels*pixels): area-averaged, per-image centred
    and L2-normalised pixel vectors."""
    x = F.adaptive_avg_pool2d(images.float() / 255.0, pixels).flatten(1)
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)
    return x.cpu().numpy().astype(np.float32)


def _render_all(ds, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    feats, quality = [], []
    labels = torch.as_tensor(ds.labels)
    samples = torch.arange(len(ds)) % ds.per_identity
    for i in range(0, len(ds), batch):
        images, n = ds.render_batch(labels[i : i + batch], samples[i : i + batch])
        feats.append(images)
        quality.append(n["quality"].numpy())
    return torch.cat(feats), np.concatenate(quality)


def calibrate(
    difficulty: str = "medium",
    train_ids: int = 200,
    test_ids: int = 300,
    pairs: int = 6000,
    seed: int = 0,
    per_id: int = 10,
    components: int = 100,
    pixels: int = 28,
    size: int = 112,
    style: str = "flat",
) -> dict:
    """Fit PCA on ``train_ids`` x ``per_id`` images, score ``pairs`` pairs (balanced,
    fold-ready, from :func:`nbfacelib.data.pairs.sample_pairs`) of ``test_ids`` disjoint
    identities by cosine similarity, and return a dict: ``accuracy``, ``accuracy_std``
    (10-fold), ``auc``, ``tercile_accuracy`` (low, mid, high pair quality, each with the
    protocol's mean threshold), ``tercile_quality`` (mean pair quality per tercile),
    ``tercile_pairs``, ``n_pairs``, ``n_train_images``, ``n_test_images``,
    ``explained_variance``, ``seconds``, and the settings."""
    from sklearn.decomposition import PCA

    from nbfacelib.data.pairs import sample_pairs
    from nbfacelib.data.synthetic import SyntheticFaces
    from nbfacelib.eval.verification import evaluate

    for name, val in (("train_ids", train_ids), ("test_ids", test_ids), ("pairs", pairs), ("per_id", per_id)):
        if int(val) < 2:
            raise ValueError(f"calibrate: {name}={val!r} must be >= 2")
    t0 = time.perf_counter()
    train = SyntheticFaces(train_ids, per_id, seed=seed, size=size, difficulty=difficulty, style=style)
    test = train.heldout(test_ids)
    train_images, _ = _render_all(train)
    test_images, test_quality = _render_all(test)
    t_render = time.perf_counter() - t0

    pca = PCA(n_components=min(components, len(train) - 1), random_state=seed)
    pca.fit(pixel_features(train_images, pixels))
    emb = pca.transform(pixel_features(test_images, pixels))

    i1, i2, issame = sample_pairs(test.labels, pairs, seed=seed)
    res = evaluate(emb[i1], emb[i2], issame, nfolds=10)

    # Per-tercile accuracy of pair quality, with the protocol's (mean fold) threshold on the
    # squared L2 distance of unit vectors, the quantity evaluate() thresholds.
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    dist = ((e[i1] - e[i2]) ** 2).sum(1)
    pred = dist < res["threshold"]
    q = np.minimum(test_quality[i1], test_quality[i2])
    order = np.argsort(q, kind="stable")
    terciles = np.array_split(order, 3)
    return {
        "difficulty": difficulty,
        "style": style,
        "accuracy": float(res["accuracy"]),
        "accuracy_std": float(res["accuracy_std"]),
        "auc": float(res["auc"]),
        "tercile_accuracy": [float((pred[t] == issame[t]).mean()) for t in terciles],
        "tercile_quality": [float(q[t].mean()) for t in terciles],
        "tercile_pairs": [int(len(t)) for t in terciles],
        "n_pairs": int(len(issame)),
        "n_same": int(np.sum(issame)),
        "n_train_images": len(train),
        "n_test_images": len(test),
        "train_ids": train_ids,
        "test_ids": test_ids,
        "components": int(pca.n_components_),
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
        "seed": seed,
        "render_seconds": t_render,
        "seconds": time.perf_counter() - t0,
    }


def format_calibration(r: dict) -> str:
    """One human-readable paragraph of :func:`calibrate`'s result."""
    lo, mid, hi = r["tercile_accuracy"]
    qlo, qmid, qhi = r["tercile_quality"]
    return (
        f"raw-pixel baseline ({r['difficulty']}, PCA {r['components']} on {r['n_train_images']} images of "
        f"{r['train_ids']} identities; {r['n_pairs']} pairs of {r['test_ids']} held-out identities): "
        f"accuracy {100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f}%, AUC {r['auc']:.3f}; "
        f"by pair quality: low {100 * lo:.1f}% (q {qlo:.2f}), mid {100 * mid:.1f}% (q {qmid:.2f}), "
        f"high {100 * hi:.1f}% (q {qhi:.2f}); {r['seconds']:.1f} s"
    )
