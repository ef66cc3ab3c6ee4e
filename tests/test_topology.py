"""nbfacelib.topology: H0 pairs against gudhi and an independent Kruskal (ties and duplicate
points included), input errors, distances against float64, alignment losses against per-edge
loops and finite differences, gudhi/persim diagrams."""

import math

import numpy as np
import pytest
import torch

from nbfacelib.topology import (
    alignment_loss,
    diagram_distance,
    h0_pairs,
    input_distances,
    pairwise_distances,
    persistence_images,
    rips_diagrams,
    total_persistence,
)

METHODS = ["prim", "boruvka"]


# -- independent references -----------------------------------------------------------------
def kruskal(dist: np.ndarray) -> tuple[list[float], list[tuple[int, int]]]:
    """Plain Kruskal: every edge (i < j) sorted by (length, i, j), union by size with path
    halving. Returns (deaths ascending, edges in that order)."""
    n = len(dist)
    edges = sorted((float(dist[i][j]), i, j) for i in range(n) for j in range(i + 1, n))
    root = list(range(n))
    size = [1] * n

    def find(a):
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    deaths, kept = [], []
    for w, i, j in edges:
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        if size[ri] < size[rj]:
            ri, rj = rj, ri
        root[rj] = ri
        size[ri] += size[rj]
        deaths.append(w)
        kept.append((i, j))
    return deaths, kept


def gudhi_h0_deaths(dist: np.ndarray) -> np.ndarray:
    import gudhi

    tree = gudhi.RipsComplex(distance_matrix=dist).create_simplex_tree(max_dimension=1)
    tree.compute_persistence(min_persistence=-1.0)  # keep zero-length bars (duplicate points)
    h0 = tree.persistence_intervals_in_dimension(0)
    assert np.all(h0[:, 0] == 0)
    return np.sort(h0[np.isfinite(h0[:, 1]), 1])


def dist_of(points: torch.Tensor) -> torch.Tensor:
    d = (points[:, None, :] - points[None, :, :]).pow(2).sum(-1).sqrt()  # small B: direct
    return d


def cases():
    g = torch.Generator().manual_seed(0)
    grid = torch.tensor([[x, y] for x in range(4) for y in range(3)], dtype=torch.float64)  # many ties
    dup = torch.randn(12, 5, generator=g, dtype=torch.float64)
    dup = torch.cat([dup, dup[:4], dup[2:3]])  # duplicate points: zero-length edges
    return {
        "two": torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64),
        "random": torch.randn(60, 8, generator=g, dtype=torch.float64),
        "grid_ties": grid,
        "duplicates": dup,
        "all_equal": torch.ones(7, 3, dtype=torch.float64),
        "line": torch.arange(9, dtype=torch.float64)[:, None] ** 1.5,
    }


def is_spanning_tree(edges: np.ndarray, n: int) -> bool:
    root = list(range(n))

    def find(a):
        while root[a] != a:
            a = root[a]
        return a

    for i, j in edges:
        ri, rj = find(int(i)), find(int(j))
        if ri == rj:
            return False
        root[ri] = rj
    return len(edges) == n - 1


# -- h0_pairs ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_h0_pairs_match_kruskal_and_gudhi(name, method, dtype):
    pts = cases()[name]
    d = dist_of(pts).to(dtype)
    pairs = h0_pairs(d, method=method)
    n = len(pts)
    dn = d.double().numpy()
    ref_deaths, _ = kruskal(dn)
    assert pairs.deaths.dtype == dtype and pairs.edges.shape == (n - 1, 2)
    np.testing.assert_allclose(pairs.deaths.double().numpy(), ref_deaths, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pairs.deaths.double().numpy(), gudhi_h0_deaths(dn), rtol=0, atol=1e-6)
    e = pairs.edges.numpy()
    assert np.all(e[:, 0] < e[:, 1]) and is_spanning_tree(e, n)
    assert torch.equal(pairs.deaths, d[pairs.edges[:, 0], pairs.edges[:, 1]])
    assert np.all(np.diff(pairs.deaths.numpy()) >= 0)
    np.testing.assert_array_equal(pairs.diagram()[:, 0], 0.0)


@pytest.mark.parametrize("name", ["random", "grid_ties", "duplicates", "line"])
def test_boruvka_edges_are_the_official_union_find_order(name):
    """Borůvka with the strict (length, i*B+j) order builds the one MST that Kruskal over the
    stable-sorted upper triangle builds (the official union-find), edge for edge, ties included."""
    d = dist_of(cases()[name])
    _, ref_edges = kruskal(d.numpy())
    pairs = h0_pairs(d, method="boruvka")
    assert [tuple(e) for e in pairs.edges.tolist()] == ref_edges


def test_h0_pairs_larger_random_both_methods_agree():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=g)
    d = pairwise_distances(x)
    a, b = h0_pairs(d, method="prim"), h0_pairs(d, method="boruvka")
    torch.testing.assert_close(a.deaths, b.deaths, rtol=0, atol=0)
    assert torch.equal(a.edges, b.edges)  # no ties in generic points: the MST is unique
    np.testing.assert_allclose(a.deaths.double().numpy(), gudhi_h0_deaths(d.double().numpy()), atol=1e-6)


def test_h0_pairs_bad_input_errors():
    good = dist_of(torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        h0_pairs(good[:, :4])
    with pytest.raises(ValueError, match="square"):
        h0_pairs(good[0])
    with pytest.raises(ValueError, match="B >= 2"):
        h0_pairs(torch.zeros(1, 1))
    asym = good.clone()
    asym[1, 3] += 0.5
    with pytest.raises(ValueError, match=r"not symmetric: dist\[(1, 3|3, 1)\]"):
        h0_pairs(asym)
    nan = good.clone()
    nan[2, 4] = nan[4, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        h0_pairs(nan)
    inf = good.clone()
    inf[0, 1] = inf[1, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        h0_pairs(inf)
    diag = good.clone()
    diag[2, 2] = 1.0
    with pytest.raises(ValueError, match="zero diagonal"):
        h0_pairs(diag)
    neg = good.clone()
    neg[0, 1] = neg[1, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        h0_pairs(neg)
    with pytest.raises(ValueError, match="floating"):
        h0_pairs(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        h0_pairs(good, method="kruskal")
    with pytest.raises(TypeError, match="torch.Tensor"):
        h0_pairs(good.numpy())


def test_h0_pairs_tolerates_float32_rounding_asymmetry():
    d = dist_of(torch.randn(6, 3, dtype=torch.float64)).float()
    d[1, 2] = torch.nextafter(d[1, 2], torch.tensor(10.0))
    assert h0_pairs(d).edges.shape == (5, 2)


@pytest.mark.gpu
def test_h0_pairs_on_cuda_matches_cpu():
    x = torch.randn(257, 32, generator=torch.Generator().manual_seed(1))
    d = pairwise_distances(x)
    cpu = h0_pairs(d)
    gpu = h0_pairs(d.cuda())
    assert gpu.edges.device.type == "cuda"
    torch.testing.assert_close(gpu.deaths.cpu(), cpu.deaths, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="CPU"):
        h0_pairs(d.cuda(), method="prim")


# -- distances -------------------------------------------------------------------------------
def test_pairwise_distances_float32_match_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3 * 112 * 112, generator=g) * 2 - 1
    x[7] = x[3]  # a duplicate image
    d32 = pairwise_distances(x)
    d64 = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert d32.dtype == torch.float32
    assert torch.all(d32.diagonal() == 0)
    err = (d32.double() - d64).abs()
    # cancellation in |a|^2 + |b|^2 - 2ab: ~eps32 * |a|^2 in d^2, so sqrt(that) near zero
    sq = (x.double() ** 2).sum(1).max()
    assert err.max() <= math.sqrt(8 * 1.2e-7 * float(sq)), err.max()
    far = d64 > 1
    assert (err[far] / d64[far]).max() < 1e-5


def test_input_distances_normalised_and_layout_free():
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(9, 3, 16, 12, generator=g) * 2 - 1
    d = input_distances(imgs)
    ref = torch.cdist(imgs.flatten(1).double(), imgs.flatten(1).double()) / math.sqrt(4 * 3 * 16 * 12)
    torch.testing.assert_close(d.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(input_distances(imgs.contiguous(memory_format=torch.channels_last)), d)
    torch.testing.assert_close(input_distances(imgs.bfloat16()).double(), ref, rtol=0, atol=1e-2)
    assert float(input_distances(torch.stack([-torch.ones(3, 4, 4), torch.ones(3, 4, 4)]))[0, 1]) == 1.0
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        input_distances(imgs[0])


def test_pairwise_distances_gradcheck_and_zero_distance_gradient():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: pairwise_distances(t)[torch.triu_indices(6, 6, 1).unbind()], (x,))
    dup = torch.cat([x.detach()[:3], x.detach()[:1]]).requires_grad_(True)
    pairwise_distances(dup).sum().backward()
    assert torch.isfinite(dup.grad).all()


# -- alignment losses --------------------------------------------------------------------------
def loop_paper(dx, dz, ex, ez):
    on_x = sum((float(dx[i][j]) - float(dz[i][j])) ** 2 for i, j in ex)
    on_z = sum((float(dz[i][j]) - float(dx[i][j])) ** 2 for i, j in ez)
    return 0.5 * (on_x + on_z)


def loop_official(dx, dz, ex, ez):
    ax = sorted(float(dx[i][j]) for i, j in ex)
    az = sorted(float(dz[i][j]) for i, j in ez)
    return sum((a - b) ** 2 for a, b in zip(ax, az, strict=True)) / len(dx)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alignment_loss_matches_per_edge_loops(dtype):
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(20, 30, generator=g), torch.randn(20, 4, generator=g) * 3
    dx, dz = pairwise_distances(x).to(dtype), pairwise_distances(z).to(dtype)
    dxn, dzn = dx.double().numpy(), dz.double().numpy()
    _, ex = kruskal(dxn)
    _, ez = kruskal(dzn)
    tol = dict(rel=1e-5 if dtype == torch.float32 else 1e-12, abs=0)
    assert alignment_loss(dx, dz).item() == pytest.approx(loop_paper(dxn, dzn, ex, ez), **tol)
    assert alignment_loss(dx, dz, form="official").item() == pytest.approx(
        loop_official(dxn, dzn, ex, ez), **tol
    )
    assert alignment_loss(dx, dx).item() == 0.0
    with pytest.raises(ValueError, match="form"):
        alignment_loss(dx, dz, form="l2")
    with pytest.raises(ValueError, match="same points"):
        alignment_loss(dx, dz[:5, :5])


@pytest.mark.parametrize("form", ["paper", "official"])
def test_alignment_loss_gradients_by_finite_differences(form):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def loss(a, b):
        return alignment_loss(pairwise_distances(a), pairwise_distances(b), form=form)

    torch.autograd.gradcheck(loss, (x, z), eps=1e-6, atol=1e-6)


# -- gudhi / persim diagrams -------------------------------------------------------------------
def test_rips_diagrams_h0_is_h0_pairs_and_circle_sphere_have_h1_h2():
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(40, 3, generator=g, dtype=torch.float64)
    d = pairwise_distances(pts)
    dg = rips_diagrams(d, max_dim=2)
    assert len(dg) == 3
    np.testing.assert_allclose(
        np.sort(dg[0][np.isfinite(dg[0][:, 1]), 1]), h0_pairs(d).deaths.numpy(), atol=1e-9
    )
    angle = torch.linspace(0, 2 * math.pi, 31, dtype=torch.float64)[:-1]
    circle = torch.stack([angle.cos(), angle.sin()], 1)
    h1 = rips_diagrams(pairwise_distances(circle), max_dim=1)[1]
    assert (h1[:, 1] - h1[:, 0] > 1.0).sum() == 1  # one long-lived loop
    sphere = torch.randn(60, 3, generator=g, dtype=torch.float64)
    sphere = sphere / sphere.norm(dim=1, keepdim=True)
    h2 = rips_diagrams(pairwise_distances(sphere), max_dim=2)[2]
    life = np.sort(h2[:, 1] - h2[:, 0])[::-1]
    assert life[0] > 0.3 and (len(life) == 1 or life[1] < 0.1)  # one long-lived void
    assert total_persistence(h2) == pytest.approx(life.sum())


def test_diagram_distances_and_images():
    a = np.array([[0.0, 1.0], [0.2, 0.5], [0.0, np.inf]])
    b = a.copy()
    b[0, 1] = 1.3
    assert diagram_distance(a, a) == 0.0
    assert diagram_distance(a, b, "bottleneck") == pytest.approx(0.3)
    assert diagram_distance(a, b, "wasserstein") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="metric"):
        diagram_distance(a, b, "l1")
    imgs, imager = persistence_images([a, b], resolution=10)
    assert len(imgs) == 2 and imgs[0].shape == imgs[1].shape and imgs[0].sum() > 0
    assert not np.allclose(imgs[0], imgs[1])
