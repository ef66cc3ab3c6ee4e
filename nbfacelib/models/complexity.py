"""Parameter and FLOP counts of a backbone, with PyTorch's own ``FlopCounterMode``.

Units, because the field mixes them up:

- ``count_flops`` returns what ``torch.utils.flop_counter.FlopCounterMode`` reports: 2 FLOPs per
  multiply-accumulate of convolutions and matrix products (batch 1, forward only). BatchNorm,
  PReLU, additions and pooling are not counted (a few percent of a CNN).
- ``count_macs`` = ``count_flops // 2``: multiply-accumulates. **The "FLOPs" in insightface's
  tables (r18 2.6G, r50 6.3G, r100 12.1G, mbf 0.45G) are MACs**: arcface_torch's ``flops.py``
  prints ptflops' ``get_model_complexity_info``, which counts one per multiply-add. Compare
  REFERENCE.md's numbers with ``count_macs``.

Counting works on the meta device (shapes only, no memory, no arithmetic), so r200 is counted
in well under a second::

    with torch.device("meta"):
        model = build_backbone("r200")
    count_parameters(model), count_macs(model)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nbfacelib.models.layers import to_2tuple


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded).

    ``trainable_only`` skips parameters with ``requires_grad=False`` (e.g. IResNet's frozen
    embedding-BN scale, 512 elements). insightface's parameter counts include them.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def count_flops(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> int:
    """Forward FLOPs for one (1, 3, H, W) image, as FlopCounterMode counts them (2 per MAC).

    ``input_size`` defaults to ``model.input_size`` (112 when the model has none); backbones whose
    head is sized by the input (IResNet's flatten, MobileFaceNet's GDC) only accept their own
    size, so build the model at the size to count (``build_backbone("r50", input_size=160)``).
    The model runs in eval mode (BatchNorm1d refuses a batch of one in train mode) and is put
    back as it was.
    On a meta-device model nothing is computed, only shapes propagate.
    """
    if input_size is None:
        input_size = getattr(model, "input_size", 112)
    h, w = to_2tuple(input_size)
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, 3, h, w, device=_model_device(model), dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass: the unit insightface calls "FLOPs"."""
    return count_flops(model, input_size) // 2


def summarize(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> dict[str, float]:
    """``{"params_m": ..., "trainable_params_m": ..., "gmacs": ..., "gflops": ...}`` for tables."""
    flops = count_flops(model, input_size)
    return {
        "params_m": count_parameters(model) / 1e6,
        "trainable_params_m": count_parameters(model, trainable_only=True) / 1e6,
        "gmacs": flops / 2e9,
        "gflops": flops / 1e9,
    }
