"""Verification pair sets: the insightface ``.bin`` format, read safely, and new ones made.

Format (insightface ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): a pickle of
``(images, issame)`` where ``images`` is a list of ``2N`` encoded images (JPEG/PNG bytes) and
``issame`` a list of ``N`` bools; pair ``i`` is ``images[2i], images[2i+1]``. Files written by
Python 2 store the images as ``str`` and need ``encoding='bytes'`` to come back as ``bytes``.

A pickle can run arbitrary code while it is being read (``__reduce__`` calls any global). A
pair set needs no global at all, so :class:`_PairSetUnpickler` refuses every global except
the one Python 3 itself uses to write ``bytes`` at protocols 0-2 (``_codecs.encode(str,
'latin1')``), which is replaced by a checked stand-in. Nothing in a refused file runs.

:func:`sample_pairs` draws balanced, fold-ready pairs (the LFW "View 2" layout: ``nfolds``
consecutive blocks, each half same / half different, one identity's pairs in one block where
possible); :func:`make_pair_set` turns a data set into a pair set.
"""

from __future__ import annotations

import heapq
import io
import os
import pickle
import reprlib
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PairSet",
    "PairSetError",
    "load_pairs",
    "save_pairs",
    "sample_pairs",
    "make_pair_set",
    "fold_sizes",
]


class PairSetError(ValueError):
    """A ``.bin`` file that is not a plain pair set (wrong structure, or a refused pickle)."""


# ----------------------------------------------------------------------------- safe reading


class _Refused(pickle.UnpicklingError):
    """Raised by the restricted unpickler for what it will not build."""


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    """Stand-in for ``_codecs.encode``: only the ``str -> bytes`` latin-1 round trip that
    ``pickle`` protocols 0-2 use for ``bytes`` written by Python 3."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in {"latin1", "latin-1"}:
        raise _Refused(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not admitted")
    return obj.encode("latin-1", errors="strict")


class _PairSetUnpickler(pickle.Unpickler):
    """Admits containers, bytes/str, bools and numbers (opcodes, no globals); refuses every
    global except ``_codecs.encode`` (mapped to :func:`_latin1_encode`)."""

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise _Refused(f"global {module}.{name} refused")

    def persistent_load(self, pid):
        raise _Refused("persistent ids refused")


def _validate(obj, path) -> tuple[list[bytes], np.ndarray]:
    where = f"{path}: not a plain pair set"
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        what = f"a {type(obj).__name__}" + (f" of length {len(obj)}" if isinstance(obj, tuple | list) else "")
        raise PairSetError(f"{where}: expected a 2-tuple (images, issame), got {what}")
    images, issame = obj
    if not isinstance(images, list | tuple):
        raise PairSetError(f"{where}: images must be a list of bytes, got {type(images).__name__}")
    if not isinstance(issame, list | tuple):
        raise PairSetError(f"{where}: issame must be a list of bools, got {type(issame).__name__}")
    if len(issame) == 0:
        raise PairSetError(f"{where}: no pairs")
    if len(images) != 2 * len(issame):
        raise PairSetError(
            f"{where}: {len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})"
        )
    for i, b in enumerate(images):
        if type(b) is not bytes:
            raise PairSetError(f"{where}: image {i} is a {type(b).__name__}, not bytes")
    for i, s in enumerate(issame):
        # bool only: 0/1 ints are refused so that a mixed-up column (labels, ids) cannot pass.
        if type(s) is not bool:
            # reprlib bounds the depth and length: a deeply nested list would make repr() recurse
            raise PairSetError(
                f"{where}: issame[{i}] is a {type(s).__name__} ({reprlib.repr(s)}), not a bool"
            )
    return list(images), np.asarray(issame, dtype=np.bool_)


def load_pairs(path: str | os.PathLike) -> PairSet:
    """Read a ``.bin`` pair set with the restricted unpickler; :class:`PairSetError` on
    anything else (the file's code never runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair set not found: {path}")
    # Unpickle from memory: a FRAME or BINBYTES opcode announcing 2**40 bytes then asks a
    # BytesIO for what is there, where a buffered file would first allocate the whole length.
    data = path.read_bytes()
    try:
        obj = _PairSetUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise PairSetError(f"{path}: a pickle that is not a plain pair set is refused ({exc})") from None
    except Exception as exc:  # noqa: BLE001
        # Every failure of the (global-free) unpickler means a corrupt file: UnpicklingError,
        # EOFError, ValueError, OverflowError (a FRAME length of 2**63), RecursionError,
        # MemoryError, IndexError / KeyError (bad memo references), ...
        raise PairSetError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    images, issame = _validate(obj, path)
    return PairSet(images, issame, path=path)


def save_pairs(path: str | os.PathLike, images: Sequence[bytes], issame: Iterable) -> Path:
    """Write ``(images, issame)`` as a ``.bin`` (pickle protocol 4), atomically: a temp file in
    the same folder, then ``os.replace``."""
    path = Path(path)
    images = list(images)
    issame = [bool(s) for s in issame]
    _validate((images, issame), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((images, issame), f, protocol=4)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(eq=False)
class PairSet:
    """``images[2i], images[2i+1]`` are pair ``i``; ``issame[i]`` says whether they match."""

    images: list[bytes]
    issame: np.ndarray
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.issame)

    def __eq__(self, other) -> bool:  # same pairs, wherever they were read from
        if not isinstance(other, PairSet):
            return NotImplemented
        return self.images == other.images and np.array_equal(self.issame, other.issame)

    __hash__ = None

    @property
    def n_same(self) -> int:
        return int(self.issame.sum())

    @property
    def n_diff(self) -> int:
        return len(self) - self.n_same

    def decode_one(self, i: int, size: int | None = 112):
        """Image ``i`` (of ``2N``) as uint8 ``(3, size, size)`` RGB (grey -> 3 channels)."""
        import torch
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.images[i])) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # PIL raises many types for bad data
            raise PairSetError(f"{self.path or '<pair set>'}: image {i} cannot be decoded ({exc})") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def decode(self, size: int = 112, flip: bool = False, progress: bool = False):
        """All ``2N`` images as a uint8 tensor ``(2N, 3, size, size)``; ``flip`` mirrors them
        horizontally (the test-time augmentation of the verification protocol).

        Images not ``size x size`` are resized bilinearly to a square (arcface_torch uses
        mxnet's ``resize_short`` instead; the standard sets are 112x112, so both are no-ops).
        About 150 KB of memory per 112x112 pair: use :meth:`as_dataset` to stream instead."""
        import torch
        from tqdm.auto import tqdm

        out = torch.empty((len(self.images), 3, size, size), dtype=torch.uint8)
        for i in tqdm(range(len(self.images)), desc="decode", disable=not progress, unit="img"):
            out[i] = self.decode_one(i, size)
        return out.flip(3) if flip else out

    def as_dataset(self, size: int = 112):
        """A torch ``Dataset`` of the ``2N`` images (uint8 ``(3, size, size)``), decoded lazily."""
        return _PairImages(self, size)


class _PairImages:
    def __init__(self, pairs: PairSet, size: int):
        self.pairs, self.size = pairs, size

    def __len__(self):
        return len(self.pairs.images)

    def __getitem__(self, i):
        return self.pairs.decode_one(i, self.size)


# ----------------------------------------------------------------------------- sampling

_ENUMERATE_LIMIT = 2_000_000  # below this many candidate pairs, enumerate and draw exactly


def fold_sizes(n: int, nfolds: int) -> list[int]:
    """Fold sizes of sklearn ``KFold(nfolds)`` on ``n`` items (the first ``n % nfolds`` get one more)."""
    return [n // nfolds + (1 if f < n % nfolds else 0) for f in range(nfolds)]


def _same_candidates(groups: list[np.ndarray]) -> np.ndarray:
    """All within-group pairs, in group order; groups of equal size are done in one go (real
    data sets have many identities of the same size, and a Python loop over them is slow)."""
    sizes = np.array([len(g) for g in groups])
    parts, order = [], []
    for k in np.unique(sizes[sizes > 1]).tolist():
        which = np.flatnonzero(sizes == k)
        mat = np.stack([groups[j] for j in which])  # (m, k)
        a, b = np.triu_indices(k, 1)
        parts.append(np.stack([mat[:, a], mat[:, b]], -1).reshape(-1, 2))
        order.append(np.repeat(which, len(a)))
    if not parts:
        return np.zeros((0, 2), np.int64)
    cand, owner = np.concatenate(parts), np.concatenate(order)
    return cand[np.argsort(owner, kind="stable")]


def _diff_candidates(groups: list[np.ndarray]) -> np.ndarray:
    out = []
    for k, g in enumerate(groups[:-1]):
        rest = np.concatenate(groups[k + 1 :])
        out.append(np.stack([np.repeat(g, len(rest)), np.tile(rest, len(g))], 1))
    return np.sort(np.concatenate(out), 1) if out else np.zeros((0, 2), np.int64)


def _propose(rng, groups: list[np.ndarray], same: bool, n: int) -> np.ndarray:
    """``n`` random candidate pairs, uniform over all candidate pairs (rejection is done by the caller)."""
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    if same:
        w = sizes * (sizes - 1) / 2
        gi = rng.choice(len(groups), size=n, p=w / w.sum())
        k = sizes[gi].astype(np.int64)
        a = (rng.random(n) * k).astype(np.int64)
        b = (rng.random(n) * (k - 1)).astype(np.int64)
        b = b + (b >= a)
        starts = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int64)
        flat = np.concatenate(groups)
        p = np.stack([flat[starts[gi] + a], flat[starts[gi] + b]], 1)
    else:
        flat = np.concatenate(groups)
        lab = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])
        a = rng.integers(0, len(flat), n)
        b = rng.integers(0, len(flat), n)
        ok = lab[a] != lab[b]
        p = np.stack([flat[a[ok]], flat[b[ok]]], 1)
    return np.sort(p, 1)


def _capacity(groups: list[np.ndarray], same: bool) -> int:
    k = np.array([len(g) for g in groups], dtype=np.int64)
    if same:
        return int((k * (k - 1) // 2).sum())
    return int((k.sum() ** 2 - (k**2).sum()) // 2)


def _draw(rng, groups, same: bool, need: int, seen: set) -> list[tuple[int, int]]:
    """Up to ``need`` distinct pairs not in ``seen`` (added to it), uniform over candidates."""
    if need <= 0 or not groups:
        return []
    cap = _capacity(groups, same)
    if cap == 0:
        return []
    got: list[tuple[int, int]] = []
    if cap <= _ENUMERATE_LIMIT:
        cand = _same_candidates(groups) if same else _diff_candidates(groups)
        if seen:  # drop pairs already taken (vectorised: pair -> one int64 code)
            old = np.array(sorted(seen), dtype=np.int64).reshape(-1, 2)
            fresh = ~np.isin((cand[:, 0] << 32) | cand[:, 1], (old[:, 0] << 32) | old[:, 1])
            cand = cand[fresh]
        take = rng.permutation(len(cand))[:need]
        got = [(int(a), int(b)) for a, b in cand[take]]
    else:  # rejection sampling: candidates vastly outnumber the pairs wanted
        while len(got) < need:
            for a, b in _propose(rng, groups, same, 2 * (need - len(got)) + 16):
                t = (int(a), int(b))
                if t not in seen:
                    seen.add(t)
                    got.append(t)
                    if len(got) == need:
                        break
        return got
    seen.update(got)
    return got


def sample_pairs(labels, n_pairs: int, seed: int = 0, nfolds: int = 10):
    """Balanced, fold-ready verification pairs over samples with identity ``labels``.

    Returns ``(idx1, idx2, issame)`` (int64, int64, bool arrays of length ``n_pairs``),
    indices into ``labels``. The pairs are laid out in ``nfolds`` consecutive blocks whose sizes
    are those of sklearn ``KFold(nfolds, shuffle=False)``; each block holds half same-identity
    pairs then half different-identity pairs (odd blocks alternate the extra one), like LFW's
    View 2. Identities are dealt to blocks (largest first, to the block with fewest samples so
    far) and a block's pairs use only its own identities, so one identity never straddles a
    train/test split of the 10-fold protocol. Where a block's identities cannot supply enough
    distinct pairs, the rest comes from all identities (a warning says so). No pair appears
    twice (``(i, j)`` and ``(j, i)`` count as the same pair; ``i != j``); ``idx1 < idx2``.
    Pairs are uniform over the distinct candidate pairs of their block. Deterministic in
    ``seed``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n_pairs, nfolds = int(n_pairs), int(nfolds)
    if nfolds < 1:
        raise ValueError(f"nfolds must be >= 1, got {nfolds}")
    if n_pairs < 2 * nfolds:
        raise ValueError(f"n_pairs={n_pairs} too small: need at least 2 per fold ({2 * nfolds} for {nfolds})")
    rng = np.random.default_rng(seed)

    ids, inverse = np.unique(labels, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 identities, got {len(ids)}")
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(ids))
    groups_all = np.split(order.astype(np.int64), np.cumsum(counts)[:-1])

    sizes = fold_sizes(n_pairs, nfolds)
    n_same = []
    extra = 0
    for s in sizes:
        if s % 2:
            n_same.append(s // 2 + (1 - extra))
            extra ^= 1
        else:
            n_same.append(s // 2)
    n_diff = [s - k for s, k in zip(sizes, n_same)]
    total_same, total_diff = sum(n_same), sum(n_diff)
    cap_same, cap_diff = _capacity(groups_all, True), _capacity(groups_all, False)
    if cap_same < total_same:
        raise ValueError(
            f"only {cap_same} distinct same-identity pairs exist ({len(ids)} identities, "
            f"{len(labels)} samples); {total_same} requested"
        )
    if cap_diff < total_diff:
        raise ValueError(f"only {cap_diff} distinct different-identity pairs exist; {total_diff} requested")

    # Deal identities to folds: shuffled, then largest first to the fold with fewest samples.
    perm = rng.permutation(len(ids))
    perm = perm[np.argsort(-counts[perm], kind="stable")]
    heap = [(0, f) for f in range(nfolds)]  # (samples so far, fold): lowest fold wins ties
    fold_ids: list[list[int]] = [[] for _ in range(nfolds)]
    for k, c in zip(perm.tolist(), counts[perm].tolist()):
        load, f = heapq.heappop(heap)
        fold_ids[f].append(k)
        heapq.heappush(heap, (load + c, f))

    seen: set[tuple[int, int]] = set()
    same_pairs: list[list[tuple[int, int]]] = []
    diff_pairs: list[list[tuple[int, int]]] = []
    for f in range(nfolds):
        groups = [groups_all[k] for k in sorted(fold_ids[f])]
        same_pairs.append(_draw(rng, groups, True, n_same[f], seen))
        diff_pairs.append(_draw(rng, groups, False, n_diff[f], seen))
    borrowed = 0
    for f in range(nfolds):  # second pass: fill shortfalls from all identities
        for lst, need, same in ((same_pairs[f], n_same[f], True), (diff_pairs[f], n_diff[f], False)):
            short = need - len(lst)
            if short > 0:
                lst.extend(_draw(rng, groups_all, same, short, seen))
                borrowed += short
    if borrowed:
        warnings.warn(
            f"sample_pairs: {borrowed} of {n_pairs} pairs drawn across folds (too few identities per fold)",
            stacklevel=2,
        )

    rows, flags = [], []
    for f in range(nfolds):
        # Within a block: same pairs sorted by identity then index (LFW lists them by name).
        s = sorted(same_pairs[f], key=lambda p: (int(inverse[p[0]]), p))
        d = sorted(diff_pairs[f])
        rows += s + d
        flags += [True] * len(s) + [False] * len(d)
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy(), np.asarray(flags, dtype=np.bool_)


# ----------------------------------------------------------------------------- making sets


def encode_image(img, quality: int = 95) -> bytes:
    """uint8 ``(3, H, W)`` tensor/array -> JPEG bytes (``(1, H, W)`` is written as grey)."""
    from .folder import encode_image as encode_hwc

    arr = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 (3, H, W) image, got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    return encode_hwc(arr[..., 0] if arr.shape[-1] == 1 else arr, "jpg", quality)


def make_pair_set(
    dataset,
    n_pairs: int,
    seed: int = 0,
    exclude_identities: Iterable | None = None,
    quality: int = 95,
    nfolds: int = 10,
    progress: bool = False,
) -> PairSet:
    """A :class:`PairSet` of ``n_pairs`` pairs from ``dataset`` (``.labels`` and
    ``ds[i] -> (uint8 (3, H, W), label)``), identities in ``exclude_identities`` (e.g. the
    training split) left out, images JPEG-encoded at ``quality`` (each distinct image once)."""
    from tqdm.auto import tqdm

    labels = np.asarray(dataset.labels)
    keep = np.arange(len(labels))
    if exclude_identities is not None:
        excl = np.asarray(list(exclude_identities))
        keep = keep[~np.isin(labels, excl)]
        if len(keep) == 0:
            raise ValueError("every identity of the data set is excluded")
    i1, i2, same = sample_pairs(labels[keep], n_pairs, seed=seed, nfolds=nfolds)
    i1, i2 = keep[i1], keep[i2]
    flat = np.stack([i1, i2], 1).reshape(-1)
    uniq = np.unique(flat).tolist()
    # Batched fetch where the data set offers torch's ``__getitems__`` (renderers batch there).
    getitems = getattr(dataset, "__getitems__", None)
    cache: dict[int, bytes] = {}
    with tqdm(total=len(uniq), desc="encode", disable=not progress, unit="img") as bar:
        for s in range(0, len(uniq), 256):
            chunk = uniq[s : s + 256]
            items = getitems(chunk) if getitems is not None else [dataset[j] for j in chunk]
            for j, (img, lab) in zip(chunk, items):
                if int(lab) != int(labels[j]):
                    raise ValueError(f"dataset[{j}] has label {lab} but dataset.labels[{j}] = {labels[j]}")
                cache[j] = encode_image(img, quality)
            bar.update(len(chunk))
    return PairSet([cache[j] for j in flat.tolist()], same)
