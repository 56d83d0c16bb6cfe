"""Cost as the work grows: backends, sessions, event streams, health probes.

Usage (from the repository root)::

    .venv/bin/python bench/scale_bench.py backends [--requests 10000] [--rounds 3]
    .venv/bin/python bench/scale_bench.py sessions [--sessions 1000000]
    .venv/bin/python bench/scale_bench.py streams [--streams 10000] [--events 10] [--workers 2]
    .venv/bin/python bench/scale_bench.py health [--requests 10000] [--rounds 3]

- ``backends``: mcplb's CPU time per request (as bench/cpu_gate.py measures it: a
  closed-loop run, the proxy's CPU clock before and after) with 2, 100 and 1,000 backends,
  for every built-in strategy. The three proxies of a strategy run side by side and the
  rounds alternate between them; every backend entry points at the same minimal backend.
- ``sessions``: a million bindings in the memory session store (in this process): the
  resident memory they add, the time of an expiry sweep with nothing due, and the cost of
  a lookup at that size.
- ``streams``: event streams held open through mcplb (``--workers``, one by default), from
  this process, to the event backend of bench/minimal.py (one event per stream per second,
  stamped with the time it was sent). It reports the resident memory of all of mcplb's
  processes before and with the streams open, the descriptors each worker holds, each
  event's delay through mcplb and, in the same run, straight from the backend (the
  difference of the p99s is what mcplb adds), and the streams lost (closed, or not a 200,
  before their last event). Issue 27's targets, for 10,000 streams on two workers: RSS
  growth under 100 MiB, added p99 under 5 ms, none lost. One worker needs two descriptors
  a stream: mcplb raises its soft limit to the hard one, and says how many that allows.
- ``health``: 1,000 backends, active HTTP probes every 2 s on each (500 probes a second)
  or none: CPU per request and requests per second of the two, alternated.

The proxies run on one CPU, the backends and this process on the other(s)
(``pin_proxies``; with several workers, ``streams`` leaves the scheduler to place them).
The machine is shared: compare figures within a run. Each report starts with the version
line of the mcplb it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    NotReady,
    checked_build,
    free_ports,
    group_rss,
    haproxy_conf,
    in_process_version,
    mcplb_config,
    mcplb_python,
    measured_build,
    pin_proxies,
    spawn,
    stop_process,
    table,
    tail,
    vm_rss_kib,
    wait_http,
    wait_port,
)
from bench.cpu_gate import alternate, cpu_per_request, start_mcplb  # noqa: E402
from mcplb.strategies import registry  # noqa: E402

STRATEGIES = tuple(registry.BUILTIN)  # every built-in strategy, in the registry's order
SIZES = (2, 100, 1000)
MINIMAL = str(REPO_ROOT / "bench" / "minimal.py")
START_TIMEOUT = 60.0
CONNECTIONS = 20


def config(
    tmp: Path, name: str, port: int, backend: int, count: int, *settings: str, workers: int = 1
) -> Path:
    """``workers`` (one) in front of ``count`` backend entries, all the same backend."""
    path = tmp / f"{name}.yaml"
    head = [f"workers: {workers}", "admin: {listen: '127.0.0.1:0'}", *settings]
    path.write_text(mcplb_config(port, head, {f"b{i}": backend for i in range(count)}))
    return path


class Servers:
    """The processes of one benchmark: stopped (and this process unpinned) at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.affinity = os.sched_getaffinity(0)

    def minimal(self, mode: str, port: int, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{mode}-{port}.log"
        proc = spawn([mcplb_python(), MINIMAL, mode, str(port), *args], log, self.procs)
        if mode != "sse":
            wait_http(proc, port, "/", START_TIMEOUT, log)
        return proc

    def haproxy(self, name: str, port: int, backend: int, count: int) -> subprocess.Popen[bytes]:
        """HAProxy (one thread, round robin) in front of ``count`` entries for ``backend``."""
        folder = self.tmp / name
        folder.mkdir()
        conf = haproxy_conf(folder, port, [backend] * count, CONNECTIONS)
        log = folder / "haproxy.log"
        proc = spawn(["haproxy", "-f", str(conf), "-db"], log, self.procs)
        wait_http(proc, port, "/", START_TIMEOUT, log)
        return proc

    def mcplb(self, name: str, port: int, conf: Path) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        proc = start_mcplb(conf, log, self.procs)
        wait_http(proc, port, "/", START_TIMEOUT, log)
        return proc

    def close(self) -> None:
        os.sched_setaffinity(0, self.affinity)
        for proc in self.procs:
            stop_process(proc)


async def haproxy_row(
    servers: Servers, args: argparse.Namespace, backend: int, backend_pid: int
) -> list[str]:
    """The same measure of HAProxy round robin: what spreading requests over more upstream
    connections costs a proxy whose pick is O(1) (its share of the growth is the kernel's
    and the caches', not the pick's)."""
    targets = {}
    for size, port in zip(SIZES, free_ports(len(SIZES)), strict=True):
        targets[f"haproxy-{size}"] = (
            servers.haproxy(f"haproxy-{size}", port, backend, size).pid,
            port,
        )
    pin_proxies([pid for pid, _ in targets.values()], [backend_pid])
    found = await alternate(targets, args.rounds, args.requests, CONNECTIONS)
    us = [statistics.median(found[f"haproxy-{size}"]) for size in SIZES]
    row = ["HAProxy round robin", *(f"{u:.1f}" for u in us), f"{us[-1] / us[0]:.2f}x"]
    print(f"haproxy: {row[1:]}", file=sys.stderr, flush=True)
    return row


async def bench_backends(args: argparse.Namespace, tmp: Path) -> str:
    servers = Servers(tmp)
    rows = []
    try:
        (backend,) = free_ports(1)
        backend_pid = servers.minimal("backend", backend).pid
        for strategy in args.strategies.split(","):
            targets = {}
            ports = free_ports(len(SIZES))
            for size, port in zip(SIZES, ports, strict=True):
                name = f"{strategy}-{size}"
                conf = config(tmp, name, port, backend, size, f"strategy: {strategy}")
                targets[name] = (servers.mcplb(name, port, conf).pid, port)
            pin_proxies([pid for pid, _ in targets.values()], [backend_pid])
            found = await alternate(targets, args.rounds, args.requests, CONNECTIONS)
            for name in list(targets):
                stop_process(next(p for p in servers.procs if p.pid == targets[name][0]))
            us = [statistics.median(found[f"{strategy}-{size}"]) for size in SIZES]
            rows.append([strategy, *(f"{u:.1f}" for u in us), f"{us[-1] / us[0]:.2f}x"])
            print(f"{strategy}: {rows[-1][1:]}", file=sys.stderr, flush=True)
        if shutil.which("haproxy"):
            rows.append(await haproxy_row(servers, args, backend, backend_pid))
    finally:
        servers.close()
    head = ["strategy", *(f"{n} backends µs" for n in SIZES), "1000/2"]
    return (
        f"measured: {measured_build()}\n"
        f"CPU µs per request (median of {args.rounds} rounds of {args.requests} requests)\n"
        + table(head, rows)
    )


async def bench_health(args: argparse.Namespace, tmp: Path) -> str:
    servers = Servers(tmp)
    try:
        backend, off, on = free_ports(3)
        backend_pid = servers.minimal("backend", backend).pid
        probes = "health: {active: {interval: 2s, timeout: 1s}}"
        targets = {
            "no probes": (
                servers.mcplb("off", off, config(tmp, "off", off, backend, 1000)).pid,
                off,
            ),
            "probes": (
                servers.mcplb("on", on, config(tmp, "on", on, backend, 1000, probes)).pid,
                on,
            ),
        }
        pin_proxies([pid for pid, _ in targets.values()], [backend_pid])
        await asyncio.sleep(5)  # a first probe of every backend, then the steady pace
        rates: dict[str, list[float]] = {name: [] for name in targets}
        found: dict[str, list[float]] = {name: [] for name in targets}
        for n in range(args.rounds):
            for name in list(targets) if n % 2 == 0 else list(targets)[::-1]:
                pid, port = targets[name]
                started = time.monotonic()
                found[name].append(
                    1e6 * await cpu_per_request(pid, port, args.requests, CONNECTIONS)
                )
                rates[name].append(args.requests / (time.monotonic() - started))
    finally:
        servers.close()
    rows = [
        [name, f"{statistics.median(found[name]):.1f}", f"{statistics.median(rates[name]):,.0f}"]
        for name in targets
    ]
    return (
        f"measured: {measured_build()}\n1,000 backends, active HTTP probes every 2 s each\n"
        + table(["", "CPU µs per request", "req/s"], rows)
    )


def bench_sessions(args: argparse.Namespace) -> str:
    from mcplb.proxy.sessions.store import MemorySessionStore

    count = args.sessions
    names = [f"backend-{i}" for i in range(10)]
    store = MemorySessionStore(3600, 2 * count)

    known: list[str] = []

    async def fill() -> None:
        for i in range(count):  # as the relay binds them: the id string is the store's
            session_id = uuid.uuid4().hex
            await store.bind(session_id, names[i % 10])
            if i % (count // 1000 or 1) == 0:
                known.append(session_id)

    gc.collect()
    before = vm_rss_kib(os.getpid()) or 0
    started = time.perf_counter()
    asyncio.run(fill())
    fill_s = time.perf_counter() - started
    gc.collect()
    grown = ((vm_rss_kib(os.getpid()) or 0) - before) / 1024
    started = time.perf_counter()
    dropped = store.expire()
    sweep_ms = (time.perf_counter() - started) * 1e3
    some = known[:1000] * 100  # ids spread over the table

    async def lookups() -> None:
        for session_id in some:
            await store.get(session_id)

    started = time.perf_counter()
    asyncio.run(lookups())
    get_ns = (time.perf_counter() - started) / len(some) * 1e9
    rows = [
        ["resident memory added", f"{grown:.0f} MiB"],
        ["binding time", f"{fill_s:.1f} s"],
        ["expiry sweep, nothing due", f"{sweep_ms:.2f} ms ({dropped} dropped)"],
        ["lookup (get)", f"{get_ns:.0f} ns"],
    ]
    line = checked_build(in_process_version())  # this process measured
    return f"measured: {line}\n{count:,} sessions in the memory store\n" + table(
        ["", "value"], rows
    )


def raise_open_files(needed: int) -> None:
    """Allow ``needed`` descriptors here and in the processes started after (the backend
    holds one per stream, this process one); root may raise the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < needed:
            print(f"open files limited to {hard}: fewer streams will open", file=sys.stderr)


async def wait_workers(pgid: int, workers: int, log: Path) -> dict[int, int]:
    """pid -> RSS KiB of mcplb's processes once every worker listens (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        listening = log.read_text(errors="replace").count("listening on ")
        if listening >= workers:
            await asyncio.sleep(1)  # settled: the worker's first sweep, admin API up
            return group_rss(pgid)
        await asyncio.sleep(0.1)
    raise NotReady(f"{workers} workers did not all start\n{tail(log)}")


def open_descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def bench_streams(args: argparse.Namespace, tmp: Path) -> str:
    raise_open_files(args.streams + 1000)
    servers = Servers(tmp)
    loop = asyncio.get_running_loop()
    log = tmp / "streams.log"
    try:
        sse, proxy = free_ports(2)
        backend_pid = servers.minimal("sse", sse, "1").pid
        # Plain event streams: no MCP session store needed across the workers. Every stream
        # comes from this one address: lift the per-address connection cap.
        settings = [
            "timeouts: {idle: 120s}",
            f"limits: {{max_connections_per_client: {2 * args.streams + 1000}}}",
        ]
        if args.workers > 1:
            settings.append("sticky: {mcp_sessions: false}")
        conf = config(tmp, "streams", proxy, sse, 1, *settings, workers=args.workers)
        # GET / through it would open a stream: wait for the port instead.
        mcplb = start_mcplb(conf, log, servers.procs)
        await loop.run_in_executor(None, wait_port, mcplb, proxy, START_TIMEOUT, log)
        before = await wait_workers(mcplb.pid, args.workers, log)
        build = measured_build(log)
        if args.workers == 1:
            pin_proxies([mcplb.pid], [backend_pid])
        results: dict[str, Held] = {}
        for name, port in (("direct", sse), ("mcplb", proxy)):
            pgid = mcplb.pid if name == "mcplb" else None
            results[name] = await hold_streams(port, args.streams, args.events, pgid)
            if name == "mcplb":
                during = results[name].rss
                fds = results[name].fds
    finally:
        servers.close()

    def pct(values: list[float], p: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    rows = [
        [
            name,
            f"{held.opened:,}",
            f"{held.lost:,}",
            str(len(held.delays)),
            f"{pct(held.delays, 50):.2f}",
            f"{pct(held.delays, 99):.2f}",
            f"{max(held.delays, default=0) * 1e3:.2f}",
        ]
        for name, held in results.items()
    ]
    added = pct(results["mcplb"].delays, 99) - pct(results["direct"].delays, 99)
    supervisor = [] if args.workers == 1 else [mcplb.pid]
    rss_before = sum(before.values()) / 1024
    rss_with = sum(during.values()) / 1024
    per_worker = ", ".join(
        f"{fds.get(pid, 0):,}" for pid in sorted(before) if pid not in supervisor
    )
    lost = results["mcplb"].lost
    verdict = (
        "within issue 27's targets (RSS growth < 100 MiB, added p99 < 5 ms, no stream lost)"
        if rss_with - rss_before < 100 and added < 5 and lost == 0
        else "OUTSIDE issue 27's targets (RSS growth < 100 MiB, added p99 < 5 ms, none lost)"
    )
    return (
        f"measured: {build}\n"
        f"{args.streams:,} event streams, {args.events} events each, mcplb workers: "
        f"{args.workers}\n"
        + table(["path", "opened", "lost", "events", "p50 ms", "p99 ms", "max ms"], rows)
        + f"\nadded p99: {added:.2f} ms; mcplb RSS (all {len(before)} processes) "
        f"{rss_before:.0f} MiB idle, {rss_with:.0f} MiB with the streams open "
        f"(+{rss_with - rss_before:.0f} MiB); descriptors per worker with the streams open: "
        f"{per_worker}\n{verdict}"
    )


@dataclass
class Held:
    """What ``hold_streams`` saw: the events' delays, the streams opened and lost, and, for
    a proxy started by the benchmark, its processes' RSS and descriptors while all were
    open."""

    delays: list[float] = field(default_factory=list)
    opened: int = 0
    lost: int = 0
    rss: dict[int, int] = field(default_factory=dict)
    fds: dict[int, int] = field(default_factory=dict)


class _Stream(asyncio.Protocol):
    REQUEST = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"

    def __init__(self, held: Held, events: int, done: Callable[[bool], None]) -> None:
        self.held = held
        self.events = events
        self.done = done
        self.buffer = b""
        self.first = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.REQUEST)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.buffer and self.first and not data.startswith(b"HTTP/1.1 200 "):
            self.finish(False)  # refused (a 503, a 502): lost
            return
        self.buffer += data
        while self.events and (start := self.buffer.find(b"data: ")) >= 0:
            end = self.buffer.find(b"\n", start)
            if end < 0:
                break
            if not self.first:  # it may have waited for all the streams to open
                self.held.delays.append(now - float(self.buffer[start + 6 : end]))
            self.first = False
            self.buffer = self.buffer[end:]
            self.events -= 1
            if self.events == 0:
                self.finish(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(False)  # closed before its last event: lost

    def finish(self, complete: bool) -> None:
        if self.events > 0 or complete:
            self.events = 0
            self.done(complete)


async def hold_streams(port: int, count: int, events: int, pgid: int | None = None) -> Held:
    """Open ``count`` streams, take ``events`` events on each, close them. With ``pgid``
    (a proxy's process group), its RSS and descriptors once every stream is open."""
    loop = asyncio.get_running_loop()
    held = Held()
    remaining = count
    finished = loop.create_future()

    def one_done(complete: bool) -> None:
        nonlocal remaining
        remaining -= 1
        held.lost += not complete
        if remaining == 0 and not finished.done():
            finished.set_result(None)

    streams = []
    for _ in range(count):
        _, stream = await loop.create_connection(
            lambda: _Stream(held, events + 1, one_done), "127.0.0.1", port
        )
        streams.append(stream)
    held.opened = len(streams)
    if pgid is not None:
        await asyncio.sleep(2)  # every stream's head through: each holds both descriptors
        held.rss = group_rss(pgid)
        held.fds = {pid: open_descriptors(pid) for pid in held.rss}
    try:
        await asyncio.wait_for(finished, events * 3 + 60)
    except TimeoutError:
        held.lost += remaining  # still waiting for events: lost too
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()
    return held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", choices=("backends", "sessions", "streams", "health"))
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="streams: mcplb's workers")
    args = parser.parse_args(argv)
    if args.bench == "sessions":
        print(bench_sessions(args))
        return 0
    import uvloop

    with tempfile.TemporaryDirectory(prefix="mcplb-scale-") as tmpdir:
        tmp = Path(tmpdir)
        job = {"backends": bench_backends, "streams": bench_streams, "health": bench_health}
        try:
            print(uvloop.run(job[args.bench](args, tmp)))
        except (NotReady, ConnectionError, RuntimeError, TimeoutError) as exc:
            print(f"failed: {exc}", file=sys.stderr)
            for log in sorted(tmp.glob("*.log")):
                print(f"--- {log.name}\n{tail(log)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
