"""Power of two choices: the less loaded of two backends drawn at random."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from mcplb.strategies._options import seeded_rng
from mcplb.strategies.base import B, RequestFacts, Strategy
from mcplb.strategies.random_choice import (
    WeightTable,
    WeightTables,
    eligible_weight,
    weighted_draw,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class PowerOfTwo(Strategy):
    """Draws two distinct available backends, weighted by weight, and takes the one with
    fewer active requests per unit of weight; on a tie, the first drawn.

    This is Envoy's default least-request balancer. Active means ``in_flight -
    streams``, as in least_connections: idle event streams do not count as load. With
    one available backend it is returned. Option ``seed`` (int) makes picks reproducible.
    A list passed again (see ``Strategy.pick``) is drawn from by bisecting its
    cumulative weights, with the same picks as the scan.
    """

    name: ClassVar[str] = "power_of_two"
    uses_request: ClassVar[bool] = False

    # seed: an int or None, checked by seeded_rng (typed object: options come from the
    # config as they are, and the compiled build would refuse a str with a bare TypeError).
    def __init__(self, *, seed: object = None, **options: Any) -> None:
        super().__init__(**options)
        self._random = seeded_rng(seed).random
        self._tables = WeightTables()

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        table: WeightTable[B] | None = self._tables.get(backends)
        if table is not None:
            first = table.draw(self._random())
            if table.holds(first):
                first_weight = table.weights[first]
                if first_weight == table.total:
                    return table.members[first]  # the only candidate
                second = table.draw_other(self._random(), first)
                if table.holds(second):
                    return _less_loaded(table.members[first], first_weight, table.members[second])
            self._tables.drop()  # changed in place: the scan below sees it as it is
        total = eligible_weight(backends)
        if total == 0:
            return None
        drawn = weighted_draw(backends, total, None, self._random)
        assert drawn is not None  # total > 0, so something was drawn
        drawn_weight = drawn.weight
        if drawn_weight == total:
            return drawn  # the only candidate
        other = weighted_draw(backends, total - drawn_weight, drawn, self._random)
        if other is None:
            return drawn  # the same object listed twice: nothing distinct to compare
        return _less_loaded(drawn, drawn_weight, other)


def _less_loaded(first: B, first_weight: int, second: B) -> B:
    """``second`` if its active/weight is strictly below ``first``'s, else ``first``."""
    # In integers: weights are > 0.
    first_active = first.in_flight - first.streams
    second_active = second.in_flight - second.streams
    if second_active * first_weight < first_active * second.weight:
        return second
    return first
