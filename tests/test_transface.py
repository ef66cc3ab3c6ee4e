"""TransFace's DPAP (augment/dpap.py) and EHSM objective (losses/transface.py), the weighted
Partial FC loss they share, and the AOFD-style occlusion objective (losses/aofd.py).

Each is checked against a per-image / per-sample loop written here, with the same random
draws (DPAP: numpy's FFT on 0..255 HWC patches, as the official loop)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nbfacelib.augment.dpap import DominantPatchAmplitudePerturbation, DPAPDraws, patch_grid
from nbfacelib.losses import Batch, build_margin, build_objective
from nbfacelib.losses.aofd import fill_windows, occluder_windows
from nbfacelib.losses.partial_fc import PartialFC
from nbfacelib.losses.transface import ehsm_weights
from nbfacelib.models import build_backbone
from nbfacelib.models.output import BackboneOutput, as_output


# ------------------------------------------------------------------------------------ DPAP
def dpap_loop(images: torch.Tensor, weights: torch.Tensor, draws: DPAPDraws, k: int, official: bool):
    """The official per-image loop: top-k patches by weight, each patch's amplitude mixed with
    the drawn random patch's (numpy FFT per channel on 0..255 HWC), phase kept, clipped. Every
    random patch is read from the unperturbed batch (the batched rule)."""
    pix = ((images.double().numpy() + 1.0) * 127.5).transpose(0, 2, 3, 1)  # B, H, W, C
    out = pix.copy()
    b, p = weights.shape
    side = math.isqrt(p)
    ps = pix.shape[1] // side
    for i in range(b):
        if not bool(draws.perturb[i]):
            continue
        top = np.argsort(-weights[i].numpy(), kind="stable")[:k]
        for j, idx in enumerate(top):
            r, c = divmod(int(idx), side)
            src = pix[i, ps * r : ps * (r + 1), ps * c : ps * (c + 1), :]
            rr, rc = divmod(int(draws.source_patch[i, j]), side)
            rnd = pix[int(draws.source_image[i, j]), ps * rr : ps * (rr + 1), ps * rc : ps * (rc + 1), :]
            f1, f2 = np.fft.fft2(src, axes=(0, 1)), np.fft.fft2(rnd, axes=(0, 1))
            lam = float(draws.lam[i, j])
            amp = lam * np.abs(f2) + (1 - lam) * np.abs(f1)
            new = np.clip(np.real(np.fft.ifft2(amp * np.exp(1j * np.angle(f1)), axes=(0, 1))), 0, 255)
            out[i, ps * r : ps * (r + 1), ps * c : ps * (c + 1), :] = np.floor(new) if official else new
    return torch.from_numpy(out.transpose(0, 3, 1, 2) / 127.5 - 1.0)


def _faces(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g).float() / 127.5 - 1.0


@pytest.mark.parametrize("dft", ["matmul", "fft"])
@pytest.mark.parametrize("size, patches", [(112, 144), (64, 64)])
def test_dpap_batched_equals_the_per_image_loop(size, patches, dft):
    images = _faces(6, size)
    weights = torch.rand(6, patches, generator=torch.Generator().manual_seed(1)).softmax(1)
    dpap = DominantPatchAmplitudePerturbation(p=0.5, k=7, dft=dft)
    draws = dpap.draw(6, patches, "cpu", torch.Generator().manual_seed(2))
    draws.perturb[:2] = torch.tensor([True, False])  # both cases, whatever the draw
    out = dpap.apply(images, weights, draws)
    torch.testing.assert_close(out.double(), dpap_loop(images, weights, draws, 7, False), atol=2e-5, rtol=0)
    # images not drawn are bit-identical; drawn ones change only inside their 7 top patches
    assert torch.equal(out[~draws.perturb], images[~draws.perturb])
    changed = (out != images).any(1)  # (B, H, W)
    rows, cols, ps = patch_grid(images, patches)
    cell = (torch.arange(size) // ps).clamp(max=rows)  # rows * cols + ... : off-grid pixels
    index = cell[:, None] * cols + cell[None, :]
    on_grid = (torch.arange(size) < rows * ps)[:, None] & (torch.arange(size) < cols * ps)[None, :]
    for i in torch.nonzero(draws.perturb).flatten().tolist():
        top = set(weights[i].topk(7).indices.tolist())
        allowed = on_grid & torch.isin(index, torch.tensor(sorted(top)))
        assert not (changed[i] & ~allowed).any()
        assert changed[i].any()
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6  # clipped to the pixel range


def test_dpap_in_place_channels_last_and_strided_batches_agree():
    """The storage-row gather / scatter: a channels-last batch, a non-dense view and ``inplace``
    give the NCHW copy's pixels, and in place writes into the very batch it was given."""
    images = _faces(5, 64)
    weights = torch.rand(5, 64, generator=torch.Generator().manual_seed(4))
    dpap = DominantPatchAmplitudePerturbation(p=0.6, k=5)
    draws = dpap.draw(5, 64, "cpu", torch.Generator().manual_seed(5))
    draws.perturb[0] = True
    expected = dpap.apply(images, weights, draws)
    assert not torch.equal(expected, images)
    cl = images.contiguous(memory_format=torch.channels_last)
    out = dpap.apply(cl, weights, draws)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    wide = torch.cat([images, images], 3)[..., :64]  # a strided, non-dense view
    torch.testing.assert_close(dpap.apply(wide, weights, draws), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="inplace=True needs a dense"):
        dpap.apply(wide, weights, draws, inplace=True)
    for batch in (images.clone(), cl.clone()):
        same = dpap.apply(batch, weights, draws, inplace=True)
        assert same is batch
        torch.testing.assert_close(batch, expected, atol=1e-6, rtol=0)
    # an offset view into a larger storage: only its own pixels are touched
    big = torch.cat([images, images])
    second = big[5:]
    torch.testing.assert_close(dpap.apply(second, weights, draws), expected, atol=1e-6, rtol=0)
    assert torch.equal(second, images)  # a copy leaves the view as it was
    dpap.apply(second, weights, draws, inplace=True)
    assert torch.equal(big[:5], images)
    torch.testing.assert_close(second, expected, atol=1e-6, rtol=0)


def test_dpap_in_place_reads_the_unperturbed_batch():
    """In place, a random patch that is also a dominant patch of another drawn image is read
    as it was before any write: the result is the copy's."""
    images = _faces(4, 64)
    weights = torch.rand(4, 64, generator=torch.Generator().manual_seed(8))
    dpap = DominantPatchAmplitudePerturbation(p=1.0, k=4)
    draws = dpap.draw(4, 64, "cpu", torch.Generator().manual_seed(9))
    # images 1-3 mix in image 0's dominant patches, which DPAP rewrites
    draws.source_image[1:] = 0
    draws.source_patch[1:] = weights[0].topk(4).indices
    expected = dpap.apply(images, weights, draws)
    batch = images.clone()
    assert dpap.apply(batch, weights, draws, inplace=True) is batch
    torch.testing.assert_close(batch, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dft", ["matmul", "fft"])
def test_dpap_zero_amplitude_takes_the_mixed_amplitude_with_phase_zero(dft):
    """A black source patch has |F| = 0 everywhere (angle 0, as np.angle): its new spectrum
    is lam |F_rnd| itself, as in the loop."""
    images = _faces(4, 64)
    images[:2] = -1.0  # pixel 0: every patch of these images is black
    weights = torch.rand(4, 64, generator=torch.Generator().manual_seed(6))
    dpap = DominantPatchAmplitudePerturbation(p=1.0, k=4, dft=dft)
    draws = dpap.draw(4, 64, "cpu", torch.Generator().manual_seed(7))
    draws.source_image[:2] = 3  # mix a non-black patch into the black ones
    out = dpap.apply(images, weights, draws)
    assert not torch.equal(out[:2], images[:2])
    torch.testing.assert_close(out.double(), dpap_loop(images, weights, draws, 4, False), atol=2e-5, rtol=0)


def test_dpap_official_truncates_to_integer_pixels():
    images = _faces(4, 64)
    weights = torch.rand(4, 64, generator=torch.Generator().manual_seed(1))
    paper, official = (DominantPatchAmplitudePerturbation(p=1.0, k=5, official=o) for o in (False, True))
    draws = paper.draw(4, 64, "cpu", torch.Generator().manual_seed(3))
    a, b = paper.apply(images, weights, draws), official.apply(images, weights, draws)
    pix_a, pix_b = (a.double() + 1) * 127.5, (b.double() + 1) * 127.5
    assert (pix_b - pix_b.round()).abs().max() < 1e-3  # whole pixel values
    assert not torch.equal(a, b)
    # float32 FFT round-off may cross an integer: all but a handful equal floor(paper)
    assert ((pix_b - (pix_a + 1e-4).floor()).abs() > 1e-3).float().mean() < 1e-3
    loop = dpap_loop(images, weights, draws, 5, True)
    assert ((b.double() - loop).abs() > 1e-4).float().mean() < 1e-3


def test_dpap_lam_zero_is_identity_and_p_is_the_rate():
    images = _faces(3, 64)
    weights = torch.rand(3, 64)
    dpap = DominantPatchAmplitudePerturbation(p=1.0, k=7, alpha=0.0)  # lam = 0: own amplitude
    out, draws = dpap(images, weights)
    assert draws.perturb.all() and (draws.lam == 0).all()
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    rate = DominantPatchAmplitudePerturbation(p=0.2).draw(20000, 144, "cpu", torch.Generator().manual_seed(0))
    assert rate.perturb.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert 0 <= rate.lam.min() and rate.lam.max() < 1 and rate.source_patch.max() == 143


def test_dpap_bad_input_is_named():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        DominantPatchAmplitudePerturbation(p=1.5)
    with pytest.raises(ValueError, match="dft must be 'auto', 'matmul' or 'fft', got 'dct'"):
        DominantPatchAmplitudePerturbation(dft="dct")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got -0.1"):
        DominantPatchAmplitudePerturbation(p=-0.1)
    with pytest.raises(ValueError, match="k=20 is larger than the number of patches \\(16\\)"):
        DominantPatchAmplitudePerturbation(k=20)(_faces(2, 32), torch.rand(2, 16))
    with pytest.raises(ValueError, match="cannot be divided into the 10x10 grid"):
        DominantPatchAmplitudePerturbation()(_faces(2, 8), torch.rand(2, 100))
    with pytest.raises(ValueError, match="square grid"):
        DominantPatchAmplitudePerturbation()(_faces(2, 64), torch.rand(2, 60))
    with pytest.raises(ValueError, match="patch weights \\(B, P\\)"):
        DominantPatchAmplitudePerturbation()(_faces(2, 64), torch.rand(3, 64))


# ------------------------------------------------------------------------------------ EHSM
@pytest.mark.parametrize("entropy", ["std", "gaussian"])
def test_ehsm_weights_equal_a_per_sample_loop(entropy):
    tokens = torch.randn(4, 9, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    w, e = ehsm_weights(tokens, entropy, gamma=0.5)
    for i in range(4):
        per_patch = []
        for p in range(9):
            v = tokens[i, p].tolist()
            mean = sum(v) / len(v)
            std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
            per_patch.append(std if entropy == "std" else math.log(std) + 0.5 + 0.5 * math.log(2 * math.pi))
        ent = 0.5 * sum(per_patch) / 9
        assert e[i].item() == pytest.approx(ent, rel=1e-5)
        assert w[i].item() == pytest.approx(1 + math.exp(-ent), rel=1e-5)
    with pytest.raises(ValueError, match="entropy must be one of"):
        ehsm_weights(tokens, "shannon")


def test_partial_fc_sample_weights_equal_a_per_sample_loop():
    torch.manual_seed(0)
    pfc = PartialFC(build_margin("arcface", s=16.0, m=0.5), 8, 5)
    emb = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    pfc = pfc.double()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    w = torch.rand(6, dtype=torch.float64) + 0.5
    loss = pfc(emb, labels, sample_weights=w)
    (g,) = torch.autograd.grad(loss, emb)
    # independent: each sample's own (unweighted) loss through a batch of one
    emb2 = emb.detach().clone().requires_grad_(True)
    per = torch.stack([pfc(emb2[i : i + 1], labels[i : i + 1]) for i in range(6)])
    ref = (w * per).mean()
    (g_ref,) = torch.autograd.grad(ref, emb2)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(
        pfc(emb, labels, sample_weights=torch.ones(6, dtype=torch.float64)), pfc(emb, labels)
    )
    with pytest.raises(ValueError, match=r"sample_weights must be \(6,\)"):
        pfc(emb, labels, sample_weights=torch.ones(5))


def _vit_batch(objective_kwargs, b=8, classes=4):
    torch.manual_seed(0)
    model = build_backbone("vit_face_tiny", embedding_size=16)
    obj = build_objective("transface", embedding_size=16, num_classes=classes, s=16.0, **objective_kwargs)
    images = _faces(b, 64)
    labels = torch.arange(b) % classes
    return model, obj, Batch(images=images, labels=labels, step=0, model=model)


def test_transface_loss_is_ehsm_weighted_arcface():
    model, obj, batch = _vit_batch({"dpap": False})
    model.eval()
    out = as_output(model(batch.images))
    res = obj(out, batch.labels, batch)
    w, _ = ehsm_weights(out.features["tokens"])
    assert torch.equal(res.weights, w)
    # the same centres with EHSM off: plain ArcFace, and with weights: mean(w * ce)
    plain = obj.pfc(out.embedding, batch.labels)
    per = torch.stack([obj.pfc(out.embedding[i : i + 1], batch.labels[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(res.loss, (w * per).mean())
    obj.ehsm = False
    torch.testing.assert_close(obj(out, batch.labels, batch).loss, plain)
    assert set(res.logs) >= {"ehsm_weight", "ehsm_entropy", "embedding_norm"}


def test_transface_prepare_runs_dpap_in_training_only():
    model, obj, batch = _vit_batch({"p": 1.0})
    obj.train()
    with torch.no_grad():
        x = obj.prepare(batch.images, batch.labels, batch)
    assert x.shape == batch.images.shape and not torch.equal(x, batch.images)
    res = obj(as_output(model(x)), batch.labels, batch)
    assert res.logs["dpap_fraction"] == 1.0
    obj.eval()
    with torch.no_grad():
        assert obj.prepare(batch.images, batch.labels, batch) is batch.images
    # a backbone without patch weights / tokens is named in the error
    cnn = build_backbone("ir_tiny", embedding_size=16, input_size=64)
    obj.train()
    with pytest.raises(ValueError, match="DPAP needs patch weights.*vit_face"):
        obj.prepare(batch.images, batch.labels, Batch(batch.images, batch.labels, 0, cnn))
    with pytest.raises(ValueError, match="EHSM needs the backbone's SE-weighted tokens"):
        obj(BackboneOutput(embedding=torch.randn(8, 16)), batch.labels, batch)
    with pytest.raises(ValueError, match="entropy must be one of"):
        build_objective("transface", embedding_size=16, num_classes=4, entropy="renyi")


def test_fit_trains_transface_on_a_face_vit(tmp_path):
    from nbfacelib.train import fit
    from nbfacelib.train.config import TrainConfig

    cfg = TrainConfig.from_preset(
        "smoke",
        out=str(tmp_path),
        backbone="vit_face_tiny",
        input_size=64,
        embedding_size=32,
        loss="transface",
        loss_kwargs={"p": 0.5, "s": 16.0},
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.1,
        data="synthetic:ids=8,per_id=4,seed=0",
        val=[],
        steps=3,
        batch_size=16,
        warmup_steps=0,
        log_every=1,
        ckpt_every=0,
        progress=False,
        device="cpu",
    )
    result = fit(cfg)
    assert math.isfinite(result["final_loss"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ehsm_weight"] > 1 for r in rows) and all(0 <= r["dpap_fraction"] <= 1 for r in rows)


# ------------------------------------------------------------------------------------ AOFD
def test_occluder_window_is_the_first_order_worst_one():
    g = torch.Generator().manual_seed(0)
    images, grad = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.randn(3, 3, 16, 16, generator=g)
    corners, gain = occluder_windows(images, grad, size=5, stride=2)
    for i in range(3):
        best, where = -math.inf, None
        for top in range(0, 16 - 5 + 1, 2):
            for left in range(0, 16 - 5 + 1, 2):
                v = float(
                    (
                        grad[i, :, top : top + 5, left : left + 5]
                        * (0 - images[i, :, top : top + 5, left : left + 5])
                    ).sum()
                )
                if v > best:
                    best, where = v, [top, left]
        assert corners[i].tolist() == where and gain[i].item() == pytest.approx(best, rel=1e-4)
    filled = fill_windows(images, corners, 5, torch.tensor([True, False, True]))
    assert torch.equal(filled[1], images[1])
    top, left = corners[0].tolist()
    assert (filled[0, :, top : top + 5, left : left + 5] == 0).all()
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[top : top + 5, left : left + 5] = False
    assert torch.equal(filled[0][:, outside], images[0][:, outside])


def test_aofd_prepare_occludes_without_touching_parameter_gradients():
    torch.manual_seed(0)
    model = build_backbone("ir_tiny", embedding_size=16, input_size=32)
    obj = build_objective("aofd", embedding_size=16, num_classes=4, p=1.0, size=0.25, s=16.0)
    images, labels = _faces(8, 32), torch.arange(8) % 4
    batch = Batch(images=images, labels=labels, step=0, model=model)
    obj.train()
    with torch.no_grad():
        x = obj.prepare(images, labels, batch)
    assert all(p.grad is None for p in [*model.parameters(), *obj.parameters()])
    occluded = (x == 0).all(1).flatten(1).sum(1)
    assert (occluded >= 64).all()  # an 8x8 window (0.25 x 32 px) in every image
    res = obj(as_output(model(x)), labels, batch)
    assert res.logs["aofd_fraction"] == 1.0 and "aofd_gain" in res.logs
    rnd = build_objective("aofd", embedding_size=16, num_classes=4, p=1.0, placement="random")
    assert ((rnd.train().prepare(images, labels, batch) == 0).all(1).flatten(1).sum(1) >= 64).all()
    for bad, match in [
        ({"p": 2.0}, "probability p"),
        ({"size": 0.0}, "size"),
        ({"placement": "x"}, "placement"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_objective("aofd", embedding_size=16, num_classes=4, **bad)
