"""The 2026-07-28 peers of the interop tests, each proved DIRECT (no proxy) first, then
through mcplb; and the MCP health probe against real servers of both eras.

Peers: the TypeScript SDK 2.4 server (tests/interop/ts2026_server.mjs: createMcpHandler,
modern-only with ``--legacy reject``, dual-era with ``stateless``) and client
(ts2026_client.mjs, pinned to 2026-07-28); the Python SDK 2.3 dual-era server with the
tasks extension (py_tasks_server.py) and its 2026 client (``mcp.Client``, mode auto); the
TypeScript SDK 1.32 server (ts_server.mjs, 2025 only).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mcplb.healthcheck import probes
from mcplb.healthcheck.config import ActiveHealthConfig
from mcplb.proxy.cluster.backends import Backend
from tests.conftest import backend_config
from tests.interop import INTEROP, MISSING, NODE
from tests.support.peers import LOOPBACK, Peers, _logs, _ManagedProcess, free_port, wait_for_port

MCP = ActiveHealthConfig(enabled=True, type="mcp", timeout=3.0)


class Peer(_ManagedProcess):
    label = "2026 interop peer"

    def __init__(self, name: str, port: int, argv: list[str]) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}/mcp"
        log = _logs() / f"peer2026-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


@pytest.fixture
async def started() -> AsyncIterator[list[Peer]]:
    peers: list[Peer] = []
    yield peers
    await asyncio.gather(*(p.stop() for p in peers), return_exceptions=True)


async def start(started: list[Peer], kind: str, name: str) -> Peer:
    """kind: ts2026 (modern-only), ts2026-dual, py-tasks (dual-era), ts2025."""
    assert NODE.exists(), MISSING
    port = free_port()
    if kind.startswith("ts2026"):
        legacy = "stateless" if kind == "ts2026-dual" else "reject"
        argv = [str(NODE), str(INTEROP / "ts2026_server.mjs"), "--name", name]
        argv += ["--port", str(port), "--legacy", legacy]
    elif kind == "py-tasks":
        argv = [sys.executable, "-m", "tests.interop.py_tasks_server", "--name", name]
        argv += ["--port", str(port)]
    else:
        argv = [str(NODE), str(INTEROP / "ts_server.mjs"), "--name", name, "--port", str(port)]
    peer = Peer(name, port, argv)
    started.append(peer)
    await wait_for_port(LOOPBACK, port, 20.0, process=peer)
    return peer


async def ts2026_client(url: str, calls: int = 3) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(INTEROP / "ts2026_client.mjs"),
        "--url",
        url,
        "--calls",
        str(calls),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def python_client(url: str, calls: int = 3) -> tuple[set[str], list[str]]:
    from mcp import Client

    served = []
    async with Client(url) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        for _ in range(calls):
            result = await client.call_tool("whoami", {})
            served.append(result.content[0].text)  # type: ignore[union-attr]
    return tools, served


# --- direct: each peer works without mcplb ---------------------------------------------


@pytest.mark.parametrize("kind", ["ts2026", "py-tasks"])
async def test_ts2026_client_direct(started: list[Peer], kind: str) -> None:
    server = await start(started, kind, "d1")
    result = await ts2026_client(server.url)
    assert result["served"] == ["d1"] * 3 and "whoami" in result["tools"]  # type: ignore[operator]
    if kind == "ts2026":
        assert result["sum"] == "5"


@pytest.mark.parametrize("kind", ["ts2026", "py-tasks"])
async def test_python_2026_client_direct(started: list[Peer], kind: str) -> None:
    server = await start(started, kind, "d2")
    tools, served = await python_client(server.url)
    assert "whoami" in tools and served == ["d2"] * 3


# --- through mcplb: 3 backends, round robin ---------------------------------------------


@pytest.fixture
async def proxies() -> AsyncIterator[Peers]:
    async with Peers() as peers:
        yield peers


@pytest.mark.parametrize("workers", [1, 2])
async def test_2026_clients_through_the_proxy(
    started: list[Peer], proxies: Peers, tmp_path: Path, workers: int
) -> None:
    backends = [await start(started, "ts2026", f"p{i}") for i in range(3)]
    port = free_port()
    text = f"listen: '127.0.0.1:{port}'\nworkers: {workers}\nbackends:\n"
    text += "".join(f"  - {{name: {b.name}, url: 'http://127.0.0.1:{b.port}'}}\n" for b in backends)
    text += "sticky:\n  keys: ['" + "k" * 40 + "']\n"
    text += "health:\n  active: {type: mcp, interval: 2s, timeout: 1s, expect_tools: [whoami]}\n"
    proxy = await proxies.proxy(text, tmp_path, port=port)
    url = f"{proxy.url}/mcp"
    result = await ts2026_client(url, calls=6)
    assert result["sum"] == "5" and set(result["served"]) <= {"p0", "p1", "p2"}  # type: ignore[arg-type]
    _, served = await python_client(url, calls=6)
    assert set(served) <= {"p0", "p1", "p2"} and len(served) == 6
    if workers == 1:
        # No session: every call is a new pick (round robin).
        assert set(served) == {"p0", "p1", "p2"}


# --- the health probe in both eras --------------------------------------------------------


def target(peer: Peer) -> Backend:
    return Backend(backend_config(peer.name, peer.port))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_probe_keeps_a_modern_only_server_healthy(
    started: list[Peer], http: aiohttp.ClientSession
) -> None:
    """Before: initialize got 400 -32022 and the backend was marked down."""
    server = await start(started, "ts2026", "m1")
    backend = target(server)
    assert await probes.mcp_probe(http, backend, MCP) == (True, "MCP server/discover ok")
    # cached: the next probe goes straight to server/discover; expect_tools in that era
    tools = dataclasses.replace(MCP, expect_tools=("whoami", "add"))
    assert await probes.mcp_probe(http, backend, tools) == (
        True,
        "MCP server/discover ok, 2 expected tools listed",
    )
    missing = dataclasses.replace(MCP, expect_tools=("whoami", "nope"))
    assert await probes.mcp_probe(http, backend, missing) == (
        False,
        "tools/list: missing tools: nope",
    )


@pytest.mark.parametrize("kind", ["ts2025", "ts2026-dual", "py-tasks"])
async def test_probe_speaks_2025_to_servers_that_do(
    started: list[Peer], http: aiohttp.ClientSession, kind: str
) -> None:
    server = await start(started, kind, "l1")
    tools = dataclasses.replace(MCP, expect_tools=("whoami",))
    assert await probes.mcp_probe(http, target(server), tools) == (
        True,
        "MCP ping ok, 1 expected tools listed",
    )


async def test_probe_modern_era_against_a_2025_only_server_falls_back(
    started: list[Peer], http: aiohttp.ClientSession
) -> None:
    """A backend cached as modern that now answers as a 2025 server (redeployed): the
    probe falls back to initialize and caches that."""
    server = await start(started, "ts2025", "f1")
    backend = target(server)
    probes._ERAS[str(probes.probe_url(backend, MCP.path))] = "modern"
    assert await probes.mcp_probe(http, backend, MCP) == (True, "MCP ping ok")
    assert probes._ERAS[str(probes.probe_url(backend, MCP.path))] == "legacy"


async def test_probe_of_a_dead_server_tries_one_era(
    started: list[Peer], http: aiohttp.ClientSession
) -> None:
    backend = Backend(backend_config("gone", free_port()))
    assert await probes.mcp_probe(http, backend, MCP) == (False, "connect refused")


# --- long calls: timeouts.mcp_call, and the proxy's 504 as a JSON-RPC error -----------------


def modern_call(rid: int, name: str, arguments: dict[str, object]) -> tuple[str, dict[str, str]]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "mcplb-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": meta},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    return json.dumps(body), headers


async def test_a_silent_long_call_outlives_upstream_header(
    started: list[Peer], proxies: Peers, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Before: a call sending nothing until its result got 504 after upstream_header, with a
    body that was not JSON-RPC. Now MCP calls get timeouts.mcp_call, and the proxy's 504
    for a 2026 request is a JSON-RPC error with the request's id."""
    server = await start(started, "ts2026", "slow")
    port = free_port()
    text = f"listen: '127.0.0.1:{port}'\nbackends:\n"
    text += f"  - {{name: slow, url: 'http://127.0.0.1:{server.port}'}}\n"
    text += "timeouts: {upstream_header: 1s, mcp_call: 3s}\n"
    proxy = await proxies.proxy(text, tmp_path, port=port)
    url = f"{proxy.url}/mcp"
    body, headers = modern_call(7, "silent", {"delay": 2})
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 200  # 2 s of silence: past upstream_header, within mcp_call
        assert "silent 2" in await response.text()
    body, headers = modern_call(8, "silent", {"delay": 6})
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 504
        answer = await response.json()
    assert answer["id"] == 8 and answer["jsonrpc"] == "2.0"
    assert answer["error"]["code"] == -32603
    assert answer["error"]["data"] == {"status": 504, "error": "gateway_timeout"}
