"""A real ``redis-server`` for tests: 127.0.0.1, a free port, killable and restartable.

``server = await start_redis()`` runs one with no persistence (``--save "" --appendonly no``)
in a temporary directory and returns once it answers PING; ``await server.kill()`` SIGKILLs
it, ``await server.restart()`` starts it again on the same port (empty: nothing was saved),
``await server.stop()`` kills it and removes its directory, and ``await server.exists(key)`` /
``await server.command(*args)`` talk to it without a client library. Servers not stopped
when the interpreter exits are stopped then.

``start_silent_server()`` is the opposite: a TCP server that accepts connections and reads
whatever is sent, but never answers (a hung Redis).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.tiers import require

SERVICE = "redis-server"  # tests that reach this module need it (tests/support/tiers.py)
FALLBACK_BINARY = "/usr/bin/redis-server"
START_TIMEOUT = 10.0  # seconds for a started server to answer PING

_servers: set[RedisServer] = set()  # not yet stopped: stopped at exit


class RedisServerMissing(RuntimeError):
    """No redis-server binary on this machine."""


def find_redis_server(fallback: str = FALLBACK_BINARY) -> str:
    """The redis-server binary: on PATH, else ``fallback``; RedisServerMissing if neither."""
    require(SERVICE)
    found = shutil.which("redis-server")
    if found is not None:
        return found
    if os.access(fallback, os.X_OK):
        return fallback
    raise RedisServerMissing(
        "redis-server is not installed (not on PATH, not at "
        f"{fallback}); the Redis session store tests need a real one. `make test` installs it "
        "(apt-get install redis-server); or install it yourself."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1:``port``."""

    host = "127.0.0.1"

    def __init__(self, binary: str, port: int, args: tuple[str, ...] = ()) -> None:
        """``args``: more redis-server options (replication, persistence), after ours."""
        self.binary = binary
        self.port = port
        self.args = args
        self.password: str | None = None  # sent with AUTH before each command() when set
        self.dir = Path(tempfile.mkdtemp(prefix="mcplb-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        _servers.add(self)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        """The command line: no persistence unless ``args`` asks for it."""
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            *self.args,
        ]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start the process and wait (bounded) until it answers PING."""
        if self.alive:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        log_path = self.dir / "redis.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a test's Ctrl-C is not redis-server's
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with status {self.process.returncode} on port "
                    f"{self.port}: {log_path.read_text(errors='replace')[-2000:]}"
                )
            if await self._answers_ping():
                return
            if time.monotonic() > deadline:
                self._kill_now()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            await asyncio.sleep(0.02)

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), 0.5
            )
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 0.5)
            return line.startswith((b"+PONG", b"-NOAUTH"))  # up (asks for a password)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def kill(self) -> None:
        """SIGKILL the server (no shutdown, no save) and reap it."""
        self._kill_now()

    def _kill_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)  # a SIGKILLed process goes at once

    async def restart(self) -> None:
        """Kill if running, then start again on the same port (retrying while it is busy)."""
        self._kill_now()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                await self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Kill the server and remove its directory."""
        self._stop_now()

    def _stop_now(self) -> None:
        self._kill_now()
        shutil.rmtree(self.dir, ignore_errors=True)
        _servers.discard(self)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (EXISTS over a fresh connection; no client library)."""
        return await self.command("EXISTS", key) == 1

    async def command(self, *args: str) -> Reply:
        """Send one command; its reply: an integer, a simple or bulk string, nil, or an
        array of those (nested)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), START_TIMEOUT
        )
        try:
            if self.password is not None:
                writer.write(_encode("AUTH", self.password))
                reply = await asyncio.wait_for(_read_reply(reader, "AUTH"), START_TIMEOUT)
                if reply != "OK":
                    raise RuntimeError(f"AUTH answered {reply!r}")
            writer.write(_encode(*args))
            return await asyncio.wait_for(_read_reply(reader, args[0]), START_TIMEOUT)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


Reply = int | str | None | list["Reply"]


def _encode(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def _read_reply(reader: asyncio.StreamReader, command: str) -> Reply:
    line = await reader.readline()
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest.decode()
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = await reader.readexactly(int(rest) + 2)
        return data[:-2].decode()
    if kind == b"*":
        if int(rest) < 0:
            return None
        return [await _read_reply(reader, command) for _ in range(int(rest))]
    raise RuntimeError(f"redis-server replied {line!r} to {command}")


async def start_redis(port: int | None = None) -> RedisServer:
    """A running redis-server on 127.0.0.1 (a free port unless given)."""
    binary = find_redis_server()
    attempts = 1 if port is not None else 5  # a free port can be taken before we bind it
    for attempt in range(attempts):
        server = RedisServer(binary, port if port is not None else free_port())
        try:
            await server.start()
            return server
        except RuntimeError:
            server._stop_now()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class SilentServer:
    """Accepts TCP connections, reads everything, never writes: a Redis that hangs."""

    def __init__(self, server: asyncio.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        await self.server.wait_closed()


async def start_silent_server() -> SilentServer:
    holder: list[SilentServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await holder[0].handle(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    holder.append(SilentServer(server, port))
    return holder[0]


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_servers):
        server._stop_now()
