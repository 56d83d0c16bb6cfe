"""Least connections: the backend with the fewest active requests per unit of weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from strategies.base import B, RequestFacts, Strategy


class LeastConnections(Strategy):
    """Picks the available backend with the lowest ``active / weight``.

    Active means ``in_flight - streams``: an open event stream (an SSE GET that an MCP
    client keeps open for server notifications) counts in ``in_flight`` but is mostly
    idle, and counting it would make a backend holding many idle streams look busy and
    starve it of real work. Ties go round-robin: the scan starts just after the
    previous pick, so with every backend idle consecutive picks cycle through them
    instead of always landing on the first in list order. Weight 0 gets no traffic.
    """

    name: ClassVar[str] = "least_connections"
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
        best_active = 0
        best_weight = 1
        # One pass over the rotated list, no allocation; a later candidate must be
        # strictly less loaded to win, so ties keep the first one after the last pick.
        for index in range(start, start + count):
            if index >= count:
                index -= count
            backend = backends[index]
            weight = backend.weight
            if weight <= 0 or not backend.available:
                continue
            active = backend.in_flight - backend.streams
            # active/weight < best_active/best_weight, in integers (weights are > 0).
            if best is None or active * best_weight < best_active * weight:
                best = backend
                best_index = index
                best_active = active
                best_weight = weight
        if best is not None:
            self._start = best_index + 1
        return best
