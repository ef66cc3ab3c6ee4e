"""Pairwise Euclidean distances without a (B, B, D) difference tensor.

The official TopoFR code computes input-space distances as ``norm(x[:, None] - x, dim=2)``
on flattened 3x112x112 images: a B x B x 37632 tensor (2.5 GB at B = 128, 158 GB at
B = 1024). Here ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` from one matrix product, whose
diagonal gives the squared norms: the only B x B x D-free work is the product itself, and the
extra memory is a few B x B matrices (12 MB at B = 1024).

Accuracy: float32 products lose about ``eps * (|a|^2 + |b|^2)`` in ``d^2`` to cancellation,
i.e. ~1e-7 relative for well-separated images and ~1e-4 of the normalising scale for
near-duplicates (tests compare with float64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Inputs narrower than float32 (AMP) are accumulated in float32 in column chunks of this many
# features, so no float32 copy of the whole batch is made.
_CHUNK = 8192


def pairwise_distances(x: Tensor) -> Tensor:
    """(B, B) Euclidean distances between the rows of ``x`` (B, D), differentiable.

    Exact zeros on the diagonal; the gradient at a zero distance is 0 (the subgradient), not
    NaN. float16/bfloat16 input is computed in float32.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (B, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("x has no rows")
    gram = _gram(x)
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
    positive = d2 > 0
    # sqrt'(0) is infinite: take the root only where d2 > 0 so a zero distance (the diagonal,
    # duplicate points) passes a zero gradient instead of 0 * inf = NaN.
    d = torch.where(positive, torch.where(positive, d2, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))
    return d


def input_distances(images: Tensor, normalize: bool = True) -> Tensor:
    """(B, B) distances between the flattened images (B, C, H, W) of a batch, no gradient.

    ``normalize`` divides by ``sqrt(4 * C * H * W)``, the largest distance two images in
    [-1, 1] can have, as the official TopoFR code does: distances lie in [0, 1].
    Works on the batch's own memory (contiguous or channels-last: distances do not depend on
    the order of the features), so no copy of the batch is made.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    flat = _flat_view(images.detach())
    with torch.no_grad():
        d = pairwise_distances(flat)
    if normalize:
        d = d / math.sqrt(4.0 * flat.shape[1])
    return d


def _flat_view(images: Tensor) -> Tensor:
    if images.is_contiguous():
        return images.reshape(images.shape[0], -1)
    if images.is_contiguous(memory_format=torch.channels_last):
        return images.permute(0, 2, 3, 1).reshape(images.shape[0], -1)
    return images.reshape(images.shape[0], -1)


def _gram(x: Tensor) -> Tensor:
    if x.dtype in (torch.float32, torch.float64):
        return x @ x.T
    gram = None
    for k in range(0, x.shape[1], _CHUNK):
        part = x[:, k : k + _CHUNK].float()
        gram = part @ part.T if gram is None else gram.addmm_(part, part.T)
    return gram
