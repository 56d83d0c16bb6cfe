"""Real peers for integration tests: demo MCP backends and mcplb proxies as subprocesses.

No mocks: every backend is ``python -m mcplb.proxy.demo.backend`` (the official MCP SDK server
under uvicorn) and every proxy is ``python -m mcplb.proxy.cli run --config FILE``. Everything
listens on 127.0.0.1 and every wait is bounded.

Typical fixtures (pytest-asyncio, auto mode)::

    import pytest
    from collections.abc import AsyncIterator, Iterator
    from tests.support.peers import (
        McpBackend, Peers, free_port, mcp_call, start_mcp_backend, start_mcp_backend_sync,
    )

    @pytest.fixture
    async def backend() -> AsyncIterator[McpBackend]:
        async with await start_mcp_backend("mcp-a") as b:  # stopped on teardown
            yield b

    @pytest.fixture(scope="module")
    def shared_backend() -> Iterator[McpBackend]:
        # sync + blocking: a process outlives event loops, so any scope works
        b = start_mcp_backend_sync("mcp-shared")
        yield b
        b.stop_sync()

    # ``peers`` (tests/conftest.py) is a Peers: start as many backends/proxies as a test
    # needs; all stopped on teardown.
    async def test_balanced(peers: Peers, tmp_path: Path) -> None:
        a = await peers.backend("mcp-a")
        b = await peers.backend("mcp-b", stateless=True)
        port = free_port()
        # (YAML shown for illustration: the schema is whatever proxy/config/schema.py loads)
        proxy = await peers.proxy(f'''
    listen: "127.0.0.1:{port}"
    backends:
      - {{name: a, url: "{a.url}"}}
      - {{name: b, url: "{b.url}"}}
    ''', tmp_path, port=port)
        result = await mcp_call(proxy.mcp_url, "whoami")
        ...
        await a.kill()  # SIGKILL: simulate a crashed backend
        assert "error" not in proxy.output().lower()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.types import CallToolResult

MCP_ACCEPT = "application/json, text/event-stream"
MCP_HEADERS = {"Accept": MCP_ACCEPT, "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.05

Transport = Literal["streamable-http", "sse"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _not_listening(host: str, port: int, timeout: float, process: _ManagedProcess | None) -> str:
    msg = f"nothing accepted connections on {host}:{port} within {timeout:.1f} s"
    if process is not None:
        msg += f" ({process.describe()})"
    return msg


async def wait_for_port(
    host: str, port: int, timeout: float = 15.0, *, process: _ManagedProcess | None = None
) -> None:
    """Poll TCP connect until ``host:port`` accepts, or raise ``TimeoutError``.

    With ``process``, fail at once (``RuntimeError`` with its output) if it exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.returncode is not None:
            raise RuntimeError(
                f"{process.describe()} exited before listening on {host}:{port}\n{process.output()}"
            )
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=0.5)
        except (OSError, TimeoutError):
            pass
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(_not_listening(host, port, timeout, process))
        await asyncio.sleep(POLL_INTERVAL)


def wait_for_port_sync(
    host: str, port: int, timeout: float = 15.0, *, process: _ManagedProcess | None = None
) -> None:
    """Blocking variant of :func:`wait_for_port` (for sync tests and fixtures)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.returncode is not None:
            raise RuntimeError(
                f"{process.describe()} exited before listening on {host}:{port}\n{process.output()}"
            )
        if _port_open(host, port):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(_not_listening(host, port, timeout, process))
        time.sleep(POLL_INTERVAL)


# --- subprocess management ------------------------------------------------------------

_live: set[_ManagedProcess] = set()
_log_dir: Path | None = None


def _logs() -> Path:
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="mcplb-peers-"))
    return _log_dir


@atexit.register
def _reap_all() -> None:
    """Safety net: never leave a peer running (and holding its port) after the tests."""
    for proc in list(_live):
        proc.kill_now()
    if _log_dir is not None:
        shutil.rmtree(_log_dir, ignore_errors=True)


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) if not path else f"{REPO_ROOT}{os.pathsep}{path}"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class _ManagedProcess:
    """A child process whose stdout/stderr go to files; all waits are bounded."""

    label = "process"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout_path: Path,
        stderr_path: Path,
        own_group: bool,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self._own_group = own_group
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO_ROOT,
                env=_child_env(env),
                # A proxy may fork workers: its own process group lets kill() take them all.
                start_new_session=own_group,
            )
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended (negative: killed by that signal)."""
        code = self.process.poll()
        if code is not None:
            _live.discard(self)
        return code

    def describe(self) -> str:
        return f"{self.label} pid {self.pid}"

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown); does not wait."""
        self.send_signal(signal.SIGTERM)

    def kill_now(self) -> None:
        """SIGKILL (the whole process group if it has one) without waiting. Sync-safe."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group:
                os.killpg(self.pid, signal.SIGKILL)
            else:
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        _live.discard(self)

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for exit and return the status; ``TimeoutError`` if still running."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.describe()} still running after {timeout:.1f} s")
            await asyncio.sleep(POLL_INTERVAL)
        return code

    async def kill(self) -> int:
        """SIGKILL (simulates a crash) and wait for it; returns the exit status."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self._own_group:
                    os.killpg(self.pid, signal.SIGKILL)
                else:
                    self.process.kill()
        return await self.wait(5.0)

    async def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status."""
        self.terminate()
        try:
            return await self.wait(timeout)
        except TimeoutError:
            return await self.kill()

    def stop_sync(self, timeout: float = 5.0) -> int:
        """Blocking :meth:`stop` (for sync fixtures and finalizers)."""
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_now()
            return self.process.wait(5.0)
        finally:
            _live.discard(self)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        """Everything the process wrote so far: stdout, then stderr."""
        out, err = self.stdout(), self.stderr()
        if out and err and not out.endswith("\n"):
            out += "\n"
        return out + err

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class McpBackend(_ManagedProcess):
    """A ``python -m mcplb.proxy.demo.backend`` subprocess listening on 127.0.0.1:``port``."""

    label = "MCP backend"

    def __init__(
        self,
        name: str,
        port: int,
        *,
        stateless: bool = False,
        json_response: bool = False,
        transport: Transport = "streamable-http",
    ) -> None:
        self.name = name
        self.port = port
        self.transport: Transport = transport
        self.url = f"http://{LOOPBACK}:{port}"
        argv = [sys.executable, "-m", "mcplb.proxy.demo.backend", "--name", name]
        argv += ["--host", LOOPBACK, "--port", str(port), "--transport", transport]
        argv += ["--parent-pid", str(os.getpid())]
        if stateless:
            argv.append("--stateless")
        if json_response:
            argv.append("--json-response")
        log = _logs() / f"backend-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)

    @property
    def mcp_url(self) -> str:
        """The Streamable HTTP endpoint: ``http://127.0.0.1:PORT/mcp``."""
        return f"{self.url}/mcp"

    @property
    def sse_url(self) -> str:
        """The 2024-11-05 SSE endpoint: ``http://127.0.0.1:PORT/sse``."""
        return f"{self.url}/sse"

    def describe(self) -> str:
        return f"MCP backend {self.name!r} (pid {self.pid}, port {self.port})"

    def output(self) -> str:
        return self.stdout()  # stdout and stderr share one log file


async def start_mcp_backend(
    name: str,
    *,
    stateless: bool = False,
    json_response: bool = False,
    transport: Transport = "streamable-http",
    port: int | None = None,
    timeout: float = 15.0,
) -> McpBackend:
    """Start a demo backend on ``port`` (default: a free one) and wait until it listens.

    Pass ``port`` to restart a backend where a killed one used to be.
    """
    attempts = 1 if port is not None else 3  # a free port can be taken before the child binds
    for attempt in range(1, attempts + 1):
        backend = McpBackend(
            name,
            port or free_port(),
            stateless=stateless,
            json_response=json_response,
            transport=transport,
        )
        try:
            await wait_for_port(LOOPBACK, backend.port, timeout, process=backend)
        except RuntimeError:  # exited early (port taken?)
            if attempt == attempts:
                raise
        except BaseException:
            await backend.kill()
            raise
        else:
            return backend
    raise AssertionError("unreachable")


def start_mcp_backend_sync(
    name: str,
    *,
    stateless: bool = False,
    json_response: bool = False,
    transport: Transport = "streamable-http",
    port: int | None = None,
    timeout: float = 15.0,
) -> McpBackend:
    """Blocking :func:`start_mcp_backend`, for module/session-scoped sync fixtures
    (the process is not tied to any event loop; stop it with ``stop_sync()``)."""
    attempts = 1 if port is not None else 3
    for attempt in range(1, attempts + 1):
        backend = McpBackend(
            name,
            port or free_port(),
            stateless=stateless,
            json_response=json_response,
            transport=transport,
        )
        try:
            wait_for_port_sync(LOOPBACK, backend.port, timeout, process=backend)
        except RuntimeError:
            if attempt == attempts:
                raise
        except BaseException:
            backend.kill_now()
            raise
        else:
            return backend
    raise AssertionError("unreachable")


class ProxyProcess(_ManagedProcess):
    """An ``mcplb run --config FILE`` subprocess (``python -m mcplb.proxy.cli``)."""

    label = "mcplb proxy"

    def __init__(
        self,
        config_path: Path,
        port: int,
        *,
        host: str = LOOPBACK,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        argv = [sys.executable, "-m", "mcplb.proxy.cli", "run", "--config", str(config_path), *args]
        stem = config_path.with_suffix("")
        super().__init__(
            argv,
            stdout_path=Path(f"{stem}.stdout.log"),
            stderr_path=Path(f"{stem}.stderr.log"),
            own_group=True,
            env=env,
        )

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def describe(self) -> str:
        return f"mcplb proxy (pid {self.pid}, port {self.port}, config {self.config_path})"


async def start_proxy_process(
    config_text: str,
    tmp_path: Path,
    *,
    port: int,
    host: str = LOOPBACK,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    name: str = "mcplb",
    timeout: float = 15.0,
) -> ProxyProcess:
    """Write ``config_text`` to ``tmp_path/NAME.yaml``, run the proxy, wait for ``port``.

    ``port`` must be the listen port written in the YAML. Output is captured in
    ``tmp_path/NAME.stdout.log`` and ``NAME.stderr.log`` (see ``ProxyProcess.output()``).
    """
    config_path = Path(tmp_path) / f"{name}.yaml"
    if "\nadmin:" not in "\n" + config_text:
        # Proxies run side by side in tests: an ephemeral admin port unless one is asked for.
        config_text += "\nadmin: {listen: '127.0.0.1:0'}\n"
    config_path.write_text(config_text)
    proxy = ProxyProcess(config_path, port, host=host, args=args, env=env)
    try:
        await wait_for_port(host, port, timeout, process=proxy)
    except BaseException:
        await proxy.kill()
        raise
    return proxy


async def wait_for_output(
    process: _ManagedProcess, text: str, *, count: int = 1, timeout: float = 15.0
) -> str:
    """Poll ``process.output()`` until ``text`` occurs ``count`` times; returns the output.

    ``TimeoutError`` (with the output) past ``timeout``; ``RuntimeError`` if it exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        output = process.output()
        if output.count(text) >= count:
            return output
        if process.returncode is not None:
            raise RuntimeError(f"{process.describe()} exited before logging {text!r}\n{output}")
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{process.describe()} logged {text!r} {output.count(text)} times, not {count}, "
                f"within {timeout:.1f} s\n{output}"
            )
        await asyncio.sleep(POLL_INTERVAL)


_ADMIN_LOGGED = re.compile(r"admin API on (?:\[[^\]]*\]|[^\s:]+):(\d+)")


async def proxy_admin_port(proxy: ProxyProcess, timeout: float = 15.0) -> int:
    """The admin API port of a proxy (the ``127.0.0.1:0`` listener that
    :func:`start_proxy_process` injects picks one): read from the line it logs once the
    admin API listens (with several workers, worker 0 serves it)."""
    output = await wait_for_output(proxy, "admin API on ", timeout=timeout)
    found = _ADMIN_LOGGED.search(output)
    if found is None:
        raise AssertionError(f"no admin port in the admin API line of {proxy.describe()}")
    return int(found.group(1))


class Peers:
    """Starts backends and proxies on demand and stops them all on exit (fixture helper)."""

    def __init__(self) -> None:
        self.started: list[_ManagedProcess] = []

    async def backend(
        self,
        name: str,
        *,
        stateless: bool = False,
        json_response: bool = False,
        transport: Transport = "streamable-http",
        port: int | None = None,
    ) -> McpBackend:
        b = await start_mcp_backend(
            name, stateless=stateless, json_response=json_response, transport=transport, port=port
        )
        self.started.append(b)
        return b

    async def proxy(
        self,
        config_text: str,
        tmp_path: Path,
        *,
        port: int,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        name: str = "mcplb",
    ) -> ProxyProcess:
        p = await start_proxy_process(
            config_text, tmp_path, port=port, args=args, env=env, name=name
        )
        self.started.append(p)
        return p

    async def aclose(self) -> None:
        """Stop proxies first (they may be draining), then backends; all concurrently."""
        procs, self.started = self.started, []
        proxies = [p for p in procs if isinstance(p, ProxyProcess)]
        others = [p for p in procs if not isinstance(p, ProxyProcess)]
        for group in (proxies, others):
            await asyncio.gather(*(p.stop() for p in group), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# --- MCP client helpers ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_session(
    url: str, *, timeout: float = 15.0, initialize: bool = True
) -> AsyncIterator[ClientSession]:
    """An initialized ``ClientSession`` over Streamable HTTP to ``url`` (e.g. ``.../mcp``).

    Each request times out after ``timeout`` seconds; the session is DELETEd on exit.
    """
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write, read_timeout_seconds=timeout) as session,
    ):
        if initialize:
            with anyio.fail_after(timeout):
                await session.initialize()
        yield session


async def mcp_call(
    url: str,
    tool: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float = 15.0,
    progress_callback: ProgressFnT | None = None,
) -> CallToolResult:
    """Open a session to ``url``, initialize, call ``tool`` once, close the session."""
    with anyio.fail_after(timeout):
        async with mcp_session(url, timeout=timeout) as session:
            return await session.call_tool(tool, args, progress_callback=progress_callback)


def result_text(result: CallToolResult) -> str:
    """The concatenated text content of a tool result (e.g. the backend name for whoami)."""
    return "".join(getattr(block, "text", "") for block in result.content)
