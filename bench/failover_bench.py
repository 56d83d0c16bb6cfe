"""Failover benchmark: steady load over three backends, kill one, restart it, measure.

Usage (from the repository root)::

    .venv/bin/python bench/failover_bench.py [--clients 16] [--request-timeout 2]
        [--warmup 3] [--down 5] [--after-restart 10] [--max-after-restart 30]
        [--interval 0.5] [--timeout 0.25] [--rise 2] [--fall 2] [--slow-start 5]
        [--consecutive-failures 3] [--ejection-time 10] [--weight 100] [--json out.json]

It starts three plain HTTP backends
(``python -m tests.support.name_server --name bN --port P``, each
answering its name on ``GET /`` and ``GET /health``) and mcplb (``python -m mcplb.proxy.cli run
--config FILE --log-level info``, round_robin, active http probes of ``/health``, passive
ejection, slow start) on free 127.0.0.1 ports. Then an in-process asyncio/aiohttp load
generator runs ``--clients`` concurrent clients, each doing ``GET /`` in a loop with a
per-request timeout, for the whole scenario, and records every request: start, end, status or
exception, and the backend that answered (the body).

Timeline (t = seconds since the load started): warm-up ``--warmup`` s; SIGKILL b2 at t0;
restart b2 on the SAME port at t0 + ``--down``; keep the load until ``--after-restart`` s after
the restart, or earlier once b2's share has been back at ~1/3 (+-``--share-tolerance``) for
two whole 1 s windows after its slow start. If b2 came back so late that its slow start would
not fit in that time (e.g. it is still ejected), the load goes on until the ramp plus 3 s is
covered, but never past ``--max-after-restart`` s after the restart.

Reported:
  - requests sent / succeeded / failed, failures by reason (HTTP status and mcplb's error
    code, or exception type), and which failures reached b2 (mcplb's 502 "backend closed the
    connection": only b2 dies here) and were in flight at the kill, versus the others;
  - time to eviction: kill -> first "backend b2: ... -> unhealthy" / "-> ejected" line of
    mcplb's log (its timestamps have 1 ms resolution), the last response b2 served, and from
    the load's view the last request routed to b2 (one whose connect failed and which mcplb
    retried elsewhere does not count; those are counted from the log instead);
  - time to readmission: restart -> b2 answering again, -> the first "-> healthy" line, ->
    the moment b2 is in service again (active healthy and not ejected, rebuilt from the log's
    transitions), -> the first request served by b2;
  - b2's share of the successful requests per 1 s window from readmission through the slow
    start, next to the ideal share of mcplb's linear weight ramp.

``--weight`` (default 100) is every backend's weight in the config. Slow start scales the
weight and rounds it to an integer >= 1, so with weight 1 there is no ramp at all; equal
weights of 100 give the same round-robin order as weight 1 and a visible ramp.

Exit status: 0 all good; 1 a server failed to start or died, or the scenario could not run;
2 some request that did not reach b2 failed; 3 b2 was never evicted or never readmitted (the
report is printed anyway); 130 interrupted. Every process started here is stopped (SIGTERM,
then SIGKILL) and the temp dir removed, also on Ctrl-C / SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from bench.common import (  # noqa: E402
    HOST,
    NotReady,
    add_run_options,
    catch_signals,
    drop_tmp,
    free_ports,
    interruptible,
    log_step,
    machine_info,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
    package_version,
    raise_interrupt,
    spawn,
    stop_all,
    table,
    tail,
    wait_http,
)

BACKENDS = ("b1", "b2", "b3")
VICTIM = "b2"
MIN_SLOW_START_FACTOR = 0.01  # healthcheck.state.MIN_SLOW_START_FACTOR
REACHED_BACKEND_ERRORS = ("backend closed the connection", "backend sent an invalid response")
ERROR_BACKOFF = 0.01  # a client pauses this long after a failed request (bounds a busy loop)
CONTROL_STEP = 0.1  # seconds between checks of the timeline controller
SETTLE = 0.1  # the share check ignores the last SETTLE s (requests still in flight)
REAP_TIMEOUT = 5.0

LOG_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<logger>\S+)"
    r"\[(?P<pid>\d+)\]: (?P<msg>.*)$"
)
TRANSITION = re.compile(r"^backend (?P<name>\S+): (?P<old>\S+) -> (?P<new>\S+) \((?P<why>.*)\)$")
CONNECT_FAILED = re.compile(r"^connect to backend (?P<name>\S+) failed: (?P<why>.*)$")


# --------------------------------------------------------------------------- load generator


@dataclass(slots=True)
class Sample:
    """One request of the load: times in seconds since the load started."""

    start: float
    end: float
    status: int | None  # None: no response (exception)
    backend: str | None  # the body of a 200 response
    error: str | None  # None on success


def describe_failure(status: int, body: str) -> str:
    """E.g. "HTTP 502 bad_gateway: backend closed the connection" from mcplb's JSON body."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        data = json.loads(body)
        return f"HTTP {status} {data['error']}: {data['message']}"
    return f"HTTP {status}"


async def client_loop(
    session: aiohttp.ClientSession,
    url: str,
    request_timeout: float,
    origin: float,
    stop: asyncio.Event,
    out: list[Sample],
) -> None:
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    while not stop.is_set():
        t0 = time.perf_counter()
        status: int | None = None
        backend: str | None = None
        error: str | None = None
        try:
            async with session.get(url, timeout=timeout) as resp:
                body = await resp.text()
                status = resp.status
            if status == 200:
                backend = body.strip()
            else:
                error = describe_failure(status, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        t1 = time.perf_counter()
        out.append(Sample(t0 - origin, t1 - origin, status, backend, error))
        if error is not None:
            await asyncio.sleep(ERROR_BACKOFF)


async def http_ok(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with session.get(f"http://{HOST}:{port}/", timeout=timeout) as resp:
            await resp.read()
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


# --------------------------------------------------------------------------- scenario


@dataclass
class Timeline:
    """Moments of the scenario, seconds since the load started (None: did not happen)."""

    kill: float | None = None
    victim_reaped: float | None = None
    restart: float | None = None
    victim_ready: float | None = None  # the restarted b2 answered GET / itself
    first_victim_response: float | None = None  # load view, used by the controller
    end: float | None = None
    end_reason: str = ""
    origin_perf: float = 0.0  # time.perf_counter() when the load started
    interrupted: bool = False


class ShareTracker:
    """Incremental per-window counts of successful requests (by start time) after t_from."""

    def __init__(self, t_from: float, width: float = 1.0) -> None:
        self.t_from = t_from
        self.width = width
        self.total: Counter[int] = Counter()
        self.victim: Counter[int] = Counter()
        self._seen = 0

    def update(self, samples: list[Sample]) -> None:
        n = len(samples)
        for s in samples[self._seen : n]:
            if s.error is None and s.start >= self.t_from:
                i = int((s.start - self.t_from) / self.width)
                self.total[i] += 1
                if s.backend == VICTIM:
                    self.victim[i] += 1
        self._seen = n

    def share(self, lo: float, hi: float) -> float | None:
        """b2's share of the successful requests in the whole windows inside [lo, hi)."""
        total = victim = 0
        i_lo = math.ceil((lo - self.t_from) / self.width - 1e-9)
        i_hi = math.floor((hi - self.t_from) / self.width + 1e-9)
        for i in range(i_lo, i_hi):
            total += self.total[i]
            victim += self.victim[i]
        return victim / total if total else None


async def run_scenario(
    args: argparse.Namespace,
    proxy_port: int,
    victim_port: int,
    victim_cmd: list[str],
    procs: list[subprocess.Popen[bytes]],
    mcplb: subprocess.Popen[bytes],
    victim: subprocess.Popen[bytes],
    tmp: Path,
    samples: list[Sample],
    timeline: Timeline,
) -> None:
    """Run the load and the kill/restart timeline (times go into ``timeline``)."""
    url = f"http://{HOST}:{proxy_port}/"
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=args.clients, limit_per_host=args.clients)
    async with (
        aiohttp.ClientSession(connector=connector, trust_env=False) as session,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), trust_env=False
        ) as probe,
    ):
        timeline.origin_perf = origin = time.perf_counter()

        def now() -> float:
            return time.perf_counter() - origin

        clients = [
            asyncio.create_task(
                client_loop(session, url, args.request_timeout, origin, stop, samples)
            )
            for _ in range(args.clients)
        ]

        async def sleep_until(t: float) -> bool:
            """Sleep until now() >= t; False if mcplb died meanwhile."""
            while (left := t - now()) > 0:
                if mcplb.poll() is not None:
                    return False
                await asyncio.sleep(min(left, CONTROL_STEP))
            return mcplb.poll() is None

        try:
            if not await sleep_until(args.warmup):
                timeline.end_reason = "mcplb exited during the warm-up"
                return
            if victim.poll() is not None:
                timeline.end_reason = f"{VICTIM} exited before the kill"
                return
            log_step("scenario", f"t={now():.3f}s: SIGKILL {VICTIM} (pid {victim.pid})")
            timeline.kill = now()
            victim.kill()
            reap_deadline = now() + REAP_TIMEOUT
            while victim.poll() is None and now() < reap_deadline:
                await asyncio.sleep(0.005)
            if victim.poll() is not None:
                timeline.victim_reaped = now()
                procs.remove(victim)
            if not await sleep_until(timeline.kill + args.down):
                timeline.end_reason = f"mcplb exited while {VICTIM} was down"
                return
            log_step("scenario", f"t={now():.3f}s: restarting {VICTIM} on port {victim_port}")
            timeline.restart = now()
            restarted = spawn(victim_cmd, tmp / f"{VICTIM}-restarted.log", procs, cwd=REPO_ROOT)
            restart = timeline.restart
            tracker = ShareTracker(restart, width=0.1)
            soft_end = restart + args.after_restart
            hard_end = restart + args.max_after_restart
            ready_deadline = restart + args.start_timeout
            while True:
                t = now()
                if mcplb.poll() is not None:
                    timeline.end_reason = "mcplb exited after the restart"
                    break
                if timeline.victim_ready is None:
                    if restarted.poll() is not None:
                        timeline.end_reason = f"restarted {VICTIM} exited ({restarted.returncode})"
                        break
                    if t > ready_deadline:
                        timeline.end_reason = f"restarted {VICTIM} not ready in time"
                        break
                    if await http_ok(probe, victim_port):
                        timeline.victim_ready = now()
                        log_step("scenario", f"t={now():.3f}s: {VICTIM} answers again")
                tracker.update(samples)
                first = timeline.first_victim_response
                if first is None:
                    first = min(
                        (s.end for s in samples if s.backend == VICTIM and s.start >= restart),
                        default=None,
                    )
                    if first is not None:
                        timeline.first_victim_response = first
                        log_step("scenario", f"t={first:.3f}s: {VICTIM} serves requests again")
                        # The whole ramp plus 3 s must fit (bounded by hard_end).
                        soft_end = max(soft_end, first + args.slow_start + 3.0)
                if first is not None and t >= first + args.slow_start + 2.0 + SETTLE:
                    shares = [tracker.share(t - SETTLE - k - 1.0, t - SETTLE - k) for k in (0, 1)]
                    target = 1.0 / len(BACKENDS)
                    if all(
                        s is not None and abs(s - target) <= args.share_tolerance for s in shares
                    ):
                        timeline.end_reason = f"{VICTIM}'s share back at ~1/3 for 2 s"
                        break
                if t >= min(soft_end, hard_end):
                    timeline.end_reason = (
                        f"time limit ({t - restart:.1f} s after the restart)"
                        if first is not None
                        else f"time limit: {VICTIM} served nothing after its restart"
                    )
                    break
                await asyncio.sleep(CONTROL_STEP)
        finally:
            stop.set()
            timeline.end = now()
            # Each client finishes its current request (bounded by the request timeout).
            _, pending = await asyncio.wait(clients, timeout=args.request_timeout + 2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)


# --------------------------------------------------------------------------- mcplb's log


@dataclass
class LogEvent:
    t: float  # seconds since the load started (mcplb's timestamps: 1 ms resolution)
    level: str
    message: str


def parse_log(path: Path, wall_of_origin: float) -> list[LogEvent]:
    events: list[LogEvent] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return events
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m is None:
            continue
        wall = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        # asctime truncates to the millisecond: take the middle of that millisecond.
        events.append(LogEvent(wall + 0.0005 - wall_of_origin, m["level"], m["msg"]))
    return events


@dataclass
class Transition:
    t: float
    old: str
    new: str
    reason: str
    serving: bool  # b2 active-healthy and not ejected after this transition


def victim_transitions(events: Iterable[LogEvent]) -> list[Transition]:
    """b2's state changes, with whether it is in service after each (read from the log:
    each line is a change of the routing state, ejected before unhealthy)."""
    out: list[Transition] = []
    for e in events:
        m = TRANSITION.match(e.message)
        if m is None or m["name"] != VICTIM:
            continue
        out.append(Transition(e.t, m["old"], m["new"], m["why"], m["new"] == "healthy"))
    return out


# --------------------------------------------------------------------------- analysis


def reached_victim(s: Sample) -> bool:
    """Whether a failed request had been sent to a backend that then failed it (only b2 dies)."""
    return s.error is not None and any(r in s.error for r in REACHED_BACKEND_ERRORS)


def rel(t: float | None, base: float | None) -> float | None:
    return None if t is None or base is None else t - base


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:+,.1f} ms"


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ideal_share(elapsed: float, slow_start: float, weight: int) -> float:
    """b2's share under mcplb's linear ramp (weight rounded, >= 1) with two full peers."""
    factor = 1.0
    if slow_start > 0 and elapsed < slow_start:
        factor = max(elapsed / slow_start, MIN_SLOW_START_FACTOR)
    w = weight if factor >= 1.0 or weight <= 0 else max(1, round(weight * factor))
    peers = (len(BACKENDS) - 1) * weight
    return w / (w + peers) if w + peers else 0.0


def mean_ideal_share(lo: float, hi: float, slow_start: float, weight: int) -> float:
    steps = 100
    return statistics.fmean(
        ideal_share(lo + (hi - lo) * (k + 0.5) / steps, slow_start, weight) for k in range(steps)
    )


@dataclass
class PhaseStats:
    phase: str
    t_from: float
    t_to: float
    requests: int
    failed: int
    shares_pct: dict[str, float]
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def phase_stats(name: str, samples: Sequence[Sample], lo: float, hi: float) -> PhaseStats:
    chosen = [s for s in samples if lo <= s.start < hi]
    ok = [s for s in chosen if s.error is None]
    counts = Counter(s.backend or "?" for s in ok)
    lat = [(s.end - s.start) * 1e3 for s in chosen]
    return PhaseStats(
        phase=name,
        t_from=lo,
        t_to=hi,
        requests=len(chosen),
        failed=len(chosen) - len(ok),
        shares_pct={b: 100.0 * counts[b] / len(ok) if ok else 0.0 for b in sorted(counts)},
        p50_ms=pct(lat, 0.50),
        p99_ms=pct(lat, 0.99),
        max_ms=max(lat, default=None),
    )


@dataclass
class Window:
    t_from: float  # seconds since readmission
    t_to: float
    requests_ok: int
    victim: int
    share_pct: float | None
    ideal_pct: float
    failed: int


@dataclass
class Report:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    duration_s: float = 0.0
    requests_per_sec: float = 0.0
    by_backend: dict[str, int] = field(default_factory=dict)
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    failed_on_victim_in_flight_at_kill: int = 0
    failed_on_victim_other: int = 0
    failed_not_on_victim: int = 0
    failed_not_on_victim_by_reason: dict[str, int] = field(default_factory=dict)
    in_flight_at_kill: int = 0
    in_flight_on_victim_at_kill_ok: int = 0
    # eviction (seconds relative to the kill)
    eviction_log_s: float | None = None
    eviction_log_line: str = ""
    ejected_log_s: float | None = None
    unhealthy_log_s: float | None = None
    last_victim_response_s: float | None = None
    last_routed_to_victim_s: float | None = None
    connect_failures_logged: int = 0
    last_connect_failure_s: float | None = None
    # readmission (seconds relative to the restart)
    victim_ready_s: float | None = None
    healthy_log_s: float | None = None
    healthy_log_line: str = ""
    in_service_log_s: float | None = None
    first_victim_response_s: float | None = None
    readmitted_at: float | None = None  # load time the windows start at
    readmitted_from: str = ""
    phases: list[PhaseStats] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


def analyse(
    samples: Sequence[Sample], events: Sequence[LogEvent], tl: Timeline, args: argparse.Namespace
) -> Report:
    r = Report()
    r.sent = len(samples)
    ok = [s for s in samples if s.error is None]
    r.succeeded = len(ok)
    r.failed = r.sent - r.succeeded
    end = tl.end if tl.end is not None else max((s.end for s in samples), default=0.0)
    r.duration_s = end
    r.requests_per_sec = r.sent / end if end > 0 else 0.0
    r.by_backend = dict(sorted(Counter(s.backend or "?" for s in ok).items()))
    r.failures_by_reason = dict(Counter(s.error for s in samples if s.error).most_common())
    kill, restart = tl.kill, tl.restart
    not_on_victim: Counter[str] = Counter()
    for s in samples:
        in_flight = kill is not None and s.start <= kill <= s.end
        r.in_flight_at_kill += in_flight
        if s.error is None:
            r.in_flight_on_victim_at_kill_ok += in_flight and s.backend == VICTIM
        elif reached_victim(s):
            if in_flight:
                r.failed_on_victim_in_flight_at_kill += 1
            else:
                r.failed_on_victim_other += 1
        else:
            r.failed_not_on_victim += 1
            not_on_victim[s.error] += 1
    r.failed_not_on_victim_by_reason = dict(not_on_victim.most_common())

    r.transitions = victim_transitions(events)
    if kill is not None:
        down_until = restart if restart is not None else math.inf
        after_kill = [x for x in r.transitions if kill <= x.t < down_until]
        down = [x for x in after_kill if x.new in ("unhealthy", "ejected")]
        if down:
            r.eviction_log_s = down[0].t - kill
            r.eviction_log_line = f"{down[0].old} -> {down[0].new} ({down[0].reason})"
        r.ejected_log_s = next((x.t - kill for x in after_kill if x.new == "ejected"), None)
        r.unhealthy_log_s = next((x.t - kill for x in after_kill if x.new == "unhealthy"), None)
        victim_ok = [s for s in samples if s.backend == VICTIM and s.start < down_until]
        r.last_victim_response_s = rel(max((s.end for s in victim_ok), default=None), kill)
        routed = [
            s.start
            for s in samples
            if s.start < down_until and (s.backend == VICTIM or reached_victim(s))
        ]
        r.last_routed_to_victim_s = rel(max(routed, default=None), kill)
        failed_connects = [
            e.t
            for e in events
            if kill <= e.t < down_until
            and (m := CONNECT_FAILED.match(e.message)) is not None
            and m["name"] == VICTIM
        ]
        r.connect_failures_logged = len(failed_connects)
        r.last_connect_failure_s = rel(max(failed_connects, default=None), kill)
    if restart is not None:
        r.victim_ready_s = rel(tl.victim_ready, restart)
        back = [x for x in r.transitions if x.t >= restart]
        healthy = next((x for x in back if x.new == "healthy"), None)
        if healthy is not None:
            r.healthy_log_s = healthy.t - restart
            r.healthy_log_line = f"{healthy.old} -> {healthy.new} ({healthy.reason})"
        serving = next((x for x in back if x.serving), None)
        r.in_service_log_s = None if serving is None else serving.t - restart
        first = min(
            (s.end for s in samples if s.backend == VICTIM and s.start >= restart), default=None
        )
        r.first_victim_response_s = rel(first, restart)
        if serving is not None:
            r.readmitted_at, r.readmitted_from = serving.t, "log: back in service"
        elif first is not None:
            r.readmitted_at, r.readmitted_from = first, f"load: first {VICTIM} response"

    if kill is not None:
        r.phases.append(phase_stats("warm-up", samples, 0.0, kill))
        down_to = restart if restart is not None else end
        r.phases.append(phase_stats(f"{VICTIM} down", samples, kill, down_to))
        if restart is not None:
            back_to = r.readmitted_at if r.readmitted_at is not None else end
            r.phases.append(phase_stats(f"{VICTIM} restarted", samples, restart, back_to))
            if r.readmitted_at is not None:
                r.phases.append(phase_stats("readmitted", samples, r.readmitted_at, end))
    else:
        r.phases.append(phase_stats("warm-up", samples, 0.0, end))

    if r.readmitted_at is not None:
        t0 = r.readmitted_at
        n = max(1, math.ceil(args.slow_start / args.window) + 2)
        for k in range(n):
            lo, hi = t0 + k * args.window, t0 + (k + 1) * args.window
            if hi > end:
                break
            chosen = [s for s in samples if lo <= s.start < hi]
            good = [s for s in chosen if s.error is None]
            victim = sum(s.backend == VICTIM for s in good)
            r.windows.append(
                Window(
                    t_from=lo - t0,
                    t_to=hi - t0,
                    requests_ok=len(good),
                    victim=victim,
                    share_pct=100.0 * victim / len(good) if good else None,
                    ideal_pct=100.0
                    * mean_ideal_share(lo - t0, hi - t0, args.slow_start, args.weight),
                    failed=len(chosen) - len(good),
                )
            )
    return r


# --------------------------------------------------------------------------- report


def opt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def print_report(r: Report, tl: Timeline, args: argparse.Namespace) -> None:
    def t(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f} s"

    print()
    print(
        f"timeline (s since the load started): kill {t(tl.kill)}, restart {t(tl.restart)},"
        f" end {t(tl.end)} ({tl.end_reason})"
    )
    print()
    print(
        f"requests: sent {r.sent:,}, succeeded {r.succeeded:,}, failed {r.failed:,}"
        f"  ({r.requests_per_sec:,.0f} req/s over {r.duration_s:.1f} s, {args.clients} clients)"
    )
    print("served by: " + ", ".join(f"{b} {n:,}" for b, n in r.by_backend.items()))
    if r.failures_by_reason:
        print("failures by reason:")
        for reason, n in r.failures_by_reason.items():
            print(f"  {n:>6,}  {reason}")
    print(
        f"failures on {VICTIM}, in flight at the kill: {r.failed_on_victim_in_flight_at_kill}"
        f"  (requests in flight at the kill: {r.in_flight_at_kill}, of which"
        f" {r.in_flight_on_victim_at_kill_ok} still answered by {VICTIM})"
    )
    print(f"failures on {VICTIM}, sent after the kill: {r.failed_on_victim_other}")
    verdict = "OK" if r.failed_not_on_victim == 0 else "FAIL"
    print(f"failures of requests that did not reach {VICTIM}: {r.failed_not_on_victim} {verdict}")
    for reason, n in r.failed_not_on_victim_by_reason.items():
        print(f"  {n:>6,}  {reason}")

    def row(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<34}{value:>12}" + (f"  {note}" if note else ""))

    print()
    print("time to eviction (from the kill):")
    row("first down line in mcplb's log", ms(r.eviction_log_s), r.eviction_log_line)
    row("first '-> ejected' line", ms(r.ejected_log_s))
    row("first '-> unhealthy' line", ms(r.unhealthy_log_s))
    row(f"last response served by {VICTIM}", ms(r.last_victim_response_s))
    row(
        f"last request routed to {VICTIM} (load)",
        ms(r.last_routed_to_victim_s),
        f"start of the last request answered or failed by {VICTIM}",
    )
    row(
        f"connects to {VICTIM} refused, retried",
        f"{r.connect_failures_logged:,}",
        f"mcplb log; the last at {ms(r.last_connect_failure_s)}",
    )
    print(
        f"  (a request in flight on {VICTIM} over a reused upstream connection that closes before"
        " any response byte is replayed by mcplb;\n   its connect is refused and it is retried on"
        " another backend, so it shows up above, not as a failure)"
    )
    print()
    print("time to readmission (from the restart):")
    row(f"{VICTIM} process answers GET / itself", ms(r.victim_ready_s))
    row("first '-> healthy' line", ms(r.healthy_log_s), r.healthy_log_line)
    row("back in service (log)", ms(r.in_service_log_s), "active healthy and not ejected")
    row(f"first request served by {VICTIM}", ms(r.first_victim_response_s))

    print()
    print(f"{VICTIM} transitions in mcplb's log (s since the kill):")
    base = tl.kill if tl.kill is not None else 0.0
    for x in r.transitions:
        state = "in service" if x.serving else "out"
        print(f"  {x.t - base:+9.3f}  {x.old} -> {x.new}  [{state}]  ({x.reason})")

    print()
    print("phases (by request start):")
    names = sorted({b for p in r.phases for b in p.shares_pct} | set(BACKENDS))
    rows = []
    for p in r.phases:
        rows.append(
            [
                p.phase,
                f"{p.t_from:.2f}-{p.t_to:.2f}",
                f"{p.requests:,}",
                f"{p.failed:,}",
                *(f"{p.shares_pct.get(b, 0.0):.1f}" for b in names),
                opt_ms(p.p50_ms),
                opt_ms(p.p99_ms),
                opt_ms(p.max_ms),
            ]
        )
    head = ["phase", "t (s)", "requests", "failed", *(f"{b} %" for b in names)]
    print(table([*head, "p50 ms", "p99 ms", "max ms"], rows))

    print()
    if r.readmitted_at is None:
        print(f"traffic share of {VICTIM} during slow start: n/a ({VICTIM} was not readmitted)")
    else:
        print(
            f"traffic share of {VICTIM} per {args.window:g} s window from readmission"
            f" (t={r.readmitted_at:.3f} s, {r.readmitted_from}); slow start {args.slow_start:g} s,"
            f" weight {args.weight}:"
        )
        rows = [
            [
                f"{w.t_from:.1f}-{w.t_to:.1f}",
                f"{w.requests_ok:,}",
                f"{w.victim:,}",
                "n/a" if w.share_pct is None else f"{w.share_pct:.1f}",
                f"{w.ideal_pct:.1f}",
                f"{w.failed:,}",
            ]
            for w in r.windows
        ]
        print(table(["window (s)", "ok", VICTIM, f"{VICTIM} %", "ideal %", "failed"], rows))
        print(
            "  ideal: mcplb's linear ramp of the weight (rounded, >= 1) averaged over the"
            " window; mcplb moves weights every 0.5 s."
        )


# --------------------------------------------------------------------------- setup


def mcplb_conf(port: int, backend_ports: Sequence[int], args: argparse.Namespace) -> str:
    health = [
        "health:",
        f"  slow_start: {args.slow_start:g}s",
        "  active:",
        "    type: http",
        "    path: /health",
        f"    interval: {args.interval:g}s",
        f"    timeout: {args.timeout:g}s",
        f"    rise: {args.rise}",
        f"    fall: {args.fall}",
        "  passive:",
        f"    consecutive_failures: {args.consecutive_failures}",
        f"    ejection_time: {args.ejection_time:g}s",
    ]
    backends = dict(zip(BACKENDS, backend_ports, strict=True))
    weights = dict.fromkeys(BACKENDS, args.weight)
    return mcplb_config(port, ["strategy: round_robin"], backends, health, weights)


def backend_cmd(name: str, port: int) -> list[str]:
    return [mcplb_python(), "-m", "tests.support.name_server", "--name", name, "--port", str(port)]


def failover_machine_info() -> dict[str, Any]:
    info = machine_info()
    info["aiohttp"] = package_version("aiohttp")
    info["bench_python"] = f"{platform.python_version()} aiohttp {aiohttp.__version__}"
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=16, help="concurrent load clients")
    p.add_argument("--request-timeout", type=float, default=2.0, help="seconds per request")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the kill")
    p.add_argument("--down", type=float, default=5.0, help="seconds from the kill to the restart")
    p.add_argument(
        "--after-restart", type=float, default=10.0, help="seconds of load after the restart"
    )
    p.add_argument(
        "--max-after-restart",
        type=float,
        default=30.0,
        help="hard limit on the load after the restart (when the slow start ends late)",
    )
    p.add_argument("--interval", type=float, default=0.5, help="health.active.interval (s)")
    p.add_argument("--timeout", type=float, default=0.25, help="health.active.timeout (s)")
    p.add_argument("--rise", type=int, default=2, help="health.active.rise")
    p.add_argument("--fall", type=int, default=2, help="health.active.fall")
    p.add_argument("--slow-start", type=float, default=5.0, help="health.slow_start (s)")
    p.add_argument(
        "--consecutive-failures", type=int, default=3, help="health.passive.consecutive_failures"
    )
    p.add_argument(
        "--ejection-time", type=float, default=10.0, help="health.passive.ejection_time (s)"
    )
    p.add_argument("--weight", type=int, default=100, help="weight of every backend (1-1000)")
    p.add_argument("--window", type=float, default=1.0, help="share window width (s)")
    p.add_argument(
        "--share-tolerance",
        type=float,
        default=0.03,
        help="|share - 1/3| that counts as back at ~1/3 (fraction)",
    )
    add_run_options(p)
    args = p.parse_args(argv)
    if args.clients < 1 or args.rise < 1 or args.fall < 1 or args.consecutive_failures < 1:
        p.error("--clients, --rise, --fall and --consecutive-failures must be >= 1")
    if not 1 <= args.weight <= 1000:
        p.error("--weight must be between 1 and 1000")
    positive = ("request_timeout", "down", "interval", "timeout", "window", "start_timeout")
    if any(getattr(args, k) <= 0 for k in positive) or args.ejection_time <= 0:
        p.error("timeouts, --down, --interval, --window and --ejection-time must be > 0")
    if args.warmup <= 0 or args.slow_start < 0 or args.share_tolerance <= 0:
        p.error("--warmup and --share-tolerance must be > 0, --slow-start >= 0")
    if args.timeout >= args.interval:
        p.error("--timeout must be less than --interval (mcplb requires it)")
    if args.after_restart <= 0 or args.max_after_restart < args.after_restart:
        p.error("need 0 < --after-restart <= --max-after-restart")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    machine = failover_machine_info()
    catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-failover-"))
    procs: list[subprocess.Popen[bytes]] = []
    samples: list[Sample] = []
    timeline = Timeline()
    events: list[LogEvent] = []
    commands: dict[str, Any] = {}
    conf_text = ""
    interrupted = False
    setup_error = ""
    wall_minus_perf = 0.0
    mcplb_log = tmp / "mcplb.log"
    try:
        ports = free_ports(len(BACKENDS) + 1)
        backend_ports, proxy_port = ports[: len(BACKENDS)], ports[-1]
        backend_procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, bport in zip(BACKENDS, backend_ports, strict=True):
            cmd = backend_cmd(name, bport)
            commands[name] = cmd
            log_step(name, f"starting: {shlex.join(cmd)}")
            backend_procs[name] = spawn(cmd, tmp / f"{name}.log", procs, cwd=REPO_ROOT)
        for name, bport in zip(BACKENDS, backend_ports, strict=True):
            wait_http(backend_procs[name], bport, "/", args.start_timeout, tmp / f"{name}.log")
        conf_text = mcplb_conf(proxy_port, backend_ports, args)
        conf = tmp / "mcplb.yaml"
        conf.write_text(conf_text)
        commands["mcplb"] = mcplb_cmd(conf, "--log-level", "info")
        log_step("mcplb", f"starting: {shlex.join(commands['mcplb'])}")
        mcplb = spawn(commands["mcplb"], mcplb_log, procs, cwd=REPO_ROOT)
        wait_http(mcplb, proxy_port, "/", args.start_timeout, mcplb_log)
        log_step("mcplb", f"ready on port {proxy_port}; load: {args.clients} clients")
        victim_index = BACKENDS.index(VICTIM)
        wall_minus_perf = statistics.median(time.time() - time.perf_counter() for _ in range(5))
        scenario = run_scenario(
            args,
            proxy_port,
            backend_ports[victim_index],
            commands[VICTIM],
            procs,
            mcplb,
            backend_procs[VICTIM],
            tmp,
            samples,
            timeline,
        )
        timeline.interrupted = asyncio.run(interruptible(scenario, restore=raise_interrupt))
        if timeline.interrupted:
            raise KeyboardInterrupt
        log_step("scenario", f"load stopped: {timeline.end_reason}")
        if mcplb.poll() is not None:
            setup_error = f"mcplb exited ({mcplb.returncode})\n{tail(mcplb_log)}"
        elif timeline.restart is None or timeline.victim_ready is None:
            setup_error = f"scenario incomplete: {timeline.end_reason}"
    except NotReady as exc:
        setup_error = f"a server failed to start: {exc}"
    except KeyboardInterrupt:
        interrupted = True
        timeline.end_reason = timeline.end_reason or "interrupted"
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        stop_all(procs)
        if timeline.origin_perf:
            events = parse_log(mcplb_log, wall_minus_perf + timeline.origin_perf)
        drop_tmp(tmp, args.keep_tmp)

    report = analyse(samples, events, timeline, args)
    print()
    print(f"command: {command}")
    for name in BACKENDS:
        if name in commands:
            print(f"{name}: {shlex.join(commands[name])}  (cwd {REPO_ROOT})")
    if "mcplb" in commands:
        print(f"mcplb: {shlex.join(commands['mcplb'])}")
    print(
        f"load: {args.clients} aiohttp clients, GET / in a loop, {args.request_timeout:g} s"
        f" timeout; warm-up {args.warmup:g} s, {VICTIM} down {args.down:g} s"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    if conf_text:
        print("config:\n" + "\n".join(f"  {line}" for line in conf_text.splitlines()))
    if setup_error:
        print(f"\nerror: {setup_error}")
    if interrupted:
        print("\ninterrupted: partial results")
    if timeline.kill is not None:
        print_report(report, timeline, args)

    evicted = report.eviction_log_s is not None
    readmitted = report.first_victim_response_s is not None
    checks = [
        f"{VICTIM} evicted: {'yes' if evicted else 'NO'}",
        f"{VICTIM} readmitted: {'yes' if readmitted else 'NO'}",
        f"failures not on {VICTIM}: {report.failed_not_on_victim}",
    ]
    print("\n" + "; ".join(checks))
    if args.json:
        data: dict[str, Any] = {
            "command": command,
            "commands": commands,
            "config": conf_text,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine,
            "timeline": asdict(timeline),
            "results": asdict(report),
            "setup_error": setup_error,
            "interrupted": interrupted,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    if interrupted:
        return 130
    if setup_error:
        return 1
    if report.failed_not_on_victim:
        return 2
    if not evicted or not readmitted:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
