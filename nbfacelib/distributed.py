"""Small ``torch.distributed`` helpers shared by the losses (Partial FC) and the training engine.

Nothing here touches the process group at import time: every helper answers for a single
process (rank 0 of 1, collectives are no-ops) until :func:`init_distributed` (or the caller)
has initialised one. ``group=None`` means the default (world) group throughout.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_rows",
    "all_gather_sizes",
    "all_reduce",
    "cleanup_distributed",
    "init_distributed",
    "is_distributed",
    "local_rank",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when a default process group is initialised (torchrun, or a test that spawned ranks)."""
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    return dist.get_rank(group) if is_distributed() else 0


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def local_rank() -> int:
    """The rank on this node, as torchrun sets it in ``LOCAL_RANK`` (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(
    backend: str | None = None, timeout_s: float = 1800.0, init_method: str = "env://"
) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Does nothing (returns False) when ``RANK``/``WORLD_SIZE`` are absent, i.e. for a plain
    ``python`` run. ``backend`` defaults to NCCL when CUDA is available, else gloo; with NCCL
    the current CUDA device is set to ``LOCAL_RANK`` first so that collectives and ``.to("cuda")``
    use this process's GPU. Returns True when a process group is (or already was) initialised.
    ``init_method`` is torchrun's ``env://`` by default; ``file://PATH`` (a FileStore) suits
    processes started by ``torch.multiprocessing.spawn``, where no rank has to outlive the
    others to serve the rendezvous store.
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def cleanup_distributed() -> None:
    """Destroy the default process group if one is initialised (safe to call always).

    Ranks first meet at a barrier: with gloo, a rank that tears down while a peer is still
    mid-collective or mid-destroy can make the peer's transport thread call std::terminate
    ("terminate called without an active exception", SIGABRT) -- seen in ~1 of 6 test runs.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """All-reduce ``tensor`` in place (``op`` in sum / max / min) and return it; a no-op in one
    process. Not differentiable: callers that need a gradient through a sum say how they get it."""
    if is_distributed():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op], group=group)
    return tensor


def _gather_padded(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    # dist.all_gather needs equal shapes: pad every rank to the longest, then drop the padding.
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows; backward sums each rank's gradient of the gathered tensor
    and hands every rank the slice of its own rows.

    Hand-written rather than ``torch.distributed.nn.functional.all_gather`` because that function
    is deprecated in the torch we run (a FutureWarning on every call, pointing to a private
    module), cannot take ranks with different batch sizes, and its gloo backward needs
    all-to-all; an all-reduce of the (global batch x D) gradient works on every backend and is
    small next to the classifier.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], group):
        ctx.sizes, ctx.group = sizes, group
        ctx.rank = dist.get_rank(group)
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank holds d(its loss)/d(gathered rows); the true gradient of a row is the sum.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def all_gather_sizes(n: int, device: torch.device | str = "cpu", group=None) -> list[int]:
    """Every rank's value of ``n`` (e.g. its local batch size), in rank order."""
    if not is_distributed():
        return [n]
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return torch.cat(out).tolist()  # one device-to-host copy, not one per rank


def all_gather_rows(x: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` (first dim = rows) over the ranks, in rank order; ranks may hold
    different numbers of rows. Differentiable for floating tensors: the gradient reaching
    ``x`` is the sum over ranks of each rank's gradient w.r.t. the gathered rows of this rank,
    i.e. the exact gradient of ``sum over ranks of each rank's objective``. Identity in one
    process. ``sizes`` (every rank's row count) skips one small collective when known."""
    if not is_distributed():
        return x
    if sizes is None:
        sizes = all_gather_sizes(x.shape[0], x.device, group)
    if x.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(x, sizes, group)
    return _gather_padded(x.detach(), sizes, group)
