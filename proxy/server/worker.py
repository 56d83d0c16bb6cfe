"""The listener: binds the port, runs the relay, sweeps timeouts, shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from mcplb.proxy.admin.app import ReloadResult, WorkerState, create_admin_app
from mcplb.proxy.cluster.discovery import (
    Address,
    AddressScreen,
    DnsDiscovery,
    backend_configs,
    merge,
    read_shared,
    shared_mtime,
    write_shared,
)
from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.schema import BackendConfig, Config
from mcplb.proxy.config.tls import TlsError, reload_server_context, server_context
from mcplb.proxy.config.validate import validated, watched_state
from mcplb.proxy.observability import access_log, tracing
from mcplb.proxy.relay.connection import ClientConnection
from mcplb.proxy.routing.rate_limit import RedisRateLimiter
from mcplb.proxy.server.runtime import Runtime

log = logging.getLogger("mcplb")

# A SIGTERM or SIGINT that came before the event loop's handlers existed (the port is open
# from the moment it is bound): the worker stops as soon as it runs, as on any SIGTERM.
_stop_requested = False


def _note_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def note_early_stops() -> None:
    """Hold SIGTERM and SIGINT until ``run_until_signalled`` installs its own handlers
    (a pod deleted while it starts must not die with exit 143 and no drain)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _note_stop)


SWEEP_INTERVAL = 0.5  # seconds; timeouts are enforced to this precision
SWEEP_SLICE = 500  # connections checked between two turns of the event loop
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

    def __init__(
        self,
        config: Config,
        sock: socket.socket | None = None,
        *,
        worker: int = 0,
        state_dir: Path | None = None,
        generation: int = 0,
    ) -> None:
        self.config = config
        # Raises TlsError for unusable certificate files: the caller reports it.
        self.tls: ssl.SSLContext | None = (
            None if config.listen_tls is None else server_context(config.listen_tls)
        )
        # With several workers only worker 0 probes; the others take its verdicts.
        self.runtime = Runtime(config, state_dir, probing=worker == 0)
        self.runtime.generation = generation  # a worker started after reloads
        self.connections: set[ClientConnection] = set()
        self.state = WorkerState(self.runtime, worker, state_dir)
        self.worker = worker
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._admin: web.AppRunner | None = None
        self.port = config.listen_port
        self.admin_port: int | None = None
        self._reloading = asyncio.Lock()
        # Watch the file only where no supervisor does it for every worker.
        self._watch = state_dir is None
        self._watched = watched_state(config)
        # DNS discovery: the file's backends, and those found (merged into runtime.config).
        self.static_backends = config.backends
        self.discovered: tuple[BackendConfig, ...] = ()
        self.discovery: DnsDiscovery | None = None  # the lookups, where this process runs them
        self._discovering: asyncio.Task[None] | None = None
        self._discovery_seen: int | None = None  # mtime of the shared set last adopted

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._sock = bind_socket(self.config.listen_host, self.config.listen_port, False)
        self.port = self._sock.getsockname()[1]
        # A worker started while the others serve (the supervisor replaced one that died):
        # take the backends worker 0 found before the first connection, or the sessions
        # bound to them would get 404 here until the first sweep adopts them.
        found = self._shared_discovered(at_start=True)
        if found is not None:
            await self.apply_discovered(found)
        self._server = await loop.create_server(
            lambda: ClientConnection(self.runtime, self.connections),
            sock=self._sock,
            ssl=self.tls,
            # The relay's header timeout starts after the handshake: bound the handshake too.
            ssl_handshake_timeout=self.config.timeouts.header if self.tls else None,
        )
        self._sweeper = loop.create_task(self._sweep())
        await self.runtime.cluster.health.start()
        if self.config.admin.enabled and self.worker == 0:
            await self._start_admin()
        self._start_discovery()  # after the admin API: its port is refused as a backend

    async def _start_admin(self) -> None:
        admin = self.config.admin
        app = create_admin_app(self.runtime, self.state, time.monotonic(), self._admin_reload)
        self._admin = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, admin.listen_host, admin.listen_port, reuse_address=True)
        await site.start()
        self.admin_port = self._admin.addresses[0][1]
        log.info("admin API on %s:%d", admin.listen_host, self.admin_port)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        cluster = self.runtime.cluster
        ticks = 0
        while True:
            expected = loop.time() + SWEEP_INTERVAL
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            self.runtime.stats.loop_lag = max(0.0, now - expected)
            self.state.share_health()
            self._adopt_discovered()
            if ticks % 2 == 0:
                self.state.publish()
                self.state.apply_control()
                self._check_watched_file()
            if cluster.admission.queue:
                # A backend that came back (or was added) has free slots nobody released.
                cluster.admission.wake()
            retired = cluster.retire_over()
            for n, conn in enumerate(list(self.connections), 1):
                if retired and conn.ex.backend in retired:
                    conn.cut("its backend was removed and its drain deadline passed")
                conn.check_timeouts(now)
                if n % SWEEP_SLICE == 0:
                    # Let I/O through: 10,000 connections held the loop for ~15 ms.
                    await asyncio.sleep(0)
            cluster.expire_idle(now)
            ticks += 1
            if ticks % 20 == 0:
                self.runtime.sessions.expire()
                self.runtime.tasks.expire()

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply it; an invalid file changes nothing."""
        source = self.runtime.config.source
        if source is None:
            return ReloadResult(False, ["started without a config file: nothing to reload"])
        async with self._reloading:
            try:
                config = validated(source)
                static = config.backends
                if config.discovery is None:
                    self.discovered = ()
                # Until a changed discovery answers, the backends it found last stay.
                config = dataclasses.replace(config, backends=merge(static, self.discovered))
                previous = self.runtime.config.discovery
                changes = await self.runtime.reload(config)
                self.static_backends = static
                if config.discovery != previous:
                    await self._stop_discovery()
                    self._start_discovery()
                if config.listen_tls is not None and self.tls is not None:
                    reload_server_context(self.tls, config.listen_tls)
            except ConfigError as exc:
                problems = [str(issue) for issue in exc.issues]
            except TlsError as exc:  # the files changed again since validated() read them
                problems = [str(exc)]
            else:
                if (config.listen_tls is None) != (self.tls is None):
                    changes.append("listen_tls switched on or off: needs a restart (kept)")
                self.config = self.runtime.config
                self.runtime.stats.reloads["success"] += 1
                for warning in config.warnings:
                    log.warning("config %s: warning: %s", source, warning)
                log.info(
                    "config reloaded from %s (generation %d): %s",
                    source,
                    self.runtime.generation,
                    "; ".join(changes) or "no changes",
                )
                return ReloadResult(True, changes, self.runtime.generation)
        self.runtime.stats.reloads["failure"] += 1
        for problem in problems:
            log.error("reload rejected, the running config stays: %s: %s", source, problem)
        return ReloadResult(False, problems)

    def _start_discovery(self) -> None:
        """Run the DNS lookups here: in worker 0 only (the others adopt its answers)."""
        discovery = self.runtime.config.discovery
        if discovery is None or self.worker != 0:
            return
        config = self.runtime.config
        own = [(config.listen_host, self.port, "the proxy's own listener")]
        if config.admin.enabled:
            admin_port = self.admin_port or config.admin.listen_port
            own.append((config.admin.listen_host, admin_port, "the proxy's admin API"))
        screen = AddressScreen(discovery.dns.allow_networks, own)
        self.discovery = DnsDiscovery(discovery.dns, self.runtime.stats.discovery, screen)
        loop = asyncio.get_running_loop()
        self._discovering = loop.create_task(self.discovery.run(self._found))

    async def _stop_discovery(self) -> None:
        task, self._discovering, self.discovery = self._discovering, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _found(self, addresses: tuple[Address, ...]) -> None:
        discovery = self.runtime.config.discovery
        assert discovery is not None
        await self.apply_discovered(backend_configs(discovery.dns, addresses))
        if self.state.directory is not None:
            write_shared(self.state.directory, addresses)  # for the other workers

    def _adopt_discovered(self) -> None:
        """Workers other than 0: take the backend set worker 0 found, when it changes."""
        found = self._shared_discovered()
        if found is not None:
            asyncio.get_running_loop().create_task(self.apply_discovered(found))

    def _shared_discovered(self, at_start: bool = False) -> tuple[BackendConfig, ...] | None:
        """The backend set worker 0 shared, if not yet adopted; ``at_start``: worker 0 too
        (restarted, it serves the last set found until its own first answer)."""
        directory = self.state.directory
        discovery = self.runtime.config.discovery
        if directory is None or discovery is None or (self.worker == 0 and not at_start):
            return None
        mtime = shared_mtime(directory)
        if mtime is None or mtime == self._discovery_seen:
            return None
        addresses = read_shared(directory)
        if addresses is None:
            return None
        self._discovery_seen = mtime
        return backend_configs(discovery.dns, addresses)

    async def apply_discovered(self, found: tuple[BackendConfig, ...]) -> None:
        """Serve the static backends plus ``found``, applied the way a reload applies a
        changed backend list: new ones start as health.initial (slow start), removed ones
        drain with their sessions, the others keep their state."""
        async with self._reloading:
            if found == self.discovered:
                return
            self.discovered = found
            config = dataclasses.replace(
                self.runtime.config, backends=merge(self.static_backends, found)
            )
            changes = await self.runtime.reload(config, counted=False)
            self.config = self.runtime.config
        log.info("discovery applied: %s", "; ".join(changes) or "no changes")

    async def _admin_reload(self) -> ReloadResult:
        if self.state.directory is None:
            return await self.reload()
        # Several workers: check the file here, then the supervisor re-reads it and has
        # every worker (this one included) reload.
        source = self.runtime.config.source
        try:
            validated(source or "")
        except ConfigError as exc:
            self.runtime.stats.reloads["failure"] += 1
            return ReloadResult(False, [str(issue) for issue in exc.issues])
        os.kill(os.getppid(), signal.SIGHUP)
        return ReloadResult(True, ["every worker reloads"], pending=True)

    def _check_watched_file(self) -> None:
        if not self._watch:
            return
        mtime = watched_state(self.runtime.config)
        if mtime != self._watched:
            self._watched = mtime
            if not self.runtime.config.watch_config:
                return
            log.info("config file changed: reloading")
            asyncio.get_running_loop().create_task(self.reload())

    def begin_shutdown(self) -> None:
        """The start of ``timeouts.shutdown_delay``: /readyz answers 503 so that a load
        balancer in front stops sending here; the listener still accepts, and every answer
        (on new and open connections) closes its connection, so clients reconnect to
        another replica instead of keeping a connection to one that goes away."""
        self.runtime.stopping = True
        for conn in list(self.connections):
            # An idle keep-alive connection stays open: a client may be sending on it now.
            conn.shutdown(close_idle=False)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let exchanges finish for up to ``grace`` seconds, then close."""
        grace = self.config.timeouts.grace if grace is None else grace
        self.runtime.stopping = True
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
        await self._stop_discovery()
        await self.runtime.cluster.health.stop()
        if self._admin is not None:
            await self._admin.cleanup()
        self.runtime.cluster.close_pools()
        await self.runtime.sessions.close()
        await self.runtime.tasks.close()
        if isinstance(self.runtime.frontend.rate_limiter, RedisRateLimiter):
            await self.runtime.frontend.rate_limiter.close()
        if self._server is not None:
            await self._server.wait_closed()


async def run_until_signalled(
    config: Config,
    sock: socket.socket | None = None,
    worker: int = 0,
    state_dir: Path | None = None,
    generation: int = 0,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if _stop_requested:
        stop.set()  # signalled while starting (note_early_stops): serve nothing new, stop
    setup_access_log(config)
    try:
        server = ProxyServer(
            config, sock, worker=worker, state_dir=state_dir, generation=generation
        )
    except TlsError as exc:
        log.error("%s", exc)
        return 1
    reloads: set[asyncio.Task[ReloadResult]] = set()  # held: the loop keeps weak references

    def reload_now() -> None:
        access_log.flush()  # SIGHUP: lines written before log rotation moves the file
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_now)
    start_tracing(server)
    try:
        if not await _start(server, config):
            return 1
        await stop.wait()
        await _stop(server, stop)
    finally:
        await stop_tracing()
    return 0


def start_tracing(server: ProxyServer) -> None:
    """With ``tracing`` on: this worker's tracer and its exporter's thread (the ``otel``
    extra, which ``validated`` checked; imported only then)."""
    config = server.config.tracing
    if not config.enabled:
        return
    from mcplb.proxy.observability import otlp_export

    runtime = server.runtime

    def address_of(name: str) -> tuple[str, int] | None:
        backend = runtime.cluster.backends.get(name)
        return None if backend is None else (backend.host, backend.port)

    otlp_export.start(config, runtime.stats.tracing, address_of, server.worker)
    log.info("tracing: spans to %s (sample ratio %g)", config.endpoint, config.sample_ratio)


async def stop_tracing() -> None:
    """Export the spans still queued (bounded: otlp_export.SHUTDOWN_WAIT), then stop."""
    if tracing.current() is None:
        return
    from mcplb.proxy.observability import otlp_export

    await asyncio.to_thread(otlp_export.stop)


async def _start(server: ProxyServer, config: Config) -> bool:
    """Start serving; False (logged, shut down) when the admin API cannot listen."""
    try:
        await server.start()
    except OSError as exc:
        admin = config.admin
        log.error(
            "cannot listen for the admin API on %s:%d: %s",
            admin.listen_host,
            admin.listen_port,
            exc,
        )
        await server.shutdown(grace=0)
        return False
    log.info(
        "listening on %s:%d (%d backends, strategy %s)",
        config.listen_host,
        server.port,
        len(config.backends),
        config.strategy,
    )
    return True


async def _stop(server: ProxyServer, stop: asyncio.Event) -> None:
    """Signalled: ``shutdown_delay`` still accepting (``stop`` set again cuts it short),
    then shut down within ``grace``."""
    timeouts = server.config.timeouts  # as last reloaded
    if timeouts.shutdown_delay > 0:
        log.info(
            "stopping: /readyz answers 503; still accepting for %gs (shutdown_delay)",
            timeouts.shutdown_delay,
        )
        server.begin_shutdown()
        stop.clear()  # a second SIGTERM or SIGINT cuts the delay short
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeouts.shutdown_delay)
    log.info("shutting down: waiting up to %gs for in-flight requests", timeouts.grace)
    await server.shutdown()


def run_worker(
    config: Config,
    sock: socket.socket | None = None,
    worker: int = 0,
    state_dir: Path | None = None,
    generation: int = 0,
) -> int:
    """Run one proxy process on uvloop."""
    import uvloop

    try:
        return uvloop.run(run_until_signalled(config, sock, worker, state_dir, generation))
    finally:
        access_log.flush()  # also when an exception ends the loop: no buffered line lost


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def setup_access_log(config: Config) -> None:
    """Access lines go to stdout, one per request, apart from the application log."""
    if not config.log.access:
        return
    try:
        sys.stdout.flush()  # anything printed before goes first
        access_log.install(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError) as exc:  # started with stdout closed
        log.warning("access log: stdout unusable (%s): lines go to the application log", exc)
