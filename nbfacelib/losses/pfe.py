"""Probabilistic Face Embeddings (Shi and Jain, ICCV 2019): the mutual likelihood score, the
MLS loss (objective ``pfe_mls``) and template fusion.

Each image is a Gaussian ``N(mu, diag(sigma^2))``: ``mu`` the L2-normalised embedding of a
frozen backbone, ``sigma^2`` from :class:`~nbfacelib.models.pfe_head.PFEHead` (the backbone
``pfe`` returns both in a :class:`~nbfacelib.models.output.BackboneOutput`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nbfacelib.models.output import BackboneOutput

from .objective import Batch, Objective, ObjectiveOutput

__all__ = ["PFEMLS", "fuse", "mls_distance", "mutual_likelihood_score"]


def mls_distance(mu1: Tensor, mu2: Tensor, sigma2_1: Tensor, sigma2_2: Tensor) -> Tensor:
    """The negative MLS without its constants, what the official loss averages:
    ``sum_d (mu1_d - mu2_d)^2 / (s1_d + s2_d) + log(s1_d + s2_d)`` over the last dimension.
    ``sigma2_*`` broadcast against ``mu`` ((B, D) or (B, 1))."""
    fused = sigma2_1 + sigma2_2
    return ((mu1 - mu2).square() / fused + fused.log()).sum(-1)


def mutual_likelihood_score(mu1: Tensor, mu2: Tensor, sigma2_1: Tensor, sigma2_2: Tensor) -> Tensor:
    """PFE Eq. 3, the log-likelihood that two images share one latent face:
    ``s = -1/2 sum_d [(mu1 - mu2)^2 / (s1 + s2) + log(s1 + s2)] - D/2 log(2 pi)``
    (higher = more alike; ``mu`` L2-normalised by the caller, ``s = sigma^2``). The verification
    score of PFE, given to :func:`nbfacelib.eval.verification.evaluate_scores`."""
    d = mu1.shape[-1]
    return -0.5 * mls_distance(mu1, mu2, sigma2_1, sigma2_2) - 0.5 * d * math.log(2 * math.pi)


def fuse(mu: Tensor, sigma2: Tensor, variance: str = "paper") -> tuple[Tensor, Tensor]:
    """Fuse the n images of one template (``mu`` (n, D), ``sigma2`` (n, D) or (n, 1)) into one
    Gaussian (PFE Sec. 3.4): the mean is the precision-weighted average
    ``sum_i mu_i / s_i / sum_i 1 / s_i`` per dimension, L2-normalised; the variance is

    - ``variance="paper"``: the posterior's ``1 / sum_i 1 / s_i`` (Eq. 8);
    - ``variance="official"``: the per-dimension minimum ``min_i s_i`` (the released code's
      ``aggregate_PFE``).
    """
    if (
        mu.dim() != 2
        or sigma2.dim() != 2
        or sigma2.shape[0] != mu.shape[0]
        or sigma2.shape[1] not in (1, mu.shape[1])
    ):
        raise ValueError(
            f"fuse: mu (n, D) and sigma2 (n, D) or (n, 1), got {tuple(mu.shape)}, {tuple(sigma2.shape)}"
        )
    if variance not in ("paper", "official"):
        raise ValueError(f"fuse: variance must be 'paper' or 'official', got {variance!r}")
    precision = 1.0 / sigma2
    mean = (mu * precision).sum(0) / precision.sum(0)
    var = 1.0 / precision.sum(0) if variance == "paper" else sigma2.min(0).values
    return F.normalize(mean, dim=0), var.expand(mu.shape[1]).clone()


class PFEMLS(Objective):
    """PFE's MLS loss (Shi and Jain, ICCV 2019, Eq. 5) on the genuine pairs of a batch:

        ``L = mean_{(i, j): y_i = y_j, i != j} sum_d (mu_i - mu_j)^2 / (s_i + s_j) + log(s_i + s_j)``

    with ``mu = normalize(embedding)`` (the frozen backbone's) and ``s = exp(log_sigma2)`` (the
    PFE head's; the backbone must return a ``BackboneOutput`` with ``log_sigma2``: the ``pfe``
    backbone). Train with batches of identities x K images (``TrainConfig.images_per_identity``,
    the paper: 64 identities x 4); a batch without a genuine pair gives a zero loss (still
    attached to the graph). No parameters of its own: the head is part of the backbone.

    Logs ``mls_pairs`` (genuine pairs in the batch) and ``sigma2_hmean`` (mean over the batch of
    each image's harmonic mean of sigma^2 over dimensions: the uncertainty notebook 05 reads)."""

    contract_backbone: ClassVar[str] = "pfe"

    def __init__(self, *, embedding_size: int, num_classes: int):
        super().__init__(embedding_size=embedding_size, num_classes=num_classes)

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        if output.log_sigma2 is None:
            raise ValueError(
                "objective pfe_mls needs the backbone's log_sigma2 (a BackboneOutput from the 'pfe' "
                "backbone, e.g. backbone='pfe', backbone_kwargs={'base_run': ...})"
            )
        mu = F.normalize(output.embedding.float(), dim=1)
        sigma2 = output.log_sigma2.float().exp()
        same = labels[:, None] == labels[None, :]
        i, j = torch.triu_indices(len(labels), len(labels), 1, device=labels.device)
        keep = same[i, j]
        i, j = i[keep], j[keep]
        per_pair = mls_distance(mu[i], mu[j], sigma2[i], sigma2[j])
        loss = per_pair.mean() if len(i) else sigma2.sum() * 0.0
        with torch.no_grad():
            hmean = sigma2.shape[1] / (1.0 / sigma2).sum(1)
        logs = {"mls_pairs": float(len(i)), "sigma2_hmean": hmean.mean()}
        return ObjectiveOutput(loss=loss, logs=logs)
