"""DPAP, dominant patch amplitude perturbation (TransFace, ICCV 2023, Sec. 3.2).

An extra no-grad forward of the face ViT gives each image's patch weights (the softmax of its
SE gates). With probability ``p`` (0.2) an image is perturbed: each of its ``k`` (7) highest
weighted patches gets the Fourier amplitude of a random patch of a random image of the batch
mixed into its own, its phase kept:

    A = lam * |F(x_rand)| + (1 - lam) * |F(x_src)|,  lam ~ U(0, alpha)  (alpha = 1)
    x_src' = clip(Re F^-1(A * exp(i * angle F(x_src))), 0, 255)

per colour channel, on 0..255 pixels (the official code works on the uint8 batch before
normalisation; since the normalisation's offset lands on the DC term, whose amplitude takes an
absolute value, the mix is done on pixels here too and mapped back). The random patch is any
cell of the same grid (12x12 of 9x9 at 112 px).

The official code copies the batch to the host and loops in Python over images and patches
with numpy (REFERENCE.md: 122 ms per 512 images at p = 0.2 on one core). Here the whole batch
is one set of tensor operations on its device: gather the chosen patches, one ``torch.fft.fft2``
over all of them, scatter back. Two things of the official loop are not reproduced: it writes
each perturbed patch into the batch before drawing the next random patch, so a later draw can
read an already perturbed patch (here every draw reads the original batch: the order of a
Python loop is not part of the method); and ``official=True`` keeps its ``np.uint8`` cast,
which truncates the perturbed pixels to integers (the default leaves them real-valued).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DPAPDraws:
    """The random numbers of one DPAP call, (B,) and (B, k): ``perturb`` whether image b is
    perturbed (u < p); ``source_image`` / ``source_patch`` the image and grid cell of the
    random patch mixed into the j-th dominant patch of image b; ``lam`` its mixing weight."""

    perturb: Tensor
    source_image: Tensor
    source_patch: Tensor
    lam: Tensor


def patch_grid(images: Tensor, num_patches: int) -> tuple[int, int, int]:
    """(rows, cols, patch side) of the square token grid a ViT cut ``images`` into, from its
    ``num_patches`` patch weights: 144 weights of a 112 px image -> (12, 12, 9) (the last 4
    pixel rows/columns belong to no patch, as in the model)."""
    h, w = images.shape[-2:]
    side = math.isqrt(num_patches)
    if side * side != num_patches or side < 1:
        raise ValueError(f"DPAP: {num_patches} patch weights do not form a square grid of patches")
    ps = min(h, w) // side
    if ps < 1 or h // ps != side or w // ps != side:
        raise ValueError(
            f"DPAP: a {h}x{w} image cannot be divided into the {side}x{side} grid of its "
            f"{num_patches} patch weights"
        )
    return side, side, ps


class DominantPatchAmplitudePerturbation:
    """``dpap(images, patch_weights) -> (perturbed, draws)``.

    ``images``: the model input (B, 3, H, W), normalised to [-1, 1] (``x / 127.5 - 1``);
    ``patch_weights`` (B, P): the ViT's patch weights of those images. ``p``: probability that
    an image is perturbed (0.2); ``k``: dominant patches per image (7); ``alpha``: lam ~ U(0,
    alpha) (1); ``official``: truncate perturbed pixels to integers (the official ``np.uint8``).
    Random numbers come from ``generator`` or the global generator of the images' device.
    """

    def __init__(self, p: float = 0.2, k: int = 7, alpha: float = 1.0, official: bool = False):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"DPAP probability p must be in [0, 1], got {p}")
        if k < 1:
            raise ValueError(f"DPAP k (dominant patches per image) must be >= 1, got {k}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DPAP alpha (lam ~ U(0, alpha)) must be in [0, 1], got {alpha}")
        self.p, self.k, self.alpha, self.official = float(p), int(k), float(alpha), bool(official)

    def draw(
        self, batch: int, num_patches: int, device, generator: torch.Generator | None = None
    ) -> DPAPDraws:
        """The random numbers of one call on a batch of ``batch`` images of ``num_patches``."""
        if self.k > num_patches:
            raise ValueError(f"DPAP k={self.k} is larger than the number of patches ({num_patches})")
        kw = {"device": device, "generator": generator}
        return DPAPDraws(
            perturb=torch.rand(batch, **kw) < self.p,
            source_image=torch.randint(batch, (batch, self.k), **kw),
            source_patch=torch.randint(num_patches, (batch, self.k), **kw),
            lam=torch.rand(batch, self.k, **kw) * self.alpha,
        )

    def __call__(
        self, images: Tensor, patch_weights: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DPAPDraws]:
        if images.dim() != 4 or patch_weights.dim() != 2 or patch_weights.shape[0] != images.shape[0]:
            raise ValueError(
                f"DPAP expects images (B, C, H, W) and patch weights (B, P), got "
                f"{tuple(images.shape)} and {tuple(patch_weights.shape)}"
            )
        draws = self.draw(images.shape[0], patch_weights.shape[1], images.device, generator)
        return self.apply(images, patch_weights, draws), draws

    def apply(self, images: Tensor, patch_weights: Tensor, draws: DPAPDraws) -> Tensor:
        """DPAP with given random numbers (what :meth:`__call__` does after :meth:`draw`)."""
        rows, cols, ps = patch_grid(images, patch_weights.shape[1])
        if self.k > rows * cols:
            raise ValueError(f"DPAP k={self.k} is larger than the number of patches ({rows * cols})")
        chosen = draws.perturb.nonzero().squeeze(1)
        if chosen.numel() == 0:
            return images
        top = patch_weights.topk(self.k, dim=1).indices[chosen]  # (n, k), row-major cells

        def grid(x: Tensor) -> Tensor:  # (B, C, rows, ps, cols, ps): a view, no copy
            return x[:, :, : rows * ps, : cols * ps].unflatten(2, (rows, ps)).unflatten(4, (cols, ps))

        # advanced indices (n, k) on the image, row and column axes: (n, k, C, ps, ps) patches
        image = chosen[:, None].expand(-1, self.k)
        src = (grid(images)[image, :, top // cols, :, top % cols].float() + 1.0) * 127.5  # 0..255
        cell = draws.source_patch[chosen]
        rnd = grid(images)[draws.source_image[chosen], :, cell // cols, :, cell % cols]
        rnd = (rnd.float() + 1.0) * 127.5
        # real patches: half spectra (rfft2 over the two pixel dims, per channel); both
        # amplitudes are even and the source phase odd, so the mix is a real patch's spectrum
        # and irfft2 equals the official real part of ifft2
        f_src = torch.fft.rfft2(src)
        a_src = f_src.abs()
        lam = draws.lam[chosen].to(a_src.dtype)[:, :, None, None, None]
        amp = lam * torch.fft.rfft2(rnd).abs() + (1 - lam) * a_src
        # amp * exp(i angle f_src) without angle / polar: f_src / |f_src| is the unit phasor
        # (angle 0 where |f_src| = 0, as np.angle)
        mixed = torch.where(a_src > 0, f_src * (amp / a_src.clamp_min(1e-30)), amp.to(f_src.dtype))
        out = torch.fft.irfft2(mixed, s=(ps, ps)).clamp(0.0, 255.0)
        if self.official:
            out = out.floor()  # np.uint8 of a value in [0, 255] truncates
        # every random patch was read above, from the unperturbed batch; only the dominant
        # patches of the drawn images are written, every other pixel stays bit-identical
        result = images.clone()
        grid(result)[image, :, top // cols, :, top % cols] = (out / 127.5 - 1.0).to(images.dtype)
        return result
