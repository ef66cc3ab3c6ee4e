"""TopoFR (Dan et al., "TopoFR: A Closer Look at Topology Alignment on Face Recognition",
NeurIPS 2024): ArcFace plus perturbation-guided topological structure alignment (PTSA = RSP +
ISA) and structure damage estimation (SDE).

    L = 1/B sum_i w_i * L_arc(x~_i, y_i) + alpha * L_sa(X, Z~)

- RSP: ``x~ = A_r(x)`` with probability ``rsp_p`` (:mod:`nbfacelib.augment.rsp`);
- ISA: ``L_sa`` (:func:`nbfacelib.topology.alignment_loss`) between the distance matrix of the
  clean input batch X (flattened images / sqrt(4 C H W)) and that of the latent batch Z~ (the
  embeddings of the perturbed images, before L2 normalisation), through their H0 pairs;
- SDE: with the classifier's softmax g~_i, entropy E_i fitted by the Gaussian-uniform mixture
  (:mod:`nbfacelib.losses.gum`), hard posterior h_i and
  ``w_i = (1 + h_i)^lambda * (1 - g~_i[y_i])`` (detached).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbfacelib.augment.rsp import RandomStructurePerturbation
from nbfacelib.distributed import world_size
from nbfacelib.models.output import BackboneOutput
from nbfacelib.topology import FORMS, alignment_loss, input_distances, pairwise_distances

from . import register_objective
from .gum import GUMFit, fit_gum, fit_gum_official
from .objective import Batch, Objective, ObjectiveOutput

ISA_INPUTS = ("clean", "perturbed")


@dataclass(frozen=True)
class StructureDamage:
    """SDE of one batch: ``weights`` (B,) = ``(1 + hard)^lambda * (1 - p_gt_used)``, the GUM fit
    (``gum.hard`` is h), the entropies and the true-class probabilities (all detached)."""

    weights: Tensor
    gum: GUMFit
    entropy: Tensor
    p_gt: Tensor


@register_objective(name="topofr")
class TopoFR(Objective):
    """TopoFR objective: ArcFace (``s``, ``m``) over a classifier of its own, + alpha * ISA on
    RSP-perturbed inputs, with SDE sample weights (module docstring for the formula).

    Keywords (units): ``alpha`` ISA weight (0.1 for R50-size models, 0.05 for R100/R200 in the
    paper; 0 switches ISA off); ``rsp_p`` probability that an image is perturbed (0.2; 0 off);
    ``sde`` weight the classification loss by SDE (True); ``lam`` the exponent lambda (1);
    ``em_iters`` EM iterations of the GUM per step (10, fixed); ``form`` the alignment loss,
    ``"paper"`` (Eq. 2) or ``"official"``; ``official`` the official SDE quirks (its GUM
    initialisation, sign flips and standardisation, entropy with log(p + 1e-5), and the
    probability stored into an integer tensor, so ``1 - p_gt`` is 1 unless p_gt rounds to
    exactly 1.0); ``isa_input`` ``"clean"`` (the paper: X is the unperturbed batch) or
    ``"perturbed"`` (the official script perturbs the batch in place, so its X is the perturbed
    batch); ``s`` logit scale, ``m`` additive angular margin (radians).

    Rows of the paper's ablation: ArcFace = ``alpha=0, rsp_p=0, sde=False``; +ISA (direct
    alignment) = ``rsp_p=0, sde=False``; +PTSA = ``sde=False``; +PTSA+SDE = defaults.

    The classifier (C, D) is one matrix per process, as in the official code (the FC sits in
    the backbone there): TopoFR runs on one process (no class-sharded Partial FC).
    """

    contract_backbone: ClassVar[str] = "ir_tiny"
    contract_kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        alpha: float = 0.1,
        rsp_p: float = 0.2,
        sde: bool = True,
        lam: float = 1.0,
        em_iters: int = 10,
        form: str = "paper",
        official: bool = False,
        isa_input: str = "clean",
        s: float = 64.0,
        m: float = 0.5,
    ):
        from nbfacelib.losses import build_margin

        super().__init__(embedding_size=embedding_size, num_classes=num_classes)
        if alpha < 0:
            raise ValueError(f"topofr: alpha (ISA weight) must be >= 0, got {alpha}")
        if form not in FORMS:
            raise ValueError(f"topofr: form must be one of {FORMS}, got {form!r}")
        if isa_input not in ISA_INPUTS:
            raise ValueError(f"topofr: isa_input must be one of {ISA_INPUTS}, got {isa_input!r}")
        if em_iters < 1:
            raise ValueError(f"topofr: em_iters must be >= 1, got {em_iters}")
        if world_size() > 1:
            raise ValueError("topofr runs on one process: its classifier is not sharded over ranks")
        self.alpha = float(alpha)
        self.sde = bool(sde)
        self.lam = float(lam)
        self.em_iters = int(em_iters)
        self.form = form
        self.official = bool(official)
        self.isa_input = isa_input
        self.rsp = RandomStructurePerturbation(p=rsp_p)
        self.head = build_margin("arcface", s=s, m=m)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))
        self._isa_images: Tensor | None = None
        self._perturbed: Tensor | None = None

    # -- training --------------------------------------------------------------------------
    def prepare(self, images: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """RSP on the batch (training mode only: an augmentation); remembers which batch ISA
        compares the latent space with."""
        out, op = self.rsp(images) if self.rsp.p > 0 and self.training else (images, None)
        self._isa_images = out if self.isa_input == "perturbed" else images
        self._perturbed = None if op is None else (op >= 0)
        return out

    def logits(self, embedding: Tensor, labels: Tensor) -> Tensor:
        """ArcFace logits ``s * cos(theta + m)`` (target) / ``s * cos(theta)`` (others)."""
        cos = F.linear(F.normalize(embedding.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)
        return self.head.apply_margin(cos, labels)

    @torch.no_grad()
    def damage(self, logits: Tensor, labels: Tensor, official: bool | None = None) -> StructureDamage:
        """SDE weights of a batch from its classifier logits (see the class docstring);
        ``official`` overrides the objective's own switch (None: use it)."""
        p = torch.softmax(logits.detach().float(), dim=1)
        p_gt = p.gather(1, labels.view(-1, 1)).squeeze(1)
        if self.official if official is None else official:
            entropy = -(p * torch.log(p + 1e-5)).sum(dim=1)
            gum = fit_gum_official(entropy, iters=self.em_iters)
            p_used = torch.trunc(p_gt)  # the official int64 buffer keeps only the integer part
        else:
            entropy = torch.special.entr(p).sum(dim=1)
            gum = fit_gum(entropy, iters=self.em_iters)
            p_used = p_gt
        weights = (1.0 + gum.hard) ** self.lam * (1.0 - p_used)
        return StructureDamage(weights=weights, gum=gum, entropy=entropy, p_gt=p_gt)

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        embedding = output.embedding
        labels = labels.view(-1)
        logits = self.logits(embedding, labels)
        ce = F.cross_entropy(logits, labels, reduction="none")
        logs: dict[str, float | Tensor] = {"ce": ce.detach().mean()}
        weights = None
        if self.sde:
            sd = self.damage(logits, labels)
            weights = sd.weights
            loss = (weights * ce).mean()
            logs.update(sde_weight=weights.mean(), gum_hard=sd.gum.hard.mean(), gum_pi=sd.gum.pi.float())
        else:
            loss = ce.mean()
        if self.alpha > 0:
            images = self._isa_images if self._isa_images is not None else batch.images
            dist_z = pairwise_distances(embedding.float())
            isa = alignment_loss(input_distances(images), dist_z, form=self.form)
            loss = loss + self.alpha * isa
            logs["isa"] = isa.detach()
        if self._perturbed is not None:
            logs["rsp_fraction"] = self._perturbed.float().mean()
        self._isa_images = self._perturbed = None
        return ObjectiveOutput(loss=loss, weights=weights, logs=logs)

    # -- state -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Tensor]:
        # the classifier is a parameter, which a skipped step never moves; nothing else persists
        return {k: v.detach().clone() for k, v in self.named_buffers()}

    def restore(self, snap: dict[str, Tensor]) -> None:
        buffers = dict(self.named_buffers())
        with torch.no_grad():
            for k, v in snap.items():
                buffers[k].copy_(v)
