"""F2C: a dynamic class pool of centres made by an EMA gallery network, instead of a classifier
(Wang et al., "An Efficient Training Approach for Very Large Scale Face Recognition", CVPR 2022),
and DCQ's settings of the same mechanism (Li et al., "Dynamic Class Queue for Large Scale Face
Recognition In the Wild", CVPR 2021)."""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbfacelib.distributed import world_size
from nbfacelib.models.output import BackboneOutput, as_output

from .objective import Batch, Objective, ObjectiveOutput


class ClassQueue(nn.Module):
    """F2C's dynamic class pool: ``size`` slots, each holding one identity's centre (a unit
    vector), replaced least-recently-used first.

    :meth:`update` inserts or refreshes the centres of a batch's identities: an identity already
    in the pool gets its new centre in place (its slot is refreshed), a new one takes an empty
    slot or evicts the slot refreshed longest ago; several rows of one identity in the update
    are averaged (then re-normalised) into one centre. Buffers: ``centres`` (size, D), ``ids``
    (size,) int64 with -1 for an empty slot, ``last_used`` (size,) int64 (the ``clock`` value
    of the slot's last insert or refresh, -1 when empty) and ``clock`` (updates so far).
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue_size must be >= 1, got {size}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("centres", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("last_used", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))

    def updated(self, ids: Tensor, features: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The pool after inserting / refreshing ``ids`` with ``features`` (N, D), as new tensors
        (the module is unchanged), and the slot of each of the N rows."""
        ids = ids.reshape(-1).long()
        unique, inverse = torch.unique(ids, return_inverse=True)
        if len(unique) > self.size:
            raise ValueError(
                f"F2C queue_size={self.size} is smaller than the {len(unique)} identities of this "
                f"batch: every batch identity needs a slot (use queue_size >= {len(unique)})"
            )
        summed = torch.zeros(len(unique), self.dim, device=features.device, dtype=torch.float32)
        summed.index_add_(0, inverse, features.float())
        centres_new = F.normalize(summed)  # the mean direction of the identity's rows
        match = self.ids[None, :] == unique[:, None]  # (U, size)
        present = match.any(dim=1)
        slot = match.to(torch.uint8).argmax(dim=1)
        # free slots for the new identities: empty ones first (last_used -1), then the least
        # recently used; slots refreshed now are never taken. Stable sort: ties (empty slots)
        # go in slot order, so the result does not depend on the device's sort.
        stamp = self.last_used.clone()
        stamp[slot[present]] = torch.iinfo(torch.long).max
        n_new = int((~present).sum())
        free = torch.sort(stamp, stable=True).indices[:n_new]
        slot = slot.clone()
        slot[~present] = free
        state = {
            "centres": self.centres.clone(),
            "ids": self.ids.clone(),
            "last_used": self.last_used.clone(),
            "clock": self.clock + 1,
        }
        state["centres"][slot] = centres_new.to(state["centres"].dtype)
        state["ids"][slot] = unique
        state["last_used"][slot] = state["clock"]
        return state, slot[inverse]

    def update(self, ids: Tensor, features: Tensor) -> Tensor:
        """Insert / refresh in place (see :meth:`updated`); returns the slot of each row."""
        state, slots = self.updated(ids, features)
        self.load(state)
        return slots

    def load(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in state.items():
                getattr(self, name).copy_(value)

    def slots_of(self, ids: Tensor) -> Tensor:
        """The slot holding each id, -1 where absent."""
        match = self.ids[None, :] == ids.reshape(-1, 1)
        return torch.where(match.any(dim=1), match.to(torch.uint8).argmax(dim=1), -1)


def other_image_index(labels: Tensor) -> Tensor:
    """For each sample, another sample of the batch with the same label (the next one of its
    identity, cyclically), or the sample itself when its identity appears once."""
    n = labels.shape[0]
    order = torch.argsort(labels, stable=True)
    ordered = labels[order]
    first = torch.searchsorted(ordered, ordered)  # start of each sample's run of equal labels
    pos = torch.arange(n, device=labels.device)
    nxt = torch.clamp(pos + 1, max=n - 1)
    same_next = (pos + 1 < n) & (ordered[nxt] == ordered)
    partner_pos = torch.where(same_next, nxt, first)
    partner = torch.empty_like(order)
    partner[order] = order[partner_pos]
    return partner


class F2C(Objective):
    """F2C (Wang et al., CVPR 2022): no classifier; the class centres are features of a gallery
    network, kept in a dynamic class pool (an LRU queue, :class:`ClassQueue`).

    Per micro-batch, with probe embeddings ``f_i`` (the trained backbone) and labels ``y_i``:

    1. the gallery network ``g`` embeds *another image* of each sample's identity,
       ``c_i = g(x'_i)`` (no gradient), and the pool inserts / refreshes the centre of every
       batch identity from them (several rows of one identity averaged);
    2. logits over the pool's Q slots: ``z_ij = s (cos(f_i, c_j) - m [j = slot(y_i)])`` (empty
       slots excluded), ``L = -1/B sum_i log softmax(z_i)_{slot(y_i)}``;
    3. after each optimizer step the gallery network follows the backbone,
       ``theta_g <- mu theta_g + (1 - mu) theta_b`` (momentum ``mu`` = 0.99; the float buffers,
       BatchNorm's running statistics, the same way). It runs in eval mode.

    So the classifier's memory is the pool (Q x D) plus one copy of the backbone, whatever the
    number of identities. Defaults as REFERENCE.md gives F2C: ``queue_size`` = 1% of the
    identities (at least ``min_queue``), ``s`` = 32, ``momentum`` = 0.99, ``m`` = 0 (the paper's
    pool softmax with no margin; ``m > 0`` gives the CosFace form).

    *Another image of the same identity.* The pool must be filled from images other than the
    probe's (else the positive logit is a copy of the probe's own image through a lagging
    network). Chosen here: the other image comes from the batch itself -- for each sample the
    next sample of the same identity (:func:`other_image_index`); data drawn with several
    images per identity (F2C's identity-based loader; ``TrainConfig.data`` with few identities
    or a P x K sampler) gives every sample one. A sample whose identity appears once gets its
    own image mirrored (a different view of the same photo), and ``logs["other_image_fraction"]``
    says how many had a true other image. Why not a data hook: it would add a data-reader
    callback to the engine's Batch for one objective, and the batch already holds what the
    F2C paper's dual loader provides when data are drawn by identity.

    One process only (a clear error under torchrun): the pool is filled from this process's
    batches, so several ranks would hold different pools.

    State (checkpointed, resumed, restored after a skipped step): the pool's buffers and the
    gallery network (``gallery.*``). :meth:`snapshot` keeps the pool only: the gallery moves in
    :meth:`after_step`, which the engine never calls for a skipped step.
    """

    contract_kwargs: ClassVar[dict[str, Any]] = {"queue_size": 8}
    # the hyper-parameters of this variant (DCQ overrides them)
    default_s: ClassVar[float] = 32.0
    default_m: ClassVar[float] = 0.0
    default_momentum: ClassVar[float] = 0.99

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        queue_size: int | None = None,
        queue_fraction: float = 0.01,
        min_queue: int = 256,
        s: float | None = None,
        m: float | None = None,
        momentum: float | None = None,
    ):
        super().__init__(embedding_size=embedding_size, num_classes=num_classes)
        if not 0.0 < queue_fraction <= 1.0:
            raise ValueError(f"F2C queue_fraction must be in (0, 1], got {queue_fraction}")
        if queue_size is None:
            queue_size = min(num_classes, max(min_queue, math.ceil(queue_fraction * num_classes)))
        self.s = float(self.default_s if s is None else s)
        self.m = float(self.default_m if m is None else m)
        self.momentum = float(self.default_momentum if momentum is None else momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"F2C momentum must be in [0, 1], got {self.momentum}")
        if self.s <= 0:
            raise ValueError(f"F2C scale s must be > 0, got {self.s}")
        self.queue = ClassQueue(int(queue_size), embedding_size)
        self.gallery: nn.Module | None = None

    # --- the gallery network -----------------------------------------------------------------
    def attach(self, backbone: nn.Module) -> None:
        """The gallery network: a copy of the backbone (unwrapped from DDP / torch.compile),
        frozen, in eval mode."""
        if world_size() > 1:
            # each rank would fill its pool from its own batches: the pools (state) would differ
            # between ranks; gathering the gallery features first would fix it, not done yet
            raise RuntimeError(
                f"{type(self).__name__} keeps one pool per process and supports one process only; "
                f"this run has {world_size()} ranks (train it without torchrun)"
            )
        module = getattr(backbone, "module", backbone)
        module = getattr(module, "_orig_mod", module)
        gallery = copy.deepcopy(module)
        gallery.requires_grad_(False)
        self.gallery = gallery.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.gallery is not None:
            self.gallery.eval()  # always: its BN statistics are the EMA of the backbone's
        return self

    @torch.no_grad()
    def after_step(self, backbone: nn.Module) -> None:
        """``theta_g <- mu theta_g + (1 - mu) theta_b`` for parameters and float buffers."""
        self._require_gallery()
        module = getattr(backbone, "module", backbone)
        module = getattr(module, "_orig_mod", module)
        mu = self.momentum
        for g, b in zip(self.gallery.parameters(), module.parameters(), strict=True):
            g.mul_(mu).add_(b.detach().to(g.dtype), alpha=1.0 - mu)
        for g, b in zip(self.gallery.buffers(), module.buffers(), strict=True):
            if g.is_floating_point():
                g.mul_(mu).add_(b.to(g.dtype), alpha=1.0 - mu)
            else:
                g.copy_(b)

    def _require_gallery(self) -> None:
        if self.gallery is None:
            raise RuntimeError(
                f"{type(self).__name__} has no gallery network yet: call attach(backbone) first "
                f"(fit() does it once the backbone is built)"
            )

    # --- the loss ------------------------------------------------------------------------------
    def gallery_features(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Gallery embeddings of another image of each sample's identity, and whether that image
        is a true other image (False: the sample's own image, mirrored)."""
        self._require_gallery()
        partner = other_image_index(labels)
        own = partner == torch.arange(len(labels), device=labels.device)
        other = images[partner]
        other = torch.where(own[:, None, None, None], other.flip(3), other)
        with torch.no_grad():
            feats = as_output(self.gallery(other)).embedding.float()
        return feats, ~own

    def pool_logits(self, embeddings: Tensor, centres: Tensor, ids: Tensor) -> Tensor:
        """``cos(f_i, c_j)`` (B, Q) in float32; empty slots at -inf."""
        cos = F.linear(F.normalize(embeddings.float()), F.normalize(centres.float())).clamp(-1.0, 1.0)
        return cos.masked_fill(ids[None, :] < 0, float("-inf"))

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        labels = labels.reshape(-1).long()
        feats, true_other = self.gallery_features(batch.images, labels)
        # the pool with this batch's identities in it; written back only in training (an
        # evaluation forward leaves the state alone)
        state, target = self.queue.updated(labels, feats)
        if self.training:
            self.queue.load(state)
        cos = self.pool_logits(output.embedding, state["centres"], state["ids"])
        rows = torch.arange(len(labels), device=labels.device)
        logits = cos.clone()
        logits[rows, target] = cos[rows, target] - self.m
        loss = F.cross_entropy(self.s * logits, target)
        logs = {
            "other_image_fraction": true_other.float().mean().detach(),
            "pool_filled": (state["ids"] >= 0).float().mean().detach(),
            "positive_cos": cos[rows, target].detach().mean(),
        }
        return ObjectiveOutput(loss=loss, logs=logs)

    # --- state ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Tensor]:
        # the pool only (on its device, no host copy): the gallery network moves in after_step,
        # which a skipped step never reaches
        return {k: v.detach().clone() for k, v in self.queue.state_dict().items()}

    def restore(self, snap: dict[str, Tensor]) -> None:
        self.queue.load(snap)

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        if self.gallery is None and any(k.startswith("gallery.") for k in state):
            raise RuntimeError(
                f"{type(self).__name__}: the state holds a gallery network but none is attached; "
                f"call attach(backbone) before loading (fit() does)"
            )
        shape = tuple(state["queue.centres"].shape) if "queue.centres" in state else None
        if shape != (self.queue.size, self.embedding_size):
            raise ValueError(
                f"{type(self).__name__} state: queue.centres is {shape}, expected "
                f"({self.queue.size}, {self.embedding_size}) (queue_size and embedding_size must match)"
            )
        self.load_state_dict(state)

    def extra_repr(self) -> str:
        return f"queue_size={self.queue.size}, s={self.s}, m={self.m}, momentum={self.momentum}"


class DCQ(F2C):
    """DCQ's settings of the same mechanism (Li et al., CVPR 2021): a queue of class weights made
    by a momentum key encoder from another image of each identity, the positive logit against
    the key feature of that other image, CosFace ``s (cos - m)`` with ``s`` = 50, ``m`` = 0.3,
    key momentum 0.999, a queue of 8,192 classes (capped at the number of classes).

    With the pool refreshed from the current batch before the loss (as :class:`F2C` does), the
    positive centre *is* the key feature of the other image, and a class is touched only when it
    is enqueued, so least-recently-used is first-in-first-out: only the defaults differ. One
    difference: a FIFO queue of class weights can hold a class twice; this pool keeps one slot
    per class and refreshes it in place."""

    default_s: ClassVar[float] = 50.0
    default_m: ClassVar[float] = 0.3
    default_momentum: ClassVar[float] = 0.999

    def __init__(self, *, embedding_size: int, num_classes: int, queue_size: int | None = None, **kw: Any):
        if queue_size is None:
            queue_size = min(num_classes, 8192)
        super().__init__(embedding_size=embedding_size, num_classes=num_classes, queue_size=queue_size, **kw)
