"""AdaFace: quality adaptive margin for face recognition (Kim, Jain, Liu, CVPR 2022)."""

from __future__ import annotations

import math

import torch

from .margin import MarginHead


class AdaFace(MarginHead):
    """AdaFace (Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022):
    the margin adapts to the feature norm, MagFace's quality proxy, standardised by running
    batch statistics.

    With ``a = clip(||x||, 0.001, 100)`` the embedding's L2 norm (detached: no gradient through
    the norm), ``mu``, ``sigma`` the running mean / std of ``a``:

    - ``norm_hat = clip((a - mu) / (sigma + eps) * h, -1, 1)`` (Eq. 6; ``h`` = 0.333 puts ~68% of
      the batch inside (-0.333, 0.333));
    - ``g_angle = -m * norm_hat``, ``g_add = m * norm_hat + m`` (Eq. 7);
    - target logit ``s * (cos(clip(theta_y + g_angle, eps, pi - eps)) - g_add)``, others ``s * cos``
      (Eq. 8): a high-quality face (norm_hat -> 1) gets CosFace's margin 2m, a low-quality one
      (norm_hat -> -1) an angular margin m only, on easier targets.
    - ``mu <- t_alpha * mean(a) + (1 - t_alpha) * mu``, ``sigma <- t_alpha * std(a) + (1 -
      t_alpha) * sigma`` (unbiased std over the batch, the global batch under Partial FC), updated
      before ``norm_hat`` is computed, in training mode only (the official head updates in eval
      too; evaluating a model should not move its training statistics). Initial mu = 20,
      sigma = 100 (official).

    Hyper-parameters (the paper's): ``m`` margin in radians / cosine units (0.4), ``h``
    concentration (0.333), ``s`` logit scale (64), ``t_alpha`` EMA weight of the batch
    statistics (0.01). ``eps`` = 1e-3 as the official code, also the cosine clamp
    ``[-1 + eps, 1 - eps]`` before arccos. The clip of ``theta_y + g_angle`` to ``[eps, pi - eps]``
    is the official code's: with a negative angular margin (low quality) near theta = 0 the
    unclipped cosine would fall again.

    State: buffers ``batch_mean`` and ``batch_std`` (saved and restored with the objective).
    """

    needs_norms = True
    eps = 1e-3

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01):
        super().__init__(s)
        if not 0.0 <= m < math.pi / 2:
            raise ValueError(f"m (margin, radians / cosine units) must be in [0, pi/2), got {m}")
        if not h > 0:
            raise ValueError(f"h (norm concentration) must be > 0, got {h}")
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"t_alpha (EMA weight of the norm statistics) must be in [0, 1], got {t_alpha}")
        self.m, self.h, self.t_alpha = float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def norm_hat(self, norms: torch.Tensor) -> torch.Tensor:
        """The standardised, clipped norm in [-1, 1] (B,), after the statistics update."""
        safe = norms.detach().clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                mean = safe.mean()
                std = safe.std() if safe.numel() > 1 else self.batch_std
                a = self.t_alpha
                self.batch_mean.copy_(a * mean + (1 - a) * self.batch_mean)
                self.batch_std.copy_(a * std + (1 - a) * self.batch_std)
        mu, sigma = self.batch_mean.to(safe.dtype), self.batch_std.to(safe.dtype)
        return ((safe - mu) / (sigma + self.eps) * self.h).clamp(-1.0, 1.0)

    def target_logit(self, cos_y, norms):
        q = self.norm_hat(norms.to(cos_y.dtype))
        theta = torch.acos(cos_y.clamp(-1.0 + self.eps, 1.0 - self.eps))
        theta_m = (theta - self.m * q).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * q)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"
