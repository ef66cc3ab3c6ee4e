"""A small name -> factory registry (the timm ``register_model`` pattern), shared by models,
losses and data readers so a notebook parameter such as ``backbone="r18"`` is all a run needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None):
        """Decorator: ``@REGISTRY.register`` or ``@REGISTRY.register(name="r50")``."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            key = name or f.__name__
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._factories[key] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; an unknown name raises ``ValueError`` listing the
        known ones."""
        if name not in self._factories:
            known = ", ".join(sorted(self._factories))
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._factories[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
