"""Power of two choices: the less loaded of two backends drawn at random."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from strategies._options import seeded_rng
from strategies.base import B, RequestFacts, Strategy


class PowerOfTwo(Strategy):
    """Draws two distinct available backends, weighted by weight, and takes the one with
    fewer active requests per unit of weight; on a tie, the first drawn.

    This is Envoy's default least-request balancer. Active means ``in_flight -
    streams``, as in least_connections: idle event streams do not count as load. With
    one available backend it is returned. Option ``seed`` (int) makes picks reproducible.
    """

    name: ClassVar[str] = "power_of_two"
    uses_request: ClassVar[bool] = False

    def __init__(self, *, seed: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._random = seeded_rng(seed).random

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        total = 0
        for backend in backends:
            if backend.weight > 0 and backend.available:
                total += backend.weight
        if total == 0:
            return None
        first = self._draw(backends, total, None)
        assert first is not None  # total > 0, so something was drawn
        first_weight = first.weight
        if first_weight == total:
            return first  # the only candidate
        second = self._draw(backends, total - first_weight, first)
        if second is None:
            return first  # the same object listed twice: nothing distinct to compare
        second_weight = second.weight
        # Is second's active/weight strictly below first's? In integers: weights are > 0.
        first_active = first.in_flight - first.streams
        second_active = second.in_flight - second.streams
        if second_active * first_weight < first_active * second_weight:
            return second
        return first

    def _draw(self, backends: Sequence[B], total: int, skip: B | None) -> B | None:
        """A weighted draw among the eligible backends other than ``skip``, whose weights
        sum to ``total``; None if there is no such backend."""
        point = self._random() * total
        last: B | None = None
        for backend in backends:
            weight = backend.weight
            if weight > 0 and backend.available and backend is not skip:
                point -= weight
                if point < 0:
                    return backend
                last = backend
        return last  # only reached through float rounding at the very top of the range
