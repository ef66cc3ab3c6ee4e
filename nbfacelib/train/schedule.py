"""Per-step learning-rate schedules: linear warm-up, then polynomial or cosine decay.

``t`` counts optimizer steps from 0 and ``W`` is the warm-up length. Kinds:

- ``poly`` (default): warm-up lr = base * (t + 1) / (W + 1) for t < W, so the first step
  already moves (never lr 0) and none before t = W runs at the full lr; then
  lr = base * (1 - (t - W) / (T - W)) ** power, reaching 0 at t = T. This warm-up is our
  choice, not arcface_torch's (below).
- ``cosine`` (SGDR without restarts, Loshchilov & Hutter 2017) after the same warm-up:
  lr = base * (floor + (1 - floor) * (1 + cos(pi * (t - W) / (T - W))) / 2).
- ``arcface_torch``: insightface arcface_torch's ``PolynomialLRWarmup`` (``lr_scheduler.py``,
  used by ``train_v2.py``) as it behaves: it returns the optimizer's lr unchanged at
  ``last_epoch == 0``, so step 0 runs at the FULL lr; steps 1..W at base * t / W; after W it
  multiplies by ((1 - (t - W)/(T - W)) / (1 - (t - 1 - W)/(T - W))) ** power each step, which
  is base * (1 - (t - W) / (T - W)) ** power; past T it keeps the last lr (0).

The factor is a small picklable object so that ``LambdaLR.state_dict()`` stores its fields
and a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

import torch

KINDS = ("poly", "cosine", "arcface_torch")


class WarmupDecay:
    """lr multiplier at optimizer step ``t`` (0-based). ``power`` is unitless; steps are steps."""

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int = 0,
        kind: str = "poly",
        power: float = 1.0,
        min_ratio: float = 0.0,
    ):
        if kind not in KINDS:
            raise ValueError(f"schedule {kind!r}: expected one of {', '.join(KINDS)}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"schedule: total_steps={total_steps}, warmup_steps={warmup_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, total_steps))
        self.kind = kind
        self.power = float(power)
        self.min_ratio = float(min_ratio)

    def __call__(self, t: int) -> float:
        if self.kind == "arcface_torch" and t <= self.warmup_steps:
            return 1.0 if t == 0 else t / self.warmup_steps
        if t < self.warmup_steps:
            return (t + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / span)
        if self.kind in ("poly", "arcface_torch"):
            return (1.0 - progress) ** self.power
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    kind: str = "poly",
    power: float = 1.0,
    min_ratio: float = 0.0,
):
    """A ``LambdaLR`` stepped once per optimizer step."""
    factor = WarmupDecay(total_steps, warmup_steps, kind, power, min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
