"""Face shape beyond the parameters: a smooth warp of its own for every identity.

The ~50 identity parameters (:mod:`.identity`) place each feature on its own (eyes, nose,
mouth, face outline), so every face is one of the drawings those few numbers allow, and two
people differ only along them. Real faces differ in many more ways at once: a face a little
longer on one side, a jaw that widens lower, eyes closer to the brows than the nose is to
the mouth. A style with ``morph > 0`` gives every identity a smooth displacement field, a sum
of low 2-D cosine terms cos(pi i (x + 1) / 2) cos(pi j (y + 1) / 2) (frequencies 0..3 per axis,
without the constant, which is the alignment jitter's), each coefficient uniform in
``[-morph, morph] / (i + j)``, the higher frequencies weaker.

The field is left-right symmetric (x displacements odd in x, y displacements even: only the
terms of that parity, 8 for x and 7 for y, so 15 shape factors per identity). Faces are
nearly symmetric, and training flips images at random: an asymmetric warp would show each
person with two mirror shapes. The first version, asymmetric (all 15 terms for each of x and
y), moved LFW by -1.6 and +1.4 points on two seeds: not adopted (BENCHMARKS.md, "A face
shape of its own"). The symmetric one is: its LFW trunk accuracy beat ``mixed``'s on both
seeds of the rule stated before they ran (+0.2 and +0.03 points, narrow), so the ``morphed``
mix is what notebook 00's cpu preset trains on.
``morph = 0.05`` (the ``morphed`` mix) moves a point of a 112 image by 2.1 px, RMS over the
image and 2,000 identities (99th percentile 4.6 px): jaws, face outlines and feature spacings
visibly change.

The warp is composed into the pose grid (a frontal-face point p is drawn from p + D(p)), so
the base faces and their cache are those of the style without it, and everything drawn in
the face's frame (expression, occluders, glasses, the lit relief) warps with the face. Its
uniforms come from the identity's own hash domain (11) through
:func:`~.identity.identity_uniforms`, so a near twin's warp is its partner's, nudged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .identity import identity_uniforms

MORPH_DOMAIN = 11
_FREQ = 4  # cosine frequencies 0..3 per axis
# x displacements odd in x (i odd), y displacements even in x (i even): a symmetric field
_TERMS_X = [(i, j) for j in range(_FREQ) for i in range(1, _FREQ, 2)]  # 8
_TERMS_Y = [(i, j) for j in range(_FREQ) for i in range(0, _FREQ, 2) if i + j]  # 7
_TABLE = 16  # the field is tabulated on 16 x 16 points and sampled bilinearly at the grid


def _basis(terms: list[tuple[int, int]], device) -> torch.Tensor:
    """(K, T, T) cosine terms cos(pi i (x + 1) / 2) cos(pi j (y + 1) / 2) on the table."""
    t = torch.linspace(-1, 1, _TABLE, device=device, dtype=torch.float32)
    return torch.stack(
        [
            torch.cos(math.pi * i * (t[None] + 1) / 2) * torch.cos(math.pi * j * (t[:, None] + 1) / 2)
            for i, j in terms
        ]
    )


def _field(coef: torch.Tensor, terms: list[tuple[int, int]], amplitude: float) -> torch.Tensor:
    """(B, T, T) the sum of the terms, coefficients (B, K) in [-1, 1] scaled by amplitude / (i + j).
    One term at a time, in a fixed order (not a matrix product, whose blocking can depend on
    the batch size): an image's field is then the same float in any batch."""
    basis = _basis(terms, coef.device)
    field = coef[:, 0, None, None] * (amplitude / sum(terms[0])) * basis[0]
    for k in range(1, len(terms)):
        field.addcmul_(coef[:, k, None, None], basis[k], value=amplitude / sum(terms[k]))
    return field


def morph_fields(identities: torch.Tensor, seed: int, amplitude: float) -> torch.Tensor:
    """(B, 2, T, T) each identity's displacement (x, y) in face units, tabulated on [-1, 1]^2."""
    u = identity_uniforms(identities, seed, len(_TERMS_X) + len(_TERMS_Y), MORPH_DOMAIN)
    coef = 2 * u - 1
    fx = _field(coef[:, : len(_TERMS_X)], _TERMS_X, amplitude)
    fy = _field(coef[:, len(_TERMS_X) :], _TERMS_Y, amplitude)
    return torch.stack([fx, fy], 1)


def morph_grid(grid: torch.Tensor, identities: torch.Tensor, seed: int, amplitude: float) -> torch.Tensor:
    """The pose grid (B, S, S, 2) with each identity's warp added: p -> p + D(p); the grid
    itself when ``amplitude`` is 0 (a style without the warp)."""
    if not amplitude:
        return grid
    field = morph_fields(identities, seed, amplitude)
    shift = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return grid + shift.permute(0, 2, 3, 1)
