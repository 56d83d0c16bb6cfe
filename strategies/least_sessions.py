"""Least sessions: the backend holding the fewest MCP sessions per unit of weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from strategies.base import B, RequestFacts, Strategy


class LeastSessions(Strategy):
    """Picks the available backend with the lowest ``sessions / weight`` that has room.

    A backend is full when ``max_sessions`` is set and ``sessions >= max_sessions``;
    full backends are skipped, and when every available backend is full the pick is
    None (the relay answers 503 with Retry-After). Ties go round-robin, as in
    least_connections. Weight 0 gets no traffic.
    """

    name: ClassVar[str] = "least_sessions"
    uses_request: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._start = 0  # list position where the next scan starts

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        count = len(backends)
        if count == 0:
            return None
        start = self._start % count
        best: B | None = None
        best_index = 0
        best_sessions = 0
        best_weight = 1
        for index in range(start, start + count):
            if index >= count:
                index -= count
            backend = backends[index]
            weight = backend.weight
            if weight <= 0 or not backend.available:
                continue
            sessions = backend.sessions
            limit = backend.max_sessions
            if limit is not None and sessions >= limit:
                continue
            # sessions/weight < best_sessions/best_weight, in integers (weights are > 0).
            if best is None or sessions * best_weight < best_sessions * weight:
                best = backend
                best_index = index
                best_sessions = sessions
                best_weight = weight
        if best is not None:
            self._start = best_index + 1
        return best
