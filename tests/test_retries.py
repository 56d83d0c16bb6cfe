"""Retries end to end: real aiohttp and scripted backends, real MCP SDK servers and clients,
and a real ``mcplb run`` in front of backend processes that get SIGKILLed under load."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from mcplb.proxy.config.schema import (
    HealthConfig,
    PassiveHealthConfig,
    RetriesConfig,
    RetryCondition,
)
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import AppFactory, ProxyFactory, RawHandler, backend_config
from tests.support.peers import INITIALIZE, Peers, free_port, mcp_call, mcp_session, result_text
from tests.support.rawhttp import RawClient, Response, request

RawServe = Callable[[RawHandler], Awaitable[int]]

# List order: which backend is tried is known.
FIRST = "tests.support.plugin_strategies:FirstAvailable"
NO_EJECTION = HealthConfig(passive=PassiveHealthConfig(enabled=False))


def only(*conditions: RetryCondition) -> frozenset[RetryCondition]:
    """A ``retries.on`` set."""
    return frozenset(conditions)


WITH_STATUSES = only("connect_failure", "reset", "502", "503", "504")
REPLAY_LIMIT = 64 * 1024


def get(path: str = "/") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode()


def post(body: bytes, path: str = "/", extra: bytes = b"") -> bytes:
    head = b"POST %b HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n" % (
        path.encode(),
        len(body),
    )
    return head + extra + b"\r\n" + body


def bad_gateway(resp: Response) -> bool:
    return resp.status == 502 and json.loads(resp.body)["error"] == "bad_gateway"


@dataclass
class Recorder:
    """An aiohttp backend that records each request and answers ``status``, "name:status"."""

    name: str
    status: int = 200
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def handle(req: web.Request) -> web.Response:
            body = await req.read()  # all of it, before answering: the request is complete
            self.seen.append((req.method, body))
            return web.Response(status=self.status, text=f"{self.name}:{self.status}")

        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def serve(self, serve_app: AppFactory) -> int:
        return await serve_app(self.app())


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Ports with nothing listening: bound, never listening (connects are refused), and
    held for the test so that nothing else can start listening there."""
    held: list[socket.socket] = []

    def make() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        port: int = sock.getsockname()[1]
        return port

    yield make
    for sock in held:
        sock.close()


def stats(proxy: ProxyServer, name: str) -> tuple[int, int]:
    """(connect_failures, retries) of one backend."""
    backend = proxy.runtime.stats.backends[name]
    return backend.connect_failures, backend.retries


# -- connect failures ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_connect_failure_moves_the_request(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    refused_port: Callable[[], int],
    method: str,
) -> None:
    """Nothing reached the dead backend, so even a POST (an MCP call) goes elsewhere."""
    good = Recorder("good")
    backends = [
        backend_config("dead", refused_port()),
        backend_config("good", await good.serve(serve_app)),
    ]
    proxy = await start_proxy(backends, health=NO_EJECTION)  # round_robin
    bodies = [b"call %d" % i for i in range(8)]
    for body in bodies:
        resp = await request(proxy.port, post(body) if method == "POST" else get())
        assert (resp.status, resp.body) == (200, b"good:200")
    # Round-robin sent some requests to the dead backend first; each was retried once.
    failures, _ = stats(proxy, "dead")
    assert failures >= 1
    assert stats(proxy, "good") == (0, failures)
    assert proxy.runtime.stats.retry_budget_exhausted == 0
    # Every request reached the good backend exactly once (POST bodies intact).
    if method == "POST":
        assert good.seen == [("POST", body) for body in bodies]
    else:
        assert len(good.seen) == len(bodies)


@pytest.mark.parametrize("on", [only(), only("reset")])
async def test_connect_failure_not_in_on_is_a_502(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    refused_port: Callable[[], int],
    on: frozenset[RetryCondition],
) -> None:
    good = Recorder("good")
    backends = [
        backend_config("dead", refused_port()),
        backend_config("good", await good.serve(serve_app)),
    ]
    proxy = await start_proxy(
        backends,
        health=NO_EJECTION,
        retries=RetriesConfig(on=on),
    )
    responses = [await request(proxy.port, get()) for _ in range(8)]
    failed = [r for r in responses if r.status != 200]
    assert all(bad_gateway(r) for r in failed)
    assert all(r.body == b"good:200" for r in responses if r.status == 200)
    # Exactly the requests round-robin sent to the dead backend failed, none was retried.
    assert len(failed) >= 1
    assert stats(proxy, "dead") == (len(failed), 0)
    assert stats(proxy, "good") == (0, 0)
    assert len(good.seen) == len(responses) - len(failed)


@pytest.mark.parametrize("attempts", [0, 1, 2, 3, 4])
async def test_attempts_limit_tries_in_order(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    refused_port: Callable[[], int],
    attempts: int,
) -> None:
    """Four dead backends before the good one: it takes four retries to get there."""
    good = Recorder("good")
    dead = [f"dead-{i}" for i in range(4)]
    backends = [backend_config(name, refused_port()) for name in dead]
    backends.append(backend_config("good", await good.serve(serve_app)))
    proxy = await start_proxy(
        backends, strategy=FIRST, health=NO_EJECTION, retries=RetriesConfig(attempts=attempts)
    )
    resp = await request(proxy.port, get())
    tried = dead[: attempts + 1]  # the first try and `attempts` retries, never one twice
    for name in dead:
        failures, _ = stats(proxy, name)
        assert failures == (1 if name in tried else 0), name
    if attempts >= len(dead):
        assert (resp.status, resp.body) == (200, b"good:200")
        assert stats(proxy, "good") == (0, 1)
    else:
        assert bad_gateway(resp)
        assert good.seen == []
    total_retries = sum(b.retries for b in proxy.runtime.stats.backends.values())
    assert total_retries == min(attempts, len(dead))


@pytest.mark.parametrize("attempts", [1, 4])
async def test_attempts_limit_under_round_robin(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    refused_port: Callable[[], int],
    attempts: int,
) -> None:
    good = Recorder("good")
    backends = [backend_config(f"dead-{i}", refused_port()) for i in range(4)]
    backends.append(backend_config("good", await good.serve(serve_app)))
    proxy = await start_proxy(
        backends, health=NO_EJECTION, retries=RetriesConfig(attempts=attempts, budget_percent=100)
    )
    responses = [await request(proxy.port, get()) for _ in range(20)]
    failed = [r for r in responses if r.status != 200]
    assert all(bad_gateway(r) for r in failed)
    failures = sum(stats(proxy, b.name)[0] for b in backends)
    retries = sum(stats(proxy, b.name)[1] for b in backends)
    # Per request: every failed try but the last was followed by a retry; a request that
    # failed ends on a failed try.
    assert failures == retries + len(failed)
    assert len(good.seen) == len(responses) - len(failed)
    exhausted = proxy.runtime.stats.retry_budget_exhausted
    if attempts == 1:
        # One retry per request always fits a 100% budget; with 4 of 5 dead, two tries
        # miss the good backend for some requests, not for all.
        assert exhausted == 0
        assert 0 < len(failed) < len(responses)
    else:
        # Five tries reach every backend: a request fails only when the budget (retries
        # <= requests here, ~2 needed per request) stops it, never for the attempt limit.
        assert len(failed) == exhausted
        assert [r.status for r in responses[:2]] == [200, 200]  # within the floor of 10
        assert retries <= max(10, len(responses))


# -- the budget ----------------------------------------------------------------------------


def expected_grants(requests: int, percent: float) -> list[bool]:
    """Request k (1-based) gets its retry while retries so far < max(10, k x percent/100)."""
    made = 0
    grants = []
    for k in range(1, requests + 1):
        allowed = made * 100 < max(10 * 100, k * percent)
        made += allowed
        grants.append(allowed)
    return grants


@pytest.mark.parametrize(("percent", "requests"), [(0.0, 15), (50.0, 30)])
async def test_budget_limits_retries(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    refused_port: Callable[[], int],
    percent: float,
    requests: int,
) -> None:
    """Every request first hits the dead backend (ejection off): each needs a retry, and
    the budget decides which get one. Sequential requests all fall in one 10 s window."""
    good = Recorder("good")
    backends = [
        backend_config("dead", refused_port()),
        backend_config("good", await good.serve(serve_app)),
    ]
    proxy = await start_proxy(
        backends,
        strategy=FIRST,
        health=NO_EJECTION,
        retries=RetriesConfig(budget_percent=percent),
    )
    grants = expected_grants(requests, percent)
    if percent == 0:
        assert grants == [True] * 10 + [False] * 5  # the floor, then nothing
    else:
        # 50%: the floor until request 20, then one retry every other request.
        assert grants[:20] == [True] * 10 + [False] * 10
        assert grants[20:] == [True, False] * 5
    started = time.monotonic()
    outcomes = []
    for _ in range(requests):
        resp = await request(proxy.port, get())
        outcomes.append(resp.status == 200)
        if resp.status != 200:
            assert bad_gateway(resp)
    assert time.monotonic() - started < 9  # one budget window (else the numbers shift)
    assert outcomes == grants
    assert stats(proxy, "dead") == (requests, 0)
    assert stats(proxy, "good") == (0, sum(grants))
    assert proxy.runtime.stats.retry_budget_exhausted == requests - sum(grants)


# -- retries on 502/503/504 ----------------------------------------------------------------


async def status_pair(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    retries: RetriesConfig,
    status: int = 503,
    b_status: int = 200,
) -> tuple[ProxyServer, Recorder, Recorder]:
    a, b = Recorder("a", status), Recorder("b", b_status)
    backends = [
        backend_config("a", await a.serve(serve_app)),
        backend_config("b", await b.serve(serve_app)),
    ]
    return await start_proxy(backends, strategy=FIRST, retries=retries), a, b


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_listed_status_on_get_goes_to_another_backend(
    start_proxy: ProxyFactory, serve_app: AppFactory, status: int
) -> None:
    proxy, a, b = await status_pair(
        start_proxy, serve_app, RetriesConfig(on=WITH_STATUSES), status=status
    )
    resp = await request(proxy.port, get())
    assert (resp.status, resp.body) == (200, b"b:200")
    assert len(a.seen) == len(b.seen) == 1
    assert stats(proxy, "b") == (0, 1)
    # The status the backend gave still counts as its answer in the metrics.
    assert proxy.runtime.stats.backends["a"].requests[(b"GET", 5)] == 1


@pytest.mark.parametrize(
    ("on", "status"),
    [
        (only("connect_failure", "reset"), 503),  # the default: statuses are opt-in
        (only("503"), 502),
        (only("503"), 504),
    ],
)
async def test_unlisted_status_reaches_the_client_intact(
    start_proxy: ProxyFactory, serve_app: AppFactory, on: frozenset[RetryCondition], status: int
) -> None:
    proxy, a, b = await status_pair(
        start_proxy,
        serve_app,
        RetriesConfig(on=on),
        status=status,
    )
    client = await RawClient.connect(proxy.port)
    await client.send(get())
    resp = await client.response()
    assert (resp.status, resp.body) == (status, b"a:%d" % status)
    # The connection is still good for the next request (the body was relayed in full).
    await client.send(get())
    assert (await client.response()).body == b"a:%d" % status
    await client.close()
    assert len(a.seen) == 2
    assert b.seen == []
    assert stats(proxy, "b") == (0, 0)


async def test_when_every_backend_fails_the_last_answer_is_relayed(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, a, b = await status_pair(
        start_proxy, serve_app, RetriesConfig(on=WITH_STATUSES), status=503, b_status=504
    )
    resp = await request(proxy.port, get())
    assert (resp.status, resp.body) == (504, b"b:504")  # no third try: both were attempted
    assert len(a.seen) == len(b.seen) == 1


async def test_post_is_not_resent_after_a_503_by_default(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, a, b = await status_pair(start_proxy, serve_app, RetriesConfig(on=WITH_STATUSES))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}).encode()
    resp = await request(proxy.port, post(body))
    assert (resp.status, resp.body) == (503, b"a:503")
    assert a.seen == [("POST", body)]
    assert b.seen == []


@pytest.mark.parametrize(
    ("size", "resent"),
    [(10, True), (REPLAY_LIMIT, True), (REPLAY_LIMIT + 1, False), (200_000, False)],
)
async def test_post_resent_with_non_idempotent_up_to_the_replay_limit(
    start_proxy: ProxyFactory, serve_app: AppFactory, size: int, resent: bool
) -> None:
    proxy, a, b = await status_pair(
        start_proxy, serve_app, RetriesConfig(on=WITH_STATUSES, non_idempotent=True)
    )
    body = bytes(i % 251 for i in range(size))
    resp = await request(proxy.port, post(body))
    assert a.seen == [("POST", body)]  # a read all of it before its 503
    if resent:
        assert (resp.status, resp.body) == (200, b"b:200")
        assert b.seen == [("POST", body)]  # byte for byte
    else:
        assert (resp.status, resp.body) == (503, b"a:503")
        assert b.seen == []


async def test_chunked_post_is_replayed_with_its_framing(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, a, b = await status_pair(
        start_proxy, serve_app, RetriesConfig(on=WITH_STATUSES, non_idempotent=True)
    )
    client = await RawClient.connect(proxy.port)
    await client.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"5\r\nhello\r\n")
    await client.send(b"6\r\n world\r\n0\r\n\r\n")
    resp = await client.response()
    await client.close()
    assert (resp.status, resp.body) == (200, b"b:200")
    assert a.seen == [("POST", b"hello world")]
    assert b.seen == [("POST", b"hello world")]


# -- connection reset before any response byte ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "size", "retries", "moved"),
    [
        ("GET", 0, RetriesConfig(), True),
        ("POST", 50, RetriesConfig(), False),  # an MCP call may have run: never twice
        ("POST", 50, RetriesConfig(non_idempotent=True), True),
        ("POST", REPLAY_LIMIT, RetriesConfig(non_idempotent=True), True),
        ("POST", REPLAY_LIMIT + 1, RetriesConfig(non_idempotent=True), False),  # not kept
        ("GET", 0, RetriesConfig(on=only("connect_failure")), False),
    ],
)
async def test_reset_on_a_fresh_connection(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    serve_raw: RawServe,
    method: str,
    size: int,
    retries: RetriesConfig,
    moved: bool,
) -> None:
    heads: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))  # then close, answering nothing

    b = Recorder("b")
    backends = [
        backend_config("a", await serve_raw(hang_up)),
        backend_config("b", await b.serve(serve_app)),
    ]
    proxy = await start_proxy(backends, strategy=FIRST, retries=retries)
    body = bytes(i % 251 for i in range(size))
    resp = await request(proxy.port, post(body) if method == "POST" else get())
    assert len(heads) == 1
    assert heads[0].startswith(method.encode() + b" / HTTP/1.1\r\n")
    if moved:
        assert (resp.status, resp.body) == (200, b"b:200")
        assert b.seen == [(method, body)]
        assert stats(proxy, "b") == (0, 1)
    else:
        assert bad_gateway(resp)
        assert b.seen == []


# -- session-bound requests stay on their backend ------------------------------------------


def mcp_ish_app(name: str, seen: list[str | None], session_status: int) -> web.Application:
    """Mints a session on a request without one; answers ``session_status`` within it."""

    async def handle(req: web.Request) -> web.Response:
        await req.read()
        session = req.headers.get("Mcp-Session-Id")
        seen.append(session)
        if session is None:
            result = {"jsonrpc": "2.0", "id": 1, "result": {"server": name}}
            return web.json_response(result, headers={"Mcp-Session-Id": f"{name}-session"})
        return web.Response(status=session_status, text=f"{name} busy")

    app = web.Application()
    app.router.add_route("*", "/mcp", handle)
    return app


async def test_session_bound_503_is_not_moved(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    seen_a: list[str | None] = []
    seen_b: list[str | None] = []
    backends = [
        backend_config("a", await serve_app(mcp_ish_app("a", seen_a, 503))),
        backend_config("b", await serve_app(mcp_ish_app("b", seen_b, 200))),
    ]
    # Every condition, every method: only the session binding keeps the requests on a.
    retries = RetriesConfig(on=WITH_STATUSES, non_idempotent=True)
    proxy = await start_proxy(backends, strategy=FIRST, retries=retries)
    initialize = json.dumps(INITIALIZE).encode()
    resp = await request(proxy.port, post(initialize, "/mcp"))
    assert resp.status == 200
    session = resp.header("mcp-session-id")
    assert session == "a-session"
    with_session = b"Mcp-Session-Id: a-session\r\n"
    ping = b'{"jsonrpc": "2.0", "id": 2, "method": "ping"}'
    for raw in (
        post(ping, "/mcp", with_session),
        b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n" + with_session + b"\r\n",
    ):
        resp = await request(proxy.port, raw)
        assert (resp.status, resp.body) == (503, b"a busy")
    assert seen_a == [None, "a-session", "a-session"]
    assert seen_b == []
    assert stats(proxy, "b") == (0, 0)


async def test_session_bound_reset_is_not_moved(
    start_proxy: ProxyFactory, serve_app: AppFactory, serve_raw: RawServe
) -> None:
    """The backend drops a session request on a fresh connection: 502, not another backend
    (which does not know the session)."""
    heads: list[bytes] = []

    async def mint_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        if b"mcp-session-id" in head.lower():
            return  # close without a byte
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        body = b'{"jsonrpc": "2.0", "id": 1, "result": {}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nMcp-Session-Id: a-session\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()

    seen_b: list[str | None] = []
    backends = [
        backend_config("a", await serve_raw(mint_then_hang_up)),
        backend_config("b", await serve_app(mcp_ish_app("b", seen_b, 200))),
    ]
    proxy = await start_proxy(
        backends, strategy=FIRST, retries=RetriesConfig(on=WITH_STATUSES, non_idempotent=True)
    )
    resp = await request(proxy.port, post(json.dumps(INITIALIZE).encode(), "/mcp"))
    assert resp.header("mcp-session-id") == "a-session"
    resp = await request(
        proxy.port, b"GET /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: a-session\r\n\r\n"
    )
    assert bad_gateway(resp)
    assert len(heads) == 2  # the fresh connection was not retried either
    assert seen_b == []


# -- real MCP SDK servers and clients ------------------------------------------------------


async def test_mcp_session_on_a_killed_backend_is_not_moved(start_proxy: ProxyFactory) -> None:
    async with Peers() as peers:
        backends = list(await asyncio.gather(peers.backend("mcp-a"), peers.backend("mcp-b")))
        proxy = await start_proxy([backend_config(b.name, b.port) for b in backends])
        url = f"http://127.0.0.1:{proxy.port}/mcp"
        async with mcp_session(url) as doomed, mcp_session(url) as kept:
            doomed_name = result_text(await doomed.call_tool("whoami", {}))
            kept_name = result_text(await kept.call_tool("whoami", {}))
            assert {doomed_name, kept_name} == {"mcp-a", "mcp-b"}  # round-robin
            victim = next(b for b in backends if b.name == doomed_name)

            killed = asyncio.Event()
            kept_answers: list[str] = []

            async def keep_calling() -> None:
                # Calls on the surviving backend's session, before, during and after the kill.
                for _ in range(500):
                    kept_answers.append(result_text(await kept.call_tool("whoami", {})))
                    if killed.is_set() and len(kept_answers) >= 20:
                        return

            caller = asyncio.create_task(keep_calling())
            await victim.kill()
            killed.set()
            with pytest.raises(MCPError) as failed:
                await doomed.call_tool("whoami", {})
            assert failed.value.error.message == "Session not found"  # 404, not moved
            # New sessions initialize on the survivor; round-robin still offers the victim
            # (it is not ejected yet), so some of these got there by a connect retry.
            for _ in range(4):
                assert result_text(await mcp_call(url, "whoami")) == kept_name
            await caller
            assert kept_answers == [kept_name] * len(kept_answers)
            assert result_text(await kept.call_tool("add", {"a": 2, "b": 3})) == "5"
        assert proxy.runtime.stats.backends[victim.name].connect_failures >= 1
        assert proxy.runtime.stats.backends[kept_name].retries >= 1


# -- the acceptance test: backends killed under load -----------------------------------------

LATENCY = 0.05
CLIENTS = 20
REQUESTS_PER_CLIENT = 30
KILL_AFTER = 150  # completed requests before the kill: well into the run

LATENCY_BACKEND = f"""
import asyncio, os, sys, threading
from aiohttp import web

name = sys.argv[1]

async def handle(request):
    await request.read()
    await asyncio.sleep({LATENCY})  # the backend's service time
    return web.Response(text=name)

async def main():
    app = web.Application()
    app.router.add_route("*", "/{{tail:.*}}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

# Never outlive the test: stdin reaches EOF when the parent goes away.
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
asyncio.run(main())
"""


@dataclass
class LatencyBackend:
    name: str
    process: asyncio.subprocess.Process
    port: int

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), 10)


@pytest.fixture
async def latency_backends() -> AsyncIterator[
    Callable[[list[str]], Awaitable[list[LatencyBackend]]]
]:
    started: list[LatencyBackend] = []

    async def start_one(name: str) -> LatencyBackend:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LATENCY_BACKEND,
            name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        backend = LatencyBackend(name, process, 0)
        started.append(backend)
        if not line.strip().isdigit():
            rest = await asyncio.wait_for(process.stdout.read(), 5)
            raise RuntimeError(f"backend {name} did not start: {(line + rest).decode()}")
        backend.port = int(line)
        return backend

    async def start(names: list[str]) -> list[LatencyBackend]:
        return list(await asyncio.gather(*(start_one(name) for name in names)))

    yield start
    for backend in started:
        await backend.kill()


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP response at all
    body: bytes


async def load(port: int, method: str, kill_now: asyncio.Event) -> list[Outcome]:
    """CLIENTS keep-alive clients, each sending REQUESTS_PER_CLIENT requests in turn."""
    outcomes: list[Outcome] = []
    if method == "POST":
        raw = post(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}', "/work")
    else:
        raw = get("/work")

    async def client() -> None:
        conn: RawClient | None = None
        for _ in range(REQUESTS_PER_CLIENT):
            if conn is None:
                conn = await RawClient.connect(port)
            started = time.monotonic()
            try:
                await conn.send(raw)
                resp = await conn.response(timeout=10)
            except (OSError, TimeoutError, ValueError):
                outcomes.append(Outcome(started, time.monotonic(), 0, b""))
                await conn.close()
                conn = None
            else:
                outcomes.append(Outcome(started, time.monotonic(), resp.status, resp.body))
                if conn.closed or resp.header("connection") == "close":
                    await conn.close()
                    conn = None
            if len(outcomes) >= KILL_AFTER:
                kill_now.set()
        if conn is not None:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return outcomes


async def backend_counters(admin_port: int) -> dict[tuple[str, str], float]:
    """(metric, backend) -> value of the per-backend counters, from the admin API."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    return {
        (sample.name, sample.labels["backend"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "backend" in sample.labels
    }


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_backend_killed_under_load_loses_only_its_in_flight_requests(
    latency_backends: Callable[[list[str]], Awaitable[list[LatencyBackend]]],
    tmp_path: Path,
    method: str,
) -> None:
    """A real ``mcplb run`` in front of three backend processes; one is SIGKILLed while
    twenty clients keep it busy. GETs it held are retried (reset is in ``on``): nothing is
    lost. POSTs it held may have run, so they fail, and they are the only failures: every
    request that started after the kill succeeds (connect failures move elsewhere)."""
    backends = await latency_backends(["a", "b", "c"])
    port, admin_port = free_port(), free_port()
    lines = [f'  - {{name: {b.name}, url: "http://127.0.0.1:{b.port}"}}' for b in backends]
    config = "\n".join(
        [
            f'listen: "127.0.0.1:{port}"',
            "backends:",
            *lines,
            "retries: {on: [connect_failure, reset]}",
            "log: {access: false}",
            f"admin: {{listen: '127.0.0.1:{admin_port}'}}",
            "",
        ]
    )
    async with Peers() as peers:
        await peers.proxy(config, tmp_path, port=port)
        victim = backends[1]
        kill_now = asyncio.Event()
        marks: dict[str, float] = {}

        async def killer() -> None:
            await kill_now.wait()
            marks["kill"] = time.monotonic()
            await victim.kill()
            marks["dead"] = time.monotonic()  # reaped: its sockets are gone

        killing = asyncio.create_task(killer())
        outcomes = await load(port, method, kill_now)
        await killing
        counters = await backend_counters(admin_port)
    kill, dead = marks["kill"], marks["dead"]
    assert len(outcomes) == CLIENTS * REQUESTS_PER_CLIENT
    failures = [o for o in outcomes if o.status != 200]
    after = [o for o in outcomes if o.started > dead]
    # The kill came mid-run: the victim had been serving, and plenty happened after it.
    assert any(o.body == b"b" for o in outcomes if o.ended < kill)
    assert len(after) >= CLIENTS * 10
    assert all(o.status == 200 for o in after)
    assert {o.body for o in after} == {b"a", b"c"}
    for o in failures:
        # Only requests that were in flight when the victim died, answered by a 502.
        assert o.started < dead and o.ended > kill, (o, kill, dead)
        assert o.status == 502 and json.loads(o.body)["error"] == "bad_gateway", o
    refused = counters["mcplb_upstream_connect_failures_total", victim.name]
    resent_to_victim = counters["mcplb_retries_total", victim.name]
    moved = sum(counters["mcplb_retries_total", b.name] for b in backends if b is not victim)
    assert refused >= 1  # requests kept coming to the victim until it was ejected
    if method == "GET":
        assert failures == []
        # GETs in flight on the victim's pooled connections were sent again (to the victim
        # on a fresh connection, which was refused, then elsewhere).
        assert resent_to_victim >= 1
        assert moved >= refused
    else:
        # At any moment about a third of the clients wait on the victim; at most all.
        assert 0 < len(failures) <= CLIENTS
        # No POST was sent twice: the only retries are refused connects moved elsewhere.
        assert resent_to_victim == 0
        assert moved == refused
