"""Notebook 03 (Partial FC and F2C at scale, claims C6 and C7): the classifier's memory, what
fits in a memory budget, one timed classifier step, and the model-parallel check on 2 gloo ranks.

Memory is counted from the tensors a step holds, not read from an allocator, so the numbers are
the same on a CPU and a GPU and do not depend on what else the process allocated:

- Partial FC (:func:`classifier_bytes`): the (C, D) centres, their gradient (dense, C x D, as in
  arcface_torch v2: the gradient of ``weight[index]`` is scattered into a full-size tensor) and
  the optimizer state (SGD momentum: C x D; AdamW: 2 C x D), plus per step the k = ceil(r C)
  sampled centres and their normalised copy (k x D each, r < 1 only) and the (B, k) logits three
  times (the cosines, the softmax saved for backward, their gradient);
- F2C (:func:`f2c_bytes`): the pool (Q x D), one copy of the backbone (the gallery network's
  parameters and buffers) and the (B, Q) logits three times: nothing grows with C.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

FLOAT = 4  # bytes per float32
OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # per-parameter buffers (momentum; exp_avg + exp_avg_sq)


def check_sample_rate(sample_rate: float) -> float:
    """``sample_rate`` as a float in (0, 1], else a ValueError naming it."""
    r = float(sample_rate)
    if not 0.0 < r <= 1.0 or math.isnan(r):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return r


def sampled_centres(num_classes: int, batch: int, sample_rate: float, images_per_identity: int = 1) -> int:
    """The most centres a Partial FC step can use: ``ceil(r C)``, or more when the batch's
    positives alone exceed that (Partial FC keeps every positive; a batch of B images drawn
    K per identity holds at most min(B / K, C) classes): ``min(C, max(ceil(r C), B / K))`` for
    r < 1, C for r = 1."""
    r = check_sample_rate(sample_rate)
    c = int(num_classes)
    if r >= 1.0:
        return c
    return min(c, max(1, math.ceil(r * c), int(batch) // max(1, int(images_per_identity))))


def classifier_bytes(
    num_classes: int,
    dim: int,
    batch: int,
    sample_rate: float = 1.0,
    optimizer: str = "sgd",
    images_per_identity: int = 1,
) -> dict[str, int]:
    """Bytes the Partial FC classifier holds at the peak of a step, by part (see the module
    docstring); ``total`` is their sum. ``k`` is :func:`sampled_centres` (an upper bound: a
    batch with fewer distinct classes than B / K samples fewer when ``ceil(r C) < B / K``)."""
    r = check_sample_rate(sample_rate)
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_SLOTS)}, got {optimizer!r}")
    c, d = int(num_classes), int(dim)
    k = sampled_centres(c, batch, r, images_per_identity)
    parts = {
        "centres": c * d * FLOAT,
        "gradient": c * d * FLOAT,
        "optimizer": OPTIMIZER_SLOTS[optimizer] * c * d * FLOAT,
        "sampled_centres": 2 * k * d * FLOAT if k < c else 0,
        "logits": 3 * int(batch) * k * FLOAT,
    }
    parts["total"] = sum(parts.values())
    return parts


def f2c_bytes(queue_size: int, dim: int, batch: int, backbone: torch.nn.Module) -> dict[str, int]:
    """Bytes F2C holds instead of a classifier: the pool, the gallery network (a copy of
    ``backbone``) and the logits over the pool."""
    gallery = sum(t.numel() * t.element_size() for t in (*backbone.parameters(), *backbone.buffers()))
    parts = {
        "pool": int(queue_size) * int(dim) * FLOAT,
        "gallery_network": int(gallery),
        "logits": 3 * int(batch) * int(queue_size) * FLOAT,
    }
    parts["total"] = sum(parts.values())
    return parts


def f2c_queue_size(num_classes: int, batch: int, fraction: float = 0.01) -> int:
    """F2C's pool size for ``num_classes`` identities: ``fraction`` of them (the paper's ~1%),
    at least the ``batch``'s identities (every batch identity needs a slot), at most all."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"F2C queue fraction must be in (0, 1], got {fraction}")
    return min(int(num_classes), max(int(batch), math.ceil(fraction * int(num_classes))))


def _largest(total: Callable[[int], float], budget_bytes: float) -> int:
    """The largest n >= 0 with ``total(n) <= budget_bytes`` for a ``total`` that does not
    decrease with n (0 if not even n = 1 fits): doubling, then bisection."""
    lo, hi = 0, 1
    while total(hi) <= budget_bytes:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def classes_that_fit(
    budget_bytes: float, dim: int, batch: int, sample_rate: float = 1.0, optimizer: str = "sgd"
) -> int:
    """The largest class count whose :func:`classifier_bytes` total is within ``budget_bytes``
    (0 if not even one class fits). The total grows with C, so a bisection finds it."""
    check_sample_rate(sample_rate)
    return _largest(lambda c: classifier_bytes(c, dim, batch, sample_rate, optimizer)["total"], budget_bytes)


def f2c_classes_that_fit(
    budget_bytes: float, dim: int, batch: int, backbone: torch.nn.Module, fraction: float = 0.01
) -> int:
    """The largest identity count whose F2C memory (:func:`f2c_bytes` with the pool of
    :func:`f2c_queue_size`) is within ``budget_bytes``: only the pool (``fraction`` of the
    identities) grows with them."""
    return _largest(
        lambda c: f2c_bytes(f2c_queue_size(c, batch, fraction), dim, batch, backbone)["total"], budget_bytes
    )


def check_fits(
    num_classes: int,
    budget_bytes: float,
    dim: int,
    batch: int,
    sample_rate: float = 1.0,
    optimizer: str = "sgd",
) -> dict[str, int]:
    """:func:`classifier_bytes` of ``num_classes``, or a ValueError naming the memory it needs,
    the budget and the largest class count that fits."""
    need = classifier_bytes(num_classes, dim, batch, sample_rate, optimizer)
    if need["total"] > budget_bytes:
        fit = classes_that_fit(budget_bytes, dim, batch, sample_rate, optimizer)
        raise ValueError(
            f"{num_classes:,} classes do not fit: the classifier needs {need['total'] / 2**30:.2f} GiB "
            f"(centres, gradient and {optimizer} state {3 if optimizer == 'sgd' else 4} x C x {dim} "
            f"floats, plus logits) at sample_rate={sample_rate}, the budget is "
            f"{budget_bytes / 2**30:.2f} GiB; at most {fit:,} classes fit"
        )
    return need


def classifier_step_seconds(
    num_classes: int,
    sample_rate: float,
    dim: int = 512,
    batch: int = 128,
    steps: int = 5,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> float:
    """Median seconds of one Partial FC (ArcFace) step alone: forward, backward and an SGD
    (momentum 0.9) update of the centres, after one untimed step (which allocates the momentum).
    ``device`` "auto": CUDA when available."""
    from nbfacelib.losses import PartialFC, build_margin

    check_sample_rate(sample_rate)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, dim, generator=g).to(dev).requires_grad_()
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(dev)
    torch.manual_seed(seed)
    pfc = PartialFC(build_margin("arcface"), dim, num_classes, sample_rate=sample_rate, device=dev)
    opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    times = []
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        pfc(emb, labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        emb.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------- model parallel
def _case(num_classes: int, batch: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    emb = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return centres, emb, labels


def _loss_and_grads(num_classes: int, batch: int, dim: int, seed: int, rows: slice | None = None):
    """ArcFace Partial FC (rate 1) on this process's rows of the batch: the loss and the
    gradients of the embeddings (this rank's rows) and of this rank's centres."""
    from nbfacelib.losses import PartialFC, build_margin

    centres, emb, labels = _case(num_classes, batch, dim, seed)
    rows = rows or slice(0, batch)
    pfc = PartialFC(build_margin("arcface", s=16.0), dim, num_classes).double()
    pfc.load_full_state_dict({"weight": centres})
    x = emb[rows].clone().requires_grad_()
    loss = pfc(x, labels[rows])
    loss.backward()
    return {
        "loss": float(loss.detach()),
        "emb_grad": x.grad.detach(),
        "weight_grad": pfc.weight.grad.detach(),
        "classes": (pfc.class_start, pfc.num_local),
    }


def _rank_main(rank: int, world: int, out_dir: str, num_classes: int, batch: int, dim: int, seed: int):
    from nbfacelib import distributed as nbdist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    # a FileStore: no rank has to outlive the others to serve the rendezvous (see distributed.py)
    nbdist.init_distributed("gloo", timeout_s=120, init_method=f"file://{os.path.join(out_dir, 'store')}")
    try:
        per = -(-batch // world)
        rows = slice(rank * per, min(batch, (rank + 1) * per))
        torch.save(
            _loss_and_grads(num_classes, batch, dim, seed, rows), os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        nbdist.cleanup_distributed()


def model_parallel_check(num_classes: int = 10, batch: int = 8, dim: int = 16, seed: int = 0, world: int = 2):
    """Partial FC over ``world`` gloo processes (each holds its shard of the centres and its
    rows of the batch) against one process holding everything, float64, ArcFace at r = 1.

    Returns the losses of every rank and of the single process, and the largest absolute
    differences of the loss, the embeddings' gradient (rows concatenated over ranks) and the
    centres' gradient (shards concatenated)."""
    import torch.multiprocessing as mp

    single = _loss_and_grads(num_classes, batch, dim, seed)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, tmp, num_classes, batch, dim, seed), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]
    emb_grad = torch.cat([r["emb_grad"] for r in ranks])
    weight_grad = torch.cat([r["weight_grad"] for r in ranks])
    return {
        "world": world,
        "num_classes": num_classes,
        "batch": batch,
        "single_loss": single["loss"],
        "rank_losses": [r["loss"] for r in ranks],
        "rank_classes": [r["classes"] for r in ranks],
        "max_loss_diff": max(abs(r["loss"] - single["loss"]) for r in ranks),
        "max_emb_grad_diff": float((emb_grad - single["emb_grad"]).abs().max()),
        "max_weight_grad_diff": float((weight_grad - single["weight_grad"]).abs().max()),
    }


def memory_table(
    class_counts: list[int], dim: int, batch: int, rates: list[float], f2c: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows ``{classes, method, MiB}`` for Partial FC at each rate and F2C (``f2c``: its
    ``backbone`` and either a fixed ``queue_size`` or a ``fraction`` of the identities, see
    :func:`f2c_queue_size`), for a memory-vs-identities figure."""
    rows = []
    for c in class_counts:
        for r in rates:
            name = "full FC" if r == 1.0 else f"Partial FC r={r:g}"
            rows.append(
                {"classes": c, "method": name, "MiB": classifier_bytes(c, dim, batch, r)["total"] / 2**20}
            )
        if f2c is not None:
            if "fraction" in f2c:
                q = f2c_queue_size(c, batch, f2c["fraction"])
            else:
                q = min(c, f2c["queue_size"])
            rows.append(
                {
                    "classes": c,
                    "method": "F2C",
                    "MiB": f2c_bytes(q, dim, batch, f2c["backbone"])["total"] / 2**20,
                }
            )
    return rows


# --------------------------------------------------------------------------- notebook 03
RATE_NAME = "r={:g}"  # the variant name of Partial FC at sample rate r (r = 1: the full softmax)
F2C_NAME = "F2C"


def rate_name(rate: float) -> str:
    """The grid variant name of sample rate ``rate``, e.g. ``"r=0.1"``."""
    return RATE_NAME.format(check_sample_rate(rate))


def sweep_variants(
    base,
    rates: Sequence[float],
    f2c_kwargs: dict[str, Any] | None = None,
    full_evalsets: Sequence[str] | None = None,
    full_rates: Sequence[float] = (1.0, 0.1),
):
    """The grid of notebook 03, each variant a change of ``base`` (a TrainConfig with the margin
    head as ``loss``): Partial FC at every rate (named :func:`rate_name`, label ``sample_rate``)
    and, with ``f2c_kwargs`` (the objective's keywords, e.g. ``queue_size``), F2C (named
    :data:`F2C_NAME`, label ``sample_rate`` None). The same data, steps and seeds for all.
    Variants at ``full_rates`` and F2C are evaluated on every evaluation set; the others only on
    ``full_evalsets`` (None: every set), so that a costly real set (LFW) scores the runs the
    verdicts compare and not every rate."""
    from nbfacelib.experiments.grid import Variant

    rates = [check_sample_rate(r) for r in rates]
    if 1.0 not in rates:
        raise ValueError(f"rates must include 1.0 (the full softmax every ratio is taken to), got {rates}")
    if len(set(rates)) != len(rates):
        raise ValueError(f"rates must be distinct, got {rates}")
    variants = [
        Variant(
            rate_name(r),
            base.replace(sample_rate=r),
            {"method": "full FC" if r == 1.0 else "Partial FC", "sample_rate": r},
            None if r in full_rates else full_evalsets,
        )
        for r in rates
    ]
    if f2c_kwargs is not None:
        cfg = base.replace(loss="f2c", loss_kwargs=dict(f2c_kwargs), sample_rate=1.0)
        variants.append(Variant(F2C_NAME, cfg, {"method": "F2C", "sample_rate": None}))
    return variants


def step_time_sweep(
    num_classes: int,
    rates: Sequence[float],
    dim: int,
    batch: int,
    repeats: int = 3,
    steps: int = 3,
    device: str | torch.device = "cpu",
) -> dict[float, dict[int, float]]:
    """``{rate: {repeat: seconds}}``: :func:`classifier_step_seconds` (median of ``steps``) at
    every rate, the rates interleaved within each repeat so that a change of machine load
    between repeats hits every rate alike (pair the rates by repeat, as runs by seed)."""
    out: dict[float, dict[int, float]] = {float(r): {} for r in rates}
    for rep in range(repeats):
        for r in rates:
            out[float(r)][rep] = classifier_step_seconds(
                num_classes, r, dim=dim, batch=batch, steps=steps, device=device, seed=rep
            )
    return out


def run_step_seconds(metrics_path, batch_size: int) -> float:
    """Median seconds per optimizer step of a trained run, from the ``images_per_s`` of its
    ``metrics.jsonl`` lines after the first (the first interval holds the warm-up: allocation,
    first calls). NaN when the run logged fewer than two lines."""
    import json
    from pathlib import Path

    lines = [json.loads(x) for x in Path(metrics_path).read_text().splitlines() if x.strip()]
    rates = [x["images_per_s"] for x in lines[1:] if x.get("images_per_s")]
    if not rates:
        return math.nan
    return float(batch_size / sorted(rates)[len(rates) // 2])


def memory_ratios(
    num_classes: int,
    dim: int,
    batch: int,
    rates: Sequence[float],
    optimizer: str = "sgd",
    images_per_identity: int = 1,
) -> dict[float, float]:
    """``{rate: classifier_bytes(rate) / classifier_bytes(1.0)}`` at ``num_classes``."""
    full = classifier_bytes(num_classes, dim, batch, 1.0, optimizer)["total"]
    return {
        float(r): classifier_bytes(num_classes, dim, batch, r, optimizer, images_per_identity)["total"] / full
        for r in rates
    }


def c6_rule(rate: float = 0.1, tol: float = 0.02, max_memory_ratio: float = 1.0):
    """C6, Partial FC at ``rate`` keeps accuracy while cutting memory and time: accuracy
    non-inferior to r = 1 by ``tol`` (paired t-interval of r - full above -tol), the counted
    classifier memory below ``max_memory_ratio`` of r = 1's, and the classifier step time
    shorter than r = 1's (paired t-interval over interleaved repeats above 0)."""
    from nbfacelib.report.stats import AllOf, AtLeast, Below, Greater

    name = rate_name(rate)
    return AllOf(
        AtLeast(name, rate_name(1.0), tol=tol),
        Below(f"memory_ratio_{name}", max_memory_ratio),
        Greater(f"step_seconds_{rate_name(1.0)}", f"step_seconds_{name}"),
    )


def c7_rule(tol: float = 0.02, max_memory_ratio: float = 1.0):
    """C7, F2C trains without a full classifier at lower memory: F2C's accuracy non-inferior to
    the full softmax's by ``tol`` at equal steps (paired t-interval of F2C - full above -tol)
    and its memory (pool + gallery network + logits) below ``max_memory_ratio`` of the full
    classifier's at the scale's identity count."""
    from nbfacelib.report.stats import AllOf, AtLeast, Below

    return AllOf(AtLeast(F2C_NAME, rate_name(1.0), tol=tol), Below("f2c_memory_ratio", max_memory_ratio))
