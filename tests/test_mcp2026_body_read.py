"""A 2026-07-28 POST is read before it is routed (route.read_before_routing): while it
waits for its body, the client's pace is judged as an upload's (timeouts.body,
limits.min_body_rate), and no backend is reached before the body was checked."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import ProxyFactory, backend_config
from tests.support.rawhttp import RawClient
from tests.test_hostile_input import RawServe, Recorder, closed

MODERN_HEAD = (
    b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/list\r\n"
)


async def test_a_modern_body_read_before_routing_is_held_to_timeouts_body(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    recorder = Recorder()
    proxy = await start_proxy(
        [backend_config("a", await serve_raw(recorder.handle))],
        timeouts={"body": 1.0},
        limits={"min_body_rate": 0},
    )
    client = await RawClient.connect(proxy.port)
    started = asyncio.get_running_loop().time()
    await client.send(MODERN_HEAD + b"Content-Length: 100\r\n\r\n" + b'{"jsonrpc":"2.0",')
    resp = await client.response(timeout=4)
    assert resp.status == 408 and json.loads(resp.body)["error"] == "request_timeout"
    assert 1.0 <= asyncio.get_running_loop().time() - started < 3.0
    assert await closed(client)
    assert recorder.connections == 0  # held before routing: no backend was reached


async def test_a_modern_body_that_arrives_in_pieces_is_checked_then_routed(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    recorder = Recorder()
    proxy = await start_proxy([backend_config("a", await serve_raw(recorder.handle))])
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
    client = await RawClient.connect(proxy.port)
    await client.send(MODERN_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    await client.send(body[10:])
    resp = await client.response(timeout=4)
    assert resp.status == 200
    assert recorder.requests and recorder.requests[0].body == body
    await client.close()


async def test_a_modern_post_expecting_100_continue_gets_it_from_the_proxy(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """The proxy waits for the body, the client for 100 Continue: the proxy sends it, and
    the backend, which gets the whole body, sees no Expect field (no second 100)."""
    recorder = Recorder()
    proxy = await start_proxy([backend_config("a", await serve_raw(recorder.handle))])
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
    client = await RawClient.connect(proxy.port)
    await client.send(
        MODERN_HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(body)
    resp = await client.response(timeout=4)
    assert resp.status == 200
    assert recorder.requests[0].body == body and recorder.requests[0].values(b"expect") == []
    await client.close()
