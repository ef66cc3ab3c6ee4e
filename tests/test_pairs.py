"""Verification pair sets: the restricted unpickler (planted payloads never run), Python-2
pickles, structure errors, round trips, pair sampling and ``nbface pairs``."""

import io
import os
import pickle
import pickletools
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import KFold

from nbfacelib.data.pairs import (
    PairSet,
    PairSetError,
    encode_image,
    fold_sizes,
    load_pairs,
    make_pair_set,
    sample_pairs,
    save_pairs,
)

JPEG_LIKE = [b"\xff\xd8\xff\xe0" + bytes([i]) * 5 for i in range(4)]  # non-ASCII bytes


def dump(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


# --------------------------------------------------------------- planted payloads


class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_planted_os_system_payload_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned_system"
    evil = _Evil(os.system, (f"touch {marker}",))
    # The payload hides inside an otherwise valid-looking pair set.
    path = dump(tmp_path / "evil.bin", ([JPEG_LIKE[0], evil], [True]), protocol)
    with pytest.raises(PairSetError, match=r"evil\.bin.*refused.*system"):
        load_pairs(path)
    assert not marker.exists()
    # Control: plain pickle.load really would have run it.
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_planted_open_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned_open"
    path = dump(tmp_path / "evil.bin", _Evil(open, (str(marker), "w")))
    with pytest.raises(PairSetError, match=r"global (io|builtins)\.open refused"):
        load_pairs(path)
    assert not marker.exists()


def test_hand_crafted_global_opcode_refused(tmp_path):
    marker = tmp_path / "pwned_eval"
    # Protocol-0 GLOBAL + REDUCE: builtins.exec("open(marker, 'w')").
    code = f"open({str(marker)!r}, 'w').close()"
    payload = b"cbuiltins\nexec\n(V" + code.encode() + b"\ntR."
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(PairSetError, match="builtins.exec refused"):
        load_pairs(path)
    assert not marker.exists()


def test_numpy_and_codecs_abuse_refused(tmp_path):
    path = dump(tmp_path / "np.bin", (JPEG_LIKE[:2], np.array([True])))
    with pytest.raises(PairSetError, match="numpy"):
        load_pairs(path)
    # bytearray: a global at protocol 4 (refused), an opcode at 5 (then not bytes).
    with pytest.raises(PairSetError, match="bytearray refused"):
        load_pairs(dump(tmp_path / "ba4.bin", ([bytearray(b"x"), b"y"], [True]), 4))
    with pytest.raises(PairSetError, match="image 0 is a bytearray, not bytes"):
        load_pairs(dump(tmp_path / "ba5.bin", ([bytearray(b"x"), b"y"], [True]), 5))
    # _codecs.encode is admitted only as the latin-1 str->bytes step of protocol 2.
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    path = tmp_path / "zlib.bin"
    path.write_bytes(payload)
    with pytest.raises(PairSetError, match="not admitted"):
        load_pairs(path)


# --------------------------------------------------------------- Python 2 and Python 3 files


def py2_pickle(images, issame) -> bytes:
    """What Python 2's cPickle protocol 2 writes for (list of str, list of bool): str as
    SHORT_BINSTRING ('U', < 256 bytes) or BINSTRING ('T'), with memo PUTs."""
    out = bytearray(b"\x80\x02")
    memo = 0

    def put():
        nonlocal memo
        out.extend(b"q" + bytes([memo]))
        memo += 1

    out += b"]"
    put()
    out += b"("
    for s in images:
        if len(s) < 256:
            out += b"U" + bytes([len(s)]) + s
        else:
            out += b"T" + struct.pack("<i", len(s)) + s
        put()
    out += b"e]"
    put()
    out += b"("
    for b in issame:
        out += b"\x88" if b else b"\x89"
    out += b"e\x86"
    put()
    out += b"."
    return bytes(out)


def test_python2_bytes_pickle_loads(tmp_path):
    images = JPEG_LIKE[:2] + [b"\x89PNG" + bytes(range(256)) * 2, b"\xff" * 3]
    raw = py2_pickle(images, [True, False])
    pickletools.dis(raw, out=io.StringIO())  # a well-formed pickle
    with pytest.raises(UnicodeDecodeError):  # why encoding='bytes' is needed
        pickle.loads(raw)
    path = tmp_path / "py2.bin"
    path.write_bytes(raw)
    ps = load_pairs(path)
    assert ps.images == images and all(type(b) is bytes for b in ps.images)
    assert ps.issame.dtype == np.bool_ and ps.issame.tolist() == [True, False]
    assert len(ps) == 2 and (ps.n_same, ps.n_diff) == (1, 1)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_python3_pickles_every_protocol(tmp_path, protocol):
    # Protocols 0-2 write bytes through _codecs.encode(str, 'latin1'): the one admitted global.
    path = dump(tmp_path / "p.bin", (JPEG_LIKE, [True, False]), protocol)
    ps = load_pairs(path)
    assert ps.images == JPEG_LIKE and ps.issame.tolist() == [True, False]


# --------------------------------------------------------------- structure errors


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"images": [], "issame": []}, "expected a 2-tuple .* got a dict"),
        ((JPEG_LIKE[:2], [True], [1]), "got a tuple of length 3"),
        ((JPEG_LIKE[:3], [True]), "3 images for 1 pairs"),
        ((JPEG_LIKE[:2], [True, False]), "2 images for 2 pairs"),
        (([JPEG_LIKE[0], "text"], [True]), "image 1 is a str, not bytes"),
        (([JPEG_LIKE[0], [b"x"]], [True]), "image 1 is a list, not bytes"),
        ((JPEG_LIKE, [True, 1]), r"issame\[1\] is a int \(1\), not a bool"),
        ((JPEG_LIKE[:2], "1"), "issame must be a list of bools, got str"),
        ((b"abcd", [True, False]), "images must be a list of bytes, got bytes"),
        (([], []), "no pairs"),
    ],
)
def test_wrong_structures_name_the_file(tmp_path, obj, message):
    path = dump(tmp_path / "bad_structure.bin", obj)
    with pytest.raises(PairSetError, match="bad_structure.bin: not a plain pair set: .*" + message):
        load_pairs(path)


def test_not_a_pickle_and_truncated(tmp_path):
    p = tmp_path / "garbage.bin"
    p.write_bytes(b"\xff\xd8\xff\xe0 this is a JPEG, not a pickle")
    with pytest.raises(PairSetError, match="garbage.bin"):
        load_pairs(p)
    good = pickle.dumps((JPEG_LIKE, [True, False]), protocol=4)
    t = tmp_path / "truncated.bin"
    t.write_bytes(good[: len(good) // 2])
    with pytest.raises(PairSetError, match="truncated.bin: not a readable pickle"):
        load_pairs(t)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_pairs(tmp_path / "missing.bin")


def test_pair_set_error_is_value_error():
    assert issubclass(PairSetError, ValueError)


# --------------------------------------------------------------- writing, decoding


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_save_load_round_trip_and_atomic(tmp_path):
    out = tmp_path / "sub" / "rt.bin"
    save_pairs(out, JPEG_LIKE, np.array([True, False]))
    ps = load_pairs(out)
    assert ps.images == JPEG_LIKE and ps.issame.tolist() == [True, False]
    assert ps == PairSet(JPEG_LIKE, np.array([True, False]))  # path not compared
    assert pickle.loads(out.read_bytes())[1] == [True, False]  # plain Python bools on disk
    assert out.read_bytes()[:2] == b"\x80\x04"  # protocol 4
    assert [p.name for p in out.parent.iterdir()] == ["rt.bin"]  # no temp file left
    with pytest.raises(PairSetError, match="3 images for 2 pairs"):
        save_pairs(tmp_path / "bad.bin", JPEG_LIKE[:3], [True, False])
    assert not (tmp_path / "bad.bin").exists()


def test_decode_grey_resize_flip(tmp_path):
    grey = np.arange(8 * 6, dtype=np.uint8).reshape(6, 8) * 5  # W=8, H=6, grey
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, :2, 0] = 200  # left half red
    ps = PairSet([_png(grey), _png(rgb)], np.array([False]))
    x = ps.decode(size=4)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.uint8
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])  # grey -> 3 channels
    assert x[1, 0, :, :2].eq(200).all() and x[1, 0, :, 2:].eq(0).all()  # exact at native size
    f = ps.decode(size=4, flip=True)
    assert torch.equal(f, x.flip(3)) and f[1, 0, :, 2:].eq(200).all()
    assert ps.decode(size=6).shape == (2, 3, 6, 6)
    bad = PairSet([b"not an image", _png(rgb)], np.array([True]), path="x.bin")
    with pytest.raises(PairSetError, match="x.bin: image 0 cannot be decoded"):
        bad.decode(size=4)


# --------------------------------------------------------------- sampling


def _check_pairs(labels, i1, i2, same, n, nfolds=10):
    labels = np.asarray(labels)
    assert len(i1) == len(i2) == len(same) == n
    assert i1.dtype == np.int64 and same.dtype == np.bool_
    assert np.array_equal(labels[i1] == labels[i2], same)
    assert (i1 < i2).all()  # never a sample with itself; canonical order
    assert len({(a, b) for a, b in zip(i1.tolist(), i2.tolist())}) == n  # no duplicates
    # Fold blocks are exactly KFold's test folds; each is same-then-different, balanced.
    kfold = [t for _, t in KFold(nfolds).split(np.arange(n))]
    assert [len(t) for t in kfold] == fold_sizes(n, nfolds)
    for t in kfold:
        s = same[t]
        k = int(s.sum())
        assert abs(k - (len(t) - k)) <= 1
        assert s[:k].all() and not s[k:].any()
    assert abs(int(same.sum()) - n / 2) <= 1


def test_sample_pairs_balance_folds_disjoint_identities():
    labels = np.repeat(np.arange(60), 8)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]  # not grouped by identity
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough identities: nothing borrowed across folds
        i1, i2, same = sample_pairs(labels, 600, seed=3)
    _check_pairs(labels, i1, i2, same, 600)
    folds = [
        set(labels[i1[f * 60 : (f + 1) * 60]]) | set(labels[i2[f * 60 : (f + 1) * 60]]) for f in range(10)
    ]
    for a in range(10):
        for b in range(a + 1, 10):
            assert not folds[a] & folds[b], "an identity straddles two folds"


def test_sample_pairs_deterministic_and_seeded():
    labels = np.repeat(np.arange(30), 5)
    a = sample_pairs(labels, 200, seed=7)
    b = sample_pairs(labels, 200, seed=7)
    c = sample_pairs(labels, 200, seed=8)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_sample_pairs_odd_sizes_and_uneven_identities():
    rng = np.random.default_rng(1)
    labels = np.concatenate([np.full(int(k), i) for i, k in enumerate(rng.integers(1, 12, 80))])
    i1, i2, same = sample_pairs(labels, 437, seed=0, nfolds=7)
    _check_pairs(labels, i1, i2, same, 437, nfolds=7)


def test_sample_pairs_large_pool_uses_rejection_sampling(monkeypatch):
    import nbfacelib.data.pairs as pairs_mod

    # 300 identities x 30 per fold: ~40M different pairs per fold, past the enumeration limit.
    labels = np.repeat(np.arange(3000), 30)
    proposed = []
    propose = pairs_mod._propose

    def spy(rng, groups, same, n):
        proposed.append(same)
        return propose(rng, groups, same, n)

    monkeypatch.setattr(pairs_mod, "_propose", spy)
    i1, i2, same = sample_pairs(labels, 2000, seed=0)
    _check_pairs(labels, i1, i2, same, 2000)
    assert False in proposed  # the different pairs came from rejection sampling


def test_sample_pairs_borrows_across_folds_with_a_warning():
    labels = np.repeat(np.arange(10), 6)  # 1 identity per fold: no different pairs inside a fold
    with pytest.warns(UserWarning, match="drawn across folds"):
        i1, i2, same = sample_pairs(labels, 100, seed=0)
    _check_pairs(labels, i1, i2, same, 100)


def test_sample_pairs_errors():
    labels = np.repeat(np.arange(4), 3)  # 12 same pairs exist
    with pytest.raises(ValueError, match="only 12 distinct same-identity pairs"):
        sample_pairs(labels, 40)
    with pytest.raises(ValueError, match="at least 2 identities"):
        sample_pairs(np.zeros(10), 20)
    with pytest.raises(ValueError, match="too small"):
        sample_pairs(labels, 10)


# --------------------------------------------------------------- making pair sets


class TinyFaces:
    """In-memory data set: identity k is a flat colour (one channel per digit of k)."""

    def __init__(self, n_ids=24, per_id=5, size=16):
        self.labels = np.repeat(np.arange(n_ids), per_id)
        self.size = size

    def __len__(self):
        return len(self.labels)

    def colour(self, label):
        return np.array([40 + 8 * (label % 24), 30 * (label // 24), 100 + 5 * (label % 7)], np.uint8)

    def __getitem__(self, i):
        lab = int(self.labels[i])
        img = np.broadcast_to(self.colour(lab)[:, None, None], (3, self.size, self.size)).copy()
        img[:, 0, 0] = i % 256  # a per-sample pixel so images differ
        return torch.from_numpy(img), lab


def test_make_pair_set_excludes_training_identities(tmp_path):
    ds = TinyFaces()
    train = list(range(8))
    ps = make_pair_set(ds, 40, seed=1, exclude_identities=train, quality=95, nfolds=4)
    assert len(ps) == 40 and ps.n_same == 20 and len(ps.images) == 80
    assert all(b[:2] == b"\xff\xd8" for b in ps.images)  # JPEG
    x = ps.decode(size=16).numpy().astype(int)
    # Recover each image's identity from its colour: none from the training split, and the
    # pair (2i, 2i+1) has the same identity exactly when issame[i].
    centre = x[:, :, 8, 8]
    table = np.stack([ds.colour(k) for k in range(24)]).astype(int)
    ids = np.abs(centre[:, None, :] - table[None]).sum(2).argmin(1)
    assert not set(ids.tolist()) & set(train)
    assert np.array_equal(ids[0::2] == ids[1::2], ps.issame)
    out = save_pairs(tmp_path / "tiny.bin", ps.images, ps.issame)
    assert load_pairs(out) == ps


def test_encode_image_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        encode_image(torch.zeros(3, 4, 4))


# --------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch):
    """``nbfacelib.cli`` with only this command registered (others' modules may be mid-edit)."""
    from nbfacelib import cli

    assert "nbfacelib.commands.pairs" in cli.COMMAND_MODULES
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["nbfacelib.commands.pairs"])
    return cli


def test_cli_pairs_make_and_info(tmp_path, monkeypatch, capsys, cli):
    from nbfacelib.commands import pairs as cmd

    monkeypatch.setattr(cmd, "_open_dataset", lambda uri: TinyFaces() if uri == "tiny://" else None)
    ids = tmp_path / "train_ids.txt"
    ids.write_text("# training split\n0\n1\n2\n")
    out = tmp_path / "p.bin"
    rc = cli.main(
        [
            "pairs",
            "make",
            "tiny://",
            "--pairs",
            "40",
            "--out",
            str(out),
            "--exclude-ids",
            str(ids),
            "--folds",
            "4",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "40 pairs (20 same, 20 different), 3 identities excluded" in capsys.readouterr().out
    ps = load_pairs(out)
    assert len(ps) == 40
    rc = cli.main(["pairs", "info", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "pairs:      40" in text and "same:       20" in text and "different:  20" in text
    assert "JPEG 16x16 RGB" in text
    # --train-ids N drops the first N identities.
    rc = cli.main(
        ["pairs", "make", "tiny://", "--pairs", "20", "--out", str(out), "--train-ids", "20", "--folds", "2"]
    )
    assert rc == 0 and "20 identities excluded" in capsys.readouterr().out


def test_cli_pairs_errors(tmp_path, capsys, cli):
    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(_Evil(os.system, ("true",))))
    assert cli.main(["pairs", "info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "evil.bin" in err and "refused" in err and "Traceback" not in err


def test_cli_pairs_make_on_orl(tmp_path, capsys, cli):
    out = tmp_path / "orl.bin"
    args = ["pairs", "make", "orl", "--pairs", "200", "--out", str(out), "--train-ids", "20"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 20 identities left, 2 per fold: no cross-fold borrowing
        assert cli.main(args + ["--no-progress"]) == 0
    assert "200 pairs (100 same, 100 different), 20 identities excluded" in capsys.readouterr().out
    assert cli.main(["pairs", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pairs:      200" in text and "JPEG 112x112 RGB" in text
    x = load_pairs(out).decode(size=112)
    assert x.shape == (400, 3, 112, 112)
    assert (x[:, 0].int() - x[:, 1].int()).abs().max() <= 2  # ORL is grey: channels agree (JPEG)


class BatchedTinyFaces(TinyFaces):
    """Adds torch's batched-fetch protocol; records the batch sizes asked for."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def __getitems__(self, indices):
        self.calls.append(list(indices))
        return [TinyFaces.__getitem__(self, i) for i in indices]

    def __getitem__(self, i):
        raise AssertionError("single-item access used although __getitems__ exists")


def test_make_pair_set_uses_batched_fetch_and_checks_labels():
    plain = make_pair_set(TinyFaces(n_ids=60, per_id=6), 300, seed=2, nfolds=5)
    ds = BatchedTinyFaces(n_ids=60, per_id=6)
    batched = make_pair_set(ds, 300, seed=2, nfolds=5)
    assert batched == plain
    fetched = [j for call in ds.calls for j in call]
    assert [len(c) for c in ds.calls][0] == 256 and len(fetched) == len(set(fetched))  # each image once
    assert len(fetched) >= len(set(plain.images))

    class Liar(TinyFaces):
        def __getitem__(self, i):
            img, lab = super().__getitem__(i)
            return img, lab + 1

    with pytest.raises(ValueError, match=r"has label \d+ but dataset.labels"):
        make_pair_set(Liar(), 20, nfolds=2)
