"""``SyntheticFaces``: a torch Dataset of procedural faces; nothing is stored."""

from __future__ import annotations

import numpy as np
import torch

from .identity import check_identity_offset, next_split_offset, twin_parent
from .nuisances import check_difficulty
from .renderer import check_size, render
from .shading import check_style_name


class SyntheticFaces(torch.utils.data.Dataset):
    """``num_identities`` x ``per_identity`` synthetic faces; nothing is stored.

    Index ``i`` is identity ``identity_offset + i // per_identity`` (label ``i // per_identity``)
    and sample ``i % per_identity``. ``identity_offset`` (even: see
    :func:`~.identity.check_identity_offset`) gives a disjoint held-out split: train
    ``train = SyntheticFaces(N, K)``, test ``train.heldout(M)``.
    ``ds[i]`` -> (uint8 (3, S, S), label); ``ds.nuisances(i)`` -> dict of floats incl. quality.
    ``style``: a name of :data:`~.shading.STYLES` (``flat``, the calibrated default, or
    ``shaded``: per-identity relief, Lambert + specular light, cast shadows, skin texture, grey
    images; ``eyewear``: shaded + photographic eyes, brows, hair strands and clear glasses;
    ``hair``: eyewear + hair as a volume of varied outline, hairline and length; ``haircuts``:
    hair + each person's other haircut in a quarter of their images), or of
    :data:`~.shading.MIXES` (``mixed``: each image in one of flat, shaded, eyewear, haircuts).
    """

    format = "synthetic"  # what :func:`nbfacelib.data.datasets.describe` reports

    def __init__(
        self,
        num_identities: int,
        per_identity: int,
        seed: int = 0,
        size: int = 112,
        difficulty: str = "medium",
        identity_offset: int = 0,
        style: str = "flat",
    ):
        for name, val in (("num_identities", num_identities), ("per_identity", per_identity)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"{name}={val!r}: expected an integer >= 1")
        self.identity_offset = check_identity_offset(identity_offset)
        self.num_identities = int(num_identities)
        self.per_identity = int(per_identity)
        self.seed = int(seed)
        self.size = check_size(size)
        self.difficulty = check_difficulty(difficulty)
        self.style = check_style_name(style)

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
            ids + self.identity_offset,
            samples,
            self.seed,
            self.size,
            self.difficulty,
            device,
            style=self.style,
            **kwargs,
        )

    def heldout(self, num_identities: int, per_identity: int | None = None) -> SyntheticFaces:
        """``num_identities`` identities after this set's (same seed, size, difficulty), starting
        at the next even identity so that no near-twin pair straddles the two sets."""
        return SyntheticFaces(
            num_identities,
            self.per_identity if per_identity is None else per_identity,
            seed=self.seed,
            size=self.size,
            difficulty=self.difficulty,
            identity_offset=next_split_offset(self.identity_offset + self.num_identities),
            style=self.style,
        )

    def twin_of(self, label: int) -> int:
        """Label of the identity this one is a near twin of (-1 if none, or outside the set)."""
        parent = int(twin_parent(torch.tensor([label + self.identity_offset]), self.seed)[0])
        lab = parent - self.identity_offset
        return lab if parent >= 0 and 0 <= lab < self.num_identities else -1

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, per_identity={self.per_identity}, "
            f"seed={self.seed}, size={self.size}, difficulty={self.difficulty!r}, "
            f"identity_offset={self.identity_offset}"
            + (f", style={self.style!r})" if self.style != "flat" else ")")
        )
