"""Per-client rate limiting (proxy/routing/rate_limit.py): the pure token bucket, the in-process
store, the Redis store against a real redis-server (killed, restarted, hung), and 429s
through in-process proxies and through two real ``mcplb run`` replicas sharing one Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from mcplb.proxy.config.schema import RateLimitConfig, RedisConfig
from mcplb.proxy.routing.rate_limit import (
    MemoryRateLimiter,
    RateDecision,
    RedisRateLimiter,
    bucket_key,
    build_rate_limiter,
    rate_limit_headers,
    take_token,
)
from tests.conftest import AppFactory, FakeClock, ProxyFactory, backend_config
from tests.support.peers import Peers, free_port
from tests.support.rawhttp import Response, request
from tests.support.redis_server import (
    RedisServer,
    start_silent_server,
)

T = TypeVar("T")

PER_HOUR = 1 / 3600  # no refill worth a token while a test runs
PREFIX = "mcplb-test:ratelimit:"
TIMEOUT = 0.3  # the Redis limiters' timeout in these tests
SLACK = 0.25  # what a call may take beyond TIMEOUT (a loaded CI machine)
RATE_LIMIT_HEADERS = {
    "ratelimit-policy",
    "ratelimit",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
}


def limits(rate: float = PER_HOUR, burst: int = 3, **fields: Any) -> RateLimitConfig:
    return RateLimitConfig(rate=rate, burst=burst, **fields)


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = await call
    return result, time.monotonic() - start


# -- the pure token bucket -------------------------------------------------------------------


def test_burst_then_refusal() -> None:
    tokens, stamp = 3.0, 0.0
    seen = []
    for _ in range(4):
        decision, tokens, stamp = take_token(tokens, stamp, 0.0, 2.0, 3)
        seen.append(decision)
    assert seen[:3] == [
        RateDecision(True, 2, 0.0, 0.5),
        RateDecision(True, 1, 0.0, 1.0),
        RateDecision(True, 0, 0.0, 1.5),
    ]
    assert seen[3] == RateDecision(False, 0, 0.5, 1.5)  # one token in 1/rate, full in 3/rate
    assert (tokens, stamp) == (0.0, 0.0)


def test_refill_over_time_is_capped_at_burst() -> None:
    rate, burst = 4.0, 2
    decision, tokens, stamp = take_token(0.0, 0.0, 0.1, rate, burst)
    assert decision.allowed is False
    assert decision.retry_after == pytest.approx(0.15)  # 0.4 tokens now, 1 at t=0.25
    assert decision.reset == pytest.approx(0.4)
    assert tokens == pytest.approx(0.4)
    assert stamp == 0.1

    decision, tokens, stamp = take_token(tokens, stamp, 0.25, rate, burst)
    assert decision.allowed is True
    assert decision.remaining == 0
    assert decision.reset == pytest.approx(0.5)

    # A long pause refills only up to burst: two requests, then a refusal.
    results = []
    for _ in range(3):
        decision, tokens, stamp = take_token(tokens, stamp, 100.0, rate, burst)
        results.append(decision.allowed)
    assert results == [True, True, False]


def test_waiting_exactly_retry_after_gets_a_token() -> None:
    for rate in (3.0, 0.1, 7.0 / 3.0, 1 / 3600):
        tokens, stamp, now = 0.3, 0.0, 0.0
        decision, tokens, stamp = take_token(tokens, stamp, now, rate, 5)
        assert decision.allowed is False
        decision, _, _ = take_token(tokens, stamp, now + decision.retry_after, rate, 5)
        assert decision.allowed is True, rate


def test_clock_going_backwards_neither_refills_nor_drains() -> None:
    decision, tokens, stamp = take_token(1.5, 10.0, 5.0, 1.0, 3)
    assert decision.allowed is True
    assert (tokens, stamp) == (0.5, 10.0)
    decision, tokens, stamp = take_token(tokens, stamp, 10.5, 1.0, 3)
    assert decision.allowed is True  # 0.5 + (10.5 - 10) * 1.0: measured from the later stamp


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=100.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=200),
)
def test_accepted_never_exceed_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = MemoryRateLimiter(limits(rate, burst))
    now = start = 50.0
    accepted = 0
    for gap in gaps:
        now += gap
        decision = limiter.take("client", now)
        accepted += decision.allowed
        # The bound holds at every point of the sequence, not just at its end.
        assert accepted <= burst + rate * (now - start) + 1e-6
        if decision.allowed:
            assert decision.retry_after == 0.0
            assert 0 <= decision.remaining < burst
        else:
            assert decision.remaining == 0
            assert 0 < decision.retry_after <= 1 / rate + 1e-9
        assert 0 <= decision.reset <= burst / rate + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=100),
)
def test_a_refused_client_that_waits_retry_after_is_served(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = MemoryRateLimiter(limits(rate, burst))
    now = 0.0
    for gap in gaps:
        now += gap
        decision = limiter.take("client", now)
        if not decision.allowed:
            now += decision.retry_after
            assert limiter.take("client", now).allowed


# -- the in-process store --------------------------------------------------------------------


def test_memory_keys_are_independent() -> None:
    limiter = MemoryRateLimiter(limits(burst=2))
    assert [limiter.take("a", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert [limiter.take("b", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert limiter.take("c", 0.0) == RateDecision(True, 1, 0.0, 3600.0)
    assert limiter.errors == 0


def test_memory_refills_with_time() -> None:
    limiter = MemoryRateLimiter(limits(rate=10.0, burst=2))
    assert [limiter.take("a", 100.0).allowed for _ in range(3)] == [True, True, False]
    refused = limiter.take("a", 100.05)
    assert refused.allowed is False
    assert refused.retry_after == pytest.approx(0.05)
    assert refused.reset == pytest.approx(0.15)
    assert limiter.take("a", 100.1).allowed is True
    assert limiter.take("a", 100.1).allowed is False
    allowed, remaining, retry_after, reset = limiter.take("a", 1000.0)
    assert (allowed, remaining, retry_after) == (True, 1, 0.0)
    assert reset == pytest.approx(0.1)


def test_memory_evicts_least_recently_used_keys() -> None:
    limiter = MemoryRateLimiter(limits(burst=1), max_keys=2)
    assert limiter.take("a", 0.0).allowed
    assert limiter.take("b", 0.0).allowed
    assert not limiter.take("a", 1.0).allowed  # "a" is now the most recently used
    assert limiter.take("c", 2.0).allowed  # evicts "b"
    assert len(limiter) == 2
    assert not limiter.take("a", 3.0).allowed  # "a" kept its empty bucket
    # "b" was forgotten, so it starts again with a full bucket (the safe direction)...
    assert limiter.take("b", 4.0).allowed
    assert len(limiter) == 2
    assert limiter.take("c", 5.0).allowed  # ...which evicted "c" in turn


def test_long_and_binary_keys_are_hashed_and_kept_apart() -> None:
    long_a, long_b = "k" * 5000 + "a", "k" * 5000 + "b"
    assert bucket_key("10.0.0.1") == "10.0.0.1"
    for key in (long_a, long_b, "tab\there", "caf\u00e9", "sha256:" + "0" * 64):
        assert bucket_key(key).startswith("sha256:")
        assert len(bucket_key(key)) == len("sha256:") + 64
    assert bucket_key(long_a) != bucket_key(long_b)
    assert bucket_key("sha256:" + "0" * 64) != "sha256:" + "0" * 64

    limiter = MemoryRateLimiter(limits(burst=1))
    assert limiter.take(long_a, 0.0).allowed
    assert not limiter.take(long_a, 0.0).allowed
    assert limiter.take(long_b, 0.0).allowed


# -- headers -----------------------------------------------------------------------------------


def test_headers_for_an_allowed_request() -> None:
    config = limits(rate=0.5, burst=5)
    headers = rate_limit_headers(config, RateDecision(True, 3, 0.0, 3.2))
    assert headers == [
        (b"ratelimit-policy", b'"default";q=5;w=10'),
        (b"ratelimit", b'"default";r=3;t=4'),
        (b"ratelimit-limit", b"5"),
        (b"ratelimit-remaining", b"3"),
        (b"ratelimit-reset", b"4"),
    ]


def test_headers_for_a_refused_request() -> None:
    config = limits(rate=600 / 60, burst=20)  # "600/m"
    headers = dict(rate_limit_headers(config, RateDecision(False, 0, 0.03, 1.9999999999)))
    assert headers[b"ratelimit-policy"] == b'"default";q=20;w=2'
    assert headers[b"ratelimit"] == b'"default";r=0;t=2'  # float dust does not add a second
    assert headers[b"ratelimit-remaining"] == b"0"
    assert headers[b"retry-after"] == b"1"  # at least one second
    hourly = dict(rate_limit_headers(limits(), RateDecision(False, 0, 3599.2, 10799.2)))
    assert hourly[b"retry-after"] == b"3600"
    assert hourly[b"ratelimit-reset"] == b"10800"
    assert hourly[b"ratelimit-policy"] == b'"default";q=3;w=10800'


async def test_build_rate_limiter_picks_the_store() -> None:
    assert build_rate_limiter(None) is None
    assert isinstance(build_rate_limiter(limits()), MemoryRateLimiter)
    redis_limiter = build_rate_limiter(limits(store="redis"))
    assert isinstance(redis_limiter, RedisRateLimiter)
    await redis_limiter.close()


# -- the Redis store -------------------------------------------------------------------------


LimiterFactory = Callable[..., RedisRateLimiter]


@pytest.fixture
async def make_limiter() -> AsyncIterator[LimiterFactory]:
    """make_limiter(url, rate=PER_HOUR, burst=3, clock=...): closed on teardown."""
    limiters: list[RedisRateLimiter] = []

    def factory(
        url: str,
        *,
        rate: float = PER_HOUR,
        burst: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> RedisRateLimiter:
        redis = RedisConfig(url=url, timeout=TIMEOUT, prefix=PREFIX)
        limiter = RedisRateLimiter(limits(rate, burst, store="redis", redis=redis), clock=clock)
        limiters.append(limiter)
        return limiter

    yield factory
    for limiter in limiters:
        await limiter.close()


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mcplb.ratelimit" and r.levelno >= logging.WARNING
    ]


async def test_replicas_share_one_bucket(
    redis_server: RedisServer, make_limiter: LimiterFactory, raw: aioredis.Redis
) -> None:
    one, two = make_limiter(redis_server.url, burst=5), make_limiter(redis_server.url, burst=5)
    decisions = [await (one, two)[i % 2].take("client") for i in range(12)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 7
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[-1]
    assert 3590 < refused.retry_after <= 3600
    assert 5 * 3600 - 10 < refused.reset <= 5 * 3600
    # Another client has its own bucket.
    assert (await two.take("other")).remaining == 4
    assert one.errors == two.errors == 0

    # Stored as a hash of tokens and stamp, which expires once it would be full again.
    state = await raw.hgetall(PREFIX + "client")
    assert set(state) == {"tokens", "stamp"}
    assert float(state["tokens"]) < 0.01
    ttl_ms = await raw.pttl(PREFIX + "client")
    assert 5 * 3600_000 - 10_000 < ttl_ms <= 5 * 3600_000 + 1000


async def test_redis_refills(
    redis_server: RedisServer, make_limiter: LimiterFactory, raw: aioredis.Redis
) -> None:
    limiter = make_limiter(redis_server.url, rate=20.0, burst=2)
    assert [(await limiter.take("c")).allowed for _ in range(3)] == [True, True, False]
    refused = await limiter.take("c")
    assert not refused.allowed
    assert 0 < refused.retry_after <= 0.05
    await asyncio.sleep(refused.retry_after)  # what a client honouring it does
    assert (await limiter.take("c")).allowed

    # Refill is measured on Redis's clock from the stored stamp: an hour-old stamp is full.
    seconds, micros = await raw.time()
    await raw.hset(PREFIX + "c", "stamp", str(seconds + micros / 1e6 - 3600))
    assert [(await limiter.take("c")).allowed for _ in range(3)] == [True, True, False]
    assert 0 < await raw.pttl(PREFIX + "c") <= 1000 + 100  # two tokens at 20/s, plus 1 s


async def test_long_keys_are_hashed_in_redis(
    redis_server: RedisServer, make_limiter: LimiterFactory
) -> None:
    limiter = make_limiter(redis_server.url, burst=1)
    key = "api-key-" + "x" * 10_000
    assert (await limiter.take(key)).allowed
    assert not (await limiter.take(key)).allowed
    assert await redis_server.exists(PREFIX + bucket_key(key))
    assert len(PREFIX + bucket_key(key)) < 100


async def test_flushed_script_cache_is_reloaded(
    redis_server: RedisServer, make_limiter: LimiterFactory, raw: aioredis.Redis
) -> None:
    limiter = make_limiter(redis_server.url, burst=2)
    assert (await limiter.take("c")).remaining == 1
    await raw.script_flush()  # EVALSHA now answers NOSCRIPT
    assert (await limiter.take("c")).remaining == 0
    assert limiter.errors == 0


async def test_script_error_fails_open(
    redis_server: RedisServer,
    make_limiter: LimiterFactory,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mcplb.ratelimit")
    await raw.set(PREFIX + "c", "not a hash")  # HMGET fails inside the script: WRONGTYPE
    limiter = make_limiter(redis_server.url, burst=2)
    assert await limiter.take("c") == RateDecision(True, 1, 0.0, 0.0)
    assert limiter.errors == 1
    assert limiter.fail_open == 1
    (warning,) = warnings_from(caplog)
    assert "response error" in warning and "WRONGTYPE" in warning


async def test_killed_redis_fails_open_backs_off_and_recovers(
    redis_server: RedisServer,
    make_limiter: LimiterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mcplb.ratelimit")
    clock = FakeClock()
    limiter = make_limiter(redis_server.url, burst=2, clock=clock)
    assert (await limiter.take("c")).remaining == 1
    assert (await limiter.take("c")).remaining == 0
    assert not (await limiter.take("c")).allowed

    await redis_server.kill()
    # Redis is gone: the request is let through, quickly, and the failure counted.
    decision, took = await timed(limiter.take("c"))
    assert decision == RateDecision(True, 1, 0.0, 0.0)
    assert took < TIMEOUT + SLACK, took
    assert (limiter.errors, limiter.fail_open, limiter.healthy) == (1, 1, False)

    # Backing off (0.5 s): requests do not touch Redis at all.
    for _ in range(20):
        assert (await limiter.take("c")).allowed
    assert (limiter.errors, limiter.fail_open) == (1, 21)

    # After the backoff one request tries Redis again; still down: the backoff doubles.
    clock.advance(0.5)
    assert (await limiter.take("c")).allowed
    assert limiter.errors == 2
    clock.advance(0.75)
    assert (await limiter.take("c")).allowed
    assert limiter.errors == 2  # 0.75 s < 1 s: not tried
    clock.advance(0.25)
    assert (await limiter.take("c")).allowed
    assert limiter.errors == 3

    # Redis is back (empty, and without the script): after the backoff, limiting resumes.
    await redis_server.restart()
    clock.advance(2.0)
    assert [(await limiter.take("c")).allowed for _ in range(3)] == [True, True, False]
    assert limiter.healthy
    assert limiter.errors == 3

    warnings = warnings_from(caplog)
    assert len(warnings) == 2, warnings  # one per 5 s for the outage, one for the recovery
    assert "connection error" in warnings[0]
    assert "answers again" in warnings[1]


async def test_hung_redis_is_bounded_by_the_timeout(
    make_limiter: LimiterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcplb.ratelimit")
    silent = await start_silent_server()
    try:
        clock = FakeClock()
        limiter = make_limiter(silent.url, burst=4, clock=clock)
        decision, took = await timed(limiter.take("c"))
        assert decision == RateDecision(True, 3, 0.0, 0.0)
        assert took < TIMEOUT + SLACK, took
        assert limiter.errors == 1
        assert silent.connections >= 1

        # Backing off: answered at once.
        decision, took = await timed(limiter.take("c"))
        assert decision.allowed
        assert took < 0.05, took

        # After the backoff, a burst of concurrent requests sends one probe to Redis; the
        # others do not wait for it, and the probe itself is bounded by the timeout.
        clock.advance(0.5)
        results = await asyncio.gather(*(timed(limiter.take(f"c{i}")) for i in range(20)))
        assert all(d.allowed for d, _ in results)
        assert max(took for _, took in results) < TIMEOUT + SLACK
        assert sorted(took for _, took in results)[-2] < 0.05  # only the probe waited
        assert limiter.errors == 2
        assert limiter.fail_open == 22
        warnings = warnings_from(caplog)
        assert len(warnings) == 1 and "timeout error" in warnings[0], warnings

        _, took = await timed(limiter.close())
        assert took < TIMEOUT + SLACK, took
        assert (await limiter.take("c")).allowed  # closed: fails open, without Redis
    finally:
        await silent.close()


async def test_cancelled_probe_lets_the_next_request_probe(
    redis_server: RedisServer, make_limiter: LimiterFactory
) -> None:
    clock = FakeClock()
    limiter = make_limiter(redis_server.url, burst=2, clock=clock)
    await redis_server.kill()
    assert (await limiter.take("c")).allowed
    assert limiter.errors == 1
    await redis_server.restart()
    clock.advance(0.5)
    probe = asyncio.ensure_future(limiter.take("c"))
    await asyncio.sleep(0)  # let the probe start its Redis call
    probe.cancel()  # e.g. the client went away
    with pytest.raises(asyncio.CancelledError):
        await probe
    # The cancelled probe did not leave the limiter stuck in "a probe is running".
    assert (await limiter.take("c")).remaining == 1
    assert limiter.healthy


# -- through the proxy -------------------------------------------------------------------------


async def hello(req: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def backend_port(serve_app: AppFactory) -> int:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return await serve_app(app)


async def get(port: int, headers: dict[str, str] | None = None) -> Response:
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return await request(port, f"GET /x HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n".encode())


def error_code(resp: Response) -> object:
    """The code of a proxy error body: {"error": CODE, ...} or {"error": {"code": CODE, ...}}."""
    assert resp.header("content-type") == "application/json"
    error = json.loads(resp.body)["error"]
    return error["code"] if isinstance(error, dict) else error


def assert_served(resp: Response) -> None:
    assert resp.status == 200, (resp.status, resp.body)
    assert resp.body == b"hello"
    assert not RATE_LIMIT_HEADERS & {name for name, _ in resp.headers}, resp.headers


def assert_limited(resp: Response, burst: int) -> None:
    assert resp.status == 429, (resp.status, resp.body)
    assert error_code(resp) == "rate_limited"
    names = [name for name, _ in resp.headers if name in RATE_LIMIT_HEADERS]
    assert sorted(names) == sorted(RATE_LIMIT_HEADERS), resp.headers  # each exactly once
    retry_after = resp.header("retry-after")
    assert retry_after is not None and 3590 <= int(retry_after) <= 3600
    assert resp.header("ratelimit-policy") == f'"default";q={burst};w={burst * 3600}'
    ratelimit = resp.header("ratelimit")
    assert ratelimit is not None and ratelimit.startswith('"default";r=0;t=')
    reset = int(ratelimit.rsplit("=", 1)[1])
    assert burst * 3600 - 60 <= reset <= burst * 3600
    assert resp.header("ratelimit-limit") == str(burst)
    assert resp.header("ratelimit-remaining") == "0"
    assert resp.header("ratelimit-reset") == str(reset)


async def test_proxy_answers_429_past_the_burst(
    start_proxy: ProxyFactory, backend_port: int
) -> None:
    proxy = await start_proxy([backend_config("a", backend_port)], rate_limit=limits(burst=3))
    for _ in range(3):
        assert_served(await get(proxy.port))
    for _ in range(2):
        assert_limited(await get(proxy.port), burst=3)


async def test_proxy_keys_buckets_by_header(start_proxy: ProxyFactory, backend_port: int) -> None:
    config = limits(burst=2, header="x-api-key")
    proxy = await start_proxy([backend_config("a", backend_port)], rate_limit=config)
    for key in ("alpha", "beta"):
        for _ in range(2):
            assert_served(await get(proxy.port, {"X-Api-Key": key}))
        assert_limited(await get(proxy.port, {"X-Api-Key": key}), burst=2)
    # Without the header the key is the client address: a bucket of its own.
    for _ in range(2):
        assert_served(await get(proxy.port))
    assert_limited(await get(proxy.port), burst=2)
    assert_limited(await get(proxy.port, {"X-Api-Key": "alpha"}), burst=2)
    assert_served(await get(proxy.port, {"X-Api-Key": "gamma"}))


@pytest.mark.parametrize("trusted", [(), ("127.0.0.0/8",)])
async def test_proxy_keys_buckets_by_forwarded_address_behind_trusted_proxies(
    start_proxy: ProxyFactory, backend_port: int, trusted: tuple[str, ...]
) -> None:
    """Behind a trusted proxy (here: loopback) each X-Forwarded-For client has a bucket;
    without trusted_proxies the header is ignored (it could be forged): one bucket."""
    config = limits(burst=1, trusted_proxies=trusted)
    proxy = await start_proxy([backend_config("a", backend_port)], rate_limit=config)
    alice = {"X-Forwarded-For": "198.51.100.9, 203.0.113.1"}  # the last hop is the client
    bob = {"X-Forwarded-For": "203.0.113.2"}
    assert_served(await get(proxy.port, alice))
    assert_limited(await get(proxy.port, alice), burst=1)
    if trusted:
        assert_served(await get(proxy.port, bob))
        assert_limited(await get(proxy.port, {"X-Forwarded-For": "10.9.9.9, 203.0.113.2"}), 1)
    else:
        assert_limited(await get(proxy.port, bob), burst=1)


async def test_replicas_share_buckets_in_redis(
    peers: Peers, tmp_path: Path, backend_port: int, redis_server: RedisServer
) -> None:
    burst = 5
    ports = [free_port(), free_port()]
    configs = [
        f"listen: 127.0.0.1:{port}\n"
        f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend_port}'}}\n"
        f"rate_limit:\n  rate: 1/h\n  burst: {burst}\n  store: redis\n"
        f"  redis: {{url: '{redis_server.url}', timeout: {TIMEOUT}}}\n"
        for port in ports
    ]
    await asyncio.gather(
        *(
            peers.proxy(config, tmp_path, port=port, name=f"replica{index}")
            for index, (config, port) in enumerate(zip(configs, ports, strict=True))
        )
    )
    answers = [await get(ports[i % 2]) for i in range(4 * burst)]
    assert [r.status for r in answers] == [200] * burst + [429] * (3 * burst)
    for resp in answers[:burst]:
        assert_served(resp)
    for resp in answers[burst:]:
        assert_limited(resp, burst)
    assert await redis_server.command("DBSIZE") == 1  # one client, one bucket

    # Redis dies: both replicas let requests through (fail open), without hanging.
    await redis_server.kill()
    for port in ports * 2:
        resp, took = await timed(get(port))
        assert_served(resp)
        assert took < TIMEOUT + SLACK + 0.5, took
