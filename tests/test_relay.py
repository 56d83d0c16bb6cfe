"""The HTTP/1.1 relay, byte by byte, against real aiohttp and scripted TCP backends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from mcplb.proxy.config.schema import RetriesConfig
from tests.conftest import AppFactory, ProxyFactory, RawHandler, backend_config
from tests.interop import MISSING, NODE
from tests.support.rawhttp import RawClient, request

RawServe = Callable[[RawHandler], Awaitable[int]]


async def echo(req: web.Request) -> web.Response:
    body = await req.read()
    return web.json_response(
        {
            "method": req.method,
            "path": req.path_qs,
            "headers": {k.lower(): v for k, v in req.headers.items()},
            "body": body.decode("latin-1"),
            "chunked": req.headers.get("Transfer-Encoding", "") == "chunked",
        }
    )


def echo_app(name: str = "a") -> web.Application:
    app = web.Application()

    async def named(req: web.Request) -> web.Response:
        return web.Response(text=name)

    async def chunked(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        for part in (b"one,", b"two,", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def status(req: web.Request) -> web.Response:
        code = int(req.match_info["code"])
        return web.Response(status=code, headers={"ETag": '"v1"'})

    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/name", named)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/status/{code}", status)
    return app


@pytest.fixture
async def echo_port(serve_app: AppFactory) -> int:
    return await serve_app(echo_app())


async def test_content_length_request_body(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)])
    resp = await request(
        proxy.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    )
    seen = json.loads(resp.body)
    assert resp.status == 200
    assert seen["body"] == "hello world"
    assert seen["headers"]["content-length"] == "11"


async def test_chunked_request_body_is_reframed(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)])
    resp = await request(
        proxy.port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    seen = json.loads(resp.body)
    assert seen["body"] == "hello world"
    assert seen["chunked"] is True


async def test_close_delimited_response_is_chunked_to_the_client(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    proxy = await start_proxy([backend_config("a", await serve_raw(handler))])
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await client.response()
    assert first.body == b"until the end"
    assert first.header("transfer-encoding") == "chunked"
    # The client connection outlives the backend's: a second request works on it.
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response()).body == b"until the end"
    await client.close()


async def test_head_has_no_body_and_connection_is_reused(
    start_proxy: ProxyFactory, echo_port: int
) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)])
    client = await RawClient.connect(proxy.port)
    await client.send(b"HEAD /name HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await client.response(head=True)
    assert head.status == 200
    assert head.header("content-length") == "1"
    await client.send(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
    after = await client.response()
    assert after.body == b"a"
    await client.close()
    # One upstream connection served both: HEAD left it in a clean state.
    assert len(proxy.runtime.cluster.pool(proxy.runtime.cluster.backends.by_name["a"]).idle) == 1


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_statuses(start_proxy: ProxyFactory, echo_port: int, code: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)])
    client = await RawClient.connect(proxy.port)
    await client.send(f"GET /status/{code} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    resp = await client.response()
    assert resp.status == code
    assert resp.body == b""
    assert resp.header("transfer-encoding") is None
    await client.send(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response()).body == b"a"
    await client.close()


async def test_expect_100_continue(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)])
    client = await RawClient.connect(proxy.port)
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    await client.send(b"ping")
    resp = await client.response()
    assert json.loads(resp.body)["body"] == "ping"
    await client.close()


async def test_pipelined_requests_answered_in_order(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    app = web.Application()
    arrivals: list[str] = []

    async def named(req: web.Request) -> web.Response:
        arrivals.append(req.path)
        return web.Response(text=req.path)

    app.router.add_get("/{name}", named)
    app.router.add_post("/echo", echo)
    port = await serve_app(app)
    proxy = await start_proxy([backend_config("a", port)])
    client = await RawClient.connect(proxy.port)
    await client.send(
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    responses = await client.responses(3)
    assert responses[0].body == b"/first"
    assert json.loads(responses[1].body)["body"] == "abc"
    assert responses[2].body == b"/third"
    assert arrivals == ["/first", "/third"]
    await client.close()


async def test_client_gone_mid_stream_closes_upstream(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    app = web.Application()
    backend_saw_close = asyncio.Event()

    async def endless(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        try:
            while True:
                await resp.write(b"data: tick\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionResetError, asyncio.CancelledError):
            backend_saw_close.set()
            raise

    app.router.add_get("/endless", endless)
    proxy = await start_proxy([backend_config("a", await serve_app(app))])
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(client.reader.readuntil(b"data: tick"), 5)
    await client.close()
    await asyncio.wait_for(backend_saw_close.wait(), 5)
    backend = proxy.runtime.cluster.backends.by_name["a"]
    assert proxy.runtime.cluster.pool(proxy.runtime.cluster.backends.by_name["a"]).idle == []
    assert backend.in_flight == 0 and backend.streams == 0


async def test_upstream_gone_mid_response_closes_client(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    proxy = await start_proxy([backend_config("a", await serve_raw(handler))])
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await client.read_until_closed()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"only ten b")
    assert proxy.runtime.cluster.backends.by_name["a"].in_flight == 0


@pytest.mark.parametrize(
    ("method", "non_idempotent", "attempts", "retried"),
    [
        ("GET", False, 2, True),
        ("GET", False, 0, False),
        ("POST", False, 2, False),
        ("POST", True, 2, True),
    ],
)
async def test_pooled_connection_closed_by_backend(
    start_proxy: ProxyFactory,
    serve_raw: RawServe,
    method: str,
    non_idempotent: bool,
    attempts: int,
    retried: bool,
) -> None:
    """A pooled connection that dies before any response byte: idempotent requests go
    again on a fresh connection; a POST (an MCP call) only with retries.non_idempotent,
    since the backend may have run it; and never with retries.attempts 0."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request of each connection, then drops the connection on
        # the next request without a byte: a keep-alive close racing a new request.
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        body = b"answer %d" % connections
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    proxy = await start_proxy(
        [backend_config("a", await serve_raw(handler))],
        retries=RetriesConfig(attempts=attempts, non_idempotent=non_idempotent),
    )
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response()).body == b"answer 1"
    length = b"Content-Length: 2\r\n\r\nhi" if method == "POST" else b"\r\n"
    await client.send(method.encode() + b" / HTTP/1.1\r\nHost: x\r\n" + length)
    response = await client.response()
    if retried:
        assert response.body == b"answer 2"
        assert connections == 2
    else:
        assert response.status == 502
        assert connections == 1
    assert proxy.runtime.cluster.backends.by_name["a"].in_flight == 0
    await client.close()


async def test_retry_after_a_dead_pooled_connection_uses_a_new_one(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """When one pooled connection turns out dead, the others to that backend may be as
    stale (the backend restarted): the retry opens a new connection, so one retry is
    enough."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections  # answers one request per connection, then drops it
        connections += 1
        body = b"answer %d" % connections
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    proxy = await start_proxy(
        [backend_config("a", await serve_raw(handler))], retries=RetriesConfig(attempts=1)
    )
    clients = [await RawClient.connect(proxy.port) for _ in range(2)]
    for client in clients:  # two requests at once: two pooled connections afterwards
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sorted([(await c.response()).body for c in clients]) == [b"answer 1", b"answer 2"]
    assert len(proxy.runtime.cluster.pool(proxy.runtime.cluster.backends.by_name["a"]).idle) == 2
    await clients[0].send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await clients[0].response()).body == b"answer 3"
    for client in clients:
        await client.close()


async def test_hop_by_hop_headers_removed_both_ways(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Resp-Hop\r\nX-Resp-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\n"
            b"X-End-To-End: kept\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    proxy = await start_proxy([backend_config("a", await serve_raw(handler))])
    resp = await request(
        proxy.port,
        b"GET /p HTTP/1.1\r\nHost: client.example\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: secret\r\nKeep-Alive: 300\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"Proxy-Authorization: Basic abc\r\nProxy-Connection: keep-alive\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\n\r\n",
    )
    head = seen[0].decode().lower()
    for gone in ("x-hop", "keep-alive", "te:", "trailer", "proxy-", "connection"):
        assert gone not in head, gone
    assert "x-kept: yes" in head
    assert "x-forwarded-for: 203.0.113.9, 127.0.0.1" in head
    assert "x-forwarded-proto: http" in head
    assert "x-forwarded-host: client.example" in head
    assert f"host: 127.0.0.1:{proxy.runtime.cluster.backends.by_name['a'].port}" in head
    names = [name for name, _ in resp.headers]
    for gone in ("x-resp-hop", "keep-alive", "proxy-authenticate", "trailer"):
        assert gone not in names
    assert resp.header("x-end-to-end") == "kept"
    assert resp.header("connection") is None


async def test_preserve_host_keeps_client_host(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)], preserve_host=True)
    resp = await request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: client.example\r\n\r\n")
    assert json.loads(resp.body)["headers"]["host"] == "client.example"


async def test_path_prefix_and_absolute_form(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port, prefix="/echo/base")])
    resp = await request(proxy.port, b"GET /x?y=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads(resp.body)["path"] == "/echo/base/x?y=1"
    # An absolute-form target cannot steer the proxy elsewhere: only its path is used.
    resp = await request(proxy.port, b"GET http://169.254.169.254/z HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = json.loads(resp.body)
    assert seen["path"] == "/echo/base/z"
    assert seen["headers"]["host"] == f"127.0.0.1:{echo_port}"


async def test_no_backend_available_is_503(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port, weight=0)])
    resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 503
    assert resp.header("retry-after") == "1"
    assert json.loads(resp.body)["error"] == "no_backend"


async def test_connect_failure_tries_another_backend(
    start_proxy: ProxyFactory, echo_port: int, unused_tcp_port: int
) -> None:
    proxy = await start_proxy(
        [backend_config("dead", unused_tcp_port), backend_config("alive", echo_port)]
    )
    for _ in range(4):
        resp = await request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 200


async def test_connect_failure_everywhere_is_502(
    start_proxy: ProxyFactory, unused_tcp_port_factory: Callable[[], int]
) -> None:
    proxy = await start_proxy(
        [
            backend_config("d1", unused_tcp_port_factory()),
            backend_config("d2", unused_tcp_port_factory()),
        ]
    )
    resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 502
    assert json.loads(resp.body) == {
        "error": "bad_gateway",
        "message": "no backend could be reached",
    }


async def test_upstream_header_timeout_is_504(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers

    proxy = await start_proxy(
        [backend_config("a", await serve_raw(handler))], timeouts={"upstream_header": 0.5}
    )
    resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert resp.status == 504
    assert json.loads(resp.body)["error"] == "gateway_timeout"
    assert proxy.runtime.cluster.backends.by_name["a"].in_flight == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_request_is_400_and_closed(
    start_proxy: ProxyFactory, echo_port: int, raw: bytes
) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)])
    client = await RawClient.connect(proxy.port)
    await client.send(raw)
    data = await client.read_until_closed()
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"error": "bad_request"' in data


async def test_headers_too_large_is_431(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)], limits={"max_header_bytes": 2048})
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(40))
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert (await client.read_until_closed()).startswith(b"HTTP/1.1 431 ")
    # One header that never ends is cut too, without waiting for its end.
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 4096)
    assert (await client.read_until_closed()).startswith(b"HTTP/1.1 431 ")


async def test_body_too_large_is_413(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)], limits={"max_body_bytes": 10})
    client = await RawClient.connect(proxy.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    assert (await client.read_until_closed()).startswith(b"HTTP/1.1 413 ")
    client = await RawClient.connect(proxy.port)
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    )
    assert (await client.read_until_closed()).startswith(b"HTTP/1.1 413 ")


async def test_idle_keepalive_connection_closed(start_proxy: ProxyFactory, echo_port: int) -> None:
    proxy = await start_proxy([backend_config("a", echo_port)], timeouts={"idle": 0.5})
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response()).body == b"a"
    assert await client.is_closed(timeout=5)


async def test_round_robin_alternates_backends(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    ports = [await serve_app(echo_app(name)) for name in ("a", "b")]
    proxy = await start_proxy([backend_config("a", ports[0]), backend_config("b", ports[1])])
    client = await RawClient.connect(proxy.port)
    names = []
    for _ in range(6):
        await client.send(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
        names.append((await client.response()).body)
    assert names == [b"a", b"b"] * 3
    await client.close()


# -- WebSocket: an accepted upgrade becomes a tunnel ---------------------------------------


# Node 22's built-in WebSocket (undici's): the second client implementation. It prints the
# messages it got as JSON; with "echo" it sends "one" after the first and waits for a second.
NODE_WS_CLIENT = """
const [url, mode] = process.argv.slice(1);
const got = [];
const done = (code, error) => { console.log(JSON.stringify({got, error})); process.exit(code); };
const timer = setTimeout(() => done(1, "timeout"), 5000);
const ws = new WebSocket(url);
ws.onmessage = (event) => {
  got.push(String(event.data));
  if (mode === "echo" && got.length === 1) ws.send("one");
  else ws.close();
};
ws.onerror = (event) => done(1, String(event.message || event.type));
ws.onclose = () => { clearTimeout(timer); done(0, null); };
"""


async def websocket_messages(client: str, url: str, echo: bool) -> list[str]:
    """What ``client`` (aiohttp or node) receives on ``url``: the server's first message,
    then (``echo``) the answer to "one"."""
    if client == "aiohttp":
        got = []
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as sock:
            got.append(await sock.receive_str(timeout=5))
            if echo:
                await sock.send_str("one")
                got.append(await sock.receive_str(timeout=5))
        return got
    assert NODE.exists(), MISSING
    proc = await asyncio.create_subprocess_exec(
        str(NODE), "-e", NODE_WS_CLIENT, url, "echo" if echo else "once",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    result = json.loads(out)
    assert proc.returncode == 0 and result["error"] is None, result
    return list(result["got"])


@pytest.mark.parametrize("client", ["aiohttp", "node"])
async def test_websocket_through_the_proxy_to_an_aiohttp_server(
    start_proxy: ProxyFactory, serve_app: AppFactory, client: str
) -> None:
    async def ws(req: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(req)
        await sock.send_str("hello")  # the server speaks first, right after its 101
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    proxy = await start_proxy([backend_config("a", await serve_app(app))])
    url = f"http://127.0.0.1:{proxy.port}/ws"
    if client == "node":
        url = url.replace("http:", "ws:", 1)
    assert await websocket_messages(client, url, echo=True) == ["hello", "echo:one"]


@pytest.mark.parametrize("client", ["aiohttp", "node"])
async def test_websocket_101_and_first_frame_in_one_backend_write(
    start_proxy: ProxyFactory, serve_raw: RawServe, client: str
) -> None:
    """The backend's first frame comes in the same read as its 101: it must reach the
    client after the 101 head, not before it (it did before, breaking the handshake)."""

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + b"\x81\x05hello"
        )
        await writer.drain()
        await reader.read(1)  # the client's close frame begins: answer with ours
        writer.write(b"\x88\x00")
        writer.close()

    proxy = await start_proxy([backend_config("a", await serve_raw(backend))])
    url = f"{'ws' if client == 'node' else 'http'}://127.0.0.1:{proxy.port}/ws"
    assert await websocket_messages(client, url, echo=False) == ["hello"]
