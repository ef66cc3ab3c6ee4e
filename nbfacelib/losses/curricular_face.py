"""CurricularFace: adaptive curriculum learning loss (Huang et al., CVPR 2020)."""

from __future__ import annotations

import math

import torch

from .margin import AllReduce, MarginHead, angular_margin


class CurricularFace(MarginHead):
    """CurricularFace (Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep
    Face Recognition", CVPR 2020).

    - target: ``T(cos theta_y) = cos(theta_y + m)`` (ArcFace; past ``theta_y > pi - m`` the
      official fallback ``cos theta_y - m sin(pi - m)``, see :func:`angular_margin`);
    - negatives: ``N(t, cos theta_j) = cos theta_j`` if ``cos theta_j <= cos(theta_y + m)``,
      else ``cos theta_j * (t + cos theta_j)`` (a "hard" negative; easy early when t ~ 0, weighted
      up as t grows). The hard test uses ``cos(theta_y + m)`` literally, without the fallback,
      as the paper and the official code do;
    - ``t <- a * mean_i cos theta_{y_i} + (1 - a) * t``, ``t_0 = 0``, updated in training mode
      only, before the modulation (as the official code). Under Partial FC the mean runs over
      the global batch (the target cosines are all-reduced), so every rank holds the same t;
    - logits scaled by ``s``.

    Hyper-parameters: ``s`` logit scale (64); ``m`` additive angular margin in radians (0.5);
    ``t_momentum`` the EMA weight ``a`` of the batch mean (0.01).

    ``t`` is a buffer (saved in ``state_dict``); ``last_hard_negatives`` / ``last_negatives``
    (detached tensors, this rank's columns) count the hard negatives of the last batch, for C9.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, t_momentum: float = 0.01):
        super().__init__(s)
        if not 0.0 <= m < math.pi:
            raise ValueError(f"m (additive angular margin, radians) must be in [0, pi), got {m}")
        if not 0.0 <= t_momentum <= 1.0:
            raise ValueError(f"t_momentum must be in [0, 1], got {t_momentum}")
        self.m = float(m)
        self.t_momentum = float(t_momentum)
        self.register_buffer("t", torch.zeros(()))
        self.last_hard_negatives: torch.Tensor | None = None
        self.last_negatives: torch.Tensor | None = None

    def target_logit(self, cos_y, norms):
        return angular_margin(cos_y, 1.0, self.m, 0.0)

    def modulate_negatives(self, cos, cos_y, has_pos, all_reduce: AllReduce | None):
        with torch.no_grad():
            # Every row needs its target cosine, also where the positive lives on another rank's
            # shard: each rank contributes the rows it owns, a sum fills in the rest.
            stats = torch.stack([torch.where(has_pos, cos_y, 0.0), has_pos.to(cos.dtype)])
            if all_reduce is not None:
                stats = all_reduce(stats)
            target_cos, owned = stats[0], stats[1] > 0
            if self.training:
                n = owned.sum()
                batch_mean = (target_cos * owned).sum() / n.clamp_min(1)
                a = self.t_momentum
                self.t.copy_(torch.where(n > 0, a * batch_mean + (1 - a) * self.t, self.t))
            threshold = torch.cos(torch.acos(target_cos.clamp(-1.0, 1.0)) + self.m)
            # A row whose positive is nowhere (label -1 without Partial FC) has no hard negatives.
            threshold = torch.where(owned, threshold, torch.inf)
            hard = cos > threshold.unsqueeze(1)
            # The positive column is "hard" too (cos_y > cos(theta_y + m)) but gets overwritten.
            own_target_hard = has_pos & (cos_y > threshold)
            self.last_hard_negatives = hard.sum() - own_target_hard.sum()
            self.last_negatives = cos.numel() - has_pos.sum()  # no host-to-device copy per step
        t = self.t.to(cos.dtype)
        return torch.where(hard, cos * (t + cos), cos)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, t_momentum={self.t_momentum}"
