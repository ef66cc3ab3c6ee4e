"""Published protocols (LFW View 2, CFP-FP / CFP-FF, the CFP held-out split): decoding, order
and fold equality with the evaluation's unshuffled 10-fold split.

The first tests build miniature LFW / CFP trees in a temporary folder (no real data); the
``realdata`` ones read the data root's LFW and CFP and skip when they are absent."""

import io

import numpy as np
import pytest
from PIL import Image

from nbfacelib.cli import main
from nbfacelib.data.folder import FolderDataset
from nbfacelib.data.pairs import load_pairs
from nbfacelib.data.protocols import (
    ProtocolError,
    cfp_image_path,
    lfw_image_path,
    open_pair_set,
    read_cfp_heldout,
    read_cfp_pairs,
    read_lfw_pairs,
    read_protocol,
)
from nbfacelib.eval.verification import _folds


def _jpeg(path, size=(112, 112), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value % 256, np.uint8)).save(path, quality=90)


# ------------------------------------------------------------------------ miniature LFW
@pytest.fixture
def mini_lfw(tmp_path):
    """2 folds x (2 same + 2 different) pairs in pairs.txt's layout; each person has 12 images
    so that 2-digit numbers (10, 12) must be written as 0010, 0012."""
    root = tmp_path / "lfw"
    people = ["Ann_A", "Bob_B", "Cy_C", "Di_D"]
    for k, name in enumerate(people):
        for i in range(1, 13):
            _jpeg(root / "images" / name / f"{name}_{i:04d}.jpg", value=10 * k + i)
    lines = [
        "2\t2",
        "Ann_A\t1\t12",
        "Bob_B\t2\t10",
        "Ann_A\t3\tBob_B\t4",
        "Cy_C\t1\tDi_D\t1",
        "Cy_C\t5\t6",
        "Di_D\t11\t1",
        "Ann_A\t7\tDi_D\t8",
        "Bob_B\t9\tCy_C\t12",
    ]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lfw_pairs_decode_1_based_4_digit_numbers_in_file_order(mini_lfw):
    p = read_lfw_pairs(mini_lfw)
    assert len(p) == 8 and p.nfolds == 2
    rel = [(a.relative_to(mini_lfw).as_posix(), b.name) for a, b in zip(p.first, p.second)]
    assert rel[0] == ("images/Ann_A/Ann_A_0001.jpg", "Ann_A_0012.jpg")
    assert rel[1] == ("images/Bob_B/Bob_B_0002.jpg", "Bob_B_0010.jpg")
    assert rel[3] == ("images/Cy_C/Cy_C_0001.jpg", "Di_D_0001.jpg")
    assert rel[5] == ("images/Di_D/Di_D_0011.jpg", "Di_D_0001.jpg")
    assert p.issame.tolist() == [True, True, False, False] * 2
    assert p.source[0].endswith("pairs.txt:2") and p.source[7].endswith("pairs.txt:9")
    with pytest.raises(ValueError, match="1-based"):
        lfw_image_path(mini_lfw, "Ann_A", 0)


def test_lfw_folds_are_the_evaluation_folds(mini_lfw):
    p = read_lfw_pairs(mini_lfw)
    folds = _folds(len(p), p.nfolds)
    for k, (_, test) in enumerate(folds):
        assert test.tolist() == list(range(len(p)))[p.fold(k)]
        assert p.issame[test].tolist() == [True, True, False, False]


def test_lfw_bad_protocol_files_name_the_line(mini_lfw):
    text = (mini_lfw / "pairs.txt").read_text().splitlines()
    bad = list(text)
    bad[3] = "Ann_A\t3\t4"  # a same-pair line where a different pair belongs
    (mini_lfw / "pairs.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(ProtocolError, match=r"pairs.txt:4: expected a different pair"):
        read_lfw_pairs(mini_lfw)
    bad = list(text)
    bad[2] = "Bob_B\t2\tx"
    (mini_lfw / "pairs.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(ProtocolError, match=r"pairs.txt:3: .*'x'"):
        read_lfw_pairs(mini_lfw)
    (mini_lfw / "pairs.txt").write_text("\n".join(text[:-1]) + "\n")
    with pytest.raises(ProtocolError, match="header says 2 folds x 2 x 2 pairs = 8 lines, found 7"):
        read_lfw_pairs(mini_lfw)
    (mini_lfw / "pairs.txt").write_text("\n".join(text) + "\n")
    (mini_lfw / "images" / "Di_D" / "Di_D_0011.jpg").unlink()
    with pytest.raises(ProtocolError, match=r"pairs.txt:7: image .*Di_D_0011.jpg does not exist"):
        read_lfw_pairs(mini_lfw)


def test_pairs_make_writes_the_protocol_with_the_files_bytes(mini_lfw, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    out = tmp_path / "lfw.bin"
    assert main(["pairs", "make", "lfw", "--out", str(out), "--no-progress"]) == 0
    assert "in the publisher's order" in capsys.readouterr().out
    ps = load_pairs(out)
    p = read_lfw_pairs(mini_lfw)
    assert ps.issame.tolist() == p.issame.tolist()
    # 112x112 JPEGs are copied verbatim: image 2i / 2i+1 are the protocol's files
    assert ps.images[0::2] == [f.read_bytes() for f in p.first]
    assert ps.images[1::2] == [f.read_bytes() for f in p.second]
    assert open_pair_set("lfw") == ps  # the name resolves through the manifest to the same pairs
    assert main(["pairs", "make", "lfw", "--pairs", "10", "--out", str(out)]) == 1
    assert "published protocol" in capsys.readouterr().err


def test_lfw_evalset_reads_each_image_once_in_protocol_order(mini_lfw, tmp_path, monkeypatch):
    from nbfacelib.data.manifest import DatasetNotFoundError
    from nbfacelib.eval.evalsets import open_evalset

    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    es = open_evalset("lfw", input_size=32)
    p = read_lfw_pairs(mini_lfw)
    assert es.n_pairs == 8 and es.issame.tolist() == p.issame.tolist()
    assert es.images.shape == (15, 3, 32, 32)  # 16 image references, Di_D_0001 twice
    # pair 0 is Ann_A_0001 / Ann_A_0012, written with the values 1 and 12 (see the fixture)
    assert es.images[es.idx1[0]].float().mean() == pytest.approx(1, abs=1.5)
    assert es.images[es.idx2[0]].float().mean() == pytest.approx(12, abs=1.5)
    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="lfw"):
        open_evalset("lfw")


def test_eval_resolves_the_protocol_by_name(mini_lfw, tmp_path, monkeypatch):
    """What `nbface eval RUN --data lfw` reads: LFW's own pairs, at the model's input size."""
    from nbfacelib.eval.pair_sources import PairSourceError, open_pairs

    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path))
    es, native = open_pairs("lfw", size=32)
    assert native == (112, 112) and es.n_pairs == 8 and es.images.shape[-2:] == (32, 32)
    assert es.issame.tolist() == read_lfw_pairs(mini_lfw).issame.tolist()
    with pytest.raises(PairSourceError, match="112x112 but the model takes 32x32"):
        open_pairs("lfw", size=32, resize=False)


# ------------------------------------------------------------------------ miniature CFP
@pytest.fixture
def mini_cfp(tmp_path):
    """IDs 449-452 (two under train/, two under test/), 2 frontal + 2 profile each; FP and FF
    splits 01..10, the first nine empty-free copies of one small split so indices are checked."""
    root = tmp_path / "cfp"
    ids = [449, 450, 451, 452]
    f_list, p_list = [], []
    for ident in ids:
        split = "train" if ident <= 450 else "test"
        for pose, lst, size in (("frontal", f_list, (100, 128)), ("profile", p_list, (128, 90))):
            for n in (1, 2):
                _jpeg(root / "images" / split / f"{ident:03d}" / pose / f"{n:02d}.jpg", size, ident + n)
                lst.append(f"../Data/Images/{ident:03d}/{pose}/{n:02d}.jpg")
    proto = root / "Protocol"
    proto.mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(f_list, 1)))
    (proto / "Pair_list_P.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(p_list, 1)))
    for kind in ("FP", "FF"):
        for s in range(1, 11):
            d = proto / "Split" / kind / f"{s:02d}"
            d.mkdir(parents=True)
            if s < 10:  # splits 1-9: IDs 449/450 (train); split 10: 451/452 (test)
                same, diff = ["1,2", "4,3"], ["1,3", "3,2"]
            else:
                same, diff = ["5,6", "8,7"], ["5,8", "7,6"]
            (d / "same.txt").write_text("\n".join(same) + "\n")
            (d / "diff.txt").write_text("\n".join(diff) + "\n")
    return root


def test_cfp_paths_insert_train_or_test():
    assert (
        cfp_image_path("R", "../Data/Images/450/frontal/01.jpg").as_posix()
        == "R/images/train/450/frontal/01.jpg"
    )
    assert (
        cfp_image_path("R", "../Data/Images/451/profile/04.jpg").as_posix()
        == "R/images/test/451/profile/04.jpg"
    )
    with pytest.raises(ValueError, match="not a CFP image path"):
        cfp_image_path("R", "../Data/451/01.jpg")


def test_cfp_fp_order_and_poses(mini_cfp):
    p = read_cfp_pairs(mini_cfp, "FP")
    assert len(p) == 40 and p.nfolds == 10
    assert p.issame.tolist() == [True, True, False, False] * 10  # each split: same, then different
    rel = lambda q: q.relative_to(mini_cfp / "images").as_posix()  # noqa: E731
    # split 01 line "4,3" of same.txt: frontal #4 (ID 450, 02.jpg), profile #3 (ID 450, 01.jpg)
    assert (rel(p.first[1]), rel(p.second[1])) == ("train/450/frontal/02.jpg", "train/450/profile/01.jpg")
    assert all(a.parent.name == "frontal" and b.parent.name == "profile" for a, b in zip(p.first, p.second))
    assert rel(p.first[36]) == "test/451/frontal/01.jpg" and p.source[36].endswith("FP/10/same.txt:1")
    ff = read_cfp_pairs(mini_cfp, "FF")
    assert all(b.parent.name == "frontal" for b in ff.second)
    for k, (_, test) in enumerate(_folds(len(p), 10)):
        assert test.tolist() == list(range(40))[p.fold(k)]


def test_cfp_heldout_is_split_10_only(mini_cfp):
    p = read_cfp_heldout(mini_cfp, nfolds=2)
    assert len(p) == 4 and p.issame.tolist() == [True, False, True, False]
    assert {a.parent.parent.name for a in p.first + p.second} == {"451", "452"}
    # the re-blocked folds keep the listed order: same #1 + diff #1, then same #2 + diff #2
    assert [s.rsplit("/", 1)[-1] for s in p.source] == [
        "same.txt:1",
        "diff.txt:1",
        "same.txt:2",
        "diff.txt:2",
    ]
    with pytest.raises(ProtocolError, match="do not divide into 3 folds"):
        read_cfp_heldout(mini_cfp, nfolds=3)


def test_cfp_images_are_padded_to_112_when_encoded(mini_cfp):
    ps = read_protocol("cfp_fp", mini_cfp).to_pair_set(size=112)
    for b in ps.images[:4]:
        with Image.open(io.BytesIO(b)) as im:
            assert im.size == (112, 112) and im.format == "JPEG"
    # frontal 100x128 -> 88x112 centred: black bars of 12 columns each side
    arr = np.asarray(Image.open(io.BytesIO(ps.images[0])))
    assert arr[:, :10].max() < 20 and arr[:, 20:90].min() > 200 - 20


def test_cfp_bad_index_names_the_file(mini_cfp):
    (mini_cfp / "Protocol" / "Split" / "FP" / "03" / "diff.txt").write_text("1,3\n9,2\n")
    with pytest.raises(ProtocolError, match=r"FP/03/diff.txt:2: index 9 is not in Pair_list_F.txt"):
        read_cfp_pairs(mini_cfp, "FP")


# ------------------------------------------------------------------------ the real data sets
@pytest.mark.realdata
def test_real_lfw_folds_equal_pairs_txt(real_data):
    root = real_data("lfw")
    p = read_lfw_pairs(root)
    assert len(p) == 6000 and p.nfolds == 10
    lines = (root / "pairs.txt").read_text().splitlines()
    assert lines[0].split() == ["10", "300"]
    assert (p.first[0].name, p.second[0].name) == ("Abel_Pacheco_0001.jpg", "Abel_Pacheco_0004.jpg")
    for k, (_, test) in enumerate(_folds(6000, 10)):
        assert test.tolist() == list(range(600 * k, 600 * (k + 1)))
        assert p.issame[test].tolist() == [True] * 300 + [False] * 300
        # the fold's first different pair is line 600k + 302 of pairs.txt
        name1, i, name2, j = lines[600 * k + 301].split()
        assert p.first[600 * k + 300] == lfw_image_path(root, name1, int(i))
        assert p.second[600 * k + 300] == lfw_image_path(root, name2, int(j))


@pytest.mark.realdata
def test_real_cfp_protocols_folds_and_identities(real_data):
    root = real_data("cfp_fp")
    fp = read_cfp_pairs(root, "FP")
    assert len(fp) == 7000 and fp.nfolds == 10
    for k, (_, test) in enumerate(_folds(7000, 10)):
        assert fp.issame[test].tolist() == [True] * 350 + [False] * 350
        ids = {int(q.parent.parent.name) for q in fp.first[fp.fold(k)] + fp.second[fp.fold(k)]}
        assert min(ids) == 50 * k + 1 and max(ids) == 50 * (k + 1)  # split k+1: 50 people
    assert all(a.parent.name == "frontal" and b.parent.name == "profile" for a, b in zip(fp.first, fp.second))
    ff = read_cfp_pairs(root, "FF")
    assert len(ff) == 7000 and all(b.parent.name == "frontal" for b in ff.second)
    held = read_cfp_heldout(root)
    assert len(held) == 700 and held.issame.tolist() == ([True] * 35 + [False] * 35) * 10
    assert {int(q.parent.parent.name) for q in held.first + held.second} == set(range(451, 501))


@pytest.mark.realdata
def test_real_cfp_training_set_is_ids_001_450_with_poses(real_data):
    real_data("cfp")
    from nbfacelib.data import open_dataset

    ds = open_dataset("cfp", size=None)
    assert isinstance(ds, FolderDataset)
    assert ds.num_classes == 450 and len(ds) == 6300 and ds.classes[0] == "001" and ds.classes[-1] == "450"
    assert ds.subfolders.count("frontal") == 4500 and ds.subfolders.count("profile") == 1800


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["lfw", "cfp_fp"])
def test_real_data_verify_passes(real_data, name, capsys):
    real_data(name)
    assert main(["data", "verify", name]) == 0
    out = capsys.readouterr().out
    assert f"{name}: OK" in out and "FAIL" not in out and "unknown" not in out
