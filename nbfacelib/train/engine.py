"""The training loop: a backbone and any objective, as insightface arcface_torch's train_v2.

One flat function, :func:`fit`, that reads top to bottom: set-up (devices, distributed, data,
model, objective, optimizer, schedule, scaler), optional resume, then the loop: for each
optimizer step, ``grad_accum`` micro-batches (loss divided by ``grad_accum``), a skip of any
step whose loss or gradient is not finite, clipping of the backbone gradient norm, the
optimizer and schedule steps, metrics, evaluation and an atomic checkpoint.

The objective is chosen by name (``TrainConfig.loss``, :func:`nbfacelib.losses.build_objective`):
a margin head inside Partial FC is one kind; the engine knows only the
:class:`~nbfacelib.losses.objective.Objective` interface (prepare, forward, after_step,
param_groups, state and snapshot hooks) and never a specific loss.

What differs from arcface_torch, and why:
- every number comes from :class:`TrainConfig` (momentum, weight decay, clip norm, margin s/m);
- distributed set-up happens inside ``fit`` (never at import) and a single process needs no
  process group at all;
- the batch of step ``t`` is a pure function of (seed, t, rank): a resumed run sees exactly the
  batches the uninterrupted run would have seen, which makes resume bit-exact on the CPU;
- bf16 autocast and channels-last are the CUDA defaults (fp16 + GradScaler is an option);
- a non-finite loss skips the step instead of poisoning the weights, and stops the run after
  ``max_bad_steps`` in a row; a checkpoint is never written from non-finite weights;
- ``average_from`` keeps a uniform average of the backbone (weights and BN statistics) over the
  last part of training (``torch.optim.swa_utils.AveragedModel``: SWA, and SWAD's dense
  averaging for domain shift); the average is the model saved and evaluated, the checkpoint
  holds both, so resume stays bit-exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nbfacelib.distributed import local_rank
from nbfacelib.models.output import as_output
from nbfacelib.train import checkpoint as ckpt_io
from nbfacelib.train.config import TrainConfig
from nbfacelib.train.data import TrainBatches, build_val_sets, resolve_validation
from nbfacelib.train.schedule import WarmupDecay, build_scheduler


class TrainingDiverged(RuntimeError):
    """Raised when ``max_bad_steps`` consecutive steps had a non-finite loss or gradient."""


def fit(config: TrainConfig | dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Train a backbone as ``config`` says; returns a summary dict (steps, final loss, eval
    metrics, skipped steps, paths). Writes ``OUT/config.json``, ``OUT/metrics.jsonl``,
    ``OUT/last.ckpt`` and, at the end, ``OUT/model.safetensors``."""
    from nbfacelib import distributed as dist
    from nbfacelib.losses import Batch, build_objective
    from nbfacelib.models import build_backbone

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    cfg = config.replace(**overrides) if overrides else config
    cfg, validation_note = resolve_validation(cfg)  # folder/rec data: its own held-out people

    # --- devices, processes, determinism ---------------------------------------------------
    owns_group = not dist.is_distributed() and dist.init_distributed()  # torchrun: set up here
    rank, world = dist.rank(), dist.world_size()
    if validation_note:
        _log(rank, validation_note)
    device = _resolve_device(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    _seed_everything(cfg.seed + rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")

    # --- data ------------------------------------------------------------------------------
    data = TrainBatches(cfg, device, rank=rank, world=world)
    micro = cfg.batch_size
    per_step = micro * cfg.grad_accum
    total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * data.num_images / (per_step * world)))
    val_sets = build_val_sets(cfg, data) if rank == 0 else {}

    # --- model, objective, optimizer, schedule ---------------------------------------------
    backbone = build_backbone(
        cfg.backbone, embedding_size=cfg.embedding_size, input_size=cfg.input_size, **cfg.backbone_kwargs
    ).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=memory_format)
    objective = build_objective(
        cfg.loss,
        embedding_size=cfg.embedding_size,
        num_classes=data.num_classes,
        sample_rate=cfg.sample_rate,
        **cfg.loss_kwargs,
    )
    if device.type == "cuda":  # built on the CPU: say what it needs before a bare out-of-memory
        check_objective_fits(objective, cfg.optimizer, torch.cuda.mem_get_info(device)[0], str(device))
    objective = objective.to(device)
    objective.attach(backbone)
    data.set_images_per_identity(objective.images_per_identity)  # the batch layout it asks for
    model: nn.Module = backbone
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            backbone, device_ids=[device.index] if device.type == "cuda" else None
        )
    ddp = model  # no_sync() lives on the DDP wrapper, not on a compiled module
    if cfg.compile:
        model = torch.compile(model)
    params = [{"params": list(backbone.parameters())}, *objective.param_groups()]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
        )
    scheduler = build_scheduler(
        optimizer, total_steps, cfg.warmup_steps, cfg.schedule, cfg.poly_power, cfg.min_lr_ratio
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    averaged, average_start = None, total_steps
    if cfg.average_from is not None:
        from torch.optim.swa_utils import AveragedModel

        # buffers too: the BN running statistics are averaged with the weights (no update_bn
        # pass over the training data is needed, and a resumed run restores them exactly)
        averaged = AveragedModel(backbone, use_buffers=True)
        average_start = int(cfg.average_from * total_steps)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    # --- resume ----------------------------------------------------------------------------
    step, skipped, bad_in_row, overflows = 0, 0, 0, 0
    last_path = out / "last.ckpt"
    if cfg.resume and last_path.is_file():
        state = ckpt_io.load(last_path, map_location=device)
        backbone.load_state_dict(state["model"])
        objective.load_full_state_dict(state["objective"])
        optimizer.load_state_dict(_optimizer_state_for_rank(state["optimizer"], optimizer, objective))
        scheduler.load_state_dict(state["scheduler"])
        # the schedule follows *this* config (a resumed run may be given more steps): same
        # factor function, re-evaluated at the restored step
        factor = WarmupDecay(total_steps, cfg.warmup_steps, cfg.schedule, cfg.poly_power, cfg.min_lr_ratio)
        scheduler.lr_lambdas = [factor] * len(optimizer.param_groups)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        scaler.load_state_dict(state["scaler"])
        if averaged is not None and "averaged" in state:
            averaged.load_state_dict(state["averaged"])
        elif averaged is not None and int(state["step"]) > average_start:
            raise ValueError(
                f"{last_path}: resuming at step {state['step']} with average_from={cfg.average_from} "
                f"(averaging from step {average_start}), but the checkpoint holds no average; "
                f"resume without average_from or from an earlier checkpoint"
            )
        ckpt_io.set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        step, skipped = int(state["step"]), int(state["skipped_steps"])
        if rank == 0:
            _truncate_metrics(out / "metrics.jsonl", step)
        _log(rank, f"resumed from {last_path} at step {step}")
    elif cfg.resume:
        _log(rank, f"--resume: no {last_path} yet, starting from step 0")

    def save_checkpoint() -> None:
        bad = [
            n
            for n, t in [*backbone.state_dict().items(), *objective.state_dict().items()]
            if t.is_floating_point() and not torch.isfinite(t).all()
        ]
        if bad:  # never write a poisoned state over a good one
            raise TrainingDiverged(f"non-finite values in {bad[:3]} at step {step}; {last_path} not updated")
        state = {
            "step": step,
            "skipped_steps": skipped,
            "model": backbone.state_dict(),
            "objective": objective.full_state_dict(),  # world-size independent (gathered centres)
            "optimizer": _optimizer_state_full(optimizer, objective),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            **({"averaged": averaged.state_dict()} if averaged is not None else {}),
            "rng": _gather_objects(ckpt_io.rng_state()),  # one entry per rank
            "world_size": world,
            "config": json.dumps(cfg.to_dict()),
        }
        if rank == 0:
            ckpt_io.atomic_save(state, last_path)
            print(f"checkpoint: step {step} -> {last_path}", flush=True)

    def delivered() -> nn.Module:
        """The model this run hands out: the average once it has begun, else the backbone."""
        return averaged.module if averaged is not None and int(averaged.n_averaged) > 0 else backbone

    start_step = step
    # --- loop ------------------------------------------------------------------------------
    # a fresh run starts a fresh metrics file; a resumed one appends after its checkpoint
    mode = "a" if step > 0 else "w"
    metrics_file = open(out / "metrics.jsonl", mode) if rank == 0 else None  # noqa: SIM115
    bar = _progress(cfg.progress and rank == 0, total_steps, step)
    losses: list[float] = []
    logs: dict[str, list] = {}  # the objective's named scalars since the last metrics line
    first_loss = last_loss = float("nan")
    eval_results: dict[str, float] = {}
    tic, images_since = time.perf_counter(), 0
    model.train()
    objective.train()
    try:
        while step < total_steps:
            images, labels = data.batch(step)
            loss_value, finite, step_logs = 0.0, True, []
            # BN running statistics move in the forward pass, and so may the objective's state
            # (CurricularFace's t); keep copies so a skipped step leaves no trace of a bad batch
            buffers = [b.detach().clone() for b in backbone.buffers()]
            snapshot = objective.snapshot()
            chunks = list(zip(images.split(micro), labels.split(micro), strict=True))
            for i, (x, y) in enumerate(chunks):
                x = data.to_model_input(x).contiguous(memory_format=memory_format)
                batch = Batch(images=x, labels=y, step=step, model=model)
                with torch.no_grad():
                    x = objective.prepare(x, y, batch)
                sync = i == len(chunks) - 1 or world == 1
                # DDP decides in the forward pass whether the next backward all-reduces; the
                # backbone's embedding head and Partial FC's cosines run in float32 inside
                # (as in arcface_torch's train_v2), the rest under autocast
                with contextlib.nullcontext() if sync else ddp.no_sync(), autocast():
                    result = objective(as_output(model(x)), y, batch)
                loss = result.loss / cfg.grad_accum
                if step in cfg.inject_nan_steps:
                    loss = loss * float("nan")
                value = float(loss.detach())  # the one host sync per micro-batch
                if not math.isfinite(value):
                    finite = False
                    break
                scaler.scale(loss).backward()
                loss_value += value
                step_logs.append(result.logs)
            if finite:
                scaler.unscale_(optimizer)
                if cfg.clip_grad_norm:
                    norm = nn.utils.clip_grad_norm_(backbone.parameters(), cfg.clip_grad_norm)
                    # fp16: an overflow is the GradScaler's business (it skips and lowers the
                    # scale); otherwise a non-finite gradient is a bad step like a NaN loss
                    finite = bool(torch.isfinite(norm)) or precision == "fp16"
            if finite:
                scale = scaler.get_scale() if scaler.is_enabled() else 0.0
                scaler.step(optimizer)
                scaler.update()
                # fp16: the GradScaler skips the update and lowers its scale on an overflow
                overflows += int(scaler.is_enabled() and scaler.get_scale() < scale)
                bad_in_row = 0
                objective.after_step(backbone)
                if averaged is not None and step >= average_start:
                    averaged.update_parameters(backbone)
            else:
                skipped += 1
                bad_in_row += 1
                with torch.no_grad():
                    for b, saved in zip(backbone.buffers(), buffers, strict=True):
                        b.copy_(saved)
                objective.restore(snapshot)
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                # a skipped step (NaN, or an fp16 overflow the GradScaler skipped) still advances
                # the per-step schedule on purpose; PyTorch warns about that order, needlessly
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
                scheduler.step()
            step += 1
            images_since += per_step * world

            if finite:
                last_loss = loss_value
                first_loss = loss_value if math.isnan(first_loss) else first_loss
                losses.append(loss_value)
                for micro_logs in step_logs:
                    for key, v in micro_logs.items():
                        logs.setdefault(key, []).append(
                            v.detach().float() if torch.is_tensor(v) else float(v)
                        )
            if bad_in_row >= cfg.max_bad_steps:
                raise TrainingDiverged(
                    f"training stopped at step {step}: loss or gradient not finite for {bad_in_row} "
                    f"steps in a row (max_bad_steps={cfg.max_bad_steps}); last good checkpoint: "
                    f"{last_path if last_path.exists() else 'none'}. Try a lower lr, more warm-up "
                    f"steps, or precision bf16/fp32 instead of fp16."
                )
            if bar is not None:
                rate = images_since / max(time.perf_counter() - tic, 1e-9)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{last_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.4g}", img_s=f"{rate:.0f}"
                )
            record: dict[str, Any] = {}
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - tic
                record.update(
                    loss=float(np.mean(losses)) if losses else None,
                    lr=scheduler.get_last_lr()[0],
                    images_per_s=images_since / max(elapsed, 1e-9),
                    skipped_steps=skipped,
                )
                if scaler.is_enabled():
                    record["fp16_overflow_steps"] = overflows
                # the objective's logs: means over the micro-batches of the finite steps
                record.update({k: float(torch.as_tensor(v).mean()) for k, v in logs.items()})
                losses, logs, tic, images_since = [], {}, time.perf_counter(), 0
            if val_sets and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
                eval_results = evaluate_backbone(delivered(), val_sets, data, cfg)
                record.update(eval_results)
                model.train()
            if record and metrics_file is not None:
                record = {"step": step, "epoch": step * per_step * world / data.num_images, **record}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == total_steps:
                save_checkpoint()
    finally:
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()

    if rank == 0:
        save_backbone(delivered(), cfg, out)
    if dist.is_distributed():
        torch.distributed.barrier()
    if owns_group:
        dist.cleanup_distributed()
    return {
        "steps": step,
        "start_step": start_step,
        "first_loss": first_loss,
        "final_loss": last_loss,
        "skipped_steps": skipped,
        "averaged_steps": int(averaged.n_averaged) if averaged is not None else 0,
        "fp16_overflow_steps": overflows,
        "precision": precision,
        "channels_last": channels_last,
        "device": str(device),
        "world_size": world,
        "rank": rank,
        "num_classes": data.num_classes,
        "eval": eval_results,
        "out": str(out),
    }


# --------------------------------------------------------------------------- evaluation


def evaluate_backbone(backbone: nn.Module, val_sets: dict, data: TrainBatches, cfg: TrainConfig) -> dict:
    """10-fold accuracy and TAR@FAR on each pair set (the foundation's metrics), flattened as
    ``"<set>/accuracy"``, ``"<set>/tar@far=1e-03"``..."""
    from nbfacelib.eval.embed import embed
    from nbfacelib.eval.verification import evaluate

    results: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG
        for name, (images, issame) in val_sets.items():
            emb = embed(backbone, data.resize(images), flip=True, progress=False, normalize=False)
            metrics = evaluate(emb[0::2], emb[1::2], issame)
            for key in ("accuracy", "accuracy_std", "auc", "eer"):
                results[f"{name}/{key}"] = float(metrics[key])
            for far, tar in metrics["tar_at_far"].items():
                results[f"{name}/tar@far={float(far):.0e}"] = float(tar)
    return results


# --------------------------------------------------------------------------- outputs


def save_backbone(backbone: nn.Module, cfg: TrainConfig, out: Path) -> Path:
    """``OUT/model.safetensors`` (atomic) with ``OUT/config.json`` beside it."""
    from safetensors.torch import save_file

    path = out / "model.safetensors"
    tmp = out / ".model.safetensors.tmp"
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    # one metadata key only: safetensors writes metadata from a hash map, so several keys come
    # out in a random order and two identical models would not be byte-identical files
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    cfg.save(out / "config.json")
    return path


def load_backbone(out_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the trained backbone from ``OUT/config.json`` + ``OUT/model.safetensors``
    (eval mode)."""
    from safetensors.torch import load_file

    from nbfacelib.models import build_backbone

    out_dir = Path(out_dir)
    weights = out_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (is {out_dir} the --out of a finished `nbface train`?)")
    cfg = TrainConfig.load(out_dir / "config.json")
    model = build_backbone(
        cfg.backbone, embedding_size=cfg.embedding_size, input_size=cfg.input_size, **cfg.backbone_kwargs
    )
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device).eval()


# --------------------------------------------------------------------------- helpers


def _map_objective_buffers(state: dict, optimizer: torch.optim.Optimizer, objective, fn) -> dict:
    """Apply ``fn(param, tensor)`` to every tensor of the optimizer state of the objective's
    parameters. ``state_dict()`` numbers the parameters 0, 1, ... in param-group order."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    mine = {id(p) for p in objective.parameters()}
    for index, buffers in state["state"].items():
        param = params[index]
        if id(param) in mine:
            state["state"][index] = {k: fn(param, v) if torch.is_tensor(v) else v for k, v in buffers.items()}
    return state


def _optimizer_state_full(optimizer: torch.optim.Optimizer, objective) -> dict:
    """Optimizer state with the buffers (momentum, Adam moments) of the objective's sharded
    parameters gathered to full size (:meth:`Objective.gather_param_state`), so a run can
    resume on another world size. Collective: call on every rank."""
    return _map_objective_buffers(optimizer.state_dict(), optimizer, objective, objective.gather_param_state)


def _optimizer_state_for_rank(state: dict, optimizer: torch.optim.Optimizer, objective) -> dict:
    """Inverse of :func:`_optimizer_state_full`: this rank's part of those buffers."""
    return _map_objective_buffers(state, optimizer, objective, objective.shard_param_state)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines written after ``step`` by a run that died after its last checkpoint:
    the resumed run writes them again."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def _gather_objects(obj: Any) -> list[Any]:
    from nbfacelib import distributed as dist

    if not dist.is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # per-parameter state tensors (momentum; exp_avg, exp_avg_sq)


def check_objective_fits(
    objective: nn.Module, optimizer: str, free_bytes: int, where: str = "the device"
) -> int:
    """The bytes ``objective`` holds on its device while training: its parameters, their
    gradients and the ``optimizer``'s state (one tensor per parameter for SGD's momentum, two
    for AdamW), plus its buffers. A ValueError naming that memory when it exceeds
    ``free_bytes`` (a classifier of many classes, e.g. Partial FC's C x D centres, is what
    outgrows a device; its per-step logits come on top)."""
    params = sum(p.numel() * p.element_size() for p in objective.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in objective.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in objective.buffers())
    need = params * (2 + OPTIMIZER_SLOTS[optimizer]) + frozen + buffers
    if need > free_bytes:
        classes = getattr(objective, "num_classes", None)
        raise ValueError(
            f"the objective {type(objective).__name__}"
            + (f" with {classes:,} classes" if classes else "")
            + f" does not fit on {where}: it needs {need / 2**30:.2f} GiB (parameters, their gradients "
            f"and {optimizer} state: {params / 2**30:.2f} GiB x {2 + OPTIMIZER_SLOTS[optimizer]}, plus "
            f"{(frozen + buffers) / 2**30:.2f} GiB of buffers), {free_bytes / 2**30:.2f} GiB are free; "
            f"shard the classes over more GPUs (torchrun) or use fewer classes"
        )
    return need


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = local_rank()
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (third-party code may draw from the global state)
    torch.manual_seed(seed)


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)
