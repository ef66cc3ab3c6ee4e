"""Evaluation sets: images to embed once plus the verification pairs over them.

One :class:`EvalSet` type for every source a notebook evaluates on:

- :func:`synthetic_heldout`: synthetic identities never trained on, with each image's
  ground-truth quality (so accuracy can be split by quality);
- :func:`orl`: the ORL faces (real, 40 people x 10 images, never trained on here);
- :func:`pair_bin`: any verification ``.bin`` (LFW, CFP-FP, AgeDB-30; pairs ``(2i, 2i+1)``),
  decoded lazily;
- :func:`image_folder`: any folder of one sub-folder per identity, with balanced pairs;
- :func:`protocol`: a published protocol read from the data root (``lfw``: LFW View 2;
  ``cfp_fp`` / ``cfp_ff``; ``cfp_heldout``: CFP-FP's split 10, the people the ``cfp``
  training set never sees), each distinct image read once;
- :func:`open_evalset`: one of the above by name (``synthetic-heldout``, ``orl``, a pair-set
  name, a ``.bin``, a folder).

Scoring (:func:`evaluate_embeddings`, :func:`evaluate_model`) is the arcface_torch protocol of
:func:`nbfacelib.eval.verification.evaluate` on embeddings from :func:`nbfacelib.eval.embed.embed`
(flip test-time augmentation). Quality bins follow ONE rule, here only: a pair's quality is the
LOWER of its two images' qualities (MagFace's and ISO/IEC 29794-1's pair quality), and pairs
are binned at the quantiles of that pair quality (terciles by default); each bin's accuracy is
taken at the protocol's threshold (the mean of the fold thresholds).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nbfacelib.data import transforms  # the engine's resize, so train and test pixels match

__all__ = [
    "EvalResult",
    "EvalSet",
    "evaluate_embeddings",
    "evaluate_model",
    "image_folder",
    "open_evalset",
    "orl",
    "own_eigenfaces",
    "pair_bin",
    "pair_quality",
    "pixel_baseline",
    "protocol",
    "quality_bins",
    "synthetic_heldout",
]


@dataclass
class EvalSet:
    """Images to embed once and the verification pairs over them.

    ``images``: uint8 ``(N, 3, S, S)`` tensor, or a Dataset of such images (decoded lazily,
    for large ``.bin`` sets); ``labels`` (N,) identity per image or None (a ``.bin`` has only
    pair labels); pairs ``idx1``, ``idx2`` (indices into images) and ``issame``; ``quality``
    (N,) ground truth in [0, 1] or None (real data); ``bins``: number of pair-quality bins."""

    name: str
    images: Any
    labels: np.ndarray | None
    idx1: np.ndarray
    idx2: np.ndarray
    issame: np.ndarray
    quality: np.ndarray | None = None
    description: str = ""
    bins: int = 3

    def __post_init__(self) -> None:
        n = len(self.images)
        self.idx1, self.idx2 = np.asarray(self.idx1, np.int64), np.asarray(self.idx2, np.int64)
        self.issame = np.asarray(self.issame, bool)
        if not len(self.idx1) == len(self.idx2) == len(self.issame):
            raise ValueError(f"evaluation set {self.name!r}: idx1, idx2 and issame differ in length")
        if len(self.idx1) and (
            min(self.idx1.min(), self.idx2.min()) < 0 or max(self.idx1.max(), self.idx2.max()) >= n
        ):
            raise ValueError(f"evaluation set {self.name!r}: a pair index is outside its {n} images")
        if self.quality is not None and len(self.quality) != n:
            raise ValueError(f"evaluation set {self.name!r}: {len(self.quality)} qualities for {n} images")

    @property
    def n_pairs(self) -> int:
        return len(self.issame)


@dataclass
class EvalResult:
    """``metrics``: flat {name: float}; ``embeddings`` (N, D) float32 L2-normalised (flip TTA);
    ``norms`` (N,) feature norms of the un-flipped images; ``roc``: (fpr, tpr) over all pairs."""

    metrics: dict[str, float]
    embeddings: np.ndarray
    norms: np.ndarray
    roc: tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- quality
def pair_quality(quality: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    """The quality of each pair: the lower of its two images' qualities."""
    quality = np.asarray(quality, float)
    return np.minimum(quality[idx1], quality[idx2])


def quality_bins(pair_q: np.ndarray, bins: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Bin of each pair (0 = lowest quality .. ``bins - 1``) at the ``k / bins`` quantiles of
    the pair qualities, and those ``bins - 1`` edges (``bins=3``: terciles)."""
    if bins < 1:
        raise ValueError(f"quality_bins: bins must be >= 1, got {bins}")
    edges = np.quantile(pair_q, np.arange(1, bins) / bins)
    return np.digitize(pair_q, edges), edges


# ----------------------------------------------------------------------------- sources
def _render(ds, input_size: int, batch: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    labels = torch.as_tensor(ds.labels)
    samples = torch.arange(len(labels)) % ds.per_identity
    images, quality = [], []
    for s in range(0, len(labels), batch):
        img, nuisances = ds.render_batch(labels[s : s + batch], samples[s : s + batch])
        images.append(transforms.resize(img, input_size))
        quality.append(nuisances["quality"].double().numpy())
    return torch.cat(images), np.concatenate(quality)


def synthetic_heldout(
    num_identities: int,
    per_identity: int,
    n_pairs: int,
    identity_offset: int,
    input_size: int = 112,
    data_seed: int = 0,
    difficulty: str = "medium",
    pair_seed: int = 0,
    bins: int = 3,
    style: str = "flat",
) -> EvalSet:
    """``num_identities`` synthetic identities after the first ``identity_offset`` (pass the
    number of training identities, so none was trained on), ``per_identity`` images each with
    their ground-truth quality, and ``n_pairs`` balanced 10-fold pairs.

    An odd offset is rounded up to even: the renderer makes identities in twin pairs
    (2k, 2k+1), so an odd offset would put the twin of the last training identity first in
    the held-out set."""
    from nbfacelib.data.pairs import sample_pairs
    from nbfacelib.data.synthetic import SyntheticFaces

    offset = int(identity_offset) + int(identity_offset) % 2
    ds = SyntheticFaces(
        num_identities,
        per_identity,
        seed=data_seed,
        difficulty=difficulty,
        identity_offset=offset,
        style=style,
    )
    images, quality = _render(ds, input_size)
    labels = np.asarray(ds.labels)
    i1, i2, same = sample_pairs(labels, n_pairs, seed=pair_seed)
    return EvalSet(
        "synthetic",
        images,
        labels,
        i1,
        i2,
        same,
        quality,
        f"{num_identities} held-out synthetic identities (from {offset}) x {per_identity} images "
        f"({difficulty}), {len(same)} pairs",
        bins,
    )


def orl(
    n_pairs: int, input_size: int = 112, people: Sequence[int] | None = None, pair_seed: int = 0
) -> EvalSet:
    """The ORL faces (real, 40 people x 10 grey images, padded to square by the folder reader)
    as ``n_pairs`` balanced pairs. ``people``: 1-based person numbers (``s<k>`` folders), default
    all 40."""
    from nbfacelib.data import open_dataset
    from nbfacelib.data.pairs import sample_pairs

    ds = open_dataset("orl", size=112)
    labels = np.asarray(ds.labels)
    keep = np.arange(len(labels)) if people is None else np.flatnonzero(np.isin(labels + 1, list(people)))
    if len(keep) == 0:
        raise ValueError(f"orl: no ORL person among people={list(people or [])} (1..40)")
    images = transforms.resize(torch.stack([ds[int(i)][0] for i in keep]), input_size)
    labels = labels[keep]
    i1, i2, same = sample_pairs(labels, n_pairs, seed=pair_seed)
    who = "people 1-40" if people is None else f"{len(set(labels.tolist()))} people"
    return EvalSet("orl", images, labels, i1, i2, same, None, f"ORL faces, {who}, {len(same)} pairs")


def pair_bin(path: str | os.PathLike, input_size: int = 112, name: str | None = None) -> EvalSet:
    """A verification ``.bin`` (pickle of 2N encoded images and N bools, read with the
    restricted unpickler of :func:`nbfacelib.data.pairs.load_pairs`); pair i is images
    ``(2i, 2i+1)``. Images are decoded when embedded, not held in memory. ``path``: a file
    (relative paths resolve against the data root) or a pair-set manifest name (``lfw``)."""
    from nbfacelib.data.pairs import load_pairs
    from nbfacelib.eval.pair_sources import locate_pair_file

    p = locate_pair_file(path)
    pairs = load_pairs(p)
    n = len(pairs.issame)
    return EvalSet(
        name or p.stem,
        pairs.as_dataset(input_size),
        None,
        np.arange(0, 2 * n, 2),
        np.arange(1, 2 * n, 2),
        pairs.issame,
        None,
        f"{p.name}: {n} pairs ({pairs.n_same} same)",
    )


def image_folder(
    path: str | os.PathLike,
    n_pairs: int,
    input_size: int = 112,
    pair_seed: int = 0,
    name: str | None = None,
) -> EvalSet:
    """A folder of one sub-folder per identity, read once, with ``n_pairs`` balanced pairs."""
    from nbfacelib.data import open_dataset
    from nbfacelib.data.datasets import resolve_path
    from nbfacelib.data.pairs import sample_pairs

    p = resolve_path(path)
    ds = open_dataset(f"folder:{p}", size=input_size if input_size in (112, 160) else 112)
    images = transforms.resize(torch.stack([ds[i][0] for i in range(len(ds))]), input_size)
    labels = np.asarray(ds.labels)
    i1, i2, same = sample_pairs(labels, n_pairs, seed=pair_seed)
    n_ids = len(set(labels.tolist()))
    return EvalSet(
        name or p.name, images, labels, i1, i2, same, None, f"{p}: {n_ids} identities, {len(same)} pairs"
    )


def protocol(name: str, input_size: int = 112) -> EvalSet:
    """A published verification protocol (:mod:`nbfacelib.data.protocols`) by its manifest
    name, in the publisher's order and folds: each distinct image read once (LFW's 6,000 pairs
    use 7,701 images), padded to a square by the folder size rule at 112 and resized to
    ``input_size`` by the engine's rule. Where the manifest finds a ready ``.bin`` instead of
    the data set's folder, that is read (:func:`pair_bin`). A data set absent from the data
    root raises :class:`~nbfacelib.data.manifest.DatasetNotFoundError` (how to obtain it)."""
    from nbfacelib.data.folder import decode_image, fit_square, to_chw_tensor
    from nbfacelib.data.manifest import load_manifest
    from nbfacelib.data.protocols import read_protocol

    m = load_manifest(name)
    found = m.locate()
    if found.is_file():
        return pair_bin(found, input_size, name=name)
    pairs = read_protocol(m.protocol.get("reader", name), found)
    paths = sorted(set(pairs.first) | set(pairs.second))
    index = {p: i for i, p in enumerate(paths)}
    images = torch.stack([to_chw_tensor(fit_square(decode_image(p), 112)) for p in paths])
    return EvalSet(
        name,
        transforms.resize(images, input_size),
        None,
        np.asarray([index[p] for p in pairs.first]),
        np.asarray([index[p] for p in pairs.second]),
        pairs.issame,
        None,
        f"{m.title or name}: {len(pairs)} pairs over {len(paths)} images, {pairs.nfolds} folds as published",
    )


def open_evalset(spec: str, input_size: int = 112, n_pairs: int = 600, **kw: Any) -> EvalSet:
    """An evaluation set by name: ``orl``; ``synthetic-heldout`` (needs ``identity_offset``, and
    takes ``num_identities``, ``per_identity`` and the other keywords of
    :func:`synthetic_heldout`); a path ending in ``.bin``; a published protocol (``lfw``,
    ``cfp_fp``, ``cfp_ff``, ``cfp_heldout``: :func:`protocol`, its folder or a ready ``.bin``);
    a ``pairs-bin`` manifest name (``agedb_30``); or a folder path."""
    if spec == "orl":
        return orl(n_pairs, input_size, **kw)
    if spec == "synthetic-heldout":
        if "identity_offset" not in kw:
            raise ValueError(
                "open_evalset('synthetic-heldout'): give identity_offset (the number of training ids)"
            )
        kw.setdefault("num_identities", 100)
        kw.setdefault("per_identity", 10)
        return synthetic_heldout(n_pairs=n_pairs, input_size=input_size, **kw)
    if str(spec).endswith(".bin"):
        return pair_bin(spec, input_size)
    from nbfacelib.data.manifest import list_manifests, load_manifest
    from nbfacelib.data.protocols import PROTOCOLS

    if spec in PROTOCOLS:
        return protocol(spec, input_size)
    if spec in list_manifests() and load_manifest(spec).format == "pairs-bin":  # agedb_30, calfw, ...
        return pair_bin(spec, input_size, name=spec)
    from nbfacelib.data.datasets import resolve_path

    if resolve_path(spec).is_dir():
        return image_folder(spec, n_pairs, input_size, **kw)
    raise ValueError(
        f"evaluation set {spec!r}: expected 'orl', 'synthetic-heldout', a .bin file, a protocol or pair-set "
        "manifest name (lfw, cfp_fp, agedb_30, ...) or an image folder "
        f"(looked for {resolve_path(spec)})"
    )


# ----------------------------------------------------------------------------- scoring
def evaluate_embeddings(emb: np.ndarray, evalset: EvalSet) -> tuple[dict[str, float], tuple]:
    """Verification metrics of embeddings ``emb`` (N, D), not necessarily normalised, of
    ``evalset``'s images on its pairs: ``accuracy``, ``accuracy_std`` (over the 10 folds),
    ``auc``, ``eer``, ``threshold``, ``tar@far=<far>`` for each FAR the pair count supports;
    with ground-truth quality also ``acc_q<k>`` for each quality bin (k = 0: lowest), at the
    protocol's threshold. Returns (metrics, (fpr, tpr))."""
    from sklearn.metrics import roc_curve

    from nbfacelib.eval.verification import evaluate

    res = evaluate(emb[evalset.idx1], emb[evalset.idx2], evalset.issame)
    metrics = {k: float(res[k]) for k in ("accuracy", "accuracy_std", "auc", "eer", "threshold")}
    for far, tar in res["tar_at_far"].items():
        metrics[f"tar@far={far:.0e}"] = float(tar)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    d2 = np.square(unit[evalset.idx1] - unit[evalset.idx2]).sum(1)
    if evalset.quality is not None:
        which, _ = quality_bins(pair_quality(evalset.quality, evalset.idx1, evalset.idx2), evalset.bins)
        correct = (d2 < res["threshold"]) == evalset.issame  # the protocol's decision rule
        for k in range(evalset.bins):
            if (which == k).any():
                metrics[f"acc_q{k}"] = float(correct[which == k].mean())
    fpr, tpr, _ = roc_curve(evalset.issame, -d2)
    return metrics, (fpr, tpr)


def evaluate_model(model, evalset: EvalSet, device=None, batch_size: int = 256) -> EvalResult:
    """Embed ``evalset.images`` with flip test-time augmentation (arcface_torch protocol,
    :func:`nbfacelib.eval.embed.embed`) and score its pairs (:func:`evaluate_embeddings`).
    The plain and the flipped images are embedded separately so that the feature norms of
    the plain images come as a by-product (``embed(flip=True)`` is their sum)."""
    from nbfacelib.eval.embed import embed

    kw = {"batch_size": batch_size, "device": device, "progress": False, "normalize": False}
    plain = embed(model, evalset.images, flip=False, **kw)
    images = evalset.images
    flipped = embed(
        model, images.flip(3) if isinstance(images, torch.Tensor) else _Flipped(images), flip=False, **kw
    )
    emb = plain + flipped
    metrics, roc = evaluate_embeddings(emb, evalset)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    return EvalResult(metrics, unit.astype(np.float32), np.linalg.norm(plain, axis=1), roc)


class _Flipped:
    """The images of a tensor or Dataset mirrored left-right (width axis), lazily."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        item = self.images[i]
        if isinstance(item, tuple | list):
            return (item[0].flip(-1), *item[1:])
        return item.flip(-1)


def pixel_baseline(
    evalsets: Mapping[str, EvalSet],
    fit_ids: int = 100,
    per_id: int = 10,
    data_seed: int = 0,
    difficulty: str = "medium",
    components: int = 100,
    style: str = "flat",
) -> dict[str, dict[str, float]]:
    """Eigenfaces (raw-pixel PCA, :mod:`nbfacelib.eval.baseline`) scored on each evaluation
    set's pairs, PCA fitted on ``fit_ids`` x ``per_id`` synthetic training identities (of
    renderer ``style``): what a
    model must beat to have learnt anything beyond pixel similarity. {set name: metrics}."""
    from sklearn.decomposition import PCA

    from nbfacelib.data.synthetic import SyntheticFaces
    from nbfacelib.eval.baseline import pixel_features

    ds = SyntheticFaces(fit_ids, per_id, seed=data_seed, difficulty=difficulty, style=style)
    images, _ = _render(ds, 112)
    feats = np.concatenate([pixel_features(images[s : s + 256]) for s in range(0, len(images), 256)])
    pca = PCA(n_components=min(components, len(ds) - 1), random_state=0).fit(feats)
    out = {}
    for name, es in evalsets.items():
        pix = es.images
        if not isinstance(pix, torch.Tensor):  # a lazily decoded .bin
            pix = torch.stack([_image(pix[i]) for i in range(len(pix))])
        out[name] = evaluate_embeddings(pca.transform(pixel_features(pix)), es)[0]
    return out


def own_eigenfaces(evalset: EvalSet, components: int = 100) -> dict[str, float]:
    """The classic eigenfaces (Turk & Pentland 1991) of an evaluation set: PCA fitted without
    labels on the set's OWN images (:func:`nbfacelib.eval.baseline.pixel_features`, 28x28),
    cosine, scored on its pairs. A stronger reference than :func:`pixel_baseline` (whose PCA
    sees only synthetic faces): it has seen every test face, though never who is who."""
    from sklearn.decomposition import PCA

    from nbfacelib.eval.baseline import pixel_features

    pix = evalset.images
    if not isinstance(pix, torch.Tensor):  # a lazily decoded .bin
        pix = torch.stack([_image(pix[i]) for i in range(len(pix))])
    feats = pixel_features(pix)
    pca = PCA(n_components=min(components, len(feats) - 1), random_state=0).fit(feats)
    return evaluate_embeddings(pca.transform(feats), evalset)[0]


def _image(item):
    return item[0] if isinstance(item, tuple | list) else item
