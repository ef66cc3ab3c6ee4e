"""train/schedule.py: the default warm-up, and arcface_torch's PolynomialLRWarmup as it behaves
(step 0 at the full lr, then t / W), against a re-implementation of its recursive update."""

from __future__ import annotations

import pytest
import torch

from nbfacelib.train.schedule import WarmupDecay, build_scheduler


def _arcface_torch_lrs(base: float, warmup: int, total: int, power: float, steps: int) -> list[float]:
    """lr of steps 0..steps-1 under arcface_torch's PolynomialLRWarmup.get_lr, written from its
    code: last_epoch 0 (and past total) keeps the current lr; 1..W: base * t / W; after W the
    current lr times ((1 - (t - W)/(T - W)) / (1 - (t - 1 - W)/(T - W))) ** power."""
    lrs, lr = [], base
    for t in range(steps):
        if t == 0 or t > total:
            pass
        elif t <= warmup:
            lr = base * t / warmup
        else:
            w, T = warmup, total
            lr = lr * ((1.0 - (t - w) / (T - w)) / (1.0 - (t - 1 - w) / (T - w))) ** power
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize(("warmup", "power"), [(5, 1.0), (3, 2.0), (0, 1.0)])
def test_arcface_torch_option_matches_its_scheduler(warmup, power):
    total = 20
    factor = WarmupDecay(total, warmup, "arcface_torch", power)
    ours = [0.1 * factor(t) for t in range(total)]
    expected = _arcface_torch_lrs(0.1, warmup, total, power, total)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert factor(0) == 1.0  # step 0 runs at the full lr


def test_default_warmup_is_not_arcface_torch():
    poly = WarmupDecay(20, 4, "poly")
    assert [poly(t) for t in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    torchs = WarmupDecay(20, 4, "arcface_torch")
    assert [torchs(t) for t in range(5)] == pytest.approx([1.0, 0.25, 0.5, 0.75, 1.0])
    # after the warm-up both decay alike
    assert [poly(t) for t in range(4, 21)] == pytest.approx([torchs(t) for t in range(4, 21)])
    with pytest.raises(ValueError, match="arcface_torch"):
        WarmupDecay(20, 4, "step")


def test_scheduler_steps_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, 10, 2, "arcface_torch")
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.05, 0.1, 0.1 * (1 - 1 / 8)])
