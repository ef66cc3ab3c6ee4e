"""Partial FC v2: a model-parallel, optionally sampled, margin-softmax classifier
(An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face
Recognition CNNs by Partial FC", CVPR 2022)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbfacelib.distributed import all_gather_rows, all_gather_sizes, all_reduce, rank, world_size

from .margin import MarginHead


def _wide(t: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 (autocast) -> float32 for margins and softmax; float32 / float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over rows whose classes (columns) are split across ranks.

    Forward: the row max, the sum of exponentials and the target logit are all-reduced, so every
    rank returns the same loss ``mean_i (log sum_j exp z_ij - z_iy)`` over the global batch.
    Backward: ``(softmax - onehot) / B`` for this rank's columns, with no communication.

    A custom Function because the loss is replicated: built from differentiable collectives,
    autograd would treat each rank's copy as a separate term and sum W copies of the gradient
    (and communicate again in backward); the closed form is exact, needs no collective and saves
    only the (B, C_local) softmax for backward.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, group, weights: torch.Tensor | None = None):
        # Every rank holds >= 1 column (num_classes >= world size, num_sample >= 1).
        # ``weights`` (B,), detached: the loss is ``mean_i w_i ce_i`` and row i's gradient is
        # scaled by w_i (TransFace's EHSM sample weights); None: every w_i = 1.
        row_max = all_reduce(logits.amax(dim=1), "max", group)
        prob = (logits - row_max.unsqueeze(1)).exp_()
        sum_exp = all_reduce(prob.sum(dim=1), "sum", group)
        has_pos = labels >= 0
        col = labels.clamp_min(0).unsqueeze(1)
        target = torch.where(has_pos, logits.gather(1, col).squeeze(1), 0.0)
        all_reduce(target, "sum", group)  # each row's positive lives on exactly one rank
        per_row = sum_exp.log() + row_max - target
        prob.div_(sum_exp.unsqueeze(1))
        if weights is None:
            ctx.save_for_backward(prob, labels)
            return per_row.mean()
        weights = weights.to(per_row.dtype)
        ctx.save_for_backward(prob, labels, weights)
        return (weights * per_row).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        prob, labels, *weights = ctx.saved_tensors
        # Out of place, so a retained graph can be differentiated again (gradcheck does).
        scale = grad_loss / prob.shape[0]
        if weights:
            scale = scale * weights[0].unsqueeze(1)
        grad = prob * scale
        onehot = (labels >= 0).to(prob.dtype).unsqueeze(1) * scale
        return grad.scatter_add_(1, labels.clamp_min(0).unsqueeze(1), -onehot), None, None, None


class PartialFC(nn.Module):
    """Partial FC v2: class centres sharded over the ranks of ``torch.distributed`` (a single
    process without a process group is world size 1), a margin head, and the softmax
    cross-entropy computed across ranks.

    ``loss = pfc(embeddings, labels)`` with this rank's (B, D) embeddings (not normalised: the
    head decides, and MagFace reads their norms) and (B,) global class ids in ``[0, num_classes)``.
    Ranks may hold different batch sizes. Steps:

    1. embeddings (differentiable) and labels are all-gathered: every rank sees the global batch;
    2. rank ``r`` owns classes ``[start, start + n)``, ``n = C // W + (r < C % W)``, centres in
       ``.weight`` (n, D) initialised N(0, 0.01); labels outside the shard become -1;
    3. ``sample_rate < 1`` (training mode only): every rank keeps ``ceil(rate * n)`` centres --
       all positives of the global batch on its shard plus random negatives (more if the
       positives alone exceed that); ``sampled_classes`` holds the global ids kept. Unsampled
       centres get a zero gradient (an optimiser with momentum or weight decay still moves
       them, as in arcface_torch);
    4. cosine logits ``normalize(x) normalize(w)^T`` clamped to [-1, 1] (raw ``x w^T`` for plain
       :class:`~nbfacelib.losses.margin.Softmax`), computed in float32 (float64 stays) with
       autocast off, as arcface_torch's train_v2, then
       ``margin.apply_margin`` (norms passed when the head needs them);
    5. softmax cross-entropy with the row max, sum of exponentials and target logit all-reduced;
       loss = mean over the global batch, the same value on every rank; the head's regulariser
       (MagFace) adds ``mean over the global batch``.

    Gradients: ``.weight`` receives the exact gradient of the returned loss; so do the
    embeddings (each row's gradient is summed over the ranks' class shards). Set
    ``backbone_ddp=True`` when the backbone is wrapped in DistributedDataParallel, which
    *averages* gradients over ranks: the embeddings' gradient is then multiplied by the world
    size so the averaged backbone gradient is the exact one (arcface_torch does this inside its
    AllGather). The head's buffers (CurricularFace's ``t``) stay identical on every rank.

    Checkpoints: ``state_dict()`` holds this rank's shard only. :meth:`full_state_dict`
    (collective: call on every rank) returns the gathered (C, D) centres and the head's buffers
    on the CPU; :meth:`load_full_state_dict` takes this rank's rows from one, so a run resumes
    on any number of ranks. :meth:`gather_full` / :meth:`take_shard` do the same for any
    per-class tensor (an optimiser's momentum buffer). Build PartialFC after the process group
    is initialised: the shard is fixed at construction. ``device``: where the centres are
    created (default: the CPU; ``.to(device)`` later works as for any module).
    """

    def __init__(
        self,
        margin: MarginHead,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        group=None,
        backbone_ddp: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if not isinstance(margin, MarginHead):
            raise TypeError(
                f"margin must be a MarginHead (see nbfacelib.losses.build_margin), got {type(margin)}"
            )
        self.group = group
        self.world_size, self.rank = world_size(group), rank(group)
        if num_classes < self.world_size:
            raise ValueError(f"num_classes={num_classes} is smaller than the world size {self.world_size}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        self.margin = margin
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.backbone_ddp = bool(backbone_ddp)
        self.shard_sizes = [self._shard_size(r) for r in range(self.world_size)]
        self.num_local = self.shard_sizes[self.rank]
        self.class_start = sum(self.shard_sizes[: self.rank])
        self.num_sample = min(self.num_local, max(1, math.ceil(self.sample_rate * self.num_local)))
        # drawn where it will live: 10M centres drawn on the CPU and copied over would take
        # tens of seconds and 20 GB of host memory (same numbers as torch.normal on the CPU)
        weight = torch.empty(self.num_local, self.embedding_size, device=device).normal_(0.0, 0.01)
        self.weight = nn.Parameter(weight)
        self.sampled_classes: torch.Tensor | None = None

    def _shard_size(self, r: int) -> int:
        return self.num_classes // self.world_size + int(r < self.num_classes % self.world_size)

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce(t, "sum", self.group)

    def _sample(self, labels: torch.Tensor, in_shard: torch.Tensor):
        """Keep every positive centre and random negatives; remap labels to the kept columns."""
        with torch.no_grad():
            positives = torch.unique(labels[in_shard])  # sorted
            score = torch.rand(self.num_local, device=self.weight.device)
            score[positives] = 2.0  # above any uniform draw: positives always win the top-k
            k = max(self.num_sample, positives.numel())
            index = torch.topk(score, k, sorted=False).indices.sort().values
            labels = torch.where(in_shard, torch.searchsorted(index, labels.clamp_min(0)), -1)
        return index, labels

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of this rank's embeddings; ``sample_weights`` (B,) (detached, this rank's rows):
        the cross-entropy becomes ``mean_i w_i ce_i`` over the global batch (the regulariser
        of a head stays unweighted)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be (B, {self.embedding_size}), got {tuple(embeddings.shape)}")
        labels = labels.reshape(-1).long()
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries for {embeddings.shape[0]} embeddings")
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"labels must be class ids in [0, {self.num_classes}), got {labels[bad][0].item()}"
            )
        if self.backbone_ddp and self.world_size > 1:
            # Same value, gradient x W: DDP's average over ranks then gives the exact gradient.
            embeddings = embeddings.detach() + (embeddings - embeddings.detach()) * self.world_size

        sizes = all_gather_sizes(embeddings.shape[0], embeddings.device, self.group)
        batch = sum(sizes)
        emb = all_gather_rows(embeddings, self.group, sizes)
        glob = all_gather_rows(labels, self.group, sizes)
        if sample_weights is not None:
            if sample_weights.shape != labels.shape:
                raise ValueError(
                    f"sample_weights must be ({labels.shape[0]},), got {tuple(sample_weights.shape)}"
                )
            sample_weights = all_gather_rows(sample_weights.detach().float(), self.group, sizes)

        local = glob - self.class_start
        in_shard = (local >= 0) & (local < self.num_local)
        local = torch.where(in_shard, local, -1)
        weight = self.weight
        self.sampled_classes = None
        if self.training and self.num_sample < self.num_local:
            index, local = self._sample(local, in_shard)
            weight = weight[index]
            self.sampled_classes = index + self.class_start

        norms = _wide(emb).norm(dim=1) if self.margin.needs_norms else None
        # float32 (or float64) with autocast off, as arcface_torch's train_v2 (PartialFC_V2 with
        # fp16=False): a bf16 matmul puts ~5e-3 rad of error on the angles the margin acts on
        with torch.autocast(emb.device.type, enabled=False):
            if self.margin.normalize:
                logits = F.linear(F.normalize(_wide(emb)), F.normalize(_wide(weight))).clamp(-1.0, 1.0)
            else:
                logits = F.linear(_wide(emb), _wide(weight))
        all_reduce_fn = self._all_reduce_sum if self.world_size > 1 else None
        logits = self.margin.apply_margin(logits, local, norms, all_reduce_fn)
        loss = _ShardedCrossEntropy.apply(logits, local, self.group, sample_weights)

        reg = self.margin.regularizer(_wide(embeddings).norm(dim=1))
        if reg is not None:
            # A per-sample term: differentiate only through this rank's own rows (going through
            # the gathered rows would be summed over ranks in backward, W times too much); the
            # other ranks' rows enter the value as a constant.
            mine = reg.sum()
            total = all_reduce(mine.detach().clone(), "sum", self.group)
            loss = loss + (mine + (total - mine.detach())) / batch
        return loss

    # -- checkpoints that do not depend on the number of ranks --------------------------
    def gather_full(self, shard: torch.Tensor) -> torch.Tensor:
        """The (num_classes, ...) tensor on the CPU from every rank's (num_local, ...) rows of a
        per-class tensor (centres, an optimiser's momentum). Collective: call on every rank."""
        if shard.shape[0] != self.num_local:
            raise ValueError(f"shard has {shard.shape[0]} rows, this rank owns {self.num_local} classes")
        return all_gather_rows(shard.detach(), self.group, self.shard_sizes).cpu()

    def take_shard(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a (num_classes, ...) per-class tensor."""
        if full.shape[0] != self.num_classes:
            raise ValueError(f"full tensor has {full.shape[0]} rows, expected num_classes={self.num_classes}")
        return full[self.class_start : self.class_start + self.num_local]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """``{"weight": (C, D) centres, "margin.<buffer>": ...}`` on the CPU, identical on every
        rank whatever the world size. Collective: call on every rank."""
        out = {"weight": self.gather_full(self.weight)}
        for name, buf in self.margin.state_dict().items():
            out[f"margin.{name}"] = buf.detach().cpu()
        return out

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`full_state_dict` saved at any world size (no communication)."""
        if "weight" not in state:
            raise ValueError("Partial FC state has no 'weight' (expected a full_state_dict())")
        full = state["weight"]
        if tuple(full.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"Partial FC state 'weight' is {tuple(full.shape)}, expected "
                f"({self.num_classes}, {self.embedding_size})"
            )
        with torch.no_grad():
            self.weight.copy_(self.take_shard(full))
        head = {k[len("margin.") :]: v for k, v in state.items() if k.startswith("margin.")}
        self.margin.load_state_dict(head)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"sample_rate={self.sample_rate}, rank={self.rank}/{self.world_size}, "
            f"classes=[{self.class_start}, {self.class_start + self.num_local})"
        )
