"""Smooth weighted round-robin, the nginx algorithm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mcplb.strategies.base import B, RequestFacts, Strategy


class RoundRobin(Strategy):
    """Interleaves backends in proportion to their weights, without bursts.

    Each pick adds every candidate's weight to its running score, takes the
    highest score and subtracts the total weight from it (nginx's
    ngx_http_upstream_get_peer). Weight 0 gets no traffic.
    """

    name: ClassVar[str] = "round_robin"
    uses_request: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._scores: dict[str, int] = {}

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        scores = self._scores
        best: B | None = None
        best_score = 0
        total = 0
        for backend in backends:
            weight = backend.weight
            if weight <= 0 or not backend.available:
                continue
            score = scores.get(backend.name, 0) + weight
            scores[backend.name] = score
            total += weight
            if best is None or score > best_score:
                best = backend
                best_score = score
        if best is not None:
            scores[best.name] = best_score - total
        return best
