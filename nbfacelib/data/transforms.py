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


class TrainAugment:
    """Random resized crop (to ``size``) and colour jitter of a uint8 batch, per image.

    torchvision's ``v2.RandomResizedCrop(size, scale, ratio)`` (Szegedy et al. 2015's crop:
    area fraction ``scale``, aspect ``ratio``, bilinear with antialiasing) and
    ``v2.ColorJitter(brightness=c, contrast=c, saturation=c)`` do the work; they draw their
    parameters from torch's global generator, so each call runs under a forked RNG seeded from
    ``generator``: a batch stays a pure function of (seed, step), as the engine's resume needs.
    ``crop_scale`` None: no crop (a plain resize to ``size``); ``color_jitter`` 0: no jitter.
    """

    def __init__(self, size: int, crop_scale=None, crop_ratio=(0.9, 1.1), color_jitter: float = 0.0):
        from torchvision.transforms import v2

        steps = []
        if crop_scale is not None:
            steps.append(
                v2.RandomResizedCrop(size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True)
            )
        if color_jitter:
            steps.append(
                v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
            )
        self.size = size
        self.pipeline = v2.Compose(steps) if steps else None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size)."""
        if self.pipeline is None:
            return resize(images, self.size)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = torch.stack([self.pipeline(img) for img in images])
        return resize(out, self.size)  # no-op after a crop; the size rule when only jitter ran
