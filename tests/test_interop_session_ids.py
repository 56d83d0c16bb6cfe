"""Session ids as servers of every SDK hand them out, in-process: a TypeScript-like backend
that repeats ``Mcp-Session-Id`` on every response (and may mint a new one later), and
legacy SSE servers that name the session with whatever query key they like."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mcplb.proxy.config.schema import RedisConfig, StickyConfig
from mcplb.proxy.server.worker import ProxyServer
from mcplb.proxy.sessions import affinity
from mcplb.proxy.sessions.tokens import TokenCodec
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.redis_server import RedisServer

KEY = "interop-key-" + "k" * 32
SESSION = "Mcp-Session-Id"


class RepeatingBackend:
    """Answers as TypeScript SDK servers do: the session id on every response of the
    session (JSON, SSE, GET stream, DELETE), a new id when asked to (``?rotate=1``), 404
    for an id it does not know. Records every id it is sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: set[str] = set()
        self.seen: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/mcp", self.mcp)

    def mint(self) -> str:
        session = f"{self.name}-{uuid.uuid4().hex}"
        self.sessions.add(session)
        return session

    async def mcp(self, request: web.Request) -> web.StreamResponse:
        session = request.headers.get(SESSION)
        if session is None:
            if request.method != "POST":
                return web.json_response({"error": "no session"}, status=400)
            session = self.mint()
            return web.json_response({"served_by": self.name}, headers={SESSION: session})
        self.seen.append(session)
        if session not in self.sessions:
            return web.json_response({"error": {"message": "Session not found"}}, status=404)
        if request.method == "DELETE":
            self.sessions.discard(session)
            return web.json_response({}, headers={SESSION: session})
        if "rotate" in request.query:
            self.sessions.discard(session)
            session = self.mint()
        headers = {SESSION: session}
        if request.method == "GET" or "stream" in request.query:
            headers["Content-Type"] = "text/event-stream"
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await response.write(f'data: {{"served_by": "{self.name}"}}\n\n'.encode())
            await response.write_eof()
            return response
        return web.json_response({"served_by": self.name, "session": session}, headers=headers)


async def repeating_proxy(
    start_proxy: ProxyFactory, serve_app: AppFactory, **sticky: Any
) -> tuple[ProxyServer, list[RepeatingBackend]]:
    backends = [RepeatingBackend(n) for n in ("a", "b")]
    configs = [backend_config(b.name, await serve_app(b.app)) for b in backends]
    return await start_proxy(configs, sticky=StickyConfig(**sticky)), backends


async def request(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    method: str = "POST",
    session: str | None = None,
    query: str = "",
) -> tuple[int, str | None, str]:
    """(status, the Mcp-Session-Id the client is handed, body)."""
    headers = {SESSION: session} if session else {}
    url = f"http://127.0.0.1:{proxy.port}/mcp{query}"
    async with http.request(method, url, json={}, headers=headers) as response:
        return response.status, response.headers.get(SESSION), await response.text()


def redis_sticky(redis: RedisServer) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{redis.port}/0"
    return {"store": "redis", "redis": dataclasses.replace(RedisConfig(), url=url)}


async def test_signed_ids_are_sealed_on_every_response(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, backends = await repeating_proxy(start_proxy, serve_app, store="signed", keys=(KEY,))
    async with aiohttp.ClientSession() as http:
        status, token, _ = await request(http, proxy)
        assert status == 200 and token is not None and token.startswith("v1.")
        # JSON, SSE, the GET stream: the client is handed back its own token every time
        # (a TypeScript client adopts whatever id the last response carried).
        for method, query in (("POST", ""), ("POST", "?stream=1"), ("GET", ""), ("POST", "")):
            status, handed, _ = await request(http, proxy, method, token, query)
            assert (status, handed) == (200, token), (method, query)
        # DELETE reaches the backend with its own id: the backend's session really ends.
        status, handed, _ = await request(http, proxy, "DELETE", token)
        assert (status, handed) == (200, token)
        assert all(not b.sessions for b in backends)
        assert (await request(http, proxy, "POST", token))[0] == 404
    # No backend ever saw a token: only its own ids.
    assert all(not seen.startswith("v1.") for b in backends for seen in b.seen)


async def test_a_new_id_on_a_later_response_is_sealed_afresh(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, _ = await repeating_proxy(start_proxy, serve_app, store="signed", keys=(KEY,))
    codec = TokenCodec([KEY], "session")
    async with aiohttp.ClientSession() as http:
        _, token, _ = await request(http, proxy)
        assert token is not None
        opened = codec.open(token)
        assert opened is not None
        owner, first = opened
        status, fresh, _ = await request(http, proxy, "POST", token, "?rotate=1")
        assert status == 200 and fresh is not None and fresh != token
        reopened = codec.open(fresh)
        assert reopened is not None and reopened[0] == owner and reopened[1] != first
        status, handed, body = await request(http, proxy, "POST", fresh)
        assert (status, handed) == (200, fresh)
        assert f'"session": "{reopened[1]}"' in body


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_stores_bind_once_and_follow_a_new_id(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    redis_server: RedisServer,
    store: str,
) -> None:
    sticky = redis_sticky(redis_server) if store == "redis" else {"store": "memory"}
    proxy, _ = await repeating_proxy(start_proxy, serve_app, **sticky)
    stats = proxy.runtime.stats.backends
    async with aiohttp.ClientSession() as http:
        _, session, _ = await request(http, proxy)
        assert session is not None
        owner = session.split("-")[0]
        for _ in range(5):
            status, handed, _ = await request(http, proxy, "POST", session)
            assert (status, handed) == (200, session)
        # The id repeated on every response is one session, bound once.
        assert sum(s.sessions_created for s in stats.values()) == 1
        status, fresh, _ = await request(http, proxy, "POST", session, "?rotate=1")
        assert status == 200 and fresh is not None and fresh != session
        status, _, body = await request(http, proxy, "POST", fresh)
        assert status == 200 and f'"served_by": "{owner}"' in body
        assert stats[owner].sessions_created == 2


class LegacyBackend:
    """A 2024-11-05 HTTP+SSE server that announces ``/message?<key>=<id>``."""

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self.sessions: set[str] = set()
        self.closing = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/sse", self.sse)
        self.app.router.add_post("/message", self.message)
        self.app.router.add_get("/page", self.page)

    async def sse(self, request: web.Request) -> web.StreamResponse:
        session = f"{self.name}-{uuid.uuid4().hex}"
        self.sessions.add(session)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: endpoint\ndata: /message?{self.key}={session}\n\n".encode())
        await self.closing.wait()
        return response

    async def message(self, request: web.Request) -> web.Response:
        session = request.query.get(self.key, "")
        if session not in self.sessions:
            return web.json_response({"error": "Could not find session"}, status=404)
        return web.json_response({"served_by": self.name, "session": session}, status=202)

    async def page(self, request: web.Request) -> web.Response:
        return web.json_response({"served_by": self.name})


ENDPOINT = re.compile(r"data: (/message\?\w+=\S+)")


@pytest.fixture
async def legacy_backends() -> AsyncIterator[list[LegacyBackend]]:
    made: list[LegacyBackend] = []
    yield made
    for backend in made:
        backend.closing.set()


@pytest.mark.parametrize("key", ["session_id", "sessionId", "sid"])
@pytest.mark.parametrize("store", ["memory", "signed", "redis"])
async def test_legacy_sse_session_in_any_query_key(
    start_proxy: ProxyFactory,
    serve_app: AppFactory,
    redis_server: RedisServer,
    legacy_backends: list[LegacyBackend],
    store: str,
    key: str,
) -> None:
    legacy_backends += [LegacyBackend(n, key) for n in ("a", "b")]
    configs = [backend_config(b.name, await serve_app(b.app)) for b in legacy_backends]
    sticky = {
        "memory": {"store": "memory"},
        "signed": {"store": "signed", "keys": (KEY,)},
        "redis": redis_sticky(redis_server),
    }[store]
    proxy = await start_proxy(configs, sticky=StickyConfig(**sticky))
    base = f"http://127.0.0.1:{proxy.port}"
    async with aiohttp.ClientSession() as http:
        streams = [await http.get(f"{base}/sse") for _ in range(4)]
        try:
            for stream in streams:
                line = b""
                while b"data:" not in line:
                    line = await asyncio.wait_for(stream.content.readline(), 10)
                found = ENDPOINT.search(line.decode())
                assert found is not None, line
                endpoint = found.group(1)
                announced = endpoint.split("=", 1)[1]
                assert announced.startswith("v1.") == (store == "signed")
                for _ in range(3):
                    async with http.post(base + endpoint, json={}) as response:
                        body = await response.json()
                        # The owner got it, with its own id (the backend names itself in it).
                        assert response.status == 202, body
                        assert body["session"].startswith(body["served_by"] + "-")
        finally:
            for stream in streams:
                stream.close()
        # A query that names no session is balanced as any request, never refused.
        for query in ("?page=2", f"?q={uuid.uuid4().hex}"):
            async with http.get(f"{base}/page{query}") as response:
                assert response.status == 200


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/messages/?session_id=abc", ("abc", True)),
        (b"/message?sessionId=0f3c-uuid", ("0f3c-uuid", True)),
        (b"/m?x=1&sessionId=abc&y=2", ("abc", True)),
        (b"/m?sid=" + b"a" * 16, ("a" * 16, False)),  # another key: the only parameter
        (b"/m?sid=" + b"a" * 15, None),  # too short to be taken for a session id
        (b"/m?sid=" + b"a" * 15 + b"%", None),  # not URL-safe
        (b"/m?sid=" + b"a" * 20 + b"&page=2", None),  # several, none of them known
        (b"/m?session_id=", None),
        (b"/m", None),
    ],
)
def test_query_session(target: bytes, expected: tuple[str, bool] | None) -> None:
    assert affinity.query_session(target) == expected


def test_replace_query_value_keeps_the_other_parameters() -> None:
    target = b"/m?a=1&sessionId=v1.tok&b=v1.tok"
    assert affinity.replace_query_value(target, "v1.tok", "raw id") == (
        b"/m?a=1&sessionId=raw%20id&b=v1.tok"
    )
