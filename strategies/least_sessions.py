"""Least sessions: the backend holding the fewest MCP sessions per unit of weight."""

from __future__ import annotations

from typing import ClassVar

from mypy_extensions import mypyc_attr

from mcplb.strategies.base import BackendView
from mcplb.strategies.least_loaded import LeastLoaded


@mypyc_attr(allow_interpreted_subclasses=True)
class LeastSessions(LeastLoaded):
    """Picks the available backend with the lowest ``sessions / weight`` that has room.

    A backend is full when ``max_sessions`` is set and ``sessions >= max_sessions``;
    full backends are skipped, and when every available backend is full the pick is
    None (the relay answers 503 with Retry-After). Ties go round-robin, as in
    least_connections. Weight 0 gets no traffic.
    """

    name: ClassVar[str] = "least_sessions"

    def load(self, backend: BackendView) -> int | None:
        limit = backend.max_sessions
        if limit is not None and backend.sessions >= limit:
            return None
        return backend.sessions
