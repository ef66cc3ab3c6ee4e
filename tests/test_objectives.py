"""The objective seam: the generic contract every registered objective honours, the registry,
and the engine training an objective it has never heard of."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from nbfacelib.losses import (
    OBJECTIVES,
    Batch,
    MarginObjective,
    Objective,
    ObjectiveOutput,
    build_objective,
    list_margins,
    list_objectives,
    register_objective,
)
from nbfacelib.models import build_backbone
from nbfacelib.models.output import BackboneOutput, EmbeddingOnly, as_output
from nbfacelib.train import checkpoint as ckpt_io
from nbfacelib.train.config import TrainConfig

EMB, CLASSES, SIZE = 32, 8, 32


@register_objective(name="_test_centre_pull")
class CentrePull(Objective):
    """Test objective (no paper): ``L = mean_i ||x_i / ||x_i|| - c_{y_i}||^2`` with learnable
    centres c, plus a running mean of the loss as a buffer (state that moves in forward) and a
    counter of finished steps (state that moves in after_step). ``prepare`` mirrors the images."""

    def __init__(self, *, embedding_size: int, num_classes: int, momentum: float = 0.5):
        super().__init__(embedding_size=embedding_size, num_classes=num_classes)
        self.centres = torch.nn.Parameter(torch.randn(num_classes, embedding_size) * 0.1)
        self.momentum = momentum
        self.register_buffer("running_loss", torch.zeros(()))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.attached = False

    def prepare(self, images, labels, batch):
        return images.flip(3)

    def attach(self, backbone):
        self.attached = True  # (not the backbone itself: a Module attribute would be a child)

    def after_step(self, backbone):
        self.steps_done += 1

    def forward(self, output, labels, batch):
        x = torch.nn.functional.normalize(output.embedding.float())
        per_sample = (x - self.centres[labels]).pow(2).sum(1)
        loss = per_sample.mean()
        if self.training:
            with torch.no_grad():
                self.running_loss.mul_(self.momentum).add_((1 - self.momentum) * loss.detach())
        return ObjectiveOutput(
            loss=loss, weights=torch.ones_like(per_sample), logs={"centre_loss": loss.detach()}
        )


class _Mini(torch.nn.Module):
    """A very small backbone for engine runs (the contract test uses each objective's own)."""

    def __init__(self, embedding_size=EMB, input_size=SIZE, dropout=0.0):
        super().__init__()
        self.embedding_size, self.input_size, self.num_features = embedding_size, input_size, 8
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * (input_size // 4) ** 2, embedding_size)

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x):
        return self.fc(self.forward_features(x).flatten(1))


def _build(name: str) -> tuple[Objective, torch.nn.Module]:
    cls = OBJECTIVES.get(name)
    torch.manual_seed(0)
    backbone = build_backbone(cls.contract_backbone, embedding_size=EMB, input_size=SIZE)
    objective = build_objective(name, embedding_size=EMB, num_classes=CLASSES, **cls.contract_kwargs)
    objective.attach(backbone)
    return objective, backbone


def _batch(backbone, step=0):
    g = torch.Generator().manual_seed(step)
    images = torch.rand(2 * CLASSES, 3, SIZE, SIZE, generator=g) * 2 - 1
    labels = torch.arange(CLASSES).repeat(2)
    return Batch(images=images, labels=labels, step=step, model=backbone)


def _forward(objective, backbone, batch) -> ObjectiveOutput:
    with torch.no_grad():
        x = objective.prepare(batch.images, batch.labels, batch)
    return objective(as_output(backbone(x)), batch.labels, batch)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_margin_head_is_an_objective():
    assert set(list_margins()) <= set(list_objectives())
    objective = build_objective(
        "curricularface", embedding_size=EMB, num_classes=CLASSES, sample_rate=0.5, m=0.4
    )
    assert isinstance(objective, MarginObjective) and objective.head == "curricularface"
    assert objective.pfc.sample_rate == 0.5 and objective.margin.m == 0.4
    assert [p for g in objective.param_groups() for p in g["params"]] == [objective.pfc.weight]


@pytest.mark.parametrize("name", list_objectives())
def test_objective_contract(name, tmp_path):
    """Finite loss; gradients reach the backbone; the state survives a checkpoint round trip
    (weights_only file); a skipped step (engine: snapshot, non-finite loss, restore) leaves the
    state unchanged."""
    objective, backbone = _build(name)
    backbone.train()
    objective.train()

    # finite loss, gradient into the backbone
    out = _forward(objective, backbone, _batch(backbone, 0))
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), name
    assert out.weights is None or out.weights.shape == (2 * CLASSES,)
    out.loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads), f"{name}: no gradient reaches the backbone"
    objective.after_step(backbone)

    # checkpoint round trip: a fresh objective loaded from the file has the same state and loss
    state = objective.full_state_dict()
    ckpt_io.atomic_save({"objective": state}, tmp_path / "o.ckpt")
    fresh, _ = _build(name)
    fresh.load_full_state_dict(ckpt_io.load(tmp_path / "o.ckpt")["objective"])
    assert _same_state(fresh.full_state_dict(), state), name
    objective.eval()
    fresh.eval()
    backbone.eval()
    probe = _batch(backbone, 1)
    with torch.no_grad():
        assert torch.equal(_forward(objective, backbone, probe).loss, _forward(fresh, backbone, probe).loss)

    # a skipped step: one embedding is inf, the loss is not finite, the engine restores
    objective.train()
    before = objective.full_state_dict()
    snap = objective.snapshot()
    bad = _batch(backbone, 2)
    with torch.no_grad():
        clean = as_output(backbone(objective.prepare(bad.images, bad.labels, bad)))
    emb = clean.embedding.clone()
    emb[0] = float("inf")
    # the other outputs (a PFE variance, patch weights) stay as the backbone gave them
    loss = objective(dataclasses.replace(clean, embedding=emb), bad.labels, bad).loss
    assert not math.isfinite(float(loss))
    objective.restore(snap)
    assert _same_state(objective.full_state_dict(), before), f"{name}: a skipped step changed the state"


def test_build_objective_sample_rate_and_errors():
    with pytest.raises(ValueError, match=r"unknown objective 'arcfase'; known: .*arcface"):
        build_objective("arcfase", embedding_size=EMB, num_classes=CLASSES)
    with pytest.raises(ValueError, match=r"'_test_centre_pull' samples no class centres: sample_rate=0.5"):
        build_objective("_test_centre_pull", embedding_size=EMB, num_classes=CLASSES, sample_rate=0.5)
    plain = build_objective("_test_centre_pull", embedding_size=EMB, num_classes=CLASSES, sample_rate=1.0)
    assert isinstance(plain, CentrePull)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'gamma'"):
        build_objective("_test_centre_pull", embedding_size=EMB, num_classes=CLASSES, gamma=2)
    with pytest.raises(
        ValueError, match=r"config loss='arcfase': not a registered objective; known: .*cosface"
    ):
        TrainConfig(loss="arcfase", steps=1)
    with pytest.raises(ValueError, match="give sample_rate as the config field"):
        TrainConfig(loss_kwargs={"sample_rate": 0.5}, steps=1)


def test_as_output_and_embedding_only():
    x = torch.randn(2, 4)
    assert as_output(x).embedding is x and as_output(x).features == {}
    out = BackboneOutput(embedding=x, log_sigma2=torch.zeros(2, 1))
    assert as_output(out) is out
    with pytest.raises(TypeError, match="must return a Tensor or a BackboneOutput, got tuple"):
        as_output((x,))

    class Rich(torch.nn.Module):
        def forward(self, images):
            return BackboneOutput(embedding=images.mean((2, 3)), features={"map": images})

    assert torch.equal(EmbeddingOnly(Rich())(torch.ones(3, 2, 4, 4)), torch.ones(3, 2))


def test_fit_trains_an_objective_it_does_not_know(tmp_path):
    """fit() builds a registered objective by name, hands its parameters to the optimizer,
    calls prepare/forward/after_step, logs its scalars, checkpoints and resumes its state."""
    from nbfacelib.models import BACKBONES
    from nbfacelib.train import fit

    if "_test_mini" not in BACKBONES:
        BACKBONES.register(_Mini, name="_test_mini")

    def cfg(out, **kw):
        base = dict(
            out=str(out),
            backbone="_test_mini",
            loss="_test_centre_pull",
            loss_kwargs={"momentum": 0.9},
            steps=4,
            batch_size=8,
            input_size=32,
            embedding_size=EMB,
            data="synthetic:ids=8,per_id=4,seed=0",
            val=[],
            warmup_steps=0,
            poly_power=0.0,  # a constant lr: runs of 2, 3 and 4 steps share their first steps
            log_every=2,
            progress=False,
            device="cpu",
            deterministic=True,
        )
        base.update(kw)
        return TrainConfig.from_preset("smoke", **base)

    result = fit(cfg(tmp_path / "a"))
    assert math.isfinite(result["final_loss"]) and result["skipped_steps"] == 0
    state = ckpt_io.load(tmp_path / "a" / "last.ckpt")
    obj = state["objective"]
    assert int(obj["steps_done"]) == 4 and float(obj["running_loss"]) > 0
    init = build_objective("_test_centre_pull", embedding_size=EMB, num_classes=8)
    assert obj["centres"].shape == (8, EMB)
    assert not torch.allclose(obj["centres"], init.centres.detach())  # the optimizer moved them
    assert any(s.get("momentum_buffer") is not None for s in state["optimizer"]["state"].values())
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(r["centre_loss"] > 0 for r in rows)

    # stopped after step 2, resumed: the same final objective state
    fit(cfg(tmp_path / "b", steps=2, ckpt_every=2))
    fit(cfg(tmp_path / "b", steps=4, resume=True))
    resumed = ckpt_io.load(tmp_path / "b" / "last.ckpt")["objective"]
    assert _same_state(resumed, obj)

    # a skipped step leaves the objective's state as it was
    fit(cfg(tmp_path / "c", steps=4, inject_nan_steps=[3]))
    fit(cfg(tmp_path / "d", steps=3))
    skipped = ckpt_io.load(tmp_path / "c" / "last.ckpt")["objective"]
    assert _same_state(skipped, ckpt_io.load(tmp_path / "d" / "last.ckpt")["objective"])
