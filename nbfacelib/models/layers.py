"""Small building blocks shared by the backbone families.

Kept here (not in each family file) so that IResNet, MobileFaceNet and the families added later
(VarGFaceNet, the PFE head) agree on padding, BatchNorm settings and the output-size arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn

# insightface builds every BatchNorm with eps=1e-05 and the default momentum (0.1); both are
# PyTorch's defaults, named here so that no family silently drifts from them.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def float32_head(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in float32 even under autocast: a backbone's embedding head (IResNet's
    ``fc`` + ``features``, MobileFaceNet's ``conv_sep`` + GDC ``features``) runs outside the
    autocast region in arcface_torch (``self.fc(x.float() if self.fp16 else x)``), because a
    bf16 / fp16 embedding would carry ~3 significant digits into the margin's angles.
    Without autocast ``module(x)`` runs as it is (a model cast to half stays half)."""
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return module(x)  # no autocast here (or none on this device: meta tensors count MACs)
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)


def to_2tuple(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``112 -> (112, 112)``; a pair stays a pair (height, width)."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def conv_out(size: int, stride: int, kernel: int = 3, padding: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's floor formula)."""
    return (size + 2 * padding - kernel) // stride + 1


def downsampled_size(
    input_size: int | tuple[int, int], num_stride2: int, kernel: int = 3, padding: int = 1
) -> tuple[int, int]:
    """(H, W) after ``num_stride2`` stride-2 3x3 convolutions with padding 1 (= ceil(n / 2) each).

    The heads flatten (IResNet) or depthwise-pool (MobileFaceNet GDC) the last feature map, so
    their weight shapes depend on it: 112 -> 7x7, 160 -> 10x10, 128 -> 8x8.
    """
    h, w = to_2tuple(input_size)
    for _ in range(num_stride2):
        h, w = conv_out(h, 2, kernel, padding), conv_out(w, 2, kernel, padding)
    if h < 1 or w < 1:
        raise ValueError(f"input_size {input_size} is too small for {num_stride2} stride-2 stages")
    return h, w


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (the MobileNet rule, as timm).

    Never rounds down by more than 10%, so a width multiplier keeps its meaning.
    """
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``; exact at width 1."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if width == 1.0:
        return channels
    return make_divisible(channels * width, divisor)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def batchnorm2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def embedding_batchnorm(embedding_size: int, frozen_scale: bool) -> nn.BatchNorm1d:
    """The BatchNorm1d that ends the face-embedding heads.

    ``frozen_scale=True`` is IResNet's ``features`` layer in arcface_torch: the scale gamma is
    fixed at 1 (``requires_grad=False``) and only the shift beta learns, so the network cannot
    shrink or grow the embedding per dimension through this layer (the margin losses act on the
    direction; MagFace reads the norm). MobileFaceNet's GDC head keeps gamma trainable.
    """
    bn = nn.BatchNorm1d(embedding_size, eps=BN_EPS, momentum=BN_MOMENTUM)
    if frozen_scale:
        nn.init.ones_(bn.weight)
        bn.weight.requires_grad_(False)
    return bn


class ConvBNPReLU(nn.Module):
    """conv -> BN -> PReLU (arcface_torch's MobileFaceNet ``ConvBlock``).

    Submodule indices 0/1/2 match arcface_torch's ``layers`` Sequential so their checkpoints
    load into ours; the wrapper keeps the ``.layers`` prefix of their key names.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        pad = kernel // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, groups=groups, bias=False),
            batchnorm2d(out_ch),
            nn.PReLU(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBN(nn.Module):
    """conv -> BN with no activation (arcface_torch's ``LinearBlock``: a linear bottleneck)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
    ):
        super().__init__()
        k = to_2tuple(kernel)
        pad = (k[0] // 2, k[1] // 2) if padding is None else padding
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad, groups=groups, bias=False),
            batchnorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MixStyle(nn.Module):
    """MixStyle (Zhou et al., ICLR 2021, "Domain Generalization with MixStyle"): in training,
    with probability ``p`` per batch, each image's feature statistics (per-channel mean ``mu``
    and standard deviation ``sig`` over H x W) are blended with those of another image of the
    batch (a random permutation), ``lam ~ Beta(alpha, alpha)`` per image:

        out = (x - mu) / sig * (lam sig + (1 - lam) sig[perm]) + lam mu + (1 - lam) mu[perm]

    with ``sig = sqrt(var + eps)`` and the statistics detached, as the authors' code. It
    synthesises new "styles" (the statistics of early features carry texture and contrast)
    while the content stays. Identity in eval mode and at ``p = 0``; no parameters. Its draws
    use torch's global generator, which training checkpoints, so a resumed run draws the same.
    Hand-written: no well-kept library ships it (timm has none; the authors' module is this
    dozen lines)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if not 0.0 <= p <= 1.0 or alpha <= 0:
            raise ValueError(f"MixStyle p={p} must be in [0, 1] and alpha={alpha} > 0")
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or float(torch.rand(())) >= self.p:
            return x
        n = x.shape[0]
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample((n, 1, 1, 1)).to(x.device, x.dtype)
        perm = torch.randperm(n).to(x.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        return (x - mu) / sig * sig_mix + mu_mix

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}"
