"""The real training track: training on one's own folder with a preset's defaults (the
validation it picks), the crop / colour augmentation, and the ``cfp`` manifest's held-out
validation. The ``realdata`` tests need CFP / LFW under the data root."""

import json
import math

import numpy as np
import pytest
import torch

from nbfacelib.cli import main
from nbfacelib.data.folder import write_image_folder
from nbfacelib.data.transforms import TrainAugment, resize, shift_hue
from nbfacelib.train import TrainConfig
from nbfacelib.train.data import TrainBatches, resolve_validation


def _folder(path, ids: int, per_id: int, size=(40, 32)):
    """``ids`` identities of ``per_id`` random non-square images each (labels 0..ids-1)."""
    rng = np.random.default_rng(0)
    items = [(rng.integers(0, 255, (*size, 3), dtype=np.uint8), k) for k in range(ids) for _ in range(per_id)]
    write_image_folder(path, items, ext="png")
    return path


# ----------------------------------------------------------------------- validation rule
def test_synthetic_data_keeps_synthetic_heldout():
    cfg = TrainConfig.from_preset("smoke")
    assert resolve_validation(cfg) == (cfg, None)


def test_folder_data_holds_out_its_last_identities(tmp_path):
    _folder(tmp_path / "f", ids=30, per_id=5)
    cfg = TrainConfig.from_preset(
        "smoke", data=f"folder:{tmp_path / 'f'}", val=["synthetic-heldout", "x.bin"]
    )
    got, note = resolve_validation(cfg)
    # 10% of 30 identities = 3, of 5 images each: 3 x 10 = 30 same pairs -> 60 pairs (10 folds)
    assert got.holdout_ids == 3 and got.val == ["x.bin", "heldout"] and got.val_pairs == 60
    assert "last 3 of 30 identities" in note and "60 pairs" in note
    # an explicit holdout is kept; the pair count still fits what those identities supply
    got, _ = resolve_validation(cfg.replace(holdout_ids=6, val=["synthetic-heldout"]))
    assert got.holdout_ids == 6 and got.val_pairs == 120


def test_folder_with_few_identities_skips_validation_and_says_so(tmp_path):
    _folder(tmp_path / "f", ids=5, per_id=3)
    cfg = TrainConfig.from_preset("smoke", data=f"folder:{tmp_path / 'f'}")
    got, note = resolve_validation(cfg)
    assert got.val == [] and "validation skipped" in note and "5 identities" in note


def test_manifest_validation_sets_replace_synthetic_heldout(tmp_path, monkeypatch):
    """A manifest naming the pair sets of people it leaves out: those present are used."""
    mdir, root = tmp_path / "manifests", tmp_path / "root"
    mdir.mkdir()
    _folder(root / "people", ids=12, per_id=3)
    (root / "held.bin").write_bytes(b"")
    (mdir / "people.yaml").write_text(
        "name: people\nformat: folder\nlocation: people\nvalidation: [held, gone]\nobtain: by hand\n"
    )
    (mdir / "held.yaml").write_text("name: held\nformat: pairs-bin\nlocation: held.bin\nobtain: by hand\n")
    (mdir / "gone.yaml").write_text("name: gone\nformat: pairs-bin\nlocation: gone.bin\nobtain: by hand\n")
    monkeypatch.setenv("NBFACELIB_MANIFESTS", str(mdir))
    monkeypatch.setenv("NBFACELIB_DATA", str(root))
    got, note = resolve_validation(TrainConfig.from_preset("smoke", data="people"))
    assert got.val == ["held"] and got.holdout_ids == 0
    assert "leaves out" in note and "gone not under the data root" in note


def test_train_on_a_folder_with_the_preset_defaults(tmp_path, capsys):
    """`nbface train --data folder:X` used to fail at once (synthetic-heldout refused)."""
    _folder(tmp_path / "f", ids=20, per_id=4)
    out = tmp_path / "run"
    args = ["train", "--preset", "smoke", "--data", f"folder:{tmp_path / 'f'}", "--steps", "2"]
    assert main([*args, "--batch-size", "8", "--input-size", "64", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "validation on 'heldout': the last 2 of 20 identities" in text
    summary = json.loads(text[text.index("{") :])
    assert 0.0 <= summary["heldout/accuracy"] <= 1.0
    saved = json.loads((out / "config.json").read_text())
    assert saved["val"] == ["heldout"] and saved["holdout_ids"] == 2  # the run records what it did


# ----------------------------------------------------------------------- augmentation
def test_augment_is_per_image_and_a_function_of_the_generator():
    aug = TrainAugment(32, crop_scale=[0.5, 1.0], crop_ratio=[0.9, 1.1], color_jitter=0.4)
    x = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8)
    x[1] = x[0]
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the same image gets its own crop and jitter
    params = aug.sample(x, torch.Generator().manual_seed(0))
    boxes = params["boxes"]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 48**2
    aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert ((area > 0.5 - 1e-4) & (area <= 1.0001)).all() and (
        (aspect > 0.9 - 1e-4) & (aspect < 1.1001)
    ).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all()
    # the global generator is neither used nor moved
    state = torch.random.get_rng_state()
    aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())
    assert not TrainAugment(32).active and torch.equal(
        TrainAugment(32)(x, torch.Generator())[0], resize(x, 32)[0]
    )


def test_crop_shift_keeps_boxes_near_the_centre_and_leaves_the_default_alone():
    """crop_shift c: each box's offset is the default's draw pulled towards the centre,
    ``margin * (0.5 + c (u - 0.5))``; c = 1 gives the default's boxes bit for bit, c = 0 centres."""
    x = torch.zeros(500, 3, 40, 40, dtype=torch.uint8)

    def draw(**kw):
        return TrainAugment(20, crop_scale=[0.3, 0.6], **kw).sample(x, torch.Generator().manual_seed(7))

    plain, one, shifted, centred = draw(), draw(crop_shift=1.0), draw(crop_shift=0.25), draw(crop_shift=0.0)
    assert torch.equal(plain["boxes"], one["boxes"])
    # at 1 the boxes are torchvision's uniform ones, bit for bit: x1 = (W - w) u from the first draws
    u4 = torch.rand(500, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    area, ratio = 0.3 + 0.3 * u4[:, 0], torch.exp(math.log(0.9) + (math.log(1.1) - math.log(0.9)) * u4[:, 1])
    side = torch.stack([40 * torch.sqrt(area * ratio), 40 * torch.sqrt(area / ratio)], 1)
    assert torch.equal(plain["boxes"][:, :2], ((40 - side) * u4[:, 2:]).float())
    size = plain["boxes"][:, 2:] - plain["boxes"][:, :2]
    for p in (shifted, centred):  # the same sizes, drawn from the same numbers
        assert torch.allclose(p["boxes"][:, 2:] - p["boxes"][:, :2], size, atol=1e-4)
    margin = 40 - size
    u = plain["boxes"][:, :2] / margin  # the default's uniform draws
    assert torch.allclose(shifted["boxes"][:, :2], margin * (0.5 + 0.25 * (u - 0.5)), atol=1e-3)
    assert torch.allclose(centred["boxes"][:, :2], margin / 2, atol=1e-4)
    off = (shifted["boxes"][:, :2] + size / 2 - 20).abs() / (margin / 2)  # centre offset / free half-margin
    assert off.max() <= 0.25 + 1e-4 and off.max() > 0.2
    with pytest.raises(ValueError, match="crop_shift"):
        TrainAugment(20, crop_shift=1.5)
    with pytest.raises(ValueError, match="crop_shift"):
        TrainConfig(crop_shift=-0.1)


def test_augment_crop_takes_the_drawn_box():
    """A box of whole pixels resampled at its own size is exactly that window of the image."""
    aug = TrainAugment(16, crop_scale=[0.1, 1.0])
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0], [0.0, 24.0, 16.0, 40.0]])
    out = aug.apply(x, {"boxes": boxes, "factors": None})
    assert torch.equal(out[0], x[0, :, 4:20, 8:24]) and torch.equal(out[1], x[1, :, 24:40, 0:16])


def test_augment_jitter_equals_torchvision_image_by_image():
    """Independent check: torchvision's adjust_brightness/contrast/saturation on each float image."""
    from torchvision.transforms.v2 import functional as tvf

    aug = TrainAugment(24, color_jitter=0.5)
    x = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)
    params = aug.sample(x, torch.Generator().manual_seed(1))
    got = aug.apply(x, params)
    for img, (b, c, s), out in zip(x, params["factors"].tolist(), got):
        y = tvf.adjust_brightness(img.float() / 255, b)  # float images are [0, 1] in torchvision
        y = tvf.adjust_contrast(y, c)
        y = tvf.adjust_saturation(y, s)
        assert (out.int() - (255 * y).round().int()).abs().max() <= 1


def test_hue_jitter_equals_torchvision_image_by_image():
    """The batched hue shift against torchvision's adjust_hue, one image and one shift at a
    time; the other draws are those of the augmentation without it."""
    from torchvision.transforms.v2 import functional as tvf

    x = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    x[0] = x[0, :1]  # a grey image: hue leaves it as it is
    aug = TrainAugment(20, color_jitter=0.3, hue=0.5)
    params = aug.sample(x, torch.Generator().manual_seed(2))
    plain = TrainAugment(20, color_jitter=0.3).sample(x, torch.Generator().manual_seed(2))
    assert torch.equal(params["factors"], plain["factors"])
    shifts = params["hue_shift"]
    assert shifts.abs().max() <= 0.5 and shifts.min() < 0 < shifts.max()
    jittered = TrainAugment(20, color_jitter=0.3).apply(x, plain)
    got = aug.apply(x, params)
    assert torch.equal(got[0], jittered[0])
    for img, shift, out in zip(jittered, shifts.tolist(), got):
        want = tvf.adjust_hue(img.float() / 255, shift)
        # the batch path shifts the unrounded jittered image, the reference the rounded one
        assert (out.int() - (255 * want).round().int()).abs().max() <= 2
    # the kernel alone, on the same float images: torchvision's numbers
    floats = torch.rand(6, 3, 12, 12)
    floats[1] = floats[1, :1]
    along = torch.tensor([-0.5, -0.25, -0.01, 0.0, 0.3, 0.5])
    batched = shift_hue(floats, along)
    for img, shift, out in zip(floats, along.tolist(), batched):
        assert (out - tvf.adjust_hue(img, shift)).abs().max() < 1e-5
    assert (got.int() - jittered.int()).abs().max() > 20  # it moved colours


def test_rand_conv_equals_a_per_image_loop_and_leaves_the_rest_alone():
    """RandConv (Xu et al. 2021): each chosen image convolved with its own kernel, checked
    against an independent loop of single-image convolutions; the crop and jitter draws, and
    every image it skips, are those of the same augmentation without it."""
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    plain = TrainAugment(32, crop_scale=[0.6, 1.0], color_jitter=0.3)
    conv = TrainAugment(32, crop_scale=[0.6, 1.0], color_jitter=0.3, rand_conv=0.5)
    p0 = plain.sample(x, torch.Generator().manual_seed(5))
    p1 = conv.sample(x, torch.Generator().manual_seed(5))
    assert torch.equal(p0["boxes"], p1["boxes"]) and torch.equal(p0["factors"], p1["factors"])
    assert 0 < int(p1["conv_on"].sum()) < 16 and set(p1["conv_size"].tolist()) <= {1, 3, 5, 7}
    before, after = plain.apply(x, p0), conv.apply(x, p1)
    skipped = ~p1["conv_on"]
    assert torch.equal(before[skipped], after[skipped])
    for i in torch.nonzero(p1["conv_on"]).flatten().tolist():
        k = int(p1["conv_size"][i])
        lo = (7 - k) // 2
        w = p1["conv_weights"][i][..., lo : lo + k, lo : lo + k]
        alone = conv.apply(x[i : i + 1], {key: value[i : i + 1] for key, value in p1.items()})
        assert torch.equal(alone[0], after[i])  # one image alone: the same bytes as in the batch
        pre = TrainAugment(32, crop_scale=[0.6, 1.0], color_jitter=0.3).apply(
            x[i : i + 1], {"boxes": p1["boxes"][i : i + 1], "factors": p1["factors"][i : i + 1]}
        )
        a = float(p1["conv_alpha"][i])
        y = pre.float() / 127.5 - 1
        c = torch.nn.functional.conv2d(
            torch.nn.functional.pad(y, (k // 2,) * 4, mode="reflect") if k > 1 else y, w
        )
        want = ((a * y + (1 - a) * c).clamp(-1, 1) + 1) * 127.5
        # the batch path convolves the unrounded jittered image; rounding moves it by < 1 level + blend
        assert (after[i].float() - want[0].round()).abs().max() <= 2
    # the kernels are He-normal at their own size: std 1 / sqrt(3 k^2)
    big = TrainAugment(8, rand_conv=1.0).sample(
        torch.zeros(4000, 3, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0)
    )
    for k in (1, 3, 5, 7):
        lo = (7 - k) // 2
        w = big["conv_weights"][big["conv_size"] == k][..., lo : lo + k, lo : lo + k]
        assert abs(float(w.std()) * (3 * k * k) ** 0.5 - 1) < 0.05
    assert bool(big["conv_on"].all())
    assert TrainAugment(8, rand_conv=0.5).active and not TrainAugment(8).active


def test_augment_config_is_checked():
    with pytest.raises(ValueError, match="crop_scale=\\[0.9, 0.5\\]"):
        TrainConfig(crop_scale=[0.9, 0.5])
    with pytest.raises(ValueError, match="rand_conv=1.5"):
        TrainConfig(rand_conv=1.5)
    with pytest.raises(ValueError, match="hue=0.7"):
        TrainConfig(hue=0.7)
    with pytest.raises(ValueError, match="rand_conv=-1"):
        TrainAugment(8, rand_conv=-1)
    with pytest.raises(ValueError, match="an area fraction"):
        TrainConfig(crop_scale=[0.5, 1.5])
    with pytest.raises(ValueError, match="color_jitter=-0.1"):
        TrainConfig(color_jitter=-0.1)


def test_folder_batches_pad_non_square_images_and_augment(tmp_path):
    _folder(tmp_path / "f", ids=4, per_id=4, size=(40, 20))  # 40 high, 20 wide
    cfg = TrainConfig.from_preset(
        "smoke", data=f"folder:{tmp_path / 'f'}", input_size=32, batch_size=4, val=[], flip=False
    )
    plain = TrainBatches(cfg, torch.device("cpu"))
    img = plain.images[0]
    assert img.shape == (3, 32, 32)
    assert img[:, :, :7].max() == 0 and img[:, :, -7:].max() == 0  # padded, not stretched
    aug = TrainBatches(cfg.replace(crop_scale=[0.6, 1.0], color_jitter=0.2), torch.device("cpu"))
    assert aug.images.shape[-1] == 42  # 32 / sqrt(0.6): the smallest crop spans ~32 px
    x1, y1 = aug.batch(5)
    x2, y2 = aug.batch(5)
    assert x1.shape == (4, 3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)


def test_cpu_real_preset_trains_on_cfp_and_scores_on_people_it_never_saw():
    cfg = TrainConfig.from_preset("cpu_real")
    assert cfg.data == "cfp" and cfg.val == ["cfp_heldout", "lfw"] and "cfp_fp" not in cfg.val
    assert cfg.crop_scale == [0.7, 1.0] and cfg.color_jitter > 0 and cfg.flip


# ----------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_cfp_trains_on_ids_001_450_and_validates_on_people_it_never_saw(real_data):
    real_data("cfp")
    real_data("lfw")
    got, note = resolve_validation(TrainConfig.from_preset("cpu", data="cfp"))
    assert got.val == ["cfp_heldout", "lfw"] and "cfp_heldout, lfw" in note
    assert "cfp_fp" not in got.val  # the official CFP-FP holds the 450 training people
