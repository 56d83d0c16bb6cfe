"""``mcplb demo``: real demo MCP backends behind the proxy, on loopback, in one command."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    AdminConfig,
    BackendConfig,
    Config,
    HealthConfig,
    LogConfig,
    TimeoutsConfig,
)

BACKEND_HOST = "127.0.0.1"
FIRST_BACKEND_PORT = 9001
ADMIN_PORT = AdminConfig().listen_port
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
    # Make `-m mcplb.proxy.demo.backend` importable from any working directory, installed or not.
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def start_backends(names: Sequence[str], ports: Sequence[int]) -> list[subprocess.Popen[bytes]]:
    """Spawn ``python -m mcplb.proxy.demo.backend`` for each name/port (not yet waited for)."""
    procs: list[subprocess.Popen[bytes]] = []
    env = _child_env()
    for name, port in zip(names, ports, strict=True):
        argv = [sys.executable, "-m", "mcplb.proxy.demo.backend", "--name", name]
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


def shown_path(path: str) -> str:
    """``path`` as a command line from the current directory takes it: relative below it
    ("./x" for a file right here), absolute elsewhere."""
    full = os.path.abspath(path)
    relative = os.path.relpath(full)
    if relative.startswith(os.pardir):
        return full
    return relative if os.sep in relative else f".{os.sep}{relative}"


def mcplb_command() -> str:
    """How to run mcplb again, as this process was run: "mcplb" when that is on the PATH,
    the script's path (".venv/bin/mcplb" after make demo), else ``python -m`` the CLI."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "mcplb" and os.path.isfile(script):
        found = shutil.which("mcplb")
        if found is not None and os.path.samefile(found, script):
            return "mcplb"
        return shlex.quote(shown_path(script))
    return f"{shlex.quote(shown_path(sys.executable))} -m mcplb.proxy.cli"


def restart_command(name: str, port: int) -> str:
    """The command that starts demo backend ``name`` again on its port (after a kill)."""
    argv = [shown_path(sys.executable), "-m", "mcplb.proxy.demo.backend", "--name", name]
    return shlex.join([*argv, "--host", BACKEND_HOST, "--port", str(port)])


def banner(
    names: Sequence[str],
    ports: Sequence[int],
    pids: Sequence[int],
    url: str,
    listen: str,
    admin_port: int,
) -> str:
    """What the demo prints once its backends are up: what runs, how to connect, how to
    watch it, and how to fail a backend and bring it back (commands that work as printed)."""
    mcplb = mcplb_command()
    admin = f"http://127.0.0.1:{admin_port}"
    rows = [
        f"  {n:<8} http://{BACKEND_HOST}:{p}/mcp   pid {pid}"
        for n, p, pid in zip(names, ports, pids, strict=True)
    ]
    victim = len(names) - 1
    here = "" if mcplb == "mcplb" or os.path.isabs(mcplb) else f" (from {os.getcwd()})"
    return "\n".join(
        [
            f"mcplb demo: {len(names)} MCP backend(s) up (tools: whoami, add, countdown):",
            *rows,
            f"mcplb demo: proxy on {listen}, round robin with session affinity,"
            " MCP health probes every 2s",
            "",
            connection_help(url),
            f"Watch it, in another terminal{here}:",
            f"    {mcplb} top --admin {admin}",
            f"    curl -s {admin}/status",
            "",
            f"Fail a backend and bring it back ({names[victim]}; health lines appear below):",
            f"    kill {pids[victim]}",
            f"    {restart_command(names[victim], ports[victim])}",
            "",
            "The access log is off here so that this stays readable (mcplb run writes a line",
            "per request to stdout; log.access in the config). Press Ctrl-C to stop.",
        ]
    )


def demo_config(
    host: str, port: int, names: Sequence[str], ports: Sequence[int], admin_port: int
) -> Config:
    """The proxy's config: listen on ``host:port`` in front of the demo backends."""
    return Config(
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
        admin=AdminConfig(listen_host=BACKEND_HOST, listen_port=admin_port),
        # A line per request would scroll the instructions away within seconds.
        log=LogConfig(access=False),
    )


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
    # 9901 if free: beside a running mcplb the demo takes another admin port, not an error.
    admin_port = ADMIN_PORT if _port_free(BACKEND_HOST, ADMIN_PORT) else _ephemeral_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = start_backends(names, ports)
        try:
            wait_for_backends(names, ports, procs)
        except DemoError as exc:
            print(f"mcplb demo: {exc}", file=sys.stderr)
            return 1

        config = demo_config(host, port, names, ports, admin_port)
        url = f"http://{_url_host(host)}:{port}/mcp"
        pids = [proc.pid for proc in procs]
        shown = banner(names, ports, pids, url, f"{host}:{port}", admin_port)

        from mcplb.proxy.server.supervisor import serve

        # Printed once the port is bound and listening: a client as fast as the reader
        # is not refused, and a port taken since the check above shows no banner at all.
        return serve(config, bound=lambda: print(shown, flush=True))
    except KeyboardInterrupt:  # Ctrl-C before the proxy took over the signals
        return 130
    finally:
        stop_backends(procs)
