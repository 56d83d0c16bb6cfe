"""The shared pick of the "least loaded per weight" strategies: a scan, or a load index."""

from __future__ import annotations

from abc import abstractmethod
from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from mcplb.strategies.base import B, BackendView, RequestFacts, Strategy

# Below this many backends the scan is cheaper than keeping an index up to date.
INDEX_MIN = 16


class LoadIndex:
    """The positions of a routing list's backends grouped by ``load / weight``, lowest
    first, kept up to date by ``moved`` as loads change (as HAProxy's leastconn tree).

    Keys are floats: two equal ratios give the same float (both are the correctly rounded
    value of one rational), and two different ratios of loads and weights under 2**16
    differ by more than a float's step there, so the order is the scan's exact order.
    """

    def __init__(self, keys: list[float | None]) -> None:
        self.key_of = keys  # by list position; None: not eligible (down, weight 0, full)
        self.groups: dict[float, list[int]] = {}
        for position, key in enumerate(keys):
            if key is not None:
                self.groups.setdefault(key, []).append(position)  # ascending already
        self.keys = sorted(self.groups)

    def first(self, start: int) -> int | None:
        """The position of the least loaded backend, ties to the first at or after
        ``start`` (wrapping around), or None when no backend is eligible."""
        if not self.keys:
            return None
        group = self.groups[self.keys[0]]
        index = bisect_left(group, start)
        return group[index] if index < len(group) else group[0]

    def moved(self, position: int, key: float | None) -> None:
        old = self.key_of[position]
        if old == key:
            return
        self.key_of[position] = key
        if old is not None:
            group = self.groups[old]
            del group[bisect_left(group, position)]
            if not group:
                del self.groups[old]
                del self.keys[bisect_left(self.keys, old)]
        if key is not None:
            joined = self.groups.get(key)
            if joined is None:
                self.groups[key] = [position]
                insort(self.keys, key)
            else:
                insort(joined, position)


@mypyc_attr(allow_interpreted_subclasses=True)
class LeastLoaded(Strategy):
    """Picks the available backend with the lowest ``load / weight``; ties go round-robin.

    The pick starts just after the previous one, so with equal loads consecutive picks
    cycle through the backends instead of always landing on the first in list order.
    Weight 0 gets no traffic.

    A routing list of at least INDEX_MIN backends passed twice in a row is indexed by
    load (``LoadIndex``): a pick is then O(log n) instead of a scan, and the proxy's
    ``load_changed`` notices keep the index exact. Any other list is scanned.
    """

    uses_request: ClassVar[bool] = False
    tracks_load: ClassVar[bool] = True
    abstract_methods: ClassVar[tuple[str, ...]] = ("load",)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._start = 0  # list position where the next scan starts
        self._seen: Sequence[Any] | None = None  # the list of the previous pick
        self._indexed: Sequence[Any] | None = None  # the list the index describes
        self._index: LoadIndex | None = None
        self._position: dict[int, int] = {}  # id(backend) -> its position in _indexed

    @abstractmethod
    def load(self, backend: BackendView) -> int | None:
        """The backend's load, or None when it must not take more."""
        raise NotImplementedError(f"{type(self).__name__} does not implement load()")

    def key(self, backend: BackendView) -> float | None:
        weight = backend.weight
        if weight <= 0 or not backend.available:
            return None
        load = self.load(backend)
        return None if load is None else load / weight

    def load_changed(self, backend: BackendView) -> None:
        if self._index is not None:
            position = self._position.get(id(backend))
            if position is not None:
                self._index.moved(position, self.key(backend))

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        if backends is not self._indexed and not self._indexes(backends):
            self._seen = backends
            return self._scan(backends)
        assert self._index is not None
        count = len(backends)
        position = self._index.first(self._start % count if count else 0)
        if position is None:
            return None
        best = backends[position]
        if count != len(self._position) or self.key(best) != self._index.key_of[position]:
            # The list was changed in place, or a load without a notice: scan instead.
            self._drop()
            return self._scan(backends)
        self._start = position + 1
        return best

    def _indexes(self, backends: Sequence[B]) -> bool:
        """Index ``backends`` if it is worth it: long enough, and passed twice in a row (the
        routing list; a retry's list is a new object each time)."""
        return backends is self._seen and len(backends) >= INDEX_MIN and self._build(backends)

    def _build(self, backends: Sequence[B]) -> bool:
        position = {id(backend): index for index, backend in enumerate(backends)}
        if len(position) != len(backends):
            return False  # the same backend twice: positions would be ambiguous
        self._index = LoadIndex([self.key(backend) for backend in backends])
        self._position = position
        self._indexed = backends
        return True

    def _drop(self) -> None:
        self._index, self._indexed, self._seen, self._position = None, None, None, {}

    def _scan(self, backends: Sequence[B]) -> B | None:
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
