"""Seeded, bounded fuzzing of the four readers (RecordIO, ``.bin`` pair sets, image folders,
manifests) with corrupted files.

Every case either reads or fails with the reader's documented error, whose message names the
file; any other exception (IndexError, KeyError, struct.error, OverflowError, RecursionError,
UnicodeDecodeError, MemoryError, a bare ValueError, ...) or a case running past its time
limit is collected and the test fails listing them. Where a reader accepts a corrupted file,
an oracle checks that what it returns is self-consistent (a RecordIO data set's ``labels[i]``
equals the label of ``ds[i]``; a pair set has two images per pair; an image is a uint8 square).

``NBFACELIB_FUZZ_SCALE`` (default 1) multiplies the number of cases; the counts per reader are
reported in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from nbfacelib.data import folder as folder_mod
from nbfacelib.data import manifest as manifest_mod
from nbfacelib.data import pairs as pairs_mod
from nbfacelib.data import recordio as rec_mod

SCALE = float(os.environ.get("NBFACELIB_FUZZ_SCALE", "1"))
CASE_SECONDS = 5  # a case running longer counts as a hang


def n_cases(base: int) -> int:
    return max(1, int(base * SCALE))


def documented(module, *names) -> tuple[type, ...]:
    """The module's documented error classes (looked up by name, so this file also measures a
    version of the package that lacks some of them: their absence then counts as escapes)."""
    return tuple(getattr(module, n) for n in names if hasattr(module, n))


class _Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    if not hasattr(signal, "SIGALRM"):  # pragma: no cover (Windows: no alarm, no hang check)
        yield
        return

    def on_alarm(signum, frame):
        raise _Hang(f"ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Tally:
    """Outcome counts of one reader's cases, and the escapes with the case that made them."""

    def __init__(self, reader: str, allowed: tuple[type, ...]):
        self.reader, self.allowed = reader, allowed
        self.cases = self.read = self.refused = 0
        self.escapes: list[str] = []
        self.kinds: dict[str, int] = {}  # escapes by exception type

    def _escape(self, kind: str, text: str) -> None:
        self.escapes.append(text)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def run(self, label: str, names: list[str], fn) -> None:
        """Run ``fn()``; a documented error must name one of ``names`` (file names)."""
        self.cases += 1
        try:
            with warnings.catch_warnings(), time_limit(CASE_SECONDS):
                warnings.simplefilter("ignore")
                fn()
            self.read += 1
        except self.allowed as exc:
            self.refused += 1
            if not any(n in str(exc) for n in names):
                self._escape(
                    "names no file", f"{label}: {type(exc).__name__} names no file: {str(exc)[:200]}"
                )
        except AssertionError as exc:  # an oracle: a silent wrong result
            self._escape("wrong result", f"{label}: accepted with a wrong result: {exc}")
        except BaseException as exc:  # noqa: BLE001 (the point of the test)
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._escape(type(exc).__name__, f"{label}: {type(exc).__name__}: {str(exc)[:200]}")

    def check(self, capsys=None) -> None:
        line = (
            f"fuzz {self.reader}: {self.cases} cases, {self.read} read, {self.refused} refused "
            f"with a documented error, {len(self.escapes)} escaped"
            + (f" {dict(sorted(self.kinds.items()))}" if self.kinds else "")
        )
        if capsys is not None:
            with capsys.disabled():
                print("\n" + line)
        assert not self.escapes, line + ":\n" + "\n".join(self.escapes[:40])


# ------------------------------------------------------------------------------- RecordIO
def _tiny_jpeg(rng, size=8) -> bytes:
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _rec_base(tmp: Path) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    items = [(_tiny_jpeg(rng), lab) for lab in (0, 0, 1, 1, 1, 2)]
    rec_mod.write_image_rec(tmp / "base", items)
    return (tmp / "base" / "train.rec").read_bytes(), (tmp / "base" / "train.idx").read_bytes()


def _mutate_rec(rng, rec: bytes, idx: bytes) -> tuple[str, bytes, bytes | None]:
    """One or two corruptions of (rec, idx); idx None = the .idx is deleted (rebuilt by scan)."""
    keys, offsets = [], []
    for line in idx.decode().splitlines():
        k, o = line.split("\t")
        keys.append(int(k))
        offsets.append(int(o))
    rec_b = bytearray(rec)
    lines = idx.decode().splitlines()
    labels = []
    for _ in range(int(rng.integers(1, 3))):
        kind = str(
            rng.choice(
                [
                    "flip",
                    "truncate",
                    "magic",
                    "length",
                    "cflag",
                    "header",
                    "irflag",
                    "identity",
                    "idx-line",
                    "idx-swap",
                    "idx-drop",
                    "idx-dup",
                    "idx-bytes",
                    "no-idx",
                ]
            )
        )
        r = int(rng.integers(len(offsets)))
        off = offsets[r]
        if kind == "flip":
            for _ in range(int(rng.integers(1, 9))):
                if rec_b:
                    rec_b[int(rng.integers(len(rec_b)))] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            del rec_b[int(rng.integers(len(rec_b) + 1)) :]
        elif kind == "magic" and off + 4 <= len(rec_b):
            rec_b[off : off + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif kind == "length" and off + 8 <= len(rec_b):
            old = struct.unpack_from("<I", rec_b, off + 4)[0]
            new = int(rng.choice([old + 4, old - 4, old + 1, (1 << 29) - 1, len(rec_b), 0, old | (7 << 29)]))
            struct.pack_into("<I", rec_b, off + 4, new % (1 << 32))
        elif kind == "cflag" and off + 8 <= len(rec_b):
            old = struct.unpack_from("<I", rec_b, off + 4)[0]
            struct.pack_into("<I", rec_b, off + 4, (old & ((1 << 29) - 1)) | (int(rng.integers(8)) << 29))
        elif kind == "header" and len(rec_b) >= 40:
            a = float(rng.choice([1.0, 0.0, np.nan, np.inf, -1.0, 3e9, 0.5, 7.0, 8.0, 2.0, 6.0]))
            b = float(rng.choice([11.0, 10.0, 12.0, 3e9, np.nan, 1.0, 7.0]))
            struct.pack_into("<ff", rec_b, 32, a, b)
        elif kind == "irflag" and off + 12 <= len(rec_b):
            struct.pack_into("<I", rec_b, off + 8, int(rng.choice([1, 2, 3, 1000, 2**32 - 1])))
        elif kind == "identity" and off + 40 <= len(rec_b) and r >= 7:
            struct.pack_into(
                "<ff",
                rec_b,
                off + 32,
                float(rng.choice([0.0, 1.0, 3.0, 7.0, np.nan, -5.0, 100.0])),
                float(rng.choice([3.0, 7.0, 6.0, 1e12, np.inf])),
            )
        elif kind == "idx-line":
            i = int(rng.integers(len(lines)))
            k = lines[i].split("\t")[0]
            bad = rng.choice(
                [
                    "-8",
                    "forty",
                    str(2**63 - 1),
                    str(2**64 + 8),
                    str(len(rec) + 100),
                    "1e3",
                    "\u00b2",
                    "",
                    "12 13",
                ]
            )
            lines[i] = f"{k}\t{bad}" if rng.random() < 0.8 else f"{bad}\t{offsets[i]}"
        elif kind == "idx-swap":
            i, j = rng.choice(len(lines), 2, replace=False)
            a, b = lines[i].split("\t"), lines[j].split("\t")
            if len(a) == len(b) == 2:  # (an earlier corruption may have broken the line)
                lines[i], lines[j] = f"{a[0]}\t{b[1]}", f"{b[0]}\t{a[1]}"
        elif kind == "idx-drop":
            del lines[int(rng.integers(len(lines)))]
        elif kind == "idx-dup":
            lines.insert(int(rng.integers(len(lines) + 1)), lines[int(rng.integers(len(lines)))])
        elif kind == "idx-bytes":
            lines.append(
                rng.integers(0, 256, int(rng.integers(1, 12)), dtype=np.uint8).tobytes().decode("latin-1")
            )
        labels.append(kind)
    idx_out = None if "no-idx" in labels else ("\n".join(lines) + "\n").encode("latin-1")
    return "+".join(labels), bytes(rec_b), idx_out


def _read_rec_dataset(directory: Path) -> None:
    ds = rec_mod.RecDataset(directory, size=16)
    labels = ds.labels
    assert len(labels) == len(ds), f"{len(labels)} labels for {len(ds)} images"
    for i in range(len(ds)):
        x, y = ds[i]
        assert tuple(x.shape) == (3, 16, 16), f"item {i} has shape {tuple(x.shape)}"
        assert y == labels[i], f"ds[{i}] has label {y}, ds.labels[{i}] = {labels[i]}"
    assert ds.num_classes >= 0


def test_fuzz_recordio(tmp_path, capsys):
    rec, idx = _rec_base(tmp_path)
    _read_rec_dataset(tmp_path / "base")  # the uncorrupted file reads
    tally = Tally("RecordIO", documented(rec_mod, "RecordIOError") + documented(folder_mod, "ImageError"))
    rng = np.random.default_rng(12)
    for n in range(n_cases(300)):
        label, rec_c, idx_c = _mutate_rec(rng, rec, idx)
        d = tmp_path / f"c{n}"
        d.mkdir()
        (d / "train.rec").write_bytes(rec_c)
        if idx_c is not None:
            (d / "train.idx").write_bytes(idx_c)
        tally.run(f"case {n} ({label})", ["train.rec", "train.idx"], lambda d=d: _read_rec_dataset(d))
        shutil.rmtree(d)
    tally.check(capsys)


# ----------------------------------------------------------------------------- pair sets
class _Payload:
    """Pickles as a call of ``fn(*args)``: refused by the reader, never run."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _pair_objects(rng, sentinel: Path) -> list[tuple[str, object]]:
    img = [b"\xff\xd8\xff\xe0" + bytes([i]) * 7 for i in range(4)]
    deep: list = [True]
    for _ in range(200):  # pickle.dumps recurses: deeper ones are written by hand below
        deep = [deep]
    return [
        ("valid", (img, [True, False])),
        ("valid-list", [img, [False, True]]),
        ("py2-str", ([s.decode("latin-1") for s in img], [True, False])),
        ("mismatched", (img, [True])),
        ("no-pairs", ([], [])),
        ("ints", (img, [1, 0])),
        ("bytearray", ([bytearray(s) for s in img], [True, False])),
        ("dict", {"images": img, "issame": [True, False]}),
        ("triple", (img, [True, False], None)),
        ("set", ({1, 2}, [True])),
        ("deep-issame", (img[:2], [deep])),
        ("deep-images", ([deep, deep], [True])),
        ("floats", (img, [0.5, float("nan")])),
        ("none", None),
        ("big-int", (img, [2**200, True])),
        ("os-system", _Payload(os.system, (f"touch {sentinel}",))),
        ("eval", _Payload(eval, (f"open({str(sentinel)!r}, 'w')",))),
        ("ndarray", (img, np.array([True, False]))),
        ("ordered-dict", __import__("collections").OrderedDict(a=1)),
        ("codecs-bytes", _Payload(__import__("codecs").encode, (b"x", "latin1"))),
        ("codecs-rot13", _Payload(__import__("codecs").encode, ("abc", "rot13"))),
    ]


def _mutate_pickle(rng, data: bytes) -> tuple[str, bytes]:
    kind = str(rng.choice(["none", "flip", "truncate", "frame", "binbytes", "garbage", "append", "memo"]))
    b = bytearray(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 6))):
            if b:
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        del b[int(rng.integers(len(b) + 1)) :]
    elif kind == "frame":  # PROTO 4, FRAME of an absurd length
        length = [2**63, 2**64 - 1, 2**40, 2**33][int(rng.integers(4))]
        b = bytearray(b"\x80\x04\x95" + struct.pack("<Q", length) + data[2:])
    elif kind == "binbytes":  # BINBYTES8 announcing 2**40 bytes
        b = bytearray(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx")
    elif kind == "garbage":
        b = bytearray(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes())
    elif kind == "append":
        b += rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif kind == "memo":  # BINGET of a memo slot never set
        b = bytearray(b"\x80\x02h\x07.")
    return kind, bytes(b)


def _read_pair_set(path: Path) -> None:
    ps = pairs_mod.load_pairs(path)
    assert len(ps.images) == 2 * len(ps.issame) and len(ps) > 0, "inconsistent pair set accepted"
    assert all(type(b) is bytes for b in ps.images)
    for i in range(min(len(ps.images), 2)):
        with contextlib.suppress(pairs_mod.PairSetError):
            ps.decode_one(i, 16)


def test_fuzz_pair_sets(tmp_path, capsys):
    sentinel = tmp_path / "payload-ran"
    tally = Tally(".bin pair sets", documented(pairs_mod, "PairSetError"))
    rng = np.random.default_rng(7)
    objects = _pair_objects(rng, sentinel)
    pickles = []
    for name, obj in objects:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            try:
                pickles.append((f"{name}/p{protocol}", pickle.dumps(obj, protocol=protocol)))
            except (pickle.PicklingError, RecursionError, TypeError, AttributeError):
                continue  # an object this protocol cannot write
    # a list nested 100,000 deep, written as opcodes (EMPTY_LIST x n, APPEND x n-1)
    depth = 100_000
    deep = b"]" * depth + b"a" * (depth - 1)
    pickles.append(("deep-opcodes", b"\x80\x03]C\x01aaC\x01ba]" + deep + b"a\x86."))
    for n in range(n_cases(300)):
        name, data = (
            pickles[n % len(pickles)] if n < len(pickles) else pickles[int(rng.integers(len(pickles)))]
        )
        kind, data = ("none", data) if n < len(pickles) else _mutate_pickle(rng, data)
        path = tmp_path / f"c{n}.bin"
        path.write_bytes(data)
        tally.run(f"case {n} ({name}, {kind})", [path.name], lambda p=path: _read_pair_set(p))
        path.unlink()
    assert not sentinel.exists(), "a pickled payload ran"
    tally.check(capsys)


# --------------------------------------------------------------------------- image folders
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height 1-bit pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _image_sources(rng) -> list[tuple[str, str, bytes]]:
    """(label, extension, bytes) of valid images in every mode the readers convert."""
    out = []

    def save(label, img, fmt, ext):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append((label, ext, buf.getvalue()))

    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    save("rgb-png", Image.fromarray(rgb), "PNG", "png")
    save("rgb-jpg", Image.fromarray(rgb), "JPEG", "jpg")
    save("grey-pgm", Image.fromarray(rgb[..., 0]), "PPM", "pgm")
    save("rgb-ppm", Image.fromarray(rgb), "PPM", "ppm")
    save("rgb-bmp", Image.fromarray(rgb), "BMP", "bmp")
    save("rgba-png", Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)), "PNG", "png")
    save("grey16-png", Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)), "PNG", "png")
    save("palette-png", Image.fromarray(rgb).convert("P"), "PNG", "png")
    save("strip-png", Image.fromarray(np.zeros((1, 3000, 3), np.uint8)), "PNG", "png")
    out.append(("grey16-pgm", "pgm", b"P5\n2 2\n65535\n" + np.array([0, 1000, 65535, 7], ">u2").tobytes()))
    out.append(("bomb-png", "png", _png_bomb(20000, 20000)))
    return out


def _mutate_image(rng, data: bytes) -> tuple[str, bytes]:
    kind = str(rng.choice(["none", "flip", "truncate", "zero", "header", "garbage"]))
    b = bytearray(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        del b[int(rng.integers(len(b) + 1)) :]
    elif kind == "zero":
        b = bytearray()
    elif kind == "header":  # corrupt the first bytes, where every format keeps its header
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(min(len(b), 24)))] = int(rng.integers(256))
    elif kind == "garbage":
        b = bytearray(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes())
    return kind, bytes(b)


def _read_folder(root: Path, resize: str) -> None:
    ds = folder_mod.FolderDataset(root, size=16, resize=resize)
    for i in range(len(ds)):
        x, y = ds[i]
        assert tuple(x.shape) == (3, 16, 16) and str(x.dtype) == "torch.uint8", (
            f"item {i}: {x.shape} {x.dtype}"
        )
        assert y == ds.labels[i]


def test_fuzz_image_folders(tmp_path, capsys):
    rng = np.random.default_rng(3)
    sources = _image_sources(rng)
    exts = sorted({e for _, e, _ in sources})
    tally = Tally("image folders", documented(folder_mod, "ImageError") + (FileNotFoundError,))
    odd = os.fsdecode(b"\xff\xfe-latin1-\xe9")  # a name that is not UTF-8 (surrogate-escaped)
    for n in range(n_cases(300)):
        root = tmp_path / f"c{n}"
        label, ext, data = sources[int(rng.integers(len(sources)))]
        kind, data = _mutate_image(rng, data)
        if rng.random() < 0.2:  # mislabelled: the bytes of one format under another's extension
            ext = str(rng.choice(exts))
        ident = odd if rng.random() < 0.15 else "s1"
        name = (odd if rng.random() < 0.15 else "1") + f".{ext}"
        (root / ident).mkdir(parents=True)
        (root / ident / name).write_bytes(data)
        (root / "s2").mkdir()
        (root / "s2" / "ok.png").write_bytes(sources[0][2])
        resize = str(rng.choice(folder_mod.RESIZE_MODES))
        names = [name, ident, str(root / ident / name)]
        tally.run(
            f"case {n} ({label}, {kind}, .{ext}, {resize})",
            names,
            lambda r=root, m=resize: _read_folder(r, m),
        )
        shutil.rmtree(root)
    tally.check(capsys)


# ------------------------------------------------------------------------------- manifests
_RANDOM_VALUES = [
    "",
    "text",
    0,
    -3,
    2.5,
    True,
    None,
    [],
    ["a", 1],
    {},
    {"x": 1},
    [[["deep"]]],
    {"tree_sha265": "0" * 64},
    "f" * 64,
    "F" * 64,
    {"files": ""},
    {"files": {"README": 12}},
    {"scheme": "md5"},
]


def _mutate_manifest(rng, text: str) -> tuple[str, bytes]:
    kind = str(
        rng.choice(["field", "checksum", "drop", "rename", "add", "text-flip", "text-cut", "indent", "bytes"])
    )
    doc = yaml.safe_load(text)
    if kind in ("field", "drop", "rename", "add"):
        key = str(rng.choice(sorted(doc)))
        if kind == "field":
            doc[key] = _RANDOM_VALUES[int(rng.integers(len(_RANDOM_VALUES)))]
        elif kind == "drop":
            del doc[key]
        elif kind == "rename":
            doc[key + str(rng.choice(["s", "_", "x"]))] = doc.pop(key)
        else:
            doc[str(rng.choice(["extra", "Name", "1"]))] = "x"
        return f"{kind} {key}", yaml.safe_dump(doc).encode()
    if kind == "checksum":
        cs = doc.setdefault("checksums", {})
        if isinstance(cs, dict) and cs and rng.random() < 0.5:
            key = str(rng.choice(sorted(cs)))
            if rng.random() < 0.5:
                cs[key.replace("256", str(rng.choice(["265", "25", "2566"])))] = cs.pop(key)
            else:
                cs[key] = _RANDOM_VALUES[int(rng.integers(len(_RANDOM_VALUES)))]
        else:
            doc["checksums"] = _RANDOM_VALUES[int(rng.integers(len(_RANDOM_VALUES)))]
        return "checksum", yaml.safe_dump(doc).encode()
    b = bytearray(text.encode())
    if kind == "text-flip":
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(len(b)))] = int(rng.choice(list(b":-[]{}'\"\t\n#&*!|>%@`")))
    elif kind == "text-cut":
        del b[int(rng.integers(len(b) + 1)) :]
    elif kind == "indent":
        lines = text.splitlines()
        i = int(rng.integers(len(lines)))
        lines[i] = str(rng.choice(["  ", "\t", "- "])) + lines[i]
        b = bytearray("\n".join(lines).encode())
    else:
        b[int(rng.integers(len(b)))] = int(rng.integers(128, 256))
    return kind, bytes(b)


def test_fuzz_manifests(tmp_path, capsys, monkeypatch):
    import hashlib

    from nbfacelib.data.manifest import image_listing

    data = tmp_path / "data"
    (data / "tiny" / "s1").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, name in enumerate(["1.png", "2.png", os.fsdecode(b"\xe9t\xe9.png")]):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(
            data / "tiny" / "s1" / f"x{i}.png"
        )
        (data / "tiny" / "s1" / name).write_bytes((data / "tiny" / "s1" / f"x{i}.png").read_bytes())
    (data / "tiny" / "README").write_text("tiny\n")
    listing = image_listing(data / "tiny")
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "tiny.sha256").write_text(listing.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    bases = {
        "tiny": yaml.safe_dump(
            {
                "name": "tiny",
                "title": "a tiny folder",
                "format": "folder",
                "location": "tiny",
                "identities": 1,
                "images": 6,
                "counts_verified": True,
                "required": ["README"],
                "checksums": {
                    "scheme": "sha256-listing-v1",
                    # the scheme by hand: sha256 of the listing's bytes (file names as stored)
                    "tree_sha256": hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest(),
                    "listing": "tiny.sha256",
                    "files": {"README": manifest_mod.sha256_file(data / "tiny" / "README")},
                },
                "protocol": {"folds": 10},
                "obtain": "make it",
            }
        ),
    }
    repo_manifests = Path(__file__).resolve().parents[1] / "data_manifests"
    for name in ("lfw", "ms1mv2", "synthetic", "ijbc"):
        bases[name] = (repo_manifests / f"{name}.yaml").read_text()
    monkeypatch.setenv("NBFACELIB_MANIFESTS", str(mdir))
    monkeypatch.setenv("NBFACELIB_DATA", str(data))
    allowed = documented(manifest_mod, "ManifestError", "DatasetNotFoundError", "DatasetIntegrityError")
    tally = Tally("manifests", allowed)

    (mdir / "tiny.yaml").write_text(bases["tiny"])
    tally.run("unmutated tiny", ["tiny"], lambda: manifest_mod.verify("tiny"))  # verifies (strict)

    names = sorted(bases)
    for n in range(n_cases(300)):
        name = names[n % len(names)]
        kind, text = _mutate_manifest(rng, bases[name])
        (mdir / f"{name}.yaml").write_bytes(text)

        def read(name=name):
            m = manifest_mod.load_manifest(name)
            report = manifest_mod.verify(name, strict=False)
            cs = m.checksums or {}
            if name == "tiny" and report.ok:
                # a data set passes only if the checks its manifest asks for ran
                assert ("tree_sha256" not in cs) or any(c.what == "tree sha256" for c in report.checks), (
                    "tree_sha256 given but not checked"
                )

        tally.run(f"case {n} ({name}: {kind})", [f"{name}.yaml", name], read)
        (mdir / f"{name}.yaml").unlink()
    tally.check(capsys)
