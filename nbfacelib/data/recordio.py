"""InsightFace RecordIO (``train.rec`` + ``train.idx``) in pure Python, without mxnet.

Hand-written because mxnet, the only library that reads these files, no longer installs on
current Python / numpy (REFERENCE.md). Format (dmlc-core RecordIO):

* ``.idx``: text, one line per record, ``key<TAB>byte_offset``.
* ``.rec``: records ``uint32 magic | uint32 lrecord | payload | zero padding to 4 bytes``,
  little-endian, ``lrecord = (cflag << shift) | length``. A magic word found at a 4-byte
  aligned offset of a payload makes the writer split the record around it, dropping the
  word: parts flagged 1 (first), 2 (middle), 3 (last); cflag 0 is a whole record. The reader
  re-inserts the magic word between parts. Only the last part is padded (the others have
  lengths that are multiples of 4 by construction).
* Payload (mxnet ``recordio.pack``): ``IRHeader`` packed ``<IfQQ`` (flag, label, id, id2;
  24 bytes); if ``flag > 0`` then ``flag`` float32 labels follow and the scalar label is 0;
  then the image bytes (JPEG).
* InsightFace layout: record 0 is a header with labels ``(id_start, id_end)`` and id2 = 1;
  images are keys ``1 .. id_start-1`` with scalar labels; keys ``id_start .. id_end-1`` are
  identity records whose labels are ``(first, end)`` image keys, with no image. Files made
  by mxnet's ``im2rec`` have no header: every key is an image.

Two layouts of the length word exist (:data:`LAYOUTS`). Every mxnet release, and so every
InsightFace data set (MS1MV2, MS1MV3, Glint360K, CASIA), uses dmlc-core's ``kMagic =
0xced7230a`` with a 3-bit cflag above a 29-bit length (``"mxnet"``, the default for
writing). REFERENCE.md gives magic ``0x3ed7230a`` with ``cflag << 30``: that is the very
first dmlc-core version (2015), kept here as ``"dmlc-2015"``. The reader detects the layout
from the file's first magic word, so both read.

Readers use ``os.pread`` (no shared file offset) on a descriptor opened lazily per process,
so a ``RecDataset`` is safe in DataLoader workers, forked or spawned.
"""

from __future__ import annotations

import math
import mmap
import numbers
import os
import re
import struct
import warnings
from collections import namedtuple
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .folder import (
    RESIZE_MODES,
    _Dataset,
    as_hwc_uint8,
    decode_image,
    encode_image,
    fit_square,
    sniff_format,
    to_chw_tensor,
)


@dataclass(frozen=True)
class Layout:
    name: str
    magic: int
    shift: int  # bit position of cflag in lrecord; length is the bits below it

    @property
    def magic_bytes(self) -> bytes:
        return struct.pack("<I", self.magic)

    @property
    def max_length(self) -> int:
        return (1 << self.shift) - 1

    def encode_lrec(self, cflag: int, length: int) -> int:
        return (cflag << self.shift) | length

    def decode_lrec(self, lrec: int) -> tuple[int, int]:
        return lrec >> self.shift, lrec & self.max_length


LAYOUTS = {
    "mxnet": Layout("mxnet", 0xCED7230A, 29),
    "dmlc-2015": Layout("dmlc-2015", 0x3ED7230A, 30),
}
DEFAULT_LAYOUT = "mxnet"

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


class RecordIOError(ValueError):
    """A malformed .rec/.idx file; the message names the file and the byte offset."""


def _layout(layout: str | Layout) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown RecordIO layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


# ---------------------------------------------------------------------------- IRHeader pack
def pack(header: IRHeader | tuple, img_bytes: bytes = b"") -> bytes:
    """mxnet ``recordio.pack``: a scalar label goes in the header (flag 0); a sequence label
    sets flag = its length, label = 0 and follows the header as float32."""
    flag, label, id_, id2 = header
    if isinstance(label, numbers.Number):
        head = struct.pack(IR_FORMAT, 0, float(label), int(id_), int(id2))
        return head + bytes(img_bytes)
    arr = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(IR_FORMAT, arr.size, 0.0, int(id_), int(id2)) + arr.tobytes() + bytes(img_bytes)


def unpack(payload: bytes, *, what: str = "record") -> tuple[IRHeader, bytes]:
    """mxnet ``recordio.unpack``: ``(IRHeader, image bytes)``; array labels come back as a
    float32 numpy array in ``header.label``."""
    if len(payload) < IR_SIZE:
        raise RecordIOError(f"{what}: payload of {len(payload)} bytes is shorter than the IRHeader (24)")
    header = IRHeader(*struct.unpack_from(IR_FORMAT, payload))
    rest = payload[IR_SIZE:]
    if header.flag > 0:
        n = header.flag * 4
        if len(rest) < n:
            raise RecordIOError(
                f"{what}: IRHeader flag {header.flag} announces {n} label bytes, has {len(rest)}"
            )
        header = header._replace(label=np.frombuffer(rest[:n], dtype="<f4").copy())
        rest = rest[n:]
    return header, bytes(rest)


def scalar_label(header: IRHeader, *, what: str = "record") -> int:
    """Image label as arcface_torch reads it: the scalar, or the first array element.
    :class:`RecordIOError` (naming ``what``) unless it is a whole number >= 0."""
    label = header.label
    if not isinstance(label, numbers.Number):
        label = label[0]
    return _class_id(label, what, "label")


def _class_id(value, what: str, field: str) -> int:
    """A float32 label -> int, refusing NaN, infinities, fractions and negatives (a corrupt
    header would otherwise become a bare ValueError / OverflowError or a wrong class)."""
    v = float(value)
    if not (math.isfinite(v) and v.is_integer() and 0 <= v < 2**53):
        raise RecordIOError(f"{what}: {field} {v!r} is not a class id / key (a whole number >= 0)")
    return int(v)


# ---------------------------------------------------------------------------- record framing
def encode_record(payload: bytes, layout: str | Layout = DEFAULT_LAYOUT) -> bytes:
    """Frame one payload as dmlc ``RecordIOWriter::WriteRecord`` does (with splitting)."""
    lay = _layout(layout)
    payload = bytes(payload)
    n = len(payload)
    if n > lay.max_length:
        raise ValueError(f"record of {n} bytes exceeds the {lay.name} RecordIO limit of {lay.max_length}")
    magic = lay.magic_bytes
    out = []
    start = 0  # start of the current part
    pos = payload.find(magic)
    while pos != -1:
        if pos % 4 == 0:
            out.append(struct.pack("<II", lay.magic, lay.encode_lrec(1 if start == 0 else 2, pos - start)))
            out.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(magic, start)
        else:
            pos = payload.find(magic, pos + 1)
    out.append(struct.pack("<II", lay.magic, lay.encode_lrec(3 if start else 0, n - start)))
    out.append(payload[start:])
    out.append(b"\0" * (-n % 4))
    return b"".join(out)


class _Source:
    """Positional reads of one file: ``os.pread`` on a descriptor opened lazily per process."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._pid: int | None = None

    def fd(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            # After fork the inherited descriptor shares nothing we rely on (pread takes an
            # explicit offset), but reopening keeps each worker's handle its own.
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = pid
        return self._fd

    def pread(self, n: int, offset: int) -> bytes:
        fd = self.fd()
        if hasattr(os, "pread"):
            chunks, got = [], 0
            while got < n:
                b = os.pread(fd, n - got, offset + got)
                if not b:
                    break
                chunks.append(b)
                got += len(b)
            return b"".join(chunks)
        os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover (Windows)
        return os.read(fd, n)  # pragma: no cover

    def size(self) -> int:
        return os.fstat(self.fd()).st_size

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    def __getstate__(self):
        return {"path": self.path, "_fd": None, "_pid": None}


def _detect_layout(first4: bytes, path: Path) -> Layout:
    if len(first4) < 4:
        raise RecordIOError(
            f"{path}: truncated record header at byte offset 0 (file has {len(first4)} bytes)"
        )
    (word,) = struct.unpack("<I", first4)
    for lay in LAYOUTS.values():
        if word == lay.magic:
            return lay
    known = ", ".join(f"0x{v.magic:08x} ({k})" for k, v in LAYOUTS.items())
    raise RecordIOError(f"{path}: bad magic 0x{word:08x} at byte offset 0; expected {known}")


def _read_parts(read, offset: int, lay: Layout, path: Path, file_size: int, limit: int | None = None):
    """Read the record at ``offset`` via ``read(n, offset)``; returns (payload, end offset).

    Every part's frame is checked (magic, continuation flag, length within the file); with
    ``limit`` only the first ``limit`` payload bytes are copied (header-only reads).
    """
    parts: list[bytes] = []
    got = 0
    pos = offset
    first = True
    while True:
        head = read(8, pos)
        if len(head) < 8:
            raise RecordIOError(
                f"{path}: truncated record header at byte offset {pos} "
                f"(needs 8 bytes, {len(head)} left; file is {file_size} bytes)"
            )
        magic, lrec = struct.unpack("<II", head)
        if magic != lay.magic:
            raise RecordIOError(
                f"{path}: bad magic 0x{magic:08x} at byte offset {pos} (expected 0x{lay.magic:08x}); "
                "wrong offset in the .idx or a corrupt file"
            )
        cflag, length = lay.decode_lrec(lrec)
        if cflag > 3 or (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
            raise RecordIOError(f"{path}: unexpected continuation flag {cflag} at byte offset {pos}")
        if pos + 8 + length > file_size:
            raise RecordIOError(
                f"{path}: truncated record at byte offset {pos}: payload needs {length} bytes "
                f"from offset {pos + 8}, file is {file_size} bytes"
            )
        want = length if limit is None else min(length, max(0, limit - got))
        if want:
            body = read(want, pos + 8)
            if len(body) < want:
                raise RecordIOError(f"{path}: short read of the record at byte offset {pos}")
            parts.append(body)
            got += want
        pos += 8 + length + (-length % 4)
        if cflag in (0, 3):
            return (parts[0] if len(parts) == 1 else b"".join(parts)), pos
        if limit is None or got < limit:
            parts.append(lay.magic_bytes)
            got += 4
        first = False


# ---------------------------------------------------------------------------- index
def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into (keys, offsets) int64 arrays, in file order.

    ``np.fromstring`` in text mode parses MS1MV2's 5.9M lines ~5x faster than splitting and
    converting; it stops (or raises) at the first bad token, so the count is checked and a bad
    file is re-read line by line to name the line. :class:`RecordIOError` names the line of a
    token that is not a decimal int64.
    """
    idx_path = Path(idx_path)
    text = idx_path.read_bytes()
    n_lines = text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = np.fromstring(text.decode("ascii", "replace"), dtype=np.int64, sep=" ")
    except ValueError:  # numpy >= 2.x raises where older versions warned and stopped
        flat = np.zeros(0, np.int64)
    # np.fromstring saturates values past int64 without a word: those lines take the slow path
    if (
        flat.size == 2 * n_lines
        and text.count(b"\t") == n_lines  # one TAB per line, as mxnet writes
        and not text.translate(None, _IDX_BYTES)
        and not (flat == _INT64_MAX).any()
        and not (flat == _INT64_MIN).any()
    ):
        arr = flat.reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()
    keys, offsets = [], []
    for lineno, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not all(_INT_TOKEN.fullmatch(p) for p in parts):
            raise RecordIOError(f"{idx_path}: line {lineno} is not 'key<TAB>offset': {line[:80]!r}")
        k, o = int(parts[0]), int(parts[1])
        if not (_INT64_MIN <= k <= _INT64_MAX and _INT64_MIN <= o <= _INT64_MAX):
            raise RecordIOError(f"{idx_path}: line {lineno}: {line[:80]!r} does not fit in int64")
        keys.append(k)
        offsets.append(o)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


_IDX_BYTES = b"0123456789+- \t\r\n"
_INT_TOKEN = re.compile(r"[-+]?[0-9]+")  # str.isdigit() would admit "\u00b2", which int() refuses
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def write_index(idx_path: str | os.PathLike, keys, offsets) -> None:
    lines = "".join(f"{int(k)}\t{int(o)}\n" for k, o in zip(keys, offsets))
    Path(idx_path).write_text(lines)


def scan_records(rec_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Walk a ``.rec`` from byte 0 and return (keys, offsets) of its records.

    Keys are the IRHeader ``id`` fields when those are unique (mxnet writers store the key
    there), else the record numbers 0..N-1.
    """
    rec_path = Path(rec_path)
    size = rec_path.stat().st_size
    if size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with open(rec_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        lay = _detect_layout(mm[:4], rec_path)

        def read(n, off):
            return mm[off : off + n]

        offsets, ids = [], []
        pos = 0
        while pos < size:
            head, end = _read_parts(read, pos, lay, rec_path, size, limit=IR_SIZE)
            offsets.append(pos)
            rid = struct.unpack_from("<Q", head, 8)[0] if len(head) >= IR_SIZE else -1
            ids.append(rid if rid < 2**63 else -1)  # not an IRHeader id: fall back to numbering
            pos = end
    keys = np.asarray(ids, dtype=np.int64)
    if len(np.unique(keys)) != len(keys) or (keys < 0).any():
        keys = np.arange(len(offsets), dtype=np.int64)
    return keys, np.asarray(offsets, dtype=np.int64)


# ---------------------------------------------------------------------------- reader
class RecordIOReader:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    ``idx_path`` defaults to the ``.rec`` path with suffix ``.idx``; when that file is
    missing, the index is rebuilt by scanning and saved there (kept in memory, with a
    warning, if the directory is read-only). ``read(key)`` returns the payload bytes.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"RecordIO file {self.rec_path} not found")
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._src = _Source(self.rec_path)
        self.file_size = self.rec_path.stat().st_size
        self.layout = (
            _detect_layout(self._src.pread(4, 0), self.rec_path)
            if self.file_size
            else LAYOUTS[DEFAULT_LAYOUT]
        )
        self.index_rebuilt = False
        if self.idx_path.is_file():
            keys, offsets = read_index(self.idx_path)
        else:
            keys, offsets = scan_records(self.rec_path)
            self.index_rebuilt = True
            try:
                write_index(self.idx_path, keys, offsets)
            except OSError as exc:
                warnings.warn(
                    f"{self.rec_path}: index rebuilt by scanning but not saved to {self.idx_path} ({exc}); "
                    "it is kept in memory",
                    stacklevel=2,
                )
        # ``offsets > size - 8``, not ``offsets + 8 > size``: an offset near 2**63 would overflow
        bad_offsets = (offsets < 0) | (offsets > self.file_size - 8)
        if bad_offsets.any():
            bad = int(np.argmax(bad_offsets))
            raise RecordIOError(
                f"{self.rec_path}: truncated file? {self.idx_path.name} puts key {keys[bad]} at byte offset "
                f"{offsets[bad]}, but the file is {self.file_size} bytes"
            )
        self._set_index(keys, offsets)
        if not self.index_rebuilt:
            self._check_index_covers_file()

    def _set_index(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        self.keys = keys
        self.offsets = offsets
        self._base = int(keys[0]) if len(keys) else 0
        self._dense = bool(
            len(keys) == 0 or np.array_equal(keys, np.arange(self._base, self._base + len(keys)))
        )
        if not self._dense:
            order = np.argsort(keys, kind="stable")
            self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
            dup = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
            if len(dup):
                key = int(self._sorted_keys[dup[0]])
                raise RecordIOError(
                    f"{self.idx_path}: key {key} is listed {int((keys == key).sum())} times "
                    "(a corrupt or hand-edited index)"
                )
        # the start of the record that follows each one: a record must end at or before it
        self._starts = np.unique(offsets)

    def _check_index_covers_file(self) -> None:
        """The record at the highest indexed offset must end where the file ends: otherwise
        the .idx lacks records (truncated) or belongs to another file."""
        if not len(self.offsets):
            if self.file_size:
                raise RecordIOError(
                    f"{self.idx_path}: lists no records, but {self.rec_path} holds {self.file_size} bytes"
                )
            return
        last = int(self._starts[-1])
        end = self._record_end(last)
        if end != self.file_size:
            raise RecordIOError(
                f"{self.rec_path}: the last record listed by {self.idx_path.name} (byte offset {last}) "
                f"ends at byte {end}, but the file has {self.file_size} bytes: the .idx is truncated, "
                "stale or belongs to another file"
            )

    def _record_end(self, offset: int) -> int:
        return _read_parts(self._src.pread, offset, self.layout, self.rec_path, self.file_size, limit=0)[1]

    def offset_of(self, key: int) -> int:
        """Byte offset of record ``key``; :class:`RecordIOError` if the index has no such key."""
        key = int(key)
        if self._dense:
            i = key - self._base
            if 0 <= i < len(self.offsets):
                return int(self.offsets[i])
        else:
            i = int(np.searchsorted(self._sorted_keys, key))
            if 0 <= i < len(self._sorted_keys) and self._sorted_keys[i] == key:
                return int(self._sorted_offsets[i])
        raise RecordIOError(f"{self.rec_path}: key {key} is not in {self.idx_path}")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        try:
            self.offset_of(int(key))  # type: ignore[arg-type]
        except (RecordIOError, TypeError, ValueError, OverflowError):
            return False
        return True

    def read_at(self, offset: int, limit: int | None = None) -> bytes:
        """Payload of the record at byte ``offset`` (its first ``limit`` bytes if given).

        The record's frame must end at or before the next indexed record starts: a length
        word enlarged by corruption would otherwise swallow the next record's bytes."""
        offset = int(offset)
        payload, end = _read_parts(self._src.pread, offset, self.layout, self.rec_path, self.file_size, limit)
        j = int(np.searchsorted(self._starts, offset, side="right"))
        if j < len(self._starts) and end > self._starts[j]:
            raise RecordIOError(
                f"{self.rec_path}: the record at byte offset {offset} runs to byte {end}, past the start "
                f"of the next indexed record at byte offset {int(self._starts[j])}: a corrupt length word"
            )
        return payload

    def read(self, key: int) -> bytes:
        """Payload of record ``key`` (split parts joined, magic words re-inserted)."""
        return self.read_at(self.offset_of(key))

    def read_header(self, key: int) -> IRHeader:
        """The IRHeader (with array labels) of ``key``, reading only the record's first bytes."""
        off = self.offset_of(key)
        head = self.read_at(off, limit=IR_SIZE)
        flag = struct.unpack_from("<I", head)[0] if len(head) >= 4 else 0
        if flag:
            head = self.read_at(off, limit=IR_SIZE + 4 * flag)
        return unpack(head, what=f"{self.rec_path} key {key}")[0]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for k, o in zip(self.keys, self.offsets):
            yield int(k), self.read_at(o)

    def close(self) -> None:
        self._src.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------- writer
class RecordIOWriter:
    """Write records and their ``.idx`` (mxnet ``MXIndexedRecordIO(..., 'w')``)."""

    def __init__(
        self,
        rec_path: str | os.PathLike,
        idx_path: str | os.PathLike | None = None,
        layout: str | Layout = DEFAULT_LAYOUT,
    ):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.layout = _layout(layout)
        self._f = open(self.rec_path, "wb")  # noqa: SIM115 (closed in close())
        self._idx = open(self.idx_path, "w")  # noqa: SIM115
        self.count = 0
        self.splits = 0  # records that contained the magic word (dmlc's except_counter)

    def tell(self) -> int:
        return self._f.tell()

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        offset = self._f.tell()
        framed = encode_record(payload, self.layout)
        first_flag = struct.unpack_from("<I", framed, 4)[0] >> self.layout.shift
        self.splits += first_flag == 1
        self._f.write(framed)
        self._idx.write(f"{int(key)}\t{offset}\n")
        self.count += 1
        return offset

    def overwrite(self, offset: int, old_payload: bytes, payload: bytes) -> None:
        """Replace the record at ``offset`` (written from ``old_payload``) by one of the same
        framed length: for a header whose values are known only at the end."""
        framed = encode_record(payload, self.layout)
        if len(framed) != len(encode_record(old_payload, self.layout)):
            raise ValueError("overwrite() needs a record of the same framed length")
        end = self._f.tell()
        self._f.seek(offset)
        self._f.write(framed)
        self._f.seek(end)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            self._idx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _header_payload(id_start: int, id_end: int) -> bytes:
    return pack(IRHeader(0, [float(id_start), float(id_end)], 0, 1))


def _image_bytes(image: Any, quality: int, n: int) -> bytes:
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        if sniff_format(data) == "jpg":
            return data
        image = decode_image(data, what=f"item {n}")
    return encode_image(as_hwc_uint8(image), "jpg", quality)


def write_image_rec(
    out_dir: str | os.PathLike,
    items: Iterable[tuple[Any, int]],
    quality: int = 95,
    *,
    name: str = "train",
    layout: str | Layout = DEFAULT_LAYOUT,
    overwrite: bool = False,
) -> int:
    """Write ``out_dir/train.rec`` + ``train.idx`` in the InsightFace layout; returns the
    number of images.

    ``items``: ``(uint8 HxWx3 RGB numpy, int label)`` (torch (3,H,W) and encoded bytes
    accepted; JPEG bytes are stored verbatim, anything else is JPEG-encoded at
    ``quality``). Record 0 = header ``(id_start, id_end)``, id2 = 1; images are keys
    1..N in the order given when each label's images come together (else they are
    regrouped by label, stably, through a temporary file); then one identity record per label
    0..max(label) carrying its ``(first, end)`` image keys ((0, 0) for an unused label).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec_path, idx_path = out / f"{name}.rec", out / f"{name}.idx"
    if rec_path.exists() and not overwrite:
        raise FileExistsError(f"{rec_path} exists; pass overwrite=True to replace it")
    lay = _layout(layout)
    placeholder = _header_payload(0, 0)  # the counts are known only at the end: rewritten

    labels: list[int] = []
    grouped, seen, last = True, set(), None
    w = RecordIOWriter(rec_path, idx_path, lay)
    try:
        w.write(0, placeholder)
        for n, (image, label) in enumerate(items):
            label = int(label)
            if not 0 <= label < 2**24:  # float32 holds integers exactly only below 2**24
                raise ValueError(f"item {n}: label {label} outside 0 .. 2**24-1")
            if label != last:
                grouped &= label not in seen
                seen.add(label)
                last = label
            key = n + 1
            w.write(key, pack(IRHeader(0, float(label), key, 0), _image_bytes(image, quality, n)))
            labels.append(label)
        if grouped:
            _finish_insightface(w, labels, placeholder)
            w.close()
        else:  # rewrite the images in label order (stable) through a temporary file
            w.close()
            src = RecordIOReader(rec_path, idx_path)
            tmp_rec, tmp_idx = out / f".{name}.rec.tmp", out / f".{name}.idx.tmp"
            order = np.argsort(np.asarray(labels), kind="stable")
            with RecordIOWriter(tmp_rec, tmp_idx, lay) as w2:
                w2.write(0, placeholder)
                for new_key, i in enumerate(order, start=1):
                    payload = src.read(int(i) + 1)
                    # the key lives in the IRHeader id too
                    w2.write(new_key, payload[:8] + struct.pack("<Q", new_key) + payload[16:])
                _finish_insightface(w2, [labels[i] for i in order], placeholder)
            src.close()
            os.replace(tmp_rec, rec_path)
            os.replace(tmp_idx, idx_path)
    except BaseException:
        w.close()
        for p in (rec_path, idx_path, out / f".{name}.rec.tmp", out / f".{name}.idx.tmp"):
            p.unlink(missing_ok=True)
        raise
    return len(labels)


def _finish_insightface(w: RecordIOWriter, labels: list[int], placeholder: bytes) -> None:
    """Append the identity records (keys id_start + label: (first, end) image keys) and
    rewrite header record 0; ``labels[k - 1]`` is the label of image key ``k``."""
    num_ids = (max(labels) + 1) if labels else 0
    id_start = len(labels) + 1
    first = np.zeros(num_ids, np.int64)
    end = np.zeros(num_ids, np.int64)
    for key, lab in enumerate(labels, start=1):
        if end[lab] == 0:
            first[lab] = key
        end[lab] = key + 1
    for lab in range(num_ids):
        key = id_start + lab
        w.write(key, pack(IRHeader(0, [float(first[lab]), float(end[lab])], key, 0)))
    w.overwrite(0, placeholder, _header_payload(id_start, id_start + num_ids))


# ---------------------------------------------------------------------------- dataset
def find_rec(path: str | os.PathLike) -> Path:
    """``dir`` (holding ``train.rec``, or exactly one ``*.rec``) or a ``.rec`` file -> the .rec."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "train.rec").is_file():
            return p / "train.rec"
        recs = sorted(p.glob("*.rec"))
        if len(recs) == 1:
            return recs[0]
        raise FileNotFoundError(
            f"{p}: no train.rec"
            + (f" and several .rec files ({', '.join(r.name for r in recs)})" if recs else "")
        )
    raise FileNotFoundError(f"RecordIO data set {p} not found (a directory with train.rec, or a .rec file)")


class RecDataset(_Dataset):
    """Images of a RecordIO file as ``(uint8 (3, H, W), int label)``.

    InsightFace files (header record 0) give images at keys 1..id_start-1; im2rec files
    (no header) give every key. Images are decoded with PIL and put through the folder
    size rule (:func:`nbfacelib.data.folder.fit_square`; ``size=None`` keeps them as
    stored). ``labels`` comes from the identity records when present (no image reads),
    else from every record's IRHeader; ``__getitem__`` uses the record's own header.
    """

    def __init__(self, path: str | os.PathLike, size: int | None = 112, resize: str = "pad", transform=None):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.rec_path = find_rec(path)
        self.reader = RecordIOReader(self.rec_path)
        self.size, self.resize, self.transform = size, resize, transform
        self.header: tuple[int, int] | None = None
        if 0 in self.reader:
            h, img = unpack(self.reader.read(0), what=f"{self.rec_path} key 0")
            if h.flag >= 2 and not img:  # a header record: two labels and no image
                what = f"{self.rec_path} header record 0"
                self.header = (_class_id(h.label[0], what, "id_start"), _class_id(h.label[1], what, "id_end"))
        if self.header is not None:
            self.kind = "insightface"
            self._check_header()
            self.keys = np.arange(1, self.header[0], dtype=np.int64)
        else:
            self.kind = "im2rec"
            self.keys = np.asarray(self.reader.keys, dtype=np.int64)
        # mxnet's writers (im2rec, InsightFace's face2rec / rec_builder) store each record's key
        # as its IRHeader id; when the first and last images show it, every read checks it, so
        # that a damaged .idx (keys swapped or pointing at the wrong record) is an error rather
        # than an image under another image's label.
        self._ids_are_keys = len(self.keys) > 0 and all(
            self.reader.read_header(int(k)).id == int(k) for k in {int(self.keys[0]), int(self.keys[-1])}
        )
        self._labels: np.ndarray | None = None

    def _check_header(self) -> None:
        """Header record 0 says images are keys 1..id_start-1 and identity records
        id_start..id_end-1; the index must hold exactly keys 0..id_end-1 (checked before any
        array of that size is made), and the records at the boundary must be of their kind."""
        id_start, id_end = self.header
        where = f"{self.rec_path}: header record 0 (id_start {id_start}, id_end {id_end})"
        n = len(self.reader)
        if not 1 <= id_start <= id_end:
            raise RecordIOError(f"{where}: needs 1 <= id_start <= id_end")
        if id_end != n:
            raise RecordIOError(f"{where} announces {id_end} records, but {self.reader.idx_path} lists {n}")
        keys = self.reader.keys
        if not (self.reader._dense and self.reader._base == 0):
            missing = np.setdiff1d(np.arange(id_end, dtype=np.int64), keys)
            if len(missing):
                raise RecordIOError(f"{where}: key {int(missing[0])} is not in {self.reader.idx_path}")
        if id_start > 1:
            _, img = unpack(self.reader.read(id_start - 1), what=f"{self.rec_path} key {id_start - 1}")
            if not img:
                raise RecordIOError(f"{where}: key {id_start - 1} should be the last image, but has no image")
        if id_end > id_start:
            h, img = unpack(self.reader.read(id_start), what=f"{self.rec_path} key {id_start}")
            if h.flag < 2 or img:
                raise RecordIOError(
                    f"{where}: key {id_start} should be the first identity record (two labels, no image), "
                    f"but has IRHeader flag {h.flag} and {len(img)} image bytes"
                )

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self._labels_from_identities()
            if self._labels is None:
                self._labels = np.array(
                    [
                        scalar_label(self._header_of(int(k)), what=f"{self.rec_path} key {int(k)}")
                        for k in self.keys
                    ],
                    np.int64,
                )
        return self._labels

    def _header_of(self, key: int) -> IRHeader:
        h = self.reader.read_header(key)
        self._check_id(h, key)
        return h

    def _check_id(self, header: IRHeader, key: int) -> None:
        if self._ids_are_keys and header.id != key:
            raise RecordIOError(
                f"{self.rec_path}: {self.reader.idx_path.name} maps key {key} to byte offset "
                f"{self.reader.offset_of(key)}, whose record has id {header.id}: the index is damaged"
            )

    def _labels_from_identities(self) -> np.ndarray | None:
        """Labels from the identity records (no image reads), or None if there are none.
        Each identity's (first, end) image keys must lie in 1..id_start and the identities
        must cover every image exactly once."""
        if self.header is None or self.header[1] <= self.header[0]:
            return None
        id_start, id_end = self.header
        labels = np.full(len(self.keys), -1, np.int64)
        for i, key in enumerate(range(id_start, id_end)):
            what = f"{self.rec_path} identity record {key}"
            lab = self._header_of(key).label
            if isinstance(lab, numbers.Number) or len(lab) < 2:
                raise RecordIOError(f"{what}: needs two labels (first, end image keys), has {lab!r}")
            a, b = _class_id(lab[0], what, "first key"), _class_id(lab[1], what, "end key")
            if a < b:
                if not 1 <= a < b <= id_start or (labels[a - 1 : b - 1] >= 0).any():
                    raise RecordIOError(
                        f"{what}: image keys {a}..{b - 1} lie outside 1..{id_start - 1} "
                        "or overlap another identity's"
                    )
                labels[a - 1 : b - 1] = i
        if (labels < 0).any():
            raise RecordIOError(
                f"{self.rec_path}: image key {int(np.argmax(labels < 0)) + 1} belongs to no identity record"
            )
        return labels

    @property
    def num_classes(self) -> int:
        if self.header is not None and self.header[1] > self.header[0]:
            return self.header[1] - self.header[0]
        return int(self.labels.max()) + 1 if len(self) else 0

    def __len__(self) -> int:
        return len(self.keys)

    def raw(self, index: int) -> tuple[bytes, int]:
        """Encoded image bytes and label of item ``index`` (no decoding)."""
        key = int(self.keys[index])
        what = f"{self.rec_path} key {key}"
        header, img = unpack(self.reader.read(key), what=what)
        self._check_id(header, key)
        label = scalar_label(header, what=what)
        if self._labels is not None and label != self._labels[index]:
            raise RecordIOError(
                f"{what}: the record's label {label} differs from the identity records' "
                f"{int(self._labels[index])}"
            )
        return img, label

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        img, label = self.raw(index)
        arr = decode_image(img, what=f"{self.rec_path} key {int(self.keys[index])}")
        return fit_square(arr, self.size, self.resize), label

    def load_array(self, index: int) -> np.ndarray:
        """Decoded and size-ruled uint8 HxWx3 array of item ``index``."""
        return self._load(index)[0]

    def __getitem__(self, index: int):
        arr, label = self._load(index)
        x = to_chw_tensor(arr)
        if self.transform is not None:
            x = self.transform(x)
        return x, label

    def __repr__(self) -> str:
        return f"RecDataset({str(self.rec_path)!r}, kind={self.kind}, images={len(self)}, size={self.size})"
