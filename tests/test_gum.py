"""GUM (TopoFR structure damage estimation): the torch EM against plain loops written here,
the paper's fit and the official one (numpy, as the official GUM.py runs it, with its break)."""

import math

import numpy as np
import pytest
import torch

from nbfacelib.losses.gum import fit_gum, fit_gum_official


def entropies(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    easy = torch.randn(n - n // 4, generator=g, dtype=torch.float64).abs() * 0.3
    hard = torch.rand(n // 4, generator=g, dtype=torch.float64) * 4.0 + 0.5
    return torch.cat([easy, hard])[torch.randperm(n, generator=g)]


def loop_paper(e, iters):
    """Half-normal + U(0, max e), one sample at a time with the math module."""
    omega = max(e)
    pi, s2 = 0.5, sum(v * v for v in e) / len(e)

    def post(v, pi, s2):
        g = pi * math.sqrt(2 / math.pi) / math.sqrt(s2) * math.exp(-v * v / (2 * s2))
        u = (1 - pi) / omega
        return g / (g + u)

    for _ in range(iters):
        r = [post(v, pi, s2) for v in e]
        pi = min(max(sum(r) / len(e), 1e-3), 1 - 1e-3)
        s2 = sum(ri * v * v for ri, v in zip(r, e, strict=True)) / sum(r)
    return [1 - post(v, pi, s2) for v in e], pi, s2


def numpy_official(entropy, max_iter=1000):
    """The official GUM.gauss_unif steps in numpy (1-D), with its convergence break."""
    x = np.array(entropy, dtype=float)
    x[2 * np.arange(len(x) // 2)] = -1 * x[2 * np.arange(len(x) // 2)]
    x = (x - x.mean()) / x.std()
    n = len(x)
    pi, sigma, c, like0 = 0.1, float(np.mean(x * x)), 0.2, 0.0
    for _ in range(max_iter):
        var = sigma + 1e-3
        phi = np.exp(-x * x / (2 * var)) / np.sqrt(2 * np.pi * var)
        gamma = phi * pi / (phi * pi + (1 - pi) * c)
        n1 = gamma.sum()
        sigma = float(np.sum(gamma * x * x) / n1)
        pi = min(n1 / n, 0.5)
        c1 = np.sum((1 - gamma) / (1 - pi + 1e-10) * x) / n1
        c2 = np.sum((1 - gamma) / (1 - pi + 1e-10) * x * x) / n1
        c = 0.001 if abs(3 * c2 - c1**2) < 0.001 else 1.0 / (2 * np.sqrt(3 * c2 - c1**2) + 1e-10)
        like = np.sum(pi * phi + (1 - pi) * c)
        if abs(like - like0) < 1e-10:
            break
        like0 = like
    return 1 - gamma, pi, sigma


@pytest.mark.parametrize("iters", [1, 5, 20])
def test_paper_gum_matches_the_loop(iters):
    e = entropies()
    fit = fit_gum(e, iters=iters)
    hard, pi, s2 = loop_paper(e.tolist(), iters)
    np.testing.assert_allclose(fit.hard.numpy(), hard, rtol=1e-10, atol=1e-12)
    assert float(fit.pi) == pytest.approx(pi, rel=1e-10)
    assert float(fit.sigma2) == pytest.approx(s2, rel=1e-10)


def test_paper_gum_separates_hard_samples_and_keeps_dtype():
    e = entropies(n=200).float()
    fit = fit_gum(e, iters=10)
    assert fit.hard.dtype == torch.float32 and fit.hard.shape == (200,)
    assert bool(((fit.hard >= 0) & (fit.hard <= 1)).all())
    high, low = e > 1.0, e < 0.2
    assert float(fit.hard[high].min()) > float(fit.hard[low].max())  # monotone in the entropy
    assert float(fit.hard[high].mean()) > 0.8 and float(fit.hard[low].mean()) < 0.2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_official_gum_matches_the_numpy_original(seed):
    e = entropies(n=63 + seed, seed=seed)  # odd and even B: the flip covers 0, 2, .., 2(B//2 - 1)
    fit = fit_gum_official(e, iters=1000)
    hard, pi, s2 = numpy_official(e.numpy())
    np.testing.assert_allclose(fit.hard.numpy(), hard, rtol=1e-9, atol=1e-12)
    assert float(fit.pi) == pytest.approx(pi, rel=1e-9)
    assert float(fit.sigma2) == pytest.approx(s2, rel=1e-9)


def test_official_and_paper_posteriors_differ():
    e = entropies(n=128, seed=4)
    assert not torch.allclose(fit_gum(e).hard, fit_gum_official(e).hard, atol=1e-3)


def test_gum_bad_input():
    with pytest.raises(ValueError, match="B >= 2"):
        fit_gum(torch.ones(1))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        fit_gum_official(torch.ones(3, 2))
    with pytest.raises(ValueError, match="em_iters"):
        fit_gum(torch.ones(4), iters=0)
