"""Hostile clients: request smuggling, slowloris, open-proxy/SSRF attempts and fuzzing.

Every test talks to an in-process proxy over real loopback sockets and is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcplb.proxy.config.errors import ConfigError, ConfigIssue
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import ProxyFactory, RawHandler, backend_config
from tests.support.eventually import eventually
from tests.support.rawhttp import RawClient, request

RawServe = Callable[[RawHandler], Awaitable[int]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


# --- a backend that records what reaches it ------------------------------------------


@dataclass
class Seen:
    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class _Collector:
    def __init__(self) -> None:
        self.current = Seen()
        self.done: list[Seen] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.current = Seen()

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.current.method = self.parser.get_method()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)


class Recorder:
    """A scripted backend: records every byte and every request, answers each with 200."""

    def __init__(self) -> None:
        self.connections = 0
        self.raw = bytearray()
        self.requests: list[Seen] = []

    @property
    def targets(self) -> list[bytes]:
        return [seen.target for seen in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        collector = _Collector()
        while data := await reader.read(65536):
            self.raw += data
            try:
                collector.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                collector.parser = httptools.HttpRequestParser(collector)  # CONNECT, Upgrade
            except httptools.HttpParserError:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            for seen in collector.done:
                self.requests.append(seen)
                writer.write(OK[:-2] if seen.method == b"HEAD" else OK)
            collector.done.clear()
            await writer.drain()


async def recording_proxy(
    start_proxy: ProxyFactory, serve_raw: RawServe, **options: Any
) -> tuple[ProxyServer, Recorder]:
    recorder = Recorder()
    proxy = await start_proxy([backend_config("a", await serve_raw(recorder.handle))], **options)
    return proxy, recorder


async def still_serves(proxy: ProxyServer, recorder: Recorder, path: bytes = b"/after") -> None:
    """A normal request on a fresh connection is answered and reaches the backend."""
    before = recorder.targets.count(path)
    resp = await request(proxy.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
    assert (resp.status, resp.body) == (200, b"ok")
    assert recorder.targets.count(path) == before + 1


# --- 1. request smuggling ------------------------------------------------------------

POST = b"POST / HTTP/1.1\r\nHost: x\r\n"
CHUNKED_BODY = b"\r\n5\r\nhello\r\n0\r\n\r\n"

REFUSED = {
    # Both framings: a front end and a back end could disagree on where the body ends.
    "cl-then-te": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-then-cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "cl-and-te-identity": POST + b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello",
    "duplicate-cl-different": POST + b"Content-Length: 5\r\nContent-Length: 41\r\n\r\nhello",
    # llhttp refuses a repeated Content-Length even with the same value (and a list of
    # them), so the proxy answers 400 rather than picking one.
    "duplicate-cl-equal": POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-list-equal": POST + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-plus-sign": POST + b"Content-Length: +5\r\n\r\nhello",
    "cl-empty": POST + b"Content-Length: \r\n\r\n",
    "cl-overflow": POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello",
    "te-chunked-identity": POST + b"Transfer-Encoding: chunked, identity" + CHUNKED_BODY,
    "te-xchunked": POST + b"Transfer-Encoding: xchunked" + CHUNKED_BODY,
    "te-chunked-twice-headers": POST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
    + CHUNKED_BODY,
    "te-chunked-twice-list": POST + b"Transfer-Encoding: chunked, chunked" + CHUNKED_BODY,
    "te-chunked-then-empty": POST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: "
    + CHUNKED_BODY,
    "te-chunked-tab": POST + b"Transfer-Encoding: chunked\t" + CHUNKED_BODY,
    "te-chunked-vtab": POST + b"Transfer-Encoding: chunked\x0b" + CHUNKED_BODY,
    "te-chunked-param": POST + b"Transfer-Encoding: chunked;q=1" + CHUNKED_BODY,
    "te-gzip-only": POST + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "te-space-before-colon": POST + b"Transfer-Encoding : chunked" + CHUNKED_BODY,
    "chunk-size-zz": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overlong": POST
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"f" * 20
    + b"\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-space": POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk-data-too-long": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    "chunk-lf-only": POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "trailer-te": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nTransfer-Encoding: x\r\n\r\n",
    # obs-fold: a header line starting with whitespace continues the previous one.
    "obs-fold-space": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
    "obs-fold-te": POST + b"Transfer-Encoding: identity\r\n chunked" + CHUNKED_BODY,
    "space-before-first-header": b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    # header names must be tokens
    "name-with-space": b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    "name-space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "name-with-tab": b"GET / HTTP/1.1\r\nX\tY: x\r\n\r\n",
    "name-with-at": b"GET / HTTP/1.1\r\nX@Y: x\r\n\r\n",
    "name-with-parens": b"GET / HTTP/1.1\r\nX(Y): x\r\n\r\n",
    "name-with-quote": b'GET / HTTP/1.1\r\nX"Y: x\r\n\r\n',
    "name-non-ascii": b"GET / HTTP/1.1\r\nX\xc3\xa9: x\r\n\r\n",
    "name-empty": b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    "name-without-colon": b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    # control bytes
    "nul-in-header-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "nul-in-target": b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul-in-method": b"GE\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul-in-version": b"GET / HTTP/1.1\x00\r\nHost: x\r\n\r\n",
    "ctl-in-header-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "cr-in-header-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    # request lines
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "version-missing-after-space": b"GET / \r\nHost: x\r\n\r\n",
    "version-unknown": b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    "method-unknown": b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
    "method-lowercase": b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("warm", [False, True], ids=["cold-pool", "warm-pool"])
@pytest.mark.parametrize("raw", list(REFUSED.values()), ids=list(REFUSED))
async def test_smuggling_attempt_is_400_closed_and_never_reaches_the_backend(
    start_proxy: ProxyFactory, serve_raw: RawServe, raw: bytes, warm: bool
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    expected: list[bytes] = []
    if warm:
        # A pooled connection is ready: the request head would be written at once.
        await still_serves(proxy, recorder, b"/warm")
        cluster = proxy.runtime.cluster
        assert len(cluster.pool(cluster.backends.by_name["a"]).idle) == 1
        expected.append(b"/warm")
    client = await RawClient.connect(proxy.port)
    await client.send(raw + SMUGGLED)
    data = await client.read_until_closed(timeout=3)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert b"\r\nconnection: close\r\n" in data
    assert b'"error": "bad_request"' in data
    await client.close()
    # The next exchange is the barrier: whatever the refused one sent would be there by now.
    await still_serves(proxy, recorder)
    assert recorder.targets == [*expected, b"/after"]
    assert bytes(recorder.raw).count(b" HTTP/1.1\r\n") == len(expected) + 1
    assert b"smuggled" not in recorder.raw and b"hello" not in recorder.raw


async def closed(client: RawClient, timeout: float = 3.0) -> bool:
    """The proxy closed the connection (a reset, for bytes it left unread, counts too)."""
    try:
        return await client.is_closed(timeout)
    except ConnectionResetError:
        return True


async def refused_or_single(
    proxy: ProxyServer, recorder: Recorder, raw: bytes, target: bytes = b"/"
) -> bool:
    """Send ``raw``: it must be refused (400, closed, nothing upstream) or parsed as
    exactly one request for ``target``. Returns True when it was refused."""
    client = await RawClient.connect(proxy.port)
    await client.send(raw)
    resp = await client.response(timeout=3)
    if resp.status == 400:
        assert await closed(client)
        await client.close()
        await still_serves(proxy, recorder)
        assert recorder.targets == [b"/after"]
        return True
    assert (resp.status, resp.body) == (200, b"ok")
    await client.close()
    await still_serves(proxy, recorder)
    assert recorder.targets == [target, b"/after"]
    assert b"smuggled" not in recorder.raw
    return False


BARE_LF = {
    "all-lf": b"GET / HTTP/1.1\nHost: x\nX-A: b\n\n",
    "lf-after-request-line": b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    "lf-in-headers": b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "lf-ends-head": b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    "bare-cr": b"GET / HTTP/1.1\rHost: x\r\n\r\n",
    "lf-hides-te": POST + b"X-A: b\nTransfer-Encoding: chunked\r\nContent-Length: 5" + CHUNKED_BODY,
}


@pytest.mark.parametrize("raw", list(BARE_LF.values()), ids=list(BARE_LF))
async def test_bare_lf_in_head_is_refused_or_parsed_like_crlf(
    start_proxy: ProxyFactory, serve_raw: RawServe, raw: bytes
) -> None:
    # llhttp's strict mode refuses every one of these today; parsing them exactly like
    # their CRLF twins would be just as safe, and is checked in case llhttp turns lenient.
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    client = await RawClient.connect(proxy.port)
    await client.send(raw)
    resp = await client.response(timeout=3)
    if resp.status == 400:
        assert await closed(client)
        await still_serves(proxy, recorder)
        assert recorder.targets == [b"/after"]  # nothing reached the backend
        return
    await client.close()
    twin = await request(proxy.port, re.sub(rb"\r\n|\r|\n", b"\r\n", raw), timeout=3)
    assert (resp.status, resp.body) == (twin.status, twin.body)
    lf, crlf = recorder.requests

    def fields(seen: Seen) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
        headers = [(name, value) for name, value in seen.headers if name != b"x-request-id"]
        return seen.method, seen.target, headers, seen.body

    assert fields(lf) == fields(crlf)


ODD_REQUEST_LINES = {
    "two-spaces-before-target": b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    "two-spaces-after-target": b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n",
    # llhttp reads a request line without a version as HTTP/0.9.
    "missing-version": b"GET /\r\nHost: x\r\n\r\n",
    "http-2-0": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(ODD_REQUEST_LINES.values()), ids=list(ODD_REQUEST_LINES))
async def test_odd_request_line_is_refused_or_normalised(
    start_proxy: ProxyFactory, serve_raw: RawServe, raw: bytes
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    if not await refused_or_single(proxy, recorder, raw):
        # What went upstream is one well-formed HTTP/1.1 request line.
        assert bytes(recorder.raw).startswith(b"GET / HTTP/1.1\r\n")


async def test_upgrade_refused_by_backend_does_not_smuggle_what_follows(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    client = await RawClient.connect(proxy.port)
    await client.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        + SMUGGLED
    )
    resp = await client.response(timeout=3)
    assert resp.status == 200  # the backend answered the upgrade with a plain response
    assert await closed(client)
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/ws", b"/after"]
    assert b"smuggled" not in recorder.raw


async def test_trailer_fields_are_not_taken_for_request_headers(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    async def mcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        collector = _Collector()
        while data := await reader.read(65536):
            collector.parser.feed_data(data)
            for seen in collector.done:
                if seen.target == b"/init":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nMcp-Session-Id: victim\r\nContent-Length: 2\r\n\r\nok"
                    )
                elif seen.values(b"mcp-session-id"):
                    writer.write(OK)
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            collector.done.clear()
            await writer.drain()

    proxy = await start_proxy([backend_config("a", await serve_raw(mcp))])
    init = b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    assert (await request(proxy.port, init, timeout=3)).header("mcp-session-id") == "victim"
    # A session-less request whose chunked body ends with a trailer naming that session.
    trailer = (
        POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nMcp-Session-Id: victim\r\n\r\n"
    )
    assert (await request(proxy.port, trailer, timeout=3)).status == 404
    # The session was not touched: it still routes to its backend.
    use = b"POST /mcp HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: victim\r\nContent-Length: 0\r\n\r\n"
    resp = await request(proxy.port, use, timeout=3)
    assert (resp.status, resp.body) == (200, b"ok")


# --- 2. slow and stalled clients -----------------------------------------------------


async def test_trickled_head_is_cut_with_408_at_the_header_timeout(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, timeouts={"header": 0.6})
    loop = asyncio.get_running_loop()
    # A plain socket: a byte trickled after the proxy closed makes it reset the connection,
    # and a StreamReader would drop the 408 it had already received.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"

    async def trickle() -> None:
        for byte in head:
            await loop.sock_sendall(sock, bytes([byte]))
            await asyncio.sleep(0.1)

    async def read_to_end() -> bytes:
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while piece := await loop.sock_recv(sock, 65536):
                data += piece
        return data

    try:
        await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
        started = loop.time()
        trickling = asyncio.create_task(trickle())
        try:
            data = await asyncio.wait_for(read_to_end(), 4)
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
        elapsed = loop.time() - started
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in data
    assert 0.6 < elapsed < 2.0, elapsed
    assert recorder.raw == b""


async def test_stalled_body_upload_is_cut_after_idle_timeout(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, timeouts={"idle": 0.6})
    client = await RawClient.connect(proxy.port)
    await client.send(POST + b"Content-Length: 100\r\n\r\n")
    for _ in range(5):  # a few body bytes trickle in, then nothing more
        await asyncio.sleep(0.1)
        await client.send(b"x")
    loop = asyncio.get_running_loop()
    silent_since = loop.time()
    try:
        data = await client.read_until_closed(timeout=3)
    except TimeoutError:
        pytest.fail("the connection is still open 3 s after the client went silent")
    elapsed = loop.time() - silent_since
    assert elapsed < 2.0, elapsed
    if data:
        assert data.startswith(b"HTTP/1.1 408 "), data
    # A client that stops sending is not the backend's fault.
    assert proxy.runtime.stats.backends["a"].timeouts == 0
    assert recorder.requests == []  # the body never completed


async def test_clients_stalling_mid_body_do_not_eject_a_healthy_backend(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    recorders = [Recorder(), Recorder()]
    backends = [
        backend_config(n, await serve_raw(r.handle)) for n, r in zip("ab", recorders, strict=True)
    ]
    proxy = await start_proxy(backends, timeouts={"upstream_header": 0.6, "idle": 0.6})
    clients = []
    for _ in range(10):  # five per backend: passive health's consecutive_failures
        client = await RawClient.connect(proxy.port)
        await client.send(POST + b"Content-Length: 100\r\n\r\nxxxxx")
        clients.append(client)
    for client in clients:
        await client.read_until_closed(timeout=3)
        await client.close()
    for name in "ab":
        assert proxy.runtime.stats.backends[name].timeouts == 0
        cluster = proxy.runtime.cluster
        assert not cluster.health.ejected(cluster.backends.by_name[name])


async def test_body_trickled_within_idle_timeout_is_not_cut(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, timeouts={"idle": 0.6})
    client = await RawClient.connect(proxy.port)
    await client.send(POST + b"Content-Length: 6\r\n\r\n")
    for byte in b"abcdef":  # 1.5 s in all, never 0.6 s without a byte
        await asyncio.sleep(0.25)
        await client.send(bytes([byte]))
    resp = await client.response(timeout=3)
    assert (resp.status, resp.body) == (200, b"ok")
    assert recorder.requests[0].body == b"abcdef"
    await client.close()


PIECE = b"x" * (1 << 16)
HUGE = 1 << 30
IN_FLIGHT_BOUND = 64 << 20  # kernel socket buffers on both legs; far below HUGE


async def until_stalled(progress: Callable[[], int], limit: float = 5.0) -> int:
    """Wait until ``progress()`` stops growing (the sender is blocked); return it."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        now = progress()
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.15)  # sampling interval of a measurement
    raise AssertionError("the sender never stalled: nothing is holding it back")


@dataclass
class StalledDownload:
    proxy: ProxyServer
    sock: socket.socket  # the client: asked for a huge response, never reads a byte of it
    started: float
    written: Callable[[], int]  # response bytes the backend managed to write
    released: asyncio.Event  # the backend's writes failed: the proxy let go of it


async def stalled_download(start_proxy: ProxyFactory, serve_raw: RawServe) -> StalledDownload:
    written = 0
    released = asyncio.Event()

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
        try:
            while written < HUGE:
                writer.write(PIECE)
                written += len(PIECE)
                await writer.drain()
        finally:
            released.set()

    proxy = await start_proxy(
        [backend_config("a", await serve_raw(source))], timeouts={"idle": 0.6}
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", proxy.port))
    await loop.sock_sendall(sock, b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
    return StalledDownload(proxy, sock, loop.time(), lambda: written, released)


async def test_client_that_never_reads_stalls_the_backend_and_is_cut(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    stalled = await stalled_download(start_proxy, serve_raw)
    try:
        stalled_at = await until_stalled(stalled.written)
        assert stalled_at < IN_FLIGHT_BOUND
        for conn in stalled.proxy.connections:  # the proxy itself holds little of it
            assert conn.transport is not None
            assert conn.transport.get_write_buffer_size() < 1 << 20
        # No progress for timeouts.idle: the proxy aborts the exchange with the backend.
        await asyncio.wait_for(stalled.released.wait(), 3)
        assert asyncio.get_running_loop().time() - stalled.started < 2.5
        assert stalled.written() == stalled_at
    finally:
        stalled.sock.close()


TCP_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (Linux)


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs TCP_INFO (Linux)")
async def test_client_that_never_reads_is_disconnected_after_idle_timeout(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    stalled = await stalled_download(start_proxy, serve_raw)
    try:
        await asyncio.wait_for(stalled.released.wait(), 3)

        def disconnected() -> bool:
            state = stalled.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            return state != TCP_ESTABLISHED and not stalled.proxy.connections

        await eventually(disconnected, within=1.5, what="disconnected")
    finally:
        stalled.sock.close()


async def test_pipelined_head_during_an_exchange_is_bounded(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.5)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    proxy = await start_proxy(
        [backend_config("a", await serve_raw(slow))], limits={"max_header_bytes": 8192}
    )
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)  # the first request is in flight
    # A second head, 256 times max_header_bytes, that never ends.
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20))
    try:
        data = await client.read_until_closed(timeout=3)
    except TimeoutError:
        pytest.fail("2 MiB of request head were taken in, and the connection is still open")
    assert b"HTTP/1.1 431 " in data


# --- 3. no open proxy, no SSRF -------------------------------------------------------


@pytest.mark.parametrize("preserve_host", [False, True], ids=["backend-host", "preserve-host"])
async def test_absolute_form_and_host_never_steer_the_proxy(
    start_proxy: ProxyFactory, serve_raw: RawServe, preserve_host: bool
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, preserve_host=preserve_host)
    other = Recorder()  # stands in for any other host: must see nothing at all
    other_port = await serve_raw(other.handle)
    elsewhere = b"127.0.0.1:%d" % other_port
    backend_host = b"127.0.0.1:%d" % proxy.runtime.cluster.backends.by_name["a"].port
    attempts = [
        (b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: evil.example\r\n\r\n",
         b"/latest", b"evil.example"),
        (b"GET http://" + elsewhere + b"/latest/meta-data?x=1 HTTP/1.1\r\nHost: " + elsewhere
         + b"\r\n\r\n", b"/latest/meta-data?x=1", elsewhere),
        (b"GET http://" + elsewhere + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n",
         b"/", b"evil.example"),
        (b"GET https://user@" + elsewhere + b"/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
         b"/x", b"evil.example"),
        (b"GET //" + elsewhere + b"/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
         b"//" + elsewhere + b"/x", b"evil.example"),
        (b"GET /plain HTTP/1.1\r\nHost: " + elsewhere + b"\r\n\r\n", b"/plain", elsewhere),
        (b"GET /plain HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: " + elsewhere
         + b"\r\n\r\n", b"/plain", b"evil.example"),
    ]  # fmt: skip
    for raw, path, host in attempts:
        resp = await request(proxy.port, raw, timeout=3)
        assert (resp.status, resp.body) == (200, b"ok"), raw
        seen = recorder.requests[-1]
        assert seen.target == path
        assert seen.values(b"host") == [host if preserve_host else backend_host]
        assert seen.values(b"x-forwarded-host") == [host]
    assert len(recorder.requests) == len(attempts)
    assert other.connections == 0 and other.raw == b""


async def test_connect_never_opens_a_tunnel_elsewhere(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    other = Recorder()
    elsewhere = b"127.0.0.1:%d" % await serve_raw(other.handle)
    client = await RawClient.connect(proxy.port)
    await client.send(b"CONNECT " + elsewhere + b" HTTP/1.1\r\nHost: " + elsewhere + b"\r\n\r\n")
    await client.response(timeout=3)
    # Whatever the answer, what the client sends next goes nowhere as raw tunnel bytes.
    with contextlib.suppress(ConnectionError):
        await client.send(b"\x16\x03\x01 tunnel bytes " + SMUGGLED)
    assert await closed(client)
    await still_serves(proxy, recorder)
    assert b"tunnel bytes" not in recorder.raw and b"smuggled" not in recorder.raw
    assert other.connections == 0 and other.raw == b""


async def test_connect_is_refused_with_an_error_status(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    client = await RawClient.connect(proxy.port)
    await client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    resp = await client.response(timeout=3)
    await client.close()
    assert 400 <= resp.status < 600
    assert all(seen.method != b"CONNECT" for seen in recorder.requests)


# --- 4. fuzzing ----------------------------------------------------------------------

SEEDS = [
    b"GET /echo?q=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Request-Id: r1\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 13\r\n\r\n{"method":1}\n',
    b"POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
FRAGMENTS = [
    b"GET ", b"POST ", b"HEAD ", b"CONNECT ", b"OPTIONS * ", b"/", b"/a?b=c", b"http://h/",
    b" HTTP/1.1", b" HTTP/1.0", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"Host: x", b": ", b":",
    b"Content-Length: ", b"Transfer-Encoding: chunked", b"Connection: close",
    b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue",
    b"Mcp-Session-Id: abc", b"0", b"5", b"ff", b"-1", b"hello", b"0\r\n\r\n", b" ", b"\t",
    b"\x00", b",", b";", b"\xff",
]  # fmt: skip
INTERESTING = [0, 9, 10, 13, 32, 44, 58, 59, 127, 255]


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "flip", "replace"]))
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)))
        if op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if op == "delete":
                del data[pos]
            elif op == "flip":
                data[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                data[pos] = byte
    return bytes(data)


hostile_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(FRAGMENTS), max_size=30).map(b"".join),
    mutated_request(),
)


def well_formed_responses(data: bytes, sent: bytes) -> list[int]:
    """The statuses of the HTTP/1.1 responses in ``data``; fails on anything else."""
    statuses: list[int] = []

    class Collector:
        def on_headers_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Collector())
    if data:
        assert data.startswith(b"HTTP/1.1 "), data
        if b"HEAD" in sent:  # a HEAD answer announces a body it does not have
            return [int(data[9:12])]
        parser.feed_data(data)
    assert all(100 <= status < 600 for status in statuses)
    return statuses


async def fuzz_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``; read until the proxy closes, or half-close once it goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                piece = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                break  # waiting for more input (or keep-alive): the client is done
            if not piece:
                return received
            received += piece
        writer.write_eof()
        # The client sent all it will: the proxy must finish within the timeout.
        received += await asyncio.wait_for(reader.read(), 2.0)
        return received
    except ConnectionError:  # reset by the proxy: closing is an allowed answer
        return received
    finally:
        writer.close()


@pytest.fixture
async def fuzz_target(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> tuple[ProxyServer, Recorder]:
    return await recording_proxy(
        start_proxy,
        serve_raw,
        timeouts={"header": 1.0, "upstream_header": 1.0, "idle": 1.0},
        limits={"max_header_bytes": 4096, "max_body_bytes": 1 << 16},
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=hostile_bytes)
async def test_fuzzed_input_never_hangs_or_breaks_the_proxy(
    fuzz_target: tuple[ProxyServer, Recorder], data: bytes
) -> None:
    proxy, recorder = fuzz_target
    received = await fuzz_exchange(proxy.port, data)
    statuses = well_formed_responses(received, data)
    event(f"statuses: {statuses[:3]}")
    await still_serves(proxy, recorder, b"/alive")
    await eventually(lambda: not proxy.connections, within=3.0, what="no connection left")
    assert proxy.runtime.cluster.backends.by_name["a"].in_flight == 0


# --- config fuzzing ------------------------------------------------------------------
# tests/test_config.py fuzzes raw text; here the documents are structured YAML built
# from the real key names, so the validators behind the YAML layer get exercised.

KEYS = [
    "listen", "workers", "strategy", "strategy_options", "preserve_host", "backends",
    "sticky", "timeouts", "limits", "health", "admin", "log", "name", "url", "weight",
    "max_sessions", "mcp_sessions", "session_ttl", "store", "keys", "redis", "cookie",
    "header", "timeout", "prefix", "ttl", "secure", "http_only", "same_site", "connect",
    "upstream_header", "idle", "upstream_keepalive", "grace", "max_header_bytes",
    "max_body_bytes", "initial", "panic", "slow_start", "active", "passive", "enabled",
    "type", "path", "method", "expect_status", "expect_tools", "interval", "rise", "fall",
    "fast_interval", "down_interval", "consecutive_failures", "on_5xx", "ejection_time",
    "max_ejection_time", "ejection_memory", "max_ejection_percent", "token", "format",
    "access", "level", "unknown_key",
]  # fmt: skip
WORDS = [
    "", "auto", "round_robin", "least_connections", "maglev", "pkg.mod:Cls", "a", "b",
    "http://127.0.0.1:9001", "https://[::1]:8443/mcp", "ftp://x", "http://", "127.0.0.1:0",
    "[::1]:8080", "localhost:99999", "redis://127.0.0.1:6379/0", "unix:///tmp/r.sock",
    "2s", "10ms", "1.5m", "-1s", "0", "30m", "1h", "64KiB", "10MiB", "1GB", "-5", "1e9",
    "memory", "signed", "redis", "healthy", "unhealthy", "fail_open", "fail_closed", "http",
    "mcp", "GET", "/health", "200-399", "lax", "strict", "none", "text", "json", "debug",
    "${X}", "${Y:-7}", "${MISSING}", "$$", "x" * 40, "é", "\x00", "Mcp-Session-Id",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)
# A valid document using every section; mutations replace or drop one of its entries.
BASE: dict[str, Any] = {
    "listen": "127.0.0.1:8080",
    "workers": 2,
    "strategy": "round_robin",
    "strategy_options": {},
    "preserve_host": False,
    "backends": [
        {"name": "a", "url": "http://127.0.0.1:9001", "weight": 1, "max_sessions": 10},
        {"name": "b", "url": "http://127.0.0.1:9002/mcp"},
    ],
    "sticky": {
        "mcp_sessions": True,
        "session_ttl": "30m",
        "max_sessions": 1000,
        "store": "signed",
        "keys": ["k" * 32],
        "cookie": {"name": "lb", "ttl": "1h", "secure": True, "http_only": True},
        "header": "X-User",
    },
    "timeouts": {
        "connect": "2s",
        "header": "10s",
        "upstream_header": "60s",
        "idle": "300s",
        "upstream_keepalive": "4s",
        "grace": "30s",
    },
    "limits": {"max_header_bytes": "64KiB", "max_body_bytes": "10MiB"},
    "health": {
        "initial": "healthy",
        "panic": "fail_open",
        "slow_start": "1m",
        "active": {
            "enabled": True,
            "type": "http",
            "path": "/healthz",
            "method": "GET",
            "expect_status": [200, "204-299"],
            "interval": "5s",
            "timeout": "1s",
            "rise": 2,
            "fall": 3,
        },
        "passive": {"enabled": True, "consecutive_failures": 5, "on_5xx": False},
    },
    "admin": {"enabled": True, "listen": "127.0.0.1:9090"},
    "log": {"format": "json", "access": True, "level": "info"},
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


BASE_PATHS = _paths(BASE)


@st.composite
def mutated_config(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(BASE_PATHS))
        parent: Any = document
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(yaml_values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation replaced a parent of this path
    return document


@st.composite
def random_config(draw: st.DrawFn) -> dict[str, Any]:
    top = draw(st.dictionaries(st.sampled_from(KEYS[:12]), yaml_values, max_size=8))
    if draw(st.booleans()):  # usually valid backends, so validation goes past them
        top.setdefault("backends", BASE["backends"])
    return top


def test_base_config_is_valid() -> None:
    config = parse_config(yaml.safe_dump(BASE))
    assert [backend.name for backend in config.backends] == ["a", "b"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=st.one_of(random_config(), mutated_config()), flow=st.booleans())
def test_structured_yaml_gives_config_or_config_error(document: dict[str, Any], flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    try:
        config = parse_config(text, environ={"X": "1"})
    except ConfigError as exc:
        event("ConfigError")
        assert exc.issues
        assert all(isinstance(issue, ConfigIssue) for issue in exc.issues)
        assert all(issue.line is None or issue.line >= 1 for issue in exc.issues)
        assert all(str(issue) for issue in exc.issues)
    else:
        event("Config")
        assert isinstance(config, Config)
        assert config.backends
