"""MCP session affinity with real SDK servers and the SDK's own client."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from mcplb.proxy.server.worker import ProxyServer
from mcplb.proxy.sessions.store import MemorySessionStore
from tests.conftest import ProxyFactory, backend_config
from tests.support.peers import (
    INITIALIZE,
    MCP_HEADERS,
    McpBackend,
    Peers,
    mcp_call,
    mcp_session,
    result_text,
)


async def three_backends(peers: Peers, stateless: bool = False) -> list[McpBackend]:
    return list(
        await asyncio.gather(
            *(peers.backend(f"mcp-{n}", stateless=stateless) for n in ("a", "b", "c"))
        )
    )


async def proxy_for(start_proxy: ProxyFactory, backends: list[McpBackend]) -> ProxyServer:
    return await start_proxy([backend_config(b.name, b.port) for b in backends])


def bindings(proxy: ProxyServer) -> int:
    store = proxy.runtime.sessions
    assert isinstance(store, MemorySessionStore)
    return len(store)


def mcp_url(proxy: ProxyServer) -> str:
    return f"http://127.0.0.1:{proxy.port}/mcp"


async def test_each_session_stays_on_its_backend(peers: Peers, start_proxy: ProxyFactory) -> None:
    proxy = await proxy_for(start_proxy, await three_backends(peers))

    async def one_session() -> set[str]:
        async with mcp_session(mcp_url(proxy)) as session:
            names = set()
            for _ in range(4):
                names.add(result_text(await session.call_tool("whoami", {})))
                assert result_text(await session.call_tool("add", {"a": 2, "b": 3})) == "5"
            return names

    per_session = await asyncio.gather(*(one_session() for _ in range(6)))
    assert all(len(names) == 1 for names in per_session)
    # Round-robin spread the six initializes over all three backends.
    assert set().union(*per_session) == {"mcp-a", "mcp-b", "mcp-c"}
    # Every session was DELETEd on exit, and DELETE forgot its binding.
    assert bindings(proxy) == 0
    assert all(b.sessions == 0 and b.in_flight == 0 for b in proxy.runtime.cluster.backends)


async def test_progress_notifications_stream_through(
    peers: Peers, start_proxy: ProxyFactory
) -> None:
    proxy = await proxy_for(start_proxy, [await peers.backend("mcp-a")])
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    result = await mcp_call(
        mcp_url(proxy), "countdown", {"n": 4, "delay": 0.05}, progress_callback=on_progress
    )
    assert result_text(result) == "liftoff"
    assert progress == [1, 2, 3, 4]


async def test_stateless_backends_are_balanced_freely(
    peers: Peers, start_proxy: ProxyFactory
) -> None:
    proxy = await proxy_for(start_proxy, await three_backends(peers, stateless=True))
    async with mcp_session(mcp_url(proxy)) as session:
        names = [result_text(await session.call_tool("whoami", {})) for _ in range(6)]
    # No session id to follow: consecutive calls of one client go round the backends.
    assert set(names) == {"mcp-a", "mcp-b", "mcp-c"}
    assert bindings(proxy) == 0


async def test_unknown_session_is_404_with_jsonrpc_body(
    peers: Peers, start_proxy: ProxyFactory
) -> None:
    proxy = await proxy_for(start_proxy, [await peers.backend("mcp-a")])
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            mcp_url(proxy),
            json=ping,
            headers={**MCP_HEADERS, "Mcp-Session-Id": "0123456789abcdef"},
        ) as resp,
    ):
        assert resp.status == 404
        assert await resp.json() == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": "Session not found"},
        }


async def test_raw_session_lifecycle(peers: Peers, start_proxy: ProxyFactory) -> None:
    backends = await three_backends(peers)
    proxy = await proxy_for(start_proxy, backends)
    async with aiohttp.ClientSession() as http:
        async with http.post(mcp_url(proxy), json=INITIALIZE, headers=MCP_HEADERS) as resp:
            assert resp.status == 200
            session_id = resp.headers["Mcp-Session-Id"]
            await resp.read()
        owner = await proxy.runtime.sessions.get(session_id)
        assert owner in {"mcp-a", "mcp-b", "mcp-c"}
        assert proxy.runtime.cluster.backends.by_name[owner].sessions == 1
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        async with http.delete(mcp_url(proxy), headers=headers) as resp:
            assert resp.status == 200
        assert await proxy.runtime.sessions.get(session_id) is None
        assert proxy.runtime.cluster.backends.by_name[owner].sessions == 0
        # The proxy no longer knows the id: answered without a trip to a backend.
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        async with http.post(mcp_url(proxy), json=ping, headers=headers) as resp:
            assert resp.status == 404


async def test_non_initialize_400_does_not_bind(peers: Peers, start_proxy: ProxyFactory) -> None:
    # A stateful SDK server sets a fresh session id even on a 400 for a session-less
    # non-initialize request; binding it would route a session that does not exist.
    proxy = await proxy_for(start_proxy, [await peers.backend("mcp-a")])
    ping = {"jsonrpc": "2.0", "id": 4, "method": "ping"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(mcp_url(proxy), json=ping, headers=MCP_HEADERS) as resp,
    ):
        assert resp.status == 400
    assert bindings(proxy) == 0


async def test_session_of_a_killed_backend_gets_404_then_reinitializes(
    peers: Peers, start_proxy: ProxyFactory
) -> None:
    backends = await three_backends(peers)
    proxy = await proxy_for(start_proxy, backends)
    async with aiohttp.ClientSession() as http:
        async with http.post(mcp_url(proxy), json=INITIALIZE, headers=MCP_HEADERS) as resp:
            session_id = resp.headers["Mcp-Session-Id"]
            await resp.read()
        owner = await proxy.runtime.sessions.get(session_id)
        victim = next(b for b in backends if b.name == owner)
        await victim.kill()
        ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        async with http.post(mcp_url(proxy), json=ping, headers=headers) as resp:
            assert resp.status == 404
            assert json.loads(await resp.read())["error"]["message"] == "Session not found"
        assert await proxy.runtime.sessions.get(session_id) is None
    # A fresh session lands on a live backend and works.
    for _ in range(3):
        assert result_text(await mcp_call(mcp_url(proxy), "whoami")) != owner
