"""The face Vision Transformer of TransFace (Dan et al., "TransFace: Calibrating Transformer
Training for Face Recognition from a Data-Centric Perspective", ICCV 2023), on timm's blocks.

The face layout (REFERENCE.md, official ``backbones/vit.py``): a 112x112 input cut into 9x9
patches (a 12x12 grid of 144 tokens; the last 4 pixel rows and columns are never seen), no
class token, learned positions, pre-norm blocks with MLP ratio 4 and ReLU6, stochastic depth
rising linearly to 0.05, a final LayerNorm, then

- an SE block over the tokens: ``g = sigmoid(W2 relu(W1 vec(T)))`` with
  ``W1: (P*D -> P)``, ``W2: (P -> P)``, no biases; each token is multiplied by its gate,
  ``T~_p = g_p T_p``, and the **patch weights** are ``softmax(g)`` (what DPAP ranks patches by);
- the head ``Linear(P*D -> D) BN Linear(D -> E) BN`` on ``vec(T~)``.

``forward`` returns a :class:`~nbfacelib.models.output.BackboneOutput`: the embedding, the
patch weights and ``features["tokens"]``, the SE-weighted tokens (B, P, D) whose per-token
standard deviation over channels is EHSM's "entropy" (:mod:`nbfacelib.losses.transface`). So
DPAP and EHSM need no second model and no second forward of their own.

Random token masking (``mask_ratio``): in training, a random ``mask_ratio`` of the tokens skips
the blocks and is put back after the final norm as a learned mask token. The official code
creates the model with a ``mask_ratio`` but calls its masking function without it, so any
positive ratio masks the function's default 0.1 of the tokens: ``official=True`` reproduces
that (REFERENCE.md "Official bug"); the default masks the ratio asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nbfacelib.models.layers import float32_head, to_2tuple
from nbfacelib.models.output import BackboneOutput
from nbfacelib.models.registry import register_backbone

# the mask ratio the official ``random_masking`` uses whatever ratio the model was built with
OFFICIAL_MASK_RATIO = 0.1
# the head's BatchNorm eps in the official definition (not PyTorch's 1e-5)
HEAD_BN_EPS = 2e-5


class FaceViT(nn.Module):
    """TransFace's face ViT (module docstring). ``dim`` / ``depth`` / ``heads``: token width,
    number of blocks and attention heads; ``patch_size`` in pixels; ``drop_path``: the last
    block's stochastic-depth rate (0 for the first, linear in between); ``dropout``: dropout on
    the flattened SE-weighted tokens before the head (the family keyword every backbone takes);
    ``mask_ratio``: fraction of tokens masked in training; ``official``: mask 0.1 whenever
    ``mask_ratio > 0`` (the official code's behaviour)."""

    def __init__(
        self,
        *,
        embedding_size: int = 512,
        input_size: int | tuple[int, int] = 112,
        patch_size: int = 9,
        dim: int = 512,
        depth: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.05,
        dropout: float = 0.0,
        mask_ratio: float = 0.0,
        official: bool = False,
    ):
        # timm imported here, not at module import: `import nbfacelib.models` (every CLI call)
        # should not pay for it
        from timm.layers import PatchEmbed, trunc_normal_
        from timm.models.vision_transformer import Block

        super().__init__()
        h, w = to_2tuple(input_size)
        if patch_size < 1 or patch_size > min(h, w):
            raise ValueError(
                f"FaceViT: input_size {input_size} cannot be divided into {patch_size}x{patch_size} "
                f"patches (patch_size must be between 1 and the input side)"
            )
        if dim % heads:
            raise ValueError(f"FaceViT: dim={dim} is not divisible by heads={heads}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"FaceViT: mask_ratio must be in [0, 1), got {mask_ratio}")
        self.embedding_size = int(embedding_size)
        self.input_size = input_size if isinstance(input_size, int) else (h, w)
        self.num_features = int(dim)
        self.patch_size = int(patch_size)
        self.grid_size = (h // patch_size, w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.mask_ratio = float(mask_ratio)
        self.official = bool(official)

        # timm's patch embedding: a stride-p convolution; a remainder of the input (112 = 12*9
        # + 4) is left out, as in the official code
        self.patch_embed = PatchEmbed(
            img_size=(h, w), patch_size=patch_size, in_chans=3, embed_dim=dim, strict_img_size=True
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        # only a masking model has a mask token (an unused parameter would get no gradient)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if mask_ratio > 0 else None
        # linear in block index (timm's and the official rule); plain floats, so that building
        # under `torch.device("meta")` works
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.Sequential(
            *(
                Block(
                    dim,
                    heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=False,
                    drop_path=rates[i],
                    act_layer=nn.ReLU6,
                    norm_layer=nn.LayerNorm,
                )
                for i in range(depth)
            )
        )
        self.norm = nn.LayerNorm(dim)
        flat = self.num_patches * dim
        self.dropout = nn.Dropout(dropout)
        self.feature = nn.Sequential(
            nn.Linear(flat, dim, bias=False),
            nn.BatchNorm1d(dim, eps=HEAD_BN_EPS),
            nn.Linear(dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=HEAD_BN_EPS),
        )
        trunc_normal_(self.pos_embed, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)
        # built after the init pass, as in the official code: the SE keeps PyTorch's default init
        self.senet = nn.Sequential(
            nn.Linear(flat, self.num_patches, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(self.num_patches, self.num_patches, bias=False),
            nn.Sigmoid(),
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        from timm.layers import trunc_normal_

        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------------- tokens
    def effective_mask_ratio(self) -> float:
        """The fraction of tokens masked in training (official: 0.1 whenever asked for any)."""
        if self.mask_ratio <= 0:
            return 0.0
        return OFFICIAL_MASK_RATIO if self.official else self.mask_ratio

    def tokens(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> normalised tokens (B, P, D); in training with masking, the masked
        tokens skip the blocks and come back as the mask token after the norm."""
        side = tuple(x.shape[-2:])
        if side != tuple(self.patch_embed.img_size):
            raise ValueError(
                f"FaceViT: input of {side[0]}x{side[1]} px, but this model was built for "
                f"{self.patch_embed.img_size[0]}x{self.patch_embed.img_size[1]} (input_size)"
            )
        x = self.patch_embed(x) + self.pos_embed
        ratio = self.effective_mask_ratio() if self.training else 0.0
        keep = int(self.num_patches * (1 - ratio))
        if keep < self.num_patches:
            b, p, d = x.shape
            order = torch.rand(b, p, device=x.device).argsort(dim=1)  # per-sample shuffle
            restore = order.argsort(dim=1)
            x = x.gather(1, order[:, :keep, None].expand(-1, -1, d))
            x = self.norm(self.blocks(x))
            x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, p - keep, d)], dim=1)
            return x.gather(1, restore[:, :, None].expand(-1, -1, d))
        return self.norm(self.blocks(x))

    def _se(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        gates = self.senet(tokens.flatten(1))  # (B, P) in (0, 1)
        return gates, tokens * gates.unsqueeze(-1)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> the SE-weighted tokens (B, P, D), the input of the head."""
        return float32_head(lambda t: self._se(t)[1], self.tokens(x))

    def forward_head(self, weighted_tokens: Tensor) -> Tensor:
        """SE-weighted tokens (B, P, D) -> (B, embedding_size) embedding, not L2-normalised."""
        return float32_head(self.feature, self.dropout(weighted_tokens.flatten(1)))

    def forward(self, x: Tensor) -> BackboneOutput:
        tokens = self.tokens(x)
        # the SE and the head in float32 even under autocast: the softmax over 144 gates and the
        # embedding are what DPAP, EHSM and the margin read
        gates, weighted = float32_head(self._se, tokens)
        embedding = self.forward_head(weighted)
        return BackboneOutput(
            embedding=embedding,
            patch_weights=gates.softmax(dim=1),
            features={"tokens": weighted},
        )


def _face_vit(dim: int, depth: int, heads: int, **kw) -> FaceViT:
    return FaceViT(dim=dim, depth=depth, heads=heads, **kw)


@register_backbone
def vit_face_s(**kw) -> FaceViT:
    """TransFace-S: dim 512, 12 blocks, 8 heads (112 px, 9 px patches)."""
    return _face_vit(512, 12, 8, **kw)


@register_backbone
def vit_face_b(**kw) -> FaceViT:
    """TransFace-B: dim 512, 24 blocks, 8 heads."""
    return _face_vit(512, 24, 8, **kw)


@register_backbone
def vit_face_l(**kw) -> FaceViT:
    """TransFace-L: dim 768, 24 blocks, 8 heads."""
    return _face_vit(768, 24, 8, **kw)


@register_backbone
def vit_face_tiny(input_size: int | tuple[int, int] = 64, patch_size: int = 8, **kw) -> FaceViT:
    """The smoke / cpu presets' face ViT: dim 128, 4 blocks, 4 heads, 64 px in 8 px patches
    (an 8x8 grid of 64 tokens)."""
    return _face_vit(128, 4, 4, input_size=input_size, patch_size=patch_size, **kw)


@register_backbone
def vit_face_tiny112(**kw) -> FaceViT:
    """dim 128, 4 blocks, 4 heads on the face layout itself (112 px, 9 px patches, 144 tokens)."""
    return _face_vit(128, 4, 4, **kw)
