"""Published verification protocols, read from the data set's own files, in their own order.

A protocol is a list of image pairs in the order its publisher lists them, blocked into folds
so that the *unshuffled* 10-fold split of :func:`nbfacelib.eval.verification.evaluate`
(sklearn ``KFold(10, shuffle=False)``) reproduces the publisher's folds exactly.

``lfw``
    LFW View 2 from ``pairs.txt`` (Huang et al., UMass TR 07-49, 2007): a header
    ``<folds> <n>`` (``10 300``), then per fold ``n`` same pairs ``Name  i  j`` followed by
    ``n`` different pairs ``Name1  i  Name2  j``; image numbers are 1-based and written with
    4 digits in file names (``images/Name/Name_0004.jpg``). Fold k = lines
    ``2nk+2 .. 2n(k+1)+1`` of the file.
``cfp_fp`` / ``cfp_ff``
    CFP (Sengupta et al., WACV 2016): ``Protocol/Split/FP|FF/01..10/{same,diff}.txt`` hold
    ``i,j`` 1-based indices into ``Protocol/Pair_list_F.txt`` (first index, frontal) and
    ``Pair_list_P.txt`` (second index, profile; FF: ``Pair_list_F.txt`` again). insightface's
    ``cfp_fp.bin`` concatenates the ten splits, each 350 same then 350 different pairs; so do
    we. The lists' paths read ``../Data/Images/ID/pose/NN.jpg``; the data root's copy keeps
    IDs 001-450 under ``images/train`` and 451-500 under ``images/test`` (its README).
``cfp_heldout``
    CFP-FP's own split 10, which holds exactly the identities 451-500 (each official split is
    50 identities: split k = IDs 50k-49 .. 50k), i.e. the people the ``cfp`` training set
    (IDs 001-450) never sees. Its 350 same and 350 different frontal-profile pairs are
    re-blocked into 10 folds of 35 + 35 in their listed order, so each fold holds both
    classes. A model trained on ``cfp`` may be scored here, never on the full ``cfp_fp``.

:func:`read_protocol` gives a :class:`ProtocolPairs` (paths and labels);
:meth:`ProtocolPairs.to_pair_set` turns it into a :class:`~nbfacelib.data.pairs.PairSet`
(JPEG bytes kept verbatim when an image already is ``size x size``, else the folder size rule
of :func:`~nbfacelib.data.folder.fit_square` and a JPEG re-encode). :func:`open_pair_set`
resolves a name (manifest) or a ``.bin`` path to a pair set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PROTOCOLS",
    "ProtocolPairs",
    "ProtocolError",
    "read_protocol",
    "read_lfw_pairs",
    "read_cfp_pairs",
    "read_cfp_heldout",
    "lfw_image_path",
    "cfp_image_path",
    "open_pair_set",
    "protocol_counts",
]

CFP_TRAIN_IDS = 450  # the data root's copy: IDs 001-450 under images/train, 451-500 under images/test
CFP_HELDOUT_SPLIT = 10  # the official FP split of IDs 451-500


class ProtocolError(ValueError):
    """A protocol file that does not read as published; the message names file and line."""


@dataclass(eq=False)
class ProtocolPairs:
    """Pair ``i`` is ``(first[i], second[i])``, same identity iff ``issame[i]``; the pairs are
    in the publisher's order, ``nfolds`` consecutive equal blocks. ``source[i]`` names the
    protocol line that listed pair ``i`` (``file:line``)."""

    name: str
    root: Path
    first: list[Path]
    second: list[Path]
    issame: np.ndarray
    nfolds: int
    source: list[str]

    def __len__(self) -> int:
        return len(self.issame)

    def fold(self, k: int) -> slice:
        """Pairs of fold ``k`` (the protocol's own k-th block)."""
        size = len(self) // self.nfolds
        return slice(k * size, (k + 1) * size)

    def to_pair_set(self, size: int | None = 112, quality: int = 95, progress: bool = False):
        """A :class:`~nbfacelib.data.pairs.PairSet` of these pairs (``images[2i]``,
        ``images[2i+1]``), each distinct image encoded once."""
        from tqdm.auto import tqdm

        from .pairs import PairSet

        cache: dict[Path, bytes] = {}
        images = []
        for a, b in tqdm(
            zip(self.first, self.second), total=len(self), desc=self.name, disable=not progress, unit="pair"
        ):
            for p in (a, b):
                if p not in cache:
                    cache[p] = _encoded(p, size, quality)
                images.append(cache[p])
        return PairSet(images, self.issame.copy())


def _encoded(path: Path, size: int | None, quality: int) -> bytes:
    """The file's bytes when it is a JPEG of ``size x size`` (LFW's copy is), else the folder
    size rule (pad to a square) and a JPEG encode."""
    from PIL import Image

    from .folder import decode_image, encode_image, fit_square, sniff_format

    data = path.read_bytes()
    if sniff_format(data) == "jpg":
        import io

        with Image.open(io.BytesIO(data)) as im:
            if size is None or im.size == (size, size):
                return data
    return encode_image(fit_square(decode_image(data, what=str(path)), size), "jpg", quality)


def _check_exists(pairs: ProtocolPairs) -> ProtocolPairs:
    for paths in (pairs.first, pairs.second):
        for p, src in zip(paths, pairs.source):
            if not p.is_file():
                raise ProtocolError(f"{src}: image {p} does not exist ({pairs.name} under {pairs.root})")
    return pairs


# ------------------------------------------------------------------------------------- LFW
def lfw_image_path(root: Path, name: str, number: int) -> Path:
    """``root/images/<Name>/<Name>_<number:04d>.jpg``: pairs.txt numbers images from 1."""
    if number < 1:
        raise ValueError(f"LFW image numbers are 1-based, got {number} for {name}")
    return Path(root) / "images" / name / f"{name}_{number:04d}.jpg"


def read_lfw_pairs(root: str | os.PathLike) -> ProtocolPairs:
    """LFW View 2 from ``root/pairs.txt`` (see the module docstring)."""
    root = Path(root)
    path = root / "pairs.txt"
    if not path.is_file():
        raise FileNotFoundError(f"LFW protocol file {path} not found")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        nfolds, per = (int(v) for v in lines[0].split())
    except (ValueError, IndexError):
        raise ProtocolError(
            f"{path}:1: header must be '<folds> <pairs per class>', got {lines[:1]}"
        ) from None
    if len(lines) - 1 != nfolds * 2 * per:
        raise ProtocolError(
            f"{path}: header says {nfolds} folds x 2 x {per} pairs = {nfolds * 2 * per} lines, "
            f"found {len(lines) - 1}"
        )
    first, second, same, source = [], [], [], []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split()
        want_same = ((n - 2) // per) % 2 == 0  # each fold: `per` same lines, then `per` different
        try:
            if want_same and len(fields) == 3:
                a, b = (fields[0], int(fields[1])), (fields[0], int(fields[2]))
            elif not want_same and len(fields) == 4:
                a, b = (fields[0], int(fields[1])), (fields[2], int(fields[3]))
            else:
                kind = "same pair 'Name i j'" if want_same else "different pair 'Name1 i Name2 j'"
                raise ProtocolError(f"{path}:{n}: expected a {kind}, got {line!r}")
            first.append(lfw_image_path(root, *a))
            second.append(lfw_image_path(root, *b))
        except ValueError as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"{path}:{n}: {exc} in {line!r}") from None
        same.append(want_same)
        source.append(f"{path}:{n}")
    return _check_exists(ProtocolPairs("lfw", root, first, second, np.asarray(same), nfolds, source))


# ------------------------------------------------------------------------------------- CFP
def cfp_image_path(root: Path, listed: str) -> Path:
    """A pair-list path ``../Data/Images/ID/pose/NN.jpg`` -> ``root/images/{train|test}/ID/pose/NN.jpg``
    (train for ID <= 450, as the data root's README says)."""
    parts = Path(listed).parts
    if "Images" not in parts or len(parts) - parts.index("Images") != 4:
        raise ValueError(f"not a CFP image path '../Data/Images/ID/pose/NN.jpg': {listed!r}")
    ident, pose, name = parts[parts.index("Images") + 1 :]
    split = "train" if int(ident) <= CFP_TRAIN_IDS else "test"
    return Path(root) / "images" / split / ident / pose / name


def _read_image_list(path: Path, root: Path) -> dict[int, Path]:
    if not path.is_file():
        raise FileNotFoundError(f"CFP protocol file {path} not found")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            index, listed = line.split()
            out[int(index)] = cfp_image_path(root, listed)
        except ValueError as exc:
            raise ProtocolError(f"{path}:{n}: {exc} ({line!r})") from None
    return out


def _read_index_pairs(path: Path) -> list[tuple[int, int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CFP protocol file {path} not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            i, j = (int(v) for v in line.split(","))
        except ValueError:
            raise ProtocolError(f"{path}:{n}: expected 'i,j', got {line!r}") from None
        out.append((i, j, f"{path}:{n}"))
    return out


def _cfp_splits(root: Path, kind: str) -> list[tuple[list, list]]:
    """(same, diff) index pairs of each split 01..NN of ``Split/<kind>``, in split order."""
    split_dir = root / "Protocol" / "Split" / kind
    if not split_dir.is_dir():
        raise FileNotFoundError(f"CFP protocol folder {split_dir} not found")
    dirs = sorted((d for d in split_dir.iterdir() if d.is_dir()), key=lambda d: int(d.name))
    return [(_read_index_pairs(d / "same.txt"), _read_index_pairs(d / "diff.txt")) for d in dirs]


def _cfp_pairs(root: Path, name: str, kind: str, splits: list[tuple[list, list]], nfolds: int):
    frontal = _read_image_list(root / "Protocol" / "Pair_list_F.txt", root)
    second_list = "Pair_list_P.txt" if kind == "FP" else "Pair_list_F.txt"
    other = _read_image_list(root / "Protocol" / second_list, root) if kind == "FP" else frontal
    first, second, same, source = [], [], [], []
    for same_pairs, diff_pairs in splits:
        for flag, rows in ((True, same_pairs), (False, diff_pairs)):
            for i, j, src in rows:
                if i not in frontal or j not in other:
                    raise ProtocolError(
                        f"{src}: index {i if i not in frontal else j} is not in "
                        f"{'Pair_list_F.txt' if i not in frontal else second_list}"
                    )
                first.append(frontal[i])
                second.append(other[j])
                same.append(flag)
                source.append(src)
    return _check_exists(ProtocolPairs(name, root, first, second, np.asarray(same), nfolds, source))


def read_cfp_pairs(root: str | os.PathLike, kind: str = "FP") -> ProtocolPairs:
    """CFP-FP (``kind="FP"``) or CFP-FF (``"FF"``): the ten splits concatenated, each its
    same pairs then its different pairs (insightface's ``cfp_fp.bin`` order)."""
    if kind not in ("FP", "FF"):
        raise ValueError(f"CFP protocol kind must be 'FP' or 'FF', got {kind!r}")
    root = Path(root)
    splits = _cfp_splits(root, kind)
    return _cfp_pairs(root, f"cfp_{kind.lower()}", kind, splits, nfolds=len(splits))


def read_cfp_heldout(root: str | os.PathLike, nfolds: int = 10) -> ProtocolPairs:
    """CFP-FP split 10 (IDs 451-500 only), re-blocked into ``nfolds`` folds of same + different."""
    root = Path(root)
    splits = _cfp_splits(root, "FP")
    if len(splits) < CFP_HELDOUT_SPLIT:
        raise ProtocolError(
            f"{root}/Protocol/Split/FP has {len(splits)} splits; split 10 is the held-out one"
        )
    same, diff = splits[CFP_HELDOUT_SPLIT - 1]
    if len(same) % nfolds or len(diff) % nfolds:
        raise ProtocolError(
            f"CFP-FP split 10: {len(same)}/{len(diff)} pairs do not divide into {nfolds} folds"
        )
    s, d = len(same) // nfolds, len(diff) // nfolds
    blocks = [(same[k * s : (k + 1) * s], diff[k * d : (k + 1) * d]) for k in range(nfolds)]
    pairs = _cfp_pairs(root, "cfp_heldout", "FP", blocks, nfolds)
    ids = {p.parent.parent.name for p in pairs.first + pairs.second}
    low = min(int(i) for i in ids)
    if low <= CFP_TRAIN_IDS:
        raise ProtocolError(f"CFP-FP split 10 holds identity {low:03d}, one of the training IDs 001-450")
    return pairs


PROTOCOLS: dict[str, Callable[[Path], ProtocolPairs]] = {
    "lfw": read_lfw_pairs,
    "cfp_fp": lambda root: read_cfp_pairs(root, "FP"),
    "cfp_ff": lambda root: read_cfp_pairs(root, "FF"),
    "cfp_heldout": read_cfp_heldout,
}


def read_protocol(name: str, root: str | os.PathLike) -> ProtocolPairs:
    """Protocol ``name`` (a key of :data:`PROTOCOLS`) read from the data set folder ``root``."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name](Path(root))


def protocol_counts(name: str, root: str | os.PathLike) -> dict[str, int]:
    """Identities and images under ``root/images`` (identity folders at any depth under the
    split folders CFP uses) and pairs of protocol ``name``: what ``nbface data verify`` checks."""
    from .folder import scan_image_folder

    root = Path(root)
    images_dir = root / "images"
    subsets = [images_dir / s for s in ("train", "test") if (images_dir / s).is_dir()] or [images_dir]
    identities = images = 0
    for sub in subsets:
        classes, paths, _ = scan_image_folder(sub, allow_empty=True)
        identities += len(classes)
        images += len(paths)
    return {"identities": identities, "images": images, "pairs": len(read_protocol(name, root))}


# --------------------------------------------------------------------------- by name or path
def open_pair_set(spec: str | os.PathLike, size: int | None = 112, progress: bool = False):
    """A :class:`~nbfacelib.data.pairs.PairSet` from a ``.bin`` path or a manifest name
    (``lfw``, ``cfp_fp``, ``cfp_ff``, ``cfp_heldout``, ``agedb_30``, ...). A protocol manifest
    reads its data set folder when that is present, else an insightface ``.bin`` at one of its
    alternative places; a missing data set raises an error saying how to obtain it."""
    from .manifest import list_manifests, load_manifest
    from .pairs import load_pairs

    path = Path(os.fspath(spec)).expanduser()
    if path.suffix == ".bin" or path.is_file():
        if not path.is_file():
            from .datasets import resolve_path

            path = resolve_path(spec)
        return load_pairs(path)
    name = os.fspath(spec)
    if name not in list_manifests():
        raise FileNotFoundError(
            f"pair set {name!r}: no such .bin file and not a manifest name "
            f"(pair-set manifests: {', '.join(pair_set_names())})"
        )
    m = load_manifest(name)
    if m.format not in ("pairs-protocol", "pairs-bin"):
        raise ValueError(f"data set {name!r} is a {m.format} data set, not a verification pair set")
    found = m.locate()
    if found.is_dir():
        reader = m.protocol.get("reader", name)
        return read_protocol(reader, found).to_pair_set(size=size, progress=progress)
    return load_pairs(found)


def pair_set_names() -> list[str]:
    """Manifest names that :func:`open_pair_set` resolves."""
    from .manifest import list_manifests, load_manifest

    return [n for n in list_manifests() if load_manifest(n).format in ("pairs-protocol", "pairs-bin")]
