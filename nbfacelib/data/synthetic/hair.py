"""Hair as a volume, for the ``hair`` style: silhouettes, hairlines and ear cover that vary
the way people's do, shaded as the head's own relief.

Why: at 64 px in grey most of what tells ORL's people apart outside the eyes is the hair:
its outline against the background, how far it comes down the forehead, whether it covers
the ears. The flat faces draw it as eight bowl-shaped caps of one outline (the contact sheet
of notebook 00), so a network trained on them learns nothing about hair that carries over.
Here each identity has continuous hair factors, drawn once into its cached base face:

- **outline**: volume above the skull (``top``) and beside it (``side``), a wavy edge for
  curly hair (``curl``), and where the side hair ends (``length``: above the ears, over them,
  down to the shoulders, then also behind the neck);
- **hairline**: its height, temples receding (an M), a widow's peak, a side parting that
  sweeps the hair across the forehead, and a fringe (25% of people) with a ragged edge;
- **baldness** (8%): a bare crown with hair only at the sides and back;
- **texture**: straight strands (noise stretched along the fall) through curls (noise at
  the scale of a lock), with a sheen band across the top;
- **volume**: the hair's own height field, added to the head's relief
  (:func:`with_hair_height`), so the light shades it and it casts shadows onto the forehead.

Per-identity values come from their own hash domain (8), so every other style's faces are
unchanged; near twins share the categorical choices (bald, fringe) and are nudged in the rest.
People do not wear their hair the same in every photograph: with the ``haircuts`` style a
quarter of an identity's images (``OTHER_CUT``, recorded per image as ``haircut``) show its
other haircut, drawn from domain 9 for what a haircut changes (fringe, parting, sweep,
volume, length) while colour, curl, baldness and the hairline stay the person's. A haircut is
not a degradation: it does not enter the quality.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .face import _soft, per_image
from .hashing import batch_invariant
from .identity import identity_uniforms

BALD = 0.08  # fraction of identities with a bare crown
FRINGE = 0.25  # fraction of identities with a fringe over the forehead
OTHER_CUT = 0.25  # fraction of an identity's images that show its other haircut
_HAIR_STREAMS = 17
# What a new haircut changes (fringe, parting, sweep, volume, length, fringe depth, inset);
# colour, curl, baldness and the hairline's recession stay the person's.
_CUT_STREAMS = [1, 5, 6, 7, 8, 9, 11, 15]


def hair_params(
    identities: torch.Tensor, seed: int, cut: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-identity hair values (hash domain 8; near twins copy baldness and fringe and take
    the rest nudged). ``cut`` (U,) 0/1: 1 gives the identity's other haircut (domain 9 for the
    streams a haircut changes), as people wear their hair differently from one photograph
    session to the next."""
    u = identity_uniforms(identities, seed, _HAIR_STREAMS, 8, copied=[0, 1])
    if cut is not None and bool(cut.any()):
        other = identity_uniforms(identities, seed, _HAIR_STREAMS, 9, copied=[1])
        take = (cut > 0)[:, None] & torch.isin(
            torch.arange(_HAIR_STREAMS, device=u.device), torch.tensor(_CUT_STREAMS, device=u.device)
        )[None]
        u = torch.where(take, other, u)

    def lin(j, lo, hi, power=1.0):
        return lo + (hi - lo) * u[:, j] ** power

    return {
        "bald": (u[:, 0] < BALD).float(),
        "fringe": (u[:, 1] < FRINGE).float(),
        "hairline": lin(2, 0.5, 0.85),  # hairline height above the face centre, times face_h
        "recession": lin(3, 0.0, 0.2, 2.0),  # temples receding (face units), mostly little
        "peak": lin(4, 0.0, 0.07, 3.0),  # widow's peak depth
        "part": lin(5, -0.5, 0.5),  # parting position, face units
        "sweep": lin(6, 0.0, 0.1),  # how far the parted hair comes down on its far side
        "top": lin(7, 0.0, 0.24, 1.3),  # volume above the skull
        "side": lin(8, 0.01, 0.15),  # volume beside the skull
        "length": lin(9, -0.4, 0.95, 1.6),  # side hair ends at face_cy + this (ears ~ -0.05..0.1)
        "curl": lin(10, 0.0, 1.0, 2.0),  # 0 straight .. 1 curly
        "fringe_depth": lin(11, 0.0, 1.0),  # 0 high on the forehead .. 1 down to the brows
        "phase": lin(12, 0.0, 6.283),  # of the wavy outline and the ragged fringe
        "field": u[:, 13],  # which fixed noise field the texture comes from
        "contrast": lin(14, 0.1, 0.3),
        "inset": lin(15, 0.0, 0.06),  # long hair falling inside the face's outline
        "sheen": lin(16, 0.0, 0.25),
    }


class HairLayers(NamedTuple):
    """(U, S, S) each: ``back`` coverage behind the head and neck (long hair), ``front``
    coverage over the head and face, ``tone`` the hair's multiplicative texture and shading,
    ``height`` the hair's surface height (face units, as :func:`~.shading.height_field`),
    ``crown`` the bare crown of bald heads."""

    back: torch.Tensor
    front: torch.Tensor
    tone: torch.Tensor
    height: torch.Tensor
    crown: torch.Tensor


def hair_layers(
    p: dict[str, torch.Tensor],
    h: dict[str, torch.Tensor],
    d_face: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    bank: torch.Tensor,
    size: int,
) -> HairLayers:
    """Each identity's hair as coverage, tone and height on the base face's grid. ``d_face``
    (U, S, S) is the signed distance to the face outline (negative inside); ``bank`` the
    renderer's fixed noise fields (channel 2: the skin texture uses 0 and 1)."""
    px = 2.0 / size
    fw, fh, cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
    bald, curl = per_image(h["bald"]), per_image(h["curl"])
    top = per_image(h["top"]) * (1 - bald)
    side = per_image(h["side"])
    rx, ry_up, ry_dn = fw + side, fh + top, fh + side
    dy = Y - cy
    ry = torch.where(dy < 0, ry_up, ry_dn)
    # The outline: an ellipse, wavy for curly hair (angles around the head's centre).
    theta = torch.atan2(dy, X)
    ph = per_image(h["phase"])
    wave = 0.5 * torch.sin(5 * theta + ph) + 0.3 * torch.sin(9 * theta + 2 * ph) + 0.2 * torch.sin(14 * theta)
    r = ((X / rx) ** 2 + (dy / ry) ** 2).sqrt()
    d_out = (r - 1 - (0.015 + 0.05 * curl) * wave) * rx
    # The hairline: height, receding temples, widow's peak, a parting's sweep, a fringe.
    hl = cy - fh * per_image(h["hairline"]) + 0.05 * X**2
    hl = hl - per_image(h["recession"]) * torch.exp(-(((X.abs() - 0.6 * fw) / (0.25 * fw)) ** 2))
    hl = hl + per_image(h["peak"]) * torch.exp(-((X / 0.09) ** 2))
    part = per_image(h["part"])
    hl = hl + per_image(h["sweep"]) * batch_invariant(torch.sigmoid, (X - part) * 8 * torch.sign(part + 1e-6))
    brows = per_image(p["eye_y"] - p["brow_gap"]) - 0.04
    fringe_y = hl + (brows - hl) * per_image(h["fringe_depth"]).clamp(0.3, 1.0)
    ragged = 0.018 * (torch.sin(23 * X + ph) + 0.6 * torch.sin(41 * X + 3 * ph))
    hl = torch.where(per_image(h["fringe"]) > 0, torch.maximum(hl, fringe_y + ragged), hl)
    above = _soft(Y - hl, px) * (1 - bald)
    # Side hair: outside the face (or inside its edge, for long hair), down to its length.
    end = cy + per_image(h["length"])
    long_ = (per_image(h["length"]) > 0.25).float()
    inset = per_image(h["inset"]) * long_
    beside = _soft(-(d_face + inset), px) * _soft(Y - end, px)
    beside = beside * torch.where(bald > 0, _soft(cy - fh * 0.3 - Y, px), torch.ones_like(Y))
    front = _soft(d_out, px) * torch.maximum(above, beside)
    # Long hair also falls behind the head and neck, straight down to its length.
    below = torch.where(dy < 0, d_out, (X.abs() - rx * (1 + 0.06 * dy)))
    back = _soft(torch.maximum(below, Y - end), px) * long_
    crown = _soft(((X / (fw + 0.02)) ** 2 + (dy / (fh + 0.02)) ** 2).sqrt() - 1, px) * bald
    # Texture: strands stretched along the fall (straight) through locks (curly), plus a sheen.
    k = (h["field"] * bank.shape[0]).long().clamp(max=bank.shape[0] - 1)
    field = bank[k, 2:3, :size, :size]
    strands = F.avg_pool2d(field, (9, 1), 1, (4, 0), count_include_pad=False)[:, 0] * 2.5
    locks = F.avg_pool2d(field, 3, 1, 1, count_include_pad=False)[:, 0] * 2.0
    grain = strands + (locks - strands) * curl
    clumps = F.interpolate(F.avg_pool2d(field, 4), size=(size, size), mode="bilinear", align_corners=False)
    tone = 1 + per_image(h["contrast"]) * (grain + 1.5 * clumps[:, 0])
    band = torch.exp(-(((r - 0.75) / 0.12) ** 2)) * (dy < 0).float()
    edge = (r - 0.8).clamp(0, 0.25) / 0.25  # darker towards the outline: the volume turns away
    tone = tone * (1 + per_image(h["sheen"]) * (1 - curl) * band) * (1 - 0.25 * edge)
    # The volume's surface height: an ellipsoid around the skull, a little in front of it.
    height = 0.55 * (1 - r.clamp(max=1) ** 2).sqrt() + 0.04
    return HairLayers(back, front, tone.clamp_(0.55, 1.35), height, crown)


def with_hair_height(z: torch.Tensor, layers: HairLayers) -> torch.Tensor:
    """The head's height field ``z`` (U, S, S) with the hair's volume on top where it covers
    the head (never below the skin: hair lies on the head), and a low layer behind the neck."""
    z = z + layers.front * (torch.maximum(z, layers.height) - z)
    return z + layers.back * (1 - layers.front) * (0.06 - z).clamp(min=0)
