"""Training engine: config, schedule, checkpoints, resume, NaN handling, accumulation, smoke run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nbfacelib.train import checkpoint as ckpt_io
from nbfacelib.train.config import TrainConfig
from nbfacelib.train.schedule import WarmupDecay, build_scheduler

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- config


def test_config_rejects_unknown_key_and_names_it():
    with pytest.raises(ValueError, match=r"'lerning_rate'"):
        TrainConfig.from_dict({"lerning_rate": 0.1, "steps": 3})
    with pytest.raises(ValueError, match=r"'momentun' \(did you mean 'momentum'\?\)"):
        TrainConfig.from_preset("smoke", momentun=0.5)


def test_config_preset_then_overrides_and_json_roundtrip(tmp_path):
    cfg = TrainConfig.from_preset("smoke", lr=0.05, steps=None, momentum=0.8)
    assert cfg.preset == "smoke" and cfg.lr == 0.05 and cfg.momentum == 0.8
    assert cfg.steps == 30  # None overrides are ignored: the preset's value stays
    assert TrainConfig.from_preset("smoke", epochs=2.0).steps is None  # --epochs replaces steps
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(steps=1, optimizer="lamb")
    with pytest.raises(ValueError, match="unknown train preset 'nope'"):
        TrainConfig.from_preset("nope")


# --------------------------------------------------------------------------- schedule


def test_schedule_warmup_poly_cosine_known_values():
    poly = WarmupDecay(total_steps=110, warmup_steps=10, kind="poly", power=1.0)
    assert poly(0) == pytest.approx(1 / 11)  # arcface_torch: (t + 1) / (warmup + 1)
    assert poly(9) == pytest.approx(10 / 11)
    assert poly(10) == pytest.approx(1.0)
    assert poly(60) == pytest.approx(0.5)
    assert poly(110) == pytest.approx(0.0)
    sq = WarmupDecay(total_steps=100, warmup_steps=0, kind="poly", power=2.0)
    assert sq(50) == pytest.approx(0.25)
    cos = WarmupDecay(total_steps=110, warmup_steps=10, kind="cosine", min_ratio=0.1)
    assert cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.1 + 0.9 * 0.5)  # mid-way: half of the range
    assert cos(110) == pytest.approx(0.1)
    # as a LambdaLR stepped per optimizer step, and its state restores the curve
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = build_scheduler(opt, 110, 10, "poly")
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched2 = build_scheduler(opt2, 110, 10, "poly")
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


# --------------------------------------------------------------------------- checkpoint


def test_atomic_checkpoint_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    ckpt_io.atomic_save({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    real_save = torch.save

    def half_then_crash(obj, fh, *a, **kw):
        real_save(obj, fh, *a, **kw)  # bytes reach the temp file ...
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ckpt_io.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_rng_state_roundtrip_weights_only(tmp_path):
    import random

    import numpy as np

    ckpt_io.atomic_save({"rng": ckpt_io.rng_state()}, tmp_path / "r.ckpt")
    a = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    ckpt_io.set_rng_state(ckpt_io.load(tmp_path / "r.ckpt")["rng"])  # weights_only=True load
    b = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
