"""Tests for the in-memory MCP session store (proxy/sessions/store.py), on a fake clock."""

from __future__ import annotations

import time

import pytest

from mcplb.proxy.sessions.store import MemorySessionStore, SessionStore
from tests.conftest import FakeClock


class Expired:
    """Records on_expire(session_id, backend) calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, session_id: str, backend: str) -> None:
        self.calls.append((session_id, backend))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def expired() -> Expired:
    return Expired()


def make_store(
    clock: FakeClock, expired: Expired, ttl: float = 10.0, max_sessions: int = 100
) -> MemorySessionStore:
    return MemorySessionStore(ttl, max_sessions, clock=clock, on_expire=expired)


def test_memory_store_is_a_session_store(clock: FakeClock, expired: Expired) -> None:
    assert isinstance(make_store(clock, expired), SessionStore)


async def test_bind_get_forget(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired)
    assert await store.get("s1") is None
    await store.bind("s1", "alpha")
    await store.bind("s2", "beta")
    assert len(store) == 2
    assert await store.get("s1") == "alpha"
    assert await store.get("s2") == "beta"
    assert await store.forget("s1") == "alpha"
    assert await store.get("s1") is None
    assert await store.get("s2") == "beta"
    assert len(store) == 1
    assert expired.calls == []  # forgetting is not expiry


async def test_known_answers_as_get_does_without_a_wait(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=10)
    assert store.known("s1") is None
    await store.bind("s1", "alpha")
    clock.advance(8)
    assert store.known("s1") == "alpha"  # and its idle timer starts again
    clock.advance(8)
    assert store.known("s1") == "alpha"
    clock.advance(11)
    assert store.known("s1") is None  # idle past the TTL: gone, as expiry reports it
    assert expired.calls == [("s1", "alpha")]
    assert len(store) == 0


async def test_forget_unknown_returns_none(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired)
    assert await store.forget("nobody") is None
    await store.bind("s1", "alpha")
    assert await store.forget("s1") == "alpha"
    assert await store.forget("s1") is None
    assert len(store) == 0
    assert expired.calls == []


async def test_rebinding_moves_the_session(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired)
    assert await store.bind("s1", "alpha") is None
    assert await store.bind("s1", "beta") == "alpha"  # the caller settles alpha's count
    assert await store.get("s1") == "beta"
    assert len(store) == 1
    assert await store.forget("s1") == "beta"
    assert await store.get("s1") is None


async def test_rebinding_restarts_the_idle_timer(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=10)
    await store.bind("s1", "alpha")
    clock.advance(8)
    await store.bind("s1", "beta")
    clock.advance(8)  # 16 s after the first bind, 8 s after the rebind
    assert store.expire() == 0
    assert await store.get("s1") == "beta"


async def test_get_refreshes_the_ttl(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=10)
    await store.bind("s1", "alpha")
    for _ in range(5):  # 45 s in all, far beyond one TTL, but never 10 s idle
        clock.advance(9)
        assert store.expire() == 0
        assert await store.get("s1") == "alpha"
    assert expired.calls == []
    clock.advance(9.999)
    assert await store.get("s1") == "alpha"
    clock.advance(10)  # exactly one TTL without use: gone
    assert await store.get("s1") is None
    assert len(store) == 0
    assert expired.calls == [("s1", "alpha")]
    assert await store.get("s1") is None
    assert expired.calls == [("s1", "alpha")]  # reported once


async def test_binding_gone_after_ttl_without_use(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=10)
    await store.bind("s1", "alpha")
    clock.advance(9.5)
    assert store.expire() == 0
    assert len(store) == 1
    clock.advance(0.5)
    assert await store.get("s1") is None
    assert expired.calls == [("s1", "alpha")]


async def test_expire_drops_exactly_the_idle_ones_in_order(
    clock: FakeClock, expired: Expired
) -> None:
    store = make_store(clock, expired, ttl=10)
    await store.bind("a", "b1")  # t=0
    clock.advance(1)
    await store.bind("b", "b2")  # t=1
    clock.advance(1)
    await store.bind("c", "b1")  # t=2
    clock.advance(1)
    await store.bind("d", "b3")  # t=3
    clock.advance(1)
    assert await store.get("a") == "b1"  # t=4: a used again, now the most recent
    clock.advance(8)  # t=12: b (idle 11 s) and c (idle 10 s) are due; d (9 s) and a (8 s) not
    assert store.expire() == 2
    assert expired.calls == [("b", "b2"), ("c", "b1")]
    assert len(store) == 2
    assert store.expire() == 0
    assert expired.calls == [("b", "b2"), ("c", "b1")]
    clock.advance(1)  # t=13: d is due
    assert store.expire() == 1
    assert expired.calls[-1] == ("d", "b3")
    assert await store.get("a") == "b1"
    clock.advance(10)
    assert store.expire() == 1
    assert expired.calls == [("b", "b2"), ("c", "b1"), ("d", "b3"), ("a", "b1")]
    assert len(store) == 0
    assert store.expire() == 0


async def test_expire_on_empty_store_is_zero(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired)
    assert store.expire() == 0
    assert expired.calls == []


async def test_expire_everything_at_once(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=5)
    for i in range(20):
        await store.bind(f"s{i}", f"b{i % 3}")
        clock.advance(0.1)
    clock.advance(100)
    assert store.expire() == 20
    assert expired.calls == [(f"s{i}", f"b{i % 3}") for i in range(20)]
    assert len(store) == 0


async def test_lru_cap_evicts_least_recently_used(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=1000, max_sessions=3)
    await store.bind("s1", "alpha")
    await store.bind("s2", "beta")
    await store.bind("s3", "gamma")
    assert expired.calls == []
    assert await store.get("s1") == "alpha"  # s1 is now the most recently used; s2 the least
    await store.bind("s4", "delta")
    assert expired.calls == [("s2", "beta")]
    assert len(store) == 3
    assert await store.get("s2") is None
    assert await store.get("s1") == "alpha"
    assert await store.get("s3") == "gamma"
    assert await store.get("s4") == "delta"
    # Order of use is now s1, s3, s4: the next bind evicts s1.
    await store.bind("s5", "alpha")
    assert expired.calls == [("s2", "beta"), ("s1", "alpha")]
    assert await store.get("s1") is None
    assert len(store) == 3


async def test_rebinding_counts_as_use_and_does_not_evict(
    clock: FakeClock, expired: Expired
) -> None:
    store = make_store(clock, expired, ttl=1000, max_sessions=2)
    await store.bind("s1", "alpha")
    await store.bind("s2", "beta")
    await store.bind("s1", "gamma")  # rebind: still two sessions, s1 now most recent
    assert len(store) == 2
    assert expired.calls == []
    await store.bind("s3", "delta")
    assert expired.calls == [("s2", "beta")]
    assert await store.get("s1") == "gamma"


async def test_cap_of_one_keeps_only_the_latest(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired, ttl=1000, max_sessions=1)
    for i in range(4):
        await store.bind(f"s{i}", "alpha")
    assert len(store) == 1
    assert await store.get("s3") == "alpha"
    assert expired.calls == [("s0", "alpha"), ("s1", "alpha"), ("s2", "alpha")]


async def test_works_without_on_expire(clock: FakeClock) -> None:
    store = MemorySessionStore(10, 1, clock=clock)
    await store.bind("s1", "alpha")
    await store.bind("s2", "beta")  # evicts s1, no callback to call
    clock.advance(10)
    assert await store.get("s2") is None
    await store.bind("s3", "gamma")
    clock.advance(10)
    assert store.expire() == 1
    await store.close()


async def test_close_is_harmless(clock: FakeClock, expired: Expired) -> None:
    store = make_store(clock, expired)
    await store.bind("s1", "alpha")
    await store.close()
    assert expired.calls == []


async def test_expire_costs_the_expired_bindings_not_the_table(
    clock: FakeClock, expired: Expired
) -> None:
    # It ran every 10 s over a copy of the whole table: 0.3-0.9 s per million bindings,
    # with the event loop held.
    store = make_store(clock, expired, ttl=10, max_sessions=300_000)
    await store.bind("old", "alpha")
    clock.advance(5)
    for i in range(200_000):
        await store.bind(f"s{i}", "beta")
    clock.advance(5)
    started = time.perf_counter()
    assert store.expire() == 1
    assert time.perf_counter() - started < 0.02
    assert expired.calls == [("old", "alpha")]
    assert len(store) == 200_000
