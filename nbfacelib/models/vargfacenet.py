"""VarGFaceNet: variable group convolutions for a light face backbone.

Yan et al., "VarGFaceNet: An Efficient Variable Group Convolutional Neural Network for
Lightweight Face Recognition" (ICCVW 2019), on VarGNet (Zhang et al., 2019). What the paper
(and survey 002) describes:

- **variable group convolution**: a k x k conv whose *group size* S is fixed (S = 8 channels per
  group) and whose number of groups follows the input (C_in / S): wide layers get more groups,
  so compute per layer stays balanced (Cal = k^2 H W C_in C_out / groups); each is followed by a
  pointwise conv, itself grouped with the same S (VarGNet's "pointwise group conv");
- **normal block**: two (variable group conv C -> 2C, pointwise 2C -> C) pairs, SE, residual
  add, PReLU;
- **down-sampling block**: two stride-2 branches (C -> 2C) summed, a third pair on the sum, plus
  a stride-2 shortcut pair, added, PReLU;
- **head setting**: the stem is a 3x3 conv with stride 1 (not 2 as in VarGNet), then a
  stride-2 residual block, so the first stage still sees 56x56 at a 112 input;
- stages: down + 2 normal (80 ch, 28x28), down + 6 normal (160, 14x14), down + 3 normal (320,
  7x7);
- **embedding block**: 1x1 conv 320 -> 1024 (BN, PReLU), a 7x7 variable group conv with no
  padding (the "global" conv, 1024 -> 1024, groups of 8), a pointwise group conv 1024 -> 512,
  then FC 512 -> embedding and BatchNorm1d (no global average pooling: the position-dependent
  7x7 weights keep where a feature lies on the face).

Where a detail is not in the paper the choice is named: PReLU as the activation everywhere
(the paper's, where survey 002's code has ReLU6), a standard SE (ReLU, sigmoid; the survey's
code ends its SE with ReLU6 and notes it should be a sigmoid), and the global conv's kernel
equal to the last feature map (``input_size`` / 16), so other input sizes keep the design.

Registered names (embedding 512, 112x112; params / MACs by ``nbfacelib.models.complexity``;
MobileFaceNet ``mbf`` for comparison 2.06M / 0.438 G):

=================  =====================  ==================  ========  =======
name               channels (head..s4)    normal blocks       params    GMACs
=================  =====================  ==================  ========  =======
vargfacenet        40 / 80 / 160 / 320    (2, 6, 3)           2.157M    0.213
vargfacenet_small  16 / 32 / 64 / 128     (1, 2, 1)           0.406M    0.054
=================  =====================  ==================  ========  =======
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nbfacelib.models.layers import batchnorm2d, downsampled_size, embedding_batchnorm, float32_head
from nbfacelib.models.registry import register_backbone

GROUP_SIZE = 8  # S: channels per group of every variable group conv (the paper's setting)


def _groups(channels: int, group_size: int) -> int:
    if channels % group_size:
        raise ValueError(f"VarGFaceNet: {channels} channels are not a whole number of groups of {group_size}")
    return channels // group_size


class VarGConv(nn.Sequential):
    """k x k variable group conv (groups = C_in / S) + BN (+ PReLU)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, group_size: int, act: bool = True):
        groups = _groups(in_ch, group_size)
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            batchnorm2d(out_ch),
            *([nn.PReLU(out_ch)] if act else []),
        )


class PointGroupConv(nn.Sequential):
    """1x1 group conv with the same group size S (VarGNet's pointwise group conv) + BN (+ PReLU)."""

    def __init__(self, in_ch: int, out_ch: int, group_size: int, act: bool):
        groups = _groups(in_ch, group_size)
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1, groups=groups, bias=False),
            batchnorm2d(out_ch),
            *([nn.PReLU(out_ch)] if act else []),
        )


def varg_pair(in_ch: int, mid: int, out_ch: int, stride: int, group_size: int, act: bool) -> nn.Sequential:
    """variable group conv 3x3 (in -> mid, stride) + pointwise group conv (mid -> out)."""
    return nn.Sequential(
        VarGConv(in_ch, mid, 3, stride, group_size), PointGroupConv(mid, out_ch, group_size, act)
    )


class SqueezeExcite(nn.Module):
    """Channel gates: global average, FC C -> C/4, ReLU, FC -> C, sigmoid (Hu et al., 2018)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class NormalBlock(nn.Module):
    """Two (C -> 2C -> C) variable-group pairs, SE, residual add, PReLU."""

    def __init__(self, channels: int, group_size: int = GROUP_SIZE):
        super().__init__()
        self.body = nn.Sequential(
            varg_pair(channels, 2 * channels, channels, 1, group_size, act=True),
            varg_pair(channels, 2 * channels, channels, 1, group_size, act=False),
        )
        self.se = SqueezeExcite(channels)
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x + self.se(self.body(x)))


class DownSampling(nn.Module):
    """Two stride-2 branches C -> 2C summed, a (2C -> 4C -> 2C) pair on the sum, plus a stride-2
    shortcut pair; added, PReLU."""

    def __init__(self, in_ch: int, group_size: int = GROUP_SIZE):
        super().__init__()
        out = 2 * in_ch
        self.branch1 = varg_pair(in_ch, out, out, 2, group_size, act=True)
        self.branch2 = varg_pair(in_ch, out, out, 2, group_size, act=True)
        self.fuse = varg_pair(out, 2 * out, out, 1, group_size, act=False)
        self.shortcut = varg_pair(in_ch, out, out, 2, group_size, act=False)
        self.prelu = nn.PReLU(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.shortcut(x) + self.fuse(self.branch1(x) + self.branch2(x)))


class HeadSetting(nn.Module):
    """The paper's head: after a stride-1 stem, one stride-2 residual block at constant width."""

    def __init__(self, channels: int, group_size: int = GROUP_SIZE):
        super().__init__()
        self.block = nn.Sequential(
            varg_pair(channels, channels, channels, 2, group_size, act=True),
            varg_pair(channels, channels, channels, 1, group_size, act=False),
        )
        self.shortcut = varg_pair(channels, channels, channels, 2, group_size, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class EmbeddingBlock(nn.Module):
    """1x1 conv C -> 1024 (BN PReLU), k x k variable group conv without padding over the whole
    map (1024 -> 1024), pointwise group conv 1024 -> 512 (BN), flatten, dropout, FC, BatchNorm1d."""

    def __init__(
        self,
        in_ch: int,
        embedding_size: int,
        feature_size: tuple[int, int],
        dropout: float,
        last_channels: int = 1024,
        group_size: int = GROUP_SIZE,
    ):
        super().__init__()
        mid = last_channels // 2
        self.expand = nn.Sequential(
            nn.Conv2d(in_ch, last_channels, 1, bias=False),
            batchnorm2d(last_channels),
            nn.PReLU(last_channels),
        )
        # no BN right after the global conv: a linear pointwise conv and its BN follow, whose
        # batch statistics would cancel that BN's shift (its bias would never learn)
        self.global_conv = nn.Conv2d(
            last_channels,
            last_channels,
            feature_size,
            padding=0,
            groups=_groups(last_channels, group_size),
            bias=False,
        )
        self.pointwise = nn.Sequential(
            nn.Conv2d(last_channels, mid, 1, groups=_groups(last_channels, group_size), bias=False),
            batchnorm2d(mid),
        )
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(mid, embedding_size, bias=False)
        self.bn = embedding_batchnorm(embedding_size, frozen_scale=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.global_conv(self.expand(x))).flatten(1)
        return self.bn(self.fc(self.dropout(x)))


class VarGFaceNet(nn.Module):
    """VarGFaceNet (see module docstring).

    Args:
        embedding_size, input_size, dropout: as every backbone (``nbfacelib.models``).
        channels: widths of the head and the three stages (40, 80, 160, 320); each stage doubles
            the previous one (the down-sampling block doubles its input).
        blocks: normal blocks after each stage's down-sampling block ((2, 6, 3)).
        last_channels: width of the embedding block's expansion (1024).
        group_size: S, channels per group of the variable group convs (8).
    """

    def __init__(
        self,
        embedding_size: int = 512,
        input_size: int | tuple[int, int] = 112,
        dropout: float = 0.0,
        channels: Sequence[int] = (40, 80, 160, 320),
        blocks: Sequence[int] = (2, 6, 3),
        last_channels: int = 1024,
        group_size: int = GROUP_SIZE,
    ):
        super().__init__()
        channels, blocks = [int(c) for c in channels], [int(b) for b in blocks]
        if (
            len(channels) != 4
            or len(blocks) != 3
            or any(c2 != 2 * c1 for c1, c2 in zip(channels, channels[1:]))
        ):
            raise ValueError(
                f"VarGFaceNet: channels must be four widths each twice the last (e.g. 40, 80, 160, 320) "
                f"and blocks three counts, got channels={channels} blocks={blocks}"
            )
        self.embedding_size = int(embedding_size)
        self.input_size = input_size
        self.feature_size = downsampled_size(input_size, 4)  # head + three down-sampling blocks
        self.num_features = channels[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, padding=1, bias=False),
            batchnorm2d(channels[0]),
            nn.PReLU(channels[0]),
        )
        self.head = HeadSetting(channels[0], group_size)
        self.stages = nn.Sequential(
            *[
                nn.Sequential(
                    DownSampling(c, group_size), *[NormalBlock(2 * c, group_size) for _ in range(n)]
                )
                for c, n in zip(channels[:3], blocks)
            ]
        )
        self.embedding = EmbeddingBlock(
            channels[-1], self.embedding_size, self.feature_size, dropout, last_channels, group_size
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features, *feature_size): the map the embedding block reads."""
        return self.stages(self.head(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, embedding_size), not L2-normalised (float32 under autocast)."""
        return float32_head(self.embedding, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone
def vargfacenet(**kw) -> VarGFaceNet:
    """The paper's VarGFaceNet: 40 / 80 / 160 / 320 channels, normal blocks (2, 6, 3)."""
    return VarGFaceNet(**kw)


@register_backbone
def vargfacenet_small(
    channels: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 2, 1), **kw
) -> VarGFaceNet:
    """Two-fifths width, (1, 2, 1) normal blocks, 256-wide embedding block: the cpu/smoke student."""
    return VarGFaceNet(channels=channels, blocks=blocks, last_channels=kw.pop("last_channels", 256), **kw)
