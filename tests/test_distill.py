"""Distillation objective: the terms against per-sample loops, the frozen teacher, the
projection rule, teachers from a training run, and the engine training a student."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nbfacelib.losses import Batch, build_objective
from nbfacelib.losses.distill import l2_distillation, relational_distillation
from nbfacelib.models import build_backbone
from nbfacelib.models.output import BackboneOutput
from nbfacelib.train.config import TrainConfig

EMB, SIZE = 16, 32


def test_terms_match_per_sample_loops():
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(6, EMB, generator=g, dtype=torch.float64),
        torch.randn(6, EMB, generator=g, dtype=torch.float64),
    )

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    S, T = [unit(v) for v in s.tolist()], [unit(v) for v in t.tolist()]
    l2 = sum(sum((a - b) ** 2 for a, b in zip(S[i], T[i], strict=True)) for i in range(6)) / 6
    assert float(l2_distillation(s, t)) == pytest.approx(l2, rel=1e-12)
    cos_st = sum(sum(a * b for a, b in zip(S[i], T[i], strict=True)) for i in range(6)) / 6
    assert l2 == pytest.approx(2 - 2 * cos_st, rel=1e-12)  # the angular reading of the L2 term

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v, strict=True))

    pairs = [(i, j) for i in range(6) for j in range(6) if i != j]
    rel = sum((dot(S[i], S[j]) - dot(T[i], T[j])) ** 2 for i, j in pairs) / len(pairs)
    assert float(relational_distillation(s, t)) == pytest.approx(rel, rel=1e-12)
    # both vanish when the student is the teacher up to scale
    assert float(l2_distillation(3 * t, t)) == pytest.approx(0, abs=1e-12)
    assert float(relational_distillation(2 * t, t)) == pytest.approx(0, abs=1e-12)


def _objective(**kw):
    base = {"teacher_backbone": "ir_tiny", "head_kwargs": {"s": 16.0}}
    base.update(kw)
    return build_objective("distill", embedding_size=EMB, num_classes=4, **base)


def _batch(student, n=8):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1
    return Batch(images=images, labels=torch.arange(4).repeat(n // 4), step=0, model=student)


def test_teacher_is_frozen_eval_and_not_state():
    student = build_backbone("mbf_tiny", embedding_size=EMB, input_size=SIZE)
    obj = _objective(l2_weight=2.0, relational_weight=1.0)
    obj.attach(student)
    obj.train()
    assert not obj.teacher.training
    assert not any(n.startswith("teacher") for n in obj.state_dict())
    teacher_params = {id(p) for p in obj.teacher.parameters()}
    assert not teacher_params & {id(p) for p in obj.parameters()}
    assert not teacher_params & {id(p) for g in obj.param_groups() for p in g["params"]}
    before = {k: v.clone() for k, v in obj.teacher.state_dict().items()}
    batch = _batch(student)
    out = obj(BackboneOutput(embedding=student(batch.images)), batch.labels, batch)
    out.loss.backward()
    assert all(p.grad is None for p in obj.teacher.parameters())
    # BN running statistics of the teacher did not move (eval mode)
    assert all(torch.equal(v, obj.teacher.state_dict()[k]) for k, v in before.items())
    total = out.logs["cls_loss"] + 2.0 * out.logs["distill_l2"] + out.logs["distill_relational"]
    assert float(out.loss.detach()) == pytest.approx(float(total), rel=1e-6)
    assert -1 <= float(out.logs["teacher_cos"]) <= 1


def test_teacher_runs_in_the_engines_precision():
    student = build_backbone("ir_tiny", embedding_size=EMB, input_size=SIZE)
    obj = _objective()
    obj.attach(student)
    seen = {}
    obj.teacher.conv1.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype, grad=o.requires_grad))
    batch = _batch(student)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        obj(BackboneOutput(embedding=student(batch.images)), batch.labels, batch)
    assert seen == {"dtype": torch.bfloat16, "grad": False}


def test_embedding_size_mismatch_needs_a_projection():
    with pytest.raises(ValueError, match=r"gives 64-d embeddings, the student 16-d; set projection=True"):
        _objective(teacher_kwargs={"embedding_size": 64})
    only_rel = _objective(teacher_kwargs={"embedding_size": 64}, l2_weight=0.0, relational_weight=1.0)
    assert only_rel.projection is None
    obj = _objective(teacher_kwargs={"embedding_size": 64}, projection=True)
    assert obj.projection.weight.shape == (64, EMB)
    assert "projection.weight" in obj.full_state_dict()
    assert any(p is obj.projection.weight for g in obj.param_groups() for p in g["params"])
    student = build_backbone("ir_tiny", embedding_size=EMB, input_size=SIZE)
    obj.attach(student)
    batch = _batch(student)
    out = obj(BackboneOutput(embedding=student(batch.images)), batch.labels, batch)
    out.loss.backward()
    assert obj.projection.weight.grad is not None


def test_bad_teacher_options():
    with pytest.raises(ValueError, match="exactly one of teacher"):
        build_objective("distill", embedding_size=EMB, num_classes=4)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        _objective(teacher_backbone=None, teacher="/nonexistent/run")
    obj = _objective(teacher_kwargs={"input_size": 64})
    with pytest.raises(ValueError, match="takes 64 px input, the student 32 px"):
        obj.attach(build_backbone("ir_tiny", embedding_size=EMB, input_size=SIZE))


def test_teacher_from_a_run_and_a_distilled_student(tmp_path):
    from nbfacelib.train import fit

    common = dict(
        steps=2,
        batch_size=8,
        input_size=SIZE,
        embedding_size=EMB,
        data="synthetic:ids=8,per_id=4,seed=0",
        val=[],
        log_every=1,
        progress=False,
        device="cpu",
    )
    fit(TrainConfig.from_preset("smoke", out=str(tmp_path / "teacher"), backbone="ir_tiny", **common))
    obj = _objective(teacher_backbone=None, teacher=str(tmp_path / "teacher"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "teacher" / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in obj.teacher.state_dict().items())
    result = fit(
        TrainConfig.from_preset(
            "smoke",
            out=str(tmp_path / "student"),
            backbone="vargfacenet_small",
            loss="distill",
            loss_kwargs={"teacher": str(tmp_path / "teacher"), "l2_weight": 4.0},
            **common,
        )
    )
    assert math.isfinite(result["final_loss"])
    rows = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["distill_l2"] > 0 and "cls_loss" in r for r in rows)
