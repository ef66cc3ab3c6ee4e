"""A trained backbone back from a training run's folder, for the layers below the engine.

``fit()`` writes ``OUT/config.json`` (the resolved ``TrainConfig``) and ``OUT/model.safetensors``.
Objectives that need a trained network (the distillation teacher) read it here: the losses may
not import the training engine (``tests/test_packaging.py``), and the backbone's construction
needs only four fields of the config.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from nbfacelib.models.registry import build_backbone


def load_run_backbone(run_dir: str | Path) -> nn.Module:
    """The backbone trained in ``run_dir`` (``config.json`` + ``model.safetensors``), on the
    CPU, in eval mode. A missing file raises ``FileNotFoundError`` naming it."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for path in (config, weights):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found (is {run_dir} the output folder of a finished training run?)"
            )
    cfg = json.loads(config.read_text())
    model = build_backbone(
        cfg["backbone"],
        embedding_size=cfg["embedding_size"],
        input_size=cfg["input_size"],
        **cfg.get("backbone_kwargs", {}),
    )
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.eval()
