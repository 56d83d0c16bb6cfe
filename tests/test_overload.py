"""Admission control end to end: request slots per backend and per worker, the queue,
its timeout and bound, event stream caps, and a real ``mcplb run`` under a burst.

The backends are real aiohttp servers whose handlers park until the test releases them,
so which requests are at a backend and which wait in the proxy is known, not timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mcplb.proxy.config.schema import BackendConfig, StickyConfig
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.eventually import eventually
from tests.support.peers import INITIALIZE, MCP_HEADERS, Peers, free_port, wait_for_port
from tests.support.rawhttp import RawClient

LIMIT = 5.0  # seconds any single wait in these tests may take before it counts as a hang


class Gate:
    """Backends that record each request (by its X-Label) and hold it until released.

    One Gate may serve several apps (backends): ``active`` and ``peak`` then count
    requests across all of them, which is what a worker-wide limit bounds.
    """

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str]] = []  # (backend, label) in arrival order
        self.active = 0
        self.peak = 0
        self.opened = False
        self.releases: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.stop = asyncio.Event()  # ends every open event stream
        self.changed = asyncio.Condition()

    def labels(self, backend: str | None = None) -> list[str]:
        return [label for name, label in self.arrivals if backend in (None, name)]

    def release(self, *labels: str) -> None:
        for label in labels:
            self.releases[label].set()

    def open(self) -> None:
        """Let every request, present and future, through."""
        self.opened = True
        for event in self.releases.values():
            event.set()

    async def arrived(self, count: int) -> None:
        """Until ``count`` requests reached the backends in all."""
        async with asyncio.timeout(LIMIT), self.changed:
            await self.changed.wait_for(lambda: len(self.arrivals) >= count)

    async def _enter(self, name: str, label: str) -> None:
        self.arrivals.append((name, label))
        self.active += 1
        self.peak = max(self.peak, self.active)
        async with self.changed:
            self.changed.notify_all()
        if not self.opened:
            await self.releases[label].wait()

    def app(self, name: str) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            label = request.headers.get("X-Label", "")
            session = request.headers.get("Mcp-Session-Id")
            if session is None and body and json.loads(body).get("method") == "initialize":
                return web.json_response({"backend": name}, headers={"Mcp-Session-Id": name})
            try:
                await self._enter(name, label)
                if (
                    request.path == "/stream"
                    or "text/event-stream" in request.headers.get("Accept", "").split(",")[0]
                ):
                    return await self._stream(request, name, label)
            finally:
                self.active -= 1
            return web.json_response({"backend": name, "label": label})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def _stream(self, request: web.Request, name: str, label: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {name} {label}\n\n".encode())
        await self.stop.wait()
        return response


@pytest.fixture
async def gate(serve_app: AppFactory) -> AsyncIterator[Gate]:
    g = Gate()
    yield g
    # Before the servers stop (this teardown runs first): nothing may stay parked.
    g.open()
    g.stop.set()


async def serve(serve_app: AppFactory, gate: Gate, name: str, **limits: Any) -> BackendConfig:
    port = await serve_app(gate.app(name))
    return dataclasses.replace(backend_config(name, port), **limits)


async def no_leak(proxy: ProxyServer) -> None:
    """Every slot came back and nothing waits."""
    runtime = proxy.runtime
    admission = runtime.cluster.admission

    def settled() -> bool:
        return (
            all(b.in_flight == 0 and b.streams == 0 for b in runtime.cluster.backends)
            and admission.requests == 0
            and admission.streams == 0
            and not admission.queue
        )

    await eventually(settled, within=LIMIT)


def queued(proxy: ProxyServer) -> int:
    return len(proxy.runtime.cluster.admission.queue)


def queue_holds(proxy: ProxyServer, count: int) -> Callable[[], bool]:
    return lambda: queued(proxy) == count


class Client:
    """Labelled requests to one proxy, each on its own connection."""

    def __init__(self, http: aiohttp.ClientSession, proxy: ProxyServer) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{proxy.port}"

    async def call(
        self, label: str, session: str | None = None, path: str = "/mcp"
    ) -> tuple[int, dict[str, str], Any]:
        headers = {**MCP_HEADERS, "X-Label": label}
        if session is not None:
            headers["Mcp-Session-Id"] = session
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": label}}
        async with self.http.post(self.base + path, json=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.json()

    def start(self, label: str, **kwargs: Any) -> asyncio.Task[tuple[int, dict[str, str], Any]]:
        return asyncio.create_task(self.call(label, **kwargs))

    async def initialize(self) -> str:
        async with self.http.post(self.base + "/mcp", json=INITIALIZE, headers=MCP_HEADERS) as r:
            assert r.status == 200
            session: str = r.headers["Mcp-Session-Id"]
            return session


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def assert_overloaded(status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert headers["Content-Type"] == "application/json"
    assert body["error"] == "overloaded"


# -- per-backend limit and the queue ------------------------------------------------------


async def test_excess_requests_queue_and_proceed_in_arrival_order(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([await serve(serve_app, gate, "a", max_connections=2)])
    client = Client(http, proxy)
    tasks = [client.start("r0"), client.start("r1")]
    await gate.arrived(2)
    for n in (2, 3, 4):  # one at a time, so that the queue order is known
        tasks.append(client.start(f"r{n}"))
        await eventually(queue_holds(proxy, n - 1), within=LIMIT)
    stats = proxy.runtime.stats
    assert stats.queued == 3 and queued(proxy) == 3
    assert proxy.runtime.cluster.backends.get("a").in_flight == 2  # type: ignore[union-attr]
    assert sorted(gate.labels()) == ["r0", "r1"]
    # Each freed slot goes to the oldest waiter.
    for n in (2, 3, 4):
        gate.release(f"r{n - 2}")
        await gate.arrived(n + 1)
        assert gate.labels()[-1] == f"r{n}"
        assert queued(proxy) == 4 - n
        assert gate.peak == 2
    gate.release("r3", "r4")
    results = await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
    assert [(s, b["label"]) for s, _, b in results] == [(200, f"r{n}") for n in range(5)]
    assert stats.queued == 3 and not stats.rejected
    assert sum(stats.queue_wait.counts) == 3 and stats.queue_wait.sum > 0
    await no_leak(proxy)


async def test_a_backend_coming_back_takes_queued_requests(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    """Nobody releases a slot on a backend that returns (undrained here, or readmitted by
    health): the sweep offers its free slots to the queue."""
    a = await serve(serve_app, gate, "a", max_connections=1)
    b = await serve(serve_app, gate, "b", max_connections=1)
    proxy = await start_proxy([a, b])
    proxy.state.set_draining("b", True)
    client = Client(http, proxy)
    first = client.start("r0")
    await gate.arrived(1)
    waiting = client.start("r1")
    await eventually(queue_holds(proxy, 1), within=LIMIT)
    proxy.state.set_draining("b", False)
    await gate.arrived(2)  # well before queue_timeout (5 s), with r0 still parked at a
    assert gate.arrivals == [("a", "r0"), ("b", "r1")]
    gate.open()
    assert [r[0] for r in await asyncio.gather(first, waiting)] == [200, 200]
    await no_leak(proxy)


async def test_queued_requests_time_out_with_503(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    timeout = 0.3
    proxy = await start_proxy(
        [await serve(serve_app, gate, "a", max_connections=1)], limits={"queue_timeout": timeout}
    )
    client = Client(http, proxy)
    first = client.start("r0")
    await gate.arrived(1)
    began = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(client.call("r1"), client.call("r2")), LIMIT)
    elapsed = time.monotonic() - began
    for result in results:
        assert_overloaded(*result)
        assert "queue_timeout" in result[2]["message"]
    assert timeout - 0.01 <= elapsed < timeout + 1.5
    assert gate.labels() == ["r0"]  # the backend never saw them
    stats = proxy.runtime.stats
    assert stats.rejected == {"queue_timeout": 2} and stats.queued == 2
    assert sum(stats.queue_wait.counts) == 2 and stats.queue_wait.sum >= 2 * (timeout - 0.01)
    assert stats.proxy_errors["503"] == 2
    assert queued(proxy) == 0
    gate.release("r0")
    status, _, body = await asyncio.wait_for(first, LIMIT)
    assert (status, body["label"]) == (200, "r0")
    await no_leak(proxy)


async def test_a_full_queue_refuses_at_once(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        [await serve(serve_app, gate, "a", max_connections=1)], limits={"max_queue": 1}
    )
    client = Client(http, proxy)
    tasks = [client.start("r0")]
    await gate.arrived(1)
    tasks.append(client.start("r1"))
    await eventually(lambda: queued(proxy) == 1, within=LIMIT)
    began = time.monotonic()
    status, headers, body = await asyncio.wait_for(client.call("r2"), LIMIT)
    assert time.monotonic() - began < 1.0  # not after the 5 s queue timeout
    assert_overloaded(status, headers, body)
    assert "queued" in body["message"]
    stats = proxy.runtime.stats
    assert stats.rejected == {"queue_full": 1} and stats.queued == 1
    gate.open()
    results = await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
    assert [(s, b["label"]) for s, _, b in results] == [(200, "r0"), (200, "r1")]
    assert gate.labels() == ["r0", "r1"]
    await no_leak(proxy)


async def test_max_queue_zero_never_waits(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        [await serve(serve_app, gate, "a", max_connections=1)], limits={"max_queue": 0}
    )
    client = Client(http, proxy)
    first = client.start("r0")
    await gate.arrived(1)
    assert_overloaded(*await asyncio.wait_for(client.call("r1"), LIMIT))
    assert proxy.runtime.stats.rejected == {"queue_full": 1}
    assert proxy.runtime.stats.queued == 0
    gate.release("r0")
    assert (await asyncio.wait_for(first, LIMIT))[0] == 200
    await no_leak(proxy)


async def test_full_backends_are_skipped_before_anyone_queues(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    """Two backends of one slot each: two requests spread, the third waits."""
    backends = [await serve(serve_app, gate, n, max_connections=1) for n in ("a", "b")]
    proxy = await start_proxy(backends, strategy="least_connections")
    client = Client(http, proxy)
    tasks = [client.start("r0")]
    await gate.arrived(1)
    tasks.append(client.start("r1"))
    await gate.arrived(2)
    assert {name for name, _ in gate.arrivals} == {"a", "b"}
    tasks.append(client.start("r2"))
    await eventually(lambda: queued(proxy) == 1, within=LIMIT)
    holder = gate.arrivals[0][0]
    gate.release("r0")
    await gate.arrived(3)
    assert gate.arrivals[2] == (holder, "r2")  # it took the slot that freed
    gate.open()
    results = await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
    assert [s for s, _, _ in results] == [200, 200, 200]
    assert gate.peak == 2
    await no_leak(proxy)


# -- the worker's limit ---------------------------------------------------------------------


async def test_max_in_flight_spans_backends(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    backends = [await serve(serve_app, gate, n) for n in ("a", "b")]
    proxy = await start_proxy(backends, limits={"max_in_flight": 2})
    client = Client(http, proxy)
    tasks = [client.start("r0"), client.start("r1")]
    await gate.arrived(2)
    assert {name for name, _ in gate.arrivals} == {"a", "b"}  # round robin spread them
    for n in (2, 3, 4):
        tasks.append(client.start(f"r{n}"))
        await eventually(queue_holds(proxy, n - 1), within=LIMIT)
    assert len(gate.arrivals) == 2 and gate.peak == 2
    gate.release("r1")
    await gate.arrived(3)
    assert gate.labels()[-1] == "r2" and queued(proxy) == 2
    gate.open()
    results = await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
    assert [(s, b["label"]) for s, _, b in results] == [(200, f"r{n}") for n in range(5)]
    assert gate.peak == 2
    assert proxy.runtime.stats.queued == 3 and not proxy.runtime.stats.rejected
    await no_leak(proxy)


# -- sessions wait for their own backend ---------------------------------------------------


async def test_session_request_waits_for_its_own_backend(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    backends = [await serve(serve_app, gate, n, max_connections=1) for n in ("a", "b")]
    proxy = await start_proxy(backends, sticky=StickyConfig(store="memory"))
    client = Client(http, proxy)
    session = await client.initialize()  # the backend's name is the session id
    other = "b" if session == "a" else "a"
    busy = client.start("s1", session=session)
    await gate.arrived(1)
    waiting = client.start("s2", session=session)
    await eventually(lambda: queued(proxy) == 1, within=LIMIT)
    # The other backend is free: requests without a session still pass...
    free = client.start("free")
    await gate.arrived(2)
    assert gate.arrivals[1] == (other, "free")
    gate.release("free")
    assert (await asyncio.wait_for(free, LIMIT))[2] == {"backend": other, "label": "free"}
    # ...but the session's request did not move there.
    assert queued(proxy) == 1 and gate.labels(other) == ["free"]
    gate.release("s1")
    await gate.arrived(3)
    assert gate.arrivals[2] == (session, "s2")
    gate.release("s2")
    for task, label in ((busy, "s1"), (waiting, "s2")):
        status, _, body = await asyncio.wait_for(task, LIMIT)
        assert (status, body) == (200, {"backend": session, "label": label})
    assert proxy.runtime.stats.queued == 1
    await no_leak(proxy)


async def test_worker_slot_freed_elsewhere_admits_a_session_request(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    """max_in_flight 1: a session request queued for backend b must take the worker slot
    a request on backend a frees (b itself was never full)."""
    backends = [await serve(serve_app, gate, n) for n in ("a", "b")]
    proxy = await start_proxy(
        backends,
        sticky=StickyConfig(store="memory"),
        strategy="round_robin",
        limits={"max_in_flight": 1, "queue_timeout": 2.0},
    )
    client = Client(http, proxy)
    sessions = {await client.initialize(), await client.initialize()}
    assert sessions == {"a", "b"}  # round robin spread the two sessions
    first = client.start("on-a", session="a")
    await gate.arrived(1)
    second = client.start("on-b", session="b")
    await eventually(lambda: queued(proxy) == 1, within=LIMIT)
    gate.release("on-a", "on-b")
    results = await asyncio.wait_for(asyncio.gather(first, second), LIMIT)
    assert [(s, b) for s, _, b in results] == [
        (200, {"backend": "a", "label": "on-a"}),
        (200, {"backend": "b", "label": "on-b"}),
    ]
    assert not proxy.runtime.stats.rejected and gate.peak == 1
    await no_leak(proxy)


# -- event streams ------------------------------------------------------------------------


async def open_stream(
    http: aiohttp.ClientSession, proxy: ProxyServer, label: str, path: str = "/mcp"
) -> aiohttp.ClientResponse:
    """A GET event stream through the proxy, once its first event arrived."""
    headers = {"Accept": "text/event-stream", "X-Label": label}
    resp = await http.get(f"http://127.0.0.1:{proxy.port}{path}", headers=headers)
    if resp.status == 200:
        event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), LIMIT)
        assert event.startswith(b"data: ") and event.endswith(f" {label}\n\n".encode())
    return resp


async def test_streams_have_their_own_cap_and_never_queue(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    gate.open()
    proxy = await start_proxy([await serve(serve_app, gate, "a", max_connections=1, max_streams=2)])
    backend = proxy.runtime.cluster.backends.get("a")
    assert backend is not None
    streams = [await open_stream(http, proxy, f"s{n}") for n in range(2)]
    assert [s.status for s in streams] == [200, 200]
    assert (backend.in_flight, backend.streams) == (2, 2)
    began = time.monotonic()
    refused = await open_stream(http, proxy, "s2")
    assert refused.status == 503 and time.monotonic() - began < 1.0
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"] == "too_many_streams"
    refused.release()
    assert gate.labels() == ["s0", "s1"]
    stats = proxy.runtime.stats
    assert stats.rejected == {"max_streams": 1} and stats.queued == 0
    # Two open streams do not use the single request slot.
    client = Client(http, proxy)
    results = await asyncio.wait_for(asyncio.gather(client.call("r0"), client.call("r1")), LIMIT)
    assert [s for s, _, _ in results] == [200, 200]
    assert (backend.in_flight, backend.streams) == (2, 2)
    # A client closing its stream frees its stream slot.
    streams[0].close()
    await eventually(lambda: backend.streams == 1, within=LIMIT)
    replacement = await open_stream(http, proxy, "s3")
    assert replacement.status == 200
    for stream in (streams[1], replacement):
        stream.close()
    await no_leak(proxy)


async def test_worker_stream_cap(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    gate.open()
    backends = [await serve(serve_app, gate, n) for n in ("a", "b")]
    proxy = await start_proxy(backends, limits={"max_streams": 1})
    first = await open_stream(http, proxy, "s0")
    assert first.status == 200
    second = await open_stream(http, proxy, "s1")  # the other backend: the worker is full
    assert second.status == 503 and (await second.json())["error"] == "too_many_streams"
    second.release()
    assert proxy.runtime.stats.rejected == {"max_streams": 1}
    # The backend that ends its stream frees the slot as well as a client that leaves.
    gate.stop.set()
    assert await asyncio.wait_for(first.content.read(), LIMIT) == b""
    first.release()
    await no_leak(proxy)
    gate.stop.clear()
    again = await open_stream(http, proxy, "s2")
    assert again.status == 200
    again.close()
    await no_leak(proxy)


async def test_a_request_for_a_stream_waits_for_a_request_slot_until_it_is_one(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    """Accept: text/event-stream is the client's word: the request takes a request slot
    (max_connections counts it) until the backend's answer is a stream (issue 29, N7)."""
    proxy = await start_proxy(
        [await serve(serve_app, gate, "a", max_connections=1)], limits={"queue_timeout": 5.0}
    )
    client = Client(http, proxy)
    busy = client.start("r0")
    await gate.arrived(1)
    gate.release("s0")
    opening = asyncio.create_task(open_stream(http, proxy, "s0", path="/sse"))
    try:
        await eventually(lambda: queued(proxy) == 1, within=LIMIT)
        gate.release("r0")
        await asyncio.wait_for(busy, LIMIT)
        stream = await asyncio.wait_for(opening, LIMIT)
        assert stream.status == 200
        # A stream now: its request slot is free for the next request.
        gate.release("r1")
        await asyncio.wait_for(client.start("r1"), LIMIT)
        stream.close()
    finally:
        gate.release("r0")
        await asyncio.wait_for(busy, LIMIT)
        await no_leak(proxy)


async def test_a_response_turning_into_a_stream_frees_its_request_slot(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([await serve(serve_app, gate, "a", max_connections=1)])
    backend = proxy.runtime.cluster.backends.get("a")
    assert backend is not None
    client = Client(http, proxy)
    headers = {**MCP_HEADERS, "X-Label": "p0"}

    async def post() -> aiohttp.ClientResponse:
        url = f"http://127.0.0.1:{proxy.port}/stream"
        return await http.post(url, json={}, headers=headers)

    streaming = asyncio.create_task(post())
    await gate.arrived(1)
    waiting = client.start("r1")
    await eventually(lambda: queued(proxy) == 1, within=LIMIT)
    gate.release("p0")  # the backend answers p0 with text/event-stream
    stream = await asyncio.wait_for(streaming, LIMIT)
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert await asyncio.wait_for(stream.content.readuntil(b"\n\n"), LIMIT) == b"data: a p0\n\n"
    await gate.arrived(2)  # the queued request got the slot p0 gave up
    assert gate.labels() == ["p0", "r1"] and queued(proxy) == 0
    assert (backend.in_flight, backend.streams) == (2, 1)
    gate.release("r1")
    assert (await asyncio.wait_for(waiting, LIMIT))[0] == 200
    assert (backend.in_flight, backend.streams) == (1, 1)
    admission = proxy.runtime.cluster.admission
    assert admission.requests == 0 and admission.streams == 1
    gate.stop.set()
    assert await asyncio.wait_for(stream.content.read(), LIMIT) == b""
    stream.release()
    await no_leak(proxy)


# -- clients that leave ---------------------------------------------------------------------


async def test_a_client_leaving_the_queue_leaves_no_trace(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy([await serve(serve_app, gate, "a", max_connections=1)])
    client = Client(http, proxy)
    first = client.start("r0")
    await gate.arrived(1)
    leaver = await RawClient.connect(proxy.port)
    await leaver.send(
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nX-Label: gone\r\nContent-Length: 2\r\n\r\n{}"
    )
    await eventually(lambda: queued(proxy) == 1, within=LIMIT)
    await leaver.close()
    await eventually(lambda: queued(proxy) == 0, within=LIMIT)
    stats = proxy.runtime.stats
    assert stats.queued == 1 and sum(stats.queue_wait.counts) == 1 and not stats.rejected
    gate.release("r0")
    assert (await asyncio.wait_for(first, LIMIT))[0] == 200
    await no_leak(proxy)
    # The slot is really free: the next request goes straight through.
    gate.release("r1")
    status, _, body = await asyncio.wait_for(client.call("r1"), LIMIT)
    assert (status, body["label"]) == (200, "r1")
    assert gate.labels() == ["r0", "r1"] and stats.queued == 1
    await no_leak(proxy)


async def test_keep_alive_connection_is_served_after_its_queue_timeout(
    start_proxy: ProxyFactory, serve_app: AppFactory, gate: Gate
) -> None:
    """A 503 from the queue keeps a well-framed connection usable."""
    proxy = await start_proxy(
        [await serve(serve_app, gate, "a", max_connections=1)], limits={"queue_timeout": 0.2}
    )
    holder = await RawClient.connect(proxy.port)
    await holder.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Label: r0\r\n\r\n")
    await gate.arrived(1)
    conn = await RawClient.connect(proxy.port)
    await conn.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Label: r1\r\n\r\n")
    refused = await conn.response()
    assert refused.status == 503 and json.loads(refused.body)["error"] == "overloaded"
    assert refused.header("connection") != "close"
    gate.release("r0", "r2")
    assert (await holder.response()).status == 200
    await conn.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Label: r2\r\n\r\n")
    answered = await conn.response()
    assert answered.status == 200 and json.loads(answered.body)["label"] == "r2"
    await holder.close()
    await conn.close()
    assert gate.labels() == ["r0", "r2"]
    await no_leak(proxy)


# -- the acceptance test: a real mcplb under a bounded burst --------------------------------


class Steady:
    """A backend with a fixed latency that counts how many requests it serves at once."""

    LATENCY = 0.1

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.served = 0

    @staticmethod
    def body(label: str) -> bytes:
        return (label + ":" + "0123456789abcdef" * 1024 + "\n").encode()

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await asyncio.sleep(self.LATENCY)  # the work this backend does per request
            finally:
                self.active -= 1
            self.served += 1
            return web.Response(body=self.body(request.headers["X-Label"]))

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_overload_queues_then_refuses_while_accepted_requests_complete(
    serve_app: AppFactory, tmp_path: Path
) -> None:
    steady = Steady()
    backend_port = await serve_app(steady.app())
    port, admin_port = free_port(), free_port()
    max_connections, clients, rounds = 4, 60, 3
    config = f"""
listen: "127.0.0.1:{port}"
admin: {{listen: "127.0.0.1:{admin_port}"}}
log: {{access: false}}
backends:
  - {{name: slow, url: "http://127.0.0.1:{backend_port}", max_connections: {max_connections}}}
limits:
  queue_timeout: 1s
  max_queue: 50
"""
    outcomes: defaultdict[str, int] = defaultdict(int)
    failures: list[str] = []

    async def one_client(n: int) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=LIMIT + 5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            for r in range(rounds):
                label = f"c{n}-{r}"
                try:
                    async with http.post(
                        f"http://127.0.0.1:{port}/mcp",
                        data=json.dumps({"jsonrpc": "2.0", "id": r, "method": "ping"}),
                        headers={**MCP_HEADERS, "X-Label": label},
                    ) as resp:
                        body = await resp.read()
                        if resp.status == 200 and body == Steady.body(label):
                            outcomes["ok"] += 1
                        elif (
                            resp.status == 503
                            and resp.headers.get("Retry-After") == "1"
                            and json.loads(body)["error"] == "overloaded"
                        ):
                            outcomes["overloaded"] += 1
                        else:
                            failures.append(f"{label}: {resp.status} {body[:80]!r}")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    failures.append(f"{label}: {exc!r}")

    async with Peers() as peers:
        proxy = await peers.proxy(config, tmp_path, port=port)
        await wait_for_port("127.0.0.1", admin_port, process=proxy)
        await asyncio.gather(*(one_client(n) for n in range(clients)))
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp,
        ):
            assert resp.status == 200
            metrics = metric_samples(await resp.text())

    assert not failures, failures[:10]
    assert outcomes["ok"] + outcomes["overloaded"] == clients * rounds
    assert outcomes["ok"] > 0 and outcomes["overloaded"] > 0
    # Only what was accepted reached the backend, never more at once than allowed.
    assert steady.served == outcomes["ok"]
    assert steady.peak <= max_connections
    assert metrics[("mcplb_queued_total", ())] > 0
    timed_out = metrics.get(("mcplb_rejected_total", (("reason", "queue_timeout"),)), 0)
    full = metrics.get(("mcplb_rejected_total", (("reason", "queue_full"),)), 0)
    assert timed_out + full == outcomes["overloaded"]
    assert timed_out > 0 and full > 0
    assert metrics[("mcplb_queue_length", ())] == 0
    assert metrics[("mcplb_queue_wait_seconds_count", ())] == metrics[("mcplb_queued_total", ())]
    assert "Traceback" not in proxy.output()
