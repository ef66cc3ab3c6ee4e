"""Pure-Python InsightFace RecordIO: byte layout built by hand, split records, header record,
im2rec files, array labels, index rebuild, corrupt files, DataLoader workers, round trips."""

import io
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from nbfacelib.data.datasets import convert_dataset
from nbfacelib.data.folder import FolderDataset, write_image_folder
from nbfacelib.data.recordio import (
    LAYOUTS,
    IRHeader,
    RecDataset,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    encode_record,
    pack,
    read_index,
    unpack,
    write_image_rec,
)

MAGIC = 0xCED7230A  # dmlc-core kMagic, as written by every mxnet release
MAGIC_B = struct.pack("<I", MAGIC)


def lrec(cflag, length, shift=29):
    return (cflag << shift) | length


def frame(cflag, part, pad=True, magic=MAGIC, shift=29):
    """One framed part, by hand: magic, lrecord, bytes, zero padding to 4."""
    out = struct.pack("<II", magic, lrec(cflag, len(part), shift)) + part
    return out + b"\0" * (-len(part) % 4 if pad else 0)


def smooth_image(seed, h=24, w=20):
    """Smooth RGB content (gradients + a block) that JPEG keeps within a few levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, size=3)
    img = np.stack([base[c] + 1.5 * (yy if c % 2 else xx) for c in range(3)], axis=2)
    img[h // 4 : h // 2, w // 4 : w // 2] += 25
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(arr, q=95):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=q)
    return buf.getvalue()


# ---------------------------------------------------------------------------- framing
def test_whole_record_framing_by_hand():
    assert encode_record(b"abcde") == struct.pack("<II", MAGIC, 5) + b"abcde" + b"\0\0\0"
    assert encode_record(b"abcd") == struct.pack("<II", MAGIC, 4) + b"abcd"
    assert encode_record(b"") == struct.pack("<II", MAGIC, 0)
    # REFERENCE.md's layout: the 2015 dmlc-core magic and cflag << 30
    assert encode_record(b"abcde", "dmlc-2015") == struct.pack("<II", 0x3ED7230A, 5) + b"abcde\0\0\0"


def test_writer_bytes_and_index_equal_hand_built(tmp_path):
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    p0 = pack(IRHeader(0, 3.0, 0, 0), b"JPEGDATA!")  # 24 + 9 = 33 bytes -> 3 bytes padding
    p1 = pack(IRHeader(0, 1.0, 7, 0), b"ab")
    with RecordIOWriter(rec, idx) as w:
        assert w.write(0, p0) == 0
        assert w.write(7, p1) == 8 + 36
    expected = (
        struct.pack("<II", MAGIC, 33)
        + struct.pack("<IfQQ", 0, 3.0, 0, 0)
        + b"JPEGDATA!"
        + b"\0\0\0"
        + struct.pack("<II", MAGIC, 26)
        + struct.pack("<IfQQ", 0, 1.0, 7, 0)
        + b"ab"
        + b"\0\0"
    )
    assert rec.read_bytes() == expected
    assert idx.read_text() == "0\t0\n7\t44\n"
    r = RecordIOReader(rec, idx)
    assert list(r.keys) == [0, 7] and r.read(7) == p1 and r.read(0) == p0
    with pytest.raises(RecordIOError, match=r"x\.rec: key 3 is not in .*x\.idx"):
        r.read(3)


@pytest.mark.parametrize("layout", ["mxnet", "dmlc-2015"])
def test_split_record_cflags_by_hand_and_read_back(tmp_path, layout):
    lay = LAYOUTS[layout]
    m = lay.magic_bytes
    # magic words at aligned payload offsets 4 and 12 split the record; the one at offset 18
    # is not aligned and stays inside the last part.
    payload = b"\x01\x02\x03\x04" + m + b"wxyz" + m + b"12" + m + b"!"
    assert payload.find(m, 13) == 18
    expected = (
        frame(1, b"\x01\x02\x03\x04", magic=lay.magic, shift=lay.shift)
        + frame(2, b"wxyz", magic=lay.magic, shift=lay.shift)
        + frame(3, b"12" + m + b"!", magic=lay.magic, shift=lay.shift)
    )
    assert encode_record(payload, layout) == expected
    assert struct.unpack_from("<I", expected, 4)[0] >> lay.shift == 1

    rec = tmp_path / "s.rec"
    other = b"after the split record"
    with RecordIOWriter(rec, layout=layout) as w:
        w.write(0, payload)
        w.write(1, other)
        assert w.splits == 1
    r = RecordIOReader(rec)
    assert r.layout.name == layout  # detected from the first magic word
    assert r.read(0) == payload and r.read(1) == other


def test_split_at_start_and_end():
    m = MAGIC_B
    # magic at offset 0: an empty first part; magic as the last aligned word: an empty last part
    assert encode_record(m + b"abcd") == frame(1, b"") + frame(3, b"abcd")
    assert encode_record(b"abcd" + m) == frame(1, b"abcd") + frame(3, b"")
    assert encode_record(m + m) == frame(1, b"") + frame(2, b"") + frame(3, b"")


def test_split_records_round_trip_random(tmp_path):
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(30):
        words = [MAGIC_B if rng.random() < 0.3 else rng.bytes(4) for _ in range(rng.integers(0, 12))]
        payloads.append(b"".join(words) + rng.bytes(int(rng.integers(0, 4))))
    with RecordIOWriter(tmp_path / "r.rec") as w:
        for i, p in enumerate(payloads):
            w.write(i, p)
    r = RecordIOReader(tmp_path / "r.rec")
    assert [r.read(i) for i in range(30)] == payloads
    (tmp_path / "r.idx").unlink()
    r2 = RecordIOReader(tmp_path / "r.rec")  # scanning walks the split parts too
    assert r2.index_rebuilt and list(r2.offsets) == list(r.offsets)


# ---------------------------------------------------------------------------- IRHeader
def test_pack_scalar_and_array_labels_by_hand():
    assert pack(IRHeader(0, 5.0, 9, 0), b"IMG") == struct.pack("<IfQQ", 0, 5.0, 9, 0) + b"IMG"
    packed = pack(IRHeader(0, [3.0, 7.5], 4, 1), b"IMG")
    assert packed == struct.pack("<IfQQ", 2, 0.0, 4, 1) + struct.pack("<2f", 3.0, 7.5) + b"IMG"
    h, img = unpack(packed)
    assert h.flag == 2 and h.id == 4 and h.id2 == 1 and img == b"IMG"
    np.testing.assert_array_equal(h.label, [3.0, 7.5])
    h, img = unpack(struct.pack("<IfQQ", 0, 2.0, 1, 0) + b"xy")
    assert (h.flag, h.label, img) == (0, 2.0, b"xy")
    with pytest.raises(RecordIOError, match="shorter than the IRHeader"):
        unpack(b"short")
    with pytest.raises(RecordIOError, match="announces 12 label bytes"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def test_insightface_layout_header_and_identity_records(tmp_path):
    imgs = [smooth_image(i, 8, 8) for i in range(5)]
    labels = [0, 0, 1, 1, 1]
    assert write_image_rec(tmp_path, zip(imgs, labels)) == 5
    raw = (tmp_path / "train.rec").read_bytes()
    # record 0 by hand: IRHeader flag 2 (two float labels), label 0, id 0, id2 1; (id_start, id_end)
    head = struct.pack("<IfQQ", 2, 0.0, 0, 1) + struct.pack("<2f", 6.0, 8.0)
    assert raw[:40] == struct.pack("<II", MAGIC, 32) + head
    keys, offsets = read_index(tmp_path / "train.idx")
    assert list(keys) == list(range(8)) and offsets[0] == 0 and offsets[1] == 40
    r = RecordIOReader(tmp_path / "train.rec")
    for key in range(1, 6):
        h, img = unpack(r.read(key))
        assert (h.flag, h.label, h.id, h.id2) == (0, float(labels[key - 1]), key, 0)
        assert img[:3] == b"\xff\xd8\xff"  # JPEG
    for key, (first, end) in zip((6, 7), ((1, 3), (3, 6))):
        h, img = unpack(r.read(key))
        assert h.flag == 2 and h.id == key and img == b""
        np.testing.assert_array_equal(h.label, [first, end])
    ds = RecDataset(tmp_path, size=None)
    assert ds.kind == "insightface" and ds.header == (6, 8)
    assert len(ds) == 5 and ds.num_classes == 2 and list(ds.labels) == labels
    x, y = ds[3]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8) and y == 1


def test_labels_not_grouped_are_regrouped(tmp_path):
    imgs = [smooth_image(i, 8, 8) for i in range(4)]
    write_image_rec(tmp_path, zip(imgs, [1, 0, 1, 0]))
    ds = RecDataset(tmp_path, size=None)
    assert list(ds.labels) == [0, 0, 1, 1]
    assert [ds[i][1] for i in range(4)] == [0, 0, 1, 1]
    r = ds.reader
    assert [unpack(r.read(k))[0].id for k in range(1, 5)] == [1, 2, 3, 4]  # ids follow the new keys
    # stable regrouping: label 0 keeps items 1 and 3 in that order
    got = ds.load_array(1).astype(int)
    assert np.abs(got - imgs[3]).mean() < np.abs(got - imgs[1]).mean()


def test_im2rec_file_without_header_and_array_labels(tmp_path):
    imgs = [smooth_image(i, 10, 12) for i in range(4)]
    with RecordIOWriter(tmp_path / "data.rec") as w:
        for key, (img, lab) in enumerate(zip(imgs, [2, 0, 1, 2])):
            label = float(lab) if key != 3 else [float(lab), 99.0]  # multi-label record: first counts
            w.write(key, pack(IRHeader(0, label, key, 0), jpeg(img)))
    ds = RecDataset(tmp_path / "data.rec", size=None)
    assert ds.kind == "im2rec" and ds.header is None
    assert len(ds) == 4 and list(ds.keys) == [0, 1, 2, 3]
    assert list(ds.labels) == [2, 0, 1, 2] and ds.num_classes == 3
    x, y = ds[3]
    assert y == 2 and x.shape == (3, 10, 12)
    assert np.abs(x.permute(1, 2, 0).numpy().astype(int) - imgs[3]).mean() < 3
    # the folder size rule applies to .rec images too: 10x12 -> 12x12 padded, rows 1..10 hold it
    x112, _ = RecDataset(tmp_path, size=12)[0]
    assert x112.shape == (3, 12, 12) and x112[:, 0].max() == 0 and x112[:, 11].max() == 0


# ---------------------------------------------------------------------------- index / errors
def _small_rec(tmp_path, n=6):
    items = [(smooth_image(i, 8, 8), i // 2) for i in range(n)]
    write_image_rec(tmp_path, items)
    return tmp_path / "train.rec", tmp_path / "train.idx"


def test_missing_idx_rebuilt_and_saved(tmp_path):
    rec, idx = _small_rec(tmp_path)
    original = idx.read_text()
    idx.unlink()
    r = RecordIOReader(rec)
    assert r.index_rebuilt and idx.read_text() == original
    ds = RecDataset(tmp_path, size=None)
    assert len(ds) == 6 and list(ds.labels) == [0, 0, 1, 1, 2, 2]


def test_missing_idx_in_read_only_dir_kept_in_memory(tmp_path, monkeypatch):
    import nbfacelib.data.recordio as recordio

    rec, idx = _small_rec(tmp_path)
    idx.unlink()

    def refuse(path, *a, **k):  # what a read-only directory does (chmod is moot as root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(recordio, "write_index", refuse)
    with pytest.warns(UserWarning, match="kept in memory"):
        r = RecordIOReader(rec)
    assert not idx.exists() and r.index_rebuilt and len(r) == 1 + 6 + 3
    with pytest.warns(UserWarning, match="kept in memory"):
        assert RecDataset(tmp_path, size=None).labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_truncated_file_errors_give_offsets(tmp_path):
    rec, idx = _small_rec(tmp_path)
    _, offsets = read_index(idx)
    data = rec.read_bytes()
    last = int(offsets[-1])
    # cut inside the last record's payload: opening checks that record's end, names the offset
    rec.write_bytes(data[: last + 12])
    with pytest.raises(RecordIOError, match=rf"train\.rec: truncated record at byte offset {last}"):
        RecordIOReader(rec)
    # cut inside its 8-byte header: the .idx points past the end, caught on open
    rec.write_bytes(data[: last + 5])
    with pytest.raises(RecordIOError, match=rf"byte offset {last}") as e:
        RecordIOReader(rec)
    assert "train.rec" in str(e.value)
    # scanning a truncated file without .idx also names the offset
    idx.unlink()
    with pytest.raises(RecordIOError, match=rf"truncated record header at byte offset {last}"):
        RecordIOReader(rec)


def test_bad_magic_errors_give_offsets(tmp_path):
    rec, idx = _small_rec(tmp_path)
    _, offsets = read_index(idx)
    data = bytearray(rec.read_bytes())
    off = int(offsets[3])
    data[off : off + 4] = b"\xde\xad\xbe\xef"
    rec.write_bytes(bytes(data))
    r = RecordIOReader(rec)
    assert len(r.read(2)) > 0  # other records still read
    with pytest.raises(RecordIOError, match=rf"bad magic 0xefbeadde at byte offset {off}"):
        r.read(3)
    data[0:4] = b"JUNK"
    rec.write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match=r"train\.rec: bad magic 0x4b4e554a at byte offset 0"):
        RecordIOReader(rec)


def test_bad_index_line_named(tmp_path):
    rec, idx = _small_rec(tmp_path)
    keys, offsets = read_index(idx)
    idx.write_text("0\t0\n1\tforty\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 2"):
        RecordIOReader(rec)
    idx.write_text("0 0 40\n7\n")  # right token count, wrong lines
    with pytest.raises(RecordIOError, match=r"train\.idx: line 1 is not"):
        RecordIOReader(rec)
    idx.write_text("".join(f"{k} {o}\n\n" for k, o in zip(keys, offsets)))  # spaces, blank lines
    k2, o2 = read_index(idx)
    assert k2.tolist() == keys.tolist() and o2.tolist() == offsets.tolist()


# ---------------------------------------------------------------------------- workers
def test_dataloader_two_workers_equals_serial(tmp_path):
    items = [(smooth_image(i, 16, 16), i % 5) for i in range(20)]
    write_image_rec(tmp_path, sorted(items, key=lambda t: t[1]))
    ds = RecDataset(tmp_path, size=16)
    ds.reader.read(1)  # the parent opened its descriptor before the workers fork
    serial = [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(x, torch.stack([s[0] for s in serial]))
    assert y.tolist() == [s[1] for s in serial]


def test_handle_reopened_after_fork_and_pickle(tmp_path):
    import pickle

    _small_rec(tmp_path)
    ds = RecDataset(tmp_path, size=None)
    src = ds.reader._src
    first = src.fd()
    assert src.fd() == first  # same process: same descriptor
    src._pid = -1  # as seen from a forked child: the parent's pid
    second = src.fd()
    assert second != first and src._pid == os.getpid()  # a fresh descriptor of its own
    os.close(first)
    clone = pickle.loads(pickle.dumps(ds))  # spawn-started workers get a pickled copy
    assert clone.reader._src._fd is None
    assert clone.raw(2) == ds.raw(2)


# ---------------------------------------------------------------------------- round trips
def test_folder_rec_folder_round_trip(tmp_path):
    items = [(smooth_image(i), lab) for i, lab in enumerate([0, 0, 0, 1, 1, 2, 2, 2, 2])]
    write_image_folder(tmp_path / "src", items, ext="png")
    src = FolderDataset(tmp_path / "src", size=None)
    assert list(src.labels) == [lab for _, lab in items]
    for i, (img, _) in enumerate(items):  # PNG is lossless
        np.testing.assert_array_equal(src.load_array(i), img)

    convert_dataset(tmp_path / "src", tmp_path / "out.rec")
    rec = RecDataset(tmp_path / "out.rec", size=None)
    assert list(rec.labels) == list(src.labels) and rec.num_classes == 3
    for i, (img, _) in enumerate(items):  # JPEG q95 on smooth content: a few levels at most
        diff = np.abs(rec.load_array(i).astype(int) - img)
        assert diff.mean() < 2.0 and diff.max() < 24

    convert_dataset(f"rec:{tmp_path / 'out.rec'}", tmp_path / "back")
    back = FolderDataset(tmp_path / "back", size=None)
    assert list(back.labels) == list(src.labels) and back.classes == src.classes
    for i in range(len(items)):  # decoded JPEG pixels written as PNG: exactly the rec's pixels
        np.testing.assert_array_equal(back.load_array(i), rec.load_array(i))

    # rec -> jpg folder -> rec copies the JPEG bytes unchanged
    convert_dataset(tmp_path / "out.rec", tmp_path / "jpgs", ext="jpg")
    convert_dataset(tmp_path / "jpgs", tmp_path / "again", to="rec")
    again = RecDataset(tmp_path / "again", size=None)
    assert [again.raw(i) for i in range(len(again))] == [rec.raw(i) for i in range(len(rec))]


def test_write_image_rec_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="item 1: label -1"):
        write_image_rec(tmp_path / "a", [(smooth_image(0, 4, 4), 0), (smooth_image(0, 4, 4), -1)])
    assert list((tmp_path / "a").iterdir()) == []  # no half-written file left behind
    with pytest.raises(TypeError, match="uint8"):
        write_image_rec(tmp_path / "b", [(np.zeros((4, 4, 3), np.float32), 0)])
    write_image_rec(tmp_path / "c", [(smooth_image(0, 4, 4), 0)])
    with pytest.raises(FileExistsError):
        write_image_rec(tmp_path / "c", [(smooth_image(0, 4, 4), 0)])
