"""Active probes and the monitor against real peers: demo MCP backends (subprocesses),
in-process aiohttp apps and scripted TCP servers. No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mcplb.healthcheck.monitor import HealthMonitor
from mcplb.healthcheck.probes import http_probe, mcp_probe
from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.config.schema import ActiveHealthConfig, HealthConfig, PassiveHealthConfig
from tests.conftest import AppFactory, RawHandler, backend_config
from tests.support.eventually import eventually
from tests.support.peers import (
    LOOPBACK,
    McpBackend,
    Peers,
    _ManagedProcess,
    free_port,
    mcp_session,
    start_mcp_backend_sync,
    wait_for_port_sync,
)

RawFactory = Callable[[RawHandler], Awaitable[int]]
HTTP = ActiveHealthConfig(enabled=True, type="http", timeout=1.0)
MCP = ActiveHealthConfig(enabled=True, type="mcp", timeout=2.0)


class _ExtraArgs(_ManagedProcess):
    """Appends ``extra_args`` to the command line built by a subclass (see below)."""

    extra_args: Sequence[str] = ()

    def __init__(self, argv: Sequence[str], **kwargs: Any) -> None:
        super().__init__([*argv, *self.extra_args], **kwargs)


class BackendWithoutCountdown(McpBackend, _ExtraArgs):
    """A demo backend run with ``--without-tool countdown``."""

    extra_args = ("--without-tool", "countdown")


@pytest.fixture(scope="module")
def stateful() -> Iterator[McpBackend]:
    backend = start_mcp_backend_sync("probe-stateful")
    yield backend
    backend.stop_sync()


@pytest.fixture(scope="module")
def stateless() -> Iterator[McpBackend]:
    backend = start_mcp_backend_sync("probe-stateless", stateless=True)
    yield backend
    backend.stop_sync()


@pytest.fixture(scope="module")
def json_backend() -> Iterator[McpBackend]:
    backend = start_mcp_backend_sync("probe-json", json_response=True)
    yield backend
    backend.stop_sync()


@pytest.fixture(scope="module")
def without_countdown() -> Iterator[McpBackend]:
    backend = BackendWithoutCountdown("probe-no-countdown", free_port())
    try:
        wait_for_port_sync(LOOPBACK, backend.port, process=backend)
    except BaseException:
        backend.kill_now()
        raise
    yield backend
    backend.stop_sync()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def backend_at(port: int, prefix: str = "", name: str = "b") -> Backend:
    return Backend(backend_config(name, port, prefix=prefix))


async def live_sessions(http: aiohttp.ClientSession, backend: McpBackend) -> int:
    async with http.get(f"{backend.url}/debug/sessions") as response:
        assert response.status == 200
        count: int = (await response.json())["sessions"]
        return count


# --- MCP probe against real MCP servers ----------------------------------------------------


async def test_mcp_probe_stateful_leaves_no_session(
    http: aiohttp.ClientSession, stateful: McpBackend
) -> None:
    backend = backend_at(stateful.port)
    cfg = dataclasses.replace(MCP, expect_tools=("whoami", "countdown"))
    for _ in range(5):
        assert await mcp_probe(http, backend, MCP) == (True, "MCP ping ok")
        assert await mcp_probe(http, backend, cfg) == (
            True,
            "MCP ping ok, 2 expected tools listed",
        )
    assert await live_sessions(http, stateful) == 0


async def test_mcp_probe_does_not_touch_real_sessions(
    http: aiohttp.ClientSession, stateful: McpBackend
) -> None:
    async with mcp_session(stateful.mcp_url) as session:
        assert await live_sessions(http, stateful) == 1
        for _ in range(3):
            ok, _ = await mcp_probe(http, backend_at(stateful.port), MCP)
            assert ok
        assert await live_sessions(http, stateful) == 1
        assert not (await session.call_tool("add", {"a": 1, "b": 2})).is_error
    assert await live_sessions(http, stateful) == 0


async def test_mcp_probe_stateless(http: aiohttp.ClientSession, stateless: McpBackend) -> None:
    cfg = dataclasses.replace(MCP, expect_tools=("add",))
    assert await mcp_probe(http, backend_at(stateless.port), cfg) == (
        True,
        "MCP ping ok, 1 expected tools listed",
    )
    assert await live_sessions(http, stateless) == 0


async def test_mcp_probe_json_responses(
    http: aiohttp.ClientSession, json_backend: McpBackend
) -> None:
    cfg = dataclasses.replace(MCP, expect_tools=("add",))
    assert await mcp_probe(http, backend_at(json_backend.port), cfg) == (
        True,
        "MCP ping ok, 1 expected tools listed",
    )
    assert await live_sessions(http, json_backend) == 0


async def test_mcp_probe_missing_tools_fails_and_still_ends_its_session(
    http: aiohttp.ClientSession, without_countdown: McpBackend
) -> None:
    backend = backend_at(without_countdown.port)
    assert await mcp_probe(http, backend, MCP) == (True, "MCP ping ok")
    cfg = dataclasses.replace(MCP, expect_tools=("whoami", "countdown", "nope"))
    for _ in range(3):
        assert await mcp_probe(http, backend, cfg) == (
            False,
            "tools/list: missing tools: countdown, nope",
        )
    assert await live_sessions(http, without_countdown) == 0


async def test_mcp_probe_wrong_path_and_wrong_host(
    http: aiohttp.ClientSession, stateful: McpBackend
) -> None:
    wrong_path = dataclasses.replace(MCP, path="/nope")
    assert await mcp_probe(http, backend_at(stateful.port), wrong_path) == (
        False,
        "initialize: HTTP 404",
    )
    # The SDK's DNS-rebinding protection refuses a Host that is not its own address.
    backend = backend_at(stateful.port)
    backend.host_header = b"evil.example:80"
    ok, detail = await mcp_probe(http, backend, MCP)
    assert (ok, detail.split(" (")[0]) == (False, "initialize: HTTP 421")
    assert await live_sessions(http, stateful) == 0


async def test_mcp_probe_killed_backend_connect_refused(
    http: aiohttp.ClientSession, peers: Peers
) -> None:
    mcp = await peers.backend("probe-killed")
    backend = backend_at(mcp.port)
    assert (await mcp_probe(http, backend, MCP))[0]
    await mcp.kill()
    assert await mcp_probe(http, backend, MCP) == (False, "connect refused")
    assert await http_probe(http, backend, HTTP) == (False, "connect refused")


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accept, read everything, never answer; ends when the client leaves


async def test_probes_time_out_on_a_silent_server(
    http: aiohttp.ClientSession, serve_raw: RawFactory
) -> None:
    port = await serve_raw(never_answer)
    loop = asyncio.get_running_loop()
    for probe, cfg, detail in [
        (mcp_probe, dataclasses.replace(MCP, timeout=0.3), "timeout after 0.3s (in initialize)"),
        (http_probe, dataclasses.replace(HTTP, timeout=0.3), "timeout after 0.3s"),
    ]:
        started = loop.time()
        assert await probe(http, backend_at(port), cfg) == (False, detail)
        assert 0.29 <= loop.time() - started < 1.0


# --- MCP probe against scripted MCP-ish servers --------------------------------------------


class FakeMcp:
    """An aiohttp app speaking just enough MCP; each behaviour is switchable per test."""

    def __init__(self, *, session_id: str | None = "sess-1", hang_on: str = "") -> None:
        self.release = asyncio.Event()  # ends hanging handlers (set on teardown)
        self.session_id = session_id
        self.hang_on = hang_on
        self.requests: list[tuple[str, str | None, dict[str, str]]] = []  # method, rpc, headers
        self.init_error: dict[str, Any] | None = None
        self.sse = False
        self.app = web.Application()
        self.app.router.add_route("*", "/mcp", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = dict(request.headers)
        if request.method == "DELETE":
            self.requests.append(("DELETE", None, headers))
            return web.Response(status=200)
        message = await request.json()
        method = message["method"]
        self.requests.append(("POST", method, headers))
        if method == self.hang_on:
            await self.hang()
        if "id" not in message:
            return web.Response(status=202)
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "initialize" and self.init_error is not None:
            reply["error"] = self.init_error
        elif method == "initialize":
            reply["result"] = {"protocolVersion": "2025-06-18", "capabilities": {}}
        else:
            reply["result"] = {}
        extra = {"Mcp-Session-Id": self.session_id} if self.session_id else {}
        if not self.sse:
            return web.json_response(reply, headers=extra)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **extra})
        await response.prepare(request)
        # A notification first, a comment, and the response split over two data lines
        # (joined with a newline, which JSON takes as whitespace between tokens).
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
        head, tail = json.dumps(reply).split(", ", 1)
        await response.write(f"event: message\ndata: {json.dumps(note)}\n\n".encode())
        await response.write(f": keepalive\r\nid: 7\r\ndata: {head},\r\n".encode())
        await response.write(f"data:{tail}\r\n\r\n".encode())
        await self.hang()  # the stream stays open: the probe must not wait for its end
        return response

    async def hang(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), 10)


FakeFactory = Callable[..., Awaitable[tuple[FakeMcp, int]]]


@pytest.fixture
async def fake_mcp(serve_app: AppFactory) -> AsyncIterator[FakeFactory]:
    """Start FakeMcp apps: ``fake, port = await fake_mcp(session_id=..., hang_on=...)``."""
    fakes: list[FakeMcp] = []

    async def factory(**kwargs: Any) -> tuple[FakeMcp, int]:
        fake = FakeMcp(**kwargs)
        fakes.append(fake)
        return fake, await serve_app(fake.app)

    yield factory
    for fake in fakes:  # before serve_app's teardown, which waits for handlers
        fake.release.set()


async def test_mcp_probe_headers_and_sse_parsing(
    http: aiohttp.ClientSession, fake_mcp: FakeFactory
) -> None:
    fake, port = await fake_mcp()
    fake.sse = True
    assert await mcp_probe(http, backend_at(port), MCP) == (True, "MCP ping ok")
    assert [(m, rpc) for m, rpc, _ in fake.requests] == [
        ("POST", "initialize"),
        ("POST", "notifications/initialized"),
        ("POST", "ping"),
        ("DELETE", None),
        # Once per backend: does it speak 2026-07-28 too (probes._learn_spoken)?
        ("POST", "server/discover"),
    ]
    init_headers = fake.requests[0][2]
    assert init_headers["Host"] == f"127.0.0.1:{port}"
    assert init_headers["Accept"] == "application/json, text/event-stream"
    assert init_headers["Content-Type"] == "application/json"
    assert "Mcp-Session-Id" not in init_headers
    assert "MCP-Protocol-Version" not in init_headers
    for _, _, headers in fake.requests[1:4]:
        assert headers["Mcp-Session-Id"] == "sess-1"
        assert headers["MCP-Protocol-Version"] == "2025-06-18"  # the negotiated version
    discover = fake.requests[4][2]
    assert "Mcp-Session-Id" not in discover and discover["MCP-Protocol-Version"] == "2026-07-28"


async def test_mcp_probe_jsonrpc_error_is_a_failure(
    http: aiohttp.ClientSession, fake_mcp: FakeFactory
) -> None:
    fake, port = await fake_mcp(session_id=None)
    fake.init_error = {"code": -32602, "message": "Unsupported protocol version"}
    assert await mcp_probe(http, backend_at(port), MCP) == (
        False,
        "initialize: JSON-RPC error -32602: Unsupported protocol version",
    )
    assert [m for m, _, _ in fake.requests] == ["POST"]  # no session issued: no DELETE


@pytest.mark.parametrize("step", ["notifications/initialized", "ping"])
async def test_mcp_probe_timeout_after_initialize_still_deletes_its_session(
    http: aiohttp.ClientSession, fake_mcp: FakeFactory, step: str
) -> None:
    fake, port = await fake_mcp(hang_on=step)
    cfg = dataclasses.replace(MCP, timeout=0.3)
    assert await mcp_probe(http, backend_at(port), cfg) == (
        False,
        f"timeout after 0.3s (in {step})",
    )
    method, _, headers = fake.requests[-1]
    assert method == "DELETE"
    assert headers["Mcp-Session-Id"] == "sess-1"


# --- HTTP probe ----------------------------------------------------------------------------


def status_app(status: int, seen: list[tuple[str, str, str]]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, request.host))
        return web.Response(status=status, text="hello")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize(
    ("status", "expect", "result"),
    [
        (200, ((200, 399),), (True, "HTTP 200")),
        (302, ((200, 399),), (True, "HTTP 302")),
        (500, ((200, 399),), (False, "HTTP 500 (expected 200-399)")),
        (404, ((200, 399),), (False, "HTTP 404 (expected 200-399)")),
        (404, ((200, 200), (404, 404)), (True, "HTTP 404")),
        (204, ((200, 200), (300, 399)), (False, "HTTP 204 (expected 200, 300-399)")),
        (503, ((500, 599),), (True, "HTTP 503")),
    ],
)
async def test_http_probe_expect_status(
    http: aiohttp.ClientSession,
    serve_app: AppFactory,
    status: int,
    expect: tuple[tuple[int, int], ...],
    result: tuple[bool, str],
) -> None:
    seen: list[tuple[str, str, str]] = []
    port = await serve_app(status_app(status, seen))
    cfg = dataclasses.replace(HTTP, expect_status=expect)
    assert await http_probe(http, backend_at(port), cfg) == result
    assert seen == [("GET", "/", f"127.0.0.1:{port}")]


async def test_http_probe_head_path_prefix_and_host(
    http: aiohttp.ClientSession, serve_app: AppFactory
) -> None:
    seen: list[tuple[str, str, str]] = []
    port = await serve_app(status_app(200, seen))
    cfg = dataclasses.replace(HTTP, method="HEAD", path="/healthz?deep=1")
    backend = backend_at(port, prefix="/api")
    assert await http_probe(http, backend, cfg) == (True, "HTTP 200")
    assert seen == [("HEAD", "/api/healthz?deep=1", f"127.0.0.1:{port}")]
    # The probe sends the backend's own Host, whatever it connects to.
    backend.host_header = b"mcp.internal:8443"
    assert await http_probe(http, backend, cfg) == (True, "HTTP 200")
    assert seen[-1] == ("HEAD", "/api/healthz?deep=1", "mcp.internal:8443")


# --- the monitor end to end -----------------------------------------------------------------


async def seconds_until(predicate: Callable[[], bool], within: float = 10.0) -> float:
    """Seconds until ``predicate`` held (polled by ``eventually``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await eventually(predicate, within=within)
    return loop.time() - started


async def test_monitor_end_to_end_kill_and_restart(
    peers: Peers, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mcplb.health")
    victim, survivor = await asyncio.gather(
        peers.backend("e2e-victim"), peers.backend("e2e-survivor")
    )
    a, b = backend_at(victim.port, name="a"), backend_at(survivor.port, name="b")
    active = ActiveHealthConfig(
        enabled=True, type="mcp", interval=0.2, timeout=0.15, rise=2, fall=2
    )
    monitor = HealthMonitor(HealthConfig(active=active), [a, b])
    await monitor.start()
    try:
        await seconds_until(lambda: all(s["state"] == "healthy" for s in monitor.status().values()))
        assert a.available and b.available

        await victim.kill()
        took = await seconds_until(lambda: not a.available)
        # fall probes (intervals have +10% jitter) after one probe in flight, plus a sweep.
        assert took <= active.interval * 1.1 * active.fall + active.timeout + active.interval
        assert monitor.down(a) and b.available and not monitor.down(b)
        assert monitor.status()["a"]["last_probe"] == "connect refused"

        victim = await peers.backend("e2e-victim", port=victim.port)
        took = await seconds_until(lambda: a.available)
        assert took <= active.interval * 1.1 * active.rise + active.timeout + active.interval
        assert not monitor.down(a) and b.available
    finally:
        await monitor.stop()
    assert [task for task in asyncio.all_tasks() if task.get_name().startswith("health-")] == []
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mcplb.health"]
    assert sorted(messages[:2]) == [
        (
            "INFO",
            "backend a: unknown -> healthy (active mcp check: passed, last: MCP ping ok; "
            f"probed http://127.0.0.1:{a.port}/mcp)",
        ),
        (
            "INFO",
            "backend b: unknown -> healthy (active mcp check: passed, last: MCP ping ok; "
            f"probed http://127.0.0.1:{b.port}/mcp)",
        ),
    ]
    assert messages[2:] == [
        (
            "WARNING",
            "backend a: healthy -> unhealthy (active mcp check: 2 consecutive failures, "
            f"last: connect refused; probed http://127.0.0.1:{a.port}/mcp)",
        ),
        (
            "INFO",
            "backend a: unhealthy -> healthy (active mcp check: 2 consecutive successes, "
            f"last: MCP ping ok; probed http://127.0.0.1:{a.port}/mcp)",
        ),
    ]
    assert await live_sessions(http, survivor) == 0
    assert await live_sessions(http, victim) == 0


async def test_monitor_ticker_readmits_ejected_backend() -> None:
    a, b = backend_at(1, name="a"), backend_at(2, name="b")
    passive = PassiveHealthConfig(consecutive_failures=2, ejection_time=0.1)
    monitor = HealthMonitor(HealthConfig(passive=passive), [a, b])
    await monitor.start()
    try:
        monitor.connect_failed(a, "connection refused")
        monitor.connect_failed(a, "connection refused")
        assert not a.available and monitor.down(a)
        # Readmitted by the 0.5 s ticker once the 0.1 s ejection is over.
        assert await seconds_until(lambda: a.available) <= 0.1 + 0.5 + 0.2
    finally:
        await monitor.stop()


async def test_monitor_stop_during_probes_leaves_no_session(
    http: aiohttp.ClientSession, stateful: McpBackend
) -> None:
    backends = [backend_at(stateful.port, name=f"m{i}") for i in range(4)]
    # Probes start every 0.05 s, so stop() finds some in flight. (The loader refuses a
    # timeout >= interval; the monitor copes anyway, and a loaded machine cannot time out.)
    active = ActiveHealthConfig(enabled=True, type="mcp", interval=0.05, timeout=1.0)
    monitor = HealthMonitor(HealthConfig(active=active), backends)
    await monitor.start()
    await seconds_until(lambda: all(s["last_probe_ok"] for s in monitor.status().values()))
    await monitor.stop()
    await monitor.stop()  # idempotent
    assert await live_sessions(http, stateful) == 0


async def test_monitor_start_stop_restart(stateless: McpBackend) -> None:
    backend = backend_at(stateless.port)
    active = ActiveHealthConfig(enabled=True, type="http", path="/debug/sessions", interval=0.1)
    monitor = HealthMonitor(HealthConfig(active=active), [backend])
    for _ in range(2):
        await monitor.start()
        await monitor.start()  # no second set of tasks
        await seconds_until(lambda: monitor.status()["b"]["last_probe"] == "HTTP 200")
        await monitor.stop()
    assert monitor.status()["b"]["state"] == "healthy"
