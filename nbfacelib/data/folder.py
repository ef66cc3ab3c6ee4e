"""Image folders: one sub-folder per identity (the torchvision ``ImageFolder`` layout).

Reading
-------
``FolderDataset(root, size=112)`` lists ``root/<identity>/<image>`` for the extensions in
:data:`IMAGE_EXTENSIONS` (case-insensitive). Identity folders are sorted *naturally*
(``s2`` < ``s10``) and numbered 0..K-1; images inside a folder are sorted the same way.
An identity folder may hold its images in sub-folders at any depth (CFP's
``001/frontal/01.jpg``, ``001/profile/01.jpg``): they belong to that identity, come after the
images lying directly in it (sub-folders in natural order), and ``FolderDataset.subfolders[i]``
records image ``i``'s sub-folder relative to its identity folder (``"frontal"``; ``""`` for an
image lying directly in it), a per-image attribute such as pose.
Files directly in ``root`` (a README, a licence) and hidden entries are ignored. Every item
is ``(uint8 tensor (3, size, size) RGB, int label)``: grey, palette, 16-bit and RGBA images
are converted to 3-channel 8-bit RGB.

The size rule (:func:`fit_square`), default ``resize="pad"``: scale so that the *longer*
side equals ``size`` (aspect kept, PIL bilinear with antialiasing; no resampling at all
when the longer side already equals ``size``), then pad both sides of the shorter one
symmetrically with zeros (black), the odd pixel going right/bottom. ORL's 92x112 faces
thus become 112x112 with 10 black columns on each side and the face pixels untouched.
Padding instead of cropping keeps the whole face, which is what an aligned-face model
expects; ``resize="crop"`` (shorter side to ``size``, centre crop) and ``"stretch"``
(ignore aspect) are there for data that wants them. ``size=None`` keeps native sizes.

Writing
-------
``write_image_folder(out_dir, items, ext="png")`` writes ``out_dir/<label:07d>/<n:05d>.<ext>``
from ``(image, label)`` items; names sort to the same order under natural and plain sort,
so reading back gives the same labels when they are 0..K-1.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")
RESIZE_MODES = ("pad", "crop", "stretch")

_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "pgm": "PPM", "ppm": "PPM"}


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``s2`` < ``s10`` < ``t1``.

    ``re.split`` with a capturing group alternates text / digits, so items at the same
    position of the inner tuple always have the same type; the name itself (the tie-break)
    sits outside it, so ``s`` and ``s1`` compare as a prefix instead of ``str`` against ``int``.
    """
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _is_image(name: str, extensions=IMAGE_EXTENSIONS) -> bool:
    return not name.startswith(".") and name.lower().endswith(extensions)


# ---------------------------------------------------------------------------------- pixels
class ImageError(ValueError):
    """An image file or image bytes that cannot be decoded (corrupt, truncated, not an image,
    or larger than PIL's decompression-bomb limit); the message names the file or record."""


def to_rgb_array(img) -> np.ndarray:
    """A PIL image of any mode -> uint8 HxWx3 RGB array (grey replicated to 3 channels)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: PIL's convert("L") would clip, so scale by the full 16-bit range. PNG
        # stores 16-bit samples over 0..65535 and PIL rescales PGM of any maxval > 255 to it,
        # so the scale is fixed by the mode, never guessed from the pixels (a dark 16-bit image
        # whose maximum is below 256 would otherwise come out 257 times too bright).
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def decode_image(data: bytes | str | os.PathLike, *, what: str | None = None) -> np.ndarray:
    """Encoded bytes or a file path -> uint8 HxWx3 RGB array. Errors name ``what``/the path."""
    from PIL import Image, UnidentifiedImageError

    src = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    name = what or (str(data) if not isinstance(src, io.BytesIO) else "image bytes")
    try:
        with Image.open(src) as img:
            img.load()
            return to_rgb_array(img)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"cannot decode {name}: larger than PIL's decompression-bomb limit ({exc})"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode {name}: {exc}") from None
    except Exception as exc:  # PIL's plugins raise what their parsers raise (struct.error, IndexError, ...)
        raise ImageError(f"cannot decode {name}: {type(exc).__name__}: {exc}") from None


def fit_square(arr: np.ndarray, size: int | None, resize: str = "pad") -> np.ndarray:
    """Apply the documented size rule to an HxWx3 uint8 array (see the module docstring)."""
    if size is None:
        return arr
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    h, w = arr.shape[:2]
    if h == size and w == size:
        return arr
    from PIL import Image

    if resize == "stretch":
        return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    scale = size / (max(h, w) if resize == "pad" else min(h, w))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if resize == "crop":
        # Resample only the window that survives the centre crop (PIL's ``box``, in source
        # pixels): resizing the whole image first would make a 1x30000 strip 112x3360000.
        top, left = (nh - size) // 2, (nw - size) // 2
        if (nw, nh) == (w, h):
            return np.ascontiguousarray(arr[top : top + size, left : left + size])
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR, box=box))
    if (nw, nh) != (w, h):
        arr = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = arr
    return out


def as_hwc_uint8(image: Any) -> np.ndarray:
    """numpy HxWx3 / HxW / torch (3,H,W) uint8 -> contiguous uint8 HxWx3 numpy."""
    if hasattr(image, "detach"):  # a torch tensor, CHW by the package convention
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3):
            image = image.transpose(1, 2, 0)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"images must be HxWx3 (or HxW grey), got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def to_chw_tensor(arr: np.ndarray):
    import torch

    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # a writable, contiguous copy


def sniff_format(data: bytes) -> str | None:
    """'jpg' / 'png' / 'bmp' / 'pgm' from the leading bytes of an encoded image, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:2] in (b"P5", b"P2"):
        return "pgm"
    if data[:2] in (b"P6", b"P3"):
        return "ppm"
    return None


def encode_image(arr: np.ndarray, ext: str = "png", quality: int = 95) -> bytes:
    """uint8 HxWx3 -> encoded bytes (PIL). ``quality`` applies to JPEG only."""
    from PIL import Image

    fmt = _PIL_FORMAT.get(ext.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"cannot write images as {ext!r}; use one of {sorted(_PIL_FORMAT)}")
    img = Image.fromarray(arr)
    if ext.lower().lstrip(".") == "pgm":
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": int(quality)} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ---------------------------------------------------------------------------------- reading
def scan_image_folder(
    root: str | os.PathLike, extensions=IMAGE_EXTENSIONS, allow_empty: bool = False
) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, labels) of an identity-per-folder tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(
        (e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")), key=natural_key
    )
    if not classes:
        loose = [n for n in os.listdir(root) if _is_image(n, extensions)]
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise FileNotFoundError(
            f"image folder {root} has no identity sub-folders{hint}; expected root/<identity>/<image>"
        )
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, cls in enumerate(classes):
        names = _identity_images(root / cls, extensions)
        if not names:
            empty.append(cls)
        paths.extend(root / cls / n for n in names)
        labels.extend([label] * len(names))
    if empty and not allow_empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise FileNotFoundError(
            f"image folder {root}: {len(empty)} identity folder(s) hold no images "
            f"({', '.join(extensions)}): {shown}; pass allow_empty=True to keep them as classes"
        )
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _identity_images(folder: Path, extensions) -> list[str]:
    """Relative paths of the images under one identity folder: those lying in it first, then
    each sub-folder's (natural order, recursively); hidden entries are skipped."""
    names, subdirs = [], []
    for e in os.scandir(folder):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            subdirs.append(e.name)
        elif e.is_file() and _is_image(e.name, extensions):
            names.append(e.name)
    out = sorted(names, key=natural_key)
    for d in sorted(subdirs, key=natural_key):
        out.extend(f"{d}/{n}" for n in _identity_images(folder / d, extensions))
    return out


try:  # torch is a hard dependency of the package, but keep this module importable without it
    from torch.utils.data import Dataset as _Dataset
except ImportError:  # pragma: no cover
    _Dataset = object  # type: ignore[assignment,misc]


class FolderDataset(_Dataset):
    """Identity-per-folder images as ``(uint8 (3, size, size), label)``.

    Attributes: ``classes`` (folder names, natural order), ``class_to_idx``, ``paths``,
    ``labels`` (int64 numpy), ``num_classes``, ``subfolders`` (per image: its sub-folder under
    the identity folder, ``""`` when it lies directly in it). ``transform`` (optional) is applied to the
    uint8 tensor.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | None = 112,
        resize: str = "pad",
        transform=None,
        extensions=IMAGE_EXTENSIONS,
        allow_empty: bool = False,
    ):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.root = Path(root)
        self.size = size
        self.resize = resize
        self.transform = transform
        self.classes, self.paths, self.labels = scan_image_folder(self.root, extensions, allow_empty)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        # "." (an image directly in its identity folder) is written ""
        self.subfolders = [
            p.parent.relative_to(self.root / self.classes[y]).as_posix().lstrip(".")
            for p, y in zip(self.paths, self.labels)
        ]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, index: int) -> tuple[bytes, int]:
        """The file's encoded bytes and its label (lets converters copy JPEGs verbatim)."""
        return self.paths[index].read_bytes(), int(self.labels[index])

    def load_array(self, index: int) -> np.ndarray:
        """Decoded and size-ruled uint8 HxWx3 array of item ``index``."""
        path = self.paths[index]
        # one read + decode from memory: PIL's many small reads on an open file are slower
        return fit_square(decode_image(path.read_bytes(), what=str(path)), self.size, self.resize)

    def __getitem__(self, index: int):
        x = to_chw_tensor(self.load_array(index))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"FolderDataset({str(self.root)!r}, identities={self.num_classes}, "
            f"images={len(self)}, size={self.size}, resize={self.resize!r})"
        )


# ---------------------------------------------------------------------------------- writing
def write_image_folder(
    out_dir: str | os.PathLike,
    items: Iterable[tuple[Any, int]],
    ext: str = "png",
    quality: int = 95,
    overwrite: bool = False,
) -> int:
    """Write ``(image, label)`` items as ``out_dir/<label:07d>/<n:05d>.<ext>``; returns the count.

    ``image``: uint8 HxWx3 RGB numpy (HxW grey and torch (3,H,W) also accepted) or already
    encoded bytes, which are copied verbatim when their format matches ``ext`` (so a JPEG
    folder converted from a .rec keeps the original bytes). ``quality`` is for JPEG.
    A non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    ext = ext.lower().lstrip(".")
    if ext not in _PIL_FORMAT:
        raise ValueError(f"cannot write images as {ext!r}; use one of {sorted(_PIL_FORMAT)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty; pass overwrite=True to write into it")
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    same = {"jpg": "jpg", "jpeg": "jpg"}.get(ext, ext)
    n = 0
    for image, label in items:
        label = int(label)
        if label < 0:
            raise ValueError(f"item {n}: labels must be >= 0, got {label}")
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            if sniff_format(data) != same:
                data = encode_image(decode_image(data, what=f"item {n}"), ext, quality)
        else:
            data = encode_image(as_hwc_uint8(image), ext, quality)
        k = counts.get(label, 0)
        if k == 0:
            (out / f"{label:07d}").mkdir(exist_ok=True)
        (out / f"{label:07d}" / f"{k:05d}.{ext}").write_bytes(data)
        counts[label] = k + 1
        n += 1
    return n
