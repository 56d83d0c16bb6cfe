"""Power of two choices: the less loaded of two backends drawn at random."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mcplb.strategies._options import seeded_rng
from mcplb.strategies.base import B, RequestFacts, Strategy
from mcplb.strategies.random_choice import eligible_weight, weighted_draw


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
        total = eligible_weight(backends)
        if total == 0:
            return None
        first = weighted_draw(backends, total, None, self._random)
        assert first is not None  # total > 0, so something was drawn
        first_weight = first.weight
        if first_weight == total:
            return first  # the only candidate
        second = weighted_draw(backends, total - first_weight, first, self._random)
        if second is None:
            return first  # the same object listed twice: nothing distinct to compare
        second_weight = second.weight
        # Is second's active/weight strictly below first's? In integers: weights are > 0.
        first_active = first.in_flight - first.streams
        second_active = second.in_flight - second.streams
        if second_active * first_weight < first_active * second_weight:
            return second
        return first
