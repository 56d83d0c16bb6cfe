"""Interop peers: TypeScript SDK servers and clients (Node 22 from npm, see package.json)
and the Python SDK interop server, as real subprocesses on 127.0.0.1.

``make test`` installs the Node packages (``npm ci`` here); NODE is the Node 22 binary that
the npm package ``node`` provides. Nothing here runs a Node that is not that one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from tests.support.peers import (
    LOOPBACK,
    _logs,
    _ManagedProcess,
    free_port,
    wait_for_port,
    wait_for_port_sync,
)
from tests.support.tiers import require

SERVICE = "node"  # tests that reach this package need it (tests/support/tiers.py)
INTEROP = Path(__file__).resolve().parent
NODE_MODULES = INTEROP / "node_modules"
NODE = NODE_MODULES / ".bin" / "node"
CONFORMANCE = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SERVER_EVERYTHING = (
    NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
)
MISSING = f"{NODE} is missing: run `make test` (or `npm ci` in {INTEROP})"

ServerKind = Literal["ts", "py"]
Transport = Literal["streamable", "sse"]


class InteropServer(_ManagedProcess):
    """An MCP server on 127.0.0.1:``port``: ``ts`` (ts_server.mjs: both transports) or
    ``py`` (py_server.py: one transport per process, like the demo backend)."""

    label = "interop server"

    def __init__(self, kind: ServerKind, name: str, port: int, transport: Transport) -> None:
        self.kind = kind
        self.name = name
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        parent = ["--parent-pid", str(os.getpid())]
        if kind == "ts":
            require(SERVICE)
            argv = [str(NODE), str(INTEROP / "ts_server.mjs"), "--name", name]
        else:
            py_transport = "sse" if transport == "sse" else "streamable-http"
            argv = [sys.executable, "-m", "tests.interop.py_server", "--name", name]
            argv += ["--transport", py_transport]
        log = _logs() / f"interop-{name}-{port}.log"
        super().__init__(
            [*argv, "--port", str(port), *parent], stdout_path=log, stderr_path=log, own_group=False
        )

    def describe(self) -> str:
        return f"{self.kind} MCP server {self.name!r} (pid {self.pid}, port {self.port})"


async def start_interop_server(
    kind: ServerKind, name: str, transport: Transport = "streamable"
) -> InteropServer:
    server = InteropServer(kind, name, free_port(), transport)
    try:
        await wait_for_port(LOOPBACK, server.port, 20.0, process=server)
    except BaseException:
        await server.kill()
        raise
    return server


def start_interop_server_sync(
    kind: ServerKind, name: str, transport: Transport = "streamable"
) -> InteropServer:
    """Blocking :func:`start_interop_server`, for module-scoped fixtures."""
    server = InteropServer(kind, name, free_port(), transport)
    try:
        wait_for_port_sync(LOOPBACK, server.port, 20.0, process=server)
    except BaseException:
        server.kill_now()
        raise
    return server


def endpoint(transport: Transport) -> str:
    """The path a client connects to: Streamable HTTP or the legacy SSE stream."""
    return "/sse" if transport == "sse" else "/mcp"


async def run_ts_clients(
    url: str,
    transport: Transport,
    *,
    sessions: int,
    concurrency: int,
    steps: str = "full",
    fresh_connections: bool = False,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Run ``ts_client.mjs``: the record of each session (see there)."""
    require(SERVICE)
    argv = [str(NODE), str(INTEROP / "ts_client.mjs"), "--url", url, "--transport", transport]
    argv += ["--sessions", str(sessions), "--concurrency", str(concurrency), "--steps", steps]
    if fresh_connections:
        argv.append("--fresh-connections")
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=INTEROP
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise AssertionError(f"ts_client.mjs exited {process.returncode}: {err.decode()}")
    records: list[dict[str, Any]] = json.loads(out)["sessions"]
    return records
