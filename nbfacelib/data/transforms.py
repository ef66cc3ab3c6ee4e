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
