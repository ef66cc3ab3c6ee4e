"""Identity parameters: ~50 physical parameters per identity, and near twins.

An identity is a vector of parameters (face and jaw shape, skin tone, eye spacing/size/shape/
tilt, iris colour, brows, nose, mouth, ears, hair style and colour, facial hair, a fixed
pattern of marks), hashed from ``(seed, identity)``.

Near twins: identities come in pairs ``(2k, 2k+1)``; for a fraction ``TWIN_FRACTION`` of
pairs the odd identity is its even partner's parameters plus a small perturbation (same
categorical choices: hair style, facial hair, marks), so verification does not saturate.
A split of identities must therefore start at an even identity (see
:func:`check_identity_offset`), or a held-out identity can be the twin of a training one.
"""

from __future__ import annotations

import numpy as np
import torch

from .hashing import uniforms

TWIN_FRACTION = 0.25  # fraction of identity pairs (2k, 2k+1) that are near twins
TWIN_EPS = 0.12  # perturbation of a twin's continuous parameters, in uniform [0, 1] units
_ID_STREAMS = 64
# Streams that a twin copies exactly (categorical choices and the marks' layout).
_CATEGORICAL = [27, 30, 32] + list(range(33, 45))
_HAIR_PALETTE = [
    (22, 18, 16), (48, 32, 24), (92, 62, 40), (140, 72, 38), (176, 132, 80),
    (215, 188, 128), (150, 148, 145), (222, 220, 214),
]  # fmt: skip
_IRIS_PALETTE = [(70, 42, 22), (110, 72, 38), (104, 110, 60), (70, 120, 90), (80, 120, 170), (120, 130, 140)]
_SKIN_LIGHT, _SKIN_DARK = (242, 204, 178), (92, 58, 38)


def twin_parent(identities: torch.Tensor, seed: int) -> torch.Tensor:
    """For each identity, the identity it is a near twin of, or -1."""
    identities = identities.long()
    pair = identities >> 1
    flag = uniforms(seed, [pair], 1, domain=7)[:, 0] < TWIN_FRACTION
    return torch.where(flag & (identities % 2 == 1), identities - 1, torch.full_like(identities, -1))


def identity_uniforms(
    identities: torch.Tensor, seed: int, n: int, domain: int, copied: list[int] | tuple[int, ...] = ()
) -> torch.Tensor:
    """(U, n) uniforms of each identity from hash ``domain``; a near twin takes its partner's,
    nudged by ``TWIN_EPS`` (the streams in ``copied`` exactly: categorical choices). Every
    per-identity draw goes through here (parameters, relief, detail), so twins stay twins."""
    identities = identities.long()
    u = uniforms(seed, [identities], n, domain=domain)
    parent = twin_parent(identities, seed)
    twin = parent >= 0
    if bool(twin.any()):
        up = uniforms(seed, [parent.clamp(min=0)], n, domain=domain)
        near = (up + TWIN_EPS * (u - 0.5)).clamp(0.001, 0.999)
        if copied:
            near[:, list(copied)] = up[:, list(copied)]
        u = torch.where(twin[:, None], near, u)
    return u


def check_identity_offset(offset: int) -> int:
    """``offset`` as an int, if it is a valid first identity of a split: an even integer >= 0.

    An odd offset cuts a twin pair ``(2k, 2k+1)`` in two: the split's first identity could be
    the near twin of the last identity of the split before it, so "held-out" faces would have
    a training twin. :func:`next_split_offset` rounds a count up to the next valid offset."""
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or offset < 0:
        raise ValueError(f"identity_offset={offset!r}: expected an integer >= 0")
    if offset % 2:
        raise ValueError(
            f"identity_offset={offset!r} is odd: identities ({offset - 1}, {offset}) form a "
            f"near-twin pair, so a split starting at {offset} could hold the twin of an identity "
            f"before it; use an even offset (e.g. {offset + 1}, see next_split_offset)"
        )
    return int(offset)


def next_split_offset(end: int) -> int:
    """The first valid identity offset at or after ``end`` (``end`` rounded up to even): where a
    split after identities ``[.., end)`` starts so that no twin pair is shared."""
    return int(end) + int(end) % 2


def _palette(u: torch.Tensor, colours: list[tuple[int, int, int]]) -> torch.Tensor:
    """Piecewise-linear interpolation along a colour list: u (B,) in [0,1] -> (B, 3) in [0,1]."""
    pal = torch.tensor(colours, dtype=torch.float32, device=u.device) / 255.0
    t = u.clamp(0, 1) * (len(colours) - 1)
    i = t.floor().long().clamp(max=len(colours) - 2)
    f = (t - i).unsqueeze(1)
    return pal[i] * (1 - f) + pal[i + 1] * f


def identity_params(identities: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Physical parameters of each identity (face frame: x right, y down, both in [-1, 1]
    across the image; the ArcFace 112x112 template puts the eyes at y ~ -0.08 and the mouth
    at y ~ 0.65)."""
    u = identity_uniforms(identities, seed, _ID_STREAMS, 1, _CATEGORICAL)

    def lin(j: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * u[:, j]

    p: dict[str, torch.Tensor] = {}
    p["face_w"] = lin(0, 0.56, 0.72)
    p["face_h"] = lin(1, 0.80, 0.95)
    p["face_cy"] = lin(2, 0.06, 0.16)
    p["jaw"] = lin(3, 0.0, 0.55)
    p["squareness"] = lin(4, 1.8, 3.2)
    tone = u[:, 5] ** 1.2
    skin = _palette(tone, [_SKIN_LIGHT, (214, 168, 130), (168, 118, 82), _SKIN_DARK])
    skin = skin + (u[:, 6:7] - 0.5) * torch.tensor([0.08, 0.0, -0.08], device=u.device)
    p["skin"] = skin.clamp(0, 1)
    p["eye_dx"] = lin(7, 0.26, 0.37)
    p["eye_y"] = lin(8, -0.14, -0.02)
    p["eye_w"] = lin(9, 0.085, 0.14)
    p["eye_h_up"] = p["eye_w"] * lin(10, 0.32, 0.62)
    p["eye_h_dn"] = p["eye_w"] * lin(11, 0.22, 0.45)
    p["eye_tilt"] = lin(12, -0.18, 0.18)
    p["iris"] = _palette(u[:, 13], _IRIS_PALETTE) * lin(14, 0.7, 1.15)[:, None]
    p["brow_thick"] = lin(15, 0.018, 0.05)
    p["brow_arch"] = lin(16, -0.01, 0.08)
    p["brow_gap"] = lin(17, 0.09, 0.17)
    p["brow_len"] = lin(18, 0.11, 0.19)
    p["brow_tilt"] = lin(19, -0.25, 0.25)
    p["nose_y"] = lin(20, 0.2, 0.36)
    p["nose_w"] = lin(21, 0.06, 0.13)
    p["mouth_y"] = lin(22, 0.54, 0.68)
    p["mouth_w"] = lin(23, 0.16, 0.29)
    p["lip_t"] = lin(24, 0.018, 0.045)
    p["lip"] = (p["skin"] * torch.tensor([0.85, 0.55, 0.55], device=u.device)) * lin(25, 0.8, 1.1)[:, None]
    p["lip"] = p["lip"] + lin(25, 0.0, 0.12)[:, None] * torch.tensor([1.0, 0.0, 0.1], device=u.device)
    p["ear_s"] = lin(26, 0.09, 0.15)
    p["hair_style"] = (u[:, 27] * 8).floor()
    p["hair"] = _palette(u[:, 28], _HAIR_PALETTE) * lin(29, 0.8, 1.1)[:, None]
    fh = (u[:, 30] * 8).floor()  # 0-3 none, 4 stubble, 5 moustache, 6 goatee, 7 beard
    p["beard_style"] = torch.where(fh < 4, torch.zeros_like(fh), fh - 3)
    p["beard_density"] = lin(31, 0.45, 0.95)
    p["marks"] = (u[:, 32] * 7).floor()  # 0..6 marks
    p["mark_xy"] = (u[:, 33:45].reshape(-1, 6, 2) - 0.5) * torch.tensor([1.0, 1.1], device=u.device)
    p["mark_xy"] = p["mark_xy"] + torch.tensor([0.0, 0.2], device=u.device)
    p["mark_s"] = lin(45, 0.010, 0.022)
    p["blush"] = lin(46, 0.0, 0.35)
    p["hairline"] = lin(47, 0.55, 0.82)  # fraction of face_h above the centre
    p["hair_vol"] = lin(48, 0.04, 0.16)
    p["hair_part"] = lin(49, -0.5, 0.5)
    p["ear_y"] = lin(50, -0.06, 0.1)
    p["neck_w"] = lin(51, 0.38, 0.52)
    p["cheek"] = lin(52, 0.0, 1.0)
    p["nose_len"] = lin(53, 0.6, 1.0)
    return p
