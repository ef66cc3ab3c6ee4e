"""The Gaussian-uniform mixture (GUM) of TopoFR's structure damage estimation (NeurIPS 2024,
Sec. 3.3): the prediction entropies E of a batch are modelled as

    p(E) = pi N+(E | 0, Sigma) + (1 - pi) U(0, Omega),

easy samples in the half-normal, hard samples in the uniform; the hard-sample posterior is
``h = (1 - pi) U / (pi N+ + (1 - pi) U)``.

Fitted by EM in torch on the batch's device: a fixed number of vectorised iterations, no
value read back to the host (the official code runs up to 1,000 numpy iterations per step).

- :func:`fit_gum` (the paper): E >= 0 as is, N+ the half-normal, Omega = max E (the smallest
  support holding every sample; its maximum-likelihood value), pi0 = 0.5 and Sigma0 = mean E^2
  (the half-normal fit of all samples); the M-step updates pi and Sigma.
- :func:`fit_gum_official` reproduces the official ``GUM.gauss_unif``: every other entropy
  negated (indices 0, 2, 4, ...), then standardised (mean 0, population std 1); a full normal
  N(0, Sigma + 1e-3); pi0 = 0.1, capped at 0.5 in every M-step; uniform density c0 = 0.2, then
  ``1 / (2 sqrt(3 C2 - C1^2))`` from the weighted moments of the uniform part (0.001 when
  ``|3 C2 - C1^2| < 0.001``); it stops when ``sum(pi phi + (1 - pi) c)`` changes by < 1e-10,
  which here freezes the parameters by a mask instead of leaving the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GUMFit:
    """``hard`` (B,) posterior of the uniform (hard) component; ``pi`` the Gaussian weight,
    ``sigma2`` its variance (0-d tensors, on the entropies' device)."""

    hard: Tensor
    pi: Tensor
    sigma2: Tensor


def _check(entropy: Tensor, iters: int) -> Tensor:
    if entropy.dim() != 1 or entropy.numel() < 2:
        raise ValueError(f"entropy must be a (B,) vector with B >= 2, got shape {tuple(entropy.shape)}")
    if iters < 1:
        raise ValueError(f"em_iters must be >= 1, got {iters}")
    return entropy.detach().double()


def fit_gum(entropy: Tensor, iters: int = 10) -> GUMFit:
    """The paper's GUM (half-normal + uniform on [0, max E]) by ``iters`` EM iterations."""
    e = _check(entropy, iters).clamp_min(0.0)
    tiny = torch.finfo(e.dtype).tiny
    e2 = e * e
    omega = e.amax().clamp_min(1e-12)
    uniform = 1.0 / omega
    pi = torch.full((), 0.5, dtype=e.dtype, device=e.device)
    sigma2 = e2.mean().clamp_min(1e-12)

    def gaussian_part(pi, sigma2):
        half_normal = torch.exp(-e2 / (2 * sigma2)) * math.sqrt(2.0 / math.pi) / sigma2.sqrt()
        return pi * half_normal, (1 - pi) * uniform

    for _ in range(iters):
        g, u = gaussian_part(pi, sigma2)
        easy = g / (g + u).clamp_min(tiny)
        pi = easy.mean().clamp(1e-3, 1 - 1e-3)
        sigma2 = ((easy * e2).sum() / easy.sum().clamp_min(tiny)).clamp_min(1e-12)
    g, u = gaussian_part(pi, sigma2)
    hard = u / (g + u).clamp_min(tiny)
    return GUMFit(hard=hard.to(entropy.dtype), pi=pi, sigma2=sigma2)


def fit_gum_official(entropy: Tensor, iters: int = 1000) -> GUMFit:
    """The official ``gauss_unif`` on ``entropy``, quirks included (module docstring); the
    posterior returned is that of the last E-step, as the official code returns it."""
    x = _check(entropy, iters).clone()
    n = x.numel()
    x[2 * torch.arange(n // 2, device=x.device)] *= -1  # the official sign flip
    std = x.std(unbiased=False)
    x = (x - x.mean()) / torch.where(std > 0, std, torch.ones_like(std))  # sklearn scale()
    x2 = x * x
    pi = torch.full((), 0.1, dtype=x.dtype, device=x.device)
    sigma2 = x2.mean()
    c = torch.full((), 0.2, dtype=x.dtype, device=x.device)
    like0 = torch.zeros((), dtype=x.dtype, device=x.device)
    done = torch.zeros((), dtype=torch.bool, device=x.device)
    gamma = torch.zeros_like(x)
    for _ in range(iters):
        var = sigma2 + 1e-3
        phi = torch.exp(-x2 / (2 * var)) / torch.sqrt(2 * math.pi * var)
        new_gamma = phi * pi / (phi * pi + (1 - pi) * c)
        n1 = new_gamma.sum()
        new_sigma2 = (new_gamma * x2).sum() / n1
        new_pi = torch.clamp(n1 / n, max=0.5)
        rest = (1 - new_gamma) / (1 - new_pi + 1e-10)
        c1 = (rest * x).sum() / n1
        c2 = (rest * x2).sum() / n1
        spread = 3 * c2 - c1**2
        new_c = torch.where(
            spread.abs() < 0.001, torch.full_like(c, 0.001), 1.0 / (2 * spread.sqrt() + 1e-10)
        )
        like = (new_pi * phi + (1 - new_pi) * new_c).sum()
        gamma = torch.where(done, gamma, new_gamma)
        pi = torch.where(done, pi, new_pi)
        sigma2 = torch.where(done, sigma2, new_sigma2)
        c = torch.where(done, c, new_c)
        done = done | ((like - like0).abs() < 1e-10)
        like0 = like
    return GUMFit(hard=(1 - gamma).to(entropy.dtype), pi=pi, sigma2=sigma2)
