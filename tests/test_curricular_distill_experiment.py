"""Notebook 06's experiment helpers: the probe's hard negatives agree with the CurricularFace
loss itself, and a trajectory's segments equal one uninterrupted run."""

from __future__ import annotations

import math

import torch

from nbfacelib.experiments import curricular_distill as cd
from nbfacelib.losses import CurricularFace
from nbfacelib.train.config import TrainConfig


class _Fixed(torch.nn.Module):
    """A 'backbone' that returns preset embeddings (the probe batch is the index)."""

    def __init__(self, emb):
        super().__init__()
        self.emb = torch.nn.Parameter(emb)

    def forward(self, idx):
        return self.emb[idx]


def test_probe_negatives_match_the_loss():
    g = torch.Generator().manual_seed(0)
    emb, centres = torch.randn(12, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.arange(12) % 5
    t, m = 0.3, 0.5
    stats = cd.probe_negatives(_Fixed(emb), centres, t, m, torch.arange(12), labels)
    head = CurricularFace(s=1.0, m=m).eval()
    head.t.fill_(t)
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(centres).T
    cos_y = cos[torch.arange(12), labels]
    has_pos = torch.nn.functional.one_hot(labels, 5).bool()
    modulated = head.modulate_negatives(
        cos, cos_y[:, None].expand_as(cos)[:, 0], torch.ones(12, dtype=torch.bool), None
    )
    assert int(stats["hard"].sum()) == int(head.last_hard_negatives)
    torch.testing.assert_close(
        torch.as_tensor(stats["modulated"]), modulated[~has_pos].float(), rtol=1e-5, atol=1e-6
    )
    assert 0 <= stats["hard_fraction"] <= 1
    assert math.isnan(stats["hard_weight"]) or stats["hard_weight"] > t - 1


def test_trajectory_segments_equal_one_run(tmp_path):
    from nbfacelib.train import checkpoint as ckpt_io
    from nbfacelib.train import fit

    cfg = TrainConfig.from_preset(
        "smoke",
        backbone="ir_tiny",
        loss="curricularface",
        loss_kwargs={"s": 16.0, "m": 0.5},
        input_size=32,
        embedding_size=16,
        batch_size=8,
        data="synthetic:ids=8,per_id=4,seed=0",
        val=[],
        warmup_steps=0,
        log_every=1,
        device="cpu",
        deterministic=True,
    )
    probe = (torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8))
    rows = cd.trajectory(cfg, [2, 4], tmp_path / "seg", probe)
    assert [r["step"] for r in rows] == [2, 4] and rows[1]["t"] > rows[0]["t"] > 0
    fit(cfg.replace(steps=4, out=str(tmp_path / "one"), poly_power=0.0, progress=False))
    one = ckpt_io.load(tmp_path / "one" / "last.ckpt")
    seg = ckpt_io.load(tmp_path / "seg" / "last.ckpt")
    assert torch.equal(one["objective"]["margin.t"], seg["objective"]["margin.t"])
    assert all(torch.equal(v, seg["model"][k]) for k, v in one["model"].items())
    steps, t = cd.logged(tmp_path / "seg" / "metrics.jsonl", "t")
    assert list(steps) == [1, 2, 3, 4] and (t > 0).all()
