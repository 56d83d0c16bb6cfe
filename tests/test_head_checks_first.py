"""Every check that needs only the request head runs before any of the body is read
(route.start): a client that is refused (401 no token, 421 Host, 429 rate limit, 508
loop) is answered as soon as its head is in, whatever body it announces, and cannot make
the proxy hold a body buffer (limits.request_buffer, 64 KiB) per connection. Before, the
body was buffered first and the checks ran after: a client announcing 10 MB got no
answer until it had sent 64 KiB.

Raw sockets to an in-process proxy on loopback: each refusal arrives before a single
body byte was sent, carries ``Connection: close``, and what the client sends after it
(the body it was uploading, shaped like a request) is never parsed as a request: no
second answer, nothing reaches the backend, the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import RateLimitConfig, RedisConfig
from mcplb.proxy.relay.states import PAUSE_CHECKING
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.redis_server import RedisServer

TEN_MB = 10_000_000  # below limits.max_body_bytes (10 MiB): not a 413
ANSWER_WITHIN = 5.0  # seconds: the old code answered only after 64 KiB of body
# What a client still uploading sends after the refusal: bytes that look like a request.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

FRAMINGS = {
    "content-length": f"Content-Length: {TEN_MB}\r\n".encode(),
    "chunked": b"Transfer-Encoding: chunked\r\n",
}


class Backend:
    """An aiohttp backend that records the paths it was asked for (and the body sizes)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: list[int] = []

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            self.sizes.append(len(await request.read()))
            return web.Response(text="ok")

        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", handle)
        return application


def auth_off_the_network() -> Any:
    """An auth section (a request without a token is refused before any key is needed)."""
    config = parse_config(
        """
backends: [{name: a, url: "http://127.0.0.1:9"}]
auth:
  resource: https://mcp.example.com/mcp
  jwt: {issuer: "https://idp.example.com", jwks_url: "http://127.0.0.1:9/jwks"}
"""
    )
    return config.auth


async def refused_at_the_head(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send ``head`` only; the answer's head must come before any body byte. Then send
    what an uploading client would (a request's shape) and read to the end: returns
    (answer head, everything after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)
        with contextlib.suppress(ConnectionError):
            writer.write(b"x" * 1000 + SMUGGLED)  # body bytes, then a request's shape
            await writer.drain()
        rest = await asyncio.wait_for(reader.read(), ANSWER_WITHIN)  # EOF: closed
        return answer, rest
    finally:
        writer.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def assert_closed_after(answer: bytes, rest: bytes) -> None:
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert b"HTTP/1.1" not in rest  # one answer: the smuggled bytes were no request


@pytest.fixture
async def backend(serve_app: AppFactory) -> tuple[Backend, int]:
    seen = Backend()
    return seen, await serve_app(seen.app())


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_no_token_gets_401_before_the_body(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], framing: str
) -> None:
    seen, port = backend
    proxy = await start_proxy([backend_config("a", port)], auth=auth_off_the_network())
    head = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer, rest = await refused_at_the_head(proxy.port, head + FRAMINGS[framing] + b"\r\n")
    assert status(answer) == 401
    assert b"www-authenticate: bearer" in answer.lower()
    assert_closed_after(answer, rest)
    assert seen.paths == []


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_a_host_not_served_gets_421_before_the_body(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], framing: str
) -> None:
    seen, port = backend
    proxy = await start_proxy([backend_config("a", port)], allowed_hosts=("mcp.example.com",))
    head = b"POST /mcp HTTP/1.1\r\nHost: evil.example\r\n"
    answer, rest = await refused_at_the_head(proxy.port, head + FRAMINGS[framing] + b"\r\n")
    assert status(answer) == 421
    assert_closed_after(answer, rest)
    assert seen.paths == []


async def spend_the_burst(port: int) -> None:
    """One request that takes the only token (and is served)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)) == 200
    writer.close()


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_a_rate_limited_client_gets_429_before_the_body(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], framing: str
) -> None:
    seen, port = backend
    limit = RateLimitConfig(rate=0.001, burst=1)
    proxy = await start_proxy([backend_config("a", port)], rate_limit=limit)
    await spend_the_burst(proxy.port)
    head = b"POST /mcp HTTP/1.1\r\nHost: x\r\n"
    answer, rest = await refused_at_the_head(proxy.port, head + FRAMINGS[framing] + b"\r\n")
    assert status(answer) == 429
    assert b"\r\nretry-after: " in answer.lower()
    assert_closed_after(answer, rest)
    assert seen.paths == ["/first"]


async def test_a_redis_rate_limit_answers_before_the_body_and_lets_the_next_through_whole(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], redis_server: RedisServer
) -> None:
    """The Redis limiter's answer is awaited with reading paused (PAUSE_CHECKING): refused,
    nothing was read; let through, the body that waited arrives whole."""
    seen, port = backend
    redis = RedisConfig(url=redis_server.url, prefix="mcplb:headcheck:")
    limit = RateLimitConfig(rate=0.001, burst=2, store="redis", redis=redis)
    proxy = await start_proxy([backend_config("a", port)], rate_limit=limit)
    body = b"b" * 200_000
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
    writer.write(body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)
    assert status(head) == 200
    writer.close()
    await spend_the_burst(proxy.port)
    answer, rest = await refused_at_the_head(
        proxy.port, b"POST /mcp HTTP/1.1\r\nHost: x\r\n" + FRAMINGS["content-length"] + b"\r\n"
    )
    assert status(answer) == 429
    assert_closed_after(answer, rest)
    assert (seen.paths, seen.sizes) == (["/whole", "/first"], [200_000, 0])


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_a_loop_gets_508_before_the_body(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], framing: str
) -> None:
    seen, port = backend
    proxy = await start_proxy([backend_config("a", port)])
    via = b"Via: " + proxy.runtime.frontend.via + b"\r\n"
    head = b"POST /mcp HTTP/1.1\r\nHost: x\r\n" + via
    answer, rest = await refused_at_the_head(proxy.port, head + FRAMINGS[framing] + b"\r\n")
    assert status(answer) == 508
    assert_closed_after(answer, rest)
    assert seen.paths == []


@pytest.mark.parametrize("modern", [False, True])
async def test_expect_100_continue_gets_the_refusal_never_a_100(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], modern: bool
) -> None:
    """A 2026-07-28 POST's body is read by the proxy itself (which then sends the 100):
    not before the head's checks passed."""
    seen, port = backend
    proxy = await start_proxy([backend_config("a", port)], auth=auth_off_the_network())
    head = (
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\n" + FRAMINGS["content-length"]
    )
    if modern:
        head += b"MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/list\r\n"
    answer, rest = await refused_at_the_head(proxy.port, head + b"\r\n")
    assert status(answer) == 401
    assert b"100 Continue" not in answer + rest
    assert_closed_after(answer, rest)
    assert seen.paths == []


async def test_a_modern_post_refused_at_the_head_is_not_read(
    start_proxy: ProxyFactory, backend: tuple[Backend, int]
) -> None:
    """The 2026-07-28 body read (64 KiB, to check its routing headers) waits for the
    head's checks too."""
    seen, port = backend
    proxy = await start_proxy([backend_config("a", port)], auth=auth_off_the_network())
    head = (
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: t\r\n"
        b"Content-Length: 60000\r\n\r\n"
    )
    answer, rest = await refused_at_the_head(proxy.port, head)
    assert status(answer) == 401
    assert_closed_after(answer, rest)
    assert seen.paths == []


class SlowIdp:
    """A JWKS endpoint that answers only when told: the proxy's first token check waits
    for it (KEYS_PENDING)."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": "k1", "use": "sig"}
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        async def jwks(request: web.Request) -> web.Response:
            self.asked.set()
            await self.release.wait()
            return web.json_response({"keys": [self.jwk]})

        application = web.Application()
        application.router.add_get("/jwks", jwks)
        return application

    def token(self) -> str:
        claims = {
            "iss": "https://idp.example.com",
            "sub": "alice",
            "aud": "https://mcp.example.com/mcp",
            "exp": int(time.time()) + 600,
        }
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": "k1"})


async def test_no_body_is_read_while_the_jwks_is_awaited(
    start_proxy: ProxyFactory, backend: tuple[Backend, int], serve_app: AppFactory
) -> None:
    """A token whose key is not held yet waits for one JWKS fetch with reading paused
    (PAUSE_CHECKING); once the key is in, the request is routed and its body, read then,
    reaches the backend whole."""
    seen, port = backend
    idp = SlowIdp()
    idp_port = await serve_app(idp.app())
    auth = parse_config(
        f"""
backends: [{{name: a, url: "http://127.0.0.1:9"}}]
auth:
  resource: https://mcp.example.com/mcp
  jwt: {{issuer: "https://idp.example.com", jwks_url: "http://127.0.0.1:{idp_port}/jwks"}}
"""
    ).auth
    proxy = await start_proxy([backend_config("a", port)], auth=auth)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = (
        f"POST /up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {idp.token()}\r\n"
        "Content-Length: 300000\r\n\r\n"
    )
    writer.write(head.encode())
    await asyncio.wait_for(idp.asked.wait(), ANSWER_WITHIN)
    (conn,) = proxy.connections
    assert conn.flow.reasons & PAUSE_CHECKING  # the head is in, the check waits: no body
    writer.write(b"b" * 300_000)
    idp.release.set()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)
    assert status(answer) == 200
    assert (seen.paths, seen.sizes) == (["/up"], [300_000])
    assert not conn.flow.reasons
    writer.close()


async def test_a_body_sent_with_the_refused_head_is_not_kept(
    start_proxy: ProxyFactory, backend: tuple[Backend, int]
) -> None:
    """The head and 60 KiB of body in one write: the 401 goes out, and the body bytes the
    parser already held are dropped, not kept on the request while the connection
    lingers (measured before: 64 KiB of resident memory per such connection)."""
    _, port = backend
    proxy = await start_proxy([backend_config("a", port)], auth=auth_off_the_network())
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = b"POST /mcp HTTP/1.1\r\nHost: x\r\n" + FRAMINGS["content-length"] + b"\r\n"
    writer.write(head + b"b" * 60 * 1024)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)
    assert status(answer) == 401
    (conn,) = proxy.connections  # lingering: reading and discarding for a moment
    assert conn.current is not None
    assert (conn.current.buffered, conn.current.body) == (0, [])
    writer.close()
