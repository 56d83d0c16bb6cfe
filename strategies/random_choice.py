"""Weighted random choice."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, ClassVar, Generic

from mypy_extensions import mypyc_attr

from mcplb.strategies._options import seeded_rng
from mcplb.strategies.base import B, RequestFacts, Strategy


@mypyc_attr(allow_interpreted_subclasses=True)
class RandomChoice(Strategy):
    """Picks an available backend at random, with probability weight / total weight.

    Option ``seed`` (int) makes the sequence of picks reproducible. A list passed
    again (see ``Strategy.pick``) is drawn from by bisecting its cumulative weights.
    """

    name: ClassVar[str] = "random"
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
            index = table.draw(self._random())
            if table.holds(index):
                return table.members[index]
            self._tables.drop()  # changed in place: the scan below sees it as it is
        total = eligible_weight(backends)
        return weighted_draw(backends, total, None, self._random) if total else None


class WeightTable(Generic[B]):
    """The eligible backends of one list object and their cumulative weights: a weighted
    draw by bisection, giving exactly the backend the two-pass scan would."""

    def __init__(self, backends: Sequence[B]) -> None:
        self.backends = backends
        self.length = len(backends)
        self.members = [b for b in backends if b.weight > 0 and b.available]
        self.weights = [b.weight for b in self.members]
        self.total = sum(self.weights)
        # As floats (exact: integers far below 2**53): bisect compares float with float
        # about twice as fast as float with int.
        self.cumulative = [float(c) for c in accumulate(self.weights)]

    def draw(self, random: float) -> int:
        """The member index that ``random`` in [0, 1) selects."""
        # The scan subtracts weights from the point until it is negative: exact for
        # integer weights, so its pick is the first member whose cumulative weight
        # exceeds the point.
        index = bisect_right(self.cumulative, random * self.total)
        return min(index, len(self.members) - 1)  # float rounding at the top, as the scan

    def draw_other(self, random: float, skip: int) -> int:
        """The member index ``random`` selects among the members other than ``skip``."""
        skipped = self.weights[skip]
        point = random * (self.total - skipped)
        count = len(self.members)
        if skip > 0 and point < self.cumulative[skip - 1]:
            return bisect_right(self.cumulative, point, 0, skip)
        # After skip, the first cumulative weight less the skipped one above the point.
        # point + skipped may round up onto a cumulative weight the exact sum is below:
        # the exact comparison (float with int) moves back one then.
        cumulative = self.cumulative
        index = bisect_right(cumulative, point + skipped, skip + 1, count)
        if index > skip + 1 and point < cumulative[index - 1] - skipped:
            index -= 1
        if index < count:
            return index
        return count - 1 if skip != count - 1 else count - 2

    def holds(self, index: int) -> bool:
        """Whether member ``index`` still has the availability and weight of the build."""
        member = self.members[index]
        return member.available and member.weight == self.weights[index]


class WeightTables:
    """The table of the list object that came twice in a row; built on the second pick
    so that one-off lists (a retry's, each a new object) keep the scan."""

    def __init__(self) -> None:
        self._previous: object = None  # held: its id cannot be reused by another list
        self._table: WeightTable[Any] | None = None

    def get(self, backends: Sequence[B]) -> WeightTable[B] | None:
        table = self._table
        # The length: a cheap check against a list grown or shrunk in place.
        if table is not None and table.backends is backends and len(backends) == table.length:
            return table
        if backends is self._previous and _distinct(backends):
            table = WeightTable(backends)
            # Not kept with nothing to draw: the scan then finds a backend that comes back.
            self._table = table if table.total else None
            return self._table
        self._previous = backends
        return None

    def drop(self) -> None:
        self._table = None


def _distinct(backends: Sequence[B]) -> bool:
    """No object listed twice (the scan's skip-by-identity then has no table form)."""
    return len({id(b) for b in backends}) == len(backends)


def eligible_weight(backends: Sequence[B]) -> int:
    """The summed weight of the backends that may take new work."""
    total = 0
    for backend in backends:
        if backend.weight > 0 and backend.available:
            total += backend.weight
    return total


def weighted_draw(
    backends: Sequence[B], total: int, skip: B | None, random: Callable[[], float]
) -> B | None:
    """A weighted draw among the eligible backends other than ``skip``, whose weights sum
    to ``total``; None if there is no such backend. Two passes over the list rather than
    building a cumulative-weight list per pick."""
    point = random() * total
    last: B | None = None
    for backend in backends:
        weight = backend.weight
        if weight > 0 and backend.available and backend is not skip:
            point -= weight
            if point < 0:
                return backend
            last = backend
    return last  # only reached through float rounding at the very top of the range
