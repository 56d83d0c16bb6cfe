"""The listener: binds the port, runs the relay, sweeps timeouts, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

from proxy.config import Config
from proxy.relay import ClientConnection
from proxy.runtime import Runtime

log = logging.getLogger("mcplb")

SWEEP_INTERVAL = 0.5  # seconds; timeouts are enforced to this precision
LISTEN_BACKLOG = 4096


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket; SO_REUSEPORT lets several workers share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ProxyServer:
    """One process's proxy: usable in-process (tests) or through ``serve``."""

    def __init__(self, config: Config, sock: socket.socket | None = None) -> None:
        self.config = config
        self.runtime = Runtime(config)
        self.connections: set[ClientConnection] = set()
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = config.listen_port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._sock = bind_socket(self.config.listen_host, self.config.listen_port, False)
        self.port = self._sock.getsockname()[1]
        self._server = await loop.create_server(
            lambda: ClientConnection(self.runtime, self.connections), sock=self._sock
        )
        self._sweeper = loop.create_task(self._sweep())
        await self.runtime.health.start()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)
            for pool in self.runtime.pools.values():
                pool.expire(now)
            ticks += 1
            if ticks % 20 == 0:
                self.runtime.sessions.expire()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let exchanges finish for up to ``grace`` seconds, then close."""
        grace = self.config.timeouts.grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.runtime.health.stop()
        for pool in self.runtime.pools.values():
            pool.close_all()
        await self.runtime.sessions.close()
        if self._server is not None:
            await self._server.wait_closed()


async def run_until_signalled(config: Config, sock: socket.socket | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = ProxyServer(config, sock)
    await server.start()
    log.info(
        "listening on %s:%d (%d backends, strategy %s)",
        config.listen_host,
        server.port,
        len(config.backends),
        config.strategy,
    )
    await stop.wait()
    log.info("shutting down: waiting up to %.0fs for in-flight requests", config.timeouts.grace)
    await server.shutdown()
    return 0


def run_worker(config: Config, sock: socket.socket | None = None) -> int:
    """Run one proxy process on uvloop."""
    import uvloop

    return uvloop.run(run_until_signalled(config, sock))


def serve(config: Config) -> int:
    """Run the proxy with ``config.workers`` processes; blocks until stopped."""
    if config.workers <= 1:
        try:
            sock = bind_socket(config.listen_host, config.listen_port, False)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.listen_host, config.listen_port, exc)
            return 1
        return run_worker(config, sock)
    from proxy.supervisor import Supervisor

    return Supervisor(config).run()


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
