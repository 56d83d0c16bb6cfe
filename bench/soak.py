"""Soak test: bounded mixed MCP/SSE/HTTP load through a real mcplb while faults are injected.

Usage (from the repository root)::

    .venv/bin/python bench/soak.py [--duration 150] [--clients 16] [--down 10]
        [--workers 2] [--seed 1] [--redis-outage-expected] [--sentinel] [--mixed]
        [--json out.json] [--keep-tmp]

``make soak`` runs ``--mixed --duration 600``; ``tests/test_soak_mixed.py`` runs it for 30 s.

--mixed, the mixed-era soak (implies --sentinel and --redis-outage-expected): everything
below, and
  - two mcplb replicas (each ``workers: 2``, its own port and admin port, the same store);
    each load task uses one of them, in turn;
  - the backends are tests/support/soak_backend.py (the demo tools, dual-era: 2025 sessions
    and sessionless 2026-07-28 requests, the tasks extension, ``subscriptions/listen``
    with an event every 0.25 s, the 2024-11-05 HTTP+SSE transport at /sse);
  - edge auth: the soak writes a JWKS (one RSA key) served by ``python -m http.server`` on
    loopback and signs the token every load request carries;
  - DNS discovery: dnsmasq names two more backends (127.0.0.5 and 127.0.0.6, one port);
  - more load: ``modern`` (tools/call whoami sessionless, then a task: slow_task, tasks/get
    until completed, every tasks/get must reach the backend holding the task), ``listen``
    (subscriptions/listen held 4-8 s: every event in order; a gap is a LOST EVENT, never
    expected), ``legacy-sse`` (Python SDK over HTTP+SSE: initialize, whoami, countdown),
    ``ts-sdk`` (tests/interop/ts_auth_client.mjs, the TypeScript SDK 1.32, one Node process
    per session), ``auth`` (no token, a bad signature, another audience: each must get 401
    with a Bearer challenge);
  - more faults: 0.35 D a worker of replica 0 SIGKILLed (its supervisor must replace it
    within 15 s); 0.52 D DNS drops 127.0.0.6 (every replica's /status must stop listing
    it); 0.86 D replica 1 SIGTERMed (it must drain and exit 0 within grace + 10 s), then
    started again;
  - expected failures also: requests in flight at the worker kill (or of a legacy SSE
    session whose stream it may have held), sessions on the address DNS removed, requests
    sent to replica 1 from its SIGTERM until it serves again, and those held on it past its
    drain; a "Unknown task" while Redis switches is like a session's 404;
  - at the end, with the load stopped: each worker's open descriptors (/proc/PID/fd)
    against the start (FD_SLACK more at most) and mcplb's RSS against the warm-up
    (RSS_GROWTH_MAX_MIB in all, RSS_PID_GROWTH_MAX_MIB per process): beyond, a finding;
    the summary: each fault and the failures it explains, the Redis switch time (the
    sentinels' and mcplb's), RSS and descriptors.

Started here, all on 127.0.0.1 free ports, logs in a temp dir:
  - ``redis-server`` (no persistence; found as tests/support/redis_server.py does,
    ``make system-deps`` installs it): mcplb's session store;
  - four demo MCP backends, ``python -m mcplb.proxy.demo.backend --name mcp-X --port P``
    (official MCP
    SDK servers, tools whoami/add/countdown, ``GET /debug/sessions``). mcp-a, mcp-b and mcp-c
    are in the config from the start; mcp-d runs all along but is only added by a reload;
  - mcplb: ``python -m mcplb.proxy.cli run --config FILE --log-level info`` with ``workers: 2``
    (``--workers``), round_robin, ``sticky.store: redis``, active MCP health checks, passive
    ejection, the admin API on a loopback port and the access log off. Its TMPDIR is the temp
    dir, so its state directory goes away with it even if the master dies.

Load (``--clients`` asyncio tasks in this process, default 16, every loop bounded):
  short   MCP sessions with the official SDK client (Streamable HTTP): initialize, tools/call
          whoami, add, countdown (3 progress notifications, all must arrive), then DELETE;
          again and again. The SDK also opens the session's GET stream (counted as an op).
  long    SDK sessions that live 8-15 s, across the faults: whoami/add every 0.5 s; every
          whoami must name the session's first backend; then DELETE.
  sse     by hand (aiohttp): initialize, notifications/initialized, whoami, then the
          standalone stream (GET /mcp, Accept: text/event-stream) held open 5-10 s, during
          which a countdown(10 x 0.3 s) on the same session streams its progress over its POST
          (all 10 must arrive); the GET stream must stay open for the whole hold; DELETE.
  http    plain ``GET /debug/sessions`` (every demo backend answers 200 JSON) in a loop.
  admin   one task: the admin API's ``GET /status`` every second.

Faults, at fixed fractions of ``--duration`` D (t = seconds since the load started):
  0.20 D  SIGKILL mcp-b; restarted on the same port ``--down`` s later (at most 0.2 D);
  0.45 D  reload 1: the config file is rewritten (mcp-a weight 1 -> 3, mcp-d added) and the
          mcplb master gets SIGHUP; the admin API's /status must show the new backends and
          weights within 10 s;
  0.60 D  reload 2: mcp-a back to weight 1, mcp-d removed (it drains for timeouts.grace,
          5 s), SIGHUP;
  (each reload must also be logged as "config reloaded" by every worker, and not rejected)
  0.75 D  redis-server SIGKILLed, started again (empty) on the same port 3 s later.
          With ``--sentinel`` the store is a Sentinel group instead
          (tests/support/redis_sentinel.py: master, replica, three sentinels;
          ``sticky.redis.sentinels``): the master is
          SIGKILLed, the sentinels promote the replica (its time is reported), and the old
          master restarts 3 s later (empty), which the sentinels make a replica.
A master that exits on SIGHUP (no reload support) is detected and reported; the reload is
then "not applied" and the second one is skipped (its orphaned workers keep serving).

Every operation (initialize, one tools/call, a GET stream, a DELETE, one HTTP request) is
counted with its start/end time. Failures are grouped by reason (HTTP status and who answered
it: mcplb or the backend (uvicorn), MCP error, exception class) and classified:
  EXPECTED    the session (known from whoami) lived on mcp-b when it was killed and fails at
              or after the kill (404 "Session not found": the client must re-initialize; a
              stream or call cut); or lived on mcp-d and fails once its drain after reload 2 is
              over; or the operation's backend is unknown and it was in flight at the kill;
              with ``--redis-outage-expected`` also a 404 for a session from the Redis kill
              until 5 s after its restart (the store's reconnect backoff);
  UNEXPECTED  everything else (grouped with where it happened: Redis outage, around a
              reload, while mcp-b was down), plus the faults' own checks (mcplb master
              exited, a reload not applied, rejected or not logged by every worker, no mcplb
              process left: the run then ends early).
Also reported: per-phase counts (before / during / after each fault) with the backend of the
new sessions, the RSS of mcplb (sum of VmRSS of its process group: master and workers) after
the warm-up and at the end, sessions left on the backends, warnings/errors in mcplb's log, and
the periods in which a worker's Redis store answered from its local table only (rebuilt from
that log). The JSON (``--json``) also lists up to 200 unexpected failures one by one, with the
session id and times (``timeline.origin_wall`` maps them to mcplb's log timestamps).

Exit status: 0 no unexpected failure; 1 setup failed (a server did not start); 2 unexpected
failures (the report says which); 130 interrupted. Every process started here is stopped
(SIGTERM, then SIGKILL of its whole process group) and the temp dirs removed, also on Ctrl-C,
SIGTERM and exceptions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import http.client
import json
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import anyio  # noqa: E402
import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

from bench.common import (  # noqa: E402
    HOST,
    NotReady,
    add_run_options,
    catch_signals,
    drop_tmp,
    free_ports,
    group_pids,
    group_rss,
    interruptible,
    log_step,
    machine_info,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
    raise_interrupt,
    spawn,
    stop_all,
    table,
    tail,
    wait_http,
    wait_until,
)
from tests.support.dns_server import DnsServer  # noqa: E402
from tests.support.redis_sentinel import SERVICE, SentinelGroup, start_sentinel_group  # noqa: E402
from tests.support.redis_server import RedisServer, RedisServerMissing, start_redis  # noqa: E402
from tests.support.soak_backend import TICK, TICK_MOD, tick_uri  # noqa: E402

BACKENDS = ("mcp-a", "mcp-b", "mcp-c")
VICTIM = "mcp-b"  # SIGKILLed and restarted
EXTRA = "mcp-d"  # added by reload 1, removed by reload 2
REWEIGHTED = "mcp-a"  # weight 1 -> 3 (reload 1) -> 1 (reload 2)
ALL_BACKENDS = (*BACKENDS, EXTRA)

# Fault times as fractions of --duration.
F_WARMUP = 0.10
F_KILL = 0.20
F_RELOAD_ADD = 0.45
F_RELOAD_REMOVE = 0.60
F_REDIS = 0.75
REDIS_DOWN = 3.0  # seconds redis-server stays down
GRACE = 5.0  # timeouts.grace: also how long a backend removed by a reload drains
DRAIN_SLACK = 0.6  # the drain deadline is enforced by a 0.5 s sweep
REDIS_RECONNECT = 5.0  # proxy/redisconn/health.py BACKOFF_MAX: longest wait before it retries Redis
MIN_WARMUP = 5.0

MCP_PATH = "/mcp"
PLAIN_PATH = "/debug/sessions"
PROTOCOL_VERSION = "2025-11-25"
MCP_ACCEPT = "application/json, text/event-stream"
SESSION_NOT_FOUND = "Session not found"

REQUEST_TIMEOUT = 10.0  # one MCP request / HTTP request
SHORT_SESSION_LIMIT = 30.0  # whole short session (initialize .. last call)
CONTROL_STEP = 0.1  # seconds between checks of the fault controller
RELOAD_CHECK = 10.0  # seconds for /status to show a reload
RSS_EVERY = 5.0  # seconds between RSS samples
STOP_GRACE = 20.0  # seconds the load gets to finish its current operation at the end
ERROR_BACKOFF = 0.2  # a client pauses this long after a failure
HTTP_PAUSE = 0.01  # plain HTTP clients pause this long between requests
SHORT_CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("whoami", {}),
    ("add", {"a": 2, "b": 3}),
    ("countdown", {"n": 3, "delay": 0.1}),
)
LONG_HOLD = (8.0, 15.0)
LONG_STEP = 0.5
SSE_HOLD = (5.0, 10.0)
SSE_COUNTDOWN = {"n": 10, "delay": 0.3}
START_TIMEOUT = 20.0
EXAMPLES = 200  # unexpected failures listed one by one in the JSON report
STORE_LOG_PREFIX = "Redis session store: "  # proxy/sessions/redis_store.py's warnings
STORE_BACK = "Redis answers again"
BACKOFF_MIN = 0.5  # proxy/redisconn/health.py: the first backoff after a Redis failure
# --mixed: the mixed-era soak (see the module's docstring)
BACKEND_MODULE = ["-m", "mcplb.proxy.demo.backend"]  # tests.support.soak_backend with --mixed
F_WORKER = 0.35  # a worker of replica 0 SIGKILLed (its supervisor starts another)
F_DNS = 0.52  # the DNS discovery name loses one of its two addresses
F_REPLICA = 0.86  # replica 1 SIGTERMed (graceful drain), then started again
DNS_NAME = "mcp.soak.test"
DNS_ADDRESSES = ("127.0.0.5", "127.0.0.6")  # the second one is removed by the DNS change
REPLICAS = 2
MODERN_VERSION = "2026-07-28"
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
IN_FLIGHT = 0.5  # an op that started this long before a kill may have been queued in it
WORKER_BACK = 15.0  # seconds the supervisor gets to replace a SIGKILLed worker
REPLICA_EXIT = GRACE + 10.0  # seconds a SIGTERMed replica gets to drain and exit
LISTEN_HOLD = (4.0, 8.0)  # seconds a listen stream is held
LISTEN_SILENCE = TICK * TICK_MOD * 0.75  # no event for this long on a live stream: lost ones
TASK_DELAY = 0.2  # slow_task's run time
TASK_POLLS = 100  # tasks/get polls of a task at most (every 50 ms)
AUTH_PAUSE = 0.5  # seconds between two refused-token probes
TS_TIMEOUT = 40.0  # one TypeScript SDK session, Node's start included
UPSTREAM_KEEPALIVE = 4.0  # timeouts.upstream_keepalive's default: idle pooled upstream conns
FD_SLACK = 24  # descriptors a worker may hold at the end beyond its start (pools, probes)
FD_SETTLE = 15.0  # seconds the end count waits for idle connections to close (bounded)
RSS_GROWTH_MAX_MIB = 64.0  # mcplb's RSS (all replicas) may grow this much, warm-up to end
RSS_PID_GROWTH_MAX_MIB = 40.0  # ... and one process that lived through the run this much
LOST = "lost listen event"  # an op error that no fault excuses
KEEPALIVE_RACE = 1.0  # seconds after a SIGTERM in which the keep-alive race shows
CONNECT_REFUSED = ("ConnectError", "Connect call failed")  # refused: no request was sent
CONNECTION_CLOSED = ("ReadError", "RemoteProtocolError", "ServerDisconnected", "ClientOSError")

REPLICA: contextvars.ContextVar[int] = contextvars.ContextVar("replica", default=0)

LOG_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<logger>\S+)"
    r"\[(?P<pid>\d+)\]: (?P<msg>.*)$"
)


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Op:
    """One operation: times in seconds since the load started."""

    kind: str
    start: float
    end: float
    error: str | None  # None: success
    session: int | None  # index into Soak.sessions
    backend: str | None  # the session's backend when the op ended (whoami), if known
    expected: str | None = None  # set by classify() for failures
    replica: int = 0  # the mcplb replica it was sent to


@dataclass(slots=True)
class SessionRec:
    kind: str  # short | long | sse
    start: float
    backend: str | None = None
    lost: bool = False  # a request got 404 (the session is gone: no DELETE)
    sid: str | None = None  # the Mcp-Session-Id (with the redis store: the backend's own)


@dataclass
class Replica:
    """One mcplb (master and workers) of the run, its config file and logs."""

    index: int
    port: int
    admin_port: int
    conf: Path
    cmd: list[str]
    proc: subprocess.Popen[bytes]
    logs: list[Path]  # one per start: a restarted replica logs to a new file

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def workers(self) -> list[int]:
        return [p for p in group_pids(self.proc.pid) if p != self.proc.pid]


@dataclass
class MixedTimeline:
    """The --mixed faults' times (seconds since the load started) and what they cost."""

    worker_kill: float | None = None
    worker_pid: int | None = None
    worker_back: float | None = None
    dns_change: float | None = None
    dns_removed: str | None = None
    dns_applied: float | None = None
    replica_term: float | None = None
    replica_exit: float | None = None
    replica_ready: float | None = None
    sentinel_switch_s: float | None = None  # kill -> the sentinels name a new master
    listen_events: int = 0  # received on listen streams
    lost_events: int = 0  # gaps in live listen streams
    fds_start: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (replica, n)
    fds_end: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Timeline:
    warm: float | None = None
    kill: float | None = None
    restart: float | None = None
    restart_ready: float | None = None
    reload_add: float | None = None
    reload_remove: float | None = None
    redis_kill: float | None = None
    redis_up: float | None = None
    end: float | None = None
    end_reason: str = ""
    origin_wall: float = 0.0  # time.time() at t = 0, to match mcplb's log timestamps
    master_exit: float | None = None
    master_rc: int | None = None
    events: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Reload:
    name: str
    t: float
    change: str
    sighup_sent: bool = False
    master_alive_after: bool | None = None
    master_rc: int | None = None
    workers_after: int | None = None
    reloaded_pids: dict[int, str] = field(default_factory=dict)  # worker pid -> changes logged
    rejected: list[str] = field(default_factory=list)
    applied: bool = False
    applied_after_s: float | None = None
    note: str = ""


@dataclass
class Finding:
    """An unexpected problem that is not one operation's failure (a fault check)."""

    t: float | None
    what: str


@dataclass
class StoreWindow:
    """A period in which one worker's Redis session store answered from its local table only
    (rebuilt from mcplb's log; times in seconds since the load started)."""

    pid: int
    start: float
    end: float  # inf: not over when the log ends
    why: str


class McplbGone(Exception):
    """Every mcplb process exited: the load cannot go on."""


class SdkLogCounter(logging.Handler):
    """Counts the client libraries' warnings and errors instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().splitlines()[0] if record.getMessage() else ""
        self.counts[f"{record.levelname} {record.name}: {msg[:100]}"] += 1


# --------------------------------------------------------------------------- helpers


def describe_exc(exc: BaseException) -> str:
    """A short reason: the innermost leaf of an exception group, MCP error code and message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCPError {exc.code}: {exc.message[:80]}"
    if isinstance(exc, TimeoutError):
        return "TimeoutError"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "aiohttp.ClientPayloadError: response body cut short"
    text = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
    name = f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}"
    name = name.removeprefix("builtins.")
    return f"{name}: {text}" if text else name


def origin_of(server_header: str | None) -> str:
    """Who made an HTTP answer: the demo backends run uvicorn; mcplb sends no Server header."""
    return "backend" if server_header and "uvicorn" in server_header.lower() else "mcplb"


def result_text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in getattr(result, "content", []))


def parse_sse_json(body: str) -> list[dict[str, Any]]:
    """The JSON messages of an SSE body (data: lines; one message per event)."""
    messages: list[dict[str, Any]] = []
    for block in re.split(r"\r?\n\r?\n", body):
        data = "\n".join(
            line[5:].lstrip() for line in block.splitlines() if line.startswith("data:")
        )
        if data:
            with contextlib.suppress(ValueError):
                messages.append(json.loads(data))
    return messages


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f}"


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


# --------------------------------------------------------------------------- config


def soak_config(
    workers: int,
    port: int,
    admin_port: int,
    redis: list[str],
    ports: dict[str, int],
    names: tuple[str, ...],
    weights: dict[str, int],
    extra: list[str] | None = None,
) -> str:
    """``redis``: the lines of sticky.redis (redis_lines); ``extra``: more top-level lines
    (mixed_lines)."""
    settings = [
        "sticky:",
        "  mcp_sessions: true",
        "  store: redis",
        "  redis:",
        *redis,
        "health:",
        "  active:",
        "    type: mcp",
        "    interval: 1s",
        "    timeout: 500ms",
        "    rise: 2",
        "    fall: 2",
        "  passive:",
        "    consecutive_failures: 3",
        "    ejection_time: 5s",
        "timeouts:",
        f"  grace: {GRACE:g}s",
        "admin:",
        f'  listen: "{HOST}:{admin_port}"',
        "log:",
        "  access: false",
        *(extra or []),
    ]
    head = [f"workers: {workers}", "strategy: round_robin"]
    backends = {n: ports[n] for n in names}
    return mcplb_config(port, head, backends, settings, weights)


def redis_lines(redis: RedisServer, group: SentinelGroup | None) -> list[str]:
    """sticky.redis: the server's url, or the Sentinel group's sentinels and service."""
    if group is None:
        return [f'    url: "{redis.url}"']
    sentinels = ", ".join(f'"{address}"' for address in group.addresses)
    return [f"    sentinels: [{sentinels}]", f"    service: {SERVICE}"]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class MixedSetup:
    """What --mixed starts beyond the single-replica soak."""

    dns: DnsServer  # dnsmasq: DNS_NAME -> DNS_ADDRESSES
    discovery_port: int  # the discovered backends' port (A records carry none)
    discovered: list[str]  # their names as mcplb gives them: "ADDRESS-PORT"
    jwks_port: int  # the JWKS the soak serves (python -m http.server)
    token: str  # a valid access token: every load request carries it
    forged: str  # same kid, another key: the signature does not verify
    wrong_audience: str  # valid signature, "aud" of another resource


def mixed_lines(setup: MixedSetup | None, first_port: int) -> list[str]:
    """auth (the soak's JWKS; the resource is the first replica's URL, as behind one
    Service name) and discovery (dnsmasq) for the mixed soak."""
    if setup is None:
        return []
    issuer = f"http://{HOST}:{setup.jwks_port}"
    return [
        "auth:",
        f'  resource: "http://{HOST}:{first_port}{MCP_PATH}"',
        "  jwt:",
        f'    issuer: "{issuer}"',
        f'    jwks_url: "{issuer}/jwks.json"',
        "discovery:",
        "  dns:",
        f"    name: {DNS_NAME}",
        f"    port: {setup.discovery_port}",
        "    interval: 0.5s",
        f'    resolvers: ["{setup.dns.address}"]',
        "    allow_networks: [127.0.0.0/8]",
    ]


def make_tokens(directory: Path, issuer: str, resource: str) -> tuple[str, str, str]:
    """Write a JWKS (one RSA key) to ``directory``/jwks.json; a valid token, a forged one
    (same kid, another key) and one for another audience."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    def key() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    private, other = key(), key()
    public = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    directory.mkdir(parents=True, exist_ok=True)
    jwks = {"keys": [{**public, "kid": "soak-1", "use": "sig", "alg": "RS256"}]}
    (directory / "jwks.json").write_text(json.dumps(jwks))
    now = int(time.time())
    claims = {"iss": issuer, "sub": "soak", "aud": resource, "iat": now, "exp": now + 6 * 3600}

    def sign(signer: Any, **changes: Any) -> str:
        return jwt.encode(
            {**claims, **changes}, signer, algorithm="RS256", headers={"kid": "soak-1"}
        )

    return sign(private), sign(other), sign(private, aud=f"http://{HOST}:1/other")


def http_probe(host: str, port: int, path: str, headers: dict[str, str]) -> str | None:
    """None when ``GET path`` answers 200, else what it did."""
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return None if resp.status == 200 else f"GET {path} answered {resp.status}: {body[:100]!r}"
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {path} failed: {exc!r}"
    finally:
        conn.close()


def wait_proxy(
    proc: subprocess.Popen[bytes], port: int, headers: dict[str, str], timeout: float, log: Path
) -> None:
    """Bounded wait until mcplb answers 200 through to a backend (with the token, if any)."""
    wait_until(proc, lambda: http_probe(HOST, port, PLAIN_PATH, headers), timeout, log)


# --------------------------------------------------------------------------- the run


class Soak:
    def __init__(
        self,
        args: argparse.Namespace,
        tmp: Path,
        procs: list[subprocess.Popen[bytes]],
        backend_procs: dict[str, subprocess.Popen[bytes]],
        ports: dict[str, int],
        replicas: list[Replica],
        redis: RedisServer,
        group: SentinelGroup | None = None,
        mixed: MixedSetup | None = None,
    ) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.backend_procs = backend_procs
        self.ports = ports
        self.replicas = replicas
        self.redis = redis  # with a Sentinel group: its first master
        self.group = group
        self.setup = mixed  # --mixed: the DNS server, the token, the discovered backends
        self.mx = MixedTimeline()
        self.auth_headers = {"authorization": f"Bearer {mixed.token}"} if mixed else {}
        self.rng = random.Random(args.seed)
        self.ops: list[Op] = []
        self.sessions: list[SessionRec] = []
        self.tl = Timeline()
        self.reloads: list[Reload] = []
        self.findings: list[Finding] = []
        self.rss: list[tuple[float, int, dict[int, int]]] = []  # (t, total KiB, pid -> KiB)
        self.rss_start: tuple[float, int, dict[int, int]] | None = None
        self.rss_end: tuple[float, int, dict[int, int]] | None = None
        self.last_status: dict[str, Any] | None = None
        self.stop = asyncio.Event()
        self.origin = time.perf_counter()
        self.workers_seen: set[int] = set()
        self.mix: dict[str, int] = {}
        self.store_windows: list[StoreWindow] = []
        self.readmitted: dict[int, float] = {}  # worker pid -> victim healthy again (its log)

    # ----------------------------------------------------------------- bookkeeping

    # The first replica: the one the single-replica soak has (reloads, /status, RSS of old).
    @property
    def mcplb(self) -> subprocess.Popen[bytes]:
        return self.replicas[0].proc

    @property
    def mcplb_log(self) -> Path:
        return self.replicas[0].log

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.replicas[0].admin_port}"

    @property
    def url(self) -> str:
        """The /mcp URL of the replica this load task uses (REPLICA, set per task)."""
        return f"http://{HOST}:{self.replicas[REPLICA.get()].port}{MCP_PATH}"

    def base_url(self) -> str:
        return f"http://{HOST}:{self.replicas[REPLICA.get()].port}"

    def config_text(self, rep: Replica, names: tuple[str, ...], weights: dict[str, int]) -> str:
        return soak_config(
            self.args.workers,
            rep.port,
            rep.admin_port,
            redis_lines(self.redis, self.group),
            self.ports,
            names,
            weights,
            mixed_lines(self.setup, self.replicas[0].port),
        )

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def event(self, msg: str) -> None:
        t = self.now()
        self.tl.events.append((t, msg))
        log_step("soak", f"t={t:7.2f}s  {msg}")

    def new_session(self, kind: str) -> int:
        self.sessions.append(SessionRec(kind, self.now()))
        return len(self.sessions) - 1

    def record(
        self,
        kind: str,
        start: float,
        error: str | None,
        sess: int | None,
        backend: str | None = None,
    ) -> None:
        if sess is not None:
            backend = self.sessions[sess].backend
        self.ops.append(Op(kind, start, self.now(), error, sess, backend, None, REPLICA.get()))
        if error and sess is not None and ("404" in error or SESSION_NOT_FOUND in error):
            self.sessions[sess].lost = True  # the client must re-initialize

    def set_backend(self, sess: int, name: str) -> str | None:
        """Note the backend whoami named; an error if the session had another one."""
        rec = self.sessions[sess]
        if rec.backend is None:
            rec.backend = name
            return None
        if rec.backend != name:
            return f"session moved: whoami said {name}, it was on {rec.backend}"
        return None

    def mcplb_alive(self) -> bool:
        return bool(group_pids(self.mcplb.pid))

    def sample_rss(self) -> tuple[float, int, dict[int, int]]:
        sizes: dict[int, int] = {}
        for rep in self.replicas:
            sizes.update(group_rss(rep.proc.pid))
        sample = (self.now(), sum(sizes.values()), sizes)
        self.rss.append(sample)
        return sample

    # ----------------------------------------------------------------- SDK sessions

    async def sdk_worker(self, long: bool) -> None:
        """MCP sessions with the official SDK client over one httpx client (its own pool)."""
        current: list[int | None] = [None]  # the session the hooks report for
        headers: dict[str, str] = {}

        get_started: dict[int, float] = {}
        http_errors: list[str] = []

        async def on_request(request: httpx2.Request) -> None:
            if request.method == "GET":
                get_started[id(request)] = self.now()
            sid = request.headers.get("mcp-session-id")
            if sid:
                headers["mcp-session-id"] = sid
            version = request.headers.get("mcp-protocol-version")
            if version:
                headers["mcp-protocol-version"] = version

        async def on_response(response: httpx2.Response) -> None:
            sid = response.headers.get("mcp-session-id")
            if sid and response.request.method == "POST" and "mcp-session-id" not in headers:
                headers["mcp-session-id"] = sid
                if current[0] is not None:
                    self.sessions[current[0]].sid = sid
            started = get_started.pop(id(response.request), None)
            if response.request.method == "POST" and response.status_code >= 400:
                # The SDK turns some error answers into a stand-in MCP error: keep the status.
                who = origin_of(response.headers.get("server"))
                http_errors.append(f"HTTP {response.status_code} ({who})")
            if response.request.method == "GET" and current[0] is not None:
                # The SDK's standalone GET stream of the session (opened after initialized):
                # counted when its answer's head arrives.
                error = None
                if response.status_code != 200:
                    who = origin_of(response.headers.get("server"))
                    error = f"HTTP {response.status_code} on GET stream ({who})"
                start = self.now() if started is None else started
                self.record("sdk.GET stream", start, error, current[0])

        timeout = httpx2.Timeout(REQUEST_TIMEOUT, read=300.0)
        async with httpx2.AsyncClient(
            timeout=timeout,
            trust_env=False,
            headers=self.auth_headers,
            event_hooks={"request": [on_request], "response": [on_response]},
        ) as client:
            while not self.stop.is_set():
                headers.clear()
                get_started.clear()
                http_errors.clear()
                sess = self.new_session("long" if long else "short")
                current[0] = sess
                ok = await self.sdk_session(client, sess, long, http_errors)
                current[0] = None
                ok = await self.sdk_delete(client, sess, headers) and ok
                if not ok:
                    await asyncio.sleep(ERROR_BACKOFF)

    async def sdk_session(
        self, client: httpx2.AsyncClient, sess: int, long: bool, http_errors: list[str]
    ) -> bool:
        prefix = "long" if long else "short"
        cur: list[Any] = [None, 0.0]  # the op in progress: kind, start
        failed = False

        def begin(kind: str) -> None:
            cur[0], cur[1] = f"{prefix}.{kind}", self.now()

        def done(error: str | None = None) -> None:
            nonlocal failed
            self.record(cur[0], cur[1], error, sess)
            failed = failed or error is not None
            cur[0] = None

        async def call(session: ClientSession, tool: str, args: dict[str, Any]) -> bool:
            begin(f"call {tool}")
            seen: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                seen.append(progress)

            result = await session.call_tool(
                tool, args, progress_callback=on_progress if tool == "countdown" else None
            )
            error: str | None = None
            text = result_text(result)
            if getattr(result, "is_error", False):
                error = f"tool error: {text[:80]}"
            elif tool == "whoami":
                error = self.set_backend(sess, text)
            elif tool == "add" and text != str(args["a"] + args["b"]):
                error = f"add answered {text[:40]!r}"
            elif tool == "countdown":
                if text != "liftoff":
                    error = f"countdown answered {text[:40]!r}"
                elif len(seen) != args["n"]:
                    error = f"countdown: {len(seen)} of {args['n']} progress notifications"
            done(error)
            return error is None

        t_session = self.now()
        limit = self.rng.uniform(*LONG_HOLD) if long else 0.0
        try:
            with anyio.fail_after(limit + SHORT_SESSION_LIMIT):
                async with (
                    streamable_http_client(
                        self.url, http_client=client, terminate_on_close=False
                    ) as (read, write),
                    ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT) as session,
                ):
                    begin("initialize")
                    await session.initialize()
                    done()
                    if not long:
                        for tool, args in SHORT_CALLS:
                            if not await call(session, tool, args):
                                break
                    else:
                        deadline = self.now() + limit
                        step = 0
                        while self.now() < deadline and not self.stop.is_set():
                            tool, args = ("whoami", {}) if step % 2 == 0 else SHORT_CALLS[1]
                            if not await call(session, tool, args):
                                break
                            step += 1
                            await asyncio.sleep(LONG_STEP)
        except Exception as exc:
            reason = describe_exc(exc)
            if reason.startswith("MCPError") and http_errors:
                # The SDK hides the HTTP answer behind the JSON-RPC error: name it.
                reason += f" [{http_errors[-1]}]"
            if cur[0] is not None:
                done(reason)
            else:
                self.record(f"{prefix}.session", t_session, reason, sess)
                failed = True
        return not failed

    async def sdk_delete(
        self, client: httpx2.AsyncClient, sess: int, headers: dict[str, str]
    ) -> bool:
        """DELETE the session as the SDK would on close (done here to see the answer)."""
        if "mcp-session-id" not in headers or self.sessions[sess].lost:
            return True  # never opened, or answered 404 already: the client just re-initializes
        kind = f"{self.sessions[sess].kind}.DELETE"
        t = self.now()
        error: str | None = None
        try:
            resp = await client.delete(self.url, headers=headers, timeout=REQUEST_TIMEOUT)
            if resp.status_code not in (200, 204):
                who = origin_of(resp.headers.get("server"))
                error = f"HTTP {resp.status_code} on DELETE ({who})"
        except Exception as exc:
            error = describe_exc(exc)
        self.record(kind, t, error, sess)
        return error is None

    # ----------------------------------------------------------------- raw SSE sessions

    async def sse_worker(self, http: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            sess = self.new_session("sse")
            ok = await self.sse_session(http, sess)
            if not ok:
                await asyncio.sleep(ERROR_BACKOFF)

    async def rpc(
        self,
        http: aiohttp.ClientSession,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> tuple[int, str | None, str, dict[str, Any] | None, int]:
        """POST one JSON-RPC message: (status, session id, origin, reply to it, progress seen)."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT + 10)
        async with http.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
            text = await resp.text()
            sid = resp.headers.get("mcp-session-id")
            who = origin_of(resp.headers.get("server"))
            if "id" not in body or resp.status >= 300:
                return resp.status, sid, who, None, 0
            if resp.content_type == "application/json":
                messages = [json.loads(text)] if text.strip() else []
            else:
                messages = parse_sse_json(text)
            reply = next((m for m in messages if m.get("id") == body["id"]), None)
            progress = sum(1 for m in messages if m.get("method") == "notifications/progress")
            return resp.status, sid, who, reply, progress

    async def sse_session(self, http: aiohttp.ClientSession, sess: int) -> bool:
        base = {"Accept": MCP_ACCEPT, "Content-Type": "application/json"}
        failed = False

        def fail_reason(status: int, who: str, reply: dict[str, Any] | None, what: str) -> str:
            if status >= 300:
                return f"HTTP {status} on {what} ({who})"
            if reply is None:
                return f"no JSON-RPC reply to {what}"
            if "error" in reply:
                return (
                    f"JSON-RPC error {reply['error'].get('code')} on {what}: "
                    + str(reply["error"].get("message"))[:60]
                )
            return ""

        async def step(kind: str, job: Callable[[], Awaitable[str | None]]) -> bool:
            nonlocal failed
            t = self.now()
            try:
                error = await job()
            except Exception as exc:
                error = describe_exc(exc)
            self.record(f"sse.{kind}", t, error, sess)
            failed = failed or error is not None
            return error is None

        state: dict[str, Any] = {}

        async def initialize() -> str | None:
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "soak-sse", "version": "0"},
                },
            }
            status, sid, who, reply, _ = await self.rpc(http, body, base)
            if status != 200 or reply is None or "result" not in reply or not sid:
                return fail_reason(status, who, reply, "initialize") or "no session id"
            self.sessions[sess].sid = sid
            state["headers"] = {
                **base,
                "Mcp-Session-Id": sid,
                "MCP-Protocol-Version": reply["result"].get("protocolVersion", PROTOCOL_VERSION),
            }
            return None

        async def initialized() -> str | None:
            body = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            status, _, who, _, _ = await self.rpc(http, body, state["headers"])
            return None if status == 202 else f"HTTP {status} on initialized ({who})"

        async def tool(name: str, args: dict[str, Any], req_id: int) -> str | None:
            body: dict[str, Any] = {
                "jsonrpc": "2.0",
                "id": req_id,
                "method": "tools/call",
                "params": {"name": name, "arguments": args},
            }
            if name == "countdown":
                body["params"]["_meta"] = {"progressToken": f"p{req_id}"}
            status, _, who, reply, progress = await self.rpc(http, body, state["headers"])
            reason = fail_reason(status, who, reply, f"tools/call {name}")
            if reason:
                return reason
            assert reply is not None
            result = reply["result"]
            text = "".join(c.get("text", "") for c in result.get("content", []))
            if result.get("isError"):
                return f"tool error: {text[:80]}"
            if name == "whoami":
                return self.set_backend(sess, text)
            if text != "liftoff":
                return f"countdown answered {text[:40]!r}"
            if progress != args["n"]:
                return f"countdown: {progress} of {args['n']} progress notifications"
            return None

        async def hold_stream() -> str | None:
            hold = self.rng.uniform(*SSE_HOLD)
            headers = {k: v for k, v in state["headers"].items() if k != "Content-Type"}
            headers["Accept"] = "text/event-stream"
            timeout = aiohttp.ClientTimeout(total=None, connect=REQUEST_TIMEOUT, sock_read=None)
            countdown: asyncio.Task[bool] | None = None
            async with http.get(self.url, headers=headers, timeout=timeout) as resp:
                if resp.status != 200 or resp.content_type != "text/event-stream":
                    who = origin_of(resp.headers.get("server"))
                    return f"HTTP {resp.status} {resp.content_type} on GET stream ({who})"
                opened = self.now()
                until = opened + hold
                error: str | None = None
                try:
                    while (left := until - self.now()) > 0 and not self.stop.is_set():
                        if countdown is None and self.now() - opened >= 1.0:
                            countdown = asyncio.create_task(
                                step("call countdown", lambda: tool("countdown", SSE_COUNTDOWN, 3))
                            )
                        try:
                            chunk = await asyncio.wait_for(resp.content.readany(), min(0.5, left))
                        except TimeoutError:
                            continue
                        if not chunk:
                            error = "GET stream ended before the hold was over (EOF)"
                            break
                except (aiohttp.ClientError, OSError) as exc:
                    error = "GET stream cut: " + describe_exc(exc)
                finally:
                    if countdown is not None:
                        await countdown
            return error

        async def delete() -> str | None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            async with http.delete(self.url, headers=state["headers"], timeout=timeout) as resp:
                await resp.read()
                if resp.status in (200, 204):
                    return None
                return f"HTTP {resp.status} on DELETE ({origin_of(resp.headers.get('server'))})"

        if not await step("initialize", initialize):
            return False
        if (
            await step("initialized", initialized)
            and await step("call whoami", lambda: tool("whoami", {}, 2))
            and await step("GET stream", hold_stream)
        ):
            pass
        if not self.sessions[sess].lost:
            await step("DELETE", delete)
        return not failed

    # ----------------------------------------------------------------- plain HTTP, admin

    async def http_worker(self, http: aiohttp.ClientSession) -> None:
        url = self.base_url() + PLAIN_PATH
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        while not self.stop.is_set():
            t = self.now()
            error: str | None = None
            try:
                async with http.get(url, timeout=timeout) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        who = origin_of(resp.headers.get("server"))
                        error = f"HTTP {resp.status} ({who}): {text.strip()[:60]}"
                    elif "sessions" not in text:
                        error = f"unexpected body {text[:40]!r}"
            except Exception as exc:
                error = describe_exc(exc)
            self.record(f"http.GET {PLAIN_PATH}", t, error, None)
            await asyncio.sleep(ERROR_BACKOFF if error else HTTP_PAUSE)

    async def admin_status(
        self, http: aiohttp.ClientSession, admin_port: int | None = None
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        port = self.replicas[0].admin_port if admin_port is None else admin_port
        async with http.get(f"http://{HOST}:{port}/status", timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            data: dict[str, Any] = await resp.json()
            return data

    async def admin_worker(self, http: aiohttp.ClientSession) -> None:
        next_rss = 0.0
        while not self.stop.is_set():
            t = self.now()
            error: str | None = None
            try:
                self.last_status = await self.admin_status(http)
            except Exception as exc:
                error = describe_exc(exc)
            self.record("admin.GET /status", t, error, None)
            if self.now() >= next_rss:
                self.sample_rss()
                next_rss = self.now() + RSS_EVERY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    # ----------------------------------------------------------------- --mixed: 2026 traffic

    def backend_names(self) -> list[str]:
        discovered = self.setup.discovered if self.setup is not None else []
        return [*ALL_BACKENDS, *discovered]

    def modern_headers(self, method: str, name: str | None = None) -> dict[str, str]:
        """A 2026-07-28 request's headers (sessionless: the routing headers mirror the body)."""
        out = {
            "accept": MCP_ACCEPT,
            "content-type": "application/json",
            "mcp-protocol-version": MODERN_VERSION,
            "mcp-method": method,
        }
        if name is not None:
            out["mcp-name"] = name
        return out

    @staticmethod
    def modern_body(rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientInfo": {"name": "mcplb-soak", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS_EXTENSION: {}}},
        }
        return {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": meta}}

    async def modern_post(
        self, http: aiohttp.ClientSession, body: dict[str, Any], headers: dict[str, str]
    ) -> str | dict[str, Any]:
        """The JSON-RPC result of one 2026 request, or why there is none."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        what = f"{body['method']} {body['params'].get('name') or ''}".strip()
        async with http.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
            text = await resp.text()
            who = origin_of(resp.headers.get("server"))
            if resp.content_type == "text/event-stream":
                messages = parse_sse_json(text)
            else:
                try:
                    messages = [json.loads(text)] if text.strip() else []
                except ValueError:
                    messages = []
            reply = next((m for m in messages if m.get("id") == body["id"]), None)
            if reply is not None and "error" in reply:
                error = reply["error"]
                return (
                    f"JSON-RPC error {error.get('code')} on {what} (HTTP {resp.status}, {who}):"
                    f" {str(error.get('message'))[:60]}"
                )
            if resp.status != 200 or reply is None or not isinstance(reply.get("result"), dict):
                return f"HTTP {resp.status} on {what} ({who}): {text.strip()[:60]}"
            result: dict[str, Any] = reply["result"]
            return result

    async def modern_worker(self, http: aiohttp.ClientSession) -> None:
        """Sessionless 2026-07-28 requests: tools/call whoami, then a task (created with
        tools/call slow_task, polled with tasks/get until completed: every tasks/get must
        reach the backend holding the task)."""
        rid = 0
        while not self.stop.is_set():
            rid += 2
            t = self.now()
            error: str | None = None
            backend: str | None = None
            try:
                body = self.modern_body(rid, "tools/call", {"name": "whoami", "arguments": {}})
                got = await self.modern_post(
                    http, body, self.modern_headers("tools/call", "whoami")
                )
                if isinstance(got, str):
                    error = got
                else:
                    backend = "".join(c.get("text", "") for c in got.get("content", []))
                    if backend not in self.backend_names():
                        error, backend = f"whoami answered {backend[:40]!r}", None
            except Exception as exc:
                error = describe_exc(exc)
            self.record("modern.tools/call whoami", t, error, None, backend)
            if error is None:
                error = await self.modern_task(http, rid + 1)
            await asyncio.sleep(ERROR_BACKOFF if error else HTTP_PAUSE)

    async def modern_task(self, http: aiohttp.ClientSession, rid: int) -> str | None:
        t = self.now()
        error: str | None = None
        holder: str | None = None
        try:
            args = {"name": "slow_task", "arguments": {"delay": TASK_DELAY}}
            body = self.modern_body(rid, "tools/call", args)
            got = await self.modern_post(http, body, self.modern_headers("tools/call", "slow_task"))
            if isinstance(got, str):
                error = got
            elif got.get("resultType") != "task":
                error = f"slow_task answered no task: {str(got)[:60]}"
            else:
                task_id = str(got["taskId"])
                holder = task_id[: -len("-00000000-0000-0000-0000-000000000000")] or None
                error = f"task not completed after {TASK_POLLS} polls"
                for poll in range(TASK_POLLS):
                    await asyncio.sleep(0.05)
                    body = self.modern_body(10_000 + poll, "tasks/get", {"taskId": task_id})
                    got = await self.modern_post(
                        http, body, self.modern_headers("tasks/get", task_id)
                    )
                    if isinstance(got, str):
                        error = got
                        break
                    if got.get("servedBy") != holder:
                        error = (
                            f"tasks/get served by {got.get('servedBy')}, the task is on {holder}"
                        )
                        break
                    if got.get("status") == "completed":
                        error = None
                        break
        except Exception as exc:
            error = describe_exc(exc)
        self.record("modern.task", t, error, None, holder)
        return error

    async def listen_worker(self, http: aiohttp.ClientSession) -> None:
        """``subscriptions/listen`` streams held LISTEN_HOLD s: every tick the backend
        publishes must arrive, in order (a gap is a lost event: never expected)."""
        uris = [tick_uri(name, k) for name in self.backend_names() for k in range(TICK_MOD)]
        rid = 0
        while not self.stop.is_set():
            rid += 1
            t = self.now()
            found: list[str | None] = [None]
            try:
                error = await self.listen_once(http, rid, uris, found)
            except Exception as exc:
                error = "listen stream: " + describe_exc(exc)
            self.record("modern.listen stream", t, error, None, found[0])
            if error:
                await asyncio.sleep(ERROR_BACKOFF)

    async def listen_once(
        self,
        http: aiohttp.ClientSession,
        rid: int,
        uris: list[str],
        found: list[str | None],
    ) -> str | None:
        params = {"notifications": {"resourceSubscriptions": uris}}
        body = self.modern_body(rid, "subscriptions/listen", params)
        headers = self.modern_headers("subscriptions/listen")
        hold = self.rng.uniform(*LISTEN_HOLD)
        timeout = aiohttp.ClientTimeout(total=None, connect=REQUEST_TIMEOUT, sock_read=None)
        acked = False
        last: tuple[int, float] | None = None  # the last tick K and when it arrived
        async with http.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
            if resp.status != 200 or resp.content_type != "text/event-stream":
                who = origin_of(resp.headers.get("server"))
                return f"HTTP {resp.status} {resp.content_type} on listen ({who})"
            opened = self.now()
            until = opened + hold
            buffer = ""
            while (left := until - self.now()) > 0 and not self.stop.is_set():
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), min(0.5, left))
                except TimeoutError:
                    chunk = None
                except (aiohttp.ClientError, OSError) as exc:
                    return "listen stream cut: " + describe_exc(exc)
                if chunk == b"":
                    return "listen stream ended before the hold was over (EOF)"
                if chunk:
                    buffer += chunk.decode(errors="replace")
                    *blocks, buffer = re.split(r"\r?\n\r?\n", buffer)
                    for message in parse_sse_json("\n\n".join(blocks) + "\n\n"):
                        method = message.get("method")
                        if method == "notifications/subscriptions/acknowledged":
                            acked = True
                            continue
                        if method != "notifications/resources/updated":
                            continue
                        name, _, k_text = str(message["params"]["uri"])[7:].rpartition("/tick/")
                        if found[0] is None:
                            found[0] = name
                        elif name != found[0]:
                            return f"listen events from {name} on a stream of {found[0]}"
                        k, now = int(k_text), self.now()
                        if last is not None and (missed := (k - last[0] - 1) % TICK_MOD):
                            self.mx.lost_events += missed
                            return f"{LOST}: {missed} between ticks {last[0]} and {k}"
                        last = (k, now)
                        self.mx.listen_events += 1
                silent = self.now() - (last[1] if last is not None else opened)
                if silent > LISTEN_SILENCE + 1.0:
                    return f"listen stream silent for {silent:.1f} s (ticks every {TICK:g} s)"
        if not acked:
            return "no notifications/subscriptions/acknowledged on the listen stream"
        return None

    async def legacy_sse_worker(self) -> None:
        """The 2024-11-05 HTTP+SSE transport with the Python SDK client (GET /sse, POST
        /messages/?session_id=...): initialize, whoami, countdown with its progress."""
        while not self.stop.is_set():
            sess = self.new_session("legacy-sse")
            if not await self.legacy_sse_session(sess):
                await asyncio.sleep(ERROR_BACKOFF)

    async def legacy_sse_session(self, sess: int) -> bool:
        cur: list[Any] = [None, 0.0]
        failed = False

        def begin(kind: str) -> None:
            cur[0], cur[1] = f"legacy-sse.{kind}", self.now()

        def done(error: str | None = None) -> None:
            nonlocal failed
            self.record(cur[0], cur[1], error, sess)
            failed = failed or error is not None
            cur[0] = None

        http_errors: list[str] = []

        async def on_response(response: httpx2.Response) -> None:
            # The SDK logs a refused POST and lets its request time out: keep the status.
            if response.request.method == "POST" and response.status_code >= 400:
                who = origin_of(response.headers.get("server"))
                http_errors.append(f"HTTP {response.status_code} ({who})")

        def client_factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                headers=headers,
                timeout=timeout or httpx2.Timeout(REQUEST_TIMEOUT, read=300.0),
                auth=auth,
                trust_env=False,
                event_hooks={"response": [on_response]},
            )

        t_session = self.now()
        try:
            with anyio.fail_after(SHORT_SESSION_LIMIT):
                async with (
                    sse_client(
                        self.base_url() + "/sse",
                        headers=self.auth_headers,
                        timeout=REQUEST_TIMEOUT,
                        sse_read_timeout=SHORT_SESSION_LIMIT,
                        httpx_client_factory=client_factory,
                    ) as (read, write),
                    ClientSession(read, write, read_timeout_seconds=REQUEST_TIMEOUT) as session,
                ):
                    begin("initialize")
                    await session.initialize()
                    done()
                    begin("call whoami")
                    result = await session.call_tool("whoami", {})
                    done(self.set_backend(sess, result_text(result)))
                    if not failed:
                        begin("call countdown")
                        seen: list[float] = []

                        async def on_progress(
                            progress: float, total: float | None, message: str | None
                        ) -> None:
                            seen.append(progress)

                        args = {"n": 3, "delay": 0.1}
                        result = await session.call_tool(
                            "countdown", args, progress_callback=on_progress
                        )
                        text = result_text(result)
                        error = None
                        if text != "liftoff":
                            error = f"countdown answered {text[:40]!r}"
                        elif len(seen) != 3:
                            error = f"countdown: {len(seen)} of 3 progress notifications"
                        done(error)
        except Exception as exc:
            reason = describe_exc(exc)
            if http_errors:
                reason += f" [{http_errors[-1]}]"
            if cur[0] is not None:
                done(reason)
            else:
                self.record("legacy-sse.session", t_session, reason, sess)
                failed = True
        return not failed

    async def ts_worker(self) -> None:
        """TypeScript SDK 1.32 sessions (tests/interop/ts_auth_client.mjs, a Node process
        each, with the token): initialize, tools/list, whoami, add, DELETE."""
        from tests.interop import INTEROP, NODE

        assert self.setup is not None
        while not self.stop.is_set():
            sess = self.new_session("ts-sdk")
            t = self.now()
            argv = [str(NODE), str(INTEROP / "ts_auth_client.mjs"), "--url", self.url]
            argv += ["--token", self.setup.token]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            except OSError as exc:  # Node gone (its node_modules replaced meanwhile)
                self.record("ts-sdk.session", t, f"could not start Node: {exc}", sess)
                await asyncio.sleep(ERROR_BACKOFF)
                continue
            error: str | None = None
            try:
                out, err = await asyncio.wait_for(proc.communicate(), TS_TIMEOUT)
                lines = out.decode(errors="replace").strip().splitlines()
                try:
                    answer = json.loads(lines[-1])
                except (ValueError, IndexError):
                    answer = {
                        "ok": False,
                        "error": f"no JSON (exit {proc.returncode}): "
                        + err.decode(errors="replace")[-120:],
                    }
                if answer.get("name"):
                    error = self.set_backend(sess, str(answer["name"]))
                if not answer.get("ok"):
                    error = "TS SDK: " + str(answer.get("error"))[:300]
                elif answer.get("sum") != "5":
                    error = f"TS SDK: add answered {answer.get('sum')!r}"
            except TimeoutError:
                error = f"TS SDK session: no answer within {TS_TIMEOUT:g} s"
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            self.record("ts-sdk.session", t, error, sess)
            if error:
                await asyncio.sleep(ERROR_BACKOFF)

    async def auth_worker(self, http: aiohttp.ClientSession) -> None:
        """Requests mcplb must refuse (401 with a Bearer challenge): no token, a token whose
        signature does not verify, a token for another audience. ``http`` sends no token."""
        assert self.setup is not None
        cases = [
            ("no token", {}),
            ("bad signature", {"authorization": f"Bearer {self.setup.forged}"}),
            ("wrong audience", {"authorization": f"Bearer {self.setup.wrong_audience}"}),
        ]
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "soak-auth", "version": "0"},
            },
        }
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        i = 0
        while not self.stop.is_set():
            what, extra = cases[i % len(cases)]
            i += 1
            t = self.now()
            error: str | None = None
            headers = {"accept": MCP_ACCEPT, **extra}
            try:
                async with http.post(self.url, json=body, headers=headers, timeout=timeout) as resp:
                    await resp.read()
                    challenge = resp.headers.get("www-authenticate", "")
                    if resp.status != 401 or not challenge.lower().startswith("bearer"):
                        who = origin_of(resp.headers.get("server"))
                        error = f"HTTP {resp.status} ({who}) with {what}: want 401 Bearer"
            except Exception as exc:
                error = describe_exc(exc)
            self.record(f"auth.refused ({what})", t, error, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), AUTH_PAUSE)

    # ----------------------------------------------------------------- --mixed: faults

    async def mixed_faults(self, http: aiohttp.ClientSession) -> None:
        """The faults only the mixed soak has, on their own schedule beside controller()."""
        d = self.args.duration
        await self.sleep_until(F_WORKER * d)
        await self.kill_worker()
        await self.sleep_until(F_DNS * d)
        await self.dns_change(http)
        await self.sleep_until(F_REPLICA * d)
        await self.restart_replica(http)

    async def kill_worker(self) -> None:
        rep = self.replicas[0]
        workers = rep.workers()
        if not workers:
            self.findings.append(Finding(self.now(), "replica 0 has no worker to kill"))
            return
        victim = workers[-1]
        self.mx.worker_kill = self.now()
        self.mx.worker_pid = victim
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self.event(f"SIGKILL worker {victim} of replica 0 (workers {workers})")
        deadline = self.now() + WORKER_BACK
        while self.now() < deadline:
            await asyncio.sleep(CONTROL_STEP)
            now_workers = rep.workers()
            if victim not in now_workers and len(now_workers) >= len(workers):
                self.mx.worker_back = self.now()
                self.event(f"replica 0's supervisor replaced it: workers {now_workers}")
                return
        self.findings.append(
            Finding(self.now(), f"replica 0 did not replace worker {victim} in {WORKER_BACK:g} s")
        )

    async def dns_change(self, http: aiohttp.ClientSession) -> None:
        assert self.setup is not None
        removed = self.setup.discovered[-1]
        self.mx.dns_change = self.now()
        self.mx.dns_removed = removed
        await asyncio.to_thread(self.setup.dns.set_hosts, {DNS_NAME: [DNS_ADDRESSES[0]]})
        self.event(f"DNS: {DNS_NAME} now names {DNS_ADDRESSES[0]} only ({removed} goes)")
        pending = {rep.index for rep in self.replicas}
        deadline = self.now() + RELOAD_CHECK + GRACE
        while pending and self.now() < deadline:
            await asyncio.sleep(0.25)
            for rep in self.replicas:
                if rep.index not in pending:
                    continue
                with contextlib.suppress(Exception):
                    status = await self.admin_status(http, rep.admin_port)
                    if removed not in {b["name"] for b in status.get("backends", [])}:
                        pending.discard(rep.index)
        if pending:
            self.findings.append(
                Finding(self.mx.dns_change, f"replicas {sorted(pending)} still list {removed}")
            )
        else:
            self.mx.dns_applied = self.now()
            self.event(f"{removed} gone from every replica's /status")

    async def restart_replica(self, http: aiohttp.ClientSession) -> None:
        rep = self.replicas[1]
        self.mx.replica_term = self.now()
        with contextlib.suppress(ProcessLookupError):
            os.kill(rep.proc.pid, signal.SIGTERM)
        self.event(f"SIGTERM replica 1 (master {rep.proc.pid}): graceful drain")
        try:
            rc = await asyncio.to_thread(rep.proc.wait, REPLICA_EXIT)
        except subprocess.TimeoutExpired:
            rc = None
            self.findings.append(
                Finding(self.now(), f"replica 1 still running {REPLICA_EXIT:g} s after SIGTERM")
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rep.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(rep.proc.wait, 5)
        self.mx.replica_exit = self.now()
        left = group_pids(rep.proc.pid)
        if left:
            self.findings.append(Finding(self.now(), f"replica 1's processes {left} outlived it"))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rep.proc.pid, signal.SIGKILL)
        if rc not in (0, None):
            self.findings.append(
                Finding(self.now(), f"replica 1 exited with {describe_rc(rc)} on SIGTERM")
            )
        self.event(
            f"replica 1 exited ({describe_rc(rc)}) after"
            f" {self.mx.replica_exit - self.mx.replica_term:.2f} s; starting it again"
        )
        log = self.tmp / f"mcplb-{rep.index}-restarted.log"
        rep.logs.append(log)
        rep.proc = spawn(rep.cmd, log, self.procs, cwd=REPO_ROOT)
        try:
            await asyncio.to_thread(
                wait_proxy, rep.proc, rep.port, self.auth_headers, START_TIMEOUT, log
            )
            self.mx.replica_ready = self.now()
            self.event(f"replica 1 serving again (master {rep.proc.pid})")
        except NotReady as exc:
            self.findings.append(Finding(self.now(), f"replica 1 did not come back: {exc}"))

    # ----------------------------------------------------------------- descriptors

    def fd_counts(self) -> dict[int, tuple[int, int]]:
        """Worker pid -> (replica, open descriptors): /proc/PID/fd."""
        out: dict[int, tuple[int, int]] = {}
        for rep in self.replicas:
            for pid in rep.workers() if self.args.workers > 1 else [rep.proc.pid]:
                with contextlib.suppress(OSError):
                    out[pid] = (rep.index, len(os.listdir(f"/proc/{pid}/fd")))
        return out

    async def settled_fd_counts(self) -> dict[int, tuple[int, int]]:
        """The counts once the load's connections are gone: mcplb closes idle pooled
        upstream connections after timeouts.upstream_keepalive (4 s), which no event
        announces, so wait that long, then until two samples agree (bounded)."""
        start = self.now()
        await asyncio.sleep(UPSTREAM_KEEPALIVE + 1.0)
        previous = self.fd_counts()
        while self.now() - start < FD_SETTLE:
            await asyncio.sleep(0.5)
            current = self.fd_counts()
            if current == previous:
                break
            previous = current
        return previous

    def check_resources(self) -> None:
        """Findings: a worker holding FD_SLACK more descriptors at the end than at the start
        (a worker started during the run: than the most any worker of its replica held at
        the start), mcplb's RSS grown beyond its bounds."""
        start, end = self.mx.fds_start, self.mx.fds_end
        for pid, (replica, n) in sorted(end.items()):
            if pid in start:
                base, what = start[pid][1], "its start"
            else:
                peers = [m for r, m in start.values() if r == replica]
                if not peers:
                    continue
                base, what = max(peers), "replica's workers at the start (it is new)"
            if n > base + FD_SLACK:
                self.findings.append(
                    Finding(
                        None,
                        f"descriptor leak? worker {pid} (replica {replica}) holds {n} fds at the"
                        f" end, {base} at {what}: more than {FD_SLACK} more",
                    )
                )
        if self.rss_start is not None and self.rss_end is not None:
            growth = (self.rss_end[1] - self.rss_start[1]) / 1024
            if growth > RSS_GROWTH_MAX_MIB:
                self.findings.append(
                    Finding(
                        None,
                        f"mcplb RSS grew {growth:.1f} MiB (warm-up to end, all replicas):"
                        f" more than {RSS_GROWTH_MAX_MIB:g}",
                    )
                )
            for pid, kib in self.rss_end[2].items():
                before = self.rss_start[2].get(pid)
                if before is not None and (kib - before) / 1024 > RSS_PID_GROWTH_MAX_MIB:
                    self.findings.append(
                        Finding(
                            None,
                            f"mcplb process {pid} RSS grew {(kib - before) / 1024:.1f} MiB:"
                            f" more than {RSS_PID_GROWTH_MAX_MIB:g}",
                        )
                    )

    # ----------------------------------------------------------------- faults

    async def sleep_until(self, t: float) -> None:
        while (left := t - self.now()) > 0:
            self.watch_mcplb()
            await asyncio.sleep(min(left, CONTROL_STEP))
        self.watch_mcplb()

    def watch_mcplb(self) -> None:
        """Note the master's exit (once); end the run if no mcplb process is left."""
        if self.tl.master_exit is not None and not group_pids(self.mcplb.pid):
            self.findings.append(Finding(self.now(), "no mcplb process left: the run ends"))
            raise McplbGone
        if self.tl.master_exit is None and self.mcplb.poll() is not None:
            self.tl.master_exit = self.now()
            self.tl.master_rc = self.mcplb.returncode
            workers = [p for p in group_pids(self.mcplb.pid) if p != self.mcplb.pid]
            self.event(
                f"mcplb master (pid {self.mcplb.pid}) exited with"
                f" {describe_rc(self.mcplb.returncode)}; {len(workers)} worker(s) still running:"
                f" {workers}"
            )

    async def controller(self, http: aiohttp.ClientSession) -> None:
        d = self.args.duration
        down = min(self.args.down, 0.2 * d)
        await self.sleep_until(max(MIN_WARMUP, F_WARMUP * d))
        self.tl.warm = self.now()
        self.rss_start = self.sample_rss()
        self.workers_seen = set(self.rss_start[2])
        if self.args.workers > 1:  # else the master serves (and reloads) itself
            self.workers_seen.discard(self.mcplb.pid)
        self.event(
            f"warm-up over; mcplb RSS {mib(self.rss_start[1])}"
            f" over pids {sorted(self.rss_start[2])}"
        )

        # (1) SIGKILL a backend, restart it on the same port.
        await self.sleep_until(F_KILL * d)
        victim = self.backend_procs[VICTIM]
        self.tl.kill = self.now()
        victim.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            victim.wait(5)
        self.event(f"SIGKILL {VICTIM} (pid {victim.pid}); restart in {down:g} s")
        await self.sleep_until(self.tl.kill + down)
        self.tl.restart = self.now()
        restarted = spawn(
            backend_cmd(VICTIM, self.ports[VICTIM]),
            self.tmp / f"{VICTIM}-restarted.log",
            self.procs,
            cwd=REPO_ROOT,
        )
        self.backend_procs[VICTIM] = restarted
        try:
            await asyncio.to_thread(
                wait_http,
                restarted,
                self.ports[VICTIM],
                PLAIN_PATH,
                START_TIMEOUT,
                self.tmp / f"{VICTIM}-restarted.log",
            )
            self.tl.restart_ready = self.now()
            self.event(f"{VICTIM} restarted (pid {restarted.pid}) and answering")
        except NotReady as exc:
            self.findings.append(Finding(self.now(), f"{VICTIM} did not come back: {exc}"))
            self.event(f"{VICTIM} did not come back")

        # (2) Reloads: change a weight and add a backend, then undo both.
        await self.sleep_until(F_RELOAD_ADD * d)
        await self.reload(
            http,
            "reload 1",
            f"{REWEIGHTED} weight 1 -> 3, {EXTRA} added",
            (*BACKENDS, EXTRA),
            {REWEIGHTED: 3},
        )
        await self.sleep_until(F_RELOAD_REMOVE * d)
        await self.reload(
            http, "reload 2", f"{REWEIGHTED} weight 3 -> 1, {EXTRA} removed", BACKENDS, {}
        )

        # (3) Restart redis-server (empty) on the same port.
        await self.sleep_until(F_REDIS * d)
        self.tl.redis_kill = self.now()
        await self.redis.kill()
        self.event(f"SIGKILL redis-server (port {self.redis.port})")
        if self.group is not None:
            try:
                new = await self.group.wait_for_new_master(self.redis.port)
                self.mx.sentinel_switch_s = self.now() - self.tl.redis_kill
                self.event(
                    f"the sentinels promoted the replica (port {new}) after"
                    f" {self.mx.sentinel_switch_s:.2f} s"
                )
            except TimeoutError as exc:
                self.findings.append(Finding(self.now(), f"no Sentinel failover: {exc}"))
        await self.sleep_until(self.tl.redis_kill + REDIS_DOWN)
        try:
            await self.redis.restart()
            self.tl.redis_up = self.now()
            role = " (the sentinels make it a replica)" if self.group is not None else ""
            self.event(f"redis-server restarted on port {self.redis.port} (empty){role}")
        except RuntimeError as exc:
            self.findings.append(Finding(self.now(), f"redis-server did not restart: {exc}"))

        await self.sleep_until(d)
        self.tl.end = self.now()
        self.tl.end_reason = f"duration ({d:g} s) reached"

    async def reload(
        self,
        http: aiohttp.ClientSession,
        name: str,
        change: str,
        names: tuple[str, ...],
        weights: dict[str, int],
    ) -> None:
        """Every replica: rewrite its config, SIGHUP its master, check /status and the
        workers' log lines (the replicas at once)."""
        if name == "reload 1":
            self.tl.reload_add = self.now()
        else:
            self.tl.reload_remove = self.now()
        await asyncio.gather(
            *(self.reload_one(http, rep, name, change, names, weights) for rep in self.replicas)
        )

    async def reload_one(
        self,
        http: aiohttp.ClientSession,
        rep: Replica,
        name: str,
        change: str,
        names: tuple[str, ...],
        weights: dict[str, int],
    ) -> None:
        if len(self.replicas) > 1:
            name = f"{name} (replica {rep.index})"
        rec = Reload(name, self.now(), change)
        self.reloads.append(rec)
        self.watch_mcplb()
        if rep.proc.poll() is not None:
            rec.note = "skipped: the mcplb master is gone"
            self.event(f"{name} skipped: the mcplb master is gone")
            return
        write_atomic(rep.conf, self.config_text(rep, names, weights))
        log = rep.log
        log_offset = log.stat().st_size
        with contextlib.suppress(ProcessLookupError):
            os.kill(rep.proc.pid, signal.SIGHUP)
            rec.sighup_sent = True
        self.event(f"{name}: config rewritten ({change}); SIGHUP to the master {rep.proc.pid}")
        want = {n: weights.get(n, 1) for n in names}
        workers = set(rep.workers()) if self.args.workers > 1 else {rep.proc.pid}
        deadline = self.now() + RELOAD_CHECK
        seen: dict[str, int] = {}
        while self.now() < deadline:
            await asyncio.sleep(0.25)
            self.watch_mcplb()
            self.read_reload_log(rec, log_offset, log)
            if rec.rejected:
                break
            try:
                status = await self.admin_status(http, rep.admin_port)
            except Exception:
                continue
            seen = {
                b["name"]: b["weight"]
                for b in status.get("backends", [])
                if b["name"] in ALL_BACKENDS  # not the ones DNS discovery found
            }
            if seen == want and not rec.applied:
                rec.applied = True
                rec.applied_after_s = self.now() - rec.t
            if rec.applied and workers <= set(rec.reloaded_pids):
                break
        await self.sleep_until(rec.t + 1.0)
        self.read_reload_log(rec, log_offset, log)
        rec.master_alive_after = rep.proc.poll() is None
        rec.master_rc = rep.proc.returncode
        rec.workers_after = len(rep.workers())
        if not rec.master_alive_after:
            self.findings.append(
                Finding(
                    rec.t,
                    f"{name}: the mcplb master exited on SIGHUP"
                    f" ({describe_rc(rec.master_rc)}); {rec.workers_after} orphaned worker(s)"
                    " kept serving the old config",
                )
            )
        missing = sorted(workers - set(rec.reloaded_pids))
        if rec.rejected:
            self.findings.append(Finding(rec.t, f"{name} rejected: {rec.rejected[0]}"))
        elif missing and rec.master_alive_after:
            self.findings.append(
                Finding(rec.t, f"{name}: workers {missing} logged no 'config reloaded' line")
            )
        if rec.applied:
            self.event(
                f"{name} applied after {rec.applied_after_s:.2f} s (admin /status); workers"
                f" that logged it: {sorted(rec.reloaded_pids)}"
            )
        else:
            rec.note = f"/status still shows {seen or 'nothing'} after {RELOAD_CHECK:g} s"
            self.findings.append(Finding(rec.t, f"{name} not applied: {rec.note}, want {want}"))
            self.event(f"{name} NOT applied: {rec.note}")

    def read_reload_log(self, rec: Reload, offset: int, log: Path) -> None:
        """The "config reloaded" / "reload rejected" lines mcplb logged since ``offset``."""
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            m = LOG_LINE.match(line)
            if m is None:
                continue
            if m["msg"].startswith("config reloaded from"):
                rec.reloaded_pids[int(m["pid"])] = m["msg"].split(": ", 1)[-1][:300]
            elif m["msg"].startswith("reload rejected") and m["msg"] not in rec.rejected:
                rec.rejected.append(m["msg"][:300])

    # ----------------------------------------------------------------- all of it

    def load_mix(self) -> dict[str, int]:
        """Load tasks of each kind for --clients N."""
        n = self.args.clients
        if self.setup is None:
            n_long = max(1, n // 8)
            n_sse = max(1, 3 * n // 16)
            n_http = max(1, n // 4)
            n_short = max(1, n - 1 - n_long - n_sse - n_http)
            return {"short": n_short, "long": n_long, "sse": n_sse, "http": n_http, "admin": 1}
        each = max(1, n // 8)
        return {
            "short": each,
            "long": each,
            "sse": each,
            "http": each,
            "modern": each,
            "listen": each,
            "legacy-sse": max(1, n // 16),
            "ts-sdk": 1,
            "auth": 1,
            "admin": 1,
        }

    async def run(self) -> None:
        self.mix = self.load_mix()
        log_step("soak", "load: " + ", ".join(f"{v} {k}" for k, v in self.mix.items()))
        self.mx.fds_start = self.fd_counts()
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(
                connector=connector, trust_env=False, headers=self.auth_headers
            ) as http,
            aiohttp.ClientSession(trust_env=False) as control,
        ):
            self.origin = time.perf_counter()
            self.tl.origin_wall = time.time()
            workers: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                "short": lambda: self.sdk_worker(False),
                "long": lambda: self.sdk_worker(True),
                "sse": lambda: self.sse_worker(http),
                "http": lambda: self.http_worker(http),
                "modern": lambda: self.modern_worker(http),
                "listen": lambda: self.listen_worker(http),
                "legacy-sse": self.legacy_sse_worker,
                "ts-sdk": self.ts_worker,
                "auth": lambda: self.auth_worker(control),
                "admin": lambda: self.admin_worker(control),
            }
            tasks: list[asyncio.Task[None]] = []
            spread = 0  # the load tasks take the replicas in turn
            for kind, count in self.mix.items():
                for _ in range(count):
                    REPLICA.set(spread % len(self.replicas) if kind != "admin" else 0)
                    spread += kind != "admin"
                    tasks.append(asyncio.create_task(workers[kind]()))  # copies REPLICA
            REPLICA.set(0)
            faults = [asyncio.create_task(self.controller(control))]
            if self.setup is not None:
                faults.append(asyncio.create_task(self.mixed_faults(control)))
            try:
                try:
                    try:
                        await asyncio.gather(*faults)
                    finally:
                        for task in faults:
                            task.cancel()
                        await asyncio.gather(*faults, return_exceptions=True)
                    self.tl.end = self.now()
                    self.watch_mcplb()
                except McplbGone:
                    self.tl.end = self.now()
                    self.tl.end_reason = "no mcplb process left"
                    self.event("no mcplb process left: stopping the load")
                self.rss_end = self.sample_rss()
                self.event(f"load stopping; mcplb RSS {mib(self.rss_end[1])}")
            finally:
                self.stop.set()
                done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        exc = task.exception()
                        assert exc is not None
                        self.findings.append(
                            Finding(None, f"a load task crashed: {describe_exc(exc)}")
                        )
                if pending:
                    self.findings.append(
                        Finding(None, f"{len(pending)} load task(s) did not stop in time")
                    )
        if self.tl.end_reason != "no mcplb process left":
            self.mx.fds_end = await self.settled_fd_counts()
            self.check_resources()

    async def leftovers(self, http: aiohttp.ClientSession) -> dict[str, int | None]:
        """Live MCP sessions on each backend after the load (asked directly)."""
        found: dict[str, int | None] = {}
        for name in ALL_BACKENDS:
            try:
                url = f"http://{HOST}:{self.ports[name]}{PLAIN_PATH}"
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    found[name] = (await resp.json()).get("sessions")
            except Exception:
                found[name] = None
        return found


def describe_rc(rc: int | None) -> str:
    if rc is None:
        return "no exit"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-rc).name}"
    return f"status {rc}"


def backend_cmd(name: str, port: int, host: str = HOST) -> list[str]:
    return [
        mcplb_python(),
        *BACKEND_MODULE,
        "--name",
        name,
        "--port",
        str(port),
        "--host",
        host,
        "--parent-pid",
        str(os.getpid()),
    ]


# --------------------------------------------------------------------------- analysis


def classify(op: Op, soak: Soak) -> str | None:
    """Why a failure was to be expected, or None (unexpected)."""
    tl = soak.tl
    sess = soak.sessions[op.session] if op.session is not None else None
    backend = sess.backend if sess is not None else op.backend
    if op.error is not None and op.error.startswith(LOST):
        return None  # a live stream lost an event: no fault excuses that
    if tl.kill is not None and op.end >= tl.kill:
        ready = tl.restart_ready if tl.restart_ready is not None else float("inf")
        if backend == VICTIM and sess is not None and sess.start < ready:
            return f"session lived on {VICTIM}, which was killed"
        if backend is None and op.start <= tl.kill + 0.5 and op.end >= tl.kill:
            return "in flight at the backend kill (backend unknown)"
        if backend == VICTIM and sess is None and op.start <= tl.kill + IN_FLIGHT:
            return f"sessionless request, task or listen stream on {VICTIM} at its SIGKILL"
    if (
        tl.reload_remove is not None
        and backend == EXTRA
        and op.end >= tl.reload_remove + GRACE - DRAIN_SLACK
    ):
        return f"session lived on {EXTRA}: removed by reload 2, its {GRACE:g} s drain over"
    if soak.setup is not None:
        why = classify_mixed(op, soak, sess, backend)
        if why is not None:
            return why
    if soak.args.redis_outage_expected and redis_outage_404(op, soak):
        return "unknown to the worker asked while Redis was down (--redis-outage-expected)"
    return None


def classify_mixed(op: Op, soak: Soak, sess: SessionRec | None, backend: str | None) -> str | None:
    """The --mixed faults: a worker SIGKILL, the DNS change, a replica's drain and restart."""
    mx = soak.mx
    if mx.worker_kill is not None and op.replica == 0 and op.end >= mx.worker_kill:
        if op.start <= mx.worker_kill + IN_FLIGHT:
            return "in flight at the SIGKILL of a replica-0 worker"
        if sess is not None and sess.kind == "legacy-sse" and sess.start <= mx.worker_kill:
            return "legacy SSE session whose GET stream was on replica 0 at its worker's SIGKILL"
    if mx.dns_change is not None and backend == mx.dns_removed and op.end >= mx.dns_change:
        return f"lived on {mx.dns_removed}, which the DNS change removed"
    if mx.replica_term is not None and op.replica == 1 and op.end >= mx.replica_term:
        back = mx.replica_ready if mx.replica_ready is not None else float("inf")
        if mx.replica_term <= op.start <= back + IN_FLIGHT:
            return "sent to replica 1 while it drained, was down or restarted (SIGTERM)"
        if op.start < mx.replica_term and op.end >= mx.replica_term + GRACE - DRAIN_SLACK:
            return f"held on replica 1 past its {GRACE:g} s drain (SIGTERM): cut at the deadline"
        if (
            mx.replica_term - IN_FLIGHT <= op.start < mx.replica_term <= op.end
            and op.end <= mx.replica_term + KEEPALIVE_RACE
            and op.error is not None
            and any(word in op.error for word in CONNECTION_CLOSED)
        ):
            # HTTP/1.1's keep-alive race: the drain closes the connections it sees idle,
            # and a request whose bytes it has not read yet goes with them (clients retry
            # only idempotent ones). A request the drain had read is answered.
            return "sent on a kept-alive connection just as replica 1's drain closed it"
        if (
            op.end <= back + IN_FLIGHT
            and op.error is not None
            and any(word in op.error for word in CONNECT_REFUSED)
        ):
            # A refused connect loses no request: a later request of an op that began
            # before the SIGTERM (a task's polls, a session's next call) found it closed.
            return "connect refused: replica 1's listener closed at its SIGTERM"
        if op.kind.endswith(".session") and op.start < mx.replica_term:
            # One op for a whole session (the TypeScript client's): a request of it sent
            # after the SIGTERM found the listener closed; the drain keeps in-flight ones.
            return "a session in progress at replica 1's SIGTERM: its next request refused"
        if sess is not None and sess.kind == "legacy-sse" and sess.start < mx.replica_term:
            return "legacy SSE session whose GET stream was on replica 1 when it drained"
    return None


def is_404(op: Op) -> bool:
    """The session (or, in 2026, the task) is unknown where the request landed: a 404, the
    backend's "Unknown task", mcplb's own task not-found (with auth on, an unknown task id
    is answered by mcplb: proxy/relay/affinity.py), the TypeScript SDK's DELETE answered 404
    ("Failed to terminate session: Not Found")."""
    return op.error is not None and (
        "404" in op.error
        or SESSION_NOT_FOUND in op.error
        or "Unknown task" in op.error
        or "Task not found" in op.error
        or "terminate session: Not Found" in op.error
    )


def redis_outage_404(op: Op, soak: Soak) -> bool:
    """A 404 for a session from the Redis kill until every worker's store used Redis again
    (its first "Redis answers again" line after the kill; without one, 5 s after the restart)."""
    tl = soak.tl
    if not is_404(op) or tl.redis_kill is None or op.end < tl.redis_kill:
        return False
    return op.start <= redis_reconnected(soak)


def redis_reconnected(soak: Soak) -> float:
    """When the last worker's store went back to Redis after the Redis restart."""
    tl = soak.tl
    if tl.redis_kill is None:
        return float("inf")
    fallback = (tl.redis_up if tl.redis_up is not None else float("inf")) + REDIS_RECONNECT
    firsts: dict[int, float] = {}
    for w in soak.store_windows:
        if w.end >= tl.redis_kill and w.pid not in firsts:
            firsts[w.pid] = w.end
    return max(firsts.values()) if firsts else fallback


def store_flap(op: Op, soak: Soak) -> StoreWindow | None:
    """The local-only period of a worker's store (from mcplb's log) a 404 falls into."""
    if not is_404(op):
        return None
    for w in soak.store_windows:
        if w.start - 0.2 <= op.end and op.start <= w.end + 0.2:
            return w
    return None


def context(op: Op, soak: Soak) -> str:
    """Where an unexpected failure happened, to group it (empty: nothing special)."""
    tl = soak.tl
    if redis_outage_404(op, soak):
        return "Redis down or the store not yet back on it: the binding lives in one worker only"
    if is_404(op) and len(soak.readmitted) > 1:
        lo, hi = min(soak.readmitted.values()), max(soak.readmitted.values())
        if lo - 0.2 <= op.end and op.start <= hi + 0.2:
            return (
                f"{VICTIM} back in one worker, still down in another (health is per worker):"
                f" readmitted {lo:.2f}-{hi:.2f} s"
            )
    flap = store_flap(op, soak)
    if flap is not None:
        return (
            "Redis was up: a worker's store went local-only again after a Redis error"
            " (see the store periods below)"
        )
    for rl in soak.reloads:
        if rl.t <= op.end and op.start <= rl.t + 2.0:
            return f"around {rl.name}"
    if tl.kill is not None and tl.kill <= op.end and op.start <= (tl.restart_ready or tl.kill) + 2:
        return f"while {VICTIM} was down"
    return ""


def parse_readmissions(log: Path, origin_wall: float, after: float | None) -> dict[int, float]:
    """Worker pid -> when its log first says the victim is healthy again after ``after``."""
    found: dict[int, float] = {}
    if after is None:
        return found
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m is None or not m["msg"].startswith(f"backend {VICTIM}: "):
                continue
            if "-> healthy" not in m["msg"]:
                continue
            t = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp() - origin_wall
            if t >= after:
                found.setdefault(int(m["pid"]), t)
    return found


def parse_store_windows(log: Path, origin_wall: float) -> list[StoreWindow]:
    """Periods in which a worker's Redis store answered from its local table only.

    Each "Redis answers again" line ends one; it began at the worker's first logged Redis
    error since its previous recovery or, when that error's line was rate-limited away,
    ``BACKOFF_MIN`` before the recovery (the shortest backoff)."""
    windows: list[StoreWindow] = []
    began: dict[int, tuple[float, str]] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return windows
    for line in lines:
        m = LOG_LINE.match(line)
        if m is None or not m["msg"].startswith(STORE_LOG_PREFIX):
            continue
        wall = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        t, pid, msg = wall - origin_wall, int(m["pid"]), m["msg"][len(STORE_LOG_PREFIX) :]
        if msg.startswith(STORE_BACK):
            start, why = began.pop(pid, (t - BACKOFF_MIN, "error line rate-limited away"))
            windows.append(StoreWindow(pid, start, t, why))
        elif " error: " in msg and pid not in began:
            began[pid] = (t, msg.split("; answering")[0][:120])
    windows += [StoreWindow(pid, t, float("inf"), why) for pid, (t, why) in began.items()]
    return sorted(windows, key=lambda w: w.start)


def example(op: Op, soak: Soak) -> dict[str, Any]:
    """One failed operation with its session, for the JSON report."""
    item: dict[str, Any] = {
        "kind": op.kind,
        "start_s": round(op.start, 3),
        "end_s": round(op.end, 3),
        "error": op.error,
        "backend": op.backend,
        "replica": op.replica,
    }
    if op.session is not None:
        rec = soak.sessions[op.session]
        item["session"] = {"start_s": round(rec.start, 3), "backend": rec.backend, "id": rec.sid}
    return item


def phases(tl: Timeline) -> list[tuple[str, float, float]]:
    marks = [
        ("warm-up", 0.0),
        ("steady", tl.warm),
        (f"{VICTIM} down", tl.kill),
        (f"{VICTIM} back", tl.restart_ready or tl.restart),
        (f"reload 1 (+{EXTRA})", tl.reload_add),
        (f"reload 2 (-{EXTRA})", tl.reload_remove),
        ("redis down", tl.redis_kill),
        ("redis back", tl.redis_up),
    ]
    known = [(name, t) for name, t in marks if t is not None]
    end = tl.end if tl.end is not None else float("inf")
    out = []
    for i, (name, t) in enumerate(known):
        hi = known[i + 1][1] if i + 1 < len(known) else end
        out.append((name, t, hi))
    return out


def analyse(soak: Soak, leftovers: dict[str, int | None], mcplb_log: Path) -> dict[str, Any]:
    ops = soak.ops
    logs = [log for rep in soak.replicas for log in rep.logs] or [mcplb_log]
    soak.store_windows = sorted(
        (w for log in logs for w in parse_store_windows(log, soak.tl.origin_wall)),
        key=lambda w: w.start,
    )
    soak.readmitted = {}
    for log in logs:
        soak.readmitted.update(parse_readmissions(log, soak.tl.origin_wall, soak.tl.restart))
    for op in ops:
        if op.error is not None:
            op.expected = classify(op, soak)
    failed = [op for op in ops if op.error is not None]
    expected = [op for op in failed if op.expected is not None]
    unexpected = [op for op in failed if op.expected is None]

    by_kind: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        groups[op.kind].append(op)
    for kind in sorted(groups):
        items = groups[kind]
        ok_times = [o.end - o.start for o in items if o.error is None]
        by_kind[kind] = {
            "sent": len(items),
            "ok": len(ok_times),
            "expected_failures": sum(1 for o in items if o.error and o.expected),
            "unexpected_failures": sum(1 for o in items if o.error and not o.expected),
            "p50_s": pct(ok_times, 50),
            "p99_s": pct(ok_times, 99),
            "max_s": max(ok_times, default=None),
        }

    def reasons(items: list[Op], with_expected: bool) -> list[dict[str, Any]]:
        counter: Counter[tuple[str, str]] = Counter()
        examples: dict[tuple[str, str], Op] = {}
        for op in items:
            assert op.error is not None
            why = op.expected if with_expected else context(op, soak)
            key = (why or "", f"{op.kind}: {op.error}")
            counter[key] += 1
            examples.setdefault(key, op)
        out = []
        for (why, reason), n in counter.most_common():
            ex = examples[(why, reason)]
            item: dict[str, Any] = {"count": n, "reason": reason, "first_at_s": round(ex.start, 3)}
            item["backend"] = ex.backend
            item["why_expected" if with_expected else "context"] = why
            out.append(item)
        return out

    phase_rows = []
    for name, lo, hi in phases(soak.tl):
        items = [op for op in ops if lo <= op.start < hi]
        new = Counter(
            s.backend or "?"
            for s in soak.sessions
            if lo <= s.start < hi and s.kind != "admin" and s.backend is not None
        )
        phase_rows.append(
            {
                "phase": name,
                "from_s": round(lo, 3),
                "to_s": round(hi, 3),
                "sent": len(items),
                "ok": sum(1 for o in items if o.error is None),
                "expected_failures": sum(1 for o in items if o.error and o.expected),
                "unexpected_failures": sum(1 for o in items if o.error and not o.expected),
                "new_sessions_by_backend": dict(sorted(new.items())),
            }
        )

    log_levels: Counter[str] = Counter()
    log_messages: Counter[str] = Counter()
    tracebacks = 0
    for log in logs:
        lines: list[str] = []
        with contextlib.suppress(OSError):
            lines = log.read_text(errors="replace").splitlines()
        for line in lines:
            m = LOG_LINE.match(line)
            if m is None:
                tracebacks += line.startswith("Traceback")
                continue
            log_levels[m["level"]] += 1
            if m["level"] in ("WARNING", "ERROR", "CRITICAL"):
                msg = re.sub(r"\d+", "N", m["msg"])[:140]
                log_messages[f"{m['level']} {m['logger']}: {msg}"] += 1

    def rss(sample: tuple[float, int, dict[int, int]] | None) -> dict[str, Any] | None:
        if sample is None:
            return None
        t, total, sizes = sample
        return {"t_s": round(t, 3), "kib": total, "pids": {str(p): k for p, k in sizes.items()}}

    peak = max(soak.rss, key=lambda s: s[1], default=None)
    return {
        "requests": {
            "sent": len(ops),
            "succeeded": len(ops) - len(failed),
            "failed": len(failed),
            "failed_expected": len(expected),
            "failed_unexpected": len(unexpected),
        },
        "sessions": {
            "started": Counter(s.kind for s in soak.sessions),
            "by_backend": Counter(s.backend or "unknown" for s in soak.sessions),
        },
        "by_kind": by_kind,
        "expected_failures": reasons(expected, True),
        "unexpected_failures": reasons(unexpected, False),
        "findings": [asdict(f) for f in soak.findings],
        "unexpected_examples": [example(op, soak) for op in unexpected[:EXAMPLES]],
        "expected_examples": [
            {**example(op, soak), "why": op.expected} for op in expected[:EXAMPLES]
        ],
        "phases": phase_rows,
        "reloads": [asdict(r) for r in soak.reloads],
        "victim_readmitted_s": {str(p): round(t, 3) for p, t in soak.readmitted.items()},
        "redis_store_local_only": [
            {
                "pid": w.pid,
                "from_s": round(w.start, 3),
                "to_s": None if w.end == float("inf") else round(w.end, 3),
                "why": w.why,
                "after_redis_back": bool(
                    soak.tl.redis_up is not None and w.start > redis_reconnected(soak)
                ),
            }
            for w in soak.store_windows
        ],
        "rss": {
            "start": rss(soak.rss_start),
            "end": rss(soak.rss_end),
            "peak": rss(peak),
            "samples": [(round(t, 1), kib) for t, kib, _ in soak.rss],
        },
        "backend_sessions_left": leftovers,
        "admin_status_last": soak.last_status,
        "mcplb_log": {
            "lines_by_level": dict(log_levels),
            "tracebacks": tracebacks,
            "warnings_and_errors": dict(log_messages.most_common(15)),
        },
        "client_library_log": dict(SDK_LOG.counts.most_common(10)),
        "faults": fault_costs(soak, expected),
        "mcplb_switch_s": mcplb_switch(soak),
        "mixed": {
            **{k: v for k, v in asdict(soak.mx).items() if not k.startswith("fds_")},
            "fds": [
                {
                    "pid": pid,
                    "replica": replica,
                    "start": soak.mx.fds_start.get(pid, (replica, None))[1],
                    "end": soak.mx.fds_end.get(pid, (replica, None))[1],
                }
                for pid, replica in sorted(
                    {
                        p: r for p, (r, _) in [*soak.mx.fds_start.items(), *soak.mx.fds_end.items()]
                    }.items()
                )
            ],
            "bounds": {
                "fd_slack": FD_SLACK,
                "rss_growth_max_mib": RSS_GROWTH_MAX_MIB,
                "rss_pid_growth_max_mib": RSS_PID_GROWTH_MAX_MIB,
            },
        },
    }


def mcplb_switch(soak: Soak) -> float | None:
    """From the Redis master's kill until the last worker's store used Redis again (its log)."""
    if soak.tl.redis_kill is None:
        return None
    back = redis_reconnected(soak)
    return None if back == float("inf") else round(back - soak.tl.redis_kill, 3)


def fault_costs(soak: Soak, expected: list[Op]) -> list[dict[str, Any]]:
    """Each fault: when, and the failures it explains (by the classification's reason)."""
    tl, mx = soak.tl, soak.mx
    rows = [
        (f"SIGKILL {VICTIM}, restarted", tl.kill, tl.restart_ready, (VICTIM, "backend kill")),
        ("reload 1 (+mcp-d) / reload 2 (-mcp-d)", tl.reload_add, tl.reload_remove, (EXTRA,)),
        ("Redis master SIGKILL (Sentinel failover)", tl.redis_kill, tl.redis_up, ("Redis",)),
        ("SIGKILL a worker of replica 0", mx.worker_kill, mx.worker_back, ("worker",)),
        ("DNS change (one address goes)", mx.dns_change, mx.dns_applied, ("DNS",)),
        ("SIGTERM replica 1, restarted", mx.replica_term, mx.replica_ready, ("replica 1",)),
    ]
    out = []
    for name, start, end, words in rows:
        if start is None:
            continue
        cost = sum(1 for op in expected if op.expected and any(w in op.expected for w in words))
        out.append({"fault": name, "at_s": start, "over_s": end, "expected_failures": cost})
    return out


def print_report(soak: Soak, r: dict[str, Any]) -> None:
    tl = soak.tl
    req = r["requests"]
    print()
    print("timeline (s since the load started):")
    for t, msg in tl.events:
        print(f"  {t:7.2f}  {msg}")
    print()
    print(
        f"requests: sent {req['sent']:,}, succeeded {req['succeeded']:,}, failed"
        f" {req['failed']:,} (expected {req['failed_expected']:,},"
        f" UNEXPECTED {req['failed_unexpected']:,})"
    )
    sessions = r["sessions"]
    print(
        "sessions started: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(sessions["started"].items()))
        + "; by backend: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(sessions["by_backend"].items()))
    )
    print()
    rows = [
        [
            kind,
            f"{v['sent']:,}",
            f"{v['ok']:,}",
            f"{v['expected_failures']:,}",
            f"{v['unexpected_failures']:,}",
            fmt_ms(v["p50_s"]),
            fmt_ms(v["p99_s"]),
            fmt_ms(v["max_s"]),
        ]
        for kind, v in r["by_kind"].items()
    ]
    head = ["operation", "sent", "ok", "expected", "UNEXPECTED", "p50 ms", "p99 ms", "max ms"]
    print(table(head, rows))
    print()
    print("expected failures, by reason:" if r["expected_failures"] else "expected failures: none")
    for f in r["expected_failures"]:
        print(f"  {f['count']:>5}  {f['reason']}  [{f['why_expected']}]")
    print(
        "UNEXPECTED failures, by reason:"
        if r["unexpected_failures"]
        else "unexpected failures: none"
    )
    for f in r["unexpected_failures"]:
        where = f" [{f['context']}]" if f["context"] else ""
        print(
            f"  {f['count']:>5}  {f['reason']}{where}  (first at t={f['first_at_s']:.2f} s,"
            f" backend {f['backend'] or 'unknown'})"
        )
    if r["findings"]:
        print("UNEXPECTED fault-check findings:")
        for f in r["findings"]:
            when = "" if f["t"] is None else f"t={f['t']:.2f} s: "
            print(f"  - {when}{f['what']}")
    print()
    print("phases (operations by start time; new sessions by the backend whoami named):")
    rows = [
        [
            p["phase"],
            f"{p['from_s']:.1f}-{p['to_s']:.1f}",
            f"{p['sent']:,}",
            f"{p['ok']:,}",
            f"{p['expected_failures']:,}",
            f"{p['unexpected_failures']:,}",
            " ".join(f"{k[-1]}:{v}" for k, v in p["new_sessions_by_backend"].items()),
        ]
        for p in r["phases"]
    ]
    print(table(["phase", "t (s)", "sent", "ok", "expected", "UNEXPECTED", "new sessions"], rows))
    print()
    if r["victim_readmitted_s"]:
        print(
            f"{VICTIM} healthy again (mcplb's log, per worker): "
            + ", ".join(f"worker {p} at t={t:.2f} s" for p, t in r["victim_readmitted_s"].items())
        )
    for rl in r["reloads"]:
        state = "applied" if rl["applied"] else "NOT applied"
        after = f" after {rl['applied_after_s']:.2f} s" if rl["applied_after_s"] else ""
        master = (
            "master alive"
            if rl["master_alive_after"]
            else f"master gone ({describe_rc(rl['master_rc'])})"
            if rl["master_alive_after"] is False
            else "master not checked"
        )
        print(
            f"{rl['name']} at t={rl['t']:.2f} s ({rl['change']}): SIGHUP"
            f" {'sent' if rl['sighup_sent'] else 'not sent'}, {state}{after}, {master},"
            f" workers {rl['workers_after']}" + (f"; {rl['note']}" if rl["note"] else "")
        )
        for pid, changes in rl["reloaded_pids"].items():
            print(f"    worker {pid} logged: {changes}")
    if r["redis_store_local_only"]:
        print()
        print(
            "Redis session store: periods a worker answered from its local table only"
            " (from mcplb's log):"
        )
        for w in r["redis_store_local_only"]:
            to = "end" if w["to_s"] is None else f"{w['to_s']:.2f}"
            late = "  <- after every store was back on Redis" if w["after_redis_back"] else ""
            print(f"  worker {w['pid']}: {w['from_s']:7.2f} - {to:>7} s  ({w['why']}){late}")
    rss = r["rss"]

    def rss_line(label: str, s: dict[str, Any] | None) -> str:
        if s is None:
            return f"  {label}: n/a"
        pids = ", ".join(f"{p}: {mib(k)}" for p, k in s["pids"].items())
        return f"  {label} (t={s['t_s']:.1f} s): {mib(s['kib'])}  ({pids})"

    print()
    print("mcplb RSS (VmRSS summed over its process group: master + workers):")
    print(rss_line("after warm-up", rss["start"]))
    print(rss_line("at the end   ", rss["end"]))
    print(rss_line("peak sample  ", rss["peak"]))
    if rss["start"] and rss["end"]:
        print(f"  change: {(rss['end']['kib'] - rss['start']['kib']) / 1024:+.1f} MiB")
    print()
    print(
        "MCP sessions left on the backends after the load (a session mcplb answered 404 for"
        " is not DELETEd by its client; the killed mcp-b took its own with it): "
        + ", ".join(
            f"{k} {'n/a' if v is None else v}" for k, v in r["backend_sessions_left"].items()
        )
    )
    lg = r["mcplb_log"]
    print(
        "mcplb log lines by level: "
        + ", ".join(f"{k} {v}" for k, v in sorted(lg["lines_by_level"].items()))
        + f"; tracebacks {lg['tracebacks']}"
    )
    for msg, n in lg["warnings_and_errors"].items():
        print(f"  {n:>5}  {msg}")
    if r["client_library_log"]:
        print("client libraries' warnings (mcp SDK / httpx2), counted, not printed:")
        for msg, n in r["client_library_log"].items():
            print(f"  {n:>5}  {msg}")
    print_summary(r)


def print_summary(r: dict[str, Any]) -> None:
    """The faults and their cost, the switch time, RSS and descriptors."""
    mixed = r["mixed"]
    print()
    print("faults (t in s since the load started; cost: the failures each one explains):")
    rows = [
        [
            f["fault"],
            f"{f['at_s']:.1f}",
            "-" if f["over_s"] is None else f"{f['over_s']:.1f}",
            f"{f['expected_failures']:,}",
        ]
        for f in r["faults"]
    ]
    print(table(["fault", "at", "recovered at", "expected failures"], rows))
    switch = mixed["sentinel_switch_s"]
    print(
        "Redis switch: sentinels promoted the replica after "
        + ("n/a" if switch is None else f"{switch:.2f} s")
        + "; every mcplb worker's store back on Redis after "
        + ("n/a" if r["mcplb_switch_s"] is None else f"{r['mcplb_switch_s']:.2f} s")
    )
    if mixed["listen_events"] or mixed["lost_events"]:
        print(
            f"listen streams: {mixed['listen_events']:,} events received,"
            f" {mixed['lost_events']} lost on live streams"
        )
    rss = r["rss"]
    if rss["start"] and rss["end"]:
        print(
            f"mcplb RSS (all replicas): {mib(rss['start']['kib'])} after warm-up,"
            f" {mib(rss['end']['kib'])} at the end (bound: +{RSS_GROWTH_MAX_MIB:g} MiB in all,"
            f" +{RSS_PID_GROWTH_MAX_MIB:g} MiB per process)"
        )
    rows = [
        [
            str(f["pid"]),
            str(f["replica"]),
            "new" if f["start"] is None else str(f["start"]),
            "gone" if f["end"] is None else str(f["end"]),
        ]
        for f in mixed["fds"]
    ]
    print(
        f"open descriptors of each worker, load stopped (bound: +{FD_SLACK}; a new worker"
        " against its replica's at the start; gone: killed or restarted):"
    )
    print(table(["worker pid", "replica", "fds start", "fds end"], rows))


# --------------------------------------------------------------------------- main


def start_mixed(
    tmp: Path,
    procs: list[subprocess.Popen[bytes]],
    backend_procs: dict[str, subprocess.Popen[bytes]],
    first_port: int,
    jwks_port: int,
    discovery_port: int,
) -> MixedSetup:
    """dnsmasq, the JWKS server and the two discovered backends of the mixed soak."""
    from tests.interop import MISSING, NODE

    if not NODE.exists():
        raise NotReady(f"the TypeScript SDK client needs Node: {MISSING}")
    (tmp / "dns").mkdir()
    dns = DnsServer(tmp / "dns", {DNS_NAME: list(DNS_ADDRESSES)})
    dns.start()
    setup = MixedSetup(dns, discovery_port, [], jwks_port, "", "", "")
    try:
        issuer = f"http://{HOST}:{jwks_port}"
        resource = f"http://{HOST}:{first_port}{MCP_PATH}"
        setup.token, setup.forged, setup.wrong_audience = make_tokens(
            tmp / "jwks", issuer, resource
        )
        argv = [mcplb_python(), "-m", "http.server", str(jwks_port), "--bind", HOST]
        jwks_log = tmp / "jwks-server.log"
        jwks = spawn([*argv, "--directory", str(tmp / "jwks")], jwks_log, procs)
        wait_until(
            jwks, lambda: http_probe(HOST, jwks_port, "/jwks.json", {}), START_TIMEOUT, jwks_log
        )
        for address in DNS_ADDRESSES:
            name = f"{address}-{discovery_port}"
            log = tmp / f"{name}.log"
            backend_procs[name] = spawn(
                backend_cmd(name, discovery_port, address), log, procs, cwd=REPO_ROOT
            )
            setup.discovered.append(name)
        for address, name in zip(DNS_ADDRESSES, setup.discovered, strict=True):
            probe = functools.partial(http_probe, address, discovery_port, PLAIN_PATH, {})
            wait_until(backend_procs[name], probe, START_TIMEOUT, tmp / f"{name}.log")
        log_step("mixed", f"dnsmasq {dns.address}, JWKS :{jwks_port}, {setup.discovered}")
        return setup
    except BaseException:
        dns.stop()
        raise


def wait_discovered(replicas: list[Replica], setup: MixedSetup) -> None:
    """Until every replica's /status lists both discovered backends (bounded)."""
    for rep in replicas:

        def probe(rep: Replica = rep) -> str | None:
            conn = http.client.HTTPConnection(HOST, rep.admin_port, timeout=1.0)
            try:
                conn.request("GET", "/status")
                names = {b["name"] for b in json.loads(conn.getresponse().read())["backends"]}
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                return f"GET /status failed: {exc!r}"
            finally:
                conn.close()
            missing = set(setup.discovered) - names
            return f"/status lists {sorted(names)}, not {sorted(missing)}" if missing else None

        wait_until(rep.proc, probe, START_TIMEOUT, rep.log)

        # /status is worker 0's, which runs the lookups; the other workers adopt what it
        # found on their next sweep. Until then a binding to a discovered backend made by
        # worker 0 (or the other replica) is unknown there: wait until every worker logged
        # "discovery applied" naming both as added.
        def adopted(rep: Replica = rep) -> str | None:
            try:
                text = rep.log.read_text(errors="replace")
            except OSError as exc:
                return f"log unreadable: {exc!r}"
            seen: dict[int, set[str]] = defaultdict(set)
            for line in text.splitlines():
                m = LOG_LINE.match(line)
                if m is not None and m["msg"].startswith("discovery applied"):
                    seen[int(m["pid"])].update(
                        name for name in setup.discovered if f"backend {name} added" in m["msg"]
                    )
            waiting = [p for p in rep.workers() if seen[p] != set(setup.discovered)]
            return f"workers {waiting} have not adopted {setup.discovered}" if waiting else None

        wait_until(rep.proc, adopted, START_TIMEOUT, rep.log)


SDK_LOG = SdkLogCounter()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=150.0, help="seconds of load (>= 30)")
    p.add_argument("--clients", type=int, default=16, help="concurrent load tasks (>= 6)")
    p.add_argument(
        "--down", type=float, default=10.0, help="seconds mcp-b stays dead (at most 0.2 x duration)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the hold times")
    p.add_argument("--workers", type=int, default=2, help="mcplb workers (1-8)")
    p.add_argument(
        "--redis-outage-expected",
        action="store_true",
        help="count 404s for sessions while Redis is down (and for 5 s after) as expected",
    )
    p.add_argument(
        "--sentinel",
        action="store_true",
        help="Redis with Sentinel (master, replica, three sentinels); the master is killed",
    )
    p.add_argument(
        "--mixed",
        action="store_true",
        help="the mixed-era soak: 2 replicas, 2025 and 2026 traffic, auth, all the faults"
        " (implies --sentinel and --redis-outage-expected)",
    )
    add_run_options(p, start_timeout=False)
    args = p.parse_args(argv)
    if args.duration < 30:
        p.error("--duration must be at least 30 (the faults need room)")
    if args.clients < 6:
        p.error("--clients must be at least 6 (one task of each kind)")
    if not 1 <= args.workers <= 8:
        p.error("--workers must be between 1 and 8")
    if args.down <= 0:
        p.error("--down must be > 0")
    if args.mixed:
        if args.clients < 8:
            p.error("--mixed needs --clients 8 at least (one task of each kind)")
        args.sentinel = args.redis_outage_expected = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    catch_signals()
    root = logging.getLogger()
    root.addHandler(SDK_LOG)
    root.setLevel(logging.WARNING)
    machine = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-soak-"))
    # mcplb's supervisor makes its state directory with tempfile: keep it inside ours.
    os.environ["TMPDIR"] = str(tmp)
    procs: list[subprocess.Popen[bytes]] = []
    redis: RedisServer | None = None
    group: SentinelGroup | None = None
    soak: Soak | None = None
    report: dict[str, Any] | None = None
    setup_error = ""
    interrupted = False
    conf_text = ""
    commands: dict[str, list[str]] = {}
    mcplb_log = tmp / "mcplb.log"
    setup: MixedSetup | None = None
    global BACKEND_MODULE
    if args.mixed:
        BACKEND_MODULE = ["-m", "tests.support.soak_backend"]
    try:
        if args.sentinel:
            group = asyncio.run(start_sentinel_group())
            redis = group.master
            log_step("redis", f"Sentinel group: master on port {redis.port}, {group.addresses}")
        else:
            redis = asyncio.run(start_redis())
            log_step("redis", f"redis-server on port {redis.port}")
        n_replicas = REPLICAS if args.mixed else 1
        ports_list = free_ports(len(ALL_BACKENDS) + 2 * n_replicas + 2)
        ports = dict(zip(ALL_BACKENDS, ports_list, strict=False))
        rest = ports_list[len(ALL_BACKENDS) :]  # replica i: rest[2i], its admin rest[2i + 1]
        backend_procs: dict[str, subprocess.Popen[bytes]] = {}
        for name in ALL_BACKENDS:
            commands[name] = backend_cmd(name, ports[name])
            backend_procs[name] = spawn(commands[name], tmp / f"{name}.log", procs, cwd=REPO_ROOT)
        if args.mixed:
            setup = start_mixed(tmp, procs, backend_procs, rest[0], rest[-2], rest[-1])
        for name in ALL_BACKENDS:
            wait_http(
                backend_procs[name], ports[name], PLAIN_PATH, START_TIMEOUT, tmp / f"{name}.log"
            )
        log_step("backends", ", ".join(f"{n} :{ports[n]}" for n in ALL_BACKENDS))
        replicas: list[Replica] = []
        for i in range(n_replicas):
            port, admin_port = rest[2 * i], rest[2 * i + 1]
            conf = tmp / ("mcplb.yaml" if i == 0 else f"mcplb-{i}.yaml")
            text = soak_config(
                args.workers,
                port,
                admin_port,
                redis_lines(redis, group),
                ports,
                BACKENDS,
                {},
                mixed_lines(setup, rest[0]),
            )
            conf.write_text(text)
            cmd = mcplb_cmd(conf, "--log-level", "info")
            log = mcplb_log if i == 0 else tmp / f"mcplb-{i}.log"
            replicas.append(
                Replica(
                    i, port, admin_port, conf, cmd, spawn(cmd, log, procs, cwd=REPO_ROOT), [log]
                )
            )
            if i == 0:
                conf_text, commands["mcplb"] = text, cmd
        headers = {"authorization": f"Bearer {setup.token}"} if setup is not None else {}
        for rep in replicas:
            wait_proxy(rep.proc, rep.port, headers, START_TIMEOUT, rep.log)
            wait_http(rep.proc, rep.admin_port, "/status", START_TIMEOUT, rep.log)
            log_step(
                "mcplb",
                f"replica {rep.index}: pid {rep.proc.pid}, port {rep.port}, admin {rep.admin_port}",
            )
        if setup is not None:
            wait_discovered(replicas, setup)
        soak = Soak(args, tmp, procs, backend_procs, ports, replicas, redis, group, setup)
        interrupted = asyncio.run(interruptible(soak.run(), restore=raise_interrupt))

        async def after() -> dict[str, int | None]:
            assert soak is not None
            async with aiohttp.ClientSession(trust_env=False) as http:
                await asyncio.sleep(1.0)  # let the last DELETEs land
                return await soak.leftovers(http)

        leftovers = {} if interrupted else asyncio.run(after())
        report = analyse(soak, leftovers, mcplb_log)
    except (NotReady, RedisServerMissing, RuntimeError) as exc:
        setup_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RedisServerMissing):
            setup_error += "\n(install it: `make system-deps` or apt-get install redis-server)"
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        stop_all(procs, term_timeout=8.0)
        if soak is not None:
            left = group_pids(soak.mcplb.pid)
            if left:
                print(f"cleanup: mcplb processes still alive: {left}", file=sys.stderr)
        if setup is not None:
            setup.dns.stop()
        if group is not None:
            asyncio.run(group.stop())
        elif redis is not None:
            asyncio.run(redis.stop())
        log_tail = tail(mcplb_log, 30) if report is not None or setup_error else ""
        drop_tmp(tmp, args.keep_tmp)

    print()
    print(f"command: {command}")
    if "mcplb" in commands:
        print(f"mcplb: {shlex.join(commands['mcplb'])}  (cwd {REPO_ROOT})")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    if soak is not None:
        print(
            f"load: {args.clients} tasks ("
            + ", ".join(f"{v} {k}" for k, v in soak.mix.items())
            + f"), {args.duration:g} s; faults at"
            f" {F_KILL:.2f}/{F_RELOAD_ADD:.2f}/{F_RELOAD_REMOVE:.2f}/{F_REDIS:.2f} of it"
            + (
                f" (--mixed also worker {F_WORKER:.2f}, DNS {F_DNS:.2f}, replica {F_REPLICA:.2f})"
                if args.mixed
                else ""
            )
        )
    if conf_text:
        print("initial config:\n" + "\n".join(f"  {line}" for line in conf_text.splitlines()))
    if setup_error:
        print(f"\nerror: {setup_error}")
        if log_tail:
            print("mcplb log (last lines):\n" + log_tail)
    if interrupted:
        print("\ninterrupted: " + ("partial results" if report is not None else "no report"))
    if soak is not None and report is not None:
        print_report(soak, report)
    unexpected = 0
    if report is not None:
        unexpected = report["requests"]["failed_unexpected"] + len(report["findings"])
        verdict = "OK" if unexpected == 0 else "FAIL"
        if interrupted:
            verdict = f"INTERRUPTED (partial, would be {verdict})"
        print(
            f"\nverdict: {verdict}: {report['requests']['failed_unexpected']} unexpected request"
            f" failure(s), {len(report['findings'])} fault-check finding(s)"
        )
    if args.json:
        data = {
            "command": command,
            "commands": commands,
            "config": conf_text,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine,
            "timeline": asdict(soak.tl) if soak is not None else None,
            "results": report,
            "setup_error": setup_error,
            "interrupted": interrupted,
        }
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"\nJSON written to {args.json}")
    if interrupted:
        return 130
    if setup_error:
        return 1
    return 2 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
