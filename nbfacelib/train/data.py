"""Training batches and validation pair sets for the engine.

The batch of optimizer step ``t`` is a pure function of ``(seed, t, rank)``:
- synthetic faces: identities and sample indices are drawn from a generator seeded by
  ``(seed, t, rank)`` and rendered by :meth:`SyntheticFaces.render_batch` on the training
  device (no DataLoader, no storage);
- image folders / RecordIO: each epoch is a permutation seeded by ``(seed, epoch)``; step ``t``
  reads the next ``batch * world`` indices of it (this rank's slice), through a DataLoader
  (``num_workers``) started at ``t`` -- small sets are simply held in memory;
- ``images_per_identity = K > 1`` (P x K batches, for pair losses such as PFE's MLS): each
  step draws ``batch / K`` identities from the ``(seed, t, rank)`` generator and K distinct
  images of each (with repetition only when an identity has fewer than K), groups adjacent.
So a resumed run needs no iterator state beyond the step: it sees exactly the batches an
uninterrupted run would have seen (the "iterator position" of the checkpoint is the step).
"""

from __future__ import annotations

import numpy as np
import torch

from nbfacelib.data import transforms
from nbfacelib.train.config import TrainConfig

# Data sets up to this many images are decoded once and held as one uint8 tensor.
IN_MEMORY_MAX = 20_000

# The synthetic render cache is filled in fixed blocks of this many consecutive images.
RENDER_BLOCK = 256


def _generator(*key: int) -> torch.Generator:
    # SeedSequence mixes the parts so that (seed, step) pairs never collide
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


class TrainBatches:
    """``batch(step) -> (uint8 images (B*grad_accum, 3, H, W) on device, int64 labels)``."""

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1):
        from nbfacelib.data import open_dataset

        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        self.per_step = cfg.batch_size * cfg.grad_accum
        # synthetic faces render at 112 / 160 only; another input size is resized here
        size = cfg.input_size if cfg.input_size in (112, 160) else None
        self.dataset = open_dataset(cfg.data, size=size)
        self.synthetic = hasattr(self.dataset, "render_batch")
        self.augment = transforms.TrainAugment(
            cfg.input_size,
            crop_scale=cfg.crop_scale,
            crop_ratio=cfg.crop_ratio,
            color_jitter=cfg.color_jitter,
            rand_conv=cfg.rand_conv,
            hue=cfg.hue,
            crop_shift=cfg.crop_shift,
        )
        if self.synthetic:
            self.num_classes = int(self.dataset.num_identities)
            self.per_id = int(self.dataset.per_identity)
            self.num_images = self.num_classes * self.per_id
            # Keep rendered images when the whole set fits in cache_mb. The renderer's pixels
            # depend (by one grey level, here and there) on which images share its batch: its
            # vectorised kernels take another path for batches of 8 or more. So the cache is
            # filled in fixed blocks (RENDER_BLOCK consecutive images), never with the images
            # a step happens to miss: a cached image must not depend on which steps came
            # before, or a resumed run (empty cache) sees other pixels than an uninterrupted one.
            s = self.dataset.size
            self.cache = None
            if self.num_images * 3 * s * s <= cfg.cache_mb * 2**20:
                self.cache = torch.zeros((self.num_images, 3, s, s), dtype=torch.uint8, device=device)
                self.cached = torch.zeros(self.num_images, dtype=torch.bool, device=device)
            return
        # folders and .rec pad a non-square image to a square themselves (the folder size rule);
        # read natively and resized here, CFP's crops would be stretched. A random crop gets a
        # source large enough that the smallest crop is about input_size pixels.
        store = cfg.input_size
        if cfg.crop_scale is not None:
            store = transforms.crop_source_size(cfg.input_size, cfg.crop_scale)
        if size != store:
            self.dataset = open_dataset(cfg.data, size=store)
        labels = np.asarray(self.dataset.labels, dtype=np.int64)
        ids = np.unique(labels)
        if cfg.holdout_ids >= len(ids):
            raise ValueError(f"holdout_ids={cfg.holdout_ids} but {cfg.data} has only {len(ids)} identities")
        self.train_ids = ids[: len(ids) - cfg.holdout_ids]
        self.heldout_ids = ids[len(ids) - cfg.holdout_ids :]
        self.indices = np.flatnonzero(np.isin(labels, self.train_ids))
        # classes are renumbered 0..C-1 over the training identities
        self.label_map = {int(i): c for c, i in enumerate(self.train_ids)}
        self.labels = torch.as_tensor([self.label_map[int(labels[i])] for i in self.indices])
        self.num_classes = len(self.train_ids)
        self.num_images = len(self.indices)
        if self.num_images < self.per_step * world:
            raise ValueError(
                f"{cfg.data}: {self.num_images} training images < one step's {self.per_step * world}"
            )
        self.images = None
        if self.num_images <= IN_MEMORY_MAX:
            self.images = torch.stack([self._read(i) for i in self.indices])
        self._loader = None
        self._next_step = None
        self._perm: tuple[int, torch.Tensor] | None = None
        self._by_class: list[torch.Tensor] | None = None

    def _render(self, identities: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self.dataset.render_batch(identities, samples, device=self.device)[0]
        index = (identities * self.per_id + samples).to(self.device)
        for block in torch.unique(index[~self.cached[index]] // RENDER_BLOCK).tolist():
            start = block * RENDER_BLOCK
            flat = torch.arange(start, min(start + RENDER_BLOCK, self.num_images))
            ids, smp = flat // self.per_id, flat % self.per_id
            self.cache[start : start + len(flat)] = self.dataset.render_batch(ids, smp, device=self.device)[0]
            self.cached[start : start + len(flat)] = True
        return self.cache[index]

    def _read(self, i: int) -> torch.Tensor:
        return self.dataset[int(i)][0]  # already square at the stored size (see __init__)

    # --- batches ----------------------------------------------------------------------------
    def set_images_per_identity(self, k: int | None) -> None:
        """The batch layout an objective asks for (its ``images_per_identity``, which ``fit()``
        passes here): ``None`` keeps the config's ``images_per_identity``; K >= 2 switches to
        P x K batches of K images per identity. A K the config contradicts (another K > 1) or
        the batch cannot hold raises ``ValueError`` naming the options."""
        if k is None:
            return
        b, configured = self.cfg.batch_size, self.cfg.images_per_identity
        if int(k) != k or k < 2 or b % k:
            raise ValueError(
                f"images_per_identity={k}: needs an int K >= 2 that divides batch_size={b} "
                f"(P x K batches: batch_size / K identities with K images each)"
            )
        if configured not in (1, k):
            raise ValueError(
                f"the objective {self.cfg.loss!r} asks for images_per_identity={k} but the config "
                f"sets images_per_identity={configured}; leave the config at 1 or give the same K"
            )
        if b // k < 2:
            raise ValueError(
                f"images_per_identity={k} with batch_size={b}: P = {b // k} identities per batch, "
                f"but a batch with negatives needs at least 2"
            )
        self.cfg = self.cfg.replace(images_per_identity=int(k))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.synthetic:
            g = _generator(self.cfg.seed, step, self.rank, 1)
            k = self.cfg.images_per_identity
            if k > 1:
                identities = torch.randint(0, self.num_classes, (self.per_step // k,), generator=g)
                samples = _distinct(self.per_id, len(identities), k, g).flatten()
                identities = identities.repeat_interleave(k)
            else:
                identities = torch.randint(0, self.num_classes, (self.per_step,), generator=g)
                samples = torch.randint(0, self.per_id, (self.per_step,), generator=g)
            images = self._render(identities, samples)
            labels = identities
        else:
            positions = self._positions(step)
            if self.images is not None:
                images, labels = self.images[positions], self.labels[positions]
            else:
                images, labels = self._from_loader(step)
            g = _generator(self.cfg.seed, step, self.rank, 2)
        if self.augment.active:  # its own stream: batches without augmentation are unchanged
            images = self.augment(images, _generator(self.cfg.seed, step, self.rank, 4))
        if self.cfg.flip:
            flip = torch.rand(len(labels), generator=g) < 0.5
            images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _positions(self, step: int) -> torch.Tensor:
        """Indices (into the training subset) of this rank's images at ``step``."""
        k = self.cfg.images_per_identity
        if k > 1:  # P x K: identities drawn per step, K distinct images of each
            if self._by_class is None:
                order = torch.argsort(self.labels, stable=True)
                counts = torch.bincount(self.labels, minlength=self.num_classes)
                self._by_class = list(order.split(counts.tolist()))
            g = _generator(self.cfg.seed, step, self.rank, 5)
            classes = torch.randint(0, self.num_classes, (self.per_step // k,), generator=g)
            return torch.cat(
                [self._by_class[c][_distinct(len(self._by_class[c]), 1, k, g)[0]] for c in classes.tolist()]
            )
        n = self.num_images
        per_epoch = n // (self.per_step * self.world)  # steps per epoch; the tail is dropped
        epoch, k = divmod(step, per_epoch)
        if self._perm is None or self._perm[0] != epoch:  # one permutation per epoch, kept
            self._perm = (epoch, torch.randperm(n, generator=_generator(self.cfg.seed, epoch, 3)))
        perm = self._perm[1]
        start = (k * self.world + self.rank) * self.per_step
        return perm[start : start + self.per_step]

    def _from_loader(self, step: int):
        from torch.utils.data import DataLoader

        if self._loader is None or self._next_step != step:
            sampler = _StepSampler(self, step)
            self._loader = iter(
                DataLoader(_Items(self), batch_sampler=sampler, num_workers=self.cfg.num_workers)
            )
        self._next_step = step + 1
        return next(self._loader)

    # --- pixels -------------------------------------------------------------------------------
    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (N, 3, input_size, input_size) (bilinear, antialiased)."""
        return transforms.resize(images, self.cfg.input_size)

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        return transforms.normalize(self.resize(images))


def _distinct(n: int, rows: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(rows, k) indices in [0, n): k distinct ones per row when n >= k, else drawn with
    repetition."""
    if n >= k:
        return torch.rand(rows, n, generator=g).argsort(1)[:, :k]
    return torch.randint(0, n, (rows, k), generator=g)


class _Items(torch.utils.data.Dataset):
    def __init__(self, batches: TrainBatches):
        self.b = batches

    def __len__(self):
        return self.b.num_images

    def __getitem__(self, pos: int):
        return self.b._read(self.b.indices[pos]), self.b.labels[pos]


class _StepSampler(torch.utils.data.Sampler):
    def __init__(self, batches: TrainBatches, start: int):
        self.b, self.start = batches, start

    def __iter__(self):
        step = self.start
        while True:
            yield self.b._positions(step).tolist()
            step += 1


def synthetic_pairs(faces, n_pairs: int, seed: int, data: TrainBatches | None = None, batch: int = 256):
    """Pairs of ``faces`` (:func:`nbfacelib.data.pairs.sample_pairs`, the foundation's balanced
    fold-ready layout) rendered straight to tensors in batches: no JPEG round trip, which for
    synthetic faces would only add an artefact and (through ``make_pair_set``'s one-image-at-a-
    time encoding) minutes of CPU. Returns (uint8 (2N, 3, S, S), issame (N,))."""
    from nbfacelib.data.pairs import sample_pairs

    i1, i2, same = sample_pairs(faces.labels, n_pairs, seed=seed)
    flat = torch.as_tensor(np.stack([i1, i2], 1).reshape(-1))
    unique, inverse = torch.unique(flat, return_inverse=True)
    parts = []
    for chunk in unique.split(batch):
        images, _ = faces.render_batch(chunk // faces.per_identity, chunk % faces.per_identity)
        parts.append(images if data is None else data.resize(images))
    return torch.cat(parts)[inverse], np.asarray(same)


def resolve_validation(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """The validation of ``cfg`` made concrete for its data, and a sentence saying what it is.

    ``synthetic-heldout`` (every preset's default) renders identities after the synthetic
    training ones; on a folder / ``.rec`` / manifest data set it means *the data's own held-out
    people* instead:
    - a manifest that names pair sets of people it leaves out (``validation:``, e.g. ``cfp`` ->
      ``cfp_heldout``, ``lfw``): those that are present under the data root;
    - otherwise ``heldout``: the last ``holdout_ids`` identities (when 0: 10% of them, at least
      2) are kept out of training and ``val_pairs`` pairs of them (fewer when they cannot
      supply that many same-identity pairs) are the validation set;
    - with fewer than 10 identities validation is skipped.
    Other entries of ``val`` are kept as given. Returns ``(cfg, None)`` when nothing changed.
    """
    from nbfacelib.data import open_dataset
    from nbfacelib.data.datasets import _split_uri
    from nbfacelib.data.manifest import list_manifests, load_manifest

    if "synthetic-heldout" not in cfg.val:
        return cfg, None
    scheme, rest = _split_uri(cfg.data)
    name = rest if scheme == "manifest" else (cfg.data if scheme is None else None)
    manifest = load_manifest(name) if name in list_manifests() else None
    if scheme == "synthetic" or cfg.data == "synthetic" or (manifest and manifest.format == "synthetic"):
        return cfg, None
    others = [v for v in cfg.val if v != "synthetic-heldout"]
    if manifest is not None and manifest.validation:
        present = [v for v in manifest.validation if load_manifest(v).find() is not None]
        missing = [v for v in manifest.validation if v not in present]
        note = f"validation on {', '.join(present) or 'nothing'}: the pair sets of people {name!r} leaves out"
        if missing:
            note += f" ({', '.join(missing)} not under the data root: skipped)"
        return cfg.replace(val=others + [v for v in present if v not in others]), note
    labels = np.asarray(open_dataset(cfg.data, size=None).labels)
    ids, counts = np.unique(labels, return_counts=True)
    if len(ids) < 10 and not cfg.holdout_ids:
        return cfg.replace(val=others), (
            f"validation skipped: {cfg.data} has {len(ids)} identities, too few to hold some out"
        )
    k = cfg.holdout_ids or max(2, round(0.1 * len(ids)))
    held = counts[len(ids) - k :]
    same_capacity = int((held * (held - 1) // 2).sum())
    pairs = min(cfg.val_pairs, 2 * same_capacity) // 20 * 20  # 10 folds of same + different
    if pairs < 20:
        return cfg.replace(val=others), (
            f"validation skipped: the last {k} identities of {cfg.data} have too few images for pairs"
        )
    note = (
        f"validation on 'heldout': the last {k} of {len(ids)} identities of {cfg.data} are kept out "
        f"of training ({pairs} pairs of them)"
    )
    return cfg.replace(val=others + ["heldout"], holdout_ids=k, val_pairs=pairs), note


def build_val_sets(cfg: TrainConfig, data: TrainBatches) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """name -> (uint8 images (2N, 3, S, S), issame (N,)) for every entry of ``cfg.val``:
    a ``.bin`` path; ``synthetic-heldout`` (identities after the training ones, same renderer);
    ``heldout`` (the ``holdout_ids`` identities kept out of a folder/rec training set)."""
    from pathlib import Path

    from nbfacelib.data.pairs import make_pair_set
    from nbfacelib.data.protocols import open_pair_set

    out = {}
    for spec in cfg.val:
        if spec in ("synthetic-heldout", "heldout") and data.synthetic:
            heldout = data.dataset.heldout(cfg.val_ids)
            out["synthetic-heldout"] = synthetic_pairs(heldout, cfg.val_pairs, cfg.seed, data)
            continue
        elif spec == "heldout":
            if not cfg.holdout_ids:
                raise ValueError("val 'heldout' needs holdout_ids > 0 (identities kept out of training)")
            pairs = make_pair_set(
                data.dataset, cfg.val_pairs, seed=cfg.seed, exclude_identities=data.train_ids
            )
            name = "heldout"
        else:
            # a .bin path or a pair-set manifest (lfw, cfp_heldout, ...: built from the
            # protocol's files, or read from a ready .bin); a missing one says how to obtain it
            pairs = open_pair_set(spec)
            name = Path(spec).stem if spec.endswith(".bin") else spec
        out[name] = (pairs.decode(size=cfg.input_size), np.asarray(pairs.issame))
    return out
