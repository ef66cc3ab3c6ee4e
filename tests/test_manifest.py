"""Manifests (load, verify, missing / altered data sets), dataset URIs and ``nbface data``."""

import hashlib
import shutil
import sys
import types

import numpy as np
import pytest

from nbfacelib.data import open_dataset
from nbfacelib.data.datasets import parse_synthetic
from nbfacelib.data.folder import FolderDataset, write_image_folder
from nbfacelib.data.manifest import (
    FORMATS,
    DatasetIntegrityError,
    DatasetNotFoundError,
    image_listing,
    list_manifests,
    load_manifest,
    manifest_dir,
    verify,
)
from nbfacelib.data.recordio import RecDataset, write_image_rec
from nbfacelib.data.root import data_root

EXPECTED = {
    "synthetic", "orl", "ms1mv2", "ms1mv3", "glint360k", "webface42m", "casia_webface",
    "lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "ijbb", "ijbc", "cfp", "cfp_ff", "cfp_heldout",
}  # fmt: skip
PAIRS = {"lfw": 6000, "cfp_fp": 7000, "cfp_ff": 7000, "cfp_heldout": 700, "agedb_30": 6000, "calfw": 6000,
         "cplfw": 6000}  # fmt: skip
PROTOCOLS = {"lfw", "cfp_fp", "cfp_ff", "cfp_heldout"}  # built from the data set's own files


@pytest.fixture
def orl_copy(tmp_path, orl_pgm, monkeypatch):
    """A private data root holding a copy of the original ORL (PGM) that a test may damage."""
    shutil.copytree(orl_pgm, tmp_path / "orl_faces")
    for p in (tmp_path / "orl_faces").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    return tmp_path / "orl_faces"


# ---------------------------------------------------------------------------- manifests
def test_every_manifest_loads_with_the_required_fields():
    assert EXPECTED <= set(list_manifests())
    for name in EXPECTED:
        m = load_manifest(name)
        assert m.name == name and m.format in FORMATS and m.obtain.strip()
        assert m.title and (m.location or m.format == "synthetic")
        assert not m.location or not m.location.startswith("/")  # relative to the data root
        assert "http" not in m.obtain.lower()  # nothing to fetch automatically
        if name in PAIRS:
            assert m.format == ("pairs-protocol" if name in PROTOCOLS else "pairs-bin")
            assert m.pairs == PAIRS[name] == m.protocol["pairs"] and m.protocol["folds"] == 10
        if name in PROTOCOLS:  # counted here, with the checksums of the protocol files
            assert m.counts_verified and m.processing.strip() and m.protocol["reader"] == name
            assert all(v for v in m.checksums["files"].values())
    assert load_manifest("orl").images == 400 and load_manifest("orl").identities == 40
    assert load_manifest("ms1mv2").format == "rec" and load_manifest("ijbc").format == "ijb"
    with pytest.raises(ValueError, match="unknown data set 'nope'.*orl"):
        load_manifest("nope")


def test_unknown_checksums_are_null_not_invented():
    # orl and the LFW / CFP protocols were hashed from the files here (verified by the
    # realdata tests of test_protocols.py); every other checksum is unknown
    for name in EXPECTED - {"orl", "synthetic", "cfp"} - PROTOCOLS:
        cs = load_manifest(name).checksums
        values = list((cs.get("files") or {}).values()) + [cs.get("tree_sha256")]
        assert all(v is None for v in values), name


def test_listing_scheme_by_hand(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.png").write_bytes(b"two")
    (tmp_path / "a.jpg").write_bytes(b"one")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert image_listing(tmp_path) == f"{sha(b'one')}  a.jpg\n{sha(b'two')}  b/2.png\n"


def test_orl_manifest_checksum_matches_shipped_listing():
    m = load_manifest("orl")
    listing = (manifest_dir() / m.checksums["listing"]).read_text()
    assert len(listing.splitlines()) == 400
    assert hashlib.sha256(listing.encode()).hexdigest() == m.checksums["tree_sha256"]


def test_verify_orl_passes(orl_root):
    report = verify("orl")
    assert report.ok and report.path == orl_root
    statuses = {c.what: c.status for c in report.checks}
    assert statuses["identities"] == statuses["images"] == statuses["tree sha256"] == "ok"


def test_verify_checks_the_shipped_orl_against_its_own_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))  # an empty data root: the shipped copy
    m = load_manifest("orl")
    report = verify("orl")
    assert report.ok and report.path == m.bundled_path()
    tree = next(c for c in report.checks if c.what == "tree sha256")
    assert tree.expected == m.bundled["checksums"]["tree_sha256"] != m.checksums["tree_sha256"]
    assert {c.what: c.status for c in report.checks}["sha256 README"] == "ok"


def test_verify_altered_copy_fails_naming_data_set_and_file(orl_copy):
    assert verify("orl").ok  # the copy is intact
    f = orl_copy / "s3" / "4.pgm"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(DatasetIntegrityError, match=r"'orl'.*altered") as e:
        verify("orl")
    msg = str(e.value)
    assert "changed: s3/4.pgm" in msg and "Olivetti" in msg  # which file, and how to obtain it
    assert not e.value.report.ok


def test_verify_removed_file_fails(orl_copy):
    (orl_copy / "s40" / "10.pgm").unlink()
    with pytest.raises(DatasetIntegrityError, match="'orl'") as e:
        verify("orl")
    assert "expected 400, found 399" in str(e.value) and "missing: s40/10.pgm" in str(e.value)
    report = verify("orl", strict=False)
    assert not report.ok and {c.what for c in report.failures} == {"images", "tree sha256"}


def test_missing_data_set_error_says_how_to_obtain(tmp_path, monkeypatch):
    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="'ms1mv2'") as e:
        verify("ms1mv2")
    assert str(tmp_path / "faces_emore") in str(e.value)
    assert load_manifest("ms1mv2").obtain.strip() in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="'ms1mv2'.*InsightFace"):
        open_dataset("ms1mv2")
    with pytest.raises(DatasetNotFoundError, match="lfw.bin"):
        verify("lfw")
    assert verify("synthetic").ok  # generated, never missing


def test_rec_manifest_counts_and_manifest_dir_override(tmp_path, monkeypatch):
    mdir, root = tmp_path / "manifests", tmp_path / "data"
    mdir.mkdir()
    (mdir / "tiny.yaml").write_text(
        "name: tiny\nformat: rec\nlocation: tiny_rec\nidentities: 2\nimages: 3\n"
        "counts_verified: true\nrequired: [train.rec, train.idx]\nobtain: make it yourself\n"
    )
    monkeypatch.setenv("NBFACELIB_MANIFESTS", str(mdir))
    monkeypatch.setenv("NBFACELIB_DATA", str(root))
    assert list_manifests() == ["tiny"]
    with pytest.raises(DatasetNotFoundError, match="make it yourself"):
        verify("tiny")
    img = np.zeros((8, 8, 3), np.uint8)
    write_image_rec(root / "tiny_rec", [(img, 0), (img, 1), (img, 1)])
    assert verify("tiny").ok
    assert isinstance(open_dataset("tiny"), RecDataset)
    (root / "tiny_rec" / "train.idx").unlink()
    with pytest.raises(DatasetIntegrityError, match="file train.idx"):
        verify("tiny")


def test_pairs_bin_and_ijb_presence_counts_are_soft_when_unverified(tmp_path, monkeypatch):
    from nbfacelib.data.folder import encode_image
    from nbfacelib.data.pairs import save_pairs

    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    jpg = encode_image(np.zeros((8, 8, 3), np.uint8), "jpg")
    save_pairs(tmp_path / "glint360k" / "agedb_30.bin", [jpg] * 20, [True, False] * 5)  # an alternative place
    report = verify("agedb_30")
    assert report.ok and report.path == tmp_path / "glint360k" / "agedb_30.bin"
    assert {c.what: c.status for c in report.checks} == {"pairs": "skipped", "sha256 .": "unknown"}
    with pytest.warns(UserWarning, match="expected 6000, found 10.*unverified"):
        report = verify("agedb_30", deep=True)
    assert report.ok  # published counts nobody here could check only warn

    # a protocol (cfp_fp) found as a ready .bin: the folder's checksums do not apply, and its
    # counts, verified on the folder, only warn for this other copy
    save_pairs(tmp_path / "glint360k" / "cfp_fp.bin", [jpg] * 20, [True, False] * 5)
    report = verify("cfp_fp")
    assert report.ok and [c.what for c in report.checks] == ["form", "pairs"]
    with pytest.warns(UserWarning, match="expected 7000, found 10"):
        assert verify("cfp_fp", deep=True).ok

    meta = tmp_path / "IJB_release" / "IJBB" / "meta"
    meta.mkdir(parents=True)
    for f in ("ijbb_face_tid_mid.txt", "ijbb_template_pair_label.txt", "ijbb_name_5pts_score.txt"):
        (meta / f).write_text("x 1\n" * 3)
    with pytest.raises(
        DatasetIntegrityError, match="'ijbb'.*file loose_crop: expected present, found missing"
    ):
        verify("ijbb")
    (meta.parent / "loose_crop").mkdir()
    with pytest.warns(UserWarning, match="images .faces.: expected 227630, found 3"):
        assert verify("ijbb").ok


# ---------------------------------------------------------------------------- URIs
def test_open_dataset_schemes(orl_root, tmp_path):
    under_root = ("folder:orl_faces", "orl_faces") if orl_root.parent == data_root() else ()
    for uri in ("orl", "manifest:orl", *under_root, f"folder:{orl_root}", str(orl_root)):
        ds = open_dataset(uri)
        assert isinstance(ds, FolderDataset) and len(ds) == 400 and ds.root == orl_root, uri
    assert open_dataset("orl", size=None)[0][0].shape == (3, 112, 92)
    write_image_rec(tmp_path / "r", [(np.zeros((6, 6, 3), np.uint8), 0)] * 2)
    for uri in (f"rec:{tmp_path / 'r'}", f"rec:{tmp_path / 'r' / 'train.rec'}", str(tmp_path / "r")):
        ds = open_dataset(uri, size=8)
        assert isinstance(ds, RecDataset) and len(ds) == 2 and ds[1][0].shape == (3, 8, 8), uri
    with pytest.raises(ValueError, match=r"unknown data set scheme 'foo'.*folder:, rec:, synthetic:"):
        open_dataset("foo:bar")
    with pytest.raises(FileNotFoundError, match="neither a manifest name"):
        open_dataset("no_such_thing")
    with pytest.raises(ValueError, match="'lfw' is a pairs-protocol evaluation set.*open_pair_set"):
        open_dataset("lfw")


def test_relative_paths_from_cwd_when_not_under_data_root(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "mine", [(np.zeros((4, 4, 3), np.uint8), 0)])
    monkeypatch.chdir(tmp_path)
    assert len(open_dataset("./mine")) == 1 and len(open_dataset("folder:mine")) == 1


def test_synthetic_uri_calls_synthetic_faces(monkeypatch):
    calls = []

    class FakeFaces:
        def __init__(self, **kw):
            calls.append(kw)

    fake = types.ModuleType("nbfacelib.data.synthetic")
    fake.SyntheticFaces = FakeFaces
    monkeypatch.setitem(sys.modules, "nbfacelib.data.synthetic", fake)
    open_dataset("synthetic:ids=50,per_id=4,seed=3,difficulty=hard,identity_offset=1000", size=160)
    assert calls[-1] == dict(
        num_identities=50, per_identity=4, seed=3, difficulty="hard", identity_offset=1000, size=160
    )
    open_dataset("synthetic")  # the manifest's defaults
    assert calls[-1] == dict(
        num_identities=1000, per_identity=20, seed=0, difficulty="medium", identity_offset=0, size=112
    )
    with pytest.raises(ValueError, match="unknown parameter 'idz'"):
        parse_synthetic("idz=3")
    with pytest.raises(ValueError, match="key=value"):
        parse_synthetic("ids")


def test_real_synthetic_through_uri_and_convert(tmp_path):
    from nbfacelib.data import convert_dataset

    ds = open_dataset("synthetic:ids=3,per_id=2,seed=5")
    x, y = ds[3]
    assert len(ds) == 6 and x.shape == (3, 112, 112) and x.dtype.is_floating_point is False and y == 1
    convert_dataset("synthetic:ids=3,per_id=2,seed=5", tmp_path / "s.rec")
    rec = RecDataset(tmp_path / "s.rec")
    assert rec.labels.tolist() == [0, 0, 1, 1, 2, 2] and rec.num_classes == 3
    diff = (rec[3][0].int() - x.int()).abs().float().mean()
    assert diff < 3  # JPEG q95 of the same rendered face


# ---------------------------------------------------------------------------- CLI
def test_cli_data_commands(orl_root, tmp_path, monkeypatch, capsys):
    from nbfacelib.cli import main

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED) and "present" in out
    assert main(["data", "verify", "orl"]) == 0 and "orl: OK" in capsys.readouterr().out
    assert main(["data", "info", "orl"]) == 0
    out = capsys.readouterr().out
    assert "format: folder" in out and "identities: 40" in out and "images: 400" in out

    assert main(["data", "convert", "orl", str(tmp_path / "orl.rec"), "--no-progress"]) == 0
    assert main(["data", "info", str(tmp_path / "orl.rec")]) == 0
    out = capsys.readouterr().out
    assert "format: rec" in out and "identities: 40" in out and "insightface (mxnet framing)" in out
    old = tmp_path / "old" / "train.rec"
    assert main(["data", "convert", "orl", str(old), "--layout", "dmlc-2015", "--no-progress"]) == 0
    assert old.read_bytes()[:4] == bytes.fromhex("0a23d73e")  # 0x3ed7230a little-endian
    assert main(["data", "info", str(old)]) == 0 and "dmlc-2015 framing" in capsys.readouterr().out
    dst = tmp_path / "orl_png"
    assert (
        main(["data", "convert", f"rec:{tmp_path / 'orl.rec'}", str(dst), "--size", "112", "--no-progress"])
        == 0
    )
    back = FolderDataset(dst, size=None)
    assert len(back) == 400 and back.labels.tolist() == FolderDataset(orl_root).labels.tolist()
    assert back[0][0].shape == (3, 112, 112)

    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path / "empty"))
    assert main(["data", "verify", "orl"]) == 0  # the copy shipped with the package
    assert "orl: OK" in capsys.readouterr().out
    assert main(["data", "verify", "agedb_30"]) == 1
    err = capsys.readouterr().err
    assert "'agedb_30'" in err and "How to obtain it" in err and "iBUG" in err
