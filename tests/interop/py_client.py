"""Python SDK MCP client sessions for the interop matrix: the same steps, and the same
record, as ``ts_client.mjs`` (see there), so the test treats both clients alike."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import httpx2
from mcp import ClientSession, types
from mcp.client.session import IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.support.peers import MCP_ACCEPT, result_text

TIMEOUT = 20.0
COUNTER_URI = "demo://counter"


def _client(seen: list[str]) -> httpx2.AsyncClient:
    """An HTTP client that records every Mcp-Session-Id a response hands out."""

    async def record(response: httpx2.Response) -> None:
        if (token := response.headers.get("mcp-session-id")) is not None:
            seen.append(token)

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(TIMEOUT, read=300), event_hooks={"response": [record]}
    )


async def _resume(http: httpx2.AsyncClient, url: str, session_id: str, version: str) -> None:
    """A streamed call read to its end, then resumed with GET + Last-Event-ID at its first
    event: the backend that owns the session replays the rest, result included. (The call
    is read to the end first so that every event is stored when the resume asks for it.)"""
    headers = {
        "accept": MCP_ACCEPT,
        "content-type": "application/json",
        "mcp-session-id": session_id,
        "mcp-protocol-version": version,
    }
    call = {
        "jsonrpc": "2.0",
        "id": "resume-me",
        "method": "tools/call",
        "params": {"name": "countdown", "arguments": {"n": 3, "delay": 0.1}},
    }
    event_id = None
    async with http.stream("POST", url, json=call, headers=headers) as response:
        if response.status_code != 200:
            raise AssertionError(f"streamed call: status {response.status_code}")
        async for line in response.aiter_lines():
            if line.startswith("id:") and event_id is None:
                event_id = line[3:].strip()
    if event_id is None:
        raise AssertionError("the streamed call had no event ids")
    get_headers = {"accept": "text/event-stream", "last-event-id": event_id}
    get_headers |= {k: v for k, v in headers.items() if k.startswith("mcp-")}
    async with http.stream("GET", url, headers=get_headers) as response:
        if response.status_code != 200:
            raise AssertionError(f"resume: status {response.status_code}")
        async for line in response.aiter_lines():
            if "liftoff" in line:
                return
    raise AssertionError("resume: the stream ended before the replayed result")


async def run_session(url: str, transport: str, steps: str = "full") -> dict[str, Any]:
    """One session over ``transport`` ("streamable" or "sse"); the record ts_client.mjs prints."""
    record: dict[str, Any] = {"ok": False, "names": [], "token": None, "error": None, "steps": []}
    seen: list[str] = []
    updated = asyncio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.set()

    async def whoami(session: ClientSession) -> None:
        record["names"].append(result_text(await session.call_tool("whoami", {})))

    try:
        with anyio.fail_after(TIMEOUT * 2):
            async with _client(seen) as http:
                if transport == "sse":
                    opened = sse_client(url, httpx_client_factory=lambda **kw: _client(seen))
                else:
                    opened = streamable_http_client(url, http_client=http)
                async with (
                    opened as (read, write),
                    ClientSession(read, write, message_handler=on_message) as session,
                ):
                    version = (await session.initialize()).protocol_version
                    record["steps"].append("initialize")
                    if steps == "calls":
                        for _ in range(6):
                            await whoami(session)
                        record["steps"].append("calls")
                    else:
                        await _full(session, whoami, record, updated)
                        if transport != "sse":
                            await _resume(http, url, seen[-1], version)
                            record["steps"].append("resume")
                        await whoami(session)
                if transport != "sse":
                    # The SDK DELETEd the session on exit; it must have been answered 2xx.
                    record["token"] = seen[-1] if seen else None
                    record["steps"].append("delete")
        record["ok"] = True
    except Exception as error:  # the record says what failed; the test asserts on it
        record["error"] = repr(error)
    return record


async def _full(
    session: ClientSession, whoami: Any, record: dict[str, Any], updated: asyncio.Event
) -> None:
    tools = await session.list_tools()
    if "countdown" not in {tool.name for tool in tools.tools}:
        raise AssertionError("no countdown tool")
    record["steps"].append("tools/list")
    await whoami(session)
    if result_text(await session.call_tool("add", {"a": 2, "b": 3})) != "5":
        raise AssertionError("add")
    record["steps"].append("tools/call")
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    result = await session.call_tool(
        "countdown", {"n": 3, "delay": 0.05}, progress_callback=on_progress
    )
    if result_text(result) != "liftoff" or len(progress) != 3:
        raise AssertionError(f"countdown: {result_text(result)} after {progress}")
    record["steps"].append("progress")
    await session.subscribe_resource(COUNTER_URI)
    await session.call_tool("bump", {})
    with anyio.fail_after(TIMEOUT):
        await updated.wait()
    record["steps"].append("subscription")
