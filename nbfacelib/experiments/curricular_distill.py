"""Notebook 06 (survey 002: CurricularFace and VarGFaceNet): the experiments behind C9 and C10.

- C9 :func:`trajectory`: one margin run trained in segments with a constant learning rate
  (a resumed run continues exactly where the last segment stopped), its state read back from
  the checkpoint after each segment: the CurricularFace ``t`` buffer and, on one fixed probe
  batch, the negative logits before and after the curriculum's modulation
  (:func:`probe_negatives`); ``t`` over every step from the run's ``metrics.jsonl``;
- C10 :func:`teacher_variant`, :func:`student_variants`: the teacher (trained once, cached by
  the grid) and the VarGFaceNet student with and without distillation, same steps and seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nbfacelib.experiments.grid import Run, Variant
from nbfacelib.train.config import TrainConfig


# ----------------------------------------------------------------------------------------- C9
def probe_negatives(
    model: torch.nn.Module, centres: Tensor, t: float, m: float, images: Tensor, labels: Tensor
) -> dict[str, Any]:
    """CurricularFace's view of one probe batch under a model and its class centres.

    ``cos`` = normalised embeddings x normalised centres; a negative j of sample i is *hard*
    when cos_ij > cos(theta_iy + m) (the paper's test, as the loss); hard negatives become
    cos (t + cos), so their weight in the softmax is the factor ``t + cos`` (Huang et al., Eq. 7).
    Returns the negatives' cosines, their modulated logits, the hard mask, ``hard_fraction``
    and ``hard_weight`` (mean of t + cos over the hard negatives; NaN when none)."""
    from nbfacelib.models.output import as_output

    model.eval()
    with torch.no_grad():
        emb = F.normalize(as_output(model(images)).embedding.float(), dim=1)
        cos = (emb @ F.normalize(centres.float(), dim=1).T).clamp(-1, 1)
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        cos_y = cos[onehot]
        threshold = torch.cos(torch.acos(cos_y) + m)
        hard = (cos > threshold[:, None]) & ~onehot
        modulated = torch.where(hard, cos * (t + cos), cos)
        negatives = ~onehot
        weight = (t + cos)[hard]
    return {
        "cos": cos[negatives].numpy(),
        "modulated": modulated[negatives].numpy(),
        "hard": hard[negatives].numpy(),
        "hard_fraction": float(hard.sum() / negatives.sum()),
        "hard_weight": float(weight.mean()) if len(weight) else math.nan,
        "cos_y_mean": float(cos_y.mean()),
    }


def trajectory(
    config: TrainConfig, checkpoints: Sequence[int], out: str | Path, probe: tuple[Tensor, Tensor]
) -> list[dict[str, Any]]:
    """Train ``config`` up to each of ``checkpoints`` (ascending optimizer steps) in turn,
    resuming from the last segment, with a constant learning rate after warm-up
    (``poly_power = 0``, so where a segment ends does not change the schedule); after each
    segment, read the backbone, the class centres and ``t`` (CurricularFace; 0 for a head
    without it) from ``out/last.ckpt`` and measure :func:`probe_negatives` on ``probe``.
    A folder that already holds a later checkpoint is read, not retrained."""
    from nbfacelib.models import build_backbone
    from nbfacelib.train import checkpoint as ckpt_io
    from nbfacelib.train import fit

    checkpoints = sorted(int(k) for k in checkpoints)
    if not checkpoints or checkpoints[0] < 1:
        raise ValueError(f"trajectory: checkpoints must be optimizer steps >= 1, got {checkpoints}")
    out = Path(out)
    m = float(config.loss_kwargs.get("m", 0.5))
    images, labels = probe
    rows = []
    for k in checkpoints:
        cfg = config.replace(steps=k, out=str(out), resume=True, poly_power=0.0, ckpt_every=0, progress=False)
        fit(cfg)
        state = ckpt_io.load(out / "last.ckpt")
        model = build_backbone(
            config.backbone,
            embedding_size=config.embedding_size,
            input_size=config.input_size,
            **config.backbone_kwargs,
        )
        model.load_state_dict(state["model"])
        objective = state["objective"]
        t = float(objective.get("margin.t", torch.zeros(()))) if "margin.t" in objective else 0.0
        probe_stats = probe_negatives(model, objective["weight"], t, m, images, labels)
        rows.append({"step": int(state["step"]), "t": t, **probe_stats})
    return rows


def logged(metrics_path: str | Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar a run logged in ``metrics.jsonl`` (empty when absent)."""
    steps, values = [], []
    path = Path(metrics_path)
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get(key) is not None:
                steps.append(entry["step"])
                values.append(entry[key])
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


# ---------------------------------------------------------------------------------------- C10
def teacher_variant(base: TrainConfig, backbone: str, steps: int, **overrides: Any) -> Variant:
    """The teacher: ``backbone`` trained on the same data for ``steps`` (its own seed)."""
    return Variant(
        "teacher", base.replace(backbone=backbone, steps=int(steps), **overrides), {"role": "teacher"}
    )


def student_variants(
    base: TrainConfig, student: str, teacher: Run, distill: Mapping[str, Any]
) -> list[Variant]:
    """The student trained alone (the base loss) and with distillation from ``teacher``'s
    output folder (the ``distill`` objective with the base loss as its head); same steps, data
    and seeds. ``distill``: the distill objective's weights (``l2_weight``,
    ``relational_weight``, ``projection``)."""
    alone = base.replace(backbone=student)
    with_teacher = alone.replace(
        loss="distill",
        loss_kwargs={
            "teacher": str(teacher.out),
            "head": base.loss,
            "head_kwargs": dict(base.loss_kwargs),
            **dict(distill),
        },
    )
    return [
        Variant("student", alone, {"role": "student", "distilled": False}),
        Variant("student+distill", with_teacher, {"role": "student", "distilled": True}),
    ]
