"""Redis over TLS for tests: Debian's redis-server (built with TLS) with certificates from
trustme, on 127.0.0.1 free ports, TLS only (``--port 0``).

``certs = TlsFiles.make(directory)`` writes a CA, a server certificate for 127.0.0.1 and
localhost signed by it, and a second, unrelated CA (``wrong_ca``: what a client holding the
wrong trust anchor has). ``server = await start_tls_redis(certs)`` runs one server;
``await start_tls_sentinel_group(certs)`` a master, a replica and three sentinels, all on TLS
(``tls-replication yes``: the replica and the sentinels reach the servers over TLS too).
Clients need no certificate of their own (``tls-auth-clients no``).

``command()`` and the readiness check speak TLS (verified with the CA), so
tests/support/redis_sentinel.py's group methods work unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.redis_sentinel import (
    SentinelGroup,
    SentinelProcess,
    find_redis_sentinel,
)
from tests.support.redis_server import (
    START_TIMEOUT,
    RedisServer,
    Reply,
    _encode,
    _read_reply,
    find_redis_server,
    free_port,
)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA that signed the server's certificate
    cert: Path  # the server's certificate chain
    key: Path  # its private key
    wrong_ca: Path  # a CA that signed nothing here

    @classmethod
    def make(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        files = cls(
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
            directory / "wrong-ca.pem",
        )
        ca.cert_pem.write_to_path(str(files.ca))
        server.private_key_pem.write_to_path(str(files.key))
        files.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        trustme.CA().cert_pem.write_to_path(str(files.wrong_ca))
        return files

    def server_options(self) -> list[str]:
        """redis-server/sentinel settings (``name value``) for TLS with these files."""
        return [
            f"tls-cert-file {self.cert}",
            f"tls-key-file {self.key}",
            f"tls-ca-cert-file {self.ca}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def _as_args(options: list[str]) -> tuple[str, ...]:
    args: list[str] = []
    for option in options:
        name, value = option.split(" ", 1)
        args += [f"--{name}", value]
    return tuple(args)


class TlsRedisServer(RedisServer):
    """A redis-server listening on TLS only, at ``port``."""

    files: TlsFiles

    def __init__(
        self, binary: str, port: int, args: tuple[str, ...] = (), files: TlsFiles | None = None
    ) -> None:
        super().__init__(binary, port, args)
        if files is not None:
            self.files = files

    @property
    def url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        plain = super().argv()
        at = plain.index("--port")
        plain[at : at + 2] = ["--port", "0", "--tls-port", str(self.port)]
        ours = plain[: len(plain) - len(self.args)]
        return [*ours, *_as_args(self.files.server_options()), *self.args]

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, ssl=self.files.client_context(), server_hostname=self.host
            ),
            START_TIMEOUT,
        )

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(self._open(), 1.0)
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, TimeoutError):
            return False
        finally:
            # No TLS close_notify exchange: a server being killed or failed over may never
            # answer it, and a test must not wait for it.
            writer.transport.abort()

    async def command(self, *args: str) -> Reply:
        reader, writer = await self._open()
        try:
            if self.password is not None:
                writer.write(_encode("AUTH", self.password))
                reply = await asyncio.wait_for(_read_reply(reader, "AUTH"), START_TIMEOUT)
                if reply != "OK":
                    raise RuntimeError(f"AUTH answered {reply!r}")
            writer.write(_encode(*args))
            return await asyncio.wait_for(_read_reply(reader, args[0]), START_TIMEOUT)
        finally:
            # No TLS close_notify exchange: a server being killed or failed over may never
            # answer it, and a test must not wait for it.
            writer.transport.abort()


class TlsSentinelProcess(SentinelProcess, TlsRedisServer):
    """A sentinel on TLS only that watches the servers over TLS."""

    def __init__(self, command: list[str], port: int, master_port: int, files: TlsFiles) -> None:
        self.files = files
        SentinelProcess.__init__(self, command, port, master_port)
        text = self.config.read_text().replace(f"port {port}\n", f"port 0\ntls-port {port}\n", 1)
        self.config.write_text(text + "".join(f"{o}\n" for o in files.server_options()))

    def argv(self) -> list[str]:
        return SentinelProcess.argv(self)


async def start_tls_redis(files: TlsFiles) -> TlsRedisServer:
    """A running TLS-only redis-server on a free 127.0.0.1 port."""
    binary = find_redis_server()
    for attempt in range(5):
        server = TlsRedisServer(binary, free_port(), files=files)
        try:
            await server.start()
            return server
        except RuntimeError:
            await server.stop()
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def start_tls_sentinel_group(files: TlsFiles) -> SentinelGroup:
    """A master, its replica and three sentinels, all TLS only, ready for a failover."""
    binary = find_redis_server()
    sentinel_command = find_redis_sentinel()
    started: list[RedisServer] = []
    try:
        master = TlsRedisServer(binary, free_port(), files=files)
        started.append(master)
        await master.start()
        replica = TlsRedisServer(
            binary, free_port(), ("--replicaof", master.host, str(master.port)), files=files
        )
        started.append(replica)
        await replica.start()
        sentinels: list[SentinelProcess] = []
        for _ in range(3):
            sentinel = TlsSentinelProcess(sentinel_command, free_port(), master.port, files)
            started.append(sentinel)
            await sentinel.start()
            sentinels.append(sentinel)
        group = SentinelGroup([master, replica], sentinels)
        await group.wait_ready()
        return group
    except BaseException:
        for process in started:
            await process.stop()
        raise
