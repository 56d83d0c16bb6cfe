"""``mcplb demo``: real demo MCP backends behind the proxy, on loopback, in one command."""

from __future__ import annotations

import os
import socket
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mcplb.proxy.config import (
    ActiveHealthConfig,
    BackendConfig,
    Config,
    HealthConfig,
    TimeoutsConfig,
)

BACKEND_HOST = "127.0.0.1"
FIRST_BACKEND_PORT = 9001
MAX_BACKENDS = 26
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class DemoError(Exception):
    """The demo cannot start; the message says why."""


def backend_name(index: int) -> str:
    """mcp-a, mcp-b, ... mcp-z."""
    return f"mcp-{string.ascii_lowercase[index]}"


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((BACKEND_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def pick_backend_ports(count: int, avoid: Sequence[int] = ()) -> list[int]:
    """9001, 9002, ... where free on 127.0.0.1; an ephemeral port for each one taken."""
    ports: list[int] = []
    for i in range(count):
        port = FIRST_BACKEND_PORT + i
        if port in avoid or not _port_free(BACKEND_HOST, port):
            port = _ephemeral_port()
            while port in avoid or port in ports:
                port = _ephemeral_port()
        ports.append(port)
    return ports


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _child_env() -> dict[str, str]:
    # Make `-m mcplb.proxy.demo_backend` importable from any working directory, installed or not.
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def start_backends(names: Sequence[str], ports: Sequence[int]) -> list[subprocess.Popen[bytes]]:
    """Spawn ``python -m mcplb.proxy.demo_backend`` for each name/port (not yet waited for)."""
    procs: list[subprocess.Popen[bytes]] = []
    env = _child_env()
    for name, port in zip(names, ports, strict=True):
        argv = [sys.executable, "-m", "mcplb.proxy.demo_backend", "--name", name]
        argv += ["--host", BACKEND_HOST, "--port", str(port), "--parent-pid", str(os.getpid())]
        procs.append(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                # Own session: Ctrl-C reaches only the proxy, which drains in-flight
                # requests against live backends before we stop them.
                start_new_session=True,
            )
        )
    return procs


def wait_for_backends(
    names: Sequence[str],
    ports: Sequence[int],
    procs: Sequence[subprocess.Popen[bytes]],
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Poll TCP connect until every backend listens; ``DemoError`` on exit or timeout."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(procs)))
    while pending:
        for i in sorted(pending):
            code = procs[i].poll()
            if code is not None:
                raise DemoError(
                    f"backend {names[i]} (port {ports[i]}) exited with status {code} "
                    "before accepting connections"
                )
            if _accepts(BACKEND_HOST, ports[i]):
                pending.discard(i)
        if not pending:
            return
        if time.monotonic() >= deadline:
            late = ", ".join(f"{names[i]} (port {ports[i]})" for i in sorted(pending))
            raise DemoError(f"backend(s) not accepting connections after {timeout:.0f} s: {late}")
        time.sleep(0.1)


def stop_backends(procs: Sequence[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM all, wait up to ``timeout`` in total, then SIGKILL the stragglers."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def connection_help(url: str) -> str:
    """How to talk to the proxy: the URL, a Python snippet, a curl line."""
    init = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        '"capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'
    )
    return f"""\
MCP endpoint (Streamable HTTP):  {url}

Python (pip install mcp):

    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> None:
        async with streamable_http_client("{url}") as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                who = await session.call_tool("whoami")
                print("served by", who.content[0].text)
                total = await session.call_tool("add", {{"a": 2, "b": 3}})
                print("2 + 3 =", total.content[0].text)

    anyio.run(main)

curl (initialize; note the Mcp-Session-Id response header):

    curl -i {url} \\
      -H 'Accept: application/json, text/event-stream' \\
      -H 'Content-Type: application/json' \\
      -d '{init}'
"""


def run_demo(backends: int = 3, port: int = 8080, host: str = "127.0.0.1") -> int:
    """Start ``backends`` demo MCP servers, then run the proxy in front of them.

    Blocks until the proxy stops (SIGINT/SIGTERM); returns its exit code.
    """
    if not 1 <= backends <= MAX_BACKENDS:
        print(f"mcplb demo: backends must be between 1 and {MAX_BACKENDS}", file=sys.stderr)
        return 2
    if not _port_free(host, port):
        print(f"mcplb demo: cannot listen on {host}:{port}: address in use", file=sys.stderr)
        return 1

    names = [backend_name(i) for i in range(backends)]
    ports = pick_backend_ports(backends, avoid=(port,))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = start_backends(names, ports)
        try:
            wait_for_backends(names, ports, procs)
        except DemoError as exc:
            print(f"mcplb demo: {exc}", file=sys.stderr)
            return 1

        config = Config(
            listen_host=host,
            listen_port=port,
            backends=tuple(
                BackendConfig(
                    name=name,
                    url=f"http://{BACKEND_HOST}:{p}",
                    scheme="http",
                    host=BACKEND_HOST,
                    port=p,
                )
                for name, p in zip(names, ports, strict=True)
            ),
            # Open GET streams never end by themselves: keep Ctrl-C snappy.
            timeouts=TimeoutsConfig(grace=5.0),
            # Kill a demo backend to watch it leave and come back.
            health=HealthConfig(
                slow_start=10.0,
                active=ActiveHealthConfig(enabled=True, type="mcp", expect_tools=("whoami",)),
            ),
        )
        url = f"http://{_url_host(host)}:{port}/mcp"
        lines = [
            f"  {n:<8} http://{BACKEND_HOST}:{p}/mcp" for n, p in zip(names, ports, strict=True)
        ]
        print(f"mcplb demo: {backends} MCP backend(s) up (tools: whoami, add, countdown):")
        print("\n".join(lines))
        print(
            f"mcplb demo: proxy on {host}:{port}, round robin with session affinity,"
            " MCP health probes every 2s\n"
        )
        print(connection_help(url))
        print(
            "Watch it: mcplb top --admin http://127.0.0.1:9901   "
            "(metrics: curl http://127.0.0.1:9901/metrics)"
        )
        print("Press Ctrl-C to stop.", flush=True)

        from mcplb.proxy.server import serve

        return serve(config)
    except KeyboardInterrupt:  # Ctrl-C before the proxy took over the signals
        return 130
    finally:
        stop_backends(procs)
