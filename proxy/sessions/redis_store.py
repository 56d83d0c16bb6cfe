"""A session table shared by several proxy replicas/workers: Redis, with a local cache in front.

Each binding is the Redis string ``prefix + session_id`` -> backend name, with a Redis TTL of
``ttl`` seconds that use refreshes. Every replica keeps a local ``MemorySessionStore`` in front
of it, so a request for a session this replica already knows never waits on Redis:

- ``bind`` writes locally and to Redis (``SET key backend PX ttl GET``, which also tells the
  previous owner).
- ``get`` answers from the local table when it can, and then refreshes the Redis TTL in the
  background (at most once per ``ttl / 10`` per session, batched in a pipeline). That refresh
  also reconciles: a binding another replica changed or forgot is adopted locally, and one
  missing from Redis (Redis restarted, or bound during an outage) is written back
  (``SET NX``). A local miss asks Redis (``GETEX``, which refreshes the TTL) and caches the
  answer.
- ``forget`` drops the local binding and replaces the Redis value with an empty string (a
  tombstone with the same TTL; ``SET key "" XX GET``, so an unknown id creates no key) rather
  than deleting it, so that other replicas' caches learn on their next refresh that the
  session is gone, instead of writing it back as "missing". Readers treat the tombstone as no
  binding.

Redis is never allowed to fail or stall a request: every command is bounded by ``timeout``
(socket timeouts and an ``asyncio.wait_for``), and any Redis error is counted in ``errors``,
logged (rate-limited) on ``mcplb.sessions``, and answered from the local table. After a failure
the store stops sending requests' commands to Redis; a background task pings it after a
backoff (0.5 s doubling to 5 s; ``proxy/redisconn/health.py``) and, once it answers, writes
back the local changes made meanwhile (binds and forgets; last writer wins) before requests
use Redis again. With Sentinel (``redis.sentinels``) that probe reaches the master the
sentinels name then (``proxy/redisconn/link.py``): a failover is an outage like any other,
from the old master's death until the sentinels promote the replica.

Needs Redis >= 6.2 (GETEX, SET ... GET).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mcplb.proxy.config.schema import RedisConfig
from mcplb.proxy.redisconn.health import BACKOFF_MAX, RedisHealth
from mcplb.proxy.redisconn.link import RedisLink
from mcplb.proxy.sessions.outage_share import OutageShare
from mcplb.proxy.sessions.store import MemorySessionStore, SessionStore

log = logging.getLogger("mcplb.sessions")

T = TypeVar("T")

TOMBSTONE = ""  # the Redis value of a forgotten session (backend names are never empty)
BATCH = 256  # background refreshes/write-backs per pipeline
MASTER_CHECK = 1.0  # with Sentinel: seconds between asking the sentinels for the master


class _Failed:
    """What a Redis command that failed (and was counted and logged) returns."""


_FAILED = _Failed()


class RedisSessionStore(SessionStore):
    """Session bindings in Redis, shared by replicas, with a per-process cache in front."""

    def __init__(
        self,
        redis: RedisConfig,
        *,
        ttl: float,
        max_local: int,
        clock: Callable[[], float] = time.monotonic,
        on_expire: Callable[[str, str], None] | None = None,
        outage_share: OutageShare | None = None,
    ) -> None:
        """``clock`` drives the local table's idle expiry and the refresh pacing; ``on_expire``
        (session id, backend) is called when a binding made by this instance's ``bind`` leaves
        the local table other than through ``bind``/``forget`` (idle expiry, size cap, or
        another replica forgetting or re-binding it); ``outage_share`` hands bindings to the other
        workers of this host while Redis is down."""
        self._ttl_ms = max(1, math.ceil(ttl * 1000))
        self._timeout = redis.timeout
        self._prefix = redis.prefix
        self._clock = clock
        self._on_expire = on_expire
        self._refresh_every = ttl / 10
        self._max_dirty = max_local
        self._outage_share = outage_share
        self._shared: set[str] = set()  # shared during the current outage
        self._local = MemorySessionStore(ttl, max_local, clock, on_expire=self._local_dropped)
        self._link = RedisLink(redis, decode_responses=True)
        self._redis = self._link.client
        # Down: requests skip Redis; the background task probes it.
        self._health = RedisHealth(
            log,
            "Redis session store",
            "answering from the local table",
            clock,
            backoff_max=self._link.backoff_max,
        )
        self._master_check_at = 0.0  # time.monotonic() of the next check (Sentinel only)
        self._master: tuple[str, int] | None = None  # the master at the last check
        self._synced: dict[str, float] = {}  # session id -> clock time of its last TTL refresh
        self._pending: dict[str, str] = {}  # local hits due for a Redis refresh -> local backend
        self._dirty: dict[str, str | None] = {}  # local changes Redis missed (None: forgotten)
        self._bound_here: set[str] = set()  # locally known bindings made by our bind()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def healthy(self) -> bool:
        """Whether requests currently use Redis (False while backing off after a failure)."""
        return self._health.healthy

    @property
    def errors(self) -> int:
        """Redis failures seen (connect, timeout, protocol), for metrics."""
        return self._health.errors

    def __len__(self) -> int:
        """Bindings in the local table."""
        return len(self._local)

    # -- SessionStore ---------------------------------------------------------------------

    async def get(self, session_id: str) -> str | None:
        backend = self.known(session_id)
        if backend is not None:
            return backend
        if self._usable():
            key = self._prefix + session_id
            value = await self._command(self._redis.getex(key, px=self._ttl_ms))
            if not isinstance(value, _Failed):
                return await self._cache(session_id, value) if value else None
        # Redis is unreachable: another worker of this host may have shared the binding.
        shared = None if self._outage_share is None else self._outage_share.get(session_id)
        if shared is not None:
            await self._local.bind(session_id, shared)
            self._shared.add(session_id)
        return shared

    def known(self, session_id: str) -> str | None:
        """A binding in the local table (its Redis TTL refreshed in the background)."""
        backend = self._local.known(session_id)
        if backend is not None:
            self._schedule_refresh(session_id, backend)
            if not self._health.healthy:
                self._share(session_id, backend)
        return backend

    async def _cache(self, session_id: str, value: str | bytes) -> str:
        """Keep a binding read from Redis in the local table."""
        backend = await self._local.get(session_id)
        if backend is not None:  # bound here while we asked: that is newer
            return backend
        await self._local.bind(session_id, _text(value))
        self._synced[session_id] = self._clock()
        return _text(value)

    async def bind(self, session_id: str, backend: str, ttl: float | None = None) -> str | None:
        previous = await self._local.bind(session_id, backend, ttl)
        ttl_ms = self._ttl_ms if ttl is None else max(1, min(self._ttl_ms, math.ceil(ttl * 1000)))
        self._bound_here.add(session_id)
        self._pending.pop(session_id, None)
        if self._usable():
            self._synced[session_id] = self._clock()
            key = self._prefix + session_id
            old = await self._command(self._redis.set(key, backend, px=ttl_ms, get=True))
            if not isinstance(old, _Failed):
                self._dirty.pop(session_id, None)
                return (_text(old) if isinstance(old, str | bytes) else None) or previous
        self._mark_dirty(session_id, backend)
        self._shared.discard(session_id)
        self._share(session_id, backend)
        return previous

    async def forget(self, session_id: str) -> str | None:
        previous = await self._local.forget(session_id)
        self._bound_here.discard(session_id)
        self._synced.pop(session_id, None)
        self._pending.pop(session_id, None)
        if self._usable():
            key = self._prefix + session_id
            old = await self._command(
                self._redis.set(key, TOMBSTONE, px=self._ttl_ms, get=True, xx=True)
            )
            if not isinstance(old, _Failed):
                self._dirty.pop(session_id, None)
                return (_text(old) if isinstance(old, str | bytes) else None) or previous
        self._mark_dirty(session_id, None)
        if self._outage_share is not None:
            self._outage_share.drop(session_id)
        return previous

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        try:
            await asyncio.wait_for(self._link.close(), self._timeout)
        except Exception as error:  # closing must not fail shutdown either
            log.debug("closing the Redis client failed: %r", error)

    def expire(self) -> int:
        """Drop local bindings idle past the TTL (Redis expires its own); return how many."""
        return self._local.expire()

    # -- Redis calls ----------------------------------------------------------------------

    def _usable(self) -> bool:
        """Whether a request may send a command to Redis now (and start the background task)."""
        if self._closed:
            return False
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._sync_loop(), name="mcplb-redis-sessions"
            )
        return self._health.healthy

    async def _command(self, command: Awaitable[T]) -> T | _Failed:
        """Run one Redis command (or pipeline), bounded by the timeout; count and log failures."""
        try:
            return await asyncio.wait_for(command, self._timeout)
        except Exception as error:
            if self._health.healthy:
                self._wake.set()  # the background task probes after the backoff
            self._health.failed(error)
            return _FAILED

    # -- local bookkeeping ----------------------------------------------------------------

    def _share(self, session_id: str, backend: str) -> None:
        """Hand a binding to the other workers of this host (once per outage)."""
        if self._outage_share is not None and session_id not in self._shared:
            self._shared.add(session_id)
            self._outage_share.put(session_id, backend)

    def _schedule_refresh(self, session_id: str, backend: str) -> None:
        now = self._clock()
        last = self._synced.get(session_id)
        if last is not None and now - last < self._refresh_every:
            return
        self._synced[session_id] = now
        self._pending[session_id] = backend
        if not self._closed:
            self._usable()  # starts the background task if needed
            self._wake.set()

    def _mark_dirty(self, session_id: str, backend: str | None) -> None:
        self._dirty.pop(session_id, None)
        self._dirty[session_id] = backend
        while len(self._dirty) > self._max_dirty:
            del self._dirty[next(iter(self._dirty))]
        self._wake.set()

    def _local_dropped(self, session_id: str, backend: str) -> None:
        """The local table let a binding go (idle expiry or size cap)."""
        self._synced.pop(session_id, None)
        self._pending.pop(session_id, None)
        if session_id in self._dirty and self._dirty[session_id] is not None:
            del self._dirty[session_id]  # an idle or evicted binding is not worth writing back
        self._released(session_id, backend)

    def _released(self, session_id: str, backend: str) -> None:
        if session_id in self._bound_here:
            self._bound_here.discard(session_id)
            if self._on_expire is not None:
                self._on_expire(session_id, backend)

    async def _adopt(self, session_id: str, expected: str, current: str | None) -> None:
        """Redis says ``current`` (None: forgotten) where we cached ``expected``."""
        if await self._local.get(session_id) != expected:
            return  # changed here meanwhile: ours is newer
        if current is None:
            await self._local.forget(session_id)
            self._synced.pop(session_id, None)
        else:
            await self._local.bind(session_id, current)
        self._released(session_id, expected)

    # -- background: refreshes, write-backs, probing --------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            try:
                if not self._health.healthy:
                    await asyncio.sleep(self._health.wait())
                    if not await self._probe():
                        continue
                if self._link.sentinel is not None and time.monotonic() >= self._master_check_at:
                    self._master_check_at = time.monotonic() + MASTER_CHECK
                    await self._check_master()
                if not self._dirty and not self._pending:
                    self._wake.clear()
                    await self._idle()
                    continue
                await self._sync_batch()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop refreshes for good
                log.exception("Redis session store: background sync failed")
                await asyncio.sleep(BACKOFF_MAX)

    async def _idle(self) -> None:
        """Until there is work (with Sentinel: at most until the next master check)."""
        if self._link.sentinel is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), MASTER_CHECK)

    async def _check_master(self) -> None:
        """After a failover the old master may have lost some of our writes (taken before
        its demotion, or not yet replicated at its death): when the sentinels name another
        master than at the last check, check every binding made here, as a refresh does
        (one missing from Redis is written back, one changed is adopted)."""
        master = await self._link.master(self._timeout)
        if master is None:
            return
        previous, self._master = self._master, master
        if previous is None or previous == master:
            return
        for session_id in self._bound_here:
            backend = self._local.peek(session_id)
            if backend is not None:
                self._pending[session_id] = backend
        log.warning(
            "Redis session store: the sentinels name a new master; checking the %d bindings "
            "made here",
            len(self._pending),
        )

    async def _probe(self) -> bool:
        """Whether Redis answers again (then requests use it again)."""
        # Connections from before the failure are likely dead (a restarted Redis, a
        # failed-over master): each would fail once and send requests local again.
        await self._link.drop_connections()
        try:
            await asyncio.wait_for(self._redis.ping(), self._timeout)
        except Exception as error:
            self._health.failed(error, probe=True)
            return False
        self._shared.clear()  # the next outage shares afresh
        self._health.recovered(f"writing back {len(self._dirty)} local changes")
        if self._link.sentinel is not None:
            await self._check_master()  # the outage may have been a failover
        return True

    async def _sync_batch(self) -> None:
        writes = _take(self._dirty, BATCH)
        refreshes = _take(self._pending, BATCH)
        pipe = self._redis.pipeline(transaction=False)
        for session_id, backend in writes:
            if backend is None:  # tombstones only over a binding (XX): no key for unknown ids
                pipe.set(self._prefix + session_id, TOMBSTONE, px=self._ttl_ms, xx=True)
            else:
                pipe.set(self._prefix + session_id, backend, px=self._ttl_ms)
        for session_id, _ in refreshes:
            pipe.getex(self._prefix + session_id, px=self._ttl_ms)
        results = await self._command(pipe.execute())
        if isinstance(results, _Failed):
            for session_id, backend in writes:  # unless changed again meanwhile
                self._dirty.setdefault(session_id, backend)
            for session_id, local in refreshes:
                self._pending.setdefault(session_id, local)
            return
        missing: list[tuple[str, str]] = []
        for (session_id, local), value in zip(refreshes, results[len(writes) :], strict=True):
            if value is None:  # Redis lost it (restart, eviction) or never had it (outage)
                missing.append((session_id, local))
            elif _text(value) != local:
                await self._adopt(session_id, local, _text(value) or None)
        if missing:
            pipe = self._redis.pipeline(transaction=False)
            for session_id, local in missing:
                pipe.set(self._prefix + session_id, local, px=self._ttl_ms, nx=True)
            await self._command(pipe.execute())  # if lost, the next use refreshes again


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _take(table: dict[str, T], count: int) -> list[tuple[str, T]]:
    """Remove and return up to ``count`` of the oldest entries."""
    keys = list(itertools.islice(table, count))
    return [(key, table.pop(key)) for key in keys]
