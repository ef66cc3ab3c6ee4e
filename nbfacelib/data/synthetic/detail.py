"""Finer features for the ``detailed`` styles: eyes, brows and hair as a photograph shows them,
and clear eyeglasses.

Why: next to ORL's photographs (BENCHMARKS.md, the contact sheet of notebook 00) the shaded
faces have pale, tiny eyes, faint brows matching the scalp's colour, and hair as regular
stripes; at 64 px in grey a real face's eye region is a dark band (brows, lashes, iris,
sockets), and 13 of ORL's 40 people wear clear glasses in their first image (counted by eye),
which no synthetic face wore.

- **eyes** (:func:`draw_eyes`): a larger, darker iris, a dark upper lash line, a lid crease,
  and a sclera a little darker than paper white;
- **brows**: darker than the scalp hair (as most people's are) and thicker, with strands;
- **hair**: strands (noise stretched along the fall of the hair) instead of sine stripes, and a
  palette skewed towards dark hair;
- **eyeglasses** (:func:`draw_eyeglasses`): thin frames of an identity's own shape (round ..
  rectangular), size, thickness and colour, with a faint lens sheen. An identity either wears
  them (30%: in 85% of its images) or not (then in 5%), recorded per image as ``eyeglasses``.

Per-identity values come from their own hash domain (6), per-image ones from the style's
streams, so every flat or shaded face is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .face import _blend, _soft, per_image, pixel_grid
from .hashing import batch_invariant
from .identity import identity_uniforms

WEARS_GLASSES = 0.3  # fraction of identities who wear glasses
GLASSES_ON = (0.85, 0.05)  # P(glasses in an image) for a wearer, a non-wearer
_DETAIL_STREAMS = 12


def detail_params(identities: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Per-identity detail values (from hash domain 6; near twins take their partner's, nudged
    like their other parameters)."""
    u = identity_uniforms(identities, seed, _DETAIL_STREAMS, 6, copied=[5])  # 5: wears glasses

    def lin(j, lo, hi):
        return lo + (hi - lo) * u[:, j]

    return {
        "iris_dark": lin(0, 0.35, 0.75),  # the iris's brightness, times its palette colour
        "lash": lin(1, 0.018, 0.032),  # thickness of the upper lash line, face units
        "brow_dark": lin(2, 0.35, 0.7),  # brow colour = scalp hair ** 1.6 times this
        "strand_field": u[:, 3],  # which fixed noise field the hair strands come from
        "strand_contrast": lin(4, 0.08, 0.22),
        "wears_glasses": (u[:, 5] < WEARS_GLASSES).float(),
        "frame_shape": lin(6, 2.0, 6.0),  # superellipse exponent: round .. rectangular
        "lens_w": lin(7, 1.35, 1.8),  # lens half-width, times eye_w
        "lens_h": lin(8, 0.9, 1.35),  # lens half-height, times eye_w
        "frame_thick": lin(9, 0.01, 0.028),
        "frame_tone": u[:, 10],  # < 0.6 dark plastic/metal, else light metal
        "lens_sheen": lin(11, 0.0, 0.12),
    }


def hair_colour(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """(U, 3) hair colour skewed dark (the identity's palette colour ** 1.6): more dark hair,
    as in most photographs, with the same order of shades."""
    return batch_invariant(lambda c: c**1.6, p["hair"].clamp(0, 1))


def strand_texture(d: dict[str, torch.Tensor], bank: torch.Tensor, size: int) -> torch.Tensor:
    """(U, S, S) multiplicative hair texture around 1: a fixed noise field, stretched along y
    (hair falls), plus clumps at a quarter of the resolution."""
    k = (d["strand_field"] * bank.shape[0]).long().clamp(max=bank.shape[0] - 1)
    field = bank[k, 2:3, :size, :size]  # channel 2: the skin texture uses 0 and 1
    strands = F.avg_pool2d(field, (9, 1), 1, (4, 0), count_include_pad=False)[:, 0] * 2.5
    clumps = F.interpolate(F.avg_pool2d(field, 4), size=(size, size), mode="bilinear", align_corners=False)
    t = 1 + per_image(d["strand_contrast"]) * (strands + 1.5 * clumps[:, 0])
    return t.clamp_(0.6, 1.25)


def draw_eyes(canvas, face, p, d, eye_geometry, px: float) -> None:
    """Over the base face's eyes (in place, on the eye region's view ``canvas``): sclera toned
    down, a larger and darker iris, the upper lash line and the lid crease."""
    u, v, f_eye, ew, hu, hd = eye_geometry
    U = canvas.shape[0]
    dev = canvas.device
    skin = p["skin"]
    eye = _soft((f_eye - 1) * hd, px)
    _blend(canvas, eye * 0.35, skin * 0.75)  # sclera in the shade of the lids
    ri = (hu + hd) * 0.62
    r = (u**2 + (v - (hd - hu) * 0.1) ** 2).sqrt()
    _blend(canvas, _soft(r - ri, px) * eye, p["iris"].clamp(0, 1) * per_image(d["iris_dark"]).view(U, 1))
    _blend(canvas, _soft(r - ri * 0.42, px) * eye, torch.zeros(U, 3, device=dev) + 0.03)
    glint = _soft(((u - ri * 0.3) ** 2 + (v + ri * 0.3) ** 2).sqrt() - ri * 0.14, px) * eye
    _blend(canvas, glint * 0.7, torch.ones(U, 3, device=dev))
    # Upper lash line: along the upper lid, thickest at the outer corner, dark.
    lash_w = per_image(d["lash"]) * (1 + 0.5 * (u / ew).clamp(0, 1))
    upper = (v < hu * 0.1).float() * _soft(u.abs() - ew * 1.12, px)
    lash = _soft((f_eye - 1).abs() * hu - lash_w * 0.5, px) * upper
    _blend(canvas, lash * 0.95, skin * 0.12)
    # Lid crease: a soft shadow line above the upper lid.
    crease = torch.exp(-(((f_eye - 1.55) * hu / 0.012) ** 2)) * (v < 0).float() * face
    _blend(canvas, crease * 0.35, skin * 0.55)


def draw_eyeglasses(canvas, p, identities: torch.Tensor, seed: int, on: torch.Tensor, size: int) -> None:
    """Clear eyeglasses (in place, face frame) on the images whose ``on`` (B,) is 1: two lenses
    (superellipses) with their frames, a bridge and the temples towards the ears, each of the
    identity's own :func:`detail_params`."""
    idx = (on > 0).nonzero().flatten()
    if idx.numel() == 0:
        return
    q = {k: v[idx] for k, v in p.items()}
    g = detail_params(identities[idx], seed)
    X, Y = pixel_grid(size, canvas.device)
    r0, r1 = int(size * 0.2), int(size * 0.62)  # rows y in [-0.6, 0.24]: the eye band
    X, Y = X, Y[:, r0:r1]
    px = 2.0 / size
    ex = X.abs() - per_image(q["eye_dx"])
    yy = Y - per_image(q["eye_y"]) + 0.01
    rx, ry = per_image(q["eye_w"] * g["lens_w"]), per_image(q["eye_w"] * g["lens_h"])
    e = per_image(g["frame_shape"])
    lens = (((ex / rx).abs() ** e + (yy / ry).abs() ** e) ** (1 / e) - 1) * ry  # signed distance, ~
    t = per_image(g["frame_thick"])
    rim = _soft(lens.abs() - t * 0.5, px)
    bridge_y = -ry * 0.35
    bridge = _soft(
        torch.maximum(X.abs() - (per_image(q["eye_dx"]) - rx * 0.9), (yy - bridge_y).abs() - t * 0.5), px
    )
    out = per_image(q["eye_dx"]) + rx * 0.95
    temple = _soft(
        torch.maximum(
            torch.maximum(out - X.abs(), X.abs() - per_image(q["face_w"]) * 1.02),
            (yy - bridge_y).abs() - t * 0.4,
        ),
        px,
    )
    frame = torch.maximum(torch.maximum(rim, bridge), temple)
    dark = (g["frame_tone"] < 0.6).float()[:, None]
    colour = dark * (0.05 + 0.2 * g["frame_tone"][:, None]) + (1 - dark) * (
        0.55 + 0.3 * g["frame_tone"][:, None]
    )
    colour = colour.expand(-1, 3)
    sub = canvas[idx, :4, r0:r1]  # the premultiplied RGBA that _blend draws on
    sheen = _soft(lens, px) * per_image(g["lens_sheen"]) * (0.6 + 0.4 * torch.sin(6 * (X + Y)))
    _blend(sub, sheen.clamp(0, 1), torch.ones_like(colour))
    _blend(sub, frame, colour)
    canvas[idx, :4, r0:r1] = sub
