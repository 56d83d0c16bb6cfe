"""Sessions across workers and replicas: signed ids, Redis, the legacy SSE transport,
cookies and header stickiness. Real SDK clients, real backends, real redis-server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
from aiohttp import web
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from mcplb.proxy.config.schema import CookieConfig, RedisConfig, StickyConfig
from mcplb.proxy.sessions.tokens import TokenCodec
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.alternator import Alternator
from tests.support.peers import McpBackend, Peers, free_port, result_text
from tests.support.redis_server import start_redis

KEY_OLD = "old-key-" + "o" * 32
KEY_NEW = "new-key-" + "n" * 32


def fresh_connections(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client that opens a new connection for every request."""
    return httpx2.AsyncClient(
        headers=headers,
        timeout=timeout or httpx2.Timeout(30, read=300),
        auth=auth,
        limits=httpx2.Limits(max_keepalive_connections=0),
    )


async def streamable_session_names(url: str, calls: int = 6) -> set[str]:
    """Run one MCP session over Streamable HTTP; the backends that answered whoami."""
    names = set()
    with anyio.fail_after(60):
        async with (
            fresh_connections() as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for i in range(calls):
                names.add(result_text(await session.call_tool("whoami", {})))
                assert result_text(await session.call_tool("add", {"a": i, "b": 1})) == str(i + 1)
    return names


async def legacy_session_names(url: str, calls: int = 4) -> set[str]:
    """Run one MCP session over the 2024-11-05 HTTP+SSE transport."""
    names = set()
    with anyio.fail_after(60):
        async with (
            sse_client(url, httpx_client_factory=fresh_connections) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for _ in range(calls):
                names.add(result_text(await session.call_tool("whoami", {})))
    return names


def yaml_for(port: int, backends: list[McpBackend], sticky: str, workers: int = 1) -> str:
    entries = "".join(f"  - {{name: {b.name}, url: '{b.url}'}}\n" for b in backends)
    return f"listen: 127.0.0.1:{port}\nworkers: {workers}\nsticky:\n{sticky}backends:\n{entries}"


async def replicas_behind_alternator(
    peers: Peers, tmp_path: Path, backends: list[McpBackend], sticky: str
) -> Alternator:
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        await peers.proxy(
            yaml_for(port, backends, sticky), tmp_path, port=port, name=f"replica{index}"
        )
    alternator = Alternator(ports)
    await alternator.start()
    return alternator


async def check_sessions_alternating(alternator: Alternator, url: str, legacy: bool) -> None:
    run = legacy_session_names if legacy else streamable_session_names
    results = await asyncio.gather(*(run(url) for _ in range(4)))
    # Every call of every session succeeded and landed on the backend that created it.
    assert all(len(names) == 1 for names in results), results
    assert len(set().union(*results)) >= 2
    # ...although consecutive requests went to different replicas.
    assert min(alternator.connections.values()) >= 10, alternator.connections


async def test_signed_ids_across_replicas(peers: Peers, tmp_path: Path) -> None:
    backends = [await peers.backend(name) for name in ("mcp-a", "mcp-b", "mcp-c")]
    sticky = f"  store: signed\n  keys: ['{KEY_OLD}']\n"
    alternator = await replicas_behind_alternator(peers, tmp_path, backends, sticky)
    try:
        await check_sessions_alternating(
            alternator, f"http://127.0.0.1:{alternator.port}/mcp", legacy=False
        )
    finally:
        await alternator.close()


async def test_redis_store_across_replicas(peers: Peers, tmp_path: Path) -> None:
    redis = await start_redis()
    backends = [await peers.backend(name) for name in ("mcp-a", "mcp-b", "mcp-c")]
    sticky = f"  store: redis\n  redis: {{url: 'redis://127.0.0.1:{redis.port}/0'}}\n"
    alternator = await replicas_behind_alternator(peers, tmp_path, backends, sticky)
    try:
        await check_sessions_alternating(
            alternator, f"http://127.0.0.1:{alternator.port}/mcp", legacy=False
        )
    finally:
        await alternator.close()
        await redis.stop()


async def test_legacy_sse_transport_across_replicas(peers: Peers, tmp_path: Path) -> None:
    backends = [await peers.backend(n, transport="sse") for n in ("sse-a", "sse-b", "sse-c")]
    sticky = f"  store: signed\n  keys: ['{KEY_OLD}']\n"
    alternator = await replicas_behind_alternator(peers, tmp_path, backends, sticky)
    try:
        await check_sessions_alternating(
            alternator, f"http://127.0.0.1:{alternator.port}/sse", legacy=True
        )
    finally:
        await alternator.close()


async def test_legacy_sse_transport_with_memory_store(peers: Peers, tmp_path: Path) -> None:
    backends = [await peers.backend(n, transport="sse") for n in ("sse-a", "sse-b")]
    port = free_port()
    await peers.proxy(yaml_for(port, backends, "  store: memory\n"), tmp_path, port=port)
    results = await asyncio.gather(
        *(legacy_session_names(f"http://127.0.0.1:{port}/sse") for _ in range(3))
    )
    assert all(len(names) == 1 for names in results), results
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/messages/?session_id=0123456789abcdef0123456789abcdef",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        ) as resp,
    ):
        assert resp.status == 404


async def test_two_workers_with_signed_ids(peers: Peers, tmp_path: Path) -> None:
    backends = [await peers.backend(name) for name in ("mcp-a", "mcp-b")]
    port = free_port()
    sticky = f"  keys: ['{KEY_OLD}']\n"  # store defaults to signed with workers > 1
    await peers.proxy(yaml_for(port, backends, sticky, workers=2), tmp_path, port=port)
    results = await asyncio.gather(
        *(streamable_session_names(f"http://127.0.0.1:{port}/mcp") for _ in range(4))
    )
    assert all(len(names) == 1 for names in results), results


# --- in-process: what the proxy does with ids, cookies and headers ---------------------


class MintingBackend:
    """Mints ``NAME-N`` session ids on session-less POSTs and echoes the id it is sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.minted = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        session = request.headers.get("Mcp-Session-Id")
        headers = {}
        if session is None and request.method == "POST":
            self.minted += 1
            headers["Mcp-Session-Id"] = f"{self.name}-{self.minted}"
        body = {"served_by": self.name, "session": session}
        return web.json_response(body, headers=headers)


async def minting_proxy(
    start_proxy: ProxyFactory, serve_app: AppFactory, **sticky: Any
) -> tuple[Any, list[MintingBackend]]:
    backends = [MintingBackend(n) for n in ("a", "b")]
    configs = [backend_config(b.name, await serve_app(b.app)) for b in backends]
    proxy = await start_proxy(configs, sticky=StickyConfig(**sticky))
    return proxy, backends


async def call(
    http: aiohttp.ClientSession, port: int, session: str | None = None, **kwargs: Any
) -> tuple[int, Any, Any]:
    headers = {"Mcp-Session-Id": session} if session else {}
    async with http.post(f"http://127.0.0.1:{port}/mcp", json={}, headers=headers, **kwargs) as r:
        return r.status, r.headers.copy(), await r.json()


async def test_tampered_and_foreign_ids_are_404_and_reach_no_backend(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, backends = await minting_proxy(start_proxy, serve_app, store="signed", keys=(KEY_OLD,))
    async with aiohttp.ClientSession() as http:
        status, headers, body = await call(http, proxy.port)
        token = headers["Mcp-Session-Id"]
        owner = body["served_by"]
        assert status == 200 and token != f"{owner}-1" and token.isascii()
        # The backend sees its own id, whichever replica or worker decodes the token.
        status, _, body = await call(http, proxy.port, token)
        assert (status, body) == (200, {"served_by": owner, "session": f"{owner}-1"})
        flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
        foreign = TokenCodec([KEY_NEW], "session").seal("a", "a-1")
        cookie_token = TokenCodec([KEY_OLD], "cookie").seal("a", "a-1")
        before = sum(b.requests for b in backends)
        for bad in (flipped, token[:-5], foreign, cookie_token, "v1." + "A" * 5000, "a-1"):
            status, _, body = await call(http, proxy.port, bad)
            assert status == 404, bad
            assert body["error"]["message"] == "Session not found"
        assert sum(b.requests for b in backends) == before


async def test_key_rotation_keeps_old_sessions(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    old, _ = await minting_proxy(start_proxy, serve_app, store="signed", keys=(KEY_OLD,))
    rotated, _ = await minting_proxy(
        start_proxy, serve_app, store="signed", keys=(KEY_NEW, KEY_OLD)
    )
    async with aiohttp.ClientSession() as http:
        _, headers, _ = await call(http, old.port)
        assert (await call(http, rotated.port, headers["Mcp-Session-Id"]))[0] == 200
        _, headers, _ = await call(http, rotated.port)
        # Signed with the new key: the old-key-only proxy does not trust it.
        assert (await call(http, old.port, headers["Mcp-Session-Id"]))[0] == 404


async def test_redis_outage_keeps_local_bindings_and_serves_new_sessions(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    redis = await start_redis()
    try:
        proxy, _ = await minting_proxy(
            start_proxy,
            serve_app,
            store="redis",
            redis=dataclasses.replace(
                RedisConfig(), url=f"redis://127.0.0.1:{redis.port}/0", timeout=0.2
            ),
        )
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            _, headers, _ = await call(http, proxy.port)
            before = headers["Mcp-Session-Id"]
            await redis.kill()
            for _ in range(5):
                started = loop.time()
                assert (await call(http, proxy.port, before))[0] == 200
                status, headers, _ = await call(http, proxy.port)
                assert status == 200
                during = headers["Mcp-Session-Id"]
                assert (await call(http, proxy.port, during))[0] == 200
                assert loop.time() - started < 2.0  # bounded by the Redis timeout
            await redis.restart()
            # Recovers by itself: bindings made now land in Redis again.
            for _ in range(50):
                _, headers, _ = await call(http, proxy.port)
                if await redis.exists(f"mcplb:session:{headers['Mcp-Session-Id']}"):
                    break
                await asyncio.sleep(0.1)  # the store's backoff before it retries Redis
            else:
                raise AssertionError("bindings never reached Redis after it came back")
            assert (await call(http, proxy.port, before))[0] == 200
    finally:
        await redis.stop()


async def test_cookie_pins_clients_that_keep_cookies(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy, _ = await minting_proxy(
        start_proxy,
        serve_app,
        mcp_sessions=False,
        keys=(KEY_OLD,),
        cookie=CookieConfig(name="lb", ttl=60.0),
    )
    url = f"http://127.0.0.1:{proxy.port}/page"
    # unsafe: the jar otherwise ignores cookies set by an IP address like 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as with_jar:
        served = Counter()
        for _ in range(6):
            async with with_jar.get(url) as resp:
                served[(await resp.json())["served_by"]] += 1
        assert len(served) == 1
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as no_jar:
        served = Counter()
        for _ in range(6):
            async with no_jar.get(url) as resp:
                served[(await resp.json())["served_by"]] += 1
                assert "lb=" in resp.headers["Set-Cookie"]
                assert "Max-Age=60" in resp.headers["Set-Cookie"]
        assert served == Counter({"a": 3, "b": 3})
        async with no_jar.get(url, headers={"Cookie": "lb=v1.forged.value"}) as resp:
            assert resp.status == 200
            assert "lb=" in resp.headers["Set-Cookie"]  # a forged cookie is replaced


async def test_header_stickiness(start_proxy: ProxyFactory, serve_app: AppFactory) -> None:
    proxy, _ = await minting_proxy(start_proxy, serve_app, mcp_sessions=False, header="X-User")
    owners: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as http:
        for user in range(12):
            for _ in range(4):
                async with http.get(
                    f"http://127.0.0.1:{proxy.port}/", headers={"X-User": f"user-{user}"}
                ) as resp:
                    owners.setdefault(str(user), set()).add((await resp.json())["served_by"])
    assert all(len(names) == 1 for names in owners.values())
    assert len(set().union(*owners.values())) == 2
