"""Open any data set by URI, and convert between on-disk formats.

``open_dataset(uri, size=112)`` accepts:

* ``folder:PATH`` - one folder per identity (:class:`~nbfacelib.data.folder.FolderDataset`);
* ``rec:PATH`` - a directory with ``train.rec`` or a ``.rec`` file
  (:class:`~nbfacelib.data.recordio.RecDataset`);
* ``synthetic:ids=1000,per_id=20,seed=0,difficulty=medium[,identity_offset=0][,size=160][,style=shaded]`` -
  procedural faces (:class:`~nbfacelib.data.synthetic.SyntheticFaces`); plain ``synthetic``
  uses the defaults of ``data_manifests/synthetic.yaml``;
* ``manifest:NAME`` or a bare manifest name (``orl``, ``ms1mv2``, ...) - resolved through the
  manifest; a missing data set raises an error that says how to obtain it;
* a bare path - a ``.rec`` file or a directory with one is RecordIO, another directory is an
  image folder.

Relative paths resolve against the data root (``$NBFACELIB_DATA``); a relative path that is
not there but exists from the current directory, or one written ``./x`` / ``../x``, is taken
from the current directory. Every reader yields ``(uint8 (3, size, size), int label)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .root import data_root

SCHEMES = ("folder", "rec", "synthetic", "manifest")
SYNTHETIC_KEYS = {
    "ids": "num_identities",
    "per_id": "per_identity",
    "seed": "seed",
    "difficulty": "difficulty",
    "identity_offset": "identity_offset",
    "offset": "identity_offset",
    "size": "size",
    "style": "style",
}
SYNTHETIC_DEFAULTS = {"ids": 1000, "per_id": 20, "seed": 0, "difficulty": "medium", "identity_offset": 0}


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute as given; ``./x`` from the current directory; else under the data root, falling
    back to the current directory when only that exists."""
    s = os.fspath(path)
    p = Path(s).expanduser()
    if p.is_absolute():
        return p
    if s.startswith(("./", "../", ".\\", "..\\")) or s in (".", ".."):
        return p.resolve()
    under_root = data_root() / p
    if not under_root.exists() and p.exists():
        return p.resolve()
    return under_root


def _split_uri(uri: str) -> tuple[str | None, str]:
    if ":" in uri:
        scheme, rest = uri.split(":", 1)
        # a Windows drive letter ("C:\\x") is a path, not a scheme
        if len(scheme) > 1 and scheme.replace("-", "").replace("_", "").isalnum():
            return scheme.lower(), rest
    return None, uri


def _parse_value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_synthetic(spec: str) -> dict[str, Any]:
    """``"ids=10,per_id=5"`` -> ``{"ids": 10, "per_id": 5}`` (validated keys, typed values)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ValueError(
                f"synthetic: expected key=value, got {part!r} (e.g. synthetic:ids=100,per_id=10)"
            )
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in SYNTHETIC_KEYS:
            raise ValueError(f"synthetic: unknown parameter {k!r}; known: {', '.join(SYNTHETIC_KEYS)}")
        out[k] = _parse_value(v)
    return out


def open_synthetic(params: dict[str, Any], size: int | None = 112):
    from .synthetic import SyntheticFaces  # lazy: torch renderer

    merged = {**SYNTHETIC_DEFAULTS, **params}
    kwargs = {SYNTHETIC_KEYS[k]: v for k, v in merged.items()}
    kwargs.setdefault("size", 112 if size is None else size)
    return SyntheticFaces(**kwargs)


def open_path(path: str | os.PathLike, size: int | None = 112, fmt: str | None = None, **kw):
    """A folder or RecordIO data set at ``path`` (``fmt`` 'folder' / 'rec', else detected)."""
    p = resolve_path(path)
    if fmt is None:
        fmt = detect_format(p)
    if fmt == "rec":
        from .recordio import RecDataset

        return RecDataset(p, size=size, **kw)
    if fmt == "folder":
        from .folder import FolderDataset

        return FolderDataset(p, size=size, **kw)
    raise ValueError(f"{p}: cannot open format {fmt!r} as an image data set")


def detect_format(p: Path) -> str:
    if not p.exists():
        raise FileNotFoundError(f"data set path {p} does not exist (relative paths are under the data root)")
    if p.is_file():
        if p.suffix.lower() == ".rec":
            return "rec"
        if p.suffix.lower() == ".bin":
            return "pairs-bin"
        raise ValueError(f"{p}: a file that is neither .rec nor .bin; image folders are directories")
    if (p / "train.rec").is_file() or len(list(p.glob("*.rec"))) == 1:
        return "rec"
    return "folder"


def open_manifest(name: str, size: int | None = 112, **kw):
    from .manifest import load_manifest

    m = load_manifest(name)
    if m.format == "synthetic":
        return open_synthetic(dict(m.params), size=size)
    if m.format in ("folder", "rec"):
        return open_path(m.locate(), size=size, fmt=m.format, **kw)
    raise ValueError(
        f"data set {name!r} is a {m.format} evaluation set, not an image/label data set; "
        + (
            f"read it with nbfacelib.data.protocols.open_pair_set({name!r})"
            if m.format in ("pairs-bin", "pairs-protocol")
            else "use the IJB evaluation"
        )
        + f" (path: {m.find() or 'not present; see nbface data verify ' + name})"
    )


def open_dataset(uri: str | os.PathLike, size: int | None = 112, **kw):
    """A torch Dataset of ``(uint8 (3, size, size), label)`` from a URI (see module docstring).
    Extra keywords (``resize``, ``transform``) go to the folder / rec readers."""
    if isinstance(uri, os.PathLike):
        return open_path(uri, size=size, **kw)
    uri = str(uri).strip()
    scheme, rest = _split_uri(uri)
    if scheme == "folder":
        return open_path(rest, size=size, fmt="folder", **kw)
    if scheme == "rec":
        return open_path(rest, size=size, fmt="rec", **kw)
    if scheme == "synthetic":
        return open_synthetic(parse_synthetic(rest), size=size)
    if scheme == "manifest":
        return open_manifest(rest, size=size, **kw)
    if scheme is not None:
        from .manifest import list_manifests

        raise ValueError(
            f"unknown data set scheme {scheme!r} in {uri!r}; known schemes: "
            f"{', '.join(s + ':' for s in SCHEMES)}; or a manifest name ({', '.join(list_manifests())}) "
            "or a path"
        )
    if uri == "synthetic":
        return open_manifest("synthetic", size=size)
    from .manifest import list_manifests

    if uri in list_manifests():
        return open_manifest(uri, size=size, **kw)
    p = resolve_path(uri)
    if not p.exists():
        raise FileNotFoundError(
            f"{uri!r} is neither a manifest name ({', '.join(list_manifests())}) nor an existing path "
            f"(looked at {p}); URIs: {', '.join(s + ':' for s in SCHEMES)}"
        )
    return open_path(p, size=size, **kw)


# ---------------------------------------------------------------------------- describe
def describe(ds) -> dict[str, Any]:
    """Format, identities, images (and more where known) of an opened data set."""
    from .folder import FolderDataset
    from .recordio import RecDataset

    info: dict[str, Any] = {"type": type(ds).__name__}
    if isinstance(ds, FolderDataset):
        info.update(format="folder", path=str(ds.root))
    elif isinstance(ds, RecDataset):
        info.update(
            format="rec", path=str(ds.rec_path), layout=f"{ds.kind} ({ds.reader.layout.name} framing)"
        )
        info["index"] = "rebuilt by scanning" if ds.reader.index_rebuilt else str(ds.reader.idx_path)
    else:
        info["format"] = getattr(ds, "format", type(ds).__name__)
    info["images"] = len(ds)
    n = getattr(ds, "num_classes", None)
    if n is None and hasattr(ds, "labels"):
        n = len(set(int(x) for x in ds.labels))
    info["identities"] = n
    if len(ds):
        x = ds[0][0]
        info["item"] = f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return info


# ---------------------------------------------------------------------------- convert
def _items(ds, size: int | None) -> Iterator[tuple[Any, int]]:
    """(image, label) items for the writers: the stored bytes where no resizing is asked
    (so JPEGs are copied verbatim), else decoded size-ruled arrays."""
    raw = getattr(ds, "raw", None)
    for i in range(len(ds)):
        if raw is not None and size is None:
            yield raw(i)
        else:
            item = ds[i]  # (uint8 (3, H, W) tensor, label, ...): the writers take CHW tensors
            yield item[0], int(item[1])


def convert_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str | None = None,
    size: int | None = None,
    quality: int = 95,
    ext: str = "png",
    overwrite: bool = False,
    progress: bool = False,
    layout: str = "mxnet",
) -> dict[str, Any]:
    """Copy a data set (any :func:`open_dataset` URI) to an image folder or an InsightFace
    ``.rec``. ``to`` defaults from ``dst``: a ``.rec`` suffix -> rec, else folder. ``size``
    None keeps the stored pixels (JPEG bytes are copied unchanged); an int applies the
    folder size rule first. ``layout`` is the RecordIO framing (``"mxnet"``, what every
    InsightFace file uses, or REFERENCE.md's ``"dmlc-2015"``). Returns a summary dict."""
    from tqdm.auto import tqdm

    from .folder import write_image_folder
    from .recordio import write_image_rec

    dst_s = os.fspath(dst)
    if to is None:
        to = "rec" if dst_s.lower().endswith(".rec") else "folder"
    if to not in ("folder", "rec"):
        raise ValueError(f"--to must be 'folder' or 'rec', got {to!r}")
    ds = open_dataset(src, size=size)
    items = tqdm(_items(ds, size), total=len(ds), disable=not progress, desc="convert", unit="img")
    out = Path(dst_s).expanduser()
    if to == "rec":
        name = "train"
        if out.suffix.lower() == ".rec":
            name, out = out.stem, out.parent
        n = write_image_rec(out, items, quality=quality, name=name, overwrite=overwrite, layout=layout)
        where = out / f"{name}.rec"
    else:
        n = write_image_folder(out, items, ext=ext, quality=quality, overwrite=overwrite)
        where = out
    return {"src": str(src), "dst": str(where), "format": to, "images": n}
