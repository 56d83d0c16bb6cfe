"""The Redis stores over TLS to a real redis-server (Debian's, built with TLS), certificates
from trustme (tests/support/redis_tls.py): TLS only on the server (``--port 0``).

- one server: ``url: "rediss://HOST:PORT/0?ssl_ca_certs=/path/ca.pem"`` (the CA of a private
  PKI goes in the URL's query; redis-py reads it): the session store's bindings and the rate
  limiter's buckets land in that server, verified against the CA;
- a client holding the wrong CA: the handshake is refused, nothing reaches Redis, and the
  documented outage behaviour follows (the session store answers from its local table, the
  rate limiter lets requests through unlimited), with one warning line that names the cause
  ("certificate verify failed");
- a client speaking plain redis:// to the TLS port gets the same outage, not a hang.

Sentinel over TLS (tests/support/redis_tls.py's start_tls_sentinel_group) is not tested
here yet: a test of it passed twice and hung in other runs, cause not found.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import RateLimitConfig, RedisConfig
from mcplb.proxy.routing.rate_limit import RedisRateLimiter
from mcplb.proxy.sessions.redis_store import RedisSessionStore
from tests.support.redis_tls import (
    TlsFiles,
    TlsRedisServer,
    start_tls_redis,
)

PREFIX = "mcplb:tls-test:"
TIMEOUT = 2.0  # per command: a TLS handshake on a loaded machine takes longer than 0.25 s


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFiles]:
    yield TlsFiles.make(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture
async def server(files: TlsFiles) -> AsyncIterator[TlsRedisServer]:
    started = await start_tls_redis(files)
    try:
        yield started
    finally:
        await started.stop()


def url_with_ca(server: TlsRedisServer, ca: Path) -> str:
    return f"{server.url}?ssl_ca_certs={ca}"


def store_for(url: str) -> RedisSessionStore:
    return RedisSessionStore(RedisConfig(url, TIMEOUT, PREFIX), ttl=60.0, max_local=100)


def limiter_for(redis: RedisConfig, burst: int = 3) -> RedisRateLimiter:
    return RedisRateLimiter(RateLimitConfig(rate=0.001, burst=burst, store="redis", redis=redis))


def test_the_config_takes_a_rediss_url_with_its_ca(files: TlsFiles) -> None:
    config = parse_config(
        "backends: [{name: a, url: 'http://127.0.0.1:9001'}]\n"
        "sticky:\n  store: redis\n"
        f"  redis: {{url: 'rediss://127.0.0.1:6380/0?ssl_ca_certs={files.ca}'}}\n"
    )
    assert config.sticky.redis.url.endswith(f"ssl_ca_certs={files.ca}")


async def test_session_store_over_tls(server: TlsRedisServer, files: TlsFiles) -> None:
    store = store_for(url_with_ca(server, files.ca))
    try:
        await store.bind("tls-1", "mcp-a")
        assert await server.command("GET", PREFIX + "tls-1") == "mcp-a"
        assert store.errors == 0 and store.healthy
    finally:
        await store.close()
    other = store_for(url_with_ca(server, files.ca))  # another replica: reads it from Redis
    try:
        assert await other.get("tls-1") == "mcp-a"
        assert await other.forget("tls-1") == "mcp-a"
        assert await server.command("GET", PREFIX + "tls-1") != "mcp-a"  # a tombstone
        assert other.errors == 0
    finally:
        await other.close()


async def test_rate_limiter_over_tls(server: TlsRedisServer, files: TlsFiles) -> None:
    limiter = limiter_for(RedisConfig(url_with_ca(server, files.ca), TIMEOUT, PREFIX))
    try:
        decisions = [(await limiter.take("client-1")).allowed for _ in range(4)]
        assert decisions == [True, True, True, False]  # burst 3, then refused: Redis counted
        assert limiter.errors == 0 and limiter.fail_open == 0
        assert await server.command("KEYS", PREFIX + "*") != []
    finally:
        await limiter.close()


async def test_wrong_ca_is_refused_and_the_stores_answer_without_redis(
    server: TlsRedisServer, files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = store_for(url_with_ca(server, files.wrong_ca))
    try:
        await store.bind("tls-2", "mcp-b")
        assert await store.get("tls-2") == "mcp-b"  # the local table (documented outage)
        assert store.errors >= 1 and not store.healthy
    finally:
        await store.close()
    limiter = limiter_for(RedisConfig(url_with_ca(server, files.wrong_ca), TIMEOUT, PREFIX))
    try:
        decisions = [(await limiter.take("client-2")).allowed for _ in range(5)]
        assert all(decisions)  # fail open: no bucket without Redis
        assert limiter.fail_open == 5 and limiter.errors >= 1
    finally:
        await limiter.close()
    assert await server.command("DBSIZE") == 0  # nothing got through
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    store_lines = [m for m in lines if m.startswith("Redis session store: Redis connection error")]
    limit_lines = [m for m in lines if m.startswith("rate limit: Redis connection error")]
    assert store_lines and limit_lines, lines
    for line in (store_lines[0], limit_lines[0]):
        assert "certificate verify failed" in line.lower(), line
        assert "answering from the local table" in line or "unlimited" in line, line


async def test_plain_redis_to_a_tls_port_is_an_outage_not_a_hang(
    server: TlsRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = store_for(f"redis://{server.host}:{server.port}/0")
    try:
        await store.bind("tls-3", "mcp-c")
        assert await store.get("tls-3") == "mcp-c"
        assert store.errors >= 1 and not store.healthy
    finally:
        await store.close()
    assert await server.command("DBSIZE") == 0
