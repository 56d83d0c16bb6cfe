"""Runs several worker processes on one port (SO_REUSEPORT) and restarts crashed ones."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.schema import Config
from mcplb.proxy.config.validate import validated, watched_state, worker_count
from mcplb.proxy.observability.state_dir import write_json
from mcplb.proxy.server.worker import bind_socket, note_early_stops, run_worker

log = logging.getLogger("mcplb.supervisor")

RESTART_BACKOFF = 1.0  # seconds before restarting a worker that died right after starting
POLL_INTERVAL = 0.2  # seconds between checks for dead workers, reloads and file changes


class Supervisor:
    """The parent process: forks workers, forwards signals, replaces workers that die."""

    def __init__(self, config: Config, bound: Callable[[], None] | None = None) -> None:
        self.config = config
        self.bound = bound  # called once the port is reserved (serve)
        self.workers: dict[int, int] = {}  # pid -> worker index
        # Workers publish counters and read drain decisions here (see proxy/admin/app.py).
        self.state_dir = Path(tempfile.mkdtemp(prefix="mcplb-state-"))
        self.started: dict[int, float] = {}
        self.stopping = False
        self.reload_requested = False
        self.watched = watched_state(config)
        self.generation = 0  # reloads handed to the workers
        self.reload_failures = 0

    def run(self) -> int:
        try:
            reservation = _reserve_port(self.config.listen_host, self.config.listen_port)
        except OSError as exc:
            log.error(
                "cannot listen on %s:%d: %s", self.config.listen_host, self.config.listen_port, exc
            )
            return 1
        if self.bound is not None:
            self.bound()  # (the workers listen on it as soon as they start)
        # Keep the port (and a port 0 choice) ours while workers come and go.
        workers = worker_count(self.config.workers)
        self.config = dataclasses.replace(
            self.config, listen_port=reservation.getsockname()[1], workers=workers
        )
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        for index in range(workers):
            if self.stopping:
                break  # signalled while starting: the workers forked so far are stopping
            self._spawn(index)
        log.info("supervisor: %d workers on port %d", workers, self.config.listen_port)
        deadline: float | None = None
        while self.workers:
            if self.stopping and deadline is None:
                timeouts = self.config.timeouts
                deadline = time.monotonic() + timeouts.shutdown_delay + timeouts.grace + 5
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if deadline is not None and time.monotonic() > deadline:
                    for child in self.workers:
                        _signal(child, signal.SIGKILL)
                if not self.stopping:
                    self._check_watched_file()
                    if self.reload_requested:
                        self.reload_requested = False
                        self._reload()
                time.sleep(0.05 if deadline else POLL_INTERVAL)
                continue
            index = self.workers.pop(pid)
            lived = time.monotonic() - self.started.pop(pid)
            if self.stopping:
                continue
            log.error(
                "worker %d (pid %d) exited with %s; restarting", index, pid, _describe(status)
            )
            if lived < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)
            if not self.stopping:
                self._spawn(index)
        reservation.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return 0

    def _spawn(self, index: int) -> None:
        # Signals wait while we fork: a child must not run the supervisor's handlers (they
        # would take a SIGTERM meant for it), and a stop must see every pid it has to signal.
        parent = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(index, parent)
            self.workers[pid] = index
            self.started[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)

    def _become_worker(self, index: int, parent: int) -> NoReturn:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its event loop handles it
        # A supervisor killed outright (kill -9, the OOM killer) cannot stop its workers:
        # the kernel sends each a SIGTERM instead, and it drains as on any SIGTERM.
        _term_when_parent_dies()
        code = 1
        try:
            if os.getppid() != parent:
                raise SystemExit  # the supervisor died before the request above
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            sock = bind_socket(self.config.listen_host, self.config.listen_port, True)
            code = run_worker(self.config, sock, index, self.state_dir, self.generation)
        except SystemExit:
            pass
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def _check_watched_file(self) -> None:
        mtime = watched_state(self.config)
        if mtime != self.watched:
            self.watched = mtime
            if not self.config.watch_config:
                return
            log.info("config file changed: reloading")
            self._reload()

    def _reload(self) -> None:
        """Check the file, keep it for workers started later, and have every worker
        reload it (each re-reads it and logs what changed)."""
        try:
            config = validated(self.config.source or "")
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload rejected, the running config stays: %s", issue)
            self.reload_failures += 1
            # Worker 0 adds this to mcplb_config_reloads_total{result="failure"}.
            write_json(
                self.state_dir / "supervisor.json", {"reload_failures": self.reload_failures}
            )
            return
        self.generation += 1
        # Where and how many: fixed for the supervisor's life.
        self.config = dataclasses.replace(
            config,
            listen_host=self.config.listen_host,
            listen_port=self.config.listen_port,
            workers=self.config.workers,
        )
        log.info("reloading %d workers", len(self.workers))
        for pid in self.workers:
            _signal(pid, signal.SIGHUP)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)


_FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _term_when_parent_dies() -> None:
    """Ask Linux for a SIGTERM when the parent exits (prctl PR_SET_PDEATHSIG); elsewhere
    nothing (the workers then outlive a killed supervisor, as before)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reserve_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"code {os.waitstatus_to_exitcode(status)}"


def serve(config: Config, bound: Callable[[], None] | None = None) -> int:
    """Run the proxy with ``config.workers`` processes; blocks until stopped. ``bound``
    is called once the port is the proxy's (with one worker: listening), never if it
    cannot be had (``mcplb demo`` prints its banner then, so that what it shows works)."""
    if worker_count(config.workers) <= 1:
        note_early_stops()
        try:
            sock = bind_socket(config.listen_host, config.listen_port, False)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.listen_host, config.listen_port, exc)
            return 1
        if bound is not None:
            bound()
        return run_worker(config, sock)
    return Supervisor(config, bound).run()
