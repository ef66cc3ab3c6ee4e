"""Render styles: today's ``flat`` faces and ``shaded`` faces with a 3-D relief.

``flat`` (the default, unchanged since the renderer was calibrated) draws each face as 2-D
shapes, turns it with one fixed head-shaped depth map and lights it with the normals of that
same map. ``shaded`` gives every identity its own height field and lights it the way a
photograph is lit:

- **relief** (:func:`height_field`): a head ellipsoid plus brow ridge, eye sockets, nose
  (bridge and tip), cheekbones, lips and chin, each with an identity's own amplitude, placed
  at the identity's drawn features; pose turns this relief (each identity's own parallax),
  and its normals (rotated with the head) are what the light sees: the face is lit in its own
  frame with the light turned back by the pose, then posed;
- **shading** (:func:`shade`): ambient + Lambertian diffuse ``max(0, n.L)`` + Blinn-Phong
  specular ``(n.h)^40`` under a directional light, with attached shadows (``n.L < 0``) and
  cast shadows (nose, brows) from a short march of the light ray over the height field;
- **texture** (in the base face): skin albedo at two scales (blotches and pores), from
  fixed noise fields windowed per identity;
- **camera** (:func:`camera`): grey images (ORL, many CCTV and older photographs are grey),
  gamma and vignetting;
- **hair** (:mod:`.hair`): hair as a volume with its own height, outline, hairline, fringe and
  length (covering the ears or not), instead of the flat faces' eight caps;
- **framing**: crops as tight as a photograph's (a zoom of 1 - 1.45, the face filling the
  frame) and pillarbox bars (a non-square photograph padded to square, as the folder reader
  pads ORL's 92x112 images).

A :class:`Style` switches these parts one at a time (the ablation of BENCHMARKS.md); the
names of :data:`STYLES` are what ``render(style=...)`` and the ``synthetic:`` URI accept.
Everything a style adds per image is recorded (:data:`SHADED_KEYS`) and enters the quality
(:func:`~.nuisances.quality_from_nuisances`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from .face import per_image, pixel_grid
from .hashing import batch_invariant, uniforms
from .identity import identity_uniforms


@dataclass(frozen=True)
class Style:
    """What the renderer draws beyond the flat faces (all off: ``flat``).

    ``relief``: per-identity height field, pose by turning it, its normals lit (Lambert +
    specular); ``shadows``: cast shadows from the relief (needs ``relief``); ``texture``: skin
    albedo at two scales; ``grey``: probability that an image is grey; ``camera``: gamma and
    vignetting nuisances; ``framing``: zoom and pillarbox nuisances; ``detail``: eyes, brows
    and hair strands of :mod:`.detail`; ``eyewear``: clear eyeglasses (:mod:`.detail`); ``hair``:
    hair as a volume of varied outline, hairline and length (:mod:`.hair`); ``haircuts``: a
    quarter of an identity's images show its other haircut (recorded as ``haircut``); ``morph``:
    each identity's own smooth warp of this coefficient scale (:mod:`.morph`; 0: none). The
    warp draws nothing, so ``flat`` stays true of a flat style with it."""

    name: str
    relief: bool = False
    shadows: bool = False
    texture: bool = False
    grey: float = 0.0
    camera: bool = False
    framing: bool = False
    detail: bool = False
    eyewear: bool = False
    hair: bool = False
    haircuts: bool = False
    morph: float = 0.0

    def __post_init__(self) -> None:
        if self.shadows and not self.relief:
            raise ValueError(f"style {self.name!r}: shadows need relief")
        if self.hair and not self.detail:
            raise ValueError(f"style {self.name!r}: hair is drawn with the detailed faces (detail=True)")
        if self.haircuts and not self.hair:
            raise ValueError(f"style {self.name!r}: haircuts need hair")
        if not 0.0 <= self.morph <= 0.1:
            raise ValueError(f"style {self.name!r}: morph={self.morph!r} must be in [0, 0.1] (face units)")
        if not 0.0 <= self.grey <= 1.0:
            raise ValueError(f"style {self.name!r}: grey={self.grey!r} must be a probability")

    @property
    def flat(self) -> bool:
        return not (
            self.relief
            or self.texture
            or self.grey
            or self.camera
            or self.framing
            or self.detail
            or self.eyewear
            or self.hair
        )

    @property
    def drawing(self) -> tuple:
        """What the base face depends on (every part but the name and the warp, which is
        applied at posing): the key its cached faces are filed under."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("name", "morph"))


# The ablation ladder: each style adds one part to the one before it (``framed`` to
# ``shaded``; ``detailed`` also builds on ``shaded``, without the framing, ``eyewear`` on it, and
# ``hair`` on ``eyewear``, ``haircuts`` on ``hair``).
def _ladder(*steps: tuple[str, str, dict]) -> dict[str, Style]:
    """Styles built one part at a time: each step (name, the style it adds to, its parts)."""
    styles = {"flat": Style("flat")}
    for name, base, parts in steps:
        styles[name] = replace(styles[base], name=name, **parts)
    return styles


STYLES: dict[str, Style] = _ladder(
    ("relief", "flat", {"relief": True}),
    ("shadows", "relief", {"shadows": True}),
    ("textured", "shadows", {"texture": True}),
    ("shaded", "textured", {"grey": 0.5, "camera": True}),
    ("framed", "shaded", {"framing": True}),
    ("detailed", "shaded", {"detail": True}),
    ("eyewear", "detailed", {"eyewear": True}),
    ("hair", "eyewear", {"hair": True}),
    ("haircuts", "hair", {"haircuts": True}),
)
# Per-image nuisances a non-flat style records (besides NUISANCE_KEYS):
#   specular       strength of the specular highlight (0 .. 0.35), relief only
#   shadow_fraction fraction of the face oval in cast shadow (measured), shadows only
#   grey           1 if the image is grey (luma), else 0
#   gamma          exponent applied to the linear image (exp(U(-0.3, 0.3)))
#   vignette       darkening at the corners (0 .. 0.45)
#   zoom           crop tightness: the face is drawn zoom times larger (1 .. 1.45; 1 unless framing)
#   pillarbox      width of each black side bar, fraction of the image width (0, or 0.06 .. 0.12)
#   eyeglasses     1 if the face wears clear eyeglasses (never with sunglasses), eyewear only
#   haircut        1 if the image shows the identity's other haircut (haircuts only; .hair.OTHER_CUT)
SHADED_KEYS = (
    "specular", "shadow_fraction", "grey", "gamma", "vignette", "zoom", "pillarbox", "eyeglasses", "haircut"
)  # fmt: skip
_STYLE_STREAMS = 10  # per-image uniforms of a style, hashed apart from the flat renderer's

# Mixes: domain randomisation across the renderer's own styles (Tobin et al., IROS 2017). A
# mix renders each image in one of its styles, drawn per image from the image's hash, so one
# identity is seen as a flat drawing and as lit relief with and without glasses or its other
# haircut, and only what its styles share tells it apart. ``mixed`` was chosen on LFW (the
# trunk and the embedding higher than eyewear's on every seed); a mix of eight (flat, relief,
# textured, shaded, framed, eyewear, hair, haircuts) was not (BENCHMARKS.md, "A mix of
# styles"). A mix's images record every style's keys
# (:data:`SHADED_KEYS`, neutral where their style lacks the part) and ``mix_style``.
_MIXED = ("flat", "shaded", "eyewear", "haircuts")
MIXES: dict[str, tuple[Style, ...]] = {
    "mixed": tuple(STYLES[m] for m in _MIXED),
    # the same four, each identity warped by its own smooth, symmetric field (.morph): notebook
    # 00's cpu preset, chosen over ``mixed`` on LFW, seeds 0 and 1 (BENCHMARKS.md, "The
    # symmetric warp judged, and six seeds of it")
    "morphed": tuple(replace(STYLES[m], name=f"{m}+morph", morph=0.05) for m in _MIXED),
}
MIX_KEYS = ("mix_style",)  # index, into the mix's styles, of the style an image was drawn in


def check_style(style: str | Style) -> Style:
    """The :class:`Style` of a name in :data:`STYLES` (or a Style as it is)."""
    if isinstance(style, Style):
        return style
    if style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {', '.join(STYLES)}")
    return STYLES[style]


def check_style_name(style: str | Style) -> str:
    """The name of a style or of a mix (:data:`MIXES`): what a data set and a URI carry."""
    if isinstance(style, str) and style in MIXES:
        return style
    if isinstance(style, str) and style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {', '.join([*STYLES, *MIXES])}")
    return check_style(style).name


def recorded_keys(style: str | Style) -> tuple[str, ...]:
    """The nuisance names (besides ``NUISANCE_KEYS``) a style or mix records per image."""
    if isinstance(style, str) and style in MIXES:
        return SHADED_KEYS + MIX_KEYS
    return () if check_style(style).flat else SHADED_KEYS


def mix_choice(mix: str, seed: int, identities: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """(B,) long: the index into ``MIXES[mix]`` of the style each image is rendered in, uniform
    over the mix, from its own hash domain (the image's other nuisances do not depend on it)."""
    u = uniforms(seed, [identities.long(), samples.long()], 1, domain=10)[:, 0]
    n = len(MIXES[mix])
    return (u * n).long().clamp_(max=n - 1)


def neutral_style_nuisances(like: torch.Tensor) -> dict[str, torch.Tensor]:
    """:data:`SHADED_KEYS` of images that have none of the parts (shape of ``like``): no
    specular, shadow, grey, vignetting, bars, glasses or other haircut; gamma and zoom 1. The
    quality formula prices these at 1, so a flat image keeps its flat quality in a mix."""
    zero = torch.zeros_like(like, dtype=torch.float32)
    n = {k: zero.clone() for k in SHADED_KEYS}
    n["gamma"] = zero + 1.0
    n["zoom"] = zero + 1.0
    return n


def style_nuisances(
    style: Style, seed: int, identities: torch.Tensor, samples: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The per-image nuisances a style adds, drawn from their own hash domain (so the flat
    nuisances of an image are the same in every style). Empty for ``flat``."""
    if style.flat:
        return {}
    u = uniforms(seed, [identities.long(), samples.long()], _STYLE_STREAMS, domain=3)
    zero = torch.zeros_like(u[:, 0])
    n = neutral_style_nuisances(zero)
    if style.framing:
        n["zoom"] = torch.exp(torch.log(torch.tensor(1.45)) * u[:, 5])
        n["pillarbox"] = torch.where(u[:, 6] < 0.5, 0.06 + 0.06 * u[:, 7], zero)
    if style.relief:
        n["specular"] = 0.35 * u[:, 0]
    n["grey"] = (u[:, 1] < style.grey).float()
    if style.camera:
        n["gamma"] = torch.exp(0.3 * (2 * u[:, 2] - 1))
        n["vignette"] = torch.where(u[:, 3] < 0.5, 0.45 * u[:, 4], zero)
    if style.eyewear:
        from .detail import GLASSES_ON, detail_params

        wears = detail_params(identities, seed)["wears_glasses"] > 0
        n["eyeglasses"] = (u[:, 8] < torch.where(wears, GLASSES_ON[0], GLASSES_ON[1])).float()
    if style.haircuts:
        from .hair import OTHER_CUT

        n["haircut"] = (u[:, 9] < OTHER_CUT).float()
    return n


# --------------------------------------------------------------------------------- relief
def shape_params(p: dict[str, torch.Tensor], identities: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Relief amplitudes of each identity (face units), from its own hash domain; near twins
    take their partner's values nudged like their other parameters."""
    u = identity_uniforms(identities, seed, 8, 4)

    def lin(j, lo, hi):
        return lo + (hi - lo) * u[:, j]

    return {
        "brow_ridge": lin(0, 0.015, 0.07),
        "socket": lin(1, 0.03, 0.08),
        "nose_h": lin(2, 0.10, 0.24),
        "cheekbone": lin(3, 0.0, 0.07),
        "chin": lin(4, 0.02, 0.08),
        "lips_h": lin(5, 0.01, 0.035),
        "head_depth": lin(6, 0.45, 0.62),
        "oiliness": lin(7, 0.3, 1.0),
    }


def height_field(p: dict[str, torch.Tensor], s: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """(U, S, S) height (towards the camera, face units) of each identity's head and face."""
    X, Y = pixel_grid(size, p["face_w"].device)
    fw, fh, cy = per_image(p["face_w"]), per_image(p["face_h"]), per_image(p["face_cy"])
    head = (1 - (X / (fw + 0.12)) ** 2 - ((Y - cy) / (fh + 0.16)) ** 2).clamp(min=0)
    z = per_image(s["head_depth"]) * head.sqrt()

    def bump(cx, cy_, rx, ry):
        return torch.exp(-(((X - cx) / rx) ** 2 + ((Y - cy_) / ry) ** 2) / 2)

    ey, edx, ew = per_image(p["eye_y"]), per_image(p["eye_dx"]), per_image(p["eye_w"])
    ny, nw = per_image(p["nose_y"]), per_image(p["nose_w"])
    brow_y = ey - per_image(p["brow_gap"]) * 0.7
    ridge = torch.exp(-(((Y - brow_y) / 0.045) ** 2) / 2) * torch.exp(
        -batch_invariant(lambda t: t**4, X / (edx + 0.18))
    )
    z = z + per_image(s["brow_ridge"]) * ridge
    sockets = bump(edx, ey, ew * 1.1, ew * 0.85) + bump(-edx, ey, ew * 1.1, ew * 0.85)
    z = z - per_image(s["socket"]) * sockets
    # nose: a ridge rising from between the eyes to the tip, then the tip's bulb
    top = ey + 0.03
    along = ((Y - top) / (ny - top)).clamp(0, 1.0)
    bridge = (
        torch.exp(-((X / (nw * 0.55)) ** 2) / 2) * along * batch_invariant(torch.sigmoid, (ny - Y) / 0.015)
    )
    tip = bump(0.0, ny - 0.035, nw * 0.75, 0.05)
    z = z + per_image(s["nose_h"]) * torch.maximum(0.8 * bridge, tip)
    cheeks = bump(fw * 0.58, ny - 0.1, 0.13, 0.09) + bump(-fw * 0.58, ny - 0.1, 0.13, 0.09)
    z = z + per_image(s["cheekbone"]) * cheeks
    my, mw = per_image(p["mouth_y"]), per_image(p["mouth_w"])
    z = z + per_image(s["lips_h"]) * bump(0.0, my, mw * 0.8, 0.04)
    z = z + per_image(s["chin"]) * bump(0.0, my + 0.2, 0.13, 0.07)
    return z * (head > 0)


def relief_channels(z: torch.Tensor, size: int) -> torch.Tensor:
    """(U, 3, S, S) in [0, 1] to cache with the base face: height / 1.2 and the normal's x and
    y as (n + 1) / 2 (z is sqrt(1 - x^2 - y^2))."""
    px = 2.0 / size
    gy, gx = torch.gradient(z, spacing=px, dim=(1, 2))
    nrm = torch.stack([-gx, -gy, torch.ones_like(z)], 1)
    nrm = nrm / nrm.norm(dim=1, keepdim=True)
    nrm = F.avg_pool2d(nrm, 3, 1, 1, count_include_pad=False)
    nrm = nrm / nrm.norm(dim=1, keepdim=True)
    return torch.cat([(z / 1.2).clamp(0, 1).unsqueeze(1), (nrm[:, :2] + 1) / 2], 1)


def skin_texture(identities: torch.Tensor, seed: int, bank: torch.Tensor, size: int) -> torch.Tensor:
    """(U, 1, S, S) multiplicative skin albedo: blotches (1/8 resolution) and pores (full
    resolution), each a window of a fixed noise field chosen and offset per identity."""
    u = uniforms(seed, [identities.long()], 6, domain=5)
    k = (u[:, :2] * bank.shape[0]).long().clamp(max=bank.shape[0] - 1)
    off = (u[:, 2:4] * 16).long().clamp(max=15)
    amp = 0.04 + 0.08 * u[:, 4:6]
    out = []
    for i in range(len(identities)):
        a, b = int(off[i, 0]), int(off[i, 1])
        coarse = bank[int(k[i, 0]), 0, a : a + size, b : b + size]
        fine = bank[int(k[i, 1]), 1, b : b + size, a : a + size]
        coarse = F.avg_pool2d(coarse[None, None], 8)
        coarse = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
        out.append(1 + amp[i, 0] * coarse * 2.8 + amp[i, 1] * fine * 0.5)
    return torch.stack(out).unsqueeze(1)


# --------------------------------------------------------------------------------- shading
def _turn(x, y, z, n: dict[str, torch.Tensor], inverse: bool = False):
    """The head's turn applied to vectors (x, y, z): yaw about the vertical axis, pitch about the
    horizontal one, roll in the image plane (the rotations pose_grid inverts); ``inverse``:
    its transpose, the same turns undone in the reverse order."""
    ya, pi, r = (torch.deg2rad(n[k]) for k in ("yaw", "pitch", "roll"))
    if x.dim() > 1:
        ya, pi, r = per_image(ya), per_image(pi), per_image(r)
    if inverse:
        x, y = x * torch.cos(r) + y * torch.sin(r), -x * torch.sin(r) + y * torch.cos(r)
        y, z = y * torch.cos(pi) + z * torch.sin(pi), -y * torch.sin(pi) + z * torch.cos(pi)
        return x * torch.cos(ya) - z * torch.sin(ya), y, x * torch.sin(ya) + z * torch.cos(ya)
    x, z = x * torch.cos(ya) + z * torch.sin(ya), -x * torch.sin(ya) + z * torch.cos(ya)
    y, z = y * torch.cos(pi) - z * torch.sin(pi), y * torch.sin(pi) + z * torch.cos(pi)
    return x * torch.cos(r) - y * torch.sin(r), x * torch.sin(r) + y * torch.cos(r), z


def rotate_normals(nx, ny, n: dict[str, torch.Tensor]):
    """Normals of the frontal face (B, S, S), turned with the head: the per-pixel reference of
    :func:`facing`, which the renderer uses (the tests check that they agree)."""
    nz = (1 - nx * nx - ny * ny).clamp(min=0).sqrt()
    return _turn(nx, ny, nz, n)


def facing(nx, ny, vectors: Sequence[torch.Tensor], n: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``n_turned . v`` (B, S, S) for each unit vector v (B, 3) of ``vectors`` (light, half
    vector), n_turned being the frontal normals (nx, ny) turned with the head. Computed as
    ``n . (R^T v)``: each vector is turned back once per image instead of every normal per pixel
    (the same number up to rounding, a third of the full-size tensor operations)."""
    nz = (nx * nx).neg_().add_(1).sub_(ny * ny).clamp_(min=0).sqrt_()  # 1 - x^2 - y^2, in place
    out = []
    for v in vectors:
        bx, by, bz = (per_image(c) for c in _turn(v[:, 0], v[:, 1], v[:, 2], n, inverse=True))
        out.append((nx * bx).addcmul_(ny, by).addcmul_(nz, bz))
    return out


def light_vector(n: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 3) unit light direction: ``light_angle`` from the camera axis, ``light_azimuth``
    around it (the flat renderer's convention)."""
    th, ph = torch.deg2rad(n["light_angle"]), torch.deg2rad(n["light_azimuth"])
    return torch.stack([torch.sin(th) * torch.cos(ph), torch.sin(th) * torch.sin(ph), torch.cos(th)], 1)


_SHADOW_STEPS = (0.03, 0.06, 0.1, 0.15, 0.22, 0.3)  # face units along the ray to the light


def cast_shadow(depth: torch.Tensor, L: torch.Tensor, size: int) -> torch.Tensor:
    """(B, S, S) in [0, 1], 1 = in shadow: a point is shadowed when the height field rises
    above the ray towards the light within 0.3 face units (6 steps, at half resolution; soft
    over 0.015 units of height). The 6 steps are one ``grid_sample`` (stacked along the rows)."""
    h = size // 2
    B = depth.shape[0]
    d = F.avg_pool2d(depth.unsqueeze(1), 2)  # (B, 1, h, h)
    lxy = L[:, :2].norm(dim=1).clamp(min=1e-6)
    dirx, diry = (L[:, 0] / lxy).view(-1, 1, 1, 1), (L[:, 1] / lxy).view(-1, 1, 1, 1)
    rise = (L[:, 2] / lxy).view(-1, 1, 1, 1)  # height gained by the ray per unit of image distance
    X, Y = pixel_grid(h, depth.device)
    t = torch.tensor(_SHADOW_STEPS, device=depth.device).view(1, -1, 1, 1)
    k = len(_SHADOW_STEPS)
    grid = torch.stack(
        [(X.unsqueeze(1) + t * dirx).expand(B, k, h, h), (Y.unsqueeze(1) + t * diry).expand(B, k, h, h)], -1
    )
    dz = F.grid_sample(d, grid.view(B, k * h, h, 2), align_corners=False, padding_mode="border")
    # rise of the surface above the ray at each step (depth was stored / 1.2), the highest
    occl = dz.view(B, k, h, h).mul_(1.2).sub_(t * rise).amax(1).sub_(d[:, 0], alpha=1.2)
    sh = (occl / 0.015).clamp_(0, 1) * (lxy > 0.05).float().view(-1, 1, 1)
    return F.interpolate(sh.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def shade(
    relief: torch.Tensor, n: dict[str, torch.Tensor], style: Style, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Light the frontal relief channels ``relief`` (B, 3, S, S: height, normal x, y) of each
    image's head, turned as the image's pose turns it: the multiplicative shading (B, 1, S, S),
    the additive specular (B, 1, S, S) and the cast shadow map (B, S, S), all in the face's own
    frame (the renderer poses the lit face afterwards, so shadows stay on the geometry that casts
    them). Light strength k mixes ambient (1 - k) with 1.3 k times the direct light, so that
    k = 0 is the flat, frontal look and k = 1 a single hard lamp."""
    L = light_vector(n)
    hv = L + torch.tensor([0.0, 0.0, 1.0], device=L.device)
    hv = hv / hv.norm(dim=1, keepdim=True)
    ndl, ndh = facing(relief[:, 1] * 2 - 1, relief[:, 2] * 2 - 1, (L, hv), n)
    k = per_image(n["light_strength"])
    # lit = (1 - k) + 1.3 k max(0, n.L) (1 - 0.85 shadow);
    # spec = specular (0.3 + 0.7 k) max(0, n.h)^40 (1 - shadow), in place on the dot products;
    # ^40 as x^32 x^8 by squaring (torch's pow with a float exponent is ~5x slower on a CPU)
    lit = ndl.clamp_(min=0).mul_(1.3 * k)
    x8 = ndh.clamp_(min=0).square_().square_().square_()
    spec = x8.square().square_().square_().mul_(x8).mul_(per_image(n["specular"]) * (0.3 + 0.7 * k))
    if style.shadows:
        # the light as the head sees it: the march runs over the frontal height field
        head_light = torch.stack(_turn(L[:, 0], L[:, 1], L[:, 2], n, inverse=True), 1)
        shadow = cast_shadow(relief[:, 0], head_light, size)
        lit.mul_(1 - 0.85 * shadow)
        spec.mul_(1 - shadow)
    else:
        shadow = torch.zeros_like(lit)
    return lit.add_(1 - k).unsqueeze(1), spec.unsqueeze(1), shadow


def camera(img: torch.Tensor, n: dict[str, torch.Tensor]) -> torch.Tensor:
    """Vignetting, gamma, grey conversion (ITU-R BT.601 luma) and pillarbox bars of linear
    images in [0, 1]."""
    size = img.shape[-1]
    X, Y = pixel_grid(size, img.device)
    # Each step only where some image needs it (a neutral step is an exact identity anyway):
    # the styles without camera or framing pay nothing here.
    if bool((n["pillarbox"] > 0).any()):
        bars = (X.abs() > 1 - 2 * per_image(n["pillarbox"])).unsqueeze(1)  # (B, 1, 1, S)
        img = img.masked_fill(bars, 0.0)
    if bool((n["vignette"] > 0).any()):
        img = img.mul_(1 - per_image(n["vignette"]).unsqueeze(1) * ((X**2 + Y**2) / 2).unsqueeze(0))
    if bool((n["gamma"] != 1).any()):
        # x ** gamma as exp(gamma ln x): the same to float rounding, ~2x faster than pow with a
        # per-image exponent on a CPU
        img = img.clamp_(1e-6, 1).log_().mul_(n["gamma"].view(-1, 1, 1, 1)).exp_()
    grey = (n["grey"] > 0).nonzero().flatten()
    if grey.numel():  # the grey images only (a weight below 1, from overrides, desaturates)
        g = img[grey]
        luma = g[:, 0:1] * 0.299 + g[:, 1:2] * 0.587 + g[:, 2:3] * 0.114
        img.index_copy_(0, grey, g.lerp_(luma.expand_as(g), n["grey"][grey].view(-1, 1, 1, 1)))
    return img
