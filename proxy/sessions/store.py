"""Where MCP session bindings (session id -> backend name) live.

The store interface is async so that shared stores (Redis) fit behind it; what a store
holds in this process it answers at once through ``known``, so that the request that
names a known session (nearly every MCP request) is routed without a task.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable


class SessionStore(ABC):
    """Maps MCP session ids to the name of the backend that minted them."""

    @abstractmethod
    async def get(self, session_id: str) -> str | None:
        """The bound backend's name, refreshing the binding's idle timer; None if unknown."""

    def known(self, session_id: str) -> str | None:
        """The bound backend's name if this process holds the binding (refreshed as by
        ``get``); None if it does not: then ``get`` must be awaited for the answer."""
        return None

    @abstractmethod
    async def bind(self, session_id: str, backend: str, ttl: float | None = None) -> str | None:
        """Record that ``backend`` owns ``session_id``; return the previous owner, if any.
        ``ttl``: this binding's first lifetime if shorter than the store's (an MCP task's
        ttlMs); a use refreshes it to the store's."""

    @abstractmethod
    async def forget(self, session_id: str) -> str | None:
        """Drop the binding; return the backend it pointed to, if any."""

    async def close(self) -> None:  # noqa: B027 (optional: most stores hold nothing)
        """Release resources held by the store."""

    def expire(self) -> int:
        """Drop bindings idle past the TTL that the store keeps itself; return how many."""
        return 0


class MemorySessionStore(SessionStore):
    """One process's table, with idle expiry and a size cap (least recently used goes)."""

    def __init__(
        self,
        ttl: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
        on_expire: Callable[[str, str], None] | None = None,
    ) -> None:
        self._ttl = ttl
        self._max = max_sessions
        self._clock = clock
        self._on_expire = on_expire
        # Ordered by last use, so expiry and eviction only ever look at the front.
        self._bindings: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Expiry times are cut to the millisecond, so the bindings used in the same
        # millisecond on the same backend share one (backend, expires) tuple: the latest of
        # each backend's is here. Under load, a binding then costs little more than its key
        # and its slot in the table (~80 bytes less each).
        self._entries: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._bindings)

    async def get(self, session_id: str) -> str | None:
        return self.known(session_id)

    def known(self, session_id: str) -> str | None:
        entry = self._bindings.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        backend, expires = entry
        if expires <= now:
            self._drop(session_id)
            return None
        self._bindings[session_id] = self._entry(backend, now)
        self._bindings.move_to_end(session_id)
        return backend

    def peek(self, session_id: str) -> str | None:
        """The backend of a live binding, without counting this as a use."""
        entry = self._bindings.get(session_id)
        return None if entry is None or entry[1] <= self._clock() else entry[0]

    async def bind(self, session_id: str, backend: str, ttl: float | None = None) -> str | None:
        previous = self._bindings.get(session_id)
        now = self._clock()
        if ttl is not None and ttl < self._ttl:
            # Its own expiry: a shorter one than its neighbours' may wait behind them in
            # ``expire`` (bounded by the size cap), but ``known`` never returns it late.
            self._bindings[session_id] = (backend, int((now + ttl) * 1000) / 1000)
        else:
            self._bindings[session_id] = self._entry(backend, now)
        self._bindings.move_to_end(session_id)
        while len(self._bindings) > self._max:
            self._drop(next(iter(self._bindings)))
        return None if previous is None else previous[0]

    async def forget(self, session_id: str) -> str | None:
        entry = self._bindings.pop(session_id, None)
        return None if entry is None else entry[0]

    def expire(self) -> int:
        """Drop every binding idle past the TTL; return how many went. Only the expired
        front of the table is visited (a copy of a million bindings held the event loop
        for most of a second, on every sweep)."""
        now = self._clock()
        bindings = self._bindings
        dropped = 0
        while bindings:
            session_id = next(iter(bindings))
            if bindings[session_id][1] > now:
                break
            self._drop(session_id)
            dropped += 1
        return dropped

    def _entry(self, backend: str, now: float) -> tuple[str, float]:
        # Cut to the millisecond (at most 1 ms early; the clock is positive, so int() is
        # the floor): round(x, 3) goes through a decimal string, four times the cost.
        expires = int((now + self._ttl) * 1000) / 1000
        entry = self._entries.get(backend)
        if entry is None or entry[1] != expires:
            entry = self._entries[backend] = (backend, expires)
        return entry

    def _drop(self, session_id: str) -> None:
        backend, _ = self._bindings.pop(session_id)
        if self._on_expire is not None:
            self._on_expire(session_id, backend)
