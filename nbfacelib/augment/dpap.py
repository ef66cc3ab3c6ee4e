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
is one set of tensor operations on its device: one gather of the chosen and the random patches,
a 2-D DFT of all of them (cuFFT on a GPU; on a CPU one GEMM with the DFT matrix, see
``_dft_pair``), the mix, the inverse DFT, and one scatter back, into a copy of the batch or
(``inplace=True``) the batch itself. Two things of the official loop are not reproduced: it
writes each perturbed patch into the batch before drawing the next random patch, so a later
draw can read an already perturbed patch (here every draw reads the original batch: the order
of a Python loop is not part of the method); and ``official=True`` keeps its ``np.uint8`` cast,
which truncates the perturbed pixels to integers (the default leaves them real-valued).
"""

from __future__ import annotations

import functools
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
    alpha) (1); ``official``: truncate perturbed pixels to integers (the official ``np.uint8``);
    ``dft``: how the patch spectra are taken: ``"fft"`` (torch.fft), ``"matmul"`` (one GEMM
    with the DFT matrix, faster on a CPU), ``"auto"`` (matmul on the CPU, fft elsewhere).
    Random numbers come from ``generator`` or the global generator of the images' device.
    """

    def __init__(
        self,
        p: float = 0.2,
        k: int = 7,
        alpha: float = 1.0,
        official: bool = False,
        dft: str = "auto",
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"DPAP probability p must be in [0, 1], got {p}")
        if k < 1:
            raise ValueError(f"DPAP k (dominant patches per image) must be >= 1, got {k}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DPAP alpha (lam ~ U(0, alpha)) must be in [0, 1], got {alpha}")
        if dft not in ("auto", "matmul", "fft"):
            raise ValueError(f"DPAP dft must be 'auto', 'matmul' or 'fft', got {dft!r}")
        self.p, self.k, self.alpha, self.official = float(p), int(k), float(alpha), bool(official)
        self.dft = dft

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
        self,
        images: Tensor,
        patch_weights: Tensor,
        generator: torch.Generator | None = None,
        inplace: bool = False,
    ) -> tuple[Tensor, DPAPDraws]:
        if images.dim() != 4 or patch_weights.dim() != 2 or patch_weights.shape[0] != images.shape[0]:
            raise ValueError(
                f"DPAP expects images (B, C, H, W) and patch weights (B, P), got "
                f"{tuple(images.shape)} and {tuple(patch_weights.shape)}"
            )
        draws = self.draw(images.shape[0], patch_weights.shape[1], images.device, generator)
        return self.apply(images, patch_weights, draws, inplace=inplace), draws

    def apply(self, images: Tensor, patch_weights: Tensor, draws: DPAPDraws, inplace: bool = False) -> Tensor:
        """DPAP with given random numbers (what :meth:`__call__` does after :meth:`draw`).
        ``inplace``: write the perturbed patches into ``images`` itself instead of a copy (a
        caller that owns its batch saves the copy: on a CPU, copying a 112 px batch of 128
        costs more than DPAP itself, mostly page faults of the fresh 19 MB)."""
        rows, cols, ps = patch_grid(images, patch_weights.shape[1])
        if self.k > rows * cols:
            raise ValueError(f"DPAP k={self.k} is larger than the number of patches ({rows * cols})")
        chosen = draws.perturb.nonzero().squeeze(1)
        if chosen.numel() == 0:
            return images
        dense = images.is_contiguous() or images.is_contiguous(memory_format=torch.channels_last)
        if not dense:
            if inplace:
                raise ValueError("DPAP inplace=True needs a dense (contiguous or channels-last) batch")
            images = images.contiguous()
        channels, dev = images.shape[1], images.device
        n = chosen.numel()
        # Each patch is C * ps rows of ps pixels. The batch's storage seen as overlapping
        # "rows" (row j = the ps pixels from storage position j, stride s_w) lets one
        # index_select gather them all and one index_copy_ write them back, for NCHW and
        # channels-last alike: on a CPU core ~10x faster than advanced indexing of a strided
        # (B, C, rows, ps, cols, ps) view. Rows of distinct patches never share a pixel, so the
        # write is well defined although the view overlaps itself.
        s_b, s_c, s_h, s_w = images.stride()
        row_offsets = (
            torch.arange(channels, device=dev)[:, None] * s_c + torch.arange(ps, device=dev) * s_h
        ).view(1, 1, -1)  # (1, 1, C * ps)
        # (2, n, k): the dominant patches (row-major cells) of the chosen images, then the
        # random ones; -> (2 n k C ps,) storage positions of their rows
        image = torch.stack([chosen[:, None].expand(-1, self.k), draws.source_image[chosen]])
        cell = torch.stack([patch_weights[chosen].topk(self.k, dim=1).indices, draws.source_patch[chosen]])
        base = (image * s_b + (cell // cols) * (ps * s_h) + (cell % cols) * (ps * s_w)).view(
            2 * n * self.k, 1
        )
        starts = (base + images.storage_offset() + row_offsets.view(1, -1)).view(-1)
        size = images.untyped_storage().nbytes() // images.element_size()
        storage_rows = images.as_strided((size - (ps - 1) * s_w, ps), (1, s_w), 0)
        count = n * self.k * channels  # patches (one channel each) to perturb
        # every random patch is read here, with the dominant ones, before any write (so that an
        # in-place write cannot leak into a draw); one pass over all of them: on a 2-core CPU
        # passes of ~512 patches (to keep each in cache) were 6-25% slower with 2 threads and
        # only at batch 512, p = 1 faster (10%) with one
        both = storage_rows.index_select(0, starts).view(2, count, ps * ps)
        lam = draws.lam[chosen].repeat_interleave(channels, dim=1).view(-1, 1).float()
        out = self._perturb(both, lam, ps)
        # only the dominant patches of the drawn images are written, every other pixel stays
        # bit-identical (a clone keeps the strides of a dense batch, but starts at offset 0 of
        # its own storage)
        result = images if inplace else images.clone()
        shift = result.storage_offset() - images.storage_offset()
        result_size = result.untyped_storage().nbytes() // result.element_size()
        result.as_strided((result_size - (ps - 1) * s_w, ps), (1, s_w), 0).index_copy_(
            0, starts[: count * ps] + shift, out.view(-1, ps).to(images.dtype)
        )
        return result

    def _perturb(self, both: Tensor, lam: Tensor, ps: int) -> Tensor:
        """(2, m, ps * ps): m dominant patches then m random ones, one channel each, normalised,
        and their (m, 1) lam -> the m perturbed dominant patches, normalised."""
        m = both.shape[1]
        # on 0..255 pixels, as the official code (a black patch's spectrum is exactly 0)
        pixels = both.reshape(2 * m, ps * ps).float().add_(1.0).mul_(127.5)
        spectra = self._half_spectrum(pixels)  # (2 m, 2 half): [Re | Im]
        half = spectra.shape[1] // 2
        # |F|^2, then A / |F_src| = (1 - lam) + lam |F_rnd| / |F_src| (in place throughout:
        # on a CPU each fresh MB-sized intermediate costs its page faults; squares, not hypot,
        # ~3x faster on a CPU core)
        power = spectra[:, :half] * spectra[:, :half]
        power.addcmul_(spectra[:, half:], spectra[:, half:])
        p_src, p_rnd = power[:m], power[m:]
        zero = p_src == 0
        # where |F_src| = 0 (its angle 0, as np.angle) the mixed spectrum is the amplitude A
        amp_at_zero = (p_rnd.sqrt() * lam)[zero] if bool(zero.any()) else None
        ratio = p_rnd.div_(p_src.clamp_min_(1e-37)).sqrt_().mul_(lam).add_(1 - lam)
        # A with the source phase: F_src scaled by A / |F_src|. The mixed spectrum stays
        # Hermitian, so its inverse is a real patch and equals the official real part of ifft2.
        mixed = spectra[:m].view(m, 2, half).mul_(ratio[:, None, :]).view(m, 2 * half)
        if amp_at_zero is not None:
            mixed[:, :half][zero] = amp_at_zero
            mixed[:, half:][zero] = 0.0
        return self._normalised_inverse(mixed, ps)  # (m, ps * ps), in [-1, 1]

    def _matmul_dft(self, device) -> bool:
        return self.dft == "matmul" or (self.dft == "auto" and torch.device(device).type == "cpu")

    def _half_spectrum(self, pixels: Tensor) -> Tensor:
        """(M, ps * ps) real patches -> (M, 2 * ps * (ps // 2 + 1)): [Re | Im] of rfft2."""
        m, ps = pixels.shape[0], math.isqrt(pixels.shape[1])
        if self._matmul_dft(pixels.device):
            return pixels @ _dft_pair(ps, str(pixels.device))[0]
        spec = torch.view_as_real(torch.fft.rfft2(pixels.view(m, ps, ps))).reshape(m, -1, 2)
        return torch.cat([spec[..., 0], spec[..., 1]], 1)

    def _normalised_inverse(self, mixed: Tensor, ps: int) -> Tensor:
        """[Re | Im] of a Hermitian half spectrum of 0..255 pixels -> (M, ps * ps) real patches
        (irfft2), clipped to the pixel range (``official``: truncated to integers) and
        normalised to [-1, 1]. ``mixed`` is overwritten."""
        if self._matmul_dft(mixed.device) and not self.official:
            mixed[:, 0] -= 127.5 * ps * ps  # the offset of the normalisation, on the DC term
            return (mixed @ _normalising_inverse(ps, str(mixed.device))).clamp_(-1.0, 1.0)
        if self._matmul_dft(mixed.device):
            pixels = mixed @ _dft_pair(ps, str(mixed.device))[1]
        else:
            half = mixed.shape[1] // 2
            spec = torch.complex(mixed[:, :half], mixed[:, half:]).view(-1, ps, ps // 2 + 1)
            pixels = torch.fft.irfft2(spec, s=(ps, ps)).reshape(-1, ps * ps)
        pixels = pixels.clamp_(0.0, 255.0)
        if self.official:
            pixels.floor_()  # np.uint8 of a value in [0, 255] truncates
        return pixels.div_(127.5).sub_(1.0)


# The 2-D DFT of a real ps x ps patch as one matrix (half spectrum, real and imaginary parts
# side by side), and its inverse. Why by hand, beside torch.fft: DPAP transforms thousands of
# 9x9 patches per batch, and on a CPU core pocketfft's per-transform cost (plus the complex
# abs) makes rfft2 + irfft2 of them ~2x slower than one GEMM each with these (ps^2 x 2 ps
# (ps // 2 + 1)) matrices. They are exact DFTs (built in float64, used in float32); the test
# against numpy's FFT loop checks both paths to 2e-5. On CUDA ``dft="auto"`` keeps cuFFT: a
# GEMM there may run in TF32, if a user enables it, and would lose pixel precision.
@functools.lru_cache(maxsize=8)
def _dft_pair(ps: int, device: str) -> tuple[Tensor, Tensor]:
    half = ps // 2 + 1
    n = torch.arange(ps, dtype=torch.float64)  # pixel rows i, columns j and frequency rows k
    l = n[:half]  # frequency columns of the half spectrum
    # theta[(i, j), (k, l)] = 2 pi (k i + l j) / ps
    theta = (
        2
        * math.pi
        * (n.view(-1, 1, 1, 1) * n.view(1, 1, -1, 1) + n.view(1, -1, 1, 1) * l.view(1, 1, 1, -1))
        / ps
    )
    theta = theta.reshape(ps * ps, ps * half)
    forward = torch.cat([torch.cos(theta), -torch.sin(theta)], 1)  # X @ forward = [Re F | Im F]
    # irfft2: x = (1 / ps^2) sum_k sum_l w_l Re(F e^{i theta}), w_l = 2 for the columns whose
    # conjugates the half spectrum leaves out (l >= 1, and not the Nyquist one of an even ps)
    w = torch.full((half,), 2.0, dtype=torch.float64)
    w[0] = 1.0
    if ps % 2 == 0:
        w[-1] = 1.0
    w = w.repeat(ps)[:, None] / (ps * ps)
    inverse = torch.cat([torch.cos(theta).T * w, -torch.sin(theta).T * w], 0)  # [Re | Im] @ inverse
    return forward.float().to(device), inverse.float().to(device)


@functools.lru_cache(maxsize=8)
def _normalising_inverse(ps: int, device: str) -> Tensor:
    """:func:`_dft_pair`'s inverse scaled by 1 / 127.5: to patches normalised to [-1, 1]
    (x = pixels / 127.5 - 1; the offset goes on the DC term before it)."""
    return _dft_pair(ps, device)[1] / 127.5
