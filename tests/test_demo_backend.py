"""The demo MCP backend, run as a real subprocess and driven by the real SDK client."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.peers import (
    INITIALIZE,
    MCP_HEADERS,
    McpBackend,
    Peers,
    mcp_call,
    mcp_session,
    result_text,
    start_mcp_backend,
    start_mcp_backend_sync,
)


@pytest.fixture(scope="module")
def backend() -> Iterator[McpBackend]:
    """One stateful backend shared by the read-only tests of this module."""
    b = start_mcp_backend_sync("mcp-a")
    yield b
    b.stop_sync()


async def post_initialize(url: str) -> tuple[int, dict[str, str], str]:
    headers = MCP_HEADERS
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url, data=json.dumps(INITIALIZE), headers=headers) as resp,
    ):
        body = await resp.text()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body


async def test_whoami_and_add(backend: McpBackend) -> None:
    async with mcp_session(backend.mcp_url) as session:
        assert session.server_info is not None
        assert session.server_info.name == "mcp-a"
        who = await session.call_tool("whoami")
        assert not who.is_error
        assert result_text(who) == "mcp-a"
        added = await session.call_tool("add", {"a": 2, "b": 3})
        assert not added.is_error
        assert result_text(added) == "5"
        assert added.structured_content == {"result": 5}


async def test_mcp_call_one_shot(backend: McpBackend) -> None:
    result = await mcp_call(backend.mcp_url, "add", {"a": -7, "b": 10})
    assert result_text(result) == "3"


async def test_countdown_streams_progress_before_result(backend: McpBackend) -> None:
    n, delay = 5, 0.1
    seen: list[tuple[float, float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), progress, total, message))

    async with mcp_session(backend.mcp_url) as session:
        started = time.monotonic()
        result = await session.call_tool(
            "countdown", {"n": n, "delay": delay}, progress_callback=on_progress
        )
        finished = time.monotonic()

    assert not result.is_error
    assert result_text(result) == "liftoff"
    assert [(p, t, m) for _, p, t, m in seen] == [
        (float(i), float(n), f"{n - i} left") for i in range(1, n + 1)
    ]
    # Streamed, not buffered: the first notification arrived long before the result.
    assert finished - started >= n * delay * 0.9
    assert finished - seen[0][0] >= (n - 1) * delay * 0.8


async def test_countdown_rejects_out_of_range(backend: McpBackend) -> None:
    async with mcp_session(backend.mcp_url) as session:
        for args in ({"n": 0}, {"n": 101}, {"n": 1, "delay": 5.5}, {"n": 1, "delay": -1}):
            result = await session.call_tool("countdown", args)
            assert result.is_error, args


async def test_stateful_initialize_sets_session_id(backend: McpBackend) -> None:
    status, headers, body = await post_initialize(backend.mcp_url)
    assert status == 200
    assert headers.get("mcp-session-id")
    assert headers["content-type"].startswith("text/event-stream")
    assert '"serverInfo":{"name":"mcp-a"' in body


async def test_stateless_initialize_sets_no_session_id(peers: Peers) -> None:
    backend = await peers.backend("mcp-s", stateless=True, json_response=True)
    status, headers, body = await post_initialize(backend.mcp_url)
    assert status == 200
    assert "mcp-session-id" not in headers
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["result"]["serverInfo"]["name"] == "mcp-s"
    # The SDK client works against it too, and any request may go to any replica.
    assert result_text(await mcp_call(backend.mcp_url, "whoami")) == "mcp-s"


async def test_sse_transport_sends_endpoint_event(peers: Peers) -> None:
    backend = await peers.backend("mcp-sse", transport="sse")
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(backend.sse_url, headers={"Accept": "text/event-stream"}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        async with asyncio.timeout(5):
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if event:
                        break
                    continue
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")
    assert event["event"] == "endpoint"
    assert event["data"].startswith("/messages/?session_id=")


async def test_sigterm_exits_cleanly(peers: Peers) -> None:
    backend = await peers.backend("mcp-term")
    # An open session with a GET stream must not block the shutdown.
    async with mcp_session(backend.mcp_url) as session:
        await session.call_tool("whoami")
        backend.send_signal(signal.SIGTERM)
        assert await backend.wait(8.0) == 0
    assert "Traceback" not in backend.output()


async def test_async_context_manager_stops_backend() -> None:
    async with await start_mcp_backend("mcp-ctx") as backend:
        assert result_text(await mcp_call(backend.mcp_url, "whoami")) == "mcp-ctx"
    assert backend.returncode is not None
