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


# --------------------------------------------------------------------------- training runs
# Tiny runs: ir_tiny at 32x32 pixels, a handful of steps, deterministic CPU, no evaluation
# unless the test is about it. Each takes a second or two.


THREADS = 2


@pytest.fixture
def two_threads():
    """Two intra-op threads here and (OMP_NUM_THREADS) in a subprocess: bit-identical
    comparisons need the same count on both sides, and it must be more than one, because with
    one thread the synthetic renderer's pixels do not depend on the batch it renders in, which
    would hide issue 7's resume drift."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def tiny(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        steps=6,
        batch_size=8,
        input_size=32,
        embedding_size=32,
        data="synthetic:ids=16,per_id=4,seed=0",
        val=[],
        warmup_steps=1,
        ckpt_every=0,
        log_every=1,
        deterministic=True,
        progress=False,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig.from_preset("smoke", **base)


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_is_bit_identical(tmp_path, two_threads):
    """`nbface train`, SIGKILL after its first checkpoint, `--resume`: the same bytes as an
    uninterrupted run. The faces are fed at their rendered size (112) to a very thin IResNet:
    by the kill the uninterrupted run has rendered most of the 64 images and the resumed one
    starts with an empty render cache; before the cache was filled in fixed blocks, step 9's
    batch differed by two pixels between the two (issue 7's drift, here in a few seconds)."""
    from nbfacelib.train import fit

    steps, every = 10, 4
    run = dict(
        steps=steps,
        ckpt_every=every,
        batch_size=32,
        input_size=112,
        backbone_kwargs={"width": 0.0625},
        data="synthetic:ids=16,per_id=4,seed=2",
    )
    fit(tiny(tmp_path / "straight", **run))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nbfacelib", "train", "--preset", "smoke", "--out", str(killed)]
    cfg = tiny(killed, **run)
    cmd += ["--backbone-kwargs", json.dumps(cfg.backbone_kwargs)]
    keys = (
        "steps",
        "batch_size",
        "input_size",
        "embedding_size",
        "data",
        "warmup_steps",
        "ckpt_every",
        "log_every",
    )
    for key in keys:
        cmd += [f"--{key.replace('_', '-')}", str(getattr(cfg, key))]
    cmd += ["--val", "", "--deterministic", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO
    )
    try:
        for line in proc.stdout:  # wait (without sleeping) for the first checkpoint
            if line.startswith("checkpoint: step"):
                break
        proc.send_signal(signal.SIGKILL)  # no chance to clean up, mid-run
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    stopped_at = ckpt_io.load(killed / "last.ckpt")["step"]
    assert every <= stopped_at < steps

    result = fit(cfg.replace(resume=True))
    assert (result["start_step"], result["steps"]) == (stopped_at, steps)  # it continued, no restart
    assert [r["step"] for r in metrics(killed)] == list(range(1, steps + 1))  # no duplicated lines
    a, b = weights(tmp_path / "straight"), weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "straight" / "model.safetensors").read_bytes() == (
        killed / "model.safetensors"
    ).read_bytes()


def test_nan_step_is_skipped_without_any_update(tmp_path):
    from nbfacelib.train import fit

    # constant lr (poly power 0) so that a 3-step run and a 4-step run share steps 0..2
    common = dict(warmup_steps=0, poly_power=0.0)
    fit(tiny(tmp_path / "three", steps=3, **common))
    result = fit(tiny(tmp_path / "four", steps=4, inject_nan_steps=[3], **common))
    assert result["skipped_steps"] == 1
    assert metrics(tmp_path / "four")[-1]["skipped_steps"] == 1
    a, b = weights(tmp_path / "three"), weights(tmp_path / "four")
    for k in a:  # parameters and BN running statistics untouched by the skipped step
        assert torch.equal(a[k], b[k]), k


def test_skipped_step_leaves_curricularface_t_unchanged(tmp_path):
    """CurricularFace moves t in its forward pass; a step skipped after that forward must put
    t back (one inf embedding used to make t NaN for the rest of the run)."""
    from nbfacelib.train import fit

    common = dict(warmup_steps=0, poly_power=0.0, loss="curricularface")
    fit(tiny(tmp_path / "three", steps=3, **common))
    fit(tiny(tmp_path / "four", steps=4, inject_nan_steps=[3], **common))
    a, b = (ckpt_io.load(tmp_path / run / "last.ckpt")["objective"] for run in ("three", "four"))
    assert float(a["margin.t"]) != 0.0  # t did move in the three good steps
    assert torch.equal(a["margin.t"], b["margin.t"])


def test_synthetic_batches_do_not_depend_on_the_steps_before(two_threads):
    """A run resumed at step 10 (empty render cache) gets the batches an uninterrupted run
    gets. Issue 7: the renderer's pixels depend on the batch it renders in, and the cache kept
    whatever a step happened to miss, so the smoke preset's resumed run saw other pixels from
    step 35 on (its losses drifted from step 40)."""
    from nbfacelib.train.data import TrainBatches

    cfg = TrainConfig.from_preset("smoke", steps=40)
    uninterrupted, resumed = TrainBatches(cfg, torch.device("cpu")), TrainBatches(cfg, torch.device("cpu"))
    first = {s: uninterrupted.batch(s)[0] for s in range(40)}
    assert [s for s in range(10, 40) if not torch.equal(first[s], resumed.batch(s)[0])] == []


def test_nan_steps_in_a_row_stop_training_and_never_checkpoint(tmp_path):
    from nbfacelib.train import TrainingDiverged, fit

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"not finite for 3 steps in a row"):
        fit(tiny(out, steps=20, ckpt_every=2, max_bad_steps=3, inject_nan_steps=[4, 5, 6, 7]))
    state = ckpt_io.load(out / "last.ckpt")
    assert state["step"] == 6  # written after steps 2, 4, 6; the run stopped inside step 7
    assert state["skipped_steps"] == 2
    for name, t in state["model"].items():
        assert not t.is_floating_point() or torch.isfinite(t).all(), name
    assert not (out / "model.safetensors").exists()


def test_weight_average_is_the_mean_of_the_weights_after_its_start(tmp_path):
    """average_from = 0.5 of 6 steps: the saved model is the mean of the weights (and BN
    statistics) after steps 4, 5 and 6, each taken from a plain run of that length (constant
    lr, so the runs share their first steps: the batch of step t depends on t only)."""
    from nbfacelib.train import fit

    common = dict(warmup_steps=0, poly_power=0.0)
    result = fit(tiny(tmp_path / "avg", steps=6, average_from=0.5, **common))
    assert result["averaged_steps"] == 3
    plain = [weights_of(fit, tiny(tmp_path / f"plain{n}", steps=n, **common)) for n in (4, 5, 6)]
    averaged = weights(tmp_path / "avg")
    moved = 0
    for k, v in averaged.items():
        if not v.is_floating_point():
            continue
        mean = sum(w[k] for w in plain) / 3
        torch.testing.assert_close(v, mean, rtol=1e-5, atol=1e-6, msg=k)
        moved += not torch.allclose(v, plain[-1][k])
    assert moved > 10  # the average is not the last weights


def weights_of(fit, config: TrainConfig) -> dict[str, torch.Tensor]:
    fit(config)
    return weights(Path(config.out))


def test_weight_average_survives_a_stop_and_resume_bit_identically(tmp_path):
    """A run that stops inside step 5 (NaN loss, max_bad_steps 1) after its checkpoint at step 4,
    resumed, saves the same averaged model as the uninterrupted run: the average and its count
    travel in the checkpoint."""
    from nbfacelib.train import TrainingDiverged, fit

    run = dict(steps=8, average_from=0.25, ckpt_every=4)
    fit(tiny(tmp_path / "straight", **run))
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingDiverged):
        fit(tiny(stopped, max_bad_steps=1, inject_nan_steps=[4], **run))
    state = ckpt_io.load(stopped / "last.ckpt")
    assert state["step"] == 4 and int(state["averaged"]["n_averaged"]) == 2
    result = fit(tiny(stopped, resume=True, **run))
    assert (result["start_step"], result["averaged_steps"]) == (4, 6)
    assert (tmp_path / "straight" / "model.safetensors").read_bytes() == (
        stopped / "model.safetensors"
    ).read_bytes()
    # a checkpoint without an average cannot resume an averaging run past its start
    plain = tmp_path / "plain"
    with pytest.raises(TrainingDiverged):
        fit(tiny(plain, steps=8, ckpt_every=4, max_bad_steps=1, inject_nan_steps=[4]))
    with pytest.raises(ValueError, match=r"average_from=0.25 .* holds no average"):
        fit(tiny(plain, resume=True, **run))


class _NoBN(torch.nn.Module):
    """A BatchNorm-free backbone: accumulation must then equal one big batch exactly."""

    def __init__(self, embedding_size=32, input_size=32, dropout=0.0):
        super().__init__()
        self.embedding_size, self.input_size, self.num_features = embedding_size, input_size, 16
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=4)
        self.fc = torch.nn.Linear(16 * ((input_size - 3) // 4 + 1) ** 2, embedding_size)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        return self.fc(self.forward_features(x).flatten(1))


def test_grad_accumulation_equals_one_full_batch(tmp_path):
    from nbfacelib.models import BACKBONES
    from nbfacelib.train import fit

    if "_test_nobn" not in BACKBONES:
        BACKBONES.register(_NoBN, name="_test_nobn")
    common = dict(backbone="_test_nobn", steps=2, deterministic=True)
    fit(tiny(tmp_path / "full", batch_size=8, grad_accum=1, **common))
    fit(tiny(tmp_path / "accum", batch_size=4, grad_accum=2, **common))
    fit(tiny(tmp_path / "half", batch_size=4, grad_accum=1, **common))
    full, accum, half = weights(tmp_path / "full"), weights(tmp_path / "accum"), weights(tmp_path / "half")
    for k in full:
        torch.testing.assert_close(accum[k], full[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(half[k], full[k], atol=1e-4) for k in full)  # the test can fail


def test_smoke_end_to_end_cli(tmp_path):
    from nbfacelib.cli import main
    from nbfacelib.train import load_backbone

    out = tmp_path / "smoke"
    argv = ["train", "--preset", "smoke", "--out", str(out), "--input-size", "32", "--val-pairs", "100"]
    argv += ["--val-ids", "20", "--no-progress", "--log-every", "10"]
    assert main(argv) == 0
    for name in ("config.json", "metrics.jsonl", "last.ckpt", "model.safetensors"):
        assert (out / name).is_file(), name
    rows = metrics(out)
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"]  # it learns (ArcFace s=64 starts near 49)
    assert 0.0 <= rows[-1]["synthetic-heldout/accuracy"] <= 1.0
    assert {"lr", "images_per_s", "epoch", "skipped_steps"} <= rows[0].keys()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "smoke" and cfg["steps"] == 30 and cfg["input_size"] == 32
    model = load_backbone(out)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, cfg["embedding_size"])


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_then_resume_on_one(tmp_path):
    """DDP backbone + sharded Partial FC on 2 CPU ranks; the checkpoint (full centres) resumes
    on a single process with more steps."""
    from nbfacelib.train import fit

    out = tmp_path / "ddp"
    cfg = tiny(out, steps=4, ckpt_every=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "nbfacelib", "train"]
    cmd += ["--preset", "smoke", "--out", str(out), "--no-progress", "--device", "cpu", "--val", ""]
    for key in ("steps", "batch_size", "input_size", "embedding_size", "data", "warmup_steps", "ckpt_every"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(cfg, key))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    state = ckpt_io.load(out / "last.ckpt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["objective"]["weight"].shape == (16, 32)  # full, gathered centres
    result = fit(cfg.replace(steps=6, resume=True))
    assert (result["start_step"], result["steps"], result["world_size"]) == (4, 6, 1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_run_on_cpu(tmp_path, precision):
    from nbfacelib.train import fit

    result = fit(tiny(tmp_path / precision, steps=2, precision=precision, channels_last=True))
    assert result["precision"] == precision and result["channels_last"] is True
    assert math.isfinite(result["final_loss"]) and result["skipped_steps"] == 0
    if precision == "fp16":  # the first step at scale 2**16 overflows: the scaler skips it
        assert result["fp16_overflow_steps"] >= 1
        assert metrics(tmp_path / precision)[-1]["fp16_overflow_steps"] == result["fp16_overflow_steps"]


def test_folder_batches_same_from_memory_and_dataloader(orl_root, monkeypatch):
    """Small folders are held in memory, large ones streamed by a DataLoader started at the
    step: both give the same batch for the same step (so resume is exact either way), the
    held-out identities never appear, and labels are renumbered over the training ones."""
    from nbfacelib.train import data as train_data

    cfg = TrainConfig(
        data=f"folder:{orl_root}", holdout_ids=10, batch_size=16, input_size=32, steps=1, val=[]
    )
    memory = train_data.TrainBatches(cfg, torch.device("cpu"))
    assert memory.images is not None and memory.num_classes == 30 and memory.num_images == 300
    monkeypatch.setattr(train_data, "IN_MEMORY_MAX", 0)
    streamed = train_data.TrainBatches(cfg, torch.device("cpu"))
    assert streamed.images is None
    for step in (0, 1, 30):  # 30 is past the first epoch (18 steps of 16)
        (xa, ya), (xb, yb) = memory.batch(step), streamed.batch(step)
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
        assert xa.shape == (16, 3, 32, 32) and int(ya.max()) < 30
