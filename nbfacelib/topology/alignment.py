"""Topological structure alignment losses between two spaces from their H0 persistence pairs.

TopoFR (NeurIPS 2024), Eq. 2, the paper's symmetric form: with ``M_X``, ``M_Z`` the distance
matrices of the input and latent batches and ``g_X``, ``g_Z`` their H0 persistence pairs (MST
edges),

    L_sa = 1/2 (||M_X[g_X] - M_Z[g_X]||^2 + ||M_Z[g_Z] - M_X[g_Z]||^2):

each space's topologically relevant edges must keep their length in the other space.

The official code (``match_edges=None`` of the topological-autoencoder signature) instead
compares the i-th shortest MST edge of X with the i-th shortest of Z, whatever edges those
are, and divides by the batch size:

    L_official = sum_k (M_X[g_X]_(k) - M_Z[g_Z]_(k))^2 / B   (both sorted ascending).

The pairs are indices (piecewise-constant in the distances), so both losses differentiate
through the selected distances only; the tests check the gradients by finite differences.
"""

from __future__ import annotations

from torch import Tensor

from .h0 import H0Pairs, h0_pairs

FORMS = ("paper", "official")


def alignment_loss(
    dist_x: Tensor,
    dist_z: Tensor,
    form: str = "paper",
    pairs_x: H0Pairs | None = None,
    pairs_z: H0Pairs | None = None,
) -> Tensor:
    """Scalar alignment loss between two (B, B) distance matrices of the same B points.

    ``form``: ``"paper"`` (Eq. 2, symmetric, the default) or ``"official"`` (the official
    code's sorted-edge form / B). ``pairs_x`` / ``pairs_z`` reuse already computed H0 pairs.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if dist_x.shape != dist_z.shape:
        raise ValueError(
            "dist_x and dist_z must hold the same points: "
            f"shapes {tuple(dist_x.shape)} vs {tuple(dist_z.shape)}"
        )
    px = pairs_x if pairs_x is not None else h0_pairs(dist_x)
    pz = pairs_z if pairs_z is not None else h0_pairs(dist_z)
    xi, xj = px.edges.unbind(1)
    zi, zj = pz.edges.unbind(1)
    if form == "paper":
        on_x = (dist_x[xi, xj] - dist_z[xi, xj]).pow(2).sum()
        on_z = (dist_z[zi, zj] - dist_x[zi, zj]).pow(2).sum()
        return 0.5 * (on_x + on_z)
    # Pairs come sorted by length (ties by edge key), the order the official union-find
    # emits them in, so the k-th entries are the k-th shortest edges of each space.
    return (dist_x[xi, xj] - dist_z[zi, zj]).pow(2).sum() / dist_x.shape[0]
