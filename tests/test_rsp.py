"""RSP (TopoFR random structure perturbation): each batched operation against torchvision's
per-image functional op with the same parameters, and the per-image draw."""

import pytest
import torch
import torchvision.transforms.functional as TF

from nbfacelib.augment.rsp import (
    OPS,
    RandomStructurePerturbation,
    color_jitter,
    gaussian_blur,
    grayscale,
    random_erase,
)


def batch(n=6, h=20, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def to01(x):
    return x * 0.5 + 0.5


def test_blur_matches_torchvision_per_image():
    x = batch()
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.5, 5.0])
    out = gaussian_blur(x, sigma)
    for i in range(len(x)):
        s = float(sigma[i])
        ref = TF.gaussian_blur(to01(x[i]), kernel_size=[5, 9], sigma=[s, s])
        torch.testing.assert_close(to01(out[i]), ref, rtol=0, atol=1e-5)


def test_grayscale_matches_torchvision():
    x = batch()
    ref = TF.rgb_to_grayscale(to01(x), num_output_channels=3)
    torch.testing.assert_close(to01(grayscale(x)), ref, rtol=0, atol=1e-6)


def test_color_jitter_matches_torchvision_in_the_drawn_order():
    x = batch(n=4)
    factors = torch.tensor(
        [[0.1, 0.3, 0.2, -0.1], [0.5, 0.6, 0.5, 0.3], [0.3, 0.45, 0.35, 0.05], [0.2, 0.4, 0.3, 0.2]]
    )
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]])
    out = color_jitter(x, factors, order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(len(x)):
        ref = to01(x[i])
        for k in order[i].tolist():
            ref = ops[k](ref, float(factors[i, k]))
        torch.testing.assert_close(to01(out[i]), ref, rtol=0, atol=2e-5)


def test_random_erase_one_rectangle_of_zeros_in_the_timm_ranges():
    torch.manual_seed(0)
    x = batch(n=200, h=40, w=40) * 0.5 + 0.75  # strictly positive: zeros are erased pixels
    out = random_erase(x)
    erased = out == 0
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])
    area = erased[:, 0].float().mean(dim=(1, 2))
    assert float(area.min()) >= 0.015 and float(area.max()) <= 0.34
    for i in range(0, 200, 17):  # the erased pixels form one axis-aligned rectangle
        rows = torch.nonzero(erased[i, 0].any(1)).squeeze(1)
        cols = torch.nonzero(erased[i, 0].any(0)).squeeze(1)
        assert int(erased[i, 0].sum()) == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    torch.testing.assert_close(out[~erased], x[~erased])


def test_rsp_draws_per_image_and_leaves_the_rest_untouched():
    x = batch(n=2000, h=12, w=12)
    torch.manual_seed(1)
    out, op = RandomStructurePerturbation(p=0.2)(x)
    chosen = op >= 0
    assert 0.17 < chosen.float().mean() < 0.23
    counts = torch.bincount(op[chosen], minlength=4)
    assert counts.min() > 0.2 * chosen.sum() / 4 * 3  # roughly uniform over the four ops
    assert torch.equal(out[~chosen], x[~chosen])
    assert (out[chosen] != x[chosen]).flatten(1).any(1).float().mean() > 0.95
    torch.manual_seed(1)
    again, op2 = RandomStructurePerturbation(p=0.2)(x)
    assert torch.equal(again, out) and torch.equal(op2, op)
    assert torch.equal(x, batch(n=2000, h=12, w=12))  # input not modified in place
    none, op0 = RandomStructurePerturbation(p=0.0)(x)
    assert torch.equal(none, x) and bool((op0 == -1).all())
    _, op1 = RandomStructurePerturbation(p=1.0, ops=("grayscale",))(x[:50])
    assert bool((op1 == OPS.index("grayscale")).all())


def test_rsp_bad_arguments():
    with pytest.raises(ValueError, match="p must be in"):
        RandomStructurePerturbation(p=1.5)
    with pytest.raises(ValueError, match="subset"):
        RandomStructurePerturbation(ops=("mixup",))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        RandomStructurePerturbation()(torch.zeros(2, 1, 8, 8))
