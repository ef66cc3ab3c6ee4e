"""Evaluation data named on a command line: what ``nbface eval RUN_DIR --data X`` reads.

:func:`open_pairs` turns ``X`` into an :class:`~nbfacelib.eval.evalsets.EvalSet` at the model's
input size, for a model whose training config is known. In this order:

1. a name in :data:`PAIR_SOURCES` (:func:`register_pair_source` adds more, e.g. a named
   protocol with its own pair list): ``orl`` (the ORL faces shipped with the package) and
   ``synthetic-heldout`` (the held-out synthetic identities that ``nbface train`` validates on,
   rebuilt from the run's config: the same pairs, so the same numbers);
2. a ``.bin`` pair set (insightface layout, read with the restricted unpickler);
3. a manifest name: a published protocol (``lfw``, ``cfp_fp``, ``cfp_ff``, ``cfp_heldout``:
   :func:`protocol_pairs`, built from the data set's own pair lists); a ``pairs-bin`` manifest
   (``agedb_30``) is its ``.bin`` under the data root (:func:`locate_pair_file`); a ``folder``
   manifest is an image folder;
4. an image folder (one sub-folder per identity): ``pairs`` balanced fold-ready pairs.

The sources themselves are those of :mod:`nbfacelib.eval.evalsets`, so images reach the model
by the rules the notebooks and training use. Data whose images are not the model's input size
is resized that way, or, with ``resize=False``, refused with an error naming the data and both
sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nbfacelib.eval.evalsets import EvalSet


class PairSourceError(ValueError):
    """Data that cannot be evaluated as asked (unknown name, size mismatch with resizing off)."""


# fn(*, config, size, resize, pairs, seed) -> (EvalSet, native (H, W) of its images)
PairSource = Callable[..., tuple[EvalSet, tuple[int, int]]]
PAIR_SOURCES: dict[str, PairSource] = {}


def register_pair_source(name: str) -> Callable[[PairSource], PairSource]:
    """Decorator: ``fn(*, config, size, resize, pairs, seed) -> (EvalSet, native_hw)`` answers
    ``--data name``."""

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
) -> tuple[EvalSet, tuple[int, int]]:
    """(the evaluation set ``spec`` names, at ``size`` x ``size``; the (H, W) of its images as
    stored). ``config``: the :class:`~nbfacelib.train.TrainConfig` of the model's run (needed by
    ``synthetic-heldout``)."""
    from nbfacelib.data.manifest import list_manifests, load_manifest

    text = os.fspath(spec)
    if text in PAIR_SOURCES:
        return PAIR_SOURCES[text](config=config, size=size, resize=resize, pairs=pairs, seed=seed)
    manifests = list_manifests()
    if text.lower().endswith(".bin") or (text in manifests and load_manifest(text).format == "pairs-bin"):
        return bin_pairs(locate_pair_file(text), size=size, resize=resize, name=Path(text).stem)
    if text in manifests and load_manifest(text).format == "pairs-protocol":
        return protocol_pairs(text, size=size, resize=resize)
    kw = dict(size=size, resize=resize, pairs=pairs, seed=seed)
    if text in manifests:
        m = load_manifest(text)
        if m.format != "folder":
            raise PairSourceError(f"--data {text}: a {m.format} data set, not a pair set or an image folder")
        return folder_pairs(m.locate(), name=text, **kw)
    from nbfacelib.data.datasets import resolve_path

    folder = resolve_path(text)
    if folder.is_dir():
        return folder_pairs(folder, name=folder.name, **kw)
    bins = [n for n in manifests if load_manifest(n).format in ("pairs-bin", "pairs-protocol")]
    raise FileNotFoundError(
        f"--data {text}: no such .bin file or image folder ({folder}), and not a known name "
        f"({', '.join([*PAIR_SOURCES, *bins])})"
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


def check_size(native_hw: tuple[int, int], size: int, resize: bool, what: str) -> tuple[int, int]:
    """``native_hw`` if images of that (H, W) may be fed to a ``size`` x ``size`` model."""
    native_hw = (int(native_hw[0]), int(native_hw[1]))
    if native_hw != (size, size) and not resize:
        h, w = native_hw
        raise PairSourceError(
            f"{what}: images are {w}x{h} but the model takes {size}x{size}; resizing is off "
            "(drop --no-resize to resize them by the rule training uses)"
        )
    return native_hw


def bin_pairs(path: Path, *, size: int, resize: bool = True, name: str | None = None):
    """A ``.bin`` pair set (:func:`nbfacelib.eval.evalsets.pair_bin`); errors name the file."""
    from nbfacelib.data.pairs import load_pairs
    from nbfacelib.eval.evalsets import pair_bin

    ps = load_pairs(path)  # FileNotFoundError / PairSetError name the file; read before decoding
    if len(ps) == 0:
        raise PairSourceError(f"{path}: holds no pairs")
    native = check_size(ps.decode_one(0, None).shape[-2:], size, resize, str(path))
    return pair_bin(path, size, name=name), native


def protocol_pairs(name: str, *, size: int, resize: bool = True):
    """A published protocol by name (``lfw``, ``cfp_fp``, ``cfp_ff``, ``cfp_heldout``:
    :func:`nbfacelib.eval.evalsets.protocol`, the publisher's pairs and folds), read from its
    folder under the data root, or from a ready ``.bin`` at one of its manifest's alternative
    places; a missing data set raises an error saying how to obtain it."""
    from PIL import Image

    from nbfacelib.data.manifest import load_manifest
    from nbfacelib.data.protocols import read_protocol
    from nbfacelib.eval.evalsets import protocol

    m = load_manifest(name)
    found = m.locate()
    if found.is_file():
        return bin_pairs(found, size=size, resize=resize, name=name)
    first = read_protocol(m.protocol.get("reader", name), found).first[0]
    with Image.open(first) as im:
        native = check_size((im.height, im.width), size, resize, f"{name} ({first})")
    return protocol(name, size), native


def folder_pairs(folder: Path, *, size: int, resize: bool, pairs: int, seed: int, name: str):
    """Balanced pairs over an image folder (:func:`nbfacelib.eval.evalsets.image_folder`)."""
    from nbfacelib.data.folder import FolderDataset
    from nbfacelib.eval.evalsets import image_folder

    native = check_size(FolderDataset(folder, size=None)[0][0].shape[-2:], size, resize, str(folder))
    return image_folder(folder, pairs, size, pair_seed=seed, name=name), native


@register_pair_source("orl")
def orl_pairs(*, size: int, resize: bool, pairs: int, seed: int, **_):
    """The ORL faces (:func:`nbfacelib.eval.evalsets.orl`): real faces none of our models trained
    on, ``pairs`` balanced pairs over all 40 people."""
    from nbfacelib.data import open_dataset
    from nbfacelib.eval.evalsets import orl

    stored = open_dataset("orl", size=None)
    native = check_size(stored[0][0].shape[-2:], size, resize, f"orl ({stored.root})")
    return orl(pairs, size, pair_seed=seed), native


@register_pair_source("synthetic-heldout")
def synthetic_heldout_pairs(*, config, size: int, resize: bool, **_):
    """The validation pairs of ``nbface train`` on synthetic data: ``config.val_ids`` identities
    after the training ones, ``config.val_pairs`` pairs, seed ``config.seed``."""
    from nbfacelib.data import open_dataset, transforms
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
    native = check_size(images.shape[-2:], size, resize, f"synthetic-heldout ({heldout!r})")
    n = len(issame)
    evalset = EvalSet(
        "synthetic-heldout",
        transforms.resize(images, size),
        None,
        np.arange(0, 2 * n, 2),
        np.arange(1, 2 * n, 2),
        issame,
        description=f"{heldout!r}: the run's validation pairs ({n})",
    )
    return evalset, native
