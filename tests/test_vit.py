"""TransFace's face ViT (models/vit.py): the official layout and parameter counts, the SE patch
weights and weighted tokens in the output, the masking (paper vs official 0.1), bad input.

The generic backbone contract (shape, gradients, determinism) runs over ``vit_face_*`` in
tests/test_models.py; the large models are only built on the meta device here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nbfacelib.models import build_backbone, list_backbones
from nbfacelib.models.complexity import count_parameters
from nbfacelib.models.vit import FaceViT


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, **kw)


def official_parameter_count(dim: int, depth: int, embedding: int = 512, patches: int = 144, patch: int = 9):
    """The official ``VisionTransformer`` (backbones/vit.py, REFERENCE.md) counted by hand:
    patch conv with bias, positions, mask token, ``depth`` blocks (2 LayerNorms, qkv without
    bias, proj with bias, MLP 4x with biases), final LayerNorm, SE (two bias-free Linears) and
    the head (Linear, BN(eps 2e-5), Linear, BN)."""
    d, p = dim, patches
    block = 2 * (2 * d) + 3 * d * d + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return (
        (3 * patch * patch * d + d)  # patch embedding
        + p * d  # positions
        + d  # mask token
        + depth * block
        + 2 * d  # final norm
        + (p * d * p + p * p)  # SE
        + (p * d * d + 2 * d + d * embedding + 2 * embedding)  # head
    )


# TransFace S / B / L (REFERENCE.md): dim / depth / heads 512/12/8, 512/24/8, 768/24/8
OFFICIAL = {"vit_face_s": (512, 12), "vit_face_b": (512, 24), "vit_face_l": (768, 24)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_count_equals_the_official_definition(name):
    dim, depth = OFFICIAL[name]
    # a masking model has the official mask token: exactly the official count
    assert count_parameters(meta(name, mask_ratio=0.1)) == official_parameter_count(dim, depth)
    # without masking there is no (unused) mask token
    assert count_parameters(meta(name)) == official_parameter_count(dim, depth) - dim


def test_face_layout():
    model = meta("vit_face_s")
    assert model.grid_size == (12, 12) and model.num_patches == 144 and model.patch_size == 9
    assert model.pos_embed.shape == (1, 144, 512) and not hasattr(model, "cls_token")
    blocks = list(model.blocks)
    assert len(blocks) == 12 and blocks[0].attn.num_heads == 8
    assert blocks[0].attn.qkv.bias is None and blocks[0].attn.proj.bias is not None
    assert isinstance(blocks[0].mlp.act, nn.ReLU6) and blocks[0].mlp.fc1.out_features == 4 * 512
    assert blocks[-1].drop_path1.drop_prob == pytest.approx(0.05)
    assert isinstance(blocks[0].drop_path1, nn.Identity)  # rate 0 for the first block
    se = model.senet
    assert (se[0].in_features, se[0].out_features, se[2].out_features) == (144 * 512, 144, 144)
    assert se[0].bias is None and isinstance(se[3], nn.Sigmoid)
    head = model.feature
    assert head[0].in_features == 144 * 512 and head[2].out_features == 512 and head[1].eps == 2e-5
    assert meta("vit_face_l").num_features == 768 and len(meta("vit_face_b").blocks) == 24
    assert {"vit_face_tiny", "vit_face_tiny112"} <= set(list_backbones("vit_face_*"))


def test_output_patch_weights_and_tokens():
    torch.manual_seed(0)
    model = build_backbone("vit_face_tiny", embedding_size=32).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = model(x)
        tokens = model.tokens(x)
        gates = model.senet(tokens.flatten(1))
    assert out.embedding.shape == (3, 32) and out.patch_weights.shape == (3, 64)
    torch.testing.assert_close(out.patch_weights.sum(1), torch.ones(3))
    torch.testing.assert_close(out.patch_weights, gates.softmax(1))
    # the tokens the head reads are each multiplied by its SE gate
    torch.testing.assert_close(out.features["tokens"], tokens * gates[:, :, None])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), out.embedding)


@pytest.mark.parametrize("official, ratio, masked", [(False, 0.05, 8), (True, 0.05, 15), (True, 0.0, 0)])
def test_masking_ratio_paper_and_official(official, ratio, masked):
    """144 tokens: 5% masks int(144 * 0.05) -> 136 kept, 8 masked; the official code masks
    0.1 whatever the ratio (129 kept, 15 masked); no masking in eval mode."""
    torch.manual_seed(0)
    model = build_backbone("vit_face_tiny112", mask_ratio=ratio, official=official)
    assert model.effective_mask_ratio() == (0.1 if official and ratio else ratio)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        model.train()
        tokens = model.tokens(x)
        if masked:
            is_mask = (tokens == model.mask_token).all(-1)
            assert is_mask.sum(1).tolist() == [masked, masked]
            assert not torch.equal(is_mask[0], is_mask[1])  # drawn per sample
        model.eval()
        if model.mask_token is not None:
            assert not (model.tokens(x) == model.mask_token).all(-1).any()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="cannot be divided into 9x9 patches"):
        FaceViT(input_size=8, patch_size=9, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="not divisible by heads"):
        FaceViT(dim=30, depth=1, heads=4)
    with pytest.raises(ValueError, match="mask_ratio"):
        FaceViT(dim=16, depth=1, heads=2, mask_ratio=1.0)
    model = build_backbone("vit_face_tiny")
    with pytest.raises(ValueError, match=r"input of 32x32 px, but this model was built for 64x64"):
        model(torch.zeros(2, 3, 32, 32))


def test_autocast_keeps_se_and_head_in_float32():
    model = build_backbone("vit_face_tiny", embedding_size=16).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.embedding.dtype == out.patch_weights.dtype == out.features["tokens"].dtype == torch.float32
