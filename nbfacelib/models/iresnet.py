"""IResNet, the "improved" pre-activation ResNet of insightface arcface_torch.

Duta et al., "Improved Residual Networks for Image and Video Recognition" (ICPR 2020), in the
face variant of Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition"
(CVPR 2019) as implemented in insightface ``recognition/arcface_torch/backbones/iresnet.py``:

- stem: conv3x3 stride 1 (3 -> 64, no bias), BN, PReLU -- full 112x112 resolution;
- four stages of 64 / 128 / 256 / 512 channels, each starting with a stride-2 block (the stride
  sits on the block's second conv) whose shortcut is conv1x1 stride 2 + BN;
- block: BN - conv3x3 - BN - PReLU - conv3x3 - BN, added to the shortcut, no activation after
  the add;
- head: BN2d, flatten C*7*7 (at 112x112), dropout (0 by default), Linear to the embedding,
  BatchNorm1d whose scale is frozen at 1.

Module names equal arcface_torch's (``conv1``, ``layer3.13.bn3``, ``fc``, ``features``...), so a
state dict saved by arcface_torch loads with ``strict=True``.

Registered names (parameters and MACs measured by ``nbfacelib.models.complexity`` at 112x112,
embedding 512; insightface's "FLOPs" column is multiply-accumulates, see ``complexity``; the
MACs count convolutions and the FC only, hence slightly under ptflops' figures). In the small
variants most parameters sit in the FC (128*7*7 -> 512 = 3.2M) and most compute in the
full-resolution stem and first block:

==========  ===============  =====  ==========  =========  ================================
name        layers           width  params      GMACs      arcface_torch (params / "GFLOPs")
==========  ===============  =====  ==========  =========  ================================
r18         [2, 2, 2, 2]     1      24.03M      2.61       24.03M / 2.6
r34         [3, 4, 6, 3]     1      34.14M      4.46       34.14M / --
r50         [3, 4, 14, 3]    1      43.59M      6.31       43.59M / 6.3
r100        [3, 13, 30, 3]   1      65.16M      12.09      65.16M / 12.1
r200        [6, 26, 60, 6]   1      118.83M     23.42      118.83M / --
ir_small    [2, 2, 2, 2]     0.25   3.92M       0.170      (cpu preset)
ir_tiny     [1, 1, 1, 1]     0.25   3.52M       0.112      (smoke preset)
iresnet     any (r50)        any    --          --         depth / width sweeps
==========  ===============  =====  ==========  =========  ================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nbfacelib.models.layers import (
    MixStyle,
    batchnorm2d,
    conv1x1,
    conv3x3,
    downsampled_size,
    embedding_batchnorm,
    float32_head,
    scaled_channels,
)
from nbfacelib.models.registry import register_backbone

STAGE_CHANNELS = (64, 128, 256, 512)


class IBasicBlock(nn.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the shortcut; nothing after the add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = batchnorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch)
        self.bn2 = batchnorm2d(out_ch)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, stride)
        self.bn3 = batchnorm2d(out_ch)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet face backbone (see module docstring).

    Args:
        layers: blocks per stage, four ints (r50 = [3, 4, 14, 3]).
        embedding_size: output dimension of ``forward``.
        input_size: square side or (H, W) of the normalised input; sets the flatten size of the
            head (112 -> 7x7, 160 -> 10x10).
        dropout: dropout probability on the flattened feature map before ``fc`` (arcface_torch
            default 0).
        width: channel multiplier on 64/128/256/512 (rounded to multiples of 8; exact at 1).
        zero_init_residual: ``False`` (default, arcface_torch's default too), ``True`` zeroes the
            scale of each block's *last* BN (``bn3``) so every residual branch starts as the
            identity (Goyal et al. 2017, as torchvision). ``"official"`` reproduces
            arcface_torch's flag, which zeroes ``bn2`` instead (the BN before the PReLU): the
            branch also starts at zero, but bn3's scale and conv2 then get no gradient at step 0.
        mix_style: probability per training batch of MixStyle (:class:`~nbfacelib.models.layers.
            MixStyle`, Zhou et al. 2021) after the first two stages, as the paper places it in a
            ResNet (0: off, the default; no parameters, so saved weights load either way).
        mix_style_alpha: MixStyle's Beta(alpha, alpha) concentration (the paper's 0.1).
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        input_size: int | tuple[int, int] = 112,
        dropout: float = 0.0,
        width: float = 1.0,
        zero_init_residual: bool | str = False,
        mix_style: float = 0.0,
        mix_style_alpha: float = 0.1,
    ):
        super().__init__()
        layers = [int(n) for n in layers]
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet layers must be four positive ints, got {layers}")
        if zero_init_residual not in (False, True, "official"):
            raise ValueError(
                f"zero_init_residual must be False, True or 'official', got {zero_init_residual!r}"
            )
        self.layers = layers
        self.width = width
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_size = downsampled_size(input_size, 4)  # four stride-2 stages
        channels = [scaled_channels(c, width) for c in STAGE_CHANNELS]
        self.num_features = channels[-1]  # channels of forward_features' output

        self.conv1 = conv3x3(3, channels[0])
        self.bn1 = batchnorm2d(channels[0])
        self.prelu = nn.PReLU(channels[0])
        in_ch = channels[0]
        for i, (n_blocks, out_ch) in enumerate(zip(layers, channels), start=1):
            self.add_module(f"layer{i}", self._make_stage(in_ch, out_ch, n_blocks))
            in_ch = out_ch

        self.mix_style = MixStyle(mix_style, mix_style_alpha) if mix_style else nn.Identity()

        h, w = self.feature_size
        self.bn2 = batchnorm2d(in_ch)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_ch * h * w, embedding_size)
        self.features = embedding_batchnorm(embedding_size, frozen_scale=True)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_stage(in_ch: int, out_ch: int, n_blocks: int) -> nn.Sequential:
        # Every stage halves the resolution, so its first block always needs a projection shortcut.
        downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride=2), batchnorm2d(out_ch))
        blocks = [IBasicBlock(in_ch, out_ch, stride=2, downsample=downsample)]
        blocks += [IBasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool | str) -> None:
        # arcface_torch: conv weights N(0, 0.1) (not Kaiming; every conv is followed by a BN, so
        # the scale is normalised away), BN scale 1 / shift 0, Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            target = "bn2" if zero_init_residual == "official" else "bn3"
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(getattr(m, target).weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last stage's map (B, num_features, *feature_size), before the head."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.mix_style(self.layer1(x))
        x = self.mix_style(self.layer2(x))
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, embedding_size) embedding, not L2-normalised."""
        x = torch.flatten(self.bn2(x), 1)  # logical (C, H, W) order, also for channels-last input
        return float32_head(self._embedding_head, self.dropout(x))

    def _embedding_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Each factory fixes ``layers``; pass ``layers=`` to the generic "iresnet" to sweep depth.


@register_backbone
def iresnet(layers: Sequence[int] = (3, 4, 14, 3), **kw) -> IResNet:
    """Any depth / width: ``build_backbone("iresnet", layers=[1, 1, 1, 1], width=0.25)``."""
    return IResNet(layers=layers, **kw)


@register_backbone
def r18(**kw) -> IResNet:
    return IResNet(layers=[2, 2, 2, 2], **kw)


@register_backbone
def r34(**kw) -> IResNet:
    return IResNet(layers=[3, 4, 6, 3], **kw)


@register_backbone
def r50(**kw) -> IResNet:
    return IResNet(layers=[3, 4, 14, 3], **kw)


@register_backbone
def r100(**kw) -> IResNet:
    return IResNet(layers=[3, 13, 30, 3], **kw)


@register_backbone
def r200(**kw) -> IResNet:
    return IResNet(layers=[6, 26, 60, 6], **kw)


@register_backbone
def ir_small(width: float = 0.25, **kw) -> IResNet:
    """r18's depth at quarter width (16/32/64/128 channels): the cpu preset's backbone."""
    return IResNet(layers=[2, 2, 2, 2], width=width, **kw)


@register_backbone
def ir_tiny(width: float = 0.25, **kw) -> IResNet:
    """One block per stage at quarter width (16/32/64/128 channels): the smoke preset's backbone."""
    return IResNet(layers=[1, 1, 1, 1], width=width, **kw)
