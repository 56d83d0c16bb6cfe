"""Which requests are streams is the backend's answer, not the client's header (issue 29,
N7). A GET with ``Accept: text/event-stream`` answered with plain JSON is a request and
counts against ``max_connections``; a POST answered with an event stream counts against
``max_streams``, and one over the cap gets 503. Raw sockets through a real proxy."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from tests.conftest import AppFactory, ProxyFactory, backend_config


class Backend:
    """Slow JSON on GET /slow (whatever Accept says); an endless event stream on POST."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0  # requests running at once, at most
        self.streams = 0
        self.most_streams = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/slow", self.slow)
        app.router.add_post("/sse", self.sse)
        return app

    async def slow(self, request: web.Request) -> web.Response:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.3)
        finally:
            self.running -= 1
        return web.json_response({"ok": True})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.streams += 1
        self.most_streams = max(self.most_streams, self.streams)
        try:
            for _ in range(200):  # a write fails once the proxy dropped the stream
                await response.write(b"data: open\n\n")
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            self.streams -= 1
        return response


async def head_of(port: int, raw: bytes) -> tuple[bytes, asyncio.StreamWriter]:
    """The response head to ``raw`` (the body may never end), and the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head, writer


async def test_a_get_asking_for_a_stream_counts_as_a_request_until_it_is_one(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    backend = Backend()
    config = backend_config("a", await serve_app(backend.app()))
    config = dataclasses.replace(config, max_connections=1)
    proxy = await start_proxy([config], limits={"queue_timeout": 30.0})
    raw = b"GET /slow HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    results = await asyncio.gather(*(head_of(proxy.port, raw) for _ in range(8)))
    for head, writer in results:
        assert head.startswith(b"HTTP/1.1 200 "), head
        writer.close()
    assert backend.most == 1  # max_connections held: one at a time


async def test_posts_answered_with_streams_count_against_max_streams(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    backend = Backend()
    config = backend_config("a", await serve_app(backend.app()))
    config = dataclasses.replace(config, max_streams=2)
    proxy = await start_proxy([config])
    raw = b"POST /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    results = []
    for _ in range(6):  # one after another: each answer known before the next is sent
        results.append(await head_of(proxy.port, raw))
    statuses = [head.split(b" ", 2)[1] for head, _ in results]
    assert statuses.count(b"200") == 2, statuses
    assert statuses.count(b"503") == 4, statuses
    admission = proxy.runtime.cluster.admission
    assert admission.streams == 2
    assert proxy.runtime.stats.rejected["max_streams"] == 4
    for _, writer in results:
        writer.close()
    for _ in range(200):  # the refused streams' backend connections were dropped
        if backend.streams <= 2:
            break
        await asyncio.sleep(0.02)
    assert backend.streams <= 2
