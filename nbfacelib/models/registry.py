"""The backbone registry: name -> factory, as timm's ``register_model`` / ``create_model``.

A family file adds a model with one decorator::

    @register_backbone
    def vit_s(embedding_size=512, input_size=112, dropout=0.0, **kw):
        return TransFaceViT(depth=12, dim=512, embedding_size=embedding_size, ...)

and ``nbfacelib/models/__init__.py`` imports the file so the name exists as soon as
``nbfacelib.models`` is imported. ``build_backbone`` checks the contract of
``nbfacelib.models`` on whatever the factory returns, so a family that forgets an attribute
fails at build time with its name in the message rather than deep inside the training engine.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from nbfacelib.registry import Registry

BACKBONES = Registry("backbone")

_CONTRACT_ATTRS = ("embedding_size", "input_size", "forward_features")


def register_backbone(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator: ``@register_backbone`` (the function's name) or ``@register_backbone(name="r50")``.

    The factory must accept ``embedding_size``, ``input_size`` and ``dropout`` keywords (with
    defaults) and return an ``nn.Module`` honouring the contract in ``nbfacelib.models``.
    """
    return BACKBONES.register(fn, name=name)


def build_backbone(
    name: str, embedding_size: int | None = None, input_size: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered backbone by name.

    ``embedding_size`` / ``input_size`` left as ``None`` take the factory's own default (512
    and 112 for every face backbone here; a family such as FaceNet-Swin may default to 128 /
    160). Other keywords (``dropout``, ``width``, ``layers``, ...) go to the factory unchanged;
    an unknown keyword raises ``TypeError`` naming it. To count parameters of a large model
    without allocating it, build it under ``with torch.device("meta"):``.
    """
    if embedding_size is not None:
        kwargs["embedding_size"] = embedding_size
    if input_size is not None:
        kwargs["input_size"] = input_size
    model = BACKBONES.build(name, **kwargs)
    missing = [a for a in _CONTRACT_ATTRS if not hasattr(model, a)]
    if not isinstance(model, nn.Module) or missing:
        raise TypeError(
            f"backbone {name!r} breaks the nbfacelib.models contract: missing {missing or 'nn.Module base'}"
        )
    return model


def list_backbones(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell pattern (``"r*"``, ``"*tiny"``)."""
    names = BACKBONES.names()
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]
