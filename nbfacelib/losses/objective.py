"""The training objective: what :func:`nbfacelib.train.fit` optimises besides the backbone.

The engine never imports a specific loss: it builds an :class:`Objective` by name
(:func:`nbfacelib.losses.build_objective`) and, for every optimizer step, calls

1. ``snap = objective.snapshot()``;
2. per micro-batch: ``x = objective.prepare(images, labels, batch)`` (under ``no_grad``),
   ``out = objective(as_output(model(x)), labels, batch)`` and ``out.loss.backward()``;
3. on a finite step: the optimizer step, then ``objective.after_step(backbone)``; on a
   skipped (non-finite) step: ``objective.restore(snap)``, so nothing of the bad batch stays.

Checkpoints hold ``objective.full_state_dict()`` (world-size independent, on the CPU) and the
optimizer state of the objective's parameters; per-class parameters sharded over ranks (Partial
FC's centres) say how their optimizer buffers are gathered and split through
:meth:`Objective.gather_param_state` / :meth:`Objective.shard_param_state`.
"""

from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from nbfacelib.models.output import BackboneOutput


@dataclass
class Batch:
    """What the engine hands the objective with each micro-batch.

    ``images`` (B, C, H, W): the model input (normalised, on the device); ``labels`` (B,) int64
    class ids; ``step``: the optimizer step (0-based); ``model``: the backbone as the engine
    runs it (possibly DDP-wrapped or compiled), for an extra forward pass."""

    images: Tensor
    labels: Tensor
    step: int
    model: nn.Module


@dataclass
class ObjectiveOutput:
    """``loss``: scalar, differentiable; ``weights``: (B,) per-sample weights used (detached),
    or None; ``logs``: named scalars (floats or 0-d tensors) averaged into ``metrics.jsonl``."""

    loss: Tensor
    weights: Tensor | None = None
    logs: dict[str, float | Tensor] = field(default_factory=dict)


class Objective(nn.Module, metaclass=ABCMeta):
    """Base class of the training objectives. Subclasses cite paper + formula in their
    docstring, take their hyper-parameters as keywords and implement :meth:`forward`.

    Class attributes read by the generic contract test (``tests/test_objectives.py``):
    ``contract_backbone`` (the backbone name to test with) and ``contract_kwargs`` (keywords
    to build the objective with there).
    """

    contract_backbone: ClassVar[str] = "ir_tiny"
    contract_kwargs: ClassVar[dict[str, Any]] = {}

    #: The batch layout the objective needs from the engine's sampler: ``None`` (default): what
    #: the config says (``TrainConfig.images_per_identity``, i.i.d. images at 1); an int K >= 2:
    #: identity-balanced "P x K" batches (Hermans et al., 2017), batch_size / K identities with K
    #: images each, grouped (the triplet loss needs positives in every batch). ``fit()`` hands it
    #: to ``TrainBatches.set_images_per_identity``. An instance may set it from a keyword.
    images_per_identity: int | None = None

    def __init__(self, *, embedding_size: int, num_classes: int, **hyper: Any):
        super().__init__()
        if hyper:
            raise TypeError(
                f"objective {type(self).__name__}: unknown option(s) {', '.join(map(repr, hyper))}"
            )
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(
                f"objective {type(self).__name__}: embedding_size={embedding_size} and "
                f"num_classes={num_classes} must be >= 1"
            )
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)

    # --- override points ---------------------------------------------------------------------
    def prepare(self, images: Tensor, labels: Tensor, batch: Batch) -> Tensor:
        """The model input of the training forward (DPAP / RSP transform it); default: the
        images unchanged. The engine calls it under ``torch.no_grad()``."""
        return images

    @abstractmethod
    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        """The loss of one micro-batch from the backbone's output and the labels."""

    def attach(self, backbone: nn.Module) -> None:
        """Called once by ``fit()`` after the backbone is built and on its device (build EMA
        copies, load teachers). Default: nothing."""

    def after_step(self, backbone: nn.Module) -> None:
        """Called after each successful optimizer step (EMA updates, queue refresh).
        Default: nothing."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups for the objective's trainable parameters: by default one group of
        every parameter with ``requires_grad`` ([] if none). A group may set its own lr / wd."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    # --- state -------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, on the CPU, the same whatever the world size.
        Default: a CPU copy of ``state_dict()`` (parameters and buffers). Collective when
        sharded parameters are gathered: the engine calls it on every rank."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`full_state_dict` (no communication)."""
        self.load_state_dict(state)

    def snapshot(self) -> Any:
        """State to put back after a skipped step; default: a deep copy of
        :meth:`full_state_dict`. Override with something cheaper when most of the state is
        parameters (which a skipped step never changes: the optimizer does not step)."""
        return copy.deepcopy(self.full_state_dict())

    def restore(self, snap: Any) -> None:
        """Put back a :meth:`snapshot`."""
        self.load_full_state_dict(snap)

    def gather_param_state(self, param: nn.Parameter, value: Tensor) -> Tensor:
        """A per-parameter optimizer buffer (momentum, Adam moments) of ``param`` as saved in a
        checkpoint: for parameters sharded over ranks, gathered to full size (collective).
        Default: unchanged (no sharded parameters)."""
        return value

    def shard_param_state(self, param: nn.Parameter, value: Tensor) -> Tensor:
        """Inverse of :meth:`gather_param_state`: this rank's part of a saved buffer."""
        return value
