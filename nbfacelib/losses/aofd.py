"""Occlusion-aware training in the spirit of AOFD (Chen et al., "Adversarial Occlusion-aware
Face Detection", 2018; survey 002): the training images carry an occluder placed where it hurts
recognition most, and the backbone learns on them.

AOFD trains a mask generator adversarially against the detector. Here the adversary is the
first-order one, with no generator to train: for image x with recognition loss L(x) (ArcFace
through the same Partial FC classifier the backbone trains against), filling a window R with
the occluder value f changes the loss by about

    dL(R) ~= sum_{(c, u, v) in R} dL/dx_cuv * (f - x_cuv)

(a first-order Taylor step), so the occluder goes where ``dL(R)`` is largest over every
position of a square window of side ``size`` x the image side (stride: a quarter of the side of
the window). With probability ``p`` per image the window is filled with ``f`` (0: mid-grey in
the normalised input, as random erasing's "const" mode). ``placement="random"`` puts the same
window at a uniformly random position: the control that separates "occluded training" from
"adversarially occluded training".

The gradient needs one extra forward and backward of the backbone per step (``prepare``), with
respect to the input only: no parameter gradient is accumulated.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nbfacelib.models.output import BackboneOutput, as_output

from . import register_objective
from .margin_objective import MarginObjective
from .objective import Batch, ObjectiveOutput

PLACEMENTS = ("gradient", "random")


def occluder_windows(
    images: Tensor, grad: Tensor, size: int, stride: int, fill: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Top-left corners (B, 2) of the ``size`` x ``size`` window with the largest first-order
    loss increase ``sum grad * (fill - x)`` (module docstring), over positions every ``stride``
    pixels; and that increase (B,)."""
    gain = (grad * (fill - images)).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    pooled = F.avg_pool2d(gain, size, stride=stride) * (size * size)  # window sums
    b, _, rows, cols = pooled.shape
    best = pooled.flatten(1).argmax(dim=1)
    corners = torch.stack([best // cols, best % cols], dim=1) * stride
    return corners, pooled.flatten(1).amax(dim=1)


def fill_windows(images: Tensor, corners: Tensor, size: int, chosen: Tensor, fill: float = 0.0) -> Tensor:
    """``images`` with the ``size`` window at ``corners`` (B, 2) set to ``fill`` where ``chosen``."""
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    top, left = corners[:, 0, None], corners[:, 1, None]
    in_rows = (rows >= top) & (rows < top + size)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size)  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
    return images.masked_fill(mask[:, None], fill)


@register_objective(name="aofd")
class AdversarialOcclusion(MarginObjective):
    """ArcFace (``s``, ``m``) through Partial FC (``sample_rate``) on images occluded, with
    probability ``p`` (0.5), by a square window of side ``size`` (0.3) x the image side placed
    by ``placement``: "gradient" (the first-order worst position, module docstring) or "random".
    ``fill``: the occluder's value in the normalised input (0 = mid-grey). Works with any
    backbone. Logs the fraction of occluded images and the predicted loss increase."""

    head: ClassVar[str] = "arcface"
    contract_kwargs: ClassVar[dict[str, Any]] = {"p": 1.0}

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        p: float = 0.5,
        size: float = 0.3,
        placement: str = "gradient",
        fill: float = 0.0,
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
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"aofd: occlusion probability p must be in [0, 1], got {p}")
        if not 0.0 < size <= 1.0:
            raise ValueError(f"aofd: size (window side / image side) must be in (0, 1], got {size}")
        if placement not in PLACEMENTS:
            raise ValueError(f"aofd: placement must be one of {PLACEMENTS}, got {placement!r}")
        self.p, self.size, self.placement, self.fill = float(p), float(size), placement, float(fill)
        self._logs: dict[str, Tensor] = {}

    def window(self, images: Tensor) -> tuple[int, int]:
        """(side, stride) of the occluder window in pixels for ``images``."""
        side = max(1, round(self.size * min(images.shape[-2:])))
        return side, max(1, side // 4)

    def prepare(self, images: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        self._logs = {}
        if not (self.training and self.p > 0):
            return images
        side, stride = self.window(images)
        b = images.shape[0]
        chosen = torch.rand(b, device=images.device) < self.p
        if self.placement == "random":
            h, w = images.shape[-2:]
            corners = torch.stack(
                [
                    torch.randint(h - side + 1, (b,), device=images.device),
                    torch.randint(w - side + 1, (b,), device=images.device),
                ],
                dim=1,
            )
        else:
            # the plain backbone (a DDP wrapper would expect its own backward after this forward)
            model = getattr(batch.model, "module", batch.model)
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)
                loss = self.pfc(as_output(model(x)).embedding, labels)
                (grad,) = torch.autograd.grad(loss, x)
            corners, gain = occluder_windows(images, grad, side, stride, self.fill)
            self._logs["aofd_gain"] = gain.mean().detach()
        self._logs["aofd_fraction"] = chosen.float().mean()
        return fill_windows(images, corners, side, chosen, self.fill)

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        result = super().forward(output, labels, batch)
        result.logs.update(self._logs)
        self._logs = {}
        return result
