"""FaceNet-Swin (timm trunk) and VarGFaceNet: architecture facts, sizes, bad input.

The shared backbone contract (shapes, gradients, determinism) runs over every registered name in
``tests/test_models.py``; here are the facts specific to these two families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nbfacelib.models import build_backbone
from nbfacelib.models.complexity import count_macs, count_parameters
from nbfacelib.models.vargfacenet import DownSampling, NormalBlock, VarGFaceNet


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, **kw)


def test_swin_face_t_is_document_001s_swin():
    model = meta("swin_face_t")
    assert model.input_size == 160 and model.embedding_size == 128 and model.num_features == 768
    assert model.grids == [40, 20, 10, 5]  # patch 4 at 160; every grid a whole number of 5x5 windows
    assert [len(stage.blocks) for stage in model.swin.layers] == [2, 2, 6, 2]
    assert [stage.blocks[0].attn.num_heads for stage in model.swin.layers] == [3, 6, 12, 24]
    assert model.fc.in_features == 768 and model.fc.out_features == 128
    # shifted windows in every second block, except the last stage (a single 5x5 window)
    shifts = [[tuple(b.shift_size) for b in stage.blocks] for stage in model.swin.layers]
    assert shifts[0] == [(0, 0), (2, 2)] and shifts[2][1::2] == [(2, 2)] * 3
    assert shifts[3] == [(0, 0), (0, 0)]


def test_swin_face_t_parameters_against_timm_swin_tiny():
    """Same trunk as timm's swin_tiny_patch4_window7_224: the only differences are the relative
    position tables ((2w-1)^2 rows per head: 81 at window 5, 169 at 7) and the head."""
    import timm

    ours = meta("swin_face_t")
    with torch.device("meta"):
        ref = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0)
    head_blocks = sum(len(s.blocks) * s.blocks[0].attn.num_heads for s in ours.swin.layers)
    assert head_blocks == 2 * 3 + 2 * 6 + 6 * 12 + 2 * 24
    table_diff = head_blocks * (169 - 81)
    assert count_parameters(ours.swin) == count_parameters(ref) - table_diff
    assert count_parameters(ours) == count_parameters(ours.swin) + 768 * 128 + 128
    assert count_parameters(ours) / 1e6 == pytest.approx(27.61, abs=0.01)  # timm swin_tiny: 28.29M
    assert count_macs(ours) / 1e9 == pytest.approx(2.256, rel=0.01)


def test_shifted_window_mask_comes_from_timm_buffers():
    model = build_backbone("swin_face_tiny")
    block = model.swin.layers[0].blocks[1]  # 20x20 grid, window 5, shift 2
    mask = block.attn_mask
    assert mask.shape == (16, 25, 25)  # (20 / 5)^2 windows of 25 tokens
    # windows away from the wrapped border see one region (no mask), border windows several
    assert (mask[0] == 0).all()
    assert (mask[-1] < 0).any() and (mask[-1].diagonal() == 0).all()
    assert model.swin.layers[0].blocks[0].attn_mask is None  # unshifted block: no mask


@pytest.mark.parametrize(
    "name, size, message",
    [
        (
            "swin_face_t",
            112,
            r"input_size 112: stage 1's 28x28 token grid is not a whole number of 5x5 windows",
        ),
        ("swin_face_t", 150, r"input_size 150 is not a multiple of the patch size 4"),
        ("swin_face_t", 200, r"input_size 200: stage 3 would halve an odd 25x25 token grid"),
        ("swin_face_tiny", 60, r"input_size 60: stage 2 would halve an odd 15x15"),
    ],
)
def test_swin_input_size_the_windows_do_not_divide(name, size, message):
    with pytest.raises(ValueError, match=message):
        meta(name, input_size=size)


def test_swin_face_tiny_runs_and_rejects_other_sizes():
    torch.manual_seed(0)
    model = build_backbone("swin_face_tiny", embedding_size=64).eval()
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == (2, 64)
        assert model.forward_features(x).shape == (2, 128, 5, 5)
    with pytest.raises(AssertionError):  # timm's strict input size
        model(torch.zeros(1, 3, 160, 160))


def test_vargfacenet_structure():
    model = meta("vargfacenet")
    assert model.feature_size == (7, 7) and model.num_features == 320
    normal = [sum(isinstance(m, NormalBlock) for m in stage) for stage in model.stages]
    assert normal == [2, 6, 3] and all(isinstance(stage[0], DownSampling) for stage in model.stages)
    assert model.stem[0].stride == (1, 1)  # head setting: stride-1 stem, the head downsamples
    assert model.head.block[0][0][0].stride == (2, 2)
    # every grouped conv has the paper's group size S = 8 (channels per group)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped and all(m.in_channels // m.groups == 8 for m in grouped)
    emb = model.embedding
    assert emb.expand[0].out_channels == 1024 and emb.global_conv.kernel_size == (7, 7)
    assert emb.global_conv.padding == (0, 0) and emb.pointwise[0].out_channels == 512
    assert emb.fc.in_features == 512


def test_vargfacenet_against_mobilefacenet():
    """Params and MACs at 112x112, embedding 512 (the notebook's table reads the same counts)."""
    varg, mbf = meta("vargfacenet"), meta("mbf")
    assert count_parameters(varg) / 1e6 == pytest.approx(2.157, abs=0.005)
    assert count_macs(varg) / 1e9 == pytest.approx(0.213, abs=0.005)
    assert count_macs(varg) < count_macs(mbf)  # mbf: 2.06M, 0.438 GMACs
    small = meta("vargfacenet_small")
    assert count_parameters(small) < count_parameters(varg) / 4


def test_vargfacenet_bad_widths_and_sizes():
    with pytest.raises(ValueError, match="twice the last"):
        VarGFaceNet(channels=(40, 80, 120, 320))
    with pytest.raises(ValueError, match="whole number of groups of 8"):
        VarGFaceNet(channels=(12, 24, 48, 96))
    model = build_backbone("vargfacenet_small", input_size=64).eval()
    assert model.feature_size == (4, 4)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 512)
