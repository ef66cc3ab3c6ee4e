"""MobileFaceNet as in insightface arcface_torch (``backbones/mobilefacenet.py``, "mbf").

Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile
Devices" (CCBR 2018). The arcface_torch variant (after cavaface) at ``scale=2``:

- stem: conv3x3 stride 2 (3 -> 64*scale) BN PReLU, then a grouped 3x3 conv BN PReLU with 64
  groups (two channels per group at scale 2; the paper has a plain depthwise conv here) when
  ``blocks[0] == 1``, else ``blocks[0]`` residual bottlenecks;
- bottleneck ("DepthWise"): 1x1 expand + BN + PReLU, depthwise 3x3 + BN + PReLU, linear 1x1 +
  BN; residual add when stride 1 and in == out channels;
- three stride-2 bottlenecks each followed by ``blocks[1..3]`` residual ones; the expansion
  (hidden) widths are fixed at 128 / 256 / 512 / 256 independent of ``scale``, as in the
  official code;
- 1x1 conv to 512 + BN + PReLU, then the GDC head: a linear depthwise conv whose kernel is the
  whole 7x7 map, flatten, Linear (no bias) to the embedding, BatchNorm1d (trainable scale).

Module names follow arcface_torch's (``layers.3.layers.0.layers.1.layers.0.weight``,
``conv_sep``, ``features.layers.2``...), so its checkpoints load with ``strict=True``.

``width`` scales every channel count (stem, hidden, 512) by the same factor, rounded so the
group counts still divide the channels. Registered names (measured at 112x112, embedding 512):

==========  ===============  =====  =====  ========  =======  =============================
name        blocks           scale  width  params    GMACs    arcface_torch
==========  ===============  =====  =====  ========  =======  =============================
mbf         (1, 4, 6, 2)     2      1      2.06M     0.438    ~2.06M / 0.45 "GFLOPs"
mbf_large   (2, 8, 12, 4)    4      1      6.32M     1.816    get_mbf_large
mbf_tiny    (1, 2, 2, 1)     2      0.25   0.145M    0.021    (smoke preset)
==========  ===============  =====  =====  ========  =======  =============================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nbfacelib.models.layers import (
    ConvBN,
    ConvBNPReLU,
    downsampled_size,
    embedding_batchnorm,
    float32_head,
    scaled_channels,
)
from nbfacelib.models.registry import register_backbone


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 to ``hidden`` + PReLU, depthwise 3x3 (stride) + PReLU, linear 1x1."""

    def __init__(self, in_ch: int, out_ch: int, hidden: int, stride: int = 1, residual: bool = False):
        super().__init__()
        if residual and (stride != 1 or in_ch != out_ch):
            raise ValueError("a residual bottleneck needs stride 1 and in_ch == out_ch")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNPReLU(in_ch, hidden, kernel=1),
            ConvBNPReLU(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            ConvBN(hidden, out_ch, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual bottlenecks at constant width (may be empty)."""

    def __init__(self, channels: int, num_block: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, hidden, residual=True) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: k x k linear depthwise conv (k = the feature map),
    flatten, dropout, Linear without bias, BatchNorm1d.

    ``layers`` indices 0, 2, 3 match arcface_torch's Sequential (index 1 was its Flatten, which
    has no parameters); dropout lives outside so that the key names stay theirs.
    """

    def __init__(self, channels: int, embedding_size: int, feature_size: tuple[int, int], dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            ConvBN(channels, channels, kernel=feature_size, groups=channels, padding=0),
            nn.Flatten(1),
            nn.Linear(channels, embedding_size, bias=False),
            embedding_batchnorm(embedding_size, frozen_scale=False),
        )
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[1](self.layers[0](x))
        return self.layers[3](self.layers[2](self.dropout(x)))


class MobileFaceNet(nn.Module):
    """MobileFaceNet face backbone (see module docstring).

    Args:
        blocks: residual bottlenecks per stage, four ints (mbf = (1, 4, 6, 2)); ``blocks[0] == 1``
            selects the grouped-conv stem of arcface_torch, other values residual bottlenecks.
        embedding_size, input_size, dropout: as every backbone (``nbfacelib.models``); the GDC
            kernel equals the last map, i.e. ``input_size`` / 16 rounded up.
        scale: multiplier of the stem/stage widths 64 and 128 (arcface_torch ``scale``; 2 = mbf,
            4 = mbf_large). It does not scale the hidden widths, as in the official code.
        width: multiplier of every channel count (including hidden and the 512 before GDC), for
            small variants; exact at 1.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (1, 4, 6, 2),
        embedding_size: int = 512,
        input_size: int | tuple[int, int] = 112,
        dropout: float = 0.0,
        scale: int = 2,
        width: float = 1.0,
    ):
        super().__init__()
        blocks = [int(n) for n in blocks]
        if len(blocks) != 4 or blocks[0] < 1 or min(blocks) < 0:
            raise ValueError(f"MobileFaceNet blocks must be four ints >= 0 (first >= 1), got {blocks}")
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale}")
        self.blocks = blocks
        self.scale = scale
        self.width = width
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_size = downsampled_size(input_size, 4)  # stem + three stride-2 bottlenecks
        unit = scaled_channels(64, width)  # 64 at width 1; every other width is a multiple of it
        c1, c2 = unit * scale, 2 * unit * scale  # 128 / 256 at scale 2
        h1, h2, h3 = 2 * unit, 4 * unit, 8 * unit  # hidden widths 128 / 256 / 512
        last = 8 * unit  # 512
        self.num_features = last

        stem2 = (
            ConvBNPReLU(c1, c1, kernel=3, groups=unit)
            if blocks[0] == 1
            else Residual(c1, blocks[0], hidden=h1)
        )
        self.layers = nn.ModuleList(
            [
                ConvBNPReLU(3, c1, kernel=3, stride=2),
                stem2,
                DepthWise(c1, c1, hidden=h1, stride=2),
                Residual(c1, blocks[1], hidden=h1),
                DepthWise(c1, c2, hidden=h2, stride=2),
                Residual(c2, blocks[2], hidden=h2),
                DepthWise(c2, c2, hidden=h3, stride=2),
                Residual(c2, blocks[3], hidden=h2),
            ]
        )
        self.conv_sep = ConvBNPReLU(c2, last, kernel=1)
        self.features = GDC(last, embedding_size, self.feature_size, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # arcface_torch: Kaiming normal (fan_out, ReLU gain) for conv and Linear weights, BN 1 / 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features, *feature_size): the map the GDC head pools."""
        for layer in self.layers:
            x = layer(x)
        return float32_head(self.conv_sep, x)  # float32 from here on, as arcface_torch

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, embedding_size) embedding, not L2-normalised."""
        return float32_head(self.features, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone
def mobilefacenet(blocks: Sequence[int] = (1, 4, 6, 2), **kw) -> MobileFaceNet:
    """Any depth / width: ``build_backbone("mobilefacenet", blocks=(1, 2, 2, 1), width=0.5)``.

    ``layers`` is accepted as an alias of ``blocks`` so depth sweeps read the same for every family.
    """
    if "layers" in kw:
        blocks = kw.pop("layers")
    return MobileFaceNet(blocks=blocks, **kw)


@register_backbone
def mbf(**kw) -> MobileFaceNet:
    return MobileFaceNet(blocks=(1, 4, 6, 2), scale=2, **kw)


@register_backbone
def mbf_large(**kw) -> MobileFaceNet:
    return MobileFaceNet(blocks=(2, 8, 12, 4), scale=4, **kw)


@register_backbone
def mbf_tiny(width: float = 0.25, **kw) -> MobileFaceNet:
    """Quarter width, blocks (1, 2, 2, 1): the smoke preset's MobileFaceNet."""
    return MobileFaceNet(blocks=(1, 2, 2, 1), scale=2, width=width, **kw)
