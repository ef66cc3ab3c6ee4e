"""Notebook 07's experiment module (nbfacelib/experiments/transface.py): the ablation and
occlusion variants, the held-out set with forced occluders, patch occlusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbfacelib.experiments import transface as tfx
from nbfacelib.models import build_backbone
from nbfacelib.train.config import TrainConfig


def _base() -> TrainConfig:
    return TrainConfig.from_preset("smoke", backbone="vit_face_tiny", input_size=64, steps=2)


def test_ablation_and_occlusion_variants():
    base = _base()
    rows = tfx.ablation_variants(base, None, s=16.0, m=0.5, k=3)
    assert [v.name for v in rows] == ["baseline", "+dpap", "+ehsm", "+dpap+ehsm"]
    kw = {v.name: v.config.loss_kwargs for v in rows}
    assert kw["baseline"] == {"s": 16.0, "m": 0.5, "k": 3, "dpap": False, "ehsm": False}
    assert kw["+dpap+ehsm"] == {"s": 16.0, "m": 0.5, "k": 3}
    assert all(v.config.loss == "transface" and v.config.backbone == "vit_face_tiny" for v in rows)
    occ = tfx.occlusion_variants(
        base, ["aofd", "aofd_random"], {"s": 16.0, "m": 0.5, "k": 3, "p": 0.2}, p=0.5
    )
    assert [v.config.loss_kwargs for v in occ] == [
        {"s": 16.0, "m": 0.5, "p": 0.5, "placement": "gradient"},
        {"s": 16.0, "m": 0.5, "p": 0.5, "placement": "random"},
    ]
    with pytest.raises(ValueError, match="unknown ablation rows"):
        tfx.ablation_variants(base, ["+dpa"])
    with pytest.raises(ValueError, match="unknown occlusion rows"):
        tfx.occlusion_variants(base, ["adversarial"], {})


def test_heldout_with_occluders_renders_the_same_faces_with_the_occluder_on():
    held = tfx.heldout_with_occluders(
        6, 3, 20, identity_offset=64, input_size=64, kinds=("sunglasses", "hat")
    )
    es, n = held.evalset, held.n
    assert n == 18 and len(es.images) == 3 * n and len(es.quality) == 3 * n
    assert np.array_equal(es.labels[:n], es.labels[n : 2 * n])
    assert (es.idx1 < n).all() and (es.idx2 < n).all()  # the grid's pairs: as rendered
    hat = held.pairs("hat")
    assert np.array_equal(hat.idx1, es.idx1) and np.array_equal(hat.idx2, es.idx2 + 2 * n)
    assert hat.quality is None and "hat forced on" in hat.description
    # the occluded renderings differ from the as-rendered ones (but are the same people)
    assert (es.images[n : 2 * n] != es.images[:n]).flatten(1).any(1).float().mean() > 0.5
    with pytest.raises(ValueError, match=r"occluder kinds \['scarf'\] unknown"):
        tfx.heldout_with_occluders(6, 3, 20, 64, 64, kinds=("scarf",))


def test_occlude_cells_sets_exactly_those_patches():
    images = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    cells = torch.tensor([[0, 5], [15, 3], [6, 6]])  # a 4x4 grid of 4 px patches
    out = tfx.occlude_cells(images, cells, patch_size=4, grid_cols=4, fill=128)
    expected = images.clone()
    for i in range(3):
        for cell in cells[i].tolist():
            r, c = divmod(cell, 4)
            expected[i, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 128
    assert torch.equal(out, expected)


def test_patch_occlusion_uses_the_models_own_top_patches(monkeypatch):
    torch.manual_seed(0)
    model = build_backbone("vit_face_tiny", embedding_size=16).eval()
    held = tfx.heldout_with_occluders(6, 3, 20, identity_offset=64, input_size=64, kinds=("hat",))
    seen = {}
    original = tfx.occlude_cells

    def spy(images, cells, patch_size, grid_cols, fill=128):
        seen.setdefault("cells", []).append(cells)
        return original(images, cells, patch_size, grid_cols, fill)

    monkeypatch.setattr(tfx, "occlude_cells", spy)
    out = tfx.patch_occlusion(model, held.evalset, k=3, n_images=held.n)
    assert set(out) == {"top-k", "random-k"} and all(0 <= m["accuracy"] <= 1 for m in out.values())
    weights = tfx.patch_weights(model, held.evalset.images[: held.n])
    assert torch.equal(seen["cells"][0], weights.topk(3, dim=1).indices)
    assert seen["cells"][1].shape == (held.n, 3) and not torch.equal(seen["cells"][1], seen["cells"][0])
    maps = tfx.patch_weight_maps(model, held.evalset.images[:4])
    assert maps.shape == (4, 8, 8) and np.allclose(maps.mean((1, 2)), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="k=65 is larger"):
        tfx.patch_occlusion(model, held.evalset, k=65, n_images=held.n)


def test_drop_and_by_seed():
    rows = [
        {"variant": "a", "seed": 0, "occlusion": "none", "accuracy": 0.9},
        {"variant": "a", "seed": 0, "occlusion": "hat", "accuracy": 0.7},
        {"variant": "a", "seed": 0, "occlusion": "top-k", "accuracy": 0.8},
        {"variant": "a", "seed": 1, "occlusion": "none", "accuracy": 0.6},
        {"variant": "a", "seed": 1, "occlusion": "hat", "accuracy": 0.6},
    ]
    assert tfx.drop(rows, "a", ["hat", "top-k"]) == pytest.approx({0: 0.15, 1: 0.0})
    assert tfx.by_seed(rows, "accuracy", variant="a", occlusion="none") == {0: 0.9, 1: 0.6}
