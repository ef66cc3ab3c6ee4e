"""nbfacelib.losses: margin heads chosen by name, and Partial FC.

``build_margin("arcface", s=64, m2=0.5)`` returns a :class:`MarginHead`; ``list_margins()``
lists the names. Wrap a head in :class:`PartialFC` for the classifier and the loss.
"""

from nbfacelib.registry import Registry

from .curricular_face import CurricularFace
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
from .partial_fc import PartialFC

MARGINS = Registry("margin head")
MARGINS.register(Softmax, name="softmax")
MARGINS.register(NormSoftmax, name="norm_softmax")
MARGINS.register(arcface, name="arcface")
MARGINS.register(cosface, name="cosface")
MARGINS.register(sphereface, name="sphereface")
MARGINS.register(combined, name="combined")
MARGINS.register(CurricularFace, name="curricularface")
MARGINS.register(MagFace, name="magface")


def build_margin(name: str, **kwargs) -> MarginHead:
    """The margin head registered as ``name``, built with ``kwargs`` (its constructor's)."""
    return MARGINS.build(name, **kwargs)


def list_margins() -> list[str]:
    return MARGINS.names()


__all__ = [
    "MARGINS",
    "CombinedMargin",
    "CurricularFace",
    "MagFace",
    "MarginHead",
    "NormSoftmax",
    "PartialFC",
    "Softmax",
    "angular_margin",
    "build_margin",
    "list_margins",
]
