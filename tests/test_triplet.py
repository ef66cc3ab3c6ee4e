"""Triplet loss (FaceNet mining rules) against a per-triplet loop written here, against
pytorch-metric-learning's miners, and the identity-balanced P x K sampler of the engine."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from nbfacelib.losses import Batch, build_objective
from nbfacelib.losses.triplet import mine_triplets, pairwise_distances
from nbfacelib.models.output import BackboneOutput
from nbfacelib.train.config import TrainConfig
from nbfacelib.train.data import TrainBatches


def _embeddings(n_ids=4, k=3, dim=8, seed=0, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    x = centres.repeat_interleave(k, 0) + spread * torch.randn(n_ids * k, dim, generator=g)
    return x, torch.arange(n_ids).repeat_interleave(k)


def _loop(x: torch.Tensor, labels: torch.Tensor, margin: float, mining: str, squared: bool):
    """Independent reference: every (a, p, n) in Python, float64, from the papers' rules.
    Returns (loss, number of active triplets, number of selected triplets)."""
    f = [[c / math.sqrt(sum(u * u for u in v)) for c in v] for v in x.double().tolist()]
    y = labels.tolist()

    def d(i, j):
        s = sum((u - v) ** 2 for u, v in zip(f[i], f[j], strict=True))
        return s if squared else math.sqrt(s)

    n = len(y)
    anchors = range(n)
    triplets = []
    if mining == "batch_hard":
        for a in anchors:
            ps = [p for p in range(n) if p != a and y[p] == y[a]]
            ns = [m for m in range(n) if y[m] != y[a]]
            if ps and ns:
                triplets.append((a, max(ps, key=lambda p: d(a, p)), min(ns, key=lambda m: d(a, m))))
    else:
        for a, p, m in itertools.product(anchors, anchors, anchors):
            if p == a or y[p] != y[a] or y[m] == y[a]:
                continue
            gap = d(a, m) - d(a, p)
            if mining == "batch_all" or (mining == "semi_hard" and 0 < gap < margin):
                triplets.append((a, p, m))
    losses = [max(0.0, d(a, p) - d(a, m) + margin) for a, p, m in triplets]
    active = [v for v in losses if v > 0]
    if mining == "batch_all":
        loss = sum(active) / max(1, len(active))
    else:
        loss = sum(losses) / max(1, len(losses))
    return loss, len(active), len(triplets)


def _objective(**kw):
    return build_objective("triplet", embedding_size=8, num_classes=4, **kw)


def _run(obj, x, labels, step=0):
    batch = Batch(
        images=torch.zeros(len(labels), 3, 4, 4), labels=labels, step=step, model=torch.nn.Identity()
    )
    return obj(BackboneOutput(embedding=x), labels, batch)


@pytest.mark.parametrize("mining", ["batch_all", "semi_hard", "batch_hard"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_loss_and_active_count_match_the_loop(mining, squared, margin):
    x, labels = _embeddings(seed=int(margin * 100))
    out = _run(_objective(margin=margin, mining=mining, squared=squared), x, labels)
    loss, n_active, n_selected = _loop(x, labels, margin, mining, squared)
    assert float(out.loss) == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert int(out.logs["active_triplets"]) == n_active
    assert int(out.logs["triplets"]) == n_selected
    assert float(out.logs["active_fraction"]) == pytest.approx(n_active / max(1, n_selected))
    _, n_all_active, n_valid = _loop(x, labels, margin, "batch_all", squared)
    mean_all, _, _ = _loop(x, labels, margin, "batch_all", squared)
    # hinge_all: the mean over every valid triplet = batch-all's mean over active x active / valid
    assert float(out.logs["hinge_all"]) == pytest.approx(
        mean_all * n_all_active / n_valid, rel=1e-5, abs=1e-7
    )


def test_random_triplets_are_the_official_rule():
    """One random (p, n) per anchor, kept when d(a,n) - d(a,p) < alpha, averaged over the kept:
    document 001's ``sum(basic_loss) / max(1, len(hard_triplets))``; same step, same draw."""
    x, labels = _embeddings(n_ids=5, k=4, seed=3)
    obj = _objective(margin=0.5, mining="random")
    dist = pairwise_distances(torch.nn.functional.normalize(x), squared=False)
    g = torch.Generator().manual_seed(2)  # the objective's stream at seed 0, step 2
    select, valid = mine_triplets(dist, labels, 0.5, "random", g)
    assert (select <= valid).all()
    assert (select.sum((1, 2)) <= 1).all()  # at most one triplet per anchor
    a, p, n = torch.nonzero(select, as_tuple=True)
    gap = dist[a, n] - dist[a, p]
    assert (gap < 0.5).all()
    expected = (dist[a, p] - dist[a, n] + 0.5).clamp_min(0)
    expected = expected[expected > 0].sum() / max(1, int((expected > 0).sum()))
    assert float(_run(obj, x, labels, step=2).loss) == pytest.approx(float(expected), rel=1e-6)
    assert select.any() and float(_run(obj, x, labels, step=5).loss) != float(expected)  # another draw
    # with every triplet easy (gap > alpha) nothing is kept
    far, lab = torch.eye(4).repeat_interleave(2, 0), torch.arange(4).repeat_interleave(2)
    sel, _ = mine_triplets(pairwise_distances(far, False), lab, 0.5, "random", g)
    assert not sel.any()


def test_against_pytorch_metric_learning_miners():
    """Cross-check of the mining masks with pytorch-metric-learning (plain distances on
    normalised embeddings, as document 001)."""
    from pytorch_metric_learning import losses, miners
    from pytorch_metric_learning.distances import LpDistance

    x, labels = _embeddings(n_ids=5, k=4, seed=11, spread=0.8)
    dist = pairwise_distances(torch.nn.functional.normalize(x), squared=False)
    lp = LpDistance(normalize_embeddings=True, p=2, power=1)
    margin = 0.3

    def as_set(t):
        return set(zip(*(v.tolist() for v in t), strict=True))

    sel, valid = mine_triplets(dist, labels, margin, "semi_hard")
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=lp)(x, labels)
    assert as_set(torch.nonzero(sel, as_tuple=True)) == as_set(pml) and sel.any()

    # batch-all's active triplets = pml's "all" (d(a,n) - d(a,p) <= margin)
    active = valid & (dist[:, None, :] - dist[:, :, None] < margin)
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets="all", distance=lp)(x, labels)
    assert as_set(torch.nonzero(active, as_tuple=True)) == as_set(pml)

    sel, _ = mine_triplets(dist, labels, margin, "batch_hard")
    pml = miners.BatchHardMiner(distance=lp)(x, labels)
    assert as_set(torch.nonzero(sel, as_tuple=True)) == as_set(pml)

    # the batch-all loss equals pml's triplet loss (mean over the non-zero triplets)
    ours = _run(_objective(margin=margin, mining="batch_all"), x, labels).loss
    theirs = losses.TripletMarginLoss(margin=margin, distance=lp)(x, labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


@pytest.mark.parametrize("mining", ["batch_all", "semi_hard", "batch_hard", "random"])
def test_no_valid_triplet_is_zero_with_a_gradient(mining):
    # every identity far from every other: all triplets easy (inactive)
    x = torch.eye(4).repeat_interleave(2, 0).requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(2)
    out = _run(_objective(margin=0.2, mining=mining), x, labels)
    assert out.loss.requires_grad and float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert torch.isfinite(x.grad).all()
    # one identity only: no negatives, no valid triplet
    y = torch.randn(4, 8, requires_grad=True)
    out = _run(_objective(mining=mining), y, torch.zeros(4, dtype=torch.long))
    assert float(out.loss.detach()) == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert torch.isfinite(y.grad).all()


def test_one_image_per_identity_is_an_error():
    with pytest.raises(ValueError, match="one image per identity.*images_per_identity"):
        _run(_objective(), torch.randn(6, 8), torch.arange(6))
    with pytest.raises(ValueError, match="images_per_identity=1"):
        _objective(images_per_identity=1)
    with pytest.raises(ValueError, match="mining='hardest'"):
        _objective(mining="hardest")


def test_plain_distance_gradient_is_finite_at_zero():
    x = torch.randn(3, 5, dtype=torch.float64)
    x = torch.cat([x, x[:1]]).requires_grad_(True)  # rows 0 and 3 identical: distance 0
    d = pairwise_distances(x, squared=False)
    assert d[0, 3] < 1e-5
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(d**2, pairwise_distances(x, squared=True), atol=1e-10, rtol=1e-8)


# --------------------------------------------------------------------------- the P x K sampler


def _cfg(**kw):
    base = dict(
        data="synthetic:ids=12,per_id=5,seed=0", batch_size=8, steps=2, device="cpu", val=[], flip=False
    )
    base.update(kw)
    return TrainConfig(**base)


def test_sampler_gives_p_identities_times_k_images():
    data = TrainBatches(_cfg(grad_accum=2), torch.device("cpu"))
    data.set_images_per_identity(4)  # what fit() does with the objective's images_per_identity
    assert data.cfg.images_per_identity == 4
    images, labels = data.batch(3)
    assert images.shape[0] == 16
    for chunk in labels.split(8):  # each micro-batch: 2 identities x 4 images, grouped
        groups = chunk.view(2, 4)
        assert (groups == groups[:, :1]).all()
    again, labels2 = data.batch(3)
    assert torch.equal(labels, labels2) and torch.equal(images, again)  # a pure function of the step
    # K distinct images of an identity (per_id=5 >= K): no two equal images in a group
    first = images[:4].flatten(1).float()
    assert torch.cdist(first, first).fill_diagonal_(1).min() > 0


def test_sampler_layout_errors():
    data = TrainBatches(_cfg(), torch.device("cpu"))
    with pytest.raises(
        ValueError, match="images_per_identity=3: needs an int K >= 2 that divides batch_size=8"
    ):
        data.set_images_per_identity(3)
    with pytest.raises(ValueError, match=r"P = 1 identities per batch"):
        data.set_images_per_identity(8)
    data.set_images_per_identity(None)
    assert data.cfg.images_per_identity == 1
    other = TrainBatches(_cfg(images_per_identity=2, loss="triplet"), torch.device("cpu"))
    with pytest.raises(ValueError, match="'triplet' asks for images_per_identity=4 but the config sets"):
        other.set_images_per_identity(4)


def test_sampler_on_a_folder(orl_root):
    data = TrainBatches(
        _cfg(data=f"folder:{orl_root}", input_size=32, holdout_ids=4, batch_size=12), torch.device("cpu")
    )
    data.set_images_per_identity(3)
    images, labels = data.batch(0)
    assert images.shape == (12, 3, 32, 32)
    groups = labels.view(4, 3)
    assert (groups == groups[:, :1]).all()
    assert int(labels.max()) < data.num_classes


def test_fit_trains_triplet_with_balanced_batches(tmp_path):
    from nbfacelib.train import fit

    cfg = TrainConfig.from_preset(
        "smoke",
        out=str(tmp_path / "t"),
        backbone="ir_tiny",
        loss="triplet",
        loss_kwargs={"margin": 0.3, "mining": "semi_hard", "images_per_identity": 4},
        steps=3,
        batch_size=16,
        input_size=112,
        embedding_size=32,
        data="synthetic:ids=16,per_id=6,seed=0",
        val=[],
        log_every=1,
        progress=False,
        device="cpu",
    )
    result = fit(cfg)
    assert result["steps"] == 3 and np.isfinite(result["final_loss"])
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["active_fraction"] <= 1 and r["triplets"] > 0 for r in rows)
