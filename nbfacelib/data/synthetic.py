"""Synthetic faces: procedural identities with recorded nuisances and a ground-truth quality.

The embedded default data set. An identity is a vector of ~50 parameters (face and jaw
shape, skin tone, eye spacing/size/shape/tilt, iris colour, brows, nose, mouth, ears, hair
style and colour, facial hair, a fixed pattern of marks). Each image of it adds nuisances:
pose (yaw, pitch, roll) and alignment jitter, expression (smile, mouth open, eyes closed),
illumination (direction, strength, exposure), colour cast, background, an occluder
(sunglasses, hat, medical mask or random block, with the occluded fraction of the face),
blur (gaussian and motion), noise, down-sampling and JPEG quality. Everything is a pure
function of ``(seed, identity, sample)`` through a counter-based integer hash, so any index
renders on its own, in any batch, in any order, and nothing is stored.

Near twins: identities come in pairs ``(2k, 2k+1)``; for a fraction ``TWIN_FRACTION`` of
pairs the odd identity is its even partner's parameters plus a small perturbation (same
categorical choices: hair style, facial hair, marks), so verification does not saturate.

Rendering (why it is fast): an identity's frontal face is drawn once, vectorised over the
identities of a batch, as premultiplied RGBA plus a face mask, and kept in an LRU cache
(uint8, keyed by seed, identity, size and device). Per image: expression and occluders are
drawn as small overlays in the face's own frame, one ``grid_sample`` applies pose (a depth
map of an ellipsoid with a nose makes yaw/pitch move the nose more than the cheeks) and
alignment jitter, then background, a Lambertian light field, colour cast, and the
degradations of :mod:`nbfacelib.data.degrade` (blur with per-image kernels, down-sampling,
noise from a fixed bank shifted per image, JPEG by batched DCT), each run only on the images
that need it. Bytes are reproducible on a given device type (tested on CPU); a GPU renders
the same faces and nuisances up to float rounding.

Ground-truth quality (see :func:`quality_from_nuisances`) is a product of factors in (0, 1],
one per nuisance, each non-increasing in its degradation.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from nbfacelib.data import degrade

__all__ = [
    "SyntheticFaces",
    "render",
    "quality_from_nuisances",
    "identity_params",
    "sample_nuisances",
    "twin_parent",
    "DIFFICULTIES",
    "SIZES",
    "NUISANCE_KEYS",
    "OCCLUDERS",
]

SIZES = (112, 160)
# Multiplier on nuisance ranges and probabilities.
DIFFICULTIES = {"easy": 0.5, "medium": 1.0, "hard": 1.6}
OCCLUDERS = ("none", "sunglasses", "hat", "mask", "block")
TWIN_FRACTION = 0.25  # fraction of identity pairs (2k, 2k+1) that are near twins
TWIN_EPS = 0.12  # perturbation of a twin's continuous parameters, in uniform [0, 1] units
DOWNSAMPLE_FACTORS = (1.5, 2.0, 2.5, 3.0, 4.0)

# Nuisances recorded per image, in CSV column order. Lengths are in pixels of a 112x112
# image (scaled with the size), angles in degrees, intensities in 0..255 units.
NUISANCE_KEYS = (
    "yaw", "pitch", "roll", "shift_x", "shift_y", "scale",
    "smile", "mouth_open", "eyes_closed",
    "light_angle", "light_azimuth", "light_strength", "exposure",
    "cast_r", "cast_g", "cast_b",
    "background", "bg_angle", "bg_contrast",
    "occluder", "occluded",
    "blur_sigma", "motion_length", "motion_angle",
    "noise_sigma", "downsample", "jpeg_quality",
    "quality",
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# Counter-based hashing: uniforms from (seed, identity, sample, stream), done in int64 torch
# arithmetic on 32-bit values (the multiply is split in 16-bit halves so nothing overflows),
# hence identical on every device and independent of batch composition.
# --------------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a bijective 32-bit integer hash with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _uniforms(seed: int, keys: list[torch.Tensor], n: int, domain: int) -> torch.Tensor:
    """(B, n) float32 uniforms in (0, 1) hashed from ``seed``, a ``domain`` tag and the
    integer key tensors (B,) (identity, sample, ...)."""
    dev = keys[0].device
    h = _mix32(torch.full_like(keys[0], (seed * 0x9E3779B1 + domain * 0x85EBCA77) & _M32))
    for k in keys:
        h = _mix32(h ^ (k.long() & _M32))
        h = _mix32(h ^ ((k.long() >> 32) & _M32))
    streams = torch.arange(n, device=dev, dtype=torch.long)
    h = _mix32(_mix32(h[:, None] ^ (streams[None] * 0x632BE5AB & _M32)))
    return ((h.double() + 0.5) / 2.0**32).float()


# --------------------------------------------------------------------------------------------
# Identity parameters
# --------------------------------------------------------------------------------------------
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
    flag = _uniforms(seed, [pair], 1, domain=7)[:, 0] < TWIN_FRACTION
    return torch.where(flag & (identities % 2 == 1), identities - 1, torch.full_like(identities, -1))


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
    identities = identities.long()
    u = _uniforms(seed, [identities], _ID_STREAMS, domain=1)
    parent = twin_parent(identities, seed)
    is_twin = parent >= 0
    if bool(is_twin.any()):
        up = _uniforms(seed, [parent.clamp(min=0)], _ID_STREAMS, domain=1)
        cont = (up + TWIN_EPS * (u - 0.5)).clamp(0.001, 0.999)
        cat = torch.zeros(_ID_STREAMS, dtype=torch.bool, device=u.device)
        cat[_CATEGORICAL] = True
        twin_u = torch.where(cat[None], up, cont)
        u = torch.where(is_twin[:, None], twin_u, u)

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


# --------------------------------------------------------------------------------------------
# Drawing helpers: soft masks with an edge about one pixel wide.
# --------------------------------------------------------------------------------------------


def _soft(d: torch.Tensor, px: float) -> torch.Tensor:
    """Coverage of a shape from a signed distance ``d`` (negative inside) in face units."""
    return (0.5 - d / px).clamp_(0, 1)


def _blend(canvas: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> None:
    """In-place 'over' onto premultiplied RGBA ``canvas`` (B, 4+, h, w): C <- C + a (c - C),
    A <- A + a (1 - A), as one fused ``lerp_``. alpha (B, h, w); colour (B, 3) or (B, 3, h, w)."""
    if colour.dim() == 2:
        target = torch.cat([colour, torch.ones_like(colour[:, :1])], 1)[:, :, None, None]
    else:
        target = torch.cat([colour, torch.ones_like(colour[:, :1])], 1)
    canvas[:, :4].lerp_(target, alpha.unsqueeze(1))


def _grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    return c.view(1, 1, size), c.view(1, size, 1)  # X (1,1,S), Y (1,S,1)


def _v(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def _face_oval(p: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance to the face outline (superellipse with a tapering jaw)."""
    fw, fh, cy = _v(p["face_w"]), _v(p["face_h"]), _v(p["face_cy"])
    dy = (Y - cy) / fh
    a = fw * (1 - _v(p["jaw"]) * dy.clamp(min=0) ** 2)
    e = _v(p["squareness"])
    f = (X.abs() / a) ** e + dy.abs() ** e
    return (f ** (1 / e) - 1) * fw


def _hair_texture(X: torch.Tensor, Y: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    return 0.86 + 0.14 * torch.sin(70 * X + 9 * torch.sin(5 * Y) + _v(phase) * 6.283)


def _render_base(p: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Frontal, neutral face of each identity: (U, 5, S, S) float = premultiplied RGB, alpha,
    face mask (the skin oval, used for the occluded fraction)."""
    U = p["face_w"].shape[0]
    dev = p["face_w"].device
    X, Y = _grid(size, dev)
    px = 2.0 / size
    canvas = torch.zeros(U, 5, size, size, device=dev)
    skin, hair = p["skin"], p["hair"]
    style = _v(p["hair_style"])
    fw, fh, cy = _v(p["face_w"]), _v(p["face_h"]), _v(p["face_cy"])
    tex = _hair_texture(X, Y, p["hair_part"])
    # Long hair falls behind the head and neck (styles 5 long, 6 volume).
    long_hair = ((style == 5) | (style == 6)).float()
    d_back = ((X / (fw + 0.16)) ** 2 + ((Y - cy + 0.1) / (fh + 0.14)) ** 2).sqrt() - 1
    d_back = torch.maximum(d_back, Y - (cy + 0.55 + 0.25 * (style == 5).float()))
    _blend(canvas, _soft(d_back * 0.7, px) * long_hair, hair[:, :, None, None] * 0.8 * tex.unsqueeze(1))
    # Neck and shoulders.
    d_neck = torch.maximum(X.abs() - _v(p["neck_w"]) * fw, cy + 0.2 - Y)
    _blend(canvas, _soft(d_neck, px), skin * 0.78)
    d_sh = ((X / 1.3) ** 2 + ((Y - 1.45) / 0.55) ** 2).sqrt() - 1
    _blend(canvas, _soft(d_sh * 0.5, px), skin * 0.7)
    # Ears at the sides of the face.
    ey = _v(p["eye_y"] + p["ear_y"] + 0.12)
    es = _v(p["ear_s"])
    d_ear = (((X.abs() - fw * 0.97) / (es * 0.55)) ** 2 + ((Y - ey) / es) ** 2).sqrt() - 1
    _blend(canvas, _soft(d_ear * es, px), skin * 0.88)
    d_ear_in = (((X.abs() - fw * 1.0) / (es * 0.28)) ** 2 + ((Y - ey) / (es * 0.6)) ** 2).sqrt() - 1
    _blend(canvas, _soft(d_ear_in * es, px) * 0.5, skin * 0.6)
    # Face, shaded a little darker towards the outline so it reads as a volume.
    d_face = _face_oval(p, X, Y)
    face = _soft(d_face, px)
    rim = (1 + d_face / fw).clamp(0, 1)  # 0 at the centre .. 1 at the outline
    shade = (1.04 - 0.22 * rim**3).unsqueeze(1)
    _blend(canvas, face, skin[:, :, None, None] * shade)
    canvas[:, 4] = face
    whole = canvas, X, Y, face

    def region(x0: float, x1: float, y0: float, y1: float):
        """The features below are drawn only inside their bounding box (face units), on views
        of the canvas: most of the frame never sees them."""
        (rs, cs), Xr, Yr = _region(size, x0, x1, y0, y1, dev)
        return whole[0][:, :, rs, cs], Xr, Yr, whole[3][:, rs, cs]

    # Cheeks: blush and cheekbone shadow.
    canvas, X, Y, face = region(-1, 1, -0.15, 0.7)
    d_cheek = ((X.abs() - fw * 0.55) ** 2 / 0.02 + (Y - _v(p["nose_y"])) ** 2 / 0.015).clamp(max=30)
    blush = torch.exp(-d_cheek) * _v(p["blush"]) * face
    _blend(canvas, blush, torch.tensor([[0.85, 0.35, 0.35]], device=dev).expand(U, 3))
    # Marks: up to six moles at fixed places in the face.
    canvas, X, Y, face = region(-0.56, 0.56, -0.4, 0.8)
    mk = torch.zeros_like(face)
    for k in range(6):
        present = _v((p["marks"] > k).float())
        mx, my = _v(p["mark_xy"][:, k, 0]), _v(p["mark_xy"][:, k, 1])
        s = _v(p["mark_s"]) * (0.7 + 0.3 * ((k * 0.37) % 1))
        mk = torch.maximum(mk, present * _soft(((X - mx) ** 2 + (Y - my) ** 2).sqrt() - s, px))
    _blend(canvas, mk * face * 0.85, skin * 0.45)
    # Nose: shadows along the bridge, nostrils, tip highlight.
    canvas, X, Y, face = region(-0.32, 0.32, -0.3, 0.55)
    ny, nw = _v(p["nose_y"]), _v(p["nose_w"])
    top = _v(p["eye_y"]) + 0.06 + (1 - _v(p["nose_len"])) * 0.12
    bridge = torch.exp(-((X - nw * 0.45) ** 2) / (2 * 0.02**2)) * _soft(top - Y, 0.1) * _soft(Y - ny, 0.1)
    _blend(canvas, bridge * 0.3, skin * 0.62)
    d_nos = (((X.abs() - nw * 0.45) / (nw * 0.28)) ** 2 + ((Y - ny) / (nw * 0.16)) ** 2).sqrt() - 1
    _blend(canvas, _soft(d_nos * nw * 0.2, px) * 0.9, skin * 0.35)
    d_wing = (((X.abs() - nw * 0.55) / (nw * 0.3)) ** 2 + ((Y - ny + 0.02) / (nw * 0.35)) ** 2).sqrt() - 1
    _blend(
        canvas, (_soft(d_wing * nw * 0.3, px) - _soft(d_nos * nw * 0.2, px)).clamp(0, 1) * 0.25, skin * 0.7
    )
    tip = torch.exp(-(X**2 + (Y - ny + 0.045) ** 2) / (2 * 0.03**2))
    _blend(canvas, tip * 0.25, (skin * 1.2).clamp(max=1))
    # Eyes: socket shadow, sclera, iris, pupil, upper-lid line.
    canvas, X, Y, face = region(-0.9, 0.9, -0.6, 0.4)
    ex = X.abs() - _v(p["eye_dx"])
    t = _v(p["eye_tilt"])
    yy = Y - _v(p["eye_y"])
    u = ex * torch.cos(t) - yy * torch.sin(t)
    v = ex * torch.sin(t) + yy * torch.cos(t)
    ew, hu, hd = _v(p["eye_w"]), _v(p["eye_h_up"]), _v(p["eye_h_dn"])
    socket = torch.exp(-((u / (ew * 1.5)) ** 2 + ((v + hu * 0.5) / (hu * 2.4)) ** 2))
    _blend(canvas, socket * 0.25 * face, skin * 0.6)
    f_eye = ((u / ew) ** 2 + (v / torch.where(v < 0, hu, hd)) ** 2).sqrt()
    eye = _soft((f_eye - 1) * hd, px)
    _blend(canvas, eye, torch.tensor([[0.93, 0.92, 0.88]], device=dev).expand(U, 3))
    ri = torch.minimum(hu, hd) * 1.25
    r = (u**2 + (v - hu * 0.1) ** 2).sqrt()
    _blend(canvas, _soft(r - ri, px) * eye, p["iris"].clamp(0, 1))
    _blend(canvas, _soft(r - ri * 0.45, px) * eye, torch.zeros(U, 3, device=dev) + 0.05)
    glint = _soft(((u - ri * 0.3) ** 2 + (v + ri * 0.35) ** 2).sqrt() - ri * 0.18, px) * eye
    _blend(canvas, glint * 0.8, torch.ones(U, 3, device=dev))
    lid = (
        _soft(((f_eye - 1.05).abs() - 0.12) * hu, px)
        * (v < hu * 0.2).float()
        * _soft(u.abs() - ew * 1.05, px)
    )
    _blend(canvas, lid * 0.9, skin * 0.25)
    # Brows: arched strokes above the eyes, thinning towards the tail.
    canvas, X, Y, face = region(-0.65, 0.65, -0.55, 0.1)
    bl = _v(p["brow_len"])
    bx = X.abs() - _v(p["eye_dx"]) + 0.02
    yc = (
        _v(p["eye_y"] - p["brow_gap"])
        - _v(p["brow_arch"]) * (1 - (bx / bl) ** 2)
        - _v(p["brow_tilt"]) * bx * 0.3
    )
    thick = _v(p["brow_thick"]) * (1 - 0.45 * ((bx + bl) / (2 * bl)).clamp(0, 1))
    brow = _soft((Y - yc).abs() - thick, px) * _soft(bx.abs() - bl, px)
    _blend(canvas, brow * 0.92, hair * 0.75)
    # Facial hair (style 1 stubble, 2 moustache, 3 goatee, 4 full beard).
    canvas, X, Y, face = region(-1, 1, 0.0, 1.0)
    bs = _v(p["beard_style"])
    my, mw = _v(p["mouth_y"]), _v(p["mouth_w"])
    dens = _v(p["beard_density"])
    btex = 0.75 + 0.25 * torch.sin(150 * X + 40 * Y).abs()
    lower = face * _soft(ny + 0.06 - Y, px)
    stubble = lower * (bs == 1).float() * 0.35 * dens
    ym = my - _v(p["lip_t"]) - 0.03 + 0.06 * (X / mw) ** 2  # droops at the ends
    mous = _soft(torch.maximum(X.abs() - mw * 1.1, (Y - ym).abs() - 0.022), px)
    mous = mous * ((bs == 2) | (bs == 4)).float() * dens
    d_goat = ((X / (mw * 0.75)) ** 2 + ((Y - my - 0.13) / 0.13) ** 2).sqrt() - 1
    goat = _soft(d_goat * 0.1, px) * face * ((bs == 3) | (bs == 4)).float()
    full = face * _soft(my - 0.04 - 0.45 * (X / fw) ** 2 - Y, px) * (bs == 4).float()
    fa = torch.maximum(torch.maximum(stubble, mous), torch.maximum(goat * dens, full * dens)) * btex
    _blend(canvas, fa.clamp(0, 1), hair * 0.8)
    canvas, X, Y, face = whole
    # Scalp hair: inside an enlarged head outline, above the hairline (and down the sides for
    # the styles that have them). Styles: 0 bald, 1 buzz, 2 short, 3 side part, 4 fringe,
    # 5 long, 6 volume, 7 receding.
    vol = _v(p["hair_vol"]) * (1 + 1.2 * (style == 6).float()) * (style != 0).float()
    d_head = ((X / (fw + vol)) ** 2 + ((Y - cy) / (fh + vol)) ** 2).sqrt() - 1
    hl = cy - fh * _v(p["hairline"])
    hl = hl + 0.16 * (style == 4).float() - 0.1 * (style == 7).float() * (1 - X.abs() * 2).clamp(0, 1)
    part = _v(p["hair_part"])
    hl = hl + (style == 3).float() * 0.08 * ((X - part * 0.4) * 3).tanh() * part.sign()
    hl = hl + 0.05 * X**2
    side_depth = cy + torch.where(style >= 5, torch.full_like(style, 0.35), torch.full_like(style, -0.12))
    above = _soft(Y - hl, px)
    sides = (1 - face) * _soft(Y - side_depth, px)
    hair_a = _soft(d_head * (fw + vol), px) * torch.maximum(above, sides)
    density = (
        torch.where(style == 1, torch.full_like(style, 0.55), torch.ones_like(style)) * (style != 0).float()
    )
    _blend(canvas, hair_a * density, hair[:, :, None, None] * tex.unsqueeze(1))
    # Bald heads: a skin-coloured crown above the face.
    crown = _soft(d_head * fw, px) * (style == 0).float() * (1 - canvas[:, 3])
    _blend(canvas, crown, skin * 0.95)
    return canvas


# --------------------------------------------------------------------------------------------
# Nuisances
# --------------------------------------------------------------------------------------------
_NS = 48  # per-image random streams


def sample_nuisances(
    seed: int, identities: torch.Tensor, samples: torch.Tensor, difficulty: str = "medium"
) -> dict[str, torch.Tensor]:
    """Per-image nuisances (B,) float32 tensors, drawn from (seed, identity, sample) alone.
    ``difficulty`` scales ranges and probabilities: easy 0.5x, medium 1x, hard 1.6x."""
    d = DIFFICULTIES[_check_difficulty(difficulty)]
    u = _uniforms(seed, [identities.long(), samples.long()], _NS, domain=2)
    s = 2 * u - 1  # symmetric in (-1, 1)
    zero = torch.zeros_like(u[:, 0])

    def sym(j: int, amp: float, power: float = 1.0) -> torch.Tensor:
        return amp * s[:, j].sign() * s[:, j].abs() ** power

    def maybe(j: int, prob: float, value: torch.Tensor, off: float | torch.Tensor = 0.0) -> torch.Tensor:
        return torch.where(u[:, j] < min(prob, 0.95), value, zero + off)

    n: dict[str, torch.Tensor] = {}
    n["yaw"] = sym(0, min(35 * d, 75), 1.3)
    n["pitch"] = sym(1, min(18 * d, 40), 1.3)
    n["roll"] = sym(2, min(8 * d, 20))
    n["shift_x"] = sym(3, 3.0 * d)  # pixels of a 112 image
    n["shift_y"] = sym(4, 3.0 * d)
    n["scale"] = torch.exp(sym(5, 0.05 * d))
    n["smile"] = maybe(6, 0.5, u[:, 7])
    n["mouth_open"] = maybe(8, 0.25 * d, 0.3 + 0.7 * u[:, 9])
    n["eyes_closed"] = maybe(10, 0.1 * d, 0.5 + 0.5 * u[:, 11])
    n["light_angle"] = (75 * d * u[:, 12]).clamp(max=85)
    n["light_azimuth"] = 360 * u[:, 13]
    n["light_strength"] = (0.8 * d * u[:, 14]).clamp(max=1)
    n["exposure"] = torch.exp(sym(15, 0.3 * d))
    for j, c in enumerate("rgb"):
        n[f"cast_{c}"] = 1 + sym(16 + j, 0.1 * d)
    n["background"] = (u[:, 19] * 3).floor()  # 0 gradient, 1 stripes, 2 blobs
    n["bg_angle"] = 360 * u[:, 20]
    n["bg_contrast"] = 0.6 * u[:, 21]
    n["occluder"] = maybe(22, 0.3 * d, 1 + (u[:, 23] * 4).floor())
    n["occluded"] = zero.clone()  # filled by the renderer from the mask
    n["blur_sigma"] = maybe(24, 0.35 * d, 0.4 + 1.8 * d * u[:, 25])
    n["motion_length"] = maybe(26, 0.2 * d, 2 + 7 * d * u[:, 27])
    n["motion_angle"] = 180 * u[:, 28]
    n["noise_sigma"] = maybe(29, 0.5, 10 * d * u[:, 30])
    nf = max(2, min(len(DOWNSAMPLE_FACTORS), round(4 * d)))
    factors = torch.tensor(DOWNSAMPLE_FACTORS[:nf], device=u.device)
    n["downsample"] = maybe(31, 0.3 * d, factors[(u[:, 32] * nf).long().clamp(max=nf - 1)], 1.0)
    n["jpeg_quality"] = maybe(33, 0.6, (100 - 80 * d * u[:, 34]).clamp(min=5).round(), 100.0)
    # Streams 35.. drive the occluder's and background's own shape and colours.
    n["quality"] = zero.clone()
    n["_u"] = u  # private: raw streams, consumed by the renderer
    return n


def quality_from_nuisances(n: dict[str, torch.Tensor]) -> torch.Tensor:
    """Ground-truth quality in [0, 1]: the product of one factor per nuisance, each in [0, 1]
    and non-increasing in its degradation (lengths in 112-image pixels, angles in degrees):

    - pose:       exp(-((yaw/30)^2 + (pitch/25)^2 + (roll/30)^2) / 2)
    - alignment:  exp(-(|shift|/4)^2 / 2 - (ln scale / 0.1)^2 / 2), |shift| = hypot(shift_x, shift_y)
    - expression: (1 - 0.3 eyes_closed) (1 - 0.15 mouth_open)
    - light:      1 - 0.8 (light_strength * sin(light_angle))^2  (hard side light, shadows)
    - exposure:   exp(-(ln exposure / 0.4)^2 / 2)
    - colour cast: 1 / (1 + (max_c |cast_c - 1| / 0.2)^2)
    - occlusion:  (1 - occluded)^3, occluded = fraction of the face oval hidden
    - blur:       1 / (1 + (s / 2.5)^2), s = sqrt(blur_sigma^2 + motion_length^2 / 12) (the std of
                  the combined kernel)
    - noise:      1 / (1 + (noise_sigma / 20)^2)
    - resolution: 1 / (1 + ((downsample - 1) / 3)^2)
    - JPEG:       1 - exp(-jpeg_quality / 10)  (quality 100 = not compressed: 0.99995)

    Smile, background and light azimuth are nuisances without a quality cost. The weights
    were set so that, for the raw-pixel baseline at ``medium``, pairs in the lowest third of
    quality verify clearly worse than the highest third (BENCHMARKS.md); blur, noise,
    down-sampling and JPEG matter more to learned models, which see finer detail.
    """
    f = torch.exp(-((n["yaw"] / 30) ** 2 + (n["pitch"] / 25) ** 2 + (n["roll"] / 30) ** 2) / 2)
    shift = torch.hypot(n["shift_x"], n["shift_y"])
    f = f * torch.exp(-((shift / 4) ** 2) / 2 - (torch.log(n["scale"]) / 0.1) ** 2 / 2)
    f = f * (1 - 0.3 * n["eyes_closed"]) * (1 - 0.15 * n["mouth_open"])
    f = f * (1 - 0.8 * (n["light_strength"] * torch.sin(torch.deg2rad(n["light_angle"]))) ** 2)
    f = f * torch.exp(-((torch.log(n["exposure"]) / 0.4) ** 2) / 2)
    cast = torch.stack([(n[f"cast_{c}"] - 1).abs() for c in "rgb"]).amax(0)
    f = f * 1 / (1 + (cast / 0.2) ** 2)
    f = f * (1 - n["occluded"].clamp(0, 1)) ** 3
    s = torch.sqrt(n["blur_sigma"] ** 2 + n["motion_length"] ** 2 / 12)
    f = f * 1 / (1 + (s / 2.5) ** 2)
    f = f * 1 / (1 + (n["noise_sigma"] / 20) ** 2)
    f = f * 1 / (1 + ((n["downsample"] - 1) / 3) ** 2)
    f = f * (1 - torch.exp(-n["jpeg_quality"] / 10))
    return f.clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Per-image overlays in the face frame (expression, occluders), drawn on a region only.
# --------------------------------------------------------------------------------------------


def _region(size: int, x0: float, x1: float, y0: float, y1: float, dev) -> tuple:
    c0, c1 = max(0, int((x0 + 1) / 2 * size)), min(size, int(math.ceil((x1 + 1) / 2 * size)))
    r0, r1 = max(0, int((y0 + 1) / 2 * size)), min(size, int(math.ceil((y1 + 1) / 2 * size)))
    X, Y = _grid(size, dev)
    return (slice(r0, r1), slice(c0, c1)), X[..., c0:c1], Y[:, r0:r1]


def _draw_mouth(canvas, p, n, size):
    (rs, cs), X, Y = _region(size, -0.45, 0.45, 0.4, 0.88, canvas.device)
    sub = canvas[:, :, rs, cs]
    px = 2.0 / size
    sm, op = _v(n["smile"]), _v(n["mouth_open"])
    my, mw, lt = _v(p["mouth_y"]), _v(p["mouth_w"]) * (1 + 0.18 * sm), _v(p["lip_t"])
    xr = (X / mw).clamp(-1, 1)
    t = (1 - xr**2).clamp(min=0)
    st = t.sqrt()
    yc = my - sm * 0.06 * xr**2 + sm * 0.02
    gap_up, gap_dn = 0.035 * op * st, 0.06 * op * st
    top_o, bot_o = yc - gap_up - lt * st, yc + gap_dn + lt * 1.25 * st
    inside_x = X.abs() - mw
    lips = _soft(torch.maximum(torch.maximum(top_o - Y, Y - bot_o), inside_x), px)
    _blend(sub, lips, p["lip"].clamp(0, 1))
    line = _soft(torch.maximum((Y - yc).abs() - 0.006, inside_x), px) * (op < 0.05).float() * 0.8
    opening = _soft(torch.maximum(torch.maximum(yc - gap_up - Y, Y - yc - gap_dn), inside_x + 0.01), px)
    _blend(
        sub,
        torch.maximum(line, opening),
        torch.tensor([[0.25, 0.08, 0.08]], device=X.device).expand_as(p["lip"]),
    )
    teeth = opening * _soft(Y - (yc - gap_up + 0.45 * (gap_up + gap_dn)), px)
    _blend(sub, teeth * 0.9, torch.tensor([[0.9, 0.88, 0.8]], device=X.device).expand_as(p["lip"]))
    # Smile lines at the mouth corners.
    crease = torch.exp(-((X.abs() - mw * 1.15) ** 2) / (2 * 0.01**2)) * (Y - yc).abs().lt(0.07).float()
    _blend(sub, crease * 0.3 * sm, p["skin"] * 0.6)  # ``sub`` is a view: canvas is updated


def _draw_eyelids(canvas, p, n, size):
    idx = (n["eyes_closed"] > 0).nonzero().flatten()
    if idx.numel() == 0:
        return
    (rs, cs), X, Y = _region(size, -0.75, 0.75, -0.45, 0.25, canvas.device)
    sub = canvas[:, :, rs, cs][idx]
    q = {k: v[idx] for k, v in p.items()}
    px = 2.0 / size
    ex = X.abs() - _v(q["eye_dx"])
    t = _v(q["eye_tilt"])
    yy = Y - _v(q["eye_y"])
    u = ex * torch.cos(t) - yy * torch.sin(t)
    v = ex * torch.sin(t) + yy * torch.cos(t)
    ew, hu, hd = _v(q["eye_w"]) * 1.08, _v(q["eye_h_up"]) * 1.1, _v(q["eye_h_dn"]) * 1.1
    f_eye = ((u / ew) ** 2 + (v / torch.where(v < 0, hu, hd)) ** 2).sqrt()
    edge = -hu + _v(n["eyes_closed"][idx]) * (hu + hd)  # lid edge moves down as the eye closes
    lid = _soft(torch.maximum((f_eye - 1) * hd, v - edge), px)
    _blend(sub, lid, q["skin"] * 0.9)
    lash = _soft(torch.maximum((v - edge).abs() - 0.006, (f_eye - 1) * hd), px)
    _blend(sub, lash * 0.9, q["skin"] * 0.25)
    canvas[idx, :, rs, cs] = sub


def _draw_occluders(canvas, p, n, size):
    """Draws each image's occluder; returns its coverage (B, S, S) in the face frame."""
    B = canvas.shape[0]
    dev = canvas.device
    occ = torch.zeros(B, size, size, device=dev)
    u = n["_u"]
    X, Y = _grid(size, dev)
    px = 2.0 / size
    for kind in range(1, len(OCCLUDERS)):
        idx = (n["occluder"] == kind).nonzero().flatten()
        if idx.numel() == 0:
            continue
        q = {k: v[idx] for k, v in p.items()}
        w = u[idx]
        col = torch.stack([w[:, 36], w[:, 37], w[:, 38]], 1)
        if OCCLUDERS[kind] == "sunglasses":
            ex = X.abs() - _v(q["eye_dx"])
            yy = Y - _v(q["eye_y"]) - 0.01
            rx, ry = _v(q["eye_w"]) * (1.45 + 0.4 * _v(w[:, 35])), _v(q["eye_w"]) * (0.9 + 0.3 * _v(w[:, 39]))
            e = 3.0
            lens = (((ex / rx).abs() ** e + (yy / ry).abs() ** e) ** (1 / e) - 1) * ry
            bridge = torch.maximum(X.abs() - _v(q["eye_dx"]), (yy + ry * 0.5).abs() - 0.012)
            temple = torch.maximum(
                (X.abs() - _v(q["eye_dx"]) - rx * 1.5).abs() - rx * 0.5, (yy + ry * 0.4).abs() - 0.012
            )
            a = _soft(torch.minimum(torch.minimum(lens, bridge), temple), px)
            colour = col * 0.15
        elif OCCLUDERS[kind] == "hat":
            brim = _v(q["face_cy"] - q["face_h"] * (0.35 + 0.35 * w[:, 35]))
            crown = torch.maximum((X / (_v(q["face_w"]) + 0.12)) ** 2 - 1, Y - brim)
            band = torch.maximum(
                X.abs() - _v(q["face_w"]) - 0.2 - 0.15 * _v(w[:, 39]), (Y - brim).abs() - 0.035
            )
            a = _soft(torch.minimum(crown * 0.3, band), px)
            colour = col * 0.8 + 0.1
        elif OCCLUDERS[kind] == "mask":
            top = _v(q["nose_y"]) - 0.06 - 0.05 * _v(w[:, 35])
            oval = _face_oval(q, X / 1.04, Y)
            a = _soft(torch.maximum(oval, top - Y + 0.06 * X**2 / 0.3), px)
            a = a * (1 - 0.08 * (torch.sin(Y * 90) > 0.85).float())  # pleats
            colour = torch.where(
                _v(w[:, 36]).squeeze(-1) < 0.6,
                torch.tensor([[0.62, 0.78, 0.9]], device=dev),
                torch.tensor([[0.92, 0.92, 0.9]], device=dev),
            )
        else:  # random block
            cx, cy = _v(1.2 * w[:, 35] - 0.6), _v(1.2 * w[:, 39] - 0.5)
            hw, hh = _v(0.12 + 0.25 * w[:, 40]), _v(0.12 + 0.25 * w[:, 41])
            a = _soft(torch.maximum((X - cx).abs() - hw, (Y - cy).abs() - hh), px)
            colour = col
        a = a.expand(idx.numel(), size, size)
        sub = canvas[idx]
        _blend(sub, a, colour)
        canvas[idx] = sub
        occ[idx] = torch.maximum(occ[idx], a)
    return occ


# --------------------------------------------------------------------------------------------
# Pose and scene
# --------------------------------------------------------------------------------------------
_STATIC: dict[tuple, torch.Tensor] = {}
_STATIC_LOCK = threading.RLock()


def _static(name: str, size: int, device: torch.device) -> torch.Tensor:
    """Per (size, device) constants: the head's depth map and normals, the noise bank."""
    key = (name, size, str(device))
    with _STATIC_LOCK:
        if key not in _STATIC:
            X, Y = _grid(size, torch.device("cpu"))
            if name == "depth":
                head = (1 - (X / 0.8) ** 2 - ((Y - 0.12) / 1.05) ** 2).clamp(min=0)
                nose = torch.exp(-(X**2 / (2 * 0.07**2) + (Y - 0.2) ** 2 / (2 * 0.13**2)))
                val = (0.55 * head.sqrt() + 0.16 * nose)[0]
            elif name == "normals":
                z = _static("depth", size, torch.device("cpu"))
                gy, gx = torch.gradient(z * size / 2)
                nrm = torch.stack([-gx, -gy, torch.ones_like(z)])
                nrm = nrm / nrm.norm(dim=0, keepdim=True)
                val = F.avg_pool2d(nrm[None], 5, 1, 2, count_include_pad=False)[0]
            elif name == "noise":
                g = torch.Generator().manual_seed(20240601)
                val = torch.randn(32, 3, size + 16, size + 16, generator=g)
            else:
                raise KeyError(name)
            _STATIC[key] = val.to(device)
        return _STATIC[key]


def _pose_grid(n: dict[str, torch.Tensor], size: int, device) -> torch.Tensor:
    """Sampling grid (B, S, S, 2): for each output pixel, where it comes from in the frontal
    face. Roll, scale and shift are undone exactly; yaw and pitch rotate a head-shaped depth
    map z, inverted with one fixed-point step (z taken at the output pixel, which ignores the
    small roll/shift; it keeps the grid to a few separable products):
    x_src = (x_r - z sin yaw) / cos yaw, y_src = (y_r + z sin pitch) / cos pitch."""
    ppx = 2.0 / 112  # one pixel of a 112 image, in face units
    tx, ty = n["shift_x"] * ppx, n["shift_y"] * ppx
    sc = n["scale"]
    r = torch.deg2rad(n["roll"])
    ya, pi = torch.deg2rad(n["yaw"]), torch.deg2rad(n["pitch"])
    cr, sr = torch.cos(r), torch.sin(r)
    kx, ky = 1 / (sc * torch.cos(ya)), 1 / (sc * torch.cos(pi))
    X, Y = _grid(size, device)
    # Separable: g = a_x X + b_x Y + c_x + z t_x (and the same for y), built by broadcasting.
    ax, bx, cx = _v(cr * kx), _v(sr * kx), _v(-(tx * cr + ty * sr) * kx)
    ay, by, cy = _v(-sr * ky), _v(cr * ky), _v((tx * sr - ty * cr) * ky)
    z = _static("depth", size, device)  # (S, S)
    gx = torch.addcmul(ax * X + cx, bx, Y).addcmul_(z, _v(-torch.tan(ya)))
    gy = torch.addcmul(ay * X + cy, by, Y).addcmul_(z, _v(torch.tan(pi)))
    return torch.stack([gx, gy], -1)


def _background(n: dict[str, torch.Tensor], size: int, device, gain: torch.Tensor) -> torch.Tensor:
    """Background (B, 3, S, S) times ``gain`` (B, 3): a two-colour mix along a linear ramp
    (kind 0), ramp + stripes (1) or ramp + blobs (2). The patterns are smooth, so they are
    evaluated on a quarter-resolution grid and enlarged bilinearly (a quarter of the work)."""
    u = n["_u"]
    X, Y = _grid(size // 4, device)
    B = u.shape[0]
    con = n["bg_contrast"].view(B, 1)
    # Muted colours, as behind most face crops: a grey level plus a weak tint.
    c1 = 0.25 + 0.5 * u[:, 42:43] + 0.24 * (u[:, 43:46] - 0.5)
    c2 = c1 * (1 - con) + (0.2 + 0.6 * u[:, 45:48]) * con
    th = _v(torch.deg2rad(n["bg_angle"]))
    ct, st = torch.cos(th), torch.sin(th)
    kind = n["background"].view(B, 1, 1)
    w_ramp = torch.where(kind == 0, 1.0, torch.where(kind == 1, 0.6, 0.4))
    w_str = torch.where(kind == 1, 0.4, 0.0)
    w_blob = torch.where(kind == 2, 0.6, 0.0)
    # ramp 0.5 + 0.35 (x cos + y sin); stripes 0.5 + 0.5 sin(14 (x sin - y cos)) expanded by the
    # angle-sum formula; blobs 0.5 + 0.5 sin(5x + 7th) sin(4y + 3th).
    ax, by = 14 * X * st, 14 * Y * ct
    t = (w_ramp * 0.35) * (X * ct + Y * st)
    t = t + (w_str * 0.5) * (torch.sin(ax) * torch.cos(by) - torch.cos(ax) * torch.sin(by))
    t = t + (w_blob * 0.5) * torch.sin(5 * X + 7 * th) * torch.sin(4 * Y + 3 * th)
    t = t.add_(0.5).clamp_(0, 1)
    t = F.interpolate(t.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    c1g, dcg = c1 * gain, (c2 - c1) * gain
    return torch.addcmul(c1g[:, :, None, None], dcg[:, :, None, None], t.unsqueeze(1))


def _lighting(n: dict[str, torch.Tensor], size: int, device) -> torch.Tensor:
    """Lambertian shading of the head-shaped normals: (B, 1, S, S), ~1 for frontal light."""
    nrm = _static("normals", size, device)
    th, ph = torch.deg2rad(n["light_angle"]), torch.deg2rad(n["light_azimuth"])
    L = torch.stack([torch.sin(th) * torch.cos(ph), torch.sin(th) * torch.sin(ph), torch.cos(th)], 1)
    k = _v(n["light_strength"])
    lam = (L * 1.15 * k.view(-1, 1)) @ nrm.flatten(1)  # (B, S*S)
    return lam.view(-1, 1, size, size).clamp_(min=0).add_((1 - k).unsqueeze(1))


# --------------------------------------------------------------------------------------------
# Base-face cache
# --------------------------------------------------------------------------------------------


class _LRU:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.d: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            v = self.d.get(key)
            if v is not None:
                self.d.move_to_end(key)
            return v

    def put(self, key, value: torch.Tensor) -> None:
        with self.lock:
            if key in self.d:
                return
            self.d[key] = value
            self.bytes += value.numel() * value.element_size()
            while self.bytes > self.max_bytes and len(self.d) > 1:
                _, old = self.d.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        with self.lock:
            self.d.clear()
            self.bytes = 0


# uint8 (5, S, S) per identity: 62 KB at 112, so the default 256 MB holds ~4,000 identities
# (2,000 at 160). Raise it (env NBFACELIB_SYNTH_CACHE_MB, or BASE_CACHE.max_bytes) when
# training on more identities, or every batch pays for drawing its frontal faces again.
BASE_CACHE = _LRU(max_bytes=int(os.environ.get("NBFACELIB_SYNTH_CACHE_MB", "256")) << 20)


def _base_faces(seed: int, identities: torch.Tensor, size: int, device) -> torch.Tensor:
    """(B, 5, S, S) float frontal faces for the identities, from the cache or rendered."""
    uniq, inv = torch.unique(identities, return_inverse=True)
    ids = uniq.tolist()
    dkey = str(device)
    got = [BASE_CACHE.get((seed, i, size, dkey)) for i in ids]
    miss = [j for j, g in enumerate(got) if g is None]
    if miss:
        mid = uniq[miss]
        base = _render_base(identity_params(mid, seed), size)
        base = base.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        for j, b in zip(miss, base):
            got[j] = b
            BASE_CACHE.put((seed, ids[j], size, dkey), b)
    stack = torch.stack(got)
    return stack.index_select(0, inv.to(stack.device)).float().div_(255)


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------


def _check_difficulty(difficulty: str) -> str:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty={difficulty!r}: expected one of {', '.join(DIFFICULTIES)}")
    return difficulty


def _check_size(size: int) -> int:
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {', '.join(map(str, SIZES))}")
    return int(size)


def render(
    identities: torch.Tensor,
    samples: torch.Tensor,
    seed: int = 0,
    size: int = 112,
    difficulty: str = "medium",
    device: torch.device | str | None = None,
    overrides: dict[str, float | torch.Tensor] | None = None,
    return_masks: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render absolute identities x samples: uint8 (B, 3, S, S) and nuisances {name: (B,)}.

    ``overrides`` replaces sampled nuisances (scalars or (B,) tensors) before rendering, e.g.
    ``{"blur_sigma": 2.0}`` to study one degradation with the rest fixed; ``quality`` is
    recomputed. ``return_masks`` adds ``occluder_mask`` and ``face_mask`` (B, S, S), both in
    the frontal face frame (where ``occluded`` is measured).
    """
    size = _check_size(size)
    _check_difficulty(difficulty)
    device = torch.device(device) if device is not None else torch.device("cpu")
    identities = torch.as_tensor(identities, dtype=torch.long).reshape(-1).to(device)
    samples = torch.as_tensor(samples, dtype=torch.long).reshape(-1).to(device)
    if identities.shape != samples.shape:
        raise ValueError(f"identities {tuple(identities.shape)} and samples {tuple(samples.shape)} differ")
    if identities.numel() and int(identities.min()) < 0 or samples.numel() and int(samples.min()) < 0:
        raise ValueError("identities and samples must be >= 0")
    B = identities.numel()
    ov = {}
    for k, v in (overrides or {}).items():
        if k not in NUISANCE_KEYS or k in ("quality", "occluded"):
            raise ValueError(f"overrides: unknown or derived nuisance {k!r}")
        ov[k] = torch.as_tensor(v, dtype=torch.float32).to(device).reshape(-1).expand(B).clone()
    if B == 0:
        n = sample_nuisances(seed, identities, samples, difficulty)
        n.pop("_u")
        return torch.zeros(0, 3, size, size, dtype=torch.uint8, device=device), n
    # On a CPU, chunks of 64 keep the working set in cache (measured ~10% faster than 256).
    chunk = CPU_CHUNK if device.type == "cpu" else B
    parts = [
        _render_chunk(
            identities[i : i + chunk],
            samples[i : i + chunk],
            seed,
            size,
            difficulty,
            {k: v[i : i + chunk] for k, v in ov.items()},
            return_masks,
        )
        for i in range(0, B, chunk)
    ]
    if len(parts) == 1:
        return parts[0]
    images = torch.cat([p[0] for p in parts])
    return images, {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}


CPU_CHUNK = 64


def _render_chunk(identities, samples, seed, size, difficulty, overrides, return_masks):
    device = identities.device
    n = sample_nuisances(seed, identities, samples, difficulty)
    n.update(overrides)
    p = identity_params(identities, seed)
    canon = _base_faces(seed, identities, size, device)
    # Expression and occluders, in the face frame so that they turn with the head.
    _draw_mouth(canon, p, n, size)
    _draw_eyelids(canon, p, n, size)
    occ = _draw_occluders(canon, p, n, size)
    face_mask = canon[:, 4]
    n["occluded"] = (occ * face_mask).sum((1, 2)) / face_mask.sum((1, 2)).clamp(min=1)
    # Pose + alignment jitter: one grid_sample of premultiplied RGBA.
    rgba = F.grid_sample(canon[:, :4], _pose_grid(n, size, device), align_corners=False)
    # The light field shades the head; the background only dims with the light strength.
    # Colour cast and exposure are a per-channel gain on both.
    gain = torch.stack([n["cast_r"], n["cast_g"], n["cast_b"]], 1) * n["exposure"][:, None]
    img = (rgba[:, :3] * _lighting(n, size, device)).mul_(gain[:, :, None, None])
    bg = _background(n, size, device, gain * (1 - 0.3 * n["light_strength"][:, None]))
    img.addcmul_(1 - rgba[:, 3:4], bg)
    # Camera: optics/motion blur -> low resolution -> sensor noise -> JPEG.
    k = size / 112
    img = degrade.blur(img, n["blur_sigma"] * k, n["motion_length"] * k, n["motion_angle"], inplace=True)
    img = degrade.downsample(img, n["downsample"], inplace=True)
    noisy = (n["noise_sigma"] > 0).nonzero().flatten()
    if noisy.numel():
        noise = _noise(n["_u"][noisy], size, device)
        img.index_copy_(0, noisy, degrade.add_noise(img[noisy], n["noise_sigma"][noisy], noise))
    img = degrade.jpeg(img.clamp_(0, 1), n["jpeg_quality"], inplace=True)
    out = img.mul_(255).round_().to(torch.uint8)
    n["quality"] = quality_from_nuisances(n)
    n.pop("_u")
    if return_masks:
        n["occluder_mask"] = occ
        n["face_mask"] = face_mask
    return out, n


def _noise(u: torch.Tensor, size: int, device) -> torch.Tensor:
    """Standard-normal noise (B, 3, S, S): a window of one of 32 fixed fields, chosen and
    offset per image by its hash (cheap, and reproducible per image on any device)."""
    bank = _static("noise", size, device)
    k = (u[:, 35] * 32).long().clamp(max=31)
    dy = (u[:, 40] * 16).long().clamp(max=15)
    dx = (u[:, 41] * 16).long().clamp(max=15)
    if torch.device(device).type == "cpu":  # slices copy faster than a gather on a CPU
        return torch.stack(
            [bank[a, :, b : b + size, c : c + size] for a, b, c in zip(k.tolist(), dy.tolist(), dx.tolist())]
        )
    B = u.shape[0]  # one gather kernel instead of B slice copies
    ar = torch.arange(size, device=device)
    rows = (dy[:, None] + ar[None]).view(B, 1, size, 1)
    cols = (dx[:, None] + ar[None]).view(B, 1, 1, size)
    return bank[k.view(B, 1, 1, 1), torch.arange(3, device=device).view(1, 3, 1, 1), rows, cols]


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class SyntheticFaces(torch.utils.data.Dataset):
    """``num_identities`` x ``per_identity`` synthetic faces; nothing is stored.

    Index ``i`` is identity ``identity_offset + i // per_identity`` (label ``i // per_identity``)
    and sample ``i % per_identity``. ``identity_offset`` gives a disjoint held-out split:
    train ``SyntheticFaces(N, K)``, test ``SyntheticFaces(M, K, identity_offset=N)``.
    ``ds[i]`` -> (uint8 (3, S, S), label); ``ds.nuisances(i)`` -> dict of floats incl. quality.
    """

    def __init__(
        self,
        num_identities: int,
        per_identity: int,
        seed: int = 0,
        size: int = 112,
        difficulty: str = "medium",
        identity_offset: int = 0,
    ):
        for name, val in (("num_identities", num_identities), ("per_identity", per_identity)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"{name}={val!r}: expected an integer >= 1")
        if (
            isinstance(identity_offset, bool)
            or not isinstance(identity_offset, int | np.integer)
            or identity_offset < 0
        ):
            raise ValueError(f"identity_offset={identity_offset!r}: expected an integer >= 0")
        self.num_identities = int(num_identities)
        self.per_identity = int(per_identity)
        self.seed = int(seed)
        self.size = _check_size(size)
        self.difficulty = _check_difficulty(difficulty)
        self.identity_offset = int(identity_offset)

    @property
    def num_classes(self) -> int:
        return self.num_identities

    @property
    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_identities, dtype=np.int64), self.per_identity)

    def __len__(self) -> int:
        return self.num_identities * self.per_identity

    def _split(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"index out of range for SyntheticFaces of length {len(self)}")
        return idx // self.per_identity, idx % self.per_identity

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        labels, samples = self._split(index)
        images, _ = self.render_batch(labels, samples)
        return images[0], int(labels[0])

    def nuisances(self, index: int) -> dict[str, float]:
        """All recorded nuisances of image ``index`` (python floats), incl. ``quality``."""
        if index < 0:
            index += len(self)
        labels, samples = self._split(index)
        _, n = self.render_batch(labels, samples)
        return {k: float(v[0]) for k, v in n.items()}

    def render_batch(
        self,
        identities: torch.Tensor,
        samples: torch.Tensor,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Render (label, sample) pairs on ``device``: uint8 (B, 3, S, S) and {nuisance: (B,)}.
        ``identities`` are this data set's labels (0..num_classes-1); ``samples`` any ints
        >= 0 (not limited to ``per_identity``). Extra keywords (``overrides``,
        ``return_masks``) go to :func:`render`."""
        ids = torch.as_tensor(identities, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_identities):
            raise IndexError(f"identity labels must lie in [0, {self.num_identities})")
        return render(
            ids + self.identity_offset, samples, self.seed, self.size, self.difficulty, device, **kwargs
        )

    def batches(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        seed: int = 0,
        steps: int | None = None,
        prefetch: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images on ``device``, int64 labels on ``device``) batches of indices
        drawn uniformly with replacement (reproducible from ``seed``), ``steps`` times or
        forever; for training loops that skip DataLoader. ``prefetch`` > 0 renders up to that
        many batches ahead in a background thread (torch releases the GIL, so rendering
        overlaps the training step); the batches are the same either way."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected >= 1")
        if steps is not None and steps < 0:
            raise ValueError(f"steps={steps!r}: expected >= 0 or None")
        gen = self._batches(batch_size, device, seed, steps)
        if prefetch <= 0:
            yield from gen
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()
        done = object()

        def produce():
            try:
                for item in gen:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as exc:  # hand the error to the consumer
                q.put(exc)

        worker = threading.Thread(target=produce, name="SyntheticFaces.batches", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _batches(self, batch_size, device, seed, steps):
        g = torch.Generator().manual_seed(int(seed))
        step = 0
        while steps is None or step < steps:
            idx = torch.randint(len(self), (batch_size,), generator=g)
            labels, samples = idx // self.per_identity, idx % self.per_identity
            images, _ = self.render_batch(labels, samples, device=device)
            yield images, labels.to(images.device)
            step += 1

    def twin_of(self, label: int) -> int:
        """Label of the identity this one is a near twin of (-1 if none, or outside the set)."""
        parent = int(twin_parent(torch.tensor([label + self.identity_offset]), self.seed)[0])
        lab = parent - self.identity_offset
        return lab if parent >= 0 and 0 <= lab < self.num_identities else -1

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, per_identity={self.per_identity}, "
            f"seed={self.seed}, size={self.size}, difficulty={self.difficulty!r}, "
            f"identity_offset={self.identity_offset})"
        )
