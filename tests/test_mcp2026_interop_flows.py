"""The 2026-07-28 flows a balancer must carry whole, with both SDKs as client and as
server, direct and through mcplb (3 backends, round robin, 1 and 2 workers):

- **progress**: a tool call that sends progress notifications; the client gets every
  one, in order, before the result (basic/patterns/progress.mdx; on Streamable HTTP they
  ride the call's own SSE response, "MUST relate to the originating client request");
- **subscriptions/listen**: one long POST whose SSE answer carries the change
  notifications (basic/patterns/subscriptions.mdx); the change is triggered by a later
  request, which round robin sends to another backend: the servers fan the event out
  among themselves (flows_server.*'s POST /bus, the SDKs' bus seam), the proxy only has
  to keep the stream open. The stream is held quiet past ``timeouts.upstream_header`` and
  ``timeouts.mcp_call`` with the proxy's SSE keep-alives on: neither cuts it, and the
  comments do not disturb either SDK's parser;
- **MRTR** (basic/patterns/mrtr.mdx): ``ask`` answers ``input_required`` with an
  elicitation and a sealed ``requestState``; the client retries with ``inputResponses``
  and the ``requestState`` echoed byte for byte, under a new JSON-RPC id ("the requests in
  each step are completely independent"), and the retry may land on another backend: the
  servers share the requestState key (the spec's answer for a fleet, not affinity). With
  one worker round robin sends every retry to another backend than its first leg.

Peers: tests/interop/flows_server.py (Python mcp 2.3), flows_server.mjs (TypeScript
@modelcontextprotocol/server 2.4), flows_client.mjs (TypeScript @modelcontextprotocol/client
2.4, pinned to 2026-07-28) and the Python ``mcp.Client`` (mode auto) below.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp_types import ElicitRequestParams, ElicitResult, TextContent

from tests.interop import INTEROP, MISSING, NODE
from tests.support.peers import LOOPBACK, Peers, _logs, _ManagedProcess, free_port, wait_for_port

QUIET = 6.0  # seconds a listen stream stays quiet: past upstream_header and mcp_call (5 s)
PROXY_TIMEOUTS = "timeouts: {upstream_header: 5s, mcp_call: 5s, sse_keepalive: 0.5s}\n"
ASKS = 3
PROGRESS = [1.0, 2.0, 3.0, 4.0, 5.0]


class FlowServer(_ManagedProcess):
    label = "flows server"

    def __init__(self, kind: str, name: str, port: int, key: str, peers: list[int]) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}/mcp"
        flags = ["--name", name, "--port", str(port), "--key", key]
        flags += ["--peers", ",".join(f"{LOOPBACK}:{p}" for p in peers)]
        if kind == "ts":
            argv = [str(NODE), str(INTEROP / "flows_server.mjs"), *flags]
        else:
            argv = [sys.executable, "-m", "tests.interop.flows_server", *flags]
        log = _logs() / f"flows-{kind}-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


@pytest.fixture
async def fleet_of() -> AsyncIterator[Any]:
    """fleet_of(kind): 3 flows servers of ``kind`` (py or ts) that know each other."""
    servers: list[FlowServer] = []

    async def start(kind: str) -> list[FlowServer]:
        assert NODE.exists(), MISSING
        key = secrets.token_hex(32)
        ports = [free_port() for _ in range(3)]
        for i, port in enumerate(ports):
            peers = [p for p in ports if p != port]
            servers.append(FlowServer(kind, f"{kind}{i}", port, key, peers))
        for server in servers:
            await wait_for_port(LOOPBACK, server.port, 30.0, process=server)
        return servers

    yield start
    await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)


@pytest.fixture
async def proxies() -> AsyncIterator[Peers]:
    async with Peers() as peers:
        yield peers


async def through_mcplb(
    proxies: Peers, tmp_path: Path, servers: list[FlowServer], workers: int
) -> str:
    port = free_port()
    text = f"listen: '127.0.0.1:{port}'\nworkers: {workers}\nbackends:\n"
    text += "".join(f"  - {{name: {s.name}, url: 'http://127.0.0.1:{s.port}'}}\n" for s in servers)
    text += PROXY_TIMEOUTS
    text += "sticky:\n  keys: ['" + "f" * 40 + "']\n"  # (several workers: signed sessions)
    proxy = await proxies.proxy(text, tmp_path, port=port)
    return f"{proxy.url}/mcp"


# --- the clients: each runs the three flows and returns the same record ----------------


async def ts_flows(url: str, quiet: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(INTEROP / "flows_client.mjs"),
        "--url",
        url,
        "--quiet",
        str(quiet),
        "--asks",
        str(ASKS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=INTEROP,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()
    record: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return record


def _text(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


async def py_flows(url: str, quiet: float) -> dict[str, Any]:
    async def elicit(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        return ElicitResult(action="accept", content={"answer": "yes"})

    record: dict[str, Any] = {}
    async with asyncio.timeout(90), Client(url, elicitation_callback=elicit) as client:
        values: list[float] = []
        resolved = False
        late = False

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            nonlocal late
            late = late or resolved
            values.append(progress)

        result = await client.call_tool("countdown", {"n": 5}, progress_callback=on_progress)
        resolved = True
        record["progress"] = {"values": values, "before_result": not late, "text": _text(result)}

        async with client.listen(tools_list_changed=True) as subscription:
            acked = subscription.honored.tools_list_changed is True
            await asyncio.sleep(quiet)  # the quiet spell under test, not a wait for an event
            changed_by = _text(await client.call_tool("change_tools", {}))
            try:
                async with asyncio.timeout(10):
                    event = await anext(subscription)
                notified = type(event).__name__ == "ToolsListChanged"
            except TimeoutError:
                notified = False
        record["listen"] = {
            "acked": acked,
            "quiet": quiet,
            "notified": notified,
            "changed_by": changed_by,
        }
        record["mrtr"] = [
            _text(await client.call_tool("ask", {"word": f"w{i}"})) for i in range(ASKS)
        ]
    return record


CLIENTS = {"ts": ts_flows, "py": py_flows}


def check(record: dict[str, Any], names: set[str]) -> None:
    """What every run must show, direct or through the proxy."""
    assert record["progress"] == {"values": PROGRESS, "before_result": True, "text": "liftoff"}
    listen = record["listen"]
    assert listen["acked"] and listen["notified"], listen
    assert listen["changed_by"].removeprefix("changed by ") in names
    for i, text in enumerate(record["mrtr"]):
        word, answer, _, asker, _, answerer = text.split(" ")
        assert (word, answer) == (f"w{i}", "yes") and {asker, answerer} <= names, text
    assert len(record["mrtr"]) == ASKS


# --- the matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["py", "ts"])
@pytest.mark.parametrize("client", ["py", "ts"])
async def test_flows_direct(fleet_of: Any, client: str, server: str) -> None:
    """Each flow against one server of the fleet, no proxy (the listen's change still
    comes through a peer's POST /bus: change_tools publishes to all three)."""
    servers = await fleet_of(server)
    record = await CLIENTS[client](servers[0].url, QUIET)
    check(record, {servers[0].name})
    assert all(t.endswith(f"asked-by {server}0 answered-by {server}0") for t in record["mrtr"])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("server", ["py", "ts"])
async def test_flows_through_mcplb(
    fleet_of: Any, proxies: Peers, tmp_path: Path, server: str, workers: int
) -> None:
    """Both clients through one mcplb in front of three servers: every flow as direct."""
    servers = await fleet_of(server)
    url = await through_mcplb(proxies, tmp_path, servers, workers)
    names = {s.name for s in servers}
    for client in ("py", "ts"):
        record = await CLIENTS[client](url, QUIET)
        check(record, names)
        legs = [(t.split(" ")[3], t.split(" ")[5]) for t in record["mrtr"]]
        if workers == 1:
            # Round robin sent retries to other backends than their first legs, and the
            # retry was served there from what it carried.
            assert any(asker != answerer for asker, answerer in legs), legs


async def test_listen_stream_carries_keepalives_between_events(
    fleet_of: Any, proxies: Peers, tmp_path: Path
) -> None:
    """The bytes of a listen stream through mcplb: the acknowledgment first, the proxy's SSE
    comments while it is quiet (only between events), then the change notification."""
    servers = await fleet_of("py")
    url = await through_mcplb(proxies, tmp_path, servers, 1)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "mcplb-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }

    def post(rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": method,
        }
        if method == "tools/call":
            headers["mcp-name"] = params["name"]
        body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": meta}}
        return {"data": json.dumps(body), "headers": headers}

    seen = bytearray()
    listen = post(1, "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(30),
        http.post(url, **listen) as stream,
    ):
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        while b"notifications/subscriptions/acknowledged" not in seen:
            seen += await stream.content.readany()
        while seen.count(b": keep-alive") < 2:  # 0.5 s each
            seen += await stream.content.readany()
        change = post(2, "tools/call", {"name": "change_tools", "arguments": {}})
        async with http.post(url, **change) as call:
            assert call.status == 200
            await call.read()
        while b"notifications/tools/list_changed" not in seen:
            seen += await stream.content.readany()
    raw = bytes(seen).replace(b"\r\n", b"\n")
    ack = raw.index(b"notifications/subscriptions/acknowledged")
    keepalive = raw.index(b": keep-alive\n\n")
    assert ack < keepalive < raw.index(b"notifications/tools/list_changed")
    for block in raw.split(b"\n\n"):  # every comment is a block of its own, never in an event
        if b": keep-alive" in block:
            assert block.strip() == b": keep-alive", block
