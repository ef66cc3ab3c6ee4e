"""TransFace (Dan et al., ICCV 2023): ArcFace through Partial FC on a face ViT, with DPAP on the
input and EHSM sample weights on the loss.

    L = 1/B sum_i w_i * CE(s, cos(theta_{y_i} + m); x~_i),   w_i = 1 + exp(-gamma * E_i)

- DPAP (:mod:`nbfacelib.augment.dpap`): ``x~`` is the batch with the dominant patches of a
  random ``p`` of its images amplitude-perturbed; the patch weights come from an extra no-grad
  forward of the backbone on the clean batch (in its training mode, as the official loop);
- EHSM: ``E_i = 1/P sum_p e_ip`` over all P patches of image i, from the SE-weighted tokens
  ``T~_ip`` (the backbone's ``features["tokens"]``): the official code's "entropy"
  ``e_ip = std_c(T~_ip)`` (``entropy="std"``), or the paper's Gaussian entropy
  ``e_ip = log(std_c(T~_ip)) + 1/2 + 1/2 log(2 pi)`` (``entropy="gaussian"``, commented out in
  the official code). ``w`` is detached: it weighs samples, it is not trained.

Official optimiser: AdamW, lr 1e-3, weight decay 0.1 (``TrainConfig(optimizer="adamw", ...)``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from nbfacelib.augment.dpap import DominantPatchAmplitudePerturbation
from nbfacelib.models.output import BackboneOutput, as_output

from . import register_objective
from .margin_objective import MarginObjective
from .objective import Batch, ObjectiveOutput

ENTROPIES = ("std", "gaussian")
_GAUSS = 0.5 + 0.5 * math.log(2 * math.pi)


def ehsm_weights(tokens: Tensor, entropy: str = "std", gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """EHSM of SE-weighted tokens (B, P, D): (sample weights w (B,), sample entropies E (B,)),
    both detached (module docstring for the formula)."""
    if entropy not in ENTROPIES:
        raise ValueError(f"EHSM entropy must be one of {ENTROPIES}, got {entropy!r}")
    if tokens.dim() != 3:
        raise ValueError(f"EHSM expects tokens (B, P, D), got shape {tuple(tokens.shape)}")
    with torch.no_grad():
        std = tokens.float().std(dim=2)  # (B, P); unbiased, as torch.std in the official code
        per_patch = std if entropy == "std" else std.log() + _GAUSS
        e = gamma * per_patch.mean(dim=1)
        return 1.0 + torch.exp(-e), e


@register_objective(name="transface")
class TransFace(MarginObjective):
    """TransFace: ArcFace (``s``, ``m``) through Partial FC (``sample_rate``), + DPAP (``dpap``:
    on; ``p`` 0.2, ``k`` 7, ``alpha`` 1, ``official_dpap``: the official uint8 truncation) and
    EHSM (``ehsm``: on; ``entropy`` "std" (official) or "gaussian" (paper); ``gamma`` 1).
    ``dpap=False, ehsm=False`` is the plain ViT + ArcFace baseline of the paper's ablation.

    Needs a backbone that returns patch weights (DPAP) and SE-weighted tokens (EHSM): the face
    ViT (``vit_face_*``). Logs the mean EHSM weight and entropy and the fraction of images DPAP
    perturbed."""

    head: ClassVar[str] = "arcface"
    contract_backbone: ClassVar[str] = "vit_face_tiny"
    contract_kwargs: ClassVar[dict[str, Any]] = {"p": 1.0}  # so DPAP runs in the contract test

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        dpap: bool = True,
        ehsm: bool = True,
        p: float = 0.2,
        k: int = 7,
        alpha: float = 1.0,
        official_dpap: bool = False,
        entropy: str = "std",
        gamma: float = 1.0,
        sample_rate: float = 1.0,
        backbone_ddp: bool | None = None,
        s: float = 64.0,
        m: float = 0.5,
    ):
        super().__init__(
            embedding_size=embedding_size,
            num_classes=num_classes,
            sample_rate=sample_rate,
            backbone_ddp=backbone_ddp,
            s=s,
            m=m,
        )
        if entropy not in ENTROPIES:
            raise ValueError(f"transface: entropy must be one of {ENTROPIES}, got {entropy!r}")
        self.dpap = DominantPatchAmplitudePerturbation(p=p, k=k, alpha=alpha, official=official_dpap)
        self.use_dpap = bool(dpap)
        self.ehsm = bool(ehsm)
        self.entropy = entropy
        self.gamma = float(gamma)
        self._perturbed: Tensor | None = None

    def prepare(self, images: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """DPAP in training mode: an extra forward (the engine runs ``prepare`` under no_grad)
        gives the patch weights of the clean batch."""
        self._perturbed = None
        if not (self.use_dpap and self.training and self.dpap.p > 0):
            return images
        weights = as_output(batch.model(images)).patch_weights
        if weights is None:
            raise ValueError(
                "transface: DPAP needs patch weights, and this backbone returns none "
                "(train a face ViT, vit_face_*, or set dpap=False)"
            )
        out, draws = self.dpap(images, weights)
        self._perturbed = draws.perturb
        return out

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        logs: dict[str, float | Tensor] = {
            "embedding_norm": output.embedding.detach().float().norm(dim=1).mean()
        }
        weights = None
        if self.ehsm:
            tokens = output.features.get("tokens")
            if tokens is None:
                raise ValueError(
                    "transface: EHSM needs the backbone's SE-weighted tokens (features['tokens']); "
                    "train a face ViT, vit_face_*, or set ehsm=False"
                )
            weights, entropy = ehsm_weights(tokens, self.entropy, self.gamma)
            logs.update(ehsm_weight=weights.mean(), ehsm_entropy=entropy.mean())
        loss = self.pfc(output.embedding, labels, sample_weights=weights)
        if self._perturbed is not None:
            logs["dpap_fraction"] = self._perturbed.float().mean()
        self._perturbed = None
        return ObjectiveOutput(loss=loss, weights=weights, logs=logs)
