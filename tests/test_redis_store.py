"""Tests for the Redis session store (proxy/sessions/redis_store.py), against a real redis-server.

Two store instances on one Redis stand for two proxy replicas. Redis outages are real: the
server is SIGKILLed and restarted on the same port, and a hung Redis is a TCP server that
reads and never answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from mcplb.proxy.config.schema import RedisConfig
from mcplb.proxy.sessions.outage_share import OutageShare
from mcplb.proxy.sessions.redis_store import RedisSessionStore
from tests.conftest import FakeClock
from tests.support.eventually import eventually
from tests.support.redis_server import (
    RedisServer,
    RedisServerMissing,
    find_redis_server,
    start_silent_server,
)

T = TypeVar("T")

PREFIX = "mcplb-test:"
TIMEOUT = 0.3  # the stores' Redis timeout in these tests
SLACK = 0.25  # what a call may take beyond TIMEOUT (a loaded CI machine)


StoreFactory = Callable[..., RedisSessionStore]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """make_store(url, ttl=60, timeout=TIMEOUT, max_local=1000, clock=..., on_expire=...)."""
    stores: list[RedisSessionStore] = []

    def factory(url: str, **options: Any) -> RedisSessionStore:
        options.setdefault("ttl", 60.0)
        timeout = options.pop("timeout", TIMEOUT)
        prefix = options.pop("prefix", PREFIX)
        options.setdefault("max_local", 1000)
        store = RedisSessionStore(RedisConfig(url, timeout, prefix), **options)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = await call
    return result, time.monotonic() - start


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "mcplb.sessions" and r.levelno >= logging.WARNING
    ]


# -- shared table ----------------------------------------------------------------------------


async def test_two_replicas_share_bindings(
    redis_server: RedisServer, raw: aioredis.Redis, make_store: StoreFactory
) -> None:
    one = make_store(redis_server.url)
    two = make_store(redis_server.url)

    assert await one.bind("s1", "alpha") is None
    assert await raw.get(PREFIX + "s1") == "alpha"
    assert 0 < await raw.pttl(PREFIX + "s1") <= 60_000
    assert await redis_server.exists(PREFIX + "s1")  # the helper's own client-free look
    assert not await redis_server.exists(PREFIX + "unknown")
    assert await redis_server.command("GET", PREFIX + "s1") == "alpha"
    assert await redis_server.command("GET", PREFIX + "unknown") is None
    assert await two.get("s1") == "alpha"  # made by one, seen by two
    assert await two.get("unknown") is None

    # two re-binds it: the previous owner comes back, from Redis.
    three = make_store(redis_server.url)
    assert await two.bind("s1", "beta") == "alpha"
    assert await three.get("s1") == "beta"

    # Forget on two: a replica without a cached copy sees it gone at once.
    assert await two.forget("s1") == "beta"
    four = make_store(redis_server.url)
    assert await four.get("s1") is None
    assert await two.get("s1") is None
    assert await four.forget("s1") is None
    assert await raw.get(PREFIX + "s1") == ""  # a tombstone, expiring like a binding
    assert 0 < await raw.pttl(PREFIX + "s1") <= 60_000
    assert await four.forget("never-bound") is None
    assert await raw.exists(PREFIX + "never-bound") == 0  # no tombstone for unknown ids


async def test_known_answers_from_the_local_table_only(
    redis_server: RedisServer, make_store: StoreFactory
) -> None:
    one = make_store(redis_server.url)
    two = make_store(redis_server.url)
    await one.bind("s1", "alpha")
    assert one.known("s1") == "alpha"
    assert two.known("s1") is None  # in Redis only, for two: get must ask it
    assert await two.get("s1") == "alpha"
    assert two.known("s1") == "alpha"  # cached by that answer
    assert await two.forget("s1") == "alpha"
    assert two.known("s1") is None


async def test_previous_owner(redis_server: RedisServer, make_store: StoreFactory) -> None:
    one = make_store(redis_server.url)
    two = make_store(redis_server.url)
    assert await one.bind("s", "alpha") is None
    assert await one.bind("s", "alpha") == "alpha"
    assert await two.bind("s", "beta") == "alpha"  # two never saw it: Redis knows
    assert await one.forget("s") == "beta"
    assert await one.forget("s") is None
    three = make_store(redis_server.url)
    assert await three.bind("s", "gamma") is None  # a forgotten session has no owner...
    assert await three.forget("s") == "gamma"
    # ...except that when Redis has none, a replica's own cached binding is the answer
    # (two bound "s" itself and has not refreshed since one forgot it).
    assert await two.bind("s", "delta") == "beta"


async def test_forget_and_rebind_reach_cached_replicas(
    redis_server: RedisServer, make_store: StoreFactory
) -> None:
    """A replica that cached a binding learns of a forget/re-bind on its next refresh."""
    clock = FakeClock()
    one = make_store(redis_server.url, clock=clock)
    two = make_store(redis_server.url, clock=clock)
    await one.bind("gone", "alpha")
    await one.bind("moved", "alpha")
    assert await two.get("gone") == "alpha"
    assert await two.get("moved") == "alpha"

    await one.forget("gone")
    await one.bind("moved", "beta")
    # Within ttl/10 of its last look, two answers from its cache (by design).
    assert await two.get("gone") == "alpha"
    clock.advance(7)  # past ttl/10 = 6 s: the next use refreshes in the background

    async def two_sees_changes() -> bool:
        return await two.get("gone") is None and await two.get("moved") == "beta"

    await eventually(two_sees_changes, within=3.0, what="two_sees_changes")


async def test_ttl_refreshed_on_use(
    redis_server: RedisServer, raw: aioredis.Redis, make_store: StoreFactory
) -> None:
    one = make_store(redis_server.url, ttl=1.0)
    await one.bind("used", "alpha")
    await one.bind("idle", "alpha")
    assert 0 < await raw.pttl(PREFIX + "idle") <= 1000

    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        assert await one.get("used") == "alpha"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)  # let the last background refresh land

    assert await raw.exists(PREFIX + "used") == 1
    assert await raw.pttl(PREFIX + "used") > 700
    assert await raw.exists(PREFIX + "idle") == 0
    two = make_store(redis_server.url, ttl=1.0)
    assert await two.get("used") == "alpha"
    assert await two.get("idle") is None


async def test_local_expiry_calls_on_expire_for_own_bindings(
    redis_server: RedisServer, make_store: StoreFactory
) -> None:
    clock = FakeClock()
    expired: list[tuple[str, str]] = []
    one = make_store(redis_server.url, clock=clock, on_expire=lambda s, b: expired.append((s, b)))
    two = make_store(redis_server.url)
    await one.bind("mine", "alpha")
    await two.bind("theirs", "beta")
    assert await one.get("theirs") == "beta"  # cached here, but not bound here
    clock.advance(61)
    assert one.expire() == 2
    assert expired == [("mine", "alpha")]


# -- Redis down ------------------------------------------------------------------------------


async def test_redis_killed_then_restarted(
    redis_server: RedisServer,
    raw: aioredis.Redis,
    make_store: StoreFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mcplb.sessions")
    clock = FakeClock()
    one = make_store(redis_server.url, clock=clock)
    two = make_store(redis_server.url, clock=clock)
    await one.bind("before", "alpha")
    assert await raw.get(PREFIX + "before") == "alpha"

    await redis_server.kill()
    durations: list[float] = []
    calls = 0
    outage_end = time.monotonic() + 1.0
    while time.monotonic() < outage_end:
        calls += 1
        got, took = await timed(one.get("before"))  # known here: answered locally
        assert got == "alpha"
        durations.append(took)
        previous, took = await timed(one.bind(f"during-{calls}", "beta"))  # new: served locally
        assert previous is None
        durations.append(took)
        got, took = await timed(one.get(f"during-{calls}"))
        assert got == "beta"
        durations.append(took)
        got, took = await timed(one.get("never-bound"))
        assert got is None
        durations.append(took)
        await asyncio.sleep(0.01)
    got, took = await timed(one.forget("during-1"))
    assert got == "beta"
    durations.append(took)

    assert max(durations) < TIMEOUT + SLACK, max(durations)
    assert not one.healthy
    # Failures are counted, but the backoff keeps them far fewer than the calls.
    assert 1 <= one.errors <= 10, one.errors
    assert calls > 20
    warnings = warnings_from(caplog)
    assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]

    errors_at_restart = one.errors
    await redis_server.restart()  # same port, empty (nothing was saved)
    await raw.connection_pool.disconnect()  # the test's own client: drop dead connections

    # The same store recovers by itself and writes back what changed during the outage.
    async def written_back() -> bool:
        return await raw.get(PREFIX + f"during-{calls}") == "beta"

    await eventually(written_back, what="written_back", within=BACKOFF_WAIT)
    assert one.healthy
    assert await raw.exists(PREFIX + "during-1") == 0  # bound and forgotten during it
    assert await two.get(f"during-{calls}") == "beta"  # the other replica sees it
    assert await two.get("during-1") is None

    await one.bind("after", "gamma")  # new binds land in Redis again
    assert await raw.get(PREFIX + "after") == "gamma"

    # "before" died with the old Redis; its next refresh (due after ttl/10) writes it back.
    assert await raw.get(PREFIX + "before") is None
    clock.advance(7)
    assert await one.get("before") == "alpha"

    async def rewritten() -> bool:
        return await raw.get(PREFIX + "before") == "alpha"

    await eventually(rewritten, within=3.0, what="rewritten")
    assert one.errors - errors_at_restart <= 2  # at most a probe that raced the restart


BACKOFF_WAIT = 8.0  # a recovering store probes within the 5 s backoff cap


async def test_paused_redis_then_write_back(
    redis_server: RedisServer, raw: aioredis.Redis, make_store: StoreFactory
) -> None:
    """A real Redis that stops answering for a while (CLIENT PAUSE), keeping its data."""
    clock = FakeClock()
    one = make_store(redis_server.url, clock=clock)
    two = make_store(redis_server.url, clock=clock)
    await one.bind("doomed", "alpha")
    await one.bind("moved", "alpha")
    assert await two.get("doomed") == "alpha"

    await raw.client_pause(1000)
    forgotten, took = await timed(one.forget("doomed"))  # waits out the timeout, then local
    assert forgotten == "alpha"
    assert TIMEOUT - 0.05 < took < TIMEOUT + SLACK, took
    previous, took = await timed(one.bind("moved", "beta"))  # backing off: no wait at all
    assert previous == "alpha"
    assert took < 0.1, took
    assert await one.get("doomed") is None
    assert await one.get("moved") == "beta"
    assert one.errors == 1

    # When Redis answers again, the changes made meanwhile are written back...
    async def written_back() -> bool:
        return await raw.get(PREFIX + "moved") == "beta"

    await eventually(written_back, what="written_back", within=BACKOFF_WAIT)
    assert await raw.get(PREFIX + "doomed") == ""
    # ...and the other replica's cache follows on its next refresh.
    clock.advance(7)
    await two.get("doomed")

    async def two_forgot() -> bool:
        return await two.get("doomed") is None

    await eventually(two_forgot, within=3.0, what="two_forgot")
    assert await two.get("moved") == "beta"


async def test_hung_redis_never_hangs_a_call(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcplb.sessions")
    silent = await start_silent_server()
    try:
        one = make_store(silent.url)
        got, took = await timed(one.get("s"))  # a miss: asks Redis, which never answers
        assert got is None
        assert took < TIMEOUT + SLACK, took
        assert one.errors == 1
        assert silent.connections >= 1

        # Backing off now: the next calls do not wait on Redis at all.
        previous, took = await timed(one.bind("s", "alpha"))
        assert previous is None
        assert took < 0.1, took
        got, took = await timed(one.get("s"))
        assert got == "alpha"
        assert took < 0.1, took

        # Once the backoff expires the background probe times out too; calls stay bounded.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for call in (one.get("s"), one.get("other"), one.bind("t", "beta")):
                _, took = await timed(call)
                assert took < TIMEOUT + SLACK, took
            await asyncio.sleep(0.02)
        assert one.errors >= 2  # the probes
        forgotten, took = await timed(one.forget("s"))
        assert forgotten == "alpha"
        assert took < TIMEOUT + SLACK, took
        assert all("timeout" in r.getMessage() for r in warnings_from(caplog))
        _, took = await timed(one.close())
        assert took < TIMEOUT + SLACK, took
    finally:
        await silent.close()


async def test_hung_redis_bind_while_healthy_is_bounded(make_store: StoreFactory) -> None:
    silent = await start_silent_server()
    try:
        one = make_store(silent.url)
        previous, took = await timed(one.bind("s", "alpha"))  # first command: waits, then local
        assert previous is None
        assert TIMEOUT - 0.05 < took < TIMEOUT + SLACK, took
        assert await one.get("s") == "alpha"
        assert one.errors == 1
    finally:
        await silent.close()


async def test_unreachable_redis_at_start(make_store: StoreFactory) -> None:
    from tests.support.redis_server import free_port

    one = make_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    previous, took = await timed(one.bind("s", "alpha"))
    assert previous is None
    assert took < TIMEOUT + SLACK
    assert await one.get("s") == "alpha"
    assert await one.forget("s") == "alpha"
    assert one.errors == 1


def test_missing_binary_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_redis_server()  # this machine has one (or the other tests fail anyway)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisServerMissing, match="make test"):
        find_redis_server(fallback="/nonexistent/redis-server")


async def test_failure_logs_are_rate_limited_with_a_count(
    make_store: StoreFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mcplb.proxy.redisconn.health.LOG_INTERVAL", 0.4)
    caplog.set_level(logging.WARNING, logger="mcplb.sessions")
    silent = await start_silent_server()
    try:
        one = make_store(silent.url)
        # Five requests wait on the hung Redis at once: five errors, one line.
        results = await asyncio.gather(*(one.get(f"s{i}") for i in range(5)))
        assert results == [None] * 5
        assert one.errors == 5
        assert len(warnings_from(caplog)) == 1

        # The next report (here: a background probe failing, 0.5 s on) counts the rest.
        async def reported_again() -> bool:
            return len(warnings_from(caplog)) >= 2

        await eventually(reported_again, what="reported_again", within=2.0)
        second = warnings_from(caplog)[1].getMessage()
        assert "4 more since the last report" in second, second
    finally:
        await silent.close()


async def test_workers_of_one_host_share_bindings_while_redis_is_down(
    redis_server: RedisServer, make_store: StoreFactory, tmp_path: Path
) -> None:
    """Two workers (stores sharing an outage directory): a session bound or used on one
    during an outage is found by the other, whose own table does not have it."""
    one = make_store(redis_server.url, outage_share=OutageShare(tmp_path))
    two = make_store(redis_server.url, outage_share=OutageShare(tmp_path))
    lone = make_store(redis_server.url)  # a worker without the share: the old behaviour
    await one.bind("before", "alpha")  # in Redis, but only in one's own table
    await redis_server.kill()
    await one.bind("during", "beta")  # fails over to the local table, and is shared
    assert not one.healthy
    assert await two.get("during") == "beta"
    assert await lone.get("during") is None  # without the share: the 404 the share avoids
    assert await one.get("before") == "alpha"  # used during the outage: shared too
    assert await two.get("before") == "alpha"
    assert await one.forget("during") == "beta"
    assert (
        await make_store(redis_server.url, outage_share=OutageShare(tmp_path)).get("during") is None
    )  # forgotten everywhere
    assert list(tmp_path.iterdir()) == [tmp_path / OutageShare(tmp_path)._path("before").name]


async def test_outage_share_refuses_garbage(tmp_path: Path) -> None:
    share = OutageShare(tmp_path)
    share.put("s", "alpha")
    assert share.get("s") == "alpha"
    share._path("s").write_text("x" * 65)  # not a backend name
    assert share.get("s") is None
    share._path("s").write_text("")
    assert share.get("s") is None
    share.drop("s")
    share.drop("s")  # twice is fine
    assert share.get("s") is None
