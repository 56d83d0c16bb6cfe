"""Test-only strategy plugins, loaded by path ("tests.support.plugin_strategies:Name") or
entry point.

Some of these are deliberately broken so the registry's error messages can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mcplb.strategies.base import B, BackendView, RequestFacts, Strategy
from mcplb.strategies.least_connections import LeastConnections
from mcplb.strategies.least_loaded import LeastLoaded


class FirstAvailable(Strategy):
    """A user strategy: the first available backend with a positive weight, in list order."""

    name: ClassVar[str] = "first_available"

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        for backend in backends:
            if backend.available and backend.weight > 0:
                return backend
        return None


class NeedsOption(Strategy):
    """A strategy with a required keyword option (build() without it is a TypeError)."""

    def __init__(self, *, prefer: str, **options: Any) -> None:
        super().__init__(**options)
        self.prefer = prefer

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        for backend in backends:
            if backend.name == self.prefer and backend.available:
                return backend
        return None


class IdleByName(LeastConnections):
    """Subclasses a built-in (compiled in the compiled build) and overrides the hook its
    pick() calls: backends whose name starts with "idle" always look idle."""

    name: ClassVar[str] = "idle_by_name"

    def load(self, backend: BackendView) -> int | None:
        return 0 if backend.name.startswith("idle") else super().load(backend)


class NotAStrategy:
    """Has a pick() method but does not derive from Strategy."""

    def pick(self, backends: Sequence[Any], request: RequestFacts) -> Any:
        return backends[0] if backends else None


class Unfinished(Strategy):
    """Derives from Strategy but never implements pick(): still abstract."""


class UnfinishedLoad(LeastLoaded):
    """Derives from a built-in base whose own abstract method (load) it never implements."""


def plain_function(backends: Sequence[Any], request: RequestFacts) -> Any:
    """A function, not a class."""
    return backends[0] if backends else None


NOT_A_CLASS = 42
