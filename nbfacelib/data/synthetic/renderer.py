"""The renderer: identities x samples -> uint8 images and their recorded nuisances.

Why it is fast: an identity's frontal face (:func:`~.face.render_base`) is drawn once and
kept in an LRU cache (uint8, keyed by seed, identity, size and device). Per image:
expression and occluders are drawn as small overlays in the face's own frame, one
``grid_sample`` applies pose (a depth map of an ellipsoid with a nose makes yaw/pitch move the
nose more than the cheeks) and alignment jitter, then background, a Lambertian light field,
colour cast, and the degradations of :mod:`nbfacelib.data.degrade` (blur with per-image
kernels, down-sampling, noise from a fixed bank shifted per image, JPEG by batched DCT), each
run only on the images that need it. Bytes are reproducible on a given device type (tested on
CPU); a GPU renders the same faces and nuisances up to float rounding.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

from nbfacelib.data import degrade

from .detail import detail_params, draw_eyeglasses, strand_texture
from .face import _face_oval, draw_eyelids, draw_mouth, draw_occluders, per_image, pixel_grid, render_base
from .hair import hair_layers, hair_params, with_hair_height
from .identity import identity_params
from .morph import morph_grid
from .nuisances import (
    NUISANCE_KEYS,
    check_difficulty,
    nuisance_streams,
    nuisances_from_streams,
    quality_from_nuisances,
    sample_nuisances,
)
from .shading import (
    MIXES,
    SHADED_KEYS,
    Style,
    camera,
    check_style,
    height_field,
    mix_choice,
    neutral_style_nuisances,
    relief_channels,
    shade,
    shape_params,
    skin_texture,
    style_nuisances,
)

SIZES = (112, 160)
# On a CPU a batch is rendered in chunks of at most CPU_CHUNK images, all of nearly one size
# (:func:`chunk_bounds`): every tensor op has a fixed cost, so a chunk of a few images (the
# remainder of 70 = 64 + 6, which a mix's style of ~64 images per 256 met every other batch)
# costs nearly what a full one does. 256 renders single styles 1-11% faster than 128 at 2
# threads (BENCHMARKS.md, "Chunks of even size", 64 / 128 / 256 side by side:
# `synth_throughput.py --cpu-chunk`); the chunking changes no byte (hashing.batch_invariant).
CPU_CHUNK = 256

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
            X, Y = pixel_grid(size, torch.device("cpu"))
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


def pose_grid(
    n: dict[str, torch.Tensor], size: int, device, depth: torch.Tensor | None = None
) -> torch.Tensor:
    """Sampling grid (B, S, S, 2): for each output pixel, where it comes from in the frontal
    face. Roll, scale and shift are undone exactly; yaw and pitch rotate a head-shaped depth
    map z, inverted with one fixed-point step (z taken at the output pixel, which ignores the
    small roll/shift; it keeps the grid to a few separable products):
    x_src = (x_r - z sin yaw) / cos yaw, y_src = (y_r + z sin pitch) / cos pitch.
    ``depth`` (B, S, S): each image's own height field (shaded styles) instead of the fixed one."""
    ppx = 2.0 / 112  # one pixel of a 112 image, in face units
    tx, ty = n["shift_x"] * ppx, n["shift_y"] * ppx
    sc = n["scale"]
    r = torch.deg2rad(n["roll"])
    ya, pi = torch.deg2rad(n["yaw"]), torch.deg2rad(n["pitch"])
    cr, sr = torch.cos(r), torch.sin(r)
    kx, ky = 1 / (sc * torch.cos(ya)), 1 / (sc * torch.cos(pi))
    X, Y = pixel_grid(size, device)
    # Separable: g = a_x X + b_x Y + c_x + z t_x (and the same for y), built by broadcasting.
    ax, bx, cx = per_image(cr * kx), per_image(sr * kx), per_image(-(tx * cr + ty * sr) * kx)
    ay, by, cy = per_image(-sr * ky), per_image(cr * ky), per_image((tx * sr - ty * cr) * ky)
    z = _static("depth", size, device) if depth is None else depth  # (S, S) or (B, S, S)
    gx = torch.addcmul(ax * X + cx, bx, Y).addcmul_(z, per_image(-torch.tan(ya)))
    gy = torch.addcmul(ay * X + cy, by, Y).addcmul_(z, per_image(torch.tan(pi)))
    return torch.stack([gx, gy], -1)


def background(
    n: dict[str, torch.Tensor], u: torch.Tensor, size: int, device, gain: torch.Tensor
) -> torch.Tensor:
    """Background (B, 3, S, S) times ``gain`` (B, 3): a two-colour mix along a linear ramp
    (kind 0), ramp + stripes (1) or ramp + blobs (2), colours from the raw streams ``u``. The
    patterns are smooth, so they are evaluated on a quarter-resolution grid and enlarged
    bilinearly (a quarter of the work)."""
    X, Y = pixel_grid(size // 4, device)
    B = u.shape[0]
    con = n["bg_contrast"].view(B, 1)
    # Muted colours, as behind most face crops: a grey level plus a weak tint.
    c1 = 0.25 + 0.5 * u[:, 42:43] + 0.24 * (u[:, 43:46] - 0.5)
    c2 = c1 * (1 - con) + (0.2 + 0.6 * u[:, 45:48]) * con
    th = per_image(torch.deg2rad(n["bg_angle"]))
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


def lighting(n: dict[str, torch.Tensor], size: int, device) -> torch.Tensor:
    """Lambertian shading of the head-shaped normals: (B, 1, S, S), ~1 for frontal light."""
    nrm = _static("normals", size, device)
    th, ph = torch.deg2rad(n["light_angle"]), torch.deg2rad(n["light_azimuth"])
    L = torch.stack([torch.sin(th) * torch.cos(ph), torch.sin(th) * torch.sin(ph), torch.cos(th)], 1)
    k = per_image(n["light_strength"])
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


def base_faces(
    seed: int,
    identities: torch.Tensor,
    size: int,
    device,
    style: Style | None = None,
    haircut: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 5, S, S) float frontal faces for the identities, from the cache or rendered. A
    style with relief adds 3 channels (height, normal x, y: :func:`~.shading.relief_channels`);
    one with texture multiplies the skin by its albedo texture. ``haircut`` (B,) 0/1, for a
    style with hair: which of its two haircuts each face wears (each cached apart)."""
    hair = style is not None and style.hair
    cut = haircut.long() if hair and haircut is not None else torch.zeros_like(identities)
    uniq, inv = torch.unique(identities * 2 + cut, return_inverse=True)  # (identity, haircut)
    ids, cuts = (uniq // 2).tolist(), (uniq % 2).tolist()
    dkey = str(device)
    # the flat faces keep their cache key; any other style's faces are cached apart, and the
    # hair style's by haircut too
    skey = () if style is None or style.flat else (style.drawing,)
    keys = [(seed, i, size, dkey, *skey, *((c,) if hair else ())) for i, c in zip(ids, cuts)]
    got = [BASE_CACHE.get(k) for k in keys]
    miss = [j for j, g in enumerate(got) if g is None]
    if miss:
        mid = uniq[miss] // 2
        p = identity_params(mid, seed)
        layers = None
        if hair:
            X, Y = pixel_grid(size, device)
            h = hair_params(mid, seed, uniq[miss] % 2)
            layers = hair_layers(p, h, _face_oval(p, X, Y), X, Y, _static("noise", size, device), size)
        if skey and style.detail:
            d = detail_params(mid, seed)
            base = render_base(p, size, d, strand_texture(d, _static("noise", size, device), size), layers)
        else:
            base = render_base(p, size)
        if skey and style.texture:
            tex = skin_texture(mid, seed, _static("noise", size, device), size)
            skin = base[:, 4:5]  # the face oval: texture the skin, not hair or eyes' whites
            base[:, :3] *= 1 + (tex - 1) * skin
        if skey and style.relief:
            z = height_field(p, shape_params(p, mid, seed), size)
            if layers is not None:
                z = with_hair_height(z, layers)
            base = torch.cat([base, relief_channels(z, size)], 1)
        base = base.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        for j, b in zip(miss, base):
            got[j] = b
            BASE_CACHE.put(keys[j], b)
    # stacked straight in the batch's order (no gather of a stack of the unique faces)
    return torch.stack([got[j] for j in inv.tolist()]).float().div_(255)


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------


def check_size(size: int) -> int:
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
    style: str | Style = "flat",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render absolute identities x samples: uint8 (B, 3, S, S) and nuisances {name: (B,)}.

    ``overrides`` replaces sampled nuisances (scalars or (B,) tensors) before rendering, e.g.
    ``{"blur_sigma": 2.0}`` to study one degradation with the rest fixed; ``quality`` is
    recomputed. ``return_masks`` adds ``occluder_mask`` and ``face_mask`` (B, S, S), both in
    the frontal face frame (where ``occluded`` is measured). ``style``: ``"flat"`` (the
    calibrated default) or another name of :data:`~.shading.STYLES` (or a
    :class:`~.shading.Style`); a non-flat style also records :data:`~.shading.SHADED_KEYS`. A
    mix (a name of :data:`~.shading.MIXES`) renders each image in one of its styles
    (:func:`render_mix`).
    """
    if isinstance(style, str) and style in MIXES:
        return render_mix(identities, samples, seed, size, difficulty, device, overrides, return_masks, style)
    size = check_size(size)
    check_difficulty(difficulty)
    style = check_style(style)
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
        known = NUISANCE_KEYS if style.flat else NUISANCE_KEYS + SHADED_KEYS
        if k not in known or k in ("quality", "occluded", "shadow_fraction"):
            raise ValueError(f"overrides: unknown or derived nuisance {k!r}")
        if k == "eyeglasses" and not style.eyewear:  # recorded, priced, but never drawn
            raise ValueError(f"overrides: 'eyeglasses' needs a style with eyewear, not {style.name!r}")
        if k == "haircut" and not style.haircuts:
            raise ValueError(f"overrides: 'haircut' needs a style with haircuts, not {style.name!r}")
        ov[k] = torch.as_tensor(v, dtype=torch.float32).to(device).reshape(-1).expand(B).clone()
    if B == 0:
        n = sample_nuisances(seed, identities, samples, difficulty)
        n.update(style_nuisances(style, seed, identities, samples))
        return torch.zeros(0, 3, size, size, dtype=torch.uint8, device=device), n
    parts = [
        _render_chunk(
            identities[i:j],
            samples[i:j],
            seed,
            size,
            difficulty,
            {k: v[i:j] for k, v in ov.items()},
            return_masks,
            style,
        )
        for i, j in chunk_bounds(B, CPU_CHUNK if device.type == "cpu" else B)
    ]
    if len(parts) == 1:
        return parts[0]
    images = torch.cat([p[0] for p in parts])
    return images, {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}


def chunk_bounds(n: int, most: int) -> list[tuple[int, int]]:
    """(start, stop) of the fewest chunks of at most ``most`` items that cover ``n``, their
    sizes differing by at most one (130 by 128: 65 + 65, not 128 + 2)."""
    count = -(-n // most)
    return [(n * k // count, n * (k + 1) // count) for k in range(count)]


def render_mix(
    identities: torch.Tensor,
    samples: torch.Tensor,
    seed: int,
    size: int,
    difficulty: str,
    device: torch.device | str | None,
    overrides: dict[str, float | torch.Tensor] | None,
    return_masks: bool,
    mix: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`render` of a mix: each image in the style :func:`~.shading.mix_choice` draws for
    it, byte for byte as that style renders it alone; the nuisances of every style, neutral
    (:func:`~.shading.neutral_style_nuisances`) where an image's style has no such part, and
    ``mix_style``. ``overrides`` may set the flat nuisances only (the others are not every
    style's)."""
    bad = sorted(set(overrides or {}) - set(NUISANCE_KEYS))
    if bad:
        raise ValueError(f"overrides: {bad} are not nuisances of every style in mix {mix!r}")
    ids = torch.as_tensor(identities, dtype=torch.long).reshape(-1)
    smp = torch.as_tensor(samples, dtype=torch.long).reshape(-1)
    if ids.shape != smp.shape:
        raise ValueError(f"identities {tuple(ids.shape)} and samples {tuple(smp.shape)} differ")
    B = ids.numel()
    ov = {
        k: torch.as_tensor(v, dtype=torch.float32).reshape(-1).expand(B) for k, v in (overrides or {}).items()
    }
    choice = mix_choice(mix, seed, ids, smp)
    images = None
    n: dict[str, torch.Tensor] = {}
    for i, member in enumerate(MIXES[mix]):
        at = (choice == i).nonzero().flatten()
        if B and not at.numel():
            continue
        part_ov = {k: v[at] for k, v in ov.items()}
        img, part = render(ids[at], smp[at], seed, size, difficulty, device, part_ov, return_masks, member)
        part = {**neutral_style_nuisances(part["yaw"]), **part, "mix_style": torch.full_like(part["yaw"], i)}
        if images is None:
            images = img.new_empty((B, *img.shape[1:]))
        at = at.to(img.device)
        images[at] = img
        for k, v in part.items():
            if k not in n:
                n[k] = v.new_zeros((B, *v.shape[1:]))
            n[k][at] = v
    return images, n


def _render_chunk(identities, samples, seed, size, difficulty, overrides, return_masks, style):
    device = identities.device
    u = nuisance_streams(seed, identities, samples)
    n = nuisances_from_streams(u, difficulty)
    n.update(style_nuisances(style, seed, identities, samples))
    n.update(overrides)
    p = identity_params(identities, seed)
    canon = base_faces(seed, identities, size, device, style, n.get("haircut"))
    # Expression and occluders, in the face frame so that they turn with the head.
    draw_mouth(canon, p, n, size)
    draw_eyelids(canon, p, n, size)
    occ = draw_occluders(canon, p, n, u, size)
    if style.eyewear:
        n["eyeglasses"] = n["eyeglasses"] * (n["occluder"] != 1).float()  # not under sunglasses
        draw_eyeglasses(canon, p, identities, seed, n["eyeglasses"], size)
    face_mask = canon[:, 4]
    n["occluded"] = (occ * face_mask).sum((1, 2)) / face_mask.sum((1, 2)).clamp(min=1)
    gain = torch.stack([n["cast_r"], n["cast_g"], n["cast_b"]], 1) * n["exposure"][:, None]
    if style.relief:
        # Lit in the face's frame (the light turned back by the pose), then posed: pose turns
        # this identity's own relief, and the lit face is sampled like the flat one (4 channels).
        lit, spec, shadow = shade(canon[:, 5:8], n, style, size)
        canon[:, :3].mul_(lit).addcmul_(spec, canon[:, 3:4])
        n["shadow_fraction"] = (shadow * face_mask).sum((1, 2)) / face_mask.sum((1, 2)).clamp(min=1)
        framed = {**n, "scale": n["scale"] * n["zoom"]}  # a tighter crop: the face drawn larger
        grid = morph_grid(
            pose_grid(framed, size, device, depth=canon[:, 5] * 1.2), identities, seed, style.morph
        )
        rgba = F.grid_sample(canon[:, :4], grid, align_corners=False)
        img = rgba[:, :3].mul_(gain[:, :, None, None])
    else:
        # Pose + alignment jitter: one grid_sample of premultiplied RGBA.
        grid = morph_grid(pose_grid(n, size, device), identities, seed, style.morph)
        rgba = F.grid_sample(canon[:, :4], grid, align_corners=False)
        # The light field shades the head; the background only dims with the light strength.
        # Colour cast and exposure are a per-channel gain on both.
        img = (rgba[:, :3] * lighting(n, size, device)).mul_(gain[:, :, None, None])
    bg = background(n, u, size, device, gain * (1 - 0.3 * n["light_strength"][:, None]))
    img.addcmul_(1 - rgba[:, 3:4], bg)
    # Camera: optics/motion blur -> low resolution -> sensor noise -> (tone, grey) -> JPEG.
    k = size / 112
    img = degrade.blur(img, n["blur_sigma"] * k, n["motion_length"] * k, n["motion_angle"], inplace=True)
    img = degrade.downsample(img, n["downsample"], inplace=True)
    noisy = (n["noise_sigma"] > 0).nonzero().flatten()
    if noisy.numel():
        noise = noise_fields(u[noisy], size, device)
        img.index_copy_(0, noisy, degrade.add_noise(img[noisy], n["noise_sigma"][noisy], noise))
    if not style.flat:
        img = camera(img.clamp_(0, 1), n)
    img = degrade.jpeg(img.clamp_(0, 1), n["jpeg_quality"], inplace=True)
    out = img.mul_(255).round_().to(torch.uint8)
    n["quality"] = quality_from_nuisances(n)
    if return_masks:
        n["occluder_mask"] = occ
        n["face_mask"] = face_mask
    return out, n


def noise_fields(u: torch.Tensor, size: int, device) -> torch.Tensor:
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
