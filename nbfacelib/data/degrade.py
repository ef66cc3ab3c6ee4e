"""Batched image degradations in torch: blur (gaussian, motion), noise, down-sampling, JPEG.

Every function takes float images ``(B, 3, H, W)`` in [0, 1] and per-image parameters as
1-D tensors of length ``B``, so one call degrades a whole batch with a different strength
for each image, on whatever device the images live on. Parameters equal to the identity
value (sigma 0, length 0, factor 1, quality 100) leave that image untouched (bit for bit),
and the work is done only on the images that need it.

Why hand-written: torchvision's ``gaussian_blur`` takes one sigma per call, has no motion
blur, and its JPEG (``torchvision.io.encode_jpeg``) runs libjpeg per image on the CPU. A
synthetic-data renderer that must keep up with a GPU training loop needs all of them
batched, with per-image parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = [
    "DEGRADATIONS",
    "degrade",
    "blur",
    "downsample",
    "add_noise",
    "jpeg",
    "jpeg_quant_table",
]


def _subset(mask: torch.Tensor) -> torch.Tensor | None:
    idx = mask.nonzero().flatten()
    return idx if idx.numel() else None


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the block's CPU ops on one thread, then restore the count. ATen splits an op among
    threads at points that depend on the thread count, and an op whose vector and scalar loops
    round differently (bilinear enlarging) then gives a pixel at a split another last bit: on
    one thread every count renders the same bytes."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Blur: gaussian (optics / defocus) and linear motion, combined into one kernel per image and
# applied per image. The combined kernel is analytic: a box of length L along unit vector d
# convolved with an isotropic gaussian of std s is, at offset p,
# N(p.n; s) * [Phi((p.d + L/2)/s) - Phi((p.d - L/2)/s)] (n normal to d); its transfer function
# is exp(-2 pi^2 s^2 |f|^2) sinc(L f.d). Measured on the 2-core CPU, a KxK depthwise conv is
# the fastest up to K = 13 (faster than a separable pair); beyond, one rfft2/irfft2 product
# costs less than the K^2 taps, so large kernels take the Fourier route.
# --------------------------------------------------------------------------------------------
_KSIZES = (5, 9, 13, 17, 25, 33)
_FFT_FROM = 17  # kernel sizes from here on use the FFT


def _blur_fft(x: torch.Tensor, s: torch.Tensor, L: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    n, C, H, W = x.shape
    # A fixed pad to a size with small prime factors (112 -> 128, 160 -> 192) keeps the FFT
    # fast; content reflected across the border is what wraps around.
    pad = min(8 if H <= 128 else 16, H - 1, W - 1)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    Hp, Wp = xp.shape[-2:]
    fy = torch.fft.fftfreq(Hp, device=x.device).view(1, Hp, 1)
    fx = torch.fft.rfftfreq(Wp, device=x.device).view(1, 1, -1)
    s, L, th = s.view(-1, 1, 1), L.view(-1, 1, 1), torch.deg2rad(angle).view(-1, 1, 1)
    tf = torch.exp(-2 * math.pi**2 * s**2 * (fx**2 + fy**2)) * torch.sinc(
        L * (fx * torch.cos(th) + fy * torch.sin(th))
    )
    y = torch.fft.irfft2(torch.fft.rfft2(xp) * tf.unsqueeze(1), s=(Hp, Wp))
    return y[..., pad : pad + H, pad : pad + W]


def blur_kernels(sigma: torch.Tensor, length: torch.Tensor, angle: torch.Tensor, ksize: int) -> torch.Tensor:
    """(B, K, K) normalised kernels: gaussian std ``sigma`` px then motion ``length`` px at
    ``angle`` degrees (0 = horizontal, positive = clockwise on screen since rows grow down).
    A pure motion blur is smoothed by 0.5 px so the line is anti-aliased."""
    s = sigma.clamp(min=0.5).view(-1, 1, 1)
    L = length.view(-1, 1, 1)
    th = torch.deg2rad(angle).view(-1, 1, 1)
    r = torch.arange(ksize, device=sigma.device, dtype=torch.float32) - ksize // 2
    x, y = r.view(1, 1, -1), r.view(1, -1, 1)
    along = x * torch.cos(th) + y * torch.sin(th)
    across = -x * torch.sin(th) + y * torch.cos(th)
    sq2 = math.sqrt(2.0)
    box = torch.erf((along + L / 2) / (sq2 * s)) - torch.erf((along - L / 2) / (sq2 * s))
    box = torch.where(L > 0.01, box, torch.exp(-(along**2) / (2 * s**2)))  # L -> 0: a gaussian
    k = torch.exp(-(across**2) / (2 * s**2)) * box
    return k / k.sum((1, 2), keepdim=True)


def blur(
    images: torch.Tensor,
    sigma: torch.Tensor,
    motion_length: torch.Tensor | None = None,
    motion_angle: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Gaussian blur (std ``sigma`` pixels) and linear motion blur (``motion_length`` pixels at
    ``motion_angle`` degrees, 0 = horizontal), per image. Borders are reflected. Images with
    sigma == 0 and length == 0 are unchanged. ``inplace`` writes into ``images`` (the same
    holds for every function here)."""
    B, C, H, W = images.shape
    sigma = sigma.to(images.device, torch.float32).reshape(B)
    if motion_length is None:
        motion_length = torch.zeros_like(sigma)
        motion_angle = torch.zeros_like(sigma)
    length = motion_length.to(images.device, torch.float32).reshape(B)
    angle = motion_angle.to(images.device, torch.float32).reshape(B)
    out = images if inplace else images.clone()
    need = (sigma > 0) | (length > 0)
    if not bool(need.any()):
        return out
    # Kernel support: 2.5 std either side (98.8% of the mass) plus half the motion; images are
    # bucketed by it so a light blur does not pay for the heaviest one in the batch.
    half = torch.ceil(2.5 * sigma.clamp(min=0.5) + length / 2)
    ks = torch.tensor(_KSIZES, device=images.device)
    bucket = torch.bucketize(2 * half + 1, ks).clamp(max=len(_KSIZES) - 1)
    for b in torch.unique(bucket[need]).tolist():
        idx = (need & (bucket == b)).nonzero().flatten()
        K = min(_KSIZES[b], 2 * (min(H, W) // 2) - 1)
        if K >= _FFT_FROM:
            x = images.index_select(0, idx)
            out.index_copy_(0, idx, _blur_fft(x, sigma[idx].clamp(min=0.5), length[idx], angle[idx]))
            continue
        k = blur_kernels(sigma[idx], length[idx], angle[idx], K)
        n = idx.numel()
        x = images.index_select(0, idx).view(1, n * C, H, W)
        x = F.pad(x, (K // 2,) * 4, mode="reflect")
        w = k.repeat_interleave(C, 0).unsqueeze(1)
        y = F.conv2d(x, w, groups=n * C).view(n, C, H, W)
        out.index_copy_(0, idx, y)
    return out


def downsample(images: torch.Tensor, factor: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Simulate a low-resolution capture: shrink by ``factor`` (>= 1, per image; anti-aliased
    bilinear) and enlarge back (bilinear), as a detector-and-align pipeline does. Images are
    grouped by their low-resolution size, so a few distinct factors cost a few calls."""
    B, C, H, W = images.shape
    factor = factor.to(images.device, torch.float32).reshape(B)
    out = images if inplace else images.clone()
    idx = _subset(factor > 1)
    if idx is None:
        return out
    small = torch.clamp((H / factor[idx]).round(), min=4).long()
    for h in torch.unique(small).tolist():
        sel = idx[small == h]
        w = max(4, round(W * h / H))
        x = images.index_select(0, sel)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        with _one_cpu_thread(x.device):  # the same bytes at any thread count
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        out.index_copy_(0, sel, x)
    return out


def add_noise(images: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Additive gaussian sensor noise: ``images + sigma/255 * noise`` where ``noise`` is a
    standard-normal tensor shaped like ``images`` (the caller chooses how it is generated, so
    that it can be reproducible per image) and ``sigma`` is in 0..255 intensity units."""
    s = sigma.to(images.device, torch.float32).view(-1, 1, 1, 1) / 255.0
    return images + s * noise


# --------------------------------------------------------------------------------------------
# JPEG: baseline JFIF round trip, i.e. RGB -> YCbCr (ITU-R BT.601 full range), 4:2:0 chroma
# sub-sampling, 8x8 DCT-II, quantisation with the IJG tables scaled by quality, and back. The
# 2-D DCT of all blocks is a single GEMM with kron(D, D). No entropy coding: it is lossless,
# so the decoded pixels are what libjpeg would give up to its integer DCT and upsampling.
# --------------------------------------------------------------------------------------------

_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32  # fmt: skip


def jpeg_quant_table(quality: torch.Tensor, chroma: bool = False) -> torch.Tensor:
    """IJG (libjpeg ``jpeg_quality_scaling``) tables for integer quality 1..100: (B, 64)."""
    q = quality.to(torch.float32).clamp(1, 100).round()
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float32, device=q.device)
    return torch.floor((base[None] * scale[:, None] + 50.0) / 100.0).clamp(1, 255)


def _dct_matrix(device: torch.device) -> torch.Tensor:
    """kron(D, D) of the orthonormal 8-point DCT-II matrix D (block X -> D X D^T)."""
    n = torch.arange(8, dtype=torch.float64)
    k = n.view(-1, 1)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return torch.kron(d, d).to(device, torch.float32)


def _dct_quantise(ch: torch.Tensor, table: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """ch (N, H, W) level-shifted; table (N, 64). The 2-D DCT of every 8x8 block is one GEMM
    with K = kron(D, D) (vec(D X D^T) = K vec(X)); quantise/dequantise in between."""
    N, H, W = ch.shape
    blocks = ch.reshape(N, H // 8, 8, W // 8, 8).permute(0, 1, 3, 2, 4).reshape(N, -1, 64)
    t = table[:, None, :]
    c = (blocks @ K.T).div_(t).round_().mul_(t) @ K
    return c.reshape(N, H // 8, W // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(N, H, W)


_RGB2YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
_YCC2RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


def jpeg(images: torch.Tensor, quality: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """JPEG round trip at per-image ``quality`` (1..100; images with quality >= 100 are left
    untouched, meaning "not compressed"). Images in [0, 1]; H and W must be multiples of 16
    (112 and 160 are)."""
    B, C, H, W = images.shape
    if H % 16 or W % 16:
        raise ValueError(f"jpeg: image size {H}x{W} must be a multiple of 16")
    quality = quality.to(images.device, torch.float32).reshape(B)
    out = images if inplace else images.clone()
    idx = _subset(quality < 100)
    if idx is None:
        return out
    q = quality[idx]
    x = images.index_select(0, idx).mul(255.0).round_().clamp_(0, 255)  # encoders take bytes
    n = x.shape[0]
    # Colour transforms as batched 3x3 @ (3, H*W) products (measured faster than einsum and
    # than 1x1 convolutions on the CPU).
    to_ycc = torch.tensor(_RGB2YCC, device=x.device)
    ycc = (to_ycc @ x.view(n, 3, H * W)).view(n, 3, H, W)
    K = _dct_matrix(x.device)
    y = _dct_quantise(ycc[:, 0] - 128.0, jpeg_quant_table(q), K)
    chroma = F.avg_pool2d(ycc[:, 1:], 2)  # 4:2:0 (Cb, Cr are centred on 0 here)
    ct = jpeg_quant_table(q, chroma=True).repeat_interleave(2, 0)
    chroma = _dct_quantise(chroma.reshape(n * 2, H // 2, W // 2), ct, K).view(n, 2, H // 2, W // 2)
    chroma = F.interpolate(chroma, size=(H, W), mode="bilinear", align_corners=False)
    to_rgb = torch.tensor(_YCC2RGB, device=x.device)[:, 1:]  # the Y column is all ones
    rgb = (to_rgb @ chroma.reshape(n, 2, H * W)).view(n, 3, H, W).add_(y.unsqueeze(1).add_(128.0))
    out.index_copy_(0, idx, rgb.clamp_(0, 255).div_(255.0))
    return out


# --------------------------------------------------------------------------------------------
# One named degradation at a known strength, for studies that degrade real faces (ORL) the way
# the renderer degrades synthetic ones: what a quality / uncertainty measure should follow.
# --------------------------------------------------------------------------------------------
DEGRADATIONS = {
    # name: (identity value, unit)
    "blur_sigma": (0.0, "gaussian blur std, px of a 112 image"),
    "noise_sigma": (0.0, "gaussian noise std, 0..255 units"),
    "downsample": (1.0, "down-sampling factor"),
    "jpeg_quality": (100.0, "JPEG quality 1..100 (100: not compressed)"),
}


def degrade(images: torch.Tensor, kind: str, strength: float, seed: int = 0) -> torch.Tensor:
    """``images`` (B, 3, H, W) uint8 degraded by one named degradation of :data:`DEGRADATIONS`
    at ``strength`` (its unit there; the identity value leaves the images unchanged), with the
    functions the synthetic renderer uses. The noise is drawn from ``seed``. Returns uint8."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"degrade: unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"degrade: expected uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}"
        )
    x = images.float() / 255.0
    s = torch.full((len(images),), float(strength))
    if kind == "blur_sigma":
        x = blur(x, s)
    elif kind == "noise_sigma":
        g = torch.Generator().manual_seed(int(seed))
        x = add_noise(x, s, torch.randn(x.shape, generator=g))
    elif kind == "downsample":
        x = downsample(x, s)
    else:
        x = jpeg(x, s)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def degraded_copies(
    images: torch.Tensor, strengths: dict[str, list[float]], seed: int = 0
) -> tuple[torch.Tensor, list[dict[str, float | int | str]]]:
    """Every image of ``images`` (uint8) degraded by each named degradation at each of its
    strengths (``{"blur_sigma": [0, 1, 2], ...}``): the (sum of strengths x N) images, in that
    order, and one row per image: ``kind``, ``strength``, ``level`` (the strength's rank in its
    list, 0 = the first) and ``image`` (index into ``images``)."""
    out, rows = [], []
    for kind, values in strengths.items():
        for level, strength in enumerate(values):
            out.append(degrade(images, kind, float(strength), seed=seed + level))
            rows += [
                {"kind": kind, "strength": float(strength), "level": level, "image": i}
                for i in range(len(images))
            ]
    if not out:
        raise ValueError("degraded_copies: give at least one degradation with one strength")
    return torch.cat(out), rows
