"""Synthetic faces: determinism, index independence, shapes, quality, occlusion, degradations, CLI."""

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from nbfacelib.cli import main
from nbfacelib.data import degrade, open_dataset
from nbfacelib.data import synthetic as S
from nbfacelib.data.synthetic import NUISANCE_KEYS, SyntheticFaces, quality_from_nuisances, render

# Every degradation and pose term off: the output is the frontal face over its background.
CLEAN = dict(
    yaw=0.0, pitch=0.0, roll=0.0, shift_x=0.0, shift_y=0.0, scale=1.0, occluder=0.0,
    blur_sigma=0.0, motion_length=0.0, noise_sigma=0.0, downsample=1.0, jpeg_quality=100.0,
)  # fmt: skip


def test_same_inputs_same_bytes_and_seed_matters():
    ids, samples = torch.tensor([0, 5, 9, 5]), torch.tensor([0, 1, 2, 3])
    a, na = render(ids, samples, seed=1)
    S.BASE_CACHE.clear()  # a fresh render, not a cached base face
    b, nb = render(ids, samples, seed=1)
    assert a.dtype == torch.uint8 and torch.equal(a, b)
    assert all(torch.equal(na[k], nb[k]) for k in NUISANCE_KEYS)
    c, _ = render(ids, samples, seed=2)
    assert not torch.equal(a, c)
    d, _ = render(ids, samples + 10, seed=1)  # other samples of the same identities
    assert not any(torch.equal(a[i], d[i]) for i in range(4))


def test_index_renders_the_same_alone_or_in_any_batch():
    ds = SyntheticFaces(100, 3, seed=7)
    i = 100  # label 33, sample 1
    alone, label = ds[i]
    assert label == 33
    # a batch larger than the CPU chunk, in a shuffled order, with the index in the middle
    assert len(ds) > S.CPU_CHUNK
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    labels, samples = order // 3, order % 3
    batch, n = ds.render_batch(labels, samples)
    pos = int((order == i).nonzero())
    assert torch.equal(batch[pos], alone)
    assert ds.nuisances(i)["quality"] == pytest.approx(float(n["quality"][pos]))


@pytest.mark.parametrize("style", [*S.STYLES, *S.MIXES])
def test_every_image_is_the_same_bytes_in_batches_of_any_size(style):
    # Batches of 1, 7, 40 and 112 against one of 160, each with its base faces drawn afresh (so an
    # identity's cached face is drawn beside other identities too): every pixel and nuisance equal.
    g = torch.Generator().manual_seed(11)
    ids, samples = torch.randint(3000, (160,), generator=g), torch.randint(10**6, (160,), generator=g)
    S.BASE_CACHE.clear()
    parts = [
        render(ids[i:j], samples[i:j], seed=3, difficulty="hard", style=style)
        for i, j in ((0, 1), (1, 8), (8, 48), (48, 160))
    ]
    S.BASE_CACHE.clear()
    whole, nw = render(ids, samples, seed=3, difficulty="hard", style=style)
    assert torch.equal(torch.cat([p[0] for p in parts]), whole)
    for k in nw:
        assert torch.equal(torch.cat([p[1][k] for p in parts]), nw[k]), k


@pytest.mark.parametrize("style", ["flat", "morphed"])
def test_every_image_is_the_same_bytes_at_any_thread_count(style):
    # ATen's bilinear enlarging (the down-sampling nuisance) rounds a pixel at a thread's split
    # point differently; before it ran on one thread, 200 images at 112 px differed in 1-7 values.
    ids, samples = torch.arange(200) % 50, torch.arange(200)
    before = torch.get_num_threads()
    try:
        renders = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            renders.append(render(ids, samples, seed=0, style=style))
    finally:
        torch.set_num_threads(before)
    (one, n1), *others = renders
    assert int((n1["downsample"] > 1).sum()) > 50  # the nuisance is exercised
    for images, n in others:
        assert torch.equal(images, one)
        assert all(torch.equal(n[k], n1[k]) for k in n1)


@pytest.mark.parametrize(
    "fn", [torch.sigmoid, lambda t: t**1.6, lambda t: t**4], ids=["sigmoid", "pow1.6", "pow4"]
)
def test_batch_invariant_gives_an_element_the_same_value_anywhere(fn):
    from nbfacelib.data.synthetic.hashing import batch_invariant

    x = torch.rand(3, 40_000, generator=torch.Generator().manual_seed(0)) + 0.01
    whole = batch_invariant(fn, x)
    assert whole.shape == x.shape
    torch.testing.assert_close(whole, fn(x))  # the same function, to rounding
    for i, j in ((0, 1), (5, 38), (37, 70_001), (70_001, 120_000)):  # pieces cut mid-vector
        assert torch.equal(batch_invariant(fn, x.reshape(-1)[i:j]), whole.reshape(-1)[i:j])
    assert batch_invariant(fn, x[:, :0]).shape == (3, 0)


@pytest.mark.parametrize(
    "n, most", [(1, 128), (64, 128), (128, 128), (129, 128), (130, 128), (300, 128), (7, 2)]
)
def test_chunks_are_few_and_even(n, most):
    from nbfacelib.data.synthetic.renderer import chunk_bounds

    bounds = chunk_bounds(n, most)
    sizes = [stop - start for start, stop in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in order
    assert len(bounds) * most >= n > (len(bounds) - 1) * most  # one chunk fewer could not hold n
    assert max(sizes) <= most and max(sizes) - min(sizes) <= 1  # never a full chunk and a sliver


@pytest.mark.parametrize("size", [112, 160])
def test_shapes_dtypes_and_recorded_nuisances(size):
    ds = SyntheticFaces(4, 2, size=size, difficulty="hard", identity_offset=10)
    x, y = ds[7]
    assert x.shape == (3, size, size) and x.dtype == torch.uint8 and y == 3
    assert len(ds) == 8 and ds.num_classes == 4
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    imgs, n = ds.render_batch(torch.tensor([0, 3]), torch.tensor([5, 0]))
    assert imgs.shape == (2, 3, size, size)
    assert set(NUISANCE_KEYS) <= set(n) and all(n[k].shape == (2,) for k in NUISANCE_KEYS)
    assert set(ds.nuisances(0)) == set(NUISANCE_KEYS)
    # offset: label 3 of this set is absolute identity 13
    assert torch.equal(
        imgs[1], render(torch.tensor([13]), torch.tensor([0]), size=size, difficulty="hard")[0][0]
    )


def _neutral(**kw):
    n = {k: torch.zeros(1) for k in NUISANCE_KEYS}
    n.update(
        scale=torch.ones(1),
        exposure=torch.ones(1),
        downsample=torch.ones(1),
        jpeg_quality=torch.full((1,), 100.0),
    )
    n.update(cast_r=torch.ones(1), cast_g=torch.ones(1), cast_b=torch.ones(1))
    n.update({k: torch.tensor([float(v)]) for k, v in kw.items()})
    return n


@pytest.mark.parametrize(
    "key, values",
    [
        ("blur_sigma", [0, 0.5, 1, 2, 4]),
        ("motion_length", [0, 3, 6, 12]),
        ("occluded", [0, 0.1, 0.3, 0.6, 1.0]),
        ("jpeg_quality", [100, 80, 50, 20, 5]),
        ("noise_sigma", [0, 5, 10, 30]),
        ("downsample", [1, 1.5, 2, 4]),
        ("yaw", [0, 10, -30, 60]),
        ("light_strength", [0, 0.3, 1.0]),
        ("eyes_closed", [0, 0.5, 1]),
    ],
)
def test_quality_formula_is_monotone_in_each_degradation(key, values):
    base = dict(light_angle=60.0) if key == "light_strength" else {}
    q = [float(quality_from_nuisances(_neutral(**base, **{key: v}))) for v in values]
    assert q[0] <= 1.0 and q[-1] >= 0.0
    assert all(a > b for a, b in zip(q, q[1:])), (key, q)
    assert float(quality_from_nuisances(_neutral())) == pytest.approx(1.0, abs=1e-3)


def test_rendered_quality_in_range_and_tied_to_the_nuisances():
    ids, samples = torch.arange(24) % 6, torch.arange(24)
    _, n = render(ids, samples, difficulty="hard")
    q = n["quality"]
    assert float(q.min()) >= 0 and float(q.max()) <= 1 and float(q.std()) > 0.01
    # Holding everything else fixed, more blur / lower JPEG quality / an occluder lower it.
    ids8, s8 = torch.arange(8), torch.zeros(8, dtype=torch.long)
    q_sharp = render(ids8, s8, overrides={"blur_sigma": 0.0})[1]["quality"]
    q_blur = render(ids8, s8, overrides={"blur_sigma": 2.0})[1]["quality"]
    assert bool((q_blur < q_sharp).all())
    q_hi = render(ids8, s8, overrides={"jpeg_quality": 90.0})[1]["quality"]
    q_lo = render(ids8, s8, overrides={"jpeg_quality": 20.0})[1]["quality"]
    assert bool((q_lo < q_hi).all())
    q_free = render(ids8, s8, overrides={"occluder": 0.0})[1]["quality"]
    q_mask = render(ids8, s8, overrides={"occluder": 3.0})[1]["quality"]  # medical mask
    assert bool((q_mask < q_free).all())


def test_blur_actually_removes_detail():
    ids, s = torch.arange(4), torch.zeros(4, dtype=torch.long)
    sharp = render(ids, s, overrides=CLEAN)[0].float()
    blurred = render(ids, s, overrides={**CLEAN, "blur_sigma": 2.0})[0].float()

    def detail(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))

    assert bool((detail(blurred) < 0.7 * detail(sharp)).all())


@pytest.mark.parametrize("kind", [1, 2, 3, 4])
def test_occluded_fraction_matches_the_mask(kind):
    ids, s = torch.arange(6), torch.arange(6)
    free, _ = render(ids, s, overrides=CLEAN)
    occ, n = render(ids, s, overrides={**CLEAN, "occluder": float(kind)}, return_masks=True)
    mask, face = n["occluder_mask"], n["face_mask"]
    frac = (mask * face).sum((1, 2)) / face.sum((1, 2))
    assert torch.allclose(n["occluded"], frac, atol=1e-6)
    assert bool((n["occluded"] > 0.005).all()) and bool((n["occluded"] < 0.9).all())
    # With pose and degradations off the face frame is the image frame: pixels change under
    # the occluder and only near it (lighting is per pixel, so it cannot leak).
    changed = (occ.int() - free.int()).abs().amax(1) > 0
    near = torch.nn.functional.max_pool2d(mask[:, None], 3, 1, 1)[:, 0] > 0
    assert not bool((changed & ~near).any())
    solid = mask > 0.99
    assert float(changed[solid].float().mean()) > 0.9
    no_occ = render(ids, s, overrides={**CLEAN, "occluder": 0.0})[1]["occluded"]
    assert bool((no_occ == 0).all())


def test_near_twins_are_closer_than_strangers():
    parents = S.twin_parent(torch.arange(400), seed=0)
    kids = (parents >= 0).nonzero().flatten()[:10]
    assert 0.1 < (parents >= 0).float().mean() * 2 < 0.4  # about TWIN_FRACTION of pairs
    pa = parents[kids]
    s = torch.zeros(len(kids), dtype=torch.long)
    a = render(kids, s, overrides=CLEAN)[0].float()
    b = render(pa, s, overrides=CLEAN)[0].float()
    c = render(pa.roll(1), s, overrides=CLEAN)[0].float()
    # compare faces, not backgrounds: the centre crop
    d_twin = (a - b)[..., 30:100, 25:87].abs().mean((1, 2, 3))
    d_other = (a - c)[..., 30:100, 25:87].abs().mean((1, 2, 3))
    assert float(d_twin.median()) < 0.6 * float(d_other.median())


def test_a_split_never_starts_inside_a_twin_pair():
    # ``odd`` is the near twin of ``odd - 1`` at seed 0, so a "held-out" set starting at
    # ``odd`` after ``odd`` training identities would test on a training face's twin
    parents = S.twin_parent(torch.arange(400), seed=0)
    odd = int((parents >= 0).nonzero()[0])
    assert odd % 2 == 1
    with pytest.raises(ValueError, match=f"identity_offset={odd} is odd"):
        SyntheticFaces(3, 2, identity_offset=odd)
    with pytest.raises(ValueError, match="odd"):
        open_dataset(f"synthetic:ids=3,per_id=2,offset={odd}")
    train = SyntheticFaces(odd, 2)  # an odd number of training identities
    test = train.heldout(5)
    assert test.identity_offset == odd + 1 and test.per_identity == 2 and test.num_classes == 5
    held = torch.arange(test.identity_offset, test.identity_offset + 5)
    assert not bool(torch.isin(S.twin_parent(held, seed=0), torch.arange(odd)).any())
    assert S.next_split_offset(odd) == odd + 1 and S.next_split_offset(odd + 1) == odd + 1


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ValueError, match="difficulty"):
        SyntheticFaces(3, 2, difficulty="x")
    with pytest.raises(ValueError, match="size"):
        SyntheticFaces(3, 2, size=128)
    with pytest.raises(ValueError, match="num_identities"):
        SyntheticFaces(0, 2)
    with pytest.raises(ValueError, match="per_identity"):
        SyntheticFaces(2, -1)
    with pytest.raises(ValueError, match="identity_offset"):
        SyntheticFaces(2, 2, identity_offset=-3)
    with pytest.raises(ValueError, match="overrides"):
        render(torch.tensor([0]), torch.tensor([0]), overrides={"quality": 1.0})
    with pytest.raises(IndexError):
        SyntheticFaces(2, 2)[4]
    with pytest.raises(IndexError):
        SyntheticFaces(2, 2).render_batch(torch.tensor([2]), torch.tensor([0]))


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--ids", "0", "--per-id", "2"], "--ids"),
        (["--ids", "2", "--per-id", "0"], "--per-id"),
        (["--ids", "2", "--per-id", "2", "--difficulty", "x"], "--difficulty"),
        (["--ids", "2", "--per-id", "2", "--size", "128"], "--size"),
        (["--ids", "2", "--per-id", "2", "--format", "tar"], "--format"),
        (["--ids", "2", "--per-id", "2", "--offset", "3"], "--offset"),
        (["--ids", "2", "--per-id", "2", "--style", "photo"], "--style='photo': expected one of"),
    ],
)
def test_cli_bad_parameters(tmp_path, capsys, argv, flag):
    assert main(["synth", *argv, "--out", str(tmp_path / "o")]) == 1
    assert flag in capsys.readouterr().err


def test_cli_writes_folders_and_csv(tmp_path):
    out = tmp_path / "syn"
    assert (
        main(["synth", "--ids", "3", "--per-id", "2", "--seed", "4", "--out", str(out), "--offset", "6"]) == 0
    )
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["0000006", "0000007", "0000008"]
    with open(out / "images.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert set(["path", "identity", "label", "sample", *NUISANCE_KEYS]) <= set(rows[0])
    ds = SyntheticFaces(3, 2, seed=4, identity_offset=6)
    for i, row in enumerate(rows):
        png = np.array(Image.open(out / row["path"]))
        assert np.array_equal(png, ds[i][0].permute(1, 2, 0).numpy())  # lossless
        assert int(row["identity"]) == 6 + i // 2 and int(row["label"]) == i // 2
        assert float(row["quality"]) == pytest.approx(ds.nuisances(i)["quality"], rel=1e-4)
    # a second run into the same directory needs --overwrite
    assert main(["synth", "--ids", "1", "--per-id", "1", "--out", str(out)]) == 1


def test_cli_writes_recordio(tmp_path):
    recordio = pytest.importorskip("nbfacelib.data.recordio")
    out = tmp_path / "rec"
    assert main(["synth", "--ids", "2", "--per-id", "3", "--out", str(out), "--format", "rec"]) == 0
    assert (out / "train.rec").is_file() and (out / "train.idx").is_file()
    with open(out / "images.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    if hasattr(recordio, "RecDataset"):
        ds = recordio.RecDataset(out)
        assert len(ds) == 6 and sorted({int(ds[i][1]) for i in range(6)}) == [0, 1]


def test_cli_preview(tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["synth", "--preview", "--out", str(out), "--ids", "3", "--per-id", "2"]) == 0
    im = Image.open(out)
    assert im.width > 2 * 112 and im.height > 3 * 112


# ---- degradations -------------------------------------------------------------------------


def test_jpeg_matches_libjpeg():
    ids = torch.arange(4)
    img = render(ids, torch.zeros(4, dtype=torch.long), overrides=CLEAN)[0]
    for q in (15, 60):
        mine = degrade.jpeg(img.float() / 255, torch.full((4,), float(q))) * 255
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(img[i].permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=q)
            ref = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1).float()
            mse = float(((mine[i] - ref) ** 2).mean())
            assert 10 * np.log10(255**2 / mse) > 36  # same codec up to integer-DCT rounding
    same = degrade.jpeg(img.float() / 255, torch.full((4,), 100.0))
    assert torch.equal(same, img.float() / 255)


def test_blur_kernels_and_identities():
    k = degrade.blur_kernels(
        torch.tensor([1.0, 0.0]), torch.tensor([0.0, 8.0]), torch.tensor([0.0, 90.0]), 17
    )
    assert torch.allclose(k.sum((1, 2)), torch.ones(2))
    r = torch.arange(17.0) - 8
    var_x = (k[0].sum(0) * r**2).sum()
    assert float(var_x) == pytest.approx(1.0, abs=0.02)  # gaussian std 1
    var_y = (k[1].sum(1) * r**2).sum()
    assert float(var_y) == pytest.approx(64 / 12 + 0.25, abs=0.1)  # vertical box of 8 + 0.5 px aa
    x = torch.rand(3, 3, 112, 112)
    zero = torch.zeros(3)
    assert torch.equal(degrade.blur(x, zero, zero, zero), x)
    assert torch.equal(degrade.downsample(x, torch.ones(3)), x)
    # per-image: only the second image changes
    y = degrade.blur(x, torch.tensor([0.0, 1.5, 0.0]))
    assert torch.equal(y[0], x[0]) and not torch.equal(y[1], x[1]) and torch.equal(y[2], x[2])
    # a large kernel (FFT route) and a small one (conv route) agree on a smooth image
    smooth = torch.nn.functional.avg_pool2d(x, 9, 1, 4)
    a = degrade.blur(smooth, torch.tensor([2.0] * 3), torch.tensor([6.0] * 3), torch.tensor([30.0] * 3))
    kk = degrade.blur_kernels(torch.tensor([2.0]), torch.tensor([6.0]), torch.tensor([30.0]), 33)[0]
    b = torch.nn.functional.conv2d(
        torch.nn.functional.pad(smooth, (16,) * 4, mode="reflect"), kk.expand(3, 1, 33, 33), groups=3
    )
    assert float((a - b)[..., 20:-20, 20:-20].abs().max()) < 2e-3


def test_calibrate_returns_the_numbers():
    from nbfacelib.eval.baseline import calibrate, format_calibration

    r = calibrate("easy", train_ids=20, test_ids=30, pairs=200, per_id=4, components=20)
    assert 0.5 < r["accuracy"] <= 1 and 0 <= r["accuracy_std"] < 0.5
    assert len(r["tercile_accuracy"]) == 3 and sum(r["tercile_pairs"]) == r["n_pairs"] == 200
    lo, mid, hi = r["tercile_quality"]
    assert lo <= mid <= hi
    assert r["n_train_images"] == 80 and r["n_test_images"] == 120 and r["seconds"] > 0
    assert "accuracy" in format_calibration(r)
    with pytest.raises(ValueError, match="pairs"):
        calibrate(pairs=1)


@pytest.mark.gpu
def test_renders_on_cuda_like_on_cpu():
    ds = SyntheticFaces(20, 4, seed=5)
    labels, samples = torch.arange(20).repeat_interleave(4), torch.arange(4).repeat(20)
    gpu, ng = ds.render_batch(labels, samples, device="cuda")
    cpu, nc = ds.render_batch(labels, samples)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    for k in NUISANCE_KEYS:  # the same draws; derived values up to float rounding
        assert torch.allclose(ng[k].cpu(), nc[k], rtol=1e-4, atol=1e-4), k
    diff = (gpu.cpu().float() - cpu.float()).abs()
    assert float(diff.mean()) < 2.0  # float rounding may flip a JPEG quantisation step


# --------------------------------------------------------------------------- render styles
STYLED = [s for s in S.STYLES if s != "flat"]


@pytest.mark.parametrize("style", STYLED)
def test_styles_are_deterministic_and_index_independent(style):
    ids, samples = torch.tensor([0, 5, 9, 5]), torch.tensor([0, 1, 2, 3])
    a, na = render(ids, samples, seed=1, style=style)
    S.BASE_CACHE.clear()  # a fresh relief and texture, not the cached ones
    b, nb = render(ids, samples, seed=1, style=style)
    assert torch.equal(a, b) and all(torch.equal(na[k], nb[k]) for k in na)
    assert not torch.equal(a, render(ids, samples, seed=2, style=style)[0])
    flat, _ = render(ids, samples, seed=1)
    assert not torch.equal(a, flat)  # the style changes the pixels...
    ds = SyntheticFaces(40, 3, seed=7, style=style)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    batch, _ = ds.render_batch(order // 3, order % 3)
    pos = int((order == 100).nonzero())
    assert torch.equal(batch[pos], ds[100][0])  # ...and stays a function of (seed, identity, sample)
    assert ds.heldout(4).style == style and style in repr(ds)


def test_the_flat_style_is_the_default_and_unchanged():
    ids, samples = torch.arange(6), torch.arange(6)
    a, na = render(ids, samples, seed=3)
    b, nb = render(ids, samples, seed=3, style="flat")
    assert torch.equal(a, b) and set(na) == set(nb) and not set(S.SHADED_KEYS) & set(na)
    assert SyntheticFaces(2, 2).style == "flat" and "style" not in repr(SyntheticFaces(2, 2))
    assert open_dataset("synthetic:ids=3,per_id=2,style=shaded").style == "shaded"
    with pytest.raises(ValueError, match="style"):
        SyntheticFaces(2, 2, style="photo")
    with pytest.raises(ValueError, match="shadows need relief"):
        S.Style("x", shadows=True)


def test_style_nuisances_are_recorded_independent_and_priced_in_quality():
    """The shaded style keeps every flat nuisance of an image (its own are hashed apart), records
    its own in range, draws them independently of the identity, and its quality stays in [0, 1]
    and falls with cast shadow, vignetting and gamma away from 1."""
    ids, samples = torch.arange(400) % 40, torch.arange(400)
    _, flat = render(ids, samples, difficulty="hard")
    _, sh = render(ids, samples, difficulty="hard", style="shaded")
    for k in S.NUISANCE_KEYS:
        if k not in ("quality",):
            assert torch.equal(flat[k], sh[k]), k
    assert set(S.SHADED_KEYS) <= set(sh)
    q = sh["quality"]
    assert float(q.min()) >= 0 and float(q.max()) <= 1 and float(q.std()) > 0.01
    assert bool((q <= flat["quality"] + 1e-6).all())  # the extra factors only ever cost
    assert set(sh["grey"].unique().tolist()) == {0.0, 1.0}
    assert 0.35 < float(sh["grey"].mean()) < 0.65
    assert float(sh["shadow_fraction"].max()) > 0.02 and float(sh["shadow_fraction"].min()) >= 0
    assert 0.7 < float(sh["gamma"].min()) and float(sh["gamma"].max()) < 1.4
    # independent of the identity: the grey fraction of the first and second 20 identities
    first = sh["grey"][ids < 20].mean()
    assert abs(float(first) - float(sh["grey"][ids >= 20].mean())) < 0.15
    assert abs(np.corrcoef(ids.numpy(), sh["specular"].numpy())[0, 1]) < 0.15
    for key, values in (
        ("shadow_fraction", [0, 0.2, 0.6]),
        ("vignette", [0, 0.2, 0.45]),
        ("gamma", [1, 1.2, 1.5]),
    ):
        base = _neutral(shadow_fraction=0.0, vignette=0.0, gamma=1.0)
        qs = [float(quality_from_nuisances({**base, key: torch.tensor([float(v)])})) for v in values]
        assert all(a > b for a, b in zip(qs, qs[1:])), (key, qs)


def test_shaded_light_falls_on_the_lit_side_and_casts_shadows():
    """Relief physics: a hard light from the right brightens the face's right half against its
    left (and vice versa); a side light casts shadows (the nose's), a frontal light none; a
    grey image has equal channels."""
    ids, s = torch.arange(6), torch.zeros(6, dtype=torch.long)
    clean = {**CLEAN, "grey": 0.0, "vignette": 0.0, "gamma": 1.0, "light_strength": 1.0, "exposure": 1.0}
    right, nr = render(ids, s, style="shaded", overrides={**clean, "light_angle": 70.0, "light_azimuth": 0.0})
    left, _ = render(ids, s, style="shaded", overrides={**clean, "light_angle": 70.0, "light_azimuth": 180.0})
    front, nf = render(ids, s, style="shaded", overrides={**clean, "light_angle": 0.0})
    face = right.float()[..., 35:95, 25:87]
    half = face.shape[-1] // 2
    assert bool((face[..., half:].mean((1, 2, 3)) > face[..., :half].mean((1, 2, 3)) + 10).all())
    face = left.float()[..., 35:95, 25:87]
    assert bool((face[..., :half].mean((1, 2, 3)) > face[..., half:].mean((1, 2, 3)) + 10).all())
    assert bool((nr["shadow_fraction"] > 0.005).all()) and bool((nf["shadow_fraction"] == 0).all())
    grey, _ = render(ids, s, style="shaded", overrides={**clean, "grey": 1.0, "light_angle": 0.0})
    assert (grey[:, 0].int() - grey[:, 2].int()).abs().max() <= 1
    assert not torch.equal(front[:, 0], front[:, 2])


def test_facing_equals_the_turned_normals_dot_products():
    """The renderer's n . (R^T v) (one turned-back vector per image) against the per-pixel
    reference: every normal turned with the head, then dotted with v."""
    from nbfacelib.data.synthetic.shading import facing, rotate_normals

    g = torch.Generator().manual_seed(3)
    nx, ny = (
        (torch.rand(5, 16, 16, generator=g) - 0.5) * 1.2,
        (torch.rand(5, 16, 16, generator=g) - 0.5) * 1.2,
    )
    n = {k: (torch.rand(5, generator=g) - 0.5) * 80 for k in ("yaw", "pitch", "roll")}
    v = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g), dim=2)
    rx, ry, rz = rotate_normals(nx, ny, n)
    for vec, got in zip(v, facing(nx, ny, v, n)):
        want = rx * vec[:, 0, None, None] + ry * vec[:, 1, None, None] + rz * vec[:, 2, None, None]
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    # a turned normal is still a unit vector, and zero angles leave it as it was
    torch.testing.assert_close(rx * rx + ry * ry + rz * rz, torch.ones_like(rx), atol=1e-5, rtol=0)
    zero = {k: torch.zeros(5) for k in n}
    assert torch.equal(rotate_normals(nx, ny, zero)[0], nx)


def test_framing_zooms_the_face_and_pads_with_black_bars():
    ids, s = torch.arange(4), torch.zeros(4, dtype=torch.long)
    clean = {**CLEAN, "grey": 0.0, "vignette": 0.0, "gamma": 1.0, "pillarbox": 0.0}
    loose, _ = render(ids, s, style="framed", overrides={**clean, "zoom": 1.0})
    tight, _ = render(ids, s, style="framed", overrides={**clean, "zoom": 1.4})
    # zoomed in 1.4x = the centre 80 px of the loose crop enlarged to 112: far closer to it
    # than the loose crop itself
    centre = torch.nn.functional.interpolate(
        loose[..., 16:96, 16:96].float(), size=(112, 112), mode="bilinear"
    )

    def err(a, b):
        return (a.float() - b.float())[..., 20:92, 20:92].abs().mean((1, 2, 3))

    assert bool((err(tight, centre) < 0.6 * err(tight, loose)).all())
    barred, n = render(ids, s, style="framed", overrides={**clean, "zoom": 1.0, "pillarbox": 0.1})
    assert int(barred[..., :11].max()) == 0 and int(barred[..., -11:].max()) == 0
    assert torch.equal(barred[..., 12:-12], loose[..., 12:-12])
    assert bool((n["pillarbox"] == 0.1).all())


def test_detailed_faces_darken_the_eyes_and_brows_and_keep_the_rest():
    """The detailed style redraws eyes (larger dark iris, lash line) and brows (darker than the
    scalp hair): over 12 identities the eye band is darker than the shaded face's, while the
    cheeks and chin below it stay the same pixels; every nuisance is the shaded style's."""
    ids, s = torch.arange(12), torch.zeros(12, dtype=torch.long)
    clean = {**CLEAN, "grey": 1.0, "vignette": 0.0, "gamma": 1.0, "light_strength": 0.0, "exposure": 1.0}
    shaded, ns = render(ids, s, style="shaded", overrides=clean)
    detailed, nd = render(ids, s, style="detailed", overrides=clean)
    for k in ns:
        assert torch.equal(ns[k], nd[k]), k
    eye_band = (slice(None), slice(None), slice(34, 56), slice(22, 90))  # y in [-0.4, 0]
    assert float(detailed[eye_band].float().mean()) < float(shaded[eye_band].float().mean()) - 3
    darker = (detailed[eye_band].float().mean((1, 2, 3)) < shaded[eye_band].float().mean((1, 2, 3))).sum()
    assert int(darker) >= 10
    mouth_chin = (slice(None), slice(None), slice(92, 104), slice(40, 72))  # y in [0.65, 0.85]
    hair_free = [i for i in range(12) if float(S.identity_params(ids[i : i + 1], 0)["beard_style"]) == 0]
    assert hair_free and torch.equal(detailed[hair_free][mouth_chin], shaded[hair_free][mouth_chin])


def test_eyeglasses_follow_the_wearer_and_sit_on_the_eyes():
    """About 30% of identities wear clear glasses, in ~85% of their images (others in ~5%);
    twins wear them alike; sunglasses replace them; drawing them changes the eye band only, and
    they cost a little quality."""
    from nbfacelib.data.synthetic.detail import WEARS_GLASSES, detail_params
    from nbfacelib.data.synthetic.identity import twin_parent

    ids = torch.arange(600).repeat_interleave(4)
    samples = torch.arange(4).repeat(600)
    from nbfacelib.data.synthetic.shading import style_nuisances

    n = style_nuisances(S.STYLES["eyewear"], 0, ids, samples)
    wears = detail_params(torch.arange(600), 0)["wears_glasses"] > 0
    assert abs(float(wears.float().mean()) - WEARS_GLASSES) < 0.06
    on = n["eyeglasses"].view(600, 4)
    assert 0.75 < float(on[wears].mean()) < 0.95 and float(on[~wears].mean()) < 0.1
    parent = twin_parent(torch.arange(600), 0)
    twins = (parent >= 0).nonzero().flatten()
    assert twins.numel() > 20 and torch.equal(wears[twins], wears[parent[twins]])
    assert not style_nuisances(S.STYLES["detailed"], 0, ids, samples)["eyeglasses"].any()
    # sunglasses replace clear glasses
    _, ns = render(ids[:8], samples[:8], style="eyewear", overrides={"eyeglasses": 1.0, "occluder": 1.0})
    assert not ns["eyeglasses"].any()
    # drawn on the eyes: the eye band changes, the mouth and chin do not
    k, s0 = torch.arange(6), torch.zeros(6, dtype=torch.long)
    clean = {**CLEAN, "grey": 0.0, "vignette": 0.0, "gamma": 1.0}
    bare, _ = render(k, s0, style="eyewear", overrides={**clean, "eyeglasses": 0.0})
    worn, nw = render(k, s0, style="eyewear", overrides={**clean, "eyeglasses": 1.0})
    diff = (worn.float() - bare.float()).abs()
    assert bool((diff[..., 34:56, :].mean((1, 2, 3)) > 2).all())
    assert float(diff[..., 90:, :].max()) == 0
    q_bare = S.render(k, s0, style="eyewear", overrides={**clean, "eyeglasses": 0.0})[1]["quality"]
    assert bool((nw["quality"] < q_bare).all())
    with pytest.raises(ValueError, match="eyeglasses.*eyewear"):
        render(k, s0, style="detailed", overrides={"eyeglasses": 1.0})


def test_cast_shadow_agrees_with_a_step_by_step_march():
    """The renderer's one-grid_sample march against the plain loop over its steps."""
    from torch.nn.functional import avg_pool2d, grid_sample, interpolate

    from nbfacelib.data.synthetic.face import pixel_grid
    from nbfacelib.data.synthetic.shading import _SHADOW_STEPS, cast_shadow

    g = torch.Generator().manual_seed(0)
    depth = avg_pool2d(torch.rand(5, 1, 32, 32, generator=g), 5, 1, 2)[:, 0] * 0.6
    L = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    L[:, 2] = L[:, 2].abs()
    L[0] = torch.tensor([0.0, 0.0, 1.0])  # frontal: no shadow
    h = 16
    d = avg_pool2d(depth.unsqueeze(1), 2)
    X, Y = pixel_grid(h, torch.device("cpu"))
    want = []
    for b in range(5):
        lxy = float(L[b, :2].norm().clamp(min=1e-6))
        occl = torch.zeros(h, h)
        for t in _SHADOW_STEPS:
            grid = torch.stack(
                [(X + t * L[b, 0] / lxy).expand(1, h, h), (Y + t * L[b, 1] / lxy).expand(1, h, h)], -1
            )
            dz = grid_sample(d[b : b + 1], grid, align_corners=False, padding_mode="border")[0, 0]
            occl = torch.maximum(occl, (dz - d[b, 0]) * 1.2 - t * L[b, 2] / lxy)
        want.append((occl / 0.015).clamp(0, 1) * float(lxy > 0.05))
    want = interpolate(torch.stack(want).unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)[
        :, 0
    ]
    got = cast_shadow(depth, L, 32)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert float(got[0].max()) == 0 and float(got[1:].amax()) > 0.5


def test_hair_varies_its_outline_hairline_and_ear_cover():
    """The hair style's factors do what they say: ~8% bald and ~25% fringes, shared by near
    twins; a fringe covers the forehead that others show; long hair covers the ears that short
    hair leaves bare; the volume's height lies on the head, never under the skin."""
    from nbfacelib.data.synthetic.face import _face_oval, pixel_grid
    from nbfacelib.data.synthetic.hair import BALD, FRINGE, hair_layers, hair_params, with_hair_height
    from nbfacelib.data.synthetic.identity import identity_params, twin_parent
    from nbfacelib.data.synthetic.renderer import _static

    ids = torch.arange(1000)
    h = hair_params(ids, 0)
    assert abs(float(h["bald"].mean()) - BALD) < 0.03 and abs(float(h["fringe"].mean()) - FRINGE) < 0.05
    parent = twin_parent(ids, 0)
    twins = (parent >= 0).nonzero().flatten()
    for k in ("bald", "fringe"):
        assert torch.equal(h[k][twins], h[k][parent[twins]]), k
    size = 112
    p = identity_params(ids[:300], 0)
    h = {k: v[:300] for k, v in h.items()}
    X, Y = pixel_grid(size, torch.device("cpu"))
    layers = hair_layers(p, h, _face_oval(p, X, Y), X, Y, _static("noise", size, torch.device("cpu")), size)

    def at(layer, x, y):  # (U,) coverage at face-unit points x, y (U,)
        col = ((x + 1) / 2 * size).long().clamp(0, size - 1)
        row = ((y + 1) / 2 * size).long().clamp(0, size - 1)
        return layer[torch.arange(len(x)), row, col]

    hairy = h["bald"] == 0
    forehead = at(layers.front, torch.zeros(300), p["eye_y"] - p["brow_gap"] - 0.12)
    fringe = (h["fringe"] > 0) & hairy & (h["fringe_depth"] > 0.8)
    bare = (h["fringe"] == 0) & (h["hairline"] > 0.7) & (h["peak"] < 0.03) & (h["sweep"] < 0.05)
    assert fringe.sum() > 10 and bare.sum() > 20
    assert float(forehead[fringe].mean()) > 0.8 and float(forehead[bare].max()) < 0.05
    ear_y = p["eye_y"] + p["ear_y"] + 0.12
    ear = at(layers.front, p["face_w"] * 0.97 + p["ear_s"] * 0.4, ear_y)
    end = p["face_cy"] + h["length"]
    covered = hairy & (end > ear_y + 0.1) & (h["side"] > p["ear_s"] * 0.6)  # wide enough to hide it
    short = end < ear_y - 0.1
    assert covered.sum() > 20 and short.sum() > 20
    assert float(ear[covered].mean()) > 0.9 and float(ear[short].max()) < 0.05
    # the silhouettes differ: the hair's area above the eyes spreads widely over identities
    area = layers.front[hairy][:, : size // 2].mean((1, 2))
    assert float(area.std() / area.mean()) > 0.3
    z = torch.rand(300, size, size) * 0.6
    zh = with_hair_height(z, layers)
    assert bool((zh >= z).all())
    none = (layers.front == 0) & (layers.back == 0)
    assert torch.equal(zh[none], z[none]) and bool((zh > z + 0.01).any())
    with pytest.raises(ValueError, match="hair is drawn with the detailed"):
        S.Style("x", relief=True, hair=True)


def test_haircuts_change_the_cut_not_the_person():
    """``haircuts``: about a quarter of an identity's images show its other haircut (recorded as
    ``haircut``); the other cut changes length, fringe, parting and volume, never the colour,
    curl, baldness or hairline; the override is refused where no haircut is drawn."""
    from nbfacelib.data.synthetic.hair import OTHER_CUT, hair_params
    from nbfacelib.data.synthetic.shading import style_nuisances

    ids, samples = torch.arange(400).repeat_interleave(5), torch.arange(5).repeat(400)
    n = style_nuisances(S.STYLES["haircuts"], 0, ids, samples)
    assert abs(float(n["haircut"].mean()) - OTHER_CUT) < 0.04
    assert not style_nuisances(S.STYLES["hair"], 0, ids, samples)["haircut"].any()
    k = torch.arange(200)
    own, other = hair_params(k, 0), hair_params(k, 0, torch.ones(200))
    for key in ("bald", "curl", "recession", "peak", "hairline", "field", "contrast", "sheen"):
        assert torch.equal(own[key], other[key]), key
    for key in ("length", "top", "side", "part"):
        assert float((own[key] - other[key]).abs().mean()) > 0.02, key
    assert torch.equal(hair_params(k, 0, torch.zeros(200))["length"], own["length"])
    s0 = torch.zeros(12, dtype=torch.long)
    clean = {**CLEAN, "grey": 1.0, "vignette": 0.0, "gamma": 1.0}
    a, _ = render(k[:12], s0, style="haircuts", overrides={**clean, "haircut": 0.0})
    b, nb = render(k[:12], s0, style="haircuts", overrides={**clean, "haircut": 1.0})
    changed = ((a.float() - b.float()).abs().mean((1, 2, 3)) > 0.5).sum()
    assert int(changed) >= 9 and bool((nb["haircut"] == 1).all())
    assert torch.equal(a, render(k[:12], s0, style="hair", overrides=clean)[0])  # cut 0: the hair style
    with pytest.raises(ValueError, match="haircut.*haircuts"):
        render(k[:2], s0[:2], style="hair", overrides={"haircut": 1.0})
    with pytest.raises(ValueError, match="haircuts need hair"):
        S.Style("x", haircuts=True)


# --------------------------------------------------------------------------- style mixes
def test_a_mix_renders_each_image_as_its_drawn_style_alone():
    """Each image of a mix is, byte for byte and nuisance for nuisance, what its drawn style
    renders alone; the draw is a function of (seed, identity, sample), near uniform over the
    mix's styles, independent of the identity, and flat images get neutral style nuisances."""
    mix = S.MIXES["mixed"]
    ids, samples = torch.arange(120) % 30, torch.arange(120)
    images, n = render(ids, samples, seed=4, size=112, style="mixed")
    assert set(n) == set(NUISANCE_KEYS) | set(S.SHADED_KEYS) | set(S.MIX_KEYS)
    drawn = n["mix_style"].long()
    assert set(drawn.tolist()) == set(range(len(mix)))
    for i, style in enumerate(mix):
        at = (drawn == i).nonzero().flatten()
        alone, na = render(ids[at], samples[at], seed=4, size=112, style=style)
        assert torch.equal(images[at], alone), style
        for k, v in na.items():
            assert torch.equal(n[k][at], v), (style, k)
    flat = drawn == [s.name for s in mix].index("flat")
    for key, neutral in (("gamma", 1.0), ("grey", 0.0), ("zoom", 1.0), ("eyeglasses", 0.0)):
        assert bool((n[key][flat] == neutral).all()), key
    # the draw: per image (not per identity), deterministic, balanced over many images
    many = S.shading.mix_choice("mixed", 0, torch.arange(8000) % 400, torch.arange(8000))
    counts = torch.bincount(many, minlength=len(mix)).float() / 8000
    assert bool((counts - 1 / len(mix)).abs().max() < 0.03), counts
    per_id = [set(many[torch.arange(8000) % 400 == j].tolist()) for j in range(20)]
    assert all(len(s) > 1 for s in per_id)  # one identity is seen in several styles
    first, second = many[(torch.arange(8000) % 400) < 200], many[(torch.arange(8000) % 400) >= 200]
    assert abs(float(first.float().mean() - second.float().mean())) < 0.1
    assert torch.equal(many, S.shading.mix_choice("mixed", 0, torch.arange(8000) % 400, torch.arange(8000)))


def test_a_mix_is_a_data_set_style_and_refuses_what_not_all_its_styles_have():
    ds = SyntheticFaces(30, 3, seed=7, style="mixed")
    assert ds.heldout(4).style == "mixed" and "mixed" in repr(ds)
    assert open_dataset("synthetic:ids=3,per_id=2,style=mixed").style == "mixed"
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    batch, _ = ds.render_batch(order // 3, order % 3)
    pos = int((order == 50).nonzero())
    assert torch.equal(batch[pos], ds[50][0])  # index independent, as every style
    assert S.recorded_keys("mixed") == S.SHADED_KEYS + S.MIX_KEYS and S.recorded_keys("flat") == ()
    with pytest.raises(ValueError, match="not nuisances of every style in mix 'mixed'"):
        render(torch.arange(2), torch.arange(2), style="mixed", overrides={"eyeglasses": 1.0})
    _, n = render(torch.arange(8), torch.arange(8), style="mixed", overrides={"yaw": 10.0})
    assert bool((n["yaw"] == 10).all())
    with pytest.raises(ValueError, match="expected one of .*haircuts, mixed"):
        SyntheticFaces(2, 2, style="mixd")


def test_nbface_synth_writes_a_mix_with_its_drawn_style(tmp_path):
    out = tmp_path / "mix"
    assert main(["synth", "--ids", "4", "--per-id", "3", "--style", "mixed", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "images.csv")))
    assert len(rows) == 12 and {"mix_style", "eyeglasses", "gamma"} <= set(rows[0])
    drawn = [int(float(r["mix_style"])) for r in rows]
    expected = S.shading.mix_choice("mixed", 0, torch.arange(12) // 3, torch.arange(12) % 3)
    assert drawn == expected.tolist()


# --------------------------------------------------------------------------- per-identity warp
def test_a_morph_is_each_identitys_own_smooth_warp_and_a_twin_keeps_its_partners():
    from nbfacelib.data.synthetic.morph import morph_fields

    ids = torch.arange(2000)
    f = morph_fields(ids, 0, 0.05)
    assert f.shape == (2000, 2, 16, 16)
    rms_px = float(f.norm(dim=1).pow(2).mean().sqrt()) * 56  # a face unit is 56 px of a 112 image
    assert 1.5 < rms_px < 3.0, rms_px  # the documented 2.1 px
    # left-right symmetric: x displacements odd in x, y displacements even
    assert float((f[:, 0] + f[:, 0].flip(-1)).abs().max()) < 1e-6
    assert float((f[:, 1] - f[:, 1].flip(-1)).abs().max()) < 1e-6
    assert torch.allclose(morph_fields(ids, 0, 0.01), f / 5, atol=1e-7)  # linear in the scale
    assert not torch.equal(morph_fields(ids, 1, 0.05), f)  # the seed draws other warps
    # smooth, and never folds the face over: between neighbouring table points (2/15 face
    # units apart) the displacement changes by well under the distance (slope < 0.5)
    slope = max(
        float((f[..., 1:] - f[..., :-1]).abs().amax()), float((f[..., 1:, :] - f[..., :-1, :]).abs().amax())
    )
    assert slope / (2 / 15) < 0.5, slope
    # a near twin's warp is its partner's, nudged; a stranger's is not
    parents = S.twin_parent(ids, seed=0)
    kids = (parents >= 0).nonzero().flatten()
    d_twin = (f[kids] - f[parents[kids]]).norm(dim=1).mean()
    d_other = (f[kids] - f[parents[kids].roll(1)]).norm(dim=1).mean()
    assert float(d_twin) < 0.3 * float(d_other)


def test_a_morphed_style_warps_the_face_and_draws_the_same_base_faces():
    from dataclasses import replace

    eyewear = S.STYLES["eyewear"]
    ids, s = torch.arange(6), torch.zeros(6, dtype=torch.long)
    plain, n_plain = render(ids, s, seed=3, style=eyewear, overrides=CLEAN)
    same, _ = render(ids, s, seed=3, style=replace(eyewear, name="m0", morph=0.0), overrides=CLEAN)
    assert torch.equal(plain, same)  # morph 0 is the style without it
    warped, n_warped = render(ids, s, seed=3, style=replace(eyewear, name="m", morph=0.05), overrides=CLEAN)
    moved = (warped.float() - plain.float())[..., 20:100, 20:92].abs().mean((1, 2, 3))
    assert bool((moved > 1.0).all()), moved  # every face changes shape
    assert all(torch.equal(n_plain[k], n_warped[k]) for k in NUISANCE_KEYS if k != "quality")
    # the warp is applied at posing: the base face is filed under the style's drawing only
    assert replace(eyewear, name="m", morph=0.05).drawing == eyewear.drawing
    assert S.MIXES["morphed"][0].flat and S.MIXES["morphed"][0].morph == 0.05
    with pytest.raises(ValueError, match="morph"):
        S.Style("x", morph=0.5)


def test_the_render_rate_benchmark_warms_a_mix_from_its_styles():
    # benchmarks/synth_throughput.py once looked a mix up as MIXES.get(name, (STYLES[name],)),
    # whose default fails for every mix; a mix is warm when each of its styles' faces is cached
    from benchmarks.synth_throughput import Renderer, styles_of

    assert styles_of("morphed") == S.MIXES["morphed"] and styles_of("flat") == (S.STYLES["flat"],)
    job = Renderer(4, torch.device("cpu"), 112, "medium", warm=True, warm_ids=4, style="morphed")
    assert job() > 0
