"""Notebook 02 (FaceNet with a Swin backbone, document 001): the experiments behind claim C5.

- :func:`margin_variants`: the triplet margin sweep (one training config, only alpha changes);
- :func:`mining_variants`: the mining ablation at one margin (random = document 001's official
  rule, semi-hard = FaceNet's, batch-hard = Hermans et al.'s), equal steps;
- :func:`reference_variant`: the same data through an IResNet with ArcFace;
- :func:`training_curve`, :func:`convergence`: what a run logged (loss, fraction of active
  triplets) and the convergence rule the notebook states before its runs;
- :func:`window_layout`: Swin's window partition and shifted-window attention mask read from
  the model's own buffers and timm's own partition function (for the pictures);
- :func:`triplet_distances`: anchor-positive and anchor-negative distances of held-out faces
  under a trained model (for the margin explorer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbfacelib.experiments.grid import Run, Variant
from nbfacelib.train.config import TrainConfig


# ---------------------------------------------------------------------------------- variants
def margin_name(margin: float) -> str:
    return f"alpha={margin:g}"


def margin_variants(
    base: TrainConfig, margins: Sequence[float], mining: str, **triplet: Any
) -> list[Variant]:
    """One triplet run per margin alpha; ``triplet``: the other keywords of the objective."""
    return [
        Variant(
            margin_name(m),
            base.replace(loss="triplet", loss_kwargs={**triplet, "margin": float(m), "mining": mining}),
            labels={"margin": float(m), "mining": mining},
        )
        for m in margins
    ]


def mining_variants(base: TrainConfig, rows: Sequence[str], margin: float, **triplet: Any) -> list[Variant]:
    """One triplet run per mining rule at ``margin`` (equal steps, seeds and data)."""
    return [
        Variant(
            f"mining={rule}",
            base.replace(loss="triplet", loss_kwargs={**triplet, "margin": float(margin), "mining": rule}),
            labels={"margin": float(margin), "mining": rule},
        )
        for rule in rows
    ]


def reference_variant(base: TrainConfig, overrides: Mapping[str, Any]) -> Variant:
    """The reference row: ``base`` with ``overrides`` (e.g. an IResNet with ArcFace, SGD)."""
    label = f"{overrides.get('backbone', base.backbone)} + {overrides.get('loss', base.loss)}"
    return Variant("reference", base.replace(**dict(overrides)), labels={"row": label})


# ---------------------------------------------------------------------------------- curves
def training_curve(run: Run, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a logged scalar from a run's ``metrics.jsonl`` (empty when absent)."""
    steps, values = [], []
    path = Path(run.metrics_path)
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get(key) is not None and "step" in entry:
                steps.append(entry["step"])
                values.append(entry[key])
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def convergence(steps: np.ndarray, loss: np.ndarray, fraction: float) -> dict[str, float]:
    """The convergence numbers of one loss curve: ``first`` and ``last`` logged loss, their
    ``ratio`` (last / first), and ``steps_to`` = the first logged step whose loss is at most
    ``fraction`` x the first logged loss (NaN when it never gets there: not converged)."""
    if len(loss) == 0:
        raise ValueError("convergence: the run logged no loss (log_every larger than steps?)")
    first, last = float(loss[0]), float(loss[-1])
    below = np.flatnonzero(loss <= fraction * first) if first > 0 else np.array([0])
    return {
        "first": first,
        "last": last,
        "ratio": last / first if first > 0 else 0.0,
        "steps_to": float(steps[below[0]]) if len(below) else float("nan"),
        "converged": float(len(below) > 0),
    }


# ---------------------------------------------------------------------------------- Swin pictures
def face_picture(input_size: int, identity: int = 0, seed: int = 0) -> np.ndarray:
    """One synthetic face as the model sees it (rendered at 112 / 160, resized), (H, W, 3) uint8."""
    from nbfacelib.data import transforms
    from nbfacelib.data.synthetic import render

    size = 160 if input_size > 112 else 112
    images, _ = render(torch.tensor([identity]), torch.tensor([0]), seed=seed, size=size)
    return transforms.resize(images, input_size)[0].permute(1, 2, 0).numpy()


def window_layout(model: torch.nn.Module, stage: int = 0, block: int = 1) -> dict[str, Any]:
    """Swin's windows at one block, from the model itself.

    Returns ``grid`` (token grid side), ``window``, ``shift``, ``windows`` (grid x grid: the
    window index of every token, regular partition), ``shifted_windows`` (the same after
    timm's cyclic shift ``torch.roll(-shift)``, mapped back to the tokens' own positions),
    ``regions`` (grid x grid: inside each shifted window, which sub-region a token belongs to,
    read from the block's ``attn_mask`` buffer: tokens i, j of a window may attend each other
    iff mask[i, j] == 0) and ``attn_mask`` (nW, N, N) itself (None for an unshifted block).
    Partitions use timm's own ``window_partition``."""
    from timm.models.swin_transformer import window_partition

    swin = getattr(model, "swin", model)
    blk = swin.layers[stage].blocks[block]
    ws, shift = int(blk.window_size[0]), int(blk.shift_size[0])
    grid = int(blk.input_resolution[0])
    index = torch.arange(grid * grid, dtype=torch.float32).view(1, grid, grid, 1)

    def owner(x: Tensor) -> np.ndarray:
        tokens = window_partition(x, (ws, ws)).reshape(-1, ws * ws).long()  # (nW, N) token ids
        out = np.empty(grid * grid, dtype=int)
        for w, ids in enumerate(tokens.tolist()):
            out[ids] = w
        return out.reshape(grid, grid)

    regular = owner(index)
    rolled = torch.roll(index, shifts=(-shift, -shift), dims=(1, 2)) if shift else index
    shifted = owner(rolled)
    mask = blk.attn_mask
    regions = np.zeros((grid, grid), dtype=int)
    if mask is not None:
        tokens = window_partition(rolled, (ws, ws)).reshape(-1, ws * ws).long()
        m = mask.detach().cpu()
        for w, ids in enumerate(tokens.tolist()):
            # region of token i = the first token it may attend to (mask 0): same label, same region
            first = (m[w] == 0).float().argmax(dim=1).tolist()
            for i, tok in enumerate(ids):
                regions.flat[tok] = w * ws * ws + first[i]
    return {
        "grid": grid,
        "window": ws,
        "shift": shift,
        "patch": int(getattr(model, "patch_size", 4)) * 2**stage,
        "windows": regular,
        "shifted_windows": shifted,
        "regions": regions,
        "attn_mask": None if mask is None else mask.detach().cpu().numpy(),
    }


# ---------------------------------------------------------------------------------- distances
@torch.no_grad()
def triplet_distances(model: torch.nn.Module, images: Tensor, labels: np.ndarray, batch: int = 256):
    """Plain Euclidean distances between the L2-normalised embeddings of ``images`` (normalised
    model input) under ``model``: (anchor-positive distances, anchor-negative distances), every
    ordered pair once."""
    from nbfacelib.models.output import as_output

    model.eval()
    dev = next(model.parameters()).device
    emb = torch.cat(
        [
            as_output(model(images[i : i + batch].to(dev))).embedding.float().cpu()
            for i in range(0, len(images), batch)
        ]
    )
    emb = torch.nn.functional.normalize(emb, dim=1)
    d = torch.cdist(emb, emb).numpy()
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return d[same & off], d[~same]


def active_fraction_at(d_ap: np.ndarray, d_an: np.ndarray, margin: float, pairs: int = 20000, seed: int = 0):
    """Of random (positive, negative) distance pairs, the fraction of triplets that are active
    (d_an - d_ap < margin) and semi-hard (0 < d_an - d_ap < margin) at ``margin``."""
    rng = np.random.default_rng(seed)
    ap = rng.choice(d_ap, pairs)
    an = rng.choice(d_an, pairs)
    gap = an - ap
    return {"active": float((gap < margin).mean()), "semi_hard": float(((gap > 0) & (gap < margin)).mean())}
