"""The shared scan of the "least loaded per weight" strategies."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from mcplb.strategies.base import B, BackendView, RequestFacts, Strategy


class LeastLoaded(Strategy):
    """Picks the available backend with the lowest ``load / weight``; ties go round-robin.

    The scan starts just after the previous pick, so with equal loads consecutive picks
    cycle through the backends instead of always landing on the first in list order.
    Weight 0 gets no traffic.
    """

    uses_request: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._start = 0  # list position where the next scan starts

    @abstractmethod
    def load(self, backend: BackendView) -> int | None:
        """The backend's load, or None when it must not take more."""

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        count = len(backends)
        if count == 0:
            return None
        start = self._start % count
        best: B | None = None
        best_index = 0
        best_load = 0
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
            load = self.load(backend)
            # load/weight < best_load/best_weight, in integers (weights are > 0).
            if load is not None and (best is None or load * best_weight < best_load * weight):
                best = backend
                best_index = index
                best_load = load
                best_weight = weight
        if best is not None:
            self._start = best_index + 1
        return best
