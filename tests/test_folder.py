"""Image folders: natural label order, ignored files, the size rule, grey -> RGB, the shipped ORL
faces, the writer."""

import numpy as np
import pytest
import torch
from PIL import Image

from nbfacelib.data.folder import (
    FolderDataset,
    decode_image,
    fit_square,
    natural_key,
    write_image_folder,
)


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)


def test_natural_sort():
    names = ["s10", "s2", "s1", "S3", "a", "s02b", "s2a"]
    assert sorted(names, key=natural_key) == ["a", "s1", "s2", "s2a", "s02b", "S3", "s10"]


def test_labels_follow_natural_folder_order_and_junk_is_ignored(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("s10", 2), ("s2", 1), ("s1", 3)):
        for i in range(n):
            _save(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (5, 5, 3), dtype=np.uint8))
    (tmp_path / "README").write_text("not an identity")
    (tmp_path / "s1" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "s2" / ".thumb.png").write_bytes(b"junk")
    _save(tmp_path / "s2" / "10.JPG", rng.integers(0, 255, (5, 5, 3), dtype=np.uint8))
    _save(tmp_path / "s2" / "9.bmp", rng.integers(0, 255, (5, 5, 3), dtype=np.uint8))
    ds = FolderDataset(tmp_path, size=None)
    assert ds.classes == ["s1", "s2", "s10"] and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [p.name for p in ds.paths[3:6]] == ["0.png", "9.bmp", "10.JPG"]
    assert isinstance(ds.labels, np.ndarray) and ds.class_to_idx["s10"] == 2


def test_orl_loads_by_name_with_no_data_root(tmp_path, monkeypatch):
    from nbfacelib.data import open_dataset
    from nbfacelib.data.root import bundled_root

    monkeypatch.setenv("NBFACELIB_DATA", str(tmp_path / "empty"))  # nothing under the data root
    ds = open_dataset("orl")  # the copy shipped with the package; its README/NOTICE are ignored
    shipped = bundled_root() / "orl_faces"
    assert isinstance(ds, FolderDataset) and ds.root == shipped
    assert len(ds) == 400 and ds.num_classes == 40
    assert ds.classes[:3] == ["s1", "s2", "s3"] and ds.classes[-1] == "s40"
    assert np.bincount(ds.labels).tolist() == [10] * 40
    assert ds.paths[11].relative_to(shipped).with_suffix("").as_posix() == "s2/2"
    for i in (0, 137, 399):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 112, 112) and y == ds.labels[i]
        grey = np.array(Image.open(ds.paths[i]))
        assert grey.shape == (112, 92)  # ORL: 92 wide, 112 high, grey
        # rule: longer side already 112 -> no resampling; 10 black columns each side
        assert x[:, :, :10].max() == 0 and x[:, :, 102:].max() == 0
        for c in range(3):
            assert torch.equal(x[c, :, 10:102], torch.from_numpy(grey))
    assert "Olivetti Research Laboratory" in (shipped / "NOTICE").read_text()


def test_shipped_orl_pixels_equal_the_original_pgm_files(orl_pgm):
    """Lossless: PGM files rebuilt from the shipped PNGs (header + pixels) are byte for byte the
    distribution's files, whose sha256 listing ships as data_manifests/orl.sha256."""
    from nbfacelib.data.manifest import image_listing, load_manifest, manifest_dir

    m = load_manifest("orl")
    assert image_listing(orl_pgm) == (manifest_dir() / m.checksums["listing"]).read_text()
    shipped = FolderDataset(m.bundled_path(), size=None)
    original = FolderDataset(orl_pgm, size=None)
    assert shipped.labels.tolist() == original.labels.tolist()
    for i in (0, 211, 399):
        assert torch.equal(shipped[i][0], original[i][0])


def test_shipped_files_stay_small():
    from nbfacelib.data.root import bundled_root

    files = [p for p in bundled_root().rglob("*") if p.is_file()]
    assert len(files) == 402  # 400 images, README, NOTICE
    assert max(p.stat().st_size for p in files) < 2 << 20  # the repository's per-file limit
    assert sum(p.stat().st_size for p in files) < 3 << 20


def test_size_rule_pad_crop_stretch():
    img = np.full((100, 50, 3), 200, np.uint8)  # tall: h=100, w=50
    out = fit_square(img, 100)
    assert out.shape == (100, 100, 3)
    assert out[:, :25].max() == 0 and out[:, 75:].max() == 0 and (out[:, 25:75] == 200).all()
    odd = fit_square(np.full((100, 51, 3), 9, np.uint8), 100)  # odd pad: the extra column right
    assert (odd[:, 24:75] == 9).all() and odd[:, :24].max() == 0 and odd[:, 75:].max() == 0
    up = fit_square(np.full((10, 20, 3), 7, np.uint8), 40)  # wide, upscaled x2 then padded rows
    assert (up[10:30] == 7).all() and up[:10].max() == 0 and up[30:].max() == 0
    ramp = np.repeat(np.arange(100, dtype=np.uint8)[:, None], 50, axis=1)[..., None].repeat(3, 2)
    crop = fit_square(ramp, 50, "crop")  # shorter side already 50: rows 25..74 kept
    assert crop.shape == (50, 50, 3) and crop[0, 0, 0] == 25 and crop[-1, 0, 0] == 74
    assert fit_square(img, 64, "stretch").shape == (64, 64, 3)
    assert fit_square(img, None) is img
    with pytest.raises(ValueError, match="resize must be one of"):
        fit_square(img, 64, "zoom")


def test_grey_16bit_and_rgba_become_rgb(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    _save(tmp_path / "g.png", grey)
    a = decode_image(tmp_path / "g.png")
    assert a.shape == (6, 8, 3) and all(np.array_equal(a[..., c], grey) for c in range(3))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    b = decode_image(tmp_path / "g16.png")
    assert b.shape == (6, 8, 3) and np.array_equal(b[..., 0], grey)
    rgba = np.dstack([np.full((4, 4, 3), 50, np.uint8), np.full((4, 4), 128, np.uint8)])
    _save(tmp_path / "a.png", rgba)
    assert decode_image(tmp_path / "a.png").shape == (4, 4, 3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        decode_image(tmp_path / "bad.png")


def test_writer_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(1)
    items = [(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8), lab) for lab in (0, 0, 1, 2, 2, 2)]
    assert write_image_folder(tmp_path / "out", items) == 6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000000", "0000001", "0000002"]
    ds = FolderDataset(tmp_path / "out", size=None)
    assert ds.labels.tolist() == [0, 0, 1, 2, 2, 2]
    for i, (img, _) in enumerate(items):
        np.testing.assert_array_equal(ds.load_array(i), img)
    with pytest.raises(FileExistsError, match="not empty"):
        write_image_folder(tmp_path / "out", items)
    # torch CHW tensors and grey arrays are accepted; encoded bytes of the same type are copied
    chw = torch.from_numpy(items[0][0]).permute(2, 0, 1)
    png = ds.paths[1].read_bytes()
    n = write_image_folder(tmp_path / "mixed", [(chw, 0), (items[0][0][..., 0], 1), (png, 1)])
    assert n == 3 and (tmp_path / "mixed/0000001/00001.png").read_bytes() == png
    mixed = FolderDataset(tmp_path / "mixed", size=None)
    np.testing.assert_array_equal(mixed.load_array(0), items[0][0])
    with pytest.raises(ValueError, match="labels must be >= 0"):
        write_image_folder(tmp_path / "neg", [(items[0][0], -2)])


def test_empty_identity_and_missing_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderDataset(tmp_path / "nope")
    _save(tmp_path / "flat" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no identity sub-folders .1 images lie directly"):
        FolderDataset(tmp_path / "flat")
    _save(tmp_path / "tree" / "id0" / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "tree" / "id1").mkdir()
    with pytest.raises(FileNotFoundError, match="id1"):
        FolderDataset(tmp_path / "tree")
    ds = FolderDataset(tmp_path / "tree", allow_empty=True)
    assert ds.num_classes == 2 and len(ds) == 1


def test_natural_sort_of_a_name_and_its_prefix():
    # "s" vs "s1" once compared a str with an int inside the key (TypeError)
    assert sorted(["s1", "s", "frontal2", "frontal"], key=natural_key) == ["frontal", "frontal2", "s", "s1"]


def test_identity_folders_may_hold_images_in_subfolders(tmp_path):
    """CFP's layout: ID/frontal/NN.jpg and ID/profile/NN.jpg; the sub-folder is recorded per image."""
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 255, (6, 4, 3), dtype=np.uint8)  # noqa: E731
    for ident in ("002", "001"):
        for pose, n in (("profile", 2), ("frontal", 3)):
            for k in range(n, 0, -1):
                _save(tmp_path / ident / pose / f"{k:02d}.png", img())
    _save(tmp_path / "001" / "loose.png", img())
    (tmp_path / "001" / ".cache").mkdir()
    _save(tmp_path / "001" / ".cache" / "x.png", img())
    ds = FolderDataset(tmp_path, size=None)
    assert ds.classes == ["001", "002"] and len(ds) == 11
    rel = [p.relative_to(tmp_path).as_posix() for p in ds.paths[:6]]
    assert rel == [
        "001/loose.png",
        "001/frontal/01.png",
        "001/frontal/02.png",
        "001/frontal/03.png",
        "001/profile/01.png",
        "001/profile/02.png",
    ]
    assert ds.subfolders[:6] == ["", "frontal", "frontal", "frontal", "profile", "profile"]
    assert ds.subfolders[6:] == ["frontal"] * 3 + ["profile"] * 2
    assert ds.labels.tolist() == [0] * 6 + [1] * 5
    x, y = ds[4]
    assert y == 0 and tuple(x.shape) == (3, 6, 4)
