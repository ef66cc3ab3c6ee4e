"""Notebook 07 (TransFace, document 000; AOFD from survey 002): the experiments behind claims
C1-C4 and C12.

- C1-C3 :func:`ablation_variants`: the paper's ablation rows (ViT + ArcFace, +DPAP, +EHSM,
  +DPAP+EHSM) as variants of ONE training config for the grid runner;
- C12 :func:`occlusion_variants`: ArcFace trained on images carrying an occluder at the
  first-order worst place (``aofd``) or at a random place (``aofd_random``);
- C4 / C12 evaluation: :func:`heldout_with_occluders` renders the held-out identities once
  as they come (the ``synthetic`` pairs) and again with the renderer's sunglasses / hat
  forced on; :func:`occluder_pairs` scores (as-rendered, occluded) pairs from the embeddings
  the grid already computed; :func:`patch_occlusion` occludes each model's own top-K patches
  (or K random ones) of the second image of every pair;
- C4 maps :func:`patch_weight_maps`: a model's SE patch weights over its token grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbfacelib.eval.evalsets import EvalSet, evaluate_embeddings, evaluate_model
from nbfacelib.experiments.grid import Variant
from nbfacelib.train.config import TrainConfig

# The paper's ablation (TransFace, Table 4) as switches of the transface objective.
ABLATION: dict[str, dict[str, Any]] = {
    "baseline": {"dpap": False, "ehsm": False},  # ViT + ArcFace through Partial FC
    "+dpap": {"ehsm": False},
    "+ehsm": {"dpap": False},
    "+dpap+ehsm": {},  # TransFace
}
# Occlusion-aware training (C12): the aofd objective's placements.
OCCLUSION: dict[str, dict[str, Any]] = {
    "aofd": {"placement": "gradient"},
    "aofd_random": {"placement": "random"},
}
MARGIN_KEYS = ("s", "m")  # the ArcFace settings every row shares


# ------------------------------------------------------------------------------- training
def ablation_variants(base: TrainConfig, rows: Sequence[str] | None = None, **common: Any) -> list[Variant]:
    """The ablation rows (:data:`ABLATION`) as grid variants of ``base``: objective
    ``transface`` with ``common`` keywords (s, m, p, k, entropy...) and each row's switches."""
    names = list(ABLATION) if rows is None else list(rows)
    unknown = [n for n in names if n not in ABLATION]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; known: {list(ABLATION)}")
    return [
        Variant(name, base.replace(loss="transface", loss_kwargs={**common, **ABLATION[name]}), {"row": name})
        for name in names
    ]


def occlusion_variants(
    base: TrainConfig, rows: Sequence[str], margin: Mapping[str, Any], **common: Any
) -> list[Variant]:
    """The occlusion-aware rows (:data:`OCCLUSION`) as grid variants of ``base``: objective
    ``aofd`` with the ablation's ArcFace ``margin`` (s, m), so that the ``baseline`` row is the
    same training without occluders; ``common``: p, size, fill."""
    unknown = [n for n in rows if n not in OCCLUSION]
    if unknown:
        raise ValueError(f"unknown occlusion rows {unknown}; known: {list(OCCLUSION)}")
    margin = {k: v for k, v in margin.items() if k in MARGIN_KEYS}
    return [
        Variant(
            name,
            base.replace(loss="aofd", loss_kwargs={**margin, **common, **OCCLUSION[name]}),
            {"row": name},
        )
        for name in rows
    ]


# ----------------------------------------------------------------------------- evaluation
@dataclass
class OccludedHeldout:
    """The held-out synthetic identities as rendered (images ``[0, n)``), then once more per
    occluder kind with that occluder forced on (images ``[(j + 1) n, (j + 2) n)`` for
    ``kinds[j]``), in ONE :class:`EvalSet` whose pairs are the as-rendered ones: the grid embeds
    every image once. :func:`occluder_pairs` scores the occluded pairs from those embeddings."""

    evalset: EvalSet
    n: int
    kinds: tuple[str, ...]

    def pairs(self, kind: str) -> EvalSet:
        """The same pairs with the second image replaced by its ``kind``-occluded rendering."""
        j = self.kinds.index(kind)
        es = self.evalset
        return replace(
            es,
            name=kind,
            idx2=es.idx2 + (j + 1) * self.n,
            quality=None,
            description=f"{es.description}; second image with {kind} forced on",
        )


def heldout_with_occluders(
    num_identities: int,
    per_identity: int,
    n_pairs: int,
    identity_offset: int,
    input_size: int,
    kinds: Sequence[str] = ("sunglasses", "hat"),
    difficulty: str = "medium",
    data_seed: int = 0,
    pair_seed: int = 0,
) -> OccludedHeldout:
    """:func:`~nbfacelib.eval.evalsets.synthetic_heldout`'s identities, images and pairs, plus
    each image rendered again with occluder ``kind`` forced on (the renderer's ``occluder``
    nuisance, :data:`~nbfacelib.data.synthetic.nuisances.OCCLUDERS`); every other nuisance is
    the image's own."""
    from nbfacelib.data import transforms
    from nbfacelib.data.synthetic.nuisances import OCCLUDERS
    from nbfacelib.eval.evalsets import synthetic_heldout

    bad = [k for k in kinds if k not in OCCLUDERS or k == "none"]
    if bad:
        raise ValueError(f"occluder kinds {bad} unknown; the renderer has {OCCLUDERS[1:]}")
    base = synthetic_heldout(
        num_identities,
        per_identity,
        n_pairs,
        identity_offset,
        input_size=input_size,
        data_seed=data_seed,
        difficulty=difficulty,
        pair_seed=pair_seed,
    )
    from nbfacelib.data.synthetic import SyntheticFaces

    offset = int(identity_offset) + int(identity_offset) % 2  # as synthetic_heldout
    ds = SyntheticFaces(
        num_identities, per_identity, seed=data_seed, difficulty=difficulty, identity_offset=offset
    )
    labels = torch.as_tensor(ds.labels)
    samples = torch.arange(len(labels)) % ds.per_identity
    images, quality = [base.images], [base.quality]
    for kind in kinds:
        img, nuisances = ds.render_batch(
            labels, samples, overrides={"occluder": float(OCCLUDERS.index(kind))}
        )
        images.append(transforms.resize(img, input_size))
        quality.append(nuisances["quality"].double().numpy())
    n = len(base.images)
    es = replace(
        base,
        images=torch.cat(images),
        labels=np.concatenate([base.labels] * (1 + len(kinds))),
        quality=np.concatenate(quality),
    )
    return OccludedHeldout(es, n, tuple(kinds))


def occluder_pairs(embeddings: np.ndarray, held: OccludedHeldout) -> dict[str, dict[str, float]]:
    """{kind: verification metrics} of the (as-rendered, occluded) pairs, from the embeddings
    of all of ``held``'s images (a :class:`~nbfacelib.eval.evalsets.EvalResult`'s)."""
    return {kind: evaluate_embeddings(embeddings, held.pairs(kind))[0] for kind in held.kinds}


@torch.no_grad()
def patch_weights(model: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N, P) SE patch weights of uint8 ``images`` (N, 3, S, S) under ``model`` (eval mode)."""
    from nbfacelib.data import transforms
    from nbfacelib.models.output import as_output

    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = transforms.normalize(images[i : i + batch_size]).to(dev)
        w = as_output(model(x)).patch_weights
        if w is None:
            raise ValueError("patch_weights: this backbone returns no patch weights (a face ViT does)")
        out.append(w.float().cpu())
    return torch.cat(out)


def patch_weight_maps(model: torch.nn.Module, images: Tensor) -> np.ndarray:
    """(N, rows, cols) patch weights of ``images`` on the model's token grid, times P (so 1 is
    the uniform weight)."""
    w = patch_weights(model, images)
    rows, cols = model.grid_size
    return (w * w.shape[1]).reshape(-1, rows, cols).numpy()


def occlude_cells(images: Tensor, cells: Tensor, patch_size: int, grid_cols: int, fill: int = 128) -> Tensor:
    """uint8 ``images`` with the token-grid ``cells`` (N, K) of each image set to ``fill``."""
    out = images.clone()
    for j in range(cells.shape[1]):  # K (a handful) slices, each over the whole batch
        r, c = cells[:, j] // grid_cols * patch_size, cells[:, j] % grid_cols * patch_size
        rows = r[:, None] + torch.arange(patch_size)
        cols = c[:, None] + torch.arange(patch_size)
        n = torch.arange(len(images))[:, None, None, None]
        ch = torch.arange(images.shape[1])[None, :, None, None]
        out[n, ch, rows[:, None, :, None], cols[:, None, None, :]] = fill
    return out


def patch_occlusion(
    model: torch.nn.Module, evalset: EvalSet, k: int, seed: int = 0, n_images: int | None = None
) -> dict[str, dict[str, float]]:
    """Verification metrics of ``evalset``'s pairs with the second image's ``k`` patches set to
    mid-grey: ``"top-k"`` the model's own ``k`` highest-weighted patches of that image,
    ``"random-k"`` ``k`` random ones (seeded). ``n_images``: only the first that many images
    take part (the as-rendered part of :class:`OccludedHeldout`'s set)."""
    n = len(evalset.images) if n_images is None else int(n_images)
    images = evalset.images[:n]
    weights = patch_weights(model, images)
    p = weights.shape[1]
    if k > p:
        raise ValueError(f"patch_occlusion: k={k} is larger than the number of patches ({p})")
    g = torch.Generator().manual_seed(seed)
    chosen = {
        "top-k": weights.topk(k, dim=1).indices,
        "random-k": torch.rand(n, p, generator=g).argsort(dim=1)[:, :k],
    }
    out = {}
    for name, cells in chosen.items():
        occluded = occlude_cells(images, cells, model.patch_size, model.grid_size[1])
        es = replace(
            evalset,
            name=name,
            images=torch.cat([images, occluded]),
            labels=None,
            idx1=evalset.idx1,
            idx2=evalset.idx2 + n,
            quality=None,
        )
        out[name] = evaluate_model(model, es).metrics
    return out


def occlusion_rows(
    result, held: OccludedHeldout, evalset_name: str, k: int, topk_variants: Sequence[str]
) -> list[dict]:
    """One row per run x occlusion of a grid result: accuracy on the as-rendered pairs
    (``none``), on the (as-rendered, occluded) pairs of each occluder kind, and, for the
    ``topk_variants`` (face ViTs), with the model's own top-``k`` / ``k`` random patches
    occluded. Needs the grid's embeddings of every run (``keep_seeds`` = all seeds)."""
    from nbfacelib.train import load_backbone

    rows = []
    for run in result.runs:
        res = result.evaluations.get((run.variant, run.seed, evalset_name))
        if res is None:
            raise ValueError(
                f"no embeddings kept for {run.variant} seed {run.seed}: run_grid(keep_seeds=...)"
            )
        base = {"variant": run.variant, "seed": run.seed}
        rows.append({**base, "occlusion": "none", "accuracy": res.metrics["accuracy"]})
        for kind, m in occluder_pairs(res.embeddings, held).items():
            rows.append({**base, "occlusion": kind, "accuracy": m["accuracy"]})
        if run.variant in topk_variants:
            model = load_backbone(run.out)
            for kind, m in patch_occlusion(model, held.evalset, k, seed=run.seed, n_images=held.n).items():
                rows.append({**base, "occlusion": kind, "accuracy": m["accuracy"]})
    return rows


def by_seed(rows: Sequence[Mapping[str, Any]], key: str, **match: Any) -> dict[int, float]:
    """{seed: mean of ``key``} over the rows matching ``match`` (a list value matches any)."""
    acc: dict[int, list[float]] = {}
    for r in rows:
        if all(r.get(k) in v if isinstance(v, list | tuple) else r.get(k) == v for k, v in match.items()):
            acc.setdefault(int(r["seed"]), []).append(float(r[key]))
    return {s: float(np.mean(v)) for s, v in acc.items()}


def drop(rows: Sequence[Mapping[str, Any]], variant: str, occlusions: Sequence[str]) -> dict[int, float]:
    """{seed: accuracy on the as-rendered pairs minus the mean accuracy under ``occlusions``}."""
    clean = by_seed(rows, "accuracy", variant=variant, occlusion="none")
    hit = by_seed(rows, "accuracy", variant=variant, occlusion=list(occlusions))
    return {s: clean[s] - hit[s] for s in clean if s in hit}


@torch.no_grad()
def dpap_examples(model: torch.nn.Module, images: Tensor, p: float = 1.0, k: int = 7, seed: int = 0) -> dict:
    """For the explorer: uint8 ``images``, their patch-weight maps under ``model`` and their
    DPAP-perturbed versions (every image perturbed when ``p`` = 1), all uint8 / numpy."""
    from nbfacelib.augment.dpap import DominantPatchAmplitudePerturbation
    from nbfacelib.data import transforms

    weights = patch_weights(model, images)
    dpap = DominantPatchAmplitudePerturbation(p=p, k=k)
    perturbed, _ = dpap(transforms.normalize(images), weights, generator=torch.Generator().manual_seed(seed))
    rows, cols = model.grid_size
    return {
        "images": images.numpy(),
        "perturbed": transforms.denormalize(perturbed).numpy(),
        "maps": (weights * weights.shape[1]).reshape(-1, rows, cols).numpy(),
        "patch_size": model.patch_size,
        "top": weights.topk(k, dim=1).indices.numpy(),
    }
