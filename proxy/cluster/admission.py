"""Who may send a request now: request slots per backend and per worker, stream caps, and
the queue of requests waiting for a slot (sans-IO: the relay owns sockets and timers).

A request holds a slot from the moment it is routed until its exchange ends. Event streams
(a GET asking for text/event-stream, or any response that turns out to be one) live for
minutes, so they are counted apart: they never fill request slots, and over their own cap
they are refused at once rather than queued, since a slot would not free up soon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from mcplb.proxy.config.schema import LimitsConfig

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend


class Waiter(Protocol):
    """A queued request (the relay's ``exchange.SlotWait``, while its exchange waits)."""

    @property
    def waiting_for(self) -> Backend | None:
        """The backend it must go to (a session's), or None for any."""

    def retry_admission(self) -> bool:
        """Try to take a slot now; True if it did (it has then left the queue)."""


class Admission:
    """Slot accounting of one worker; ``hold`` and ``release`` keep ``Backend.in_flight``
    and ``Backend.streams`` too, so the strategies and the limits read the same numbers."""

    def __init__(self, limits: LimitsConfig, backends: Iterable[Backend]) -> None:
        self.requests = 0  # slots held by requests (not streams), all backends
        self.streams = 0
        self.queue: dict[Waiter, None] = {}  # insertion-ordered, O(1) removal
        # Told of every change of a backend's in_flight or streams: the strategy's
        # ``load_changed`` when it indexes backends by load (set by the Cluster).
        self.on_load: Callable[[Backend], None] | None = None
        self.configure(limits, backends)

    def configure(self, limits: LimitsConfig, backends: Iterable[Backend]) -> None:
        """Apply (re)loaded limits; counts and the queue carry over."""
        self.max_in_flight = limits.max_in_flight
        self.max_streams = limits.max_streams
        self.max_queue = limits.max_queue
        self.queue_timeout = limits.queue_timeout
        self.per_backend = any(b.config.max_connections is not None for b in backends)
        self.limited = self.per_backend or self.max_in_flight is not None
        self.wake(None)  # a raised limit frees slots for whoever waits

    # -- checks -----------------------------------------------------------------------

    def backend_full(self, backend: Backend) -> bool:
        limit = backend.config.max_connections
        return limit is not None and backend.in_flight - backend.streams >= limit

    def worker_full(self) -> bool:
        return self.max_in_flight is not None and self.requests >= self.max_in_flight

    def streams_full(self, backend: Backend) -> bool:
        limit = backend.max_streams
        return (limit is not None and backend.streams >= limit) or (
            self.max_streams is not None and self.streams >= self.max_streams
        )

    def can_hold(self, backend: Backend) -> bool:
        return not self.worker_full() and not self.backend_full(backend)

    def admissible(
        self, waiting_for: Backend | None, choose: Callable[[], Backend | None]
    ) -> Backend | None:
        """Where a queued request may take a request slot now: its bound backend (a
        session's) if that has room, else (none bound) the backend ``choose`` picks, if
        the worker has room; None if it must keep waiting."""
        if waiting_for is not None:
            return waiting_for if self.can_hold(waiting_for) else None
        return None if self.worker_full() else choose()

    def any_full(self, backends: Iterable[Backend]) -> bool:
        """Some backend could take the request but for its connection limit."""
        return self.per_backend and any(b.available and self.backend_full(b) for b in backends)

    # -- slots ------------------------------------------------------------------------

    def hold(self, backend: Backend, stream: bool) -> None:
        backend.in_flight += 1
        if stream:
            backend.streams += 1
            self.streams += 1
        else:
            self.requests += 1
        if self.on_load is not None:
            self.on_load(backend)

    def release(self, backend: Backend, stream: bool) -> None:
        backend.in_flight -= 1
        if stream:
            backend.streams -= 1
            self.streams -= 1
        else:
            self.requests -= 1
        if self.on_load is not None:
            self.on_load(backend)
        if not stream and self.queue:
            self.wake(backend)

    def became_stream(self, backend: Backend) -> None:
        """A request's response turned out to be an event stream: it frees its slot."""
        backend.streams += 1
        self.streams += 1
        self.requests -= 1
        if self.on_load is not None:
            self.on_load(backend)
        if self.queue:
            self.wake(backend)

    # -- the queue --------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> bool:
        """Queue ``waiter``; False if the queue is full."""
        if len(self.queue) >= self.max_queue:
            return False
        self.queue[waiter] = None
        return True

    def leave(self, waiter: Waiter) -> None:
        self.queue.pop(waiter, None)

    def wake(self, freed: Backend | None = None) -> None:
        """A slot on ``freed`` (or anywhere, for None) opened: admit the oldest waiter that
        can use it. Waiters bound to other, still full backends are skipped, not blocking."""
        for waiter in list(self.queue):
            if self.worker_full():
                return
            if waiter not in self.queue:
                continue  # admitted or gone meanwhile
            target = waiter.waiting_for
            if target is not None and target is not freed and self.backend_full(target):
                continue
            if waiter.retry_admission() and freed is not None:
                return
