"""Margin heads as training objectives: a head inside Partial FC (arcface_torch's recipe)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nbfacelib.distributed import world_size
from nbfacelib.models.output import BackboneOutput

from .objective import Batch, Objective, ObjectiveOutput
from .partial_fc import PartialFC


class MarginObjective(Objective):
    """Margin-softmax cross-entropy over class centres held by :class:`PartialFC` (An et al.,
    CVPR 2022): ``L = -1/B sum_i log softmax(h(s, cos theta_i))_{y_i}`` (+ the head's
    regulariser), where ``h`` is the margin head named :attr:`head` (ArcFace, CosFace,
    SphereFace, combined, CurricularFace, MagFace, plain or normalised softmax; see
    :mod:`nbfacelib.losses.margin`).

    Every margin head name is registered as an objective by :meth:`for_head`, which fixes
    :attr:`head`. Keywords: ``sample_rate`` (Partial FC's fraction of centres sampled per
    step), ``backbone_ddp`` (None: True when more than one rank runs, as ``fit`` then wraps the
    backbone in DDP), the rest go to the head (``s``, ``m``...).

    State: the centres (sharded over ranks, gathered to full size in checkpoints, and so are
    their optimizer buffers) and the head's buffers (CurricularFace's ``t``). Logs: the mean
    embedding norm and each scalar buffer of the head.
    """

    head: ClassVar[str] = "arcface"

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        backbone_ddp: bool | None = None,
        **head_kwargs: Any,
    ):
        from nbfacelib.losses import build_margin

        super().__init__(embedding_size=embedding_size, num_classes=num_classes)
        if backbone_ddp is None:
            backbone_ddp = world_size() > 1
        margin = build_margin(self.head, **head_kwargs)
        self.pfc = PartialFC(
            margin, embedding_size, num_classes, sample_rate=sample_rate, backbone_ddp=backbone_ddp
        )

    @classmethod
    def for_head(cls, head: str) -> type[MarginObjective]:
        """The objective class of margin head ``head`` (a subclass fixing :attr:`head`)."""
        return type(f"MarginObjective[{head}]", (cls,), {"head": head, "__module__": cls.__module__})

    @property
    def margin(self) -> nn.Module:
        return self.pfc.margin

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        embedding = output.embedding
        loss = self.pfc(embedding, labels)
        logs: dict[str, float | Tensor] = {"embedding_norm": embedding.detach().float().norm(dim=1).mean()}
        for name, buf in self.pfc.margin.named_buffers():
            if buf.dim() == 0:
                logs[name] = buf.detach().clone()
        return ObjectiveOutput(loss=loss, logs=logs)

    # --- state -------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, Any]:
        return self.pfc.full_state_dict()

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.pfc.load_full_state_dict(state)

    def snapshot(self) -> dict[str, Tensor]:
        # only the head's buffers: the centres are parameters, which a skipped step never moves,
        # and gathering them (a collective, C x D) every step would cost more than the step
        return {k: v.detach().clone() for k, v in self.pfc.margin.named_buffers()}

    def restore(self, snap: dict[str, Tensor]) -> None:
        buffers = dict(self.pfc.margin.named_buffers())
        with torch.no_grad():
            for k, v in snap.items():
                buffers[k].copy_(v)

    def gather_param_state(self, param: nn.Parameter, value: Tensor) -> Tensor:
        if param is self.pfc.weight and value.dim() > 0:
            return self.pfc.gather_full(value)
        return value

    def shard_param_state(self, param: nn.Parameter, value: Tensor) -> Tensor:
        if param is self.pfc.weight and value.dim() > 0:
            return self.pfc.take_shard(value)
        return value
