"""Notebook 08 (TopoFR, document 004): the experiments behind claims C16-C21.

- C16 :func:`input_topology`: Rips persistence (H0..H2, gudhi) of synthetic face batches of n
  images, at one fixed scale, vs n;
- C17 / C18 :func:`discrepancy_by_batch_size`, :func:`discrepancy_rows`: the input/latent
  structure discrepancy of a trained model, vs batch size and vs backbone depth;
- C19, C21 :func:`ablation_variants`: the paper's ablation rows (ArcFace, +ISA = direct PH
  alignment, +PTSA, +PTSA+SDE = TopoFR) as variants of ONE training config for the grid runner
  (:func:`nbfacelib.experiments.grid.run_grid`); :func:`training_curve` reads the ISA loss a run
  logged, :func:`discrepancy_rows` measures it on training and held-out images afterwards;
- C20 :func:`hard_posterior`: the GUM hard-sample posterior of a trained TopoFR model's
  training samples, correct vs misclassified, and the AUC of the posterior as a detector.

"Discrepancy" here is scale-free, so that models, depths and batch sizes compare: the
bottleneck distance (persim) between the H0 diagrams of the input batch and of its embeddings,
each distance matrix divided by its mean pairwise distance (:func:`discrepancy`). The ISA loss
(:func:`isa_loss`) is the quantity TopoFR trains on and is reported beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbfacelib.experiments.grid import Run, Variant
from nbfacelib.topology import (
    alignment_loss,
    diagram_distance,
    h0_pairs,
    input_distances,
    pairwise_distances,
    rips_diagrams,
)
from nbfacelib.train.config import TrainConfig

# The paper's ablation table (TopoFR, Table 5) as switches of the topofr objective.
ABLATION: dict[str, dict[str, Any]] = {
    "arcface": {"alpha": 0.0, "rsp_p": 0.0, "sde": False},
    "+isa": {"rsp_p": 0.0, "sde": False},  # direct PH alignment: clean inputs, no RSP
    "+ptsa": {"sde": False},
    "+ptsa+sde": {},  # TopoFR
}


# ------------------------------------------------------------------------------------ data
def face_batch(
    n: int,
    input_size: int = 64,
    per_id: int = 4,
    seed: int = 0,
    difficulty: str = "medium",
    identity_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """``n`` synthetic faces (identities ``offset + i // per_id``), rendered at 112 and resized to
    ``input_size`` as training does; returns (float images in [-1, 1], identity labels)."""
    from nbfacelib.data import transforms
    from nbfacelib.data.synthetic import render

    ids = torch.arange(n) // per_id + identity_offset
    samples = torch.arange(n) % per_id
    images, _ = render(ids, samples, seed=seed, size=112, difficulty=difficulty)
    return transforms.normalize(transforms.resize(images, input_size)), ids


# ------------------------------------------------------------------------------------- C16
def input_topology(
    ns: Sequence[int], input_size: int = 64, max_dim: int = 2, scale_quantile: float = 0.1, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[int, list[np.ndarray]], float]:
    """Rips diagrams H0..H_max_dim of the first n faces of one synthetic stream for each n.

    The filtration stops at ONE scale r for every n: the ``scale_quantile`` of the pairwise
    distances of the smallest batch (a full Rips complex up to H2 of hundreds of images in
    ~12k dimensions does not fit in memory). Features alive at r count with lifetime r - birth.
    Returns (rows {n, dim, count, total_persistence, max_persistence}, {n: diagrams}, r).
    """
    ns = sorted(int(n) for n in ns)
    images, _ = face_batch(ns[-1], input_size, seed=seed)
    dist = input_distances(images).double()
    first = dist[: ns[0], : ns[0]]
    r = float(torch.quantile(first[torch.triu_indices(ns[0], ns[0], 1).unbind()], scale_quantile))
    rows, diagrams = [], {}
    for n in ns:
        dg = rips_diagrams(dist[:n, :n], max_dim=max_dim, max_edge=r)
        diagrams[n] = dg
        for k, d in enumerate(dg):
            life = np.minimum(d[:, 1], r) - d[:, 0] if len(d) else np.zeros(0)
            if k == 0:
                life = life[np.isfinite(d[:, 1])] if len(d) else life  # the class that never dies
            rows.append(
                {
                    "n": n,
                    "dim": k,
                    "count": int(len(life)),
                    "total_persistence": float(life.sum()),
                    "max_persistence": float(life.max()) if len(life) else 0.0,
                }
            )
    return rows, diagrams, r


# ------------------------------------------------------------------------------ discrepancy
def h0_diagram(dist: Tensor) -> np.ndarray:
    """Finite H0 diagram (birth 0, death) of a distance matrix, from :func:`h0_pairs`."""
    return h0_pairs(dist).diagram()


def discrepancy(images: Tensor, embeddings: Tensor) -> float:
    """Bottleneck distance between the H0 diagrams of the input batch and of its embeddings,
    each distance matrix divided by its mean pairwise distance (scale-free)."""
    dx = input_distances(images).double()
    dz = pairwise_distances(embeddings.detach().double())
    n = dx.shape[0]
    off = n * (n - 1)
    dx, dz = dx / (dx.sum() / off), dz / (dz.sum() / off)
    return diagram_distance(h0_diagram(dx), h0_diagram(dz), "bottleneck")


def isa_loss(images: Tensor, embeddings: Tensor, form: str = "paper") -> float:
    """TopoFR's ISA loss (what it trains) between an input batch and its embeddings."""
    with torch.no_grad():
        return float(
            alignment_loss(input_distances(images), pairwise_distances(embeddings.float()), form=form)
        )


@torch.no_grad()
def embed(model: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Embeddings (before L2 normalisation) of ``images`` by ``model`` in eval mode, on the CPU."""
    from nbfacelib.models.output import as_output

    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        out.append(as_output(model(images[i : i + batch_size].to(dev))).embedding.float().cpu())
    return torch.cat(out)


def discrepancy_by_batch_size(
    images: Tensor, embeddings: Tensor, batch_sizes: Sequence[int], n_batches: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Discrepancy and ISA loss of ``n_batches`` random batches (without replacement within a
    batch) of each size, drawn from one pool of images and their embeddings."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in batch_sizes:
        if b > len(images):
            raise ValueError(f"batch size {b} is larger than the pool of {len(images)} images")
        for k in range(n_batches):
            idx = torch.randperm(len(images), generator=g)[:b]
            rows.append(
                {
                    "batch_size": int(b),
                    "batch": k,
                    "discrepancy": discrepancy(images[idx], embeddings[idx]),
                    "isa": isa_loss(images[idx], embeddings[idx]),
                }
            )
    return rows


def discrepancy_rows(
    model: torch.nn.Module, images: Tensor, batch_size: int, n_batches: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Discrepancy / ISA loss of ``n_batches`` random batches of ``images`` under ``model``."""
    return discrepancy_by_batch_size(images, embed(model, images), [batch_size], n_batches, seed)


# --------------------------------------------------------------------------------- training
def ablation_variants(base: TrainConfig, rows: Sequence[str] | None = None, **common: Any) -> list[Variant]:
    """The ablation rows (:data:`ABLATION`) as grid variants of ``base``: loss ``topofr`` with
    ``common`` keywords (alpha, form, official, s, m...) and each row's switches."""
    names = list(ABLATION) if rows is None else list(rows)
    unknown = [n for n in names if n not in ABLATION]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; known: {list(ABLATION)}")
    return [
        Variant(name, base.replace(loss="topofr", loss_kwargs={**common, **ABLATION[name]}), {"row": name})
        for name in names
    ]


def depth_variants(base: TrainConfig, depths: Sequence[Sequence[int]], width: float = 0.25) -> list[Variant]:
    """ArcFace (the ``arcface`` ablation row) on IResNets of the given block counts per stage."""
    out = []
    for layers in depths:
        layers = [int(n) for n in layers]
        cfg = base.replace(
            backbone="iresnet",
            backbone_kwargs={"layers": layers, "width": width},
            loss="topofr",
            loss_kwargs={**base.loss_kwargs, **ABLATION["arcface"]},
        )
        out.append(Variant(f"blocks={sum(layers)}", cfg, {"blocks": sum(layers), "layers": str(layers)}))
    return out


def training_curve(run: Run, key: str = "isa") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a logged scalar from a run's ``metrics.jsonl`` (empty when absent)."""
    steps, values = [], []
    path = Path(run.metrics_path)
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if key in entry and entry[key] is not None and "step" in entry:
                steps.append(entry["step"])
                values.append(entry[key])
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def training_images(run: Run, n: int, input_size: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` training images of a run's data set (resized as the run saw them) and
    their labels, evenly spread over the set."""
    from nbfacelib.data import open_dataset, transforms

    ds = open_dataset(run.config.data, size=112)
    pick = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    items = [ds[int(i)] for i in pick]
    images = transforms.resize(torch.stack([im for im, _ in items]), input_size)
    return transforms.normalize(images), torch.tensor([int(lb) for _, lb in items])


def load_objective(run: Run):
    """The trained objective of a run (TopoFR's classifier), from its ``last.ckpt``."""
    from nbfacelib.losses import build_objective
    from nbfacelib.train import checkpoint

    cfg = run.config
    state = checkpoint.load(Path(run.out) / "last.ckpt")
    obj = build_objective(
        cfg.loss, embedding_size=cfg.embedding_size, num_classes=_num_classes(run), **cfg.loss_kwargs
    )
    obj.load_full_state_dict(state["objective"])
    return obj.eval()


def _num_classes(run: Run) -> int:
    if "num_classes" in (run.summary or {}):  # fit() reports it
        return int(run.summary["num_classes"])
    from nbfacelib.data import open_dataset

    return int(max(open_dataset(run.config.data, size=112).labels)) + 1


# ------------------------------------------------------------------------------------- C20
@torch.no_grad()
def hard_posterior(
    model: torch.nn.Module, objective, images: Tensor, labels: Tensor, batch_size: int
) -> dict:
    """SDE on training batches of ``batch_size``: per sample the GUM hard posterior h, the
    paper's and the official weights, and whether the classifier misclassifies it (arg max of
    the cosine logits != label). ``auc``: ROC AUC of h as a detector of misclassification."""
    from sklearn.metrics import roc_auc_score

    emb = embed(model, images)
    h, w_paper, w_official, wrong = [], [], [], []
    centres = torch.nn.functional.normalize(objective.weight.detach().float())
    for i in range(0, len(images) - batch_size + 1, batch_size):
        e, y = emb[i : i + batch_size], labels[i : i + batch_size]
        logits = objective.logits(e, y)
        sd = objective.damage(logits, y, official=False)
        h.append(sd.gum.hard)
        w_paper.append(sd.weights)
        w_official.append(objective.damage(logits, y, official=True).weights)
        wrong.append((torch.nn.functional.normalize(e) @ centres.T).argmax(1) != y)
    h_all, wrong_all = torch.cat(h).numpy(), torch.cat(wrong).numpy()
    both = 0 < wrong_all.sum() < len(wrong_all)
    return {
        "hard": h_all,
        "misclassified": wrong_all,
        "weights_paper": torch.cat(w_paper).numpy(),
        "weights_official": torch.cat(w_official).numpy(),
        "auc": float(roc_auc_score(wrong_all, h_all)) if both else math.nan,
        "error_rate": float(wrong_all.mean()),
    }


def by_seed(rows: Sequence[Mapping[str, Any]], key: str, **match: Any) -> dict[int, float]:
    """{seed: mean of ``key``} over the rows matching ``match``."""
    acc: dict[int, list[float]] = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            acc.setdefault(int(r["seed"]), []).append(float(r[key]))
    return {s: float(np.mean(v)) for s, v in acc.items()}
