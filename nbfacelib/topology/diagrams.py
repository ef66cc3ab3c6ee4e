"""Persistence diagrams in every dimension (gudhi) and distances / images of diagrams (persim),
for the input-space study of TopoFR (Fig. 1: H_j features of face batches vs sample count).

Both libraries are imported inside the functions: the package must import without them
(the GPU machine has neither).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .h0 import check_distance_matrix

METRICS = ("bottleneck", "wasserstein")


def rips_diagrams(
    dist: Tensor | np.ndarray, max_dim: int = 2, max_edge: float | None = None
) -> list[np.ndarray]:
    """Persistence diagrams H_0 .. H_max_dim of the Vietoris-Rips filtration of ``dist``.

    gudhi's ``RipsComplex`` on the (B, B) distance matrix; edges are collapsed before the
    flag complex is expanded (gudhi's ``collapse_edges``, which keeps the persistence
    exactly and shrinks the complex by orders of magnitude), then persistence over Z/2.
    ``max_edge`` truncates the filtration (features alive at it get death inf).
    Returns one (n_j, 2) float64 array of (birth, death) per dimension; infinite deaths are
    kept (H_0 has one).
    """
    import gudhi

    if max_dim < 0:
        raise ValueError(f"max_dim must be >= 0, got {max_dim}")
    d = torch.as_tensor(dist)
    check_distance_matrix(d)
    matrix = d.detach().double().cpu().numpy()
    rips = gudhi.RipsComplex(
        distance_matrix=matrix, max_edge_length=math.inf if max_edge is None else max_edge
    )
    tree = rips.create_simplex_tree(max_dimension=1)
    if max_dim >= 1:
        tree.collapse_edges(-1)  # -1: repeat until nothing collapses
        tree.expansion(max_dim + 1)
    tree.compute_persistence(homology_coeff_field=2, min_persistence=0.0)
    return [tree.persistence_intervals_in_dimension(k).reshape(-1, 2) for k in range(max_dim + 1)]


def finite(diagram: np.ndarray) -> np.ndarray:
    """The points of ``diagram`` with a finite death."""
    diagram = np.asarray(diagram, dtype=np.float64).reshape(-1, 2)
    return diagram[np.isfinite(diagram[:, 1])]


def total_persistence(diagram: np.ndarray) -> float:
    """Sum of the lifetimes (death - birth) of the finite points."""
    pts = finite(diagram)
    return float((pts[:, 1] - pts[:, 0]).sum())


def diagram_distance(a: np.ndarray, b: np.ndarray, metric: str = "bottleneck") -> float:
    """persim's bottleneck or (q = 2) Wasserstein distance between the finite parts of two
    diagrams (an infinite H_0 class is in both and would only add |inf - inf|)."""
    import persim

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    fa, fb = finite(a), finite(b)
    if len(fa) == 0 and len(fb) == 0:
        return 0.0
    if metric == "bottleneck":
        return float(persim.bottleneck(fa, fb))
    return float(persim.wasserstein(fa, fb))


def persistence_images(diagrams: list[np.ndarray], pixel_size: float | None = None, resolution: int = 20):
    """persim persistence images (birth-persistence plane, Gaussian kernel, linear weight) of
    several diagrams on one common grid. ``pixel_size`` defaults to 1/``resolution`` of the
    largest persistence. Returns (list of 2-D arrays, the fitted ``PersistenceImager``)."""
    from persim import PersistenceImager

    pts = [finite(d) for d in diagrams]
    every = np.concatenate(pts) if pts else np.zeros((0, 2))
    if len(every) == 0:
        raise ValueError("persistence_images: every diagram is empty (no finite points)")
    pers = every[:, 1] - every[:, 0]
    span = float(pers.max()) or 1.0
    pixel = pixel_size if pixel_size is not None else span / resolution
    # H_0 points are all born at 0: give the birth axis at least one pixel of range.
    birth_lo, birth_hi = float(every[:, 0].min()), float(every[:, 0].max())
    imager = PersistenceImager(
        birth_range=(birth_lo, max(birth_hi, birth_lo + pixel)),
        pers_range=(0.0, span),
        pixel_size=pixel,
        kernel_params={"sigma": [[(pixel) ** 2, 0.0], [0.0, (pixel) ** 2]]},
    )
    return [imager.transform(p, skew=True) for p in pts], imager
