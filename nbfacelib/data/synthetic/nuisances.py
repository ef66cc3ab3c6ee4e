"""Per-image nuisances and the ground-truth quality they imply.

Each image of an identity adds nuisances: pose (yaw, pitch, roll) and alignment jitter,
expression (smile, mouth open, eyes closed), illumination (direction, strength, exposure),
colour cast, background, an occluder (sunglasses, hat, medical mask or random block, with the
occluded fraction of the face), blur (gaussian and motion), noise, down-sampling and JPEG
quality, all hashed from ``(seed, identity, sample)``. Ground-truth quality
(:func:`quality_from_nuisances`) is a product of factors in (0, 1], one per nuisance, each
non-increasing in its degradation.
"""

from __future__ import annotations

import torch

from .hashing import batch_invariant, uniforms

# Multiplier on nuisance ranges and probabilities.
DIFFICULTIES = {"easy": 0.5, "medium": 1.0, "hard": 1.6}
OCCLUDERS = ("none", "sunglasses", "hat", "mask", "block")
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
NUISANCE_STREAMS = 48  # per-image random streams


def check_difficulty(difficulty: str) -> str:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty={difficulty!r}: expected one of {', '.join(DIFFICULTIES)}")
    return difficulty


def nuisance_streams(seed: int, identities: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """The raw per-image uniforms (B, NUISANCE_STREAMS) in (0, 1) that every nuisance, and the
    renderer's own per-image choices (occluder shape and colour, background colours, which
    noise field), are drawn from."""
    return uniforms(seed, [identities.long(), samples.long()], NUISANCE_STREAMS, domain=2)


def sample_nuisances(
    seed: int, identities: torch.Tensor, samples: torch.Tensor, difficulty: str = "medium"
) -> dict[str, torch.Tensor]:
    """Per-image nuisances (B,) float32 tensors, drawn from (seed, identity, sample) alone.
    ``difficulty`` scales ranges and probabilities: easy 0.5x, medium 1x, hard 1.6x."""
    return nuisances_from_streams(nuisance_streams(seed, identities, samples), difficulty)


def nuisances_from_streams(u: torch.Tensor, difficulty: str = "medium") -> dict[str, torch.Tensor]:
    """The nuisances of :func:`sample_nuisances` from the streams of :func:`nuisance_streams`."""
    d = DIFFICULTIES[check_difficulty(difficulty)]
    s = 2 * u - 1  # symmetric in (-1, 1)
    zero = torch.zeros_like(u[:, 0])

    def sym(j: int, amp: float, power: float = 1.0) -> torch.Tensor:
        return amp * s[:, j].sign() * batch_invariant(lambda a: a**power, s[:, j].abs())

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
    n["quality"] = zero.clone()  # filled by the renderer (quality_from_nuisances)
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

    A non-flat style (:mod:`.shading`) records more, and its images pay for them too:

    - cast shadow: 1 - 0.5 shadow_fraction  (fraction of the face oval in cast shadow)
    - gamma:       exp(-(ln gamma / 0.5)^2 / 2)
    - vignetting:  1 - 0.3 vignette
    - eyeglasses:  1 - 0.05 eyeglasses (clear glasses: frames over the eyes, a sheen)
    - specular highlights and grey images cost nothing (a photograph has both);
    - nor does the style a mix drew (``mix_style``): its image pays for that style's nuisances.

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
    if "shadow_fraction" in n:  # the shaded styles' own nuisances
        f = f * (1 - 0.5 * n["shadow_fraction"].clamp(0, 1))
    if "gamma" in n:
        f = f * torch.exp(-((torch.log(n["gamma"]) / 0.5) ** 2) / 2)
    if "vignette" in n:
        f = f * (1 - 0.3 * n["vignette"].clamp(0, 1))
    if "eyeglasses" in n:
        f = f * (1 - 0.05 * n["eyeglasses"].clamp(0, 1))
    return f.clamp(0, 1)
