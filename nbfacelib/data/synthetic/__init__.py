"""Synthetic faces: procedural identities with recorded nuisances and a ground-truth quality.

The embedded default data set. Everything is a pure function of ``(seed, identity, sample)``
through a counter-based integer hash, so any index renders on its own, in any batch, in any
order, and nothing is stored: on one machine an image is the same bytes however it is
batched and at any thread count (tests render every style and mix in pieces of 1 to 112
images against one batch of 160, and at 1, 2 and 3 threads; the down-sampling nuisance's
bilinear enlarging runs on one thread for it). Across devices the kernels differ. The
package, in the order data flows:

- :mod:`.hashing`: uniforms from integer keys, identical on every device;
- :mod:`.identity`: ~50 physical parameters per identity, near twins, valid split offsets;
- :mod:`.nuisances`: per-image pose, expression, light, occluder, blur, noise, resolution and
  JPEG, and the ground-truth quality in [0, 1] they imply;
- :mod:`.shading`: render styles: ``flat`` (the default) and ``shaded`` (per-identity relief,
  Lambert + specular light, cast shadows, skin texture, grey images), up to ``haircuts``;
- :mod:`.detail`: the ``detailed`` styles' eyes, brows, hair strands and clear eyeglasses;
- :mod:`.hair`: the ``hair`` styles' hair as a volume (outline, hairline, length, texture) and
  each person's second haircut;
- :mod:`.morph`: each identity's own smooth, symmetric warp (the ``morphed`` mix);
- :mod:`.face`: drawing an identity's frontal face and the per-image overlays in its frame;
- :mod:`.renderer`: pose, scene, camera degradations and the base-face cache: :func:`render`;
- :mod:`.dataset`: :class:`SyntheticFaces`, the torch Dataset.

(The module that renders is ``renderer``, not ``render``, so that ``synthetic.render`` stays
the function.)
"""

from .dataset import SyntheticFaces
from .identity import TWIN_EPS, TWIN_FRACTION, identity_params, next_split_offset, twin_parent
from .nuisances import (
    DIFFICULTIES,
    DOWNSAMPLE_FACTORS,
    NUISANCE_KEYS,
    OCCLUDERS,
    quality_from_nuisances,
    sample_nuisances,
)
from .renderer import BASE_CACHE, CPU_CHUNK, SIZES, render
from .shading import MIX_KEYS, MIXES, SHADED_KEYS, STYLES, Style, recorded_keys

__all__ = [
    "SyntheticFaces",
    "render",
    "quality_from_nuisances",
    "identity_params",
    "sample_nuisances",
    "twin_parent",
    "next_split_offset",
    "DIFFICULTIES",
    "SIZES",
    "NUISANCE_KEYS",
    "OCCLUDERS",
    "DOWNSAMPLE_FACTORS",
    "TWIN_FRACTION",
    "TWIN_EPS",
    "BASE_CACHE",
    "CPU_CHUNK",
    "STYLES",
    "SHADED_KEYS",
    "MIXES",
    "MIX_KEYS",
    "recorded_keys",
    "Style",
]
