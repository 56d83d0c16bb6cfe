"""Shared fixtures: uvloop for every async test, in-process proxies and HTTP backends."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from mcplb.proxy.config.schema import (
    AdminConfig,
    BackendConfig,
    Config,
    LimitsConfig,
    TimeoutsConfig,
)
from mcplb.proxy.server.worker import ProxyServer
from tests.support import tiers
from tests.support.peers import Peers
from tests.support.redis_server import RedisServer, RedisServerMissing, start_redis


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    # The proxy runs on uvloop in production, so the tests do too.
    return {"uvloop": uvloop.new_event_loop}


def backend_config(name: str, port: int, weight: int = 1, prefix: str = "") -> BackendConfig:
    url = f"http://127.0.0.1:{port}{prefix}"
    return BackendConfig(name, url, "http", "127.0.0.1", port, prefix, weight)


ProxyFactory = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    """Start in-process proxies: start_proxy([BackendConfig...], timeouts=..., ...)."""
    servers: list[ProxyServer] = []

    async def factory(
        backends: list[BackendConfig],
        *,
        timeouts: dict[str, float] | None = None,
        limits: dict[str, int] | None = None,
        **fields: Any,
    ) -> ProxyServer:
        # No admin listener unless a test asks: many proxies run side by side.
        fields.setdefault("admin", AdminConfig(enabled=False))
        # Raw-byte tests write placeholder names ("Host: x"); the loopback listener's own
        # default (loopback names only) is tested in test_hostile_audit.py.
        fields.setdefault("allowed_hosts", ("*",))
        config = Config(
            listen_host="127.0.0.1",
            listen_port=0,
            backends=tuple(backends),
            timeouts=dataclasses.replace(TimeoutsConfig(), **(timeouts or {})),
            limits=dataclasses.replace(LimitsConfig(), **(limits or {})),
            **fields,
        )
        server = ProxyServer(config)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.shutdown(grace=0)


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    """Real MCP backends and ``mcplb run`` proxies as subprocesses, started on demand
    (tests/support/peers.py); all stopped on teardown, proxies first."""
    async with Peers() as p:
        yield p


AppFactory = Callable[[web.Application], Awaitable[int]]


@pytest.fixture
async def serve_app() -> AsyncIterator[AppFactory]:
    """Run aiohttp applications on loopback; returns each one's port."""
    runners: list[web.AppRunner] = []

    async def factory(app: web.Application) -> int:
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = site._server
        assert server is not None
        port: int = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return port

    yield factory
    for runner in runners:
        await runner.cleanup()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve_raw() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    """Run a raw TCP server whose handler scripts exactly what the backend sends."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def factory(handler: RawHandler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # scripted peers may be cut off by the proxy; that is the point
            finally:
                writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield factory
    for server in servers:
        server.close()
    for writer in writers:
        writer.close()


def session_app(name: str) -> web.Application:
    """A backend that answers its name; a POST without a session opens one (Mcp-Session-Id
    NAME-N); GET /slow?s=SECONDS answers after that long (a request still in flight)."""
    opened = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal opened
        if request.path == "/slow":
            await asyncio.sleep(float(request.query["s"]))
        headers = {}
        if request.method == "POST" and "mcp-session-id" not in request.headers:
            opened += 1
            headers["Mcp-Session-Id"] = f"{name}-{opened}"
        return web.Response(text=name, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A real redis-server on a free loopback port."""
    try:
        server = await start_redis()
    except RedisServerMissing as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    await server.stop()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at (and tamper with) what was written to Redis."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in (
        ("service", "needs a program the machine may lack: Redis, Prometheus, dnsmasq, Node"),
        ("process", "starts a process (a service, a proxy, a backend): not in `make check`"),
        ("bench", "runs a benchmark or the perf gate (`make test-bench`, once)"),
        ("compiled", "runs compiled code in-process or starts a proxy (the compiled pass)"),
        ("interop", "a peer's protocol, heavy: Node, conformance, Sentinel (compiled pass only)"),
        ("timing", "reads the clock to assert a duration, or fails Redis over: runs alone"),
        ("builds", "builds mcplb itself (mypyc): pure pass only, first in its pass"),
    ):
        config.addinivalue_line("markers", f"{name}: {meaning}; set by tests/support/tiers.py")
    if os.environ.get(tiers.TIER_VARIABLE) == "check":
        sys.addaudithook(tiers.refuse_processes)
    if shard := config.getoption("--shard"):
        config.pluginmanager.register(tiers.Shard(shard), "tiers-shard")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard",
        metavar="K/N",
        help="run only the Kth of every N selected tests (make check runs N side by side)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m selects, and before xdist reads xdist_group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouped = config.getoption("dist", "no") == "loadgroup"  # pytest-xdist's --dist
    for item in items:
        for name in tiers.markers(item):
            item.add_marker(name)
        if grouped and (group := tiers.xdist_group(item)):
            item.add_marker(pytest.mark.xdist_group(group))
    # The tests that build mcplb themselves (a mypyc build each: minutes of CPU) first, so
    # that under xdist they run beside the rest instead of making the pass's tail.
    items.sort(key=lambda item: item.get_closest_marker("builds") is None)
