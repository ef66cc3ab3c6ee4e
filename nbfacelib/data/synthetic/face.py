"""Drawing the face: an identity's frontal, neutral face, and the per-image overlays drawn in
the face's own frame (expression, occluders), so that they turn with the head.

The frontal face is drawn once per identity, vectorised over the identities of a batch, as
premultiplied RGBA plus a face mask (the renderer caches it). Shapes are soft masks with an
edge about one pixel wide, from signed distances in face units (x right, y down, both in
[-1, 1] across the image; the ArcFace 112x112 template puts the eyes at y ~ -0.08 and the
mouth at y ~ 0.65).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .nuisances import OCCLUDERS

if TYPE_CHECKING:
    from .hair import HairLayers

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


def pixel_grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    return c.view(1, 1, size), c.view(1, size, 1)  # X (1,1,S), Y (1,S,1)


def per_image(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def _face_oval(p: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance to the face outline (superellipse with a tapering jaw)."""
    fw, fh, cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
    dy = (Y - cy) / fh
    a = fw * (1 - per_image(p["jaw"]) * dy.clamp(min=0) ** 2)
    e = per_image(p["squareness"])
    f = (X.abs() / a) ** e + dy.abs() ** e
    return (f ** (1 / e) - 1) * fw


def _hair_texture(X: torch.Tensor, Y: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    return 0.86 + 0.14 * torch.sin(70 * X + 9 * torch.sin(5 * Y) + per_image(phase) * 6.283)


def render_base(
    p: dict[str, torch.Tensor],
    size: int,
    detail: dict[str, torch.Tensor] | None = None,
    strands: torch.Tensor | None = None,
    hair_layers: HairLayers | None = None,
) -> torch.Tensor:
    """Frontal, neutral face of each identity: (U, 5, S, S) float = premultiplied RGB, alpha,
    face mask (the skin oval, used for the occluded fraction). ``detail`` (the per-identity
    values of :func:`~.detail.detail_params`) and ``strands`` (U, S, S) hair texture: the
    detailed styles' eyes, brows and hair (:mod:`.detail`); None draws the flat faces.
    ``hair_layers`` (:class:`~.hair.HairLayers`): the ``hair`` style's volume, drawn instead of the
    caps of the eight hair styles."""
    U = p["face_w"].shape[0]
    dev = p["face_w"].device
    X, Y = pixel_grid(size, dev)
    px = 2.0 / size
    canvas = torch.zeros(U, 5, size, size, device=dev)
    skin, hair = p["skin"], p["hair"]
    if detail is not None:
        from .detail import hair_colour  # here, not at the top: detail draws with this module's helpers

        hair = hair_colour(p)
    style = per_image(p["hair_style"])
    fw, fh, cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
    tex = _hair_texture(X, Y, p["hair_part"]) if strands is None else strands
    # Long hair falls behind the head and neck (styles 5 long, 6 volume).
    if hair_layers is None:
        long_hair = ((style == 5) | (style == 6)).float()
        d_back = ((X / (fw + 0.16)) ** 2 + ((Y - cy + 0.1) / (fh + 0.14)) ** 2).sqrt() - 1
        d_back = torch.maximum(d_back, Y - (cy + 0.55 + 0.25 * (style == 5).float()))
        _blend(canvas, _soft(d_back * 0.7, px) * long_hair, hair[:, :, None, None] * 0.8 * tex.unsqueeze(1))
    else:
        _blend(canvas, hair_layers.back, hair[:, :, None, None] * 0.7 * hair_layers.tone.unsqueeze(1))
    # Neck and shoulders.
    d_neck = torch.maximum(X.abs() - per_image(p["neck_w"]) * fw, cy + 0.2 - Y)
    _blend(canvas, _soft(d_neck, px), skin * 0.78)
    d_sh = ((X / 1.3) ** 2 + ((Y - 1.45) / 0.55) ** 2).sqrt() - 1
    _blend(canvas, _soft(d_sh * 0.5, px), skin * 0.7)
    # Ears at the sides of the face.
    ey = per_image(p["eye_y"] + p["ear_y"] + 0.12)
    es = per_image(p["ear_s"])
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
    d_cheek = ((X.abs() - fw * 0.55) ** 2 / 0.02 + (Y - per_image(p["nose_y"])) ** 2 / 0.015).clamp(max=30)
    blush = torch.exp(-d_cheek) * per_image(p["blush"]) * face
    _blend(canvas, blush, torch.tensor([[0.85, 0.35, 0.35]], device=dev).expand(U, 3))
    # Marks: up to six moles at fixed places in the face.
    canvas, X, Y, face = region(-0.56, 0.56, -0.4, 0.8)
    mk = torch.zeros_like(face)
    for k in range(6):
        present = per_image((p["marks"] > k).float())
        mx, my = per_image(p["mark_xy"][:, k, 0]), per_image(p["mark_xy"][:, k, 1])
        s = per_image(p["mark_s"]) * (0.7 + 0.3 * ((k * 0.37) % 1))
        mk = torch.maximum(mk, present * _soft(((X - mx) ** 2 + (Y - my) ** 2).sqrt() - s, px))
    _blend(canvas, mk * face * 0.85, skin * 0.45)
    # Nose: shadows along the bridge, nostrils, tip highlight.
    canvas, X, Y, face = region(-0.32, 0.32, -0.3, 0.55)
    ny, nw = per_image(p["nose_y"]), per_image(p["nose_w"])
    top = per_image(p["eye_y"]) + 0.06 + (1 - per_image(p["nose_len"])) * 0.12
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
    ex = X.abs() - per_image(p["eye_dx"])
    t = per_image(p["eye_tilt"])
    yy = Y - per_image(p["eye_y"])
    u = ex * torch.cos(t) - yy * torch.sin(t)
    v = ex * torch.sin(t) + yy * torch.cos(t)
    ew, hu, hd = per_image(p["eye_w"]), per_image(p["eye_h_up"]), per_image(p["eye_h_dn"])
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
    if detail is not None:
        from .detail import draw_eyes

        draw_eyes(canvas, face, p, detail, (u, v, f_eye, ew, hu, hd), px)
    # Brows: arched strokes above the eyes, thinning towards the tail.
    canvas, X, Y, face = region(-0.65, 0.65, -0.55, 0.1)
    bl = per_image(p["brow_len"])
    bx = X.abs() - per_image(p["eye_dx"]) + 0.02
    yc = (
        per_image(p["eye_y"] - p["brow_gap"])
        - per_image(p["brow_arch"]) * (1 - (bx / bl) ** 2)
        - per_image(p["brow_tilt"]) * bx * 0.3
    )
    thick = per_image(p["brow_thick"]) * (1 - 0.45 * ((bx + bl) / (2 * bl)).clamp(0, 1))
    brow_colour = hair * 0.75
    if detail is not None:  # darker than the scalp hair, and fuller
        thick = thick * 1.25
        brow_colour = hair * detail["brow_dark"][:, None]
    brow = _soft((Y - yc).abs() - thick, px) * _soft(bx.abs() - bl, px)
    _blend(canvas, brow * 0.92, brow_colour)
    # Facial hair (style 1 stubble, 2 moustache, 3 goatee, 4 full beard).
    canvas, X, Y, face = region(-1, 1, 0.0, 1.0)
    bs = per_image(p["beard_style"])
    my, mw = per_image(p["mouth_y"]), per_image(p["mouth_w"])
    dens = per_image(p["beard_density"])
    btex = 0.75 + 0.25 * torch.sin(150 * X + 40 * Y).abs()
    lower = face * _soft(ny + 0.06 - Y, px)
    stubble = lower * (bs == 1).float() * 0.35 * dens
    ym = my - per_image(p["lip_t"]) - 0.03 + 0.06 * (X / mw) ** 2  # droops at the ends
    mous = _soft(torch.maximum(X.abs() - mw * 1.1, (Y - ym).abs() - 0.022), px)
    mous = mous * ((bs == 2) | (bs == 4)).float() * dens
    d_goat = ((X / (mw * 0.75)) ** 2 + ((Y - my - 0.13) / 0.13) ** 2).sqrt() - 1
    goat = _soft(d_goat * 0.1, px) * face * ((bs == 3) | (bs == 4)).float()
    full = face * _soft(my - 0.04 - 0.45 * (X / fw) ** 2 - Y, px) * (bs == 4).float()
    fa = torch.maximum(torch.maximum(stubble, mous), torch.maximum(goat * dens, full * dens)) * btex
    _blend(canvas, fa.clamp(0, 1), hair * 0.8)
    canvas, X, Y, face = whole
    if hair_layers is not None:  # the hair style's volume (:mod:`.hair`)
        _blend(canvas, hair_layers.crown * (1 - hair_layers.front), skin * 0.95)
        _blend(canvas, hair_layers.front, hair[:, :, None, None] * hair_layers.tone.unsqueeze(1))
        return canvas
    # Scalp hair: inside an enlarged head outline, above the hairline (and down the sides for
    # the styles that have them). Styles: 0 bald, 1 buzz, 2 short, 3 side part, 4 fringe,
    # 5 long, 6 volume, 7 receding.
    vol = per_image(p["hair_vol"]) * (1 + 1.2 * (style == 6).float()) * (style != 0).float()
    d_head = ((X / (fw + vol)) ** 2 + ((Y - cy) / (fh + vol)) ** 2).sqrt() - 1
    hl = cy - fh * per_image(p["hairline"])
    hl = hl + 0.16 * (style == 4).float() - 0.1 * (style == 7).float() * (1 - X.abs() * 2).clamp(0, 1)
    part = per_image(p["hair_part"])
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
# Per-image overlays in the face frame (expression, occluders), drawn on a region only.
# --------------------------------------------------------------------------------------------


def _region(size: int, x0: float, x1: float, y0: float, y1: float, dev) -> tuple:
    c0, c1 = max(0, int((x0 + 1) / 2 * size)), min(size, int(math.ceil((x1 + 1) / 2 * size)))
    r0, r1 = max(0, int((y0 + 1) / 2 * size)), min(size, int(math.ceil((y1 + 1) / 2 * size)))
    X, Y = pixel_grid(size, dev)
    return (slice(r0, r1), slice(c0, c1)), X[..., c0:c1], Y[:, r0:r1]


def draw_mouth(canvas, p, n, size):
    (rs, cs), X, Y = _region(size, -0.45, 0.45, 0.4, 0.88, canvas.device)
    sub = canvas[:, :, rs, cs]
    px = 2.0 / size
    sm, op = per_image(n["smile"]), per_image(n["mouth_open"])
    my, mw, lt = per_image(p["mouth_y"]), per_image(p["mouth_w"]) * (1 + 0.18 * sm), per_image(p["lip_t"])
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


def draw_eyelids(canvas, p, n, size):
    idx = (n["eyes_closed"] > 0).nonzero().flatten()
    if idx.numel() == 0:
        return
    (rs, cs), X, Y = _region(size, -0.75, 0.75, -0.45, 0.25, canvas.device)
    sub = canvas[:, :4, rs, cs][idx]  # the premultiplied RGBA that _blend draws on
    q = {k: v[idx] for k, v in p.items()}
    px = 2.0 / size
    ex = X.abs() - per_image(q["eye_dx"])
    t = per_image(q["eye_tilt"])
    yy = Y - per_image(q["eye_y"])
    u = ex * torch.cos(t) - yy * torch.sin(t)
    v = ex * torch.sin(t) + yy * torch.cos(t)
    ew, hu, hd = per_image(q["eye_w"]) * 1.08, per_image(q["eye_h_up"]) * 1.1, per_image(q["eye_h_dn"]) * 1.1
    f_eye = ((u / ew) ** 2 + (v / torch.where(v < 0, hu, hd)) ** 2).sqrt()
    edge = -hu + per_image(n["eyes_closed"][idx]) * (hu + hd)  # lid edge moves down as the eye closes
    lid = _soft(torch.maximum((f_eye - 1) * hd, v - edge), px)
    _blend(sub, lid, q["skin"] * 0.9)
    lash = _soft(torch.maximum((v - edge).abs() - 0.006, (f_eye - 1) * hd), px)
    _blend(sub, lash * 0.9, q["skin"] * 0.25)
    canvas[idx, :4, rs, cs] = sub


def draw_occluders(canvas, p, n, u, size):
    """Draws each image's occluder; returns its coverage (B, S, S) in the face frame. ``u`` are
    the images' raw streams (:func:`~.nuisances.nuisance_streams`): shape and colour."""
    B = canvas.shape[0]
    dev = canvas.device
    occ = torch.zeros(B, size, size, device=dev)
    X, Y = pixel_grid(size, dev)
    px = 2.0 / size
    for kind in range(1, len(OCCLUDERS)):
        idx = (n["occluder"] == kind).nonzero().flatten()
        if idx.numel() == 0:
            continue
        q = {k: v[idx] for k, v in p.items()}
        w = u[idx]
        col = torch.stack([w[:, 36], w[:, 37], w[:, 38]], 1)
        if OCCLUDERS[kind] == "sunglasses":
            ex = X.abs() - per_image(q["eye_dx"])
            yy = Y - per_image(q["eye_y"]) - 0.01
            rx, ry = (
                per_image(q["eye_w"]) * (1.45 + 0.4 * per_image(w[:, 35])),
                per_image(q["eye_w"]) * (0.9 + 0.3 * per_image(w[:, 39])),
            )
            e = 3.0
            lens = (((ex / rx).abs() ** e + (yy / ry).abs() ** e) ** (1 / e) - 1) * ry
            bridge = torch.maximum(X.abs() - per_image(q["eye_dx"]), (yy + ry * 0.5).abs() - 0.012)
            temple = torch.maximum(
                (X.abs() - per_image(q["eye_dx"]) - rx * 1.5).abs() - rx * 0.5, (yy + ry * 0.4).abs() - 0.012
            )
            a = _soft(torch.minimum(torch.minimum(lens, bridge), temple), px)
            colour = col * 0.15
        elif OCCLUDERS[kind] == "hat":
            brim = per_image(q["face_cy"] - q["face_h"] * (0.35 + 0.35 * w[:, 35]))
            crown = torch.maximum((X / (per_image(q["face_w"]) + 0.12)) ** 2 - 1, Y - brim)
            band = torch.maximum(
                X.abs() - per_image(q["face_w"]) - 0.2 - 0.15 * per_image(w[:, 39]), (Y - brim).abs() - 0.035
            )
            a = _soft(torch.minimum(crown * 0.3, band), px)
            colour = col * 0.8 + 0.1
        elif OCCLUDERS[kind] == "mask":
            top = per_image(q["nose_y"]) - 0.06 - 0.05 * per_image(w[:, 35])
            oval = _face_oval(q, X / 1.04, Y)
            a = _soft(torch.maximum(oval, top - Y + 0.06 * X**2 / 0.3), px)
            a = a * (1 - 0.08 * (torch.sin(Y * 90) > 0.85).float())  # pleats
            colour = torch.where(
                per_image(w[:, 36]).squeeze(-1) < 0.6,
                torch.tensor([[0.62, 0.78, 0.9]], device=dev),
                torch.tensor([[0.92, 0.92, 0.9]], device=dev),
            )
        else:  # random block
            cx, cy = per_image(1.2 * w[:, 35] - 0.6), per_image(1.2 * w[:, 39] - 0.5)
            hw, hh = per_image(0.12 + 0.25 * w[:, 40]), per_image(0.12 + 0.25 * w[:, 41])
            a = _soft(torch.maximum((X - cx).abs() - hw, (Y - cy).abs() - hh), px)
            colour = col
        a = a.expand(idx.numel(), size, size)
        sub = canvas[idx, :4]  # the premultiplied RGBA that _blend draws on
        _blend(sub, a, colour)
        canvas[idx, :4] = sub
        occ[idx] = torch.maximum(occ[idx], a)
    return occ
