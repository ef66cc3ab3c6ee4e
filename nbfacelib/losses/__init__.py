"""nbfacelib.losses: training objectives and margin heads, chosen by name.

``build_objective("arcface", embedding_size=512, num_classes=C, s=64)`` returns the
:class:`Objective` the training engine optimises; ``list_objectives()`` lists the names. A new
objective is one decorated class::

    @register_objective(name="triplet")
    class Triplet(Objective): ...

Every margin head name is also an objective: a :class:`MarginObjective` (the head inside
:class:`PartialFC`). ``build_margin("arcface", s=64, m=0.5)`` returns the bare
:class:`MarginHead`; ``list_margins()`` lists those names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nbfacelib.registry import Registry

from .adaface import AdaFace
from .curricular_face import CurricularFace
from .f2c import DCQ, F2C
from .magface import MagFace
from .margin import (
    CombinedMargin,
    MarginHead,
    NormSoftmax,
    Softmax,
    angular_margin,
    arcface,
    combined,
    cosface,
    sphereface,
)
from .margin_objective import MarginObjective
from .objective import Batch, Objective, ObjectiveOutput
from .partial_fc import PartialFC
from .pfe import PFEMLS

MARGINS = Registry("margin head")
OBJECTIVES = Registry("objective")


def build_margin(name: str, **kwargs) -> MarginHead:
    """The margin head registered as ``name``, built with ``kwargs`` (its constructor's)."""
    return MARGINS.build(name, **kwargs)


def list_margins() -> list[str]:
    return MARGINS.names()


def register_objective(cls: type[Objective] | None = None, *, name: str | None = None) -> Callable[..., Any]:
    """Decorator: ``@register_objective(name="triplet")`` (or bare: the class's name)."""
    return OBJECTIVES.register(cls, name=name)


def build_objective(
    name: str, *, embedding_size: int, num_classes: int, sample_rate: float | None = None, **kwargs: Any
) -> Objective:
    """The objective registered as ``name``, built with ``kwargs`` (its constructor's).

    ``sample_rate`` (``TrainConfig.sample_rate``) goes to objectives whose constructor takes a
    ``sample_rate`` keyword (Partial FC's); any other objective refuses a rate below 1 rather
    than ignore it."""
    cls = OBJECTIVES.get(name)
    if sample_rate is not None:
        if "sample_rate" in inspect.signature(cls).parameters:
            kwargs["sample_rate"] = sample_rate
        elif sample_rate != 1.0:
            raise ValueError(
                f"objective {name!r} samples no class centres: sample_rate={sample_rate} has no "
                f"meaning for it (leave sample_rate at 1.0)"
            )
    objective = cls(embedding_size=embedding_size, num_classes=num_classes, **kwargs)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective {name!r} built a {type(objective).__name__}, not an Objective")
    return objective


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


def register_margin(factory: Callable[..., MarginHead], *, name: str) -> Callable[..., MarginHead]:
    """Register a margin head (class or factory) as ``name``, and the objective of the same
    name (the head inside Partial FC, :meth:`MarginObjective.for_head`)."""
    MARGINS.register(factory, name=name)
    OBJECTIVES.register(MarginObjective.for_head(name), name=name)
    return factory


register_margin(Softmax, name="softmax")
register_margin(NormSoftmax, name="norm_softmax")
register_margin(arcface, name="arcface")
register_margin(cosface, name="cosface")
register_margin(sphereface, name="sphereface")
register_margin(combined, name="combined")
register_margin(CurricularFace, name="curricularface")
register_margin(MagFace, name="magface")
register_margin(AdaFace, name="adaface")
OBJECTIVES.register(F2C, name="f2c")
OBJECTIVES.register(DCQ, name="dcq")
OBJECTIVES.register(PFEMLS, name="pfe_mls")

# objectives of later issues register themselves on import (they use register_objective above)
from . import aofd, distill, topofr, transface, triplet  # noqa: E402, F401

__all__ = [
    "MARGINS",
    "OBJECTIVES",
    "AdaFace",
    "Batch",
    "MarginObjective",
    "Objective",
    "ObjectiveOutput",
    "CombinedMargin",
    "CurricularFace",
    "DCQ",
    "F2C",
    "MagFace",
    "MarginHead",
    "NormSoftmax",
    "PartialFC",
    "PFEMLS",
    "Softmax",
    "angular_margin",
    "build_margin",
    "build_objective",
    "list_margins",
    "list_objectives",
    "register_margin",
    "register_objective",
]
