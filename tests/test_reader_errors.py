"""The corrupt-file cases of issue 12, one by one: each reader fails with its documented error
naming the file (and the byte offset or record), and never allocates what a corrupt length
field asks for."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nbfacelib.data.folder import FolderDataset, ImageError, decode_image, fit_square
from nbfacelib.data.manifest import ManifestError, load_manifest, verify
from nbfacelib.data.pairs import PairSetError, load_pairs
from nbfacelib.data.recordio import RecDataset, RecordIOError, RecordIOReader, read_index, write_image_rec


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def rec_dir(tmp_path):
    """An InsightFace .rec: 20 images of 4 identities, header (21, 25)."""
    write_image_rec(tmp_path / "r", [(jpeg(i), i // 5) for i in range(20)])
    return tmp_path / "r"


def patch(path, offset, fmt, *values):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------- RecordIO
def test_recordio_untouched_file_reads(rec_dir):
    ds = RecDataset(rec_dir, size=None)
    assert ds.header == (21, 25) and len(ds) == 20 and ds.labels.tolist() == [i // 5 for i in range(20)]
    assert [ds[i][1] for i in range(20)] == ds.labels.tolist()


@pytest.mark.parametrize(
    ("id_start", "message"),
    [
        (1.0, r"key 1 should be the first identity record"),  # used to give 0 images silently
        (float("nan"), r"header record 0: id_start nan is not"),  # used to be a bare ValueError
        (3e9, r"announces 25 records, but .*train\.idx lists 25|needs 1 <= id_start <= id_end"),
        (22.0, r"key 21 should be the last image, but has no image"),
    ],
)
def test_recordio_header_record_sizes(rec_dir, id_start, message):
    # record 0's labels (id_start, id_end) sit after its 8-byte frame and 24-byte IRHeader
    patch(rec_dir / "train.rec", 32, "<ff", id_start, 25.0)
    with pytest.raises(RecordIOError, match=r"train\.rec.*" + message):
        RecDataset(rec_dir)


def test_recordio_header_3e9_allocates_nothing(rec_dir):
    """id_start = id_end = 3e9 used to allocate np.arange(1, 3e9) (22.4 GiB) in __init__."""
    import tracemalloc

    patch(rec_dir / "train.rec", 32, "<ff", 3e9, 3e9)
    tracemalloc.start()
    with pytest.raises(RecordIOError, match=r"announces 3000000000 records, but .*lists 25"):
        RecDataset(rec_dir)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20


def test_recordio_idx_offset_near_2_63(rec_dir):
    idx = rec_dir / "train.idx"
    lines = idx.read_text().splitlines()
    lines[3] = f"3\t{2**63 - 1}"  # offsets.max() + 8 overflowed and the check passed
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError, match=rf"train\.idx puts key 3 at byte offset {2**63 - 1}"):
        RecordIOReader(rec_dir / "train.rec")
    lines[3] = f"3\t{2**64 + 8}"  # past int64: np.fromstring would saturate it silently
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 4: .* does not fit in int64"):
        read_index(idx)


def test_recordio_swapped_idx_keys_are_an_error(rec_dir):
    idx = rec_dir / "train.idx"
    keys, offsets = read_index(idx)
    offsets[[2, 7]] = offsets[[7, 2]]  # key 2 -> key 7's record and back
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets)))
    ds = RecDataset(rec_dir)
    assert ds.labels[1] == 0  # from the identity records, which are intact
    with pytest.raises(
        RecordIOError, match=r"train\.idx maps key 2 to byte offset \d+, whose record has id 7"
    ):
        ds[1]  # key 2 holds an image of identity 1 under identity 0's label


def test_recordio_enlarged_length_word_is_an_error(rec_dir):
    _, offsets = read_index(rec_dir / "train.idx")
    off = int(offsets[5])
    length = struct.unpack_from("<I", (rec_dir / "train.rec").read_bytes(), off + 4)[0]
    patch(rec_dir / "train.rec", off + 4, "<I", length + 8)  # swallows the next record's frame
    ds = RecDataset(rec_dir)
    with pytest.raises(RecordIOError, match=rf"record at byte offset {off} runs to byte \d+, past the start"):
        ds[4]
    assert ds[3][1] == 0 and ds[5][1] == 1  # its neighbours still read


def test_recordio_duplicate_and_missing_idx_lines(rec_dir):
    idx = rec_dir / "train.idx"
    text = idx.read_text().splitlines()
    idx.write_text("\n".join(text + [text[4]]) + "\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: key 4 is listed 2 times"):
        RecordIOReader(rec_dir / "train.rec")
    idx.write_text("\n".join(text[:-1]) + "\n")  # the last line lost: the .rec goes on
    with pytest.raises(RecordIOError, match=r"train\.rec: the last record listed by train\.idx .* truncated"):
        RecordIOReader(rec_dir / "train.rec")
    idx.write_text("\n".join(text[:3] + text[4:]) + "\n")  # a middle line lost
    with pytest.raises(RecordIOError, match=r"header record 0 .* announces 25 records, but .* lists 24"):
        RecDataset(rec_dir)


def test_recordio_missing_key_is_a_recordio_error(rec_dir):
    r = RecordIOReader(rec_dir / "train.rec")
    with pytest.raises(RecordIOError, match=r"train\.rec: key 99 is not in .*train\.idx"):
        r.read(99)
    assert 99 not in r and 3 in r


def test_recordio_nan_label_names_record(rec_dir):
    _, offsets = read_index(rec_dir / "train.idx")
    patch(rec_dir / "train.rec", int(offsets[3]) + 12, "<f", float("nan"))  # image key 3's scalar label
    ds = RecDataset(rec_dir)
    with pytest.raises(RecordIOError, match=r"train\.rec key 3: label nan is not a class id"):
        ds[2]


# ----------------------------------------------------------------------------- pair sets
def test_pairs_frame_length_2_63(tmp_path):
    body = pickle.dumps(([b"a", b"b"], [True]), protocol=4)
    path = tmp_path / "frame.bin"
    path.write_bytes(body[:2] + b"\x95" + struct.pack("<Q", 2**63) + body[11:])  # was OverflowError
    with pytest.raises(PairSetError, match=r"frame\.bin: not a readable pickle \(OverflowError"):
        load_pairs(path)
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx")  # BINBYTES8 of 1 TiB
    with pytest.raises(PairSetError, match=r"frame\.bin: not a readable pickle"):
        load_pairs(path)


def deep_pair_pickle(depth: int) -> bytes:
    """``([b"a", b"b"], [<a list nested depth deep>])`` as protocol-3 opcodes, by hand
    (pickle.dumps itself recurses and cannot write it)."""
    images = b"]" + b"C\x01a" + b"a" + b"C\x01b" + b"a"  # EMPTY_LIST, SHORT_BINBYTES, APPEND
    deep = b"]" * depth + b"a" * (depth - 1)  # depth empty lists, each appended to the one below
    return b"\x80\x03" + images + b"]" + deep + b"a" + b"\x86" + b"."  # TUPLE2, STOP


def test_pairs_deeply_nested_issame(tmp_path):
    path = tmp_path / "deep.bin"
    path.write_bytes(deep_pair_pickle(100_000))
    with pytest.raises(
        PairSetError, match=r"deep\.bin: not a plain pair set: issame\[0\] is a list \(\[\[\["
    ):
        load_pairs(path)  # repr() of the element used to raise RecursionError


# ------------------------------------------------------------------------------ images
def test_pgm_header_error_names_the_file(tmp_path):
    (tmp_path / "s1").mkdir()
    bad = tmp_path / "s1" / "1.pgm"
    bad.write_bytes(b"P5\n92 x\n255\n" + bytes(100))
    ds = FolderDataset(tmp_path)
    with pytest.raises(ImageError, match=r"cannot decode .*s1/1\.pgm"):
        ds[0]
    bad.write_bytes(b"P5\n2 2\n0\n\0\0\0\0")  # maxval 0
    with pytest.raises(ImageError, match=r"s1/1\.pgm.*maxval"):
        ds[0]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decompression_bomb_is_an_image_error(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + _chunk(b"IEND", b"")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(ImageError, match=r"bomb\.png: larger than PIL's decompression-bomb limit"):
        decode_image(path)


def test_crop_of_a_long_strip_resamples_only_the_window():
    import tracemalloc

    strip = np.zeros((1, 30000, 3), np.uint8)
    strip[0, 14990:15010] = 200  # the centre, which the crop keeps
    tracemalloc.start()
    out = fit_square(strip, 112, "crop")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (112, 112, 3) and out.max() > 0  # the old way built a 112 x 3,360,000 image
    assert peak < 10 << 20
    # the window crop equals resizing everything then cropping, to within rounding
    img = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    full = np.asarray(Image.fromarray(img).resize((199, 112), Image.BILINEAR))[:, 43:155]
    assert np.abs(fit_square(img, 112, "crop").astype(int) - full).max() <= 1


def test_dark_16bit_png_is_scaled_by_its_bit_depth(tmp_path):
    a = np.full((4, 4), 252, np.uint16)  # max 252 of 65535: nearly black
    a[0, 0] = 0
    Image.fromarray(a).save(tmp_path / "dark.png")
    got = decode_image(tmp_path / "dark.png")
    assert got.max() == 1 and got[0, 0, 0] == 0  # was 252: 257 times too bright


# ----------------------------------------------------------------------------- manifests
def _write(tmp_path, monkeypatch, text: str, name: str = "m"):
    monkeypatch.setenv("NBFACELIB_MANIFESTS", str(tmp_path))
    (tmp_path / f"{name}.yaml").write_text(text)


GOOD = "name: m\nformat: folder\nlocation: m\nchecksums:\n  tree_sha256: null\n"


def test_manifest_good_one_loads(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, GOOD)
    assert load_manifest("m").checksums == {"tree_sha256": None}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: m\nformat: [folder\n", r"m\.yaml: not valid YAML \(line 3, column 1\)"),
        ("name: m\nformat: folder\nidentities: many\n", r"m\.yaml: field 'identities' must be count"),
        ("name: m\nformat: folder\nidentities: true\n", r"field 'identities' must be count"),
        ("name: m\nformat: folder\nrequired: README\n", r"field 'required' must be list of text"),
        ("name: m\nformat: folder\nalternatives: [1, 2]\n", r"field 'alternatives' must be list of text"),
        ("name: m\nformat: folder\nobtain: {a: 1}\n", r"field 'obtain' must be text"),
        ("name: m\nformat: folder\nchecksums: ''\n", r"field 'checksums' must be mapping"),
        (
            "name: m\nformat: folder\nchecksums: {tree_sha265: " + "0" * 64 + "}\n",
            r"unknown key\(s\) \['tree_sha265'\]",
        ),
        (
            "name: m\nformat: folder\nchecksums: {tree_sha256: abc}\n",
            r"tree_sha256 must be 64 lower-case hex",
        ),
        ("name: m\nformat: folder\nchecksums: {files: {README: 12}}\n", r"files entry 'README'"),
        ("name: m\nformat: folder\nchecksums: {scheme: md5, tree_sha256: null}\n", r"scheme 'md5' unknown"),
        ("name: m\nformat: folder\nchecksums: {}\n", r"lists neither files nor tree_sha256"),
        ("- a\n- b\n", r"m\.yaml: a manifest must be a mapping, got list"),
        ("name: m\n", r"m\.yaml: manifest lacks 'format'"),
    ],
)
def test_manifest_errors_name_the_file(tmp_path, monkeypatch, text, message):
    _write(tmp_path, monkeypatch, text)
    with pytest.raises(ManifestError, match=message):
        load_manifest("m")


def test_manifest_not_utf8(tmp_path, monkeypatch):
    monkeypatch.setenv("NBFACELIB_MANIFESTS", str(tmp_path))
    (tmp_path / "m.yaml").write_bytes(b"name: m\nformat: folder\ntitle: \xff\n")
    with pytest.raises(ManifestError, match=r"m\.yaml: not UTF-8 text \(byte offset 30\)"):
        load_manifest("m")


def test_listing_with_a_name_that_is_not_utf8(tmp_path, monkeypatch):
    """The tree checksum of a folder holding a non-UTF-8 file name is computed (it used to
    raise UnicodeEncodeError) and equals sha256 of sha256sum's own output bytes."""
    import hashlib
    import os

    data = tmp_path / "data" / "m" / "s1"
    data.mkdir(parents=True)
    raw_name = b"\xe9t\xe9.png"
    (data / os.fsdecode(raw_name)).write_bytes(b"png bytes")
    line = hashlib.sha256(b"png bytes").hexdigest().encode() + b"  s1/" + raw_name + b"\n"
    tree = hashlib.sha256(line).hexdigest()
    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path / "data"))
    _write(
        tmp_path, monkeypatch, f"name: m\nformat: folder\nlocation: m\nchecksums: {{tree_sha256: {tree}}}\n"
    )
    assert verify("m").ok
