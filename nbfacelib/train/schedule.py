"""Per-step learning-rate schedules: linear warm-up, then polynomial or cosine decay.

arcface_torch's ``PolyScheduler``: during warm-up lr = base * (t + 1) / (warmup + 1); after it
lr = base * (1 - (t - warmup) / (total - warmup)) ** power, reaching 0 at t = total.
Cosine (SGDR without restarts, Loshchilov & Hutter 2017) after the same warm-up:
lr = base * (floor + (1 - floor) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2).
``t`` counts optimizer steps from 0. The factor is a small picklable object so that
``LambdaLR.state_dict()`` stores its fields and a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

import torch


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
        if kind not in ("poly", "cosine"):
            raise ValueError(f"schedule {kind!r}: expected poly or cosine")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"schedule: total_steps={total_steps}, warmup_steps={warmup_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, total_steps))
        self.kind = kind
        self.power = float(power)
        self.min_ratio = float(min_ratio)

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / span)
        if self.kind == "poly":
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
