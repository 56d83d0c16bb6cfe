"""Smooth weighted round-robin, the nginx algorithm."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Generic

from mypy_extensions import mypyc_attr

from mcplb.strategies.base import B, RequestFacts, Strategy

# Longest schedule kept (picks in one period, weights divided by their gcd): a period
# this long takes a scan per pick to record; longer ones (odd slow-start weights over
# many backends) are never recorded and every pick scans.
MAX_PERIOD = 1 << 16


@mypyc_attr(allow_interpreted_subclasses=True)
class RoundRobin(Strategy):
    """Interleaves backends in proportion to their weights, without bursts.

    Each pick adds every candidate's weight to its running score, takes the
    highest score and subtracts the total weight from it (nginx's
    ngx_http_upstream_get_peer). Weight 0 gets no traffic.

    That scan is O(n), but its sequence is periodic: with the weights divided by their
    gcd summing to P, the scores return to where they were after P picks (once past a
    transient when they start from another list's state). So when the same list object
    is passed again (see ``Strategy.pick``), the scan's picks are recorded for one
    period; once the scores are back at the period's start, later picks replay the
    record in O(1). The scores are written back when another list comes.
    """

    name: ClassVar[str] = "round_robin"
    uses_request: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._scores: dict[str, int] = {}
        self._previous: object = None  # the list of the previous pick (held: its id stays)
        self._unindexed: object = None  # a list seen to have no schedule worth keeping
        self._schedule: _Schedule[Any] | None = None

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        schedule = self._schedule
        if schedule is not None:
            # The length: a cheap check against a list grown or shrunk in place.
            if (
                schedule.backends is backends
                and schedule.cycling
                and len(backends) == schedule.length
            ):
                found: B | None = schedule.next()
                if found is not None:
                    return found
            if schedule.backends is not backends or schedule.cycling:
                # Another list, or a picked backend changed in place: back to the scan.
                schedule.store(self._scores)
                self._schedule = schedule = None
        if schedule is None and backends is self._previous and backends is not self._unindexed:
            self._schedule = schedule = _Schedule.start(backends, self._scores)
            if schedule is None:
                self._unindexed = backends
        self._previous = backends
        best = self._scan(backends)
        if schedule is not None and not schedule.record(best, self._scores):
            self._schedule = None
        return best

    def _scan(self, backends: Sequence[B]) -> B | None:
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


class _Schedule(Generic[B]):
    """One period of round-robin picks over one list object: recorded from the scan,
    then replayed."""

    def __init__(self, backends: Sequence[B], weights: dict[str, int], period: int) -> None:
        self.backends = backends
        self.length = len(backends)
        self.weights = weights  # name -> weight of the eligible backends
        self.total = sum(weights.values())
        self.period = period
        self.origin: dict[str, int] = {}  # the scores when the recorded period began
        self.picks: list[B] = []
        self.picked_weights: list[int] = []
        self.cycling = False  # recorded a whole period that ends where it began
        self.phase = 0  # while cycling: the next pick's place in the period

    @classmethod
    def start(cls, backends: Sequence[B], scores: dict[str, int]) -> _Schedule[B] | None:
        """A schedule to record for ``backends``, or None if there is none to keep."""
        weights = _eligible_weights(backends)
        if weights is None or not weights:
            return None
        period = sum(weights.values()) // math.gcd(*weights.values())
        if period > MAX_PERIOD:
            return None
        schedule = cls(backends, weights, period)
        schedule.origin = {name: scores.get(name, 0) for name in weights}
        return schedule

    def next(self) -> B | None:
        """The next recorded pick, or None if it no longer has its recorded weight or
        availability (the list changed in place)."""
        phase = self.phase
        backend = self.picks[phase]
        if not backend.available or backend.weight != self.picked_weights[phase]:
            return None
        phase += 1
        self.phase = phase if phase < self.period else 0
        return backend

    def record(self, best: B | None, scores: dict[str, int]) -> bool:
        """Add the scan's pick; False if the schedule no longer fits the list."""
        if best is None:
            return False
        self.picks.append(best)
        self.picked_weights.append(best.weight)
        if len(self.picks) < self.period:
            return True
        if _eligible_weights(self.backends) != self.weights:
            return False
        if all(scores[name] == score for name, score in self.origin.items()):
            self.cycling = True
            self.phase = 0
        else:  # still in the transient from the earlier scores: record the next period
            self.origin = {name: scores[name] for name in self.weights}
            self.picks.clear()
            self.picked_weights.clear()
        return True

    def store(self, scores: dict[str, int]) -> None:
        """Write the scores the scan would have now into ``scores`` (while recording
        the scan keeps them current)."""
        if not self.cycling:
            return
        phase = self.phase
        counts = Counter(backend.name for backend in self.picks[:phase])
        for name, weight in self.weights.items():
            scores[name] = self.origin[name] + phase * weight - self.total * counts[name]


def _eligible_weights(backends: Sequence[B]) -> dict[str, int] | None:
    """Name -> weight of the backends that take new work; None if a name repeats (the
    scan then shares one score between them: nothing to replay)."""
    weights: dict[str, int] = {}
    for backend in backends:
        weight = backend.weight
        if weight > 0 and backend.available:
            if backend.name in weights:
                return None
            weights[backend.name] = weight
    return weights
