"""Notebook 05 (PFE, document 002): the experiments behind claim C11, "PFE's predicted
variance grows as quality drops; MLS beats cosine on low-quality pairs".

- :func:`pfe_variant`: the PFE head (backbone ``pfe`` on a trained run, frozen) trained with the
  MLS objective ``pfe_mls`` on P x K batches, as a grid variant of the base config;
- :func:`embed_gaussian`: each image's mean (L2-normalised embedding) and sigma^2;
  :func:`harmonic_sigma2`: the per-image uncertainty (harmonic mean over dimensions);
- :func:`heldout_nuisances` and :func:`nuisance_rows`: sigma^2 against each recorded nuisance
  of the held-out synthetic faces (which degradations raise it most);
- :func:`score_pairs`, :func:`verification_by_tercile`: MLS vs cosine, on all pairs and per
  pair-quality tercile;
- :func:`template_study`: template fusion (PFE's, paper and official code) vs the plain average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nbfacelib.experiments.grid import Variant
from nbfacelib.losses.pfe import fuse, mutual_likelihood_score
from nbfacelib.train.config import TrainConfig

# recorded nuisances of the synthetic renderer compared with sigma^2 (larger = more degraded)
NUISANCES = {
    "|yaw|": lambda n: n["yaw"].abs(),
    "|pitch|": lambda n: n["pitch"].abs(),
    "blur": lambda n: torch.sqrt(n["blur_sigma"] ** 2 + n["motion_length"] ** 2 / 12),
    "noise_sigma": lambda n: n["noise_sigma"],
    "downsample": lambda n: n["downsample"],
    "jpeg (100 - quality)": lambda n: 100 - n["jpeg_quality"],
    "occluder": lambda n: (n["occluder"] > 0).float(),
    "side light": lambda n: n["light_strength"] * torch.sin(torch.deg2rad(n["light_angle"])),
}


def pfe_variant(
    base: TrainConfig, base_run: str, steps: int, lr: float, images_per_identity: int = 4
) -> Variant:
    """The PFE head on the frozen backbone saved in ``base_run``, trained by ``pfe_mls`` on
    batches of identities x ``images_per_identity`` images (the paper: 64 x 4)."""
    cfg = base.replace(
        backbone="pfe",
        backbone_kwargs={"base_run": str(base_run)},
        loss="pfe_mls",
        loss_kwargs={},
        steps=int(steps),
        lr=float(lr),
        warmup_steps=0,
        images_per_identity=int(images_per_identity),
    )
    return Variant("pfe", cfg, {"head": "pfe"})


@torch.no_grad()
def embed_gaussian(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(mu (N, D) L2-normalised, sigma^2 (N, D)) of uint8 images under a PFE model (no flip,
    as PFE's evaluation), on the CPU."""
    from nbfacelib.data.transforms import normalize
    from nbfacelib.models.output import as_output

    model.eval()
    device = next(model.parameters()).device
    mus, sig = [], []
    for i in range(0, len(images), batch_size):
        out = as_output(model(normalize(images[i : i + batch_size].to(device))))
        if out.log_sigma2 is None:
            raise ValueError("embed_gaussian: the model returns no log_sigma2 (a 'pfe' backbone does)")
        mus.append(torch.nn.functional.normalize(out.embedding.float(), dim=1).cpu())
        sig.append(out.log_sigma2.float().exp().expand_as(out.embedding).cpu())
    return torch.cat(mus).numpy(), torch.cat(sig).numpy()


def harmonic_sigma2(sigma2: np.ndarray) -> np.ndarray:
    """Per image, the harmonic mean of sigma^2 over dimensions (PFE's uncertainty summary)."""
    return sigma2.shape[1] / (1.0 / sigma2).sum(1)


def heldout_nuisances(
    evalset, train_ids: int, data_seed: int = 0, difficulty: str = "medium"
) -> dict[str, np.ndarray]:
    """The :data:`NUISANCES` of a :func:`~nbfacelib.eval.evalsets.synthetic_heldout` set's images
    (identities after ``train_ids``, rounded up to even as that function does), recomputed from
    the renderer's nuisance streams (no rendering)."""
    from nbfacelib.data.synthetic import sample_nuisances

    offset = int(train_ids) + int(train_ids) % 2
    labels = torch.as_tensor(evalset.labels)
    per_id = int(np.bincount(evalset.labels).max())
    samples = torch.arange(len(labels)) % per_id
    n = sample_nuisances(data_seed, labels + offset, samples, difficulty)
    return {name: fn(n).double().numpy() for name, fn in NUISANCES.items()}


def nuisance_rows(sigma: np.ndarray, nuisances: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Spearman correlation of ``sigma`` with each nuisance (over the images where the nuisance
    varies), strongest first."""
    from scipy import stats

    rows = []
    for name, v in nuisances.items():
        r = float(stats.spearmanr(v, sigma)[0]) if np.ptp(v) > 0 else float("nan")
        rows.append(
            {"nuisance": name, "spearman_with_sigma2": r, "images_affected": int((v != np.median(v)).sum())}
        )
    return sorted(rows, key=lambda r: -np.nan_to_num(r["spearman_with_sigma2"], nan=-2))


# ------------------------------------------------------------------------------ verification
def score_pairs(
    mu: np.ndarray, sigma2: np.ndarray, idx1: np.ndarray, idx2: np.ndarray
) -> dict[str, np.ndarray]:
    """``{"mls": PFE's mutual likelihood score, "cosine": mu1 . mu2}`` of each pair."""
    m1, m2 = torch.as_tensor(mu[idx1], dtype=torch.float64), torch.as_tensor(mu[idx2], dtype=torch.float64)
    s1, s2 = (
        torch.as_tensor(sigma2[idx1], dtype=torch.float64),
        torch.as_tensor(sigma2[idx2], dtype=torch.float64),
    )
    return {"mls": mutual_likelihood_score(m1, m2, s1, s2).numpy(), "cosine": (m1 * m2).sum(1).numpy()}


def verification_by_tercile(
    scores: Mapping[str, np.ndarray], issame: np.ndarray, pair_quality: np.ndarray | None
) -> list[dict[str, Any]]:
    """10-fold accuracy, AUC and TAR@FAR=1e-2 of each score (``evaluate_scores``) on all pairs and,
    given pair qualities, on each pair-quality tercile (``tercile`` "all", 0 = lowest; a
    published protocol without qualities: "all" only)."""
    from nbfacelib.eval.verification import evaluate_scores

    which = (
        None if pair_quality is None else np.digitize(pair_quality, np.quantile(pair_quality, [1 / 3, 2 / 3]))
    )
    rows = []
    for part in ("all",) if which is None else ("all", 0, 1, 2):
        keep = np.ones(len(issame), bool) if part == "all" else which == part
        for name, s in scores.items():
            res = evaluate_scores(s[keep], issame[keep], nfolds=min(10, int(keep.sum()) // 2))
            rows.append(
                {
                    "tercile": part,
                    "score": name,
                    "pairs": int(keep.sum()),
                    "accuracy": res["accuracy"],
                    "auc": res["auc"],
                    "tar@far=1e-02": res["tar_at_far"].get(0.01, float("nan")),
                }
            )
    return rows


# ------------------------------------------------------------------------------ templates
def template_study(
    mu: np.ndarray,
    sigma2: np.ndarray,
    labels: np.ndarray,
    sizes: Sequence[int],
    n_impostor: int = 4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Template-to-template verification with templates of k images (k in ``sizes``): for each
    identity two disjoint templates (a genuine pair) and impostor pairs with ``n_impostor``
    other identities' templates. Scores: ``pfe_paper`` (PFE fusion, posterior variance, MLS),
    ``pfe_official`` (fusion with the per-dimension minimum variance, MLS), ``average`` (plain
    mean of the normalised embeddings, cosine). One row per (k, score): ``auc`` and ``pairs``."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    rows = []
    for k in sizes:
        usable = [i for i in ids if (labels == i).sum() >= 2 * k]
        if len(usable) < 2:
            continue
        templates = {}
        for i in usable:
            pick = rng.permutation(np.flatnonzero(labels == i))[: 2 * k]
            templates[i] = (pick[:k], pick[k:])
        fused = {name: {} for name in ("pfe_paper", "pfe_official", "average")}
        for i, (a, b) in templates.items():
            for side, idx in (("a", a), ("b", b)):
                m, s = (
                    torch.as_tensor(mu[idx], dtype=torch.float64),
                    torch.as_tensor(sigma2[idx], dtype=torch.float64),
                )
                fused["pfe_paper"][(i, side)] = fuse(m, s, "paper")
                fused["pfe_official"][(i, side)] = fuse(m, s, "official")
                fused["average"][(i, side)] = (torch.nn.functional.normalize(m.mean(0), dim=0), None)
        pairs = [((i, "a"), (i, "b"), True) for i in usable]
        for n, i in enumerate(usable):
            others = [usable[(n + j) % len(usable)] for j in range(1, min(n_impostor, len(usable) - 1) + 1)]
            pairs += [((i, "a"), (o, "b"), False) for o in others]
        same = np.array([p[2] for p in pairs])
        for name, table in fused.items():
            scores = []
            for a, b, _ in pairs:
                (m1, s1), (m2, s2) = table[a], table[b]
                if s1 is None:
                    scores.append(float(m1 @ m2))
                else:
                    scores.append(float(mutual_likelihood_score(m1, m2, s1, s2)))
            rows.append(
                {"k": int(k), "score": name, "auc": float(roc_auc_score(same, scores)), "pairs": len(pairs)}
            )
    return rows


# ------------------------------------------------------------------------------ real faces
def degraded_rows(
    model: torch.nn.Module, images112: torch.Tensor, strengths: Mapping[str, list[float]], input_size: int
) -> list[dict[str, Any]]:
    """Real faces degraded at known strengths (:func:`nbfacelib.data.degrade.degraded_copies` at
    112 px, resized to the model input): one row per degraded image with ``kind``,
    ``strength``, ``level``, ``image``, ``sigma2`` (harmonic mean over dimensions) and ``norm``
    (the frozen backbone's feature norm, for comparison with notebook 04)."""
    from nbfacelib.data import transforms
    from nbfacelib.data.degrade import degraded_copies
    from nbfacelib.eval.embed import embed

    images, meta = degraded_copies(images112, dict(strengths))
    images = transforms.resize(images, input_size)
    _, sigma2 = embed_gaussian(model, images)
    norms = np.linalg.norm(embed(model, images, flip=False, progress=False, normalize=False), axis=1)
    return [
        {**m, "variant": "pfe", "sigma2": float(s), "norm": float(n)}
        for m, s, n in zip(meta, harmonic_sigma2(sigma2), norms, strict=True)
    ]


def pose_rows(model: torch.nn.Module, evalset) -> list[dict[str, Any]]:
    """sigma^2 (harmonic mean) of a CFP-FP protocol's frontal (first of each pair) and profile
    (second) photographs: one row per image with ``variant``, ``frontal`` (1 / 0), ``sigma2``."""
    frontal, profile = np.unique(evalset.idx1), np.unique(evalset.idx2)
    if np.intersect1d(frontal, profile).size:
        raise ValueError(f"{evalset.name}: an image is first of one pair and second of another: not CFP-FP")
    images = evalset.images
    if not isinstance(images, torch.Tensor):  # a lazily decoded .bin
        images = torch.stack(
            [images[i][0] if isinstance(images[i], tuple | list) else images[i] for i in range(len(images))]
        )
    _, sigma2 = embed_gaussian(model, images)
    h = harmonic_sigma2(sigma2)
    return [{"variant": "pfe", "frontal": 1, "sigma2": float(h[i])} for i in frontal] + [
        {"variant": "pfe", "frontal": 0, "sigma2": float(h[i])} for i in profile
    ]


# explorer: each degradation's strength range, from none (0) to the strongest (1) shown
EXPLORE_RANGES = {
    "blur_sigma": (0.0, 5.0),
    "noise_sigma": (0.0, 50.0),
    "downsample": (1.0, 5.0),
    "jpeg_quality": (100.0, 5.0),
}


def probe(
    model: torch.nn.Module, image112: torch.Tensor, kind: str, amount: float, input_size: int
) -> dict[str, Any]:
    """One face (uint8 (3, 112, 112)) degraded by ``kind`` at ``amount`` in [0, 1] of its
    :data:`EXPLORE_RANGES` span: ``image`` (the degraded face), ``strength``, ``norm`` (the frozen
    backbone's) and ``sigma2`` (PFE's harmonic mean)."""
    from nbfacelib.data import transforms
    from nbfacelib.data.degrade import degrade
    from nbfacelib.eval.embed import embed

    lo, hi = EXPLORE_RANGES[kind]
    strength = lo + float(amount) * (hi - lo)
    image = degrade(image112[None], kind, strength)
    x = transforms.resize(image, input_size)
    _, sigma2 = embed_gaussian(model, x)
    norm = float(np.linalg.norm(embed(model, x, flip=False, progress=False, normalize=False)))
    return {
        "image": image[0],
        "strength": strength,
        "norm": norm,
        "sigma2": float(harmonic_sigma2(sigma2)[0]),
    }


def logged_loss_drop(metrics_path) -> float:
    """The training loss of the first logged window minus that of the last (``metrics.jsonl``
    averages over ``log_every`` steps): positive when the MLS loss went down. Steadier than the
    first and final single-batch losses, which the head's first batch-statistics step distorts."""
    import json
    from pathlib import Path

    losses = [
        json.loads(line)["loss"] for line in Path(metrics_path).read_text().splitlines() if '"loss"' in line
    ]
    if len(losses) < 2:
        raise ValueError(f"{metrics_path}: fewer than two logged losses")
    return float(losses[0] - losses[-1])
