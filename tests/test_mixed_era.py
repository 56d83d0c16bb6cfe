"""One mcplb in front of backends of both eras and of one era only, with clients of both
eras at the same time: a Python mcp 2.3 server (dual-era, stateful: tests/interop/
py_server.py), a TypeScript SDK 1.32 server (2025 only: ts_server.mjs) and a TypeScript
@modelcontextprotocol/server 2.4 server (2026-07-28 only: ts2026_server.mjs --legacy
reject); 2025 clients (TypeScript SDK 1.32 sessions, Python ``ClientSession`` +
``initialize``) and 2026 clients (TypeScript @modelcontextprotocol/client 2.4 pinned to
2026-07-28, Python ``mcp.Client`` in mode auto).

The spec (basic/versioning.mdx, "Compatibility Matrix"): a modern client on a legacy
server "Fails" ("The server may reject the request with an implementation-defined error,
stay silent, or even process an era-ambiguous method under legacy semantics"), and so does
a legacy client on a modern server ("Legacy clients have no fall-forward mechanism"); and
"The era determination is a property of the server, not of an individual request": a
client caches it per origin, so a balancer whose backends differ must not let the era a
client sees change from one request to the next. Before: routing ignored what the MCP
probe knew, round robin sent 2026 calls to the 2025-only server (400, no session) and 2025
``initialize`` to the 2026-only one (400 -32022): clients failed. Now a request that opens
no session goes only to backends that speak its era (proxy/routing/steps.py
``era_candidates``, from the eras the probe learned: healthcheck/probes.py), as Envoy's
or agentgateway's users would route by protocol version; a 2025 session stays where it
was created.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp_types import TextContent

from tests.interop import INTEROP, MISSING, NODE, run_ts_clients
from tests.interop.py_client import run_session
from tests.support.peers import (
    LOOPBACK,
    Peers,
    _logs,
    _ManagedProcess,
    free_port,
    proxy_admin_port,
    wait_for_port,
)

LEGACY_OK = {"py", "ts25"}  # the backends that speak 2025
MODERN_OK = {"py", "ts26"}  # the backends that speak 2026-07-28


class Backend(_ManagedProcess):
    label = "mixed-era backend"

    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.port = port
        log = _logs() / f"mixed-{name}-{port}.log"
        argv = [*argv, "--port", str(port)]
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    assert NODE.exists(), MISSING
    argvs = {
        "py": [sys.executable, "-m", "tests.interop.py_server", "--name", "py"],
        "ts25": [str(NODE), str(INTEROP / "ts_server.mjs"), "--name", "ts25"],
        "ts26": [str(NODE), str(INTEROP / "ts2026_server.mjs"), "--name", "ts26"],
    }
    started = [Backend(name, argv, free_port()) for name, argv in argvs.items()]
    try:
        for backend in started:
            await wait_for_port(LOOPBACK, backend.port, 30.0, process=backend)
        yield started
    finally:
        await asyncio.gather(*(b.stop() for b in started), return_exceptions=True)


@pytest.fixture
async def proxies() -> AsyncIterator[Peers]:
    async with Peers() as peers:
        yield peers


async def mixed_proxy(proxies: Peers, tmp_path: Path, backends: list[Backend], workers: int) -> str:
    port = free_port()
    text = f"listen: '127.0.0.1:{port}'\nworkers: {workers}\nbackends:\n"
    text += "".join(f"  - {{name: {b.name}, url: 'http://127.0.0.1:{b.port}'}}\n" for b in backends)
    text += "sticky:\n  keys: ['" + "k" * 40 + "']\n"
    text += "health:\n  initial: unhealthy\n"
    text += "  active: {type: mcp, interval: 1s, timeout: 0.9s, rise: 1}\n"
    proxy = await proxies.proxy(text, tmp_path, port=port)
    # Every backend probed once (healthy: the probe that made it so learned its eras).
    admin = await proxy_admin_port(proxy)
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            async with http.get(f"http://127.0.0.1:{admin}/status") as response:
                rows = (await response.json())["backends"]
            if all(row["state"] == "healthy" for row in rows):
                break
            await asyncio.sleep(0.2)
    return f"{proxy.url}/mcp"


# --- the clients ----------------------------------------------------------------------------


async def ts2026(url: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(INTEROP / "whoami2026_client.mjs"),
        "--url",
        url,
        "--calls",
        "6",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=INTEROP,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()
    served: list[str] = json.loads(out.decode().strip().splitlines()[-1])["served"]
    return served


async def py2026(url: str) -> tuple[str, list[str]]:
    served = []
    async with asyncio.timeout(60), Client(url) as client:
        # The fleet's servers differ: the Python whoami declares an output schema, the
        # TypeScript one does not, and the client checks each result against the schema of
        # whichever listing it saw. Routing is under test here, not the tools' shapes.
        client.session._tool_output_schemas["whoami"] = None
        for _ in range(6):
            content = (await client.call_tool("whoami", {})).content[0]
            assert isinstance(content, TextContent)
            served.append(content.text)
        return client.protocol_version, served


@pytest.mark.parametrize("workers", [1, 2])
async def test_mixed_eras_every_client_completes(
    backends: list[Backend], proxies: Peers, tmp_path: Path, workers: int
) -> None:
    url = await mixed_proxy(proxies, tmp_path, backends, workers)
    ts25, py25, ts26, py26a, py26b = await asyncio.gather(
        run_ts_clients(url, "streamable", sessions=4, concurrency=2, steps="calls"),
        asyncio.gather(*(run_session(url, "streamable", steps="calls") for _ in range(3))),
        asyncio.gather(*(ts2026(url) for _ in range(2))),
        py2026(url),
        py2026(url),
    )
    # 2025 sessions: complete, each on one backend, and that one speaks 2025.
    for record in [*ts25, *py25]:
        assert record["ok"], record
        assert len(set(record["names"])) == 1 and set(record["names"]) <= LEGACY_OK, record
    # 2026 clients: every call on a backend that speaks 2026-07-28; the Python client in
    # mode auto found a modern server (the era stayed what discover said).
    for served in ts26:
        assert len(served) == 6 and set(served) <= MODERN_OK, served
    for version, served in (py26a, py26b):
        assert version == "2026-07-28"
        assert len(served) == 6 and set(served) <= MODERN_OK, served
    if workers == 1:
        # Round robin still spreads each era over every backend that speaks it.
        assert {n for r in [*ts25, *py25] for n in r["names"]} == LEGACY_OK
        assert {n for s in [*ts26, py26a[1], py26b[1]] for n in s} == MODERN_OK


async def test_a_modern_request_is_kept_off_a_2025_only_backend(
    backends: list[Backend], proxies: Peers, tmp_path: Path
) -> None:
    """Raw: 30 modern calls and 30 legacy initializes, none refused for its era."""
    url = await mixed_proxy(proxies, tmp_path, backends, 1)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "mcplb-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    modern_headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "whoami",
    }
    legacy_headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    statuses: dict[str, list[int]] = {"modern": [], "legacy": []}
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            call = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}, "_meta": meta},
            }
            async with http.post(url, data=json.dumps(call), headers=modern_headers) as r:
                statuses["modern"].append(r.status)
                await r.read()
            init: dict[str, Any] = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "mcplb-test", "version": "1"},
                },
            }
            async with http.post(url, data=json.dumps(init), headers=legacy_headers) as r:
                statuses["legacy"].append(r.status)
                await r.read()
                session = r.headers.get("mcp-session-id")
            if session is not None:  # end the session it opened
                async with http.delete(url, headers={"mcp-session-id": session}) as r:
                    await r.read()
    assert statuses == {"modern": [200] * 30, "legacy": [200] * 30}
