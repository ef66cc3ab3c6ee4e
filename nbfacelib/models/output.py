"""What a backbone returns: a Tensor (the embedding) or a :class:`BackboneOutput`.

Every backbone of today returns the (B, D) embedding. Families that give more (a face ViT's
patch weights, a PFE head's variance, intermediate feature maps for a topology loss) return a
:class:`BackboneOutput`; everything that only needs the embedding (evaluation, ONNX export,
the training objectives) reads it through :func:`as_output`, so both kinds work everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class BackboneOutput:
    """A backbone's forward result beyond the embedding.

    ``embedding`` (B, D), not L2-normalised; ``patch_weights`` (B, P) softmax of the SE gates
    over patches (face ViT); ``log_sigma2`` (B, D) or (B, 1) log-variance of a PFE head;
    ``features``: named intermediates (e.g. ``"stage3"`` feature maps)."""

    embedding: Tensor
    patch_weights: Tensor | None = None
    log_sigma2: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)


def as_output(x: Tensor | BackboneOutput) -> BackboneOutput:
    """``x`` itself when it is a :class:`BackboneOutput`, else ``BackboneOutput(embedding=x)``."""
    if isinstance(x, BackboneOutput):
        return x
    if not torch.is_tensor(x):
        raise TypeError(f"a backbone must return a Tensor or a BackboneOutput, got {type(x).__name__}")
    return BackboneOutput(embedding=x)


class EmbeddingOnly(nn.Module):
    """``model`` whose forward returns only the embedding tensor (for ONNX export and
    tracing, which need tensor outputs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return as_output(self.model(x)).embedding


class TrunkFeatures(nn.Module):
    """``model`` whose forward returns its trunk's features: ``forward_features`` (the contract's
    last feature map, or token / pooled features for the families that end so), flattened to
    (B, C*H*W), before the embedding head.

    What the head keeps is what separates the training identities. On a domain the model was not
    trained on (synthetic faces -> photographs) the wider trunk map can carry more of what tells
    new people apart: notebook 00 scores both (BENCHMARKS.md, "Trunk features")."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.model.forward_features(x), 1)


# What a trained backbone can be scored by: name -> the module that gives it from the backbone.
MODEL_OUTPUTS = {"embedding": EmbeddingOnly, "trunk": TrunkFeatures}


def model_output(model: nn.Module, name: str) -> nn.Module:
    """``model`` read through the output ``name`` (:data:`MODEL_OUTPUTS`): ``"embedding"``, what
    the backbone returns (``as_output(model(x)).embedding``), or ``"trunk"``
    (:class:`TrunkFeatures`)."""
    if name not in MODEL_OUTPUTS:
        raise ValueError(f"unknown model output {name!r}; choose from {sorted(MODEL_OUTPUTS)}")
    return MODEL_OUTPUTS[name](model)
