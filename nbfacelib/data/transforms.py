"""Pixel conventions shared by every reader, model and evaluator.

Readers yield ``uint8`` tensors shaped ``(3, H, W)`` (RGB). Models take float tensors
normalised as in arcface_torch: ``(x / 255 - 0.5) / 0.5``, i.e. in [-1, 1].
"""

from __future__ import annotations

import torch


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    return images.float().div_(127.5).sub_(1.0)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255] (rounded, clipped)."""
    return images.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size): bilinear with antialiasing, rounded. The
    one rule used by training and evaluation alike, so train and test pixels match."""
    if images.shape[-2:] == (size, size):
        return images
    x = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)
