"""timeouts.sse_keepalive: a quiet event stream gets SSE comment lines from the proxy, only
between events (never inside one), none when it is off, and none on a stream framed by
Content-Length (whose length would no longer match). The events the client parses are the
backend's, unchanged."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import AppFactory, ProxyFactory, backend_config

KEEP_ALIVE = b": keep-alive\n\n"
KEEPALIVE = 1.0  # seconds; the proxy's sweep looks twice a second


def stream_app(gates: list[asyncio.Event]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: a\n\n")
        await gates[0].wait()
        await response.write(b"data: par")  # an event cut in two by a quiet spell
        await gates[1].wait()
        await response.write(b"tial\n\n")
        await response.write(b"data: end\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", handler)
    return app


async def read_until(content: aiohttp.StreamReader, needle: bytes, seen: bytearray) -> None:
    async with asyncio.timeout(10):
        while needle not in seen:
            seen += await content.readany()


def events(raw: bytes) -> list[bytes]:
    out = []
    for block in raw.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data:
            out.append(b"\n".join(data))
    return out


async def test_keepalive_comments_only_between_events(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    port = await serve_app(stream_app(gates))
    proxy = await start_proxy([backend_config("a", port)], timeouts={"sse_keepalive": KEEPALIVE})
    seen = bytearray()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{proxy.port}/mcp", data=b"{}") as response,
    ):
        await read_until(response.content, b"data: a\n\n" + KEEP_ALIVE, seen)
        gates[0].set()
        await read_until(response.content, b"data: par", seen)
        # Inside an event: however quiet, no comment may be written (it would be data).
        await asyncio.sleep(3 * KEEPALIVE)
        assert not seen.endswith(KEEP_ALIVE)
        gates[1].set()
        async with asyncio.timeout(10):
            seen += await response.content.read()
    raw = bytes(seen)
    assert b"data: partial\n\n" in raw  # the cut event arrived whole, nothing inside it
    assert events(raw) == [b"a", b"partial", b"end"]
    assert raw.replace(KEEP_ALIVE, b"") == b"data: a\n\ndata: partial\n\ndata: end\n\n"


@pytest.mark.parametrize("framed", ["off", "content-length"])
async def test_no_keepalive_when_off_or_length_framed(
    start_proxy: ProxyFactory, serve_app: AppFactory, framed: str
) -> None:
    gate = asyncio.Event()
    body = b"data: a\n\ndata: b\n\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if framed == "content-length":
            response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:9])
        await gate.wait()
        await response.write(body[9:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", handler)
    port = await serve_app(app)
    keepalive = 0.0 if framed == "off" else KEEPALIVE
    proxy = await start_proxy([backend_config("a", port)], timeouts={"sse_keepalive": keepalive})
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{proxy.port}/mcp", data=b"{}") as response,
    ):
        seen = bytearray()
        await read_until(response.content, b"data: a\n\n", seen)
        await asyncio.sleep(3 * KEEPALIVE)  # quiet long enough for several keep-alives
        gate.set()
        async with asyncio.timeout(10):
            seen += await response.content.read()
    assert bytes(seen) == body
