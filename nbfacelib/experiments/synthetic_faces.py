"""Notebook 00 (the synthetic faces): what the generator draws, how quality is scored, how hard
the data is for raw pixels, and whether what a model learns from it carries over to real
faces (project claim D1).

Every number here comes from :mod:`nbfacelib.data.synthetic` (the renderer and its quality
formula), :func:`nbfacelib.eval.baseline.calibrate` (raw-pixel calibration), the study kit's
grid (training) and :mod:`nbfacelib.eval.evalsets` (ORL pairs, eigenfaces). Figures are in
:mod:`nbfacelib.viz.synthetic`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nbfacelib.data.synthetic import (
    NUISANCE_KEYS,
    OCCLUDERS,
    SHADED_KEYS,
    STYLES,
    quality_from_nuisances,
    render,
)
from nbfacelib.experiments.grid import Variant, synthetic_uri
from nbfacelib.report.stats import Greater
from nbfacelib.train import TrainConfig

# The quality formula's factors, each the nuisances it reads (quality_from_nuisances' docstring).
QUALITY_FACTORS: dict[str, tuple[str, ...]] = {
    "pose": ("yaw", "pitch", "roll"),
    "alignment": ("shift_x", "shift_y", "scale"),
    "expression": ("eyes_closed", "mouth_open"),
    "light": ("light_strength", "light_angle"),
    "exposure": ("exposure",),
    "colour cast": ("cast_r", "cast_g", "cast_b"),
    "occlusion": ("occluded",),
    "blur": ("blur_sigma", "motion_length"),
    "noise": ("noise_sigma",),
    "resolution": ("downsample",),
    "JPEG": ("jpeg_quality",),
    "cast shadow": ("shadow_fraction",),
    "gamma": ("gamma",),
    "vignetting": ("vignette",),
    "eyeglasses": ("eyeglasses",),
}
# Nuisance values at which the formula's factor is 1 (no degradation).
NEUTRAL = {
    "scale": 1.0,
    "exposure": 1.0,
    "cast_r": 1.0,
    "cast_g": 1.0,
    "cast_b": 1.0,
    "downsample": 1.0,
    "jpeg_quality": 100.0,
    "gamma": 1.0,
}


# --------------------------------------------------------------------------- the generator
def contact_sheet(
    style: str, identities: int = 6, samples: int = 6, seed: int = 0, difficulty: str = "medium"
) -> dict[str, Any]:
    """``identities`` x ``samples`` faces of one style: uint8 images (rows = identities), their
    nuisances as numpy, and the identities (the first near-twin pair first)."""
    from nbfacelib.data.synthetic import twin_parent

    parents = twin_parent(torch.arange(256), seed)
    kid = int((parents >= 0).nonzero()[0])
    chosen = [int(parents[kid]), kid] + [i for i in range(256) if i not in (kid, int(parents[kid]))]
    ids = torch.tensor(chosen[:identities]).repeat_interleave(samples)
    images, n = render(
        ids, torch.arange(samples).repeat(identities), seed=seed, difficulty=difficulty, style=style
    )
    return {
        "images": images,
        "nuisances": {k: v.numpy() for k, v in n.items()},
        "identities": chosen[:identities],
        "twin": (int(parents[kid]), kid),
        "style": style,
        "rows": identities,
        "cols": samples,
    }


def face_explorer(
    identity: int = 0,
    yaw: float = 0.0,
    pitch: float = 0.0,
    light_angle: float = 45.0,
    light_azimuth: float = 0.0,
    light_strength: float = 0.6,
    occluder: str = "none",
    blur_sigma: float = 0.0,
    noise_sigma: float = 0.0,
    jpeg_quality: float = 100.0,
    grey: bool = False,
    eyeglasses: bool = False,
    haircut: bool = False,
    styles: Sequence[str] = ("flat", "shaded"),
):
    """The figure behind the notebook's generator sliders: one identity rendered in each style
    with the chosen pose, light, occluder and degradations (everything else neutral);
    ``eyeglasses`` and ``haircut`` (the other haircut) where a style draws them."""
    from nbfacelib.viz.synthetic import faces_figure

    over = {
        k: 0.0 for k in ("roll", "shift_x", "shift_y", "motion_length", "smile", "mouth_open", "eyes_closed")
    }
    over.update(scale=1.0, exposure=1.0, cast_r=1.0, cast_g=1.0, cast_b=1.0, downsample=1.0)
    over.update(
        yaw=yaw,
        pitch=pitch,
        light_angle=light_angle,
        light_azimuth=light_azimuth,
        light_strength=light_strength,
        occluder=float(OCCLUDERS.index(occluder)),
        blur_sigma=blur_sigma,
        noise_sigma=noise_sigma,
        jpeg_quality=jpeg_quality,
    )
    shown = {}
    for style in styles:
        extra = (
            {}
            if STYLES[style].flat
            else {"grey": float(grey), "gamma": 1.0, "vignette": 0.0, "zoom": 1.0, "pillarbox": 0.0}
        )
        if STYLES[style].eyewear:
            extra["eyeglasses"] = float(eyeglasses)
        if STYLES[style].haircuts:
            extra["haircut"] = float(haircut)
        img, n = render(torch.tensor([identity]), torch.tensor([0]), style=style, overrides={**over, **extra})
        shown[style] = (img[0], float(n["quality"][0]))
    return faces_figure(shown, f"identity {identity}")


# --------------------------------------------------------------------------- quality
def quality_sample(
    style: str, n_images: int = 2000, seed: int = 0, difficulty: str = "medium", offset: int = 10_000
) -> dict[str, np.ndarray]:
    """Nuisances (incl. quality) of ``n_images`` images of 200 identities from ``offset``."""
    ids = offset + torch.arange(n_images) % 200
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, n_images, 256):
        _, n = render(
            ids[i : i + 256],
            torch.arange(i, min(i + 256, n_images)),
            seed,
            difficulty=difficulty,
            style=style,
        )
        for k, v in n.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def quality_factors(nuisances: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each factor of the quality formula per image: the formula evaluated with only that
    factor's nuisances set (all others neutral), so the factors multiply to the quality
    without a second copy of the formula."""
    m = len(nuisances["quality"])
    neutral = {k: torch.full((m,), NEUTRAL.get(k, 0.0)) for k in NUISANCE_KEYS if k != "quality"}
    out = {}
    for name, keys in QUALITY_FACTORS.items():
        if not all(k in nuisances for k in keys):
            continue
        n = dict(neutral)
        if keys[0] in SHADED_KEYS:
            n.update({k: torch.full((m,), NEUTRAL.get(k, 0.0)) for k in SHADED_KEYS})
        n.update({k: torch.as_tensor(nuisances[k]) for k in keys})
        out[name] = quality_from_nuisances(n).numpy()
    return out


# --------------------------------------------------------------------------- speed
def render_rate(style: str, n_images: int = 1024, identities: int = 256, batch: int = 256) -> float:
    """Warm render rate at 112 px, images/s on this machine now (the identities' base faces are
    cached first; batches of ``batch``). Under load it is a lower bound, not a property."""
    ident = torch.arange(n_images) % identities
    for i in range(0, identities, batch):
        render(ident[i : i + batch], torch.zeros(len(ident[i : i + batch]), dtype=torch.long), style=style)
    t0 = time.perf_counter()
    for i in range(0, n_images, batch):
        render(ident[i : i + batch], torch.arange(i, i + len(ident[i : i + batch])) + 1, style=style)
    return n_images / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- transfer (D1)
def transfer_variants(
    base: TrainConfig, styles: Sequence[str], ids: int, per_id: int, difficulty: str
) -> list[Variant]:
    """One training recipe per renderer style: the same config on that style's faces."""
    return [
        Variant(s, base.replace(data=synthetic_uri(ids, per_id, 0, difficulty, s)), {"style": s})
        for s in styles
    ]


def untrained_variant(variant: Variant) -> Variant:
    """The same network at its initialisation: one step at learning rate 0 (weights unchanged;
    batch-norm statistics see one batch), scored like the trained ones."""
    cfg = variant.config.replace(steps=1, lr=0.0, warmup_steps=0)
    return Variant("untrained", cfg, {**variant.labels, "trained": False})


def d1_rule(style: str, margin: float) -> Greater:
    """D1 for the models trained on ``style``: their ORL accuracy exceeds the eigenfaces' (fitted
    on ORL) plus ``margin`` (paired by seed; the eigenfaces are the same for every seed)."""
    return Greater(f"{style}-trained model", f"eigenfaces + {margin:g}")


def d1_data(
    style: str, margin: float, accuracy: dict[int, float], eigenfaces: float
) -> dict[str, dict[int, float]]:
    """The numbers :func:`d1_rule` reads: model accuracy per seed and eigenfaces + margin."""
    return {
        f"{style}-trained model": dict(accuracy),
        f"eigenfaces + {margin:g}": {s: eigenfaces + margin for s in accuracy},
    }
