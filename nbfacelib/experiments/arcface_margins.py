"""Notebook 01, ArcFace and the margin family (document 003): the experiments.

- C13 (:func:`unit_distance_check`): for unit vectors ``||a - b||^2 = 2 - 2 cos(a, b)``, checked
  on random pairs whose cosines cover [-1, 1].
- Margin geometry (:func:`target_logits`, :func:`decision_regions`): the target logit against
  the angle, and the binary decision boundaries in the (theta_1, theta_2) plane (ArcFace paper,
  Fig. 5), computed by calling the real heads' ``apply_margin``, so the figures show what the
  training code does, fallback past ``m1*theta + m2 > pi`` included.
  :func:`document_arcface_logit` is the document's ``ArcMarginModel`` formula (its listing,
  in numpy) to compare the library head with.
- C14 / C15 (:func:`run_experiments`): softmax vs CosFace vs ArcFace on one backbone, data and
  step count over several seeds, and a MobileFaceNet against an IResNet with the same recipe;
  each model is evaluated on held-out synthetic identities (10-fold accuracy, TAR@FAR, accuracy
  per quality tercile) and on the ORL faces (real, never trained on).
- Verdicts (:func:`c13_verdict`, :func:`c14_verdict`, :func:`c15_verdict`) are computed from the
  measured numbers with the rule written in their docstrings.

Every training run goes through :func:`nbfacelib.train.fit` (the same engine as
``nbface train``), so a notebook parameter such as ``backbone="r50"`` is all a GPU run needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nbfacelib.data import transforms  # the engine's resize, so train and test pixels match

# --------------------------------------------------------------------------------------- C13


def unit_distance_check(
    n: int = 100_000, dim: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Measure ``| ||a - b||^2 - (2 - 2 a.b) |`` over ``n`` random pairs of unit vectors.

    ``a`` is uniform on the sphere; ``b = t a + sqrt(1 - t^2) u`` with ``u`` a random unit vector
    orthogonal to ``a`` and ``t ~ U(-1, 1)``, so the cosines cover [-1, 1] evenly (two random
    vectors in 512-d would all have cosines near 0). Both are L2-normalised in ``dtype`` and the
    two sides are computed in ``dtype`` as written (difference then squared norm; dot product).

    Returns ``cos``, ``d2`` and ``abs_err`` (numpy, length n), ``max_abs_err``,
    ``mean_abs_err``, ``max_norm_err`` (max | ||a|| - 1 | after normalisation in ``dtype``),
    ``eps`` (machine epsilon of ``dtype``), ``n``, ``dim``, ``dtype``.
    """
    g = torch.Generator().manual_seed(int(seed))
    a = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    u = torch.randn(n, dim, generator=g, dtype=torch.float64)
    u = F.normalize(u - (u * a).sum(1, keepdim=True) * a, dim=1)
    t = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    b = t * a + (1 - t.square()).sqrt() * u
    a, b = F.normalize(a.to(dtype), dim=1), F.normalize(b.to(dtype), dim=1)
    d2 = (a - b).square().sum(1)
    cos = (a * b).sum(1)
    err = (d2 - (2 - 2 * cos)).abs()
    norm_err = torch.cat([a.norm(dim=1), b.norm(dim=1)]).sub(1).abs().max()
    return {
        "cos": cos.double().numpy(),
        "d2": d2.double().numpy(),
        "abs_err": err.double().numpy(),
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
        "max_norm_err": float(norm_err),
        "eps": float(torch.finfo(dtype).eps),
        "n": int(n),
        "dim": int(dim),
        "dtype": str(dtype).replace("torch.", ""),
    }


def c13_verdict(check: dict[str, Any], tol: float = 1e-5) -> dict[str, Any]:
    """C13 holds when the largest error over all pairs is below ``tol`` (1e-5 suits float32,
    whose epsilon is 1.2e-7: the identity is exact algebra, so only rounding remains); it does
    not hold otherwise. Never inconclusive: the check is exact up to rounding at any scale."""
    err = check["max_abs_err"]
    return {
        "statement": (
            f"max | ||a-b||^2 - (2 - 2cos) | over {check['n']:,} random unit-vector pairs in "
            f"{check['dim']}-d ({check['dtype']}) < {tol:g}"
        ),
        "measured": {"max_abs_err": err, "mean_abs_err": check["mean_abs_err"], "tolerance": tol},
        "holds": bool(err < tol),
    }


# ------------------------------------------------------------------------- margin geometry

#: Margins of the geometry figures: insightface's combined-margin settings (REFERENCE.md).
DEFAULT_MARGINS = {"m_sphere": 1.35, "m_cos": 0.4, "m_arc": 0.5, "m_comb": (1.0, 0.3, 0.2)}


def geometry_heads(
    m_sphere: float = 1.35,
    m_cos: float = 0.4,
    m_arc: float = 0.5,
    m_comb: Sequence[float] | None = (1.0, 0.3, 0.2),
) -> dict[str, Any]:
    """The heads drawn in the geometry figures, built by name from ``nbfacelib.losses``:
    softmax (no margin), SphereFace ``cos(m_sphere*theta)``, CosFace ``cos(theta) - m_cos``,
    ArcFace ``cos(theta + m_arc)`` (radians), and the combined ``cos(m1 theta + m2) - m3``
    (left out when ``m_comb`` is None). Units as in :class:`~nbfacelib.losses.CombinedMargin`."""
    from nbfacelib.losses import build_margin

    heads = {
        "softmax": build_margin("softmax"),
        f"SphereFace m1={m_sphere:g}": build_margin("sphereface", m=m_sphere),
        f"CosFace m3={m_cos:g}": build_margin("cosface", m=m_cos),
        f"ArcFace m2={m_arc:g}": build_margin("arcface", m=m_arc),
    }
    if m_comb is not None:
        m1, m2, m3 = m_comb
        heads[f"combined ({m1:g}, {m2:g}, {m3:g})"] = build_margin("combined", m1=m1, m2=m2, m3=m3)
    return heads


def _head_logits(head, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``head.apply_margin`` divided by the head's scale: the logits in cosine units.

    Plain softmax takes raw inner products; for unit embeddings and centres (as drawn here)
    they are the cosines, so the same input serves every head."""
    with torch.no_grad():
        return head.apply_margin(cos, labels) / head.s


def target_logits(heads: dict[str, Any], thetas_deg: np.ndarray | None = None) -> dict[str, Any]:
    """Target logit (before the scale s) of each head against the angle theta_y to the class
    centre, from ``head.apply_margin``. Returns ``{"theta_deg": (n,), name: (n,) ...}``."""
    theta = np.linspace(0.0, 180.0, 361) if thetas_deg is None else np.asarray(thetas_deg, float)
    cos = torch.as_tensor(np.cos(np.deg2rad(theta)), dtype=torch.float64).unsqueeze(1)
    labels = torch.zeros(len(theta), dtype=torch.long)
    out: dict[str, Any] = {"theta_deg": theta}
    for name, head in heads.items():
        out[name] = _head_logits(head, cos, labels)[:, 0].numpy()
    return out


def decision_regions(heads: dict[str, Any], n: int = 181, max_deg: float = 180.0) -> dict[str, Any]:
    """Binary decision boundaries in the (theta_1, theta_2) plane (ArcFace paper, Fig. 5).

    A feature at angle theta_1 to centre W_1 and theta_2 to W_2 is "class 1 with margin" when
    ``apply_margin`` with label 1 gives it the larger logit: ``h(cos theta_1) > cos theta_2``; and
    symmetrically for class 2. Returns ``{"theta_deg": (n,), name: (f1, f2)}`` where ``f1[i, j] =
    logit_1 - logit_2`` with label 1 at ``theta_1 = theta[j]``, ``theta_2 = theta[i]`` (rows are
    theta_2), ``f2`` the same with label 2. Boundaries are the zero contours; where both are
    negative neither class is accepted: the decision margin (grey in the paper)."""
    theta = np.linspace(0.0, max_deg, n)
    t1, t2 = np.meshgrid(np.deg2rad(theta), np.deg2rad(theta))  # t1 varies along columns
    cos = torch.as_tensor(np.stack([np.cos(t1).ravel(), np.cos(t2).ravel()], 1), dtype=torch.float64)
    out: dict[str, Any] = {"theta_deg": theta}
    for name, head in heads.items():
        z1 = _head_logits(head, cos, torch.zeros(len(cos), dtype=torch.long))
        z2 = _head_logits(head, cos, torch.ones(len(cos), dtype=torch.long))
        out[name] = ((z1[:, 0] - z1[:, 1]).reshape(n, n).numpy(), (z2[:, 1] - z2[:, 0]).reshape(n, n).numpy())
    return out


def document_arcface_logit(cos: np.ndarray, m: float = 0.5, easy_margin: bool = False) -> np.ndarray:
    """The target logit of the document's ``ArcMarginModel`` (foamliu/InsightFace-v2), in numpy:
    ``phi = cos*cos(m) - sin*sin(m)``; ``easy_margin``: phi where cos > 0 else cos; otherwise
    phi where ``cos > cos(pi - m)`` else ``cos - sin(pi - m)*m``. Used to check our head
    against the document's code (and the InsightFace_Pytorch listing, whose ``mm = sin(m)*m`` is
    the same number)."""
    cos = np.asarray(cos, dtype=np.float64)
    sine = np.sqrt(np.clip(1.0 - cos**2, 0.0, None))
    phi = cos * math.cos(m) - sine * math.sin(m)
    if easy_margin:
        return np.where(cos > 0, phi, cos)
    return np.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


def compare_with_document(m: float = 0.5, n: int = 2001) -> float:
    """Max |our ArcFace target logit - the document's ``ArcMarginModel``| over cos in [-1, 1]."""
    from nbfacelib.losses import build_margin

    cos = np.linspace(-1.0, 1.0, n)
    ours = _head_logits(
        build_margin("arcface", m=m), torch.as_tensor(cos).unsqueeze(1), torch.zeros(n, dtype=torch.long)
    )[:, 0].numpy()
    return float(np.abs(ours - document_arcface_logit(cos, m)).max())


# ------------------------------------------------------------------------------- complexity


def complexity_table(
    backbones: Sequence[str], input_size: int = 112, embedding_size: int = 512
) -> list[dict]:
    """Parameters and MACs (insightface's "FLOPs") of each backbone at ``input_size``, counted
    on the meta device (shapes only), so r100 costs nothing. One dict per backbone."""
    from nbfacelib.models import build_backbone
    from nbfacelib.models.complexity import count_macs, count_parameters

    rows = []
    for name in backbones:
        with torch.device("meta"):
            model = build_backbone(name, embedding_size=embedding_size, input_size=input_size)
        rows.append(
            {
                "backbone": name,
                "input_size": input_size,
                "params_m": count_parameters(model) / 1e6,
                "gmacs": count_macs(model) / 1e9,
            }
        )
    return rows


# --------------------------------------------------------------------------- evaluation data


@dataclass
class EvalSet:
    """Images to embed once and the verification pairs over them.

    ``images`` uint8 (N, 3, S, S); ``labels`` (N,); ``quality`` (N,) ground truth in [0, 1] or
    None (real data); pairs ``idx1``, ``idx2`` (indices into images) and ``issame``."""

    name: str
    images: torch.Tensor
    labels: np.ndarray
    idx1: np.ndarray
    idx2: np.ndarray
    issame: np.ndarray
    quality: np.ndarray | None = None
    description: str = ""


def synthetic_eval_set(
    num_identities: int,
    per_identity: int,
    n_pairs: int,
    identity_offset: int,
    input_size: int = 112,
    data_seed: int = 0,
    difficulty: str = "medium",
    pair_seed: int = 0,
) -> EvalSet:
    """Held-out synthetic identities (``identity_offset`` = number of training identities, so
    none was trained on), rendered once with their ground-truth quality, and ``n_pairs``
    balanced 10-fold pairs (:func:`nbfacelib.data.pairs.sample_pairs`)."""
    from nbfacelib.data.pairs import sample_pairs
    from nbfacelib.data.synthetic import SyntheticFaces

    ds = SyntheticFaces(
        num_identities, per_identity, seed=data_seed, difficulty=difficulty, identity_offset=identity_offset
    )
    labels = ds.labels
    samples = np.tile(np.arange(per_identity), num_identities)
    images, quality = [], []
    for s in range(0, len(labels), 256):
        img, nuis = ds.render_batch(
            torch.as_tensor(labels[s : s + 256]), torch.as_tensor(samples[s : s + 256])
        )
        images.append(transforms.resize(img, input_size))
        quality.append(nuis["quality"].double().numpy())
    i1, i2, same = sample_pairs(labels, n_pairs, seed=pair_seed)
    return EvalSet(
        "synthetic",
        torch.cat(images),
        labels,
        i1,
        i2,
        same,
        np.concatenate(quality),
        f"{num_identities} held-out synthetic identities x {per_identity} images ({difficulty}), "
        f"{len(same)} pairs",
    )


def orl_eval_set(
    n_pairs: int, input_size: int = 112, people: Sequence[int] | None = None, pair_seed: int = 0
):
    """ORL faces (real, 40 people x 10 grey images, padded to square by the folder reader) as
    pairs. ``people``: 1-based person numbers (``s<k>`` folders) to use, default all 40; nothing
    in this notebook trains on ORL, so every person is unseen."""
    from nbfacelib.data import open_dataset
    from nbfacelib.data.pairs import sample_pairs

    ds = open_dataset("orl", size=112)
    labels = np.asarray(ds.labels)
    keep = np.arange(len(labels)) if people is None else np.flatnonzero(np.isin(labels + 1, list(people)))
    images = transforms.resize(torch.stack([ds[int(i)][0] for i in keep]), input_size)
    labels = labels[keep]
    i1, i2, same = sample_pairs(labels, n_pairs, seed=pair_seed)
    who = "people 1-40" if people is None else f"{len(set(labels.tolist()))} people"
    return EvalSet("orl", images, labels, i1, i2, same, None, f"ORL faces, {who}, {len(same)} pairs")


def quality_terciles(
    quality: np.ndarray, idx1: np.ndarray, idx2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tercile (0 low, 1 mid, 2 high) of each pair by the lower quality of its two images, and
    the two tercile edges (the 1/3 and 2/3 quantiles of that pair quality)."""
    q = np.minimum(quality[idx1], quality[idx2])
    edges = np.quantile(q, [1 / 3, 2 / 3])
    return np.digitize(q, edges), edges


def score_embeddings(emb: np.ndarray, evalset: EvalSet) -> dict[str, float]:
    """Verification metrics of embeddings ``emb`` (N, D) (not necessarily normalised) of
    ``evalset.images`` on its pairs, with :func:`nbfacelib.eval.verification.evaluate`:
    ``accuracy``, ``accuracy_std`` (over the 10 folds), ``auc``, ``eer``, ``threshold``,
    ``tar@far=<far>`` for each FAR the pair count supports; with ground-truth quality also
    ``acc_q0``/``acc_q1``/``acc_q2``: accuracy of the pairs in each tercile of pair quality (the
    lower of the two images) at the protocol's threshold (mean of the fold thresholds)."""
    from nbfacelib.eval.verification import evaluate

    res = evaluate(emb[evalset.idx1], emb[evalset.idx2], evalset.issame)
    metrics = {k: float(res[k]) for k in ("accuracy", "accuracy_std", "auc", "eer", "threshold")}
    for far, tar in res["tar_at_far"].items():
        metrics[f"tar@far={far:.0e}"] = float(tar)
    if evalset.quality is not None:
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        tercile, _ = quality_terciles(evalset.quality, evalset.idx1, evalset.idx2)
        d2 = np.square(unit[evalset.idx1] - unit[evalset.idx2]).sum(1)
        correct = (d2 < res["threshold"]) == evalset.issame  # the protocol's decision rule
        for t in range(3):
            metrics[f"acc_q{t}"] = float(correct[tercile == t].mean())
    return metrics


def evaluate_model(model, evalset: EvalSet, device=None, batch_size: int = 256) -> dict[str, Any]:
    """Embed ``evalset.images`` (flip test-time augmentation, arcface_torch protocol) and score
    its pairs (:func:`score_embeddings`). Returns ``{"metrics": {...}, "embeddings": (N, D)
    L2-normalised, "norms": (N,)}``; ``norms`` are the feature norms of the un-flipped images
    (the raw embedding)."""
    from nbfacelib.eval.embed import embed

    kw = {"batch_size": batch_size, "device": device, "progress": False, "normalize": False}
    plain = embed(model, evalset.images, flip=False, **kw)
    flipped = embed(model, evalset.images.flip(3), flip=False, **kw)
    emb = plain + flipped  # = embed(..., flip=True), with the plain norms kept as a by-product
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    return {
        "metrics": score_embeddings(emb, evalset),
        "embeddings": unit.astype(np.float32),
        "norms": np.linalg.norm(plain, axis=1),
    }


def pixel_baseline(
    evalsets: dict[str, EvalSet | None],
    fit_ids: int = 100,
    per_id: int = 10,
    data_seed: int = 0,
    difficulty: str = "medium",
    components: int = 100,
) -> dict[str, dict[str, float]]:
    """Eigenfaces (raw-pixel PCA, :mod:`nbfacelib.eval.baseline`) scored on the same pairs as
    the models: PCA fitted on ``fit_ids`` x ``per_id`` synthetic *training* identities (the
    first ones of the training set), pixels as :func:`nbfacelib.eval.baseline.pixel_features`.
    What a model must beat to have learnt anything beyond pixel similarity."""
    from sklearn.decomposition import PCA

    from nbfacelib.data.synthetic import SyntheticFaces
    from nbfacelib.eval.baseline import pixel_features

    ds = SyntheticFaces(fit_ids, per_id, seed=data_seed, difficulty=difficulty)
    labels = torch.as_tensor(ds.labels)
    samples = torch.arange(len(ds)) % per_id
    feats = []
    for s in range(0, len(ds), 256):
        images, _ = ds.render_batch(labels[s : s + 256], samples[s : s + 256])
        feats.append(pixel_features(images))
    pca = PCA(n_components=min(components, len(ds) - 1), random_state=0).fit(np.concatenate(feats))
    return {
        name: score_embeddings(pca.transform(pixel_features(es.images)), es)
        for name, es in evalsets.items()
        if es is not None
    }


# --------------------------------------------------------------------------------- training


@dataclass
class Setup:
    """Everything :func:`run_experiments` needs; the notebook's parameters map onto it 1:1.

    Training (all runs share it; only backbone, loss and seed change): ``train_ids`` synthetic
    identities x ``per_id`` images (renderer seed ``data_seed``, ``difficulty``), ``steps``
    optimizer steps of ``batch_size`` images at ``input_size`` pixels, SGD with peak ``lr``
    after ``warmup_steps``, embedding of ``embedding_size``. ``loss_kwargs``: per loss name, the
    head's keywords (e.g. ``{"arcface": {"s": 32, "m": 0.5}}``; default: the papers' s = 64,
    ArcFace m = 0.5 rad, CosFace m = 0.4, softmax s = 1).
    Evaluation: ``eval_ids`` held-out synthetic identities x ``eval_per_id`` images,
    ``eval_pairs`` pairs; ``orl_pairs`` ORL pairs (0: skip ORL).
    C14: ``losses`` on ``backbone`` for each of ``seeds``. C15: ``arcface`` on ``small_backbone``
    for the same seeds, against ``backbone`` (None: skip C15 training).
    ``pre_render``: render the synthetic training images once into a folder shared by every
    run (fast on CPU); False: the engine renders each batch on the training device (the GPU
    preset, thousands of identities). ``train_data``: a data-set URI (e.g. the ``ms1mv2``
    manifest) that replaces the synthetic training identities (the paper preset);
    ``val_bins``: verification ``.bin`` pair sets (LFW, CFP-FP, AgeDB-30) evaluated as well.
    """

    backbone: str = "ir_tiny"
    small_backbone: str | None = "mbf_tiny"
    losses: Sequence[str] = ("softmax", "cosface", "arcface")
    c15_loss: str = "arcface"
    seeds: Sequence[int] = (0, 1, 2)
    train_ids: int = 200
    per_id: int = 10
    data_seed: int = 0
    difficulty: str = "medium"
    steps: int = 150
    batch_size: int = 64
    lr: float = 0.1
    warmup_steps: int = 10
    input_size: int = 64
    embedding_size: int = 128
    loss_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_ids: int = 100
    eval_per_id: int = 10
    eval_pairs: int = 1000
    orl_pairs: int = 600
    orl_people: Sequence[int] | None = None  # 1-based ORL person numbers; None: all 40
    pre_render: bool = True
    train_data: str | None = None
    val_bins: Sequence[str] = ()
    device: str = "auto"
    out_dir: str | None = None  # where runs are written; None: a fresh temporary directory

    def runs(self) -> list[tuple[str, str, int]]:
        """(backbone, loss, seed) of every training run, C14 grid first."""
        grid = [(self.backbone, loss, s) for loss in self.losses for s in self.seeds]
        if self.small_backbone:
            grid += [(self.small_backbone, self.c15_loss, s) for s in self.seeds]
        return list(dict.fromkeys(grid))


def render_training_set(setup: Setup, out_dir: str | Path) -> Path:
    """Render the training identities once, as an image folder (PNG, lossless, 112x112) that
    every run of the notebook then reads into memory.

    The engine can render synthetic faces on the fly (``synthetic:`` URI), but then every run
    renders every batch again; here a dozen runs share one fixed set of ``train_ids`` x
    ``per_id`` images (the same images the on-the-fly reader would draw: identities
    ``0..train_ids-1``, samples ``0..per_id-1`` of the same renderer seed). Returns the folder."""
    from nbfacelib.data.folder import write_image_folder
    from nbfacelib.data.synthetic import SyntheticFaces

    ds = SyntheticFaces(setup.train_ids, setup.per_id, seed=setup.data_seed, difficulty=setup.difficulty)
    labels = ds.labels
    samples = np.tile(np.arange(setup.per_id), setup.train_ids)

    def items():
        for s in range(0, len(labels), 256):
            chunk = torch.as_tensor(labels[s : s + 256])
            images, _ = ds.render_batch(chunk, torch.as_tensor(samples[s : s + 256]))
            yield from zip(images, chunk.tolist(), strict=True)

    out = Path(out_dir)
    write_image_folder(out, items(), ext="png", overwrite=True)
    return out


def train_config(setup: Setup, backbone: str, loss: str, seed: int, data: str | None = None):
    """The :class:`~nbfacelib.train.TrainConfig` of one run. ``data``: the training set URI
    (default: the on-the-fly ``synthetic:`` reader of the same identities; :func:`run_experiments`
    passes the folder of :func:`render_training_set`). No evaluation inside ``fit``:
    :func:`evaluate_model` evaluates every model on the same images afterwards."""
    from nbfacelib.train import TrainConfig

    if data is None:
        data = (
            f"synthetic:ids={setup.train_ids},per_id={setup.per_id},seed={setup.data_seed},"
            f"difficulty={setup.difficulty}"
        )
    return TrainConfig(
        backbone=backbone,
        embedding_size=setup.embedding_size,
        input_size=setup.input_size,
        loss=loss,
        loss_kwargs=dict(setup.loss_kwargs.get(loss, {})),
        data=data,
        val=[],
        steps=setup.steps,
        batch_size=setup.batch_size,
        lr=setup.lr,
        warmup_steps=setup.warmup_steps,
        seed=int(seed),
        device=setup.device,
        out=str(Path(setup.out_dir or "runs/01_arcface_margins") / f"{backbone}-{loss}-seed{seed}"),
        log_every=max(1, setup.steps // 10),
        progress=False,
    )


def run_experiments(
    setup: Setup, log: Callable[[str], None] | None = print, keep_embeddings: int = 1
) -> dict[str, Any]:
    """Train every run of ``setup.runs()`` with :func:`nbfacelib.train.fit`, evaluate each on the
    synthetic held-out set and on ORL, and return::

        {"setup": asdict(setup),
         "runs": [{"backbone", "loss", "seed", "seconds", "first_loss", "final_loss",
                   "synthetic": {metrics}, "orl": {metrics}}, ...],
         "embeddings": {(backbone, loss): {"synthetic": (N, D), "norms": (N,)}} (first
                       ``keep_embeddings`` seeds of each, for UMAP and norm plots),
         "eval": {"synthetic": EvalSet, "orl": EvalSet or None},
         "baseline": {"synthetic": {metrics}, "orl": {metrics}} (eigenfaces, no training)}
    """
    import shutil
    import tempfile

    if setup.out_dir is not None:
        return _run_experiments(setup, log, keep_embeddings)
    # no out_dir: runs (checkpoints, rendered images) go to a temporary directory removed at the
    # end; the returned results hold everything the notebook draws
    tmp = tempfile.mkdtemp(prefix="nbface01-")
    try:
        out = _run_experiments(replace(setup, out_dir=tmp), log, keep_embeddings)
        out["setup"]["out_dir"] = None
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_experiments(setup: Setup, log: Callable[[str], None] | None, keep_embeddings: int) -> dict[str, Any]:
    from nbfacelib.train import fit, load_backbone

    say = log or (lambda _msg: None)
    tic = time.perf_counter()
    evalsets: dict[str, EvalSet | None] = {
        "synthetic": synthetic_eval_set(
            setup.eval_ids,
            setup.eval_per_id,
            setup.eval_pairs,
            identity_offset=setup.train_ids,
            input_size=setup.input_size,
            data_seed=setup.data_seed,
            difficulty=setup.difficulty,
        ),
        "orl": orl_eval_set(setup.orl_pairs, setup.input_size, setup.orl_people) if setup.orl_pairs else None,
    }
    data = setup.train_data
    if data is None and setup.pre_render:
        data = f"folder:{render_training_set(setup, Path(setup.out_dir) / 'train_images')}"
    say(f"training data: {data or 'synthetic, rendered per batch'}; set-up {time.perf_counter() - tic:.1f} s")
    runs, kept = [], {}
    for backbone, loss, seed in setup.runs():
        cfg = train_config(setup, backbone, loss, seed, data=data)
        t0 = time.perf_counter()
        summary = fit(cfg)
        train_s = time.perf_counter() - t0
        model = load_backbone(cfg.out, device=summary["device"])
        row: dict[str, Any] = {
            "backbone": backbone,
            "loss": loss,
            "seed": int(seed),
            "train_seconds": train_s,
            "first_loss": summary["first_loss"],
            "final_loss": summary["final_loss"],
            "skipped_steps": summary["skipped_steps"],
        }
        for name, es in evalsets.items():
            if es is None:
                continue
            res = evaluate_model(model, es)
            row[name] = res["metrics"]
            n_kept = sum(1 for r in runs if (r["backbone"], r["loss"]) == (backbone, loss))
            if name == "synthetic" and n_kept < keep_embeddings:
                kept[(backbone, loss)] = {"embeddings": res["embeddings"], "norms": res["norms"]}
        for path in setup.val_bins:
            from nbfacelib.data.datasets import resolve_path
            from nbfacelib.eval.embed import evaluate_pair_set

            res = evaluate_pair_set(model, resolve_path(path), size=setup.input_size, progress=False)
            row[Path(path).stem] = {"accuracy": res["accuracy"], "accuracy_std": res["accuracy_std"]}
        row["seconds"] = time.perf_counter() - t0
        runs.append(row)
        say(
            f"{backbone:>10s} {loss:>8s} seed {seed}: "
            f"loss {row['first_loss']:.2f} -> {row['final_loss']:.2f}, "
            f"synthetic acc {row['synthetic']['accuracy']:.4f}"
            + (f", ORL acc {row['orl']['accuracy']:.4f}" if "orl" in row else "")
            + f" ({row['seconds']:.0f} s)"
        )
    baseline = pixel_baseline(
        evalsets, min(setup.train_ids, 100), setup.per_id, setup.data_seed, setup.difficulty
    )
    return {"setup": asdict(setup), "runs": runs, "embeddings": kept, "eval": evalsets, "baseline": baseline}


# ---------------------------------------------------------------------------------- summaries


def select(runs: list[dict], **where: Any) -> list[dict]:
    """The runs whose fields equal ``where`` (e.g. ``backbone="ir_tiny", loss="arcface"``)."""
    return [r for r in runs if all(r.get(k) == v for k, v in where.items())]


def metric_values(runs: list[dict], metric: str = "accuracy", split: str = "synthetic") -> np.ndarray:
    """``run[split][metric]`` of each run, in order (NaN where a run lacks it)."""
    return np.array([float(r.get(split, {}).get(metric, np.nan)) for r in runs])


def summary_table(
    runs: list[dict], metrics: Sequence[str] = ("accuracy",), split: str = "synthetic"
) -> list[dict]:
    """One row per (backbone, loss): ``n`` seeds and ``<metric>_mean`` / ``<metric>_std``
    (sample std, ddof=1; 0 for one seed) of each metric."""
    groups = list(dict.fromkeys((r["backbone"], r["loss"]) for r in runs))
    rows = []
    for backbone, loss in groups:
        sel = select(runs, backbone=backbone, loss=loss)
        row: dict[str, Any] = {"backbone": backbone, "loss": loss, "n": len(sel)}
        for m in metrics:
            v = metric_values(sel, m, split)
            row[f"{m}_mean"] = float(np.mean(v))
            row[f"{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean of the per-seed differences ``a - b`` and its two-sided ``confidence`` interval from
    Student's t with n - 1 degrees of freedom (the seeds pair the runs: same seed, same batches).
    With one seed the interval is infinite (nothing can be concluded)."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "lo": -math.inf, "hi": math.inf, "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def head_settings(losses: Sequence[str], loss_kwargs: dict[str, dict[str, Any]] | None = None) -> str:
    """ "softmax s=1; cosface s=16 m3=0.4; ..." read from the heads built as the runs build them."""
    from nbfacelib.losses import build_margin

    parts = []
    for loss in losses:
        head = build_margin(loss, **(loss_kwargs or {}).get(loss, {}))
        keys = [k for k in ("m1", "m2", "m3") if hasattr(head, k)]
        margins = "".join(
            f" {k}={getattr(head, k):g}" for k in keys if getattr(head, k) != (1.0 if k == "m1" else 0.0)
        )
        parts.append(f"{loss} s={head.s:g}{margins}")
    return "; ".join(parts)


def c14_verdict(
    runs: list[dict],
    backbone: str,
    metric: str = "accuracy",
    tolerance: float = 0.005,
    confidence: float = 0.95,
    setting: str | None = None,
) -> dict[str, Any]:
    """C14 (ArcFace >= CosFace > softmax) from the per-seed ``metric`` on held-out synthetic pairs.

    Differences are paired by seed; ``[lo, hi]`` is the ``confidence`` t-interval of the mean
    difference (it widens with the spread over seeds). "CosFace > softmax" is shown when the
    interval of cos - soft lies above 0; "ArcFace >= CosFace" (non-inferiority) when the
    interval of arc - cos lies above ``-tolerance`` (ArcFace at most ``tolerance`` worse).
    Holds: both shown. Not held: the interval of cos - soft lies below 0 (softmax better), or
    that of arc - cos below ``-tolerance`` (ArcFace worse by more than the tolerance).
    Otherwise (fewer than 2 seeds, or intervals straddling) inconclusive (None).
    ``setting``: the heads' hyper-parameters (:func:`head_settings`), quoted in the statement."""
    by = {
        loss: metric_values(select(runs, backbone=backbone, loss=loss), metric)
        for loss in ("softmax", "cosface", "arcface")
    }
    if any(len(v) == 0 for v in by.values()):
        raise ValueError(f"c14_verdict needs softmax, cosface and arcface runs on {backbone}")
    n = min(len(v) for v in by.values())
    arc, cos, soft = (by[k][:n] for k in ("arcface", "cosface", "softmax"))
    d_cs = paired_difference(cos, soft, confidence)
    d_ac = paired_difference(arc, cos, confidence)
    if d_cs["hi"] < 0 or d_ac["hi"] < -tolerance:
        holds: bool | None = False
    elif d_cs["lo"] > 0 and d_ac["lo"] > -tolerance:
        holds = True
    else:
        holds = None
    return {
        "statement": (
            f"{metric} on held-out synthetic pairs, {backbone}, same data/steps, {n} seed(s): "
            f"CosFace > softmax (paired {confidence:.0%} t-interval of the difference above 0) and "
            f"ArcFace >= CosFace - {tolerance:g} (interval of arc - cos above -{tolerance:g})"
            + (f"; heads: {setting}" if setting else "")
        ),
        "measured": {
            f"{metric}_arcface_mean": float(arc.mean()),
            f"{metric}_cosface_mean": float(cos.mean()),
            f"{metric}_softmax_mean": float(soft.mean()),
            "cos_minus_soft": d_cs["mean"],
            "cos_minus_soft_ci": [d_cs["lo"], d_cs["hi"]],
            "arc_minus_cos": d_ac["mean"],
            "arc_minus_cos_ci": [d_ac["lo"], d_ac["hi"]],
            "seeds": n,
        },
        "holds": holds,
    }


def c15_verdict(
    runs: list[dict],
    small: str,
    large: str,
    complexity: list[dict],
    loss: str = "arcface",
    metric: str = "accuracy",
    close: float = 0.02,
    max_mac_ratio: float = 0.2,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """C15 (MobileFaceNet close to a much larger IResNet), "close" = within ``close`` accuracy
    (2 points) and "much larger" = the small model has less than ``max_mac_ratio`` (1/5) of the
    large one's MACs, both trained with ``loss`` on the same data and steps.

    Holds: the MAC ratio is below the limit and the paired t-interval of large - small lies
    below ``close``. Not held: the ratio is above the limit (the comparison is not the claimed
    one), or the interval lies above ``close`` (the small model is clearly more than 2 points
    worse). Otherwise (one seed, or the interval straddles ``close``) inconclusive."""
    cx = {row["backbone"]: row for row in complexity}
    small_runs, large_runs = select(runs, backbone=small, loss=loss), select(runs, backbone=large, loss=loss)
    if not small_runs or not large_runs:
        raise ValueError(f"c15_verdict needs {loss} runs on {small} and on {large}")
    seeds = sorted({r["seed"] for r in small_runs} & {r["seed"] for r in large_runs})
    a_small = np.array([metric_values(select(small_runs, seed=s), metric)[0] for s in seeds])
    a_large = np.array([metric_values(select(large_runs, seed=s), metric)[0] for s in seeds])
    d = paired_difference(a_large, a_small, confidence)
    ratio = cx[small]["gmacs"] / cx[large]["gmacs"]
    if ratio >= max_mac_ratio or d["lo"] > close:
        holds: bool | None = False
    elif d["hi"] < close:
        holds = True
    else:
        holds = None
    return {
        "statement": (
            f"{small} ({cx[small]['params_m']:.3g}M params, {cx[small]['gmacs'] * 1e3:.3g} MMACs) "
            f"vs {large} ({cx[large]['params_m']:.3g}M, {cx[large]['gmacs'] * 1e3:.3g} MMACs), "
            f"{loss}, {len(seeds)} seed(s): "
            f"MAC ratio < {max_mac_ratio:g} and {large} - {small} {metric} below {close:g} "
            f"(paired {confidence:.0%} t-interval)"
        ),
        "measured": {
            f"{metric}_{small}_mean": float(a_small.mean()),
            f"{metric}_{large}_mean": float(a_large.mean()),
            "large_minus_small": d["mean"],
            "large_minus_small_ci": [d["lo"], d["hi"]],
            "mac_ratio": ratio,
            "param_ratio": cx[small]["params_m"] / cx[large]["params_m"],
            "seeds": len(seeds),
        },
        "holds": holds,
    }


def project_2d(embeddings: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-d map of embeddings: ``umap`` (umap-learn, cosine metric, as faces are compared by
    angle) or ``pca`` (scikit-learn; fast, for smoke runs)."""
    if method == "umap":
        import umap

        reducer = umap.UMAP(
            n_components=2, metric="cosine", random_state=seed, n_neighbors=15, min_dist=0.1, n_jobs=1
        )  # a random_state makes UMAP single-threaded anyway; saying so avoids its warning
        return reducer.fit_transform(embeddings)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    raise ValueError(f"project_2d: method must be 'umap' or 'pca', got {method!r}")
