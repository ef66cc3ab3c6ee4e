"""Swin Transformer as a FaceNet backbone (document 001), built on timm's ``SwinTransformer``.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" (ICCV
2021), used as the embedding network of Schroff et al., "FaceNet" (CVPR 2015) in the way
document 001 (``oaifaye/facenet-swim-transformer``) does:

- 160x160 input, patch 4 (a 40x40 token grid), window 5, so the four stages' grids 40 / 20 / 10
  / 5 are all whole numbers of windows; Swin-T widths 96 / 192 / 384 / 768, depths (2, 2, 6, 2),
  heads (3, 6, 12, 24); shifted windows (shift = window // 2) in every second block, except
  where a stage's grid is a single window (timm drops the shift there, as the original code);
- head: average over the last 5x5 tokens (after timm's final LayerNorm), Linear 768 -> 128.
  FaceNet's L2 normalisation of the 128-d output is done where the formula needs it (the
  triplet objective, the evaluation), as for every backbone here: ``forward`` returns the
  embedding *not* normalised (the contract of :mod:`nbfacelib.models`).

``forward_features`` returns the last stage as a (B, 768, 5, 5) map (channels first, like the
CNN families), ``forward_head`` pools it and projects. The transformer blocks, relative
position bias, window partition and the shifted-window attention mask are timm's: the
notebook draws its pictures from ``model.swin.layers[s].blocks[b].attn_mask`` and
``window_partition``, the model's own buffers and code.

An input size that the windows do not divide (e.g. 112: grids 28 / 14 / 7 / 3.5) is refused
at build time with the stage and grid that fail, rather than padded silently.

Registered names (embedding 128; params and MACs from ``nbfacelib.models.complexity``):

===============  ====================================  =====  ========  =======
name             widths / depths / heads                input  params    GMACs
===============  ====================================  =====  ========  =======
swin_face_t      96 / (2, 2, 6, 2) / (3, 6, 12, 24)    160    27.61M    2.256
swin_face_tiny   32 / (2, 2, 2) / (1, 2, 4)            80     0.583M    0.034
===============  ====================================  =====  ========  =======

timm's ``swin_tiny_patch4_window7_224`` has 28.29M parameters (its 1000-class head 0.77M of
them); ``swin_face_t`` is the same trunk with a 768 -> 128 head (``tests/test_swin.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nbfacelib.models.layers import float32_head, to_2tuple
from nbfacelib.models.registry import register_backbone


def check_swin_input(input_size, patch_size: int, window_size: int, num_stages: int) -> list[int]:
    """The token grid side of every stage; ``ValueError`` naming the first stage whose grid is
    not a whole number of windows (Swin's window partition needs it; timm would pad)."""
    h, w = to_2tuple(input_size)
    if h != w:
        raise ValueError(f"swin_face: input_size must be square, got {input_size}")
    if h % patch_size:
        raise ValueError(f"swin_face: input_size {h} is not a multiple of the patch size {patch_size}")
    grids = []
    side = h // patch_size
    for stage in range(num_stages):
        if stage:
            if side % 2:
                raise ValueError(
                    f"swin_face: input_size {h}: stage {stage + 1} would halve an odd {side}x{side} "
                    f"token grid (patch merging needs an even grid)"
                )
            side //= 2
        if side % window_size and side > window_size:
            raise ValueError(
                f"swin_face: input_size {h}: stage {stage + 1}'s {side}x{side} token grid is not a "
                f"whole number of {window_size}x{window_size} windows; use e.g. input_size "
                f"{patch_size * window_size * 2 ** (num_stages - 1)} (a multiple of it)"
            )
        grids.append(side)
    return grids


class SwinFace(nn.Module):
    """timm Swin trunk + mean pool + Linear to the face embedding (see module docstring).

    Args:
        embedding_size: output dimension (FaceNet: 128).
        input_size: square input side in pixels (160); every stage's grid must be a whole number
            of windows.
        dropout: dropout before the embedding Linear.
        embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio: Swin's architecture
            (Swin-T: 96, (2, 2, 6, 2), (3, 6, 12, 24), window 5 here, patch 4, 4.0).
        drop_path_rate: stochastic depth of the deepest block (timm's default 0.1).
    """

    def __init__(
        self,
        embedding_size: int = 128,
        input_size: int = 160,
        dropout: float = 0.0,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 5,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
    ):
        from timm.models.swin_transformer import SwinTransformer

        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"swin_face: depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length"
            )
        self.grids = check_swin_input(input_size, patch_size, window_size, len(depths))
        self.embedding_size = int(embedding_size)
        self.input_size = input_size
        self.window_size = window_size
        self.patch_size = patch_size
        self.swin = SwinTransformer(
            img_size=to_2tuple(input_size),
            patch_size=patch_size,
            num_classes=0,  # no classifier: our head follows
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        self.num_features = int(self.swin.num_features)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, self.embedding_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last stage's tokens as a (B, num_features, h, w) map."""
        return self.swin.forward_features(x).permute(0, 3, 1, 2)  # timm gives NHWC

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, embedding_size), not L2-normalised (FaceNet's L2 layer is the
        objective's / evaluation's)."""
        return float32_head(self.fc, self.dropout(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone
def swin_face_t(**kw) -> SwinFace:
    """Swin-T trunk, window 5 at 160x160, 768 -> 128 (document 001)."""
    return SwinFace(**kw)


@register_backbone
def swin_face_tiny(
    embed_dim: int = 32, depths=(2, 2, 2), num_heads=(1, 2, 4), input_size: int = 80, **kw
) -> SwinFace:
    """Three stages at width 32 on an 80x80 input (grids 20 / 10 / 5, window 5): the smoke
    and cpu presets' Swin. Shifted windows still act in stages 1-2 (stage 3 is one window)."""
    return SwinFace(embed_dim=embed_dim, depths=depths, num_heads=num_heads, input_size=input_size, **kw)
