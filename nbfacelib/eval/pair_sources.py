"""Verification pairs by name or path, ready for a model: what ``nbface eval --data X`` reads.

:func:`open_pairs` resolves ``X`` in this order:

1. a name in :data:`PAIR_SOURCES` (:func:`register_pair_source` adds more, e.g. a named
   protocol with its own pair list): ``orl`` (the ORL faces shipped with the package, balanced
   pairs over all 40 people) and ``synthetic-heldout`` (the held-out synthetic identities that
   ``nbface train`` validates on, rebuilt from the run's ``config.json``: the same pairs, so
   the same numbers);
2. a ``.bin`` pair set (insightface layout, read with the restricted unpickler);
3. a manifest name: a ``pairs-bin`` manifest (``lfw``, ``cfp_fp``, ``agedb_30``) is its
   ``.bin`` under the data root; a ``folder`` / ``rec`` manifest is sampled like a folder;
4. an image folder (one sub-folder per identity), ``folder:PATH`` or ``rec:PATH``: ``pairs``
   balanced, fold-ready pairs (:func:`nbfacelib.data.pairs.sample_pairs`, ``seed``).

Images are brought to the model's input size by the rules training uses for the same data
(a ``.bin``: :meth:`~nbfacelib.data.pairs.PairSet.decode`; a folder: the folder size rule;
synthetic renders: :func:`nbfacelib.data.transforms.resize`), or, with ``resize=False``,
refused with an error that names the data and both sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nbfacelib.data.transforms import resize as resize_images


class PairSourceError(ValueError):
    """Data that cannot be evaluated as asked (unknown name, size mismatch with resizing off)."""


@dataclass
class EvalPairs:
    """Pair ``i`` is ``images[2i], images[2i + 1]``; ``issame[i]`` says whether they match."""

    name: str
    images: torch.Tensor  # uint8 (2N, 3, S, S) at the model's input size S
    issame: np.ndarray  # bool (N,)
    source: str  # the file, folder or generator the pairs came from
    native_size: tuple[int, int]  # (H, W) of the data's images before resizing (first image)

    @property
    def resized(self) -> bool:
        return self.native_size != tuple(self.images.shape[-2:])


# A source builds EvalPairs from the run's config (or None), the model input size and options.
PairSource = Callable[..., EvalPairs]
PAIR_SOURCES: dict[str, PairSource] = {}


def register_pair_source(name: str) -> Callable[[PairSource], PairSource]:
    """Decorator: ``fn(*, config, size, resize, pairs, seed) -> EvalPairs`` answers ``--data name``."""

    def add(fn: PairSource) -> PairSource:
        if name in PAIR_SOURCES:
            raise ValueError(f"pair source {name!r} is already registered")
        PAIR_SOURCES[name] = fn
        return fn

    return add


def open_pairs(
    spec: str | os.PathLike,
    *,
    size: int,
    config=None,
    resize: bool = True,
    pairs: int = 600,
    seed: int = 0,
) -> EvalPairs:
    """The pairs ``spec`` names (see the module docstring), as uint8 images ``size x size``.
    ``config``: the :class:`~nbfacelib.train.TrainConfig` of the model's run (needed by
    ``synthetic-heldout``)."""
    from nbfacelib.data.manifest import list_manifests, load_manifest

    text = os.fspath(spec)
    kw = dict(config=config, size=size, resize=resize, pairs=pairs, seed=seed)
    if text in PAIR_SOURCES:
        return PAIR_SOURCES[text](**kw)
    path = Path(text).expanduser()
    if text.lower().endswith(".bin"):
        return bin_pairs(locate_pair_file(text), size=size, resize=resize)
    if text in list_manifests():
        m = load_manifest(text)
        if m.format == "pairs-bin":
            return bin_pairs(locate_pair_file(text), size=size, resize=resize, name=text)
        if m.format in ("folder", "rec"):
            return dataset_pairs(text, name=text, **kw)
        raise PairSourceError(f"--data {text}: a {m.format} data set, not verification pairs")
    if text.startswith(("folder:", "rec:")) or path.is_dir():
        return dataset_pairs(text, name=path.name or text, **kw)
    bins = [n for n in list_manifests() if load_manifest(n).format == "pairs-bin"]
    known = ", ".join([*PAIR_SOURCES, *bins])
    raise FileNotFoundError(
        f"--data {text}: no such .bin file or image folder, and not a known name ({known})"
    )


def locate_pair_file(spec: str | os.PathLike) -> Path:
    """The ``.bin`` file ``spec`` names: a ``pairs-bin`` manifest name (``lfw``) is located under
    the data root (an error says how to obtain it); a relative path is taken from the current
    directory when it exists there, else under the data root."""
    from nbfacelib.data.datasets import resolve_path
    from nbfacelib.data.manifest import list_manifests, load_manifest

    text = os.fspath(spec)
    if text in list_manifests() and load_manifest(text).format == "pairs-bin":
        return load_manifest(text).locate()
    return resolve_path(text)


def _fit_size(images_hw: tuple[int, int], size: int, resize: bool, what: str) -> None:
    if tuple(images_hw) != (size, size) and not resize:
        h, w = images_hw
        raise PairSourceError(
            f"{what}: images are {w}x{h} but the model takes {size}x{size}; resizing is off "
            "(drop --no-resize to resize them by the rule training uses)"
        )


def bin_pairs(
    path: str | os.PathLike, *, size: int, resize: bool = True, name: str | None = None
) -> EvalPairs:
    """A ``.bin`` pair set, decoded at ``size`` (the decoding ``nbface train`` validates with)."""
    from nbfacelib.data.pairs import load_pairs

    path = Path(path)
    ps = load_pairs(path)  # FileNotFoundError / PairSetError name the file
    if len(ps) == 0:
        raise PairSourceError(f"{path}: holds no pairs")
    native = tuple(ps.decode_one(0, None).shape[-2:])
    _fit_size(native, size, resize, str(path))
    return EvalPairs(name or path.stem, ps.decode(size=size), np.asarray(ps.issame, bool), str(path), native)


def dataset_pairs(uri: str, *, name: str, size: int, resize: bool, pairs: int, seed: int, **_) -> EvalPairs:
    """``pairs`` balanced fold-ready pairs over an image data set (any ``open_dataset`` URI)."""
    from nbfacelib.data import open_dataset
    from nbfacelib.data.pairs import sample_pairs

    native_ds = open_dataset(uri, size=None)
    first = tuple(native_ds[0][0].shape[-2:])
    _fit_size(first, size, resize, f"{uri} ({getattr(native_ds, 'root', None) or uri})")
    ds = open_dataset(uri, size=size)
    i1, i2, same = sample_pairs(np.asarray(ds.labels), pairs, seed=seed)
    flat = np.stack([i1, i2], 1).reshape(-1)
    unique, inverse = np.unique(flat, return_inverse=True)
    read = torch.stack([ds[int(i)][0] for i in unique])
    where = str(getattr(ds, "root", None) or getattr(ds, "rec_path", None) or uri)
    return EvalPairs(name, read[torch.as_tensor(inverse)], np.asarray(same, bool), where, first)


@register_pair_source("orl")
def orl_pairs(*, size: int, resize: bool, pairs: int, seed: int, **_) -> EvalPairs:
    """The ORL faces shipped with the package (or the data root's copy): real faces none of our
    models trained on, ``pairs`` balanced pairs over all 40 people."""
    return dataset_pairs("orl", name="orl", size=size, resize=resize, pairs=pairs, seed=seed)


@register_pair_source("synthetic-heldout")
def synthetic_heldout_pairs(*, config, size: int, resize: bool, **_) -> EvalPairs:
    """The validation pairs of ``nbface train`` on synthetic data: ``config.val_ids`` identities
    after the training ones, ``config.val_pairs`` pairs, seed ``config.seed``."""
    from nbfacelib.data import open_dataset
    from nbfacelib.train.data import synthetic_pairs

    if config is None:
        raise PairSourceError("--data synthetic-heldout needs the run's config.json (its training data)")
    faces = open_dataset(config.data, size=config.input_size if config.input_size in (112, 160) else None)
    if not hasattr(faces, "heldout"):
        raise PairSourceError(
            f"--data synthetic-heldout: the run trained on {config.data!r}, not on synthetic faces"
        )
    heldout = faces.heldout(config.val_ids)
    images, issame = synthetic_pairs(heldout, config.val_pairs, config.seed)
    native = tuple(images.shape[-2:])
    _fit_size(native, size, resize, f"synthetic-heldout ({heldout!r})")
    return EvalPairs("synthetic-heldout", resize_images(images, size), issame, repr(heldout), native)
