"""Embedding distillation from a frozen teacher (VarGFaceNet, survey 002)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbfacelib.models.output import BackboneOutput, as_output

from . import register_objective
from .objective import Batch, Objective, ObjectiveOutput


def l2_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """VarGFaceNet's distillation term: mean_i || s_i/||s_i|| - t_i/||t_i|| ||^2 (= 2 - 2 cos:
    it aligns the angles of the embeddings, which is what a cosine-margin classifier uses)."""
    return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()


def relational_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Relation term: the student's pairwise cosine similarities match the teacher's,
    mean over pairs i != j of (cos(s_i, s_j) - cos(t_i, t_j))^2 (the similarity-preserving /
    relational form of Tung & Mori, ICCV 2019, and Park et al., "Relational Knowledge
    Distillation", CVPR 2019, on normalised embeddings). Needs no common embedding space, so it
    works without a projection when the sizes differ."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    gs, gt = s @ s.T, t @ t.T
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return (gs - gt)[off].pow(2).mean() if off.any() else gs.sum() * 0.0


@register_objective(name="distill")
class Distill(Objective):
    """Distillation of a frozen teacher into the student backbone, plus the student's own
    classification loss (Yan et al., "VarGFaceNet", ICCVW 2019, Sec. 3.3):

        L = L_cls(student) + l2_weight * mean_i ||s^_i - t^_i||^2 + relational_weight * L_rel

    with s^, t^ the L2-normalised student / teacher embeddings (:func:`l2_distillation`) and
    L_rel the pairwise-cosine relation term (:func:`relational_distillation`). ``L_cls`` is the
    margin objective named ``head`` (ArcFace by default, VarGFaceNet's) through Partial FC,
    built with ``head_kwargs`` and ``sample_rate``.

    The teacher: ``teacher`` is the output folder of a finished training run (``config.json`` +
    ``model.safetensors``); ``teacher_backbone`` instead builds an *untrained* registered
    backbone (with ``teacher_kwargs``), for tests and for a "random teacher" control. It is
    frozen (no gradient), always in eval mode (its BatchNorm statistics stay those it was
    trained with), not part of the objective's state (checkpoints keep the student's classifier
    only: the teacher is its own checkpoint), and runs once per micro-batch under
    ``torch.no_grad()`` inside the engine's autocast, i.e. in the engine's precision.

    A teacher whose embedding size differs from the student's needs ``projection=True`` (a
    learned Linear student -> teacher size, trained with the student, for the L2 term) unless
    only the relational term is used; otherwise construction raises naming both sizes. The
    teacher must take the student's input size (checked in :meth:`attach`).

    Logs: ``cls_loss``, ``distill_l2``, ``distill_relational``, ``teacher_cos`` (mean cosine
    between the student's and the teacher's embedding), plus the classifier's own logs (e.g.
    CurricularFace's ``t``).
    """

    contract_kwargs: ClassVar[dict[str, Any]] = {"teacher_backbone": "ir_tiny", "relational_weight": 1.0}

    def __init__(
        self,
        *,
        embedding_size: int,
        num_classes: int,
        teacher: str | None = None,
        teacher_backbone: str | None = None,
        teacher_kwargs: dict[str, Any] | None = None,
        l2_weight: float = 1.0,
        relational_weight: float = 0.0,
        projection: bool = False,
        head: str = "arcface",
        head_kwargs: dict[str, Any] | None = None,
        sample_rate: float = 1.0,
    ):
        from nbfacelib.losses import build_objective

        super().__init__(embedding_size=embedding_size, num_classes=num_classes)
        if (teacher is None) == (teacher_backbone is None):
            raise ValueError(
                "distill: give exactly one of teacher (a training run's output folder) and "
                "teacher_backbone (an untrained registered backbone)"
            )
        if l2_weight < 0 or relational_weight < 0:
            raise ValueError(
                f"distill: weights must be >= 0, got l2={l2_weight}, relational={relational_weight}"
            )
        self._teacher_build: tuple[str, dict[str, Any]] | None = None
        net: nn.Module | None = None
        if teacher is not None:
            from nbfacelib.models.saved import load_run_backbone

            net = load_run_backbone(teacher).requires_grad_(False)
            t_size = int(net.embedding_size)
        else:  # built in attach(), at the student's input size unless teacher_kwargs gives one
            self._teacher_build = (teacher_backbone, dict(teacher_kwargs or {}))
            t_size = int(self._teacher_build[1].get("embedding_size", embedding_size))
        # Not a child module (object.__setattr__ bypasses nn.Module's registration): the
        # engine's objective.train() must not put it in training mode, its weights are not
        # objective state to checkpoint, and the optimizer must never see them.
        object.__setattr__(self, "teacher", net)
        self.teacher_source = teacher or f"untrained {teacher_backbone}"
        self.projection: nn.Module | None = None
        if t_size != embedding_size and l2_weight > 0:
            if not projection:
                raise ValueError(
                    f"distill: the teacher ({self.teacher_source}) gives {t_size}-d embeddings, the "
                    f"student {embedding_size}-d; set projection=True (a learned Linear "
                    f"{embedding_size} -> {t_size} for the L2 term) or use only relational_weight"
                )
        if projection:
            self.projection = nn.Linear(embedding_size, t_size, bias=False)
        self.l2_weight = float(l2_weight)
        self.relational_weight = float(relational_weight)
        self.classifier = build_objective(
            head,
            embedding_size=embedding_size,
            num_classes=num_classes,
            sample_rate=sample_rate,
            **(head_kwargs or {}),
        )

    def attach(self, backbone: nn.Module) -> None:
        device = next(iter(backbone.parameters())).device
        student_size = getattr(backbone, "input_size", None)
        if self._teacher_build is not None:
            from nbfacelib.models import build_backbone

            name, kw = self._teacher_build
            kw = {"embedding_size": self.embedding_size, "input_size": student_size, **kw}
            object.__setattr__(self, "teacher", build_backbone(name, **kw).requires_grad_(False))
        self.teacher.to(device).eval()
        teacher_size = getattr(self.teacher, "input_size", None)
        if student_size is not None and teacher_size is not None and student_size != teacher_size:
            raise ValueError(
                f"distill: the teacher ({self.teacher_source}) takes {teacher_size} px input, the student "
                f"{student_size} px; train the teacher at the student's input_size"
            )
        self.classifier.attach(backbone)

    def forward(self, output: BackboneOutput, labels: Tensor, batch: Batch) -> ObjectiveOutput:
        if self.teacher is None:
            raise RuntimeError("distill: call attach(backbone) before the first forward (fit() does)")
        with torch.no_grad():
            teacher = as_output(self.teacher(batch.images)).embedding.float()
        result = self.classifier(output, labels, batch)
        student = output.embedding.float()
        loss = result.loss
        logs = dict(result.logs)
        logs["cls_loss"] = result.loss.detach()
        projected = self.projection(student) if self.projection is not None else student
        l2 = l2_distillation(projected, teacher) if self.l2_weight > 0 else None
        rel = relational_distillation(student, teacher) if self.relational_weight > 0 else None
        if l2 is not None:
            loss = loss + self.l2_weight * l2
            logs["distill_l2"] = l2.detach()
        if rel is not None:
            loss = loss + self.relational_weight * rel
            logs["distill_relational"] = rel.detach()
        if projected.shape[1] == teacher.shape[1]:
            logs["teacher_cos"] = F.cosine_similarity(projected.detach(), teacher, dim=1).mean()
        return ObjectiveOutput(loss=loss, weights=result.weights, logs=logs)

    def after_step(self, backbone: nn.Module) -> None:
        self.classifier.after_step(backbone)

    def param_groups(self) -> list[dict[str, Any]]:
        groups = list(self.classifier.param_groups())
        if self.projection is not None:
            groups.append({"params": list(self.projection.parameters())})
        return groups

    # --- state: the classifier's (sharded centres, head buffers) and the projection ----------
    def full_state_dict(self) -> dict[str, Any]:
        state = {f"classifier.{k}": v for k, v in self.classifier.full_state_dict().items()}
        if self.projection is not None:
            state.update(
                {f"projection.{k}": v.detach().cpu().clone() for k, v in self.projection.state_dict().items()}
            )
        return state

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.classifier.load_full_state_dict(
            {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        )
        if self.projection is not None:
            self.projection.load_state_dict(
                {k.removeprefix("projection."): v for k, v in state.items() if k.startswith("projection.")}
            )

    def snapshot(self) -> Any:
        return self.classifier.snapshot()  # the projection is a parameter: a skipped step never moves it

    def restore(self, snap: Any) -> None:
        self.classifier.restore(snap)

    def gather_param_state(self, param: nn.Parameter, value: Tensor) -> Tensor:
        return self.classifier.gather_param_state(param, value)

    def shard_param_state(self, param: nn.Parameter, value: Tensor) -> Tensor:
        return self.classifier.shard_param_state(param, value)

    def extra_repr(self) -> str:
        return (
            f"teacher={self.teacher_source!r}, l2_weight={self.l2_weight}, "
            f"relational_weight={self.relational_weight}"
        )
