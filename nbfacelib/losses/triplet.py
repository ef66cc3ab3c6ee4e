"""Triplet loss with the FaceNet mining rules (document 001)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nbfacelib.models.output import BackboneOutput

from . import register_objective
from .objective import Batch, Objective, ObjectiveOutput

MINING = ("batch_all", "batch_hard", "semi_hard", "random")


def pairwise_distances(x: Tensor, squared: bool) -> Tensor:
    """(B, B) Euclidean distances (squared if asked) between the rows of ``x``.

    Computed as ||a||^2 + ||b||^2 - 2 a.b (one matmul), clamped at 0 against rounding; the plain
    distance takes sqrt of at least 1e-12 so that the gradient at a zero distance (an image and
    itself, two identical images) is finite instead of inf * 0 = NaN."""
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    return d2 if squared else d2.clamp_min(1e-12).sqrt()


def mine_triplets(
    dist: Tensor, labels: Tensor, margin: float, mining: str, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Which triplets (a, p, n) of the batch enter the loss, and their weight in its mean.

    Returns ``(select, valid)``: bool (B, B, B) masks indexed [a, p, n]; ``valid`` = p != a has
    a's label, n has another label; ``select`` = the triplets the rule keeps:

    - ``batch_all``: every valid triplet (Hermans et al. 2017 "batch all"); the loss averages
      over the *active* ones (d(a,n) - d(a,p) < margin), which is also what document 001's
      code keeps (``neg_dist - pos_dist < alpha``);
    - ``semi_hard``: FaceNet's semi-hard negatives, d(a,p) < d(a,n) < d(a,p) + margin, every
      such triplet;
    - ``batch_hard``: per anchor its farthest positive and nearest negative (Hermans et al.),
      one triplet per anchor that has both;
    - ``random``: per anchor one random positive and one random negative (document 001's
      repository draws random triplets, without mining), then its ``neg - pos < alpha`` filter.
      ``generator`` makes the draw reproducible.

    The masks are computed without gradient (mining is a selection, not part of the loss)."""
    if mining not in MINING:
        raise ValueError(f"triplet mining={mining!r}: expected one of {', '.join(MINING)}")
    with torch.no_grad():
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos = same & ~eye  # [a, p]
        neg = ~same  # [a, n]
        valid = pos[:, :, None] & neg[:, None, :]
        d_ap, d_an = dist[:, :, None], dist[:, None, :]
        gap = d_an - d_ap  # [a, p, n]
        if mining == "batch_all":
            select = valid
        elif mining == "semi_hard":
            select = valid & (gap > 0) & (gap < margin)
        elif mining == "batch_hard":
            hardest_p = torch.where(pos, dist, -torch.inf).argmax(1)
            hardest_n = torch.where(neg, dist, torch.inf).argmin(1)
            select = torch.zeros_like(valid)
            has = pos.any(1) & neg.any(1)
            a = torch.nonzero(has).flatten()
            select[a, hardest_p[a], hardest_n[a]] = True
        else:  # random
            noise = torch.rand(dist.shape, generator=generator, device="cpu").to(dist.device)
            rand_p = torch.where(pos, noise, -1.0).argmax(1)
            noise = torch.rand(dist.shape, generator=generator, device="cpu").to(dist.device)
            rand_n = torch.where(neg, noise, -1.0).argmax(1)
            select = torch.zeros_like(valid)
            has = pos.any(1) & neg.any(1)
            a = torch.nonzero(has).flatten()
            select[a, rand_p[a], rand_n[a]] = True
            select &= gap < margin
    return select, valid


@register_objective(name="triplet")
class Triplet(Objective):
    """Triplet loss (Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", CVPR 2015, Eq. 2-3):

        L = mean over the selected triplets of [ d(a, p) - d(a, n) + alpha ]_+

    on the L2-normalised embeddings f(x) / ||f(x)|| (FaceNet's L2 layer), with d the Euclidean
    distance (document 001, ``squared=False``) or its square (the FaceNet paper,
    ``squared=True``). Which triplets are selected and what the mean divides by is the mining
    rule (:func:`mine_triplets`): ``batch_all`` and ``random`` average over the active triplets
    (loss > 0; document 001's ``sum / max(1, count)``), ``semi_hard`` over its triplets,
    ``batch_hard`` over the anchors (Hermans et al., "In Defense of the Triplet Loss", 2017).

    Hyper-parameters: ``margin`` alpha in distance units (0.2, FaceNet; document 001 uses 0.2
    to 0.4); ``mining``; ``squared``; ``images_per_identity`` K of the identity-balanced P x K
    batches this objective asks the engine's sampler for (FaceNet: ~40 faces per identity per
    mini-batch; Hermans et al.: P=32, K=4).

    A batch with no valid triplet (e.g. every sample already satisfies the margin, or all of
    one identity) gives a loss of 0 that still has a gradient graph (never NaN). A batch with no
    anchor-positive pair at all (one image per identity) is a sampling error and raises.

    Logs: ``active_fraction`` (active / selected triplets), ``active_triplets``,
    ``triplets`` (selected), ``hinge_all`` (the hinge averaged over every valid triplet, the
    same quantity for every rule), ``pos_dist`` / ``neg_dist`` (mean over valid pairs).
    """

    contract_kwargs: ClassVar[dict[str, Any]] = {"images_per_identity": 2}

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        margin: float = 0.2,
        mining: str = "batch_all",
        squared: bool = False,
        images_per_identity: int = 4,
        seed: int = 0,
    ):
        super().__init__(embedding_size=embedding_size, num_classes=num_classes)
        if margin < 0:
            raise ValueError(f"triplet margin={margin}: must be >= 0 (distance units)")
        if mining not in MINING:
            raise ValueError(f"triplet mining={mining!r}: expected one of {', '.join(MINING)}")
        if int(images_per_identity) != images_per_identity or images_per_identity < 2:
            raise ValueError(
                f"triplet images_per_identity={images_per_identity}: must be an int >= 2 "
                f"(each anchor needs a positive in its batch)"
            )
        self.margin = float(margin)
        self.mining = mining
        self.squared = bool(squared)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        x = F.normalize(output.embedding.float(), dim=1)
        same = labels[:, None] == labels[None, :]
        if not (same.sum(1) > 1).any():
            raise ValueError(
                f"triplet loss: the batch of {len(labels)} images has one image per identity, so "
                f"no anchor has a positive; train with the identity-balanced sampler "
                f"(images_per_identity K >= 2, which fit() sets up from this objective)"
            )
        dist = pairwise_distances(x, self.squared)
        # the random rule draws from a stream keyed by (seed, step): reproducible, resumable
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch.step)
        select, valid = mine_triplets(dist, labels, self.margin, self.mining, generator)
        per_triplet = F.relu(dist[:, :, None] - dist[:, None, :] + self.margin)  # [a, p, n]
        active = select & (per_triplet.detach() > 0)
        if self.mining in ("batch_all", "random"):
            weight = active
        else:
            weight = select
        count = weight.sum()
        # masked sum, not indexing: a NaN distance must reach the loss (the engine then skips
        # the step) instead of being dropped by the selection
        loss = torch.where(weight, per_triplet, 0.0).sum() / count.clamp_min(1)
        loss = loss + 0.0 * torch.where(valid, per_triplet, 0.0).sum()  # NaN anywhere -> NaN
        selected = select.sum()
        with torch.no_grad():
            pos_pairs = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            logs: dict[str, float | Tensor] = {
                "active_fraction": active.sum() / selected.clamp_min(1),
                "active_triplets": active.sum().float(),
                "triplets": selected.float(),
                # the hinge averaged over every valid triplet, whatever the mining rule: one
                # curve that compares rules and margins ("does the loss approach 0")
                "hinge_all": torch.where(valid, per_triplet, 0.0).sum() / valid.sum().clamp_min(1),
                "pos_dist": dist[pos_pairs].mean() if pos_pairs.any() else dist.new_zeros(()),
                "neg_dist": dist[~same].mean() if (~same).any() else dist.new_zeros(()),
            }
        return ObjectiveOutput(loss=loss, logs=logs)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, squared={self.squared}, "
            f"images_per_identity={self.images_per_identity}"
        )
