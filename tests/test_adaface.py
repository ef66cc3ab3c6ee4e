"""AdaFace against a per-sample Python loop (math module, no torch), its running norm
statistics, and their checkpoint round trip through the objective."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from nbfacelib.losses import AdaFace, build_margin, build_objective
from nbfacelib.losses.objective import Batch
from nbfacelib.models.output import BackboneOutput

DEG = math.pi / 180
ANGLES = [[30.0, 80.0, 25.0], [100.0, 65.0, 90.0], [2.0, 160.0, 10.0], [45.0, 120.0, 179.5]]
LABELS = [0, 2, 0, 1]
NORMS = [5.0, 35.0, 80.0, 300.0]


def ref_adaface_rows(cos_rows, labels, norms, mean, std, s=64.0, m=0.4, h=0.333, alpha=0.01, eps=1e-3):
    """Official AdaFace head (its formulas, one sample at a time) after one statistics update."""
    safe = [min(max(a, 0.001), 100.0) for a in norms]
    mean = alpha * statistics.fmean(safe) + (1 - alpha) * mean
    std = alpha * statistics.stdev(safe) + (1 - alpha) * std  # torch.std: unbiased
    rows = []
    for row, y, a in zip(cos_rows, labels, safe, strict=True):
        q = min(max((a - mean) / (std + eps) * h, -1.0), 1.0)
        out = []
        for j, c in enumerate(row):
            if j == y:
                theta = math.acos(min(max(c, -1 + eps), 1 - eps))
                theta_m = min(max(theta - m * q, eps), math.pi - eps)
                out.append(s * (math.cos(theta_m) - (m + m * q)))
            else:
                out.append(s * c)
        rows.append(out)
    return rows, mean, std


def ref_ce(rows, labels):
    total = 0.0
    for z, y in zip(rows, labels, strict=True):
        top = max(z)
        total += top + math.log(math.fsum(math.exp(v - top) for v in z)) - z[y]
    return total / len(labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaface_matches_per_sample_loop(dtype):
    head = AdaFace()
    assert (head.s, head.m, head.h, head.t_alpha) == (64.0, 0.4, 0.333, 0.01)  # the paper's
    cos = torch.tensor([[math.cos(a * DEG) for a in row] for row in ANGLES], dtype=dtype)
    norms = torch.tensor(NORMS, dtype=dtype)
    logits = head(cos, torch.tensor(LABELS), norms)
    ref, mean, std = ref_adaface_rows(cos.double().tolist(), LABELS, NORMS, 20.0, 100.0)
    # float64 to ~1e-8: the statistics are float32 buffers (as every module buffer by default)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-6)
    torch.testing.assert_close(logits, torch.tensor(ref, dtype=dtype), **tol)
    assert float(head.batch_mean) == pytest.approx(mean, rel=1e-6)
    assert float(head.batch_std) == pytest.approx(std, rel=1e-6)
    # a second batch uses the updated statistics
    ref2, mean2, _ = ref_adaface_rows(cos.double().tolist(), LABELS, NORMS, mean, std)
    loss = head.loss(cos, torch.tensor(LABELS), norms)
    assert loss.item() == pytest.approx(ref_ce(ref2, LABELS), rel=1e-5)
    assert float(head.batch_mean) == pytest.approx(mean2, rel=1e-6)
    with pytest.raises(ValueError, match="norms"):
        head(cos, torch.tensor(LABELS))


def test_adaface_margin_follows_quality():
    """High norm -> CosFace-like 2m additive margin; low norm -> angular margin only."""
    head = AdaFace(t_alpha=0.0).eval()  # statistics fixed at mu 20, sigma 100
    cos = torch.full((2, 1), math.cos(60 * DEG), dtype=torch.float64)
    # norm_hat = clip((a - 20) / 100.001 * 0.333): a = 20 + 100.001 / 0.333 -> 1; a = 0.001 -> ~-0.067
    high = 20 + 100.001 / 0.333 + 1
    logits = head(cos, torch.tensor([0, 0]), torch.tensor([min(high, 100.0), 0.001], dtype=torch.float64))
    q_hi = (100.0 - 20) / 100.001 * 0.333
    expected_hi = 64 * (math.cos(60 * DEG - 0.4 * q_hi) - 0.4 * (1 + q_hi))
    assert logits[0, 0].item() == pytest.approx(expected_hi, rel=1e-9)
    assert float(head.batch_mean) == 20.0  # eval mode: no update


def test_adaface_statistics_freeze_in_eval_and_gradient_skips_the_norm():
    head = AdaFace()
    cos = torch.tensor([[0.5, 0.1], [0.2, 0.7]], dtype=torch.float64, requires_grad=True)
    norms = torch.tensor([10.0, 30.0], dtype=torch.float64, requires_grad=True)
    head.eval()
    head.loss(cos, torch.tensor([0, 1]), norms).backward()
    assert float(head.batch_mean) == 20.0 and float(head.batch_std) == 100.0
    assert norms.grad is None  # the norm enters detached (official)
    assert torch.isfinite(cos.grad).all()
    assert torch.autograd.gradcheck(lambda c: head.loss(c, torch.tensor([0, 1]), norms.detach()), (cos,))


def test_adaface_state_round_trip_through_the_objective():
    obj = build_objective("adaface", embedding_size=8, num_classes=4)
    assert obj.margin.s == 64.0
    emb = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)) * 5
    labels = torch.arange(4).repeat(2)
    batch = Batch(images=torch.zeros(8, 3, 4, 4), labels=labels, step=0, model=torch.nn.Identity())
    obj.train()
    out = obj(BackboneOutput(embedding=emb), labels, batch)
    assert out.logs["batch_mean"] != 20.0  # logged, moved
    state = obj.full_state_dict()
    assert {"weight", "margin.batch_mean", "margin.batch_std"} == set(state)
    fresh = build_objective("adaface", embedding_size=8, num_classes=4)
    fresh.load_full_state_dict(state)
    assert float(fresh.margin.batch_mean) == float(obj.margin.batch_mean)
    assert float(fresh.margin.batch_std) == float(obj.margin.batch_std)


def test_adaface_bad_hyper_parameters():
    with pytest.raises(ValueError, match="h \\(norm concentration\\)"):
        build_margin("adaface", h=0.0)
    with pytest.raises(ValueError, match="t_alpha"):
        build_margin("adaface", t_alpha=1.5)
    with pytest.raises(ValueError, match="m \\(margin"):
        build_margin("adaface", m=-0.1)
