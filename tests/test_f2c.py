"""F2C (and DCQ's settings): the LRU class pool, the in-batch other image, the EMA gallery network,
equality with a full classifier when the pool holds every class, state through fit()."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from nbfacelib.losses import Batch, build_objective, list_objectives
from nbfacelib.losses.f2c import ClassQueue, other_image_index
from nbfacelib.models import build_backbone
from nbfacelib.models.output import as_output

EMB, SIZE = 16, 32


def _feats(n, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_queue_insert_fills_empty_slots_in_order():
    q = ClassQueue(4, 4)
    f = _feats(2)
    slots = q.update(torch.tensor([5, 7]), f)
    assert slots.tolist() == [0, 1]
    assert q.ids.tolist() == [5, 7, -1, -1]
    assert q.last_used.tolist() == [1, 1, -1, -1] and int(q.clock) == 1
    torch.testing.assert_close(q.centres[:2], F.normalize(f))
    assert q.slots_of(torch.tensor([7, 5, 9])).tolist() == [1, 0, -1]


def test_queue_refresh_replaces_the_centre_in_its_slot():
    q = ClassQueue(4, 4)
    q.update(torch.tensor([5, 7]), _feats(2))
    new = _feats(1, seed=1)
    assert q.update(torch.tensor([7]), new).tolist() == [1]
    assert q.ids.tolist() == [5, 7, -1, -1]
    torch.testing.assert_close(q.centres[1], F.normalize(new)[0])
    assert q.last_used.tolist() == [1, 2, -1, -1]


def test_queue_evicts_the_least_recently_used_slot():
    q = ClassQueue(4, 4)
    q.update(torch.tensor([5, 7]), _feats(2))  # clock 1
    q.update(torch.tensor([9]), _feats(1))  # clock 2
    q.update(torch.tensor([11]), _feats(1))  # clock 3: full
    q.update(torch.tensor([5]), _feats(1))  # clock 4: 5 refreshed, 7 is now the oldest
    assert q.update(torch.tensor([13]), _feats(1)).tolist() == [1]  # 7's slot
    assert q.ids.tolist() == [5, 13, 9, 11]
    q.update(torch.tensor([15, 17]), _feats(2))  # evicts 9 (clock 2) and 11 (clock 3)
    assert sorted(q.ids.tolist()) == [5, 13, 15, 17]


def test_queue_never_evicts_an_identity_refreshed_in_the_same_update():
    q = ClassQueue(2, 4)
    q.update(torch.tensor([2]), _feats(1))  # clock 1: 2 is the oldest...
    q.update(torch.tensor([1]), _feats(1))  # clock 2
    q.update(torch.tensor([2, 3]), _feats(2))  # ...but refreshed here: 3 takes 1's slot
    assert q.ids.tolist() == [2, 3]


def test_queue_averages_duplicates_into_one_centre():
    q = ClassQueue(4, 4)
    f = _feats(3)
    slots = q.update(torch.tensor([3, 3, 4]), f)
    assert slots[0] == slots[1] != slots[2]
    assert q.ids.tolist().count(3) == 1
    torch.testing.assert_close(q.centres[slots[0]], F.normalize((f[0] + f[1])[None])[0])


def test_queue_smaller_than_the_batch_identities_is_a_clear_error():
    with pytest.raises(ValueError, match=r"queue_size=2 is smaller than the 3 identities of this batch"):
        ClassQueue(2, 4).update(torch.tensor([1, 2, 3, 1]), _feats(4))
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        ClassQueue(0, 4)


def test_other_image_is_the_next_sample_of_the_same_identity_or_itself():
    labels = torch.tensor([4, 1, 4, 2, 1, 4])
    assert other_image_index(labels).tolist() == [2, 4, 5, 3, 1, 0]


def _setup(queue_size, momentum=0.99, classes=6, **kw):
    torch.manual_seed(0)
    backbone = build_backbone("ir_tiny", embedding_size=EMB, input_size=SIZE)
    obj = build_objective(
        "f2c", embedding_size=EMB, num_classes=classes, queue_size=queue_size, momentum=momentum, **kw
    )
    obj.attach(backbone)
    return obj, backbone


def _batch(backbone, classes=6, per_class=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(classes * per_class, 3, SIZE, SIZE, generator=g) * 2 - 1
    labels = torch.arange(classes).repeat(per_class)
    return Batch(images=images, labels=labels, step=0, model=backbone)


def test_gallery_follows_the_backbone_by_the_ema_formula():
    obj, backbone = _setup(8, momentum=0.9)
    before = {k: v.clone() for k, v in obj.gallery.state_dict().items()}
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p))
    backbone.train()
    backbone(torch.rand(4, 3, SIZE, SIZE))  # moves the BN running statistics
    obj.after_step(backbone)
    now, b = obj.gallery.state_dict(), backbone.state_dict()
    for k, g0 in before.items():
        if g0.is_floating_point():
            torch.testing.assert_close(now[k], 0.9 * g0 + 0.1 * b[k])
        else:  # BN's num_batches_tracked: copied
            assert torch.equal(now[k], b[k])
    assert not any(p.requires_grad for p in obj.gallery.parameters())


def test_full_pool_and_momentum_zero_equal_a_full_classifier_from_the_same_centres():
    """Q >= classes, momentum 0: the gallery network is the backbone after a step, the pool holds
    every class, and F2C's loss and logits are those of a full classifier whose row k is the
    backbone's (eval) embedding of class k's other images -- computed here independently."""
    classes, s = 6, 32.0
    obj, backbone = _setup(classes, momentum=0.0, classes=classes)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    obj.after_step(backbone)  # momentum 0: gallery := backbone
    batch = _batch(backbone, classes)
    obj.train()
    backbone.eval()
    emb = backbone(batch.images)
    out = obj(as_output(emb), batch.labels, batch)

    with torch.no_grad():  # the reference: per class, the mean direction of the other images
        other = backbone(batch.images[other_image_index(batch.labels)]).float()
    centres = torch.zeros(classes, EMB).index_add_(0, batch.labels, other)
    full = s * F.linear(F.normalize(emb.float()), F.normalize(centres))
    torch.testing.assert_close(out.loss, F.cross_entropy(full, batch.labels))
    slots = obj.queue.slots_of(torch.arange(classes))
    assert sorted(slots.tolist()) == list(range(classes))
    pool = s * obj.pool_logits(emb, obj.queue.centres, obj.queue.ids)
    torch.testing.assert_close(pool[:, slots], full)
    assert float(out.logs["other_image_fraction"]) == 1.0


def test_forward_before_attach_and_a_too_small_pool_are_clear_errors():
    obj = build_objective("f2c", embedding_size=EMB, num_classes=6, queue_size=3)
    backbone = build_backbone("ir_tiny", embedding_size=EMB, input_size=SIZE)
    batch = _batch(backbone)
    emb = as_output(backbone(batch.images))
    with pytest.raises(RuntimeError, match="attach"):
        obj(emb, batch.labels, batch)
    obj.attach(backbone)
    with pytest.raises(ValueError, match=r"queue_size=3 is smaller than the 6 identities"):
        obj(emb, batch.labels, batch)


def test_defaults_and_dcq_variant():
    f2c = build_objective("f2c", embedding_size=EMB, num_classes=100_000)
    assert (f2c.queue.size, f2c.s, f2c.m, f2c.momentum) == (1000, 32.0, 0.0, 0.99)
    assert build_objective("f2c", embedding_size=EMB, num_classes=50).queue.size == 50  # capped
    dcq = build_objective("dcq", embedding_size=EMB, num_classes=100_000)
    assert (dcq.queue.size, dcq.s, dcq.m, dcq.momentum) == (8192, 50.0, 0.3, 0.999)
    assert {"f2c", "dcq"} <= set(list_objectives())
    with pytest.raises(ValueError, match="momentum"):
        build_objective("f2c", embedding_size=EMB, num_classes=10, momentum=1.5)


def test_fit_with_f2c_checkpoints_resumes_and_skips(tmp_path):
    """The pool and the gallery network are in last.ckpt; 2 + 2 resumed steps give the 4-step
    run's weights and pool; a NaN step leaves the pool as it was."""
    from nbfacelib.train import checkpoint as ckpt_io
    from nbfacelib.train import fit

    base = dict(
        backbone="ir_tiny",
        embedding_size=EMB,
        input_size=SIZE,
        data="synthetic:ids=12,per_id=4,seed=0",
        val=[],
        batch_size=16,
        loss="f2c",
        loss_kwargs={"queue_size": 12, "momentum": 0.5},
        lr=0.05,
        poly_power=0.0,  # a constant lr: the 2-step run's schedule then equals the 4-step run's
        progress=False,
        log_every=1,
    )
    fit({**base, "steps": 4, "out": str(tmp_path / "straight")})
    fit({**base, "steps": 2, "out": str(tmp_path / "resumed")})
    fit({**base, "steps": 4, "out": str(tmp_path / "resumed"), "resume": True})
    a = ckpt_io.load(tmp_path / "straight" / "last.ckpt")
    b = ckpt_io.load(tmp_path / "resumed" / "last.ckpt")
    assert {"queue.centres", "queue.ids", "queue.last_used", "queue.clock"} <= set(a["objective"])
    assert any(k.startswith("gallery.") for k in a["objective"])
    for k, v in a["objective"].items():
        assert torch.equal(v, b["objective"][k]), k
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert "other_image_fraction" in json.dumps(lines)

    fit({**base, "steps": 2, "out": str(tmp_path / "nan"), "inject_nan_steps": [1]})
    c = ckpt_io.load(tmp_path / "nan" / "last.ckpt")
    one = ckpt_io.load(tmp_path / "resumed" / "last.ckpt")  # (4 steps; compare the clock)
    assert int(c["objective"]["queue.clock"]) == 1 and c["skipped_steps"] == 1
    assert int(one["objective"]["queue.clock"]) == 4
