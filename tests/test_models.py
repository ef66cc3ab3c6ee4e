"""Backbone registry, IResNet / MobileFaceNet architecture facts, and the shared contract.

Large models are only built on the meta device (shapes, no memory, no arithmetic); forward and
backward run on the small variants. The generic contract test is parametrised over
``list_backbones()``, so families registered later (ViT, Swin, VarGFaceNet) are checked too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nbfacelib.models import BACKBONES, build_backbone, list_backbones, register_backbone
from nbfacelib.models.complexity import count_flops, count_macs, count_parameters, summarize
from nbfacelib.models.iresnet import IBasicBlock, IResNet
from nbfacelib.models.mobilefacenet import MobileFaceNet
from nbfacelib.models.output import as_output, model_output

# Forward + backward on CPU only below this many MACs per image (mbf is 0.44 G).
SMALL_MACS = 0.5e9


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, **kw)


def side(model: nn.Module) -> tuple[int, int]:
    s = model.input_size
    return (s, s) if isinstance(s, int) else tuple(s)


def images(model: nn.Module, batch: int = 2, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, *side(model), generator=g) * 2 - 1).to(device)


def _macs_on_meta(name: str) -> float:
    try:
        return count_macs(meta(name))
    except Exception:  # a family that cannot live on meta: count on the CPU
        return count_macs(build_backbone(name))


_MACS = {name: _macs_on_meta(name) for name in list_backbones()}
SMALL = [n for n in list_backbones() if _MACS[n] <= SMALL_MACS]


# --------------------------------------------------------------------------- registry


def test_required_names_are_registered():
    names = set(list_backbones())
    required = {"r18", "r34", "r50", "r100", "r200", "mbf", "ir_tiny", "ir_small", "mbf_tiny"}
    assert required <= names
    assert {"iresnet", "mobilefacenet"} <= names
    assert list_backbones("r*") == ["r100", "r18", "r200", "r34", "r50"]
    assert list_backbones("*tiny") == ["ir_tiny", "mbf_tiny", "swin_face_tiny", "vit_face_tiny"]


def test_unknown_name_and_keyword_are_reported():
    with pytest.raises(ValueError, match=r"unknown backbone 'r51'.*r50"):
        build_backbone("r51")
    with pytest.raises(TypeError, match="depth"):
        build_backbone("ir_tiny", depth=3)
    # Named depths are fixed; sweeping depth goes through the family name.
    with pytest.raises(TypeError, match="layers"):
        meta("r50", layers=[1, 1, 1, 1])


def test_register_backbone_is_one_decorator(monkeypatch):
    monkeypatch.setattr(BACKBONES, "_factories", dict(BACKBONES._factories))

    class Toy(nn.Module):
        def __init__(self, embedding_size=512, input_size=112, dropout=0.0):
            super().__init__()
            self.embedding_size, self.input_size, self.num_features = embedding_size, input_size, 3
            self.fc = nn.Linear(3, embedding_size)

        def forward_features(self, x):
            return x.mean((2, 3))

        def forward(self, x):
            return self.fc(self.forward_features(x))

    @register_backbone(name="toy_net")
    def toy(**kw):
        return Toy(**kw)

    assert "toy_net" in list_backbones()
    model = build_backbone("toy_net", embedding_size=7, input_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(toy, name="toy_net")

    # A factory whose model breaks the contract fails at build time, naming what is missing.
    register_backbone(lambda **kw: nn.Linear(2, 2), name="broken")
    with pytest.raises(TypeError, match=r"'broken'.*embedding_size"):
        build_backbone("broken")


# --------------------------------------------------------------------------- sizes vs REFERENCE.md

# insightface arcface_torch numbers (REFERENCE.md): parameters in millions, "FLOPs" = GMACs.
REF_PARAMS_M = {"r18": 24.03, "r34": 34.14, "r50": 43.59, "r100": 65.16, "r200": 118.83, "mbf": 2.06}
REF_GMACS = {"r18": 2.6, "r50": 6.3, "r100": 12.1, "mbf": 0.45}


@pytest.mark.parametrize("name", sorted(REF_PARAMS_M))
def test_parameter_count_matches_insightface(name):
    params = count_parameters(meta(name)) / 1e6
    # The brief allows 2% (3% for mbf); the architecture matches to the rounding of the reference.
    assert params == pytest.approx(REF_PARAMS_M[name], rel=0.002)


@pytest.mark.parametrize("name", sorted(REF_GMACS))
def test_macs_match_insightface_flops(name):
    assert _MACS[name] / 1e9 == pytest.approx(REF_GMACS[name], rel=0.05)


def test_iresnet_head_shapes_follow_arcface_torch():
    r50 = meta("r50")
    assert r50.fc.in_features == 512 * 7 * 7 and r50.fc.out_features == 512
    assert [len(getattr(r50, f"layer{i}")) for i in range(1, 5)] == [3, 4, 14, 3]
    # The embedding BN's scale is frozen at 1 (counted by insightface, not trainable).
    assert not r50.features.weight.requires_grad and r50.features.bias.requires_grad
    assert count_parameters(r50) - count_parameters(r50, trainable_only=True) == 512
    # Stride 2 sits on the second conv of each stage's first block.
    block = r50.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].kernel_size == (1, 1) and block.downsample[0].stride == (2, 2)
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in r50.modules() if isinstance(m, nn.BatchNorm2d))


def test_state_dict_keys_are_arcface_torchs():
    """Official checkpoints load with strict=True only if the key names and shapes are theirs."""
    sd = meta("r100").state_dict()
    assert sd["layer3.29.bn3.running_var"].shape == (256,)
    assert sd["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert sd["layer4.2.prelu.weight"].shape == (512,)
    assert sd["fc.weight"].shape == (512, 25088) and sd["features.weight"].shape == (512,)
    assert {"conv1.weight", "bn1.running_mean", "prelu.weight", "bn2.weight"} <= set(sd)

    sd = meta("mbf").state_dict()
    assert sd["layers.0.layers.0.weight"].shape == (128, 3, 3, 3)
    assert sd["layers.1.layers.0.weight"].shape == (128, 2, 3, 3)  # 64 groups, 2 channels each
    assert sd["layers.4.layers.1.layers.0.weight"].shape == (256, 1, 3, 3)
    assert sd["layers.5.layers.5.layers.2.layers.1.running_mean"].shape == (256,)
    assert sd["layers.7.layers.1.layers.0.layers.0.weight"].shape == (256, 256, 1, 1)
    assert sd["conv_sep.layers.2.weight"].shape == (512,)
    assert sd["features.layers.0.layers.0.weight"].shape == (512, 1, 7, 7)
    assert sd["features.layers.2.weight"].shape == (512, 512)
    assert sd["features.layers.3.weight"].shape == (512,)
    assert not any(k.startswith("features.dropout") for k in sd)


def test_count_flops_by_hand():
    """FlopCounterMode counts 2 per multiply-accumulate of convs and matmuls only."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.PReLU(4))
    model.append(nn.Flatten()).append(nn.Linear(4 * 8 * 8, 5))
    macs = 4 * 3 * 9 * 8 * 8 + 256 * 5
    assert count_macs(model, input_size=8) == macs
    assert count_flops(model, input_size=8) == 2 * macs
    assert count_parameters(model) == 4 * 27 + 4 + 4 + 4 + 256 * 5 + 5
    assert model.training  # restored after the eval-mode count


def test_counts_on_meta_equal_counts_on_cpu():
    real = build_backbone("ir_tiny")
    assert count_parameters(real) == count_parameters(meta("ir_tiny"))
    assert count_flops(real) == count_flops(meta("ir_tiny")) == 2 * _MACS["ir_tiny"]
    summary = summarize(meta("ir_tiny", input_size=160))  # counted at the model's own input size
    assert summary["gflops"] == pytest.approx(2 * summary["gmacs"])
    assert summary["params_m"] - summary["trainable_params_m"] == pytest.approx(512e-6)


# --------------------------------------------------------------------------- input sizes and variants


def test_head_size_follows_input_size():
    assert meta("r50", input_size=160).fc.in_features == 512 * 10 * 10
    assert meta("r18", input_size=120).feature_size == (8, 8)  # ceil-halving 120 -> 60, 30, 15, 8
    assert meta("mbf", input_size=160).features.layers[0].layers[0].kernel_size == (10, 10)
    assert meta("mbf", input_size=(128, 96)).feature_size == (8, 6)
    for name in ("ir_tiny", "mbf_tiny"):
        model = build_backbone(name, input_size=160, embedding_size=128).eval()
        x = torch.rand(2, 3, 160, 160) * 2 - 1
        assert model.forward_features(x).shape == (2, model.num_features, 10, 10)
        assert model(x).shape == (2, 128)
        with pytest.raises(RuntimeError):  # the head is sized for 160, not 112
            model(torch.zeros(2, 3, 112, 112))


def test_width_and_layers_overrides():
    sweep = meta("iresnet", layers=[1, 1, 1, 1], width=0.25)
    assert count_parameters(sweep) == count_parameters(meta("ir_tiny"))
    stage_widths = [getattr(sweep, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)]
    assert [sweep.conv1.out_channels, *stage_widths] == [16, 16, 32, 64, 128]
    deep = meta("iresnet", layers=[2, 3, 4, 2], width=0.25)
    assert [len(getattr(deep, f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 3, 4, 2]
    assert count_parameters(meta("iresnet")) == count_parameters(meta("r50"))
    mb = meta("mobilefacenet", layers=(1, 1, 1, 1), width=0.5)
    assert mb.blocks == [1, 1, 1, 1] and mb.num_features == 256
    assert count_parameters(meta("mobilefacenet")) == count_parameters(meta("mbf"))
    with pytest.raises(ValueError, match="four positive"):
        IResNet(layers=[1, 1, 1])
    with pytest.raises(ValueError, match="width"):
        IResNet(layers=[1, 1, 1, 1], width=0)


@pytest.mark.parametrize("mode, zeroed, kept", [(True, "bn3", "bn2"), ("official", "bn2", "bn3")])
def test_zero_init_residual(mode, zeroed, kept):
    model = build_backbone("ir_tiny", zero_init_residual=mode).eval()
    blocks = [m for m in model.modules() if isinstance(m, IBasicBlock)]
    assert all(
        (getattr(b, zeroed).weight == 0).all() and (getattr(b, kept).weight == 1).all() for b in blocks
    )
    # Either way every residual branch starts at zero: a block returns its shortcut.
    x = torch.randn(2, 32, 28, 28)
    block = model.layer3[0]
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.downsample(x))


def test_insightface_initialisation():
    model = build_backbone("ir_tiny")
    w = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert w.mean().abs() < 0.01 and w.std().item() == pytest.approx(0.1, rel=0.05)  # N(0, 0.1)
    mb = build_backbone("mbf_tiny")
    conv = mb.conv_sep.layers[0]  # Kaiming normal, fan_out, ReLU gain: std sqrt(2 / out_ch)
    assert conv.weight.detach().std().item() == pytest.approx((2 / conv.out_channels) ** 0.5, rel=0.15)


def test_dropout_acts_in_training_only():
    model = build_backbone("mbf_tiny", dropout=0.5)
    x = images(model)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("name", ["ir_tiny", "mbf_tiny"])
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    x = images(model)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the shared contract


@pytest.mark.parametrize("name", list_backbones())
def test_contract_on_meta(name):
    """Every backbone, large ones included: attributes and output shapes (no arithmetic)."""
    model = meta(name).eval()
    assert isinstance(model.embedding_size, int) and hasattr(model, "num_features")
    x = torch.zeros(2, 3, *side(model), device="meta")
    assert as_output(model(x)).embedding.shape == (2, model.embedding_size)
    feats = model.forward_features(x)
    assert feats.shape[0] == 2
    if feats.ndim == 4:
        assert feats.shape[1] == model.num_features
    # every backbone can be scored by its flattened trunk features, and by its embedding
    assert model_output(model, "trunk")(x).shape == (2, feats[0].numel())
    assert model_output(model, "embedding")(x).shape == (2, model.embedding_size)
    # The keywords every family shares.
    other = meta(name, embedding_size=96, input_size=model.input_size, dropout=0.1).eval()
    assert as_output(other(x)).embedding.shape == (2, 96) and other.embedding_size == 96


@pytest.mark.parametrize("name", SMALL)
def test_contract_forward_backward(name):
    """Small backbones for real: shape, finiteness, every trainable parameter learns, eval is
    deterministic, forward = forward_head(forward_features)."""
    torch.manual_seed(0)
    model = build_backbone(name)
    x = images(model)
    model.train()  # batch 2: BatchNorm needs more than one sample per channel
    rich = as_output(model(x))  # a BackboneOutput's other outputs (PFE's variance) learn too
    out = rich.embedding
    assert out.shape == (2, model.embedding_size)
    assert torch.isfinite(out).all()
    target = torch.randn_like(out)
    loss = ((out - target) ** 2).mean()
    if rich.log_sigma2 is not None:
        loss = loss + (rich.log_sigma2 - torch.randn_like(rich.log_sigma2)).square().mean()
    loss.backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        a, b = as_output(model(x)).embedding, as_output(model(x)).embedding
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        feats = model.forward_features(x)
        torch.testing.assert_close(model_output(model, "trunk")(x), feats.flatten(1), rtol=0, atol=0)
        torch.testing.assert_close(model_output(model, "embedding")(x), a, rtol=0, atol=0)
        with pytest.raises(ValueError, match="unknown model output 'pooled'"):
            model_output(model, "pooled")
        if isinstance(model, (IResNet, MobileFaceNet)):
            assert feats.shape == (2, model.num_features, *model.feature_size)
            assert model.feature_size == (7, 7)
        if hasattr(model, "forward_head"):
            torch.testing.assert_close(model.forward_head(feats), a)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ir_tiny", "mbf"])
def test_cuda_channels_last_bf16(name):
    """On a GPU the engine's configuration (channels-last, bf16 autocast) runs and stays close to fp32."""
    torch.manual_seed(0)
    model = build_backbone(name).cuda().to(memory_format=torch.channels_last).eval()
    x = images(model, batch=4, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x)
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=1)
    assert (cos > 0.99).all()


@pytest.mark.parametrize("name, head", [("ir_tiny", "fc"), ("mbf_tiny", "features")])
def test_embedding_head_runs_in_float32_under_autocast(name, head):
    """arcface_torch runs the backbone's embedding head (IResNet fc + features, MobileFaceNet
    conv_sep + GDC) outside its autocast, in float32; so do we (CPU bf16 autocast here)."""
    torch.manual_seed(0)
    model = build_backbone(name, embedding_size=64).eval()
    x = images(model, batch=2)
    dtypes = {}
    module = getattr(model, head)
    module.register_forward_hook(lambda m, inp, out: dtypes.update(input=inp[0].dtype, output=out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert dtypes == {"input": torch.float32, "output": torch.float32}
    assert low.dtype == torch.float32
    with torch.no_grad():  # without autocast nothing changes: a float64 model stays float64
        assert model.double()(x.double()).dtype == torch.float64


def test_mix_style_equals_a_per_image_loop():
    """MixStyle (Zhou et al. 2021) against an independent loop in float64 over the same draws:
    each image normalised by its own channel statistics and given the blend of its and its
    partner's; identity in eval mode and when the batch is not drawn."""
    import numpy as np

    from nbfacelib.models.layers import MixStyle

    x = torch.randn(6, 4, 5, 5) * 3 + 1
    mix = MixStyle(p=1.0, alpha=0.1).train()
    torch.manual_seed(7)
    got = mix(x)
    torch.manual_seed(7)  # the same draws, in the module's order
    torch.rand(())
    beta = torch.distributions.Beta(torch.tensor(0.1), torch.tensor(0.1))
    lam = beta.sample((6, 1, 1, 1)).numpy().ravel().astype(np.float64)
    perm = torch.randperm(6).numpy()
    xs = x.double().numpy()
    for i in range(6):
        j = perm[i]
        for c in range(4):
            a, b = xs[i, c], xs[j, c]
            mu_a, mu_b = a.mean(), b.mean()
            sd_a = np.sqrt(a.var(ddof=1) + 1e-6)  # torch's var is the unbiased one, as the authors'
            sd_b = np.sqrt(b.var(ddof=1) + 1e-6)
            want = (
                (a - mu_a) / sd_a * (lam[i] * sd_a + (1 - lam[i]) * sd_b)
                + lam[i] * mu_a
                + (1 - lam[i]) * mu_b
            )
            np.testing.assert_allclose(got[i, c].double().numpy(), want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, x)  # it changed the batch
    assert torch.equal(mix.eval()(x), x)
    assert torch.equal(MixStyle(p=0.0).train()(x), x)
    with pytest.raises(ValueError, match="p=1.5"):
        MixStyle(p=1.5)
    # in the backbone: training draws, evaluation does not; the state dict is that of the plain net
    net = build_backbone("ir_tiny", embedding_size=16, input_size=32, mix_style=1.0)
    plain = build_backbone("ir_tiny", embedding_size=16, input_size=32)
    assert net.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(net.state_dict())
    net.eval(), plain.eval()
    img = torch.randn(4, 3, 32, 32)
    assert torch.equal(net(img), plain(img))
    net.train(), plain.train()
    torch.manual_seed(0)
    assert not torch.allclose(net(img), plain(img))
