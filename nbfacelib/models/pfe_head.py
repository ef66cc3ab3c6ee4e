"""Probabilistic Face Embeddings: the uncertainty head on a frozen backbone (Shi and Jain,
"Probabilistic Face Embeddings", ICCV 2019).

:class:`PFEHead` maps the backbone's last feature map to a per-dimension log-variance;
:class:`PFEModel` (registered as backbone ``pfe``) is a frozen face backbone plus that head and
returns :class:`~nbfacelib.models.output.BackboneOutput` with ``embedding`` = the backbone's
embedding (the mean mu, normalised where a formula says so) and ``log_sigma2`` (B, D). The MLS
loss that trains the head is the objective ``pfe_mls`` (:mod:`nbfacelib.losses.pfe`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nbfacelib.models.output import BackboneOutput
from nbfacelib.models.registry import build_backbone, register_backbone


class PFEHead(nn.Module):
    """PFE's uncertainty module (the official TensorFlow code): on the flattened last feature map
    ``x``, ``FC(D) + BN + ReLU``, ``FC(D) + BN`` (no centre, no scale), then a scalar ``gamma``
    and ``beta`` shared by every dimension:

        ``log sigma^2 = log(1e-6 + exp(gamma * z + beta))``

    with ``gamma`` initialised to 1e-4 and ``beta`` to -7 (so sigma^2 starts near e^-7 ~ 1e-3
    for every image). ``in_features``: size of the flattened feature map; ``embedding_size``:
    D, one variance per embedding dimension."""

    def __init__(self, in_features: int, embedding_size: int, gamma: float = 1e-4, beta: float = -7.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, embedding_size)
        self.bn1 = nn.BatchNorm1d(embedding_size)
        self.fc2 = nn.Linear(embedding_size, embedding_size)
        self.bn2 = nn.BatchNorm1d(embedding_size, affine=False)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(features.flatten(1))))))
        # log(1e-6 + exp(u)) = logaddexp(u, log 1e-6): the same value without overflow at large u
        return torch.logaddexp(self.gamma * z + self.beta, z.new_tensor(math.log(1e-6)))


class PFEModel(nn.Module):
    """A frozen face backbone and a trainable :class:`PFEHead` on its last feature map.

    ``forward(x)`` returns ``BackboneOutput(embedding=mu, log_sigma2=(B, D))``, mu the frozen
    backbone's embedding (not normalised, as every backbone). The backbone has
    ``requires_grad=False`` and stays in eval mode whatever ``train()`` is called with (its
    BatchNorm statistics must not move: PFE keeps the trained embedding as the mean).
    ``forward_features`` is the backbone's."""

    def __init__(self, base: nn.Module, head: PFEHead):
        super().__init__()
        self.base = base
        self.head = head
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base.eval()
        self.embedding_size = base.embedding_size
        self.input_size = base.input_size
        self.num_features = base.num_features

    def train(self, mode: bool = True) -> PFEModel:
        super().train(mode)
        self.base.eval()  # frozen: BatchNorm statistics and dropout stay as trained
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward_features(x)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        with torch.no_grad():
            features = self.base.forward_features(x)
            mu = self.base.forward_head(features) if hasattr(self.base, "forward_head") else self.base(x)
        return BackboneOutput(embedding=mu, log_sigma2=self.head(features.float()))


def _feature_size(base: nn.Module, input_size: int | tuple[int, int]) -> int:
    """Size of the flattened last feature map: from ``num_features`` x ``feature_size`` where the
    family gives them (IResNet, MobileFaceNet), else by one forward pass where the weights live."""
    if hasattr(base, "feature_size"):
        return int(base.num_features * math.prod(base.feature_size))
    side = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    device = next(base.parameters()).device
    with torch.no_grad():
        return int(base.eval().forward_features(torch.zeros(1, 3, *side, device=device)).flatten(1).shape[1])


def load_trained(run: str | Path) -> nn.Module:
    """The backbone a finished training run saved (``run/config.json`` +
    ``run/model.safetensors``), rebuilt by name (the engine's ``load_backbone`` without importing
    the engine: models sit below it)."""
    from safetensors.torch import load_file

    run = Path(run)
    weights, config = run / "model.safetensors", run / "config.json"
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(
            f"pfe base_run={str(run)!r}: needs {weights.name} and {config.name} there (the --out of a "
            f"finished `nbface train`)"
        )
    cfg = json.loads(config.read_text())
    model = build_backbone(
        cfg["backbone"],
        embedding_size=cfg["embedding_size"],
        input_size=cfg["input_size"],
        **cfg.get("backbone_kwargs", {}),
    )
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model


@register_backbone
def pfe(
    base: str = "ir_tiny",
    base_kwargs: dict[str, Any] | None = None,
    base_run: str | None = None,
    embedding_size: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
) -> PFEModel:
    """PFE on a frozen backbone: ``base`` (a backbone name, built with ``base_kwargs``) or, with
    ``base_run``, the backbone a training run saved there (its own config decides the
    architecture; ``embedding_size`` and ``input_size`` must agree with it). ``dropout`` goes to
    a freshly built base (a trained base keeps its own)."""
    if base_run is not None:
        trunk = load_trained(base_run)
        if trunk.embedding_size != embedding_size or trunk.input_size != input_size:
            raise ValueError(
                f"pfe base_run={base_run!r}: its backbone is {trunk.embedding_size}-d at "
                f"{trunk.input_size} px, but embedding_size={embedding_size}, input_size={input_size} "
                f"were asked"
            )
    else:
        trunk = build_backbone(
            base, embedding_size=embedding_size, input_size=input_size, dropout=dropout, **(base_kwargs or {})
        )
    head = PFEHead(_feature_size(trunk, input_size), embedding_size)
    return PFEModel(trunk, head)
